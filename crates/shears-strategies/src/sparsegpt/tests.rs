//! SparseGPT against the direct OBS formula, magnitude pruning and its own contracts.

use nalgebra::DMatrix;
use shears_core::{NmPattern, PruningStrategy};

use super::*;

/// Inputs with correlated features, so the updates matter.
fn inputs(features: usize, tokens: usize, seed: u64) -> DMatrix<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) as f64 / (1u64 << 31) as f64) - 0.5
    };
    let base = DMatrix::from_fn(features, tokens, |_, _| next());
    DMatrix::from_fn(features, tokens, |i, j| {
        let shared = if i > 0 { base[(i - 1, j)] } else { 0.0 };
        (base[(i, j)] + 0.6 * shared) as f32
    })
}

fn weights(rows: usize, cols: usize, seed: u64) -> DMatrix<f64> {
    inputs(rows, cols, seed).map(|v| f64::from(v) * 2.0)
}

fn stats(x: &DMatrix<f32>) -> InputStats {
    let mut s = InputStats::new(x.nrows(), true).unwrap();
    s.add(x).unwrap();
    s
}

/// The optimal-brain-surgeon update written out directly: at each column `i`, invert the
/// dampened Hessian of the columns not yet visited, and move each pruned weight's error
/// onto them; no Cholesky factor, no blocks.
fn obs_oracle(w: &DMatrix<f64>, x: &DMatrix<f32>, mask: &Mask, damping: f64) -> DMatrix<f64> {
    let xd = x.map(f64::from);
    let mut h = &xd * xd.transpose();
    let cols = h.ncols();
    let damp = damping * (0..cols).map(|i| h[(i, i)]).sum::<f64>() / cols as f64;
    for i in 0..cols {
        h[(i, i)] += damp;
    }
    let mut w = w.clone();
    for i in 0..cols {
        let rest = cols - i;
        let hf = h.view((i, i), (rest, rest)).into_owned();
        let hinv = hf.try_inverse().unwrap();
        for r in 0..w.nrows() {
            if mask.get(r, i) == Some(false) {
                let scale = w[(r, i)] / hinv[(0, 0)];
                for j in 0..rest {
                    w[(r, i + j)] -= scale * hinv[(0, j)];
                }
            }
        }
    }
    DMatrix::from_fn(
        w.nrows(),
        cols,
        |r, c| if mask.get(r, c) == Some(true) { w[(r, c)] } else { 0.0 },
    )
}

/// Every block size, and row counts below, at and past the row tiles' height.
#[test]
fn updates_equal_the_direct_obs_formula_for_every_block_size() {
    for rows in [6, 8, 17] {
        let cols = 10;
        let x = inputs(cols, 200, 1);
        let w = weights(rows, cols, 2);
        // f64 inputs: the Gram matrix is exact, so the updates are compared to 1e-9.
        let mut stats = InputStats::new(cols, true).unwrap();
        stats.add(&x.map(f64::from)).unwrap();
        // A fixed mask of exactly the target count: only the updates are compared.
        let mask = Mask::from_fn(rows, cols, |r, c| (r * 7 + c * 3) % 5 >= 2).unwrap();
        let sparsity = Sparsity::from_counts(mask.count_pruned(), rows * cols);
        let expected = obs_oracle(&w, &x, &mask, 0.01);
        for block in [1, 3, 4, 10, 128] {
            let gpt = SparseGpt::new().with_block_size(block).unwrap();
            let got = gpt
                .prune(
                    "l",
                    &w,
                    &stats,
                    Pattern::Unstructured,
                    sparsity,
                    Rounding::HalfEven,
                    Some(&mask),
                )
                .unwrap();
            assert_eq!(got.mask, mask, "{rows} rows, block {block}");
            let diff = (&got.weights - &expected).abs().max();
            assert!(diff < 1e-9, "{rows} rows, block {block}: {diff} off the OBS formula");
        }
    }
}

