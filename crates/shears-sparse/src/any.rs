//! [`AnySparse`]: a pruned matrix in whichever format was chosen for it.

use nalgebra::DMatrix;
use shears_core::{Mask, Scalar};

use crate::block::BlockSparse;
use crate::calibrate::Crossovers;
use crate::choose::{Format, choose_format, choose_format_with};
use crate::compact::{Compacted, Compaction};
use crate::csr::AnyCsr;
use crate::error::Result;
use crate::nm::NmSparse;
use crate::product::{Operands, Sealed, SparseProduct};
use crate::sell::AnySlicedEll;

/// A pruned matrix in any of this crate's formats, multiplied through one
/// [`SparseProduct`] implementation.
///
/// Build it from a [`Format`] decision ([`AnySparse::from_dense_masked`]) or let
/// [`choose_format`] decide for the batch size you expect ([`AnySparse::for_batch`]). A
/// model whose layers were pruned differently holds one `AnySparse` per layer and runs
/// them all the same way.
///
/// ```
/// use nalgebra::{DMatrix, DVector};
/// use shears_core::Mask;
/// use shears_sparse::{AnySparse, Format, SparseProduct};
///
/// let w = DMatrix::<f32>::from_fn(256, 512, |r, c| (r * 512 + c) as f32 / 1e4);
/// let mask = Mask::from_fn(256, 512, |r, c| (r * 7 + c * 3) % 10 == 0)?; // 90% pruned
/// let sparse = AnySparse::for_batch(&w, &mask, 1)?;
/// assert_eq!(sparse.format(), Format::SlicedEll);
/// let x = DVector::from_element(512, 1.0);
/// let dense = AnySparse::from_dense_masked(&w, &mask, Format::Dense)?;
/// let (a, b) = (sparse.matvec(&x)?, dense.matvec(&x)?);
/// assert!((a - b).amax() < 1e-3);
/// # Ok::<(), shears_sparse::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum AnySparse<T: Scalar> {
    /// The masked dense matrix.
    Dense(DMatrix<T>),
    /// Compressed sparse rows.
    Csr(AnyCsr<T>),
    /// Sliced ELLPACK.
    SlicedEll(AnySlicedEll<T>),
    /// N:M packed.
    Nm(NmSparse<T>),
    /// Block-sparse rows.
    Block(BlockSparse<T>),
    /// A smaller dense matrix with the fully pruned rows and columns removed.
    Compacted(Compacted<T>),
}

impl<T: Scalar> AnySparse<T> {
    /// The entries of `weights` that `mask` keeps, in `format`.
    ///
    /// # Errors
    /// The format's constructor's: a mask of another shape, a mask that does not satisfy
    /// the asked N:M pattern ([`crate::Error::NotNm`]), an index type too narrow.
    pub fn from_dense_masked(weights: &DMatrix<T>, mask: &Mask, format: Format) -> Result<Self> {
        Ok(match format {
            Format::Dense => AnySparse::Dense(mask.apply(weights)?),
            Format::Csr => AnySparse::Csr(AnyCsr::from_dense_masked(weights, mask)?),
            Format::SlicedEll => {
                AnySparse::SlicedEll(AnySlicedEll::from_dense_masked(weights, mask)?)
            }
            Format::Nm(p) => AnySparse::Nm(NmSparse::from_dense_masked(weights, mask, p)?),
            Format::Bsr(b) => AnySparse::Block(BlockSparse::from_dense_masked(weights, mask, b)?),
            Format::Compact => AnySparse::Compacted(Compacted::new(
                weights,
                mask,
                Compaction::RowsAndColumns,
                None,
            )?),
        })
    }

    /// The entries of `weights` that `mask` keeps, in the format [`choose_format`] picks
    /// for products of `batch` columns.
    ///
    /// # Errors
    /// As [`AnySparse::from_dense_masked`].
    pub fn for_batch(weights: &DMatrix<T>, mask: &Mask, batch: usize) -> Result<Self> {
        Self::from_dense_masked(weights, mask, choose_format(mask, batch))
    }

    /// [`AnySparse::for_batch`] with the given crossovers, such as this machine's measured
    /// ones ([`Crossovers::this_machine`]).
    ///
    /// # Errors
    /// As [`AnySparse::from_dense_masked`].
    pub fn for_batch_with(
        weights: &DMatrix<T>,
        mask: &Mask,
        batch: usize,
        crossovers: &Crossovers,
    ) -> Result<Self> {
        Self::from_dense_masked(weights, mask, choose_format_with(mask, batch, crossovers))
    }

    /// The format this matrix is in.
    pub fn format(&self) -> Format {
        match self {
            AnySparse::Dense(_) => Format::Dense,
            AnySparse::Csr(_) => Format::Csr,
            AnySparse::SlicedEll(_) => Format::SlicedEll,
            AnySparse::Nm(m) => Format::Nm(m.pattern()),
            AnySparse::Block(b) => Format::Bsr(b.block_shape()),
            AnySparse::Compacted(_) => Format::Compact,
        }
    }

    /// `(nrows, ncols)` of the (original, uncompacted) matrix.
    pub fn shape(&self) -> (usize, usize) {
        self.as_product().shape()
    }

    /// The bytes a batch-1 product reads from the matrix: values, indices and pointers.
    pub fn bytes_read(&self) -> usize {
        let dense = |m: &DMatrix<T>| m.len() * size_of::<T>();
        match self {
            AnySparse::Dense(m) => dense(m),
            AnySparse::Csr(m) => m.bytes_read(),
            AnySparse::SlicedEll(m) => m.bytes_read(),
            AnySparse::Nm(m) => m.bytes_read(),
            AnySparse::Block(m) => m.bytes_read(),
            AnySparse::Compacted(m) => dense(m.matrix()),
        }
    }

    /// The dense matrix (entries not stored are zero).
    pub fn to_dense(&self) -> DMatrix<T> {
        match self {
            AnySparse::Dense(m) => m.clone(),
            AnySparse::Csr(m) => m.to_dense(),
            AnySparse::SlicedEll(m) => m.to_dense(),
            AnySparse::Nm(m) => m.to_dense(),
            AnySparse::Block(m) => m.to_dense(),
            AnySparse::Compacted(m) => m.to_dense(),
        }
    }

    fn as_product(&self) -> &dyn SparseProduct<T> {
        match self {
            AnySparse::Dense(m) => m,
            AnySparse::Csr(m) => m,
            AnySparse::SlicedEll(m) => m,
            AnySparse::Nm(m) => m,
            AnySparse::Block(m) => m,
            AnySparse::Compacted(m) => m,
        }
    }
}

impl<T: Scalar> Sealed<T> for AnySparse<T> {
    fn product(&self, operands: Operands<'_, T>) {
        self.as_product().product(operands);
    }
}

impl<T: Scalar> SparseProduct<T> for AnySparse<T> {
    fn shape(&self) -> (usize, usize) {
        self.as_product().shape()
    }
}
