//! Symmetric int8 weight quantization: per output row or per group of input columns, with
//! zero kept exactly zero so that a pruned matrix stays pruned.

use nalgebra::DMatrix;

use crate::error::{Error, Result};
use crate::kernels::{self, Int8DenseView, PackedWeights, scale_of_max};
use crate::product::{Operands, Sealed, SparseProduct, via_columns};

/// Which weights share a scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantScheme {
    /// One scale per output row.
    PerRow,
    /// One scale per row and per group of this many consecutive input columns (the last
    /// group of a row may be shorter).
    PerGroup(usize),
}

impl std::fmt::Display for QuantScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuantScheme::PerRow => f.write_str("int8"),
            QuantScheme::PerGroup(g) => write!(f, "int8:group={g}"),
        }
    }
}

/// `int8` (per row) or `int8:group=G`.
impl std::str::FromStr for QuantScheme {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidQuantization {
            reason: format!("`{s}`: expected int8 or int8:group=G with G >= 1"),
        };
        match s.trim().strip_prefix("int8") {
            Some("") => Ok(QuantScheme::PerRow),
            Some(rest) => {
                let g = rest.strip_prefix(":group=").ok_or_else(bad)?;
                match g.parse::<usize>() {
                    Ok(g) if g >= 1 => Ok(QuantScheme::PerGroup(g)),
                    _ => Err(bad()),
                }
            }
            None => Err(bad()),
        }
    }
}

/// A weight matrix quantized to int8: `w ≈ scale * q`, symmetric (no zero point).
///
/// Scales are `max |w| / 127` over the weights that share one (1 where they are all
/// zero), values `round(w / scale)` with ties to even, so `|w - scale * q| <= scale / 2`
/// for every weight, and a weight of zero (a pruned one) is exactly zero.
///
/// On CPUs with AVX-512 VNNI, the first product of four tokens or more (rows of up to
/// 2048 columns) packs the weights into the layout of its kernel and keeps them for the
/// next products: about as many bytes again as the values. A clone starts without them.
///
/// # Invariants
/// `values.len() == rows * cols` (row-major, as a checkpoint stores `(out, in)`);
/// `scales.len() == rows * groups_per_row`; every scale positive, and finite times 128.
///
/// ```
/// use nalgebra::dmatrix;
/// use shears_sparse::{Int8Matrix, QuantScheme};
///
/// let w = dmatrix![0.0f32, 127.0, -63.5; 254.0, 0.0, 1.0];
/// let q = Int8Matrix::quantize(&w, QuantScheme::PerRow)?;
/// assert_eq!(q.scales(), [1.0, 2.0]);
/// assert_eq!(q.row(0), [0, 127, -64]); // -63.5 rounds to even
/// assert_eq!(q.row(1), [127, 0, 0]); // 0.5 too
/// assert!((q.dequantize() - &w).abs().max() <= 1.0);
/// # Ok::<(), shears_sparse::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Matrix {
    rows: usize,
    cols: usize,
    scheme: QuantScheme,
    values: Vec<i8>,
    scales: Vec<f32>,
    packed: PackedWeights,
}

impl Int8Matrix {
    /// Quantizes `w` (`(out, in)`) under `scheme`.
    ///
    /// # Errors
    /// [`shears_core::Error::NonFinite`] for a NaN or infinite weight (named
    /// `weights`, with its column-major index); [`Error::InvalidQuantization`] for a group
    /// of zero columns.
    pub fn quantize(w: &DMatrix<f32>, scheme: QuantScheme) -> Result<Int8Matrix> {
        if let Some(index) = w.iter().position(|v| !v.is_finite()) {
            return Err(shears_core::Error::NonFinite { tensor: "weights".into(), index }.into());
        }
        let (rows, cols) = w.shape();
        let group = match scheme {
            QuantScheme::PerRow => cols.max(1),
            QuantScheme::PerGroup(0) => {
                return Err(Error::InvalidQuantization {
                    reason: "a quantization group of 0 columns".into(),
                });
            }
            QuantScheme::PerGroup(g) => g,
        };
        // A row without columns still has its one scale (of nothing).
        let groups = cols.div_ceil(group).max(1);
        let mut values = Vec::with_capacity(rows * cols);
        let mut scales = Vec::with_capacity(rows * groups);
        for r in 0..rows {
            let row: Vec<f32> = w.row(r).iter().copied().collect();
            if row.is_empty() {
                scales.push(1.0);
            }
            for chunk in row.chunks(group) {
                let scale = symmetric_scale(chunk);
                scales.push(scale);
                values.extend(chunk.iter().map(|&v| quantize_value(v, scale)));
            }
        }
        Ok(Int8Matrix { rows, cols, scheme, values, scales, packed: PackedWeights::default() })
    }

