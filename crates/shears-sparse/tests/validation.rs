//! The validators reject every single-field corruption, and loaders never panic.

use nalgebra::DMatrix;
use proptest::prelude::*;
use shears_core::{BlockShape, Mask, NmPattern};
use shears_sparse::{
    BlockSparse, Csr, Error, FormatError, NmSparse, SLICE_ROWS, SlicedEll, SlicedEllParts,
    SparseProduct,
};

fn sample() -> Csr<f32, u16> {
    let w = DMatrix::from_fn(4, 6, |r, c| (r * 6 + c) as f32 + 1.0);
    let mask = Mask::from_fn(4, 6, |r, c| (r + c) % 3 != 0).unwrap();
    Csr::from_dense_masked(&w, &mask).unwrap()
}

#[track_caller]
fn rejects(
    parts: (usize, usize, Vec<usize>, Vec<u16>, Vec<f32>),
    check: impl Fn(&FormatError) -> bool,
) {
    let (r, c, p, i, v) = parts;
    match Csr::try_from_parts(r, c, p, i, v) {
        Err(Error::Format { format: "csr", error }) => assert!(check(&error), "{error:?}"),
        other => panic!("expected a format error, got {other:?}"),
    }
}

#[test]
fn every_single_field_corruption_is_rejected() {
    let base = sample().into_parts();
    let (r, c, p, i, v) = base.clone();
    rejects((r, c, p[..p.len() - 1].to_vec(), i.clone(), v.clone()), |e| {
        matches!(e, FormatError::IndptrLength { .. })
    });
    let mut bad = p.clone();
    bad[0] = 1;
    rejects((r, c, bad, i.clone(), v.clone()), |e| {
        matches!(e, FormatError::IndptrStart { found: 1 })
    });
    let mut bad = p.clone();
    bad[2] = bad[1] - 1;
    rejects((r, c, bad, i.clone(), v.clone()), |e| {
        matches!(e, FormatError::IndptrNotMonotone { row: 1 })
    });
    let mut bad = p.clone();
    *bad.last_mut().unwrap() -= 1;
    rejects((r, c, bad, i.clone(), v.clone()), |e| matches!(e, FormatError::IndptrEnd { .. }));
    let mut bad = i.clone();
    bad[0] = 6;
    rejects((r, c, p.clone(), bad, v.clone()), |e| {
        matches!(e, FormatError::IndexOutOfRange { index: 6, .. })
    });
    let mut bad = i.clone();
    bad.swap(0, 1);
    rejects((r, c, p.clone(), bad, v.clone()), |e| {
        matches!(e, FormatError::UnsortedIndices { row: 0 })
    });
    let mut bad = i.clone();
    bad[1] = bad[0];
    rejects((r, c, p.clone(), bad, v.clone()), |e| {
        matches!(e, FormatError::UnsortedIndices { row: 0 })
    });
    rejects((r, c, p.clone(), i.clone(), v[1..].to_vec()), |e| {
        matches!(e, FormatError::LengthMismatch { .. })
    });
    assert!(matches!(
        Csr::<f32, u16>::try_from_parts(1, 70_000, vec![0, 0], vec![], vec![]),
        Err(Error::IndexOverflow { bits: 16, .. })
    ));
}

#[test]
fn byte_level_checks() {
    let bytes = sample().to_bytes();
    let err = |b: &[u8]| match Csr::<f32, u16>::from_bytes(b) {
        Err(Error::Format { error, .. }) => error,
        other => panic!("expected a format error, got {other:?}"),
    };
    assert!(matches!(
        err(b"NOTACSR!\x01\0\0\0"),
        FormatError::Envelope(shears_core::FormatError::BadMagic { .. })
    ));
    let mut v = bytes.clone();
    v[8] = 7;
    assert!(matches!(
        err(&v),
        FormatError::Envelope(shears_core::FormatError::UnsupportedVersion {
            found: 7,
            supported: 1
        })
    ));
    assert!(matches!(
        err(&bytes[..10]),
        FormatError::Envelope(shears_core::FormatError::Corrupted { .. })
    ));
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        err(&long),
        FormatError::Envelope(shears_core::FormatError::TrailingBytes { count: 1 })
    ));
    // A u16 file read as u32 indices, or f32 values as f64, is a type error, not garbage.
    assert!(matches!(
        Csr::<f32, u32>::from_bytes(&bytes),
        Err(Error::Format { error: FormatError::InvalidStructure { .. }, .. })
    ));
    assert!(Csr::<f64, u16>::from_bytes(&bytes).is_err());
}

