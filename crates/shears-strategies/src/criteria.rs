//! Importance criteria: what makes a weight worth keeping.
//!
//! Each criterion is a [`PruningStrategy`] that scores single weights and, used on its
//! own, selects over the whole tensor (Wanda: within each row). Wrap one in a
//! [`Pruner`](crate::Pruner) to combine it with any [`Pattern`](crate::Pattern).

use std::collections::BTreeMap;

use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shears_core::{
    Granularity, LayerContext, LayerInput, Mask, PruningStrategy, Result, Scalar, Selector,
    Sparsity, check_finite, check_products,
};

/// Magnitude pruning: score `|w|`; the weights closest to zero go first.
///
/// The same masks as `torch.nn.utils.prune.l1_unstructured` on the same weights.
///
/// ```
/// use nalgebra::dmatrix;
/// use shears_core::{LayerContext, PruningStrategy, Sparsity};
/// use shears_strategies::Magnitude;
///
/// let mut w = dmatrix![0.1, 0.9; 0.2, 0.8];
/// Magnitude.prune(&mut w, &LayerContext::new("fc"), Sparsity::new(0.5)?)?;
/// assert_eq!(w, dmatrix![0.0, 0.9; 0.0, 0.8]);
/// # Ok::<(), shears_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Magnitude;

impl<T: Scalar> PruningStrategy<T> for Magnitude {
    fn scores(&self, weights: &DMatrix<T>, ctx: &LayerContext<'_, T>) -> Result<DMatrix<T>> {
        check_finite(ctx.name(), weights.as_slice())?;
        Ok(weights.abs())
    }

    fn granularity(&self) -> Granularity {
        Granularity::Unstructured
    }

    /// Selection then reads `|w|` in place, with no score matrix
    /// ([`shears_core::unstructured_mask`]).
    fn scores_are_magnitude(&self) -> bool {
        true
    }
}

/// First-order Taylor pruning: score `|w * g|`, the estimated change in loss when the
/// weight is removed. Needs gradients in the [`LayerContext`].
///
/// To use gradients of several batches, accumulate the per-batch importances with
/// [`TaylorAccumulator`] and prune on its scores with [`UserScores`]: the sum of
/// `|w * g_b|`, not `|w * mean(g_b)|` (see there why).
///
/// ```
/// use nalgebra::dmatrix;
/// use shears_core::{LayerContext, PruningStrategy, Sparsity};
/// use shears_strategies::Gradient;
///
/// let w = dmatrix![0.5, 0.5; 0.5, 0.5];
/// let g = dmatrix![0.01, 1.0; 0.02, 0.9];
/// let mask = Gradient.mask(&w, &LayerContext::new("fc").with_gradients(&g), Sparsity::new(0.5)?)?;
/// assert_eq!(mask.to_matrix(), dmatrix![false, true; false, true]);
/// assert!(Gradient.mask(&w, &LayerContext::new("fc"), Sparsity::new(0.5)?).is_err());
/// # Ok::<(), shears_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gradient;

impl<T: Scalar> PruningStrategy<T> for Gradient {
    fn scores(&self, weights: &DMatrix<T>, ctx: &LayerContext<'_, T>) -> Result<DMatrix<T>> {
        check_finite(ctx.name(), weights.as_slice())?;
        let grads = ctx.require_gradients(weights)?;
        let scores = weights.zip_map(grads, |w, g| (w * g).abs());
        check_products(ctx.name(), "|w * g|", &scores)?;
        Ok(scores)
    }

    fn granularity(&self) -> Granularity {
        Granularity::Unstructured
    }

    fn requires_gradients(&self) -> bool {
        true
    }
}

