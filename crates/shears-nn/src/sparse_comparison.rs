//! Sparse training methods side by side at the same sparsity, epochs and optimizer: static
//! sparse, SET, RigL, and gradual magnitude pruning from dense.

use shears_core::{Masks, Prunable, Selector, Sparsity};
use shears_strategies::{Distribution, DynamicSparsity, Schedule, UpdateSchedule, random_masks};

use crate::data::Split;
use crate::error::{Error, Result};
use crate::experiments::{evaluate, masked_sparsity};
use crate::mlp::Mlp;
use crate::sparse_training::train_sparse;
use crate::train::{TrainConfig, train_with};

/// A way to end training with a sparse network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SparseMethod {
    /// A random mask at the target, fixed for the whole run.
    Static,
    /// SET: the random mask, with random regrowth.
    Set,
    /// RigL: the random mask, with regrowth by dense-gradient magnitude.
    Rigl,
    /// Dense at the start, magnitude-pruned on Zhu & Gupta's cubic schedule to the
    /// target during training.
    GradualMagnitude,
}

impl SparseMethod {
    /// Every method, in report order.
    pub const ALL: [SparseMethod; 4] = [
        SparseMethod::Static,
        SparseMethod::Set,
        SparseMethod::Rigl,
        SparseMethod::GradualMagnitude,
    ];

    /// The name reports use.
    pub fn name(self) -> &'static str {
        match self {
            SparseMethod::Static => "static",
            SparseMethod::Set => "SET",
            SparseMethod::Rigl => "RigL",
            SparseMethod::GradualMagnitude => "gradual magnitude",
        }
    }
}

/// Settings shared by every method of [`compare_sparse_training`].
#[derive(Debug, Clone, PartialEq)]
pub struct SparseComparison {
    /// Layer sizes (inputs, hidden..., classes).
    pub sizes: Vec<usize>,
    /// Training of every run (same epochs, optimizer and batches for every method).
    pub train: TrainConfig,
    /// How the target is spread over layers (every method uses it, gradual pruning too).
    pub distribution: Distribution,
    /// Steps between mask updates (SET, RigL) and between pruning steps (gradual).
    pub interval: usize,
    /// The fraction SET and RigL move at the first update, decaying on a cosine to zero
    /// at `end_fraction` of training; gradual pruning also ends there.
    pub update_fraction: f64,
    /// When updates (and gradual pruning) stop, as a fraction of the total steps.
    pub end_fraction: f64,
}

impl SparseComparison {
    /// RigL's settings (ΔT = 100, α = 0.3, updates until 75% of training) with an
    /// Erdős–Rényi distribution.
    pub fn new(sizes: Vec<usize>, train: TrainConfig) -> Self {
        SparseComparison {
            sizes,
            train,
            distribution: Distribution::ErdosRenyi,
            interval: 100,
            update_fraction: 0.3,
            end_fraction: 0.75,
        }
    }
}

/// One run of [`compare_sparse_training`].
#[derive(Debug, Clone, PartialEq)]
pub struct SparseRun {
    /// The method.
    pub method: SparseMethod,
    /// The target sparsity.
    pub target: f64,
    /// The sparsity of the trained network's masked layers.
    pub sparsity: f64,
    /// The seed of initialisation, masks and shuffles.
    pub seed: u64,
    /// Test accuracy at the end of training.
    pub accuracy: f64,
    /// Mean test cross-entropy at the end of training.
    pub loss: f64,
    /// Connections moved over the run (SET and RigL).
    pub moved: usize,
    /// The final masks.
    pub masks: Masks,
}

