//! The LeNet-300-100 lottery-ticket replication on MNIST (Frankle & Carbin 2019, fig. 3):
//! prints one JSON document with every round's test accuracy at the early-stopping
//! iteration chosen on 5,000 held-out training images, and the random re-initialisation
//! control. `cargo xtask lth` runs it and writes reports.
//!
//! Run with: cargo run --release -p shears-nn --example lth -- MNIST_DIR ROUNDS EPOCHS TRAIN_SAMPLES REWIND_STEPS

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "reports on stdout, errors on stderr"
)]

use std::time::Instant;

use shears_nn::{LotteryConfig, Optimizer, TrainConfig, load_mnist, lottery_ticket};

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, rounds, epochs, samples, rewind] = args.as_slice() else {
        return Err("usage: lth MNIST_DIR ROUNDS EPOCHS TRAIN_SAMPLES REWIND_STEPS".into());
    };
    let mut data = load_mnist(dir)?;
    data.train = data.train.take(samples.parse()?);
    // The paper holds out 5,000 of 60,000 training images; a reduced run holds out the
    // same twelfth.
    let validation = data.train.len() / 12;
    let config = LotteryConfig {
        sizes: vec![784, 300, 100, 10],
        rate: 0.2,
        output_rate: 0.1,
        rounds: rounds.parse()?,
        // The paper: Adam, learning rate 1.2e-3, batches of 60, evaluated every 100
        // iterations.
        train: TrainConfig {
            epochs: epochs.parse()?,
            batch_size: 60,
            optimizer: Optimizer::adam(1.2e-3),
            seed: 0,
            max_steps: None,
        },
        rewind_steps: rewind.parse()?,
        seed: 0,
        control: true,
        validation,
        eval_interval: Some(100),
    };
    let start = Instant::now();
    let rounds = lottery_ticket(&data, &config)?;
    let rows: Vec<String> = rounds
        .iter()
        .map(|r| {
            format!(
                r#"{{"round":{},"remaining":{},"accuracy":{},"early_stop_iteration":{},"early_stop_accuracy":{},"control_accuracy":{}}}"#,
                r.round,
                r.remaining,
                r.accuracy,
                r.early_stop_iteration,
                r.early_stop_accuracy,
                r.control_accuracy.map_or("null".to_string(), |a| a.to_string())
            )
        })
        .collect();
    println!(
        r#"{{"train_samples":{},"validation_samples":{},"test_samples":{},"epochs":{},"rewind_steps":{},"wall_seconds":{:.1},"rounds":[{}]}}"#,
        data.train.len() - validation,
        validation,
        data.test.len(),
        config.train.epochs,
        config.rewind_steps,
        start.elapsed().as_secs_f64(),
        rows.join(",")
    );
    Ok(())
}