/// Output reconstruction: on the calibration inputs, the SparseGPT layer is closer to the
/// dense layer than the same weights pruned by magnitude at the same sparsity.
#[test]
fn reconstructs_the_output_better_than_magnitude() {
    for seed in 0..8 {
        let (rows, cols) = (16, 24);
        let x = inputs(cols, 300, 10 + seed);
        let w = weights(rows, cols, 20 + seed);
        let xd = x.map(f64::from);
        let dense = &w * &xd;
        let half = Sparsity::new(0.5).unwrap();
        for pattern in [Pattern::Unstructured, Pattern::NM(NmPattern::TWO_FOUR)] {
            let got = SparseGpt::new()
                .prune("l", &w, &stats(&x), pattern, half, Rounding::HalfEven, None)
                .unwrap();
            let magnitude = crate::Pruner::new(crate::Magnitude)
                .with_pattern(pattern)
                .mask(&w, &shears_core::LayerContext::new("l"), half)
                .unwrap();
            let gpt_error = (&got.weights * &xd - &dense).norm();
            let mag_error = (magnitude.apply(&w).unwrap() * &xd - &dense).norm();
            assert!(gpt_error < mag_error, "seed {seed} {pattern}: {gpt_error} >= {mag_error}");
        }
    }
}

#[test]
fn unstructured_prunes_the_exact_count_and_keeps_earlier_pruning() {
    for (rows, cols, s) in [(5, 7, 0.5), (3, 300, 0.7), (8, 129, 0.33), (4, 4, 1.0), (4, 4, 0.0)] {
        let x = inputs(cols, 50, 3);
        let w = weights(rows, cols, 4);
        let sparsity = Sparsity::new(s).unwrap();
        let target = sparsity.count_of(rows * cols, Rounding::HalfEven);
        let gpt = SparseGpt::new().with_block_size(32).unwrap();
        let got = gpt
            .prune("l", &w, &stats(&x), Pattern::Unstructured, sparsity, Rounding::HalfEven, None)
            .unwrap();
        assert_eq!(got.mask.count_pruned(), target, "{rows}x{cols} at {s}");
        for (r, c) in (0..rows).flat_map(|r| (0..cols).map(move |c| (r, c))) {
            if got.mask.get(r, c) == Some(false) {
                assert_eq!(got.weights[(r, c)], 0.0);
            }
        }
        // Pruning again from this mask only adds to it.
        let kept = Mask::from_fn(rows, cols, |r, c| (r + c) % 3 != 0).unwrap();
        let more = Sparsity::new(s.max(kept.sparsity().get())).unwrap();
        let again = gpt
            .prune(
                "l",
                &w,
                &stats(&x),
                Pattern::Unstructured,
                more,
                Rounding::HalfEven,
                Some(&kept),
            )
            .unwrap();
        assert!(again.mask.is_subset_of(&kept).unwrap(), "monotone");
        assert_eq!(
            again.mask.count_pruned(),
            more.count_of(rows * cols, Rounding::HalfEven).max(kept.count_pruned())
        );
    }
}

