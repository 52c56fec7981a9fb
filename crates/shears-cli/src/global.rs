//! Global scope: one threshold across every chosen tensor of every shard, found in
//! passes that hold one tensor at a time, with an optional minimum density per tensor.

use std::collections::BTreeMap;

use anyhow::Result;
use nalgebra::DMatrix;
use shears_core::{
    GlobalCount, GlobalMasks, LayerContext, Mask, PruningStrategy, Scalar, Selector, Sparsity,
};
use shears_io::{Float, Model};
use shears_strategies::Criterion;

use crate::job::Job;
use crate::progress::Progress;
use crate::sources::{Loaded, Sources, Tensor};

/// What a global selection ranks for one tensor: the weights themselves, read as `|w|`
/// in place (magnitude, no copy), or a score matrix.
enum Ranked<'a, T: Clone> {
    Magnitude(&'a DMatrix<T>),
    Scores(std::borrow::Cow<'a, DMatrix<T>>),
}

impl<'a, T: Float> Ranked<'a, T> {
    fn of(job: &Job, t: &Tensor, loaded: &'a Loaded<T>) -> Result<Self> {
        if let Some(s) = &loaded.scores {
            return Ok(Ranked::Scores(std::borrow::Cow::Borrowed(s)));
        }
        Ok(match job.criterion {
            Criterion::Magnitude => Ranked::Magnitude(&loaded.weights),
            other => {
                let ctx = LayerContext::new(t.name).with_shape(t.shape);
                Ranked::Scores(std::borrow::Cow::Owned(other.scores(&loaded.weights, &ctx)?))
            }
        })
    }

    fn count(&self, count: &mut GlobalCount<T>, name: &str, kept: Option<&Mask>) -> Result<()> {
        match self {
            Ranked::Magnitude(w) => count.add_magnitude(name, w, kept)?,
            Ranked::Scores(s) => count.add(name, s, kept)?,
        }
        Ok(())
    }

    fn bucket(&self, bucket: &mut shears_core::GlobalBucket<T>, kept: Option<&Mask>) -> Result<()> {
        match self {
            Ranked::Magnitude(w) => bucket.add_magnitude(w, kept)?,
            Ranked::Scores(s) => bucket.add(s, kept)?,
        }
        Ok(())
    }

    fn mask(&self, masks: &mut GlobalMasks<T>, kept: Option<&Mask>) -> Result<Mask> {
        Ok(match self {
            Ranked::Magnitude(w) => masks.mask_magnitude(w, kept)?,
            Ranked::Scores(s) => masks.mask(s, kept)?,
        })
    }

    /// This tensor's own selection of exactly `count` pruned weights.
    fn select(&self, name: &str, count: usize, kept: Option<&Mask>) -> Result<Mask> {
        let (len, selector) = match self {
            Ranked::Magnitude(w) => (w.len(), Selector::new()),
            Ranked::Scores(s) => (s.len(), Selector::new()),
        };
        let sparsity = Sparsity::from_counts(count, len);
        Ok(match self {
            Ranked::Magnitude(w) => selector.select_magnitude(name, w, sparsity, kept)?,
            Ranked::Scores(s) => selector.select(name, s, sparsity, kept)?,
        })
    }
}

/// The global selection, ready to give each tensor its mask in model order.
pub(crate) struct Global<T: Scalar> {
    masks: GlobalMasks<T>,
    /// Tensors held at their minimum density: the number each prunes.
    capped: BTreeMap<String, usize>,
}

impl<T: Float> Global<T> {
    /// Ranks every chosen tensor: two read-only passes (count, then the threshold
    /// bucket), and with a minimum density a third that finds the tensors the threshold
    /// would prune past it; those are held at it, and the passes run again over the
    /// others with what is left of the target.
    pub(crate) fn plan(
        job: &Job,
        model: &Model,
        sources: &Sources,
        tensors: &[Tensor],
        quiet: bool,
    ) -> Result<Global<T>> {
        let total: usize = tensors.iter().map(Tensor::len).sum();
        let target = job.sparsity.count_of(total, job.rounding);
        let cap = |t: &Tensor| {
            let n = t.len();
            n - ((job.min_density * n as f64).ceil() as usize).min(n)
        };
        let bytes: u64 = tensors.iter().map(|t| (t.len() * t.dtype.bitsize() / 8) as u64).sum();
        let mut capped: BTreeMap<String, usize> = BTreeMap::new();
        let mut spare = Vec::new();
        loop {
            let passes = if job.min_density > 0.0 { 3 } else { 2 };
            let progress = Progress::bytes(bytes * passes, "ranking every tensor", quiet);
            let live = || tensors.iter().filter(|t| !capped.contains_key(t.name));
            let mut visit = |f: &mut dyn FnMut(&Tensor, &Loaded<T>) -> Result<()>| -> Result<()> {
                for t in live() {
                    let loaded = sources.load(model, t, job.view, std::mem::take(&mut spare))?;
                    f(t, &loaded)?;
                    progress.advance((t.len() * t.dtype.bitsize() / 8) as u64);
                    spare = loaded.weights.data.into();
                }
                Ok(())
            };
            let mut count = GlobalCount::<T>::new(job.rounding);
            visit(&mut |t, l| Ranked::of(job, t, l)?.count(&mut count, t.name, l.kept.as_ref()))?;
            let fixed: usize = capped.values().sum();
            let mut bucket = count.plan_count(target.saturating_sub(fixed));
            visit(&mut |t, l| Ranked::of(job, t, l)?.bucket(&mut bucket, l.kept.as_ref()))?;
            let masks = bucket.threshold();
            if job.min_density == 0.0 {
                progress.finish();
                return Ok(Global { masks, capped });
            }
            let mut dry = masks.clone();
            let mut over = Vec::new();
            visit(&mut |t, l| {
                let pruned = Ranked::of(job, t, l)?.mask(&mut dry, l.kept.as_ref())?.count_pruned();
                if pruned > cap(t) {
                    let already = l.kept.as_ref().map_or(0, Mask::count_pruned);
                    over.push((t.name.to_owned(), cap(t).max(already)));
                }
                Ok(())
            })?;
            progress.finish();
            if over.is_empty() {
                return Ok(Global { masks, capped });
            }
            capped.extend(over);
        }
    }

    /// The mask of the next tensor, in the order [`Global::plan`] visited them.
    pub(crate) fn mask(&mut self, job: &Job, t: &Tensor, loaded: &Loaded<T>) -> Result<Mask> {
        let ranked = Ranked::of(job, t, loaded)?;
        match self.capped.get(t.name) {
            Some(&count) => ranked.select(t.name, count, loaded.kept.as_ref()),
            None => ranked.mask(&mut self.masks, loaded.kept.as_ref()),
        }
    }

    /// The score at the threshold, if the selection has one.
    pub(crate) fn threshold(&self) -> Option<f64> {
        self.masks.threshold().map(Scalar::as_f64)
    }

    /// The tensors held at the minimum density.
    pub(crate) fn capped(&self) -> impl Iterator<Item = &str> {
        self.capped.keys().map(String::as_str)
    }
}