#[test]
fn nm_and_bsr_validation() {
    let p = NmPattern::TWO_FOUR;
    assert!(matches!(
        NmSparse::<f32>::try_from_parts(1, 4, p, vec![0.0; 3], vec![0; 2]),
        Err(Error::Format { error: FormatError::BufferLength { what: "values", .. }, .. })
    ));
    assert!(matches!(
        NmSparse::<f32>::try_from_parts(1, 4, p, vec![0.0; 2], vec![0; 3]),
        Err(Error::Format { error: FormatError::BufferLength { what: "positions", .. }, .. })
    ));
    assert!(matches!(
        NmSparse::<f32>::try_from_parts(1, 6, p, vec![0.0; 4], vec![0, 1, 0, 2]),
        Err(Error::Format {
            error: FormatError::PositionOutOfRange { row: 0, group: 1, position: 2 },
            ..
        })
    ));
    // No columns means no slots, so nothing else bounds the rows.
    assert!(NmSparse::<f32>::try_from_parts(shears_core::MAX_SIDE, 0, p, vec![], vec![]).is_ok());
    assert!(matches!(
        NmSparse::<f32>::try_from_parts(shears_core::MAX_SIDE + 1, 0, p, vec![], vec![]),
        Err(Error::Format { error: FormatError::InvalidStructure { .. }, .. })
    ));
    let w = DMatrix::from_element(2, 4, 1.0f32);
    let err = NmSparse::from_dense_masked(&w, &Mask::all_kept(2, 4).unwrap(), p).unwrap_err();
    assert_eq!(err, Error::NotNm { pattern: p, row: 0, col: 0 });
    assert!(err.to_string().contains("2:4"));
    assert!(matches!(
        NmSparse::from_dense_masked(&w, &Mask::all_kept(1, 4).unwrap(), p),
        Err(Error::Core(_))
    ));
    let b = BlockShape::new(2, 2).unwrap();
    assert!(matches!(
        BlockSparse::<f32>::try_from_parts(2, 4, b, vec![0, 1], vec![0], vec![0.0; 3]),
        Err(Error::Format { error: FormatError::BufferLength { .. }, .. })
    ));
    assert!(matches!(
        BlockSparse::<f32>::try_from_parts(2, 4, b, vec![0, 1], vec![2], vec![0.0; 4]),
        Err(Error::Format { error: FormatError::IndexOutOfRange { .. }, .. })
    ));
    assert!(matches!(
        BlockSparse::from_dense_masked(&w, &Mask::all_kept(1, 4).unwrap(), b),
        Err(Error::Core(_))
    ));
    // Blocks taller than any index keep the buffers tiny, but a usize::MAX square matrix
    // could never be made dense: its element count wraps.
    let huge = BlockShape::new(1 << (usize::BITS - 2), 2).unwrap();
    let refused = BlockSparse::<f32>::try_from_parts(
        usize::MAX,
        usize::MAX,
        huge,
        vec![0; 5],
        vec![],
        vec![],
    );
    assert!(matches!(
        refused,
        Err(Error::Format { error: FormatError::InvalidStructure { .. }, .. })
    ));
}

/// 11 rows of lengths 0..=8 over 9 columns in windows of 8: a full slice, then a window
/// and a slice cut short by the last row.
fn sell_sample() -> SlicedEll<f32, u16> {
    let w = DMatrix::from_fn(11, 9, |r, c| (r * 9 + c) as f32 + 1.0);
    let mask = Mask::from_fn(11, 9, |r, c| c < (r * 5) % 9).unwrap();
    SlicedEll::from_csr_with_window(&Csr::from_dense_masked(&w, &mask).unwrap(), 8).unwrap()
}

