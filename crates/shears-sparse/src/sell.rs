//! [`SlicedEll`]: sliced ELLPACK (SELL-8-σ), CSR's entries laid out for batch-1 products.

use nalgebra::DMatrix;
use shears_core::{Mask, Scalar};

use crate::csr::{AnyCsr, Csr};
use crate::error::{Error, FormatError, Result};
use crate::index::{SpIndex, narrowest_index};
use crate::kernels::{self, SLICE_ROWS, SellView};
use crate::product::{Layout, Operands, Sealed, SparseProduct};
use crate::tuning::SELL_WINDOW;
use crate::validate;

/// A sparse matrix in sliced ELLPACK layout: rows in slices of eight, each slice stored
/// column by column, so one vector load takes the next entry of eight rows at once.
///
/// A CSR product sums each row on its own, and its loop ends after a different number of
/// entries in every row: a branch the processor cannot predict, once per row. A slice
/// advances its eight rows in lockstep (one gather from `x` for eight rows' next
/// entries, each row's sum in its own lane), so the loop ends once per eight rows and no
/// row needs a horizontal sum: the same gathers and the same narrow indices as CSR, fewer
/// mispredicted branches. Rows are sorted by length within windows of
/// [`SlicedEll::window`] rows so that a slice's rows are about equally long; the shorter
/// ones are padded to the slice's width with entries that the kernels skip.
///
/// Batched products gain nothing from the layout (they are bound by the arithmetic on
/// `X`'s rows); from a batch of two on they run CSR's tiled kernel on each row, so they
/// cost about what CSR's do. [`crate::choose_format`] picks this format at batch 1.
///
/// # Invariants
/// Checked by [`SlicedEll::try_from_parts`], deserialisation and [`SlicedEll::from_bytes`]:
/// - `window` is a positive multiple of [`SLICE_ROWS`]; `order` is a permutation of
///   `0..nrows` that moves no row out of its window (`order[lane] / window ==
///   lane / window`), and `lengths` has one entry per lane;
/// - `slice_ptr` has one entry per slice plus one, starts at 0 and ends at
///   `values.len() == indices.len()`; slice `s` is `8 * width` entries, its `width` the
///   longest of its lanes' lengths;
/// - entry `j` of lane `l` of slice `s` is at `slice_ptr[s] + 8 * j + l`; a lane's first
///   `lengths[lane]` entries have column indices `< ncols`, strictly increasing, and the
///   rest (padding) hold a zero value and column 0;
/// - `ncols <= I::MAX_COLS`.
///
/// # Examples
/// ```
/// use nalgebra::{DMatrix, DVector};
/// use shears_core::Mask;
/// use shears_sparse::{Csr, SlicedEll, SparseProduct};
///
/// let w = DMatrix::<f32>::from_fn(20, 30, |r, c| (r * 30 + c) as f32);
/// let mask = Mask::from_fn(20, 30, |r, c| (r * 7 + c * 3) % 10 == 0)?; // 90% pruned
/// let csr: Csr<f32, u16> = Csr::from_dense_masked(&w, &mask)?;
/// let sell = SlicedEll::from_csr(&csr);
/// assert_eq!(sell.nnz(), csr.nnz());
/// let x = DVector::from_element(30, 1.0);
/// assert_eq!(sell.matvec(&x)?, csr.matvec(&x)?);
/// assert_eq!(sell.to_csr(), csr);
/// # Ok::<(), shears_sparse::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SlicedEll<T, I = u32> {
    nrows: usize,
    ncols: usize,
    window: usize,
    order: Vec<usize>,
    lengths: Vec<usize>,
    slice_ptr: Vec<usize>,
    indices: Vec<I>,
    values: Vec<T>,
}

/// The buffers of a [`SlicedEll`], as [`SlicedEll::into_parts`] gives them and
/// [`SlicedEll::try_from_parts`] takes them (see the type's invariants). Deserialising
/// parts validates nothing; [`SlicedEll`]'s own deserialisation does.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SlicedEllParts<T, I> {
    /// Rows.
    pub nrows: usize,
    /// Columns.
    pub ncols: usize,
    /// Rows per sorting window, a multiple of [`SLICE_ROWS`].
    pub window: usize,
    /// The row of each lane (lane `8 * s + l` is lane `l` of slice `s`).
    pub order: Vec<usize>,
    /// The stored entries of each lane's row.
    pub lengths: Vec<usize>,
    /// Where each slice's entries start, then the total.
    pub slice_ptr: Vec<usize>,
    /// Column indices, slice by slice, entry by entry, lane by lane.
    pub indices: Vec<I>,
    /// Values, laid out as `indices`.
    pub values: Vec<T>,
}

