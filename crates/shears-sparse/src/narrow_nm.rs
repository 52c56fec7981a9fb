//! [`NarrowNm`]: N:M-packed weights whose values are stored narrower than `f32` (int8
//! with a scale per row, bf16, f16) and widened on load, so a batch-1 product moves fewer
//! bytes per kept weight.

use half::{bf16, f16};
use nalgebra::DMatrix;
use shears_core::{Mask, NmPattern};

use crate::error::{Error, Result};
use crate::kernels::{self, NmView};
use crate::narrow_csr::{NarrowValue, check_narrow};
use crate::nm::NmSparse;
use crate::product::{Layout, Operands, Sealed, SparseProduct, via_columns};
use crate::validate;

/// An N:M matrix of `f32` weights stored as `V` (`i8`, `bf16` or `f16`): the slots and
/// positions of [`NmSparse`], each row's values narrowed, with `A[r, c] = scale[r] * V`
/// (the scale is 1 for `bf16` and `f16`).
///
/// At 2:4 a kept `f32` weight costs 5 bytes (value and position); `bf16` or `f16` values
/// make it 3, `i8` 2. The products widen each row's values to the `f32` they stand for
/// (`scale * value`, rounded once, the value [`NarrowNm::to_nm`] holds) and run
/// [`NmSparse`]'s kernels on them, so they give exactly the bits of `to_nm()`'s products,
/// on every kernel path and thread count.
///
/// Except int8 products of two tokens or more (`matmul`; `matvec`, one token, widens):
/// those quantize `X` per token as [`crate::Int8Matrix`] does and sum in integers (VNNI
/// where the CPU has it), in the arithmetic of the [`crate::Int8Matrix`] with the same
/// values written out dense and the same row scales, bit for bit. Activation rounding
/// makes them differ from the widened products by up to half a 127th of each token's
/// largest activation per kept weight, and a NaN or infinity in a token makes all of
/// that token's outputs NaN (rows that never read it too), as in [`crate::Int8Matrix`].
/// A matrix with two nonzero slots at one position of a group (which nothing in shears
/// writes) always widens.
///
/// # Invariants
/// [`NmSparse`]'s, checked by [`NarrowNm::try_from_parts`]; and `scales.len() == nrows`,
/// each scale positive and finite (all 1 for `bf16` and `f16`).
///
/// ```
/// use nalgebra::{dmatrix, dvector};
/// use shears_core::NmPattern;
/// use shears_sparse::{Bf16Nm, NmSparse, SparseProduct};
///
/// let w = dmatrix![0.0f32, 1.5, -2.0, 0.0, 0.0, 0.0, 3.0, 0.25];
/// let nm: Bf16Nm = Bf16Nm::from_nm(&NmSparse::from_dense(&w, NmPattern::TWO_FOUR)?)?;
/// assert_eq!(nm.bytes_read(), 4 * 3);
/// assert_eq!(nm.matvec(&dvector![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])?[0], 2.75);
/// # Ok::<(), shears_sparse::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct NarrowNm<V> {
    nrows: usize,
    ncols: usize,
    pattern: NmPattern,
    values: Vec<V>,
    positions: Vec<u8>,
    scales: Vec<f32>,
    /// Int8 values with no two nonzero slots at one position of a group: batched products
    /// may run the integer kernels.
    integer_batches: bool,
}

/// [`NarrowNm`] with int8 values and a scale per row.
pub type Int8Nm = NarrowNm<i8>;
/// [`NarrowNm`] with bf16 values.
pub type Bf16Nm = NarrowNm<bf16>;
/// [`NarrowNm`] with f16 values.
pub type F16Nm = NarrowNm<f16>;

impl<V: NarrowValue> NarrowNm<V> {
    /// `nm`'s slots (the same positions, padding included) with their values narrowed to
    /// `V`, row by row.
    ///
    /// # Errors
    /// [`shears_core::Error::NonFinite`] for a NaN or infinite value;
    /// [`Error::InvalidQuantization`] for a value `V` cannot hold (naming its row).
    pub fn from_nm(nm: &NmSparse<f32>) -> Result<Self> {
        if let Some(index) = nm.values().iter().position(|v| !v.is_finite()) {
            return Err(shears_core::Error::NonFinite { tensor: "weights".into(), index }.into());
        }
        let (nrows, ncols) = nm.shape();
        let pattern = nm.pattern();
        let per_row = ncols.div_ceil(pattern.m()) * pattern.n();
        let mut values = Vec::with_capacity(nm.values().len());
        // A matrix with no columns holds no slots whatever its row count, so that count
        // is bounded only here, by what a scale per row can be allocated for.
        let mut scales = crate::narrow_csr::reserve_scales("narrow n:m", nrows)?;
        for (r, row) in nm.values().chunks(per_row.max(1)).take(nrows).enumerate() {
            let scale = V::narrow_row(row, &mut values).map_err(|e| match e {
                Error::InvalidQuantization { reason } => {
                    Error::InvalidQuantization { reason: format!("row {r}: {reason}") }
                }
                other => other,
            })?;
            scales.push(scale);
        }
        // Rows without slots (no columns) still have a scale.
        scales.resize(nrows, 1.0);
        Ok(NarrowNm::new(nrows, ncols, pattern, values, nm.positions().to_vec(), scales))
    }