    /// A quantized matrix from its parts, as a checkpoint stores them: `values` row-major
    /// (`rows * cols`), and `scales` row-major, one per row or one per row and group.
    /// Values may be `-128` (other tools write it; this crate's quantizer does not).
    ///
    /// # Errors
    /// [`Error::InvalidQuantization`] naming the problem: a group of zero columns, a
    /// length that does not match the shape, or a scale that is not positive or whose
    /// product with 128 is not finite.
    pub fn try_from_parts(
        rows: usize,
        cols: usize,
        scheme: QuantScheme,
        values: Vec<i8>,
        scales: Vec<f32>,
    ) -> Result<Int8Matrix> {
        let bad = |reason: String| Err(Error::InvalidQuantization { reason });
        let groups = match scheme {
            QuantScheme::PerRow => 1,
            QuantScheme::PerGroup(0) => return bad("a quantization group of 0 columns".into()),
            QuantScheme::PerGroup(g) => cols.div_ceil(g).max(1),
        };
        if rows.checked_mul(cols) != Some(values.len()) {
            return bad(format!("{} values for a {rows}x{cols} matrix", values.len()));
        }
        if rows.checked_mul(groups) != Some(scales.len()) {
            return bad(format!(
                "{} scales for {rows} rows of {groups} group(s) ({scheme})",
                scales.len()
            ));
        }
        if let Some(i) = scales.iter().position(|s| !(*s > 0.0 && (s * 128.0).is_finite())) {
            return bad(format!(
                "scale {} at index {i} is not positive, or int8 values times it are not finite",
                scales[i]
            ));
        }
        Ok(Int8Matrix { rows, cols, scheme, values, scales, packed: PackedWeights::default() })
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The scheme.
    pub fn scheme(&self) -> QuantScheme {
        self.scheme
    }

    /// The quantized values, row-major.
    pub fn values(&self) -> &[i8] {
        &self.values
    }

    /// Row `r`'s quantized values.
    ///
    /// # Panics
    /// If `r >= rows` (an index, like slicing).
    pub fn row(&self, r: usize) -> &[i8] {
        &self.values[r * self.cols..(r + 1) * self.cols]
    }

    /// The scales, row-major: `groups_per_row` per row.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Scales per row: 1 per row, or one per group of columns.
    pub fn groups_per_row(&self) -> usize {
        match self.scheme {
            QuantScheme::PerRow => 1,
            QuantScheme::PerGroup(g) => self.cols.div_ceil(g).max(1),
        }
    }

    /// The scale of weight `(r, c)`.
    ///
    /// # Panics
    /// If the position is outside the matrix.
    pub fn scale_of(&self, r: usize, c: usize) -> f32 {
        assert!(r < self.rows && c < self.cols, "({r}, {c}) outside {:?}", self.shape());
        let group = match self.scheme {
            QuantScheme::PerRow => 0,
            QuantScheme::PerGroup(g) => c / g,
        };
        self.scales[r * self.groups_per_row() + group]
    }

    /// `scale * q` for every weight, as f32.
    pub fn dequantize(&self) -> DMatrix<f32> {
        DMatrix::from_fn(self.rows, self.cols, |r, c| {
            self.scale_of(r, c) * f32::from(self.values[r * self.cols + c])
        })
    }
}

/// Products with integer arithmetic: `X` is quantized per column (per token) to int8 with
/// a scale of `max |x| / 127`, each output row's groups are dotted with it in exact
/// 32-bit integer sums, and each sum is rescaled once by its weight scale, the output
/// once by the column's scale. The result approximates the dequantized matrix's f32
/// product within half a quantization step of `X` per column times `sum |w|` of the row
/// (plus f32 rounding), for values in f32's normal range whose products stay finite;
/// a column holding a NaN or infinity gives NaN outputs.
///
/// Every kernel path and thread count gives the same bits. On the AVX2 and AVX-512 paths
/// the sums run as `vpmaddwd` (sixteen multiply-adds per instruction, twice an f32 fused
/// multiply-add's eight), or as `vpdpbusd` where the CPU has AVX-512 VNNI (64 per
/// instruction) or AVX-VNNI (32); elsewhere as loops the compiler vectorises.
///
/// ```
/// use nalgebra::{dmatrix, dvector};
/// use shears_sparse::{Int8Matrix, QuantScheme, SparseProduct};
///
/// let w = dmatrix![1.0f32, -2.0, 0.0; 0.5, 0.0, 4.0];
/// let q = Int8Matrix::quantize(&w, QuantScheme::PerRow)?;
/// let y = q.matvec(&dvector![1.0, 1.0, 2.0])?;
/// assert!((y - dvector![-1.0, 8.5]).abs().max() < 0.05);
/// # Ok::<(), shears_sparse::Error>(())
/// ```
impl SparseProduct<f32> for Int8Matrix {
    fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

impl Sealed<f32> for Int8Matrix {
    fn product(&self, operands: Operands<'_, f32>) {
        let view = Int8DenseView {
            rows: self.rows,
            cols: self.cols,
            group: match self.scheme {
                QuantScheme::PerRow => self.cols.max(1),
                QuantScheme::PerGroup(g) => g,
            },
            values: &self.values,
            scales: &self.scales,
            packed: Some(&self.packed),
        };
        match operands {
            Operands::Vector { alpha, x, beta, y } => {
                kernels::int8_dense_product(view, alpha, x, beta, y, None)
            }
            Operands::Matrix { alpha, x, beta, y, then } => {
                let (x, y) = (x.as_slice(), y.as_mut_slice());
                kernels::int8_dense_product(view, alpha, x, beta, y, then)
            }
            Operands::Oriented { alpha, x, beta, y, then, layout } => {
                via_columns(self, alpha, x, beta, y, then, layout)
            }
        }
    }
}

/// The scale of weights that share one: `max |w| / 127`, or 1 where they are all zero (or
/// so small that `max / 127` rounds to zero: such weights are zero to int8 anyway).
/// Weights must be finite.
pub(crate) fn symmetric_scale(weights: &[f32]) -> f32 {
    scale_of_max(weights.iter().fold(0.0f32, |m, v| m.max(v.abs())))
}

/// `round(w / scale)` with ties to even, in `-127..=127`; zero for a weight of zero.
pub(crate) fn quantize_value(w: f32, scale: f32) -> i8 {
    (f64::from(w) / f64::from(scale)).round_ties_even().clamp(-127.0, 127.0) as i8
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_weight_is_within_half_a_step(
            (rows, cols) in (1usize..12, 1usize..40),
            seed in any::<u64>(),
            group in prop_oneof![Just(None), (1usize..17).prop_map(Some)],
        ) {
            let mut next = crate::testing::xorshift(seed);
            let w = DMatrix::from_fn(rows, cols, |_, _| {
                let state = next();
                // A quarter zeros (pruned), the rest spread over several magnitudes.
                if state.is_multiple_of(4) { 0.0 } else { ((state >> 11) as f64 / (1u64 << 53) as f64 - 0.5) as f32 * 10f32.powi((state % 5) as i32 - 2) }
            });
            let scheme = group.map_or(QuantScheme::PerRow, QuantScheme::PerGroup);
            let q = Int8Matrix::quantize(&w, scheme).unwrap();
            for r in 0..rows {
                for c in 0..cols {
                    let (s, v) = (q.scale_of(r, c), q.row(r)[c]);
                    prop_assert!(s > 0.0 && s.is_finite());
                    prop_assert!((-127..=127).contains(&v));
                    let err = (f64::from(w[(r, c)]) - f64::from(s) * f64::from(v)).abs();
                    // Half a step, plus the f32 rounding of `w / s` (at most 127 units of
                    // 2^-24 of a step) that can carry a near-tie across.
                    let bound = f64::from(s) * (0.5 + 2f64.powi(-15));
                    prop_assert!(err <= bound, "({r}, {c}): {err} > {bound}");
                    if w[(r, c)] == 0.0 {
                        prop_assert_eq!(v, 0, "zero stays zero");
                    }
                }
            }
            let dq = q.dequantize();
            prop_assert_eq!(dq.shape(), w.shape());
            prop_assert!(dq.iter().zip(w.iter()).all(|(d, w)| (*w == 0.0) <= (*d == 0.0)));
        }
    }

