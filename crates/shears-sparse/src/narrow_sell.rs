//! [`NarrowSell`]: sliced ELLPACK whose values are stored narrower than `f32` (int8 with a
//! scale per row, bf16, f16) and widened on load, so the products move fewer bytes per
//! weight.

use half::{bf16, f16};
use nalgebra::DMatrix;
use shears_core::Mask;

use crate::csr::Csr;
use crate::error::{Error, Result};
use crate::index::SpIndex;
use crate::kernels::{self, SellView};
use crate::narrow_csr::{NarrowValue, check_narrow};
use crate::product::{Layout, Operands, Sealed, SparseProduct};
use crate::sell::{SlicedEll, SlicedEllParts, lane_slots};
use crate::validate;

/// A [`SlicedEll`] matrix of `f32` weights stored as `V` (`i8`, `bf16` or `f16`):
/// `A[r, c] = scale[r] * V[r, c]` (the scale is 1 for `bf16` and `f16`).
///
/// At batch 1 a product reads each stored slot's value and column once, so narrower
/// values mean fewer bytes moved: with `u16` columns a slot is 3 bytes (`i8`) or 4
/// (`bf16`, `f16`) against 6. The kernels are [`SlicedEll`]'s, widening each value to
/// `f32` exactly as it is loaded, and a row's sum is multiplied by its scale: the
/// products of `bf16` and `f16` values are those of the `f32` matrix they stand for
/// ([`NarrowSell::to_sell`]), bit for bit. Batches run CSR's tiles on each row, as
/// [`SlicedEll`]'s do, with the values widened: int8 batches of 9 tokens or more do not
/// give [`crate::Int8Csr`]'s bits, which run in integers on quantized tokens there.
///
/// # Invariants
/// [`SlicedEll`]'s (padding holds a zero value and column 0), checked by
/// [`NarrowSell::try_from_parts`]; and `scales.len() == nrows`, by row (not lane), each
/// positive and finite (all 1 for `bf16` and `f16`).
///
/// ```
/// use nalgebra::{DMatrix, DVector};
/// use shears_sparse::{Bf16Sell, Csr, SlicedEll, SparseProduct};
///
/// let w = DMatrix::<f32>::from_fn(20, 30, |r, c| if (r + c) % 5 == 0 { 0.5 * c as f32 } else { 0.0 });
/// let sell: SlicedEll<f32, u16> = SlicedEll::from_csr(&Csr::from_dense(&w)?);
/// let narrow = Bf16Sell::from_sell(&sell)?; // every value here is exact in bf16
/// let x = DVector::from_element(30, 1.0);
/// assert_eq!(narrow.matvec(&x)?, sell.matvec(&x)?);
/// # Ok::<(), shears_sparse::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct NarrowSell<V, I = u32> {
    parts: SlicedEllParts<V, I>,
    scales: Vec<f32>,
}

/// [`NarrowSell`] with int8 values and a scale per row.
pub type Int8Sell<I = u32> = NarrowSell<i8, I>;
/// [`NarrowSell`] with bf16 values.
pub type Bf16Sell<I = u32> = NarrowSell<bf16, I>;
/// [`NarrowSell`] with f16 values.
pub type F16Sell<I = u32> = NarrowSell<f16, I>;

/// The zero a narrow type stores in padding.
fn zero<V: NarrowValue>() -> V {
    V::from_bits(0)
}

