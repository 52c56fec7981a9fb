//! `shears demo`: every strategy on the embedded digits, side by side.

use std::path::Path;

use anyhow::{Context, Result};
use nalgebra::DMatrix;
use serde::Serialize;
use shears_core::{NmPattern, Sparsity};
use shears_nn::{
    LotteryConfig, Mlp, Optimizer, PruningPlan, SparseMlp, TrainConfig, digits_split,
    lottery_ticket, masked_sparsity, prune_and_finetune, time_inference, train_with, weight_name,
};
use shears_strategies::{Axis, Criterion, Masks, Pattern, Schedule, Structured};

use crate::cli::DemoArgs;
use crate::progress::Progress;
use crate::report::{print_json, print_table};
use shears_io::PendingFile;
use shears_io::chart::{Series, line_chart};

/// The network: wide enough that its hidden layers (1024x64 and 256x1024) are past the
/// size where sparse formats pay, small enough to train on the digits in seconds.
const SIZES: [usize; 4] = [64, 1024, 256, 10];
const SPARSITIES: [f64; 3] = [0.5, 0.8, 0.9];

#[derive(Debug, Serialize)]
struct Row {
    method: String,
    target: f64,
    sparsity: f64,
    accuracy: f64,
    delta_vs_dense: f64,
    speedup_batch_1: f64,
    speedup_batch_test: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    dense_accuracy: f64,
    test_samples: usize,
    results: Vec<Row>,
    plot: String,
    model: String,
}

fn speedups(model: &Mlp<f32>, masks: &Masks, x_test: &DMatrix<f32>) -> Result<(f64, f64)> {
    let one = x_test.columns(0, 1).clone_owned();
    let s1 = time_inference(model, &SparseMlp::from_mlp(model, masks, 1)?, &one, 200)?.speedup();
    let sb =
        time_inference(model, &SparseMlp::from_mlp(model, masks, x_test.ncols())?, x_test, 15)?
            .speedup();
    Ok((s1, sb))
}

