//! Integration tests of shears-sparse: every format against nalgebra's dense product.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a failed unwrap is a failed test")]

mod formats;
mod fuzz_regressions;
mod kernels;
mod validation;
