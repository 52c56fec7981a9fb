//! shears-core: the types every shears crate shares.
//!
//! Pruning a weight matrix means computing a score per weight, keeping the highest
//! scores, and zeroing the rest. This crate holds the pieces of that pipeline that do not
//! depend on any particular criterion:
//!
//! - [`Sparsity`], the validated fraction to prune, and [`Rounding`], how it becomes a count;
//! - [`Mask`], a bit-packed keep-mask in nalgebra's column-major order, with AND/OR/NOT,
//!   counts by popcount, application to matrices and conv tensors, and a validated file
//!   format; [`Masks`], a model's masks by weight name;
//! - [`WeightShape`], the matrix view of dense and convolution weights, and
//!   [`GroupLayout`], how structured pruning splits that matrix into rows, columns,
//!   channels or blocks;
//! - [`Selector`], O(n) top-k selection with PyTorch's counting and tie rules;
//! - [`PruningStrategy`] (a criterion) and [`Prunable`] (a model), the two traits the
//!   rest of shears plugs into;
//! - [`envelope`], the magic tag, version and canonical bincode payload of every binary
//!   format shears defines.
//!
//! The key decision: **selection is exact and reproducible**. The number pruned is
//! `round_ties_even(s * n)` in `f64`, ties go to the lower row-major index, and an
//! existing mask only ever loses weights, so shears produces the same masks as
//! `torch.nn.utils.prune` on the same weights, bit for bit, and iterative pruning is
//! monotone by construction.
//!
//! ```
//! use nalgebra::dmatrix;
//! use shears_core::{Mask, Selector, Sparsity};
//!
//! let weights = dmatrix![0.1f32, -0.9; 0.2, 0.8];
//! let scores = weights.abs();
//! let mask = Selector::new().select("fc1", &scores, Sparsity::new(0.5)?, None)?;
//! assert_eq!(mask.apply(&weights)?, dmatrix![0.0, -0.9; 0.0, 0.8]);
//!
//! let restored = Mask::from_bytes(&mask.to_bytes())?;
//! assert_eq!(restored, mask);
//! # Ok::<(), shears_core::Error>(())
//! ```
//!
//! # Features
//! - `proptest-support`: the `proptest` module of generators for
//!   masks, sparsities and matrices, for downstream property tests;
//! - `rayon`: splits the passes of a selection over a large tensor, and the application
//!   of a large mask, across rayon's threads (results are identical to one thread's).
//!
//! shears-core does no I/O beyond `Read`/`Write` handles given to it, and depends only
//! on nalgebra, num-traits, serde, bincode and thiserror.

#![forbid(unsafe_code)]

pub mod envelope;
mod error;
mod granularity;
mod group;
mod mask;
mod parallel;
mod persist;
mod prunable;
mod scalar;
mod select;
mod shape;
mod sparsity;
mod strategy;

#[cfg(feature = "proptest-support")]
pub mod proptest;

pub use error::{Error, FormatError, Result};
pub use granularity::{BlockShape, Granularity, NmPattern};
pub use group::{GroupLayout, Reduction};
pub use mask::{Mask, Masks};
pub use persist::{MASK_FORMAT_VERSION, MASK_MAGIC};
pub use prunable::Prunable;
pub use scalar::Scalar;
pub use select::{GlobalBucket, GlobalCount, GlobalMasks, ScoredLayer, Selector};
pub use shape::{MAX_SIDE, WeightShape, check_addressable, try_zeros};
pub use sparsity::{Rounding, Sparsity};
pub use strategy::{LayerContext, LayerInput, PruningStrategy, unstructured_mask};

/// Fails with [`Error::NonFinite`] naming `tensor` at the first NaN or infinite value of
/// `values`.
///
/// # Errors
/// [`Error::NonFinite`] with the index of the first offending value in `values` (for a
/// nalgebra matrix, its column-major index; for a tensor's data, its row-major one).
pub fn check_finite<T: Scalar>(tensor: &str, values: &[T]) -> Result<()> {
    select::check_finite(tensor, values)
}

/// Fails with [`Error::ProductOverflow`] at the first non-finite value of `scores`
/// (column-major), products (`score`, a formula such as `|w * g|`) of factors already
/// checked finite.
///
/// # Errors
/// [`Error::ProductOverflow`] naming `tensor`, `score` and the row and column of the
/// first non-finite value in `scores`.
pub fn check_products<T: Scalar>(
    tensor: &str,
    score: &'static str,
    scores: &nalgebra::DMatrix<T>,
) -> Result<()> {
    match scores.iter().position(|x| !x.finite()) {
        Some(i) => Err(Error::ProductOverflow {
            tensor: tensor.to_owned(),
            score,
            row: i % scores.nrows(),
            col: i / scores.nrows(),
        }),
        None => Ok(()),
    }
}
