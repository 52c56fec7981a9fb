//! Experiments that return data: prune and fine-tune, gradual pruning, the lottery
//! ticket with its random re-initialisation control, and inference timing.

use std::time::Instant;

use nalgebra::DMatrix;
use shears_core::{Masks, Prunable, PruningStrategy, Sparsity};
use shears_strategies::{
    Criterion, LotteryTicket, Magnitude, ModelPruner, Pattern, Pruner, Schedule, Scope,
    TaylorAccumulator, UserScores,
};

use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::mlp::{Mlp, to_scalar, weight_name};
use crate::sparse_model::SparseMlp;
use crate::train::{TrainConfig, train, train_with};

/// How [`prune_and_finetune`] prunes: criterion, pattern, scope, and layers left alone.
#[derive(Debug, Clone, PartialEq)]
pub struct PruningPlan {
    /// What scores the weights. [`Criterion::Gradient`] sums `|w·g|` over
    /// `gradient_batches` mini-batches of training data (see [`TaylorAccumulator`]);
    /// [`Criterion::Wanda`] needs calibration activations, which these experiments do not
    /// collect.
    pub criterion: Criterion,
    /// The structure of what is kept.
    pub pattern: Pattern,
    /// Layer-wise or global.
    pub scope: Scope,
    /// Weight names not to prune (e.g. the output layer for structured pruning).
    pub exclude: Vec<String>,
    /// Mini-batches the gradient criterion accumulates over.
    pub gradient_batches: usize,
}

impl PruningPlan {
    /// Unstructured, layer-wise pruning with `criterion` (gradients over 8 mini-batches).
    pub fn new(criterion: Criterion) -> Self {
        PruningPlan {
            criterion,
            pattern: Pattern::Unstructured,
            scope: Scope::Layer,
            exclude: Vec::new(),
            gradient_batches: 8,
        }
    }
}

/// One pruning round of [`prune_and_finetune`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundResult {
    /// The round's target sparsity.
    pub target: f64,
    /// The sparsity reached over the pruned layers.
    pub sparsity: f64,
    /// Test accuracy right after pruning.
    pub accuracy_pruned: f64,
    /// Test accuracy after fine-tuning.
    pub accuracy_finetuned: f64,
}

/// A pruned, fine-tuned network and what each round did.
#[derive(Debug, Clone, PartialEq)]
pub struct PruneOutcome {
    /// The network after the last round.
    pub model: Mlp<f32>,
    /// Its masks.
    pub masks: Masks,
    /// One entry per schedule step.
    pub rounds: Vec<RoundResult>,
}

/// The sparsity of the masked layers together.
pub fn masked_sparsity(masks: &Masks) -> f64 {
    let (pruned, total) =
        masks.values().fold((0, 0), |(p, t), m| (p + m.count_pruned(), t + m.len()));
    Sparsity::from_counts(pruned, total).get()
}

/// Per-layer first-order Taylor scores summed over `batches` mini-batches.
fn taylor_scores(
    model: &Mlp<f32>,
    data: &Dataset,
    batches: usize,
    batch_size: usize,
    seed: u64,
) -> Result<UserScores<f32>> {
    if batches == 0 {
        return Err(Error::BadParameter {
            name: "gradient batches",
            requirement: "at least 1",
            value: 0.0,
        });
    }
    let mut probe = model.clone();
    let mut accs: Vec<TaylorAccumulator<f32>> = model
        .layers()
        .iter()
        .enumerate()
        .map(|(i, l)| TaylorAccumulator::new(weight_name(i), l.shape().0, l.shape().1))
        .collect::<shears_core::Result<_>>()?;
    let order = data.shuffled_indices(seed);
    for batch in order.chunks(batch_size.max(1)).take(batches) {
        let x = data.features().select_columns(batch);
        let labels: Vec<u8> = batch.iter().map(|&i| data.labels()[i]).collect();
        probe.backward(&x, &labels)?;
        for (i, acc) in accs.iter_mut().enumerate() {
            let name = weight_name(i);
            if let (Some(w), Some(g)) = (probe.weight(&name), probe.gradient(&name)) {
                acc.add_batch(w, g)?;
            }
        }
    }
    Ok(accs.into_iter().fold(UserScores::new(), |s, acc| {
        let name = acc.name().to_owned();
        s.with_layer(name, acc.into_scores())
    }))
}

