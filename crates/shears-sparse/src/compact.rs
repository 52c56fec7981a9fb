//! Compaction after structured pruning: physically smaller dense matrices, in `f32`/`f64`
//! or int8.

use nalgebra::{DMatrix, DVector};
use shears_core::{Mask, Scalar};

use crate::error::{Error, Result};
use crate::product::{Operands, Sealed, SparseProduct, finish, via_columns};
use crate::quant::{Int8Matrix, QuantScheme};

/// Which fully pruned slices compaction removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compaction {
    /// Fully pruned rows (output neurons) and their bias entries.
    Rows,
    /// Fully pruned columns (inputs).
    Columns,
    /// Both.
    RowsAndColumns,
}

/// A dense matrix with its fully pruned rows and/or columns removed, and the index maps
/// back to the original: `matrix[(i, j)] == original[(rows[i], cols[j])]` (for an
/// [`Int8Compacted`], up to its quantization).
///
/// The speedup is the shrink factor, with ordinary dense kernels: multiply by
/// [`Compacted::matrix`] the inputs gathered with [`Compacted::gather_input`]. As a
/// [`SparseProduct`] it computes the original matrix's product (gathering the inputs,
/// multiplying, and scattering into the original rows; removed rows are zero).
///
/// `M` is the smaller matrix: a [`DMatrix`] by default, or an [`Int8Matrix`] in an
/// [`Int8Compacted`], whose products run in integers.
///
/// ```
/// use nalgebra::{dmatrix, dvector};
/// use shears_core::Mask;
/// use shears_sparse::{Compacted, Compaction};
///
/// let w = dmatrix![1.0, 2.0; 0.0, 0.0; 3.0, 4.0];
/// let mask = Mask::from_fn(3, 2, |r, _| r != 1)?;
/// let c = Compacted::new(&w, &mask, Compaction::Rows, Some(&dvector![0.1, 0.2, 0.3]))?;
/// assert_eq!(c.matrix(), &dmatrix![1.0, 2.0; 3.0, 4.0]);
/// assert_eq!(c.rows(), &[0, 2]);
/// assert_eq!(c.bias(), Some(&dvector![0.1, 0.3]));
/// # Ok::<(), shears_sparse::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Compacted<T: Scalar, M = DMatrix<T>> {
    matrix: M,
    rows: Vec<usize>,
    cols: Vec<usize>,
    original: (usize, usize),
    bias: Option<DVector<T>>,
}

/// A [`Compacted`] matrix quantized to int8 ([`Int8Matrix`]: a scale per row or per group
/// of columns, zero kept zero), multiplied with integer sums as [`Int8Matrix`] is: the
/// gathered inputs are quantized per token.
///
/// ```
/// use nalgebra::{dmatrix, dvector};
/// use shears_core::Mask;
/// use shears_sparse::{Compacted, Compaction, Int8Compacted, QuantScheme, SparseProduct};
///
/// let w = dmatrix![1.0f32, 0.5; 0.0, 0.0; -2.0, 4.0];
/// let mask = Mask::from_fn(3, 2, |r, _| r != 1)?;
/// let c = Compacted::new(&w, &mask, Compaction::Rows, None)?;
/// let q = Int8Compacted::from_compacted(&c, QuantScheme::PerRow)?;
/// assert_eq!(q.matrix().row(1), [-64, 127]);
/// assert_eq!(q.to_dense().shape(), (3, 2));
/// let y = q.matvec(&dvector![1.0, 1.0])?;
/// assert!((y - dvector![1.5, 0.0, 2.0]).abs().max() < 0.05);
/// # Ok::<(), shears_sparse::Error>(())
/// ```
pub type Int8Compacted = Compacted<f32, Int8Matrix>;

