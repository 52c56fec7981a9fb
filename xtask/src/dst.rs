//! `cargo xtask dst`: sparse training on MNIST (LeNet-300-100) — static sparse, SET,
//! RigL, gradual magnitude pruning and the lottery ticket at 90%, 95% and 98% sparsity,
//! with the papers' claims beside what the run shows.
//!
//! The default run (60,000 training images, 5 epochs, 3 seeds) takes about 15 minutes on
//! two cores; `--quick` (6,000 images, 3 epochs) under a minute.

use std::collections::BTreeMap;
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
    /// Epochs per run, the same for every method (default 5; 3 with --quick).
    #[arg(long)]
    pub(crate) epochs: Option<usize>,
    /// Seeds per method and sparsity.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub(crate) seeds: u64,
    /// A reduced run for smoke tests.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Where the reports go (default: target/shears-report).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Run {
    pub(crate) method: String,
    pub(crate) target: f64,
    pub(crate) sparsity: f64,
    pub(crate) seed: u64,
    pub(crate) accuracy: f64,
    /// Mean test cross-entropy (absent for the lottery ticket, reported at early stop).
    #[serde(default)]
    pub(crate) loss: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Report {
    #[serde(default)]
    pub(crate) quick: bool,
    pub(crate) train_samples: usize,
    pub(crate) test_samples: usize,
    pub(crate) epochs: usize,
    pub(crate) seeds: u64,
    pub(crate) interval: usize,
    pub(crate) update_fraction: f64,
    pub(crate) end_fraction: f64,
    pub(crate) distribution: String,
    pub(crate) wall_seconds: f64,
    pub(crate) runs: Vec<Run>,
}

/// The methods in report order.
const METHODS: [&str; 5] = ["static", "SET", "RigL", "gradual magnitude", "lottery ticket"];

pub(crate) fn run(args: &Args) -> Result<()> {
    let out = args.out.clone().unwrap_or_else(|| project_root().join("target/shears-report"));
    let epochs = args.epochs.unwrap_or(if args.quick { 3 } else { 5 });
    let samples = if args.quick { 6_000 } else { 60_000 };
    let mnist = std::path::absolute(&args.mnist)?;
    let mut cmd = cargo();
    cmd.args(["run", "--release", "--quiet", "-p", "shears-nn", "--example", "dst", "--"]);
    cmd.arg(&mnist).arg(epochs.to_string()).arg(samples.to_string()).arg(args.seeds.to_string());
    let json = run_output(cmd, "the sparse-training comparison (release build)")?;
    let mut report: Report =
        serde_json::from_str(&json).context("the experiment printed no valid JSON")?;
    report.quick = args.quick;
    write_report(&out, "dst.json", &serde_json::to_string_pretty(&report)?)?;
    let md = markdown(&report);
    write_report(&out, "dst.md", &md)?;
    write_report(&out, "dst.svg", &plot(&report))?;
    print!("{md}");
    println!("reports in {}", out.display());
    Ok(())
}

/// Mean, lowest and highest accuracy and mean sparsity of one method at one target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Cell {
    /// Mean test loss, where the runs report one.
    pub(crate) loss: Option<f64>,
    pub(crate) mean: f64,
    pub(crate) low: f64,
    pub(crate) high: f64,
    pub(crate) sparsity: f64,
}

/// `(method, target in per mille) -> Cell`.
pub(crate) fn cells(r: &Report) -> BTreeMap<(String, u32), Cell> {
    let mut groups: BTreeMap<(String, u32), Vec<&Run>> = BTreeMap::new();
    for run in &r.runs {
        groups
            .entry((run.method.clone(), (run.target * 1000.0).round() as u32))
            .or_default()
            .push(run);
    }
    groups
        .into_iter()
        .map(|(key, runs)| {
            let n = runs.len() as f64;
            let losses: Option<Vec<f64>> = runs.iter().map(|x| x.loss).collect();
            let cell = Cell {
                loss: losses.map(|l| l.iter().sum::<f64>() / n),
                mean: runs.iter().map(|x| x.accuracy).sum::<f64>() / n,
                low: runs.iter().map(|x| x.accuracy).fold(f64::INFINITY, f64::min),
                high: runs.iter().map(|x| x.accuracy).fold(f64::NEG_INFINITY, f64::max),
                sparsity: runs.iter().map(|x| x.sparsity).sum::<f64>() / n,
            };
            (key, cell)
        })
        .collect()
}