    proptest! {
        /// The integer product of an `Int8Matrix` is within its stated bound of the
        /// dequantized matrix's product in f64: half of each column's activation step
        /// times `sum |w|` of the row, plus f32 rounding; at batch 1 and batched.
        #[test]
        fn products_are_within_half_an_activation_step_of_the_dequantized_product(
            (rows, cols) in (1usize..20, 0usize..90),
            group in prop_oneof![Just(None), (1usize..70).prop_map(Some)],
            batch in prop_oneof![Just(1usize), 2usize..20],
            seed in any::<u64>(),
        ) {
            let mut bits = crate::testing::xorshift(seed);
            let mut next = move || ((bits() >> 11) as f64 / (1u64 << 53) as f64 - 0.5) as f32;
            let w = DMatrix::from_fn(rows, cols, |_, _| if next() < -0.2 { 0.0 } else { next() });
            let x = DMatrix::from_fn(cols, batch, |_, j| next() * (1.0 + j as f32));
            let scheme = group.map_or(QuantScheme::PerRow, QuantScheme::PerGroup);
            let q = Int8Matrix::quantize(&w, scheme).unwrap();
            let got = if batch == 1 {
                q.matvec(&x.column(0).into_owned()).unwrap().as_slice().to_vec()
            } else {
                q.matmul(&x).unwrap().as_slice().to_vec()
            };
            let wd = q.dequantize().map(f64::from);
            let xd = x.map(f64::from);
            let exact = &wd * &xd;
            for j in 0..batch {
                let step = xd.column(j).amax() / 127.0;
                for r in 0..rows {
                    let l1: f64 = wd.row(r).iter().map(|v| v.abs()).sum();
                    let bound = l1 * step * (0.5 + 1e-4) + 1e-5 * l1 * xd.column(j).amax() + 1e-30;
                    let err = (f64::from(got[j * rows + r]) - exact[(r, j)]).abs();
                    prop_assert!(err <= bound, "({r}, {j}): {err} > {bound}");
                }
            }
        }
    }