/// Prunes `model` on `schedule` with `plan`, fine-tuning after every step, and reports
/// test accuracy before and after each fine-tune. Masks only tighten across steps.
///
/// # Errors
/// Errors of the strategy (e.g. global scope with a structured pattern), of training,
/// [`Error::BadParameter`] for zero gradient batches, [`Error::UnsupportedCriterion`] for
/// Wanda.
pub fn prune_and_finetune(
    model: &Mlp<f32>,
    data: &Split,
    plan: &PruningPlan,
    schedule: &Schedule,
    finetune: &TrainConfig,
) -> Result<PruneOutcome> {
    let mut model = model.clone();
    let mut masks = Masks::new();
    let mut rounds = Vec::new();
    for (step, target) in schedule.targets() {
        let criterion: Box<dyn PruningStrategy<f32>> = match plan.criterion {
            Criterion::Gradient => Box::new(taylor_scores(
                &model,
                &data.train,
                plan.gradient_batches,
                finetune.batch_size,
                finetune.seed ^ step as u64,
            )?),
            Criterion::Wanda => {
                return Err(Error::UnsupportedCriterion {
                    criterion: Criterion::Wanda,
                    needs: shears_core::LayerInput::ActivationNorms,
                });
            }
            other => Box::new(other),
        };
        let pruner = Pruner::new(criterion).with_pattern(plan.pattern);
        let mut model_pruner = ModelPruner::new(&pruner).with_scope(plan.scope);
        for name in &plan.exclude {
            model_pruner = model_pruner.exclude(name.clone());
        }
        model_pruner.prune(&mut model, target, &mut masks)?;
        let accuracy_pruned = model.accuracy(&data.test)?;
        let config = TrainConfig { seed: finetune.seed.wrapping_add(step as u64), ..*finetune };
        train(&mut model, &data.train, &config, &masks)?;
        rounds.push(RoundResult {
            target: target.get(),
            sparsity: masked_sparsity(&masks),
            accuracy_pruned,
            accuracy_finetuned: model.accuracy(&data.test)?,
        });
    }
    Ok(PruneOutcome { model, masks, rounds })
}

/// Trains `model` from scratch while magnitude-pruning it on `schedule` (Zhu & Gupta's
/// gradual pruning when the schedule is polynomial): at every pruning step of the
/// schedule, every layer (or all together, in global scope) is pruned to the target.
///
/// # Errors
/// Errors of training or pruning.
pub fn gradual_magnitude(
    model: &Mlp<f32>,
    data: &Split,
    schedule: &Schedule,
    config: &TrainConfig,
    scope: Scope,
) -> Result<PruneOutcome> {
    let mut model = model.clone();
    let mut masks = Masks::new();
    let mut rounds = Vec::new();
    train_with(&mut model, &data.train, config, &mut masks, |step, mlp, masks| {
        if let Some(target) = schedule.prune_at(step) {
            ModelPruner::new(&Magnitude).with_scope(scope).prune(mlp, target, masks)?;
            rounds.push(RoundResult {
                target: target.get(),
                sparsity: masked_sparsity(masks),
                accuracy_pruned: f64::NAN,
                accuracy_finetuned: f64::NAN,
            });
        }
        Ok(())
    })?;
    let accuracy = model.accuracy(&data.test)?;
    if let Some(last) = rounds.last_mut() {
        last.accuracy_finetuned = accuracy;
    }
    Ok(PruneOutcome { model, masks, rounds })
}