fn targets(r: &Report) -> Vec<u32> {
    let mut t: Vec<u32> = r.runs.iter().map(|x| (x.target * 1000.0).round() as u32).collect();
    t.sort_unstable();
    t.dedup();
    t
}

pub(crate) fn markdown(r: &Report) -> String {
    let cells = cells(r);
    let targets = targets(r);
    let seeds = match r.seeds {
        1 => "1 seed".to_string(),
        n => format!("{n} seeds"),
    };
    let quick = if r.quick {
        "**A `--quick` smoke run: too short to test the papers' claims; the verdicts below only show the report works.**\n\n"
    } else {
        ""
    };
    let mut md = format!(
        "# Sparse training, LeNet-300-100 on MNIST\n\n{quick}{} training and {} test images, {} epochs of Adam (1.2e-3, batch 60) per run, {seeds}. Static, SET and RigL start from a random mask with {} layer densities; SET and RigL move connections every {} steps, a fraction {} decaying on a cosine to zero at {:.0}% of training; gradual magnitude pruning follows Zhu & Gupta's cubic schedule to the same point. The lottery ticket trains one such run per pruning round (20% of each hidden layer's remaining weights per round, 10% of the output layer's, rewound to initialisation) on 11/12 of the training images, and is reported at its round closest to the target (its sparsity in brackets) and at the early-stopping iteration chosen on the other 1/12. Test accuracy, mean and range over seeds. Wall time {:.0} s (the release build not included).\n\n| method |",
        r.train_samples,
        r.test_samples,
        r.epochs,
        match r.distribution.as_str() {
            "er" => "Erdős–Rényi",
            "erk" => "Erdős–Rényi-Kernel",
            other => other,
        },
        r.interval,
        r.update_fraction,
        100.0 * r.end_fraction,
        r.wall_seconds
    );
    for t in &targets {
        let _ = write!(md, " {:.0}% |", *t as f64 / 10.0);
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(targets.len()));
    md.push('\n');
    for method in METHODS {
        let _ = write!(md, "| {method} |");
        for &t in &targets {
            match cells.get(&(method.to_string(), t)) {
                Some(c) => {
                    let note = if method == "lottery ticket" {
                        format!(" ({:.1}%)", 100.0 * c.sparsity)
                    } else {
                        String::new()
                    };
                    if r.seeds > 1 {
                        let _ = write!(md, " {:.4} ({:.4}-{:.4}){note} |", c.mean, c.low, c.high);
                    } else {
                        let _ = write!(md, " {:.4}{note} |", c.mean);
                    }
                }
                None => md.push_str(" - |"),
            }
        }
        md.push('\n');
    }
    md.push_str("\nMean test loss (cross-entropy), which separates methods whose accuracies tie:\n\n| method |");
    for t in &targets {
        let _ = write!(md, " {:.0}% |", *t as f64 / 10.0);
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(targets.len()));
    md.push('\n');
    for method in METHODS.iter().filter(|m| **m != "lottery ticket") {
        let _ = write!(md, "| {method} |");
        for &t in &targets {
            match cells.get(&(method.to_string(), t)).and_then(|c| c.loss) {
                Some(loss) => {
                    let _ = write!(md, " {loss:.4} |");
                }
                None => md.push_str(" - |"),
            }
        }
        md.push('\n');
    }
    md.push_str("\n## Beside the papers\n\n\"Holds\" when every seed of the first method beats every seed of the second; \"within noise\" when the means are in the claimed order but the seeds' ranges overlap (or there is one seed); \"reversed\" when the means are in the other order.\n\n| claim | source | this run |\n|---|---|---|\n");
    for &t in &targets {
        let get = |m: &str| cells.get(&(m.to_string(), t)).copied();
        let percent = t as f64 / 10.0;
        let chain = [get("RigL"), get("SET"), get("static")];
        let order = match chain {
            [Some(rigl), Some(set), Some(fixed)] => {
                let (a, b) = (at_least(rigl, set, r.seeds), at_least(set, fixed, r.seeds));
                Some(if a == Verdict::Reversed || b == Verdict::Reversed {
                    Verdict::Reversed
                } else if a == Verdict::Holds && b == Verdict::Holds {
                    Verdict::Holds
                } else {
                    Verdict::WithinNoise
                })
            }
            _ => None,
        };
        let _ = writeln!(
            md,
            "| at {percent:.0}%: RigL >= SET >= static | Evci et al. 2020 (Figure 2; Table 1 for ResNet-50) | {} |",
            Verdict::text(order)
        );
        let pruning =
            get("gradual magnitude").zip(get("RigL")).map(|(g, rigl)| at_least(g, rigl, r.seeds));
        let _ = writeln!(
            md,
            "| at {percent:.0}%: trained as long, gradual magnitude pruning >= RigL | Evci et al. 2020 (RigL needs about 2x or more the training steps to pass pruning) | {} |",
            Verdict::text(pruning)
        );
    }
    md
}

