//! The two selection kernels behind [`Selector`](super::Selector).
//!
//! - [`prune_lowest_segments`]: for big tensors (and several tensors at once, for global
//!   scope). A 16-bit radix histogram over order keys finds the bucket that holds the
//!   k-th lowest key, and `select_nth_unstable` runs only on that bucket. Three streaming
//!   passes over the scores, no copy of the whole tensor, O(n).
//! - [`prune_lowest_indexed`]: for short candidate lists (one row, one score per group),
//!   a `select_nth_unstable` on `(key, index)` pairs, whose tuple order is the tie rule.
//!
//! Both prune exactly `count` candidates (clamped to the number of candidates); among equal
//! scores, the one earlier in row-major order (then in segment order) goes first.

use nalgebra::DMatrix;

use crate::error::{Error, Result};
use crate::mask::Mask;
use crate::scalar::Scalar;

/// Radix bucket width: 65,536 buckets split typical weight magnitudes finely enough that
/// the bucket holding the threshold is a small fraction of the tensor.
const BUCKET_BITS: u32 = 16;
const WORD: usize = 64;

/// One tensor taking part in a selection.
pub(crate) struct Segment<'a, T> {
    pub(crate) name: &'a str,
    pub(crate) scores: &'a DMatrix<T>,
    pub(crate) kept: Option<&'a Mask>,
}

impl<T: Scalar> Segment<'_, T> {
    /// The kept-mask words, or all-ones when no mask restricts the candidates.
    fn kept_words(&self) -> impl Iterator<Item = u64> + '_ {
        let explicit = self.kept.map(|m| m.as_words().iter().copied());
        let implicit = self.kept.is_none().then(|| std::iter::repeat(u64::MAX));
        explicit.into_iter().flatten().chain(implicit.into_iter().flatten())
    }

    fn candidates(&self) -> usize {
        self.kept.map_or(self.scores.len(), Mask::count_kept)
    }
}

/// Fails with [`Error::NonFinite`] naming `tensor` at the first NaN or infinite value.
pub(crate) fn check_finite<T: Scalar>(tensor: &str, values: &[T]) -> Result<()> {
    match values.iter().position(|x| !x.finite()) {
        Some(index) => Err(Error::NonFinite { tensor: tensor.to_owned(), index }),
        None => Ok(()),
    }
}

/// Prunes the `count` lowest-scored kept elements across `segments` and returns one mask
/// per segment (a subset of its kept mask).
pub(crate) fn prune_lowest_segments<T: Scalar>(
    segments: &[Segment<'_, T>],
    count: usize,
) -> Result<Vec<Mask>> {
    let candidates: usize = segments.iter().map(Segment::candidates).sum();
    let histogram = histogram(segments)?;
    let keep_all =
        |s: &Segment<'_, T>| s.kept.cloned().unwrap_or_else(|| Mask::all_kept_like(s.scores));
    if count == 0 {
        return Ok(segments.iter().map(keep_all).collect());
    }
    if count >= candidates {
        return Ok(segments.iter().map(|s| Mask::all_pruned_like(s.scores)).collect());
    }

    // The bucket that holds the count-th lowest key, and how many to take from it.
    let mut below = 0;
    let mut bucket = 0;
    for (b, &n) in histogram.iter().enumerate() {
        if below + n >= count {
            bucket = b;
            break;
        }
        below += n;
    }
    let need = count - below;

    let mut in_bucket: Vec<T::Key> = Vec::with_capacity(histogram[bucket]);
    for s in segments {
        for (chunk, word) in s.scores.as_slice().chunks(WORD).zip(s.kept_words()) {
            for (j, &x) in chunk.iter().enumerate() {
                let key = x.order_key();
                if word >> j & 1 == 1 && T::key_bucket(key, BUCKET_BITS) == bucket {
                    in_bucket.push(key);
                }
            }
        }
    }
    let (lower, &mut threshold, _) = in_bucket.select_nth_unstable(need - 1);
    let strictly_below = lower.iter().filter(|&&k| k < threshold).count();
    let ties_to_prune = need - strictly_below;

    // Keep everything above the threshold; collect ties in the global tie order.
    let mut masks = Vec::with_capacity(segments.len());
    let mut ties: Vec<(usize, usize)> = Vec::new();
    for (seg, s) in segments.iter().enumerate() {
        let mut mask = Mask::all_pruned_like(s.scores);
        let (nrows, ncols) = s.scores.shape();
        let words = mask.words_mut();
        for (w, (chunk, kept)) in s.scores.as_slice().chunks(WORD).zip(s.kept_words()).enumerate() {
            let mut bits = 0u64;
            for (j, &x) in chunk.iter().enumerate() {
                let key = x.order_key();
                bits |= u64::from(key > threshold) << j;
                if key == threshold && kept >> j & 1 == 1 {
                    let i = w * WORD + j;
                    ties.push((seg, (i % nrows) * ncols + i / nrows));
                }
            }
            words[w] = bits & kept;
        }
        masks.push(mask);
    }
    if ties_to_prune < ties.len() {
        if ties_to_prune > 0 {
            ties.select_nth_unstable(ties_to_prune - 1);
        }
        for &(seg, row_major) in &ties[ties_to_prune..] {
            let ncols = segments[seg].scores.ncols();
            let nrows = segments[seg].scores.nrows();
            masks[seg].set_bit((row_major % ncols) * nrows + row_major / ncols);
        }
    }
    Ok(masks)
}

/// Counts kept candidates per radix bucket, checking every score for NaN and infinity.
fn histogram<T: Scalar>(segments: &[Segment<'_, T>]) -> Result<Vec<usize>> {
    let mut histogram = vec![0usize; 1 << BUCKET_BITS];
    for s in segments {
        let scores = s.scores.as_slice();
        for (chunk, word) in scores.chunks(WORD).zip(s.kept_words()) {
            let mut finite = true;
            for (j, &x) in chunk.iter().enumerate() {
                finite &= x.finite();
                histogram[T::key_bucket(x.order_key(), BUCKET_BITS)] += (word >> j & 1) as usize;
            }
            if !finite {
                check_finite(s.name, scores)?;
            }
        }
    }
    Ok(histogram)
}

/// Returns the indices (into `keys`) of the `count` lowest candidates, ties broken by the
/// lower index; `keys[i]` takes part when `candidate(i)`.
pub(crate) fn prune_lowest_indexed<K: Ord + Copy>(
    keys: impl IntoIterator<Item = K>,
    candidate: impl Fn(usize) -> bool,
    count: usize,
) -> Vec<usize> {
    let mut pairs: Vec<(K, usize)> =
        keys.into_iter().enumerate().filter(|&(i, _)| candidate(i)).map(|(i, k)| (k, i)).collect();
    if count == 0 {
        return Vec::new();
    }
    if count < pairs.len() {
        pairs.select_nth_unstable(count - 1);
        pairs.truncate(count);
    }
    pairs.into_iter().map(|(_, i)| i).collect()
}
