//! Integration tests of the `shears` binary, on safetensors files the tests write.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a failed unwrap is a failed test")]

mod commands;
mod errors;
mod export;
mod hardening;
mod models;
mod quantize;
mod readme;
mod safety;
mod transformers;
mod util;