impl<T: Scalar> Compacted<T> {
    /// Removes the slices of `weights` that `mask` prunes entirely, masking the rest.
    ///
    /// # Errors
    /// [`Error::Core`] for a mask of another shape; [`Error::ShapeMismatch`] for a bias
    /// that has not one entry per row.
    pub fn new(
        weights: &DMatrix<T>,
        mask: &Mask,
        what: Compaction,
        bias: Option<&DVector<T>>,
    ) -> Result<Self> {
        let masked = mask.apply(weights)?;
        if let Some(b) = bias.filter(|b| b.len() != weights.nrows()) {
            return Err(Error::ShapeMismatch {
                op: "compaction bias",
                expected: (weights.nrows(), 1),
                got: (b.len(), 1),
            });
        }
        let kept = |pruned: Vec<usize>, n: usize| -> Vec<usize> {
            (0..n).filter(|i| pruned.binary_search(i).is_err()).collect()
        };
        let rows = match what {
            Compaction::Rows | Compaction::RowsAndColumns => {
                kept(mask.fully_pruned_rows(), weights.nrows())
            }
            Compaction::Columns => (0..weights.nrows()).collect(),
        };
        let cols = match what {
            Compaction::Columns | Compaction::RowsAndColumns => {
                kept(mask.fully_pruned_cols(), weights.ncols())
            }
            Compaction::Rows => (0..weights.ncols()).collect(),
        };
        let matrix = masked.select_rows(rows.iter()).select_columns(cols.iter());
        let bias = bias.map(|b| DVector::from_iterator(rows.len(), rows.iter().map(|&r| b[r])));
        Ok(Compacted { matrix, rows, cols, original: weights.shape(), bias })
    }

    /// The matrix at its original shape (removed rows and columns are zero).
    pub fn to_dense(&self) -> DMatrix<T> {
        self.expand(|i, j| self.matrix[(i, j)])
    }
}

impl Int8Compacted {
    /// `compacted`'s smaller matrix quantized under `scheme`, with the same index maps
    /// and bias.
    ///
    /// # Errors
    /// [`Int8Matrix::quantize`]'s: a weight that is not finite, a group of 0 columns.
    pub fn from_compacted(compacted: &Compacted<f32>, scheme: QuantScheme) -> Result<Self> {
        Ok(Compacted {
            matrix: Int8Matrix::quantize(&compacted.matrix, scheme)?,
            rows: compacted.rows.clone(),
            cols: compacted.cols.clone(),
            original: compacted.original,
            bias: compacted.bias.clone(),
        })
    }

    /// The dequantized matrix at its original shape (removed rows and columns are zero).
    pub fn to_dense(&self) -> DMatrix<f32> {
        let dequantized = self.matrix.dequantize();
        self.expand(|i, j| dequantized[(i, j)])
    }
}

impl<T: Scalar, M> Compacted<T, M> {
    /// The compacted matrix.
    pub fn matrix(&self) -> &M {
        &self.matrix
    }

    /// The original row of each compacted row.
    pub fn rows(&self) -> &[usize] {
        &self.rows
    }

    /// The original column of each compacted column.
    pub fn cols(&self) -> &[usize] {
        &self.cols
    }

    /// The original shape.
    pub fn original_shape(&self) -> (usize, usize) {
        self.original
    }

    /// The bias with the removed rows' entries dropped, if a bias was given.
    pub fn bias(&self) -> Option<&DVector<T>> {
        self.bias.as_ref()
    }

    /// A matrix of the original shape holding `entry(i, j)` at `(rows[i], cols[j])`, zero
    /// elsewhere.
    fn expand(&self, entry: impl Fn(usize, usize) -> T) -> DMatrix<T> {
        let mut out = DMatrix::zeros(self.original.0, self.original.1);
        for (j, &c) in self.cols.iter().enumerate() {
            for (i, &r) in self.rows.iter().enumerate() {
                out[(r, c)] = entry(i, j);
            }
        }
        out
    }

    /// The entries of a full-width input the compacted matrix reads.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `x` does not have the original column count.
    pub fn gather_input(&self, x: &DMatrix<T>) -> Result<DMatrix<T>> {
        if x.nrows() != self.original.1 {
            return Err(Error::ShapeMismatch {
                op: "compacted input",
                expected: (self.original.1, x.ncols()),
                got: x.shape(),
            });
        }
        Ok(x.select_rows(self.cols.iter()))
    }

