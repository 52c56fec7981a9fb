//! Selection against a full-sort oracle.

use nalgebra::DMatrix;
use proptest::prelude::*;
use shears_core::{
    GlobalCount, Granularity, GroupLayout, Mask, Reduction, Rounding, ScoredLayer, Selector,
    Sparsity, WeightShape, proptest as arb,
};

/// Candidates sorted by (score, row-major index): the first `count` are pruned.
fn oracle(scores: &DMatrix<f64>, kept: Option<&Mask>, count: usize) -> Mask {
    let (nrows, ncols) = scores.shape();
    let mut cands: Vec<(f64, usize)> = (0..nrows * ncols)
        .map(|rm| (scores[(rm / ncols, rm % ncols)], rm))
        .filter(|&(_, rm)| kept.is_none_or(|m| m.get(rm / ncols, rm % ncols) == Some(true)))
        .collect();
    cands.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap().then(a.1.cmp(&b.1)));
    let mut mask = kept.cloned().unwrap_or_else(|| Mask::all_kept_like(scores));
    for &(_, rm) in cands.iter().take(count) {
        mask.set(rm / ncols, rm % ncols, false).unwrap();
    }
    mask
}

fn scored(max: usize) -> impl Strategy<Value = DMatrix<f64>> {
    arb::shape(max).prop_flat_map(|(r, c)| arb::tied_matrix(r, c))
}

