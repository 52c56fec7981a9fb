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
        .with_pattern(Pattern::NM(NmPattern::TWO_FOUR))
        .mask(w, &LayerContext::new("bench"), sparsity(0.5))
        .unwrap_or_else(|_| Mask::all_kept_like(w))
}

/// The mask that removes the fraction `s` of rows with the smallest L2 norm.
pub fn rows_mask(w: &DMatrix<f32>, s: f64) -> Mask {
    Pruner::new(Magnitude)
        .with_pattern(Pattern::Structured(Structured::new(Axis::Rows)))
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

/// The top and bottom halves of the rows of `w` pruned by `mask`, each as its own CSR
/// matrix: one product split in two, for [`independent_halves`].
///
/// # Panics
/// If `mask` does not fit `w` (a benchmark's own setup error).
pub fn csr_halves(w: &DMatrix<f32>, mask: &Mask) -> [shears_sparse::AnyCsr<f32>; 2] {
    let pruned = mask.apply(w).unwrap_or_else(|e| panic!("{e}"));
    let (rows, half) = (w.nrows(), w.nrows() / 2);
    [(0, half), (half, rows - half)].map(|(r0, n)| {
        shears_sparse::AnyCsr::from_dense(&pruned.rows(r0, n).into_owned())
            .unwrap_or_else(|e| panic!("{e}"))
    })
}

/// Wall time of `iters` calls of each of two closures, run at the same time on two
/// threads that never wait for each other, each on a one-thread rayon pool of its own
/// (so shears' kernels inside run sequentially).
///
/// Given the two halves of one product, this is what two cores do with no
/// synchronization at all: the ceiling for a 2-thread product on the machine, measured
/// in the same run as the product itself.
///
/// # Panics
/// If the operating system refuses the threads.
pub fn independent_halves(
    iters: u64,
    mut first: impl FnMut() + Send,
    mut second: impl FnMut() + Send,
) -> std::time::Duration {
    let pools = [pool(1), pool(1)];
    let start = std::time::Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| pools[0].install(|| (0..iters).for_each(|_| first())));
        s.spawn(|| pools[1].install(|| (0..iters).for_each(|_| second())));
    });
    start.elapsed()
}
