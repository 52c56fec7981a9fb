//! Round trips: every format to the same dense matrix, parts and bytes round-trip.

use nalgebra::{DMatrix, DVector};
use proptest::prelude::*;
use shears_core::{BlockShape, Mask, NmPattern, proptest as arb};
use shears_sparse::{
    AnyCsr, AnySlicedEll, Bf16Block, Bf16Csr, Bf16Nm, Bf16Sell, BlockSparse, Compacted, Compaction,
    Csr, F16Block, F16Csr, F16Nm, F16Sell, Format, Int8Block, Int8Csr, Int8Matrix, Int8Nm,
    Int8Sell, NmSparse, QuantScheme, SlicedEll, choose_format, compact_pair,
};

fn masked(max: usize) -> impl Strategy<Value = (DMatrix<f32>, Mask)> {
    arb::shape(max).prop_flat_map(|(r, c)| (arb::matrix_f32(r, c), arb::mask(r, c)))
}

/// A mask that keeps at most n of every m along rows: the pattern N:M pruning produces.
fn nm_mask(nrows: usize, ncols: usize, p: NmPattern, seed: u64) -> Mask {
    Mask::from_fn(nrows, ncols, |r, c| ((c % p.m()) + (r + seed as usize)) % p.m() < p.n()).unwrap()
}

