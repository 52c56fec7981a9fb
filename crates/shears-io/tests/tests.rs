//! Integration tests of shears-io: checkpoints written and read back, headers attacked.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a failed unwrap is a failed test")]

mod checkpoint;
mod decoding;
mod index;
mod mask_sets;
mod quantized;
