//! Unit tests of selection against a full-sort oracle.

use nalgebra::{DMatrix, dmatrix};

use super::*;
use crate::{Granularity, Reduction, WeightShape};

/// The oracle: sort candidates by (score, row-major index) and prune the first `count`.
fn oracle(scores: &DMatrix<f64>, kept: Option<&Mask>, count: usize) -> Mask {
    let (nrows, ncols) = scores.shape();
    let mut cands: Vec<(f64, usize, usize)> = Vec::new();
    for r in 0..nrows {
        for c in 0..ncols {
            if kept.is_none_or(|m| m.get(r, c) == Some(true)) {
                cands.push((scores[(r, c)], r, c));
            }
        }
    }
    cands.sort_by(|a, b| {
        a.0.partial_cmp(&b.0).unwrap().then((a.1 * ncols + a.2).cmp(&(b.1 * ncols + b.2)))
    });
    let mut mask = kept.cloned().unwrap_or_else(|| Mask::all_kept_like(scores));
    for &(_, r, c) in cands.iter().take(count) {
        mask.set(r, c, false).unwrap();
    }
    mask
}

#[track_caller]
fn check(scores: DMatrix<f64>, s: f64, expected_pruned: usize) {
    let sparsity = Sparsity::new(s).unwrap();
    let mask = Selector::new().select("t", &scores, sparsity, None).unwrap();
    assert_eq!(mask.count_pruned(), expected_pruned);
    assert_eq!(mask, oracle(&scores, None, expected_pruned));
}

#[test]
fn seed_case() {
    check(dmatrix![0.1, 0.9; 0.2, 0.8], 0.5, 2);
}

#[test]
fn ties_prune_lower_row_major_index_first() {
    // All equal: row-major order is (0,0), (0,1), (0,2), (1,0)...
    let mask = Selector::new()
        .select("t", &DMatrix::from_element(2, 3, 1.0f32), Sparsity::new(0.5).unwrap(), None)
        .unwrap();
    assert_eq!(mask.to_matrix(), dmatrix![false, false, false; true, true, true]);
    check(DMatrix::from_element(3, 3, 0.0), 0.4, 4);
}

#[test]
fn signed_zero_ties() {
    let scores = dmatrix![0.0, -0.0; -0.0, 0.0];
    check(scores, 0.5, 2);
}

#[test]
fn half_even_counts() {
    check(DMatrix::from_fn(1, 5, |_, c| c as f64), 0.5, 2);
    check(DMatrix::from_fn(1, 7, |_, c| c as f64), 0.5, 4);
    check(DMatrix::from_fn(5, 5, |r, c| (r * 3 + c * 7) as f64 % 11.0), 0.1, 2);
}

#[test]
fn rounding_options() {
    let scores = DMatrix::from_fn(1, 10, |_, c| c as f32);
    let s = Sparsity::new(0.25).unwrap();
    let count =
        |r| Selector::new().with_rounding(r).select("t", &scores, s, None).unwrap().count_pruned();
    assert_eq!(count(Rounding::HalfEven), 2);
    assert_eq!(count(Rounding::Truncate), 2);
    assert_eq!(count(Rounding::Ceil), 3);
}

#[test]
fn extremes() {
    check(dmatrix![1.0, 2.0], 0.0, 0);
    check(dmatrix![1.0, 2.0], 1.0, 2);
    check(DMatrix::zeros(0, 3), 0.5, 0);
}

#[test]
fn monotone_with_kept_mask() {
    let scores = DMatrix::from_fn(4, 4, |r, c| ((r * 5 + c * 3) % 7) as f64);
    let first = Selector::new().select("t", &scores, Sparsity::new(0.5).unwrap(), None).unwrap();
    // Lower target than the mask: nothing more is pruned and nothing comes back.
    let same =
        Selector::new().select("t", &scores, Sparsity::new(0.25).unwrap(), Some(&first)).unwrap();
    assert_eq!(same, first);
    let second =
        Selector::new().select("t", &scores, Sparsity::new(0.75).unwrap(), Some(&first)).unwrap();
    assert!(second.is_subset_of(&first).unwrap());
    assert_eq!(second.count_pruned(), 12);
    assert_eq!(second, oracle(&scores, Some(&first), 4));
}

#[test]
fn kept_mask_can_keep_low_scores_out() {
    // A kept mask that already pruned the high scores: the low ones are what is left.
    let scores = dmatrix![1.0, 2.0, 3.0, 4.0];
    let kept = Mask::from_fn(1, 4, |_, c| c < 2).unwrap();
    let mask =
        Selector::new().select("t", &scores, Sparsity::new(0.75).unwrap(), Some(&kept)).unwrap();
    assert_eq!(mask.to_matrix(), dmatrix![false, true, false, false]);
}

