//! `cargo xtask stress`: prune and inspect a synthetic checkpoint far larger than one
//! tensor, reporting wall time, throughput and each run's peak resident memory.
//!
//! The checkpoint (default 8 GiB) holds 256 MiB tensors, three f32 for every bf16 one,
//! each followed by a small f32 bias. `shears prune` runs on it in layer and in global
//! scope, then `shears inspect` on the result; peak RSS is the child's own `ru_maxrss`
//! (from `wait4`), so it counts exactly the process measured. The file is freshly
//! written, so reads come mostly from the page cache: the throughput is memory-bound,
//! not disk-bound.

use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::{cargo, project_root, run_checked, write_report};

/// The peak-RSS target of the issue, in bytes.
const RSS_TARGET: u64 = 1 << 30;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Checkpoint size in GiB (fractions allowed).
    #[arg(long, default_value_t = 8.0)]
    pub(crate) size: f64,
    /// Size of each weight tensor in MiB (a power of two, at least 1).
    #[arg(long, default_value_t = 256)]
    pub(crate) tensor_mib: u64,
    /// Where the checkpoint and the pruned copies are written (removed afterwards).
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
    /// Where the reports go.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Keep the checkpoint and the pruned copy (for profiling) instead of removing them.
    #[arg(long)]
    pub(crate) keep: bool,
}

/// One tensor of the synthetic checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spec {
    pub(crate) name: String,
    pub(crate) dtype: &'static str,
    pub(crate) shape: Vec<usize>,
}

impl Spec {
    /// Bytes per element.
    fn width(&self) -> usize {
        if self.dtype == "BF16" { 2 } else { 4 }
    }

    fn bytes(&self) -> u64 {
        (self.shape.iter().product::<usize>() * self.width()) as u64
    }
}

/// The tensors of a checkpoint of about `size_bytes`: weight tensors of `tensor_bytes`,
/// every fourth bf16, each with a bias.
pub(crate) fn layout(size_bytes: u64, tensor_bytes: u64) -> Result<Vec<Spec>> {
    if !tensor_bytes.is_power_of_two() || tensor_bytes < (1 << 20) {
        bail!("--tensor-mib must be a power of two of at least 1");
    }
    let count = (size_bytes / tensor_bytes).max(1);
    let cols = 4096usize;
    let mut specs = Vec::new();
    for i in 0..count {
        let (dtype, width) = if i % 4 == 3 { ("BF16", 2) } else { ("F32", 4) };
        let elements = (tensor_bytes / width) as usize;
        let (rows, cols) = if elements >= cols { (elements / cols, cols) } else { (1, elements) };
        specs.push(Spec { name: format!("layers.{i}.weight"), dtype, shape: vec![rows, cols] });
        specs.push(Spec { name: format!("layers.{i}.bias"), dtype: "F32", shape: vec![rows] });
    }
    Ok(specs)
}

