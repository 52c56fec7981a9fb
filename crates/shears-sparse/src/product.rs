//! [`SparseProduct`]: the products every format offers, in the BLAS form and allocating,
//! with the operands' shapes checked here, once, for every format.

use nalgebra::{DMatrix, DVector, Dyn, U1};
use shears_core::Scalar;

use crate::error::{Error, Result};

mod sealed {
    #![allow(unreachable_pub, reason = "sealed: public in name, unnameable outside")]

    use nalgebra::DMatrix;
    use shears_core::Scalar;

    /// The operands of one product, their shapes checked against the matrix's by
    /// [`SparseProduct`](super::SparseProduct)'s provided methods (the only place they
    /// are made).
    ///
    /// # Invariants
    /// For an `(nrows, ncols)` matrix: `Vector` has `x.len() == ncols` and
    /// `y.len() == nrows`; `Matrix` has `x` of shape `(ncols, b)` and `y` of shape
    /// `(nrows, b)` with `b != 1` (a batch of one is always a `Vector`).
    pub enum Operands<'a, T> {
        /// `y <- alpha * A x + beta * y`; with `beta == 0`, `y` is not read.
        Vector { alpha: T, x: &'a [T], beta: T, y: &'a mut [T] },
        /// `Y <- then(alpha * A X + beta * Y)`; with `beta == 0`, `Y` is not read.
        /// `then`, if any, runs once on every entry of `Y`, after its value is final
        /// ([`Epilogue`](super::Epilogue)).
        Matrix {
            alpha: T,
            x: &'a DMatrix<T>,
            beta: T,
            y: &'a mut DMatrix<T>,
            then: Option<super::Epilogue<'a, T>>,
        },
        /// `Matrix` with `X` and `Y` oriented as `layout` says, at least one of them as
        /// rows: `x` of shape `(ncols, b)` or `(b, ncols)`, `y` of shape `(nrows, b)` or
        /// `(b, nrows)`, with a batch `b` other than one (possibly empty). `then` runs on
        /// the pieces of `y` as stored.
        Oriented {
            alpha: T,
            x: &'a DMatrix<T>,
            beta: T,
            y: &'a mut DMatrix<T>,
            then: Option<super::Epilogue<'a, T>>,
            layout: super::Layout,
        },
    }

    impl<T: std::fmt::Debug> std::fmt::Debug for Operands<'_, T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                Operands::Vector { alpha, x, beta, y } => f
                    .debug_struct("Vector")
                    .field("alpha", alpha)
                    .field("x", x)
                    .field("beta", beta)
                    .field("y", y)
                    .finish(),
                Operands::Matrix { alpha, x, beta, y, then } => f
                    .debug_struct("Matrix")
                    .field("alpha", alpha)
                    .field("x", x)
                    .field("beta", beta)
                    .field("y", y)
                    .field("then", &then.map(|_| "epilogue"))
                    .finish(),
                Operands::Oriented { alpha, x, beta, y, then, layout } => f
                    .debug_struct("Oriented")
                    .field("alpha", alpha)
                    .field("x", x)
                    .field("beta", beta)
                    .field("y", y)
                    .field("then", &then.map(|_| "epilogue"))
                    .field("layout", layout)
                    .finish(),
            }
        }
    }

    /// What a format implements: the product on checked operands. Only this crate's
    /// formats implement it, since the kernels index `x` without bounds checks on the
    /// strength of [`Operands`]' invariants, and nothing outside can call it.
    pub trait Sealed<T: Scalar> {
        /// Runs a product whose operands fit the matrix.
        fn product(&self, operands: Operands<'_, T>);
    }
}
pub(crate) use sealed::{Operands, Sealed};

/// How a dense operand of a batched product holds its vectors: the inputs of one item
/// of the batch (a token) in `X`, its outputs in `Y`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Orientation {
    /// One vector per column: `X` is `ncols x batch`, `Y` is `nrows x batch`.
    #[default]
    Columns,
    /// One vector per row, the transpose: `X` is `batch x ncols`, `Y` is `batch x nrows`,
    /// so that one feature's values over the batch are contiguous, as the batched
    /// kernels read `X` and write `Y`.
    Rows,
}