/// Trains an [`Mlp`] of `config.sizes` on `data` with `method` to `target` sparsity, from
/// initialisation `seed`, and reports test accuracy.
///
/// # Errors
/// Bad settings (sizes, interval, fractions); training errors.
pub fn train_to_sparsity(
    data: &Split,
    config: &SparseComparison,
    method: SparseMethod,
    target: Sparsity,
    seed: u64,
) -> Result<SparseRun> {
    if !(0.0..=1.0).contains(&config.end_fraction) {
        return Err(Error::BadParameter {
            name: "end fraction",
            requirement: "in [0, 1]",
            value: config.end_fraction,
        });
    }
    let mut model = Mlp::<f32>::new(&config.sizes, seed)?;
    let names = model.prunable_names();
    let train = TrainConfig { seed, ..config.train };
    let steps_per_epoch = data.train.len().div_ceil(train.batch_size.max(1));
    let total =
        train.max_steps.unwrap_or(usize::MAX).min(steps_per_epoch.saturating_mul(train.epochs));
    let end = (config.end_fraction * total as f64) as usize;
    let schedule = UpdateSchedule::new(
        config.interval,
        config.update_fraction,
        end,
        shears_strategies::Decay::Cosine,
    )?;
    let (masks, moved) = match method {
        SparseMethod::GradualMagnitude => {
            (gradual(&mut model, data, config, &train, target, end)?, 0)
        }
        sparse => {
            let mut masks =
                random_masks(&mut model, &names, target, config.distribution, seed ^ 0xd5_7000)?;
            let policy = match sparse {
                SparseMethod::Set => Some(DynamicSparsity::set(schedule, seed ^ 0x5e7)),
                SparseMethod::Rigl => Some(DynamicSparsity::rigl(schedule)),
                _ => None,
            };
            let log = train_sparse(&mut model, &data.train, &train, &mut masks, policy.as_ref())?;
            (masks, log.moves.iter().map(|m| m.moved).sum())
        }
    };
    let (loss, accuracy) = evaluate(&model, &data.test)?;
    Ok(SparseRun {
        method,
        target: target.get(),
        sparsity: masked_sparsity(&masks),
        seed,
        accuracy,
        loss,
        moved,
        masks,
    })
}

/// Gradual magnitude pruning from dense: every `interval` steps from 0 to `end`, each layer
/// is pruned by magnitude to its share (under the distribution) of the cubic schedule's
/// current target; the network then trains on with the final masks.
fn gradual(
    model: &mut Mlp<f32>,
    data: &Split,
    config: &SparseComparison,
    train: &TrainConfig,
    target: Sparsity,
    end: usize,
) -> Result<Masks> {
    let names = model.prunable_names();
    let schedule =
        Schedule::polynomial(Sparsity::ZERO, target, 0, end.max(1), config.interval.max(1))?;
    let prune_to = |mlp: &mut Mlp<f32>, masks: &mut Masks, now: Sparsity| -> Result<()> {
        let shares = config.distribution.layer_sparsities(mlp, &names, now)?;
        for (name, sparsity) in shares {
            let weights = mlp.require_weight_mut(&name)?;
            let mask =
                Selector::new().select_magnitude(&name, weights, sparsity, masks.get(&name))?;
            mask.apply_in_place(weights)?;
            masks.insert(name, mask);
        }
        Ok(())
    };
    let mut masks = Masks::new();
    train_with(model, &data.train, train, &mut masks, |step, mlp, masks| {
        match schedule.prune_at(step) {
            Some(now) => prune_to(mlp, masks, now),
            None => Ok(()),
        }
    })?;
    // A run shorter than the schedule still ends at the target (otherwise a no-op: masks
    // only tighten).
    prune_to(model, &mut masks, target)?;
    Ok(masks)
}

/// Every method at every target sparsity for every seed (targets outer, then methods, then
/// seeds), each from the same initialisation per seed.
///
/// # Errors
/// As [`train_to_sparsity`].
pub fn compare_sparse_training(
    data: &Split,
    config: &SparseComparison,
    methods: &[SparseMethod],
    targets: &[Sparsity],
    seeds: &[u64],
) -> Result<Vec<SparseRun>> {
    let mut runs = Vec::with_capacity(targets.len() * methods.len() * seeds.len());
    for &target in targets {
        for &method in methods {
            for &seed in seeds {
                runs.push(train_to_sparsity(data, config, method, target, seed)?);
            }
        }
    }
    Ok(runs)
}
