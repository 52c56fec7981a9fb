//! Dense products: what a matrix too dense for any sparse format runs, and what
//! compaction's smaller matrices run.

use nalgebra::{DMatrix, DVectorView, DVectorViewMut};
use shears_core::Scalar;

use crate::product::{Operands, Sealed, SparseProduct, finish, via_columns};

/// `y <- alpha * W x + beta * y` (`y` is not read when `beta == 0`).
pub(crate) fn gemv<T: Scalar>(w: &DMatrix<T>, alpha: T, x: &[T], beta: T, y: &mut [T]) {
    let x = DVectorView::from_slice(x, x.len());
    let mut y = DVectorViewMut::from_slice(y, y.len());
    y.gemv(alpha, w, &x, beta);
}

/// `Y <- alpha * W X + beta * Y` (`Y` is not read when `beta == 0`).
pub(crate) fn gemm<T: Scalar>(
    w: &DMatrix<T>,
    alpha: T,
    x: &DMatrix<T>,
    beta: T,
    y: &mut DMatrix<T>,
) {
    y.gemm(alpha, w, x, beta);
}

impl<T: Scalar> Sealed<T> for DMatrix<T> {
    fn product(&self, operands: Operands<'_, T>) {
        match operands {
            Operands::Vector { alpha, x, beta, y } => gemv(self, alpha, x, beta, y),
            Operands::Matrix { alpha, x, beta, y, then } => {
                gemm(self, alpha, x, beta, y);
                finish(then, y.nrows(), y.as_mut_slice());
            }
            Operands::Oriented { alpha, x, beta, y, then, layout } => {
                via_columns(self, alpha, x, beta, y, then, layout)
            }
        }
    }
}

/// A dense matrix multiplies through nalgebra, with the same checks as every format.
impl<T: Scalar> SparseProduct<T> for DMatrix<T> {
    fn shape(&self) -> (usize, usize) {
        (self.nrows(), self.ncols())
    }
}
