//! [`BlockSparse`]: block compressed rows (BSR) for block-pruned matrices.

use nalgebra::DMatrix;
use shears_core::{BlockShape, Mask, Scalar};

use crate::error::{Error, FormatError, Result};
use crate::index::SpIndex;
use crate::kernels::{self, BsrView};
use crate::product::{Layout, Operands, Sealed, SparseProduct};
use crate::validate;

/// A block-sparse matrix: the nonzero `r x c` blocks stored dense (row-major inside a
/// block), indexed like CSR over the grid of blocks. Blocks that overhang the bottom or
/// right edge are zero-padded.
///
/// # Invariants
/// Checked by [`BlockSparse::try_from_parts`], deserialisation and
/// [`BlockSparse::from_bytes`]: the block index is valid compressed-row structure over the
/// `ceil(nrows/r) x ceil(ncols/c)` grid, and `values.len() == blocks * r * c`.
///
/// # Examples
/// ```
/// use nalgebra::{dmatrix, dvector};
/// use shears_core::{BlockShape, Mask};
/// use shears_sparse::{BlockSparse, SparseProduct};
///
/// let w = dmatrix![1.0f64, 2.0, 0.0, 0.0; 3.0, 4.0, 0.0, 0.0];
/// let bsr = BlockSparse::from_dense(&w, BlockShape::new(2, 2)?)?;
/// assert_eq!(bsr.block_count(), 1);
/// assert_eq!(bsr.matvec(&dvector![1.0, 1.0, 1.0, 1.0])?, dvector![3.0, 7.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSparse<T> {
    nrows: usize,
    ncols: usize,
    block: BlockShape,
    indptr: Vec<usize>,
    block_cols: Vec<u32>,
    values: Vec<T>,
}

impl<T: Scalar> BlockSparse<T> {
    /// The blocks of `weights` in which `mask` keeps anything (kept entries copied,
    /// everything else in a stored block zero).
    ///
    /// # Errors
    /// [`Error::Core`] for a mask of another shape; [`Error::IndexOverflow`] if the block
    /// grid has more than 2^32 block columns; [`Error::Format`] if the blocks' values,
    /// padding included, could not be held.
    pub fn from_dense_masked(weights: &DMatrix<T>, mask: &Mask, block: BlockShape) -> Result<Self> {
        if mask.shape() != weights.shape() {
            return Err(shears_core::Error::ShapeMismatch {
                op: "bsr from masked dense",
                expected: weights.shape(),
                got: mask.shape(),
            }
            .into());
        }
        Self::pack(weights, block, |r, c| mask.get(r, c) == Some(true))
    }

    /// The blocks of `weights` that hold a nonzero.
    ///
    /// # Errors
    /// [`Error::IndexOverflow`] if the block grid has more than 2^32 block columns;
    /// [`Error::Format`] if the blocks' values, padding included, could not be held.
    pub fn from_dense(weights: &DMatrix<T>, block: BlockShape) -> Result<Self> {
        Self::pack(weights, block, |r, c| weights[(r, c)] != T::zero())
    }

    fn pack(
        weights: &DMatrix<T>,
        block: BlockShape,
        keep: impl Fn(usize, usize) -> bool,
    ) -> Result<Self> {
        let (nrows, ncols) = weights.shape();
        let (br, bc) = (block.rows(), block.cols());
        let (grid_rows, grid_cols) = block.grid(nrows, ncols);
        if grid_cols > u32::MAX_COLS {
            return Err(Error::IndexOverflow { what: "block columns", value: grid_cols, bits: 32 });
        }
        let mut indptr = vec![0usize];
        let mut block_cols = Vec::new();
        let mut values = Vec::new();
        for i in 0..grid_rows {
            let rows = i * br..((i + 1) * br).min(nrows);
            for j in 0..grid_cols {
                let cols = j * bc..((j + 1) * bc).min(ncols);
                if !rows.clone().any(|r| cols.clone().any(|c| keep(r, c))) {
                    continue;
                }
                block_cols.push(j as u32);
                // Every stored block is br x bc values, padding included, whatever the
                // matrix's size: a block shape far larger than the matrix is refused
                // here rather than aborting on the allocation.
                values.try_reserve(br * bc).map_err(|_| Error::Format {
                    format: "bsr",
                    error: FormatError::InvalidStructure {
                        reason: format!(
                            "{br}x{bc} blocks of a {nrows}x{ncols} matrix need more values than can be held"
                        ),
                    },
                })?;
                for rr in 0..br {
                    for cc in 0..bc {
                        let (r, c) = (i * br + rr, j * bc + cc);
                        let v = if r < nrows && c < ncols && keep(r, c) {
                            weights[(r, c)]
                        } else {
                            T::zero()
                        };
                        values.push(v);
                    }
                }
            }
            indptr.push(block_cols.len());
        }
        Ok(BlockSparse { nrows, ncols, block, indptr, block_cols, values })
    }

