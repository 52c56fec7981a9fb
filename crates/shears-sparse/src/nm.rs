//! [`NmSparse`]: N:M-packed weights (2:4, 4:8, ...): the kept values plus their small
//! in-group positions.

use nalgebra::DMatrix;
use shears_core::{Mask, NmPattern, Scalar};

use crate::error::{Error, Result};
use crate::kernels::{self, NmView};
use crate::product::{Layout, Operands, Sealed, SparseProduct};
use crate::validate;

/// An N:M-sparse matrix: every group of M consecutive columns of a row stores exactly N
/// slots (value, position in the group). At 2:4 an f32 weight group costs 2x4 + 2x1 = 10
/// bytes instead of 16, which is why N:M beats dense at 50% where CSR cannot.
///
/// When `ncols` is not a multiple of M the last group is shorter; positions stay inside
/// it. Groups with fewer than N kept weights fill the remaining slots with zeros.
///
/// # Invariants
/// Checked by [`NmSparse::try_from_parts`], deserialisation and [`NmSparse::from_bytes`]:
/// `values.len() == positions.len() == nrows * ceil(ncols / m) * n`, `m <= 256`, and every
/// position is inside its group. The represented entry at a position is the sum of the
/// slots that name it (padding slots are zero).
///
/// # Examples
/// ```
/// use nalgebra::{dmatrix, dvector};
/// use shears_core::{Mask, NmPattern};
/// use shears_sparse::{NmSparse, SparseProduct};
///
/// let w = dmatrix![0.0f32, 2.0, 3.0, 0.0];
/// let nm = NmSparse::from_dense_masked(&w, &Mask::from_fn(1, 4, |_, c| c == 1 || c == 2)?, NmPattern::TWO_FOUR)?;
/// assert_eq!(nm.matvec(&dvector![1.0, 1.0, 1.0, 1.0])?, dvector![5.0]);
/// assert_eq!(nm.to_dense(), w);
/// # Ok::<(), shears_sparse::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct NmSparse<T> {
    nrows: usize,
    ncols: usize,
    pattern: NmPattern,
    values: Vec<T>,
    positions: Vec<u8>,
}

impl<T: Scalar> NmSparse<T> {
    /// Packs the entries of `weights` that `mask` keeps.
    ///
    /// # Errors
    /// [`Error::Core`] for a mask of another shape; [`Error::NotNm`] naming the first
    /// group that keeps more than N; [`Error::Format`] if M exceeds 256.
    pub fn from_dense_masked(
        weights: &DMatrix<T>,
        mask: &Mask,
        pattern: NmPattern,
    ) -> Result<Self> {
        if mask.shape() != weights.shape() {
            return Err(shears_core::Error::ShapeMismatch {
                op: "n:m from masked dense",
                expected: weights.shape(),
                got: mask.shape(),
            }
            .into());
        }
        Self::pack(weights, pattern, |r, c| mask.get(r, c) == Some(true))
    }

    /// Packs the nonzeros of an already N:M-pruned matrix.
    ///
    /// # Errors
    /// [`Error::NotNm`] naming the first group with more than N nonzeros.
    pub fn from_dense(weights: &DMatrix<T>, pattern: NmPattern) -> Result<Self> {
        Self::pack(weights, pattern, |r, c| weights[(r, c)] != T::zero())
    }

    fn pack(
        weights: &DMatrix<T>,
        pattern: NmPattern,
        keep: impl Fn(usize, usize) -> bool,
    ) -> Result<Self> {
        // `NmPattern` bounds M by 256, so positions fit a byte.
        let (n, m) = (pattern.n(), pattern.m());
        let (nrows, ncols) = weights.shape();
        if ncols > u32::MAX as usize {
            return Err(Error::IndexOverflow { what: "column count", value: ncols, bits: 32 });
        }
        let groups = ncols.div_ceil(m);
        let mut values = Vec::with_capacity(nrows * groups * n);
        let mut positions = Vec::with_capacity(nrows * groups * n);
        for r in 0..nrows {
            for g in 0..groups {
                let start = g * m;
                let end = (start + m).min(ncols);
                let mut stored = 0;
                for c in (start..end).filter(|&c| keep(r, c)) {
                    if stored == n {
                        return Err(Error::NotNm { pattern, row: r, col: start });
                    }
                    values.push(weights[(r, c)]);
                    positions.push((c - start) as u8);
                    stored += 1;
                }
                for _ in stored..n {
                    values.push(T::zero());
                    positions.push(0);
                }
            }
        }
        Ok(NmSparse { nrows, ncols, pattern, values, positions })
    }