    /// The matrix of validated parts.
    fn new(
        nrows: usize,
        ncols: usize,
        pattern: NmPattern,
        values: Vec<V>,
        positions: Vec<u8>,
        scales: Vec<f32>,
    ) -> Self {
        let integer_batches = V::as_int8(&values)
            .is_some_and(|values| slots_distinct(pattern.n(), values, &positions));
        NarrowNm { nrows, ncols, pattern, values, positions, scales, integer_batches }
    }

    /// The entries of `weights` that `mask` keeps, packed N:M and narrowed to `V`.
    ///
    /// # Errors
    /// As [`NmSparse::from_dense_masked`] and [`NarrowNm::from_nm`].
    pub fn from_dense_masked(
        weights: &DMatrix<f32>,
        mask: &Mask,
        pattern: NmPattern,
    ) -> Result<Self> {
        Self::from_nm(&NmSparse::from_dense_masked(weights, mask, pattern)?)
    }

    /// A matrix from raw buffers, validated.
    ///
    /// # Errors
    /// [`Error::Format`] naming the first failed check of the N:M structure;
    /// [`Error::InvalidQuantization`] for a stored value the format cannot hold (a NaN or
    /// infinity, or int8's -128), a scale count other than `nrows`, a scale that is not
    /// positive and finite, or (for `bf16`/`f16`) one other than 1.
    pub fn try_from_parts(
        nrows: usize,
        ncols: usize,
        pattern: NmPattern,
        values: Vec<V>,
        positions: Vec<u8>,
        scales: Vec<f32>,
    ) -> Result<Self> {
        validate::nm(nrows, ncols, pattern, &positions, values.len())
            .map_err(|error| Error::Format { format: "narrow n:m", error })?;
        check_narrow(&values, &scales, nrows)?;
        Ok(NarrowNm::new(nrows, ncols, pattern, values, positions, scales))
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
    pub fn values(&self) -> &[V] {
        &self.values
    }

    /// The slot positions inside their groups.
    pub fn positions(&self) -> &[u8] {
        &self.positions
    }

    /// One scale per row (all 1 for `bf16` and `f16`).
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Bytes a batch-1 product reads from the matrix: values, positions, and (int8) the
    /// scales.
    pub fn bytes_read(&self) -> usize {
        self.values.len() * (size_of::<V>() + 1)
            + if V::SCALED { self.scales.len() * size_of::<f32>() } else { 0 }
    }

    /// The `f32` N:M matrix the stored values stand for (`scale * value`, exactly as the
    /// products read it).
    pub fn to_nm(&self) -> NmSparse<f32> {
        let mut values = Vec::with_capacity(self.values.len());
        for r in 0..self.nrows {
            self.view().widen_row_into(r, &mut values);
        }
        // The structure is this matrix's, validated at construction.
        NmSparse::from_parts_trusted(
            self.nrows,
            self.ncols,
            self.pattern,
            values,
            self.positions.clone(),
        )
    }

    fn view(&self) -> NmView<'_, f32, V> {
        self.view_of(&self.values)
    }

    /// The view of this matrix with its values read as `values` (the same values as
    /// another type: int8 as `i8` for the integer kernels).
    fn view_of<'a, W>(&'a self, values: &'a [W]) -> NmView<'a, f32, W> {
        NmView {
            nrows: self.nrows,
            ncols: self.ncols,
            n: self.pattern.n(),
            m: self.pattern.m(),
            values,
            positions: &self.positions,
            // bf16 and f16 rows are not scaled: no multiply by 1 per value.
            row_scales: V::SCALED.then_some(&self.scales[..]),
        }
    }
}

