//! shears-models' integration tests: the tiny BERT fixture against PyTorch's outputs,
//! pruning it, and the real all-MiniLM-L6-v2 where its folder is present.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    reason = "a failed unwrap is a failed test; a skipped check says so on stderr"
)]

mod fixture;
mod minilm;
mod pruning;
