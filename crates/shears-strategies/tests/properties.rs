//! Property tests: exact counts, pattern conformity, whole groups, global = concatenation.

use std::collections::BTreeMap;

use nalgebra::DMatrix;
use proptest::prelude::*;
use shears_core::{
    Mask, NmPattern, Prunable, PruningStrategy, Rounding, Sparsity, proptest as arb,
};
use shears_strategies::{
    Axis, Decay, DynamicSparsity, LayerContext, LotteryTicket, Magnitude, Masks, ModelPruner,
    Pattern, Pruner, Random, Scope, Structured, UpdateSchedule, satisfies_nm,
};

fn weights(max: usize) -> impl Strategy<Value = DMatrix<f64>> {
    arb::shape(max).prop_flat_map(|(r, c)| arb::tied_matrix(r, c))
}

struct Model(BTreeMap<String, DMatrix<f64>>);
impl Prunable<f64> for Model {
    fn prunable_names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
    fn weight(&self, n: &str) -> Option<&DMatrix<f64>> {
        self.0.get(n)
    }
    fn weight_mut(&mut self, n: &str) -> Option<&mut DMatrix<f64>> {
        self.0.get_mut(n)
    }
}

proptest! {
    #[test]
    fn magnitude_prunes_the_exact_count(w in weights(20), s in arb::sparsity()) {
        let mask = Magnitude.mask(&w, &LayerContext::new("w"), s).unwrap();
        prop_assert_eq!(mask.count_pruned(), s.count_of(w.len(), Rounding::HalfEven));
        // Every kept |w| is >= every pruned |w|.
        let kept_min = mask.iter_kept().map(|(r, c)| w[(r, c)].abs()).fold(f64::INFINITY, f64::min);
        let pruned_max = (!&mask).iter_kept().map(|(r, c)| w[(r, c)].abs()).fold(f64::NEG_INFINITY, f64::max);
        prop_assert!(kept_min >= pruned_max);
    }

    #[test]
    fn nm_masks_conform(w in (1usize..8, 1usize..20).prop_flat_map(|(r, c)| arb::tied_matrix(r, c)), (n, m) in (1usize..=4).prop_flat_map(|m| (1..=m, Just(m)))) {
        let p = NmPattern::new(n, m).unwrap();
        let s = Sparsity::new(1.0 - n as f64 / m as f64).unwrap();
        let mask = Pruner::new(Magnitude).with_pattern(Pattern::NM(p)).mask(&w, &LayerContext::new("w"), s).unwrap();
        prop_assert!(satisfies_nm(&mask, p));
        // Exactly min(n, group length) kept per group, and they are the group's best.
        for r in 0..w.nrows() {
            for start in (0..w.ncols()).step_by(m) {
                let end = (start + m).min(w.ncols());
                let kept: Vec<usize> = (start..end).filter(|&c| mask.get(r, c) == Some(true)).collect();
                prop_assert_eq!(kept.len(), n.min(end - start));
                for c in start..end {
                    if mask.get(r, c) == Some(false) {
                        prop_assert!(kept.iter().all(|&k| w[(r, k)].abs() >= w[(r, c)].abs()));
                    }
                }
            }
        }
    }

    #[test]
    fn structured_masks_hold_whole_groups(w in weights(12), s in arb::sparsity(), axis in prop_oneof![Just(Axis::Rows), Just(Axis::Columns)]) {
        let pruner = Pruner::new(Magnitude).with_pattern(Pattern::Structured(Structured::new(axis)));
        let mask = pruner.mask(&w, &LayerContext::new("w"), s).unwrap();
        // A matrix with empty slices has nothing to prune and every slice is trivially empty.
        prop_assume!(!w.is_empty());
        let (groups, pruned) = match axis {
            Axis::Rows => (w.nrows(), mask.fully_pruned_rows()),
            _ => (w.ncols(), mask.fully_pruned_cols()),
        };
        prop_assert_eq!(pruned.len(), s.count_of(groups, Rounding::HalfEven));
        // Everything outside the pruned groups is kept.
        let slice_len = if axis == Axis::Rows { w.ncols() } else { w.nrows() };
        prop_assert_eq!(mask.count_kept(), (groups - pruned.len()) * slice_len);
    }

    #[test]
    fn random_is_deterministic_and_exact(w in weights(16), s in arb::sparsity(), seed in any::<u64>()) {
        let a = Random::new(seed).mask(&w, &LayerContext::new("w"), s).unwrap();
        let b = Random::new(seed).mask(&w, &LayerContext::new("w"), s).unwrap();
        prop_assert_eq!(a.count_pruned(), s.count_of(w.len(), Rounding::HalfEven));
        prop_assert_eq!(a.to_bytes(), b.to_bytes());
    }

    #[test]
    fn lottery_rounds_are_monotone(a in weights(10), b in weights(10), p in 0.05..0.5f64, rounds in 1u32..6) {
        let mut model = Model(BTreeMap::from([("a".to_string(), a), ("b".to_string(), b)]));
        let mut ticket = LotteryTicket::new(p).unwrap();
        ticket.remember_model(&model);
        let mut masks = Masks::new();
        let mut prev: Option<Masks> = None;
        for round in 1..=rounds {
            ticket.prune_round(&mut model, &mut masks, round).unwrap();
            for (name, mask) in &masks {
                let n = mask.len();
                prop_assert_eq!(mask.count_pruned(), ticket.target(name, round).count_of(n, Rounding::HalfEven));
                if let Some(prev) = &prev {
                    prop_assert!(mask.is_subset_of(&prev[name]).unwrap());
                }
            }
            ticket.rewind(&mut model, &masks).unwrap();
            prev = Some(masks.clone());
        }
    }

    #[test]
    fn global_equals_concatenated_single_layer(a in weights(8), b in weights(8), s in arb::sparsity()) {
        let model = Model(BTreeMap::from([("a".to_string(), a.clone()), ("b".to_string(), b.clone())]));
        let masks = ModelPruner::new(&Magnitude).with_scope(Scope::Global).masks(&model, s, &Masks::new()).unwrap();
        // One row holding a's then b's row-major flattening.
        let flat: Vec<f64> = a.transpose().iter().chain(b.transpose().iter()).copied().collect();
        let single = Magnitude.mask(&DMatrix::from_row_slice(1, flat.len(), &flat), &LayerContext::new("ab"), s).unwrap();
        let bits: Vec<bool> = (0..flat.len()).map(|i| single.get(0, i) == Some(true)).collect();
        prop_assert_eq!(&masks["a"], &Mask::from_row_major(a.nrows(), a.ncols(), &bits[..a.len()]).unwrap());
        prop_assert_eq!(&masks["b"], &Mask::from_row_major(b.nrows(), b.ncols(), &bits[a.len()..]).unwrap());
    }

    #[test]
    fn schedules_are_monotone_and_end_on_target(s in arb::sparsity(), rounds in 1u32..12, begin in 0usize..50, len in 1usize..500, freq in 1usize..40) {
        if s.get() < 1.0 {
            let it = shears_strategies::Schedule::iterative(s, rounds).unwrap();
            let t: Vec<_> = it.targets().collect();
            prop_assert!(t.windows(2).all(|w| w[0].1 <= w[1].1));
            prop_assert_eq!(t.last().map(|x| x.1), Some(s));
        }
        let poly = shears_strategies::Schedule::polynomial(Sparsity::ZERO, s, begin, begin + len, freq).unwrap();
        let t: Vec<_> = poly.targets().collect();
        prop_assert!(t.windows(2).all(|w| w[0].1 <= w[1].1 && w[0].0 < w[1].0));
        prop_assert_eq!(t.last().map(|x| x.1), Some(s));
        for step in begin..begin + len {
            prop_assert!(poly.target_at(step) <= poly.target_at(step + 1));
        }
    }
}

