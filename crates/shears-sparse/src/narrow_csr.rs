//! [`NarrowCsr`]: CSR whose values are stored narrower than `f32` (int8 with a scale per
//! row, bf16, f16) and widened on load, so the products move fewer bytes per weight; int8
//! batches run in integers instead.

use half::{bf16, f16};
use nalgebra::DMatrix;
use shears_core::Mask;

use crate::csr::Csr;
use crate::error::{Error, Result};
use crate::index::SpIndex;
use crate::kernels::{self, Stored};
use crate::product::{Layout, Operands, Sealed, SparseProduct, finish, via_columns};
use crate::quant::{quantize_value, symmetric_scale};
use crate::validate;

mod sealed {
    #![allow(unreachable_pub, reason = "sealed: public in name, unnameable outside")]
    pub trait Sealed {}
    impl Sealed for i8 {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
}

/// A value type [`NarrowCsr`] stores: `i8` (symmetric, one scale per row), `bf16` or
/// `f16` (no scale). Sealed: the kernels widen exactly these.
#[allow(private_bounds, reason = "the kernels' widening trait stays crate-private")]
pub trait NarrowValue: sealed::Sealed + Stored<f32> + std::fmt::Debug + PartialEq {
    /// What the value is called in errors and reports (`int8`, `bf16`, `f16`).
    const NAME: &'static str;

    /// Whether rows carry a scale (`int8`); else every scale is 1 and never applied.
    const SCALED: bool;

    /// Narrows one row of finite `f32` values into `out`, returning the row's scale (1
    /// for the formats without one).
    ///
    /// # Errors
    /// A value the type cannot hold: beyond `f16`'s range, say (`Error::InvalidQuantization`
    /// with the value's position in the row).
    #[doc(hidden)]
    fn narrow_row(row: &[f32], out: &mut Vec<Self>) -> Result<f32>;

    /// Whether a stored value is one the format can hold: finite (`bf16`, `f16`), or in
    /// `-127..=127` (`i8`, symmetric).
    #[doc(hidden)]
    fn is_valid(self) -> bool;

    /// The values as int8, for the integer kernels (`None` for the float types).
    #[doc(hidden)]
    fn as_int8(values: &[Self]) -> Option<&[i8]> {
        let _ = values;
        None
    }

    /// Bytes per stored value in the byte formats (little-endian).
    #[doc(hidden)]
    const BYTES: usize;

    /// The value's bits (`i8` as its byte, `bf16`/`f16` as theirs).
    #[doc(hidden)]
    fn to_bits(self) -> u16;

    /// The value of bits [`NarrowValue::to_bits`] gave.
    #[doc(hidden)]
    fn from_bits(bits: u16) -> Self;
}

/// An empty vector with room for a scale per row of `nrows`, or the error naming
/// `format` when there is no memory for them: formats whose buffers do not bound their
/// row count (no columns, or blocks taller than the values) are bounded here instead of
/// aborting on the allocation.
pub(crate) fn reserve_scales(format: &'static str, nrows: usize) -> Result<Vec<f32>> {
    let mut scales = Vec::new();
    scales.try_reserve_exact(nrows).map_err(|_| Error::Format {
        format,
        error: crate::FormatError::InvalidStructure {
            reason: format!("no memory for the scales of {nrows} rows"),
        },
    })?;
    Ok(scales)
}

/// `values` as [`NarrowValue::BYTES`] little-endian bytes each.
pub(crate) fn values_to_bytes<V: NarrowValue>(values: &[V]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_bits().to_le_bytes().into_iter().take(V::BYTES)).collect()
}

/// The values [`values_to_bytes`] wrote, or `None` if the length is not a whole number
/// of them.
pub(crate) fn values_from_bytes<V: NarrowValue>(bytes: &[u8]) -> Option<Vec<V>> {
    let values = bytes.chunks_exact(V::BYTES);
    if !values.remainder().is_empty() {
        return None;
    }
    let bits = |b: &[u8]| u16::from_le_bytes([b[0], b.get(1).copied().unwrap_or(0)]);
    Some(values.map(|b| V::from_bits(bits(b))).collect())
}

impl NarrowValue for i8 {
    const NAME: &'static str = "int8";
    const SCALED: bool = true;

