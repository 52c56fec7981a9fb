//! [`choose_format`]: which representation of a pruned matrix runs fastest.

use shears_core::{BlockShape, Mask, NmPattern};

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

/// The sparsity from which CSR beats dense nalgebra, by batch size.
///
/// Measured with `cargo xtask bench` (4096x4096, 1024x1024, 1536x384 and 384x1536 f32,
/// one thread, u16 indices, 2-core AVX-512 Xeon): CSR wins from 50% on at batches 1, 8
/// and 32 on every shape (1.07-2.12x at 50%), and from 80% at batch 128, where
/// nalgebra's gemm is compute-bound and efficient (at 70%: 0.95-1.23x).
pub fn csr_break_even(batch: usize) -> f64 {
    match batch {
        0..=32 => 0.5,
        _ => 0.8,
    }
}

/// The largest batch at which N:M packing beats the dense product. Measured as for
/// [`csr_break_even`]: 2:4 runs at 1.4-1.8x dense at batch 1, 1.2-2.0x at 8, 1.1-1.8x
/// at 32, and 0.85-1.02x at 128.
pub const NM_MAX_BATCH: usize = 32;

/// Matrices with fewer elements than this stay dense unless they compact: they sit in
/// L1/L2 and nalgebra's dense kernels beat any index-chasing format on them. Measured
/// with `shears demo` (digits MLP, layers of 8,192 weights): CSR at 90% ran at 0.8x dense
/// at batch 1 and 0.2x at batch 359, and 2:4 at 0.3x.
pub const SMALL_MATRIX: usize = 65_536;

/// Picks a format for a pruned matrix (given by its mask) at an expected batch size.
///
/// In order: a mask with at least a quarter of its rows or columns fully pruned, and at
/// most 30% unstructured sparsity left inside the remaining block, compacts; a matrix
/// smaller than [`SMALL_MATRIX`] stays dense; a mask that satisfies 2:4 (or 4:8) at
/// 40..60% sparsity packs as N:M up to batch [`NM_MAX_BATCH`]; an unstructured mask at or
/// past [`csr_break_even`] goes to CSR, or at batch 1 to its sliced-ELLPACK layout
/// ([`crate::SlicedEll`]: the same entries; interleaved with CSR on one thread it ran
/// 1.0-1.24x CSR's batch-1 speed on 4096x4096, 1024x1024, 1536x384 and 384x1536 at 50%
/// to 99%, but for one 0.92x, and 0.97-1.01x on 512x4096, which fits in L2; about CSR's
/// speed on two threads); anything else stays dense.
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
    if batch <= NM_MAX_BATCH && (0.4..=0.6).contains(&sparsity) {
        for pattern in [NmPattern::TWO_FOUR, NmPattern::new(4, 8).unwrap_or(NmPattern::TWO_FOUR)] {
            if satisfies(mask, pattern) {
                return Format::Nm(pattern);
            }
        }
    }
    if sparsity < csr_break_even(batch) {
        Format::Dense
    } else if batch <= 1 {
        Format::SlicedEll
    } else {
        Format::Csr
    }
}

fn satisfies(mask: &Mask, pattern: NmPattern) -> bool {
    let (nrows, ncols) = mask.shape();
    (0..nrows).all(|r| {
        (0..ncols).step_by(pattern.m()).all(|start| {
            let end = (start + pattern.m()).min(ncols);
            (start..end).filter(|&c| mask.get(r, c) == Some(true)).count() <= pattern.n()
        })
    })
}
