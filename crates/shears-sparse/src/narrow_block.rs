//! [`NarrowBlock`]: block-sparse storage whose values are stored narrower than `f32`
//! (int8 with a scale per row, bf16, f16) and widened on load, so the products move
//! fewer bytes per weight.

use half::{bf16, f16};
use nalgebra::DMatrix;
use shears_core::{BlockShape, Mask};

use crate::block::BlockSparse;
use crate::error::{Error, Result};
use crate::kernels::{self, BsrView, Stored};
use crate::narrow_csr::{NarrowValue, check_narrow};
use crate::product::{Layout, Operands, Sealed, SparseProduct};
use crate::validate;

/// A [`BlockSparse`] matrix of `f32` weights stored as `V` (`i8`, `bf16` or `f16`):
/// `A[r, c] = scale[r] * V[r, c]` (the scale is 1 for `bf16` and `f16`).
///
/// The kernels are [`BlockSparse`]'s, widening each value to `f32` exactly as it is
/// loaded, and a row's sum is multiplied by its scale: the products of `bf16` and `f16`
/// values are those of the `f32` matrix they stand for ([`NarrowBlock::to_block`]), bit
/// for bit.
///
/// # Invariants
/// [`BlockSparse`]'s, checked by [`NarrowBlock::try_from_parts`]; and `scales.len() ==
/// nrows`, each positive and finite (all 1 for `bf16` and `f16`).
///
/// ```
/// use nalgebra::{dmatrix, dvector};
/// use shears_core::BlockShape;
/// use shears_sparse::{BlockSparse, Int8Block, SparseProduct};
///
/// let w = dmatrix![127.0f32, 63.5, 0.0, 0.0; 1.0, 2.0, 0.0, 0.0];
/// let block = BlockSparse::from_dense(&w, BlockShape::new(2, 2)?)?;
/// let q = Int8Block::from_block(&block)?;
/// assert_eq!(q.values(), [127, 64, 64, 127]); // 63.5 rounds to even
/// assert_eq!(q.scales(), [1.0, 2.0 / 127.0]);
/// assert_eq!(q.matvec(&dvector![1.0, 1.0, 1.0, 1.0])?[0], 191.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct NarrowBlock<V> {
    nrows: usize,
    ncols: usize,
    block: BlockShape,
    indptr: Vec<usize>,
    block_cols: Vec<u32>,
    values: Vec<V>,
    scales: Vec<f32>,
}

/// [`NarrowBlock`] with int8 values and a scale per row.
pub type Int8Block = NarrowBlock<i8>;
/// [`NarrowBlock`] with bf16 values.
pub type Bf16Block = NarrowBlock<bf16>;
/// [`NarrowBlock`] with f16 values.
pub type F16Block = NarrowBlock<f16>;

impl<V: NarrowValue> NarrowBlock<V> {
    /// `block`'s stored blocks (zeros within them included) narrowed to `V` row by row:
    /// int8 rows get `scale = max |w| / 127`, values rounded to even.
    ///
    /// # Errors
    /// [`shears_core::Error::NonFinite`] for a NaN or infinite value;
    /// [`Error::InvalidQuantization`] for a value `V` cannot hold (naming its row).
    pub fn from_block(block: &BlockSparse<f32>) -> Result<Self> {
        let (nrows, ncols, shape, indptr, block_cols, wide) = block.clone().into_parts();
        if let Some(index) = wide.iter().position(|v| !v.is_finite()) {
            return Err(shears_core::Error::NonFinite { tensor: "weights".into(), index }.into());
        }
        let (br, bc) = (shape.rows(), shape.cols());
        let mut values = vec![V::from_bits(0); wide.len()];
        // Blocks may be taller than any stored value, so the row count is bounded only
        // here, by what a scale per row can be allocated for.
        let mut scales = crate::narrow_csr::reserve_scales("narrow bsr", nrows)?;
        scales.resize(nrows, 1.0f32);
        let (mut row, mut narrow) = (Vec::new(), Vec::new());
        // A block may be taller than the matrix: its rows past the last are zeros.
        for (r, scale) in scales.iter_mut().enumerate() {
            let (i, rr) = (r / br, r % br);
            let runs =
                (indptr[i]..indptr[i + 1]).map(|k| (k * br + rr) * bc..(k * br + rr + 1) * bc);
            row.clear();
            runs.clone().for_each(|run| row.extend_from_slice(&wide[run]));
            narrow.clear();
            *scale = V::narrow_row(&row, &mut narrow).map_err(|e| match e {
                Error::InvalidQuantization { reason } => {
                    Error::InvalidQuantization { reason: format!("row {r}: {reason}") }
                }
                other => other,
            })?;
            for (run, narrow) in runs.zip(narrow.chunks_exact(bc)) {
                values[run].copy_from_slice(narrow);
            }
        }
        Ok(NarrowBlock { nrows, ncols, block: shape, indptr, block_cols, values, scales })
    }