    /// `scale = max |w| / 127` (1 for a row of zeros), values `round(w / scale)` with ties
    /// to even: every weight within half a step, and zero stays zero.
    fn narrow_row(row: &[f32], out: &mut Vec<i8>) -> Result<f32> {
        let scale = symmetric_scale(row);
        out.extend(row.iter().map(|&v| quantize_value(v, scale)));
        Ok(scale)
    }

    fn is_valid(self) -> bool {
        self != i8::MIN
    }

    fn as_int8(values: &[i8]) -> Option<&[i8]> {
        Some(values)
    }

    const BYTES: usize = 1;

    fn to_bits(self) -> u16 {
        u16::from(self as u8)
    }

    fn from_bits(bits: u16) -> i8 {
        bits as u8 as i8
    }
}

impl NarrowValue for bf16 {
    const NAME: &'static str = "bf16";
    const SCALED: bool = false;

    /// Rounded to nearest, ties to even; a value that rounds past bf16's largest (the top
    /// of f32's range) is an error, not an infinity.
    fn narrow_row(row: &[f32], out: &mut Vec<bf16>) -> Result<f32> {
        narrow_float(row, out, bf16::from_f32, bf16::is_infinite)
    }

    fn is_valid(self) -> bool {
        self.is_finite()
    }

    const BYTES: usize = 2;

    fn to_bits(self) -> u16 {
        bf16::to_bits(self)
    }

    fn from_bits(bits: u16) -> bf16 {
        bf16::from_bits(bits)
    }
}

impl NarrowValue for f16 {
    const NAME: &'static str = "f16";
    const SCALED: bool = false;

    /// Rounded to nearest, ties to even; a value beyond f16's range (65504) is an error,
    /// not an infinity.
    fn narrow_row(row: &[f32], out: &mut Vec<f16>) -> Result<f32> {
        narrow_float(row, out, f16::from_f32, f16::is_infinite)
    }

    fn is_valid(self) -> bool {
        self.is_finite()
    }

    const BYTES: usize = 2;

    fn to_bits(self) -> u16 {
        f16::to_bits(self)
    }

    fn from_bits(bits: u16) -> f16 {
        f16::from_bits(bits)
    }
}

/// Checks what a narrow format adds to its structure: every stored value one `V` can
/// hold, one scale per row, each positive and finite (and 1 for `bf16`/`f16`; for `i8`,
/// finite times 127, so every value it scales is).
pub(crate) fn check_narrow<V: NarrowValue>(
    values: &[V],
    scales: &[f32],
    nrows: usize,
) -> Result<()> {
    if let Some(k) = values.iter().position(|v| !v.is_valid()) {
        return Err(Error::InvalidQuantization {
            reason: format!("stored value {:?} (entry {k}) is not a {} value", values[k], V::NAME),
        });
    }
    if scales.len() != nrows {
        return Err(Error::InvalidQuantization {
            reason: format!("{} scales for {nrows} rows", scales.len()),
        });
    }
    let valid = |s: f32| {
        s.is_finite() && s > 0.0 && if V::SCALED { (s * 127.0).is_finite() } else { s == 1.0 }
    };
    if let Some(r) = scales.iter().position(|&s| !valid(s)) {
        return Err(Error::InvalidQuantization {
            reason: format!("row {r}: scale {} for {} values", scales[r], V::NAME),
        });
    }
    Ok(())
}

/// A row of finite `f32` values rounded to a half-precision type `H` (scale 1); a value
/// that becomes infinite is an error naming its entry.
fn narrow_float<H: NarrowValue>(
    row: &[f32],
    out: &mut Vec<H>,
    convert: fn(f32) -> H,
    is_infinite: fn(H) -> bool,
) -> Result<f32> {
    for (k, &v) in row.iter().enumerate() {
        let h = convert(v);
        if is_infinite(h) {
            return Err(Error::InvalidQuantization {
                reason: format!("value {v} (entry {k} of its row) is beyond {}'s range", H::NAME),
            });
        }
        out.push(h);
    }
    Ok(1.0)
}

