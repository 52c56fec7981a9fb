//! [`Mask`]: a bit-packed keep-mask with the shape of a weight matrix.

use nalgebra::DMatrix;

use crate::error::{Error, FormatError, Result};
use crate::scalar::Scalar;
use crate::shape::{MAX_SIDE, WeightShape};
use crate::sparsity::Sparsity;

const WORD: usize = u64::BITS as usize;

/// The masks of a model, by weight name: what model-level pruning reads and tightens.
pub type Masks = std::collections::BTreeMap<String, Mask>;

/// A keep-mask over a `(nrows, ncols)` weight matrix: `true` keeps a weight, `false` prunes it.
///
/// Bits are packed 64 to a `u64` in nalgebra's column-major element order, so bit `i` is
/// the element `as_slice()[i]` of a matrix of the same shape (docs/design.md). Counting kept
/// weights is a popcount over words, not a scan of bits.
///
/// # Invariants
/// - `words.len() == ceil(nrows * ncols / 64)` and `nrows * ncols` fits in `usize`;
/// - the padding bits past element `nrows * ncols - 1` in the last word are zero.
///
/// Both are checked by every constructor that takes outside data ([`Mask::from_words`],
/// deserialisation, [`Mask::from_bytes`]).
///
/// # Examples
/// ```
/// use nalgebra::dmatrix;
/// use shears_core::Mask;
///
/// let w = dmatrix![0.1, 0.9; 0.2, 0.8];
/// let mask = Mask::from_fn(2, 2, |_, c| c == 1)?; // keep the second column
/// assert_eq!(mask.count_kept(), 2);
/// assert_eq!(mask.sparsity().get(), 0.5);
/// assert_eq!(mask.apply(&w)?, dmatrix![0.0, 0.9; 0.0, 0.8]);
/// assert_eq!(mask.fully_pruned_cols(), vec![0]);
///
/// let other = Mask::from_fn(2, 2, |r, _| r == 0)?;
/// assert_eq!(mask.and(&other)?.count_kept(), 1);
/// assert_eq!(mask.or(&other)?.count_kept(), 3);
/// assert_eq!((!&mask).count_kept(), 2);
/// # Ok::<(), shears_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Mask {
    nrows: usize,
    ncols: usize,
    words: Vec<u64>,
}

impl std::fmt::Debug for Mask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mask")
            .field("nrows", &self.nrows)
            .field("ncols", &self.ncols)
            .field("kept", &self.count_kept())
            .finish()
    }
}

/// `nrows * ncols`, refused if it overflows or if either side is longer than
/// [`MAX_SIDE`] (a vector of per-row or per-column counts, `kept_per_col` and the like,
/// must fit): a mask of no elements costs nothing whatever its shape, so its sides are
/// bounded here.
fn element_count(nrows: usize, ncols: usize) -> Result<usize> {
    nrows
        .checked_mul(ncols)
        .filter(|_| nrows <= MAX_SIDE && ncols <= MAX_SIDE)
        .ok_or(Error::DimensionOverflow { dims: vec![nrows, ncols] })
}

fn words_for(len: usize) -> usize {
    len.div_ceil(WORD)
}
/// Zeroes `data[i]` wherever bit `i` of `words` is clear (`words` covers `data`).
fn zero_pruned_words<T: Scalar>(data: &mut [T], words: &[u64]) {
    for (chunk, &word) in data.chunks_mut(WORD).zip(words) {
        if word == u64::MAX {
            continue;
        }
        let pruned = !word & tail_bits(chunk.len());
        if pruned.count_ones() <= 8 {
            // A few pruned bits: visit just those.
            let mut pruned = pruned;
            while pruned != 0 {
                chunk[pruned.trailing_zeros() as usize] = T::zero();
                pruned &= pruned - 1;
            }
        } else {
            // Many: unpack the word to bytes, then a branch-free select over the
            // block, which vectorises (a loop over the bits does not).
            let mut keep = [false; WORD];
            for (j, k) in keep.iter_mut().enumerate() {
                *k = word >> j & 1 == 1;
            }
            for (v, &k) in chunk.iter_mut().zip(&keep) {
                *v = if k { *v } else { T::zero() };
            }
        }
    }
}

/// The bits of the last word that belong to elements (all ones for a full word).
fn tail_bits(len: usize) -> u64 {
    match len % WORD {
        0 => u64::MAX,
        r => (1u64 << r) - 1,
    }
}