/// Writes the checkpoint: header, then pseudo-random values in [-0.5, 0.5).
fn write_checkpoint(path: &Path, specs: &[Spec]) -> Result<u64> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "generator": "cargo xtask stress" }));
    let mut offset = 0u64;
    for s in specs {
        let end = offset + s.bytes();
        header.insert(
            s.name.clone(),
            serde_json::json!({ "dtype": s.dtype, "shape": s.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut header = serde_json::to_vec(&header)?;
    header.resize(header.len().next_multiple_of(8), b' ');
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = BufWriter::with_capacity(8 << 20, file);
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(&header)?;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut chunk = vec![0u8; 8 << 20];
    for s in specs {
        let width = s.width();
        let mut left = s.bytes();
        while left > 0 {
            let n = left.min(8 << 20) as usize;
            for out in chunk[..n].chunks_exact_mut(width) {
                // xorshift64*: fast, and plenty random for magnitudes to rank.
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                let bits = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
                let v = f32::from_bits(0x3f80_0000 | (bits >> 41) as u32) - 1.5;
                // bf16 is the high half of the f32 (truncated toward zero).
                out.copy_from_slice(&v.to_le_bytes()[4 - width..]);
            }
            w.write_all(&chunk[..n])?;
            left -= n as u64;
        }
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(8 + header.len() as u64 + offset)
}

#[derive(Debug, Serialize)]
struct Run {
    command: String,
    wall_seconds: f64,
    /// Input bytes per second.
    throughput_gb_s: f64,
    peak_rss_mib: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    checkpoint_bytes: u64,
    tensors: usize,
    largest_tensor_bytes: u64,
    write_seconds: f64,
    runs: Vec<Run>,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    if !(args.size > 0.0 && args.size.is_finite()) {
        bail!("--size must be a positive number of GiB, got {}", args.size);
    }
    let specs = layout((args.size * (1u64 << 30) as f64) as u64, args.tensor_mib << 20)?;
    let dir = args.dir.clone().unwrap_or_else(|| project_root().join("target/shears-stress"));
    let out = args.out.clone().unwrap_or_else(|| project_root().join("target/shears-report"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let mut build = cargo();
    build.args(["build", "--release", "--quiet", "-p", "shears-cli"]);
    run_checked(build, "build the shears binary (release)")?;
    let shears = target_dir().join("release/shears");

    let input = dir.join("stress.safetensors");
    let pruned = dir.join("stress-pruned.safetensors");
    eprintln!("xtask: writing {} tensors to {}", specs.len(), input.display());
    let start = Instant::now();
    let bytes = write_checkpoint(&input, &specs)?;
    let write_seconds = start.elapsed().as_secs_f64();

    let mut runs = Vec::new();
    let result = (|| -> Result<()> {
        for scope in ["layer", "global"] {
            let mut cmd = Command::new(&shears);
            cmd.arg("prune").arg(&input).arg("-o").arg(&pruned);
            cmd.args(["--sparsity", "0.9", "--scope", scope]);
            runs.push(measure(
                cmd,
                &format!("shears prune --sparsity 0.9 --scope {scope}"),
                bytes,
            )?);
        }
        let mut cmd = Command::new(&shears);
        cmd.arg("inspect").arg(&pruned);
        runs.push(measure(cmd, "shears inspect (the pruned file)", bytes)?);
        Ok(())
    })();
    if !args.keep {
        for f in [&input, &pruned] {
            let _ = std::fs::remove_file(f);
        }
    }
    result?;

    let largest = specs.iter().map(Spec::bytes).max().unwrap_or(0);
    let report = Report {
        checkpoint_bytes: bytes,
        tensors: specs.len(),
        largest_tensor_bytes: largest,
        write_seconds,
        runs,
    };
    let md = markdown(&report);
    print!("{md}");
    write_report(&out, "stress.json", &serde_json::to_string_pretty(&report)?)?;
    let path = write_report(&out, "stress.md", &md)?;
    eprintln!("xtask: wrote {}", path.display());
    let over: Vec<&Run> = report
        .runs
        .iter()
        .filter(|r| r.peak_rss_mib * f64::from(1 << 20) > RSS_TARGET as f64)
        .collect();
    if !over.is_empty() {
        bail!(
            "peak RSS above 1 GiB: {}",
            over.iter().map(|r| r.command.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

fn markdown(r: &Report) -> String {
    let gib = |b: u64| b as f64 / f64::from(1 << 30);
    let mut md = format!(
        "# shears stress run\n\n{:.2} GiB checkpoint, {} tensors (largest {:.0} MiB), written in {:.1} s.\n\n\
         | command | wall (s) | throughput (GB/s) | peak RSS (MiB) |\n|---|---:|---:|---:|\n",
        gib(r.checkpoint_bytes),
        r.tensors,
        r.largest_tensor_bytes as f64 / f64::from(1 << 20),
        r.write_seconds
    );
    for run in &r.runs {
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.2} | {:.0} |",
            run.command, run.wall_seconds, run.throughput_gb_s, run.peak_rss_mib
        );
    }
    md
}

/// Cargo's target directory, as cargo itself resolves the common cases.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("target"))
}

/// Runs `cmd` (stdout discarded) and returns its wall time and peak RSS.
fn measure(mut cmd: Command, what: &str, input_bytes: u64) -> Result<Run> {
    eprintln!("xtask: {what}");
    let start = Instant::now();
    let child =
        cmd.stdout(Stdio::null()).spawn().with_context(|| format!("cannot start: {what}"))?;
    let (success, max_rss_kib) = wait_with_peak_rss(&child)?;
    let wall = start.elapsed().as_secs_f64();
    if !success {
        bail!("failed: {what}");
    }
    Ok(Run {
        command: what.to_owned(),
        wall_seconds: wall,
        throughput_gb_s: input_bytes as f64 / wall / 1e9,
        peak_rss_mib: max_rss_kib as f64 / 1024.0,
    })
}

/// Waits for `child` and returns whether it succeeded and its peak RSS in KiB.
#[cfg(unix)]
#[allow(unsafe_code, reason = "wait4 is the one call that reports one child's peak RSS")]
fn wait_with_peak_rss(child: &std::process::Child) -> Result<(bool, u64)> {
    let pid = libc::pid_t::try_from(child.id())?;
    let mut status: libc::c_int = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `status` and `usage` are valid, writable and live for the call; `pid` is
    // our own unwaited child, so wait4 reaps exactly it (std's `Child` is not waited on
    // afterwards).
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, usage.as_mut_ptr()) };
    if reaped != pid {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    // SAFETY: wait4 succeeded, so it filled `usage` (and it was zeroed before).
    let usage = unsafe { usage.assume_init() };
    let success = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    Ok((success, u64::try_from(usage.ru_maxrss).unwrap_or(0)))
}

#[cfg(not(unix))]
fn wait_with_peak_rss(_child: &std::process::Child) -> Result<(bool, u64)> {
    bail!("cargo xtask stress measures peak RSS with wait4, which needs a Unix system")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_fills_the_size_with_whole_tensors_and_biases() {
        let specs = layout(8 << 30, 256 << 20).unwrap();
        let weights: Vec<&Spec> = specs.iter().filter(|s| s.shape.len() == 2).collect();
        assert_eq!(weights.len(), 32);
        assert!(weights.iter().all(|s| s.bytes() == 256 << 20));
        assert_eq!(weights.iter().filter(|s| s.dtype == "BF16").count(), 8);
        assert_eq!(weights[0].shape, vec![16384, 4096]);
        assert_eq!(weights[3].shape, vec![32768, 4096]);
        assert!(layout(1 << 30, 3 << 20).is_err());
        assert_eq!(layout(1, 1 << 20).unwrap().len(), 2, "at least one tensor");
    }

    #[test]
    fn written_checkpoint_is_valid_and_has_the_size_it_reports() {
        let dir = std::env::temp_dir().join(format!("xtask-stress-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.safetensors");
        let specs = layout(4 << 20, 1 << 20).unwrap();
        let bytes = write_checkpoint(&path, &specs).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), bytes);
        let ckpt = shears_io::Checkpoint::open(&path).unwrap();
        assert_eq!(ckpt.names().len(), specs.len());
        let w = ckpt.read_values::<f32>("layers.3.weight").unwrap();
        assert!(w.iter().all(|v| (-0.5..0.5).contains(v)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn measures_a_child() {
        let mut cmd = Command::new("true");
        cmd.arg("ignored");
        let run = measure(cmd, "true", 1).unwrap();
        assert!(run.peak_rss_mib > 0.0 && run.wall_seconds >= 0.0);
        assert!(measure(Command::new("false"), "false", 1).is_err());
    }
}