/// Whether no two nonzero slots of a group (`n` slots each) share a position.
fn slots_distinct(n: usize, values: &[i8], positions: &[u8]) -> bool {
    let n = n.max(1);
    values.chunks(n).zip(positions.chunks(n)).all(|(values, positions)| {
        let mut seen = [0u64; 4];
        values.iter().zip(positions).filter(|(v, _)| **v != 0).all(|(_, &p)| {
            let (word, bit) = (usize::from(p) / 64, 1u64 << (p % 64));
            let fresh = seen[word] & bit == 0;
            seen[word] |= bit;
            fresh
        })
    })
}

impl<V: NarrowValue> Sealed<f32> for NarrowNm<V> {
    /// [`NmSparse`]'s kernels on each row's widened values (the bits of
    /// [`NarrowNm::to_nm`]'s products), or for int8 batches the integer kernels.
    fn product(&self, operands: Operands<'_, f32>) {
        match operands {
            Operands::Vector { alpha, x, beta, y } => {
                kernels::nm_spmv(self.view(), alpha, x, beta, y)
            }
            // A matrix of one column is a vector: one token widens, its product bound by
            // the weights' bytes, not the arithmetic (both ways take as long).
            Operands::Matrix { alpha, x, beta, y, then } => match V::as_int8(&self.values) {
                Some(values) if self.integer_batches => {
                    let (view, x, y) = (self.view_of(values), x.as_slice(), y.as_mut_slice());
                    kernels::int8_nm_product(view, alpha, x, beta, y, then)
                }
                _ => kernels::nm_spmm(self.view(), alpha, x, beta, y, then, Layout::COLUMNS),
            },
            Operands::Oriented { alpha, x, beta, y, then, layout } => {
                match V::as_int8(&self.values) {
                    // The integer kernels take `X` and `Y` by columns.
                    Some(_) if self.integer_batches => {
                        via_columns(self, alpha, x, beta, y, then, layout)
                    }
                    _ => kernels::nm_spmm(self.view(), alpha, x, beta, y, then, layout),
                }
            }
        }
    }
}

impl<V: NarrowValue> SparseProduct<f32> for NarrowNm<V> {
    fn shape(&self) -> (usize, usize) {
        (self.nrows, self.ncols)
    }
}

#[cfg(test)]
mod tests {
    use nalgebra::{DMatrix, DVector};
    use proptest::prelude::*;
    use shears_core::MAX_SIDE;

    use super::*;

    /// An N:M-pruned matrix: in each group of `m` columns of a row, up to `n` entries kept
    /// (which and how many from `seed`), values over several magnitudes.
    fn pruned(nrows: usize, ncols: usize, pattern: NmPattern, seed: u64) -> DMatrix<f32> {
        let mut next = crate::testing::xorshift(seed);
        let mut w = DMatrix::zeros(nrows, ncols);
        for r in 0..nrows {
            for g0 in (0..ncols).step_by(pattern.m()) {
                let width = pattern.m().min(ncols - g0);
                for _ in 0..pattern.n() {
                    let s = next();
                    let c = g0 + (s as usize) % width;
                    w[(r, c)] = ((s % 1000) as f32 / 500.0 - 1.0) * 10f32.powi((s % 4) as i32 - 2);
                }
            }
        }
        w
    }

    /// `narrow`'s products equal `to_nm()`'s bit for bit (at batch 1, and batched but for
    /// int8, whose batches equal the int8 matrix written out dense; with alpha and beta),
    /// and `to_nm()` is within each value type's rounding of `nm`.
    fn check<V: NarrowValue>(
        nm: &NmSparse<f32>,
        batch: usize,
    ) -> std::result::Result<(), TestCaseError> {
        let narrow = NarrowNm::<V>::from_nm(nm).unwrap();
        prop_assert_eq!(narrow.positions(), nm.positions());
        let widened = narrow.to_nm();
        let per_row = nm.shape().1.div_ceil(nm.pattern().m()) * nm.pattern().n();
        for (k, (&w, &got)) in nm.values().iter().zip(widened.values()).enumerate() {
            let (w, got) = (f64::from(w), f64::from(got));
            let bound = match V::NAME {
                "int8" => f64::from(narrow.scales()[k / per_row.max(1)]) * (0.5 + 2f64.powi(-15)),
                "bf16" => w.abs() * 2f64.powi(-8),
                _ => w.abs() * 2f64.powi(-11) + 1e-7,
            };
            prop_assert!((w - got).abs() <= bound, "{} slot {k}: {w} -> {got}", V::NAME);
            prop_assert!(w != 0.0 || got == 0.0, "zero stays zero");
        }
        let (nrows, ncols) = nm.shape();
        let x = DMatrix::from_fn(ncols, batch, |c, j| ((c * 7 + j * 3) % 11) as f32 * 0.25 - 1.0);
        let y0 = DMatrix::from_fn(nrows, batch, |r, j| (r + j) as f32 * 0.5);
        let bits = |m: &DMatrix<f32>| m.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let (mut got, mut want) = (y0.clone(), y0);
        if batch == 1 {
            let (mut g, mut w) = (got.column(0).into_owned(), want.column(0).into_owned());
            let x: DVector<f32> = x.column(0).into_owned();
            narrow.matvec_into(0.5, x.as_slice(), 2.0, g.as_mut_slice()).unwrap();
            widened.matvec_into(0.5, x.as_slice(), 2.0, w.as_mut_slice()).unwrap();
            got.set_column(0, &g);
            want.set_column(0, &w);
        } else {
            narrow.matmul_into(0.5, &x, 2.0, &mut got).unwrap();
            match V::as_int8(narrow.values()) {
                // Int8 batches run the integer kernels of the same weights written out.
                Some(values) if batch > 1 => {
                    written_out(&narrow, values).matmul_into(0.5, &x, 2.0, &mut want).unwrap()
                }
                _ => widened.matmul_into(0.5, &x, 2.0, &mut want).unwrap(),
            }
        }
        prop_assert_eq!(bits(&got), bits(&want), "{} batch {}", V::NAME, batch);
        Ok(())
    }

