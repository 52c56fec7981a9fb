//! Top-k selection: the mask that prunes the lowest-scored weights.
//!
//! Every strategy ends here. The rules (docs/design.md):
//! - the number pruned is `rounding(s * n)` in `f64` ([`Rounding::HalfEven`] by default,
//!   as `torch.nn.utils.prune`);
//! - among equal scores the element with the lower row-major flat index is pruned first;
//! - with an existing mask, sparsity stays absolute and selection is monotone: only kept
//!   weights are candidates, and the count to prune is the target minus what is already
//!   pruned (nothing, if the mask is already at or past the target). No weight is revived.

mod streaming;
mod threshold;

use std::ops::Range;

use nalgebra::DMatrix;

use crate::error::{Error, Result};
use crate::group::GroupLayout;
use crate::mask::Mask;
use crate::scalar::Scalar;
use crate::sparsity::{Rounding, Sparsity};
pub use streaming::{GlobalBucket, GlobalCount, GlobalMasks};
pub(crate) use threshold::check_finite;
use threshold::{Segment, map_runs, prune_lowest_indexed, prune_lowest_segments, row_runs};

/// One named score tensor for [`Selector::select_global`], optionally restricted to the
/// weights its current mask keeps.
#[derive(Debug, Clone, Copy)]
pub struct ScoredLayer<'a, T: Scalar> {
    /// The layer's name, used in errors.
    pub name: &'a str,
    /// One score per weight; higher = more important.
    pub scores: &'a DMatrix<T>,
    /// The current mask: only weights it keeps are candidates.
    pub kept: Option<&'a Mask>,
}

/// Selects which weights to prune from their scores.
///
/// O(n) on average: a radix histogram finds the threshold bucket and only that bucket is
/// partially sorted. Nothing is fully sorted.
///
/// # Examples
/// ```
/// use nalgebra::dmatrix;
/// use shears_core::{Selector, Sparsity};
///
/// let scores = dmatrix![0.1f32, 0.9; 0.2, 0.8];
/// let mask = Selector::new().select("fc", &scores, Sparsity::new(0.5)?, None)?;
/// assert_eq!(mask.to_matrix(), dmatrix![false, true; false, true]);
///
/// // Monotone: a second round only chooses among the weights still kept.
/// let next = Selector::new().select("fc", &scores, Sparsity::new(0.75)?, Some(&mask))?;
/// assert!(next.is_subset_of(&mask)?);
/// assert_eq!(next.count_pruned(), 3);
/// # Ok::<(), shears_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Selector {
    rounding: Rounding,
}

impl Selector {
    /// A selector with the default rounding ([`Rounding::HalfEven`]).
    pub fn new() -> Self {
        Selector::default()
    }

    /// Sets the rounding of `sparsity * n`.
    pub fn with_rounding(mut self, rounding: Rounding) -> Self {
        self.rounding = rounding;
        self
    }

    /// The rounding in use.
    pub fn rounding(&self) -> Rounding {
        self.rounding
    }

    /// How many more to prune so that `already` of `total` pruned reaches `sparsity`.
    fn extra(&self, sparsity: Sparsity, total: usize, already: usize) -> usize {
        sparsity.count_of(total, self.rounding).saturating_sub(already)
    }

    /// The mask of `scores` at `sparsity`, the whole tensor competing as one group.
    ///
    /// # Errors
    /// [`Error::NonFinite`] naming `tensor` if a score is NaN or infinite;
    /// [`Error::ShapeMismatch`] if `kept` does not have the scores' shape.
    pub fn select<T: Scalar>(
        &self,
        tensor: &str,
        scores: &DMatrix<T>,
        sparsity: Sparsity,
        kept: Option<&Mask>,
    ) -> Result<Mask> {
        self.select_segment(Segment::new(tensor, scores, kept), sparsity)
    }

    /// [`Selector::select`] on `|weights|`, without materialising the scores: the radix
    /// passes take the absolute value as they read. Magnitude pruning's fast path.
    ///
    /// ```
    /// use nalgebra::dmatrix;
    /// use shears_core::{Selector, Sparsity};
    /// let w = dmatrix![0.1f32, -0.9; -0.2, 0.8];
    /// let s = Sparsity::new(0.5)?;
    /// assert_eq!(Selector::new().select_magnitude("fc", &w, s, None)?, Selector::new().select("fc", &w.abs(), s, None)?);
    /// # Ok::<(), shears_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Selector::select`] (a NaN or infinite weight is named as `tensor`).
    pub fn select_magnitude<T: Scalar>(
        &self,
        tensor: &str,
        weights: &DMatrix<T>,
        sparsity: Sparsity,
        kept: Option<&Mask>,
    ) -> Result<Mask> {
        self.select_segment(Segment::magnitude(tensor, weights, kept), sparsity)
    }