impl<V: NarrowValue, I: SpIndex> NarrowSell<V, I> {
    /// `sell`'s slots (the same layout, padding included) narrowed to `V` row by row:
    /// int8 rows get `scale = max |w| / 127`, values rounded to even.
    ///
    /// # Errors
    /// [`shears_core::Error::NonFinite`] for a NaN or infinite value (its index counts
    /// the stored slots, padding included); [`Error::InvalidQuantization`] for a value
    /// `V` cannot hold (naming its row).
    pub fn from_sell(sell: &SlicedEll<f32, I>) -> Result<Self> {
        let wide = sell.view();
        if let Some(index) = wide.values.iter().position(|v| !v.is_finite()) {
            return Err(shears_core::Error::NonFinite { tensor: "weights".into(), index }.into());
        }
        let mut values = vec![zero::<V>(); wide.values.len()];
        let mut scales = vec![1.0f32; wide.nrows];
        let (mut row, mut narrow) = (Vec::new(), Vec::new());
        for (lane, (&r, &length)) in wide.order.iter().zip(wide.lengths).enumerate() {
            let slots = lane_slots(wide.slice_ptr, lane, length);
            row.clear();
            row.extend(slots.clone().map(|k| wide.values[k]));
            narrow.clear();
            scales[r] = V::narrow_row(&row, &mut narrow).map_err(|e| match e {
                Error::InvalidQuantization { reason } => {
                    Error::InvalidQuantization { reason: format!("row {r}: {reason}") }
                }
                other => other,
            })?;
            for (k, &v) in slots.zip(&narrow) {
                values[k] = v;
            }
        }
        let parts = SlicedEllParts {
            nrows: wide.nrows,
            ncols: wide.ncols,
            window: wide.window,
            order: wide.order.to_vec(),
            lengths: wide.lengths.to_vec(),
            slice_ptr: wide.slice_ptr.to_vec(),
            indices: wide.indices.to_vec(),
            values,
        };
        Ok(NarrowSell { parts, scales })
    }

    /// `csr` packed as [`SlicedEll::from_csr`] packs it, then narrowed.
    ///
    /// # Errors
    /// As [`NarrowSell::from_sell`].
    pub fn from_csr(csr: &Csr<f32, I>) -> Result<Self> {
        Self::from_sell(&SlicedEll::from_csr(csr))
    }

    /// The entries of `weights` that `mask` keeps, packed and narrowed to `V`.
    ///
    /// # Errors
    /// As [`Csr::from_dense_masked`] and [`NarrowSell::from_sell`].
    pub fn from_dense_masked(weights: &DMatrix<f32>, mask: &Mask) -> Result<Self> {
        Self::from_csr(&Csr::from_dense_masked(weights, mask)?)
    }

    /// A matrix from raw buffers, validated.
    ///
    /// # Errors
    /// [`Error::Format`] naming the first failed check of the sliced-ELLPACK structure;
    /// [`Error::IndexOverflow`] if `I` cannot address `ncols`; [`Error::InvalidQuantization`]
    /// for a stored value the format cannot hold (a NaN or infinity, or int8's -128), a
    /// scale count other than `nrows`, a scale that is not positive and finite, or (for
    /// `bf16`/`f16`) one other than 1.
    pub fn try_from_parts(parts: SlicedEllParts<V, I>, scales: Vec<f32>) -> Result<Self> {
        if parts.ncols > I::MAX_COLS {
            let value = parts.ncols;
            return Err(Error::IndexOverflow { what: "column count", value, bits: I::BITS });
        }
        validate::sell(
            parts.nrows,
            parts.ncols,
            parts.window,
            &parts.order,
            &parts.lengths,
            &parts.slice_ptr,
            &parts.indices,
            &parts.values,
            zero::<V>(),
        )
        .map_err(|error| Error::Format { format: "narrow sell", error })?;
        check_narrow(&parts.values, &scales, parts.nrows)?;
        Ok(NarrowSell { parts, scales })
    }

    /// The layout with its narrow values.
    pub(crate) fn layout(&self) -> &SlicedEllParts<V, I> {
        &self.parts
    }

    /// Gives the buffers back: the layout with its narrow values, and the row scales.
    pub fn into_parts(self) -> (SlicedEllParts<V, I>, Vec<f32>) {
        (self.parts, self.scales)
    }

