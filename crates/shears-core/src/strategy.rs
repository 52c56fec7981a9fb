//! The [`PruningStrategy`] trait and [`LayerContext`], the per-layer data strategies read.

use nalgebra::{DMatrix, DVector};

use crate::error::{Error, Result};
use crate::granularity::Granularity;
use crate::mask::Mask;
use crate::scalar::Scalar;
use crate::select::{Selector, check_finite};
use crate::shape::WeightShape;
use crate::sparsity::Sparsity;

/// A kind of per-layer data a strategy may need, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LayerInput {
    /// Gradients of the loss with respect to the weights.
    Gradients,
    /// Weights at initialisation or at the rewind point.
    InitialWeights,
    /// Per-input-feature activation norms.
    ActivationNorms,
    /// User-supplied importance scores.
    Scores,
}

impl std::fmt::Display for LayerInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LayerInput::Gradients => "gradients",
            LayerInput::InitialWeights => "initial weights",
            LayerInput::ActivationNorms => "activation norms",
            LayerInput::Scores => "scores",
        })
    }
}

/// What a strategy may read about a layer besides its weights.
///
/// Built with [`LayerContext::new`] and the `with_*` methods; strategies that need a
/// piece of data it does not hold return an error naming the layer. New kinds of
/// per-layer data are added here, so [`PruningStrategy`] does not change when a strategy
/// needs more.
///
/// ```
/// use nalgebra::DMatrix;
/// use shears_core::LayerContext;
/// let grads = DMatrix::<f32>::zeros(2, 3);
/// let ctx = LayerContext::new("fc1").with_gradients(&grads);
/// assert_eq!(ctx.name(), "fc1");
/// assert!(ctx.gradients().is_some());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct LayerContext<'a, T: Scalar> {
    name: &'a str,
    shape: Option<WeightShape>,
    gradients: Option<&'a DMatrix<T>>,
    initial: Option<&'a DMatrix<T>>,
    activation_norms: Option<&'a DVector<T>>,
    mask: Option<&'a Mask>,
}

impl<'a, T: Scalar> LayerContext<'a, T> {
    /// A context holding only the layer's name.
    pub fn new(name: &'a str) -> Self {
        LayerContext {
            name,
            shape: None,
            gradients: None,
            initial: None,
            activation_norms: None,
            mask: None,
        }
    }

    /// The weight's tensor shape (needed for convolution filters and channels; a dense
    /// shape is assumed when absent).
    pub fn with_shape(mut self, shape: WeightShape) -> Self {
        self.shape = Some(shape);
        self
    }

    /// Gradients of the loss with respect to the weights (same shape).
    pub fn with_gradients(mut self, gradients: &'a DMatrix<T>) -> Self {
        self.gradients = Some(gradients);
        self
    }

    /// Weights at initialisation or at an early iteration (lottery-ticket rewinding).
    pub fn with_initial(mut self, initial: &'a DMatrix<T>) -> Self {
        self.initial = Some(initial);
        self
    }

    /// Per-input-feature activation norms `||x_j||_2` from calibration data (Wanda).
    pub fn with_activation_norms(mut self, norms: &'a DVector<T>) -> Self {
        self.activation_norms = Some(norms);
        self
    }

    /// The current mask: selection only chooses among the weights it keeps.
    pub fn with_mask(mut self, mask: &'a Mask) -> Self {
        self.mask = Some(mask);
        self
    }

    /// The layer's name.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The tensor shape, or the dense shape of `weights` when none was given.
    pub fn shape_or_dense(&self, weights: &DMatrix<T>) -> WeightShape {
        self.shape.unwrap_or_else(|| WeightShape::of_matrix(weights))
    }

