//! The error type of shears-strategies.

/// The result type of shears-strategies.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in shears-strategies.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error from shears-core (shapes, sparsity, missing per-layer data, NaN).
    #[error(transparent)]
    Core(#[from] shears_core::Error),
    /// A layer named twice where each layer counts once.
    #[error("layer `{layer}` is named twice")]
    DuplicateLayer {
        /// The layer.
        layer: String,
    },
    /// A per-round pruning rate outside `[0, 1)`.
    #[error("pruning rate must be in [0, 1), got {value}")]
    InvalidRate {
        /// The rejected rate.
        value: f64,
    },
    /// A schedule whose parameters do not describe a valid schedule.
    #[error("invalid schedule: {reason}")]
    InvalidSchedule {
        /// What is wrong.
        reason: &'static str,
    },
    /// A minimum density outside `[0, 1]`.
    #[error("minimum layer density must be in [0, 1], got {value}")]
    InvalidMinDensity {
        /// The rejected value.
        value: f64,
    },
    /// A kept-group multiple of zero.
    #[error("kept groups must round to a multiple of at least 1, got 0")]
    ZeroMultiple,
    /// A scope that the strategy's pattern cannot be ranked in.
    #[error("global scope ranks single weights; pattern {pattern} is not unstructured")]
    GlobalNeedsUnstructured {
        /// The pattern that was combined with global scope.
        pattern: String,
    },
    /// A pattern does not fit a tensor at the target sparsity (partial groups or blocks,
    /// or a target that rounds to none or all of its slices).
    #[error("tensor `{tensor}`: pattern {pattern} does not fit: {reason}")]
    PatternDoesNotFit {
        /// The tensor.
        tensor: String,
        /// The pattern.
        pattern: String,
        /// Why.
        reason: String,
    },
    /// A method's setting out of its range.
    #[error("invalid {what}: {value}")]
    InvalidSetting {
        /// The setting.
        what: &'static str,
        /// The rejected value.
        value: f64,
    },
    /// A method that does not prune in the given pattern.
    #[error("{method} prunes unstructured or N:M, not {pattern}")]
    UnsupportedPattern {
        /// The method.
        method: &'static str,
        /// The pattern asked for.
        pattern: String,
    },
    /// A method that needs calibration statistics the layer lacks.
    #[error("layer `{tensor}` has no {what}")]
    MissingCalibration {
        /// The layer.
        tensor: String,
        /// What is missing.
        what: &'static str,
    },
    /// A Hessian that does not factor even after dampening (its inputs are degenerate).
    #[error(
        "layer `{tensor}`: the dampened Hessian of its inputs is not positive definite (more calibration text or more dampening may help)"
    )]
    NotPositiveDefinite {
        /// The layer.
        tensor: String,
    },
    /// The Gram matrix of a layer's calibration inputs overflowed: the inputs are too
    /// large (a weight or an output before the layer is huge).
    #[error(
        "layer `{tensor}`: the Gram matrix of its calibration inputs overflows (its inputs reach {largest:e}: a weight or output before this layer is too large)"
    )]
    HessianOverflow {
        /// The layer.
        tensor: String,
        /// The largest magnitude among the diagonal's square roots that are finite, or
        /// infinity.
        largest: f64,
    },
    /// No layer of the model is left to prune after include/exclude filters.
    #[error(
        "no layer to prune: the model has {available} prunable layers and the filters excluded all of them"
    )]
    NoLayers {
        /// How many prunable layers the model has.
        available: usize,
    },
    /// A layer has no stored initial weights for rewinding.
    #[error("layer `{layer}` has no stored initial weights to rewind to")]
    MissingInitial {
        /// The layer's name.
        layer: String,
    },
    /// A stored mask does not belong to the layer it is used with.
    #[error("layer `{layer}`: mask shape {mask:?} does not match weight shape {weights:?}")]
    MaskShape {
        /// The layer's name.
        layer: String,
        /// The mask's shape.
        mask: (usize, usize),
        /// The weight's shape.
        weights: (usize, usize),
    },
}