/// Settings of the lottery-ticket experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct LotteryConfig {
    /// Layer sizes (inputs, hidden..., classes).
    pub sizes: Vec<usize>,
    /// Fraction of the remaining hidden-layer weights pruned per round.
    pub rate: f64,
    /// The same for the output layer (the paper uses half the hidden rate).
    pub output_rate: f64,
    /// Pruning rounds after the dense run.
    pub rounds: u32,
    /// Training of every run.
    pub train: TrainConfig,
    /// Rewind to the parameters after this many optimizer steps (0 = initialisation).
    pub rewind_steps: usize,
    /// Initialisation seed.
    pub seed: u64,
    /// Also train the random re-initialisation control at every round.
    pub control: bool,
    /// Training samples held out as the validation set that chooses the early-stopping
    /// iteration (the paper: 5,000 of MNIST's 60,000). The test set never chooses.
    pub validation: usize,
    /// Evaluate every this many optimizer steps (the paper: 100); `None`: after every
    /// epoch.
    pub eval_interval: Option<usize>,
}

/// One evaluation during training.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalPoint {
    /// Optimizer steps taken.
    pub iteration: usize,
    /// Mean cross-entropy on the validation set.
    pub validation_loss: f64,
    /// Test accuracy.
    pub test_accuracy: f64,
}

/// A training run evaluated along the way, with its early-stopping point chosen on the
/// validation set.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackedRun {
    /// Every evaluation, in order.
    pub curve: Vec<EvalPoint>,
    /// Test accuracy at the end of training.
    pub final_accuracy: f64,
}

impl TrackedRun {
    /// The evaluation of lowest validation loss (the first, on ties): the early-stopping
    /// point. `None` for a run that never evaluated.
    pub fn early_stop(&self) -> Option<EvalPoint> {
        self.curve
            .iter()
            .copied()
            .reduce(|best, p| if p.validation_loss < best.validation_loss { p } else { best })
    }
}

/// One round of the lottery-ticket experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct LotteryRound {
    /// 0 for the dense run.
    pub round: u32,
    /// Fraction of weights remaining.
    pub remaining: f64,
    /// Test accuracy of the network this round starts from (rewound and masked), before
    /// training.
    pub start_accuracy: f64,
    /// Test accuracy at the end of training.
    pub accuracy: f64,
    /// The iteration of lowest validation loss: the paper's early-stopping point.
    pub early_stop_iteration: usize,
    /// Test accuracy at that iteration.
    pub early_stop_accuracy: f64,
    /// The control (same masks, random re-initialisation): test accuracy at its own
    /// early-stopping iteration.
    pub control_accuracy: Option<f64>,
    /// Every evaluation of the ticket's training.
    pub curve: Vec<EvalPoint>,
    /// The masks of this round (empty for the dense run).
    pub masks: Masks,
}

/// Mean cross-entropy loss and accuracy of `model` on `data`.
///
/// # Errors
/// [`Error::Shape`] if the data has the wrong number of features.
pub fn evaluate(model: &Mlp<f32>, data: &Dataset) -> Result<(f64, f64)> {
    let logits = model.forward(&to_scalar::<f32>(data.features()))?;
    let mut loss = 0.0;
    let mut correct = 0;
    for (col, &label) in logits.column_iter().zip(data.labels()) {
        let max = col.max();
        let sum: f64 = col.iter().map(|&v| f64::from(v - max).exp()).sum();
        loss -= f64::from(col[usize::from(label)] - max) - sum.ln();
        correct += usize::from(col.imax() == usize::from(label));
    }
    let n = data.len().max(1) as f64;
    Ok((loss / n, correct as f64 / n))
}