    /// `(nrows, ncols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.parts.nrows, self.parts.ncols)
    }

    /// Kept entries (padding excluded).
    pub fn nnz(&self) -> usize {
        self.parts.lengths.iter().sum()
    }

    /// Stored slots, padding included.
    pub fn stored(&self) -> usize {
        self.parts.values.len()
    }

    /// The stored values, laid out as [`SlicedEllParts::values`].
    pub fn values(&self) -> &[V] {
        &self.parts.values
    }

    /// One scale per row (all 1 for `bf16` and `f16`).
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Bytes a batch-1 product reads.
    pub fn bytes_read(&self) -> usize {
        let p = &self.parts;
        self.stored() * (V::BYTES + size_of::<I>())
            + (p.order.len() + p.lengths.len() + p.slice_ptr.len()) * size_of::<usize>()
            + if V::SCALED { self.scales.len() * size_of::<f32>() } else { 0 }
    }

    /// The `f32` matrix the values stand for, each widened and times its row's scale.
    pub fn to_sell(&self) -> SlicedEll<f32, I> {
        let p = &self.parts;
        let mut values: Vec<f32> = p.values.iter().map(|&v| kernels::Stored::get(v)).collect();
        if V::SCALED {
            for (lane, (&r, &length)) in p.order.iter().zip(&p.lengths).enumerate() {
                for k in lane_slots(&p.slice_ptr, lane, length) {
                    values[k] *= self.scales[r];
                }
            }
        }
        let parts = SlicedEllParts {
            nrows: p.nrows,
            ncols: p.ncols,
            window: p.window,
            order: p.order.clone(),
            lengths: p.lengths.clone(),
            slice_ptr: p.slice_ptr.clone(),
            indices: p.indices.clone(),
            values,
        };
        // The structure is this matrix's, validated; a scaled int8 value is finite (the
        // scale times 127 is).
        SlicedEll::from_valid_parts(parts)
    }

    pub(crate) fn view(&self) -> SellView<'_, f32, I, V> {
        let p = &self.parts;
        SellView {
            nrows: p.nrows,
            ncols: p.ncols,
            window: p.window,
            order: &p.order,
            lengths: &p.lengths,
            slice_ptr: &p.slice_ptr,
            indices: &p.indices,
            values: &p.values,
            // bf16 and f16 rows are not scaled: no multiply by 1 per row.
            row_scales: V::SCALED.then_some(&self.scales[..]),
        }
    }
}

impl<V: NarrowValue, I: SpIndex> Sealed<f32> for NarrowSell<V, I> {
    /// [`SlicedEll`]'s kernels, multi-threaded and bit-identical across paths and threads
    /// in the same way; each row's sum is multiplied by its scale before `alpha`.
    fn product(&self, operands: Operands<'_, f32>) {
        match operands {
            Operands::Vector { alpha, x, beta, y } => {
                kernels::sell_spmv(self.view(), alpha, x, beta, y)
            }
            Operands::Matrix { alpha, x, beta, y, then } => {
                kernels::sell_spmm(self.view(), alpha, x, beta, y, then, Layout::COLUMNS)
            }
            Operands::Oriented { alpha, x, beta, y, then, layout } => {
                kernels::sell_spmm(self.view(), alpha, x, beta, y, then, layout)
            }
        }
    }
}

impl<V: NarrowValue, I: SpIndex> SparseProduct<f32> for NarrowSell<V, I> {
    fn shape(&self) -> (usize, usize) {
        (self.parts.nrows, self.parts.ncols)
    }
}

#[cfg(test)]
mod tests {
    use nalgebra::DMatrix;
    use proptest::prelude::*;

    use super::*;
    use crate::NarrowCsr;
    use crate::testing::{bits, near_product, product, pruned};