/// The orientations of a batched product's `X` and `Y`
/// ([`matmul_oriented_into`](SparseProduct::matmul_oriented_into)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Layout {
    /// How `X` holds the batch's inputs.
    pub x: Orientation,
    /// How `Y` holds the batch's outputs.
    pub y: Orientation,
}

impl Layout {
    /// `X` and `Y` by columns, as [`matmul_into`](SparseProduct::matmul_into) takes them.
    pub const COLUMNS: Layout = Layout { x: Orientation::Columns, y: Orientation::Columns };

    /// `X` oriented as `x`, `Y` as `y`.
    pub const fn new(x: Orientation, y: Orientation) -> Layout {
        Layout { x, y }
    }

    /// `X`'s inputs (the matrix's `ncols`) and its batch, as this layout orients it.
    pub(crate) fn inputs_and_batch<T: Scalar>(self, x: &DMatrix<T>) -> (usize, usize) {
        if self.x_rows() { (x.ncols(), x.nrows()) } else { x.shape() }
    }

    pub(crate) fn x_rows(self) -> bool {
        self.x == Orientation::Rows
    }

    pub(crate) fn y_rows(self) -> bool {
        self.y == Orientation::Rows
    }
}

/// What a batched product does to its output as it finishes it:
/// [`matmul_into_then`](SparseProduct::matmul_into_then) calls `then(column, first_row,
/// piece)` once for every piece of `Y` a task of the product wrote, where `piece` is
/// column `column`'s entries from row `first_row` on, their values final. The pieces
/// cover `Y` once; they are called on the threads that wrote them, while they are in
/// cache, so a bias and an activation cost no pass over `Y` of their own.
pub type Epilogue<'a, T> = &'a (dyn Fn(usize, usize, &mut [T]) + Sync);

/// Runs `then` over all of `y` (columns of `nrows`), one whole column per call: what a
/// product whose kernel has no epilogue of its own does after it.
pub(crate) fn finish<T>(then: Option<Epilogue<'_, T>>, nrows: usize, y: &mut [T]) {
    if let Some(then) = then {
        y.chunks_exact_mut(nrows.max(1)).enumerate().for_each(|(j, column)| then(j, 0, column));
    }
}

