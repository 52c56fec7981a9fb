//! `shears export`: MLP checkpoints and BERT-family folders as ONNX, and what it refuses.

use std::path::{Path, PathBuf};

use prost::Message;
use shears_onnx::proto::ModelProto;

use crate::util::{model, shears, stderr, stdout};

fn tiny_bert() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/tiny-bert")
}

fn decode(path: &Path) -> ModelProto {
    ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap()
}

/// `shears export MODEL -o OUT --external-data`, paths passed as they are (any bytes).
fn export_external_data(model: &Path, out: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_shears"))
        .arg("export")
        .arg(model)
        .arg("-o")
        .arg(out)
        .arg("--external-data")
        .output()
        .unwrap()
}

fn ops(model: &ModelProto) -> Vec<String> {
    model.graph.as_ref().unwrap().node.iter().map(|n| n.op_type().to_owned()).collect()
}

#[test]
fn exports_an_mlp_checkpoint_and_a_model_folder() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("mlp.safetensors");
    let mlp = shears_nn::Mlp::<f32>::new(&[8, 6, 3], 1).unwrap();
    shears_nn::checkpoint::save(&mlp, &shears_core::Masks::new(), &checkpoint).unwrap();
    let out = dir.path().join("mlp.onnx");
    let o = shears(&["export", checkpoint.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("MLP [8, 6, 3]") && stdout(&o).contains("opset 17"),
        "{}",
        stdout(&o)
    );
    assert_eq!(ops(&decode(&out)), ["Gemm", "Relu", "Gemm", "Identity"]);

    let out = dir.path().join("bert.onnx");
    let bert = tiny_bert();
    let o =
        shears(&["export", bert.to_str().unwrap(), "-o", out.to_str().unwrap(), "--opset", "18"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let model = decode(&out);
    assert_eq!(model.opset_import[0].version(), 18);
    let outputs: Vec<&str> =
        model.graph.as_ref().unwrap().output.iter().map(|v| v.name()).collect();
    assert_eq!(outputs, ["last_hidden_state", "sentence_embedding"]);
    assert_eq!(ops(&model).iter().filter(|op| *op == "LayerNormalization").count(), 5);
}

#[test]
fn refuses_what_it_cannot_export_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let not_mlp = dir.path().join("model.safetensors");
    model(&not_mlp);
    let out = dir.path().join("out.onnx");
    let bert = tiny_bert();
    let inside = bert.join("model.onnx");
    // A pooling module that expects token states wider than the encoder's.
    let wide = dir.path().join("wide");
    std::fs::create_dir_all(wide.join("1_Pooling")).unwrap();
    for entry in std::fs::read_dir(&bert).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, wide.join(path.file_name().unwrap())).unwrap();
        }
    }
    let pooling = std::fs::read_to_string(bert.join("1_Pooling/config.json")).unwrap();
    let pooling =
        pooling.replace("\"word_embedding_dimension\": 32", "\"word_embedding_dimension\": 33");
    std::fs::write(wide.join("1_Pooling/config.json"), pooling).unwrap();
    // A tokenizer whose post-processor places an id the embeddings do not have, as
    // embed would refuse it: the exported model could run no text.
    let untokenizable = dir.path().join("untokenizable");
    std::fs::create_dir_all(untokenizable.join("1_Pooling")).unwrap();
    for name in [
        "config.json",
        "model.safetensors",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ] {
        std::fs::copy(bert.join(name), untokenizable.join(name)).unwrap();
    }
    let tokenizer = std::fs::read(bert.join("tokenizer.json")).unwrap();
    let mut tokenizer: serde_json::Value = serde_json::from_slice(&tokenizer).unwrap();
    tokenizer["post_processor"]["special_tokens"]["[SEP]"]["ids"] = serde_json::json!([99999]);
    let tokenizer = serde_json::to_vec(&tokenizer).unwrap();
    std::fs::write(untokenizable.join("tokenizer.json"), tokenizer).unwrap();
    // A shard index stands for its folder in prune, but export reads the folder's files.
    std::fs::create_dir(dir.path().join("sharded")).unwrap();
    let index = dir.path().join("sharded/model.safetensors.index.json");
    std::fs::write(&index, r#"{"weight_map": {}}"#).unwrap();
    let json_says = |folder: &Path| {
        format!(
            "is JSON, a file of a model folder: export reads the whole folder (config, tokenizer, pooling), so give the folder, {}",
            folder.display()
        )
    };
    let index_says = json_says(index.parent().unwrap());
    let config_says = json_says(&bert);
    let config = bert.join("config.json");
    // The weights of a model folder point to the folder.
    let weights = bert.join("model.safetensors");
    let weights_say = format!("model folders (give its folder, {})", bert.display());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![index.to_str().unwrap(), "-o", out.to_str().unwrap()], &index_says),
        (vec![config.to_str().unwrap(), "-o", out.to_str().unwrap()], &config_says),
        (vec![weights.to_str().unwrap(), "-o", out.to_str().unwrap()], &weights_say),
        (
            vec![wide.to_str().unwrap(), "-o", out.to_str().unwrap()],
            "word_embedding_dimension: the pooling module expects 33",
        ),
        (
            vec![untokenizable.to_str().unwrap(), "-o", out.to_str().unwrap()],
            "post_processor: places \"[SEP]\" id 99999 around each text",
        ),
        (vec![not_mlp.to_str().unwrap(), "-o", out.to_str().unwrap()], "cannot export"),
        (
            vec![bert.to_str().unwrap(), "-o", out.to_str().unwrap(), "--opset", "16"],
            "opset 16 is not supported",
        ),
        (
            vec![bert.to_str().unwrap(), "-o", out.to_str().unwrap(), "--opset", "99"],
            "opset 99 is not supported",
        ),
        (vec![bert.to_str().unwrap(), "-o", inside.to_str().unwrap()], "inside the model folder"),
        (vec![not_mlp.to_str().unwrap(), "-o", not_mlp.to_str().unwrap()], "model.safetensors"),
        (vec!["/nonexistent/model.safetensors", "-o", out.to_str().unwrap()], "nonexistent"),
        (vec![dir.path().to_str().unwrap(), "-o", out.to_str().unwrap()], "not a model folder"),
        (
            vec![
                bert.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "--quantize",
                "int8:group=32",
            ],
            "per output row",
        ),
        (
            vec![bert.to_str().unwrap(), "-o", out.to_str().unwrap(), "--activations", "per-token"],
            "--activations per-token says how int8 layers quantize their inputs: it takes --quantize int8",
        ),
    ];
    let before = std::fs::read(&not_mlp).unwrap();
    for (args, says) in cases {
        let o = shears(&[&["export"][..], &args].concat());
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(!out.exists() && !inside.exists(), "{args:?} wrote something");
    }
    assert_eq!(std::fs::read(&not_mlp).unwrap(), before, "the input is untouched");
    // An argument clap rejects: its usage hint follows the one line that names it.
    let o = shears(&[
        "export",
        bert.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--quantize",
        "int4",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o)
            .lines()
            .next()
            .unwrap()
            .contains("'int4' for '--quantize <int8>': expected int8")
    );
    assert!(!out.exists());
}