impl Mask {
    /// A mask that keeps every weight.
    ///
    /// # Errors
    /// [`Error::DimensionOverflow`] if `nrows * ncols` does not fit in `usize` or a side
    /// is too long to count along.
    pub fn all_kept(nrows: usize, ncols: usize) -> Result<Self> {
        let len = element_count(nrows, ncols)?;
        let mut words = vec![u64::MAX; words_for(len)];
        if let Some(last) = words.last_mut() {
            *last &= tail_bits(len);
        }
        Ok(Mask { nrows, ncols, words })
    }

    /// A mask that prunes every weight.
    ///
    /// # Errors
    /// [`Error::DimensionOverflow`] if `nrows * ncols` does not fit in `usize` or a side
    /// is too long to count along.
    pub fn all_pruned(nrows: usize, ncols: usize) -> Result<Self> {
        let len = element_count(nrows, ncols)?;
        Ok(Mask { nrows, ncols, words: vec![0; words_for(len)] })
    }

    /// A mask that keeps every weight of `matrix`'s shape.
    pub fn all_kept_like<T: nalgebra::Scalar>(matrix: &DMatrix<T>) -> Self {
        // A matrix that exists has a shape whose product fits in memory.
        let (nrows, ncols) = matrix.shape();
        let len = nrows * ncols;
        let mut words = vec![u64::MAX; words_for(len)];
        if let Some(last) = words.last_mut() {
            *last &= tail_bits(len);
        }
        Mask { nrows, ncols, words }
    }

    /// A mask that prunes every weight of `matrix`'s shape.
    pub fn all_pruned_like<T: nalgebra::Scalar>(matrix: &DMatrix<T>) -> Self {
        let (nrows, ncols) = matrix.shape();
        Mask { nrows, ncols, words: vec![0; words_for(nrows * ncols)] }
    }

    /// A mask from a predicate on `(row, col)`, called in column-major order.
    ///
    /// # Errors
    /// [`Error::DimensionOverflow`] if `nrows * ncols` does not fit in `usize` or a side
    /// is too long to count along.
    pub fn from_fn(
        nrows: usize,
        ncols: usize,
        mut keep: impl FnMut(usize, usize) -> bool,
    ) -> Result<Self> {
        let mut mask = Mask::all_pruned(nrows, ncols)?;
        let mut i = 0;
        for c in 0..ncols {
            for r in 0..nrows {
                if keep(r, c) {
                    mask.words[i / WORD] |= 1 << (i % WORD);
                }
                i += 1;
            }
        }
        Ok(mask)
    }

    /// A mask from a boolean matrix (`true` = keep).
    pub fn from_matrix(keep: &DMatrix<bool>) -> Self {
        Mask::from_column_major_bools(keep.nrows(), keep.ncols(), keep.as_slice())
    }

    /// A mask from a row-major boolean slice, as a tensor library lays out a 2-D mask.
    ///
    /// # Errors
    /// [`Error::DimensionOverflow`] for an overflowing shape, [`Error::LengthMismatch`] if
    /// `keep.len() != nrows * ncols`.
    pub fn from_row_major(nrows: usize, ncols: usize, keep: &[bool]) -> Result<Self> {
        let len = element_count(nrows, ncols)?;
        if keep.len() != len {
            return Err(Error::LengthMismatch {
                what: "row-major mask",
                expected: len,
                got: keep.len(),
            });
        }
        let mut words = vec![0u64; words_for(len)];
        for c in 0..ncols {
            for r in (0..nrows).filter(|&r| keep[r * ncols + c]) {
                let i = c * nrows + r;
                words[i / WORD] |= 1 << (i % WORD);
            }
        }
        Ok(Mask { nrows, ncols, words })
    }

    pub(crate) fn from_column_major_bools(nrows: usize, ncols: usize, keep: &[bool]) -> Self {
        let mut words = vec![0u64; words_for(keep.len())];
        for (word, chunk) in words.iter_mut().zip(keep.chunks(WORD)) {
            *word = chunk.iter().enumerate().fold(0, |acc, (b, &k)| acc | (u64::from(k) << b));
        }
        Mask { nrows, ncols, words }
    }

