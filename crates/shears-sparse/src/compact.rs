//! Compaction after structured pruning: physically smaller dense matrices.

use nalgebra::{DMatrix, DVector};
use shears_core::{Mask, Scalar};

use crate::dense;
use crate::error::{Error, Result};
use crate::product::{Operands, Sealed, SparseProduct};

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
/// back to the original: `matrix[(i, j)] == original[(rows[i], cols[j])]`.
///
/// The speedup is the shrink factor, with ordinary dense kernels: multiply by
/// [`Compacted::matrix`] the inputs gathered with [`Compacted::gather_input`]. As a
/// [`SparseProduct`] it computes the original matrix's product (gathering the inputs,
/// multiplying, and scattering into the original rows; removed rows are zero).
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
pub struct Compacted<T: Scalar> {
    matrix: DMatrix<T>,
    rows: Vec<usize>,
    cols: Vec<usize>,
    original: (usize, usize),
    bias: Option<DVector<T>>,
}

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

    /// The compacted matrix.
    pub fn matrix(&self) -> &DMatrix<T> {
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

    /// The matrix at its original shape (removed rows and columns are zero).
    pub fn to_dense(&self) -> DMatrix<T> {
        let mut out = DMatrix::zeros(self.original.0, self.original.1);
        for (j, &c) in self.cols.iter().enumerate() {
            for (i, &r) in self.rows.iter().enumerate() {
                out[(r, c)] = self.matrix[(i, j)];
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
    /// [`Error::ShapeMismatch`] if `y` does not have one row per kept row.
    pub fn scatter_output(&self, y: &DMatrix<T>) -> Result<DMatrix<T>> {
        if y.nrows() != self.rows.len() {
            return Err(Error::ShapeMismatch {
                op: "compacted output",
                expected: (self.rows.len(), y.ncols()),
                got: y.shape(),
            });
        }
        let mut out = DMatrix::zeros(self.original.0, y.ncols());
        for (i, &r) in self.rows.iter().enumerate() {
            out.row_mut(r).copy_from(&y.row(i));
        }
        Ok(out)
    }
}

impl<T: Scalar> Sealed<T> for Compacted<T> {
    fn product(&self, operands: Operands<'_, T>) {
        match operands {
            Operands::Vector { alpha, x, beta, y } => {
                let gathered: Vec<T> = self.cols.iter().map(|&c| x[c]).collect();
                let mut z = vec![T::zero(); self.rows.len()];
                dense::gemv(&self.matrix, T::one(), &gathered, T::zero(), &mut z);
                scatter(alpha, self.rows.iter().copied().zip(z), beta, y);
            }
            Operands::Matrix { alpha, x, beta, y } => {
                let gathered = x.select_rows(self.cols.iter());
                let mut z = DMatrix::zeros(self.rows.len(), x.ncols());
                dense::gemm(&self.matrix, T::one(), &gathered, T::zero(), &mut z);
                for (j, mut column) in y.column_iter_mut().enumerate() {
                    let kept = self.rows.iter().enumerate().map(|(i, &r)| (r, z[(i, j)]));
                    scatter(alpha, kept, beta, column.as_mut_slice());
                }
            }
        }
    }
}

impl<T: Scalar> SparseProduct<T> for Compacted<T> {
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
