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
    /// under a minute per thread count.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Where the reports go.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Also rewrite the README's speed table and this machine's section of
    /// docs/performance.md from the results.
    #[arg(long)]
    pub(crate) update_docs: bool,
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

/// What one run of the sweep binary prints.
#[derive(Debug, Deserialize)]
struct Sweep {
    kernel_path: String,
    threads: usize,
    cells: Vec<Cell>,
    crossovers: Crossovers,
}

/// `choose_format`'s crossovers on one thread count, measured by the sweep beside the
/// fixed ones: `(batch, sparsity)` steps from which CSR (sliced ELLPACK at batch 1)
/// beats dense (a sparsity above 1: never) for batches up to `batch`, and the largest
/// batch at which 2:4 beats dense.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Crossovers {
    #[serde(default)]
    pub(crate) threads: usize,
    pub(crate) measured_csr: Vec<(usize, f64)>,
    pub(crate) measured_nm_max_batch: usize,
    pub(crate) fixed_csr: Vec<(usize, f64)>,
    pub(crate) fixed_nm_max_batch: usize,
    /// The side of the square matrix they were measured on.
    pub(crate) side: usize,
    pub(crate) seconds: f64,
}

/// The machine a report was measured on, so reports from several machines can sit side
/// by side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Machine {
    pub(crate) cpu_model: String,
    pub(crate) cpu_vendor: String,
    /// `family F model M` from `/proc/cpuinfo` (x86), which tells apart the generations
    /// that share a model name (AMD's Zen 3 and Zen 4 are both "AMD EPYC" in a VM); empty
    /// where the CPU reports none, and in reports written before it was recorded.
    #[serde(default)]
    pub(crate) cpu_generation: String,
    pub(crate) logical_cpus: usize,
    pub(crate) arch: String,
    pub(crate) kernel_path: String,
}

impl Machine {
    /// This machine, from `/proc/cpuinfo` where there is one.
    fn here(kernel_path: String) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |key: &str| {
            cpuinfo
                .lines()
                .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_else(|| "unknown".to_owned())
        };
        let generation = match (field("cpu family"), field("model")) {
            (family, model) if family != "unknown" && model != "unknown" => {
                format!("family {family} model {model}")
            }
            _ => String::new(),
        };
        Machine {
            cpu_model: field("model name"),
            cpu_vendor: field("vendor_id"),
            cpu_generation: generation,
            logical_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            arch: std::env::consts::ARCH.to_owned(),
            kernel_path,
        }
    }

    /// The CPU's name and, where known, its generation: what tells one machine's section
    /// of docs/performance.md from another's.
    fn name(&self) -> String {
        if self.cpu_generation.is_empty() {
            self.cpu_model.clone()
        } else {
            format!("{} ({})", self.cpu_model, self.cpu_generation)
        }
    }

    fn describe(&self) -> String {
        let generation = if self.cpu_generation.is_empty() {
            String::new()
        } else {
            format!(", {}", self.cpu_generation)
        };
        format!(
            "{} ({}{generation}, {} logical CPUs, {}, `{}` kernels)",
            self.cpu_model, self.cpu_vendor, self.logical_cpus, self.arch, self.kernel_path
        )
    }
}

/// `bench.json`: the machine, the command, and every cell.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Report {
    pub(crate) machine: Machine,
    pub(crate) command: String,
    pub(crate) cells: Vec<Cell>,
    /// One per thread count.
    #[serde(default)]
    pub(crate) crossovers: Vec<Crossovers>,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    let out = args.out.clone().unwrap_or_else(|| project_root().join("target/shears-report"));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut thread_counts = vec![1];
    if cpus > 1 {
        thread_counts.push(cpus);
    }
    let (mut cells, mut kernel_path, mut crossovers) = (Vec::new(), String::new(), Vec::new());
    for threads in thread_counts {
        let mut cmd = cargo();
        cmd.args(["run", "--release", "--quiet", "-p", "shears-benches", "--bin", "sweep", "--"]);
        if args.quick {
            cmd.arg("--quick");
        }
        cmd.env("RAYON_NUM_THREADS", threads.to_string());
        let json = run_output(cmd, &format!("the speedup sweep on {threads} thread(s)"))?;
        let sweep: Sweep =
            serde_json::from_str(&json).context("the sweep printed no valid JSON")?;
        kernel_path = sweep.kernel_path;
        cells.extend(sweep.cells);
        crossovers.push(Crossovers { threads: sweep.threads, ..sweep.crossovers });
    }
    let command = format!("cargo xtask bench{}", if args.quick { " --quick" } else { "" });
    let report = Report { machine: Machine::here(kernel_path), command, cells, crossovers };
    write_report(&out, "bench.json", &serde_json::to_string_pretty(&report)?)?;
    let mut md = markdown(&report);
    if let Some(note) = idle_note(std::fs::read_to_string(GUEST_HALT_POLL).ok().as_deref()) {
        md.push_str(&note);
    }
    write_report(&out, "bench.md", &md)?;
    write_report(&out, "speedup.svg", &plot(&report.cells))?;
    if args.update_docs {
        update_docs(&report, &md)?;
    }
    print!("{md}");
    println!("reports in {}", out.display());
    Ok(())
}