/// A CSR matrix of `f32` weights stored as `V` (`i8`, `bf16` or `f16`) with column indices
/// of type `I`: `A[r, c] = scale[r] * V[r, c]` (the scale is 1 for `bf16` and `f16`).
///
/// At batch 1 a product reads each stored weight's value and column once, so narrower
/// values mean fewer bytes moved: 3 bytes per weight for `i8` with `u16` columns against
/// 6 for `f32`. The kernels are [`Csr`]'s, widening each value to `f32` exactly as it is
/// loaded; products take and give `f32`.
///
/// Except int8 products against one token (`matvec`, and `matmul` of one column) and of
/// 9 tokens or more (batches of 2 to 8 widen): those quantize `X` per token as
/// [`crate::Int8Matrix`] does and sum in 32-bit integers, in the arithmetic of the
/// [`crate::Int8Matrix`] with the same values written out dense and the same row scales,
/// bit for bit. Against one token, CPUs with AVX-512 VBMI look up each 64 stored
/// weights' inputs with a few permutes instead of 64 loads, at sparsities up to about
/// 92%; batches take two stored weights per multiply-add. Activation rounding makes
/// them differ from the widened products by up to half a 127th of each token's largest
/// activation per stored weight, and a NaN or infinity in a token makes all of that
/// token's outputs NaN (rows that never read it too), as in [`crate::Int8Matrix`].
///
/// # Invariants
/// [`Csr`]'s, checked by [`NarrowCsr::try_from_parts`]; and `scales.len() == nrows`, each
/// scale positive and finite (all 1 for `bf16` and `f16`).
///
/// ```
/// use nalgebra::{dmatrix, dvector};
/// use shears_sparse::{Csr, Int8Csr, SparseProduct};
///
/// let w = dmatrix![127.0f32, 0.0, -63.5; 0.0, 2.0, 0.0];
/// let q: Int8Csr<u16> = Int8Csr::from_csr(&Csr::from_dense(&w)?)?;
/// assert_eq!(q.values(), [127, -64, 127]); // -63.5 rounds to even
/// assert_eq!(q.scales(), [1.0, 2.0 / 127.0]);
/// assert_eq!(q.matvec(&dvector![1.0, 1.0, 1.0])?[0], 63.0);
/// # Ok::<(), shears_sparse::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct NarrowCsr<V, I = u32> {
    nrows: usize,
    ncols: usize,
    indptr: Vec<usize>,
    indices: Vec<I>,
    values: Vec<V>,
    scales: Vec<f32>,
}

/// [`NarrowCsr`] with int8 values and a scale per row.
pub type Int8Csr<I = u32> = NarrowCsr<i8, I>;
/// [`NarrowCsr`] with bf16 values.
pub type Bf16Csr<I = u32> = NarrowCsr<bf16, I>;
/// [`NarrowCsr`] with f16 values.
pub type F16Csr<I = u32> = NarrowCsr<f16, I>;

impl<V: NarrowValue, I: SpIndex> NarrowCsr<V, I> {
    /// `csr`'s entries (the same positions, kept zeros included) narrowed to `V`.
    ///
    /// # Errors
    /// [`shears_core::Error::NonFinite`] for a NaN or infinite value;
    /// [`Error::InvalidQuantization`] for a value `V` cannot hold (naming its row).
    pub fn from_csr(csr: &Csr<f32, I>) -> Result<Self> {
        if let Some(index) = csr.values().iter().position(|v| !v.is_finite()) {
            return Err(shears_core::Error::NonFinite { tensor: "weights".into(), index }.into());
        }
        let (nrows, ncols) = csr.shape();
        let mut values = Vec::with_capacity(csr.nnz());
        let mut scales = Vec::with_capacity(nrows);
        for r in 0..nrows {
            let row = &csr.values()[csr.indptr()[r]..csr.indptr()[r + 1]];
            let scale = V::narrow_row(row, &mut values).map_err(|e| match e {
                Error::InvalidQuantization { reason } => {
                    Error::InvalidQuantization { reason: format!("row {r}: {reason}") }
                }
                other => other,
            })?;
            scales.push(scale);
        }
        Ok(NarrowCsr {
            nrows,
            ncols,
            indptr: csr.indptr().to_vec(),
            indices: csr.indices().to_vec(),
            values,
            scales,
        })
    }

    /// The entries of `weights` that `mask` keeps, narrowed to `V`.
    ///
    /// # Errors
    /// As [`Csr::from_dense_masked`] and [`NarrowCsr::from_csr`].
    pub fn from_dense_masked(weights: &DMatrix<f32>, mask: &Mask) -> Result<Self> {
        Self::from_csr(&Csr::from_dense_masked(weights, mask)?)
    }

