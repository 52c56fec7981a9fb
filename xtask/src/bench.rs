//! `cargo xtask bench`: runs the sweep binary in release and writes its reports.

use std::fmt::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{cargo, project_root, run_output, write_report};
use shears_io::chart::{Series, line_chart};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// A reduced grid (4096x4096 at 50% and 90%, 2:4, 50% rows; batch 1 and 32) in well
    /// under a minute.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Where the reports go.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

/// One cell of `bench.json` (the sweep's field names; tools read them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Cell {
    pub(crate) kernel: String,
    pub(crate) format: String,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) sparsity: f64,
    pub(crate) batch: usize,
    pub(crate) median_ns: f64,
    pub(crate) speedup_vs_dense: f64,
    pub(crate) threads: usize,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    let out = args.out.clone().unwrap_or_else(|| project_root().join("target/shears-report"));
    let mut cmd = cargo();
    cmd.args(["run", "--release", "--quiet", "-p", "shears-benches", "--bin", "sweep", "--"]);
    if args.quick {
        cmd.arg("--quick");
    }
    let json = run_output(cmd, "the speedup sweep (release build)")?;
    let cells: Vec<Cell> =
        serde_json::from_str(&json).context("the sweep printed no valid JSON")?;
    write_report(&out, "bench.json", &serde_json::to_string_pretty(&cells)?)?;
    let mut md = markdown(&cells);
    if let Some(note) = idle_note(std::fs::read_to_string(GUEST_HALT_POLL).ok().as_deref()) {
        md.push_str(&note);
    }
    write_report(&out, "bench.md", &md)?;
    write_report(&out, "speedup.svg", &plot(&cells))?;
    print!("{md}");
    println!("reports in {}", out.display());
    Ok(())
}

/// Where a Linux guest with the `haltpoll` idle driver says how long an idle vCPU polls
/// before it halts.
const GUEST_HALT_POLL: &str = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";

/// A note for the report when idle vCPUs halt at once (`guest_halt_poll_ns` of 0, as on
/// the VM shears is measured on): waking a halted vCPU then takes tens of microseconds,
/// which every multi-threaded product pays when rayon's workers have gone to sleep.
fn idle_note(guest_halt_poll_ns: Option<&str>) -> Option<String> {
    (guest_halt_poll_ns?.trim() == "0").then(|| {
        format!(
            "\nThis machine's idle vCPUs halt without polling (`{GUEST_HALT_POLL}` is 0), so \
             waking a sleeping rayon worker costs tens of microseconds; the 2-thread \
             figures pay it (see the README's Speed section).\n"
        )
    })
}

/// The tables: one per shape and batch, each format's median and speedup over dense.
pub(crate) fn markdown(cells: &[Cell]) -> String {
    let mut md = String::from(
        "# shears speedup sweep\n\nMedians; speedup = nalgebra dense time / format time, measured in the same run.\n",
    );
    let threads = cells.first().map_or(1, |c| c.threads);
    let _ = writeln!(md, "Threads: {threads}.");
    let mut groups: Vec<(String, usize, usize, usize)> = Vec::new();
    for c in cells {
        let key = (c.kernel.clone(), c.rows, c.cols, c.batch);
        if !groups.contains(&key) {
            groups.push(key);
        }
    }
    for (kernel, rows, cols, batch) in groups {
        if kernel.starts_with("threads-") {
            let _ = writeln!(
                md,
                "\n## {kernel}: 2 threads against 1, {rows}x{cols}, batch {batch}\n\nEach median on its own rayon pool, calls back to back.\n\n| format | sparsity | 2-thread median ms | speedup over 1 thread |\n|---|---|---|---|"
            );
        } else if kernel == "mask" {
            let _ = writeln!(
                md,
                "\n## mask creation, {rows}x{cols} (speedup against a full sort)\n\n| method | sparsity | median ms | speedup |\n|---|---|---|---|"
            );
        } else {
            let _ = writeln!(
                md,
                "\n## {kernel}, {rows}x{cols}, batch {batch}\n\n| format | sparsity | median ms | speedup vs dense |\n|---|---|---|---|"
            );
        }
        for c in cells
            .iter()
            .filter(|c| c.kernel == kernel && c.rows == rows && c.cols == cols && c.batch == batch)
        {
            let _ = writeln!(
                md,
                "| {} | {:.2} | {:.3} | {:.2}x |",
                c.format,
                c.sparsity,
                c.median_ns / 1e6,
                c.speedup_vs_dense
            );
        }
    }
    md
}

