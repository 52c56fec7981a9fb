//! `cargo xtask lth`: the LeNet-300-100 lottery-ticket replication on MNIST.
//!
//! Wall time on the 2-core reference machine: the default run (12 rounds, 10 epochs per
//! run, full 60,000 training images, ticket and control) takes tens of minutes; `--quick`
//! (3 rounds, 2 epochs, 6,000 images) under a minute.

use std::fmt::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{cargo, project_root, run_output, write_report};
use shears_io::chart::{Series, line_chart};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The directory holding the four MNIST IDX files (optionally .gz).
    #[arg(long)]
    pub(crate) mnist: PathBuf,
    /// Pruning rounds (default 12; 3 with --quick).
    #[arg(long)]
    pub(crate) rounds: Option<u32>,
    /// A reduced run for smoke tests.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Where the reports go.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Round {
    pub(crate) round: u32,
    pub(crate) remaining: f64,
    pub(crate) accuracy: f64,
    pub(crate) early_stop_epoch: usize,
    pub(crate) early_stop_accuracy: f64,
    pub(crate) control_accuracy: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Report {
    pub(crate) train_samples: usize,
    pub(crate) test_samples: usize,
    pub(crate) epochs: usize,
    pub(crate) wall_seconds: f64,
    pub(crate) rounds: Vec<Round>,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    let out = args.out.clone().unwrap_or_else(|| project_root().join("target/shears-report"));
    let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 12 });
    let (epochs, samples) = if args.quick { (2, 6_000) } else { (10, 60_000) };
    let mnist = std::path::absolute(&args.mnist)?;
    let mut cmd = cargo();
    cmd.args(["run", "--release", "--quiet", "-p", "shears-nn", "--example", "lth", "--"]);
    cmd.arg(&mnist).arg(rounds.to_string()).arg(epochs.to_string()).arg(samples.to_string());
    let json = run_output(cmd, "the lottery-ticket experiment (release build)")?;
    let report: Report =
        serde_json::from_str(&json).context("the experiment printed no valid JSON")?;
    write_report(&out, "lth.json", &serde_json::to_string_pretty(&report)?)?;
    let md = markdown(&report);
    write_report(&out, "lth.md", &md)?;
    write_report(&out, "lth.svg", &plot(&report))?;
    print!("{md}");
    println!("reports in {}", out.display());
    Ok(())
}

pub(crate) fn markdown(r: &Report) -> String {
    let mut md = format!(
        "# Lottery ticket, LeNet-300-100 on MNIST\n\n{} training and {} test images, {} epochs per run, Adam 1.2e-3, batch 60; per round 20% of hidden and 10% of output weights pruned, kept weights rewound to initialisation. Wall time {:.0} s.\n\n| round | weights remaining | accuracy (end) | early-stop epoch | accuracy (early stop) | random re-init |\n|---|---|---|---|---|---|\n",
        r.train_samples, r.test_samples, r.epochs, r.wall_seconds
    );
    for x in &r.rounds {
        let control = x.control_accuracy.map_or_else(|| "-".to_string(), |a| format!("{a:.4}"));
        let _ = writeln!(
            md,
            "| {} | {:.1}% | {:.4} | {} | {:.4} | {} |",
            x.round,
            100.0 * x.remaining,
            x.accuracy,
            x.early_stop_epoch,
            x.early_stop_accuracy,
            control
        );
    }
    md
}

pub(crate) fn plot(r: &Report) -> String {
    let ticket = Series {
        name: "winning ticket".into(),
        points: r.rounds.iter().map(|x| (x.remaining, x.accuracy)).collect(),
    };
    let control = Series {
        name: "random re-init".into(),
        points: r
            .rounds
            .iter()
            .filter_map(|x| x.control_accuracy.map(|a| (x.remaining, a)))
            .collect(),
    };
    let low = r
        .rounds
        .iter()
        .flat_map(|x| [Some(x.accuracy), x.control_accuracy])
        .flatten()
        .fold(1.0, f64::min);
    line_chart(
        "Lottery ticket, LeNet-300-100 on MNIST",
        "fraction of weights remaining",
        "test accuracy",
        (0.0, 1.0),
        ((low - 0.01).max(0.0), 1.0),
        &[ticket, control],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            train_samples: 100,
            test_samples: 10,
            epochs: 1,
            wall_seconds: 1.0,
            rounds: vec![
                Round {
                    round: 0,
                    remaining: 1.0,
                    accuracy: 0.97,
                    early_stop_epoch: 1,
                    early_stop_accuracy: 0.97,
                    control_accuracy: None,
                },
                Round {
                    round: 1,
                    remaining: 0.8,
                    accuracy: 0.975,
                    early_stop_epoch: 1,
                    early_stop_accuracy: 0.975,
                    control_accuracy: Some(0.96),
                },
            ],
        }
    }

    #[test]
    fn report_writers() {
        let md = markdown(&report());
        assert!(md.contains("| 1 | 80.0% | 0.9750 | 1 | 0.9750 | 0.9600 |"), "{md}");
        assert!(md.contains("| 0 | 100.0% | 0.9700 | 1 | 0.9700 | - |"));
        let svg = plot(&report());
        assert_eq!(svg.matches("<polyline").count(), 2);
        let json = serde_json::to_string(&report()).unwrap();
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report());
    }
}
