//! Model-level pruning: every layer to the target, or one threshold across layers.

use std::collections::BTreeMap;

use nalgebra::{DMatrix, DVector};
use shears_core::{
    Granularity, LayerContext, Mask, Masks, Prunable, PruningStrategy, Rounding, Scalar,
    ScoredLayer, Selector, Sparsity,
};

use crate::error::{Error, Result};

/// How a model-wide target is shared among layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Scope {
    /// Each layer is pruned to the target on its own (row-balanced pruning is the
    /// [`Pattern::PerRow`](crate::Pattern::PerRow) pattern within this scope).
    #[default]
    Layer,
    /// One threshold across all selected layers: the target is the fraction of all their
    /// weights, as `torch.nn.utils.prune.global_unstructured`. Unstructured only.
    Global,
}

impl Scope {
    /// The names [`Scope`]'s `FromStr` and `Display` use.
    pub const NAMES: &'static str = "layer or global";
}

/// `layer` or `global`.
///
/// ```
/// use shears_strategies::Scope;
/// assert_eq!("global".parse::<Scope>()?, Scope::Global);
/// assert_eq!(Scope::Layer.to_string(), "layer");
/// # Ok::<(), shears_core::Error>(())
/// ```
impl std::str::FromStr for Scope {
    type Err = shears_core::Error;

    fn from_str(s: &str) -> std::result::Result<Self, shears_core::Error> {
        match s {
            "layer" => Ok(Scope::Layer),
            "global" => Ok(Scope::Global),
            _ => Err(shears_core::Error::Parse {
                what: "scope",
                value: s.to_owned(),
                expected: Self::NAMES,
            }),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scope::Layer => "layer",
            Scope::Global => "global",
        })
    }
}

/// Prunes the layers of any [`Prunable`] model with one strategy.
///
/// Layers are taken in the model's [`Prunable::prunable_names`] order (global scope
/// breaks ties by it), minus the excluded ones. Gradients come from
/// [`Prunable::gradient`], activation norms from [`ModelPruner::with_activation_norms`], and
/// each layer's current mask from the `masks` given, so repeated calls are monotone.
///
/// ```
/// use std::collections::BTreeMap;
/// use nalgebra::{DMatrix, dmatrix};
/// use shears_core::{Prunable, Sparsity};
/// use shears_strategies::{Magnitude, Masks, ModelPruner, Scope};
///
/// struct Model(BTreeMap<String, DMatrix<f64>>);
/// impl Prunable<f64> for Model {
///     fn prunable_names(&self) -> Vec<String> { self.0.keys().cloned().collect() }
///     fn weight(&self, n: &str) -> Option<&DMatrix<f64>> { self.0.get(n) }
///     fn weight_mut(&mut self, n: &str) -> Option<&mut DMatrix<f64>> { self.0.get_mut(n) }
/// }
///
/// let mut model = Model(BTreeMap::from([
///     ("a".to_string(), dmatrix![1.0, 2.0; 3.0, 4.0]),
///     ("b".to_string(), dmatrix![0.1, 0.2; 0.3, 0.4]),
/// ]));
/// let mut masks = Masks::new();
/// ModelPruner::new(&Magnitude).with_scope(Scope::Global).prune(&mut model, Sparsity::new(0.5)?, &mut masks)?;
/// assert_eq!(masks["a"].count_pruned(), 0); // the small layer takes all the pruning
/// assert_eq!(masks["b"].count_pruned(), 4);
/// # Ok::<(), shears_strategies::Error>(())
/// ```
pub struct ModelPruner<'a, T: Scalar> {
    strategy: &'a dyn PruningStrategy<T>,
    scope: Scope,
    exclude: Vec<String>,
    min_density: f64,
    rounding: Rounding,
    activation_norms: BTreeMap<String, DVector<T>>,
}