    /// The blocks of `weights` in which `mask` keeps anything, narrowed to `V`.
    ///
    /// # Errors
    /// As [`BlockSparse::from_dense_masked`] and [`NarrowBlock::from_block`].
    pub fn from_dense_masked(
        weights: &DMatrix<f32>,
        mask: &Mask,
        block: BlockShape,
    ) -> Result<Self> {
        Self::from_block(&BlockSparse::from_dense_masked(weights, mask, block)?)
    }

    /// The blocks of `weights` that hold a nonzero, narrowed to `V`.
    ///
    /// # Errors
    /// As [`BlockSparse::from_dense`] and [`NarrowBlock::from_block`].
    pub fn from_dense(weights: &DMatrix<f32>, block: BlockShape) -> Result<Self> {
        Self::from_block(&BlockSparse::from_dense(weights, block)?)
    }

    /// A matrix from raw buffers, validated.
    ///
    /// # Errors
    /// [`Error::Format`] naming the failed check of the block structure;
    /// [`Error::InvalidQuantization`] for a stored value the format cannot hold (a NaN or
    /// infinity, or int8's -128), a scale count other than `nrows`, a scale that is not
    /// positive and finite, or (for `bf16`/`f16`) one other than 1.
    pub fn try_from_parts(
        (nrows, ncols, block): (usize, usize, BlockShape),
        indptr: Vec<usize>,
        block_cols: Vec<u32>,
        values: Vec<V>,
        scales: Vec<f32>,
    ) -> Result<Self> {
        validate::bsr(nrows, ncols, block, &indptr, &block_cols, values.len())
            .map_err(|error| Error::Format { format: "narrow bsr", error })?;
        check_narrow(&values, &scales, nrows)?;
        Ok(NarrowBlock { nrows, ncols, block, indptr, block_cols, values, scales })
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

    /// Where each block row's blocks start in [`NarrowBlock::block_cols`], then the total.
    pub fn indptr(&self) -> &[usize] {
        &self.indptr
    }

    /// The block column of each stored block.
    pub fn block_cols(&self) -> &[u32] {
        &self.block_cols
    }

    /// The stored values, block by block, row-major inside a block.
    pub fn values(&self) -> &[V] {
        &self.values
    }

    /// One scale per row (all 1 for `bf16` and `f16`).
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Bytes a batch-1 product reads.
    pub fn bytes_read(&self) -> usize {
        self.values.len() * V::BYTES
            + self.block_cols.len() * 4
            + self.indptr.len() * size_of::<usize>()
            + if V::SCALED { self.scales.len() * size_of::<f32>() } else { 0 }
    }

    /// The `f32` matrix the values stand for, each widened and times its row's scale.
    pub fn to_block(&self) -> BlockSparse<f32> {
        let (br, bc) = (self.block.rows(), self.block.cols());
        let mut values: Vec<f32> = self.values.iter().map(|&v| Stored::get(v)).collect();
        if V::SCALED {
            for (i, blocks) in self.indptr.windows(2).enumerate() {
                for k in blocks[0]..blocks[1] {
                    let rows = (i * br..(i + 1) * br).take_while(|&r| r < self.nrows);
                    for (rr, r) in rows.enumerate() {
                        let run = &mut values[(k * br + rr) * bc..][..bc];
                        run.iter_mut().for_each(|v| *v *= self.scales[r]);
                    }
                }
            }
        }
        let shape = (self.nrows, self.ncols, self.block);
        BlockSparse::from_valid_parts(shape, self.indptr.clone(), self.block_cols.clone(), values)
    }

    /// The dense `f32` matrix the values stand for.
    pub fn to_dense(&self) -> DMatrix<f32> {
        self.to_block().to_dense()
    }

    pub(crate) fn view(&self) -> BsrView<'_, f32, V> {
        BsrView {
            nrows: self.nrows,
            ncols: self.ncols,
            br: self.block.rows(),
            bc: self.block.cols(),
            indptr: &self.indptr,
            block_cols: &self.block_cols,
            values: &self.values,
            // bf16 and f16 rows are not scaled: no multiply by 1 per row.
            row_scales: V::SCALED.then_some(&self.scales[..]),
        }
    }
}

