//! [`Csr`]: compressed sparse rows, with a narrow or wide column-index type.

use nalgebra::DMatrix;
use shears_core::{Mask, Scalar};

use crate::error::{Error, Result};
use crate::index::{SpIndex, narrowest_index};
use crate::kernels;
use crate::product::{Layout, Operands, Sealed, SparseProduct};
use crate::validate;

/// A compressed-sparse-row matrix with column indices of type `I` (`u16` or `u32`).
///
/// Built from a pruned weight matrix ([`Csr::from_dense_masked`] keeps exactly the
/// entries a mask keeps, zeros included; [`Csr::from_dense`] keeps the nonzeros). Use
/// [`AnyCsr`] to get the narrowest index type that fits automatically.
///
/// # Invariants
/// Checked by [`Csr::try_from_parts`], deserialisation and [`Csr::from_bytes`]:
/// - `indptr.len() == nrows + 1`, `indptr[0] == 0`, `indptr` never decreases and
///   `indptr[nrows] == indices.len() == values.len()`;
/// - within each row, column indices are `< ncols` and strictly increasing;
/// - `ncols <= I::MAX_COLS`.
///
/// The kernels rely on these for unchecked indexing into `x`.
///
/// # Examples
/// ```
/// use nalgebra::{dmatrix, dvector};
/// use shears_core::Mask;
/// use shears_sparse::{Csr, SparseProduct};
///
/// let w = dmatrix![1.0f32, 0.0, 2.0; 0.0, 3.0, 0.0];
/// let csr: Csr<f32, u16> = Csr::from_dense(&w)?;
/// assert_eq!(csr.nnz(), 3);
/// assert_eq!(csr.indptr(), &[0, 2, 3]);
/// assert_eq!(csr.matvec(&dvector![1.0, 1.0, 1.0])?, dvector![3.0, 3.0]);
/// assert_eq!(csr.to_dense(), w);
/// # Ok::<(), shears_sparse::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Csr<T, I = u32> {
    nrows: usize,
    ncols: usize,
    indptr: Vec<usize>,
    indices: Vec<I>,
    values: Vec<T>,
}

impl<T: Scalar, I: SpIndex> Csr<T, I> {
    fn check_width(ncols: usize) -> Result<()> {
        if ncols > I::MAX_COLS {
            return Err(Error::IndexOverflow { what: "column count", value: ncols, bits: I::BITS });
        }
        Ok(())
    }

    /// The entries of `weights` that `mask` keeps (kept zeros included).
    ///
    /// # Errors
    /// [`Error::Core`] with a shape mismatch if the mask does not fit; [`Error::IndexOverflow`]
    /// if `I` cannot address every column.
    pub fn from_dense_masked(weights: &DMatrix<T>, mask: &Mask) -> Result<Self> {
        if mask.shape() != weights.shape() {
            return Err(shears_core::Error::ShapeMismatch {
                op: "csr from masked dense",
                expected: weights.shape(),
                got: mask.shape(),
            }
            .into());
        }
        Self::from_dense_where(weights, |i, _| mask.get_linear(i) == Some(true))
    }

    /// The nonzero entries of `weights` (an already pruned matrix).
    ///
    /// # Errors
    /// [`Error::IndexOverflow`] if `I` cannot address every column.
    pub fn from_dense(weights: &DMatrix<T>) -> Result<Self> {
        Self::from_dense_where(weights, |_, w| w != T::zero())
    }