impl<T: Scalar, I: SpIndex> SlicedEll<T, I> {
    /// `csr` with rows sorted by length within windows of [`SELL_WINDOW`](crate::tuning::SELL_WINDOW) rows.
    pub fn from_csr(csr: &Csr<T, I>) -> Self {
        Self::pack(csr, SELL_WINDOW)
    }

    /// `csr` with rows sorted by length within windows of `window` rows.
    ///
    /// # Errors
    /// [`Error::Format`] if `window` is not a positive multiple of [`SLICE_ROWS`].
    pub fn from_csr_with_window(csr: &Csr<T, I>, window: usize) -> Result<Self> {
        validate::sell_window(window).map_err(|error| Error::Format { format: "sell", error })?;
        Ok(Self::pack(csr, window))
    }

    /// The entries of `weights` that `mask` keeps (kept zeros included).
    ///
    /// # Errors
    /// As [`Csr::from_dense_masked`].
    pub fn from_dense_masked(weights: &DMatrix<T>, mask: &Mask) -> Result<Self> {
        Ok(Self::from_csr(&Csr::from_dense_masked(weights, mask)?))
    }

    /// The nonzero entries of `weights`.
    ///
    /// # Errors
    /// As [`Csr::from_dense`].
    pub fn from_dense(weights: &DMatrix<T>) -> Result<Self> {
        Ok(Self::from_csr(&Csr::from_dense(weights)?))
    }

    fn pack(csr: &Csr<T, I>, window: usize) -> Self {
        let (nrows, ncols) = csr.shape();
        let indptr = csr.indptr();
        let len = |r: usize| indptr[r + 1] - indptr[r];
        let mut order: Vec<usize> = (0..nrows).collect();
        for rows in order.chunks_mut(window) {
            // Stable: rows of equal length keep their order, so packing is deterministic.
            rows.sort_by_key(|&r| std::cmp::Reverse(len(r)));
        }
        let lengths: Vec<usize> = order.iter().map(|&r| len(r)).collect();
        let mut slice_ptr = Vec::with_capacity(nrows.div_ceil(SLICE_ROWS) + 1);
        slice_ptr.push(0);
        for lanes in lengths.chunks(SLICE_ROWS) {
            let width = lanes.iter().copied().max().unwrap_or(0);
            slice_ptr.push(slice_ptr[slice_ptr.len() - 1] + SLICE_ROWS * width);
        }
        let stored = slice_ptr[slice_ptr.len() - 1];
        let mut indices = vec![I::default(); stored];
        let mut values = vec![T::zero(); stored];
        for (lane, &r) in order.iter().enumerate() {
            let Some((cols, vals)) = csr.row(r) else { continue };
            for (k, (&c, &v)) in lane_slots(&slice_ptr, lane, cols.len()).zip(cols.iter().zip(vals))
            {
                indices[k] = c;
                values[k] = v;
            }
        }
        let sell = SlicedEll { nrows, ncols, window, order, lengths, slice_ptr, indices, values };
        debug_assert_eq!(sell.validate(), Ok(()));
        sell
    }

    fn validate(&self) -> std::result::Result<(), FormatError> {
        validate::sell(
            self.nrows,
            self.ncols,
            self.window,
            &self.order,
            &self.lengths,
            &self.slice_ptr,
            &self.indices,
            &self.values,
            T::zero(),
        )
    }

    /// A matrix from raw buffers, validated.
    ///
    /// # Errors
    /// [`Error::Format`] naming the first failed check; [`Error::IndexOverflow`] if
    /// `ncols` exceeds what `I` addresses.
    pub fn try_from_parts(parts: SlicedEllParts<T, I>) -> Result<Self> {
        let SlicedEllParts { nrows, ncols, window, order, lengths, slice_ptr, indices, values } =
            parts;
        if ncols > I::MAX_COLS {
            return Err(Error::IndexOverflow { what: "column count", value: ncols, bits: I::BITS });
        }
        let sell = SlicedEll { nrows, ncols, window, order, lengths, slice_ptr, indices, values };
        sell.validate().map_err(|error| Error::Format { format: "sell", error })?;
        Ok(sell)
    }

