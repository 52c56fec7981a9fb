//! The experiments the issue asks to hold, on the embedded digits.

use nalgebra::DMatrix;
use shears_core::{NmPattern, Sparsity};
use shears_nn::{
    LotteryConfig, PruningPlan, SparseMlp, TrainConfig, lottery_ticket, prune_and_finetune, rewind,
    rewind_point, weight_name,
};
use shears_sparse::Format;
use shears_strategies::{Axis, Criterion, Pattern, Schedule, Structured};

use crate::{SIZES, trained};

fn finetune() -> TrainConfig {
    TrainConfig { epochs: 10, ..TrainConfig::default() }
}

#[test]
fn magnitude_80_percent_loses_at_most_1_5_points() {
    let (data, dense) = trained();
    let base = dense.accuracy(&data.test).unwrap();
    let method = PruningPlan::new(Criterion::Magnitude);
    let schedule = Schedule::iterative(Sparsity::new(0.8).unwrap(), 2).unwrap();
    let outcome = prune_and_finetune(dense, data, &method, &schedule, &finetune()).unwrap();
    let last = outcome.rounds.last().unwrap();
    assert!((last.sparsity - 0.8).abs() < 1e-3, "{}", last.sparsity);
    assert!(
        base - last.accuracy_finetuned <= 0.015,
        "dense {base}, pruned {}",
        last.accuracy_finetuned
    );
    // The sparse inference model predicts what the masked network predicts.
    // Layers this small stay dense by default; force CSR and sliced ELLPACK to check the
    // sparse paths too, batched and one input at a time.
    let x = data.test.features().clone();
    let one = x.columns(0, 1).into_owned();
    for sparse in [
        SparseMlp::from_mlp(&outcome.model, &outcome.masks, 1).unwrap(),
        SparseMlp::from_mlp_with(&outcome.model, &outcome.masks, |_| Format::Csr).unwrap(),
        SparseMlp::from_mlp_with(&outcome.model, &outcome.masks, |_| Format::SlicedEll).unwrap(),
    ] {
        assert_eq!(sparse.predict(&x).unwrap(), outcome.model.predict(&x).unwrap());
        let (dl, sl) = (outcome.model.forward(&x).unwrap(), sparse.forward(&x).unwrap());
        assert!((dl - sl).amax() < 1e-4);
        let (dl, sl) = (outcome.model.forward(&one).unwrap(), sparse.forward(&one).unwrap());
        assert!((dl - sl).amax() < 1e-4);
    }
    let sell =
        SparseMlp::from_mlp_with(&outcome.model, &outcome.masks, |_| Format::SlicedEll).unwrap();
    assert!(sell.layer_formats().iter().all(|(f, _)| *f == Format::SlicedEll));
    let forced = SparseMlp::from_mlp_with(&outcome.model, &outcome.masks, |_| Format::Csr).unwrap();
    assert!(forced.layer_formats().iter().all(|(f, _)| *f == Format::Csr));
}

#[test]
fn gradient_and_random_criteria_prune_and_finetune() {
    let (data, dense) = trained();
    let schedule = Schedule::one_shot(Sparsity::new(0.5).unwrap());
    for criterion in [Criterion::Gradient, Criterion::Random { seed: 3 }] {
        let plan = PruningPlan { gradient_batches: 4, ..PruningPlan::new(criterion) };
        let outcome = prune_and_finetune(dense, data, &plan, &schedule, &finetune()).unwrap();
        let r = outcome.rounds[0];
        assert!((r.sparsity - 0.5).abs() < 1e-3);
        assert!(r.accuracy_finetuned > 0.9, "{criterion:?}: {}", r.accuracy_finetuned);
    }
}