/// Trains on `train`, evaluating every `interval` steps (or every epoch), and at the end,
/// on `validation` (which chooses the early-stopping point) and on `test` (which is only
/// reported).
///
/// # Errors
/// Training and evaluation errors.
pub fn train_tracked(
    model: &mut Mlp<f32>,
    train: &Dataset,
    validation: &Dataset,
    test: &Dataset,
    config: &TrainConfig,
    interval: Option<usize>,
    masks: &Masks,
) -> Result<TrackedRun> {
    let interval =
        interval.unwrap_or_else(|| train.len().div_ceil(config.batch_size.max(1))).max(1);
    let point = |mlp: &Mlp<f32>, iteration| -> Result<EvalPoint> {
        let (validation_loss, _) = evaluate(mlp, validation)?;
        let (_, test_accuracy) = evaluate(mlp, test)?;
        Ok(EvalPoint { iteration, validation_loss, test_accuracy })
    };
    let mut curve = Vec::new();
    let mut masks = masks.clone();
    let log = train_with(model, train, config, &mut masks, |step, mlp, _| {
        if step.is_multiple_of(interval) {
            curve.push(point(mlp, step)?);
        }
        Ok(())
    })?;
    // The trained network is a candidate too, wherever the interval ended.
    if curve.last().map(|p| p.iteration) != Some(log.steps) {
        curve.push(point(model, log.steps)?);
    }
    Ok(TrackedRun { curve, final_accuracy: model.accuracy(test)? })
}

/// The parameters a lottery ticket rewinds to: the network at initialisation, or after
/// `config.rewind_steps` optimizer steps of dense training on `train_set`.
///
/// # Errors
/// Bad sizes; training errors.
pub fn rewind_point(train_set: &Dataset, config: &LotteryConfig) -> Result<Mlp<f32>> {
    let mut model = Mlp::<f32>::new(&config.sizes, config.seed)?;
    if config.rewind_steps > 0 {
        let warmup = TrainConfig {
            epochs: usize::MAX,
            max_steps: Some(config.rewind_steps),
            ..config.train
        };
        train(&mut model, train_set, &warmup, &Masks::new())?;
    }
    Ok(model)
}

/// Every parameter of `snapshot` (weights and biases, as the paper resets them), with the
/// weights masked by `masks`.
///
/// # Errors
/// A mask that names no layer or does not fit it.
pub fn rewind(snapshot: &Mlp<f32>, masks: &Masks) -> Result<Mlp<f32>> {
    let mut model = snapshot.clone();
    for (name, mask) in masks {
        mask.apply_in_place(model.require_weight_mut(name)?)?;
    }
    Ok(model)
}

