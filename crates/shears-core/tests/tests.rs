//! Integration tests of shears-core: property tests against plain oracles.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a failed unwrap is a failed test")]

mod mask_algebra;
mod persistence;
mod selection;