    /// A mask from its packed words (column-major, 64 elements per word, LSB first).
    ///
    /// # Errors
    /// [`Error::DimensionOverflow`] for an overflowing shape; [`FormatError::WordCount`] if
    /// the word count does not match the shape; [`FormatError::DirtyPadding`] if bits past
    /// the last element are set.
    pub fn from_words(nrows: usize, ncols: usize, words: Vec<u64>) -> Result<Self> {
        let len = element_count(nrows, ncols)?;
        let expected = words_for(len);
        if words.len() != expected {
            return Err(FormatError::WordCount {
                rows: nrows,
                cols: ncols,
                expected,
                found: words.len(),
            }
            .into());
        }
        if words.last().is_some_and(|&last| last & !tail_bits(len) != 0) {
            return Err(FormatError::DirtyPadding { len }.into());
        }
        Ok(Mask { nrows, ncols, words })
    }

    /// The packed words, column-major, least significant bit first.
    pub fn as_words(&self) -> &[u64] {
        &self.words
    }

    /// Gives the packed words back.
    pub fn into_words(self) -> Vec<u64> {
        self.words
    }

    /// Rows of the masked matrix.
    pub fn nrows(&self) -> usize {
        self.nrows
    }

    /// Columns of the masked matrix.
    pub fn ncols(&self) -> usize {
        self.ncols
    }

