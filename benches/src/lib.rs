//! Seeded fixtures shared by shears' criterion benchmarks and `cargo xtask bench`.
//!
//! Every benchmark builds its inputs here, from fixed seeds, so runs compare like with
//! like.

use nalgebra::{DMatrix, DVector};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shears_core::{LayerContext, Mask, NmPattern, PruningStrategy, Sparsity};
use shears_strategies::{Axis, Magnitude, Pattern, Pruner, Structured};

/// The seed every fixture derives from.
pub const SEED: u64 = 0x5eed_5eed;

/// A `rows x cols` matrix with entries uniform in `[-1, 1)`.
pub fn matrix(rows: usize, cols: usize, seed: u64) -> DMatrix<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    DMatrix::from_fn(rows, cols, |_, _| rng.random_range(-1.0..1.0))
}

/// A vector of `n` entries uniform in `[-1, 1)`.
pub fn vector(n: usize, seed: u64) -> DVector<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    DVector::from_fn(n, |_, _| rng.random_range(-1.0..1.0))
}

fn sparsity(s: f64) -> Sparsity {
    Sparsity::new(s.clamp(0.0, 1.0)).unwrap_or(Sparsity::ZERO)
}

/// The magnitude mask of `w` at sparsity `s` (unstructured, whole tensor).
pub fn magnitude_mask(w: &DMatrix<f32>, s: f64) -> Mask {
    Magnitude
        .mask(w, &LayerContext::new("bench"), sparsity(s))
        .unwrap_or_else(|_| Mask::all_kept_like(w))
}

/// The 2:4 magnitude mask of `w`.
pub fn two_four_mask(w: &DMatrix<f32>) -> Mask {
    Pruner::new(Magnitude)
        .pattern(Pattern::NM(NmPattern::TWO_FOUR))
        .mask(w, &LayerContext::new("bench"), sparsity(0.5))
        .unwrap_or_else(|_| Mask::all_kept_like(w))
}

/// The mask that removes the fraction `s` of rows with the smallest L2 norm.
pub fn rows_mask(w: &DMatrix<f32>, s: f64) -> Mask {
    Pruner::new(Magnitude)
        .pattern(Pattern::Structured(Structured::new(Axis::Rows)))
        .mask(w, &LayerContext::new("bench"), sparsity(s))
        .unwrap_or_else(|_| Mask::all_kept_like(w))
}

/// A rayon pool of `threads` threads, for timing thread scaling in one process.
///
/// # Panics
/// If the operating system refuses the threads (a benchmark cannot go on without them).
pub fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap_or_else(|e| panic!("cannot start {threads} threads: {e}"))
}