#[test]
fn structured_half_of_hidden_neurons_compacts_exactly() {
    let (data, dense) = trained();
    let method = PruningPlan {
        pattern: Pattern::Structured(Structured::new(Axis::Rows)),
        exclude: vec![weight_name(2)],
        ..PruningPlan::new(Criterion::Magnitude)
    };
    let outcome = prune_and_finetune(
        dense,
        data,
        &method,
        &Schedule::one_shot(Sparsity::new(0.5).unwrap()),
        &finetune(),
    )
    .unwrap();
    let sparse = SparseMlp::from_mlp(&outcome.model, &outcome.masks, 32).unwrap();
    // Physically smaller: hidden layers of 64 and 32 neurons instead of 128 and 64.
    let shapes: Vec<(usize, usize)> = sparse.layer_formats().iter().map(|(_, s)| *s).collect();
    assert_eq!(shapes, vec![(64, 64), (32, 64), (10, 32)]);
    let x = data.test.features().clone();
    assert_eq!(sparse.predict(&x).unwrap(), outcome.model.predict(&x).unwrap());
    assert!((sparse.forward(&x).unwrap() - outcome.model.forward(&x).unwrap()).amax() < 1e-4);
    assert!(outcome.rounds[0].accuracy_finetuned > 0.93);
}

#[test]
fn two_four_uses_the_nm_format() {
    let (data, dense) = trained();
    let method = PruningPlan {
        pattern: Pattern::NM(NmPattern::TWO_FOUR),
        ..PruningPlan::new(Criterion::Magnitude)
    };
    let outcome = prune_and_finetune(
        dense,
        data,
        &method,
        &Schedule::one_shot(Sparsity::new(0.5).unwrap()),
        &finetune(),
    )
    .unwrap();
    let sparse = SparseMlp::from_mlp_with(&outcome.model, &outcome.masks, |_| {
        Format::Nm(NmPattern::TWO_FOUR)
    })
    .unwrap();
    assert!(sparse.layer_formats().iter().all(|(f, _)| matches!(f, Format::Nm(_))));
    let x = DMatrix::from_fn(64, 7, |r, c| ((r * 7 + c) % 17) as f32 / 17.0);
    assert_eq!(sparse.predict(&x).unwrap(), outcome.model.predict(&x).unwrap());
}

#[test]
fn winning_tickets_beat_random_reinitialisation_at_90_percent() {
    let (data, _) = trained();
    let mut ticket = 0.0;
    let mut control = 0.0;
    for seed in 0..3 {
        let config = LotteryConfig {
            sizes: SIZES.to_vec(),
            rate: 0.2,
            output_rate: 0.1,
            rounds: 11,
            train: TrainConfig { epochs: 12, seed, ..TrainConfig::default() },
            rewind_steps: 0,
            seed: 100 + seed,
            control: true,
            validation: 288,
            eval_interval: None,
        };
        let rounds = lottery_ticket(data, &config).unwrap();
        let last = rounds.last().unwrap();
        assert!(last.remaining < 0.11, "{}", last.remaining);
        assert!(rounds.windows(2).all(|w| w[1].remaining < w[0].remaining));
        ticket += last.early_stop_accuracy;
        control += last.control_accuracy.unwrap();
    }
    assert!(
        ticket > control,
        "winning tickets {:.4} vs random re-init {:.4}",
        ticket / 3.0,
        control / 3.0
    );
}

fn lottery_config(rewind_steps: usize, rounds: u32) -> LotteryConfig {
    LotteryConfig {
        sizes: SIZES.to_vec(),
        rate: 0.5,
        output_rate: 0.25,
        rounds,
        train: TrainConfig { epochs: 3, ..TrainConfig::default() },
        rewind_steps,
        seed: 11,
        control: false,
        validation: 288,
        eval_interval: Some(20),
    }
}

#[test]
fn rewinding_resets_biases_too() {
    let (_, trained) = trained();
    // After training, biases are far from their initial values; a rewind restores them.
    let snapshot = shears_nn::Mlp::<f32>::new(&SIZES, 1).unwrap();
    let masks = shears_core::Masks::from([(
        weight_name(0),
        shears_core::Mask::from_fn(128, 64, |r, c| (r + c) % 2 == 0).unwrap(),
    )]);
    assert!(trained.layers()[0].bias() != snapshot.layers()[0].bias());
    let model = rewind(&snapshot, &masks).unwrap();
    for (layer, initial) in model.layers().iter().zip(snapshot.layers()) {
        assert_eq!(layer.bias(), initial.bias());
    }
    assert_eq!(
        model.layers()[0].weight(),
        &masks[&weight_name(0)].apply(snapshot.layers()[0].weight()).unwrap()
    );
    assert_eq!(model.layers()[1].weight(), snapshot.layers()[1].weight());
}