/// Where the README's speed table starts and ends.
const README_BEGIN: &str = "<!-- speed table: cargo xtask bench --update-docs -->";
const README_END: &str = "<!-- end of speed table -->";

/// Rewrites the README's speed table and this machine's section of docs/performance.md.
fn update_docs(report: &Report, md: &str) -> Result<()> {
    let root = project_root();
    let readme_path = root.join("README.md");
    let readme = std::fs::read_to_string(&readme_path).context("cannot read README.md")?;
    let table = format!(
        "{README_BEGIN}\n{}\nMeasured on {} with `{}`; the full tables and the method are in \
         [docs/performance.md](docs/performance.md).\n{README_END}",
        summary_table(&report.cells),
        report.machine.describe(),
        report.command
    );
    let readme = replace_between(&readme, README_BEGIN, README_END, &table)
        .context("README.md has no speed-table markers")?;
    shears_io::write_atomic(&readme_path, readme.as_bytes())?;
    let perf_path = root.join("docs/performance.md");
    let perf = std::fs::read_to_string(&perf_path).context("cannot read docs/performance.md")?;
    let name = report.machine.name();
    let (begin, end) =
        (format!("<!-- machine: {name} -->"), format!("<!-- end of machine: {name} -->"));
    let body = md.trim_start_matches("# shears speedup sweep").trim();
    let section = format!(
        "{begin}\n## {name}\n\nCommand: `{}`.\n\n{}\n\n{body}\n{end}",
        report.command,
        summary_table(&report.cells)
    );
    let perf = replace_between(&perf, &begin, &end, &section)
        .unwrap_or_else(|| format!("{}\n\n{section}\n", perf.trim_end()));
    shears_io::write_atomic(&perf_path, perf.as_bytes())?;
    eprintln!("xtask: updated README.md and docs/performance.md");
    Ok(())
}

/// `text` with everything from `begin` through `end` (both included) replaced by
/// `with`; `None` if the markers are missing.
fn replace_between(text: &str, begin: &str, end: &str, with: &str) -> Option<String> {
    let start = text.find(begin)?;
    let stop = text[start..].find(end)? + start + end.len();
    Some(format!("{}{with}{}", &text[..start], &text[stop..]))
}

/// The README's table: speedups over nalgebra dense on the largest square shape, for the
/// formats users meet, at batch 1 and the largest batch up to 32, on each thread count.
pub(crate) fn summary_table(cells: &[Cell]) -> String {
    let products = || cells.iter().filter(|c| c.kernel == "spmv" || c.kernel == "spmm");
    let Some(size) = products().filter(|c| c.rows == c.cols).map(|c| c.rows).max() else {
        return "(no square shape measured)".to_owned();
    };
    let batch_big = products().map(|c| c.batch).filter(|&b| b > 1 && b <= 32).max().unwrap_or(1);
    let mut threads: Vec<usize> = products().map(|c| c.threads).collect();
    threads.sort_unstable();
    threads.dedup();
    let columns: Vec<(usize, usize)> =
        [1, batch_big].iter().flat_map(|&b| threads.iter().map(move |&t| (b, t))).collect();
    let mut md = format!(
        "Speedup over nalgebra's dense product (one thread), {size}x{size} f32:\n\n| format |"
    );
    for (b, t) in &columns {
        let _ = write!(md, " batch {b}, {t} thread{} |", if *t == 1 { "" } else { "s" });
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(columns.len()));
    let rows: [(&str, &str, f64); 8] = [
        ("sliced ELLPACK, 90%", "sell", 0.9),
        ("CSR, 90%", "csr", 0.9),
        ("sprs CSR, 90%", "sprs-csr", 0.9),
        ("CSR, 50%", "csr", 0.5),
        ("2:4", "nm", 0.5),
        ("2:4, bf16 values", "nm-bf16", 0.5),
        ("compacted, 50% of rows", "compact", 0.5),
        ("dense int8 (integer products)", "dense-int8", 0.0),
    ];
    for (label, format, sparsity) in rows {
        let _ = write!(md, "\n| {label} |");
        for &(b, t) in &columns {
            let cell = products().find(|c| {
                c.format == format
                    && c.rows == size
                    && c.cols == size
                    && c.batch == b
                    && c.threads == t
                    && (c.sparsity - sparsity).abs() < 1e-9
            });
            match cell {
                Some(c) => {
                    let _ = write!(md, " {:.2}x |", c.speedup_vs_dense);
                }
                None => md.push_str(" - |"),
            }
        }
    }
    md.push('\n');
    md
}