impl<V: NarrowValue> Sealed<f32> for NarrowBlock<V> {
    /// [`BlockSparse`]'s kernels, multi-threaded and bit-identical across paths and
    /// threads in the same way; each row's sum is multiplied by its scale before `alpha`.
    fn product(&self, operands: Operands<'_, f32>) {
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

impl<V: NarrowValue> SparseProduct<f32> for NarrowBlock<V> {
    fn shape(&self) -> (usize, usize) {
        (self.nrows, self.ncols)
    }
}

#[cfg(test)]
mod tests {
    use nalgebra::DMatrix;
    use proptest::prelude::*;

    use super::*;
    use crate::testing::{bits, near_product, product, pruned};

    fn check<V: NarrowValue>(
        w: &DMatrix<f32>,
        shape: BlockShape,
        batch: usize,
    ) -> std::result::Result<(), TestCaseError> {
        let block = BlockSparse::from_dense(w, shape).unwrap();
        let narrow = NarrowBlock::<V>::from_block(&block).unwrap();
        prop_assert_eq!(narrow.block_count(), block.block_count());
        // Each row narrowed as NarrowCsr narrows its kept weights: the same scales.
        let csr = crate::Csr::from_dense(w).unwrap();
        let by_row = crate::NarrowCsr::<V, u32>::from_csr(&csr).unwrap();
        prop_assert_eq!(narrow.scales(), by_row.scales());
        let x =
            DMatrix::from_fn(w.ncols(), batch, |c, j| ((c * 7 + j * 3) % 11) as f32 * 0.25 - 1.0);
        let got = product(&narrow, &x);
        if !V::SCALED {
            // Values exact in f32: the widened matrix's product, bit for bit.
            let want = product(&narrow.to_block(), &x);
            prop_assert_eq!(bits(&got), bits(&want), "{} batch {}", V::NAME, batch);
        }
        // Within rounding of the product of the values they stand for, in f64.
        let near = near_product(&got, &narrow.to_dense(), &x);
        prop_assert!(near.is_ok(), "{} batch {}: {:?}", V::NAME, batch, near);
        Ok(())
    }

    proptest! {
        /// Narrowing a block-sparse matrix scales each row as CSR does; bf16 and f16
        /// products are the widened matrix's bits, int8 ones within rounding of it, at
        /// batch 1 and batched, for blocks that divide the shape and blocks that overhang.
        #[test]
        fn products_match_the_widened_matrix(
            (nrows, ncols) in (1usize..30, 1usize..40),
            (br, bc) in (1usize..6, 1usize..6),
            density in 0.0f64..1.0,
            batch in prop_oneof![Just(1usize), 2usize..12],
            seed in any::<u64>(),
        ) {
            let w = pruned(nrows, ncols, density, seed);
            let shape = BlockShape::new(br, bc).unwrap();
            check::<i8>(&w, shape, batch)?;
            check::<bf16>(&w, shape, batch)?;
            check::<f16>(&w, shape, batch)?;
        }
    }

    /// Bad parts are errors naming the problem; a non-finite or out-of-range weight is
    /// refused when narrowing.
    #[test]
    fn bad_parts_are_errors() {
        let w = DMatrix::from_row_slice(
            3,
            4,
            &[1.0f32, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 4.0, 5.0, 0.0],
        );
        let shape = BlockShape::new(2, 2).unwrap();
        let q = Int8Block::from_dense(&w, shape).unwrap();
        let parts = |q: &Int8Block| {
            (q.indptr().to_vec(), q.block_cols().to_vec(), q.values().to_vec(), q.scales().to_vec())
        };
        let (indptr, cols, values, scales) = parts(&q);
        let dims = (3, 4, shape);
        let ok = Int8Block::try_from_parts(
            dims,
            indptr.clone(),
            cols.clone(),
            values.clone(),
            scales.clone(),
        );
        assert_eq!(ok.unwrap(), q);
        let mut minus = values.clone();
        minus[0] = i8::MIN;
        let e =
            Int8Block::try_from_parts(dims, indptr.clone(), cols.clone(), minus, scales.clone());
        assert!(e.unwrap_err().to_string().contains("not a int8 value"));
        let e = Int8Block::try_from_parts(
            dims,
            indptr.clone(),
            cols.clone(),
            values[1..].to_vec(),
            scales.clone(),
        );
        assert!(e.unwrap_err().to_string().contains("narrow bsr"));
        let e = Int8Block::try_from_parts(dims, indptr, cols, values, scales[..1].to_vec());
        assert!(e.unwrap_err().to_string().contains("1 scales for 3 rows"));
        let mut nan = w.clone();
        nan[(2, 1)] = f32::NAN;
        assert!(
            Bf16Block::from_dense_masked(&nan, &Mask::from_fn(3, 4, |_, _| true).unwrap(), shape)
                .is_err()
        );
        let mut big = w;
        big[(2, 0)] = 1e6;
        let e = F16Block::from_dense(&big, shape).unwrap_err().to_string();
        assert!(e.contains("row 2") && e.contains("beyond f16's range"), "{e}");
    }
}