    #[test]
    fn ties_round_to_even_and_groups_have_their_own_scales() {
        let w = DMatrix::from_row_slice(1, 6, &[127.0f32, 0.5, 1.5, -2.5, 8.0, 4.0]);
        let q = Int8Matrix::quantize(&w, QuantScheme::PerRow).unwrap();
        assert_eq!(q.row(0), [127, 0, 2, -2, 8, 4]);
        let q = Int8Matrix::quantize(&w, QuantScheme::PerGroup(4)).unwrap();
        assert_eq!(q.groups_per_row(), 2);
        assert_eq!(q.scales(), [1.0, 8.0 / 127.0]);
        assert_eq!(q.row(0)[4..], [127, 64]); // 63.5 rounds to even
        for scheme in [QuantScheme::PerRow, QuantScheme::PerGroup(4)] {
            let empty = Int8Matrix::quantize(&DMatrix::<f32>::zeros(3, 0), scheme).unwrap();
            assert_eq!(empty.scales(), [1.0; 3], "one scale per row, even of no columns");
        }
        let zeros =
            Int8Matrix::quantize(&DMatrix::<f32>::zeros(2, 3), QuantScheme::PerRow).unwrap();
        assert_eq!(zeros.scales(), [1.0, 1.0]);
        assert!(zeros.values().iter().all(|&v| v == 0));
    }

    #[test]
    fn bad_input() {
        let w = DMatrix::from_row_slice(1, 2, &[1.0f32, f32::NAN]);
        assert!(matches!(
            Int8Matrix::quantize(&w, QuantScheme::PerRow),
            Err(Error::Core(shears_core::Error::NonFinite { index: 1, .. }))
        ));
        assert!(Int8Matrix::quantize(&DMatrix::zeros(1, 1), QuantScheme::PerGroup(0)).is_err());
        let parts = |scheme, values: Vec<i8>, scales: Vec<f32>| {
            Int8Matrix::try_from_parts(2, 3, scheme, values, scales)
        };
        let q = parts(QuantScheme::PerGroup(2), vec![-128, 0, 1, 2, 3, 127], vec![1.0; 4]).unwrap();
        assert_eq!(q.dequantize()[(0, 0)], -128.0);
        assert_eq!(q.scale_of(1, 2), 1.0);
        for (scheme, values, scales) in [
            (QuantScheme::PerRow, vec![0; 5], vec![1.0; 2]),
            (QuantScheme::PerRow, vec![0; 6], vec![1.0; 3]),
            (QuantScheme::PerGroup(2), vec![0; 6], vec![1.0; 2]),
            (QuantScheme::PerGroup(0), vec![0; 6], vec![1.0; 2]),
            (QuantScheme::PerRow, vec![0; 6], vec![1.0, 0.0]),
            (QuantScheme::PerRow, vec![0; 6], vec![1.0, f32::NAN]),
            (QuantScheme::PerRow, vec![0; 6], vec![1.0, f32::MAX]),
        ] {
            let err = parts(scheme, values, scales).unwrap_err();
            assert!(matches!(err, Error::InvalidQuantization { .. }), "{err}");
        }
        for (text, scheme) in
            [("int8", QuantScheme::PerRow), ("int8:group=64", QuantScheme::PerGroup(64))]
        {
            assert_eq!(text.parse::<QuantScheme>().unwrap(), scheme);
            assert_eq!(scheme.to_string(), text);
        }
        for bad in ["int4", "int8:group=0", "int8:group=x", "int8:", "int8:grp=2", ""] {
            assert!(bad.parse::<QuantScheme>().is_err(), "{bad}");
        }
    }
}
