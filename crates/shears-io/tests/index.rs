//! A sharded model's index: the shards it names must be files inside the model's
//! folder, and a name that is not is refused naming the index.

use shears_io::{Dtype, Error};

use crate::quantized::{write_index, write_shard};

#[test]
fn shards_that_are_no_file_of_the_folder_are_named_by_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let shard = "model-00001-of-00002.safetensors";
    write_shard(dir.path(), shard, &[("a", Dtype::F32, 1f32.to_le_bytes().to_vec())]);
    std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
    for (name, says) in [
        ("", "is not a path inside the model's folder"),
        ("../elsewhere.safetensors", "is not a path inside the model's folder"),
        ("1_Pooling", "is a folder, not a file of weights"),
    ] {
        write_index(dir.path(), &[("a", shard), ("b", name)]);
        let err = shears_io::Model::open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Index { .. }), "{name}: {err:?}");
        let message = err.to_string();
        assert!(message.contains("model.safetensors.index.json"), "{message}");
        assert!(message.contains(&format!("shard `{name}` {says}")), "{message}");
    }
}