/// Sums first-order Taylor importances `|w * g_b|` over batches.
///
/// Why the sum of per-batch magnitudes and not `|w * mean(g)|`: near a trained minimum
/// the mean gradient is close to zero by definition, so `|w * mean(g)|` ranks weights by
/// noise; per-batch magnitudes measure how much each weight moves the loss on the data,
/// which is what Molchanov et al. (2017, 2019) accumulate.
///
/// ```
/// use nalgebra::dmatrix;
/// use shears_strategies::TaylorAccumulator;
///
/// let w = dmatrix![1.0, 1.0];
/// let mut acc = TaylorAccumulator::new("fc", 1, 2)?;
/// acc.add_batch(&w, &dmatrix![1.0, 0.1])?;
/// acc.add_batch(&w, &dmatrix![-1.0, 0.1])?; // the mean gradient of weight 0 is zero
/// assert_eq!(acc.batches(), 2);
/// assert_eq!(acc.scores(), &dmatrix![2.0, 0.2]);
/// # Ok::<(), shears_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TaylorAccumulator<T: Scalar> {
    name: String,
    sum: DMatrix<T>,
    batches: usize,
}

impl<T: Scalar> TaylorAccumulator<T> {
    /// An empty accumulator for layer `name` of shape `(nrows, ncols)`.
    ///
    /// # Errors
    /// [`shears_core::Error::DimensionOverflow`] if a matrix of that shape could not be
    /// addressed.
    pub fn new(name: impl Into<String>, nrows: usize, ncols: usize) -> Result<Self> {
        Ok(TaylorAccumulator {
            name: name.into(),
            sum: shears_core::try_zeros(nrows, ncols)?,
            batches: 0,
        })
    }

    /// Adds `|w * g|` of one batch.
    ///
    /// # Errors
    /// [`shears_core::Error::ShapeMismatch`] if `weights`, and
    /// [`shears_core::Error::InputShape`] if `gradients`, do not have the accumulator's shape; [`shears_core::Error::NonFinite`] for NaN or infinite values;
    /// [`shears_core::Error::ProductOverflow`] if the sum would overflow (then it is
    /// left as it was).
    pub fn add_batch(&mut self, weights: &DMatrix<T>, gradients: &DMatrix<T>) -> Result<()> {
        if weights.shape() != self.sum.shape() {
            return Err(shears_core::Error::ShapeMismatch {
                op: "taylor accumulator weights",
                expected: self.sum.shape(),
                got: weights.shape(),
            });
        }
        if gradients.shape() != self.sum.shape() {
            return Err(shears_core::Error::InputShape {
                tensor: self.name.clone(),
                input: LayerInput::Gradients,
                expected: self.sum.shape(),
                got: gradients.shape(),
            });
        }
        check_finite(&self.name, weights.as_slice())?;
        check_finite(&format!("{}.grad", self.name), gradients.as_slice())?;
        let mut sum = self.sum.clone();
        sum.zip_zip_apply(weights, gradients, |s, w, g| *s += (w * g).abs());
        // Checked before it is kept, so a failed batch leaves the sum as it was.
        check_products(&self.name, "summed |w * g|", &sum)?;
        self.sum = sum;
        self.batches += 1;
        Ok(())
    }

    /// The accumulated importances (the sum over batches).
    pub fn scores(&self) -> &DMatrix<T> {
        &self.sum
    }

    /// The number of batches added.
    pub fn batches(&self) -> usize {
        self.batches
    }

    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Gives the accumulated importances back.
    pub fn into_scores(self) -> DMatrix<T> {
        self.sum
    }
}

/// Random pruning: the baseline every pruning paper compares against.
///
/// Scores are uniform in `[0, 1)` from ChaCha8 seeded with the seed and the layer's
/// name, so each layer gets its own pattern and the same seed always gives the same
/// masks, on every platform.
///
/// ```
/// use nalgebra::DMatrix;
/// use shears_core::{LayerContext, PruningStrategy, Sparsity};
/// use shears_strategies::Random;
///
/// let w = DMatrix::<f32>::from_element(10, 10, 1.0);
/// let ctx = LayerContext::new("fc");
/// let a = Random::new(7).mask(&w, &ctx, Sparsity::new(0.3)?)?;
/// assert_eq!(a.count_pruned(), 30);
/// assert_eq!(a, Random::new(7).mask(&w, &ctx, Sparsity::new(0.3)?)?);
/// # Ok::<(), shears_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Random {
    seed: u64,
}