/// Two layers with weights and gradients, for dynamic sparsity.
struct Trained {
    weights: BTreeMap<String, DMatrix<f64>>,
    gradients: BTreeMap<String, DMatrix<f64>>,
}
impl Prunable<f64> for Trained {
    fn prunable_names(&self) -> Vec<String> {
        self.weights.keys().cloned().collect()
    }
    fn weight(&self, n: &str) -> Option<&DMatrix<f64>> {
        self.weights.get(n)
    }
    fn weight_mut(&mut self, n: &str) -> Option<&mut DMatrix<f64>> {
        self.weights.get_mut(n)
    }
    fn gradient(&self, n: &str) -> Option<&DMatrix<f64>> {
        self.gradients.get(n)
    }
}

/// A layer for dynamic sparsity: tied weights and gradients and a mask of one shape.
fn dst_layer() -> impl Strategy<Value = (DMatrix<f64>, DMatrix<f64>, Mask)> {
    arb::shape(12)
        .prop_flat_map(|(r, c)| (arb::tied_matrix(r, c), arb::tied_matrix(r, c), arb::mask(r, c)))
}

/// The update by full sorts: drop the `k` kept weights of smallest `|w|` (lower row-major
/// index first on ties), regrow the `k` positions not kept after the drop with the largest
/// `|g|` (higher row-major index first on ties).
fn sorted_update(w: &DMatrix<f64>, g: &DMatrix<f64>, mask: &Mask, fraction: f64) -> Mask {
    let (rows, cols) = w.shape();
    let row_major = |i: usize| (i % rows) * cols + i / rows;
    let k = (fraction * mask.count_kept() as f64).round_ties_even() as usize;
    let mut kept: Vec<usize> = mask.iter_kept_linear().collect();
    kept.sort_by(|&a, &b| w[a].abs().total_cmp(&w[b].abs()).then(row_major(a).cmp(&row_major(b))));
    let mut keep = mask.to_matrix();
    for &i in &kept[..k] {
        keep[i] = false;
    }
    let mut candidates: Vec<usize> = (0..w.len()).filter(|&i| !keep[i]).collect();
    candidates
        .sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()).then(row_major(b).cmp(&row_major(a))));
    for &i in &candidates[..k] {
        keep[i] = true;
    }
    Mask::from_matrix(&keep)
}