    /// A matrix from raw buffers, validated.
    ///
    /// # Errors
    /// [`Error::Format`] naming the failed check.
    pub fn try_from_parts(
        nrows: usize,
        ncols: usize,
        block: BlockShape,
        indptr: Vec<usize>,
        block_cols: Vec<u32>,
        values: Vec<T>,
    ) -> Result<Self> {
        validate::bsr(nrows, ncols, block, &indptr, &block_cols, values.len())
            .map_err(|error| Error::Format { format: "bsr", error })?;
        Ok(BlockSparse { nrows, ncols, block, indptr, block_cols, values })
    }

    /// A matrix of buffers known to be valid (checked in debug builds).
    pub(crate) fn from_valid_parts(
        (nrows, ncols, block): (usize, usize, BlockShape),
        indptr: Vec<usize>,
        block_cols: Vec<u32>,
        values: Vec<T>,
    ) -> Self {
        debug_assert_eq!(
            validate::bsr(nrows, ncols, block, &indptr, &block_cols, values.len()),
            Ok(())
        );
        BlockSparse { nrows, ncols, block, indptr, block_cols, values }
    }

    /// Gives the buffers back: `(nrows, ncols, block, indptr, block_cols, values)`.
    #[allow(
        clippy::type_complexity,
        reason = "the parts of the format, as try_from_parts takes them"
    )]
    pub fn into_parts(self) -> (usize, usize, BlockShape, Vec<usize>, Vec<u32>, Vec<T>) {
        (self.nrows, self.ncols, self.block, self.indptr, self.block_cols, self.values)
    }

    /// `(nrows, ncols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.nrows, self.ncols)
    }

    /// The block shape.
    pub fn block_shape(&self) -> BlockShape {
        self.block
    }

    /// Stored blocks.
    pub fn block_count(&self) -> usize {
        self.block_cols.len()
    }

    /// Bytes a batch-1 product reads.
    pub fn bytes_read(&self) -> usize {
        self.values.len() * size_of::<T>()
            + self.block_cols.len() * 4
            + self.indptr.len() * size_of::<usize>()
    }

    /// The dense matrix.
    pub fn to_dense(&self) -> DMatrix<T> {
        let (br, bc) = (self.block.rows(), self.block.cols());
        let mut out = DMatrix::zeros(self.nrows, self.ncols);
        for i in 0..self.indptr.len() - 1 {
            for k in self.indptr[i]..self.indptr[i + 1] {
                let j = self.block_cols[k] as usize;
                for rr in 0..br {
                    for cc in 0..bc {
                        let (r, c) = (i * br + rr, j * bc + cc);
                        if r < self.nrows && c < self.ncols {
                            out[(r, c)] = self.values[k * br * bc + rr * bc + cc];
                        }
                    }
                }
            }
        }
        out
    }

    fn view(&self) -> BsrView<'_, T> {
        BsrView {
            nrows: self.nrows,
            ncols: self.ncols,
            br: self.block.rows(),
            bc: self.block.cols(),
            indptr: &self.indptr,
            block_cols: &self.block_cols,
            values: &self.values,
            row_scales: None,
        }
    }
}

impl<T: Scalar> Sealed<T> for BlockSparse<T> {
    fn product(&self, operands: Operands<'_, T>) {
        match operands {
            Operands::Vector { alpha, x, beta, y } => {
                kernels::bsr_spmv(self.view(), alpha, x, beta, y)
            }
            Operands::Matrix { alpha, x, beta, y, then } => {
                kernels::bsr_spmm(self.view(), alpha, x, beta, y, then, Layout::COLUMNS)
            }
            Operands::Oriented { alpha, x, beta, y, then, layout } => {
                kernels::bsr_spmm(self.view(), alpha, x, beta, y, then, layout)
            }
        }
    }
}

impl<T: Scalar> SparseProduct<T> for BlockSparse<T> {
    fn shape(&self) -> (usize, usize) {
        (self.nrows, self.ncols)
    }
}
