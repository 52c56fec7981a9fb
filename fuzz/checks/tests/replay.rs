//! Every committed input of every fuzz corpus passes its target's checks, so the normal
//! test suite covers what the fuzzer found without cargo-fuzz.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use std::path::Path;

#[test]
fn fuzz_corpora_replay() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    for (target, check) in shears_fuzz_checks::TARGETS {
        let dir = root.join(target);
        let mut inputs = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let replay = std::panic::catch_unwind(|| check(&bytes));
            assert!(replay.is_ok(), "fuzz target {target} fails on {}", path.display());
            inputs += 1;
        }
        assert!(inputs > 0, "{} holds no input", dir.display());
    }
}
