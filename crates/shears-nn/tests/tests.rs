//! Integration tests of shears-nn on the embedded digits data.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a failed unwrap is a failed test")]

mod checkpoint;
mod data;
mod experiments;
mod sparse_training;
mod training;

use shears_core::Masks;
use shears_nn::{Mlp, Split, TrainConfig, digits_split, train};

/// The architecture the tests use.
pub(crate) const SIZES: [usize; 4] = [64, 128, 64, 10];

/// The digits split and a dense network trained on it (cached per test binary).
pub(crate) fn trained() -> &'static (Split, Mlp<f32>) {
    static CELL: std::sync::OnceLock<(Split, Mlp<f32>)> = std::sync::OnceLock::new();
    CELL.get_or_init(|| {
        let data = digits_split().unwrap();
        let mut mlp = Mlp::new(&SIZES, 1).unwrap();
        train(&mut mlp, &data.train, &TrainConfig::default(), &Masks::new()).unwrap();
        (data, mlp)
    })
}