/// Zeros in the weights (an already pruned layer) stay zero and pruned: the updates
/// move no error into them, and they count towards the target.
#[test]
fn zero_weights_stay_pruned() {
    for seed in 0..8u64 {
        let (rows, cols) = (6, 40);
        let x = inputs(cols, 60, seed);
        let mut w = weights(rows, cols, seed + 100);
        // Every third weight zero, a third of the layer, as an earlier run left it.
        for i in (0..rows * cols).step_by(3) {
            w[(i % rows, i / rows)] = 0.0;
        }
        let zeros = Mask::from_fn(rows, cols, |r, c| w[(r, c)] != 0.0).unwrap();
        let gpt = SparseGpt::new().with_block_size(16).unwrap();
        for (pattern, s) in [
            (Pattern::Unstructured, 0.5),
            (Pattern::Unstructured, 0.2),
            (Pattern::NM(NmPattern::TWO_FOUR), 0.5),
        ] {
            let sparsity = Sparsity::new(s).unwrap();
            let got = gpt.prune("l", &w, &stats(&x), pattern, sparsity, Rounding::HalfEven, None);
            let got = got.unwrap();
            assert!(got.mask.is_subset_of(&zeros).unwrap(), "seed {seed}, {pattern:?} at {s}");
            for (r, c) in (0..rows).flat_map(|r| (0..cols).map(move |c| (r, c))) {
                if w[(r, c)] == 0.0 {
                    assert_eq!(got.weights[(r, c)], 0.0, "seed {seed}: ({r}, {c}) revived");
                }
            }
            match pattern {
                Pattern::NM(p) => assert!(crate::satisfies_nm(&got.mask, p)),
                _ => {
                    let target = sparsity.count_of(rows * cols, Rounding::HalfEven);
                    assert_eq!(got.mask.count_pruned(), target.max(zeros.count_pruned()));
                }
            }
        }
    }
}

/// N:M SparseGPT written out directly: at the first column of each group, each row keeps
/// the `n` weights of highest `w² / [H_c⁻¹]₀₀` (`H_c` the dampened Hessian of columns
/// `c..`, the weights as updated so far; ties keep the higher column), then the column
/// loop of [`obs_oracle`]. Returns the weights and the mask.
fn nm_oracle(w: &DMatrix<f64>, x: &DMatrix<f32>, n: usize, m: usize) -> (DMatrix<f64>, Mask) {
    let xd = x.map(f64::from);
    let mut h = &xd * xd.transpose();
    let cols = h.ncols();
    let damp = 0.01 * (0..cols).map(|i| h[(i, i)]).sum::<f64>() / cols as f64;
    for i in 0..cols {
        h[(i, i)] += damp;
    }
    let trailing: Vec<DMatrix<f64>> = (0..cols)
        .map(|i| h.view((i, i), (cols - i, cols - i)).into_owned().try_inverse().unwrap())
        .collect();
    let mut w = w.clone();
    let mut mask = Mask::all_kept_like(&w);
    for i in 0..cols {
        if i % m == 0 {
            for r in 0..w.nrows() {
                let mut group: Vec<(f64, usize)> = (i..(i + m).min(cols))
                    .map(|c| (w[(r, c)] * w[(r, c)] / trailing[c][(0, 0)], c))
                    .collect();
                group.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
                for &(_, c) in group.iter().skip(n) {
                    mask.set(r, c, false).unwrap();
                }
            }
        }
        let hinv = &trailing[i];
        for r in 0..w.nrows() {
            if mask.get(r, i) == Some(false) {
                let scale = w[(r, i)] / hinv[(0, 0)];
                for j in 0..cols - i {
                    w[(r, i + j)] -= scale * hinv[(0, j)];
                }
            }
        }
    }
    let w = DMatrix::from_fn(w.nrows(), cols, |r, c| {
        if mask.get(r, c) == Some(true) { w[(r, c)] } else { 0.0 }
    });
    (w, mask)
}