    /// A matrix of buffers known to be valid (checked in debug builds).
    pub(crate) fn from_valid_parts(parts: SlicedEllParts<T, I>) -> Self {
        let SlicedEllParts { nrows, ncols, window, order, lengths, slice_ptr, indices, values } =
            parts;
        let sell = SlicedEll { nrows, ncols, window, order, lengths, slice_ptr, indices, values };
        debug_assert_eq!(sell.validate(), Ok(()));
        sell
    }

    /// Gives the buffers back.
    pub fn into_parts(self) -> SlicedEllParts<T, I> {
        let SlicedEll { nrows, ncols, window, order, lengths, slice_ptr, indices, values } = self;
        SlicedEllParts { nrows, ncols, window, order, lengths, slice_ptr, indices, values }
    }

    /// `(nrows, ncols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.nrows, self.ncols)
    }

    /// Rows per sorting window.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Kept entries (padding excluded).
    pub fn nnz(&self) -> usize {
        self.lengths.iter().sum()
    }

    /// Stored entries, padding included.
    pub fn stored(&self) -> usize {
        self.values.len()
    }

    /// Bytes a batch-1 product reads.
    pub fn bytes_read(&self) -> usize {
        self.stored() * (size_of::<T>() + size_of::<I>())
            + (self.order.len() + self.lengths.len() + self.slice_ptr.len()) * size_of::<usize>()
    }

    /// The kept entries of lane `lane`: `(column, value)` pairs in column order.
    fn lane_entries(&self, lane: usize) -> impl Iterator<Item = (I, T)> + '_ {
        lane_slots(&self.slice_ptr, lane, self.lengths[lane])
            .map(|k| (self.indices[k], self.values[k]))
    }

    /// The same matrix in CSR.
    pub fn to_csr(&self) -> Csr<T, I> {
        let mut lane_of_row = vec![0; self.nrows];
        for (lane, &r) in self.order.iter().enumerate() {
            lane_of_row[r] = lane;
        }
        let mut indptr = Vec::with_capacity(self.nrows + 1);
        indptr.push(0);
        let (mut indices, mut values) = (Vec::with_capacity(self.nnz()), Vec::new());
        values.reserve_exact(self.nnz());
        for &lane in &lane_of_row {
            for (c, v) in self.lane_entries(lane) {
                indices.push(c);
                values.push(v);
            }
            indptr.push(indices.len());
        }
        Csr::from_parts_trusted(self.nrows, self.ncols, indptr, indices, values)
    }

    /// The dense matrix.
    pub fn to_dense(&self) -> DMatrix<T> {
        let mut out = DMatrix::zeros(self.nrows, self.ncols);
        for (lane, &r) in self.order.iter().enumerate() {
            for (c, v) in self.lane_entries(lane) {
                out[(r, c.index())] = v;
            }
        }
        out
    }

    pub(crate) fn view(&self) -> SellView<'_, T, I> {
        SellView {
            nrows: self.nrows,
            ncols: self.ncols,
            window: self.window,
            order: &self.order,
            lengths: &self.lengths,
            slice_ptr: &self.slice_ptr,
            indices: &self.indices,
            values: &self.values,
            row_scales: None,
        }
    }
}

/// Where lane `lane`'s first `length` entries sit in the slot buffers: from its place in
/// its slice's first step, one step ([`SLICE_ROWS`] slots) apart.
pub(crate) fn lane_slots(
    slice_ptr: &[usize],
    lane: usize,
    length: usize,
) -> impl Iterator<Item = usize> + Clone {
    let first = slice_ptr[lane / SLICE_ROWS] + lane % SLICE_ROWS;
    (0..length).map(move |j| first + SLICE_ROWS * j)
}

impl<T: Scalar, I: SpIndex> Sealed<T> for SlicedEll<T, I> {
    /// Multi-threaded on rayon's current pool for large matrices (windows split by stored
    /// entries); each row is summed in the same order whatever the thread count. Batches
    /// of two or more run CSR's tiles on each row, giving the bits of CSR's product.
    fn product(&self, operands: Operands<'_, T>) {
        match operands {
            Operands::Vector { alpha, x, beta, y } => {
                kernels::sell_spmv(self.view(), alpha, x, beta, y)
            }
            Operands::Matrix { alpha, x, beta, y, then } => {
                kernels::sell_spmm(self.view(), alpha, x, beta, y, then, Layout::COLUMNS)
            }
            Operands::Oriented { alpha, x, beta, y, then, layout } => {
                kernels::sell_spmm(self.view(), alpha, x, beta, y, then, layout)
            }
        }
    }
}