#[test]
fn non_finite_scores_name_the_tensor() {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let scores = dmatrix![1.0, bad; 2.0, 3.0];
        let s = Sparsity::new(0.5).unwrap();
        let err = Selector::new().select("layer1", &scores, s, None).unwrap_err();
        assert_eq!(err, Error::NonFinite { tensor: "layer1".into(), index: 2 });
        assert!(err.to_string().contains("layer1"));
        assert!(matches!(
            Selector::new().select_per_row("r", &scores, s, None),
            Err(Error::NonFinite { .. })
        ));
    }
}

#[test]
fn kept_mask_shape_is_checked() {
    let scores = DMatrix::<f32>::zeros(2, 2);
    let wrong = Mask::all_kept(2, 3).unwrap();
    let s = Sparsity::new(0.5).unwrap();
    assert!(matches!(
        Selector::new().select("t", &scores, s, Some(&wrong)),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        Selector::new().select_per_row("t", &scores, s, Some(&wrong)),
        Err(Error::ShapeMismatch { .. })
    ));
    let layer = ScoredLayer { name: "t", scores: &scores, kept: Some(&wrong) };
    assert!(matches!(Selector::new().select_global(&[layer], s), Err(Error::ShapeMismatch { .. })));
}

#[test]
fn per_row_balances_rows() {
    let scores = dmatrix![1.0, 2.0, 3.0, 4.0; 40.0, 30.0, 20.0, 10.0; 5.0, 5.0, 5.0, 5.0];
    let mask =
        Selector::new().select_per_row("t", &scores, Sparsity::new(0.5).unwrap(), None).unwrap();
    assert_eq!(
        mask.to_matrix(),
        dmatrix![false, false, true, true; true, true, false, false; false, false, true, true]
    );
    assert_eq!(mask.kept_per_row(), vec![2, 2, 2]);
}

#[test]
fn group_selection() {
    let w = dmatrix![0.1, 0.9, 0.2, 0.8; 0.1, 0.9, 0.2, 0.8; 0.1, 0.9, 0.2, 0.8];
    let layout =
        GroupLayout::new("t", Granularity::Columns, &WeightShape::dense(3, 4).unwrap()).unwrap();
    let scores = layout.reduce("w", &w, Reduction::L2).unwrap();
    let mask = Selector::new()
        .select_groups("t", &layout, &scores, Sparsity::new(0.5).unwrap(), None)
        .unwrap();
    assert_eq!(mask.fully_pruned_cols(), vec![0, 2]);
    assert_eq!(mask.count_kept(), 6);
    // Iterating: a fully pruned group counts as pruned and is never a candidate again.
    let next = Selector::new()
        .select_groups("t", &layout, &scores, Sparsity::new(0.75).unwrap(), Some(&mask))
        .unwrap();
    assert_eq!(next.fully_pruned_cols(), vec![0, 2, 3]);
    let err = Selector::new().select_groups("t", &layout, &scores[..3], Sparsity::ZERO, None);
    assert!(matches!(err, Err(Error::LengthMismatch { .. })));
    let err = Selector::new().select_groups(
        "t",
        &layout,
        &[0.0, f64::NAN, 0.0, 0.0],
        Sparsity::ZERO,
        None,
    );
    assert!(matches!(err, Err(Error::NonFinite { .. })));
}

#[test]
fn global_equals_concatenation() {
    let a = DMatrix::from_fn(3, 4, |r, c| ((r * 7 + c * 3) % 5) as f64);
    let b = DMatrix::from_fn(2, 5, |r, c| ((r * 2 + c) % 4) as f64);
    let s = Sparsity::new(0.6).unwrap();
    let masks = Selector::new()
        .select_global(
            &[
                ScoredLayer { name: "a", scores: &a, kept: None },
                ScoredLayer { name: "b", scores: &b, kept: None },
            ],
            s,
        )
        .unwrap();
    // Concatenate the row-major flattenings into one row and select on it.
    let flat: Vec<f64> = a.transpose().iter().chain(b.transpose().iter()).copied().collect();
    let single = Selector::new()
        .select("ab", &DMatrix::from_row_slice(1, flat.len(), &flat), s, None)
        .unwrap();
    let bits: Vec<bool> = (0..flat.len()).map(|i| single.get(0, i).unwrap()).collect();
    assert_eq!(masks[0], Mask::from_row_major(3, 4, &bits[..12]).unwrap());
    assert_eq!(masks[1], Mask::from_row_major(2, 5, &bits[12..]).unwrap());
}

#[test]
fn large_random_matches_oracle() {
    // Enough elements to spread over many radix buckets, with repeated values for ties.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let scores = DMatrix::from_fn(97, 131, |_, _| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state % 1000) as f64 - 500.0) / 64.0
    });
    for s in [0.01, 0.3, 0.5, 0.77, 0.99] {
        let sparsity = Sparsity::new(s).unwrap();
        let count = sparsity.count_of(scores.len(), Rounding::HalfEven);
        let mask = Selector::new().select("t", &scores, sparsity, None).unwrap();
        assert_eq!(mask, oracle(&scores, None, count), "s = {s}");
    }
}

