//! The README's tour runs as written: every command of its first shell block, in order,
//! in an empty directory, with `shears` the binary under test.

use std::path::Path;
use std::process::Command;

/// The commands of the first ```sh block after the "## A tour" heading, comments cut.
fn tour() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let tour = &readme[readme.find("## A tour").expect("the README has a tour")..];
    let block = tour.split("```sh\n").nth(1).unwrap().split("```").next().unwrap();
    block
        .lines()
        .map(|l| l.split(" # ").next().unwrap().trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn every_tour_command_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let commands = tour();
    assert!(commands.len() >= 5, "{commands:?}");
    for line in &commands {
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some("shears"), "the tour runs shears: {line}");
        let args: Vec<String> = words.map(|w| w.trim_matches('\'').to_owned()).collect();
        let out = Command::new(env!("CARGO_BIN_EXE_shears"))
            .args(&args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "`{line}` failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}