/// Multiplication by a pruned matrix, whatever its format.
///
/// The products are the BLAS forms (`y <- alpha A x + beta y`, `Y <- alpha A X + beta Y`);
/// with `beta == 0` the output is not read, so NaN in it does not leak into the result.
/// The allocating [`matvec`](SparseProduct::matvec) and [`matmul`](SparseProduct::matmul)
/// are built on them. Every method checks the operands' shapes and routes a batch of one
/// to the batch-1 kernel, here, for every format. The trait is sealed (the kernels
/// behind it trust those checks): the formats are this crate's, and
/// [`AnySparse`](crate::AnySparse) holds any of them.
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
pub trait SparseProduct<T: Scalar>: Sealed<T> {
    /// `(nrows, ncols)` of the matrix.
    fn shape(&self) -> (usize, usize);

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
        check_matmul(self.shape(), x, y)?;
        let operands = if x.ncols() == 1 {
            Operands::Vector { alpha, x: x.as_slice(), beta, y: y.as_mut_slice() }
        } else {
            Operands::Matrix { alpha, x, beta, y, then: None }
        };
        self.product(operands);
        Ok(())
    }

    /// `Y <- then(alpha * A X + beta * Y)`: [`matmul_into`](SparseProduct::matmul_into)
    /// with `then` run on every piece of `Y` as the task that wrote it finishes it
    /// ([`Epilogue`]), inside the product's parallel region. `Y` holds the bits
    /// `matmul_into` gives and then `then` applied to each entry once; a `then` that
    /// treats each entry alone (a bias by row, an activation) gives the same bits
    /// whichever pieces it is called on.
    ///
    /// ```
    /// use nalgebra::dmatrix;
    /// use shears_sparse::{Csr, SparseProduct};
    ///
    /// let a: Csr<f32, u16> = Csr::from_dense(&dmatrix![1.0, 0.0; 0.0, -2.0])?;
    /// let bias = [0.5, 0.5];
    /// let relu_of_biased = |_: usize, row: usize, piece: &mut [f32]| {
    ///     for (v, b) in piece.iter_mut().zip(&bias[row..]) {
    ///         *v = (*v + b).max(0.0);
    ///     }
    /// };
    /// let mut y = nalgebra::DMatrix::zeros(2, 2);
    /// a.matmul_into_then(1.0, &dmatrix![1.0, 2.0; 1.0, 2.0], 0.0, &mut y, &relu_of_biased)?;
    /// assert_eq!(y, dmatrix![1.5, 2.5; 0.0, 0.0]);
    /// # Ok::<(), shears_sparse::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`matmul_into`](SparseProduct::matmul_into); `Y` is untouched on an error.
    fn matmul_into_then(
        &self,
        alpha: T,
        x: &DMatrix<T>,
        beta: T,
        y: &mut DMatrix<T>,
        then: Epilogue<'_, T>,
    ) -> Result<()> {
        if x.ncols() != 1 {
            check_matmul(self.shape(), x, y)?;
            self.product(Operands::Matrix { alpha, x, beta, y, then: Some(then) });
            return Ok(());
        }
        self.matmul_into(alpha, x, beta, y)?;
        finish(Some(then), y.nrows(), y.as_mut_slice());
        Ok(())
    }

    /// `Y <- then(alpha * A X + beta * Y)` with `X` and `Y` each given by columns or by
    /// rows, as `layout` says ([`Orientation`]): `X` of shape `(ncols, batch)` or
    /// `(batch, ncols)`, `Y` of shape `(nrows, batch)` or `(batch, nrows)`. The batched
    /// kernels of CSR, sliced ELLPACK, N:M and block-sparse matrices (values of any
    /// width but int8) read `X` and write `Y` by rows, so a chain of products whose
    /// operands stay by rows copies neither into the other orientation; the other
    /// formats copy them. `then`, if any, runs on the pieces of `Y` as it is stored
    /// ([`Epilogue`]: by rows, `column` is an output and `first_row` the first item of
    /// the batch in the piece). The bits are [`matmul_into_then`]'s on the operands
    /// transposed by columns, whatever the layout.
    ///
    /// [`matmul_into_then`]: SparseProduct::matmul_into_then
    ///
    /// ```
    /// use nalgebra::dmatrix;
    /// use shears_sparse::{Csr, Layout, Orientation, SparseProduct};
    ///
    /// let a: Csr<f32, u16> = Csr::from_dense(&dmatrix![1.0, 0.0; 0.0, -2.0])?;
    /// // Three items of the batch, one per row of `xt`; their outputs by rows too.
    /// let xt = dmatrix![1.0, 1.0; 2.0, 2.0; 3.0, 3.0];
    /// let mut yt = nalgebra::DMatrix::zeros(3, 2);
    /// let rows = Layout::new(Orientation::Rows, Orientation::Rows);
    /// a.matmul_oriented_into(1.0, &xt, 0.0, &mut yt, rows, None)?;
    /// assert_eq!(yt, dmatrix![1.0, -2.0; 2.0, -4.0; 3.0, -6.0]);
    /// # Ok::<(), shears_sparse::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `X` or `Y` does not fit the matrix and the layout,
    /// or they hold different batches; `Y` is untouched on an error.
    fn matmul_oriented_into(
        &self,
        alpha: T,
        x: &DMatrix<T>,
        beta: T,
        y: &mut DMatrix<T>,
        layout: Layout,
        then: Option<Epilogue<'_, T>>,
    ) -> Result<()> {
        let batch = check_oriented(self.shape(), x, y, layout)?;
        if batch == 1 {
            // One item: both orientations store the same values in the same order.
            self.product(Operands::Vector { alpha, x: x.as_slice(), beta, y: y.as_mut_slice() });
            finish(then, y.nrows(), y.as_mut_slice());
        } else if layout == Layout::COLUMNS {
            self.product(Operands::Matrix { alpha, x, beta, y, then });
        } else {
            self.product(Operands::Oriented { alpha, x, beta, y, then, layout });
        }
        Ok(())
    }

    /// `A x`, allocating the result.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `x` has not `ncols` entries;
    /// [`shears_core::Error::DimensionOverflow`] if the result could not be addressed,
    /// [`shears_core::Error::OutOfMemory`] if it could not be allocated.
    fn matvec(&self, x: &DVector<T>) -> Result<DVector<T>> {
        let rows = self.shape().0;
        let mut y = zeroed::<T>(rows, 1)?.reshape_generic(Dyn(rows), U1);
        self.matvec_into(T::one(), x.as_slice(), T::zero(), y.as_mut_slice())?;
        Ok(y)
    }

    /// `A X`, allocating the result.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `X` has not `ncols` rows;
    /// [`shears_core::Error::DimensionOverflow`] if the result could not be addressed,
    /// [`shears_core::Error::OutOfMemory`] if it could not be allocated.
    fn matmul(&self, x: &DMatrix<T>) -> Result<DMatrix<T>> {
        let mut y = zeroed(self.shape().0, x.ncols())?;
        self.matmul_into(T::one(), x, T::zero(), &mut y)?;
        Ok(y)
    }
}