    /// A compacted output scattered back to the original rows (removed rows are zero).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `y` does not have one row per kept row;
    /// [`shears_core::Error::DimensionOverflow`] if the result could not be addressed.
    pub fn scatter_output(&self, y: &DMatrix<T>) -> Result<DMatrix<T>> {
        if y.nrows() != self.rows.len() {
            return Err(Error::ShapeMismatch {
                op: "compacted output",
                expected: (self.rows.len(), y.ncols()),
                got: y.shape(),
            });
        }
        let mut out = crate::product::zeroed(self.original.0, y.ncols())?;
        for (i, &r) in self.rows.iter().enumerate() {
            out.row_mut(r).copy_from(&y.row(i));
        }
        Ok(out)
    }
}

/// The smaller matrix's product of the gathered inputs, scattered into the original rows.
impl<T: Scalar, M: SparseProduct<T>> Sealed<T> for Compacted<T, M> {
    fn product(&self, operands: Operands<'_, T>) {
        // The gathered operands fit the smaller matrix: `cols.len()` inputs, `rows.len()`
        // outputs, and the batch is unchanged (still one for a vector).
        let (one, zero) = (T::one(), T::zero());
        match operands {
            Operands::Vector { alpha, x, beta, y } => {
                let gathered: Vec<T> = self.cols.iter().map(|&c| x[c]).collect();
                let mut z = vec![zero; self.rows.len()];
                let inner = Operands::Vector { alpha: one, x: &gathered, beta: zero, y: &mut z };
                self.matrix.product(inner);
                scatter(alpha, self.rows.iter().copied().zip(z), beta, y);
            }
            Operands::Matrix { alpha, x, beta, y, then } => {
                let gathered = x.select_rows(self.cols.iter());
                let mut z = DMatrix::zeros(self.rows.len(), x.ncols());
                let (x, y_z) = (&gathered, &mut z);
                let inner = Operands::Matrix { alpha: one, x, beta: zero, y: y_z, then: None };
                self.matrix.product(inner);
                for (j, mut column) in y.column_iter_mut().enumerate() {
                    let kept = self.rows.iter().enumerate().map(|(i, &r)| (r, z[(i, j)]));
                    scatter(alpha, kept, beta, column.as_mut_slice());
                }
                finish(then, y.nrows(), y.as_mut_slice());
            }
            Operands::Oriented { alpha, x, beta, y, then, layout } => {
                via_columns(self, alpha, x, beta, y, then, layout)
            }
        }
    }
}

impl<T: Scalar, M: SparseProduct<T>> SparseProduct<T> for Compacted<T, M> {
    fn shape(&self) -> (usize, usize) {
        self.original
    }
}

/// `y <- alpha * z + beta * y` where `kept` gives `z`'s entries by row (ascending), and
/// `y <- beta * y` on the rows it skips; `y` is not read when `beta == 0`.
fn scatter<T: Scalar>(alpha: T, kept: impl Iterator<Item = (usize, T)>, beta: T, y: &mut [T]) {
    let scale = |v: T| if beta == T::zero() { T::zero() } else { beta * v };
    let mut next = 0;
    for (r, z) in kept {
        y[next..r].iter_mut().for_each(|v| *v = scale(*v));
        y[r] = if beta == T::zero() { alpha * z } else { alpha * z + beta * y[r] };
        next = r + 1;
    }
    y[next..].iter_mut().for_each(|v| *v = scale(*v));
}