    fn check<V: NarrowValue>(
        w: &DMatrix<f32>,
        batch: usize,
        window: usize,
    ) -> std::result::Result<(), TestCaseError> {
        let csr: Csr<f32, u32> = Csr::from_dense(w).unwrap();
        let sell = SlicedEll::from_csr_with_window(&csr, window).unwrap();
        let narrow = NarrowSell::<V, u32>::from_sell(&sell).unwrap();
        // Each row narrowed as NarrowCsr narrows it: the same values and scales.
        let by_row = NarrowCsr::<V, u32>::from_csr(&csr).unwrap();
        prop_assert_eq!(narrow.scales(), by_row.scales());
        prop_assert_eq!(narrow.to_sell().to_csr(), by_row.to_csr());
        prop_assert_eq!(narrow.nnz(), csr.nnz());
        let x =
            DMatrix::from_fn(w.ncols(), batch, |c, j| ((c * 7 + j * 3) % 11) as f32 * 0.25 - 1.0);
        let got = product(&narrow, &x);
        if !V::SCALED {
            // Values exact in f32: the widened matrix's product, bit for bit.
            let want = product(&narrow.to_sell(), &x);
            prop_assert_eq!(bits(&got), bits(&want), "{} batch {}", V::NAME, batch);
        } else if (2..kernels::INTEGER_MIN_BATCH).contains(&batch) {
            // Small int8 batches run CSR's tiles on each row, scaled as Int8Csr scales.
            prop_assert_eq!(bits(&got), bits(&product(&by_row, &x)), "int8 batch {}", batch);
        }
        // Within rounding of the product of the values they stand for, in f64.
        let near = near_product(&got, &narrow.to_sell().to_dense(), &x);
        prop_assert!(near.is_ok(), "{} batch {}: {:?}", V::NAME, batch, near);
        Ok(())
    }

    proptest! {
        /// Narrowing a sliced-ELLPACK matrix narrows each row as CSR does; bf16 and f16
        /// products are the widened matrix's bits and int8 ones those of Int8Csr's widened
        /// tiles, at batch 1 and batched, windows narrow and wide.
        #[test]
        fn products_match_the_widened_matrix(
            (nrows, ncols) in (1usize..40, 1usize..70),
            density in 0.0f64..1.0,
            batch in prop_oneof![Just(1usize), 2usize..12],
            window in prop_oneof![Just(8usize), Just(16), Just(1024)],
            seed in any::<u64>(),
        ) {
            let w = pruned(nrows, ncols, density, seed);
            check::<i8>(&w, batch, window)?;
            check::<bf16>(&w, batch, window)?;
            check::<f16>(&w, batch, window)?;
        }
    }

    /// Bad parts are errors naming the problem: a value the type cannot hold, a scale
    /// count or a bf16 scale other than 1, padding that is not zero, a non-finite weight.
    #[test]
    fn bad_parts_are_errors() {
        let w = DMatrix::from_row_slice(
            3,
            4,
            &[1.0f32, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 4.0, 5.0, 0.0],
        );
        let sell: SlicedEll<f32, u32> = SlicedEll::from_csr(&Csr::from_dense(&w).unwrap());
        let (parts, scales) = Int8Sell::from_sell(&sell).unwrap().into_parts();
        assert!(Int8Sell::try_from_parts(parts.clone(), scales.clone()).is_ok());
        let mut minus = parts.clone();
        minus.values[0] = i8::MIN;
        let e = Int8Sell::try_from_parts(minus, scales.clone()).unwrap_err().to_string();
        assert!(e.contains("-128") && e.contains("not a int8 value"), "{e}");
        let e = Int8Sell::try_from_parts(parts.clone(), scales[..2].to_vec()).unwrap_err();
        assert!(e.to_string().contains("2 scales for 3 rows"), "{e}");
        let mut padded = parts.clone();
        let last = padded.values.len() - 1;
        padded.values[last] = 9;
        let e = Int8Sell::try_from_parts(padded, scales).unwrap_err().to_string();
        assert!(e.contains("narrow sell"), "{e}");
        let (parts, _) = Bf16Sell::from_sell(&sell).unwrap().into_parts();
        let e = Bf16Sell::try_from_parts(parts, vec![2.0; 3]).unwrap_err().to_string();
        assert!(e.contains("row 0: scale 2 for bf16 values"), "{e}");
        let mut nan = w.clone();
        nan[(2, 1)] = f32::NAN;
        let sell: SlicedEll<f32, u32> = SlicedEll::from_csr(&Csr::from_dense(&nan).unwrap());
        assert!(Int8Sell::from_sell(&sell).is_err());
        let mut big = w;
        big[(0, 0)] = 1e6;
        let sell: SlicedEll<f32, u32> = SlicedEll::from_csr(&Csr::from_dense(&big).unwrap());
        let e = F16Sell::from_sell(&sell).unwrap_err().to_string();
        assert!(e.contains("row 0") && e.contains("beyond f16's range"), "{e}");
    }
}
