//! Mini-batch training with masks, and evaluation.

use shears_core::Masks;
use shears_core::Scalar;

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::mlp::{Mlp, to_scalar};
use crate::optim::{Optimizer, OptimizerState};

/// How to train.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainConfig {
    /// Passes over the training data.
    pub epochs: usize,
    /// Samples per mini-batch.
    pub batch_size: usize,
    /// The optimizer.
    pub optimizer: Optimizer,
    /// Seed of the per-epoch shuffles.
    pub seed: u64,
    /// Stop after this many optimizer steps, even mid-epoch (`None`: run all epochs).
    pub max_steps: Option<usize>,
}

impl Default for TrainConfig {
    /// 30 epochs of Adam (lr 1e-3) in batches of 32: enough for the digits data.
    fn default() -> Self {
        TrainConfig {
            epochs: 30,
            batch_size: 32,
            optimizer: Optimizer::adam(1e-3),
            seed: 0,
            max_steps: None,
        }
    }
}

/// What training did: the mean loss of each epoch.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrainLog {
    /// Mean training loss per epoch.
    pub epoch_losses: Vec<f64>,
    /// Optimizer steps taken.
    pub steps: usize,
}

/// Trains `mlp` on `data`, keeping the weights `masks` prunes at zero.
///
/// `on_step(step, mlp, masks)` runs after every optimizer step (step counts from 1
/// across epochs); gradual pruning uses it to tighten masks during training. Shuffles are
/// seeded per epoch, so the same inputs give bit-identical weights.
///
/// # Errors
/// [`Error::BadParameter`] for a zero batch size, no training samples, or bad optimizer
/// settings; [`shears_core::Error::UnknownLayer`] or [`Error::Shape`] for a mask that
/// names no layer or does not fit it;
/// [`Error::Shape`] for data that does not fit; [`Error::Diverged`] if the loss becomes
/// NaN or infinite; whatever `on_step` returns.
pub fn train_with<T: Scalar>(
    mlp: &mut Mlp<T>,
    data: &Dataset,
    config: &TrainConfig,
    masks: &mut Masks,
    mut on_step: impl FnMut(usize, &mut Mlp<T>, &mut Masks) -> Result<()>,
) -> Result<TrainLog> {
    train_loop(mlp, data, config, masks, |step, mlp, masks, _| on_step(step, mlp, masks))
}

/// [`train_with`] whose hook also sees the optimizer state (dynamic sparsity resets it
/// where connections regrow).
pub(crate) fn train_loop<T: Scalar>(
    mlp: &mut Mlp<T>,
    data: &Dataset,
    config: &TrainConfig,
    masks: &mut Masks,
    mut on_step: impl FnMut(usize, &mut Mlp<T>, &mut Masks, &mut OptimizerState<T>) -> Result<()>,
) -> Result<TrainLog> {
    if config.batch_size == 0 {
        return Err(Error::BadParameter {
            name: "batch size",
            requirement: "at least 1",
            value: 0.0,
        });
    }
    if data.is_empty() {
        return Err(Error::BadParameter {
            name: "training samples",
            requirement: "at least 1",
            value: 0.0,
        });
    }
    let mut state = OptimizerState::new(config.optimizer, mlp)?;
    // Every mask must name a layer of its shape: one that named nothing would be ignored.
    for (name, mask) in masks.iter() {
        let weights = shears_core::Prunable::require_weight_mut(mlp, name)?;
        if mask.shape() != weights.shape() {
            return Err(Error::Shape {
                what: "mask size",
                expected: weights.len(),
                got: mask.len(),
            });
        }
        mask.apply_in_place(weights)?;
    }
    let x_all = to_scalar::<T>(data.features());
    let mut log = TrainLog::default();
    let max_steps = config.max_steps.unwrap_or(usize::MAX);
    'epochs: for epoch in 0..config.epochs {
        let order =
            data.shuffled_indices(config.seed.wrapping_mul(0x9e37_79b9).wrapping_add(epoch as u64));
        let mut total = 0.0;
        for batch in order.chunks(config.batch_size) {
            let x = x_all.select_columns(batch);
            let labels: Vec<u8> = batch.iter().map(|&i| data.labels()[i]).collect();
            let loss = mlp.backward(&x, &labels)?;
            if !loss.is_finite() {
                return Err(Error::Diverged { epoch, loss });
            }
            total += loss * batch.len() as f64;
            state.step(mlp, masks)?;
            log.steps += 1;
            on_step(log.steps, mlp, masks, &mut state)?;
            if log.steps >= max_steps {
                log.epoch_losses.push(total / data.len().max(1) as f64);
                break 'epochs;
            }
        }
        let loss = total / data.len().max(1) as f64;
        // ReLU's max() maps NaN to 0, so a blown-up network can still report a finite
        // loss: check the weights themselves.
        if mlp
            .layers()
            .iter()
            .any(|l| l.weight().iter().chain(l.bias().iter()).any(|v| !v.is_finite()))
        {
            return Err(Error::Diverged { epoch, loss });
        }
        log.epoch_losses.push(loss);
    }
    mlp.clear_gradients();
    Ok(log)
}

/// [`train_with`] without a per-step hook.
///
/// # Errors
/// As [`train_with`].
pub fn train<T: Scalar>(
    mlp: &mut Mlp<T>,
    data: &Dataset,
    config: &TrainConfig,
    masks: &Masks,
) -> Result<TrainLog> {
    let mut masks = masks.clone();
    train_with(mlp, data, config, &mut masks, |_, _, _| Ok(()))
}
