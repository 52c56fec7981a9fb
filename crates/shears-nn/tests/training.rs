//! Training: accuracy, determinism, mask-awareness.

use nalgebra::DMatrix;
use shears_core::Masks;
use shears_core::{Mask, Prunable};
use shears_nn::{Error, Mlp, Optimizer, TrainConfig, train, weight_name};

use crate::trained;

#[test]
fn dense_mlp_reaches_95_percent() {
    let (data, mlp) = trained();
    let accuracy = mlp.accuracy(&data.test).unwrap();
    assert!(accuracy >= 0.95, "test accuracy {accuracy}");
}

#[test]
fn training_is_deterministic() {
    let (data, _) = trained();
    let run = || {
        let mut mlp = Mlp::<f32>::new(&[64, 32, 10], 5).unwrap();
        train(
            &mut mlp,
            &data.train,
            &TrainConfig { epochs: 2, ..TrainConfig::default() },
            &Masks::new(),
        )
        .unwrap();
        mlp
    };
    let (a, b) = (run(), run());
    for (la, lb) in a.layers().iter().zip(b.layers()) {
        assert_eq!(
            la.weight().iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            lb.weight().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}

#[test]
fn pruned_weights_stay_exactly_zero() {
    let (data, _) = trained();
    for optimizer in [Optimizer::adam(1e-2), Optimizer::sgd(0.1, 0.9)] {
        let mut mlp = Mlp::<f32>::new(&[64, 32, 10], 3).unwrap();
        // Give the optimizer momentum on every weight first, then mask half of them.
        train(
            &mut mlp,
            &data.train,
            &TrainConfig { epochs: 1, optimizer, ..TrainConfig::default() },
            &Masks::new(),
        )
        .unwrap();
        let mask = Mask::from_fn(32, 64, |r, c| (r + c) % 2 == 0).unwrap();
        let masks = Masks::from([(weight_name(0), mask.clone())]);
        train(
            &mut mlp,
            &data.train,
            &TrainConfig { epochs: 2, optimizer, ..TrainConfig::default() },
            &masks,
        )
        .unwrap();
        let w = mlp.weight(&weight_name(0)).unwrap();
        for (r, c) in (!&mask).iter_kept() {
            assert_eq!(w[(r, c)], 0.0);
        }
        assert!(mask.iter_kept().any(|(r, c)| w[(r, c)] != 0.0));
    }
}

#[test]
fn f64_networks_train_too() {
    let (data, _) = trained();
    let config = TrainConfig { epochs: 15, ..TrainConfig::default() };
    let mut wide = Mlp::<f64>::new(&[64, 32, 10], 2).unwrap();
    train(&mut wide, &data.train, &config, &Masks::new()).unwrap();
    let mut narrow = Mlp::<f32>::new(&[64, 32, 10], 2).unwrap();
    train(&mut narrow, &data.train, &config, &Masks::new()).unwrap();
    let accuracy = wide.accuracy(&data.test).unwrap();
    assert!(accuracy > 0.9, "{accuracy}");
    assert!((accuracy - narrow.accuracy(&data.test).unwrap()).abs() < 0.01);
}

#[test]
fn bad_parameters_are_errors() {
    let (data, _) = trained();
    let mut mlp = Mlp::<f32>::new(&[64, 8, 10], 0).unwrap();
    let cases = [
        TrainConfig { batch_size: 0, ..TrainConfig::default() },
        TrainConfig { optimizer: Optimizer::adam(-1.0), ..TrainConfig::default() },
        TrainConfig { optimizer: Optimizer::sgd(0.1, 1.0), ..TrainConfig::default() },
        TrainConfig {
            optimizer: Optimizer::Adam { lr: 1e-3, beta1: 0.9, beta2: 1.5, eps: 1e-8 },
            ..TrainConfig::default()
        },
        TrainConfig {
            optimizer: Optimizer::Adam { lr: 1e-3, beta1: 0.9, beta2: 0.99, eps: 0.0 },
            ..TrainConfig::default()
        },
    ];
    for config in cases {
        assert!(
            matches!(
                train(&mut mlp, &data.train, &config, &Masks::new()),
                Err(Error::BadParameter { .. })
            ),
            "{config:?}"
        );
    }
    let wrong = Masks::from([(weight_name(0), Mask::all_kept(3, 3).unwrap())]);
    assert!(
        train(&mut mlp, &data.train, &TrainConfig { epochs: 1, ..TrainConfig::default() }, &wrong)
            .is_err()
    );
    let small = Mlp::<f32>::new(&[10, 10], 0).unwrap();
    assert!(matches!(small.accuracy(&data.test), Err(Error::Shape { .. })));
    let mut diverging = Mlp::<f32>::new(&[64, 8, 10], 0).unwrap();
    diverging.layers_mut()[0].weight_mut().fill(f32::INFINITY);
    let err = train(
        &mut diverging,
        &data.train,
        &TrainConfig { epochs: 1, ..TrainConfig::default() },
        &Masks::new(),
    );
    assert!(matches!(err, Err(Error::Diverged { .. })), "{err:?}");
    assert_eq!(
        Mlp::<f32>::new(&[2, 2], 0).unwrap().forward(&DMatrix::zeros(2, 0)).unwrap().shape(),
        (2, 0)
    );
}

/// Training, pruning (magnitude and seeded random), fine-tuning and sparse inference give
/// bit-identical results on 1, 2 and 4 rayon threads, and on repeated runs.
#[test]
fn train_prune_finetune_and_infer_do_not_depend_on_the_thread_count() {
    use shears_core::Sparsity;
    use shears_nn::{PruningPlan, SparseMlp, prune_and_finetune};
    use shears_sparse::Format;
    use shears_strategies::{Criterion, Schedule};

    let (data, _) = trained();
    let run = || {
        let mut mlp = Mlp::<f32>::new(&[64, 32, 10], 11).unwrap();
        let config = TrainConfig { epochs: 1, ..TrainConfig::default() };
        train(&mut mlp, &data.train, &config, &Masks::new()).unwrap();
        let schedule = Schedule::iterative(Sparsity::new(0.7).unwrap(), 2).unwrap();
        let mut bits = Vec::new();
        for criterion in [Criterion::Magnitude, Criterion::Random { seed: 3 }] {
            let outcome =
                prune_and_finetune(&mlp, data, &PruningPlan::new(criterion), &schedule, &config)
                    .unwrap();
            for mask in outcome.masks.values() {
                bits.extend(mask.to_bytes());
            }
            for layer in outcome.model.layers() {
                bits.extend(layer.weight().iter().flat_map(|v| v.to_le_bytes()));
            }
            let sparse =
                SparseMlp::from_mlp_with(&outcome.model, &outcome.masks, |_| Format::Csr).unwrap();
            // Enough columns that the first layer's product is split across threads.
            let x = data.test.features();
            let wide = DMatrix::from_fn(x.nrows(), 6 * x.ncols(), |r, c| x[(r, c % x.ncols())]);
            let logits = sparse.forward(&wide).unwrap();
            bits.extend(logits.iter().flat_map(|v| v.to_le_bytes()));
        }
        bits
    };
    let on = |threads| {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(run)
    };
    let one = on(1);
    assert_eq!(one, run(), "a repeated run differs");
    for threads in [2, 4] {
        assert!(on(threads) == one, "{threads} threads differ from 1");
    }
}
