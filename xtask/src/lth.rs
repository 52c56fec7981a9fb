//! `cargo xtask lth`: the LeNet-300-100 lottery-ticket replication on MNIST.
//!
//! The default run is the paper's setting (12 rounds, 10 epochs per run, 55,000 training
//! and 5,000 validation images, ticket and control) and takes tens of minutes on two
//! cores; `--quick` (3 rounds, 2 epochs, 6,000 images) about a minute. `--rewind K`
//! rewinds to the parameters after K iterations instead of initialisation.

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
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=40))]
    pub(crate) rounds: Option<u32>,
    /// A reduced run for smoke tests.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Rewind to the parameters after this many training iterations (0: initialisation).
    #[arg(long, default_value_t = 0)]
    pub(crate) rewind: usize,
    /// Where the reports go (default: target/shears-report).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Round {
    pub(crate) round: u32,
    pub(crate) remaining: f64,
    pub(crate) accuracy: f64,
    pub(crate) early_stop_iteration: usize,
    pub(crate) early_stop_accuracy: f64,
    pub(crate) control_accuracy: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Report {
    #[serde(default)]
    pub(crate) quick: bool,
    pub(crate) train_samples: usize,
    pub(crate) validation_samples: usize,
    pub(crate) test_samples: usize,
    pub(crate) epochs: usize,
    pub(crate) rewind_steps: usize,
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
    cmd.arg(args.rewind.to_string());
    let json = run_output(cmd, "the lottery-ticket experiment (release build)")?;
    let mut report: Report =
        serde_json::from_str(&json).context("the experiment printed no valid JSON")?;
    report.quick = args.quick;
    write_report(&out, "lth.json", &serde_json::to_string_pretty(&report)?)?;
    let md = markdown(&report);
    write_report(&out, "lth.md", &md)?;
    write_report(&out, "lth.svg", &plot(&report))?;
    print!("{md}");
    println!("reports in {}", out.display());
    Ok(())
}

/// The lowest fraction remaining down to which every pruned round's accuracy (at its
/// early-stopping iteration) is at least the dense network's, if the first round is.
pub(crate) fn tickets_hold_down_to(r: &Report) -> Option<f64> {
    let dense = r.rounds.first()?.early_stop_accuracy;
    r.rounds[1..].iter().take_while(|x| x.early_stop_accuracy >= dense).map(|x| x.remaining).last()
}

/// The highest fraction remaining at which the random re-initialisation is below the dense
/// network.
pub(crate) fn control_falls_below_at(r: &Report) -> Option<f64> {
    let dense = r.rounds.first()?.early_stop_accuracy;
    r.rounds.iter().find(|x| x.control_accuracy.is_some_and(|a| a < dense)).map(|x| x.remaining)
}

pub(crate) fn markdown(r: &Report) -> String {
    let rewind = match r.rewind_steps {
        0 => "initialisation".to_string(),
        k => format!("iteration {k}"),
    };
    let quick = if r.quick {
        "**A `--quick` smoke run: too short to test the paper's claims; it only shows the report works.**\n\n"
    } else {
        ""
    };
    let mut md = format!(
        "# Lottery ticket, LeNet-300-100 on MNIST\n\n{quick}{} training, {} validation (held out of the training set) and {} test images, {} epochs per run, Adam 1.2e-3, batch 60; per round 20% of hidden and 10% of output weights pruned, every parameter (weights and biases) rewound to {rewind} (a ticket then trains the rest of the run, so every network trains as many iterations; iterations count from initialisation). Accuracies are test accuracy at the early-stopping iteration, the one of lowest validation loss (evaluated every 100 iterations and at the end). Wall time {:.0} s.\n\n| round | weights remaining | accuracy (early stop) | early-stop iteration | accuracy (end) | random re-init (early stop) |\n|---|---|---|---|---|---|\n",
        r.train_samples, r.validation_samples, r.test_samples, r.epochs, r.wall_seconds
    );
    for x in &r.rounds {
        let control = x.control_accuracy.map_or_else(|| "-".to_string(), |a| format!("{a:.4}"));
        let _ = writeln!(
            md,
            "| {} | {:.1}% | {:.4} | {} | {:.4} | {} |",
            x.round,
            100.0 * x.remaining,
            x.early_stop_accuracy,
            x.early_stop_iteration,
            x.accuracy,
            control
        );
    }
    let percent = |v: Option<f64>, none: &str| {
        v.map_or_else(|| none.to_string(), |v| format!("{:.1}%", 100.0 * v))
    };
    let lowest = r.rounds.last().map(|x| x.remaining);
    let _ = write!(
        md,
        "\n## Beside the paper\n\n| | Frankle & Carbin 2019 (§2, Figures 3-4) | this run |\n|---|---|---|\n| winning tickets at least as accurate as the dense network down to | 3.6% of the weights (\"when Pm = 3.6%, a winning ticket regresses to the performance of the original network\") | {} |\n| random re-initialisation below the dense network from | \"after little pruning\" (it learns more slowly and loses accuracy as weights go) | {} |\n\nThe run stops at {} remaining; if tickets still beat the dense network there, they may hold further down than the run shows.\n",
        percent(tickets_hold_down_to(r), "not at the first pruned round"),
        percent(control_falls_below_at(r), "not within the rounds run"),
        percent(lowest, "-"),
    );
    md
}

pub(crate) fn plot(r: &Report) -> String {
    let ticket = Series {
        name: "winning ticket".into(),
        points: r.rounds.iter().map(|x| (x.remaining, x.early_stop_accuracy)).collect(),
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
        .flat_map(|x| [Some(x.early_stop_accuracy), x.control_accuracy])
        .flatten()
        .fold(1.0, f64::min);
    line_chart(
        "Lottery ticket, LeNet-300-100 on MNIST",
        "fraction of weights remaining",
        "test accuracy (early stop)",
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
            quick: false,
            train_samples: 100,
            validation_samples: 10,
            test_samples: 10,
            epochs: 1,
            rewind_steps: 0,
            wall_seconds: 1.0,
            rounds: vec![
                Round {
                    round: 0,
                    remaining: 1.0,
                    accuracy: 0.97,
                    early_stop_iteration: 100,
                    early_stop_accuracy: 0.97,
                    control_accuracy: None,
                },
                Round {
                    round: 1,
                    remaining: 0.8,
                    accuracy: 0.975,
                    early_stop_iteration: 100,
                    early_stop_accuracy: 0.975,
                    control_accuracy: Some(0.96),
                },
            ],
        }
    }

    #[test]
    fn report_writers() {
        let md = markdown(&report());
        assert!(md.contains("| 1 | 80.0% | 0.9750 | 100 | 0.9750 | 0.9600 |"), "{md}");
        assert!(md.contains("| 0 | 100.0% | 0.9700 | 100 | 0.9700 | - |"));
        assert!(md.contains("down to | 3.6% of the weights"), "{md}");
        assert!(md.contains("| 80.0% |\n| random"), "{md}");
        assert!(md.contains("from | \"after little pruning\" (it learns more slowly and loses accuracy as weights go) | 80.0% |"), "{md}");
        assert_eq!(tickets_hold_down_to(&report()), Some(0.8));
        assert_eq!(control_falls_below_at(&report()), Some(0.8));
        let svg = plot(&report());
        assert_eq!(svg.matches("<polyline").count(), 2);
        let json = serde_json::to_string(&report()).unwrap();
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report());
    }
}