/// Speedup of CSR against sparsity on the largest shape, one line per batch size, with
/// the dense line at 1x.
pub(crate) fn plot(cells: &[Cell]) -> String {
    let csr = || cells.iter().filter(|c| c.format == "csr" && !c.kernel.starts_with("threads-"));
    let largest = csr().map(|c| (c.rows * c.cols, c.rows, c.cols)).max();
    let Some((_, rows, cols)) = largest else {
        return line_chart("no CSR cells", "sparsity", "speedup", (0.0, 1.0), (0.0, 1.0), &[]);
    };
    let mut batches: Vec<usize> = csr().map(|c| c.batch).collect();
    batches.sort_unstable();
    batches.dedup();
    let mut series: Vec<Series> = batches
        .iter()
        .map(|&b| Series {
            name: format!("csr, batch {b}"),
            points: csr()
                .filter(|c| c.batch == b && c.rows == rows && c.cols == cols)
                .map(|c| (c.sparsity, c.speedup_vs_dense))
                .collect(),
        })
        .collect();
    series.push(Series { name: "dense".into(), points: vec![(0.0, 1.0), (1.0, 1.0)] });
    let top = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(1.0, f64::max);
    line_chart(
        &format!("CSR speedup over nalgebra dense, {rows}x{cols} f32"),
        "sparsity",
        "speedup (x)",
        (0.0, 1.0),
        (0.0, top * 1.1),
        &series,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(format: &str, sparsity: f64, batch: usize, speedup: f64) -> Cell {
        Cell {
            kernel: "spmv".into(),
            format: format.into(),
            rows: 8,
            cols: 8,
            sparsity,
            batch,
            median_ns: 1e6 / speedup,
            speedup_vs_dense: speedup,
            threads: 1,
        }
    }

    #[test]
    fn markdown_has_one_table_per_group() {
        let cells =
            vec![cell("dense", 0.0, 1, 1.0), cell("csr", 0.9, 1, 7.5), cell("csr", 0.9, 32, 3.0)];
        let md = markdown(&cells);
        assert_eq!(md.matches("\n## ").count(), 2);
        assert!(md.contains("| csr | 0.90 | 0.133 | 7.50x |"), "{md}");
    }

    #[test]
    fn the_idle_note_appears_only_when_vcpus_halt_without_polling() {
        assert!(idle_note(Some("0\n")).is_some_and(|n| n.contains("halt without polling")));
        assert_eq!(idle_note(Some("200000\n")), None);
        assert_eq!(idle_note(None), None);
    }

    #[test]
    fn cells_round_trip_with_stable_names() {
        let json = serde_json::to_string(&cell("csr", 0.5, 1, 2.0)).unwrap();
        for key in [
            "kernel",
            "format",
            "rows",
            "cols",
            "sparsity",
            "batch",
            "median_ns",
            "speedup_vs_dense",
            "threads",
        ] {
            assert!(json.contains(&format!("\"{key}\"")), "{key}");
        }
        assert_eq!(serde_json::from_str::<Cell>(&json).unwrap(), cell("csr", 0.5, 1, 2.0));
    }

    #[test]
    fn plot_draws_a_line_per_batch() {
        let svg =
            plot(&[cell("csr", 0.5, 1, 1.2), cell("csr", 0.9, 1, 6.0), cell("csr", 0.9, 32, 3.0)]);
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<polyline").count(), 3);
    }
}