    /// A matrix from raw buffers, validated.
    ///
    /// # Errors
    /// [`Error::Format`] naming the failed check.
    pub fn try_from_parts(
        nrows: usize,
        ncols: usize,
        pattern: NmPattern,
        values: Vec<T>,
        positions: Vec<u8>,
    ) -> Result<Self> {
        validate::nm(nrows, ncols, pattern, &positions, values.len())
            .map_err(|error| Error::Format { format: "n:m", error })?;
        Ok(NmSparse { nrows, ncols, pattern, values, positions })
    }

    /// A matrix from buffers the caller knows to be valid (checked in debug builds).
    pub(crate) fn from_parts_trusted(
        nrows: usize,
        ncols: usize,
        pattern: NmPattern,
        values: Vec<T>,
        positions: Vec<u8>,
    ) -> Self {
        debug_assert!(validate::nm(nrows, ncols, pattern, &positions, values.len()).is_ok());
        NmSparse { nrows, ncols, pattern, values, positions }
    }

    /// Gives the buffers back: `(nrows, ncols, pattern, values, positions)`.
    pub fn into_parts(self) -> (usize, usize, NmPattern, Vec<T>, Vec<u8>) {
        (self.nrows, self.ncols, self.pattern, self.values, self.positions)
    }

    /// `(nrows, ncols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.nrows, self.ncols)
    }

    /// The pattern.
    pub fn pattern(&self) -> NmPattern {
        self.pattern
    }

    /// The slot values, row by row, group by group.
    pub fn values(&self) -> &[T] {
        &self.values
    }

    /// The slot positions inside their groups.
    pub fn positions(&self) -> &[u8] {
        &self.positions
    }

    /// Bytes a batch-1 product reads.
    pub fn bytes_read(&self) -> usize {
        self.values.len() * (size_of::<T>() + 1)
    }

    /// The dense matrix.
    pub fn to_dense(&self) -> DMatrix<T> {
        let mut out = DMatrix::zeros(self.nrows, self.ncols);
        let (n, m) = (self.pattern.n(), self.pattern.m());
        let groups = self.ncols.div_ceil(m);
        if groups == 0 {
            // No columns: nothing to place, however many rows a file declares.
            return out;
        }
        for r in 0..self.nrows {
            for g in 0..groups {
                for s in (r * groups + g) * n..(r * groups + g + 1) * n {
                    out[(r, g * m + usize::from(self.positions[s]))] += self.values[s];
                }
            }
        }
        out
    }

    fn view(&self) -> NmView<'_, T> {
        NmView {
            nrows: self.nrows,
            ncols: self.ncols,
            n: self.pattern.n(),
            m: self.pattern.m(),
            values: &self.values,
            positions: &self.positions,
            row_scales: None,
        }
    }
}

impl<T: Scalar> Sealed<T> for NmSparse<T> {
    fn product(&self, operands: Operands<'_, T>) {
        match operands {
            Operands::Vector { alpha, x, beta, y } => {
                kernels::nm_spmv(self.view(), alpha, x, beta, y)
            }
            Operands::Matrix { alpha, x, beta, y, then } => {
                kernels::nm_spmm(self.view(), alpha, x, beta, y, then, Layout::COLUMNS)
            }
            Operands::Oriented { alpha, x, beta, y, then, layout } => {
                kernels::nm_spmm(self.view(), alpha, x, beta, y, then, layout)
            }
        }
    }
}

impl<T: Scalar> SparseProduct<T> for NmSparse<T> {
    fn shape(&self) -> (usize, usize) {
        (self.nrows, self.ncols)
    }
}
