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
    std::fs::write(dir.path().join("config.json"), "{\"model_type\": \"bert\"}\n").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "a shard of weights\nis not this\n").unwrap();
    for (name, says) in [
        ("", " is not a path inside the model's folder"),
        ("../elsewhere.safetensors", " is not a path inside the model's folder"),
        ("1_Pooling", " is a folder, not a file of weights"),
        (".", " is a folder, not a file of weights"),
        ("config.json", ", listed for tensor `b`, is not a safetensors file: it is JSON text"),
        ("notes.txt", ", listed for tensor `b`, is not a safetensors file: it is text"),
    ] {
        write_index(dir.path(), &[("a", shard), ("b", name)]);
        let err = shears_io::Model::open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Index { .. }), "{name}: {err:?}");
        let message = err.to_string();
        assert!(message.contains("model.safetensors.index.json"), "{message}");
        assert!(message.contains(&format!("shard `{name}`{says}")), "{message}");
        assert!(!message.contains("give the model folder"), "{message}");
    }
    // A name through `.` is inside the folder, and the same file as the name without it.
    write_index(dir.path(), &[("a", &format!("./{shard}"))]);
    let model = shears_io::Model::open(dir.path()).unwrap();
    assert_eq!(model.shards().len(), 1);
    write_shard(
        dir.path(),
        shard,
        &[("a", Dtype::F32, 1f32.to_le_bytes().to_vec()), ("c", Dtype::F32, vec![0; 4])],
    );
    write_index(dir.path(), &[("a", &format!("./{shard}")), ("c", shard)]);
    let model = shears_io::Model::open(dir.path()).unwrap();
    assert_eq!((model.shards().len(), model.tensors().count()), (1, 2));
    // An index of no tensors is no model, whatever the shards beside it hold.
    write_index(dir.path(), &[]);
    let err = shears_io::Model::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("model.safetensors.index.json") && err.contains("lists no tensor"),
        "{err}"
    );
}

/// A folder holding an index and a `model.safetensors` it does not list is two models
/// (`transformers` loads the file, the index names other shards): refused, naming both.
/// One whose index lists `model.safetensors` itself is one model.
#[test]
fn an_index_beside_another_model_safetensors_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let shard = "model-00001-of-00001.safetensors";
    let a = || vec![("a", Dtype::F32, 1f32.to_le_bytes().to_vec())];
    write_shard(dir.path(), shard, &a());
    write_index(dir.path(), &[("a", shard)]);
    assert_eq!(shears_io::Model::open(dir.path()).unwrap().shards().len(), 1);
    write_shard(dir.path(), "model.safetensors", &a());
    let err = shears_io::Model::open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Input { .. }), "{err:?}");
    let message = err.to_string();
    let says = "holds both model.safetensors and model.safetensors.index.json";
    assert!(message.contains(says) && !message.contains('\n'), "{message}");
    // The index itself, or the file, named directly: no question which.
    assert!(shears_io::Model::open(&dir.path().join("model.safetensors.index.json")).is_ok());
    assert!(shears_io::Model::open(&dir.path().join("model.safetensors")).is_ok());
    write_index(dir.path(), &[("a", "model.safetensors")]);
    std::fs::remove_file(dir.path().join(shard)).unwrap();
    assert_eq!(shears_io::Model::open(dir.path()).unwrap().shards().len(), 1);
}

/// A model folder's other files are listed down to [`shears_io::MAX_FOLDER_DEPTH`]
/// levels; a folder nested deeper is refused, naming the model folder and the first
/// levels of the path alone, however deep it goes (a walk of a folder nested thousands
/// deep would take minutes and name a path of kilobytes).
#[test]
fn a_folder_nested_past_the_depth_bound_is_refused_in_one_short_line() {
    let dir = tempfile::tempdir().unwrap();
    write_shard(dir.path(), "model.safetensors", &[("a", Dtype::F32, vec![0; 4])]);
    let mut deepest = dir.path().to_path_buf();
    for _ in 0..shears_io::MAX_FOLDER_DEPTH {
        deepest.push("d");
    }
    std::fs::create_dir_all(&deepest).unwrap();
    std::fs::write(deepest.join("notes.txt"), "deep\n").unwrap();
    let model = shears_io::Model::open(dir.path()).unwrap();
    let deep_file = ["d"; shears_io::MAX_FOLDER_DEPTH].join("/") + "/notes.txt";
    assert_eq!(model.other_files().unwrap(), vec![std::path::PathBuf::from(&deep_file)]);

    for _ in 0..200 {
        deepest.push("d");
    }
    std::fs::create_dir_all(&deepest).unwrap();
    let err = model.other_files().unwrap_err();
    assert!(matches!(err, Error::Input { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&dir.path().display().to_string()), "{message}");
    assert!(message.contains("levels deep"), "{message}");
    assert!(message.len() < dir.path().as_os_str().len() + 200, "{message}");
}