proptest! {
    #[test]
    fn csr_round_trips((w, mask) in masked(24)) {
        let expected = mask.apply(&w).unwrap();
        let csr: Csr<f32, u16> = Csr::from_dense_masked(&w, &mask).unwrap();
        prop_assert_eq!(csr.nnz(), mask.count_kept());
        prop_assert_eq!(csr.to_dense(), expected.clone());
        let (r, c, p, i, v) = csr.clone().into_parts();
        let back = Csr::try_from_parts(r, c, p, i, v).unwrap();
        prop_assert_eq!(&back, &csr);
        prop_assert_eq!(Csr::<f32, u16>::from_bytes(&csr.to_bytes()).unwrap(), csr.clone());
        let wide: Csr<f32, u32> = Csr::from_dense_masked(&w, &mask).unwrap();
        prop_assert_eq!(wide.to_dense(), expected.clone());
        #[cfg(feature = "sprs")]
        prop_assert_eq!(Csr::<f32, u16>::from_sprs(&csr.to_sprs()).unwrap(), csr);
        prop_assert_eq!(AnyCsr::from_dense_masked(&w, &mask).unwrap().to_dense(), expected);
    }

    #[test]
    fn sell_round_trips((w, mask) in masked(40), window in (1usize..6).prop_map(|k| 8 * k)) {
        let expected = mask.apply(&w).unwrap();
        let csr: Csr<f32, u16> = Csr::from_dense_masked(&w, &mask).unwrap();
        let sell = SlicedEll::from_csr_with_window(&csr, window).unwrap();
        prop_assert_eq!(sell.nnz(), mask.count_kept());
        prop_assert!(sell.stored() >= sell.nnz());
        prop_assert_eq!(sell.to_dense(), expected.clone());
        prop_assert_eq!(&sell.to_csr(), &csr);
        let back = SlicedEll::try_from_parts(sell.clone().into_parts()).unwrap();
        prop_assert_eq!(&back, &sell);
        prop_assert_eq!(SlicedEll::<f32, u16>::from_bytes(&sell.to_bytes()).unwrap(), sell.clone());
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&sell, cfg).unwrap();
        let (decoded, _): (SlicedEll<f32, u16>, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        prop_assert_eq!(decoded, sell);
        let any = AnySlicedEll::from_dense_masked(&w, &mask).unwrap();
        prop_assert_eq!(any.nnz(), mask.count_kept());
        prop_assert_eq!(any.to_dense(), expected.clone());
        prop_assert_eq!(AnySlicedEll::from_dense(&expected).unwrap().to_dense(), expected);
    }

    #[test]
    fn nm_round_trips((r, c) in (0usize..12, 0usize..30), seed in 0u64..4, (n, m) in (1usize..=8).prop_flat_map(|m| (1..=m, Just(m)))) {
        let p = NmPattern::new(n, m).unwrap();
        let w = DMatrix::from_fn(r, c, |i, j| (i * 31 + j) as f64 * 0.5 + 1.0);
        let mask = nm_mask(r, c, p, seed);
        let nm = NmSparse::from_dense_masked(&w, &mask, p).unwrap();
        prop_assert_eq!(nm.to_dense(), mask.apply(&w).unwrap());
        let (a, b, pat, v, pos) = nm.clone().into_parts();
        prop_assert_eq!(&NmSparse::try_from_parts(a, b, pat, v, pos).unwrap(), &nm);
        prop_assert_eq!(NmSparse::<f64>::from_bytes(&nm.to_bytes()).unwrap(), nm.clone());
        prop_assert_eq!(NmSparse::from_dense(&nm.to_dense(), p).unwrap().to_dense(), nm.to_dense());
    }

    #[test]
    fn bsr_round_trips((w, mask) in masked(20), (br, bc) in (1usize..5, 1usize..5)) {
        let block = BlockShape::new(br, bc).unwrap();
        let bsr = BlockSparse::from_dense_masked(&w, &mask, block).unwrap();
        prop_assert_eq!(bsr.to_dense(), mask.apply(&w).unwrap());
        let (a, b, blk, p, cols, v) = bsr.clone().into_parts();
        prop_assert_eq!(&BlockSparse::try_from_parts(a, b, blk, p, cols, v).unwrap(), &bsr);
        prop_assert_eq!(BlockSparse::<f32>::from_bytes(&bsr.to_bytes()).unwrap(), bsr);
    }

    #[test]
    fn serde_round_trips((w, mask) in masked(12)) {
        let cfg = bincode::config::standard();
        let csr: Csr<f32, u32> = Csr::from_dense_masked(&w, &mask).unwrap();
        let bytes = bincode::serde::encode_to_vec(&csr, cfg).unwrap();
        let (back, _): (Csr<f32, u32>, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        prop_assert_eq!(back, csr);
    }

    #[test]
    fn compaction_preserves_the_product((w, mask) in masked(16), x in proptest::collection::vec(-1.0f32..1.0, 16)) {
        let c = Compacted::new(&w, &mask, Compaction::RowsAndColumns, None).unwrap();
        let x = DMatrix::from_fn(w.ncols(), 1, |i, _| x[i]);
        let full = mask.apply(&w).unwrap() * &x;
        let small = c.matrix() * c.gather_input(&x).unwrap();
        let back = c.scatter_output(&small).unwrap();
        prop_assert!((back - full).amax() < 1e-4);
    }
}

/// The compacted pair computes the unmodified masked network, dead neurons with non-zero
/// biases included (their constant outputs move into the next bias).
#[test]
fn compact_pair_keeps_the_mlp_function() {
    let w1 = DMatrix::from_fn(6, 4, |r, c| (r * 4 + c) as f64 * 0.1 - 1.0);
    let b1 = DVector::from_fn(6, |r, _| r as f64 * 0.3 - 0.4);
    let mask = Mask::from_fn(6, 4, |r, _| r % 3 != 0).unwrap();
    assert!(mask.fully_pruned_rows().iter().any(|&r| b1[r] > 0.0), "a dead neuron fires");
    let w2 = DMatrix::from_fn(3, 6, |r, c| (r + c) as f64 * 0.2 - 0.3);
    let b2 = DVector::from_fn(3, |r, _| r as f64);
    let relu = |z: f64| z.max(0.0);
    for x in [DVector::from_fn(4, |i, _| i as f64 - 1.5), DVector::from_element(4, 0.7)] {
        let full = &w2 * (mask.apply(&w1).unwrap() * &x + &b1).map(relu) + &b2;
        let (first, w2_small, b2_small) = compact_pair(&w1, &b1, &mask, &w2, &b2, relu).unwrap();
        let small = &w2_small * (first.matrix() * &x + first.bias().unwrap()).map(relu) + &b2_small;
        assert_eq!(first.matrix().nrows(), 4);
        assert!((full - small).amax() < 1e-12);
    }
    assert!(compact_pair(&w1, &b1, &mask, &DMatrix::zeros(3, 5), &b2, relu).is_err());
    assert!(compact_pair(&w1, &b1, &mask, &w2, &DVector::zeros(2), relu).is_err());
}

#[test]
fn format_choice() {
    let rows = Mask::from_fn(32, 32, |r, _| r < 16).unwrap();
    assert_eq!(choose_format(&rows, 32), Format::Compact);
    let nm = Mask::from_fn(256, 256, |r, c| (c + r) % 8 < 4).unwrap();
    assert_eq!(choose_format(&nm, 1), Format::Nm(NmPattern::new(4, 8).unwrap()));
    assert_eq!(choose_format(&nm, 32), Format::Nm(NmPattern::new(4, 8).unwrap()));
    assert_eq!(choose_format(&nm, 33), Format::Dense, "past N:M's batches, 50% is too dense");
    let light = Mask::from_fn(256, 256, |r, c| (r + c) % 3 != 0).unwrap();
    assert_eq!(choose_format(&light, 1), Format::Dense);
    let half = Mask::from_fn(256, 256, |r, c| (r * 7 + c) % 10 < 5).unwrap();
    assert_eq!(choose_format(&half, 32), Format::Csr);
    assert_eq!(choose_format(&half, 33), Format::Dense);
    let heavy = Mask::from_fn(256, 256, |r, c| (r * 5 + c) % 20 == 0).unwrap();
    assert_eq!(choose_format(&heavy, 128), Format::Csr);
    assert_eq!(choose_format(&heavy, 2), Format::Csr);
    assert_eq!(choose_format(&heavy, 1), Format::SlicedEll);
    assert_eq!(choose_format(&half, 1), Format::Dense, "at batch 1, 50% is too dense");
    let pruned_65 = Mask::from_fn(256, 256, |r, c| (r * 7 + c) % 20 < 7).unwrap();
    assert_eq!(choose_format(&pruned_65, 1), Format::SlicedEll);
    assert_eq!(choose_format(&pruned_65, 128), Format::Dense);
    let pruned_75 = Mask::from_fn(256, 256, |r, c| (r * 3 + c) % 4 == 0).unwrap();
    assert_eq!(choose_format(&pruned_75, 128), Format::Csr);
    assert_eq!(Format::SlicedEll.to_string(), "sell");
    let small = Mask::from_fn(32, 32, |r, c| (r * 5 + c) % 20 == 0).unwrap();
    assert_eq!(choose_format(&small, 1), Format::Dense);
    assert_eq!(choose_format(&Mask::all_kept(0, 0).unwrap(), 1), Format::Dense);
}

proptest! {
    /// The narrow-valued formats and dense int8 round-trip through their bytes and serde,
    /// value for value (bits for bf16 and f16).
    #[test]
    fn narrow_formats_round_trip((w, mask) in masked(16), group in 1usize..6, seed in 0u64..4) {
        let cfg = bincode::config::standard();
        let csr: Csr<f32, u16> = Csr::from_dense_masked(&w, &mask).unwrap();
        let int8 = Int8Csr::from_csr(&csr).unwrap();
        prop_assert_eq!(&Int8Csr::<u16>::from_bytes(&int8.to_bytes()).unwrap(), &int8);
        let bf16 = Bf16Csr::from_csr(&csr).unwrap();
        prop_assert_eq!(&Bf16Csr::<u16>::from_bytes(&bf16.to_bytes()).unwrap(), &bf16);
        let f16 = F16Csr::from_csr(&csr).unwrap();
        prop_assert_eq!(&F16Csr::<u16>::from_bytes(&f16.to_bytes()).unwrap(), &f16);
        let bytes = bincode::serde::encode_to_vec(&int8, cfg).unwrap();
        let (back, _): (Int8Csr<u16>, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        prop_assert_eq!(back, int8);

        let sell = SlicedEll::from_csr(&csr);
        let int8 = Int8Sell::from_sell(&sell).unwrap();
        prop_assert_eq!(&Int8Sell::<u16>::from_bytes(&int8.to_bytes()).unwrap(), &int8);
        let bf16 = Bf16Sell::from_sell(&sell).unwrap();
        prop_assert_eq!(&Bf16Sell::<u16>::from_bytes(&bf16.to_bytes()).unwrap(), &bf16);
        let f16 = F16Sell::from_sell(&sell).unwrap();
        prop_assert_eq!(&F16Sell::<u16>::from_bytes(&f16.to_bytes()).unwrap(), &f16);
        let bytes = bincode::serde::encode_to_vec(&bf16, cfg).unwrap();
        let (back, _): (Bf16Sell<u16>, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        prop_assert_eq!(back, bf16);

        let shape = BlockShape::new(1 + seed as usize % 3, group).unwrap();
        let block = BlockSparse::from_dense_masked(&w, &mask, shape).unwrap();
        let int8 = Int8Block::from_block(&block).unwrap();
        prop_assert_eq!(&Int8Block::from_bytes(&int8.to_bytes()).unwrap(), &int8);
        let bf16 = Bf16Block::from_block(&block).unwrap();
        prop_assert_eq!(&Bf16Block::from_bytes(&bf16.to_bytes()).unwrap(), &bf16);
        let f16 = F16Block::from_block(&block).unwrap();
        prop_assert_eq!(&F16Block::from_bytes(&f16.to_bytes()).unwrap(), &f16);
        let bytes = bincode::serde::encode_to_vec(&int8, cfg).unwrap();
        let (back, _): (Int8Block, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        prop_assert_eq!(back, int8);

        let p = NmPattern::TWO_FOUR;
        let nm_mask = nm_mask(w.nrows(), w.ncols(), p, seed);
        let nm = NmSparse::from_dense_masked(&w, &nm_mask, p).unwrap();
        let int8 = Int8Nm::from_nm(&nm).unwrap();
        prop_assert_eq!(&Int8Nm::from_bytes(&int8.to_bytes()).unwrap(), &int8);
        let bf16 = Bf16Nm::from_nm(&nm).unwrap();
        prop_assert_eq!(&Bf16Nm::from_bytes(&bf16.to_bytes()).unwrap(), &bf16);
        let f16 = F16Nm::from_nm(&nm).unwrap();
        prop_assert_eq!(&F16Nm::from_bytes(&f16.to_bytes()).unwrap(), &f16);

        for scheme in [QuantScheme::PerRow, QuantScheme::PerGroup(group)] {
            let dense = Int8Matrix::quantize(&w, scheme).unwrap();
            prop_assert_eq!(&Int8Matrix::from_bytes(&dense.to_bytes()).unwrap(), &dense);
            let bytes = bincode::serde::encode_to_vec(&dense, cfg).unwrap();
            let (back, _): (Int8Matrix, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
            prop_assert_eq!(back, dense);
        }
    }
}

/// A narrow file read as another value or index type, or as another format, is an error
/// that says so; so is one whose values or groups break the format's rules.
#[test]
fn narrow_files_are_read_only_as_what_they_hold() {
    let w = DMatrix::from_row_slice(2, 4, &[1.0f32, 0.0, -2.0, 0.0, 0.0, 3.0, 0.0, 0.5]);
    let nm = NmSparse::from_dense(&w, NmPattern::TWO_FOUR).unwrap();
    let bf16 = Bf16Nm::from_nm(&nm).unwrap().to_bytes();
    let e = Int8Nm::from_bytes(&bf16).unwrap_err().to_string();
    assert!(e.contains("stored values are bf16, this type reads int8"), "{e}");
    assert!(F16Nm::from_bytes(&bf16).is_err());
    assert!(NmSparse::<f32>::from_bytes(&bf16).is_err(), "another format's magic");
    let csr: Csr<f32, u32> = Csr::from_dense(&w).unwrap();
    let int8 = Int8Csr::from_csr(&csr).unwrap().to_bytes();
    let e = Int8Csr::<u16>::from_bytes(&int8).unwrap_err().to_string();
    assert!(e.contains("index type"), "{e}");
    assert!(Int8Csr::<u32>::from_bytes(&int8[..int8.len() - 1]).is_err(), "truncated");
    let bf16_csr = Bf16Csr::from_csr(&csr).unwrap().to_bytes();
    let e = Int8Csr::<u32>::from_bytes(&bf16_csr).unwrap_err().to_string();
    assert!(e.contains("stored values are bf16, this type reads int8"), "{e}");
    let sell = Int8Sell::from_csr(&csr).unwrap().to_bytes();
    let e = Int8Sell::<u16>::from_bytes(&sell).unwrap_err().to_string();
    assert!(e.contains("index type"), "{e}");
    let e = Bf16Sell::<u32>::from_bytes(&sell).unwrap_err().to_string();
    assert!(e.contains("stored values are int8, this type reads bf16"), "{e}");
    assert!(SlicedEll::<f32, u32>::from_bytes(&sell).is_err(), "another format's magic");
    assert!(Int8Sell::<u32>::from_bytes(&sell[..sell.len() - 1]).is_err(), "truncated");
    let block = Int8Block::from_dense(&w, BlockShape::new(2, 2).unwrap()).unwrap().to_bytes();
    let e = F16Block::from_bytes(&block).unwrap_err().to_string();
    assert!(e.contains("stored values are int8, this type reads f16"), "{e}");
    assert!(BlockSparse::<f32>::from_bytes(&block).is_err(), "another format's magic");
    // Files whose values break the rules: -128, not a symmetric int8 value; three bytes,
    // not a whole number of bf16 values.
    let patch = |bytes: &[u8], from: &[u8], to: &[u8]| -> Vec<u8> {
        let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
        let mut out = bytes.to_vec();
        out[at..at + to.len()].copy_from_slice(to);
        out
    };
    let row = DMatrix::from_row_slice(1, 4, &[17.0f32, 0.0, 34.0, 0.0]);
    let int8 = Int8Nm::from_nm(&NmSparse::from_dense(&row, NmPattern::TWO_FOUR).unwrap()).unwrap();
    assert_eq!(int8.values(), [64, 127]);
    let bad = patch(&int8.to_bytes(), &[64, 127], &[0x80]);
    let e = Int8Nm::from_bytes(&bad).unwrap_err().to_string();
    assert!(e.contains("-128") && e.contains("not a int8 value"), "{e}");
    let three = NmPattern::new(3, 4).unwrap();
    let odd = Int8Nm::from_nm(&NmSparse::from_dense(&row, three).unwrap()).unwrap().to_bytes();
    let e = Bf16Nm::from_bytes(&patch(&odd, b"int8", b"bf16")).unwrap_err().to_string();
    assert!(e.contains("3 value bytes are not a whole number of bf16 values"), "{e}");
    // A group of no columns.
    let grouped = Int8Matrix::quantize(&w, QuantScheme::PerGroup(3)).unwrap().to_bytes();
    let zero_group = patch(&grouped, &[2, 4, 1, 3], &[2, 4, 1, 0]);
    let e = Int8Matrix::from_bytes(&zero_group).unwrap_err().to_string();
    assert!(e.contains("group of 0 columns"), "{e}");
    let dense = Int8Matrix::quantize(&w, QuantScheme::PerRow).unwrap().to_bytes();
    assert!(Int8Matrix::from_bytes(&dense).is_ok());
    assert!(Int8Matrix::from_bytes(&dense[..dense.len() - 3]).is_err(), "truncated");
    assert!(Int8Matrix::from_bytes(&bf16).is_err(), "another format's magic");
}