/// Where a Linux guest with the `haltpoll` idle driver says how long an idle vCPU polls
/// before it halts.
const GUEST_HALT_POLL: &str = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";

/// A note for the report when idle vCPUs halt at once (`guest_halt_poll_ns` of 0, as on
/// some cloud VMs): waking a halted vCPU then takes tens of microseconds,
/// which every multi-threaded product pays when rayon's workers have gone to sleep.
fn idle_note(guest_halt_poll_ns: Option<&str>) -> Option<String> {
    (guest_halt_poll_ns?.trim() == "0").then(|| {
        format!(
            "\nThis machine's idle vCPUs halt without polling (`{GUEST_HALT_POLL}` is 0), so \
             waking a sleeping rayon worker costs tens of microseconds; the 2-thread \
             figures pay it (see docs/performance.md).\n"
        )
    })
}

/// The tables: one per shape, batch and thread count, each format's median and speedup
/// over dense.
pub(crate) fn markdown(report: &Report) -> String {
    let cells = &report.cells;
    let mut md = String::from(
        "# shears speedup sweep\n\nMedians; speedup = nalgebra dense time (one thread) / format time, the two timed alternately in the same run.\n",
    );
    let _ = writeln!(md, "Machine: {}.", report.machine.describe());
    let mut groups: Vec<(String, usize, usize, usize, usize)> = Vec::new();
    for c in cells {
        let key = (c.kernel.clone(), c.rows, c.cols, c.batch, c.threads);
        if !groups.contains(&key) {
            groups.push(key);
        }
    }
    for (kernel, rows, cols, batch, threads) in groups {
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
                "\n## {kernel}, {rows}x{cols}, batch {batch}, {threads} thread(s)\n\n| format | sparsity | median ms | speedup vs dense |\n|---|---|---|---|"
            );
        }
        for c in cells.iter().filter(|c| {
            c.kernel == kernel
                && c.rows == rows
                && c.cols == cols
                && c.batch == batch
                && c.threads == threads
        }) {
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
    md.push_str(&crossovers_table(&report.crossovers));
    md
}

/// The crossovers table: the fixed ones `choose_format` uses and those measured here on
/// each thread count, so that a machine where they differ shows it.
pub(crate) fn crossovers_table(crossovers: &[Crossovers]) -> String {
    let Some(first) = crossovers.first() else { return String::new() };
    let mut md = format!(
        "\n## choose_format's crossovers, fixed and measured here ({0}x{0} f32)\n\n\
         The sparsity from which CSR (sliced ELLPACK at batch 1) beats nalgebra's dense \
         product, by batch, and the largest batch at which 2:4 does (`Crossovers::measure`).\n\n\
         | crossovers |",
        first.side
    );
    for (batch, _) in &first.fixed_csr {
        let _ = write!(md, " CSR, batch <= {batch} |");
    }
    md.push_str(" 2:4 up to batch |\n|---|");
    md.push_str(&"---|".repeat(first.fixed_csr.len() + 1));
    let row = |md: &mut String, label: &str, csr: &[(usize, f64)], nm: usize| {
        let _ = write!(md, "\n| {label} |");
        for (_, s) in csr {
            if *s > 1.0 {
                md.push_str(" never |");
            } else {
                let _ = write!(md, " {:.0}% |", s * 100.0);
            }
        }
        match nm {
            0 => md.push_str(" never |"),
            b => {
                let _ = write!(md, " {b} |");
            }
        }
    };
    row(&mut md, "fixed", &first.fixed_csr, first.fixed_nm_max_batch);
    for c in crossovers {
        let label = format!(
            "measured, {} thread{} ({:.1} s)",
            c.threads,
            if c.threads == 1 { "" } else { "s" },
            c.seconds
        );
        row(&mut md, &label, &c.measured_csr, c.measured_nm_max_batch);
    }
    md.push('\n');
    md
}