/// More rows and columns, in blocks that do not divide the columns (for N:M, blocks are
/// rounded down to whole groups: 12 runs as 8 for 4:8): the updates equal the OBS
/// formula for a fixed mask, and N:M's masks and updates equal the direct N:M algorithm.
#[test]
fn blocked_parallel_updates_equal_the_direct_formulas() {
    let (rows, cols) = (45, 70);
    let x = inputs(cols, 300, 11);
    let w = weights(rows, cols, 12);
    let mut stats = InputStats::new(cols, true).unwrap();
    stats.add(&x.map(f64::from)).unwrap();
    let mask = Mask::from_fn(rows, cols, |r, c| (r * 5 + c * 3) % 7 >= 3).unwrap();
    let sparsity = Sparsity::from_counts(mask.count_pruned(), rows * cols);
    let expected = obs_oracle(&w, &x, &mask, 0.01);
    for block in [16, 32, 128] {
        let gpt = SparseGpt::new().with_block_size(block).unwrap();
        let (p, s, r) = (Pattern::Unstructured, sparsity, Rounding::HalfEven);
        let got = gpt.prune("l", &w, &stats, p, s, r, Some(&mask)).unwrap();
        assert_eq!(got.mask, mask, "block {block}");
        let diff = (&got.weights - &expected).abs().max();
        assert!(diff < 1e-9, "block {block}: {diff}");
    }
    for (n, m) in [(2, 4), (1, 3), (4, 8)] {
        let (expected, expected_mask) = nm_oracle(&w, &x, n, m);
        let pattern = NmPattern::new(n, m).unwrap();
        let sparsity = Sparsity::new(1.0 - n as f64 / m as f64).unwrap();
        for block in [12, 128] {
            let gpt = SparseGpt::new().with_block_size(block).unwrap();
            let (p, r) = (Pattern::NM(pattern), Rounding::HalfEven);
            let got = gpt.prune("l", &w, &stats, p, sparsity, r, None).unwrap();
            assert_eq!(got.mask, expected_mask, "{n}:{m} block {block}");
            let diff = (&got.weights - &expected).abs().max();
            assert!(diff < 1e-9, "{n}:{m} block {block}: {diff}");
        }
    }
}

#[test]
fn n_m_masks_conform_in_every_group() {
    for (pattern, cols) in
        [(NmPattern::TWO_FOUR, 16), (NmPattern::TWO_FOUR, 18), (NmPattern::new(1, 3).unwrap(), 12)]
    {
        let x = inputs(cols, 64, 5);
        let w = weights(7, cols, 6);
        let sparsity = Sparsity::new(1.0 - pattern.n() as f64 / pattern.m() as f64).unwrap();
        let got = SparseGpt::new()
            .with_block_size(5)
            .unwrap()
            .prune("l", &w, &stats(&x), Pattern::NM(pattern), sparsity, Rounding::HalfEven, None)
            .unwrap();
        assert!(crate::satisfies_nm(&got.mask, pattern), "{pattern} on {cols} columns");
        let full_groups = cols / pattern.m();
        let tail = cols % pattern.m();
        let expected_kept = 7 * (full_groups * pattern.n() + tail.min(pattern.n()));
        assert_eq!(got.mask.count_kept(), expected_kept);
    }
}

#[test]
fn dead_inputs_and_bad_arguments() {
    // An input no token sets: its weights carry nothing and are pruned first.
    let mut x = inputs(6, 40, 7);
    x.row_mut(2).fill(0.0);
    let w = weights(3, 6, 8);
    let third = Sparsity::new(1.0 / 6.0).unwrap();
    let got = SparseGpt::new()
        .prune("l", &w, &stats(&x), Pattern::Unstructured, third, Rounding::HalfEven, None)
        .unwrap();
    assert!((0..3).all(|r| got.mask.get(r, 2) == Some(false)));

    let half = Sparsity::new(0.5).unwrap();
    let rows = Pattern::Structured(crate::Structured::new(crate::Axis::Rows));
    let err = SparseGpt::new().prune("l", &w, &stats(&x), rows, half, Rounding::HalfEven, None);
    assert!(matches!(err, Err(Error::UnsupportedPattern { .. })));
    let no_gram = InputStats::new(6, false).unwrap();
    let err = SparseGpt::new().prune(
        "l",
        &w,
        &no_gram,
        Pattern::Unstructured,
        half,
        Rounding::HalfEven,
        None,
    );
    assert!(matches!(err, Err(Error::MissingCalibration { .. })));
    let empty = InputStats::new(6, true).unwrap();
    let err = SparseGpt::new().prune(
        "l",
        &w,
        &empty,
        Pattern::Unstructured,
        half,
        Rounding::HalfEven,
        None,
    );
    assert!(matches!(err, Err(Error::MissingCalibration { .. })));
    let wrong = stats(&inputs(5, 10, 1));
    assert!(
        SparseGpt::new()
            .prune("l", &w, &wrong, Pattern::Unstructured, half, Rounding::HalfEven, None)
            .is_err()
    );
    let two_four = Pattern::NM(NmPattern::TWO_FOUR);
    let err = SparseGpt::new().prune(
        "l",
        &w,
        &stats(&x),
        two_four,
        Sparsity::new(0.6).unwrap(),
        Rounding::HalfEven,
        None,
    );
    assert!(err.is_err(), "2:4 is 50%");
    assert!(SparseGpt::new().with_block_size(0).is_err());
    assert!(SparseGpt::new().with_damping(f64::NAN).is_err());
    assert!(SparseGpt::new().with_damping(0.0).is_err());
}