/// How a claim `a >= b` fares on the seeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Holds,
    WithinNoise,
    Reversed,
}

impl Verdict {
    fn text(v: Option<Verdict>) -> &'static str {
        match v {
            Some(Verdict::Holds) => "holds",
            Some(Verdict::WithinNoise) => "within noise",
            Some(Verdict::Reversed) => "reversed",
            None => "not measured",
        }
    }
}

/// `a >= b` on every seed (holds), on the means only (within noise), or not (reversed).
pub(crate) fn at_least(a: Cell, b: Cell, seeds: u64) -> Verdict {
    if a.mean < b.mean {
        Verdict::Reversed
    } else if seeds > 1 && a.low > b.high {
        Verdict::Holds
    } else {
        Verdict::WithinNoise
    }
}

pub(crate) fn plot(r: &Report) -> String {
    let cells = cells(r);
    let series: Vec<Series> = METHODS
        .iter()
        .map(|m| Series {
            name: (*m).to_string(),
            points: cells
                .iter()
                .filter(|((method, _), _)| method == m)
                .map(|(_, c)| (c.sparsity, c.mean))
                .collect(),
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    let low = cells.values().map(|c| c.mean).fold(1.0, f64::min);
    line_chart(
        "Sparse training, LeNet-300-100 on MNIST",
        "sparsity",
        "test accuracy",
        (0.85, 1.0),
        ((low - 0.01).max(0.0), 1.0),
        &series,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let run = |method: &str, target: f64, seed: u64, accuracy: f64| Run {
            method: method.into(),
            target,
            sparsity: target,
            seed,
            accuracy,
            loss: Some(0.5),
        };
        Report {
            quick: false,
            train_samples: 100,
            test_samples: 10,
            epochs: 1,
            seeds: 2,
            interval: 100,
            update_fraction: 0.3,
            end_fraction: 0.75,
            distribution: "er".into(),
            wall_seconds: 1.0,
            runs: vec![
                run("static", 0.95, 0, 0.90),
                run("static", 0.95, 1, 0.92),
                run("SET", 0.95, 0, 0.93),
                run("SET", 0.95, 1, 0.95),
                run("RigL", 0.95, 0, 0.96),
                run("RigL", 0.95, 1, 0.94),
                run("gradual magnitude", 0.95, 0, 0.97),
                run("gradual magnitude", 0.95, 1, 0.97),
            ],
        }
    }

    #[test]
    fn report_writers() {
        let md = markdown(&report());
        assert!(md.contains("| static | 0.9100 (0.9000-0.9200) |"), "{md}");
        assert!(md.contains("| RigL | 0.9500 (0.9400-0.9600) |"), "{md}");
        assert!(md.contains("| lottery ticket | - |"), "{md}");
        assert!(md.contains("| RigL | 0.5000 |"), "{md}");
        // RigL's range (0.94-0.96) overlaps SET's (0.93-0.95): in order, within noise.
        assert!(md.contains("| at 95%: RigL >= SET >= static | Evci et al. 2020 (Figure 2; Table 1 for ResNet-50) | within noise |"), "{md}");
        assert!(md.contains("gradual magnitude pruning >= RigL | Evci et al. 2020 (RigL needs about 2x or more the training steps to pass pruning) | holds |"), "{md}");
        assert!(md.contains("3 seeds") || md.contains("2 seeds"), "{md}");
        let cell = |mean, low, high| Cell { loss: None, mean, low, high, sparsity: 0.9 };
        assert_eq!(at_least(cell(0.9, 0.89, 0.91), cell(0.8, 0.79, 0.81), 3), Verdict::Holds);
        assert_eq!(at_least(cell(0.9, 0.89, 0.91), cell(0.8, 0.79, 0.81), 1), Verdict::WithinNoise);
        assert_eq!(at_least(cell(0.8, 0.79, 0.81), cell(0.9, 0.89, 0.91), 3), Verdict::Reversed);
        assert_eq!(plot(&report()).matches("<polyline").count(), 4);
        let json = serde_json::to_string(&report()).unwrap();
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report());
    }
}
