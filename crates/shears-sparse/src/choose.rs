//! [`choose_format`]: which representation of a pruned matrix runs fastest.

use std::sync::OnceLock;

use shears_core::{BlockShape, Mask, NmPattern};

use crate::calibrate::Crossovers;
use crate::tuning::SMALL_MATRIX;

/// A representation of a pruned matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// Keep the dense matrix (too dense for any sparse format to pay).
    Dense,
    /// Compressed sparse rows.
    Csr,
    /// Sliced ELLPACK: CSR's entries, eight rows in lockstep (batch 1).
    SlicedEll,
    /// N:M packed.
    Nm(NmPattern),
    /// Block-sparse rows.
    Bsr(BlockShape),
    /// A smaller dense matrix after removing fully pruned rows and columns.
    Compact,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Format::Dense => f.write_str("dense"),
            Format::Csr => f.write_str("csr"),
            Format::SlicedEll => f.write_str("sell"),
            Format::Nm(p) => write!(f, "n:m {p}"),
            Format::Bsr(b) => write!(f, "bsr {}x{}", b.rows(), b.cols()),
            Format::Compact => f.write_str("compact"),
        }
    }
}

/// Picks a format for a pruned matrix (given by its mask) at an expected batch size (0
/// counts as 1).
///
/// In order: a mask with at least a quarter of its rows or columns fully pruned, and at
/// most 30% unstructured sparsity left inside the remaining block, compacts; a matrix
/// smaller than [`SMALL_MATRIX`] stays dense; a mask that satisfies 2:4 (or 4:8) at
/// 40..60% sparsity packs as N:M up to batch [`NM_MAX_BATCH`]; any other mask at or past
/// [`csr_break_even`] goes to CSR, or at batch 1 to its sliced-ELLPACK layout
/// ([`crate::SlicedEll`], the same entries laid out for batch 1); anything else stays
/// dense. The crossovers are the fixed ones of [`crate::tuning`], so the choice is the
/// same on every machine; [`choose_format_with`] takes others, such as this machine's
/// measured ones.
///
/// [`NM_MAX_BATCH`]: crate::tuning::NM_MAX_BATCH
/// [`csr_break_even`]: crate::tuning::csr_break_even
///
/// ```
/// use shears_core::{Mask, NmPattern};
/// use shears_sparse::{Format, choose_format};
///
/// let half_rows = Mask::from_fn(512, 512, |r, _| r % 2 == 0)?;
/// assert_eq!(choose_format(&half_rows, 1), Format::Compact);
/// let two_four = Mask::from_fn(512, 512, |r, c| (r + c) % 4 < 2)?;
/// assert_eq!(choose_format(&two_four, 1), Format::Nm(NmPattern::TWO_FOUR));
/// assert_eq!(choose_format(&two_four, 128), Format::Dense);
/// let sparse = Mask::from_fn(512, 512, |r, c| (r * 7 + c * 13) % 10 == 0)?;
/// assert_eq!(choose_format(&sparse, 1), Format::SlicedEll);
/// assert_eq!(choose_format(&sparse, 8), Format::Csr);
/// let small = Mask::from_fn(64, 64, |r, c| (r * 7 + c * 13) % 10 == 0)?;
/// assert_eq!(choose_format(&small, 1), Format::Dense);
/// assert_eq!(choose_format(&Mask::all_kept(512, 512)?, 1), Format::Dense);
/// # Ok::<(), shears_core::Error>(())
/// ```
pub fn choose_format(mask: &Mask, batch: usize) -> Format {
    static FIXED: OnceLock<Crossovers> = OnceLock::new();
    choose_format_with(mask, batch, FIXED.get_or_init(Crossovers::fixed))
}

/// [`choose_format`] with the given crossovers: [`Crossovers::this_machine`] for ones
/// measured here (once per process), or any others. They replace the two measured
/// limits, [`NM_MAX_BATCH`] and [`csr_break_even`]; the rest of the rules (compaction,
/// [`SMALL_MATRIX`], N:M's 40-60% window) stay as [`choose_format`] has them. Neither
/// function proposes [`Format::Bsr`]: block-sparse matrices are built by asking for it.
///
/// ```
/// use shears_core::Mask;
/// use shears_sparse::calibrate::Crossovers;
/// use shears_sparse::{Format, choose_format_with};
///
/// let sparse = Mask::from_fn(512, 512, |r, c| (r * 7 + c * 13) % 10 == 0)?; // 90%
/// // A machine where CSR needs 95% from 9 tokens on, and N:M never wins.
/// let slow_gathers = Crossovers::from_steps(vec![(8, 0.5), (128, 0.95)], 0)?;
/// assert_eq!(choose_format_with(&sparse, 8, &slow_gathers), Format::Csr);
/// assert_eq!(choose_format_with(&sparse, 16, &slow_gathers), Format::Dense);
/// let two_four = Mask::from_fn(512, 512, |r, c| (r + c) % 4 < 2)?;
/// assert_eq!(choose_format_with(&two_four, 1, &slow_gathers), Format::SlicedEll);
/// # Ok::<(), shears_sparse::Error>(())
/// ```
///
/// [`NM_MAX_BATCH`]: crate::tuning::NM_MAX_BATCH
/// [`csr_break_even`]: crate::tuning::csr_break_even
pub fn choose_format_with(mask: &Mask, batch: usize, crossovers: &Crossovers) -> Format {
    // No product has no columns: a batch of 0 is taken as 1.
    let batch = batch.max(1);
    let (nrows, ncols) = mask.shape();
    if mask.is_empty() {
        return Format::Dense;
    }
    let sparsity = mask.sparsity().get();
    let dead_rows = mask.fully_pruned_rows().len();
    let dead_cols = mask.fully_pruned_cols().len();
    let (live_rows, live_cols) = (nrows - dead_rows, ncols - dead_cols);
    let removable = dead_rows * 4 >= nrows || dead_cols * 4 >= ncols;
    if removable && live_rows * live_cols > 0 {
        let inner_density = mask.count_kept() as f64 / (live_rows * live_cols) as f64;
        if inner_density >= 0.7 {
            return Format::Compact;
        }
    }
    if mask.len() < SMALL_MATRIX {
        return Format::Dense;
    }
    if batch <= crossovers.nm_max_batch() && (0.4..=0.6).contains(&sparsity) {
        for pattern in [NmPattern::TWO_FOUR, NmPattern::new(4, 8).unwrap_or(NmPattern::TWO_FOUR)] {
            if pattern.first_violation(mask).is_none() {
                return Format::Nm(pattern);
            }
        }
    }
    if sparsity < crossovers.csr_break_even(batch) {
        Format::Dense
    } else if batch <= 1 {
        Format::SlicedEll
    } else {
        Format::Csr
    }
}
