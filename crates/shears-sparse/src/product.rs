//! [`SparseProduct`]: the products every format offers, in the BLAS form and allocating,
//! with the operands' shapes checked here, once, for every format.

use nalgebra::{DMatrix, DVector};
use shears_core::Scalar;

use crate::error::{Error, Result};

/// The operands of one product, their shapes checked against the matrix's by
/// [`SparseProduct`]'s provided methods (the only place they are made).
///
/// # Invariants
/// For an `(nrows, ncols)` matrix: `Vector` has `x.len() == ncols` and
/// `y.len() == nrows`; `Matrix` has `x` of shape `(ncols, b)` and `y` of shape
/// `(nrows, b)` with `b >= 2` (a batch of one is always a `Vector`). The variants
/// cannot be built outside this crate, so a format's
/// [`product`](SparseProduct::product) may rely on them.
#[derive(Debug)]
pub enum Operands<'a, T> {
    /// `y <- alpha * A x + beta * y`.
    #[non_exhaustive]
    Vector {
        /// Scales the product.
        alpha: T,
        /// The input, `ncols` long.
        x: &'a [T],
        /// Scales the old output (with `beta == 0` it is not read).
        beta: T,
        /// The output, `nrows` long.
        y: &'a mut [T],
    },
    /// `Y <- alpha * A X + beta * Y`, at least two columns.
    #[non_exhaustive]
    Matrix {
        /// Scales the product.
        alpha: T,
        /// The input, `(ncols, batch)`.
        x: &'a DMatrix<T>,
        /// Scales the old output (with `beta == 0` it is not read).
        beta: T,
        /// The output, `(nrows, batch)`.
        y: &'a mut DMatrix<T>,
    },
}

mod sealed {
    /// Only this crate's formats multiply: their kernels index `x` without bounds checks,
    /// trusting [`super::Operands`]' invariants.
    pub trait Sealed {}
}
pub(crate) use sealed::Sealed;

/// Multiplication by a pruned matrix, whatever its format.
///
/// The products are the BLAS forms (`y <- alpha A x + beta y`, `Y <- alpha A X + beta Y`);
/// with `beta == 0` the output is not read, so NaN in it does not leak into the result.
/// The allocating [`matvec`](SparseProduct::matvec) and [`matmul`](SparseProduct::matmul)
/// are built on them. Every method checks the operands' shapes and routes a batch of one
/// to the batch-1 kernel, here, for every format; a format only provides
/// [`product`](SparseProduct::product). The trait is sealed: the formats are this
/// crate's, and [`AnySparse`](crate::AnySparse) holds any of them.
///
/// ```
/// use nalgebra::{dmatrix, dvector};
/// use shears_sparse::{Csr, SparseProduct};
///
/// let a: Csr<f64, u16> = Csr::from_dense(&dmatrix![1.0, 0.0; 0.0, 2.0])?;
/// assert_eq!(a.matvec(&dvector![3.0, 4.0])?, dvector![3.0, 8.0]);
/// let mut y = vec![1.0, 1.0];
/// a.matvec_into(2.0, &[3.0, 4.0], 1.0, &mut y)?; // y = 2 A x + y
/// assert_eq!(y, vec![7.0, 17.0]);
/// assert!(a.matvec_into(1.0, &[1.0], 0.0, &mut y).is_err());
/// # Ok::<(), shears_sparse::Error>(())
/// ```
pub trait SparseProduct<T: Scalar>: Sealed {
    /// `(nrows, ncols)` of the matrix.
    fn shape(&self) -> (usize, usize);

    /// Runs a product whose operands fit [`shape`](SparseProduct::shape) (see
    /// [`Operands`]' invariants). Call [`matvec_into`](SparseProduct::matvec_into) or
    /// [`matmul_into`](SparseProduct::matmul_into) instead: they build the operands.
    fn product(&self, operands: Operands<'_, T>);

    /// `y <- alpha * A x + beta * y`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `x` has not `ncols` entries or `y` not `nrows`.
    fn matvec_into(&self, alpha: T, x: &[T], beta: T, y: &mut [T]) -> Result<()> {
        let (nrows, ncols) = self.shape();
        check_len("matvec x", ncols, x.len())?;
        check_len("matvec y", nrows, y.len())?;
        self.product(Operands::Vector { alpha, x, beta, y });
        Ok(())
    }

    /// `Y <- alpha * A X + beta * Y` for a dense `X` of shape `(ncols, batch)`.
    ///
    /// A batch of one runs the batch-1 kernel ([`matvec_into`](SparseProduct::matvec_into),
    /// the same bits): the batched tiles gain nothing from a single column.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `X` has not `ncols` rows or `Y` is not
    /// `(nrows, batch)`.
    fn matmul_into(&self, alpha: T, x: &DMatrix<T>, beta: T, y: &mut DMatrix<T>) -> Result<()> {
        let (nrows, ncols) = self.shape();
        if x.nrows() != ncols {
            return Err(Error::ShapeMismatch {
                op: "matmul x",
                expected: (ncols, x.ncols()),
                got: x.shape(),
            });
        }
        if y.shape() != (nrows, x.ncols()) {
            return Err(Error::ShapeMismatch {
                op: "matmul y",
                expected: (nrows, x.ncols()),
                got: y.shape(),
            });
        }
        let operands = if x.ncols() == 1 {
            Operands::Vector { alpha, x: x.as_slice(), beta, y: y.as_mut_slice() }
        } else {
            Operands::Matrix { alpha, x, beta, y }
        };
        self.product(operands);
        Ok(())
    }

    /// `A x`, allocating the result.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `x` has not `ncols` entries.
    fn matvec(&self, x: &DVector<T>) -> Result<DVector<T>> {
        let mut y = DVector::zeros(self.shape().0);
        self.matvec_into(T::one(), x.as_slice(), T::zero(), y.as_mut_slice())?;
        Ok(y)
    }

    /// `A X`, allocating the result.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `X` has not `ncols` rows.
    fn matmul(&self, x: &DMatrix<T>) -> Result<DMatrix<T>> {
        let mut y = DMatrix::zeros(self.shape().0, x.ncols());
        self.matmul_into(T::one(), x, T::zero(), &mut y)?;
        Ok(y)
    }
}

fn check_len(op: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::ShapeMismatch { op, expected: (expected, 1), got: (got, 1) })
    }
}
