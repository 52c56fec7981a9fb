//! The README's tours run as written: every command of the first shell block after a
//! heading, in order, with `shears` the binary under test: the main tour in an empty
//! directory, the transformers tour where the repository's `data/` is at hand.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The commands of the first ```sh block after `heading`, comments cut.
fn commands(heading: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = &readme[readme.find(heading).expect("the README has the heading")..];
    let block = section.split("```sh\n").nth(1).unwrap().split("```").next().unwrap();
    block
        .lines()
        .map(|l| l.split(" # ").next().unwrap().trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

fn run_all(commands: &[String], dir: &Path) {
    for line in commands {
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some("shears"), "the tour runs shears: {line}");
        let args: Vec<String> = words.map(|w| w.trim_matches('\'').to_owned()).collect();
        let out = Command::new(env!("CARGO_BIN_EXE_shears"))
            .args(&args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "`{line}` failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn every_tour_command_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let commands = commands("## A tour");
    assert!(commands.len() >= 5, "{commands:?}");
    run_all(&commands, dir.path());
}

/// Run beside a link to the repository's `data/`, so that the outputs land in a
/// temporary directory and the commands read as they would at the repository's root.
#[cfg(unix)]
#[test]
fn every_transformers_tour_command_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        root().join("data").canonicalize().unwrap(),
        dir.path().join("data"),
    )
    .unwrap();
    let commands = commands("## Transformers");
    assert!(commands.len() >= 4, "{commands:?}");
    run_all(&commands, dir.path());
    for output in ["bert-wanda/model.safetensors", "bert-2-4/config.json", "embeddings.safetensors"]
    {
        assert!(dir.path().join(output).is_file(), "{output}");
    }
}