    /// The dense int8 matrix of `nm`'s slots (whose int8 values are `values`), with its
    /// row scales: a plain loop over the slots.
    fn written_out<V: NarrowValue>(nm: &NarrowNm<V>, values: &[i8]) -> crate::Int8Matrix {
        let ((nrows, ncols), (n, m)) = (nm.shape(), (nm.pattern().n(), nm.pattern().m()));
        let groups = ncols.div_ceil(m);
        let mut dense = vec![0i8; nrows * ncols];
        for (k, (&v, &p)) in values.iter().zip(nm.positions()).enumerate() {
            let (r, g) = (k / (groups * n), k / n % groups);
            if v != 0 {
                dense[r * ncols + g * m + usize::from(p)] = v;
            }
        }
        let scheme = crate::QuantScheme::PerRow;
        crate::Int8Matrix::try_from_parts(nrows, ncols, scheme, dense, nm.scales().to_vec())
            .unwrap()
    }

    /// Int8 batches run in integers, which quantize the activations: each output within
    /// the rounding of every kept weight's activation (half a step of the token's scale)
    /// of the widened product.
    #[test]
    fn int8_batches_stay_near_the_widened_product() {
        let pattern = NmPattern::TWO_FOUR;
        let nm = NmSparse::from_dense(&pruned(50, 300, pattern, 9), pattern).unwrap();
        let narrow = Int8Nm::from_nm(&nm).unwrap();
        let x = DMatrix::from_fn(300, 8, |c, j| ((c * 13 + j * 5) % 17) as f32 * 0.3 - 2.4);
        let got = narrow.matmul(&x).unwrap();
        let want = narrow.to_nm().matmul(&x).unwrap();
        for j in 0..8 {
            let step = x.column(j).amax() / 127.0;
            for r in 0..50 {
                let row = narrow.to_nm().to_dense().row(r).abs().sum();
                let bound = row * step * 0.5 * (1.0 + 1e-4) + 1e-5;
                let (g, w) = (got[(r, j)], want[(r, j)]);
                assert!((g - w).abs() <= bound, "row {r} token {j}: {g} vs {w} (bound {bound})");
            }
        }
    }

    /// Two nonzero slots at one position cannot be written out dense: such a matrix
    /// widens at every batch, and its slots add up.
    #[test]
    fn slots_sharing_a_position_always_widen() {
        let pattern = NmPattern::TWO_FOUR;
        let twice = Int8Nm::try_from_parts(1, 4, pattern, vec![3, 4], vec![1, 1], vec![0.5]);
        let twice = twice.unwrap();
        let x = DMatrix::from_fn(4, 8, |c, j| (c + j) as f32);
        let got = twice.matmul(&x).unwrap();
        assert_eq!(got, twice.to_nm().matmul(&x).unwrap());
        assert_eq!(got[(0, 2)], 3.5 * 3.0);
        // Zero padding at a taken position does not count, before or after the value.
        assert!(!twice.integer_batches);
        for (values, positions) in [(vec![3, 0], vec![1, 1]), (vec![0, 3], vec![1, 1])] {
            let padded = Int8Nm::try_from_parts(1, 4, pattern, values, positions, vec![0.5]);
            let padded = padded.unwrap();
            assert!(padded.integer_batches);
            let want = written_out(&padded, padded.values()).matmul(&x).unwrap();
            assert_eq!(padded.matmul(&x).unwrap(), want);
            assert!(want[(0, 2)] != 0.0);
        }
    }

