//! The checkpoint reader on mutated bytes: truncations, bit flips, lying header lengths,
//! rewritten headers with huge or overflowing shapes. It must answer `Err` or a
//! checkpoint whose every tensor reads back consistently; never panic.

use proptest::prelude::*;
use safetensors::tensor::{Dtype, TensorView};
use shears_io::{Checkpoint, is_float, matrix_shape, write_matrix};

/// A small valid checkpoint: f32, f16, bf16 and f64 matrices, a conv weight, an int8
/// matrix with its scales, an i64.
fn valid() -> Vec<u8> {
    let f32s: Vec<u8> = (0..12).flat_map(|i| (i as f32 - 5.5).to_le_bytes()).collect();
    let halves: Vec<u8> = (0u16..8).flat_map(|i| (0x3c00 + i * 0x101).to_le_bytes()).collect();
    let f64s: Vec<u8> = (0..16).flat_map(|i| (f64::from(i) * 0.25).to_le_bytes()).collect();
    let ints: Vec<u8> = 7i64.to_le_bytes().to_vec();
    let int8s: Vec<u8> = (0u8..15).map(|i| i.wrapping_mul(37)).collect();
    let scales: Vec<u8> = [0.5f32, 2.0, 0.125].iter().flat_map(|s| s.to_le_bytes()).collect();
    let views = vec![
        ("q.weight", TensorView::new(Dtype::I8, vec![3, 5], &int8s).unwrap()),
        ("q.weight.scale", TensorView::new(Dtype::F32, vec![3], &scales).unwrap()),
        ("a.weight", TensorView::new(Dtype::F32, vec![3, 4], &f32s).unwrap()),
        ("b.weight", TensorView::new(Dtype::F16, vec![2, 4], &halves).unwrap()),
        ("c.weight", TensorView::new(Dtype::BF16, vec![4, 2], &halves).unwrap()),
        ("conv.weight", TensorView::new(Dtype::F64, vec![2, 2, 2, 2], &f64s).unwrap()),
        ("step", TensorView::new(Dtype::I64, vec![1], &ints).unwrap()),
    ];
    safetensors::serialize(views, None).unwrap()
}

/// What the reader promises for anything it accepts.
fn check(bytes: Vec<u8>) -> Result<(), TestCaseError> {
    let Ok(ckpt) = Checkpoint::from_source("mutated", bytes) else { return Ok(()) };
    for (name, info) in ckpt.tensors() {
        let raw = ckpt.read_bytes(name).unwrap();
        let elements: usize = info.shape.iter().product();
        prop_assert_eq!(elements * info.dtype.bitsize(), raw.len() * 8);
        if !is_float(info.dtype) {
            // Only int8 with valid scales decodes, to as many values.
            if let Ok(values) = ckpt.read_values::<f32>(name) {
                prop_assert_eq!(info.dtype, Dtype::I8);
                prop_assert_eq!(values.len(), elements);
            }
            continue;
        }
        prop_assert_eq!(ckpt.read_values::<f64>(name).unwrap().len(), elements);
        if matrix_shape(name, info).is_ok() {
            let m = ckpt.read_matrix::<f64>(name).unwrap();
            let mut out = Vec::new();
            write_matrix(&m, info.dtype, &mut out).unwrap();
            prop_assert_eq!(out.len(), raw.len());
        }
    }
    Ok(())
}

/// The file with its JSON header replaced by `header` (padded, length rewritten).
fn with_header(bytes: &[u8], header: &str) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

#[test]
fn the_valid_file_reads() {
    let ckpt = Checkpoint::from_source("valid", valid()).unwrap();
    assert_eq!(ckpt.names().len(), 7);
    assert_eq!(ckpt.read_values::<f32>("q.weight").unwrap()[5], -71.0 * 2.0); // 185 as i8
    check(valid()).unwrap();
}

proptest! {
    #[test]
    fn truncated(len in 0usize..400) {
        let bytes = valid();
        let cut = len.min(bytes.len() - 1);
        prop_assert!(Checkpoint::from_source("t", bytes[..cut].to_vec()).is_err());
    }

    #[test]
    fn bit_flips(flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..6)) {
        let mut bytes = valid();
        for (at, bit) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        check(bytes)?;
    }

    #[test]
    fn lying_header_lengths(n in any::<u64>()) {
        let mut bytes = valid();
        bytes[..8].copy_from_slice(&n.to_le_bytes());
        check(bytes)?;
    }

    #[test]
    fn rewritten_shapes_and_offsets(
        dims in prop::collection::vec(prop_oneof![0usize..6, Just(usize::MAX), Just(1usize << 32), any::<usize>()], 0..5),
        start in prop_oneof![Just(0usize), any::<usize>()],
        end in prop_oneof![0usize..64, any::<usize>()],
        dtype in prop::sample::select(vec!["F32", "F16", "BF16", "F64", "I8", "BOOL", "U64", "F8_E4M3"]),
    ) {
        let header = format!(
            r#"{{"w":{{"dtype":"{dtype}","shape":{dims:?},"data_offsets":[{start},{end}]}}}}"#
        );
        check(with_header(&valid(), &header))?;
    }
}
