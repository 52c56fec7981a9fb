//! shears-strategies: the pruning methods users come for.
//!
//! Every method is a [`PruningStrategy`] from shears-core, built from two independent
//! choices:
//!
//! - a **criterion** that scores each weight: [`Magnitude`] `|w|`, [`Gradient`] `|w·g|`
//!   (with [`TaylorAccumulator`] over batches), [`Random`], [`Wanda`] `|w|·||x||`,
//!   [`UserScores`], and the [`LotteryTicket`] (magnitude with rewinding);
//! - a **pattern** that shapes what is kept: [`Pattern::Unstructured`],
//!   [`Pattern::PerRow`], [`Pattern::Structured`] (rows, columns, filters, channels),
//!   [`Pattern::NM`] (2:4, ...) and [`Pattern::Blocks`]. [`Pruner`] combines any
//!   criterion with any pattern.
//!
//! [`Criterion`] names the criteria that score single weights; it and [`Pattern`] and
//! [`Scope`] parse from the names a command line uses (`magnitude`, `2:4`, `global`).
//!
//! [`TensorRole`] tells, from a checkpoint tensor's name, which are the linear and
//! convolution weights practitioners prune, and which are embeddings, heads and others.
//!
//! Methods that prune by what a layer sees take [`InputStats`] from a calibration pass:
//! [`Wanda`] its activation norms, [`SparseGpt`] the Gram matrix of its inputs, from
//! which it prunes and updates the kept weights to reconstruct the layer's output.
//!
//! Around them: [`ModelPruner`] prunes any [`Prunable`] model layer by layer or with one
//! global threshold ([`Scope`]); [`Schedule`] says which sparsity to reach when
//! (one-shot, geometric rounds, polynomial decay).
//!
//! Networks can also be sparse from the first step: [`random_masks`] draws masks at a
//! target spread over layers by a [`Distribution`] (uniform, Erdős–Rényi, ERK), and a
//! [`DynamicSparsity`] policy (SET's random regrowth or RigL's gradient regrowth, on an
//! [`UpdateSchedule`]) moves connections during training with exact per-layer counts,
//! through [`Mask::regrow`], the one operation that turns pruned positions back on.
//!
//! The key decision: criteria and patterns are separate. A criterion only produces
//! scores; the pattern's selection (from shears-core) turns them into a mask with
//! PyTorch's counting and tie rules. So gradient scores with 2:4 structure, or Wanda
//! scores pruned in blocks, need no new code, and every combination prunes exactly the
//! number of weights the target asks for.
//!
//! ```
//! use nalgebra::dmatrix;
//! use shears_core::{LayerContext, PruningStrategy, Sparsity};
//! use shears_strategies::{Axis, Magnitude, Pattern, Pruner, Structured};
//!
//! let mut w = dmatrix![0.1, 0.9; 0.2, 0.8];
//! let mask = Magnitude.prune(&mut w, &LayerContext::new("fc"), Sparsity::new(0.5)?)?;
//! assert_eq!(w, dmatrix![0.0, 0.9; 0.0, 0.8]);
//!
//! // The same criterion, whole output neurons (rows) by L2 norm.
//! let w = dmatrix![0.1, 0.1; 2.0, 2.0];
//! let rows = Pruner::new(Magnitude).with_pattern(Pattern::Structured(Structured::new(Axis::Rows)));
//! let mask = rows.mask(&w, &LayerContext::new("fc"), Sparsity::new(0.5)?)?;
//! assert_eq!(mask.fully_pruned_rows(), vec![0]);
//! # Ok::<(), shears_core::Error>(())
//! ```

#![forbid(unsafe_code)]

mod calibration;
mod criteria;
mod criterion;
mod density;
mod dynamic;
mod error;
mod lottery;
mod nm;
mod pattern;
mod roles;
mod schedule;
mod scope;
mod sparsegpt;

pub use calibration::InputStats;
pub use criteria::{Gradient, Magnitude, Random, TaylorAccumulator, UserScores, Wanda};
pub use criterion::Criterion;
pub use density::{Distribution, random_masks};
pub use dynamic::{Decay, DynamicSparsity, Growth, MaskUpdate, UpdateSchedule};
pub use error::{Error, Result};
pub use lottery::LotteryTicket;
pub use nm::{first_nm_violation, satisfies_nm};
pub use pattern::{Axis, Pattern, Pruner, Structured};
pub use roles::TensorRole;
pub use schedule::{Polynomial, PruneRate, Schedule};
pub use scope::{ModelPruner, Scope};
pub use shears_core::{
    BlockShape, Granularity, LayerContext, Mask, Masks, NmPattern, Prunable, PruningStrategy,
    Reduction, Rounding, Sparsity, WeightShape,
};
pub use sparsegpt::{InverseHessian, Reconstruction, SparseGpt};