#[test]
fn late_rewinding_starts_every_round_from_step_k() {
    let (data, _) = trained();
    for k in [0, 30] {
        let config = lottery_config(k, 2);
        let rounds = lottery_ticket(data, &config).unwrap();
        let (train_set, _) = data.train.hold_out(config.validation, config.seed).unwrap();
        let point = rewind_point(&train_set, &config).unwrap();
        // The rewind point is the network after k steps of dense training.
        let mut expected = shears_nn::Mlp::<f32>::new(&SIZES, config.seed).unwrap();
        if k > 0 {
            let warmup = TrainConfig { epochs: usize::MAX, max_steps: Some(k), ..config.train };
            shears_nn::train(&mut expected, &train_set, &warmup, &shears_core::Masks::new())
                .unwrap();
        }
        assert_eq!(point, expected);
        let steps = train_set.len().div_ceil(config.train.batch_size) * config.train.epochs;
        for round in &rounds[1..] {
            let start = rewind(&point, &round.masks).unwrap();
            assert_eq!(round.start_accuracy, start.accuracy(&data.test).unwrap(), "k = {k}");
            // The rest of the run after the rewind point, counted from initialisation.
            assert_eq!(round.curve.last().unwrap().iteration, steps, "k = {k}");
            assert!(round.curve[0].iteration > k);
        }
    }
    let whole_run = lottery_config(usize::MAX, 1);
    assert!(matches!(lottery_ticket(data, &whole_run), Err(shears_nn::Error::BadParameter { .. })));
}

#[test]
fn early_stopping_is_chosen_on_validation_never_on_test() {
    let (data, _) = trained();
    let config = lottery_config(0, 1);
    let rounds = lottery_ticket(data, &config).unwrap();
    let steps = (data.train.len() - config.validation).div_ceil(config.train.batch_size)
        * config.train.epochs;
    for round in &rounds {
        // Every 20 iterations, and the trained network where the interval ends elsewhere.
        assert_eq!(round.curve.len(), steps.div_ceil(20));
        assert_eq!(round.curve.last().unwrap().iteration, steps);
        let best = round
            .curve
            .iter()
            .min_by(|a, b| a.validation_loss.total_cmp(&b.validation_loss))
            .unwrap();
        assert_eq!(round.early_stop_iteration, best.iteration);
        assert_eq!(round.early_stop_accuracy, best.test_accuracy);
    }
    // The validation set comes out of the training set, disjoint from what trains.
    let (rest, held) = data.train.hold_out(config.validation, config.seed).unwrap();
    assert_eq!((rest.len(), held.len()), (data.train.len() - 288, 288));
    let column = |d: &shears_nn::Dataset, i: usize| {
        d.features().column(i).iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    };
    let rest_columns: std::collections::HashSet<_> =
        (0..rest.len()).map(|i| column(&rest, i)).collect();
    let shared = (0..held.len()).filter(|&i| rest_columns.contains(&column(&held, i))).count();
    // The digits hold a few duplicate images; held-out samples are other samples.
    assert!(shared < 5, "{shared} held-out images also train");
    assert!(data.train.hold_out(data.train.len(), 0).is_err());
}

#[test]
fn gradual_pruning_reaches_its_target_during_training() {
    let (data, _) = trained();
    let model = shears_nn::Mlp::<f32>::new(&SIZES, 4).unwrap();
    let schedule =
        Schedule::polynomial(Sparsity::ZERO, Sparsity::new(0.8).unwrap(), 45, 450, 45).unwrap();
    let config = TrainConfig { epochs: 20, ..TrainConfig::default() };
    let outcome = shears_nn::gradual_magnitude(
        &model,
        data,
        &schedule,
        &config,
        shears_strategies::Scope::Layer,
    )
    .unwrap();
    assert_eq!(outcome.rounds.len(), schedule.targets().count());
    assert!(outcome.rounds.windows(2).all(|w| w[0].sparsity <= w[1].sparsity));
    assert!((outcome.rounds.last().unwrap().sparsity - 0.8).abs() < 1e-3);
    let accuracy = outcome.model.accuracy(&data.test).unwrap();
    assert!(accuracy > 0.93, "{accuracy}");
}