    /// A matrix from raw buffers, validated.
    ///
    /// # Errors
    /// [`Error::Format`] naming the first failed check of the CSR structure;
    /// [`Error::IndexOverflow`] if `I` cannot address `ncols`; [`Error::InvalidQuantization`]
    /// for a stored value the format cannot hold (a NaN or infinity, or int8's -128), a
    /// scale count other than `nrows`, a scale that is not positive and finite, or (for
    /// `bf16`/`f16`) one other than 1.
    pub fn try_from_parts(
        nrows: usize,
        ncols: usize,
        indptr: Vec<usize>,
        indices: Vec<I>,
        values: Vec<V>,
        scales: Vec<f32>,
    ) -> Result<Self> {
        if ncols > I::MAX_COLS {
            return Err(Error::IndexOverflow { what: "column count", value: ncols, bits: I::BITS });
        }
        validate::compressed(nrows, ncols, &indptr, &indices, values.len())
            .map_err(|error| Error::Format { format: "narrow csr", error })?;
        check_narrow(&values, &scales, nrows)?;
        Ok(NarrowCsr { nrows, ncols, indptr, indices, values, scales })
    }

    /// `(nrows, ncols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.nrows, self.ncols)
    }

    /// Stored entries.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// Row pointers (`nrows + 1`).
    pub fn indptr(&self) -> &[usize] {
        &self.indptr
    }

    /// Column indices, row by row.
    pub fn indices(&self) -> &[I] {
        &self.indices
    }

    /// Stored values, row by row.
    pub fn values(&self) -> &[V] {
        &self.values
    }

    /// One scale per row (all 1 for `bf16` and `f16`).
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Bytes a batch-1 product reads from the matrix: values, column indices, row
    /// pointers and scales.
    pub fn bytes_read(&self) -> usize {
        self.nnz() * (size_of::<V>() + size_of::<I>())
            + self.indptr.len() * size_of::<usize>()
            + self.scales.len() * size_of::<f32>()
    }

    /// The `f32` matrix the stored values stand for (`scale * value`, exactly as the
    /// products read it).
    pub fn to_csr(&self) -> Csr<f32, I> {
        let mut values = Vec::with_capacity(self.nnz());
        for r in 0..self.nrows {
            let s = self.scales[r];
            let row = &self.values[self.indptr[r]..self.indptr[r + 1]];
            values.extend(row.iter().map(|v| if V::SCALED { s * v.get() } else { v.get() }));
        }
        Csr::from_parts_trusted(
            self.nrows,
            self.ncols,
            self.indptr.clone(),
            self.indices.clone(),
            values,
        )
    }

    fn as_view(&self) -> kernels::CsrView<'_, f32, I, V> {
        self.view_of(&self.values)
    }

    /// The matrix's view with `values` (its own, or the same values as another type).
    fn view_of<'a, W>(&'a self, values: &'a [W]) -> kernels::CsrView<'a, f32, I, W> {
        kernels::CsrView {
            nrows: self.nrows,
            ncols: self.ncols,
            indptr: &self.indptr,
            indices: &self.indices,
            values,
            // bf16 and f16 rows are not scaled: no multiply by 1 per row.
            row_scales: V::SCALED.then_some(&self.scales[..]),
        }
    }
}