/// Frankle & Carbin's lottery-ticket experiment: train, prune `rate` of each hidden
/// layer's remaining weights (`output_rate` of the output layer's), rewind every parameter
/// (weights and biases) to initialisation or to step `rewind_steps`, retrain; with
/// `control`, train the same masks from a fresh random initialisation.
///
/// `validation` training samples are held out (seeded with `seed`); the early-stopping
/// iteration of every run is the one of lowest validation loss, and the accuracy reported
/// for it is the test accuracy at that iteration. Each round prunes the weights as they
/// are at the end of the previous round's training, as the paper's Algorithm 1. A ticket
/// rewound to iteration `k` trains the run's remaining iterations, so every network sees
/// the same number; iterations are counted from initialisation.
///
/// # Errors
/// [`shears_strategies::Error::InvalidRate`] for bad rates; [`Error::BadParameter`] for an
/// empty validation set or one as large as the training set, or a rewind point at or past the end of a
/// run; training errors.
pub fn lottery_ticket(data: &Split, config: &LotteryConfig) -> Result<Vec<LotteryRound>> {
    if config.validation == 0 {
        return Err(Error::BadParameter {
            name: "validation samples",
            requirement: "at least 1 (early stopping is chosen on them)",
            value: 0.0,
        });
    }
    let (train_set, validation) = data.train.hold_out(config.validation, config.seed)?;
    let steps_per_run = train_set
        .len()
        .div_ceil(config.train.batch_size.max(1))
        .saturating_mul(config.train.epochs);
    let steps_per_run = config.train.max_steps.map_or(steps_per_run, |m| m.min(steps_per_run));
    if config.rewind_steps > 0 && config.rewind_steps >= steps_per_run {
        return Err(Error::BadParameter {
            name: "rewind steps",
            requirement: "fewer than the optimizer steps of one training run",
            value: config.rewind_steps as f64,
        });
    }
    let snapshot = rewind_point(&train_set, config)?;
    let output = weight_name(snapshot.layers().len() - 1);
    let mut ticket =
        LotteryTicket::new(config.rate)?.with_layer_rate(output, config.output_rate)?;
    ticket.remember_model(&snapshot);
    let mut model = Mlp::<f32>::new(&config.sizes, config.seed)?;
    let mut masks = Masks::new();
    let total = model.weight_count() as f64;
    let mut rounds = Vec::new();
    for round in 0..=config.rounds {
        if round > 0 {
            ticket.prune_round(&mut model, &mut masks, round)?;
            model = rewind(&snapshot, &masks)?;
        }
        let remaining =
            1.0 - masks.values().map(|m| m.count_pruned()).sum::<usize>() as f64 / total;
        let start_accuracy = model.accuracy(&data.test)?;
        let train_config =
            TrainConfig { seed: config.train.seed.wrapping_add(u64::from(round)), ..config.train };
        // A ticket rewound to iteration k has already had k of the run's iterations: it
        // trains the rest, and its iterations count from initialisation.
        let offset = if round > 0 { config.rewind_steps } else { 0 };
        let ticket_config = TrainConfig { max_steps: Some(steps_per_run - offset), ..train_config };
        let mut run = train_tracked(
            &mut model,
            &train_set,
            &validation,
            &data.test,
            &ticket_config,
            config.eval_interval,
            &masks,
        )?;
        run.curve.iter_mut().for_each(|p| p.iteration += offset);
        let stop = run.early_stop();
        let control_accuracy = if config.control && round > 0 {
            let fresh =
                Mlp::<f32>::new(&config.sizes, config.seed ^ 0x5eed_0000 ^ u64::from(round))?;
            let mut fresh = rewind(&fresh, &masks)?;
            let control = train_tracked(
                &mut fresh,
                &train_set,
                &validation,
                &data.test,
                &train_config,
                config.eval_interval,
                &masks,
            )?;
            Some(control.early_stop().map_or(control.final_accuracy, |p| p.test_accuracy))
        } else {
            None
        };
        rounds.push(LotteryRound {
            round,
            remaining,
            start_accuracy,
            accuracy: run.final_accuracy,
            early_stop_iteration: stop.map_or(0, |p| p.iteration),
            early_stop_accuracy: stop.map_or(run.final_accuracy, |p| p.test_accuracy),
            control_accuracy,
            curve: run.curve,
            masks: masks.clone(),
        });
    }
    Ok(rounds)
}

/// Median wall times of the dense and the sparse network on the same input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InferenceTiming {
    /// Dense network, nanoseconds per forward pass.
    pub dense_ns: f64,
    /// Sparse network, nanoseconds per forward pass.
    pub sparse_ns: f64,
}

impl InferenceTiming {
    /// `dense / sparse`.
    pub fn speedup(&self) -> f64 {
        self.dense_ns / self.sparse_ns
    }
}

/// Times `reps` forward passes of each network on `x`, the two in turn, and returns the
/// medians. A measurement, not a test: quote it with the machine it ran on.
///
/// # Errors
/// Shape errors of the forward passes.
pub fn time_inference(
    dense: &Mlp<f32>,
    sparse: &SparseMlp<f32>,
    x: &DMatrix<f32>,
    reps: usize,
) -> Result<InferenceTiming> {
    // One warm-up each, then the two in turn, so that the machine's drift touches both.
    dense.forward(x)?;
    sparse.forward(x)?;
    let (mut dense_ns, mut sparse_ns) =
        (Vec::with_capacity(reps.max(1)), Vec::with_capacity(reps.max(1)));
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        dense.forward(x)?;
        dense_ns.push(start.elapsed().as_nanos() as f64);
        let start = Instant::now();
        sparse.forward(x)?;
        sparse_ns.push(start.elapsed().as_nanos() as f64);
    }
    let median = |mut times: Vec<f64>| {
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    };
    Ok(InferenceTiming { dense_ns: median(dense_ns), sparse_ns: median(sparse_ns) })
}