/// A Gram matrix that overflowed (inputs near f64's range) is an error that names the
/// layer and says why, not a panic or NaN weights.
#[test]
fn an_overflowed_hessian_is_an_error() {
    let mut stats = InputStats::new(2, true).unwrap();
    stats.add(&DMatrix::from_element(2, 3, 1e200f64)).unwrap();
    let err = SparseGpt::new().inverse_hessian("big", &stats).unwrap_err();
    assert!(matches!(&err, Error::HessianOverflow { tensor, .. } if tensor == "big"), "{err}");
    assert!(err.to_string().contains("overflows"), "{err}");
}

/// A block's column loop over whole columns, as it ran before the row tiles: the
/// oracle for [`prune_block`]'s bits. N:M groups are chosen as they are reached (ties
/// keep the higher column); the mask of other columns is taken as it is.
fn whole_columns(
    w: &mut DMatrix<f64>,
    mask: &mut Mask,
    hinv: &DMatrix<f64>,
    block: Range<usize>,
    nm: Option<(usize, usize)>,
) -> DMatrix<f64> {
    let rows = w.nrows();
    let mut err = DMatrix::<f64>::zeros(rows, block.len());
    for i in block.clone() {
        let k = i - block.start;
        if let Some((n, m)) = nm
            && i % m == 0
        {
            for r in 0..rows {
                let mut group: Vec<(f64, usize)> = (i..(i + m).min(block.end))
                    .filter(|&c| mask.get(r, c) == Some(true))
                    .map(|c| (w[(r, c)] * w[(r, c)] / (hinv[(c, c)] * hinv[(c, c)]), c))
                    .collect();
                group.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
                for &(_, c) in group.iter().skip(n) {
                    mask.set(r, c, false).unwrap();
                }
            }
        }
        for r in 0..rows {
            let v = w[(r, i)];
            let q = if mask.get(r, i) == Some(true) { v } else { 0.0 };
            let e = (v - q) / hinv[(i, i)];
            err[(r, k)] = e;
            w[(r, i)] = q;
            for j in i + 1..block.end {
                if hinv[(i, j)] != 0.0 {
                    w[(r, j)] -= hinv[(i, j)] * e;
                }
            }
        }
    }
    err
}