impl Random {
    /// A random criterion with the given seed.
    pub fn new(seed: u64) -> Self {
        Random { seed }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

/// FNV-1a: a stable hash of the layer name (std's hasher may change between releases).
pub(crate) fn stable_hash(name: &str) -> u64 {
    name.bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

impl<T: Scalar> PruningStrategy<T> for Random {
    fn scores(&self, weights: &DMatrix<T>, ctx: &LayerContext<'_, T>) -> Result<DMatrix<T>> {
        check_finite(ctx.name(), weights.as_slice())?;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ stable_hash(ctx.name()));
        Ok(DMatrix::from_fn(weights.nrows(), weights.ncols(), |_, _| {
            T::from_f64_lossy(rng.random::<f64>())
        }))
    }

    fn granularity(&self) -> Granularity {
        Granularity::Unstructured
    }
}

/// Wanda (Sun et al. 2023): score `|w_ij| * ||x_j||_2`, compared within each output row.
///
/// The activation norms (one per input feature, from calibration data) come through
/// [`LayerContext::with_activation_norms`]. This is how large language models are pruned
/// without retraining.
///
/// ```
/// use nalgebra::{dmatrix, dvector};
/// use shears_core::{LayerContext, PruningStrategy, Sparsity};
/// use shears_strategies::Wanda;
///
/// let w = dmatrix![1.0, 2.0; 3.0, 1.0];
/// let norms = dvector![10.0, 1.0]; // input 0 is loud
/// let ctx = LayerContext::new("fc").with_activation_norms(&norms);
/// let mask = Wanda.mask(&w, &ctx, Sparsity::new(0.5)?)?;
/// assert_eq!(mask.to_matrix(), dmatrix![true, false; true, false]);
/// # Ok::<(), shears_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wanda;

impl<T: Scalar> PruningStrategy<T> for Wanda {
    fn scores(&self, weights: &DMatrix<T>, ctx: &LayerContext<'_, T>) -> Result<DMatrix<T>> {
        check_finite(ctx.name(), weights.as_slice())?;
        let norms = ctx.require_activation_norms(weights)?;
        let mut scores = weights.abs();
        for (mut col, &n) in scores.column_iter_mut().zip(norms.iter()) {
            col *= n;
        }
        check_products(ctx.name(), "|w| * ||x||", &scores)?;
        Ok(scores)
    }

    fn granularity(&self) -> Granularity {
        Granularity::Unstructured
    }

    fn mask(
        &self,
        weights: &DMatrix<T>,
        ctx: &LayerContext<'_, T>,
        sparsity: Sparsity,
    ) -> Result<Mask> {
        let scores = self.scores(weights, ctx)?;
        Selector::new().select_per_row(ctx.name(), &scores, sparsity, ctx.mask())
    }
}

/// Scores the user brings, one matrix per layer name (PyTorch's `importance_scores`).
///
/// ```
/// use nalgebra::dmatrix;
/// use shears_core::{LayerContext, PruningStrategy, Sparsity};
/// use shears_strategies::UserScores;
///
/// let w = dmatrix![5.0, 5.0];
/// let scores = UserScores::new().with_layer("fc", dmatrix![0.0, 1.0]);
/// let mask = scores.mask(&w, &LayerContext::new("fc"), Sparsity::new(0.5)?)?;
/// assert_eq!(mask.to_matrix(), dmatrix![false, true]);
/// assert!(scores.mask(&w, &LayerContext::new("other"), Sparsity::new(0.5)?).is_err());
/// # Ok::<(), shears_core::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserScores<T: Scalar> {
    scores: BTreeMap<String, DMatrix<T>>,
}

impl<T: Scalar> UserScores<T> {
    /// No scores yet.
    pub fn new() -> Self {
        UserScores { scores: BTreeMap::new() }
    }

    /// Adds the scores of layer `name`.
    pub fn with_layer(mut self, name: impl Into<String>, scores: DMatrix<T>) -> Self {
        self.scores.insert(name.into(), scores);
        self
    }