proptest! {
    #[test]
    fn rigl_updates_equal_the_sorted_oracle(
        a in dst_layer(),
        b in dst_layer(),
        fraction in 0.0f64..=1.0,
        step in 1usize..1000,
    ) {
        let names = ["a".to_string(), "b".to_string()];
        let mut model = Trained {
            weights: BTreeMap::from([(names[0].clone(), a.2.apply(&a.0).unwrap()), (names[1].clone(), b.2.apply(&b.0).unwrap())]),
            gradients: BTreeMap::from([(names[0].clone(), a.1.clone()), (names[1].clone(), b.1.clone())]),
        };
        let mut masks = Masks::from([(names[0].clone(), a.2.clone()), (names[1].clone(), b.2.clone())]);
        let before = model.weights.clone();
        let schedule = UpdateSchedule::new(1, fraction, usize::MAX, Decay::Constant).unwrap();
        let update = DynamicSparsity::rigl(schedule).update(step, &mut model, &mut masks).unwrap().unwrap();
        for (name, (_, g, mask)) in names.iter().zip([&a, &b]) {
            let expected = sorted_update(&before[name], g, mask, fraction);
            prop_assert_eq!(&masks[name], &expected, "layer {}", name);
            prop_assert_eq!(masks[name].count_kept(), mask.count_kept());
            // Regrown weights are zero, the others kept their values, pruned ones are zero.
            let grown = &update.grown[name];
            prop_assert!(grown.is_subset_of(&masks[name]).unwrap());
            for (i, (&value, &old)) in model.weights[name].iter().zip(before[name].iter()).enumerate() {
                match (masks[name].get_linear(i), grown.get_linear(i)) {
                    (Some(true), Some(false)) => prop_assert_eq!(value, old),
                    _ => prop_assert_eq!(value, 0.0),
                }
            }
        }
    }

    #[test]
    fn set_updates_keep_exact_counts(
        a in dst_layer(),
        fraction in 0.0f64..=1.0,
        seed in any::<u64>(),
        step in 1usize..1000,
    ) {
        let mut model = Trained { weights: BTreeMap::from([("a".to_string(), a.2.apply(&a.0).unwrap())]), gradients: BTreeMap::new() };
        let mut masks = Masks::from([("a".to_string(), a.2.clone())]);
        let schedule = UpdateSchedule::new(1, fraction, usize::MAX, Decay::Constant).unwrap();
        let update = DynamicSparsity::set(schedule, seed).update(step, &mut model, &mut masks).unwrap().unwrap();
        let k = (fraction * a.2.count_kept() as f64).round_ties_even() as usize;
        prop_assert_eq!(masks["a"].count_kept(), a.2.count_kept());
        prop_assert_eq!(update.moved("a"), k);
        // What survived the drop is the kept set's k smallest magnitudes removed.
        let survivors = masks["a"].and(&update.grown["a"].not()).unwrap();
        prop_assert!(survivors.is_subset_of(&a.2).unwrap());
        prop_assert_eq!(survivors.count_kept(), a.2.count_kept() - k);
        prop_assert!(update.grown["a"].iter_kept().all(|(r, c)| model.weights["a"][(r, c)] == 0.0));
    }
}
