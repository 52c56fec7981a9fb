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
pub(crate) const BUCKET_BITS: u32 = 16;
const WORD: usize = 64;

/// One tensor taking part in a selection.
pub(crate) struct Segment<'a, T> {
    pub(crate) name: &'a str,
    pub(crate) scores: &'a DMatrix<T>,
    pub(crate) kept: Option<&'a Mask>,
    /// Score by `|value|` instead of the value: magnitude selection without a copy.
    pub(crate) magnitude: bool,
}

impl<'a, T: Scalar> Segment<'a, T> {
    /// A segment scored by its values.
    pub(crate) fn new(name: &'a str, scores: &'a DMatrix<T>, kept: Option<&'a Mask>) -> Self {
        Segment { name, scores, kept, magnitude: false }
    }

    /// A segment scored by the magnitudes of its values, read in place.
    pub(crate) fn magnitude(
        name: &'a str,
        weights: &'a DMatrix<T>,
        kept: Option<&'a Mask>,
    ) -> Self {
        Segment { name, scores: weights, kept, magnitude: true }
    }

    /// The order key of one stored value.
    #[inline(always)]
    fn key(&self, x: T) -> T::Key {
        if self.magnitude { x.abs().order_key() } else { x.order_key() }
    }

    /// The kept-mask words, or all-ones when no mask restricts the candidates.
    fn kept_words(&self) -> impl Iterator<Item = u64> + '_ {
        let explicit = self.kept.map(|m| m.as_words().iter().copied());
        let implicit = self.kept.is_none().then(|| std::iter::repeat(u64::MAX));
        explicit.into_iter().flatten().chain(implicit.into_iter().flatten())
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
    let mut hist = vec![0usize; 1 << BUCKET_BITS];
    for s in segments {
        add_to_histogram(s, &mut hist)?;
    }
    let mut plan = Plan::new(&hist, count);
    if let Plan::Bucket { bucket, .. } = plan {
        let mut keys = Vec::new();
        for s in segments {
            collect_bucket(s, bucket, &mut keys);
        }
        plan = plan.resolve(keys);
    }
    let mut ties_left = plan.ties_to_prune();
    segments.iter().map(|s| mask_segment(s, &plan, &mut ties_left)).collect()
}

/// Where the threshold lies, as far as is known.
#[derive(Debug, Clone)]
pub(crate) enum Plan<K> {
    /// Nothing to prune.
    None,
    /// Every candidate goes.
    All,
    /// The threshold is the `need`-th lowest key of bucket `bucket`.
    Bucket { bucket: usize, need: usize },
    /// Prune keys below `key`, and the first `ties` keys equal to it in tie order.
    Threshold { key: K, ties: usize },
}

impl<K: Ord + Copy> Plan<K> {
    /// The plan for pruning `count` candidates given the bucket histogram.
    pub(crate) fn new(hist: &[usize], count: usize) -> Self {
        let candidates: usize = hist.iter().sum();
        if count == 0 {
            return Plan::None;
        }
        if count >= candidates {
            return Plan::All;
        }
        let mut below = 0;
        for (bucket, &n) in hist.iter().enumerate() {
            if below + n >= count {
                return Plan::Bucket { bucket, need: count - below };
            }
            below += n;
        }
        Plan::All
    }

    /// Fixes the threshold from the keys of the threshold bucket.
    pub(crate) fn resolve(self, mut keys: Vec<K>) -> Self {
        match self {
            Plan::Bucket { need, .. } if need >= 1 && need <= keys.len() => {
                let (lower, &mut key, _) = keys.select_nth_unstable(need - 1);
                let strictly_below = lower.iter().filter(|&&k| k < key).count();
                Plan::Threshold { key, ties: need - strictly_below }
            }
            other => other,
        }
    }

    pub(crate) fn ties_to_prune(&self) -> usize {
        match self {
            Plan::Threshold { ties, .. } => *ties,
            _ => 0,
        }
    }
}

/// Adds one segment's kept candidates to the bucket histogram, checking every score for
/// NaN and infinity.
pub(crate) fn add_to_histogram<T: Scalar>(s: &Segment<'_, T>, hist: &mut [usize]) -> Result<()> {
    let scores = s.scores.as_slice();
    let mut finite = true;
    match s.kept {
        // The common case, no mask yet: no per-element kept test.
        None => {
            for &x in scores {
                finite &= x.finite();
                hist[T::key_bucket(s.key(x), BUCKET_BITS)] += 1;
            }
        }
        Some(mask) => {
            for (chunk, &word) in scores.chunks(WORD).zip(mask.as_words()) {
                for (j, &x) in chunk.iter().enumerate() {
                    finite &= x.finite();
                    hist[T::key_bucket(s.key(x), BUCKET_BITS)] += (word >> j & 1) as usize;
                }
            }
        }
    }
    if !finite {
        check_finite(s.name, scores)?;
    }
    Ok(())
}

/// Appends the kept keys of one segment that fall in `bucket`.
pub(crate) fn collect_bucket<T: Scalar>(s: &Segment<'_, T>, bucket: usize, keys: &mut Vec<T::Key>) {
    for (chunk, word) in s.scores.as_slice().chunks(WORD).zip(s.kept_words()) {
        for (j, &x) in chunk.iter().enumerate() {
            let key = s.key(x);
            if word >> j & 1 == 1 && T::key_bucket(key, BUCKET_BITS) == bucket {
                keys.push(key);
            }
        }
    }
}

/// One segment's mask under a resolved plan; `ties_left` counts down the ties still to
/// prune, which go in row-major order within the segment (segments are visited in order).
pub(crate) fn mask_segment<T: Scalar>(
    s: &Segment<'_, T>,
    plan: &Plan<T::Key>,
    ties_left: &mut usize,
) -> Result<Mask> {
    let threshold = match *plan {
        Plan::None | Plan::Bucket { .. } => {
            return Ok(s.kept.cloned().unwrap_or_else(|| Mask::all_kept_like(s.scores)));
        }
        Plan::All => return Ok(Mask::all_pruned_like(s.scores)),
        Plan::Threshold { key, .. } => key,
    };
    let mut mask = Mask::all_pruned_like(s.scores);
    let (nrows, ncols) = s.scores.shape();
    let mut ties: Vec<usize> = Vec::new();
    let words = mask.words_mut();
    for (w, (chunk, kept)) in s.scores.as_slice().chunks(WORD).zip(s.kept_words()).enumerate() {
        let mut above = 0u64;
        let mut equal = 0u64;
        for (j, &x) in chunk.iter().enumerate() {
            let key = s.key(x);
            above |= u64::from(key > threshold) << j;
            equal |= u64::from(key == threshold) << j;
        }
        let mut tied = equal & kept;
        while tied != 0 {
            let i = w * WORD + tied.trailing_zeros() as usize;
            ties.push((i % nrows) * ncols + i / nrows);
            tied &= tied - 1;
        }
        words[w] = above & kept;
    }
    let prune_here = (*ties_left).min(ties.len());
    *ties_left -= prune_here;
    if prune_here < ties.len() {
        if prune_here > 0 {
            ties.select_nth_unstable(prune_here - 1);
        }
        for &row_major in &ties[prune_here..] {
            mask.set_bit((row_major % ncols) * nrows + row_major / ncols);
        }
    }
    Ok(mask)
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