impl<'a, T: Scalar> ModelPruner<'a, T> {
    /// Layer-wise pruning with `strategy`.
    pub fn new(strategy: &'a dyn PruningStrategy<T>) -> Self {
        ModelPruner {
            strategy,
            scope: Scope::Layer,
            exclude: Vec::new(),
            min_density: 0.0,
            rounding: Rounding::HalfEven,
            activation_norms: BTreeMap::new(),
        }
    }

    /// Sets the scope.
    pub fn with_scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Leaves layer `name` untouched.
    pub fn exclude(mut self, name: impl Into<String>) -> Self {
        self.exclude.push(name.into());
        self
    }

    /// Keeps at least this fraction of every layer's weights, so no layer is wiped out
    /// (global scope redistributes what a capped layer cannot take; layer scope caps the
    /// layer's target).
    ///
    /// # Errors
    /// [`Error::InvalidMinDensity`] unless `0 <= density <= 1`.
    pub fn with_min_density(mut self, density: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&density) {
            return Err(Error::InvalidMinDensity { value: density });
        }
        self.min_density = density;
        Ok(self)
    }

    /// Sets how the global count is rounded (half-even by default).
    pub fn with_rounding(mut self, rounding: Rounding) -> Self {
        self.rounding = rounding;
        self
    }

    /// Activation norms per layer, for strategies such as Wanda.
    pub fn with_activation_norms(mut self, norms: BTreeMap<String, DVector<T>>) -> Self {
        self.activation_norms = norms;
        self
    }

    /// The layers this pruner works on, in order.
    ///
    /// # Errors
    /// [`Error::NoLayers`] if the exclusions leave none.
    pub fn layers<M: Prunable<T> + ?Sized>(&self, model: &M) -> Result<Vec<String>> {
        let all = model.prunable_names();
        let available = all.len();
        let chosen: Vec<String> = all.into_iter().filter(|n| !self.exclude.contains(n)).collect();
        if chosen.is_empty() {
            return Err(Error::NoLayers { available });
        }
        Ok(chosen)
    }

    /// The most weights of an `n`-weight layer that may be pruned.
    fn cap(&self, n: usize) -> usize {
        n - ((self.min_density * n as f64).ceil() as usize).min(n)
    }

    /// The masks at `sparsity` for the selected layers, starting from `current`.
    ///
    /// # Errors
    /// [`Error::NoLayers`]; [`Error::GlobalNeedsUnstructured`] for global scope with a
    /// structured strategy; [`Error::MaskShape`] for a current mask of the wrong shape;
    /// whatever the strategy returns (missing gradients, NaN, ...).
    pub fn masks<M: Prunable<T> + ?Sized>(
        &self,
        model: &M,
        sparsity: Sparsity,
        current: &Masks,
    ) -> Result<Masks> {
        let names = self.layers(model)?;
        let mut inputs = Vec::with_capacity(names.len());
        for name in &names {
            let weights = model.require_weight(name)?;
            if let Some(m) = current.get(name).filter(|m| m.shape() != weights.shape()) {
                return Err(Error::MaskShape {
                    layer: name.clone(),
                    mask: m.shape(),
                    weights: weights.shape(),
                });
            }
            inputs.push((name.as_str(), weights));
        }
        match self.scope {
            Scope::Layer => inputs
                .iter()
                .map(|&(name, weights)| {
                    let ctx = self.context(model, name, current);
                    let cap = Sparsity::from_counts(self.cap(weights.len()), weights.len());
                    let target = if sparsity > cap { cap } else { sparsity };
                    Ok((name.to_owned(), self.strategy.mask(weights, &ctx, target)?))
                })
                .collect(),
            Scope::Global => self.global(model, &inputs, sparsity, current),
        }
    }

    fn context<'m, M: Prunable<T> + ?Sized>(
        &'m self,
        model: &'m M,
        name: &'m str,
        current: &'m Masks,
    ) -> LayerContext<'m, T> {
        let mut ctx = LayerContext::new(name);
        if let Some(shape) = model.weight_shape(name) {
            ctx = ctx.with_shape(shape);
        }
        if let Some(g) = model.gradient(name) {
            ctx = ctx.with_gradients(g);
        }
        if let Some(n) = self.activation_norms.get(name) {
            ctx = ctx.with_activation_norms(n);
        }
        if let Some(m) = current.get(name) {
            ctx = ctx.with_mask(m);
        }
        ctx
    }

    fn global<M: Prunable<T> + ?Sized>(
        &self,
        model: &M,
        inputs: &[(&str, &DMatrix<T>)],
        sparsity: Sparsity,
        current: &Masks,
    ) -> Result<Masks> {
        if self.strategy.granularity() != Granularity::Unstructured {
            return Err(Error::GlobalNeedsUnstructured {
                pattern: format!("{:?}", self.strategy.granularity()),
            });
        }
        let scores: Vec<DMatrix<T>> = inputs
            .iter()
            .map(|&(name, w)| self.strategy.scores(w, &self.context(model, name, current)))
            .collect::<shears_core::Result<_>>()?;
        let layers: Vec<ScoredLayer<'_, T>> = inputs
            .iter()
            .zip(&scores)
            .map(|(&(name, _), s)| ScoredLayer { name, scores: s, kept: current.get(name) })
            .collect();
        let total: usize = scores.iter().map(DMatrix::len).sum();
        let already: Vec<usize> =
            layers.iter().map(|l| l.kept.map_or(0, Mask::count_pruned)).collect();
        let mut remaining =
            sparsity.count_of(total, self.rounding).saturating_sub(already.iter().sum());
        let caps: Vec<usize> =
            layers.iter().zip(&already).map(|(l, &a)| self.cap(l.scores.len()).max(a)).collect();

        // Water-filling: a layer that the global threshold would push past its cap is
        // fixed at its cap (its lowest scores) and the rest is shared among the others.
        let selector = Selector::new().with_rounding(self.rounding);
        let mut result: Vec<Option<Mask>> = vec![None; layers.len()];
        let mut active: Vec<usize> = (0..layers.len()).collect();
        loop {
            let pool: Vec<ScoredLayer<'_, T>> = active.iter().map(|&i| layers[i]).collect();
            let masks = selector.prune_lowest_global(&pool, remaining)?;
            let over: Vec<usize> = active
                .iter()
                .zip(&masks)
                .filter(|&(&i, m)| m.count_pruned() > caps[i])
                .map(|(&i, _)| i)
                .collect();
            if over.is_empty() {
                for (&i, m) in active.iter().zip(masks) {
                    result[i] = Some(m);
                }
                break;
            }
            for &i in &over {
                let count = caps[i] - already[i];
                let mut fixed =
                    selector.prune_lowest_global(std::slice::from_ref(&layers[i]), count)?;
                result[i] = fixed.pop();
                remaining -= count;
            }
            active.retain(|i| !over.contains(i));
        }
        Ok(inputs
            .iter()
            .zip(result)
            .filter_map(|(&(name, _), m)| Some((name.to_owned(), m?)))
            .collect())
    }

    /// Computes [`ModelPruner::masks`], zeroes the pruned weights, and stores the masks in
    /// `masks` (replacing the previous ones of those layers).
    ///
    /// # Errors
    /// As [`ModelPruner::masks`].
    pub fn prune<M: Prunable<T> + ?Sized>(
        &self,
        model: &mut M,
        sparsity: Sparsity,
        masks: &mut Masks,
    ) -> Result<()> {
        let new = self.masks(model, sparsity, masks)?;
        for (name, mask) in new {
            mask.apply_in_place(model.require_weight_mut(&name)?)?;
            masks.insert(name, mask);
        }
        Ok(())
    }
}

impl<T: Scalar> std::fmt::Debug for ModelPruner<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelPruner")
            .field("scope", &self.scope)
            .field("exclude", &self.exclude)
            .field("min_density", &self.min_density)
            .field("rounding", &self.rounding)
            .finish_non_exhaustive()
    }
}