    /// One tensor competing as a whole: the count from the absolute target, then the kernel.
    fn select_segment<T: Scalar>(
        &self,
        segment: Segment<'_, T>,
        sparsity: Sparsity,
    ) -> Result<Mask> {
        check_kept_shape(segment.scores, segment.kept)?;
        let already = segment.kept.map_or(0, Mask::count_pruned);
        let count = self.extra(sparsity, segment.scores.len(), already);
        let mut masks = prune_lowest_segments(std::slice::from_ref(&segment), count)?;
        Ok(masks.remove(0))
    }

    /// The mask of `scores` with each row pruned to `sparsity` on its own (row-balanced
    /// pruning, as Wanda compares within an output row; it also balances CSR rows).
    ///
    /// # Errors
    /// [`Error::NonFinite`] naming `tensor` if a score is NaN or infinite;
    /// [`Error::ShapeMismatch`] if `kept` does not have the scores' shape.
    pub fn select_per_row<T: Scalar>(
        &self,
        tensor: &str,
        scores: &DMatrix<T>,
        sparsity: Sparsity,
        kept: Option<&Mask>,
    ) -> Result<Mask> {
        check_kept_shape(scores, kept)?;
        check_finite(tensor, scores.as_slice())?;
        let (nrows, ncols) = scores.shape();
        let mut mask = kept.cloned().unwrap_or_else(|| Mask::all_kept_like(scores));
        // The scores' keys row-major, so each row is read contiguously (a row of the
        // column-major matrix is strided: one cache line per element on wide layers),
        // transposed in blocks of columns, each block's columns read side by side.
        const BLOCK: usize = 32;
        let mut keys = vec![T::zero().order_key(); nrows * ncols];
        let data = scores.as_slice();
        for c0 in (0..ncols).step_by(BLOCK) {
            let c1 = (c0 + BLOCK).min(ncols);
            for r in 0..nrows {
                for c in c0..c1 {
                    keys[r * ncols + c] = data[c * nrows + r].order_key();
                }
            }
        }
        // Rows are independent: runs of them are chosen in parallel (with the `rayon`
        // feature). Each run returns what it prunes as a bitmap of its rows (one bit per
        // score, row-major), cleared from the mask afterwards in run order.
        let choose = |rows: Range<usize>| {
            let mut pruned = vec![0u64; (rows.len() * ncols).div_ceil(64)];
            for (k, r) in rows.clone().enumerate() {
                let row = &keys[r * ncols..(r + 1) * ncols];
                let is_kept = |c: usize| mask.bit(c * nrows + r);
                let already = (0..ncols).filter(|&c| !is_kept(c)).count();
                let count = self.extra(sparsity, ncols, already);
                for c in prune_lowest_indexed(row.iter().copied(), is_kept, count) {
                    let b = k * ncols + c;
                    pruned[b / 64] |= 1 << (b % 64);
                }
            }
            (rows.start, pruned)
        };
        for (first, pruned) in map_runs(row_runs(nrows, ncols), choose) {
            for (w, &word) in pruned.iter().enumerate() {
                let mut word = word;
                while word != 0 {
                    let b = w * 64 + word.trailing_zeros() as usize;
                    word &= word - 1;
                    let (r, c) = (first + b / ncols, b % ncols);
                    mask.clear_bit(c * nrows + r);
                }
            }
        }
        Ok(mask)
    }

    /// The mask that prunes whole groups of `layout`, given one score per group
    /// (for instance from [`GroupLayout::reduce`]). `sparsity` is the fraction of groups.
    ///
    /// A group is a candidate while `kept` keeps any of its elements; groups already fully
    /// pruned count toward the target. The result is a subset of `kept`.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] if `group_scores` has not one score per group;
    /// [`Error::NonFinite`] naming `tensor` for a NaN or infinite score;
    /// [`Error::ShapeMismatch`] if `kept` does not have the layout's shape.
    pub fn select_groups<T: Scalar>(
        &self,
        tensor: &str,
        layout: &GroupLayout,
        group_scores: &[T],
        sparsity: Sparsity,
        kept: Option<&Mask>,
    ) -> Result<Mask> {
        let alive = alive_groups(layout, group_scores, kept)?;
        let already = alive.iter().filter(|&&a| !a).count();
        let count = self.extra(sparsity, layout.count(), already);
        prune_groups(tensor, layout, group_scores, &alive, count, kept)
    }

