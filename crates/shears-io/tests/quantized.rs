//! Int8 tensors with their scales read back as floating point through every reader, and
//! the one-line errors for scales or metadata that do not fit.

use std::collections::HashMap;

use nalgebra::DMatrix;
use shears_io::{
    Checkpoint, Dtype, Error, QUANTIZATION_KEY, layout, scale_name, write_safetensors,
};

/// A conv weight `[2, 2, 1, 3]` (rows of 6) quantized in groups of 4 columns, so each
/// row has a full and a 2-wide group; the file as written by `write_safetensors`.
fn conv_file(metadata: Option<&str>, scale_shape: Vec<usize>, scales: &[f32]) -> Vec<u8> {
    let q: Vec<i8> = vec![1, -2, 3, 0, 127, -127, 0, 0, 5, -5, 64, 1];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.safetensors");
    let entries = layout([
        ("conv.weight".to_owned(), Dtype::I8, vec![2, 2, 1, 3]),
        (scale_name("conv.weight"), Dtype::F32, scale_shape),
        ("plain".to_owned(), Dtype::I8, vec![2]),
    ])
    .unwrap();
    let meta = metadata.map(|m| HashMap::from([(QUANTIZATION_KEY.to_owned(), m.to_owned())]));
    write_safetensors(&path, &entries, meta.as_ref(), |name, out| -> Result<(), Error> {
        let bytes: Vec<u8> = match name {
            "conv.weight" => q.iter().map(|&v| v as u8).collect(),
            "plain" => vec![1, 2],
            _ => scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
        };
        out.write_all(&bytes).map_err(|e| Error::io("write", &path, e))
    })
    .unwrap();
    std::fs::read(&path).unwrap()
}

#[test]
fn every_reader_dequantizes_by_row_and_group() {
    let scales = [0.5f32, 0.25, 2.0, 4.0];
    let bytes = conv_file(Some("int8:group=4"), vec![2, 2], &scales);
    let ckpt = Checkpoint::from_source("q", bytes).unwrap();
    #[rustfmt::skip]
    let expected = DMatrix::from_row_slice(2, 6, &[
        0.5, -1.0, 1.5, 0.0, 31.75, -31.75,
        0.0, 0.0, 10.0, -10.0, 256.0, 4.0,
    ]);
    assert_eq!(ckpt.read_matrix::<f32>("conv.weight").unwrap(), expected);
    let flat: Vec<f64> = ckpt.read_values("conv.weight").unwrap();
    let row_major: Vec<f64> = expected.transpose().iter().map(|&v| f64::from(v)).collect();
    assert_eq!(flat, row_major);
    assert_eq!(ckpt.count_zeros("conv.weight").unwrap(), 3);
    // Pieces of one value each: every piece knows where it is in the tensor.
    let mut streamed = Vec::new();
    ckpt.for_each_decoded::<f32, Error>("conv.weight", 1, |p| {
        streamed.extend_from_slice(p);
        Ok(())
    })
    .unwrap();
    assert_eq!(streamed, expected.transpose().as_slice());
}

#[test]
fn one_scale_per_row_needs_no_metadata() {
    let ckpt = Checkpoint::from_source("q", conv_file(None, vec![2], &[1.0, 0.5])).unwrap();
    let m = ckpt.read_matrix::<f32>("conv.weight").unwrap();
    assert_eq!(m.row(1).iter().copied().collect::<Vec<_>>(), [0.0, 0.0, 2.5, -2.5, 32.0, 0.5]);
}

#[test]
fn int8_without_scales_is_not_decoded() {
    let ckpt = Checkpoint::from_source("q", conv_file(None, vec![2], &[1.0, 1.0])).unwrap();
    let e = ckpt.read_values::<f32>("plain").unwrap_err();
    assert!(matches!(e, Error::NotFloat { .. }), "{e}");
}