    /// Two passes over the column-major data: count per row, then fill; visiting columns
    /// in order keeps each row's indices sorted.
    fn from_dense_where(weights: &DMatrix<T>, keep: impl Fn(usize, T) -> bool) -> Result<Self> {
        let (nrows, ncols) = weights.shape();
        Self::check_width(ncols)?;
        let data = weights.as_slice();
        let mut indptr = vec![0usize; nrows + 1];
        for (i, &w) in data.iter().enumerate() {
            if keep(i, w) {
                indptr[i % nrows + 1] += 1;
            }
        }
        for r in 0..nrows {
            indptr[r + 1] += indptr[r];
        }
        let nnz = indptr[nrows];
        let mut cursor = indptr[..nrows].to_vec();
        let mut indices = vec![I::default(); nnz];
        let mut values = vec![T::zero(); nnz];
        for (c, column) in data.chunks(nrows.max(1)).enumerate().take(ncols) {
            let col = I::try_from_index(c).ok_or(Error::IndexOverflow {
                what: "column",
                value: c,
                bits: I::BITS,
            })?;
            for (r, &w) in column.iter().enumerate() {
                if keep(c * nrows + r, w) {
                    indices[cursor[r]] = col;
                    values[cursor[r]] = w;
                    cursor[r] += 1;
                }
            }
        }
        Ok(Csr::from_parts_trusted(nrows, ncols, indptr, indices, values))
    }

    /// A matrix from raw CSR buffers, validated.
    ///
    /// # Errors
    /// [`Error::Format`] naming the first failed check; [`Error::IndexOverflow`] if
    /// `ncols` exceeds what `I` addresses.
    pub fn try_from_parts(
        nrows: usize,
        ncols: usize,
        indptr: Vec<usize>,
        indices: Vec<I>,
        values: Vec<T>,
    ) -> Result<Self> {
        Self::check_width(ncols)?;
        validate::compressed(nrows, ncols, &indptr, &indices, values.len())
            .map_err(|error| Error::Format { format: "csr", error })?;
        Ok(Csr { nrows, ncols, indptr, indices, values })
    }

    /// Construction from buffers shears built itself; validated in debug builds.
    pub(crate) fn from_parts_trusted(
        nrows: usize,
        ncols: usize,
        indptr: Vec<usize>,
        indices: Vec<I>,
        values: Vec<T>,
    ) -> Self {
        debug_assert_eq!(
            validate::compressed(nrows, ncols, &indptr, &indices, values.len()),
            Ok(())
        );
        Csr { nrows, ncols, indptr, indices, values }
    }

    /// Gives the buffers back: `(nrows, ncols, indptr, indices, values)`.
    pub fn into_parts(self) -> (usize, usize, Vec<usize>, Vec<I>, Vec<T>) {
        (self.nrows, self.ncols, self.indptr, self.indices, self.values)
    }

    /// Rows.
    pub fn nrows(&self) -> usize {
        self.nrows
    }

    /// Columns.
    pub fn ncols(&self) -> usize {
        self.ncols
    }

    /// `(nrows, ncols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.nrows, self.ncols)
    }

    /// Stored entries.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// Row pointers (`nrows + 1` of them).
    pub fn indptr(&self) -> &[usize] {
        &self.indptr
    }

    /// Column indices, row after row.
    pub fn indices(&self) -> &[I] {
        &self.indices
    }

    /// Stored values, row after row.
    pub fn values(&self) -> &[T] {
        &self.values
    }

    /// Stored values, mutable (the structure is not).
    pub fn values_mut(&mut self) -> &mut [T] {
        &mut self.values
    }

    /// The column indices and values of row `row`; `None` when out of range.
    pub fn row(&self, row: usize) -> Option<(&[I], &[T])> {
        let range = *self.indptr.get(row)?..*self.indptr.get(row + 1)?;
        Some((&self.indices[range.clone()], &self.values[range]))
    }

    /// Bytes a batch-1 product reads: values, indices and row pointers.
    pub fn bytes_read(&self) -> usize {
        self.nnz() * (size_of::<T>() + size_of::<I>()) + self.indptr.len() * size_of::<usize>()
    }

    /// The dense matrix (entries not stored are zero).
    pub fn to_dense(&self) -> DMatrix<T> {
        let mut out = DMatrix::zeros(self.nrows, self.ncols);
        for r in 0..self.nrows {
            for k in self.indptr[r]..self.indptr[r + 1] {
                out[(r, self.indices[k].index())] = self.values[k];
            }
        }
        out
    }

    pub(crate) fn as_view(&self) -> kernels::CsrView<'_, T, I> {
        kernels::CsrView {
            nrows: self.nrows,
            ncols: self.ncols,
            indptr: &self.indptr,
            indices: &self.indices,
            values: &self.values,
            row_scales: None,
        }
    }

    /// The same matrix as a `sprs` CSR matrix (with `usize` indices).
    #[cfg(feature = "sprs")]
    pub fn to_sprs(&self) -> sprs::CsMat<T> {
        let indices = self.indices.iter().map(|i| i.index()).collect();
        sprs::CsMat::new(
            (self.nrows, self.ncols),
            self.indptr.clone(),
            indices,
            self.values.clone(),
        )
    }

    /// A matrix from a `sprs` matrix (CSR or CSC; CSC is converted).
    ///
    /// # Errors
    /// [`Error::IndexOverflow`] if `I` cannot address every column.
    #[cfg(feature = "sprs")]
    pub fn from_sprs(m: &sprs::CsMat<T>) -> Result<Self> {
        let csr = if m.is_csr() { m.clone() } else { m.to_csr() };
        let (nrows, ncols) = csr.shape();
        Self::check_width(ncols)?;
        let indptr = csr.proper_indptr().into_owned();
        let indices = csr
            .indices()
            .iter()
            .map(|&c| {
                I::try_from_index(c).ok_or(Error::IndexOverflow {
                    what: "column",
                    value: c,
                    bits: I::BITS,
                })
            })
            .collect::<Result<Vec<I>>>()?;
        Self::try_from_parts(nrows, ncols, indptr, indices, csr.data().to_vec())
    }
}

