//! [`Crossovers`]: where the sparse formats start to beat the dense product, fixed (the
//! measured defaults of [`crate::tuning`]) or measured on the machine that runs.
//!
//! The fixed crossovers were measured on the machines shears is tuned on. Another CPU
//! (another vendor, cache size or vector width) can move them; [`Crossovers::measure`]
//! times the formats against the dense product here, and [`Crossovers::this_machine`]
//! does it once per process. Choices made with measured crossovers depend on the
//! measurement, so they can differ from run to run where two formats are close; the
//! default [`choose_format`](crate::choose_format) keeps the fixed ones and decides the
//! same way everywhere.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nalgebra::DMatrix;
use shears_core::{Mask, NmPattern};

use crate::csr::AnyCsr;
use crate::error::Result;
use crate::nm::NmSparse;
use crate::product::SparseProduct;
use crate::sell::AnySlicedEll;
use crate::tuning::{NM_MAX_BATCH, csr_break_even};

/// The batch sizes [`Crossovers::measure`] times. A batch between two of them takes the
/// crossover of the next larger one (larger batches favour the dense product), and a
/// batch past the last takes the last one's.
pub const CALIBRATION_BATCHES: [usize; 4] = [1, 8, 32, 128];

/// The sparsities [`Crossovers::measure`] tries for CSR, ascending.
pub const CALIBRATION_SPARSITIES: [f64; 6] = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95];

/// The side of the square matrix [`Crossovers::measure`] multiplies: 4 MiB of `f32`,
/// past a core's L2 cache, as the layers worth sparsifying are.
pub const CALIBRATION_SIDE: usize = 1024;

/// Where CSR (sliced ELLPACK at batch 1) and N:M start to beat the dense product: the
/// two crossovers [`choose_format_with`](crate::choose_format_with) takes from here.
///
/// - CSR: a list of `(batch, sparsity)` steps, ascending by batch. A step says that
///   for batches up to `batch` (and past the previous step's), CSR beats the dense
///   product from `sparsity` on; the last step also covers every larger batch. A
///   sparsity above 1 means CSR never wins at those batches.
/// - N:M: the largest batch up to which an N:M matrix at 50% beats the dense product
///   (0: at no batch).
///
/// ```
/// use shears_sparse::calibrate::Crossovers;
///
/// let fixed = Crossovers::fixed();
/// assert_eq!(fixed.csr_break_even(1), 0.6);
/// assert_eq!(fixed.csr_break_even(8), 0.5);
/// assert_eq!(fixed.csr_break_even(128), 0.7);
/// assert_eq!(fixed.nm_max_batch(), 32);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Crossovers {
    /// `(batch, sparsity)`: from `sparsity` on, CSR beats dense at batches up to `batch`
    /// (and past the previous entry's); ascending by batch, the last one covering every
    /// larger batch. A sparsity above 1 means CSR never wins there.
    csr: Vec<(usize, f64)>,
    /// The largest batch at which a 2:4 matrix beats the dense product (0: none).
    nm_max_batch: usize,
    /// Whether these were measured, and in how long.
    measured: Option<Duration>,
}

impl Crossovers {
    /// The fixed crossovers of [`crate::tuning`], which [`choose_format`](crate::choose_format)
    /// uses.
    pub fn fixed() -> Self {
        let csr = CALIBRATION_BATCHES.iter().map(|&b| (b, csr_break_even(b))).collect();
        Crossovers { csr, nm_max_batch: NM_MAX_BATCH, measured: None }
    }