    /// Adds or replaces the scores of layer `name`.
    pub fn insert(&mut self, name: impl Into<String>, scores: DMatrix<T>) {
        self.scores.insert(name.into(), scores);
    }
}

impl<T: Scalar> PruningStrategy<T> for UserScores<T> {
    fn scores(&self, weights: &DMatrix<T>, ctx: &LayerContext<'_, T>) -> Result<DMatrix<T>> {
        let scores = self.scores.get(ctx.name()).ok_or_else(|| ctx.missing(LayerInput::Scores))?;
        if scores.shape() != weights.shape() {
            return Err(shears_core::Error::InputShape {
                tensor: ctx.name().to_owned(),
                input: LayerInput::Scores,
                expected: weights.shape(),
                got: scores.shape(),
            });
        }
        check_finite(ctx.name(), scores.as_slice())?;
        Ok(scores.clone())
    }

    fn granularity(&self) -> Granularity {
        Granularity::Unstructured
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::{dmatrix, dvector};
    use shears_core::Error;

    #[test]
    fn magnitude_rejects_nan_weights() {
        let w = dmatrix![1.0, f32::NAN];
        let err = Magnitude.mask(&w, &LayerContext::new("fc2"), Sparsity::ZERO).unwrap_err();
        assert_eq!(err, Error::NonFinite { tensor: "fc2".into(), index: 1 });
    }

    #[test]
    fn gradient_errors_say_what_is_missing() {
        let w = dmatrix![1.0, 2.0];
        let s = Sparsity::new(0.5).unwrap();
        let err = Gradient.mask(&w, &LayerContext::new("fc"), s).unwrap_err();
        assert!(matches!(err, Error::MissingInput { input: LayerInput::Gradients, .. }));
        let g = dmatrix![1.0, 2.0, 3.0];
        let err = Gradient.mask(&w, &LayerContext::new("fc").with_gradients(&g), s).unwrap_err();
        assert!(matches!(err, Error::InputShape { expected: (1, 2), got: (1, 3), .. }));
        assert!(PruningStrategy::<f64>::requires_gradients(&Gradient));
        assert!(!PruningStrategy::<f64>::requires_gradients(&Magnitude));
    }

    #[test]
    fn accumulator_errors() {
        let mut acc = TaylorAccumulator::<f64>::new("fc", 1, 2).unwrap();
        assert!(matches!(
            acc.add_batch(&dmatrix![1.0], &dmatrix![1.0, 2.0]),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            acc.add_batch(&dmatrix![1.0, 1.0], &dmatrix![1.0]),
            Err(Error::InputShape { .. })
        ));
        let err = acc.add_batch(&dmatrix![1.0, 1.0], &dmatrix![f64::NAN, 1.0]).unwrap_err();
        assert_eq!(err, Error::NonFinite { tensor: "fc.grad".into(), index: 0 });
        assert_eq!(acc.batches(), 0);
        assert_eq!(acc.name(), "fc");
        // A shape whose element count wraps in release arithmetic is refused, not built
        // with storage shorter than its shape.
        let wraps = 1usize << (usize::BITS / 2);
        let err = TaylorAccumulator::<f32>::new("fc", wraps, wraps).unwrap_err();
        assert_eq!(err, Error::DimensionOverflow { dims: vec![wraps, wraps] });
    }

    #[test]
    fn finite_factors_whose_product_overflows_are_named() {
        let s = Sparsity::new(0.5).unwrap();
        let w = dmatrix![1.0f32, 3e30; 2.0, 3e30];
        let g = dmatrix![1.0f32, 1.0; 1.0, 1e10];
        let ctx = LayerContext::new("fc").with_gradients(&g);
        assert_eq!(Gradient.mask(&w, &ctx, s).unwrap_err(), overflow("|w * g|", 1, 1));
        let g = dmatrix![1.0f32, 1e10; 1.0, 1.0];
        let ctx = LayerContext::new("fc").with_gradients(&g);
        assert_eq!(Gradient.mask(&w, &ctx, s).unwrap_err(), overflow("|w * g|", 0, 1));
        let norms = nalgebra::dvector![1.0f32, 1e10];
        let ctx = LayerContext::new("fc").with_activation_norms(&norms);
        assert_eq!(Wanda.mask(&w, &ctx, s).unwrap_err(), overflow("|w| * ||x||", 0, 1));
        // The accumulator's sum overflows on the second batch and is kept as it was.
        let mut acc = TaylorAccumulator::<f64>::new("fc", 1, 2).unwrap();
        let (w, g) = (dmatrix![1e300, 1.0], dmatrix![1e8, 1.0]);
        acc.add_batch(&w, &g).unwrap();
        let err = acc.add_batch(&w, &g).unwrap_err();
        assert_eq!(err, overflow("summed |w * g|", 0, 0));
        assert_eq!((acc.batches(), acc.scores()), (1, &dmatrix![1e308, 1.0]));
    }

    fn overflow(score: &'static str, row: usize, col: usize) -> Error {
        Error::ProductOverflow { tensor: "fc".into(), score, row, col }
    }

    #[test]
    fn accumulated_scores_prune_like_single_batch_gradient() {
        // One batch: the accumulator's scores are exactly Gradient's.
        let w = dmatrix![0.5, -0.5; 2.0, 0.1];
        let g = dmatrix![0.3, 1.0; -0.02, 4.0];
        let mut acc = TaylorAccumulator::new("fc", 2, 2).unwrap();
        acc.add_batch(&w, &g).unwrap();
        let ctx = LayerContext::new("fc").with_gradients(&g);
        assert_eq!(acc.scores(), &Gradient.scores(&w, &ctx).unwrap());
        let user = UserScores::new().with_layer("fc", acc.into_scores());
        let s = Sparsity::new(0.5).unwrap();
        assert_eq!(
            user.mask(&w, &LayerContext::new("fc"), s).unwrap(),
            Gradient.mask(&w, &ctx, s).unwrap()
        );
    }

    #[test]
    fn random_differs_by_seed_and_layer() {
        let w = DMatrix::<f64>::zeros(8, 8);
        let s = Sparsity::new(0.5).unwrap();
        let a = Random::new(1).mask(&w, &LayerContext::new("a"), s).unwrap();
        assert_ne!(a, Random::new(2).mask(&w, &LayerContext::new("a"), s).unwrap());
        assert_ne!(a, Random::new(1).mask(&w, &LayerContext::new("b"), s).unwrap());
        assert_eq!(Random::new(1).seed(), 1);
    }

    #[test]
    fn wanda_compares_within_rows() {
        let w = dmatrix![1.0, 1.0, 1.0, 1.0; 100.0, 100.0, 100.0, 100.0];
        let norms = dvector![1.0, 2.0, 3.0, 4.0];
        let ctx = LayerContext::new("fc").with_activation_norms(&norms);
        let mask = Wanda.mask(&w, &ctx, Sparsity::new(0.5).unwrap()).unwrap();
        assert_eq!(mask.kept_per_row(), vec![2, 2]);
        assert_eq!(mask.to_matrix(), dmatrix![false, false, true, true; false, false, true, true]);
        let err = Wanda.mask(&w, &LayerContext::new("fc"), Sparsity::ZERO).unwrap_err();
        assert!(matches!(err, Error::MissingInput { input: LayerInput::ActivationNorms, .. }));
        // A negative norm would rank that input's weights backwards.
        let negative = dvector![1.0, -2.0, 3.0, 4.0];
        let ctx = LayerContext::new("fc").with_activation_norms(&negative);
        let err = Wanda.mask(&w, &ctx, Sparsity::new(0.5).unwrap()).unwrap_err();
        assert!(matches!(err, Error::NegativeInput { index: 1, .. }), "{err}");
        assert!(err.to_string().contains("must not be negative, got -2 at index 1"), "{err}");
    }

    #[test]
    fn user_scores_errors() {
        let scores = UserScores::new().with_layer("fc", dmatrix![1.0, f64::NAN]);
        let w = dmatrix![1.0, 1.0];
        assert!(matches!(
            scores.mask(&w, &LayerContext::new("fc"), Sparsity::ZERO),
            Err(Error::NonFinite { .. })
        ));
        let mut scores = UserScores::new();
        scores.insert("fc", dmatrix![1.0]);
        assert!(matches!(
            scores.mask(&w, &LayerContext::new("fc"), Sparsity::ZERO),
            Err(Error::InputShape { .. })
        ));
        assert!(matches!(
            scores.mask(&w, &LayerContext::new("x"), Sparsity::ZERO),
            Err(Error::MissingInput { input: LayerInput::Scores, .. })
        ));
    }
}