#[test]
fn scales_that_do_not_fit_are_named() {
    let read = |meta, shape, scales: &[f32]| {
        let ckpt = Checkpoint::from_source("q", conv_file(meta, shape, scales)).unwrap();
        ckpt.read_matrix::<f32>("conv.weight").unwrap_err().to_string()
    };
    // Per-group scales in a file that says nothing of groups.
    let e = read(None, vec![2, 2], &[1.0; 4]);
    assert!(e.contains("conv.weight.scale") && e.contains("one scale per row"), "{e}");
    // Groups of 3: two per row, not the three the metadata's groups of 2 ask for.
    let e = read(Some("int8:group=2"), vec![2, 2], &[1.0; 4]);
    assert!(e.contains("[2, 3]"), "{e}");
    let e = read(Some("int8:group=x"), vec![2, 2], &[1.0; 4]);
    assert!(e.contains(": metadata `shears.quantization`: `int8:group=x` is neither"), "{e}");
    let e = read(None, vec![2], &[1.0, -1.0]);
    assert!(e.contains("index 1") && e.contains("positive"), "{e}");
}

/// `read_int8` gives the stored values with their scales (a whole-tensor scale repeated
/// per row), `None` for tensors that are not int8 with scales, and the same errors as
/// the decoding readers for scales that do not fit.
#[test]
fn int8_tensors_read_as_stored_with_their_scales() {
    let q: Vec<i8> = vec![1, -2, 3, 0, 127, -127, 0, 0, 5, -5, 64, 1];
    let ckpt = Checkpoint::from_source(
        "q",
        conv_file(Some("int8:group=4"), vec![2, 2], &[0.5, 0.25, 2.0, 4.0]),
    )
    .unwrap();
    let t = ckpt.read_int8("conv.weight").unwrap().unwrap();
    assert_eq!((t.shape(), t.group()), ((2, 6), Some(4)));
    assert_eq!((t.values(), t.scales()), (&q[..], &[0.5f32, 0.25, 2.0, 4.0][..]));
    let ckpt = Checkpoint::from_source("q", conv_file(None, vec![2], &[1.0, 0.5])).unwrap();
    let t = ckpt.read_int8("conv.weight").unwrap().unwrap();
    assert_eq!((t.group(), t.scales()), (None, &[1.0f32, 0.5][..]));
    let ckpt = Checkpoint::from_source("q", conv_file(None, vec![], &[0.25])).unwrap();
    let t = ckpt.read_int8("conv.weight").unwrap().unwrap();
    assert_eq!((t.group(), t.scales()), (None, &[0.25f32, 0.25][..]));
    assert_eq!(t.into_parts().0, q);
    assert!(ckpt.read_int8("plain").unwrap().is_none(), "int8 without scales");
    assert!(ckpt.read_int8("conv.weight.scale").unwrap().is_none(), "a float tensor");
    assert!(matches!(ckpt.read_int8("absent"), Err(Error::UnknownTensor { .. })));
    let ckpt = Checkpoint::from_source("q", conv_file(None, vec![2], &[1.0, -1.0])).unwrap();
    assert!(matches!(ckpt.read_int8("conv.weight"), Err(Error::Quantized { .. })));
}

/// Writes `tensors` (name, dtype, little-endian bytes; 1-D) as shard `file` of `dir`.
pub(crate) fn write_shard(dir: &std::path::Path, file: &str, tensors: &[(&str, Dtype, Vec<u8>)]) {
    let path = dir.join(file);
    let specs = tensors.iter().map(|(name, dtype, bytes)| {
        let width = if *dtype == Dtype::I8 { 1 } else { 4 };
        ((*name).to_owned(), *dtype, vec![bytes.len() / width])
    });
    let entries = layout(specs).unwrap();
    write_safetensors(&path, &entries, None, |name, out| -> Result<(), Error> {
        let (_, _, bytes) = tensors.iter().find(|(n, _, _)| *n == name).unwrap();
        out.write_all(bytes).map_err(|e| Error::io("write", &path, e))
    })
    .unwrap();
}