    /// The gradients, if given.
    pub fn gradients(&self) -> Option<&'a DMatrix<T>> {
        self.gradients
    }

    /// The initial (or rewind-point) weights, if given.
    pub fn initial(&self) -> Option<&'a DMatrix<T>> {
        self.initial
    }

    /// The activation norms, if given.
    pub fn activation_norms(&self) -> Option<&'a DVector<T>> {
        self.activation_norms
    }

    /// The current mask, if given.
    pub fn mask(&self) -> Option<&'a Mask> {
        self.mask
    }

    /// The gradients, checked against the weights' shape and for finiteness.
    ///
    /// # Errors
    /// [`Error::MissingInput`] if none were given; [`Error::InputShape`] if their shape
    /// differs from `weights`; [`Error::NonFinite`] naming `"<layer>.grad"`.
    pub fn require_gradients(&self, weights: &DMatrix<T>) -> Result<&'a DMatrix<T>> {
        self.require_matrix(self.gradients, LayerInput::Gradients, weights, "grad")
    }

    /// The initial weights, checked against the weights' shape and for finiteness.
    ///
    /// # Errors
    /// [`Error::MissingInput`] if none were given; [`Error::InputShape`] if their shape
    /// differs from `weights`; [`Error::NonFinite`] naming `"<layer>.initial"`.
    pub fn require_initial(&self, weights: &DMatrix<T>) -> Result<&'a DMatrix<T>> {
        self.require_matrix(self.initial, LayerInput::InitialWeights, weights, "initial")
    }

    /// The activation norms, one per input feature (column) of `weights`.
    ///
    /// # Errors
    /// [`Error::MissingInput`] if none were given; [`Error::InputShape`] if there is not
    /// one per column; [`Error::NonFinite`] naming `"<layer>.activation_norms"`;
    /// [`Error::NegativeInput`] for a negative norm.
    pub fn require_activation_norms(&self, weights: &DMatrix<T>) -> Result<&'a DVector<T>> {
        let norms =
            self.activation_norms.ok_or_else(|| self.missing(LayerInput::ActivationNorms))?;
        if norms.len() != weights.ncols() {
            return Err(Error::InputShape {
                tensor: self.name.to_owned(),
                input: LayerInput::ActivationNorms,
                expected: (weights.ncols(), 1),
                got: (norms.len(), 1),
            });
        }
        check_finite(&format!("{}.activation_norms", self.name), norms.as_slice())?;
        // A negative norm would turn Wanda's ranking of that input's weights around.
        if let Some((index, value)) = norms.iter().enumerate().find(|(_, n)| n.as_f64() < 0.0) {
            return Err(Error::NegativeInput {
                tensor: self.name.to_owned(),
                input: LayerInput::ActivationNorms,
                index,
                value: value.as_f64(),
            });
        }
        Ok(norms)
    }

    /// [`Error::MissingInput`] for this layer.
    pub fn missing(&self, input: LayerInput) -> Error {
        Error::MissingInput { tensor: self.name.to_owned(), input }
    }

    fn require_matrix(
        &self,
        given: Option<&'a DMatrix<T>>,
        input: LayerInput,
        weights: &DMatrix<T>,
        suffix: &str,
    ) -> Result<&'a DMatrix<T>> {
        let m = given.ok_or_else(|| self.missing(input))?;
        if m.shape() != weights.shape() {
            return Err(Error::InputShape {
                tensor: self.name.to_owned(),
                input,
                expected: weights.shape(),
                got: m.shape(),
            });
        }
        check_finite(&format!("{}.{suffix}", self.name), m.as_slice())?;
        Ok(m)
    }
}

