//! Integration tests of shears-strategies.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a failed unwrap is a failed test")]

mod model;
mod properties;
mod torch_parity;
