//! [`SparseProduct`]: the products every format offers, in the BLAS form and allocating.

use nalgebra::{DMatrix, DVector};
use shears_core::Scalar;

use crate::error::Result;

/// Multiplication by a pruned matrix, whatever its format.
///
/// Formats implement the BLAS forms (`y <- alpha A x + beta y`, `Y <- alpha A X + beta Y`);
/// with `beta == 0` the output is not read, so NaN in it does not leak into the result.
/// The allocating [`matvec`](SparseProduct::matvec) and [`matmul`](SparseProduct::matmul)
/// are built on them.
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
/// # Ok::<(), shears_sparse::Error>(())
/// ```
pub trait SparseProduct<T: Scalar> {
    /// `(nrows, ncols)` of the matrix.
    fn dims(&self) -> (usize, usize);

    /// `y <- alpha * A x + beta * y`.
    ///
    /// # Errors
    /// [`crate::Error::ShapeMismatch`] if `x` has not `ncols` entries or `y` not `nrows`.
    fn matvec_into(&self, alpha: T, x: &[T], beta: T, y: &mut [T]) -> Result<()>;

    /// `Y <- alpha * A X + beta * Y` for a dense `X` of shape `(ncols, batch)`.
    ///
    /// Every format runs a batch of one through its batch-1 kernel
    /// ([`matvec_into`](SparseProduct::matvec_into), the same bits): the batched tiles
    /// gain nothing from a single column and cannot use the gathers.
    ///
    /// # Errors
    /// [`crate::Error::ShapeMismatch`] if `X` has not `ncols` rows or `Y` is not
    /// `(nrows, batch)`.
    fn matmul_into(&self, alpha: T, x: &DMatrix<T>, beta: T, y: &mut DMatrix<T>) -> Result<()>;

    /// `A x`, allocating the result.
    ///
    /// # Errors
    /// [`crate::Error::ShapeMismatch`] if `x` has not `ncols` entries.
    fn matvec(&self, x: &DVector<T>) -> Result<DVector<T>> {
        let mut y = DVector::zeros(self.dims().0);
        self.matvec_into(T::one(), x.as_slice(), T::zero(), y.as_mut_slice())?;
        Ok(y)
    }

    /// `A X`, allocating the result.
    ///
    /// # Errors
    /// [`crate::Error::ShapeMismatch`] if `X` has not `ncols` rows.
    fn matmul(&self, x: &DMatrix<T>) -> Result<DMatrix<T>> {
        let mut y = DMatrix::zeros(self.dims().0, x.ncols());
        self.matmul_into(T::one(), x, T::zero(), &mut y)?;
        Ok(y)
    }
}