/// With the `rayon` feature a large tensor's passes run on several threads; the masks
/// must be those of one thread, ties and kept masks included.
#[cfg(feature = "rayon")]
#[test]
fn split_passes_select_what_one_thread_selects() {
    use crate::parallel::PARALLEL_MIN_LEN;
    let (rows, cols) = (1031, PARALLEL_MIN_LEN / 1031 + 7);
    // Few distinct values, so the threshold bucket holds many ties across every run.
    let w = DMatrix::from_fn(rows, cols, |r, c| ((r * 7 + c * 13) % 101) as f32 - 50.0);
    let kept = Mask::from_fn(rows, cols, |r, c| !(r + 3 * c).is_multiple_of(5)).unwrap();
    let s = Sparsity::new(0.7).unwrap();
    let on = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let selector = Selector::new();
            (
                selector.select_magnitude("w", &w, s, None).unwrap(),
                selector.select_magnitude("w", &w, s, Some(&kept)).unwrap(),
                selector.select("w", &w, s, Some(&kept)).unwrap(),
            )
        })
    };
    let one = on(1);
    assert_eq!(one.0.count_pruned(), s.count_of(w.len(), Rounding::HalfEven));
    assert_eq!(on(3), one);
    // Applying a mask that large is split too, with the same result.
    let applied = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| one.1.apply(&w).unwrap())
    };
    let (single, split) = (applied(1), applied(3));
    assert_eq!(single, split);
    for ((&v, &keep), &x) in single.iter().zip(one.1.to_matrix().iter()).zip(w.iter()) {
        assert_eq!(v, if keep { x } else { 0.0 });
    }
}

/// The direct path (few values) and the histogram path choose the same weights on the
/// same segments, ties and kept masks included, for every count.
#[test]
fn direct_and_histogram_selections_agree() {
    use super::threshold::{Segment, prune_lowest_by_histogram, prune_lowest_directly};
    for (rows, cols, levels) in [(7, 9, 5), (13, 64, 3), (1, 1, 1), (40, 33, 1000)] {
        let a = DMatrix::from_fn(rows, cols, |r, c| ((r * 31 + c * 7) % levels) as f32 - 2.0);
        let b = DMatrix::from_fn(cols, rows, |r, c| ((r * 5 + c * 11) % levels) as f32 * 0.5);
        let kept = Mask::from_fn(rows, cols, |r, c| (r + 2 * c) % 3 != 0).unwrap();
        let segments = [
            Segment::new("a", &a, Some(&kept)),
            Segment::magnitude("b", &b, None),
            Segment::new("c", &a, None),
        ];
        let total = kept.count_kept() + 2 * a.len();
        for count in [0, 1, total / 3, total / 2, total - 1, total, total + 5] {
            let direct = prune_lowest_directly(&segments, count).unwrap();
            let histogram = prune_lowest_by_histogram(&segments, count).unwrap();
            assert_eq!(direct, histogram, "{rows}x{cols}, {levels} levels, count {count}");
        }
    }
}

/// Rows of a large matrix are chosen on several threads with the `rayon` feature; the
/// mask must be one thread's, and each row's must be a full sort's (lowest scores among
/// the kept, ties to the lower column).
#[cfg(feature = "rayon")]
#[test]
fn rows_chosen_in_parallel_are_the_full_sorts_choice() {
    let (rows, cols) = (257, 301);
    let w = DMatrix::from_fn(rows, cols, |r, c| ((r * 7 + c * 13) % 11) as f32 - 5.0);
    let kept = Mask::from_fn(rows, cols, |r, c| !(r + 3 * c).is_multiple_of(5)).unwrap();
    let s = Sparsity::new(0.7).unwrap();
    let on = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| Selector::new().select_per_row("w", &w, s, Some(&kept)).unwrap())
    };
    let one = on(1);
    assert_eq!(on(3), one);
    let target = s.count_of(cols, Rounding::HalfEven);
    for r in 0..rows {
        let mut candidates: Vec<(f32, usize)> =
            (0..cols).filter(|&c| kept.get(r, c) == Some(true)).map(|c| (w[(r, c)], c)).collect();
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let extra = target - (cols - candidates.len());
        let pruned: std::collections::BTreeSet<usize> =
            candidates[..extra].iter().map(|&(_, c)| c).collect();
        for c in 0..cols {
            let want = kept.get(r, c) == Some(true) && !pruned.contains(&c);
            assert_eq!(one.get(r, c), Some(want), "row {r}, column {c}");
        }
    }
}