/// Writes the index of a two-shard model whose tensors are `(name, shard file)`.
pub(crate) fn write_index(dir: &std::path::Path, tensors: &[(&str, &str)]) {
    let map: Vec<String> = tensors.iter().map(|(n, f)| format!(r#""{n}": "{f}""#)).collect();
    let index = format!(r#"{{"weight_map": {{{}}}}}"#, map.join(", "));
    std::fs::write(dir.join("model.safetensors.index.json"), index).unwrap();
}

/// An int8 tensor whose scales the index puts in another shard is refused when the model
/// opens, naming both shards: a shard reads a quantized tensor with the scales beside it,
/// so the tensor would otherwise pass for an integer tensor and be left out unsaid.
#[test]
fn scales_in_another_shard_than_their_int8_tensor_are_refused() {
    let (a, b) = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors");
    let scale = || 0.5f32.to_le_bytes().to_vec();
    let dir = tempfile::tempdir().unwrap();
    write_shard(dir.path(), a, &[("w", Dtype::I8, vec![1, 2])]);
    write_shard(dir.path(), b, &[("w.scale", Dtype::F32, scale())]);
    write_index(dir.path(), &[("w", a), ("w.scale", b)]);
    let err = shears_io::Model::open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Index { .. }), "{err:?}");
    let message = err.to_string();
    for part in ["`w`", "`w.scale`", a, b] {
        assert!(message.contains(part), "{part} in {message}");
    }
    assert!(!message.contains('\n'), "{message}");

    // Two shards that keep each int8 tensor beside its scales open, whatever else they
    // hold: an int8 tensor without scales, and a float tensor whose `.scale` namesake
    // (no quantization scale) is in the other shard.
    let dir = tempfile::tempdir().unwrap();
    write_shard(
        dir.path(),
        a,
        &[
            ("w", Dtype::I8, vec![1, 2]),
            ("w.scale", Dtype::F32, scale()),
            ("u", Dtype::I8, vec![3]),
            ("v", Dtype::F32, scale()),
        ],
    );
    write_shard(dir.path(), b, &[("v.scale", Dtype::F32, scale()), ("x", Dtype::F32, scale())]);
    let names = [("w", a), ("w.scale", a), ("u", a), ("v", a), ("v.scale", b), ("x", b)];
    write_index(dir.path(), &names);
    let model = shears_io::Model::open(dir.path()).unwrap();
    let first = &model.shards()[0];
    assert!(first.decodes("w") && !first.decodes("u") && first.decodes("v"));
}

/// Dimensions beside a zero cost a file nothing: a quantized tensor's columns multiply
/// every dimension after the first, and a whole-tensor scale is repeated once per row.
/// Both are bounded before anything is sized by them, and so is a dimension longer than a
/// count along it could be.
#[test]
fn empty_tensors_of_huge_dimensions_size_nothing() {
    let wide = 1u64 << 32;
    let header =
        format!(r#"{{"w":{{"dtype":"I8","shape":[0,{wide},{wide}],"data_offsets":[0,0]}}}}"#);
    let err = Checkpoint::from_source("q", crate::checkpoint::file(&header, &[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`w`") && err.contains("too large to address"), "{err}");
    let tall = 1u64 << 59;
    let header = format!(
        r#"{{"w":{{"dtype":"I8","shape":[{tall},0],"data_offsets":[0,0]}},"w.scale":{{"dtype":"F32","shape":[],"data_offsets":[0,4]}}}}"#
    );
    let ckpt = Checkpoint::from_source("q", crate::checkpoint::file(&header, &1f32.to_le_bytes()))
        .unwrap();
    let err = ckpt.read_int8("w").unwrap_err().to_string();
    assert!(err.contains("w.scale") && err.contains("holds no values"), "{err}");
    assert!(ckpt.read_matrix::<f32>("w").is_err());
    let header = r#"{"w":{"dtype":"F32","shape":[1152921504606846976,0],"data_offsets":[0,0]}}"#;
    let err = Checkpoint::from_source("q", crate::checkpoint::file(header, &[])).unwrap_err();
    assert!(err.to_string().contains("too large to address"), "{err}");
}