/// A pruning method: scores every weight, then keeps the highest scores.
///
/// Implementors provide [`scores`](PruningStrategy::scores) and, for anything but
/// unstructured whole-tensor selection, [`mask`](PruningStrategy::mask). The trait is
/// object safe, so models can hold `Box<dyn PruningStrategy<f32>>`.
///
/// # Examples
/// A user-defined criterion that keeps the largest squared weights:
/// ```
/// use nalgebra::{DMatrix, dmatrix};
/// use shears_core::{Granularity, LayerContext, PruningStrategy, Result, Sparsity};
///
/// struct Squared;
/// impl PruningStrategy<f64> for Squared {
///     fn scores(&self, weights: &DMatrix<f64>, _: &LayerContext<'_, f64>) -> Result<DMatrix<f64>> {
///         Ok(weights.map(|w| w * w))
///     }
///     fn granularity(&self) -> Granularity { Granularity::Unstructured }
/// }
///
/// let mut w = dmatrix![0.1, -0.9; 0.2, 0.8];
/// let mask = Squared.prune(&mut w, &LayerContext::new("fc"), Sparsity::new(0.5)?)?;
/// assert_eq!(w, dmatrix![0.0, -0.9; 0.0, 0.8]);
/// assert_eq!(mask.count_kept(), 2);
/// # Ok::<(), shears_core::Error>(())
/// ```
pub trait PruningStrategy<T: Scalar> {
    /// One importance score per weight, same shape as `weights`; higher = more important.
    ///
    /// # Errors
    /// Strategy-specific: missing or mismatched inputs, non-finite values.
    fn scores(&self, weights: &DMatrix<T>, ctx: &LayerContext<'_, T>) -> Result<DMatrix<T>>;

    /// The unit this strategy prunes at.
    fn granularity(&self) -> Granularity;

    /// Whether [`scores`](PruningStrategy::scores) needs gradients in the context.
    fn requires_gradients(&self) -> bool {
        false
    }

    /// Whether [`scores`](PruningStrategy::scores) is exactly `|w|`, so selection may read
    /// the weights directly ([`Selector::select_magnitude`]) instead of a copy.
    fn scores_are_magnitude(&self) -> bool {
        false
    }

    /// The mask at `sparsity` (absolute; only weights kept by the context's mask compete).
    ///
    /// The default selects over the whole tensor with [`unstructured_mask`].
    ///
    /// # Errors
    /// Whatever [`scores`](PruningStrategy::scores) returns, and [`Error::NonFinite`] for
    /// non-finite scores.
    fn mask(
        &self,
        weights: &DMatrix<T>,
        ctx: &LayerContext<'_, T>,
        sparsity: Sparsity,
    ) -> Result<Mask> {
        unstructured_mask(self, Selector::new(), weights, ctx, sparsity)
    }

    /// Computes the mask and zeroes the pruned weights in place; returns the mask.
    ///
    /// # Errors
    /// As [`mask`](PruningStrategy::mask).
    fn prune(
        &self,
        weights: &mut DMatrix<T>,
        ctx: &LayerContext<'_, T>,
        sparsity: Sparsity,
    ) -> Result<Mask> {
        let mask = self.mask(weights, ctx, sparsity)?;
        mask.apply_in_place(weights)?;
        Ok(mask)
    }
}

/// The mask of `strategy` at `sparsity`, the whole tensor competing as one group: on
/// `|w|` read in place ([`Selector::select_magnitude`], no score matrix) when the
/// strategy's scores are the magnitude, else on its [`scores`](PruningStrategy::scores).
///
/// # Errors
/// Whatever the strategy's scores return; [`Error::NonFinite`] for non-finite scores or
/// weights; [`Error::ShapeMismatch`] for a context mask of another shape.
pub fn unstructured_mask<T: Scalar, S: PruningStrategy<T> + ?Sized>(
    strategy: &S,
    selector: Selector,
    weights: &DMatrix<T>,
    ctx: &LayerContext<'_, T>,
    sparsity: Sparsity,
) -> Result<Mask> {
    if strategy.scores_are_magnitude() {
        return selector.select_magnitude(ctx.name(), weights, sparsity, ctx.mask());
    }
    let scores = strategy.scores(weights, ctx)?;
    selector.select(ctx.name(), &scores, sparsity, ctx.mask())
}

macro_rules! forward_strategy {
    ($($ptr:ty),*) => {$(
        impl<T: Scalar, S: PruningStrategy<T> + ?Sized> PruningStrategy<T> for $ptr {
            fn scores(&self, weights: &DMatrix<T>, ctx: &LayerContext<'_, T>) -> Result<DMatrix<T>> {
                (**self).scores(weights, ctx)
            }
            fn granularity(&self) -> Granularity {
                (**self).granularity()
            }
            fn requires_gradients(&self) -> bool {
                (**self).requires_gradients()
            }
            fn scores_are_magnitude(&self) -> bool {
                (**self).scores_are_magnitude()
            }
            fn mask(&self, weights: &DMatrix<T>, ctx: &LayerContext<'_, T>, sparsity: Sparsity) -> Result<Mask> {
                (**self).mask(weights, ctx, sparsity)
            }
            fn prune(&self, weights: &mut DMatrix<T>, ctx: &LayerContext<'_, T>, sparsity: Sparsity) -> Result<Mask> {
                (**self).prune(weights, ctx, sparsity)
            }
        }
    )*};
}

// Strategies behind references and boxes (`Box<dyn PruningStrategy<f32>>`) are strategies.
forward_strategy!(&S, Box<S>);

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::dmatrix;

    #[test]
    fn missing_and_mismatched_inputs() {
        let w = DMatrix::<f64>::zeros(2, 2);
        let ctx = LayerContext::new("fc");
        let err = ctx.require_gradients(&w).unwrap_err();
        assert_eq!(err, Error::MissingInput { tensor: "fc".into(), input: LayerInput::Gradients });
        assert!(err.to_string().contains("needs gradients"));
        let g = DMatrix::<f64>::zeros(2, 3);
        assert!(matches!(
            ctx.with_gradients(&g).require_gradients(&w),
            Err(Error::InputShape { input: LayerInput::Gradients, .. })
        ));
        let nan = dmatrix![0.0, f64::NAN; 0.0, 0.0];
        let err = ctx.with_gradients(&nan).require_gradients(&w).unwrap_err();
        assert_eq!(err, Error::NonFinite { tensor: "fc.grad".into(), index: 2 });
        assert!(matches!(
            ctx.require_initial(&w),
            Err(Error::MissingInput { input: LayerInput::InitialWeights, .. })
        ));
        assert!(matches!(ctx.with_initial(&g).require_initial(&w), Err(Error::InputShape { .. })));
        assert!(matches!(ctx.require_activation_norms(&w), Err(Error::MissingInput { .. })));
        let short = DVector::<f64>::zeros(3);
        assert!(matches!(
            ctx.with_activation_norms(&short).require_activation_norms(&w),
            Err(Error::InputShape { .. })
        ));
        let bad = DVector::from_vec(vec![1.0, f64::INFINITY]);
        assert!(matches!(
            ctx.with_activation_norms(&bad).require_activation_norms(&w),
            Err(Error::NonFinite { .. })
        ));
    }

    #[test]
    fn shape_defaults_to_dense() {
        let w = DMatrix::<f32>::zeros(3, 4);
        assert_eq!(LayerContext::new("x").shape_or_dense(&w), WeightShape::dense(3, 4).unwrap());
        let conv = WeightShape::conv(3, 1, 2, 2).unwrap();
        assert_eq!(LayerContext::new("x").with_shape(conv).shape_or_dense(&w), conv);
    }
}