/// A `nrows x ncols` matrix of zeros for a product to fill, refused if its bytes could
/// not be addressed or allocated: an `X` of no rows costs nothing at any width, and
/// nalgebra multiplies the dimensions unchecked, so a wrapped count would give storage
/// shorter than the shape.
pub(crate) fn zeroed<T: Scalar>(nrows: usize, ncols: usize) -> Result<DMatrix<T>> {
    Ok(shears_core::try_zeros(nrows, ncols)?)
}

/// Whether `x` and `y` fit an `(nrows, ncols)` matrix for `Y <- A X`.
fn check_matmul<T: Scalar>(
    (nrows, ncols): (usize, usize),
    x: &DMatrix<T>,
    y: &DMatrix<T>,
) -> Result<()> {
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
    Ok(())
}

/// The batch of an oriented product, if `x` and `y` fit an `(nrows, ncols)` matrix and
/// `layout`.
fn check_oriented<T: Scalar>(
    (nrows, ncols): (usize, usize),
    x: &DMatrix<T>,
    y: &DMatrix<T>,
    layout: Layout,
) -> Result<usize> {
    let (inputs, batch) = layout.inputs_and_batch(x);
    let flip = |(a, b): (usize, usize), rows: bool| if rows { (b, a) } else { (a, b) };
    if inputs != ncols {
        let expected = flip((ncols, batch), layout.x_rows());
        return Err(Error::ShapeMismatch { op: "matmul x", expected, got: x.shape() });
    }
    let expected = flip((nrows, batch), layout.y_rows());
    if y.shape() != expected {
        return Err(Error::ShapeMismatch { op: "matmul y", expected, got: y.shape() });
    }
    Ok(batch)
}

/// Runs an oriented product on a format whose kernels take `X` and `Y` by columns:
/// the operands given by rows are transposed into columns, and `Y` back.
pub(crate) fn via_columns<T: Scalar>(
    a: &(impl Sealed<T> + ?Sized),
    alpha: T,
    x: &DMatrix<T>,
    beta: T,
    y: &mut DMatrix<T>,
    then: Option<Epilogue<'_, T>>,
    layout: Layout,
) {
    let by_columns;
    let x = if layout.x_rows() {
        by_columns = x.transpose();
        &by_columns
    } else {
        x
    };
    if !layout.y_rows() {
        return a.product(Operands::Matrix { alpha, x, beta, y, then });
    }
    // With `beta == 0` `Y` is not read, so NaN in it does not leak.
    let mut columns =
        if beta == T::zero() { DMatrix::zeros(y.ncols(), y.nrows()) } else { y.transpose() };
    a.product(Operands::Matrix { alpha, x, beta, y: &mut columns, then: None });
    y.tr_copy_from(&columns);
    finish(then, y.nrows(), y.as_mut_slice());
}

fn check_len(op: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::ShapeMismatch { op, expected: (expected, 1), got: (got, 1) })
    }
}