    /// Crossovers from `csr`, `(batch, sparsity)` steps in any order (see
    /// [`Crossovers`]; a sparsity above 1 for "never"), and `nm_max_batch`, the largest
    /// batch up to which N:M wins (0 for none).
    ///
    /// # Errors
    /// [`crate::Error::InvalidCrossovers`] for no steps, a batch of 0 or listed twice, or
    /// a sparsity that is NaN or negative.
    pub fn from_steps(mut csr: Vec<(usize, f64)>, nm_max_batch: usize) -> Result<Self> {
        csr.sort_by_key(|&(b, _)| b);
        let invalid = |reason: &str| crate::Error::InvalidCrossovers { reason: reason.to_owned() };
        if csr.is_empty() {
            return Err(invalid("no (batch, sparsity) step"));
        }
        if csr.iter().any(|&(b, s)| b == 0 || s.is_nan() || s < 0.0) {
            return Err(invalid("a step has batch 0 or a sparsity that is NaN or negative"));
        }
        if csr.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(invalid("a batch is listed twice"));
        }
        Ok(Crossovers { csr, nm_max_batch, measured: None })
    }

    /// Times the formats against nalgebra's dense product on this machine, on the
    /// caller's rayon pool (so with its thread count): a [`CALIBRATION_SIDE`]-square
    /// `f32` matrix at each of [`CALIBRATION_BATCHES`], CSR (sliced ELLPACK at batch 1)
    /// at each of [`CALIBRATION_SPARSITIES`] from the sparsest down until dense wins
    /// (a batch where even 95% loses gets "never", 2.0), and 2:4 at each batch from the
    /// smallest up until dense wins. Each comparison alternates the two products and
    /// compares medians, so a busy machine can move a crossover by a step. It blocks
    /// for a fraction of a second to a few seconds, depending on the machine and its
    /// load. Other shapes can cross over elsewhere: caches and tiles change with size.
    ///
    /// # Errors
    /// None in practice: the formats' constructors' errors, which the fixed shapes
    /// cannot meet.
    pub fn measure() -> Result<Self> {
        Self::measure_at(CALIBRATION_SIDE)
    }

    /// [`Crossovers::measure`] on an `n`-square matrix.
    fn measure_at(n: usize) -> Result<Self> {
        let start = Instant::now();
        let weights = DMatrix::from_fn(n, n, |r, c| (mix(r, c) % 2001) as f32 / 1000.0 - 1.0);
        let mut csr = Vec::with_capacity(CALIBRATION_BATCHES.len());
        let (mut nm_max_batch, mut previous_batch) = (0, 0);
        for &batch in &CALIBRATION_BATCHES {
            let x = DMatrix::from_fn(n, batch, |r, c| (mix(c, r) % 1999) as f32 / 999.0 - 1.0);
            // CSR: from the sparsest down; the break-even is the least sparse that wins.
            let mut break_even = f64::INFINITY;
            for &sparsity in CALIBRATION_SPARSITIES.iter().rev() {
                let mask = unstructured(n, sparsity)?;
                let dense = mask.apply(&weights)?;
                let wins = if batch == 1 {
                    faster(&AnySlicedEll::from_dense_masked(&weights, &mask)?, &dense, &x)?
                } else {
                    faster(&AnyCsr::from_dense_masked(&weights, &mask)?, &dense, &x)?
                };
                if !wins {
                    break;
                }
                break_even = sparsity;
            }
            csr.push((batch, if break_even.is_finite() { break_even } else { 2.0 }));
            // N:M: up to the first batch where dense wins.
            if nm_max_batch == previous_batch {
                let mask = two_four(n)?;
                let dense = mask.apply(&weights)?;
                let nm = NmSparse::from_dense_masked(&weights, &mask, NmPattern::TWO_FOUR)?;
                if faster(&nm, &dense, &x)? {
                    nm_max_batch = batch;
                }
            }
            previous_batch = batch;
        }
        Ok(Crossovers { csr, nm_max_batch, measured: Some(start.elapsed()) })
    }

    /// This machine's crossovers, measured at the first call in the process
    /// ([`Crossovers::measure`], which blocks that call and uses its caller's rayon pool)
    /// and kept for the rest of the process (the fixed ones if the measurement failed).
    pub fn this_machine() -> &'static Crossovers {
        static MEASURED: OnceLock<Crossovers> = OnceLock::new();
        MEASURED.get_or_init(|| Crossovers::measure().unwrap_or_else(|_| Crossovers::fixed()))
    }

    /// The sparsity from which CSR beats the dense product at `batch` (above 1: at none).
    pub fn csr_break_even(&self, batch: usize) -> f64 {
        let step = self.csr.iter().find(|&&(b, _)| batch <= b);
        step.or(self.csr.last()).map_or(1.0, |&(_, s)| s)
    }

    /// The largest batch up to which N:M packing beats the dense product (0: none).
    pub fn nm_max_batch(&self) -> usize {
        self.nm_max_batch
    }

    /// The `(batch, sparsity)` steps of [`Crossovers::csr_break_even`], ascending.
    pub fn csr_steps(&self) -> &[(usize, f64)] {
        &self.csr
    }

    /// How long the measurement took; `None` for crossovers not measured here.
    pub fn measured_in(&self) -> Option<Duration> {
        self.measured
    }
}

