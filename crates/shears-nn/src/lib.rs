//! shears-nn: a small trainable network, so pruning can be shown to keep accuracy.
//!
//! - [`Mlp`]: dense layers `(out, in)` with bias, ReLU, softmax cross-entropy; seeded
//!   Kaiming initialisation; forward and backward over mini-batches with nalgebra; it
//!   implements shears-core's [`Prunable`](shears_core::Prunable), so every strategy and
//!   scope of shears-strategies prunes it.
//! - [`train`] / [`train_with`] with [`Optimizer::Sgd`] or [`Optimizer::Adam`], mask-aware:
//!   pruned weights stay exactly zero through every step, optimizer state included.
//! - Data: the embedded handwritten [`digits`] with a fixed [`digits_split`], and
//!   [`load_mnist`] for the original IDX files.
//! - [`checkpoint`]: safetensors files with PyTorch's names.
//! - Experiments that return data: [`prune_and_finetune`], [`gradual_magnitude`],
//!   [`lottery_ticket`] (with the random re-initialisation control), and
//!   [`SparseMlp`] for inference in the formats shears-sparse picks.
//! - Sparse from scratch: [`train_sparse`] with a [`DynamicSparsity`](shears_strategies::DynamicSparsity)
//!   policy (SET, RigL) or fixed masks (static sparse), and [`compare_sparse_training`],
//!   which runs them beside gradual magnitude pruning.
//!
//! The key decision: samples are **columns**. A batch is `(features, batch)`, so every
//! layer is one `W x` with `W` in PyTorch's `(out, in)` layout, the same matrices the
//! masks and sparse formats use.
//!
//! ```
//! use shears_nn::{Mlp, TrainConfig, digits_split, train};
//! use shears_core::Masks;
//!
//! let data = digits_split()?;
//! let mut mlp = Mlp::<f32>::new(&[64, 32, 10], 0)?;
//! train(&mut mlp, &data.train, &TrainConfig { epochs: 3, ..TrainConfig::default() }, &Masks::new())?;
//! assert!(mlp.accuracy(&data.test)? > 0.8);
//! # Ok::<(), shears_nn::Error>(())
//! ```
//!
//! Everything is deterministic: the same seeds and data give bit-identical weights
//! (nalgebra's products here are single-threaded).

#![forbid(unsafe_code)]

pub mod checkpoint;
mod data;
mod error;
mod experiments;
mod mlp;
mod mnist;
mod optim;
mod sparse_comparison;
mod sparse_model;
mod sparse_training;
mod train;

pub use data::{Dataset, Split, digits, digits_split};
pub use error::{Error, Result};
pub use experiments::{
    EvalPoint, InferenceTiming, LotteryConfig, LotteryRound, PruneOutcome, PruningPlan,
    RoundResult, TrackedRun, evaluate, gradual_magnitude, lottery_ticket, masked_sparsity,
    prune_and_finetune, rewind, rewind_point, time_inference, train_tracked,
};
pub use mlp::{Layer, LayerGrad, Mlp, argmax_columns, bias_name, weight_name};
pub use mnist::{load_mnist, load_pair};
pub use optim::{Optimizer, OptimizerState};
pub use sparse_comparison::{
    SparseComparison, SparseMethod, SparseRun, compare_sparse_training, train_to_sparsity,
};
pub use sparse_model::SparseMlp;
pub use sparse_training::{MaskMove, SparseTrainLog, train_sparse};
pub use train::{TrainConfig, TrainLog, train, train_with};

/// The README's Rust example, compiled and run as a doc-test.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