impl<T: Scalar, I: SpIndex> Sealed<T> for Csr<T, I> {
    /// Multi-threaded on rayon's current pool for large matrices (rows split by stored
    /// entries); every row is summed in the same order whatever the thread count, so the
    /// result is bit-identical on 1 or many threads.
    fn product(&self, operands: Operands<'_, T>) {
        match operands {
            Operands::Vector { alpha, x, beta, y } => {
                kernels::csr_spmv(self.as_view(), alpha, x, beta, y)
            }
            Operands::Matrix { alpha, x, beta, y, then } => {
                kernels::csr_spmm(self.as_view(), alpha, x, beta, y, then, Layout::COLUMNS)
            }
            Operands::Oriented { alpha, x, beta, y, then, layout } => {
                kernels::csr_spmm(self.as_view(), alpha, x, beta, y, then, layout)
            }
        }
    }
}

impl<T: Scalar, I: SpIndex> SparseProduct<T> for Csr<T, I> {
    fn shape(&self) -> (usize, usize) {
        (self.nrows, self.ncols)
    }
}

narrowest_index! {
    /// A CSR matrix with the narrowest column index that fits: `u16` up to 65,536 columns,
    /// `u32` beyond.
    ///
    /// ```
    /// use nalgebra::DMatrix;
    /// use shears_core::Mask;
    /// use shears_sparse::AnyCsr;
    ///
    /// let w = DMatrix::<f32>::from_element(4, 100, 1.0);
    /// let csr = AnyCsr::from_dense_masked(&w, &Mask::all_kept_like(&w))?;
    /// assert_eq!(csr.index_bits(), 16);
    /// # Ok::<(), shears_sparse::Error>(())
    /// ```
    AnyCsr(Csr)
}

impl<T: Scalar> AnyCsr<T> {
    /// The kept entries of `weights`, with the narrowest index type.
    ///
    /// # Errors
    /// As [`Csr::from_dense_masked`].
    pub fn from_dense_masked(weights: &DMatrix<T>, mask: &Mask) -> Result<Self> {
        if weights.ncols() <= u16::MAX_COLS {
            Ok(AnyCsr::Narrow(Csr::from_dense_masked(weights, mask)?))
        } else {
            Ok(AnyCsr::Wide(Csr::from_dense_masked(weights, mask)?))
        }
    }

    /// The nonzeros of `weights`, with the narrowest index type.
    ///
    /// # Errors
    /// As [`Csr::from_dense`].
    pub fn from_dense(weights: &DMatrix<T>) -> Result<Self> {
        if weights.ncols() <= u16::MAX_COLS {
            Ok(AnyCsr::Narrow(Csr::from_dense(weights)?))
        } else {
            Ok(AnyCsr::Wide(Csr::from_dense(weights)?))
        }
    }
}
