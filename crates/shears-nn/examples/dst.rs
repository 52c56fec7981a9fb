//! Sparse training on MNIST, LeNet-300-100: static sparse, SET, RigL and gradual magnitude
//! pruning at 90%, 95% and 98% over several seeds, and the lottery ticket at the rounds
//! closest to those sparsities. Prints one JSON document; `cargo xtask dst` runs it and
//! writes reports.
//!
//! Run with: cargo run --release -p shears-nn --example dst -- MNIST_DIR EPOCHS TRAIN_SAMPLES SEEDS

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "reports on stdout, errors on stderr"
)]

use std::sync::Mutex;
use std::time::Instant;

use shears_core::Sparsity;
use shears_nn::{
    LotteryConfig, Optimizer, SparseComparison, SparseMethod, Split, TrainConfig, load_mnist,
    lottery_ticket, train_to_sparsity,
};

const TARGETS: [f64; 3] = [0.9, 0.95, 0.98];

/// One job: a sparse-training run, or one seed's lottery-ticket rounds.
#[derive(Debug, Clone, Copy)]
enum Job {
    Sparse(SparseMethod, f64, u64),
    Lottery(u64),
}

fn main() -> std::process::ExitCode {
    match run_all() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_all() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, epochs, samples, seeds] = args.as_slice() else {
        return Err("usage: dst MNIST_DIR EPOCHS TRAIN_SAMPLES SEEDS".into());
    };
    let mut data = load_mnist(dir)?;
    data.train = data.train.take(samples.parse()?);
    let seeds: u64 = seeds.parse()?;
    // The lottery-ticket paper's optimizer for LeNet-300-100, the same for every method.
    let train = TrainConfig {
        epochs: epochs.parse()?,
        batch_size: 60,
        optimizer: Optimizer::adam(1.2e-3),
        seed: 0,
        max_steps: None,
    };
    let config = SparseComparison::new(vec![784, 300, 100, 10], train);
    let mut jobs: Vec<Job> = (0..seeds).map(Job::Lottery).collect();
    for &target in &TARGETS {
        for method in SparseMethod::ALL {
            jobs.extend((0..seeds).map(|seed| Job::Sparse(method, target, seed)));
        }
    }
    let start = Instant::now();
    // Runs are independent and each is deterministic: two workers take them in turn,
    // and rows are sorted afterwards, so the output does not depend on the schedule.
    let queue = Mutex::new(jobs.into_iter().enumerate());
    let rows = Mutex::new(Vec::new());
    let failed = Mutex::new(None::<String>);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                // The guard moves into the closure and drops there: runs go unlocked.
                while let Some((index, job)) = queue.lock().ok().and_then(|mut q| q.next()) {
                    match run(&data, &config, job) {
                        Ok(mut out) => {
                            out.iter_mut().for_each(|r| r.0 = index);
                            if let Ok(mut rows) = rows.lock() {
                                rows.extend(out);
                            }
                        }
                        Err(e) => {
                            if let Ok(mut f) = failed.lock() {
                                *f = Some(e.to_string());
                            }
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().ok().flatten() {
        return Err(e.into());
    }
    let mut rows = rows.into_inner().map_err(|_| "a worker panicked")?;
    rows.sort_by_key(|r| r.0);
    let rows: Vec<String> = rows.into_iter().map(|r| r.1).collect();
    println!(
        r#"{{"train_samples":{},"test_samples":{},"epochs":{},"seeds":{},"interval":{},"update_fraction":{},"end_fraction":{},"distribution":"{}","wall_seconds":{:.1},"runs":[{}]}}"#,
        data.train.len(),
        data.test.len(),
        train.epochs,
        seeds,
        config.interval,
        config.update_fraction,
        config.end_fraction,
        config.distribution,
        start.elapsed().as_secs_f64(),
        rows.join(",")
    );
    Ok(())
}

fn row(
    method: &str,
    target: f64,
    sparsity: f64,
    seed: u64,
    accuracy: f64,
    loss: Option<f64>,
) -> String {
    let loss = loss.map_or("null".to_string(), |l| l.to_string());
    format!(
        r#"{{"method":"{method}","target":{target},"sparsity":{sparsity},"seed":{seed},"accuracy":{accuracy},"loss":{loss}}}"#
    )
}

fn run(
    data: &Split,
    config: &SparseComparison,
    job: Job,
) -> Result<Vec<(usize, String)>, Box<dyn std::error::Error + Send + Sync>> {
    match job {
        Job::Sparse(method, target, seed) => {
            let run = train_to_sparsity(data, config, method, Sparsity::new(target)?, seed)?;
            Ok(vec![(
                0,
                row(method.name(), target, run.sparsity, seed, run.accuracy, Some(run.loss)),
            )])
        }
        Job::Lottery(seed) => {
            // 20% of the hidden and 10% of the output weights per round (the paper), until
            // the last target is passed; the rounds closest to each target are reported.
            let lottery = LotteryConfig {
                sizes: config.sizes.clone(),
                rate: 0.2,
                output_rate: 0.1,
                rounds: 18,
                train: TrainConfig { seed, ..config.train },
                rewind_steps: 0,
                seed,
                control: false,
                validation: data.train.len() / 12,
                eval_interval: Some(100),
            };
            let rounds = lottery_ticket(data, &lottery)?;
            let mut out = Vec::new();
            for target in TARGETS {
                let closest = rounds.iter().min_by(|a, b| {
                    (1.0 - a.remaining - target)
                        .abs()
                        .total_cmp(&(1.0 - b.remaining - target).abs())
                });
                if let Some(round) = closest {
                    let sparsity = 1.0 - round.remaining;
                    out.push((
                        0,
                        row(
                            "lottery ticket",
                            target,
                            sparsity,
                            seed,
                            round.early_stop_accuracy,
                            None,
                        ),
                    ));
                }
            }
            Ok(out)
        }
    }
}