#[test]
fn a_checkpoints_masks_are_applied_and_nan_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("mlp.safetensors");
    let mlp = shears_nn::Mlp::<f32>::new(&[4, 3, 2], 1).unwrap();
    // The mask prunes all of layer 0's first input column; the weights still hold values.
    let mask = shears_core::Mask::from_fn(3, 4, |_, c| c != 0).unwrap();
    let masks = shears_core::Masks::from([("layers.0.weight".to_string(), mask)]);
    shears_nn::checkpoint::save(&mlp, &masks, &checkpoint).unwrap();
    let out = dir.path().join("mlp.onnx");
    // -q is taken as by every command.
    let o = shears(&["export", checkpoint.to_str().unwrap(), "-o", out.to_str().unwrap(), "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let model = decode(&out);
    let w = model
        .graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .find(|t| t.name() == "layers.0.weight")
        .unwrap();
    let values: Vec<f32> =
        w.raw_data().chunks(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    for (i, v) in values.iter().enumerate() {
        // Row-major (3, 4): column 0 is every fourth value.
        assert_eq!(*v == 0.0, i % 4 == 0, "value {i}: {v}");
    }

    let mut broken = mlp.clone();
    broken.layers_mut()[1].bias_mut()[0] = f32::NAN;
    shears_nn::checkpoint::save(&broken, &shears_core::Masks::new(), &checkpoint).unwrap();
    let out = dir.path().join("nan.onnx");
    let o = shears(&["export", checkpoint.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("layers.1.bias") && stderr(&o).contains("NaN"), "{}", stderr(&o));
    // An MLP checkpoint with a bad value is not told what export takes.
    assert!(!stderr(&o).contains("shears exports"), "{}", stderr(&o));
    assert!(!out.exists());
    // A weight's bad value is named at its [row, column] as the checkpoint holds it, in
    // the file named.
    let mut broken = mlp.clone();
    broken.layers_mut()[0].weight_mut()[(2, 1)] = f32::INFINITY;
    shears_nn::checkpoint::save(&broken, &shears_core::Masks::new(), &checkpoint).unwrap();
    let o = shears(&["export", checkpoint.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let message = stderr(&o);
    assert!(message.contains("`layers.0.weight` holds inf at [2, 1]"), "{message}");
    assert!(message.contains("mlp.safetensors"), "{message}");
    assert!(!out.exists());
}

#[test]
fn sparse_initializers_shrink_a_pruned_mlp() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("mlp.safetensors");
    let mut mlp = shears_nn::Mlp::<f32>::new(&[64, 32, 3], 1).unwrap();
    // 90% of the first layer pruned.
    for (i, w) in mlp.layers_mut()[0].weight_mut().iter_mut().enumerate() {
        if i % 10 != 0 {
            *w = 0.0;
        }
    }
    shears_nn::checkpoint::save(&mlp, &shears_core::Masks::new(), &checkpoint).unwrap();
    let (dense, sparse) = (dir.path().join("dense.onnx"), dir.path().join("sparse.onnx"));
    let c = checkpoint.to_str().unwrap();
    for (out, extra) in [(&dense, None), (&sparse, Some("--sparse-initializers"))] {
        let mut args = vec!["export", c, "-o", out.to_str().unwrap()];
        args.extend(extra);
        let o = shears(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        // The first layer is sparse enough; the second (unpruned) stays dense.
        let said = String::from_utf8_lossy(&o.stdout);
        assert_eq!(said.contains("1 weights written sparse"), extra.is_some(), "{said}");
    }
    // An unpruned network has no weight to write sparse, and says so.
    let unpruned = dir.path().join("unpruned.safetensors");
    let mlp = shears_nn::Mlp::<f32>::new(&[64, 32, 3], 1).unwrap();
    shears_nn::checkpoint::save(&mlp, &shears_core::Masks::new(), &unpruned).unwrap();
    let out = dir.path().join("unpruned.onnx");
    let (u, o) = (unpruned.to_str().unwrap(), out.to_str().unwrap());
    // Each says the break-even of the weights' own type.
    for (extra, break_even) in
        [(&[][..], "two thirds zeros in f32"), (&["--quantize", "int8"], "89% zeros in int8")]
    {
        let mut args = vec!["export", u, "-o", o, "--sparse-initializers"];
        args.extend(extra);
        let said = String::from_utf8_lossy(&shears(&args).stdout).into_owned();
        assert!(said.contains("no weight is sparse enough") && said.contains(break_even), "{said}");
    }
    assert_eq!(ops(&decode(&sparse)), ["Constant", "Gemm", "Relu", "Gemm", "Identity"]);
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(size(&sparse) * 2 < size(&dense), "{} against {}", size(&sparse), size(&dense));
}

#[test]
fn external_data_moves_large_initializers_beside_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("mlp.safetensors");
    let mlp = shears_nn::Mlp::<f32>::new(&[64, 32, 3], 1).unwrap();
    shears_nn::checkpoint::save(&mlp, &shears_core::Masks::new(), &checkpoint).unwrap();
    let out = dir.path().join("mlp.onnx");
    let export = || {
        let o = export_external_data(&checkpoint, &out);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let said = export();
    let data = std::fs::read(dir.path().join("mlp.onnx.data")).unwrap();
    let model = decode(&out);
    let graph = model.graph.as_ref().unwrap();
    let external: Vec<_> =
        graph.initializer.iter().filter(|t| t.data_location == Some(1)).collect();
    assert_eq!(external.len(), 1, "only the 64x32 weight is 1 KiB or more");
    let entry = |k: &str| external[0].external_data.iter().find(|e| e.key() == k).unwrap().value();
    assert_eq!(entry("location"), "mlp.onnx.data");
    let (offset, length): (usize, usize) =
        (entry("offset").parse().unwrap(), entry("length").parse().unwrap());
    // The weight, row-major (out, in), as the file holds it.
    let w = mlp.layers()[0].weight();
    let expected: Vec<u8> = (0..32)
        .flat_map(|r| (0..64).map(move |c| (r, c)))
        .flat_map(|rc| w[rc].to_le_bytes())
        .collect();
    assert_eq!(&data[offset..offset + length], expected.as_slice());
    assert!(!said.contains("replacing"), "{said}");
    // Exported again, the data file of the first export is replaced, and the report
    // says so.
    let said = export();
    assert!(said.contains("mlp.onnx.data") && said.contains("replacing the file"), "{said}");
    assert_eq!(std::fs::read(dir.path().join("mlp.onnx.data")).unwrap(), data);
}

#[test]
fn external_data_needs_names_it_can_write_and_record() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("mlp.safetensors");
    let mlp = shears_nn::Mlp::<f32>::new(&[64, 32, 3], 1).unwrap();
    shears_nn::checkpoint::save(&mlp, &shears_core::Masks::new(), &checkpoint).unwrap();
    // A name the model cannot record (not UTF-8), and one whose data file's name is too
    // long for the file system while the model's is not: refused before anything lands.
    let binary = dir.path().join(std::ffi::OsStr::from_bytes(b"\xff.onnx"));
    let long = dir.path().join(format!("{}.onnx", "b".repeat(248)));
    std::fs::write(&long, b"the user's model").unwrap();
    for (out, expected) in [(&binary, "UTF-8"), (&long, "longer than the 255 bytes")] {
        let o = export_external_data(&checkpoint, out);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(expected), "{}", stderr(&o));
    }
    assert!(!binary.exists());
    assert_eq!(std::fs::read(&long).unwrap(), b"the user's model");
    // Without initializers of 1 KiB or more there is no data file.
    let small = dir.path().join("small.safetensors");
    let tiny = shears_nn::Mlp::<f32>::new(&[4, 3, 2], 1).unwrap();
    shears_nn::checkpoint::save(&tiny, &shears_core::Masks::new(), &small).unwrap();
    let out = dir.path().join("small.onnx");
    let o = export_external_data(&small, &out);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.exists() && !dir.path().join("small.onnx.data").exists());
}

#[test]
fn an_int8_model_exported_without_quantize_says_its_weights_became_f32() {
    let dir = tempfile::tempdir().unwrap();
    let quantized = dir.path().join("int8");
    let bert = tiny_bert();
    let o = shears(&[
        "prune",
        bert.to_str().unwrap(),
        "-o",
        quantized.to_str().unwrap(),
        "--pattern",
        "2:4",
        "--quantize",
        "int8",
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = dir.path().join("model.onnx");
    let export = |extra: &[&str]| {
        let o = shears(
            &[&["export", quantized.to_str().unwrap(), "-o", out.to_str().unwrap()][..], extra]
                .concat(),
        );
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let said = export(&[]);
    assert!(
        said.contains("f32 weights") && said.contains("--quantize int8 exports int8"),
        "{said}"
    );
    let said = export(&["--quantize", "int8"]);
    assert!(said.contains("int8 weights") && !said.contains("were written as f32"), "{said}");
    assert!(!said.contains("quantized again"), "per row already: {said}");
    // Quantized in groups: per row again, which is said.
    let grouped = dir.path().join("grouped");
    let g = grouped.to_str().unwrap();
    let o = shears(&[
        "prune",
        bert.to_str().unwrap(),
        "-o",
        g,
        "-s",
        "0.5",
        "--quantize",
        "int8:group=8",
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = shears(&["export", g, "-o", out.to_str().unwrap(), "--quantize", "int8"]);
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        said.contains("quantized in groups of 8 columns, were quantized again per output row"),
        "{said}"
    );

    // An MLP checkpoint quantized by `prune` says so too.
    let (mlp, mlp_int8) = (dir.path().join("mlp.safetensors"), dir.path().join("mlp8.safetensors"));
    let net = shears_nn::Mlp::<f32>::new(&[16, 8, 3], 1).unwrap();
    shears_nn::checkpoint::save(&net, &shears_core::Masks::new(), &mlp).unwrap();
    let (m, m8) = (mlp.to_str().unwrap(), mlp_int8.to_str().unwrap());
    let o = shears(&["prune", m, "-o", m8, "-s", "0.5", "--quantize", "int8", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = shears(&["export", m8, "-o", out.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && said.contains("were written as f32"), "{said}");
}

/// An output whose name does not end in `.onnx` (a checkpoint's, a text file's, none) is
/// refused before anything is read or written: the file it names is kept as it was.
#[test]
fn an_output_not_named_onnx_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("mlp.safetensors");
    let mlp = shears_nn::Mlp::<f32>::new(&[8, 6, 3], 1).unwrap();
    shears_nn::checkpoint::save(&mlp, &shears_core::Masks::new(), &checkpoint).unwrap();
    let kept = dir.path().join("kept.safetensors");
    std::fs::copy(&checkpoint, &kept).unwrap();
    let before = std::fs::read(&kept).unwrap();
    let notes = dir.path().join("notes");
    std::fs::write(&notes, "my notes\n").unwrap();
    for (out, name) in [
        (kept.clone(), "ends in .safetensors"),
        (dir.path().join("pytorch_model.BIN"), "ends in .BIN"),
        (dir.path().join("model.onnx.data"), "ends in .data"),
        (notes.clone(), "has no extension"),
    ] {
        let o = shears(&["export", checkpoint.to_str().unwrap(), "-o", out.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let says = format!(
            "refusing to write an ONNX model to {}: its name {name}; give one ending in .onnx",
            out.display()
        );
        assert!(stderr(&o).contains(&says), "{}", stderr(&o));
        assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    }
    assert_eq!(std::fs::read(&kept).unwrap(), before);
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "my notes\n");
    let names: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    // Any case of .onnx names an ONNX model.
    let upper = dir.path().join("MLP.ONNX");
    let o = shears(&["export", checkpoint.to_str().unwrap(), "-o", upper.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(upper.is_file());
}