    /// `(nrows, ncols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.nrows, self.ncols)
    }

    /// The number of elements, `nrows * ncols`.
    pub fn len(&self) -> usize {
        self.nrows * self.ncols
    }

    /// Whether the mask has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `(row, col)` is kept; `None` when out of bounds.
    pub fn get(&self, row: usize, col: usize) -> Option<bool> {
        (row < self.nrows && col < self.ncols).then(|| self.bit(col * self.nrows + row))
    }

    /// Whether the element at column-major index `i` is kept; `None` when out of bounds.
    pub fn get_linear(&self, i: usize) -> Option<bool> {
        (i < self.len()).then(|| self.bit(i))
    }

    #[inline(always)]
    pub(crate) fn bit(&self, i: usize) -> bool {
        self.words[i / WORD] >> (i % WORD) & 1 == 1
    }

    #[inline(always)]
    pub(crate) fn clear_bit(&mut self, i: usize) {
        self.words[i / WORD] &= !(1 << (i % WORD));
    }

    #[inline(always)]
    pub(crate) fn set_bit(&mut self, i: usize) {
        self.words[i / WORD] |= 1 << (i % WORD);
    }

    /// Keeps (`true`) or prunes (`false`) the weight at `(row, col)`.
    ///
    /// # Errors
    /// [`Error::IndexOutOfBounds`] if the position is outside the mask.
    pub fn set(&mut self, row: usize, col: usize, keep: bool) -> Result<()> {
        if row >= self.nrows || col >= self.ncols {
            return Err(Error::IndexOutOfBounds { row, col, shape: self.shape() });
        }
        let i = col * self.nrows + row;
        if keep {
            self.set_bit(i)
        } else {
            self.clear_bit(i)
        }
        Ok(())
    }

    /// The number of kept weights (a popcount over the words).
    pub fn count_kept(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The number of pruned weights.
    pub fn count_pruned(&self) -> usize {
        self.len() - self.count_kept()
    }

    /// The fraction of pruned weights (`0` for an empty mask).
    pub fn sparsity(&self) -> Sparsity {
        Sparsity::from_counts(self.count_pruned(), self.len())
    }

    fn check_same_shape(&self, other: &Mask, op: &'static str) -> Result<()> {
        if self.shape() == other.shape() {
            Ok(())
        } else {
            Err(Error::ShapeMismatch { op, expected: self.shape(), got: other.shape() })
        }
    }

    fn zip_with(
        &self,
        other: &Mask,
        op: &'static str,
        f: impl Fn(u64, u64) -> u64,
    ) -> Result<Mask> {
        self.check_same_shape(other, op)?;
        let words = self.words.iter().zip(&other.words).map(|(&a, &b)| f(a, b)).collect();
        Ok(Mask { nrows: self.nrows, ncols: self.ncols, words })
    }

    /// Keeps what both masks keep (the intersection of kept weights).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if the shapes differ.
    pub fn and(&self, other: &Mask) -> Result<Mask> {
        self.zip_with(other, "mask and", |a, b| a & b)
    }

    /// Keeps what either mask keeps (the union of kept weights).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if the shapes differ.
    pub fn or(&self, other: &Mask) -> Result<Mask> {
        self.zip_with(other, "mask or", |a, b| a | b)
    }

    /// In-place [`Mask::and`].
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if the shapes differ.
    pub fn and_assign(&mut self, other: &Mask) -> Result<()> {
        self.check_same_shape(other, "mask and")?;
        self.words.iter_mut().zip(&other.words).for_each(|(a, &b)| *a &= b);
        Ok(())
    }

    /// In-place [`Mask::or`].
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if the shapes differ.
    pub fn or_assign(&mut self, other: &Mask) -> Result<()> {
        self.check_same_shape(other, "mask or")?;
        self.words.iter_mut().zip(&other.words).for_each(|(a, &b)| *a |= b);
        Ok(())
    }

    /// Regrowth: keeps again the pruned positions that `grown` keeps, and returns how many.
    ///
    /// Dynamic sparse training (SET, RigL) moves connections: it drops kept weights and
    /// regrows pruned ones. This is the operation that turns pruned positions back on, and
    /// it says so in its name: every selection in shears only ever prunes among the kept
    /// weights, so masks from selections and schedules stay monotone. `grown` must only
    /// keep positions this mask prunes, so that a regrowth's count is exactly the number of
    /// positions it revives.
    ///
    /// ```
    /// use shears_core::Mask;
    /// let mut mask = Mask::from_fn(2, 2, |r, _| r == 0)?; // keeps row 0
    /// let grown = Mask::from_fn(2, 2, |r, c| r == 1 && c == 1)?;
    /// assert_eq!(mask.regrow(&grown)?, 1);
    /// assert_eq!(mask.count_kept(), 3);
    /// assert!(mask.regrow(&grown).is_err()); // (1, 1) is kept now
    /// # Ok::<(), shears_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if the shapes differ; [`Error::RegrowKept`] naming the
    /// first position `grown` keeps that this mask already keeps (nothing is changed).
    pub fn regrow(&mut self, grown: &Mask) -> Result<usize> {
        self.check_same_shape(grown, "mask regrow")?;
        if let Some(w) = self.words.iter().zip(&grown.words).position(|(&a, &b)| a & b != 0) {
            let i = w * WORD + (self.words[w] & grown.words[w]).trailing_zeros() as usize;
            let nrows = self.nrows.max(1);
            return Err(Error::RegrowKept { row: i % nrows, col: i / nrows });
        }
        self.words.iter_mut().zip(&grown.words).for_each(|(a, &b)| *a |= b);
        Ok(grown.count_kept())
    }

    /// Keeps what this mask prunes and prunes what it keeps.
    pub fn not(&self) -> Mask {
        let len = self.len();
        let mut words: Vec<u64> = self.words.iter().map(|w| !w).collect();
        if let Some(last) = words.last_mut() {
            *last &= tail_bits(len);
        }
        Mask { nrows: self.nrows, ncols: self.ncols, words }
    }

    /// Whether every weight this mask keeps is also kept by `other`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if the shapes differ.
    pub fn is_subset_of(&self, other: &Mask) -> Result<bool> {
        self.check_same_shape(other, "mask subset")?;
        Ok(self.words.iter().zip(&other.words).all(|(&a, &b)| a & !b == 0))
    }

    /// The kept positions as `(row, col)`, in column-major order.
    pub fn iter_kept(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let nrows = self.nrows.max(1);
        self.iter_kept_linear().map(move |i| (i % nrows, i / nrows))
    }

    /// The column-major indices of the kept positions, ascending.
    pub fn iter_kept_linear(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                Some(w * WORD + b)
            })
        })
    }

    /// Kept weights in the column-major index range `start..end`.
    pub(crate) fn count_kept_in(&self, start: usize, end: usize) -> usize {
        if start >= end {
            return 0;
        }
        let (first, last) = (start / WORD, (end - 1) / WORD);
        let lo = u64::MAX << (start % WORD);
        let hi = tail_bits(end);
        if first == last {
            return (self.words[first] & lo & hi).count_ones() as usize;
        }
        let middle: usize =
            self.words[first + 1..last].iter().map(|w| w.count_ones() as usize).sum();
        (self.words[first] & lo).count_ones() as usize
            + middle
            + (self.words[last] & hi).count_ones() as usize
    }

    /// The number of kept weights in each row.
    pub fn kept_per_row(&self) -> Vec<usize> {
        let mut counts = vec![0; self.nrows];
        for (r, _) in self.iter_kept() {
            counts[r] += 1;
        }
        counts
    }

    /// The number of kept weights in each column.
    pub fn kept_per_col(&self) -> Vec<usize> {
        (0..self.ncols).map(|c| self.count_kept_in(c * self.nrows, (c + 1) * self.nrows)).collect()
    }

    /// One bit per row, set where the row keeps a weight.
    fn rows_keeping(&self) -> Vec<u64> {
        let mut seen = vec![0u64; self.nrows.div_ceil(WORD)];
        for (r, _) in self.iter_kept() {
            seen[r / WORD] |= 1 << (r % WORD);
        }
        seen
    }

    /// Whether column `c` keeps no weight.
    fn col_is_pruned(&self, c: usize) -> bool {
        self.count_kept_in(c * self.nrows, (c + 1) * self.nrows) == 0
    }

    /// Rows with no kept weight, ascending (pruned output neurons in shears' layout).
    pub fn fully_pruned_rows(&self) -> Vec<usize> {
        let seen = self.rows_keeping();
        (0..self.nrows).filter(|&r| seen[r / WORD] & (1 << (r % WORD)) == 0).collect()
    }

    /// How many rows keep no weight: `fully_pruned_rows().len()`, in one bit of memory
    /// per row at most, and none for a mask without columns (whose every row counts),
    /// however many rows it claims.
    pub fn count_fully_pruned_rows(&self) -> usize {
        if self.ncols == 0 {
            return self.nrows;
        }
        self.nrows - self.rows_keeping().iter().map(|w| w.count_ones() as usize).sum::<usize>()
    }

    /// How many columns keep no weight: `fully_pruned_cols().len()`, without memory,
    /// and in no time for a mask without rows (whose every column counts).
    pub fn count_fully_pruned_cols(&self) -> usize {
        if self.nrows == 0 {
            return self.ncols;
        }
        (0..self.ncols).filter(|&c| self.col_is_pruned(c)).count()
    }

    /// Columns with no kept weight, ascending (pruned inputs).
    pub fn fully_pruned_cols(&self) -> Vec<usize> {
        (0..self.ncols).filter(|&c| self.col_is_pruned(c)).collect()
    }

    /// The mask as a boolean matrix (`true` = keep).
    pub fn to_matrix(&self) -> DMatrix<bool> {
        DMatrix::from_fn(self.nrows, self.ncols, |r, c| self.bit(c * self.nrows + r))
    }

    /// A copy of `weights` with the pruned entries set to zero.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `weights` does not have the mask's shape.
    pub fn apply<T: Scalar>(&self, weights: &DMatrix<T>) -> Result<DMatrix<T>> {
        let mut out = weights.clone();
        self.apply_in_place(&mut out)?;
        Ok(out)
    }

    /// Sets the pruned entries of `weights` to zero.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `weights` does not have the mask's shape.
    pub fn apply_in_place<T: Scalar>(&self, weights: &mut DMatrix<T>) -> Result<()> {
        if weights.shape() != self.shape() {
            return Err(Error::ShapeMismatch {
                op: "apply mask",
                expected: self.shape(),
                got: weights.shape(),
            });
        }
        self.zero_pruned(weights.as_mut_slice());
        Ok(())
    }

    /// Zeroes `data[i]` wherever bit `i` is pruned; `data.len() == self.len()`. With the
    /// `rayon` feature a large matrix is split across threads (each value belongs to one
    /// task, so the result does not depend on the thread count).
    fn zero_pruned<T: Scalar>(&self, data: &mut [T]) {
        #[cfg(feature = "rayon")]
        if data.len() >= crate::parallel::PARALLEL_MIN_LEN {
            use rayon::prelude::*;
            const WORDS: usize = 1024;
            data.par_chunks_mut(WORD * WORDS)
                .zip(self.words.par_chunks(WORDS))
                .for_each(|(d, w)| zero_pruned_words(d, w));
            return;
        }
        zero_pruned_words(data, &self.words);
    }

    /// Zeroes the pruned entries of a tensor stored in its own row-major order
    /// (PyTorch / safetensors order), viewed through `shape` as this mask's matrix.
    ///
    /// For a convolution weight `(out, in, kh, kw)` the view is the matrix
    /// `(out, in*kh*kw)`: a filter is a row, an input channel `kh*kw` adjacent columns.
    ///
    /// ```
    /// use shears_core::{Mask, WeightShape};
    /// let shape = WeightShape::conv(2, 1, 1, 2)?; // 2 filters of 1x1x2
    /// let mut data = [1.0f32, 2.0, 3.0, 4.0];     // filter 0 = [1, 2], filter 1 = [3, 4]
    /// let keep_filter_1 = Mask::from_fn(2, 2, |r, _| r == 1)?;
    /// keep_filter_1.apply_to_tensor(&shape, &mut data)?;
    /// assert_eq!(data, [0.0, 0.0, 3.0, 4.0]);
    /// # Ok::<(), shears_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if the shape's matrix view is not the mask's shape;
    /// [`Error::LengthMismatch`] if `data` does not hold the shape's element count.
    pub fn apply_to_tensor<T: Scalar>(&self, shape: &WeightShape, data: &mut [T]) -> Result<()> {
        if shape.matrix_shape() != self.shape() {
            return Err(Error::ShapeMismatch {
                op: "apply mask to tensor",
                expected: self.shape(),
                got: shape.matrix_shape(),
            });
        }
        if data.len() != self.len() {
            return Err(Error::LengthMismatch {
                what: "tensor data",
                expected: self.len(),
                got: data.len(),
            });
        }
        for (r, row) in data.chunks_mut(self.ncols.max(1)).enumerate() {
            for (c, x) in row.iter_mut().enumerate() {
                if !self.bit(c * self.nrows + r) {
                    *x = T::zero();
                }
            }
        }
        Ok(())
    }
}