impl<V: NarrowValue, I: SpIndex> Sealed<f32> for NarrowCsr<V, I> {
    /// [`Csr`]'s kernels, multi-threaded and bit-identical across paths and threads in the
    /// same way; each row's dot product is multiplied by its scale before `alpha`. Int8
    /// products against one token, and batches of [`kernels::INTEGER_MIN_BATCH`] tokens
    /// or more, run the integer kernels instead.
    fn product(&self, operands: Operands<'_, f32>) {
        match (operands, V::as_int8(&self.values)) {
            (Operands::Vector { alpha, x, beta, y }, Some(values)) => {
                kernels::int8_csr_spmv(self.view_of(values), alpha, x, beta, y)
            }
            (Operands::Vector { alpha, x, beta, y }, None) => {
                kernels::csr_spmv(self.as_view(), alpha, x, beta, y)
            }
            (Operands::Matrix { alpha, x, beta, y, then }, Some(values)) if x.ncols() == 1 => {
                let (x, y) = (x.as_slice(), y.as_mut_slice());
                kernels::int8_csr_spmv(self.view_of(values), alpha, x, beta, y);
                finish(then, y.len(), y);
            }
            (Operands::Matrix { alpha, x, beta, y, then }, Some(values))
                if x.ncols() >= kernels::INTEGER_MIN_BATCH =>
            {
                kernels::int8_csr_spmm(self.view_of(values), alpha, x, beta, y, then)
            }
            (Operands::Matrix { alpha, x, beta, y, then }, _) => {
                kernels::csr_spmm(self.as_view(), alpha, x, beta, y, then, Layout::COLUMNS)
            }
            // The integer kernels take `X` and `Y` by columns.
            (Operands::Oriented { alpha, x, beta, y, then, layout }, Some(_))
                if layout.inputs_and_batch(x).1 >= kernels::INTEGER_MIN_BATCH =>
            {
                via_columns(self, alpha, x, beta, y, then, layout)
            }
            (Operands::Oriented { alpha, x, beta, y, then, layout }, _) => {
                kernels::csr_spmm(self.as_view(), alpha, x, beta, y, then, layout)
            }
        }
    }
}

impl<V: NarrowValue, I: SpIndex> SparseProduct<f32> for NarrowCsr<V, I> {
    fn shape(&self) -> (usize, usize) {
        (self.nrows, self.ncols)
    }
}

#[cfg(test)]
mod tests {
    use nalgebra::DMatrix;
    use proptest::prelude::*;

    use super::*;
    use crate::kernels::INTEGER_MIN_BATCH;
    use crate::testing::pruned;

    /// The product as a plain loop over the dequantized entries in f64, the oracle.
    fn reference(a: &Csr<f32, u32>, x: &DMatrix<f32>) -> DMatrix<f64> {
        let dense = a.to_dense().map(f64::from);
        dense * x.map(f64::from)
    }