proptest! {
    #[test]
    fn exact_count_and_highest_kept(scores in scored(24), s in arb::sparsity()) {
        let mask = Selector::new().select("t", &scores, s, None).unwrap();
        let expected = s.count_of(scores.len(), Rounding::HalfEven);
        prop_assert_eq!(mask.count_pruned(), expected);
        prop_assert_eq!(mask, oracle(&scores, None, expected));
    }

    #[test]
    fn every_rounding(scores in scored(12), s in arb::sparsity()) {
        for rounding in [Rounding::HalfEven, Rounding::Truncate, Rounding::Ceil] {
            let mask = Selector::new().with_rounding(rounding).select("t", &scores, s, None).unwrap();
            prop_assert_eq!(mask, oracle(&scores, None, s.count_of(scores.len(), rounding)));
        }
    }

    #[test]
    fn iterative_is_monotone((scores, kept) in arb::shape(16).prop_flat_map(|(r, c)| (arb::tied_matrix(r, c), arb::mask(r, c))), s in arb::sparsity()) {
        let mask = Selector::new().select("t", &scores, s, Some(&kept)).unwrap();
        prop_assert!(mask.is_subset_of(&kept).unwrap());
        let target = s.count_of(scores.len(), Rounding::HalfEven);
        prop_assert_eq!(mask.count_pruned(), target.max(kept.count_pruned()));
        let extra = target.saturating_sub(kept.count_pruned());
        prop_assert_eq!(mask, oracle(&scores, Some(&kept), extra));
    }

    #[test]
    fn f32_magnitude_in_place_matches_the_sort((w, kept) in arb::shape(40).prop_flat_map(|(r, c)| (arb::tied_matrix(r, c), arb::mask(r, c))), s in arb::sparsity()) {
        // Blocks of 64 values, a partial last block, signs, ties, and a kept mask.
        let w32 = w.map(|x| (x - 0.5) as f32);
        let mask = Selector::new().select_magnitude("w", &w32, s, Some(&kept)).unwrap();
        let target = s.count_of(w.len(), Rounding::HalfEven);
        let extra = target.saturating_sub(kept.count_pruned());
        let abs = w32.map(|x| f64::from(x.abs()));
        prop_assert_eq!(mask, oracle(&abs, Some(&kept), extra));
    }

    #[test]
    fn rounds_reach_their_targets(scores in scored(16), p in 0.05..0.6f64) {
        let mut mask = Mask::all_kept_like(&scores);
        for round in 1..=5 {
            let target = Sparsity::new(1.0 - (1.0 - p).powi(round)).unwrap();
            let next = Selector::new().select("t", &scores, target, Some(&mask)).unwrap();
            prop_assert!(next.is_subset_of(&mask).unwrap());
            prop_assert_eq!(next.count_pruned(), target.count_of(scores.len(), Rounding::HalfEven).max(mask.count_pruned()));
            mask = next;
        }
    }

    #[test]
    fn per_row_is_row_by_row(scores in scored(12), s in arb::sparsity()) {
        let mask = Selector::new().select_per_row("t", &scores, s, None).unwrap();
        for r in 0..scores.nrows() {
            let row = DMatrix::from_row_slice(1, scores.ncols(), scores.row(r).transpose().as_slice());
            let expected = oracle(&row, None, s.count_of(scores.ncols(), Rounding::HalfEven));
            for c in 0..scores.ncols() {
                prop_assert_eq!(mask.get(r, c), expected.get(0, c));
            }
        }
    }

    #[test]
    fn per_row_with_a_kept_mask_is_row_by_row(scores in scored(12), s in arb::sparsity(), seed in any::<u64>()) {
        let mut state = seed | 1;
        let kept = Mask::from_fn(scores.nrows(), scores.ncols(), |_, _| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % 3 != 0
        }).unwrap();
        let mask = Selector::new().select_per_row("t", &scores, s, Some(&kept)).unwrap();
        prop_assert!(mask.is_subset_of(&kept).unwrap());
        for r in 0..scores.nrows() {
            let row = DMatrix::from_row_slice(1, scores.ncols(), scores.row(r).transpose().as_slice());
            let row_kept = Mask::from_fn(1, scores.ncols(), |_, c| kept.get(r, c) == Some(true)).unwrap();
            let target = s.count_of(scores.ncols(), Rounding::HalfEven);
            let extra = target.saturating_sub(row_kept.count_pruned());
            let expected = oracle(&row, Some(&row_kept), extra);
            for c in 0..scores.ncols() {
                prop_assert_eq!(mask.get(r, c), expected.get(0, c), "({}, {})", r, c);
            }
        }
    }

    #[test]
    fn groups_are_whole(scores in scored(12), s in arb::sparsity(), by_rows in any::<bool>()) {
        let g = if by_rows { Granularity::Rows } else { Granularity::Columns };
        let shape = WeightShape::of_matrix(&scores);
        let layout = GroupLayout::new("t", g, &shape).unwrap();
        let group_scores = layout.reduce("scores", &scores, Reduction::L2).unwrap();
        let mask = Selector::new().select_groups("t", &layout, &group_scores, s, None).unwrap();
        // The oracle: a 1 x groups selection on the group scores.
        let as_row = DMatrix::from_row_slice(1, group_scores.len(), &group_scores);
        let kept_groups = oracle(&as_row, None, s.count_of(group_scores.len(), Rounding::HalfEven));
        for (r, c) in (0..scores.ncols()).flat_map(|c| (0..scores.nrows()).map(move |r| (r, c))) {
            let group = if by_rows { r } else { c };
            prop_assert_eq!(mask.get(r, c), kept_groups.get(0, group));
        }
    }

    #[test]
    fn global_is_the_concatenation(a in scored(10), b in scored(10), s in arb::sparsity()) {
        let layers = [ScoredLayer { name: "a", scores: &a, kept: None }, ScoredLayer { name: "b", scores: &b, kept: None }];
        let masks = Selector::new().select_global(&layers, s).unwrap();
        let flat: Vec<f64> = a.transpose().iter().chain(b.transpose().iter()).copied().collect();
        let row = DMatrix::from_row_slice(1, flat.len(), &flat);
        let single = oracle(&row, None, s.count_of(flat.len(), Rounding::HalfEven));
        let bits: Vec<bool> = (0..flat.len()).map(|i| single.get(0, i) == Some(true)).collect();
        prop_assert_eq!(&masks[0], &Mask::from_row_major(a.nrows(), a.ncols(), &bits[..a.len()]).unwrap());
        prop_assert_eq!(&masks[1], &Mask::from_row_major(b.nrows(), b.ncols(), &bits[a.len()..]).unwrap());
    }

    #[test]
    fn distinct_scores_match_the_sort((w, kept) in arb::shape(40).prop_flat_map(|(r, c)| (arb::matrix_f32(r, c), arb::mask(r, c))), s in arb::sparsity()) {
        // Values spread over many radix buckets: the threshold bucket is small, so the
        // selection finishes in two passes (tied scores take the three-pass path).
        let wide = w.map(f64::from);
        let extra = s.count_of(w.len(), Rounding::HalfEven).saturating_sub(kept.count_pruned());
        let selector = Selector::new();
        prop_assert_eq!(selector.select("w", &w, s, Some(&kept)).unwrap(), oracle(&wide, Some(&kept), extra));
        prop_assert_eq!(selector.select("w", &w, s, None).unwrap(), oracle(&wide, None, s.count_of(w.len(), Rounding::HalfEven)));
        prop_assert_eq!(selector.select_magnitude("w", &w, s, Some(&kept)).unwrap(), oracle(&wide.abs(), Some(&kept), extra));
    }

    #[test]
    fn distinct_global_is_the_concatenation(
        a in arb::shape(12).prop_flat_map(|(r, c)| arb::matrix_f32(r, c)),
        b in arb::shape(12).prop_flat_map(|(r, c)| arb::matrix_f32(r, c)),
        s in arb::sparsity(),
    ) {
        let layers = [ScoredLayer { name: "a", scores: &a, kept: None }, ScoredLayer { name: "b", scores: &b, kept: None }];
        let masks = Selector::new().select_global(&layers, s).unwrap();
        let flat: Vec<f64> = a.transpose().iter().chain(b.transpose().iter()).map(|&x| f64::from(x)).collect();
        let row = DMatrix::from_row_slice(1, flat.len(), &flat);
        let single = oracle(&row, None, s.count_of(flat.len(), Rounding::HalfEven));
        let bits: Vec<bool> = (0..flat.len()).map(|i| single.get(0, i) == Some(true)).collect();
        prop_assert_eq!(&masks[0], &Mask::from_row_major(a.nrows(), a.ncols(), &bits[..a.len()]).unwrap());
        prop_assert_eq!(&masks[1], &Mask::from_row_major(b.nrows(), b.ncols(), &bits[a.len()..]).unwrap());
    }

    #[test]
    fn f32_and_f64_agree(scores in arb::shape(16).prop_flat_map(|(r, c)| arb::matrix_f32(r, c)), s in arb::sparsity()) {
        let wide = scores.map(f64::from);
        let narrow = Selector::new().select("t", &scores, s, None).unwrap();
        prop_assert_eq!(narrow, Selector::new().select("t", &wide, s, None).unwrap());
    }

    #[test]
    fn deterministic(scores in scored(16), s in arb::sparsity()) {
        let a = Selector::new().select("t", &scores, s, None).unwrap();
        let b = Selector::new().select("t", &scores, s, None).unwrap();
        prop_assert_eq!(a.to_bytes(), b.to_bytes());
    }

    #[test]
    fn streaming_global_equals_in_memory((a, ka) in gen_pair(10), (b, kb) in gen_pair(10), s in arb::sparsity()) {
        let layers = [ScoredLayer { name: "a", scores: &a, kept: Some(&ka) }, ScoredLayer { name: "b", scores: &b, kept: Some(&kb) }];
        let expected = Selector::new().select_global(&layers, s).unwrap();
        let mut count = GlobalCount::new(Rounding::HalfEven);
        for l in &layers {
            count.add(l.name, l.scores, l.kept).unwrap();
        }
        let mut bucket = count.plan(s);
        for l in &layers {
            bucket.add(l.scores, l.kept).unwrap();
        }
        let mut masks = bucket.threshold();
        let got: Vec<Mask> = layers.iter().map(|l| masks.mask(l.scores, l.kept).unwrap()).collect();
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn streaming_magnitude_equals_scoring_abs((a, ka) in gen_pair(10), (b, kb) in gen_pair(10), s in arb::sparsity()) {
        let (abs_a, abs_b) = (a.abs(), b.abs());
        let layers = [ScoredLayer { name: "a", scores: &abs_a, kept: Some(&ka) }, ScoredLayer { name: "b", scores: &abs_b, kept: Some(&kb) }];
        let expected = Selector::new().select_global(&layers, s).unwrap();
        let weights = [(&a, &ka), (&b, &kb)];
        let mut count = GlobalCount::new(Rounding::HalfEven);
        for (w, k) in weights {
            count.add_magnitude("w", w, Some(k)).unwrap();
        }
        let mut bucket = count.plan(s);
        for (w, k) in weights {
            bucket.add_magnitude(w, Some(k)).unwrap();
        }
        let mut masks = bucket.threshold();
        let got: Vec<Mask> = weights.iter().map(|(w, k)| masks.mask_magnitude(w, Some(k)).unwrap()).collect();
        prop_assert_eq!(got, expected);
    }
}

fn gen_pair(max: usize) -> impl Strategy<Value = (DMatrix<f64>, Mask)> {
    arb::shape(max).prop_flat_map(|(r, c)| (arb::tied_matrix(r, c), arb::mask(r, c)))
}
