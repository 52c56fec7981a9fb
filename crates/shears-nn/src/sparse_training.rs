//! Training sparse from scratch with moving connections (SET, RigL), and the static sparse
//! baseline they are measured against.

use shears_core::{Masks, Scalar};
use shears_strategies::DynamicSparsity;

use crate::data::Dataset;
use crate::error::Result;
use crate::mlp::Mlp;
use crate::optim::OptimizerState;
use crate::train::{TrainConfig, TrainLog, train_loop};

/// One update of the masks during [`train_sparse`].
#[derive(Debug, Clone, PartialEq)]
pub struct MaskMove {
    /// The optimizer step after which it ran.
    pub step: usize,
    /// The fraction of each layer's kept weights it moved.
    pub fraction: f64,
    /// Connections moved over all layers (dropped, and as many regrown).
    pub moved: usize,
}

/// What [`train_sparse`] did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SparseTrainLog {
    /// The training log.
    pub train: TrainLog,
    /// Every mask update, in order.
    pub moves: Vec<MaskMove>,
}

/// Trains `mlp` sparse: the layers in `masks` keep exactly their kept counts throughout,
/// and, with a `policy`, move connections on its schedule (without one, the masks stay
/// fixed: static sparse training).
///
/// After an update, regrown weights are zero and their optimizer state (velocity, Adam's
/// moments) is reset; dropped weights and their state are zeroed by the mask, as for any
/// pruned weight. RigL's growth reads the dense gradient of the step's mini-batch, which
/// this network's backward pass computes anyway (its layers are dense matrices with
/// masks; a trainer with sparse kernels would compute it only on update steps).
/// Deterministic: the same inputs and seeds give the same masks and weights at every step,
/// on any thread count.
///
/// # Errors
/// [`shears_core::Error::UnknownLayer`] for a mask naming no layer; [`crate::Error::Shape`]
/// for a mask that does not fit its layer; as [`crate::train_with`]; a policy's errors.
pub fn train_sparse<T: Scalar>(
    mlp: &mut Mlp<T>,
    data: &Dataset,
    config: &TrainConfig,
    masks: &mut Masks,
    policy: Option<&DynamicSparsity>,
) -> Result<SparseTrainLog> {
    let mut moves = Vec::new();
    let train = train_loop(mlp, data, config, masks, |step, mlp, masks, state| {
        if let Some(policy) = policy {
            moves.extend(apply_update(policy, step, mlp, masks, state)?);
        }
        Ok(())
    })?;
    Ok(SparseTrainLog { train, moves })
}

/// The policy's update after `step`, if it is an update step, with the optimizer state of
/// the regrown positions reset.
fn apply_update<T: Scalar>(
    policy: &DynamicSparsity,
    step: usize,
    mlp: &mut Mlp<T>,
    masks: &mut Masks,
    state: &mut OptimizerState<T>,
) -> Result<Option<MaskMove>> {
    let Some(update) = policy.update(step, mlp, masks)? else { return Ok(None) };
    for (name, grown) in &update.grown {
        state.reset(name, grown)?;
    }
    Ok(Some(MaskMove {
        step,
        fraction: update.fraction,
        moved: update.grown.values().map(|m| m.count_kept()).sum(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Optimizer, digits};
    use shears_core::{Prunable, Sparsity};
    use shears_strategies::{Decay, Distribution, UpdateSchedule, random_masks};

    #[test]
    fn regrown_weights_start_at_zero_with_fresh_adam_moments() {
        let data = digits().unwrap().take(64);
        let mut mlp = Mlp::<f64>::new(&[64, 16, 10], 3).unwrap();
        let names = mlp.prunable_names();
        let mut masks =
            random_masks(&mut mlp, &names, Sparsity::new(0.8).unwrap(), Distribution::Uniform, 1)
                .unwrap();
        let mut state = OptimizerState::new(Optimizer::adam(1e-2), &mlp).unwrap();
        let x = crate::mlp::to_scalar::<f64>(data.features());
        for _ in 0..3 {
            mlp.backward(&x, data.labels()).unwrap();
            state.step(&mut mlp, &masks).unwrap();
        }
        // Moving every kept weight lets the update regrow positions it just dropped,
        // whose moments are not zero: only the reset makes them so.
        let rigl = DynamicSparsity::rigl(UpdateSchedule::new(1, 1.0, 10, Decay::Constant).unwrap());
        let before = masks.clone();
        let kept_moments = state.first_moment(&names[0]).unwrap().clone();
        let moved = apply_update(&rigl, 4, &mut mlp, &mut masks, &mut state).unwrap().unwrap();
        assert_eq!(moved.moved, before.values().map(|m| m.count_kept()).sum::<usize>());
        let mut revived = 0;
        for name in &names {
            assert_eq!(masks[name].count_kept(), before[name].count_kept());
            let w = mlp.weight(name).unwrap();
            let (m, v) = (state.first_moment(name).unwrap(), state.second_moment(name).unwrap());
            for (i, kept) in (0..w.len()).map(|i| (i, masks[name].get_linear(i) == Some(true))) {
                if kept {
                    // Every kept weight was regrown by this update (fraction 1).
                    assert_eq!((w[i], m[i], v[i]), (0.0, 0.0, 0.0), "{name} {i}");
                    revived += usize::from(before[name].get_linear(i) == Some(true));
                }
            }
        }
        assert!(revived > 0, "no dropped weight was regrown: the test checks nothing");
        assert!(kept_moments.iter().any(|&m| m != 0.0));
    }
}