impl<T: Scalar, I: SpIndex> SparseProduct<T> for SlicedEll<T, I> {
    fn shape(&self) -> (usize, usize) {
        (self.nrows, self.ncols)
    }
}

narrowest_index! {
    /// A [`SlicedEll`] with the narrowest column index that fits, as [`AnyCsr`] picks it.
    ///
    /// ```
    /// use nalgebra::DMatrix;
    /// use shears_core::Mask;
    /// use shears_sparse::AnySlicedEll;
    ///
    /// let w = DMatrix::<f32>::from_element(16, 100, 1.0);
    /// let sell = AnySlicedEll::from_dense_masked(&w, &Mask::all_kept_like(&w))?;
    /// assert_eq!((sell.index_bits(), sell.nnz()), (16, 1600));
    /// # Ok::<(), shears_sparse::Error>(())
    /// ```
    AnySlicedEll(SlicedEll)
}

impl<T: Scalar> AnySlicedEll<T> {
    /// The kept entries of `weights`, with the narrowest index type.
    ///
    /// # Errors
    /// As [`Csr::from_dense_masked`].
    pub fn from_dense_masked(weights: &DMatrix<T>, mask: &Mask) -> Result<Self> {
        Ok(Self::from(&AnyCsr::from_dense_masked(weights, mask)?))
    }

    /// The nonzeros of `weights`, with the narrowest index type.
    ///
    /// # Errors
    /// As [`Csr::from_dense`].
    pub fn from_dense(weights: &DMatrix<T>) -> Result<Self> {
        Ok(Self::from(&AnyCsr::from_dense(weights)?))
    }
}

impl<T: Scalar> From<&AnyCsr<T>> for AnySlicedEll<T> {
    fn from(csr: &AnyCsr<T>) -> Self {
        match csr {
            AnyCsr::Narrow(c) => AnySlicedEll::Narrow(SlicedEll::from_csr(c)),
            AnyCsr::Wide(c) => AnySlicedEll::Wide(SlicedEll::from_csr(c)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr() -> Csr<f32, u16> {
        // Row r keeps columns with (r + c) % (r % 4 + 1) == 0: lengths 30, 15, 10, 8, ...
        let w = DMatrix::from_fn(21, 30, |r, c| (r * 30 + c) as f32 + 1.0);
        let mask = Mask::from_fn(21, 30, |r, c| (r + c) % (r % 4 + 1) == 0).unwrap();
        Csr::from_dense_masked(&w, &mask).unwrap()
    }

    #[test]
    fn packing_sorts_each_window_by_length_and_pads_to_the_longest_lane() {
        let sell = SlicedEll::from_csr_with_window(&csr(), 16).unwrap();
        let parts = sell.clone().into_parts();
        assert_eq!(parts.order.len(), 21);
        for (lane, &r) in parts.order.iter().enumerate() {
            assert_eq!(r / 16, lane / 16, "row {r} left its window");
        }
        assert!(parts.lengths[..16].windows(2).all(|w| w[0] >= w[1]));
        assert!(parts.lengths[16..].windows(2).all(|w| w[0] >= w[1]));
        for (s, lanes) in parts.lengths.chunks(SLICE_ROWS).enumerate() {
            let width = (parts.slice_ptr[s + 1] - parts.slice_ptr[s]) / SLICE_ROWS;
            assert_eq!(width, *lanes.iter().max().unwrap());
        }
        assert_eq!(sell.nnz(), csr().nnz());
        assert!(sell.stored() >= sell.nnz());
        assert_eq!(sell.to_csr(), csr());
        assert_eq!(sell.to_dense(), csr().to_dense());
    }

    #[test]
    fn windows_must_be_positive_multiples_of_the_slice_height() {
        for window in [0, 4, 12] {
            assert!(matches!(
                SlicedEll::from_csr_with_window(&csr(), window),
                Err(Error::Format { format: "sell", .. })
            ));
        }
        assert!(SlicedEll::from_csr_with_window(&csr(), 8).is_ok());
        assert!(SlicedEll::from_csr_with_window(&csr(), 1 << 20).is_ok());
    }
}
