//! Global selection over tensors visited one at a time: three passes, bounded memory.

use std::marker::PhantomData;

use nalgebra::DMatrix;

use super::check_kept_shape;
use super::threshold::{
    BUCKET_BITS, Plan, Segment, add_to_histogram, collect_bucket, mask_segment,
};
use crate::error::Result;
use crate::mask::Mask;
use crate::scalar::Scalar;
use crate::sparsity::{Rounding, Sparsity};

/// Pass 1 of a global selection that never holds two tensors' scores at once: count
/// every layer's candidates into a radix histogram.
///
/// Visit the same layers in the same order in all three passes; the result equals
/// [`Selector::select_global`](crate::Selector::select_global) on all of them together.
/// Memory is a 65,536-bucket histogram plus the keys of one bucket, whatever the model
/// size.
///
/// ```
/// use nalgebra::dmatrix;
/// use shears_core::{GlobalCount, Rounding, Sparsity};
///
/// let layers = [dmatrix![1.0f32, 5.0], dmatrix![2.0, 3.0; 4.0, 0.5]];
/// let mut count = GlobalCount::new(Rounding::HalfEven);
/// for l in &layers { count.add("l", l, None)?; }
/// let mut bucket = count.plan(Sparsity::new(0.5)?);
/// for l in &layers { bucket.add(l, None)?; }
/// let mut masks = bucket.threshold();
/// let kept: Vec<usize> = layers.iter().map(|l| masks.mask(l, None).map(|m| m.count_kept())).collect::<Result<_, _>>()?;
/// assert_eq!(kept, vec![1, 2]); // 5.0 | 3.0, 4.0 survive
/// # Ok::<(), shears_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct GlobalCount<T: Scalar> {
    rounding: Rounding,
    histogram: Vec<usize>,
    total: usize,
    already: usize,
    _scalar: PhantomData<T>,
}

impl<T: Scalar> GlobalCount<T> {
    /// An empty count.
    pub fn new(rounding: Rounding) -> Self {
        GlobalCount {
            rounding,
            histogram: vec![0; 1 << BUCKET_BITS],
            total: 0,
            already: 0,
            _scalar: PhantomData,
        }
    }

    /// Counts one layer (only the weights `kept` keeps are candidates).
    ///
    /// # Errors
    /// [`crate::Error::NonFinite`] naming `name`; [`crate::Error::ShapeMismatch`] for a
    /// kept mask of another shape.
    pub fn add(&mut self, name: &str, scores: &DMatrix<T>, kept: Option<&Mask>) -> Result<()> {
        check_kept_shape(scores, kept)?;
        add_to_histogram(&Segment::new(name, scores, kept), &mut self.histogram)?;
        self.total += scores.len();
        self.already += kept.map_or(0, Mask::count_pruned);
        Ok(())
    }

    /// Counts one layer scored by magnitude, read as `|w|` from `weights` in place (no
    /// score matrix): the same as [`GlobalCount::add`] on `weights.abs()`.
    ///
    /// # Errors
    /// As [`GlobalCount::add`].
    pub fn add_magnitude(
        &mut self,
        name: &str,
        weights: &DMatrix<T>,
        kept: Option<&Mask>,
    ) -> Result<()> {
        check_kept_shape(weights, kept)?;
        add_to_histogram(&Segment::magnitude(name, weights, kept), &mut self.histogram)?;
        self.total += weights.len();
        self.already += kept.map_or(0, Mask::count_pruned);
        Ok(())
    }

    /// Fixes the target: `sparsity` of all counted weights, absolute (weights already
    /// pruned count toward it).
    pub fn plan(self, sparsity: Sparsity) -> GlobalBucket<T> {
        let count = sparsity.count_of(self.total, self.rounding);
        self.plan_count(count)
    }

    /// Fixes the target as a number of weights pruned in all, absolute (weights already
    /// pruned count toward it): for a caller that has already decided how the target
    /// is shared, such as one that caps some layers at a minimum density.
    pub fn plan_count(self, count: usize) -> GlobalBucket<T> {
        let count = count.saturating_sub(self.already);
        GlobalBucket { plan: Plan::new(&self.histogram, count), keys: Vec::new() }
    }

    /// The number of weights counted so far.
    pub fn total(&self) -> usize {
        self.total
    }
}

/// Pass 2: gather the keys of the bucket that holds the threshold.
#[derive(Debug, Clone)]
pub struct GlobalBucket<T: Scalar> {
    plan: Plan<T::Key>,
    keys: Vec<T::Key>,
}

impl<T: Scalar> GlobalBucket<T> {
    /// Gathers one layer's keys in the threshold bucket.
    ///
    /// # Errors
    /// [`crate::Error::ShapeMismatch`] for a kept mask of another shape.
    pub fn add(&mut self, scores: &DMatrix<T>, kept: Option<&Mask>) -> Result<()> {
        check_kept_shape(scores, kept)?;
        if let Plan::Bucket { bucket, .. } = self.plan {
            collect_bucket(&Segment::new("", scores, kept), bucket, &mut self.keys);
        }
        Ok(())
    }

    /// [`GlobalBucket::add`] for a layer counted with [`GlobalCount::add_magnitude`].
    ///
    /// # Errors
    /// As [`GlobalBucket::add`].
    pub fn add_magnitude(&mut self, weights: &DMatrix<T>, kept: Option<&Mask>) -> Result<()> {
        check_kept_shape(weights, kept)?;
        if let Plan::Bucket { bucket, .. } = self.plan {
            collect_bucket(&Segment::magnitude("", weights, kept), bucket, &mut self.keys);
        }
        Ok(())
    }

    /// Resolves the threshold.
    pub fn threshold(self) -> GlobalMasks<T> {
        let plan = self.plan.resolve(self.keys);
        let ties_left = plan.ties_to_prune();
        GlobalMasks { plan, ties_left }
    }
}

/// Pass 3: each layer's mask, in the order the layers were counted.
#[derive(Debug, Clone)]
pub struct GlobalMasks<T: Scalar> {
    plan: Plan<T::Key>,
    ties_left: usize,
}

impl<T: Scalar> GlobalMasks<T> {
    /// The score at the threshold: candidates scored below it are pruned, those scored
    /// above it kept (and ties at it pruned in layer order). `None` when nothing or
    /// everything is pruned.
    pub fn threshold(&self) -> Option<T> {
        match self.plan {
            Plan::Threshold { key, .. } => Some(T::from_order_key(key)),
            _ => None,
        }
    }

    /// The next layer's mask.
    ///
    /// # Errors
    /// [`crate::Error::ShapeMismatch`] for a kept mask of another shape.
    pub fn mask(&mut self, scores: &DMatrix<T>, kept: Option<&Mask>) -> Result<Mask> {
        check_kept_shape(scores, kept)?;
        mask_segment(&Segment::new("", scores, kept), &self.plan, &mut self.ties_left)
    }

    /// [`GlobalMasks::mask`] for a layer counted with [`GlobalCount::add_magnitude`].
    ///
    /// # Errors
    /// As [`GlobalMasks::mask`].
    pub fn mask_magnitude(&mut self, weights: &DMatrix<T>, kept: Option<&Mask>) -> Result<Mask> {
        check_kept_shape(weights, kept)?;
        mask_segment(&Segment::magnitude("", weights, kept), &self.plan, &mut self.ties_left)
    }
}