    /// Prunes exactly `count` more groups of `layout` (or every candidate, if fewer), the
    /// lowest scores first and ties to the lower group number; the count-based primitive
    /// behind [`Selector::select_groups`].
    ///
    /// # Errors
    /// As [`Selector::select_groups`].
    pub fn prune_lowest_groups<T: Scalar>(
        &self,
        tensor: &str,
        layout: &GroupLayout,
        group_scores: &[T],
        count: usize,
        kept: Option<&Mask>,
    ) -> Result<Mask> {
        let alive = alive_groups(layout, group_scores, kept)?;
        prune_groups(tensor, layout, group_scores, &alive, count, kept)
    }

    /// One mask per layer, with a single threshold across all of them: `sparsity` is the
    /// fraction of all their weights together, as `torch.nn.utils.prune.global_unstructured`.
    ///
    /// Equal to selecting on the concatenation of the layers' row-major flattenings, in
    /// the order given: ties go to the earlier layer, then the lower row-major index.
    ///
    /// # Errors
    /// [`Error::NonFinite`] naming the layer for a NaN or infinite score;
    /// [`Error::ShapeMismatch`] if a layer's `kept` mask does not have its scores' shape.
    pub fn select_global<T: Scalar>(
        &self,
        layers: &[ScoredLayer<'_, T>],
        sparsity: Sparsity,
    ) -> Result<Vec<Mask>> {
        let total = layers.iter().map(|l| l.scores.len()).sum();
        let count = self.prune_count_global(layers, sparsity, total)?;
        self.prune_lowest_global(layers, count)
    }

    fn prune_count_global<T: Scalar>(
        &self,
        layers: &[ScoredLayer<'_, T>],
        sparsity: Sparsity,
        total: usize,
    ) -> Result<usize> {
        let mut already = 0;
        for l in layers {
            check_kept_shape(l.scores, l.kept)?;
            already += l.kept.map_or(0, Mask::count_pruned);
        }
        Ok(self.extra(sparsity, total, already))
    }

    /// Prunes exactly `count` more weights (or all candidates, if fewer) across `layers`,
    /// the lowest scores first, with the tie order of [`Selector::select_global`].
    ///
    /// This is the primitive that scopes with extra constraints (a minimum density per
    /// layer, say) build on.
    ///
    /// # Errors
    /// As [`Selector::select_global`].
    pub fn prune_lowest_global<T: Scalar>(
        &self,
        layers: &[ScoredLayer<'_, T>],
        count: usize,
    ) -> Result<Vec<Mask>> {
        let segments: Vec<Segment<'_, T>> = layers
            .iter()
            .map(|l| {
                check_kept_shape(l.scores, l.kept)?;
                Ok(Segment::new(l.name, l.scores, l.kept))
            })
            .collect::<Result<_>>()?;
        prune_lowest_segments(&segments, count)
    }
}

/// Which groups are still candidates, after checking the scores' length.
fn alive_groups<T: Scalar>(
    layout: &GroupLayout,
    group_scores: &[T],
    kept: Option<&Mask>,
) -> Result<Vec<bool>> {
    let groups = layout.count();
    if group_scores.len() != groups {
        return Err(Error::LengthMismatch {
            what: "group scores",
            expected: groups,
            got: group_scores.len(),
        });
    }
    match kept {
        Some(mask) => layout.kept_groups(mask),
        None => Ok(vec![true; groups]),
    }
}

fn prune_groups<T: Scalar>(
    tensor: &str,
    layout: &GroupLayout,
    group_scores: &[T],
    alive: &[bool],
    count: usize,
    kept: Option<&Mask>,
) -> Result<Mask> {
    check_finite(tensor, group_scores)?;
    let mut keep = alive.to_vec();
    for g in prune_lowest_indexed(group_scores.iter().map(|x| x.order_key()), |g| alive[g], count) {
        keep[g] = false;
    }
    let mut mask = layout.mask_from_kept_groups(&keep)?;
    if let Some(kept) = kept {
        mask.and_assign(kept)?;
    }
    Ok(mask)
}

fn check_kept_shape<T: Scalar>(scores: &DMatrix<T>, kept: Option<&Mask>) -> Result<()> {
    match kept {
        Some(mask) if mask.shape() != scores.shape() => Err(Error::ShapeMismatch {
            op: "select with kept mask",
            expected: scores.shape(),
            got: mask.shape(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