    proptest! {
        /// For int8, bf16 and f16 and the patterns the kernels special-case (1:2, 2:4, 4:8)
        /// and one they do not (3:7, with a short last group), the products are exactly
        /// those of the `f32` matrix the values stand for (int8 batches: of the int8
        /// matrix written out dense).
        #[test]
        fn products_are_the_widened_matrix_products(
            (nrows, ncols) in (1usize..40, 1usize..90),
            pattern in prop_oneof![
                Just((1usize, 2usize)), Just((2, 4)), Just((4, 8)), Just((3, 7))
            ],
            batch in prop_oneof![Just(1usize), 2usize..45],
            seed in any::<u64>(),
        ) {
            let pattern = NmPattern::new(pattern.0, pattern.1).unwrap();
            let nm = NmSparse::from_dense(&pruned(nrows, ncols, pattern, seed), pattern).unwrap();
            check::<i8>(&nm, batch)?;
            check::<bf16>(&nm, batch)?;
            check::<f16>(&nm, batch)?;
        }
    }

    /// Long rows take the kernels' windowed paths (16 and 8 slots at a time; int8 at batch
    /// 1, bf16 at every batch) and the integer kernels' long rows (int8 batches).
    #[test]
    fn long_rows_give_the_widened_bits() {
        let pattern = NmPattern::TWO_FOUR;
        let nm = NmSparse::from_dense(&pruned(67, 1030, pattern, 3), pattern).unwrap();
        for batch in [1, 8, 37] {
            check::<bf16>(&nm, batch).unwrap();
            check::<i8>(&nm, batch).unwrap();
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let pattern = NmPattern::TWO_FOUR;
        let nan = NmSparse::try_from_parts(1, 4, pattern, vec![1.0, f32::NAN], vec![0, 1]).unwrap();
        assert!(matches!(
            Bf16Nm::from_nm(&nan),
            Err(Error::Core(shears_core::Error::NonFinite { index: 1, .. }))
        ));
        let big =
            NmSparse::try_from_parts(2, 4, pattern, vec![1.0, 0.0, 7e4, 0.0], vec![0, 1, 2, 3])
                .unwrap();
        let err = F16Nm::from_nm(&big).unwrap_err();
        assert!(err.to_string().contains("row 1"), "{err}");
        assert!(Bf16Nm::from_nm(&big).is_ok());
        let parts = |positions: Vec<u8>, values: Vec<i8>, scales: Vec<f32>| {
            Int8Nm::try_from_parts(1, 4, pattern, values, positions, scales)
        };
        assert!(parts(vec![0, 3], vec![5, -3], vec![0.5]).is_ok());
        // A position outside its group, a value int8 does not hold, bad scales.
        assert!(matches!(parts(vec![0, 4], vec![5, -3], vec![0.5]), Err(Error::Format { .. })));
        assert!(matches!(
            parts(vec![0, 3], vec![-128, 1], vec![0.5]),
            Err(Error::InvalidQuantization { .. })
        ));
        for bad in [vec![], vec![0.0], vec![f32::NAN], vec![0.5, 0.5]] {
            assert!(matches!(
                parts(vec![0, 1], vec![1, 1], bad),
                Err(Error::InvalidQuantization { .. })
            ));
        }
        let half = |scale: f32| {
            Bf16Nm::try_from_parts(1, 4, pattern, vec![bf16::ONE; 2], vec![0, 1], vec![scale])
        };
        assert!(half(1.0).is_ok());
        assert!(matches!(half(2.0), Err(Error::InvalidQuantization { .. })));
        // Slot counts past usize's range are an error, not an overflow.
        assert!(matches!(
            Int8Nm::try_from_parts(usize::MAX, 8, pattern, vec![], vec![], vec![]),
            Err(Error::Format { .. })
        ));
        // So is a row count no scales can be allocated for (a matrix without columns).
        let empty = NmSparse::<f32>::try_from_parts(MAX_SIDE, 0, pattern, vec![], vec![]);
        assert!(matches!(Bf16Nm::from_nm(&empty.unwrap()), Err(Error::Format { .. })));
        assert!(matches!(
            NmSparse::<f32>::try_from_parts(MAX_SIDE + 1, 0, pattern, vec![], vec![]),
            Err(Error::Format { .. })
        ));
        // An int8 scale whose values would not be finite.
        let huge = Int8Nm::try_from_parts(1, 4, pattern, vec![1, 1], vec![0, 1], vec![f32::MAX]);
        assert!(matches!(huge, Err(Error::InvalidQuantization { .. })));
    }
}
