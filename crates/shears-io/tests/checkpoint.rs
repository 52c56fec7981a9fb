//! Reading checkpoints: round trips through the writer, every header check, and what a
//! file that is not safetensors is reported as.

use nalgebra::DMatrix;
use proptest::prelude::*;
use shears_io::{
    Checkpoint, Dtype, Error, FileKind, HeaderProblem, encode_append, layout, stage_safetensors,
    write_matrix, write_safetensors, write_values,
};

/// A safetensors file of `header` (JSON) and `data`, written by hand: headers no writer
/// would make.
pub(crate) fn file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

fn problem(bytes: Vec<u8>) -> HeaderProblem {
    match Checkpoint::from_source("t.safetensors", bytes).unwrap_err() {
        Error::Header { problem, .. } => problem,
        other => panic!("expected a header problem, got {other}"),
    }
}

#[test]
fn reads_a_matrix_column_major_and_writes_it_back_row_major() {
    let values: Vec<f32> = (0..15).map(|i| i as f32 - 7.0).collect();
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let ckpt = Checkpoint::from_source(
        "t",
        file(r#"{"w":{"dtype":"F32","shape":[3,5],"data_offsets":[0,60]}}"#, &data),
    )
    .unwrap();
    let m = ckpt.read_matrix::<f32>("w").unwrap();
    assert_eq!(m, DMatrix::from_row_slice(3, 5, &values));
    let mut out = Vec::new();
    write_matrix(&m, Dtype::F32, &mut out).unwrap();
    assert_eq!(out, data);
    assert_eq!(ckpt.read_values::<f64>("w").unwrap()[14], 7.0);
}

#[test]
fn pieces_come_back_in_file_order_and_whole_rows() {
    // 6 and 12 MB of bf16 and f32: more than one piece, read on several threads.
    let (rows, cols) = (3000, 1003);
    for (dtype, size) in [(Dtype::BF16, 2), (Dtype::F32, 4)] {
        let values: Vec<f32> = (0..rows * cols).map(|i| (i % 251) as f32 - 125.0).collect();
        let mut data = Vec::new();
        assert!(encode_append(dtype, &values, &mut data));
        let header = format!(
            r#"{{"w":{{"dtype":"{dtype:?}","shape":[{rows},{cols}],"data_offsets":[0,{}]}}}}"#,
            rows * cols * size
        );
        let ckpt = Checkpoint::from_source("t", file(&header, &data)).unwrap();
        let pieces = ckpt.map_decoded("w", cols, |p: &[f32]| p.to_vec()).unwrap();
        assert!(pieces.len() > 1, "{dtype:?}");
        assert!(pieces.iter().all(|p| p.len() % cols == 0));
        assert_eq!(pieces.concat(), values, "{dtype:?}");
        // Folded on rayon's threads: every piece once, each whole rows, the sums whole.
        let (count, sum, whole) = ckpt
            .fold_decoded(
                "w",
                cols,
                || (0usize, 0f64, true),
                |(n, s, w), p: &[f32]| {
                    (
                        n + p.len(),
                        s + p.iter().map(|&v| f64::from(v)).sum::<f64>(),
                        w && p.len().is_multiple_of(cols),
                    )
                },
                |a, b| (a.0 + b.0, a.1 + b.1, a.2 && b.2),
            )
            .unwrap();
        let expected: f64 = values.iter().map(|&v| f64::from(v)).sum();
        assert_eq!((count, sum, whole), (rows * cols, expected, true), "{dtype:?}");
        assert_eq!(ckpt.read_values::<f32>("w").unwrap(), values);
        assert_eq!(ckpt.count_zeros("w").unwrap(), values.iter().filter(|&&v| v == 0.0).count());
        let mut written = Vec::new();
        write_values(&values, dtype, &mut written).unwrap();
        assert_eq!(written, data);
    }
}

#[test]
fn header_errors_name_the_problem() {
    assert_eq!(problem(vec![1, 2, 3]), HeaderProblem::TooShort { len: 3 });
    assert!(matches!(problem(u64::MAX.to_le_bytes().to_vec()), HeaderProblem::TooLong { .. }));
    assert!(matches!(problem(100u64.to_le_bytes().to_vec()), HeaderProblem::PastEnd { .. }));
    assert!(matches!(problem(file("{\"w\": 1}", &[])), HeaderProblem::Entry { .. }));
    assert!(matches!(problem(file("[]", &[])), HeaderProblem::NotJson { .. }));
    assert!(matches!(problem(file("{} x", &[])), HeaderProblem::NotJson { .. }));
    assert!(matches!(problem(file(r#"{"__metadata__": 1}"#, &[])), HeaderProblem::Metadata { .. }));
    let gap = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    let wrong = r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
    let huge = r#"{"w":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#;
    let twice = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    assert!(matches!(problem(file(gap, &[0; 8])), HeaderProblem::Offsets { .. }));
    // A tensor placed past the data is named, not the one after the gap it leaves.
    let far = format!(
        r#"{{"a":{{"dtype":"F32","shape":[1],"data_offsets":[0,4]}},"b":{{"dtype":"F32","shape":[1],"data_offsets":[{0},{1}]}},"c":{{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}}}"#,
        1u64 << 63,
        (1u64 << 63) + 4
    );
    let past = HeaderProblem::PastData {
        tensor: "b".into(),
        start: 1 << 63,
        end: (1 << 63) + 4,
        held: 12,
    };
    assert_eq!(problem(file(&far, &[0; 12])), past);
    // A gap and, apart from it, a tensor past the data: the gap is the first problem.
    let both = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},"c":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}}"#;
    assert!(
        matches!(problem(file(both, &[0; 12])), HeaderProblem::Offsets { tensor, .. } if tensor == "b")
    );
    assert!(matches!(problem(file(wrong, &[0; 8])), HeaderProblem::Size { .. }));
    assert!(matches!(problem(file(huge, &[0; 8])), HeaderProblem::NoByteSize { .. }));
    assert!(matches!(problem(file(twice, &[0; 8])), HeaderProblem::Duplicate { .. }));
    let same = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    assert_eq!(problem(file(same, &[0; 4])), HeaderProblem::Duplicate { tensor: "w".into() });
    let rank = format!(r#"{{"w":{{"dtype":"F32","shape":{:?},"data_offsets":[0,4]}}}}"#, [1; 17]);
    match problem(file(&rank, &[0; 4])) {
        HeaderProblem::Entry { tensor, reason } => {
            assert_eq!(tensor, "w");
            assert!(reason.contains("more than 16 dimensions"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let short = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    assert_eq!(problem(file(short, &[0; 4])), HeaderProblem::DataLength { described: 8, held: 4 });
    let e = Checkpoint::from_source("t.safetensors", file(gap, &[0; 8])).unwrap_err();
    assert!(e.to_string().starts_with("t.safetensors: not a valid safetensors file: tensor `w`"));
}

#[test]
fn other_formats_are_named() {
    let kind = |bytes: &[u8]| match Checkpoint::from_source("f", bytes.to_vec()).unwrap_err() {
        Error::NotSafetensors { kind, .. } => Some(kind),
        _ => None,
    };
    let mut zip = b"PK\x03\x04".to_vec();
    zip.extend_from_slice(&[0; 60]);
    assert_eq!(kind(&zip), Some(FileKind::TorchZip));
    assert_eq!(kind(b"\x80\x02\x8a\x0alotsofpickledbytes"), Some(FileKind::Pickle));
    assert_eq!(kind(b"{\"weight_map\": {\"a\": \"b\"}}"), Some(FileKind::Json));
    assert_eq!(kind(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"), Some(FileKind::Gzip));
    // ONNX: ir_version, then the producer (as shears and PyTorch write it), named or not.
    let mut onnx = b"\x08\x08\x12\x06shears\x1a\x050.1.0".to_vec();
    onnx.extend_from_slice(&[0x3a; 60]);
    assert_eq!(kind(&onnx), Some(FileKind::Onnx));
    let mut torch = b"\x08\x07\x12\x07pytorch".to_vec();
    torch.extend_from_slice(&[0; 60]);
    assert_eq!(kind(&torch), Some(FileKind::Onnx));
    let mask = shears_core::Mask::all_kept(3, 3).unwrap().to_bytes();
    assert_eq!(kind(&mask), Some(FileKind::Shears("mask")));
    let masks = shears_io::encode_mask_set(&[]);
    assert_eq!(kind(&masks), Some(FileKind::Shears("mask set")));
    // Cut inside the tag: too short to be anything, but what it starts is said.
    assert_eq!(kind(&masks[..7]), Some(FileKind::ShearsCutShort));
    assert_eq!(kind(b"SHEAR"), Some(FileKind::ShearsCutShort));
    assert_eq!(kind(b"SHEA"), None, "too little to tell");
    assert_eq!(kind(b"SHEARXY"), None, "no tag starts so");
    // Text: sentences, given where a model goes; a character cut at the end is text.
    assert_eq!(kind(b"A cat sat on the mat.\nDogs bark.\r\n"), Some(FileKind::Text));
    assert_eq!(
        kind("na\u{ef}ve caf\u{e9} \u{2014} d\u{e9}j\u{e0}\n".as_bytes()),
        Some(FileKind::Text)
    );
    assert_eq!(kind(&"\u{e9}t\u{e9} \u{e9}t\u{e9}".as_bytes()[..11]), Some(FileKind::Text));
    // Control bytes, invalid UTF-8 or a zero byte: not text.
    assert_eq!(kind(b"abcdefgh\x01ijk"), None);
    assert_eq!(kind(b"abcdefgh\xffijk"), None);
    assert_eq!(kind(b"\x10\x00\x00\x00\x00\x00\x00\x00{}"), None);
    let e = Checkpoint::from_source("pytorch_model.bin", zip).unwrap_err().to_string();
    assert!(e.contains("torch.save"), "{e}");
}

#[test]
fn non_float_tensors_are_refused_by_the_decoders() {
    let ckpt = Checkpoint::from_source(
        "t",
        file(r#"{"i":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}}"#, &[0; 16]),
    )
    .unwrap();
    let err = ckpt.read_matrix::<f32>("i").unwrap_err();
    assert!(matches!(err, Error::NotFloat { .. }), "{err}");
    assert!(err.to_string().starts_with("t: tensor `i` has dtype I32: only f16"), "{err}");
    assert_eq!(ckpt.read_bytes("i").unwrap(), vec![0; 16]);
    assert!(matches!(ckpt.read_bytes("nope"), Err(Error::UnknownTensor { .. })));
    assert!(matches!(ckpt.read_matrix::<f32>("nope"), Err(Error::UnknownTensor { .. })));
}

#[test]
fn the_writer_checks_what_each_tensor_takes_and_leaves_nothing_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.safetensors");
    let tensors =
        layout([("a".into(), Dtype::F32, vec![2]), ("b".into(), Dtype::F16, vec![3])]).unwrap();
    assert_eq!(tensors[1].1.data_offsets, (8, 14));
    let short = write_safetensors(&out, &tensors, None, |_, w| -> Result<(), Error> {
        w.write_all(&[0; 2]).unwrap();
        Ok(())
    });
    assert!(matches!(short, Err(Error::WrittenLength { written: 2, declared: 8, .. })));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no file, no temporary");
    let staged = stage_safetensors(&out, &tensors, None, |name, w| -> Result<(), Error> {
        w.write_all(if name == "a" { &[1; 8] } else { &[2; 6] }).unwrap();
        Ok(())
    })
    .unwrap();
    assert!(!out.exists(), "staged, not yet committed");
    shears_io::commit_all(vec![staged]).unwrap();
    let ckpt = Checkpoint::open(&out).unwrap();
    assert_eq!(ckpt.read_bytes("b").unwrap(), vec![2; 6]);
    assert_eq!(ckpt.names().collect::<Vec<_>>(), ["a", "b"]);
}

/// The writer's bytes are the `safetensors` crate's own for the same tensors: the
/// header is written by shears (to stream a million entries without copying them), so
/// it is held to the reference serializer.
#[test]
fn the_writer_writes_the_bytes_the_safetensors_crate_writes() {
    use safetensors::tensor::TensorView;
    let dir = tempfile::tempdir().unwrap();
    // In the order the crate lays tensors out (widest dtype first, then by name), so
    // both files hold the same entries in the same order.
    let shapes: [(&str, Dtype, Vec<usize>); 4] = [
        ("ids \"quoted\" é", Dtype::I64, vec![1, 2]),
        ("scalar", Dtype::F64, vec![]),
        ("layer.0.weight", Dtype::F32, vec![3, 2]),
        ("layer.0.bias", Dtype::BF16, vec![3]),
    ];
    let tensors = layout(shapes.iter().map(|(n, d, s)| (n.to_string(), *d, s.clone()))).unwrap();
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, info)| {
            let len = info.data_offsets.1 - info.data_offsets.0;
            (0..len).map(|i| (i * 7 + len) as u8).collect()
        })
        .collect();
    for metadata in [None, Some([("format".to_string(), "pt".to_string())].into())] {
        let out = dir.path().join("o.safetensors");
        write_safetensors(&out, &tensors, metadata.as_ref(), |name, w| -> Result<(), Error> {
            let k = tensors.iter().position(|(n, _)| n == name).unwrap();
            w.write_all(&data[k]).unwrap();
            Ok(())
        })
        .unwrap();
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .zip(&data)
            .map(|((n, info), d)| {
                (n.clone(), TensorView::new(info.dtype, info.shape.clone(), d).unwrap())
            })
            .collect();
        let reference = safetensors::serialize(views, metadata.clone()).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), reference);
    }
}

#[test]
fn the_writer_refuses_entries_that_make_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.safetensors");
    let mut twice =
        layout([("a".into(), Dtype::F32, vec![2]), ("a".into(), Dtype::F32, vec![1])]).unwrap();
    let nothing = |_: &str, _: &mut dyn std::io::Write| -> Result<(), Error> { Ok(()) };
    let err = write_safetensors(&out, &twice, None, nothing).unwrap_err();
    assert!(err.to_string().contains("`a` appears twice"), "{err}");
    twice[1].0 = "__metadata__".into();
    let err = write_safetensors(&out, &twice, None, nothing).unwrap_err();
    assert!(err.to_string().contains("__metadata__"), "{err}");
    twice[1].0 = "b".into();
    twice[1].1.data_offsets = (12, 16);
    let err = write_safetensors(&out, &twice, None, nothing).unwrap_err();
    assert!(err.to_string().contains("[12, 16] where 8 comes next"), "{err}");
    // A header past what readers take is refused before the file is created.
    let one = layout([("a".into(), Dtype::F32, vec![1])]).unwrap();
    let long = (shears_io::MAX_HEADER_BYTES as usize).to_string();
    let metadata = std::collections::HashMap::from([("k".to_owned(), "x".repeat(100_000_000))]);
    let err = write_safetensors(&out, &one, Some(&metadata), nothing).unwrap_err();
    assert!(err.to_string().contains(&format!("past the {long} bytes safetensors readers take")));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written");
}

proptest! {
    /// Any bytes either open as a checkpoint whose every tensor reads back within the
    /// file, or give an error; nothing panics or allocates past the file.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), header in "[ -~]{0,120}") {
        let _ = Checkpoint::from_source("p", bytes.clone());
        let mut framed = (header.len() as u64).to_le_bytes().to_vec();
        framed.extend_from_slice(header.as_bytes());
        framed.extend_from_slice(&bytes);
        if let Ok(ckpt) = Checkpoint::from_source("p", framed) {
            for (name, _) in ckpt.tensors() {
                let _ = ckpt.read_bytes(name);
                let _ = ckpt.read_matrix::<f32>(name);
            }
        }
    }
}

/// The writer refuses the entries its own reader would: a tensor given other bytes than
/// its shape and dtype take, too many dimensions, or a size in partial bytes; nothing
/// is written.
#[test]
fn the_writer_refuses_entries_the_reader_would() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w.safetensors");
    let entry = |shape: Vec<usize>, bytes| {
        (
            "w".to_owned(),
            safetensors::tensor::TensorInfo { dtype: Dtype::F32, shape, data_offsets: (0, bytes) },
        )
    };
    for (tensors, said) in [
        (vec![entry(vec![2, 2], 4)], "is given 4 bytes, not its size"),
        (vec![entry(vec![1; 17], 4)], "more than 16 dimensions"),
    ] {
        let err = write_safetensors(&out, &tensors, None, |_, w| -> Result<(), Error> {
            w.write_all(&[0; 4]).unwrap();
            Ok(())
        })
        .unwrap_err();
        assert!(matches!(err, Error::Layout { .. }) && err.to_string().contains(said), "{err}");
        assert!(!out.exists());
    }
    let err = layout([("w".to_owned(), Dtype::F4, vec![3])]).unwrap_err().to_string();
    assert!(err.contains("not whole bytes"), "{err}");
    assert_eq!(layout([("w".to_owned(), Dtype::F4, vec![4])]).unwrap()[0].1.data_offsets, (0, 2));
}
