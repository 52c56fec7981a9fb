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

use std::ops::Range;

use nalgebra::DMatrix;

use crate::error::{Error, Result};
use crate::mask::Mask;
#[cfg(feature = "rayon")]
use crate::parallel::PARALLEL_MIN_LEN;
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
    if segments.iter().map(|s| s.scores.len()).sum::<usize>() <= DIRECT_SELECTION {
        prune_lowest_directly(segments, count)
    } else {
        prune_lowest_by_histogram(segments, count)
    }
}

/// [`prune_lowest_segments`] by radix histogram: O(n) passes, nothing sorted.
pub(crate) fn prune_lowest_by_histogram<T: Scalar>(
    segments: &[Segment<'_, T>],
    count: usize,
) -> Result<Vec<Mask>> {
    let mut hist = vec![0usize; 1 << BUCKET_BITS];
    for s in segments {
        add_to_histogram(s, &mut hist)?;
    }
    let mut plan = Plan::new(&hist, count);
    if let Plan::Bucket { bucket, need } = plan {
        let candidates: usize = hist.iter().sum();
        if hist[bucket].saturating_mul(SMALL_BUCKET) <= candidates
            && let Some(masks) = prune_around_bucket(segments, bucket, need)?
        {
            return Ok(masks);
        }
        let mut keys = Vec::new();
        for s in segments {
            collect_bucket(s, bucket, &mut keys);
        }
        plan = plan.resolve(keys);
    }
    let mut ties_left = plan.ties_to_prune();
    segments.iter().map(|s| mask_segment(s, &plan, &mut ties_left)).collect()
}

/// Selections over at most this many values skip the radix histogram (its 65,536
/// buckets would cost more than the values): all their keys are gathered and the
/// threshold found among them directly.
const DIRECT_SELECTION: usize = 4096;

/// [`prune_lowest_segments`] for a few values: the same plan (threshold key and ties),
/// found by one `select_nth_unstable` over every candidate's key.
pub(crate) fn prune_lowest_directly<T: Scalar>(
    segments: &[Segment<'_, T>],
    count: usize,
) -> Result<Vec<Mask>> {
    let mut keys = Vec::new();
    for s in segments {
        let finite = for_each_block(s, 0..s.scores.len().div_ceil(WORD), |_, block, kept| {
            let mut hits = kept & tail_mask(block.len());
            while hits != 0 {
                keys.push(block[hits.trailing_zeros() as usize]);
                hits &= hits - 1;
            }
        });
        if !finite {
            check_finite(s.name, s.scores.as_slice())?;
        }
    }
    let plan = if count == 0 {
        Plan::None
    } else if count >= keys.len() {
        Plan::All
    } else {
        let (lower, &mut key, _) = keys.select_nth_unstable(count - 1);
        let strictly_below = lower.iter().filter(|&&k| k < key).count();
        Plan::Threshold { key, ties: count - strictly_below }
    };
    let mut ties_left = plan.ties_to_prune();
    segments.iter().map(|s| mask_segment(s, &plan, &mut ties_left)).collect()
}

/// The bits of a block of `len` values (all 64 for a full block).
fn tail_mask(len: usize) -> u64 {
    if len >= WORD { u64::MAX } else { (1u64 << len) - 1 }
}

/// A threshold bucket holding at most 1/`SMALL_BUCKET` of the candidates is finished in
/// one more pass instead of two (see [`prune_around_bucket`]); its member list then costs
/// at most a byte per candidate.
const SMALL_BUCKET: usize = 16;

/// The last two passes of [`prune_lowest_segments`] in one, for a small threshold
/// bucket: a single pass keeps everything above the bucket and lists the bucket's
/// members with their positions; the threshold is then found among them and only they
/// are revisited. A large bucket (many equal scores) takes the three-pass path instead,
/// whose list holds keys alone. `None` if the bucket does not hold the `need`-th key
/// (the histogram says it does; the caller then takes the three-pass path).
fn prune_around_bucket<T: Scalar>(
    segments: &[Segment<'_, T>],
    bucket: usize,
    need: usize,
) -> Result<Option<Vec<Mask>>> {
    let bucket_of = |k| T::key_bucket(k, BUCKET_BITS);
    let mut masks = Vec::with_capacity(segments.len());
    let mut members: Vec<Vec<(T::Key, usize)>> = Vec::with_capacity(segments.len());
    for s in segments {
        let parts = map_runs(block_runs(s), |run| {
            let (mut words, mut found) = (Vec::with_capacity(run.len()), Vec::new());
            for_each_block(s, run, |w, keys, kept| {
                words.push(flags_where(keys, |k| bucket_of(k) > bucket) & kept);
                let mut hits = flags_where(keys, |k| bucket_of(k) == bucket) & kept;
                while hits != 0 {
                    let j = hits.trailing_zeros() as usize;
                    found.push((keys[j], w * WORD + j));
                    hits &= hits - 1;
                }
            });
            (words, found)
        });
        let (mut words, mut found) = (Vec::new(), Vec::new());
        for (w, f) in parts {
            words.extend(w);
            found.extend(f);
        }
        let (nrows, ncols) = s.scores.shape();
        masks.push(Mask::from_words(nrows, ncols, words)?);
        members.push(found);
    }
    let keys = members.iter().flatten().map(|&(k, _)| k).collect();
    let Plan::Threshold { key: threshold, ties: mut ties_left } =
        (Plan::Bucket { bucket, need }).resolve(keys)
    else {
        return Ok(None);
    };
    for (mask, found) in masks.iter_mut().zip(&members) {
        let mut ties = Vec::new();
        for &(key, i) in found {
            if key > threshold {
                mask.set_bit(i);
            } else if key == threshold {
                ties.push(i);
            }
        }
        keep_ties_past(mask, ties, &mut ties_left);
    }
    Ok(Some(masks))
}

/// Of `ties` (positions, in storage order, of kept candidates equal to the threshold),
/// prunes the first `ties_left` in row-major order (counting them down) and keeps the rest.
fn keep_ties_past(mask: &mut Mask, ties: Vec<usize>, ties_left: &mut usize) {
    let (nrows, ncols) = mask.shape();
    let mut ties: Vec<usize> = ties.into_iter().map(|i| (i % nrows) * ncols + i / nrows).collect();
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

/// Calls `f` on each block of up to [`WORD`] values of `s` among blocks `blocks`, with
/// the block number, the order keys (in `keys[..len]`) and the block's kept-mask word.
/// Keys are computed a block at a time in a branch-free loop (the `magnitude` choice is
/// made once per segment), which the compiler vectorises; `f` then does the cheap
/// per-key work. Returns whether every value was finite.
#[inline(always)]
fn for_each_block<T: Scalar>(
    s: &Segment<'_, T>,
    blocks: Range<usize>,
    mut f: impl FnMut(usize, &[T::Key], u64),
) -> bool {
    #[inline(always)]
    fn run<T: Scalar, const MAGNITUDE: bool>(
        s: &Segment<'_, T>,
        blocks: Range<usize>,
        f: &mut impl FnMut(usize, &[T::Key], u64),
    ) -> bool {
        let values = s.scores.as_slice();
        let start = (blocks.start * WORD).min(values.len());
        let end = (blocks.end * WORD).min(values.len());
        let kept = s.kept.map(Mask::as_words);
        let mut keys = [T::zero().order_key(); WORD];
        let mut finite = true;
        for (w, chunk) in blocks.zip(values[start..end].chunks(WORD)) {
            for (k, &x) in keys.iter_mut().zip(chunk) {
                finite &= x.finite();
                *k = if MAGNITUDE { x.abs().order_key() } else { x.order_key() };
            }
            f(w, &keys[..chunk.len()], kept.map_or(u64::MAX, |words| words[w]));
        }
        finite
    }
    if s.magnitude { run::<T, true>(s, blocks, &mut f) } else { run::<T, false>(s, blocks, &mut f) }
}

/// Runs per thread of a split pass (each histogram run costs a 512 KiB local histogram).
#[cfg_attr(not(feature = "rayon"), allow(dead_code))]
const RUNS_PER_THREAD: usize = 4;

/// The blocks of `s`, cut into a few contiguous runs per thread that will work on them
/// (a single run without the `rayon` feature or for short segments).
fn block_runs<T: Scalar>(s: &Segment<'_, T>) -> Vec<Range<usize>> {
    let blocks = s.scores.len().div_ceil(WORD);
    #[cfg(feature = "rayon")]
    if s.scores.len() >= PARALLEL_MIN_LEN {
        // A few runs per thread: when a core stalls, the others take its remaining runs.
        let runs = rayon::current_num_threads().max(1) * RUNS_PER_THREAD;
        let per = blocks.div_ceil(runs);
        return (0..blocks).step_by(per.max(1)).map(|b| b..(b + per).min(blocks)).collect();
    }
    std::iter::once(0..blocks).collect()
}

/// Matrices of at least this many scores have their rows chosen in parallel (with the
/// `rayon` feature): choosing is a partial sort per row, tens of nanoseconds a score, so
/// the split pays off far below [`PARALLEL_MIN_LEN`].
#[cfg_attr(not(feature = "rayon"), allow(dead_code))]
const PER_ROW_PARALLEL_MIN_LEN: usize = 1 << 16;

/// The rows `0..nrows` of a matrix `ncols` wide, cut into a few contiguous runs per
/// thread (a single run without the `rayon` feature or for small matrices).
pub(crate) fn row_runs(nrows: usize, ncols: usize) -> Vec<Range<usize>> {
    #[cfg(feature = "rayon")]
    if nrows.saturating_mul(ncols) >= PER_ROW_PARALLEL_MIN_LEN {
        let runs = rayon::current_num_threads().max(1) * RUNS_PER_THREAD;
        let per = nrows.div_ceil(runs).max(1);
        return (0..nrows).step_by(per).map(|r| r..(r + per).min(nrows)).collect();
    }
    let _ = ncols;
    std::iter::once(0..nrows).collect()
}

/// `work` on every run of `runs` (in parallel with the `rayon` feature), results in
/// run order: each run's result depends on its run alone, so the thread count changes
/// nothing.
pub(crate) fn map_runs<R: Send>(
    runs: Vec<Range<usize>>,
    work: impl Fn(Range<usize>) -> R + Sync + Send,
) -> Vec<R> {
    #[cfg(feature = "rayon")]
    if runs.len() > 1 {
        use rayon::prelude::*;
        return runs.into_par_iter().map(work).collect();
    }
    runs.into_iter().map(work).collect()
}

/// Adds one segment's kept candidates to the bucket histogram, checking every score for
/// NaN and infinity.
pub(crate) fn add_to_histogram<T: Scalar>(s: &Segment<'_, T>, hist: &mut [usize]) -> Result<()> {
    let runs = block_runs(s);
    let finite = if let [run] = runs.as_slice() {
        add_run_to_histogram(s, run.clone(), hist)
    } else {
        let parts = map_runs(runs, |run| {
            let mut local = vec![0usize; hist.len()];
            let finite = add_run_to_histogram(s, run, &mut local);
            (local, finite)
        });
        let mut finite = true;
        for (local, ok) in parts {
            finite &= ok;
            hist.iter_mut().zip(local).for_each(|(h, n)| *h += n);
        }
        finite
    };
    if !finite {
        check_finite(s.name, s.scores.as_slice())?;
    }
    Ok(())
}

fn add_run_to_histogram<T: Scalar>(
    s: &Segment<'_, T>,
    run: Range<usize>,
    hist: &mut [usize],
) -> bool {
    for_each_block(s, run, |_, keys, kept| {
        if kept == u64::MAX {
            for &key in keys {
                hist[T::key_bucket(key, BUCKET_BITS)] += 1;
            }
        } else {
            for (j, &key) in keys.iter().enumerate() {
                hist[T::key_bucket(key, BUCKET_BITS)] += (kept >> j & 1) as usize;
            }
        }
    })
}

/// Packs 64 flags (each 0 or 1) into a word, flag `j` to bit `j`: eight at a time, one
/// multiply gathering the low bit of each byte into the top byte. Comparing into bytes
/// and packing them vectorises; shifting each comparison into the word does not.
#[inline(always)]
fn pack_flags(flags: &[u8; WORD]) -> u64 {
    let (eights, _) = flags.as_chunks::<8>();
    let mut word = 0;
    for (i, &eight) in eights.iter().enumerate() {
        word |= (u64::from_le_bytes(eight).wrapping_mul(0x0102_0408_1020_4080) >> 56) << (8 * i);
    }
    word
}

/// The positions `j` of `keys` (a block) where `test(keys[j])`, as a word.
#[inline(always)]
fn flags_where<K: Copy>(keys: &[K], test: impl Fn(K) -> bool) -> u64 {
    let mut flags = [0u8; WORD];
    for (f, &key) in flags.iter_mut().zip(keys) {
        *f = u8::from(test(key));
    }
    pack_flags(&flags)
}

/// Appends the kept keys of one segment that fall in `bucket`.
pub(crate) fn collect_bucket<T: Scalar>(s: &Segment<'_, T>, bucket: usize, keys: &mut Vec<T::Key>) {
    let parts = map_runs(block_runs(s), |run| {
        let mut found = Vec::new();
        for_each_block(s, run, |_, block, kept| {
            let mut hits = flags_where(block, |k| T::key_bucket(k, BUCKET_BITS) == bucket) & kept;
            while hits != 0 {
                found.push(block[hits.trailing_zeros() as usize]);
                hits &= hits - 1;
            }
        });
        found
    });
    for part in parts {
        keys.extend(part);
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
    let (nrows, ncols) = s.scores.shape();
    // Each run yields its mask words and the positions of its ties, in order.
    let parts = map_runs(block_runs(s), |run| {
        let mut words = Vec::with_capacity(run.len());
        let mut ties = Vec::new();
        for_each_block(s, run, |w, keys, kept| {
            let above = flags_where(keys, |k| k > threshold);
            let mut tied = flags_where(keys, |k| k == threshold) & kept;
            while tied != 0 {
                ties.push(w * WORD + tied.trailing_zeros() as usize);
                tied &= tied - 1;
            }
            words.push(above & kept);
        });
        (words, ties)
    });
    let mut words = Vec::with_capacity(s.scores.len().div_ceil(WORD));
    let mut ties: Vec<usize> = Vec::new();
    for (w, t) in parts {
        words.extend(w);
        ties.extend(t);
    }
    let mut mask = Mask::from_words(nrows, ncols, words)?;
    keep_ties_past(&mut mask, ties, ties_left);
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