/// Speedup of CSR against sparsity on the largest shape, one line per batch size, with
/// the dense line at 1x.
pub(crate) fn plot(cells: &[Cell]) -> String {
    let most = cells.iter().map(|c| c.threads).max().unwrap_or(1);
    let csr = || {
        cells.iter().filter(move |c| {
            c.format == "csr" && !c.kernel.starts_with("threads-") && c.threads == most
        })
    };
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

    fn report(cells: Vec<Cell>) -> Report {
        let machine = Machine {
            cpu_model: "Test CPU".into(),
            cpu_vendor: "Vendor".into(),
            cpu_generation: "family 6 model 1".into(),
            logical_cpus: 2,
            arch: "x86_64".into(),
            kernel_path: "Avx2".into(),
        };
        Report { machine, command: "cargo xtask bench".into(), cells, crossovers: Vec::new() }
    }

    #[test]
    fn the_crossovers_table_has_the_fixed_row_and_one_per_thread_count() {
        let fixed = vec![(1, 0.5), (8, 0.5), (32, 0.5), (128, 0.8)];
        let measured = |threads, nm| Crossovers {
            threads,
            measured_csr: vec![(1, 0.6), (8, 0.5), (32, 0.7), (128, 2.0)],
            measured_nm_max_batch: nm,
            fixed_csr: fixed.clone(),
            fixed_nm_max_batch: 32,
            side: 1024,
            seconds: 1.25,
        };
        let table = crossovers_table(&[measured(1, 8), measured(2, 0)]);
        assert!(table.contains("| crossovers | CSR, batch <= 1 | CSR, batch <= 8 | CSR, batch <= 32 | CSR, batch <= 128 | 2:4 up to batch |"), "{table}");
        assert!(table.contains("| fixed | 50% | 50% | 50% | 80% | 32 |"), "{table}");
        assert!(
            table.contains("| measured, 1 thread (1.2 s) | 60% | 50% | 70% | never | 8 |"),
            "{table}"
        );
        assert!(
            table.contains("| measured, 2 threads (1.2 s) | 60% | 50% | 70% | never | never |"),
            "{table}"
        );
        assert_eq!(crossovers_table(&[]), "");
    }

    #[test]
    fn markdown_has_one_table_per_group() {
        let cells =
            vec![cell("dense", 0.0, 1, 1.0), cell("csr", 0.9, 1, 7.5), cell("csr", 0.9, 32, 3.0)];
        let md = markdown(&report(cells));
        assert_eq!(md.matches("\n## ").count(), 2);
        assert!(md.contains("| csr | 0.90 | 0.133 | 7.50x |"), "{md}");
        assert!(md.contains("Test CPU (Vendor, family 6 model 1, 2 logical CPUs"), "{md}");
    }

    #[test]
    fn the_summary_table_has_a_column_per_batch_and_thread_count() {
        let mut cells = vec![cell("csr", 0.9, 1, 7.5), cell("csr", 0.9, 32, 3.0)];
        let mut two = cell("csr", 0.9, 1, 9.0);
        two.threads = 2;
        cells.push(two);
        let table = summary_table(&cells);
        assert!(table.contains("| batch 1, 1 thread | batch 1, 2 threads | batch 32, 1 thread | batch 32, 2 threads |"), "{table}");
        assert!(table.contains("| CSR, 90% | 7.50x | 9.00x | 3.00x | - |"), "{table}");
        assert!(table.contains("| 2:4 | - | - | - | - |"), "{table}");
    }

    #[test]
    fn a_machine_is_named_by_its_cpu_and_generation() {
        let mut machine = report(Vec::new()).machine;
        assert_eq!(machine.name(), "Test CPU (family 6 model 1)");
        machine.cpu_generation.clear();
        assert_eq!(machine.name(), "Test CPU");
        // A report written before the generation was recorded still reads.
        let old = r#"{"cpu_model": "X", "cpu_vendor": "V", "logical_cpus": 2, "arch": "x86_64",
            "kernel_path": "Avx2"}"#;
        let machine: Machine = serde_json::from_str(old).unwrap();
        assert_eq!(
            (machine.name(), machine.describe().contains("(V, 2 logical")),
            ("X".into(), true)
        );
    }

    #[test]
    fn docs_are_rewritten_between_markers() {
        let text = "a\n<!-- b -->\nold\n<!-- e -->\nz";
        assert_eq!(replace_between(text, "<!-- b -->", "<!-- e -->", "new").unwrap(), "a\nnew\nz");
        assert_eq!(replace_between("none", "<!-- b -->", "<!-- e -->", "new"), None);
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