/// Two consecutive layers `y = W2 · act(W1 x + b1) + b2`, shrunk together: the rows of
/// `W1` that `mask1` prunes entirely (its dead output neurons), their bias entries, and
/// the matching columns of `W2` are removed. A dead neuron `j` still outputs the
/// constant `act(b1[j])`, which reached the second layer as `act(b1[j]) · W2[:, j]`:
/// that is folded into the second layer's bias, so the pair computes exactly the same
/// function as the masked original, for any activation, with smaller matrices.
///
/// Returns the compacted first layer (rows dropped, bias kept in step), and the second
/// layer's weight with those columns dropped and its bias with the constants folded in.
///
/// ```
/// use nalgebra::{dmatrix, dvector};
/// use shears_core::Mask;
/// use shears_sparse::compact_pair;
///
/// let w1 = dmatrix![1.0, 1.0; 5.0, 5.0; 2.0, 2.0];
/// let mask1 = Mask::from_fn(3, 2, |r, _| r != 0)?; // neuron 0 is dead
/// let w2 = dmatrix![7.0, 8.0, 9.0];
/// let relu = |v: f64| v.max(0.0);
/// let (first, w2_small, b2) =
///     compact_pair(&w1, &dvector![0.5, 1.0, 2.0], &mask1, &w2, &dvector![0.25], relu)?;
/// assert_eq!(first.matrix().shape(), (2, 2));
/// assert_eq!(w2_small, dmatrix![8.0, 9.0]);
/// assert_eq!(b2, dvector![0.25 + 7.0 * 0.5]); // relu(0.5) through W2[:, 0]
/// # Ok::<(), shears_sparse::Error>(())
/// ```
///
/// # Errors
/// [`Error::ShapeMismatch`] if `W2` does not have one column per row of `W1`, or a bias
/// not one entry per row of its layer; [`Error::Core`] for a mask of another shape.
pub fn compact_pair<T: Scalar>(
    w1: &DMatrix<T>,
    b1: &DVector<T>,
    mask1: &Mask,
    w2: &DMatrix<T>,
    b2: &DVector<T>,
    act: impl Fn(T) -> T,
) -> Result<(Compacted<T>, DMatrix<T>, DVector<T>)> {
    if w2.ncols() != w1.nrows() {
        return Err(Error::ShapeMismatch {
            op: "compact pair",
            expected: (w2.nrows(), w1.nrows()),
            got: w2.shape(),
        });
    }
    if b2.len() != w2.nrows() {
        return Err(Error::ShapeMismatch {
            op: "compact pair second bias",
            expected: (w2.nrows(), 1),
            got: (b2.len(), 1),
        });
    }
    let first = Compacted::new(w1, mask1, Compaction::Rows, Some(b1))?;
    let mut bias = b2.clone();
    for j in mask1.fully_pruned_rows() {
        let constant = act(b1[j]);
        if constant != T::zero() {
            bias.axpy(constant, &w2.column(j), T::one());
        }
    }
    let second = w2.select_columns(first.rows().iter());
    Ok((first, second, bias))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{bits, pruned, xorshift};
    use proptest::prelude::*;

    /// A pruned matrix with whole rows and columns pruned besides, and its mask.
    fn structured(nrows: usize, ncols: usize, seed: u64) -> (DMatrix<f32>, Mask) {
        let mut next = xorshift(seed);
        let dead_rows: Vec<bool> = (0..nrows).map(|_| next().is_multiple_of(3)).collect();
        let dead_cols: Vec<bool> = (0..ncols).map(|_| next().is_multiple_of(4)).collect();
        let w = pruned(nrows, ncols, 0.7, seed);
        let mask =
            Mask::from_fn(nrows, ncols, |r, c| !dead_rows[r] && !dead_cols[c] && w[(r, c)] != 0.0);
        (w, mask.expect("the shape is the weights'"))
    }

    proptest! {
        /// An int8 compacted product is, bit for bit, the int8 product of the smaller
        /// matrix with the gathered inputs, scattered into the original rows (alpha and
        /// beta applied after), within half an activation step of the dequantized
        /// product; and its dense form is the dequantized matrix in place.
        #[test]
        fn int8_compacted_products_are_the_smaller_int8_product_scattered_and_near(
            (nrows, ncols) in (1usize..24, 1usize..40),
            batch in prop_oneof![Just(1usize), 2usize..12],
            what in prop_oneof![Just(Compaction::Rows), Just(Compaction::Columns), Just(Compaction::RowsAndColumns)],
            group in prop_oneof![Just(QuantScheme::PerRow), (1usize..9).prop_map(QuantScheme::PerGroup)],
            seed in any::<u64>(),
        ) {
            let (w, mask) = structured(nrows, ncols, seed);
            let compacted = Compacted::new(&w, &mask, what, None).unwrap();
            let q = Int8Compacted::from_compacted(&compacted, group).unwrap();
            prop_assert_eq!(q.matrix(), &Int8Matrix::quantize(compacted.matrix(), group).unwrap());
            prop_assert_eq!((q.rows(), q.cols()), (compacted.rows(), compacted.cols()));

            let mut next = xorshift(seed ^ 0x5eed);
            let x = DMatrix::from_fn(ncols, batch, |_, _| (next() % 2001) as f32 / 1000.0 - 1.0);
            let got = crate::testing::product(&q, &x);
            let z = {
                let mut z = DMatrix::zeros(q.rows().len(), batch);
                q.matrix().matmul_into(1.0, &q.gather_input(&x).unwrap(), 0.0, &mut z).unwrap();
                z
            };
            let exact = DMatrix::from_fn(nrows, batch, |r, j| {
                let y0 = (r + 2 * j) as f32 * 0.5;
                q.rows().binary_search(&r).map_or(2.0 * y0, |i| 0.5 * z[(i, j)] + 2.0 * y0)
            });
            prop_assert_eq!(bits(&got), bits(&exact));

            // And within half an activation step per column of the dequantized product.
            let dense = q.to_dense();
            let want = &dense * &x * 0.5;
            for j in 0..batch {
                let step = x.column(j).amax() / 127.0;
                for r in 0..nrows {
                    let y0 = (r + 2 * j) as f32 * 0.5;
                    let sum = dense.row(r).abs().sum();
                    // Half a step times the row's weight, and f32 rounding of the sums.
                    let bound = 0.5 * (0.5 * step * sum) + 1e-5 * (1.0 + sum * x.column(j).amax() + y0);
                    let err = (got[(r, j)] - 2.0 * y0 - want[(r, j)]).abs();
                    prop_assert!(err <= bound, "({r}, {j}): {err} > {bound}");
                }
            }

            prop_assert_eq!(dense.shape(), (nrows, ncols));
            let dequantized = q.matrix().dequantize();
            for (i, &r) in q.rows().iter().enumerate() {
                for (j, &c) in q.cols().iter().enumerate() {
                    prop_assert_eq!(dense[(r, c)], dequantized[(i, j)]);
                }
            }
            let kept = mask.apply(&w).unwrap();
            prop_assert!(dense.iter().zip(kept.iter()).all(|(d, k)| *k != 0.0 || *d == 0.0), "pruned stays zero");
        }
    }

    #[test]
    fn int8_compaction_keeps_the_bias_and_refuses_what_int8_cannot_hold() {
        let w = DMatrix::from_row_slice(3, 2, &[1.0f32, 2.0, 0.0, 0.0, 3.0, 4.0]);
        let mask = Mask::from_fn(3, 2, |r, _| r != 1).unwrap();
        let bias = DVector::from_vec(vec![0.1f32, 0.2, 0.3]);
        let c = Compacted::new(&w, &mask, Compaction::Rows, Some(&bias)).unwrap();
        let q = Int8Compacted::from_compacted(&c, QuantScheme::PerRow).unwrap();
        assert_eq!(q.bias(), c.bias());
        assert_eq!(q.original_shape(), (3, 2));
        assert!(Int8Compacted::from_compacted(&c, QuantScheme::PerGroup(0)).is_err());
        let infinite = DMatrix::from_row_slice(1, 2, &[f32::INFINITY, 1.0]);
        let all = Mask::from_fn(1, 2, |_, _| true).unwrap();
        let c = Compacted::new(&infinite, &all, Compaction::Rows, None).unwrap();
        let e = Int8Compacted::from_compacted(&c, QuantScheme::PerRow).unwrap_err();
        assert!(e.to_string().contains("weights"), "{e}");
    }
}