#[track_caller]
fn sell_rejects(
    corrupt: impl FnOnce(&mut SlicedEllParts<f32, u16>),
    check: impl Fn(&FormatError) -> bool,
) {
    let mut parts = sell_sample().into_parts();
    corrupt(&mut parts);
    match SlicedEll::try_from_parts(parts) {
        Err(Error::Format { format: "sell", error }) => assert!(check(&error), "{error:?}"),
        other => panic!("expected a format error, got {other:?}"),
    }
}

#[test]
fn every_single_field_corruption_of_a_sliced_ell_is_rejected() {
    let base = sell_sample().into_parts();
    assert_eq!(base.lengths[..8].iter().max(), Some(&8), "lane 0 of slice 0 is full");
    // The first padding entry: lane 7 of slice 0 is its shortest.
    let (short, width) = (base.lengths[7], base.lengths[0]);
    assert!(short < width);
    let pad = base.slice_ptr[0] + short * SLICE_ROWS + 7;
    let structure = |e: &FormatError| matches!(e, FormatError::InvalidStructure { .. });
    sell_rejects(|p| p.window = 12, structure);
    sell_rejects(|p| p.window = 0, structure);
    sell_rejects(
        |p| p.order.truncate(p.order.len() - 1),
        |e| matches!(e, FormatError::BufferLength { what: "order", expected: 11, found: 10 }),
    );
    sell_rejects(
        |p| p.lengths.truncate(p.lengths.len() - 1),
        |e| matches!(e, FormatError::BufferLength { what: "lengths", .. }),
    );
    sell_rejects(
        |p| p.order[0] = 11,
        |e| matches!(e, FormatError::RowOrder { lane: 0, row: 11, reason: "past the last row" }),
    );
    sell_rejects(
        |p| p.order[0] = p.order[8],
        |e| matches!(e, FormatError::RowOrder { lane: 0, reason: "outside the lane's window", .. }),
    );
    sell_rejects(
        |p| p.order[1] = p.order[0],
        |e| {
            matches!(
                e,
                FormatError::RowOrder { lane: 1, reason: "already held by another lane", .. }
            )
        },
    );
    sell_rejects(
        |p| p.slice_ptr.truncate(p.slice_ptr.len() - 1),
        |e| matches!(e, FormatError::BufferLength { what: "slice_ptr", .. }),
    );
    sell_rejects(|p| p.slice_ptr[0] = 8, structure);
    sell_rejects(|p| p.slice_ptr[2] = p.slice_ptr[1] - 8, structure);
    sell_rejects(
        |p| p.lengths[0] += 1,
        |e| matches!(e, FormatError::SliceWidth { slice: 0, expected: 72, found: 64 }),
    );
    sell_rejects(
        |p| p.indices[0] = 9,
        |e| matches!(e, FormatError::IndexOutOfRange { index: 9, ncols: 9, .. }),
    );
    sell_rejects(
        |p| p.indices.swap(0, SLICE_ROWS),
        |e| matches!(e, FormatError::UnsortedIndices { .. }),
    );
    sell_rejects(
        |p| p.values[pad] = 1.0,
        |e| matches!(e, FormatError::PaddingNotEmpty { slice: 0, lane: 7, .. }),
    );
    sell_rejects(
        |p| p.indices[pad] = 1,
        |e| matches!(e, FormatError::PaddingNotEmpty { slice: 0, lane: 7, .. }),
    );
    // The last slice has 3 lanes; its other 5 are padding too.
    let last = base.slice_ptr[1] + SLICE_ROWS - 1;
    sell_rejects(
        |p| p.values[last] = 2.0,
        |e| matches!(e, FormatError::PaddingNotEmpty { slice: 1, lane: 7, step: 0 }),
    );
    sell_rejects(
        |p| p.values.truncate(p.values.len() - 1),
        |e| matches!(e, FormatError::LengthMismatch { .. }),
    );
    sell_rejects(
        |p| {
            p.values.truncate(p.values.len() - SLICE_ROWS);
            p.indices.truncate(p.indices.len() - SLICE_ROWS);
        },
        |e| matches!(e, FormatError::BufferLength { what: "values", .. }),
    );
    let wide = SlicedEllParts::<f32, u16> {
        nrows: 0,
        ncols: 70_000,
        window: 8,
        order: vec![],
        lengths: vec![],
        slice_ptr: vec![0],
        indices: vec![],
        values: vec![],
    };
    assert!(matches!(SlicedEll::try_from_parts(wide), Err(Error::IndexOverflow { bits: 16, .. })));
    assert!(SlicedEll::try_from_parts(base).is_ok());
}

