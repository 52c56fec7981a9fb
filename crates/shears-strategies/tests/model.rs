//! Model-level pruning: global scope, minimum density, exclusions, errors.

use std::collections::BTreeMap;

use nalgebra::DMatrix;
use shears_core::{Mask, Prunable, Sparsity};
use shears_strategies::{
    Axis, Error, Gradient, Magnitude, Masks, ModelPruner, Pattern, Pruner, Scope, Structured,
};

pub(crate) struct Model {
    weights: BTreeMap<String, DMatrix<f64>>,
    grads: BTreeMap<String, DMatrix<f64>>,
}

impl Prunable<f64> for Model {
    fn prunable_names(&self) -> Vec<String> {
        self.weights.keys().cloned().collect()
    }
    fn weight(&self, name: &str) -> Option<&DMatrix<f64>> {
        self.weights.get(name)
    }
    fn weight_mut(&mut self, name: &str) -> Option<&mut DMatrix<f64>> {
        self.weights.get_mut(name)
    }
    fn gradient(&self, name: &str) -> Option<&DMatrix<f64>> {
        self.grads.get(name)
    }
}

fn model() -> Model {
    let a = DMatrix::from_fn(8, 6, |r, c| ((r * 31 + c * 17) % 23) as f64 / 10.0);
    let b = DMatrix::from_fn(4, 8, |r, c| ((r * 13 + c * 7) % 19) as f64 / 100.0);
    let ga = DMatrix::from_fn(8, 6, |r, c| ((r + c) % 5) as f64);
    let gb = DMatrix::from_fn(4, 8, |r, c| ((r * c) % 3) as f64 + 1.0);
    Model {
        weights: BTreeMap::from([("a".into(), a), ("b".into(), b)]),
        grads: BTreeMap::from([("a".into(), ga), ("b".into(), gb)]),
    }
}

#[test]
fn layer_scope_prunes_each_layer() {
    let mut m = model();
    let mut masks = Masks::new();
    ModelPruner::new(&Magnitude).prune(&mut m, Sparsity::new(0.5).unwrap(), &mut masks).unwrap();
    assert_eq!(masks["a"].count_pruned(), 24);
    assert_eq!(masks["b"].count_pruned(), 16);
    for (name, mask) in &masks {
        assert_eq!(mask.apply(&m.weights[name]).unwrap(), m.weights[name]);
    }
}

#[test]
fn global_min_density_keeps_every_layer_alive() {
    let m = model();
    let s = Sparsity::new(0.5).unwrap();
    let unconstrained =
        ModelPruner::new(&Magnitude).with_scope(Scope::Global).masks(&m, s, &Masks::new()).unwrap();
    // Layer b is tiny in magnitude: global scope takes it all.
    assert_eq!(unconstrained["b"].count_kept(), 0);
    let pruner =
        ModelPruner::new(&Magnitude).with_scope(Scope::Global).with_min_density(0.25).unwrap();
    let masks = pruner.masks(&m, s, &Masks::new()).unwrap();
    assert_eq!(masks["b"].count_kept(), 8);
    // The total is still the global target: 40 of 80.
    assert_eq!(masks.values().map(Mask::count_pruned).sum::<usize>(), 40);
    // Layer b keeps its 8 highest magnitudes.
    let only_b = ModelPruner::new(&Magnitude).exclude("a");
    let b_alone = only_b.masks(&m, Sparsity::new(0.75).unwrap(), &Masks::new()).unwrap();
    assert_eq!(masks["b"], b_alone["b"]);
}

#[test]
fn layer_scope_min_density_caps_the_target() {
    let m = model();
    let pruner = ModelPruner::new(&Magnitude).with_min_density(0.5).unwrap();
    let masks = pruner.masks(&m, Sparsity::new(0.9).unwrap(), &Masks::new()).unwrap();
    assert_eq!(masks["a"].count_kept(), 24);
    assert_eq!(masks["b"].count_kept(), 16);
}

#[test]
fn gradients_come_from_the_model() {
    let m = model();
    let masks =
        ModelPruner::new(&Gradient).masks(&m, Sparsity::new(0.5).unwrap(), &Masks::new()).unwrap();
    assert_eq!(masks["a"].count_pruned(), 24);
    let mut no_grads = model();
    no_grads.grads.clear();
    let err = ModelPruner::new(&Gradient)
        .masks(&no_grads, Sparsity::new(0.5).unwrap(), &Masks::new())
        .unwrap_err();
    assert!(err.to_string().contains("`a`") && err.to_string().contains("gradients"), "{err}");
}

#[test]
fn scope_errors() {
    let m = model();
    let s = Sparsity::new(0.5).unwrap();
    let all_out = ModelPruner::new(&Magnitude).exclude("a").exclude("b");
    assert_eq!(all_out.masks(&m, s, &Masks::new()), Err(Error::NoLayers { available: 2 }));
    let rows =
        Pruner::new(Magnitude).with_pattern(Pattern::Structured(Structured::new(Axis::Rows)));
    let err =
        ModelPruner::new(&rows).with_scope(Scope::Global).masks(&m, s, &Masks::new()).unwrap_err();
    assert!(matches!(err, Error::GlobalNeedsUnstructured { .. }));
    assert!(matches!(
        ModelPruner::<f64>::new(&Magnitude).with_min_density(1.5),
        Err(Error::InvalidMinDensity { .. })
    ));
    let wrong = Masks::from([("a".to_string(), Mask::all_kept(2, 2).unwrap())]);
    assert!(matches!(
        ModelPruner::new(&Magnitude).masks(&m, s, &wrong),
        Err(Error::MaskShape { .. })
    ));
}

#[test]
fn repeated_global_pruning_is_monotone() {
    let mut m = model();
    let mut masks = Masks::new();
    let pruner = ModelPruner::new(&Magnitude).with_scope(Scope::Global);
    let mut previous = None::<Masks>;
    for s in [0.2, 0.4, 0.6, 0.8] {
        pruner.prune(&mut m, Sparsity::new(s).unwrap(), &mut masks).unwrap();
        assert_eq!(
            masks.values().map(Mask::count_pruned).sum::<usize>(),
            Sparsity::new(s).unwrap().count_of(80, Default::default())
        );
        if let Some(prev) = &previous {
            for (name, mask) in &masks {
                assert!(mask.is_subset_of(&prev[name]).unwrap());
            }
        }
        previous = Some(masks.clone());
    }
}
