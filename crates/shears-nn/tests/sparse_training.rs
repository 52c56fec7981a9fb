//! Training sparse from scratch on the embedded digits: SET and RigL against a fixed
//! random mask, exact counts, determinism.

use shears_core::{Prunable, Sparsity};
use shears_nn::{
    Mlp, SparseComparison, SparseMethod, TrainConfig, digits_split, train_sparse, train_to_sparsity,
};
use shears_strategies::{Distribution, DynamicSparsity, UpdateSchedule, random_masks};

/// The comparison's settings on the digits: 30 epochs of Adam, masks moving every 50 steps.
fn comparison() -> SparseComparison {
    let mut config = SparseComparison::new(
        vec![64, 128, 10],
        TrainConfig { epochs: 30, ..TrainConfig::default() },
    );
    config.interval = 50;
    config
}

fn mean_accuracy(method: SparseMethod, sparsity: f64) -> f64 {
    let data = digits_split().unwrap();
    let target = Sparsity::new(sparsity).unwrap();
    let runs: Vec<_> = (0..3)
        .map(|seed| train_to_sparsity(&data, &comparison(), method, target, seed).unwrap())
        .collect();
    for run in &runs {
        assert!((run.sparsity - sparsity).abs() < 2e-3, "{method:?}: sparsity {}", run.sparsity);
        if matches!(method, SparseMethod::Set | SparseMethod::Rigl) {
            assert!(run.moved > 0, "{method:?} moved nothing");
        }
    }
    runs.iter().map(|r| r.accuracy).sum::<f64>() / 3.0
}

#[test]
fn at_high_sparsity_rigl_beats_set_beats_static() {
    for sparsity in [0.95, 0.98] {
        let [fixed, set, rigl] = [SparseMethod::Static, SparseMethod::Set, SparseMethod::Rigl]
            .map(|m| mean_accuracy(m, sparsity));
        assert!(
            rigl > set && set > fixed,
            "{sparsity}: RigL {rigl:.4}, SET {set:.4}, static {fixed:.4}"
        );
    }
}

#[test]
fn gradual_magnitude_reaches_its_target() {
    let accuracy = mean_accuracy(SparseMethod::GradualMagnitude, 0.9);
    assert!(accuracy > 0.9, "{accuracy}");
}

#[test]
fn counts_stay_exact_and_pruned_weights_zero_through_training() {
    let data = digits_split().unwrap();
    let mut mlp = Mlp::<f32>::new(&[64, 32, 10], 5).unwrap();
    let names = mlp.prunable_names();
    let target = Sparsity::new(0.9).unwrap();
    let masks = random_masks(&mut mlp, &names, target, Distribution::ErdosRenyi, 9).unwrap();
    let counts: Vec<usize> = masks.values().map(|m| m.count_kept()).collect();
    let initial = masks.clone();
    let config = TrainConfig { epochs: 4, ..TrainConfig::default() };
    let schedule = UpdateSchedule::new(10, 0.3, 150, shears_strategies::Decay::Cosine).unwrap();
    for policy in [DynamicSparsity::rigl(schedule), DynamicSparsity::set(schedule, 2)] {
        let mut model = mlp.clone();
        let mut moving = initial.clone();
        let log =
            train_sparse(&mut model, &data.train, &config, &mut moving, Some(&policy)).unwrap();
        assert_eq!(
            log.moves.iter().map(|m| m.step).collect::<Vec<_>>(),
            (1..15).map(|k| 10 * k).collect::<Vec<_>>()
        );
        assert!(log.moves.windows(2).all(|w| w[1].fraction <= w[0].fraction));
        assert_eq!(moving.values().map(|m| m.count_kept()).collect::<Vec<_>>(), counts);
        assert_ne!(moving, initial, "{policy:?} moved no connection");
        for name in &names {
            let w = model.weight(name).unwrap();
            assert!((!&moving[name]).iter_kept().all(|(r, c)| w[(r, c)] == 0.0), "{name}");
        }
    }
    // Without a policy the masks stay as they were.
    let mut fixed = initial.clone();
    let log = train_sparse(&mut mlp, &data.train, &config, &mut fixed, None).unwrap();
    assert!(log.moves.is_empty());
    assert_eq!(fixed, initial);
}

#[test]
fn bad_inputs_are_errors() {
    let data = digits_split().unwrap();
    let mut mlp = Mlp::<f32>::new(&[64, 16, 10], 0).unwrap();
    let config = TrainConfig { epochs: 1, ..TrainConfig::default() };
    // No samples: an error, not an endless loop over empty epochs.
    let empty = data.train.take(0);
    let forever = TrainConfig { epochs: usize::MAX, max_steps: Some(5), ..config };
    let err = train_sparse(&mut mlp, &empty, &forever, &mut Default::default(), None).unwrap_err();
    assert!(err.to_string().contains("training samples"), "{err}");
    // A mask naming no layer, or of the wrong shape.
    let mut stray = shears_core::Masks::from([(
        "nope".to_string(),
        shears_core::Mask::all_kept(2, 2).unwrap(),
    )]);
    assert!(train_sparse(&mut mlp, &data.train, &config, &mut stray, None).is_err());
    let mut wrong = shears_core::Masks::from([(
        "layers.0.weight".to_string(),
        shears_core::Mask::all_kept(2, 2).unwrap(),
    )]);
    assert!(train_sparse(&mut mlp, &data.train, &config, &mut wrong, None).is_err());
    // Epochs so many that steps overflow: the run is bounded by max_steps, not wrapped.
    let mut huge = comparison();
    huge.train = TrainConfig { epochs: usize::MAX, max_steps: Some(20), ..huge.train };
    huge.interval = 10;
    let run = train_to_sparsity(&data, &huge, SparseMethod::Rigl, Sparsity::new(0.9).unwrap(), 0)
        .unwrap();
    assert!(run.moved > 0);
    // Gradual pruning with no step to prune at still ends at its target.
    let mut none = comparison();
    none.train.max_steps = Some(1);
    let run = train_to_sparsity(
        &data,
        &none,
        SparseMethod::GradualMagnitude,
        Sparsity::new(0.8).unwrap(),
        0,
    )
    .unwrap();
    assert!((run.sparsity - 0.8).abs() < 2e-3, "{}", run.sparsity);
    // The lottery ticket needs validation samples to stop early on.
    let lottery = shears_nn::LotteryConfig {
        sizes: vec![64, 16, 10],
        rate: 0.2,
        output_rate: 0.1,
        rounds: 1,
        train: config,
        rewind_steps: 0,
        seed: 0,
        control: false,
        validation: 0,
        eval_interval: None,
    };
    assert!(
        shears_nn::lottery_ticket(&data, &lottery).unwrap_err().to_string().contains("validation")
    );
}

#[test]
fn dynamic_training_is_identical_on_any_thread_count() {
    let run = || {
        let data = digits_split().unwrap();
        let mut bits = Vec::new();
        for method in [SparseMethod::Set, SparseMethod::Rigl, SparseMethod::GradualMagnitude] {
            let mut config = comparison();
            config.train.epochs = 3;
            config.interval = 20;
            let run =
                train_to_sparsity(&data, &config, method, Sparsity::new(0.95).unwrap(), 1).unwrap();
            for mask in run.masks.values() {
                bits.extend(mask.to_bytes());
            }
            bits.extend(run.accuracy.to_le_bytes());
        }
        bits
    };
    let on = |threads| {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(run)
    };
    let one = on(1);
    assert_eq!(one, run(), "a repeated run differs");
    assert!(on(2) == one, "2 threads differ from 1");
    assert!(on(4) == one, "4 threads differ from 1");
}