#[test]
fn sell_byte_level_checks() {
    let bytes = sell_sample().to_bytes();
    assert_eq!(&bytes[..8], b"SHEARSEL");
    let err = |b: &[u8]| match SlicedEll::<f32, u16>::from_bytes(b) {
        Err(Error::Format { format: "sell", error }) => error,
        other => panic!("expected a format error, got {other:?}"),
    };
    assert!(matches!(
        err(&sample().to_bytes()),
        FormatError::Envelope(shears_core::FormatError::BadMagic { .. })
    ));
    let mut v = bytes.clone();
    v[8] = 2;
    assert!(matches!(
        err(&v),
        FormatError::Envelope(shears_core::FormatError::UnsupportedVersion { found: 2, .. })
    ));
    assert!(matches!(
        err(&bytes[..bytes.len() - 1]),
        FormatError::Envelope(shears_core::FormatError::Corrupted { .. })
    ));
    assert!(matches!(
        SlicedEll::<f32, u32>::from_bytes(&bytes),
        Err(Error::Format { error: FormatError::InvalidStructure { .. }, .. })
    ));
    assert!(SlicedEll::<f64, u16>::from_bytes(&bytes).is_err());
}

proptest! {
    /// Any flipped byte or truncation of any format: an error or a valid matrix, never a panic.
    #[test]
    fn corrupted_bytes_never_panic(at in any::<prop::sample::Index>(), flip in 1u8..=255, cut in any::<prop::sample::Index>()) {
        let csr = sample();
        let w = csr.to_dense();
        let nm = NmSparse::from_dense_masked(&w, &Mask::from_fn(4, 6, |_, c| c % 4 < 2).unwrap(), NmPattern::TWO_FOUR).unwrap();
        let bsr = BlockSparse::from_dense(&w, BlockShape::new(3, 2).unwrap()).unwrap();
        let sell = sell_sample();
        for bytes in [csr.to_bytes(), nm.to_bytes(), bsr.to_bytes(), sell.to_bytes()] {
            let mut flipped = bytes.clone();
            let i = at.index(flipped.len());
            flipped[i] ^= flip;
            let cut_bytes = &bytes[..cut.index(bytes.len())];
            for b in [flipped.as_slice(), cut_bytes] {
                if let Ok(m) = Csr::<f32, u16>::from_bytes(b) {
                    // Compare bytes: a flipped value byte may decode to NaN, which is never == itself.
                    prop_assert_eq!(Csr::<f32, u16>::from_bytes(&m.to_bytes()).unwrap().to_bytes(), m.to_bytes());
                    let _ = m.to_dense();
                }
                if let Ok(m) = NmSparse::<f32>::from_bytes(b) {
                    let _ = m.to_dense();
                }
                if let Ok(m) = BlockSparse::<f32>::from_bytes(b) {
                    let _ = m.to_dense();
                }
                if let Ok(m) = SlicedEll::<f32, u16>::from_bytes(b) {
                    let _ = m.to_dense();
                    let (rows, cols) = m.shape();
                    let mut y = vec![0.0; rows];
                    m.matvec_into(1.0, &vec![1.0; cols], 0.0, &mut y).unwrap();
                }
            }
        }
    }
}
