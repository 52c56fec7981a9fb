//! `cargo xtask`: the project's own commands, in Rust (<https://github.com/matklad/cargo-xtask>).
//!
//! - `cargo xtask bench [--quick] [--out DIR]`: the speedup sweep and its reports;
//! - `cargo xtask lth --mnist DIR [--rounds N] [--rewind K] [--quick] [--out DIR]`: the
//!   lottery-ticket replication on MNIST;
//! - `cargo xtask dst --mnist DIR [--epochs N] [--seeds N] [--quick] [--out DIR]`: sparse
//!   training (static, SET, RigL, gradual pruning, lottery ticket) compared on MNIST;
//! - `cargo xtask stress [--size GIB]`: prune and inspect a checkpoint larger than RAM
//!   should need, reporting wall time and peak RSS;
//! - `cargo xtask release [--dry-run]`: the release gates.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a developer tool reports on the terminal"
)]

mod bench;
mod dst;
mod lth;
mod release;
mod stress;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "shears' development tasks")]
struct Cli {
    #[command(subcommand)]
    task: Option<Task>,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Run the speedup sweep; write bench.json, bench.md and speedup.svg.
    Bench(bench::Args),
    /// Compare sparse training methods on MNIST; write dst.json, dst.md, dst.svg.
    Dst(dst::Args),
    /// Replicate the LeNet-300-100 lottery ticket on MNIST; write lth.json, lth.md, lth.svg.
    Lth(lth::Args),
    /// Run every release gate, then package the crates.
    Release(release::Args),
    /// Prune and inspect a large synthetic checkpoint; report wall time and peak RSS.
    Stress(stress::Args),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Some(Task::Bench(args)) => bench::run(&args),
        Some(Task::Dst(args)) => dst::run(&args),
        Some(Task::Lth(args)) => lth::run(&args),
        Some(Task::Release(args)) => release::run(&args),
        Some(Task::Stress(args)) => stress::run(&args),
        None => {
            println!(
                "cargo xtask <task>\n\n  bench    the speedup sweep (--quick for a smoke run)\n  dst      sparse training compared on MNIST (static, SET, RigL, gradual, lottery ticket)\n  lth      the lottery-ticket replication on MNIST\n  release  the release gates (--dry-run to stop before publishing)\n  stress   prune a large synthetic checkpoint, report peak RSS (--size GIB)"
            );
            Ok(())
        }
    }
}

/// The workspace root.
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// `cargo` as the caller runs it.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(project_root());
    cmd
}