    fn check<V: NarrowValue>(
        w: &DMatrix<f32>,
        batch: usize,
    ) -> std::result::Result<(), TestCaseError> {
        let csr: Csr<f32, u32> = Csr::from_dense(w).unwrap();
        let narrow = NarrowCsr::<V, u32>::from_csr(&csr).unwrap();
        prop_assert_eq!(narrow.indices(), csr.indices());
        let widened = narrow.to_csr();
        // Every weight within half a quantization step (int8) or half an ulp of V.
        for r in 0..csr.nrows() {
            for k in csr.indptr()[r]..csr.indptr()[r + 1] {
                let (w, got) = (f64::from(csr.values()[k]), f64::from(widened.values()[k]));
                let bound = if V::NAME == "int8" {
                    // Half a step, plus the f32 roundings of `w / scale` and `q * scale`
                    // (each at most 127 units of 2^-24 of a step).
                    f64::from(narrow.scales()[r]) * (0.5 + 2f64.powi(-15))
                } else {
                    w.abs() * if V::NAME == "bf16" { 2f64.powi(-8) } else { 2f64.powi(-11) } + 1e-7
                };
                prop_assert!((w - got).abs() <= bound, "{} r{r} {w} -> {got}", V::NAME);
                prop_assert!(w != 0.0 || got == 0.0, "zero stays zero");
            }
        }
        let x =
            DMatrix::from_fn(w.ncols(), batch, |c, j| ((c * 7 + j * 3) % 11) as f32 * 0.25 - 1.0);
        let integer = batch == 1 || batch >= INTEGER_MIN_BATCH;
        if let Some(values) = V::as_int8(narrow.values()).filter(|_| integer) {
            // Int8 products against one token, and batches, run in integers, on tokens
            // quantized as the dense int8 product quantizes them: its bits on the same
            // weights written out.
            let y0 = DMatrix::from_fn(w.nrows(), batch, |r, j| (r + 2 * j) as f32 * 0.5);
            let (mut got, mut want) = (y0.clone(), y0.clone());
            narrow.matmul_into(0.5, &x, 2.0, &mut got).unwrap();
            written_out(&narrow, values).matmul_into(0.5, &x, 2.0, &mut want).unwrap();
            let bits = |m: &[f32]| m.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(got.as_slice()), bits(want.as_slice()), "int8 batch {}", batch);
            if batch == 1 {
                let mut y = y0.as_slice().to_vec();
                narrow.matvec_into(0.5, x.as_slice(), 2.0, &mut y).unwrap();
                prop_assert_eq!(bits(&y), bits(want.as_slice()), "int8 matvec");
            }
            return Ok(());
        }
        let want = reference(&widened, &x);
        let got = if batch == 1 {
            DMatrix::from_column_slice(
                w.nrows(),
                1,
                narrow.matvec(&x.column(0).into_owned()).unwrap().as_slice(),
            )
        } else {
            narrow.matmul(&x).unwrap()
        };
        for (g, e) in got.iter().zip(want.iter()) {
            let tol = 1e-4 * (1.0 + e.abs()) + 1e-5 * x.nrows() as f64;
            prop_assert!((f64::from(*g) - e).abs() <= tol, "{} batch {batch}: {g} vs {e}", V::NAME);
        }
        Ok(())
    }

    /// The dense int8 matrix of an int8 CSR matrix's entries (whose int8 values are
    /// `values`), with its row scales.
    fn written_out<V: NarrowValue>(csr: &NarrowCsr<V, u32>, values: &[i8]) -> crate::Int8Matrix {
        let (nrows, ncols) = csr.shape();
        let mut dense = vec![0i8; nrows * ncols];
        for r in 0..nrows {
            for k in csr.indptr()[r]..csr.indptr()[r + 1] {
                dense[r * ncols + csr.indices()[k] as usize] = values[k];
            }
        }
        let scheme = crate::QuantScheme::PerRow;
        crate::Int8Matrix::try_from_parts(nrows, ncols, scheme, dense, csr.scales().to_vec())
            .unwrap()
    }

    proptest! {
        /// Narrowing keeps every weight within its bound and every pruned zero zero, and
        /// the products equal the widened matrix's dense product (in f64) at batch 1 and
        /// batched, for int8, bf16 and f16; int8 products against one token and batches
        /// of [`INTEGER_MIN_BATCH`] tokens or more give the dense int8 product's bits.
        #[test]
        fn products_match_the_widened_dense_product(
            (nrows, ncols) in (1usize..40, 1usize..70),
            density in 0.0f64..1.0,
            batch in prop_oneof![Just(1usize), 2usize..40],
            seed in any::<u64>(),
        ) {
            let w = pruned(nrows, ncols, density, seed);
            check::<i8>(&w, batch)?;
            check::<bf16>(&w, batch)?;
            check::<f16>(&w, batch)?;
        }
    }

    /// Int8 batches run in integers, which quantize the activations: each output within
    /// the rounding of every stored weight's activation (half a step of the token's
    /// scale) of the widened product.
    #[test]
    fn int8_batches_stay_near_the_widened_product() {
        let w = pruned(50, 300, 0.2, 9);
        let narrow = Int8Csr::<u16>::from_csr(&Csr::from_dense(&w).unwrap()).unwrap();
        let batch = INTEGER_MIN_BATCH + 7;
        let x = DMatrix::from_fn(300, batch, |c, j| ((c * 13 + j * 5) % 17) as f32 * 0.3 - 2.4);
        let got = narrow.matmul(&x).unwrap();
        let want = narrow.to_csr().matmul(&x).unwrap();
        for j in 0..batch {
            let step = x.column(j).amax() / 127.0;
            for r in 0..50 {
                let row = narrow.to_csr().to_dense().row(r).abs().sum();
                let bound = row * step * 0.5 * (1.0 + 1e-4) + 1e-5;
                let (g, w) = (got[(r, j)], want[(r, j)]);
                assert!((g - w).abs() <= bound, "row {r} token {j}: {g} vs {w} (bound {bound})");
            }
        }
    }

    /// An int8 row's product is exactly `scale * (the integer dot product)` when the
    /// inputs are integers whose largest magnitude is 127 (so the token's scale is 1 and
    /// quantizing keeps them), then combined with `alpha` and `beta`: at densities that
    /// run each of the one-token kernels' copies this CPU has.
    #[test]
    fn int8_rows_are_scaled_integer_dot_products() {
        for (rows, cols, density) in [(17, 300, 0.3), (23, 1024, 0.1), (9, 2048, 0.17)] {
            let w = pruned(rows, cols, density, 7);
            let q = Int8Csr::<u16>::from_csr(&Csr::from_dense(&w).unwrap()).unwrap();
            let x: Vec<f32> = (0..cols).map(|c| ((c * 37) % 255) as f32 - 127.0).collect();
            let before: Vec<f32> = (0..rows).map(|r| r as f32 - 3.0).collect();
            let mut y = before.clone();
            q.matvec_into(0.5, &x, 2.0, &mut y).unwrap();
            for (r, &got) in y.iter().enumerate() {
                let range = q.indptr()[r]..q.indptr()[r + 1];
                let dot: i64 = range
                    .map(|k| i64::from(q.values()[k]) * x[usize::from(q.indices()[k])] as i64)
                    .sum();
                let want = 0.5 * (dot as f32 * q.scales()[r]) + 2.0 * before[r];
                assert_eq!(got, want, "{rows}x{cols} at {density}, row {r}");
            }
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let w = DMatrix::from_row_slice(1, 2, &[1.0f32, f32::NAN]);
        assert!(matches!(
            Int8Csr::<u32>::from_csr(&Csr::from_dense(&w).unwrap()),
            Err(Error::Core(shears_core::Error::NonFinite { index: 1, .. }))
        ));
        let big = DMatrix::from_row_slice(2, 2, &[0.0f32, 1.0, 7e4, 0.0]);
        let err = F16Csr::<u32>::from_csr(&Csr::from_dense(&big).unwrap()).unwrap_err();
        assert!(err.to_string().contains("row 1"), "{err}");
        assert!(Bf16Csr::<u32>::from_csr(&Csr::from_dense(&big).unwrap()).is_ok());
        // The top of f32's range rounds past bf16's largest value.
        let top = DMatrix::from_row_slice(2, 2, &[1.0f32, 0.0, 0.0, f32::MAX]);
        let err = Bf16Csr::<u32>::from_csr(&Csr::from_dense(&top).unwrap()).unwrap_err();
        assert!(err.to_string().contains("row 1"), "{err}");
        // int8 of f32::MAX dequantizes finitely, within half a step.
        let max = DMatrix::from_row_slice(1, 2, &[f32::MAX, -f32::MAX]);
        let q = Int8Csr::<u32>::from_csr(&Csr::from_dense(&max).unwrap()).unwrap();
        let back = q.to_csr();
        assert!(back.values().iter().all(|v| v.is_finite()), "{:?}", back.values());
        assert!(
            f64::from(f32::MAX) - f64::from(back.values()[0]) <= f64::from(q.scales()[0]) / 2.0
        );
        // Rows past usize's range are an error, not an overflow.
        assert!(matches!(
            Int8Csr::<u32>::try_from_parts(usize::MAX, 1, vec![], vec![], vec![], vec![]),
            Err(Error::Format { .. })
        ));
        let stored =
            |v: f16| F16Csr::<u32>::try_from_parts(1, 3, vec![0, 1], vec![2], vec![v], vec![1.0]);
        assert!(stored(f16::ONE).is_ok());
        assert!(matches!(stored(f16::INFINITY), Err(Error::InvalidQuantization { .. })));
        assert!(matches!(stored(f16::NAN), Err(Error::InvalidQuantization { .. })));
        let minus128 =
            Int8Csr::<u32>::try_from_parts(1, 1, vec![0, 1], vec![0], vec![-128], vec![1.0]);
        assert!(matches!(minus128, Err(Error::InvalidQuantization { .. })));
        let parts = |scales: Vec<f32>| {
            Int8Csr::<u32>::try_from_parts(2, 3, vec![0, 1, 2], vec![0, 2], vec![5, -3], scales)
        };
        assert!(parts(vec![0.5, 2.0]).is_ok());
        for bad in [vec![0.5], vec![0.5, 0.0], vec![f32::INFINITY, 1.0], vec![-1.0, 1.0]] {
            assert!(matches!(parts(bad), Err(Error::InvalidQuantization { .. })));
        }
        let half =
            Bf16Csr::<u32>::try_from_parts(1, 2, vec![0, 1], vec![1], vec![bf16::ONE], vec![2.0]);
        assert!(matches!(half, Err(Error::InvalidQuantization { .. })));
        let unsorted =
            Int8Csr::<u32>::try_from_parts(1, 3, vec![0, 2], vec![2, 1], vec![1, 1], vec![1.0]);
        assert!(matches!(unsorted, Err(Error::Format { .. })));
    }
}
