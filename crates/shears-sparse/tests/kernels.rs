//! Every kernel against nalgebra's dense product on the masked matrix; thread determinism.

use nalgebra::{DMatrix, DVector};
use proptest::prelude::*;
use shears_core::{BlockShape, Mask, NmPattern, proptest as arb};
use shears_sparse::{
    AnySlicedEll, Bf16Csr, BlockSparse, Csr, Int8Csr, Int8Matrix, Int8Nm, NmSparse, QuantScheme,
    SlicedEll, SparseProduct,
};

/// f32 products of length <= 64 with inputs in [-1, 1]: |error| < 64 * 2^-23 * sum|a x|.
const TOL: f32 = 1e-4;

fn case(max: usize) -> impl Strategy<Value = (DMatrix<f32>, Mask, DMatrix<f32>)> {
    (arb::shape(max), 1usize..40).prop_flat_map(|((r, c), b)| {
        (arb::matrix_f32(r, c), arb::mask(r, c), arb::matrix_f32(c, b))
    })
}

fn close(a: &DMatrix<f32>, b: &DMatrix<f32>) -> bool {
    a.shape() == b.shape() && a.iter().zip(b.iter()).all(|(x, y)| (x - y).abs() <= TOL)
}

proptest! {
    #[test]
    fn csr_matches_dense((w, mask, x) in case(40), alpha in -2.0f32..2.0, beta in -2.0f32..2.0) {
        let dense = mask.apply(&w).unwrap();
        let csr: Csr<f32, u16> = Csr::from_dense_masked(&w, &mask).unwrap();
        prop_assert!(close(&csr.matmul(&x).unwrap(), &(&dense * &x)));
        let v = DVector::from_column_slice(x.column(0).as_slice());
        let got = csr.matvec(&v).unwrap();
        prop_assert!(close(&DMatrix::from_column_slice(got.len(), 1, got.as_slice()), &DMatrix::from_column_slice(got.len(), 1, (&dense * &v).as_slice())));
        // BLAS form, including beta != 0.
        let mut y = DMatrix::from_fn(w.nrows(), x.ncols(), |r, c| (r + c) as f32 * 0.01);
        let expected = &dense * &x * alpha + &y * beta;
        csr.matmul_into(alpha, &x, beta, &mut y).unwrap();
        prop_assert!(close(&y, &expected));
    }

    #[test]
    fn sell_matches_dense((w, mask, x) in case(40), alpha in -2.0f32..2.0, beta in -2.0f32..2.0, window in (1usize..4).prop_map(|k| 8 * k)) {
        let dense = mask.apply(&w).unwrap();
        let csr: Csr<f32, u16> = Csr::from_dense_masked(&w, &mask).unwrap();
        let sell = SlicedEll::from_csr_with_window(&csr, window).unwrap();
        let v = DVector::from_column_slice(x.column(0).as_slice());
        prop_assert!((sell.matvec(&v).unwrap() - &dense * &v).amax() <= TOL);
        let mut yv: Vec<f32> = (0..w.nrows()).map(|r| r as f32 * 0.01).collect();
        let expected = (&dense * &v) * alpha + DVector::from_column_slice(&yv) * beta;
        sell.matvec_into(alpha, v.as_slice(), beta, &mut yv).unwrap();
        prop_assert!((DVector::from_column_slice(&yv) - expected).amax() <= TOL);
        // Batched products run CSR's tiles on each row (the same bits as CSR); a batch
        // of one runs the batch-1 kernel.
        if x.ncols() == 1 {
            let (got, want) = (sell.matmul(&x).unwrap(), sell.matvec(&v).unwrap());
            prop_assert_eq!(got.as_slice(), want.as_slice());
        } else {
            prop_assert_eq!(sell.matmul(&x).unwrap(), csr.matmul(&x).unwrap());
        }
        let mut y = DMatrix::from_fn(w.nrows(), x.ncols(), |r, c| (r + c) as f32 * 0.01);
        let expected = &dense * &x * alpha + &y * beta;
        sell.matmul_into(alpha, &x, beta, &mut y).unwrap();
        prop_assert!(close(&y, &expected));
        let mut y = DMatrix::from_element(w.nrows(), x.ncols(), f32::NAN);
        sell.matmul_into(1.0, &x, 0.0, &mut y).unwrap();
        prop_assert!(y.iter().all(|v| v.is_finite()));
        let mut yv = vec![f32::NAN; w.nrows()];
        sell.matvec_into(1.0, v.as_slice(), 0.0, &mut yv).unwrap();
        prop_assert!(yv.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn a_batch_of_one_is_the_batch_1_product((w, mask, x) in case(40), alpha in -2.0f32..2.0, beta in -2.0f32..2.0) {
        let x = x.columns(0, 1).into_owned();
        let y0 = DMatrix::from_fn(w.nrows(), 1, |r, _| r as f32 * 0.01);
        let csr: Csr<f32, u16> = Csr::from_dense_masked(&w, &mask).unwrap();
        let sell = SlicedEll::from_csr(&csr);
        let bsr = BlockSparse::from_dense_masked(&w, &mask, BlockShape::new(2, 3).unwrap()).unwrap();
        let formats: [&dyn SparseProduct<f32>; 3] = [&csr, &sell, &bsr];
        for format in formats {
            let (mut batched, mut single) = (y0.clone(), y0.clone());
            format.matmul_into(alpha, &x, beta, &mut batched).unwrap();
            format.matvec_into(alpha, x.as_slice(), beta, single.as_mut_slice()).unwrap();
            prop_assert_eq!(batched.map(f32::to_bits), single.map(f32::to_bits));
        }
        let nm_mask = Mask::from_fn(w.nrows(), w.ncols(), |r, c| (r + c) % 4 < 2).unwrap();
        let nm = NmSparse::from_dense_masked(&w, &nm_mask, NmPattern::TWO_FOUR).unwrap();
        let (mut batched, mut single) = (y0.clone(), y0);
        nm.matmul_into(alpha, &x, beta, &mut batched).unwrap();
        nm.matvec_into(alpha, x.as_slice(), beta, single.as_mut_slice()).unwrap();
        prop_assert_eq!(batched.map(f32::to_bits), single.map(f32::to_bits));
    }

    #[test]
    fn beta_zero_does_not_read_y((w, mask, x) in case(20)) {
        let csr: Csr<f32, u32> = Csr::from_dense_masked(&w, &mask).unwrap();
        let mut y = DMatrix::from_element(w.nrows(), x.ncols(), f32::NAN);
        csr.matmul_into(1.0, &x, 0.0, &mut y).unwrap();
        prop_assert!(y.iter().all(|v| v.is_finite()));
        let mut yv = vec![f32::NAN; w.nrows()];
        csr.matvec_into(1.0, x.column(0).as_slice(), 0.0, &mut yv).unwrap();
        prop_assert!(yv.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn nm_matches_dense((r, c, b) in (0usize..20, 0usize..40, 1usize..40), (n, m) in (1usize..=8).prop_flat_map(|m| (1..=m, Just(m)))) {
        let p = NmPattern::new(n, m).unwrap();
        let w = DMatrix::from_fn(r, c, |i, j| ((i * 7 + j * 3) % 11) as f32 / 11.0 - 0.5);
        let mask = Mask::from_fn(r, c, |i, j| (j % m + i) % m < n).unwrap();
        let x = DMatrix::from_fn(c, b, |i, j| ((i + 2 * j) % 5) as f32 / 5.0 - 0.4);
        let nm = NmSparse::from_dense_masked(&w, &mask, p).unwrap();
        let dense = mask.apply(&w).unwrap();
        prop_assert!(close(&nm.matmul(&x).unwrap(), &(&dense * &x)));
        let v = DVector::from_column_slice(x.column(0).as_slice());
        let got = nm.matvec(&v).unwrap();
        prop_assert!((got - &dense * &v).amax() <= TOL);
    }

    #[test]
    fn bsr_matches_dense((w, mask, x) in case(24), (br, bc) in (1usize..6, 1usize..6)) {
        let bsr = BlockSparse::from_dense_masked(&w, &mask, BlockShape::new(br, bc).unwrap()).unwrap();
        let dense = mask.apply(&w).unwrap();
        prop_assert!(close(&bsr.matmul(&x).unwrap(), &(&dense * &x)));
        let v = DVector::from_column_slice(x.column(0).as_slice());
        prop_assert!((bsr.matvec(&v).unwrap() - &dense * &v).amax() <= TOL);
    }
}

/// Batches wider than one panel of the batched kernels' copy of `X` (32 to 128 columns,
/// fewer the more inputs), the last panel narrower: each format against the dense
/// product, sliced ELLPACK with CSR's bits, bf16 values with their f32 format's bits.
#[test]
fn batches_past_one_panel() {
    for (rows, cols, batch) in [(19, 2500, 75), (40, 300, 261), (9, 1100, 70)] {
        let w = DMatrix::from_fn(rows, cols, |r, c| {
            let v = (((r * 7919 + c * 104_729) % 1000) as f32 / 500.0) - 1.0;
            half::bf16::from_f32(v).to_f32()
        });
        let mask = Mask::from_fn(rows, cols, |r, c| (r * 31 + c * 17) % 10 < 3).unwrap();
        let x = DMatrix::from_fn(cols, batch, |r, c| (((r * 13 + c * 7) % 17) as f32 - 8.0) / 8.0);
        let dense = mask.apply(&w).unwrap() * &x;
        let close = |y: &DMatrix<f32>| (y - &dense).amax() <= 1e-4 * dense.amax().max(1.0);
        let csr: Csr<f32, u16> = Csr::from_dense_masked(&w, &mask).unwrap();
        let by_csr = csr.matmul(&x).unwrap();
        assert!(close(&by_csr), "{rows}x{cols}, batch {batch}");
        let sell = SlicedEll::from_csr(&csr);
        assert_eq!(sell.matmul(&x).unwrap(), by_csr, "{rows}x{cols}, batch {batch}");
        let bf16: Bf16Csr<u16> = Bf16Csr::from_dense_masked(&w, &mask).unwrap();
        assert_eq!(bf16.matmul(&x).unwrap(), by_csr, "{rows}x{cols}, batch {batch}");
        let block = BlockShape::new(4, 4).unwrap();
        let bsr = BlockSparse::from_dense_masked(&w, &mask, block).unwrap();
        assert!(close(&bsr.matmul(&x).unwrap()), "{rows}x{cols}, batch {batch}");
        // The BLAS form, `Y` read and scaled.
        let y0 = DMatrix::from_fn(rows, batch, |r, c| ((r + 2 * c) % 5) as f32);
        let mut y = y0.clone();
        csr.matmul_into(0.5, &x, -2.0, &mut y).unwrap();
        assert!((y - (&dense * 0.5 - y0 * 2.0)).amax() <= 1e-4 * dense.amax().max(1.0));
    }
}

/// Int8 products (CSR, dense, N:M) past one panel of quantized tokens, split between
/// tasks by panels and rows, give each token the bits it gets in a batch of its own
/// (each token is quantized alone and its sums are exact integers), on any number of
/// threads, and stay within int8's error of the f32 product.
#[test]
fn int8_batches_past_one_panel() {
    let (rows, cols, batch) = (300, 1100, 261);
    let w = DMatrix::from_fn(rows, cols, |r, c| {
        (((r * 7919 + c * 104_729) % 1000) as f32 / 500.0) - 1.0
    });
    let mask = Mask::from_fn(rows, cols, |r, c| (r * 31 + c * 17) % 10 < 3).unwrap();
    let nm_mask = Mask::from_fn(rows, cols, |r, c| (c + r) % 4 < 2).unwrap();
    let x = DMatrix::from_fn(cols, batch, |r, c| (((r * 13 + c * 7) % 17) as f32 - 8.0) / 8.0);
    let csr: Csr<f32, u16> = Csr::from_dense_masked(&w, &mask).unwrap();
    let nm = NmSparse::from_dense_masked(&w, &nm_mask, NmPattern::TWO_FOUR).unwrap();
    type Product = Box<dyn SparseProduct<f32> + Sync>;
    let products: [(&str, Product, DMatrix<f32>); 3] = [
        ("csr", Box::new(Int8Csr::from_csr(&csr).unwrap()), csr.to_dense()),
        ("dense", Box::new(Int8Matrix::quantize(&w, QuantScheme::PerRow).unwrap()), w.clone()),
        ("n:m", Box::new(Int8Nm::from_nm(&nm).unwrap()), nm.to_dense()),
    ];
    let pool = |threads: usize| rayon::ThreadPoolBuilder::new().num_threads(threads).build();
    for (name, int8, f32_weights) in &products {
        let whole = pool(2).unwrap().install(|| int8.matmul(&x).unwrap());
        for threads in [1, 3] {
            let again = pool(threads).unwrap().install(|| int8.matmul(&x).unwrap());
            assert_eq!(again, whole, "{name}, {threads} threads");
        }
        // Batches of 12 tokens, and the last of 9: one tile each, on the integer path.
        for j0 in (0..batch).step_by(12) {
            let width = 12.min(batch - j0);
            let part = int8.matmul(&x.columns(j0, width).into_owned()).unwrap();
            assert_eq!(part, whole.columns(j0, width), "{name}, tokens {j0}..{}", j0 + width);
        }
        let dense = f32_weights * &x;
        let error = (&whole - &dense).amax();
        assert!(error <= 2e-2 * dense.amax(), "{name}: {error}");
    }
}

#[test]
fn f64_kernels() {
    let w = DMatrix::from_fn(33, 70, |r, c| ((r * 70 + c) % 13) as f64 - 6.0);
    let mask = Mask::from_fn(33, 70, |r, c| (r + c) % 4 == 0).unwrap();
    let x = DMatrix::from_fn(70, 19, |r, c| (r as f64 - c as f64) / 10.0);
    let csr: Csr<f64, u32> = Csr::from_dense_masked(&w, &mask).unwrap();
    assert!((csr.matmul(&x).unwrap() - mask.apply(&w).unwrap() * &x).amax() < 1e-9);
}

#[test]
fn results_do_not_depend_on_thread_count() {
    // Large enough that even the batch-1 products (>= 2^20 stored entries) go parallel.
    let (rows, cols) = (2500, 1000);
    let w = DMatrix::from_fn(rows, cols, |r, c| {
        (((r * 7919 + c * 104_729) % 1000) as f32 / 500.0) - 1.0
    });
    let mask = Mask::from_fn(rows, cols, |r, c| (r * 31 + c * 17) % 10 < 5).unwrap();
    let x = DMatrix::from_fn(cols, 9, |r, c| ((r + c * 3) % 7) as f32 - 3.0);
    let csr: Csr<f32, u16> = Csr::from_dense_masked(&w, &mask).unwrap();
    assert!(csr.nnz() >= 1 << 20);
    let nm_mask = Mask::from_fn(rows, cols, |r, c| (c + r) % 4 < 2).unwrap();
    let nm = NmSparse::from_dense_masked(&w, &nm_mask, NmPattern::TWO_FOUR).unwrap();
    let bsr = BlockSparse::from_dense_masked(&w, &mask, BlockShape::new(4, 4).unwrap()).unwrap();
    let sell = SlicedEll::from_csr_with_window(&csr, 16).unwrap();
    // Wide enough (70,000 inputs) that the copy into row-major order is split across
    // threads too.
    let wide = DMatrix::from_fn(cols, 70, |r, c| ((r * 5 + c) % 11) as f32 - 5.0);
    // Five of N:M's panels of 128 columns, the last one narrower, which tasks split; past
    // the 512 columns from which AVX2 takes the vector-of-rows kernel.
    let wider = DMatrix::from_fn(cols, 600, |r, c| ((r * 3 + c) % 7) as f32 - 3.0);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let v = DVector::from_column_slice(x.column(0).as_slice());
            (
                (csr.matmul(&x).unwrap(), csr.matvec(&v).unwrap(), csr.matmul(&wide).unwrap()),
                {
                    // The BLAS form, Y read and scaled by each task for its rows.
                    let mut y = DMatrix::from_fn(rows, 70, |r, c| ((r + 2 * c) % 5) as f32);
                    csr.matmul_into(0.5, &wide, -2.0, &mut y).unwrap();
                    y
                },
                (nm.matmul(&x).unwrap(), nm.matvec(&v).unwrap(), nm.matmul(&wider).unwrap()),
                (bsr.matmul(&x).unwrap(), bsr.matvec(&v).unwrap(), bsr.matmul(&wide).unwrap()),
                (sell.matmul(&x).unwrap(), sell.matvec(&v).unwrap(), sell.matmul(&wide).unwrap()),
            )
        })
    };
    let one = run(1);
    for threads in [2, 3, 4] {
        assert_eq!(run(threads), one, "{threads} threads");
    }
    let close = |a: &DMatrix<f32>, b: &DMatrix<f32>| (a - b).amax() <= 1e-3 * b.amax().max(1.0);
    assert!(close(&one.0.2, &(mask.apply(&w).unwrap() * &wide)));
    let scaled = DMatrix::from_fn(rows, 70, |r, c| ((r + 2 * c) % 5) as f32 * -2.0);
    assert!(close(&one.1, &(mask.apply(&w).unwrap() * &wide * 0.5 + scaled)));
    assert!(close(&one.2.2, &(nm_mask.apply(&w).unwrap() * &wider)));
    assert!(close(&one.3.2, &(mask.apply(&w).unwrap() * &wide)));
    assert_eq!(one.4.2, one.0.2, "sell's product past one panel is csr's");
    assert_eq!(one.4.0, one.0.0, "sell's batched product is csr's");
    let v = DVector::from_column_slice(x.column(0).as_slice());
    assert!((&one.4.1 - mask.apply(&w).unwrap() * &v).amax() <= 1e-3 * one.4.1.amax().max(1.0));
}

#[test]
fn shape_errors() {
    let csr: Csr<f32, u16> = Csr::from_dense(&DMatrix::from_element(3, 4, 1.0)).unwrap();
    assert!(matches!(
        csr.matvec(&DVector::zeros(3)),
        Err(shears_sparse::Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        csr.matmul(&DMatrix::zeros(3, 2)),
        Err(shears_sparse::Error::ShapeMismatch { .. })
    ));
    let mut y = DMatrix::zeros(2, 2);
    assert!(matches!(
        csr.matmul_into(1.0, &DMatrix::zeros(4, 2), 0.0, &mut y),
        Err(shears_sparse::Error::ShapeMismatch { .. })
    ));
    let mut yv = vec![0.0; 2];
    assert!(matches!(
        csr.matvec_into(1.0, &[0.0; 4], 0.0, &mut yv),
        Err(shears_sparse::Error::ShapeMismatch { .. })
    ));
    let nm = NmSparse::from_dense(&DMatrix::<f32>::zeros(2, 4), NmPattern::TWO_FOUR).unwrap();
    assert!(nm.matvec(&DVector::zeros(3)).is_err());
    assert!(nm.matmul(&DMatrix::zeros(3, 1)).is_err());
    let bsr = BlockSparse::from_dense(&DMatrix::<f32>::zeros(2, 4), BlockShape::new(2, 2).unwrap())
        .unwrap();
    assert!(bsr.matvec(&DVector::zeros(3)).is_err());
    assert!(bsr.matmul(&DMatrix::zeros(3, 1)).is_err());
    let sell = AnySlicedEll::from_dense(&DMatrix::<f32>::from_element(3, 4, 1.0)).unwrap();
    assert!(matches!(
        sell.matvec(&DVector::zeros(3)),
        Err(shears_sparse::Error::ShapeMismatch { op: "matvec x", .. })
    ));
    assert!(matches!(
        sell.matvec_into(1.0, &[0.0; 4], 0.0, &mut [0.0; 2]),
        Err(shears_sparse::Error::ShapeMismatch { op: "matvec y", .. })
    ));
    assert!(matches!(
        sell.matmul(&DMatrix::zeros(3, 2)),
        Err(shears_sparse::Error::ShapeMismatch { op: "matmul x", .. })
    ));
}

proptest! {
    /// Every format behind `AnySparse` multiplies like the masked dense matrix, in the
    /// BLAS form with any `alpha` and `beta`; with `beta == 0` NaN in `Y` never leaks.
    #[test]
    fn any_format_matches_dense((w, mask, x) in case(40), alpha in -2.0f32..2.0, beta in -2.0f32..2.0) {
        use shears_sparse::{AnySparse, Format};
        let dense = mask.apply(&w).unwrap();
        let mut formats = vec![Format::Dense, Format::Csr, Format::SlicedEll, Format::Compact,
            Format::Bsr(BlockShape::new(2, 3).unwrap())];
        if NmSparse::from_dense_masked(&w, &mask, NmPattern::TWO_FOUR).is_ok() {
            formats.push(Format::Nm(NmPattern::TWO_FOUR));
        }
        for format in formats {
            let any = AnySparse::from_dense_masked(&w, &mask, format).unwrap();
            prop_assert_eq!(any.format(), format);
            prop_assert_eq!(any.shape(), w.shape());
            prop_assert_eq!(any.to_dense(), dense.clone());
            let mut y = DMatrix::from_fn(w.nrows(), x.ncols(), |r, c| (r + c) as f32 * 0.01);
            let expected = &dense * &x * alpha + &y * beta;
            any.matmul_into(alpha, &x, beta, &mut y).unwrap();
            prop_assert!(close(&y, &expected), "{format}");
            let mut y = DMatrix::from_element(w.nrows(), x.ncols(), f32::NAN);
            any.matmul_into(alpha, &x, 0.0, &mut y).unwrap();
            prop_assert!(close(&y, &(&dense * &x * alpha)), "{format} with beta = 0");
            let mut yv = vec![f32::NAN; w.nrows()];
            any.matvec_into(1.0, x.column(0).as_slice(), 0.0, &mut yv).unwrap();
            let want = &dense * x.column(0);
            prop_assert!(yv.iter().zip(want.iter()).all(|(a, b)| (a - b).abs() <= TOL), "{format} matvec");
        }
    }
}

/// `matmul_into_then` gives the bits of `matmul_into` followed by its epilogue on every
/// entry, once, after the entry's value is final: for every format (f32, bf16, int8),
/// batches of one, of a few tokens and past one panel, `beta` zero (`Y` of NaN) and not,
/// on one to three threads. The epilogue is neither linear nor idempotent, and uses the
/// column and row it is given, so a piece run twice, before its write, or at the wrong
/// place would show.
#[test]
fn an_epilogue_runs_once_on_every_final_entry() {
    use shears_sparse::{AnySparse, Format};
    use std::sync::atomic::{AtomicUsize, Ordering};

    let (rows, cols) = (300, 260);
    let w = DMatrix::from_fn(rows, cols, |r, c| {
        let v = (((r * 7919 + c * 104_729) % 1000) as f32 / 500.0) - 1.0;
        half::bf16::from_f32(v).to_f32()
    });
    let mask = Mask::from_fn(rows, cols, |r, c| (r * 31 + c * 17) % 10 < 4).unwrap();
    let nm_mask = Mask::from_fn(rows, cols, |r, c| (c + r) % 4 < 2).unwrap();
    let csr: Csr<f32, u16> = Csr::from_dense_masked(&w, &mask).unwrap();
    let nm = NmSparse::from_dense_masked(&w, &nm_mask, NmPattern::TWO_FOUR).unwrap();
    let any = |format| AnySparse::from_dense_masked(&w, &mask, format).unwrap();
    type Product = Box<dyn SparseProduct<f32> + Sync>;
    let products: Vec<(String, Product)> = vec![
        ("dense".into(), Box::new(any(Format::Dense))),
        ("csr".into(), Box::new(any(Format::Csr))),
        ("sliced ellpack".into(), Box::new(any(Format::SlicedEll))),
        ("compact".into(), Box::new(any(Format::Compact))),
        ("block".into(), Box::new(any(Format::Bsr(BlockShape::new(4, 4).unwrap())))),
        ("n:m".into(), Box::new(nm.clone())),
        ("bf16 csr".into(), Box::new(Bf16Csr::<u16>::from_dense_masked(&w, &mask).unwrap())),
        ("int8 csr".into(), Box::new(Int8Csr::from_csr(&csr).unwrap())),
        ("int8 dense".into(), Box::new(Int8Matrix::quantize(&w, QuantScheme::PerRow).unwrap())),
        ("int8 n:m".into(), Box::new(Int8Nm::from_nm(&nm).unwrap())),
    ];
    let bias: Vec<f32> = (0..rows).map(|r| (r % 7) as f32 - 3.0).collect();
    let epilogue = |column: usize, row: usize, value: f32| {
        value * value.abs() + bias[row] + column as f32 / 64.0
    };
    for batch in [1, 3, 40, 300] {
        let x = DMatrix::from_fn(cols, batch, |r, c| (((r * 13 + c * 7) % 17) as f32 - 8.0) / 8.0);
        let y0 = DMatrix::from_fn(rows, batch, |r, c| ((r + 2 * c) % 5) as f32);
        for (name, product) in &products {
            for (beta, start) in [(0.0, f32::NAN), (-0.5, 1.0)] {
                let mut expected = y0.map(|v| if start.is_nan() { v * start } else { v });
                product.matmul_into(0.5, &x, beta, &mut expected).unwrap();
                let expected =
                    DMatrix::from_fn(rows, batch, |r, c| epilogue(c, r, expected[(r, c)]));
                for threads in [1, 2, 3] {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
                    let mut y = y0.map(|v| if start.is_nan() { v * start } else { v });
                    let visited = AtomicUsize::new(0);
                    let then = |column: usize, first_row: usize, piece: &mut [f32]| {
                        visited.fetch_add(piece.len(), Ordering::Relaxed);
                        for (i, v) in piece.iter_mut().enumerate() {
                            *v = epilogue(column, first_row + i, *v);
                        }
                    };
                    pool.unwrap()
                        .install(|| product.matmul_into_then(0.5, &x, beta, &mut y, &then))
                        .unwrap();
                    let case = format!("{name}, batch {batch}, beta {beta}, {threads} threads");
                    assert_eq!(visited.load(Ordering::Relaxed), rows * batch, "{case}");
                    assert_eq!(y, expected, "{case}");
                }
            }
        }
    }
    // A shape error leaves `Y` as it was and runs no epilogue.
    let mut y = DMatrix::from_element(rows, 2, 7.0);
    let wrong = DMatrix::zeros(cols + 1, 2);
    let never = |_: usize, _: usize, _: &mut [f32]| panic!("an epilogue ran on a refused product");
    assert!(csr.matmul_into_then(1.0, &wrong, 0.0, &mut y, &never).is_err());
    assert!(y.iter().all(|&v| v == 7.0));
}

/// `matmul_oriented_into` gives, in each of the four layouts, the bits of `matmul_into`
/// on the operands by columns, and runs its epilogue once on every final entry of `Y` as
/// stored: on every format (the row-oriented kernels of CSR, sliced ELLPACK, N:M and
/// block-sparse matrices in f32 and narrow values, and the formats that copy their
/// operands into columns), at batches of one, of a few tokens, of several panels and
/// (for CSR and N:M) of an `X` each task copies a panel at a time, with `beta` zero
/// (`Y` of NaN) and not, on one to three threads.
#[test]
fn an_oriented_product_gives_the_column_bits_in_every_layout() {
    use shears_sparse::{
        AnySparse, Bf16Block, Bf16Nm, F16Sell, Format, Layout, Orientation::Columns,
        Orientation::Rows,
    };
    use std::sync::atomic::{AtomicUsize, Ordering};

    let cols = 260;
    let weights = |rows: usize| {
        DMatrix::from_fn(rows, cols, |r, c| {
            let v = (((r * 7919 + c * 104_729) % 1000) as f32 / 500.0) - 1.0;
            half::bf16::from_f32(v).to_f32()
        })
    };
    type Product = Box<dyn SparseProduct<f32> + Sync>;
    let formats = |rows: usize, all: bool| -> Vec<(&'static str, Product)> {
        let w = weights(rows);
        let mask = Mask::from_fn(rows, cols, |r, c| (r * 31 + c * 17) % 10 < 4).unwrap();
        let nm_mask = Mask::from_fn(rows, cols, |r, c| (c + r) % 4 < 2).unwrap();
        let csr: Csr<f32, u16> = Csr::from_dense_masked(&w, &mask).unwrap();
        let nm = NmSparse::from_dense_masked(&w, &nm_mask, NmPattern::TWO_FOUR).unwrap();
        let mut products: Vec<(&'static str, Product)> =
            vec![("csr", Box::new(csr.clone())), ("n:m", Box::new(nm.clone()))];
        if all {
            let any = |format| AnySparse::from_dense_masked(&w, &mask, format).unwrap();
            let block = BlockSparse::from_dense_masked(&w, &mask, BlockShape::new(4, 4).unwrap());
            let sell = SlicedEll::<f32, u16>::from_csr(&csr);
            products.extend::<Vec<(&'static str, Product)>>(vec![
                ("dense", Box::new(any(Format::Dense))),
                ("sliced ellpack", Box::new(any(Format::SlicedEll))),
                ("compact", Box::new(any(Format::Compact))),
                ("block", Box::new(any(Format::Bsr(BlockShape::new(4, 4).unwrap())))),
                ("bf16 csr", Box::new(Bf16Csr::<u16>::from_dense_masked(&w, &mask).unwrap())),
                ("bf16 n:m", Box::new(Bf16Nm::from_nm(&nm).unwrap())),
                ("f16 sliced ellpack", Box::new(F16Sell::from_sell(&sell).unwrap())),
                ("bf16 block", Box::new(Bf16Block::from_block(&block.unwrap()).unwrap())),
                ("int8 csr", Box::new(Int8Csr::from_csr(&csr).unwrap())),
                ("int8 dense", Box::new(Int8Matrix::quantize(&w, QuantScheme::PerRow).unwrap())),
                ("int8 n:m", Box::new(Int8Nm::from_nm(&nm).unwrap())),
            ]);
        }
        products
    };
    let epilogue = |output: usize, item: usize, value: f32| {
        value * value.abs() + (output % 7) as f32 - 3.0 + item as f32 / 64.0
    };
    let layouts = [(Columns, Columns), (Rows, Columns), (Columns, Rows), (Rows, Rows)];
    // Batches of none, one, a few and past one panel, a matrix of no rows, and an `X` of
    // over 2 MiB, which tasks copy a panel at a time (on few rows, to keep the test
    // short). The epilogue is not idempotent, so an entry it ran on twice would show in
    // the bits as well as in the count.
    let cases = [
        (300, 0, true),
        (300, 1, true),
        (300, 3, true),
        (300, 40, true),
        (300, 300, true),
        (0, 40, false),
        (16, 2100, false),
    ];
    for (rows, batch, all) in cases {
        let x = DMatrix::from_fn(cols, batch, |r, c| (((r * 13 + c * 7) % 17) as f32 - 8.0) / 8.0);
        let y0 = DMatrix::from_fn(rows, batch, |r, c| ((r + 2 * c) % 5) as f32);
        for (name, product) in &formats(rows, all) {
            for (beta, start) in [(0.0, f32::NAN), (-0.5, 1.0)] {
                let start_y = y0.map(|v| if start.is_nan() { v * start } else { v });
                let mut expected = start_y.clone();
                product.matmul_into(0.5, &x, beta, &mut expected).unwrap();
                let expected =
                    DMatrix::from_fn(rows, batch, |r, c| epilogue(r, c, expected[(r, c)]));
                for (x_orientation, y_orientation) in layouts {
                    let layout = Layout::new(x_orientation, y_orientation);
                    let x = if x_orientation == Rows { x.transpose() } else { x.clone() };
                    let by_rows = y_orientation == Rows;
                    for threads in [1, 2, 3] {
                        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
                        let mut y = if by_rows { start_y.transpose() } else { start_y.clone() };
                        let visited = AtomicUsize::new(0);
                        let then = |column: usize, first_row: usize, piece: &mut [f32]| {
                            visited.fetch_add(piece.len(), Ordering::Relaxed);
                            for (i, v) in piece.iter_mut().enumerate() {
                                let (output, item) = if by_rows {
                                    (column, first_row + i)
                                } else {
                                    (first_row + i, column)
                                };
                                *v = epilogue(output, item, *v);
                            }
                        };
                        pool.unwrap()
                            .install(|| {
                                product.matmul_oriented_into(
                                    0.5,
                                    &x,
                                    beta,
                                    &mut y,
                                    layout,
                                    Some(&then),
                                )
                            })
                            .unwrap();
                        let case = format!(
                            "{name}, {layout:?}, batch {batch}, beta {beta}, {threads} threads"
                        );
                        assert_eq!(visited.load(Ordering::Relaxed), rows * batch, "{case}");
                        let y = if by_rows { y.transpose() } else { y };
                        let bits =
                            |m: &DMatrix<f32>| m.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                        assert!(bits(&y) == bits(&expected), "{case}");
                    }
                }
            }
        }
    }
    // Operands that do not fit the layout are refused, `Y` left as it was.
    let csr: Csr<f32, u16> = Csr::from_dense(&weights(5)).unwrap();
    let rows = Layout::new(Rows, Rows);
    let mut y = DMatrix::from_element(3, 5, 7.0);
    assert!(
        csr.matmul_oriented_into(1.0, &DMatrix::zeros(cols, 3), 0.0, &mut y, rows, None).is_err()
    );
    let mut y_by_columns = DMatrix::from_element(5, 3, 7.0);
    let x_by_rows = DMatrix::zeros(3, cols);
    assert!(csr.matmul_oriented_into(1.0, &x_by_rows, 0.0, &mut y_by_columns, rows, None).is_err());
    assert!(y.iter().chain(y_by_columns.iter()).all(|&v| v == 7.0));
    csr.matmul_oriented_into(1.0, &x_by_rows, 0.0, &mut y, rows, None).unwrap();
    assert!(y.iter().all(|&v| v == 0.0));
}