/// Runs `cmd`, failing with its description if it fails.
fn run_checked(mut cmd: Command, what: &str) -> Result<()> {
    eprintln!("xtask: {what}");
    let status = cmd.status().with_context(|| format!("cannot start: {what}"))?;
    if !status.success() {
        bail!("failed: {what} ({status})");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout.
fn run_output(mut cmd: Command, what: &str) -> Result<String> {
    eprintln!("xtask: {what}");
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start: {what}"))?;
    if !out.status.success() {
        bail!("failed: {what} ({})", out.status);
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Writes `contents` to `dir/name` atomically, creating `dir`.
fn write_report(dir: &Path, name: &str, contents: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(name);
    shears_io::write_atomic(&path, contents.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_task() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied()))
        };
        assert!(matches!(
            parse(&["bench", "--quick"]).unwrap().task,
            Some(Task::Bench(bench::Args { quick: true, .. }))
        ));
        assert!(matches!(
            parse(&["lth", "--mnist", "d", "--rounds", "3"]).unwrap().task,
            Some(Task::Lth(lth::Args { rounds: Some(3), .. }))
        ));
        assert!(matches!(
            parse(&["lth", "--mnist", "d", "--rewind", "500"]).unwrap().task,
            Some(Task::Lth(lth::Args { rewind: 500, rounds: None, .. }))
        ));
        assert!(matches!(
            parse(&["dst", "--mnist", "d", "--quick"]).unwrap().task,
            Some(Task::Dst(dst::Args { quick: true, seeds: 3, epochs: None, .. }))
        ));
        assert!(parse(&["dst"]).is_err(), "--mnist is required");
        assert!(matches!(
            parse(&["release", "--dry-run"]).unwrap().task,
            Some(Task::Release(release::Args { dry_run: true }))
        ));
        assert!(matches!(
            parse(&["stress", "--size", "0.5"]).unwrap().task,
            Some(Task::Stress(stress::Args { size: 0.5, tensor_mib: 256, .. }))
        ));
        assert!(parse(&["lth"]).is_err(), "--mnist is required");
        assert!(parse(&["frobnicate"]).is_err());
        assert!(parse(&[]).unwrap().task.is_none());
    }

    /// The top-level modules of each library crate import each other without cycles
    /// (a module's own submodules count as the module).
    #[test]
    fn no_module_import_cycles() {
        let root = project_root().join("crates");
        for entry in std::fs::read_dir(&root).unwrap() {
            let src = entry.unwrap().path().join("src");
            let mut edges: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
                Default::default();
            let mut stack = vec![src.clone()];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir).unwrap() {
                    let path = entry.unwrap().path();
                    if path.is_dir() {
                        stack.push(path);
                        continue;
                    }
                    let rel = path.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/");
                    let module = rel.split('/').next().unwrap().trim_end_matches(".rs").to_owned();
                    if matches!(module.as_str(), "lib" | "main") || !rel.ends_with(".rs") {
                        continue;
                    }
                    let text = std::fs::read_to_string(&path).unwrap();
                    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
                    // Code only: doc links are not imports.
                    let text: String = text
                        .lines()
                        .filter(|l| !l.trim_start().starts_with("//"))
                        .collect::<Vec<_>>()
                        .join("\n");
                    for (i, _) in text.match_indices("crate::") {
                        let rest = &text[i + "crate::".len()..];
                        let name: String =
                            rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                        let at = &text[..i];
                        let is_path = !at.ends_with('$') && !at.ends_with("_");
                        if is_path && !name.is_empty() && name != module {
                            edges.entry(module.clone()).or_default().insert(name);
                        }
                    }
                }
            }
            // Depth-first search for a back edge.
            fn visit(
                m: &str,
                edges: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
                path: &mut Vec<String>,
                done: &mut std::collections::BTreeSet<String>,
            ) {
                if done.contains(m) {
                    return;
                }
                if let Some(at) = path.iter().position(|p| p == m) {
                    panic!("import cycle: {} -> {m}", path[at..].join(" -> "));
                }
                path.push(m.to_owned());
                for next in edges.get(m).into_iter().flatten() {
                    visit(next, edges, path, done);
                }
                path.pop();
                done.insert(m.to_owned());
            }
            let mut done = Default::default();
            for m in edges.keys() {
                visit(m, &edges, &mut Vec::new(), &mut done);
            }
        }
    }

    #[test]
    fn reports_are_written_atomically() {
        let dir = std::env::temp_dir().join(format!("xtask-test-{}", std::process::id()));
        let path = write_report(&dir, "r.md", "hello").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// rust-analyzer's tidy checks, for this workspace.
    #[test]
    fn tidy() {
        let root = project_root();
        let mut files = Vec::new();
        let mut stack = vec![
            root.join("crates"),
            root.join("xtask"),
            root.join("benches"),
            root.join("fuzz/checks"),
        ];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    // A tool with its own workspace (proto/generate) builds into its own
                    // target directory, which holds generated code.
                    if !path.ends_with("target") {
                        stack.push(path);
                    }
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
        assert!(files.len() > 20);
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            assert!(text.starts_with("//!"), "{} must start with a //! doc line", file.display());
            assert!(
                !text.contains(&["#[should", "_panic]"].concat()),
                "{} uses should_panic",
                file.display()
            );
            assert!(
                !text.contains(&["#[ig", "nore]"].concat()),
                "{} ignores a test",
                file.display()
            );
        }
        for manifest in [
            "crates/shears-core",
            "crates/shears-strategies",
            "crates/shears-sparse",
            "crates/shears-io",
            "crates/shears-nn",
            "crates/shears-models",
            "crates/shears-cli",
            "xtask",
            "benches",
            "fuzz/checks",
        ] {
            let text = std::fs::read_to_string(root.join(manifest).join("Cargo.toml")).unwrap();
            assert!(
                text.contains("[lints]\nworkspace = true"),
                "{manifest} must inherit the workspace lints"
            );
            assert!(
                !text.contains("path = \"../"),
                "{manifest}: internal dependencies use .workspace = true"
            );
            let library = manifest.starts_with("crates/") && manifest != "crates/shears-cli";
            assert!(
                !library || !text.contains("anyhow"),
                "{manifest}: library crates return typed errors, not anyhow"
            );
        }
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            assert!(
                !text.contains(&["#[pa", "th"].concat()),
                "{}: no crate includes another's files",
                file.display()
            );
        }
    }
}