/// A well-mixed hash of a position, so masks and values have no pattern the kernels or
/// the caches could favour.
fn mix(r: usize, c: usize) -> u64 {
    let mut h = (r as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (c as u64);
    h = (h ^ (h >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^ (h >> 29)
}

/// A square mask pruning about `sparsity` of its entries, spread at random.
fn unstructured(n: usize, sparsity: f64) -> shears_core::Result<Mask> {
    let kept = ((1.0 - sparsity) * 65_536.0) as u64;
    Mask::from_fn(n, n, |r, c| mix(c, r) % 65_536 < kept)
}

/// A square 2:4 mask, the two kept entries of each group of four columns chosen at
/// random.
fn two_four(n: usize) -> shears_core::Result<Mask> {
    const PAIRS: [(usize, usize); 6] = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)];
    Mask::from_fn(n, n, |r, c| {
        let (a, b) = PAIRS[(mix(r, c / 4) % 6) as usize];
        c % 4 == a || c % 4 == b
    })
}

/// Whether `sparse` multiplies `x` faster than `dense`, by the medians of alternating
/// calls (after one warm-up call each).
fn faster(sparse: &dyn SparseProduct<f32>, dense: &DMatrix<f32>, x: &DMatrix<f32>) -> Result<bool> {
    const CALLS: usize = 7;
    let mut y = DMatrix::zeros(dense.nrows(), x.ncols());
    let mut time = |m: &dyn SparseProduct<f32>| -> Result<Duration> {
        let start = Instant::now();
        m.matmul_into(1.0, x, 0.0, &mut y)?;
        Ok(start.elapsed())
    };
    time(sparse)?;
    time(dense)?;
    let (mut a, mut b) = (Vec::with_capacity(CALLS), Vec::with_capacity(CALLS));
    for _ in 0..CALLS {
        a.push(time(sparse)?);
        b.push(time(dense)?);
    }
    a.sort();
    b.sort();
    Ok(a[CALLS / 2] < b[CALLS / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_crossovers_are_the_tuning_functions() {
        let fixed = Crossovers::fixed();
        for batch in 0..300 {
            assert_eq!(fixed.csr_break_even(batch), csr_break_even(batch), "batch {batch}");
        }
        assert_eq!(fixed.nm_max_batch(), NM_MAX_BATCH);
        assert_eq!(fixed.measured_in(), None);
    }

    #[test]
    fn steps_cover_every_batch_from_the_next_larger_one() {
        let c = Crossovers::from_steps(vec![(32, 0.7), (1, 0.4), (128, 2.0)], 8).unwrap();
        assert_eq!(c.csr_steps(), &[(1, 0.4), (32, 0.7), (128, 2.0)]);
        let expected = |b: usize| match b {
            0..=1 => 0.4,
            2..=32 => 0.7,
            _ => 2.0,
        };
        for batch in 0..1000 {
            assert_eq!(c.csr_break_even(batch), expected(batch), "batch {batch}");
        }
        assert_eq!(c.nm_max_batch(), 8);
        for bad in
            [vec![], vec![(0, 0.5)], vec![(1, f64::NAN)], vec![(1, -0.1)], vec![(4, 0.5), (4, 0.6)]]
        {
            let err = Crossovers::from_steps(bad.clone(), 1).unwrap_err();
            assert!(matches!(err, crate::Error::InvalidCrossovers { .. }), "{bad:?}: {err}");
        }
    }

    /// The measurement's shape, whatever the timings: one step per calibrated batch,
    /// each a tried sparsity or "never", and an N:M limit that is a tried batch or 0.
    #[test]
    fn a_measurement_gives_a_step_per_batch() {
        let c = Crossovers::measure_at(96).unwrap();
        let batches: Vec<usize> = c.csr_steps().iter().map(|&(b, _)| b).collect();
        assert_eq!(batches, CALIBRATION_BATCHES);
        for &(batch, sparsity) in c.csr_steps() {
            assert!(
                sparsity == 2.0 || CALIBRATION_SPARSITIES.contains(&sparsity),
                "batch {batch}: {sparsity}"
            );
        }
        assert!(c.nm_max_batch() == 0 || CALIBRATION_BATCHES.contains(&c.nm_max_batch()));
        for &(batch, sparsity) in c.csr_steps() {
            assert_eq!(c.csr_break_even(batch), sparsity);
        }
        assert!(c.measured_in().is_some());
    }

    #[test]
    fn the_calibration_masks_prune_what_they_say() {
        for &s in &CALIBRATION_SPARSITIES {
            let mask = unstructured(256, s).unwrap();
            assert!((mask.sparsity().get() - s).abs() < 0.01, "{s}: {}", mask.sparsity().get());
        }
        let mask = two_four(64).unwrap();
        assert_eq!(NmPattern::TWO_FOUR.first_violation(&mask), None);
        assert_eq!(mask.count_kept(), 64 * 32);
    }
}