fn same_bits(a: &DMatrix<f64>, b: &DMatrix<f64>) -> bool {
    a.shape() == b.shape() && a.iter().zip(b.iter()).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// The row tiles give the whole-column loop's weights, errors and masks bit for bit:
/// row counts around the tile's height, N:M groups that do and do not divide the
/// block, masks the caller already pruned (groups left with n or fewer kept weights
/// among them), and equal scores within a group.
#[test]
fn row_tiles_give_the_whole_column_loops_bits() {
    let cols = 12;
    let factor =
        SparseGpt::new().inverse_hessian("l", &stats(&inputs(cols, 80, 31))).unwrap().factor;
    for rows in [1, 7, 8, 9, 17] {
        for nm in [None, Some((2, 4)), Some((1, 3)), Some((2, 5))] {
            for kept_pattern in [0, 3, 5] {
                let mut w = weights(rows, cols, rows as u64);
                // Equal scores in a group: in even rows, three zeros in the first group
                // of four, one of which 2:4 keeps (the highest column).
                for r in (0..rows).step_by(2) {
                    for c in 1..4 {
                        w[(r, c)] = 0.0;
                    }
                }
                let mask = Mask::from_fn(rows, cols, |r, c| {
                    kept_pattern == 0 || (r * 7 + c * 3) % kept_pattern != 0
                })
                .unwrap();
                for block in [0..cols, 0..8, 8..cols] {
                    let (mut w_tiles, mut mask_tiles) = (w.clone(), mask.clone());
                    let err_tiles =
                        prune_block(&mut w_tiles, &mut mask_tiles, &factor, block.clone(), nm)
                            .unwrap();
                    let (mut w_whole, mut mask_whole) = (w.clone(), mask.clone());
                    let err_whole =
                        whole_columns(&mut w_whole, &mut mask_whole, &factor, block.clone(), nm);
                    let context = format!("{rows} rows, {nm:?}, mask {kept_pattern}, {block:?}");
                    assert_eq!(mask_tiles, mask_whole, "{context}");
                    assert!(same_bits(&w_tiles, &w_whole), "{context}: weights");
                    assert!(same_bits(&err_tiles, &err_whole), "{context}: errors");
                }
            }
        }
    }
}

/// [`ColumnLoop`] for a given SIMD type, on one tile of `w`.
fn column_loop_with<S: Simd>(
    simd: S,
    w: &DMatrix<f64>,
    h: &[f64],
    nm: Option<(usize, usize)>,
) -> RowTile {
    let width = w.ncols();
    let mut tile = RowTile::new(width);
    tile.load(w, &Mask::all_kept_like(w), 0, w.nrows(), 0);
    let diagonal: Vec<f64> = (0..width).map(|k| h[k * width + k]).collect();
    ColumnLoop { tile: &mut tile, h, diagonal: &diagonal, start: 0, nm }.with_simd(simd);
    tile
}

/// [`ColumnLoop`] for this CPU's widest SIMD.
struct Native<'a>(&'a DMatrix<f64>, &'a [f64], Option<(usize, usize)>);

impl WithSimd for Native<'_> {
    type Output = RowTile;
    fn with_simd<S: Simd>(self, simd: S) -> RowTile {
        column_loop_with(simd, self.0, self.1, self.2)
    }
}

/// The column loop gives the same bits compiled for every SIMD width pulp offers and
/// for this CPU's own.
#[test]
fn every_simd_width_gives_the_same_bits() {
    let width = 12;
    let factor =
        SparseGpt::new().inverse_hessian("l", &stats(&inputs(width, 80, 5))).unwrap().factor;
    let h: Vec<f64> = (0..width * width)
        .map(|i| if i % width >= i / width { factor[(i / width, i % width)] } else { 0.0 })
        .collect();
    let w = weights(ROW_TILE, width, 9);
    for nm in [None, Some((2, 4))] {
        let want = column_loop_with(pulp::Scalar, &w, &h, nm);
        let got = [
            ("128-bit", column_loop_with(pulp::Scalar128b, &w, &h, nm)),
            ("256-bit", column_loop_with(pulp::Scalar256b, &w, &h, nm)),
            ("512-bit", column_loop_with(pulp::Scalar512b, &w, &h, nm)),
            ("this CPU", Arch::new().dispatch(Native(&w, &h, nm))),
        ];
        for (name, tile) in got {
            let same =
                |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same(&tile.values, &want.values), "{name}, {nm:?}: weights");
            assert!(same(&tile.errors, &want.errors), "{name}, {nm:?}: errors");
            assert_eq!(tile.kept, want.kept, "{name}, {nm:?}: mask");
        }
    }
}