pub(crate) fn run(args: &DemoArgs) -> Result<()> {
    // A name of another kind may be a file to keep (a README, a model's weights under
    // another name): the two outputs carry their formats' extensions, as every output
    // file of shears does.
    crate::outputs::check_extension(&args.plot, "svg", "the plot")?;
    crate::outputs::check_extension(&args.model, "safetensors", "the trained model")?;
    shears_io::paths::check_distinct(&[
        ("--plot", &args.plot, true),
        ("--model", &args.model, true),
    ])?;
    shears_io::paths::check_output(&args.model)?;
    // The plot's file is made now, so that a --plot that cannot be written fails before
    // the training, and before the model is saved.
    let (plot_pending, mut plot_file) = PendingFile::create(&args.plot)?;
    let data = digits_split()?;
    // Batches of 128 keep the products large enough to run near the machine's speed.
    let train =
        TrainConfig { batch_size: 128, optimizer: Optimizer::adam(2e-3), ..TrainConfig::default() };
    let finetune = TrainConfig { epochs: 2, ..train };
    let dense_config = TrainConfig { epochs: 10, ..train };
    let lottery_epochs = 4;
    let lottery_rounds: u32 = 5;
    let unstructured_runs = 3 * SPARSITIES.len();
    let total_epochs = dense_config.epochs
        + finetune.epochs * (unstructured_runs + SPARSITIES.len() + 1)
        + lottery_epochs * (lottery_rounds as usize + 1);
    let bar = Progress::steps(total_epochs as u64, "epochs", args.quiet || args.json);
    let steps_per_epoch = data.train.len().div_ceil(dense_config.batch_size);

    bar.message("training the dense MLP");
    let mut dense = Mlp::<f32>::new(&SIZES, 0)?;
    train_with(&mut dense, &data.train, &dense_config, &mut Masks::new(), |step, _, _| {
        if step % steps_per_epoch == 0 {
            bar.advance(1);
        }
        Ok(())
    })?;
    let dense_accuracy = dense.accuracy(&data.test)?;
    shears_nn::checkpoint::save(&dense, &Masks::new(), &args.model)?;
    let x_test = data.test.features().clone();
    let mut rows = Vec::new();
    let mut push = |method: &str, target: f64, sparsity: f64, accuracy: f64, speed: (f64, f64)| {
        rows.push(Row {
            method: method.to_owned(),
            target,
            sparsity,
            accuracy,
            delta_vs_dense: accuracy - dense_accuracy,
            speedup_batch_1: speed.0,
            speedup_batch_test: speed.1,
        });
    };

    let hidden_rows = PruningPlan {
        pattern: Pattern::Structured(Structured::new(Axis::Rows)),
        exclude: vec![weight_name(SIZES.len() - 2)],
        ..PruningPlan::new(Criterion::Magnitude)
    };
    let mut methods: Vec<(&str, PruningPlan, Vec<f64>)> = vec![
        ("magnitude", PruningPlan::new(Criterion::Magnitude), SPARSITIES.to_vec()),
        ("gradient", PruningPlan::new(Criterion::Gradient), SPARSITIES.to_vec()),
        ("random", PruningPlan::new(Criterion::Random { seed: 1 }), SPARSITIES.to_vec()),
        ("structured rows", hidden_rows, SPARSITIES.to_vec()),
    ];
    methods.push((
        "2:4",
        PruningPlan {
            pattern: Pattern::NM(NmPattern::TWO_FOUR),
            ..PruningPlan::new(Criterion::Magnitude)
        },
        vec![0.5],
    ));
    for (name, method, targets) in &methods {
        for &target in targets {
            bar.message(format!("{name} at {target}"));
            let outcome = prune_and_finetune(
                &dense,
                &data,
                method,
                &Schedule::one_shot(Sparsity::new(target)?),
                &finetune,
            )?;
            bar.advance(finetune.epochs as u64);
            let round = outcome.rounds[outcome.rounds.len() - 1];
            let speed = speedups(&outcome.model, &outcome.masks, &x_test)?;
            push(name, target, masked_sparsity(&outcome.masks), round.accuracy_finetuned, speed);
        }
    }

    bar.message("lottery ticket rounds");
    let config = LotteryConfig {
        sizes: SIZES.to_vec(),
        rate: 0.4,
        output_rate: 0.2,
        rounds: lottery_rounds,
        train: TrainConfig { epochs: lottery_epochs, ..train },
        rewind_steps: 0,
        seed: 0,
        control: false,
        validation: 288,
        eval_interval: None,
    };
    let lottery = lottery_ticket(&data, &config)?;
    bar.advance((lottery_epochs * (lottery_rounds as usize + 1)) as u64);
    for &target in &SPARSITIES {
        let Some(round) = lottery.iter().min_by(|a, b| {
            (1.0 - a.remaining - target).abs().total_cmp(&(1.0 - b.remaining - target).abs())
        }) else {
            continue;
        };
        let speed = speedups(&dense, &round.masks, &x_test)?;
        push("lottery ticket", target, masked_sparsity(&round.masks), round.accuracy, speed);
    }
    bar.finish();

    let mut series: Vec<Series> = Vec::new();
    for row in &rows {
        match series.iter_mut().find(|s| s.name == row.method) {
            Some(s) => s.points.push((row.sparsity, row.accuracy)),
            None => series.push(Series {
                name: row.method.clone(),
                points: vec![(0.0, dense_accuracy), (row.sparsity, row.accuracy)],
            }),
        }
    }
    let low = rows.iter().map(|r| r.accuracy).fold(dense_accuracy, f64::min);
    let svg = line_chart(
        "shears demo: digits MLP 64-1024-256-10",
        "sparsity",
        "test accuracy",
        (0.0, 1.0),
        ((low - 0.02).max(0.0), 1.0),
        &series,
    );
    std::io::Write::write_all(&mut plot_file, svg.as_bytes())
        .with_context(|| format!("cannot write {}", args.plot.display()))?;
    plot_pending.commit(plot_file)?;
    let plot = display(&args.plot);

    if args.json {
        let model = display(&args.model);
        let report =
            Report { dense_accuracy, test_samples: data.test.len(), results: rows, plot, model };
        print_json(&report)?;
        return Ok(());
    }
    outln!(
        "dense MLP {:?}: test accuracy {:.4} on {} held-out digits",
        SIZES,
        dense_accuracy,
        data.test.len()
    )?;
    let explanation = format!(
        "Each method prunes the trained network to the target and fine-tunes it; the speedups time\n\
         the pruned network in the formats shears-sparse picks against the dense one, on one digit\n\
         at a time (latency) and on all {} test digits in one batch (throughput), medians of\n\
         runs taken in turn, which vary from run to run on a busy machine; under 1.00x the\n\
         picked format is slower than dense at this small size. Lottery tickets prune {:.0}% of\n\
         what remains per round ({:.0}% of the output layer) and rewind to the initial weights;\n\
         each row is the round nearest its target. Gradient scores |w*g| over training batches\n\
         of the trained network: it drops first the weights no digit moves (from pixels that are\n\
         always blank, of neurons that never fire), hence its speedups; past those, the loss's\n\
         gradient at convergence is mostly noise, a poor guide at high sparsity.\n",
        data.test.len(),
        config.rate * 100.0,
        config.output_rate * 100.0
    );
    // Then a blank line before the table.
    for line in explanation.split('\n') {
        outln!("{line}")?;
    }
    let latency = "speedup, 1 digit".to_owned();
    let throughput = format!("speedup, {} digits", data.test.len());
    let header = [
        "method",
        "target",
        "sparsity",
        "accuracy",
        "vs dense",
        latency.as_str(),
        throughput.as_str(),
    ];
    let cells = |r: &Row| {
        vec![
            r.method.clone(),
            format!("{:.2}", r.target),
            format!("{:.3}", r.sparsity),
            format!("{:.4}", r.accuracy),
            format!("{:+.4}", r.delta_vs_dense),
            format!("{:.2}x", r.speedup_batch_1),
            format!("{:.2}x", r.speedup_batch_test),
        ]
    };
    print_table(&header, &rows, cells, None)?;
    outln!("plot: {plot}")?;
    outln!("dense model: {} (try `shears prune` on it)", display(&args.model))?;
    Ok(())
}

fn display(path: &Path) -> String {
    path.canonicalize().unwrap_or_else(|_| path.to_owned()).display().to_string()
}