impl std::ops::Not for &Mask {
    type Output = Mask;
    fn not(self) -> Mask {
        Mask::not(self)
    }
}

impl std::ops::Not for Mask {
    type Output = Mask;
    fn not(self) -> Mask {
        Mask::not(&self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::dmatrix;

    #[test]
    fn all_kept_has_clean_padding() {
        for (r, c) in [(0, 0), (1, 1), (3, 5), (8, 8), (7, 19), (64, 1), (65, 1)] {
            let m = Mask::all_kept(r, c).unwrap();
            assert_eq!(m.count_kept(), r * c);
            assert_eq!(m.not().count_kept(), 0);
            assert!(Mask::from_words(r, c, m.as_words().to_vec()).is_ok());
        }
    }

    #[test]
    fn regrowth_revives_only_pruned_positions() {
        // 9 x 9 spans two words, so the overlap search crosses a word boundary.
        let mut mask = Mask::from_fn(9, 9, |r, c| (r + c) % 3 == 0).unwrap();
        let before = mask.clone();
        let grown = Mask::from_fn(9, 9, |r, c| (r + c) % 3 == 1 && c > 6).unwrap();
        assert_eq!(mask.regrow(&grown).unwrap(), grown.count_kept());
        assert_eq!(mask, before.or(&grown).unwrap());
        let overlap = Mask::from_fn(9, 9, |r, c| (r, c) == (2, 7) || (r, c) == (8, 8)).unwrap();
        let kept_now = mask.clone();
        assert_eq!(mask.regrow(&overlap), Err(Error::RegrowKept { row: 2, col: 7 }));
        assert_eq!(mask, kept_now, "a refused regrowth changes nothing");
        assert!(matches!(
            mask.regrow(&Mask::all_pruned(3, 3).unwrap()),
            Err(Error::ShapeMismatch { .. })
        ));
    }

    #[test]
    fn overflowing_shape_is_an_error() {
        assert!(matches!(Mask::all_kept(usize::MAX, 2), Err(Error::DimensionOverflow { .. })));
        assert!(matches!(Mask::all_pruned(usize::MAX, 3), Err(Error::DimensionOverflow { .. })));
        // No elements, but a side no per-column count could be made for.
        let long = 1usize << (usize::BITS - 2);
        for (r, c) in [(0, long), (long, 0)] {
            assert!(matches!(Mask::all_kept(r, c), Err(Error::DimensionOverflow { .. })));
            assert!(matches!(Mask::from_words(r, c, vec![]), Err(Error::DimensionOverflow { .. })));
        }
        assert_eq!(Mask::all_kept(0, 1 << 20).unwrap().kept_per_col().len(), 1 << 20);
    }

    #[test]
    fn get_and_set() {
        let mut m = Mask::all_pruned(3, 2).unwrap();
        assert_eq!(m.set(2, 1, true), Ok(()));
        assert_eq!(m.get(2, 1), Some(true));
        assert_eq!(m.get_linear(5), Some(true));
        assert_eq!(m.get(3, 0), None);
        assert_eq!(m.get_linear(6), None);
        assert!(matches!(
            m.set(0, 2, true),
            Err(Error::IndexOutOfBounds { row: 0, col: 2, shape: (3, 2) })
        ));
    }

    #[test]
    fn shape_mismatch_names_both_shapes() {
        let a = Mask::all_kept(2, 3).unwrap();
        let b = Mask::all_kept(3, 2).unwrap();
        let err = a.and(&b).unwrap_err();
        assert_eq!(err, Error::ShapeMismatch { op: "mask and", expected: (2, 3), got: (3, 2) });
        assert!(err.to_string().contains("(2, 3)") && err.to_string().contains("(3, 2)"));
        assert!(a.or(&b).is_err());
        assert!(a.is_subset_of(&b).is_err());
        let mut c = a.clone();
        assert!(c.and_assign(&b).is_err());
        assert!(c.or_assign(&b).is_err());
        assert!(matches!(a.apply(&DMatrix::<f32>::zeros(3, 2)), Err(Error::ShapeMismatch { .. })));
    }

    #[test]
    fn from_words_validates() {
        assert!(matches!(
            Mask::from_words(2, 2, vec![]),
            Err(Error::Format(FormatError::WordCount { .. }))
        ));
        assert!(matches!(
            Mask::from_words(2, 2, vec![1 << 4]),
            Err(Error::Format(FormatError::DirtyPadding { len: 4 }))
        ));
        assert!(Mask::from_words(2, 2, vec![0b1111]).is_ok());
    }

    #[test]
    fn rows_and_columns_fully_pruned() {
        let m = Mask::from_matrix(
            &dmatrix![true, false, false; false, false, false; true, false, true],
        );
        assert_eq!(m.fully_pruned_rows(), vec![1]);
        assert_eq!(m.fully_pruned_cols(), vec![1]);
        assert_eq!(m.kept_per_row(), vec![1, 0, 2]);
        assert_eq!(m.kept_per_col(), vec![2, 0, 1]);
        assert_eq!(m.iter_kept().collect::<Vec<_>>(), vec![(0, 0), (2, 0), (2, 2)]);
    }

    #[test]
    fn row_major_constructor_and_tensor_apply() {
        let m = Mask::from_row_major(2, 3, &[true, false, true, false, true, false]).unwrap();
        assert_eq!(m.to_matrix(), dmatrix![true, false, true; false, true, false]);
        assert!(matches!(Mask::from_row_major(2, 3, &[true]), Err(Error::LengthMismatch { .. })));
        for (rows, cols) in [(0, 0), (0, 3), (3, 0), (5, 13), (64, 3), (7, 70)] {
            let keep: Vec<bool> = (0..rows * cols).map(|i| i % 3 == 0 || i % 7 == 1).collect();
            let expected = Mask::from_fn(rows, cols, |r, c| keep[r * cols + c]).unwrap();
            assert_eq!(Mask::from_row_major(rows, cols, &keep).unwrap(), expected);
        }
        let mut data = [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0];
        let shape = WeightShape::dense(2, 3).unwrap();
        assert_eq!(m.apply_to_tensor(&shape, &mut data), Ok(()));
        assert_eq!(data, [1.0, 0.0, 3.0, 0.0, 5.0, 0.0]);
        assert!(matches!(
            m.apply_to_tensor(&shape, &mut data[..5]),
            Err(Error::LengthMismatch { .. })
        ));
        assert!(matches!(
            m.apply_to_tensor(&WeightShape::dense(3, 2).unwrap(), &mut data),
            Err(Error::ShapeMismatch { .. })
        ));
    }

    #[test]
    fn count_in_ranges() {
        let m = Mask::from_fn(130, 1, |r, _| r % 3 == 0).unwrap();
        for (s, e) in [(0, 130), (1, 64), (63, 65), (64, 128), (5, 5), (100, 130)] {
            assert_eq!(m.count_kept_in(s, e), (s..e).filter(|r| r % 3 == 0).count(), "{s}..{e}");
        }
    }
}
