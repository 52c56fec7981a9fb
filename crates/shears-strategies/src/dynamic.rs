//! Dynamic sparse training: networks that are sparse from the first step and move their
//! connections while they train (SET, Mocanu et al. 2018; RigL, Evci et al. 2020).

use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shears_core::{LayerContext, Mask, Masks, Prunable, Scalar, Selector, Sparsity};

use crate::criteria::stable_hash;
use crate::error::{Error, Result};

/// Where regrown connections go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Growth {
    /// Uniformly random pruned positions (SET), from ChaCha8 seeded with this seed, the
    /// layer's name and the step.
    Random {
        /// The seed.
        seed: u64,
    },
    /// The pruned positions with the largest dense-gradient magnitude `|∂L/∂w|` (RigL):
    /// the connections whose growth would lower the loss fastest.
    Gradient,
}

/// How the fraction of connections an update moves changes over training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decay {
    /// The same fraction at every update.
    Constant,
    /// `fraction/2 * (1 + cos(π t / end))`: RigL's cosine decay to zero at `end`.
    Cosine,
}

/// When connections move, and how many: every `interval` steps before `end`, a fraction of
/// each layer's kept weights that starts at `fraction` and follows `decay`.
///
/// # Invariants
/// `interval >= 1`, `0 <= fraction <= 1`.
///
/// ```
/// use shears_strategies::{Decay, UpdateSchedule};
/// let s = UpdateSchedule::rigl(1000)?; // every 100 steps, 0.3 decaying to 0 at step 750
/// assert_eq!(s.fraction_at(50), None);
/// assert!((s.fraction_at(100).unwrap() - 0.15 * (1.0 + (std::f64::consts::PI * 100.0 / 750.0).cos())).abs() < 1e-12);
/// assert_eq!(s.fraction_at(800), None);
/// # Ok::<(), shears_strategies::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateSchedule {
    interval: usize,
    fraction: f64,
    end: usize,
    decay: Decay,
}

impl UpdateSchedule {
    /// A schedule that moves `fraction` (decayed by `decay`) of each layer's kept weights
    /// every `interval` steps, for steps before `end`.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for an interval of zero or a fraction outside `[0, 1]`.
    pub fn new(interval: usize, fraction: f64, end: usize, decay: Decay) -> Result<Self> {
        if interval == 0 {
            return Err(Error::InvalidSetting { what: "update interval (steps)", value: 0.0 });
        }
        if !(0.0..=1.0).contains(&fraction) {
            return Err(Error::InvalidSetting { what: "update fraction", value: fraction });
        }
        Ok(UpdateSchedule { interval, fraction, end, decay })
    }

    /// RigL's defaults for a run of `total_steps`: every 100 steps, α = 0.3 with cosine
    /// decay, no updates from 75% of training on.
    ///
    /// # Errors
    /// None in practice; the signature matches [`UpdateSchedule::new`].
    pub fn rigl(total_steps: usize) -> Result<Self> {
        UpdateSchedule::new(100, 0.3, total_steps / 4 * 3 + total_steps % 4 * 3 / 4, Decay::Cosine)
    }

    /// Steps between updates.
    pub fn interval(&self) -> usize {
        self.interval
    }

    /// The fraction at the first update, before decay.
    pub fn fraction(&self) -> f64 {
        self.fraction
    }

    /// The first step at which no update happens any more.
    pub fn end(&self) -> usize {
        self.end
    }

    /// The decay.
    pub fn decay(&self) -> Decay {
        self.decay
    }

    /// The fraction to move after optimizer step `step` (1-based), or `None` when the step
    /// is not an update step.
    pub fn fraction_at(&self, step: usize) -> Option<f64> {
        if step == 0 || !step.is_multiple_of(self.interval) || step >= self.end {
            return None;
        }
        Some(match self.decay {
            Decay::Constant => self.fraction,
            Decay::Cosine => {
                let t = step as f64 / self.end as f64;
                self.fraction * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        })
    }
}

/// What one update did.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskUpdate {
    /// The optimizer step after which it ran.
    pub step: usize,
    /// The fraction of kept weights it moved.
    pub fraction: f64,
    /// Per layer, the positions regrown (kept now, pruned before the update or dropped by
    /// it). Their weights are zero; an optimizer resets its state there.
    pub grown: Masks,
}

impl MaskUpdate {
    /// Connections moved in layer `name` (dropped, and as many regrown).
    pub fn moved(&self, name: &str) -> usize {
        self.grown.get(name).map_or(0, Mask::count_kept)
    }
}

/// A dynamic-sparsity policy: SET or RigL, or any mix of a [`Growth`] and an
/// [`UpdateSchedule`]. The trainer calls [`DynamicSparsity::update`] after every optimizer
/// step, with the step's dense gradients in the model when the growth needs them.
///
/// An update, per layer of `masks`: let `k = round(fraction * kept)` (PyTorch's rounding,
/// ties to even); drop the `k` kept weights of smallest magnitude (ties: the lower
/// row-major index goes first, as every selection in shears); regrow `k` positions among
/// those not kept after the drop (RigL's reference may regrow a connection it just
/// dropped, and so may this) by the growth's scores (ties: the higher row-major index is
/// grown first, the mirror of the drop rule); set the regrown weights to zero. Every
/// layer's kept count stays exactly what it was. Regrowth goes through [`Mask::regrow`],
/// the one operation that turns pruned positions back on.
///
/// ```
/// use std::collections::BTreeMap;
/// use nalgebra::{DMatrix, dmatrix};
/// use shears_core::{Mask, Masks, Prunable};
/// use shears_strategies::{Decay, DynamicSparsity, UpdateSchedule};
///
/// struct Net { w: DMatrix<f64>, g: DMatrix<f64> }
/// impl Prunable<f64> for Net {
///     fn prunable_names(&self) -> Vec<String> { vec!["fc".into()] }
///     fn weight(&self, _: &str) -> Option<&DMatrix<f64>> { Some(&self.w) }
///     fn weight_mut(&mut self, _: &str) -> Option<&mut DMatrix<f64>> { Some(&mut self.w) }
///     fn gradient(&self, _: &str) -> Option<&DMatrix<f64>> { Some(&self.g) }
/// }
/// let mut net = Net { w: dmatrix![0.1, 0.0; 0.9, 0.0], g: dmatrix![0.0, 5.0; 0.0, 0.1] };
/// let mut masks = Masks::from([("fc".to_string(), Mask::from_fn(2, 2, |_, c| c == 0)?)]);
/// let rigl = DynamicSparsity::rigl(UpdateSchedule::new(1, 0.5, 10, Decay::Constant)?);
/// let update = rigl.update(1, &mut net, &mut masks)?.unwrap();
/// assert_eq!(update.moved("fc"), 1);
/// // 0.1 is dropped, the largest gradient (0, 1) regrown at zero.
/// assert_eq!(masks["fc"].to_matrix(), dmatrix![false, true; true, false]);
/// assert_eq!(net.w, dmatrix![0.0, 0.0; 0.9, 0.0]);
/// # Ok::<(), shears_strategies::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DynamicSparsity {
    growth: Growth,
    schedule: UpdateSchedule,
}

impl DynamicSparsity {
    /// A policy from its two parts.
    pub fn new(growth: Growth, schedule: UpdateSchedule) -> Self {
        DynamicSparsity { growth, schedule }
    }

    /// SET: regrowth at random positions, seeded.
    pub fn set(schedule: UpdateSchedule, seed: u64) -> Self {
        DynamicSparsity::new(Growth::Random { seed }, schedule)
    }

    /// RigL: regrowth where the dense gradient is largest.
    pub fn rigl(schedule: UpdateSchedule) -> Self {
        DynamicSparsity::new(Growth::Gradient, schedule)
    }

    /// Where connections regrow.
    pub fn growth(&self) -> Growth {
        self.growth
    }

    /// When and how many move.
    pub fn schedule(&self) -> UpdateSchedule {
        self.schedule
    }

    /// Whether the update after `step` reads the model's dense gradients (a trainer that
    /// computes only masked gradients computes dense ones for this step).
    pub fn needs_dense_gradients(&self, step: usize) -> bool {
        self.growth == Growth::Gradient && self.schedule.fraction_at(step).is_some()
    }

    /// Moves connections if `step` is an update step of the schedule; `Ok(None)` otherwise.
    ///
    /// # Errors
    /// As [`DynamicSparsity::update_with`].
    pub fn update<T: Scalar, M: Prunable<T> + ?Sized>(
        &self,
        step: usize,
        model: &mut M,
        masks: &mut Masks,
    ) -> Result<Option<MaskUpdate>> {
        match self.schedule.fraction_at(step) {
            Some(fraction) => self.update_with(fraction, step, model, masks).map(Some),
            None => Ok(None),
        }
    }

    /// Moves `fraction` of the kept weights of every layer in `masks`, now (`step` seeds
    /// random growth and is recorded).
    ///
    /// Layers are checked before any changes, so on error the model and masks are as they
    /// were.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for a fraction outside `[0, 1]`;
    /// [`shears_core::Error::UnknownLayer`] for a masked layer the model lacks;
    /// [`Error::MaskShape`] for a mask of the wrong shape; a missing, misshapen or
    /// non-finite gradient for gradient growth; non-finite weights.
    pub fn update_with<T: Scalar, M: Prunable<T> + ?Sized>(
        &self,
        fraction: f64,
        step: usize,
        model: &mut M,
        masks: &mut Masks,
    ) -> Result<MaskUpdate> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(Error::InvalidSetting { what: "update fraction", value: fraction });
        }
        let mut planned = Vec::with_capacity(masks.len());
        for (name, mask) in masks.iter() {
            let weights = model.require_weight(name)?;
            if mask.shape() != weights.shape() {
                return Err(Error::MaskShape {
                    layer: name.clone(),
                    mask: mask.shape(),
                    weights: weights.shape(),
                });
            }
            planned.push(self.plan_layer(name, mask, weights, model, fraction, step)?);
        }
        let mut grown = Masks::new();
        for (name, kept, regrown) in planned {
            let weights = model.require_weight_mut(&name)?;
            kept.apply_in_place(weights)?;
            let mut next = kept;
            next.regrow(&regrown)?;
            masks.insert(name.clone(), next);
            grown.insert(name, regrown);
        }
        Ok(MaskUpdate { step, fraction, grown })
    }

    /// One layer's update, computed without changing anything: the mask after the drop
    /// and the positions to regrow.
    fn plan_layer<T: Scalar, M: Prunable<T> + ?Sized>(
        &self,
        name: &str,
        mask: &Mask,
        weights: &DMatrix<T>,
        model: &M,
        fraction: f64,
        step: usize,
    ) -> Result<(String, Mask, Mask)> {
        let n = mask.len();
        let kept = mask.count_kept();
        // round_ties_even in f64, as every count in shears; at most `kept`.
        let k = ((fraction * kept as f64).round_ties_even() as usize).min(kept);
        let selector = Selector::new();
        let after_drop = selector.select_magnitude(
            name,
            weights,
            Sparsity::from_counts(n - kept + k, n),
            Some(mask),
        )?;
        let candidates = after_drop.not();
        let scores = match self.growth {
            Growth::Random { seed } => {
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ stable_hash(name));
                rng.set_stream(step as u64);
                uniform_scores::<T>(mask.nrows(), mask.ncols(), &mut rng)
            }
            Growth::Gradient => {
                let gradient = model.gradient(name).ok_or_else(|| {
                    LayerContext::<T>::new(name).missing(shears_core::LayerInput::Gradients)
                })?;
                LayerContext::new(name).with_gradients(gradient).require_gradients(weights)?.abs()
            }
        };
        // Keep the best k of the candidates: prune all but k of the n positions, the
        // non-candidates counting as already pruned.
        let regrown =
            selector.select(name, &scores, Sparsity::from_counts(n - k, n), Some(&candidates))?;
        debug_assert_eq!(regrown.count_kept(), k);
        Ok((name.to_owned(), after_drop, regrown))
    }
}

/// Scores uniform in `[0, 1)`, drawn in column-major order.
pub(crate) fn uniform_scores<T: Scalar>(
    nrows: usize,
    ncols: usize,
    rng: &mut ChaCha8Rng,
) -> DMatrix<T> {
    DMatrix::from_fn(nrows, ncols, |_, _| T::from_f64_lossy(rng.random::<f64>()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::dmatrix;
    use std::collections::BTreeMap;

    struct Net {
        w: BTreeMap<String, DMatrix<f64>>,
        g: BTreeMap<String, DMatrix<f64>>,
    }
    impl Prunable<f64> for Net {
        fn prunable_names(&self) -> Vec<String> {
            self.w.keys().cloned().collect()
        }
        fn weight(&self, n: &str) -> Option<&DMatrix<f64>> {
            self.w.get(n)
        }
        fn weight_mut(&mut self, n: &str) -> Option<&mut DMatrix<f64>> {
            self.w.get_mut(n)
        }
        fn gradient(&self, n: &str) -> Option<&DMatrix<f64>> {
            self.g.get(n)
        }
    }

    #[test]
    fn schedules() {
        let s = UpdateSchedule::new(10, 0.3, 100, Decay::Constant).unwrap();
        assert_eq!(s.fraction_at(0), None);
        assert_eq!(s.fraction_at(10), Some(0.3));
        assert_eq!(s.fraction_at(11), None);
        assert_eq!(s.fraction_at(100), None);
        let c = UpdateSchedule::new(10, 0.3, 100, Decay::Cosine).unwrap();
        assert!((c.fraction_at(50).unwrap() - 0.15).abs() < 1e-12);
        assert!(c.fraction_at(90).unwrap() < c.fraction_at(10).unwrap());
        assert_eq!(UpdateSchedule::rigl(1000).unwrap().end(), 750);
        assert_eq!(UpdateSchedule::rigl(7).unwrap().end(), 5);
        assert!(UpdateSchedule::new(0, 0.3, 100, Decay::Constant).is_err());
        assert!(UpdateSchedule::new(1, 1.5, 100, Decay::Constant).is_err());
        assert!(UpdateSchedule::new(1, f64::NAN, 100, Decay::Constant).is_err());
    }

    #[test]
    fn errors_leave_everything_as_it_was() {
        let w = dmatrix![1.0, 2.0; 3.0, 4.0];
        let mut net = Net {
            w: BTreeMap::from([("a".into(), w.clone()), ("b".into(), w.clone())]),
            g: BTreeMap::from([("a".into(), w.clone())]),
        };
        let mut masks = Masks::from([
            ("a".to_string(), Mask::from_fn(2, 2, |r, _| r == 0).unwrap()),
            ("b".to_string(), Mask::from_fn(2, 2, |r, _| r == 0).unwrap()),
        ]);
        let before = masks.clone();
        let rigl = DynamicSparsity::rigl(UpdateSchedule::new(1, 0.5, 9, Decay::Constant).unwrap());
        // "b" has no gradient: nothing changes, "a" included.
        let err = rigl.update(1, &mut net, &mut masks).unwrap_err();
        assert!(err.to_string().contains("`b`"), "{err}");
        assert_eq!(masks, before);
        assert_eq!(net.w["a"], w);
        let mut wrong = Masks::from([("a".to_string(), Mask::all_kept(3, 1).unwrap())]);
        assert!(matches!(rigl.update(1, &mut net, &mut wrong), Err(Error::MaskShape { .. })));
        let mut unknown = Masks::from([("zz".to_string(), Mask::all_kept(2, 2).unwrap())]);
        assert!(rigl.update(1, &mut net, &mut unknown).is_err());
        net.g.insert("b".into(), dmatrix![f64::NAN, 0.0; 0.0, 0.0]);
        assert!(rigl.update(1, &mut net, &mut masks).is_err());
        assert!(rigl.update_with(2.0, 1, &mut net, &mut masks).is_err());
    }

    #[test]
    fn random_growth_differs_by_step_and_repeats_by_seed() {
        let w = DMatrix::from_fn(20, 30, |r, c| ((r * 31 + c * 7) % 17) as f64 + 1.0);
        let mask = Mask::from_fn(20, 30, |r, c| (r + c) % 4 == 0).unwrap();
        let run = |seed, step| {
            let mut net = Net {
                w: BTreeMap::from([("l".into(), mask.apply(&w).unwrap())]),
                g: BTreeMap::new(),
            };
            let mut masks = Masks::from([("l".to_string(), mask.clone())]);
            let set = DynamicSparsity::set(
                UpdateSchedule::new(1, 0.3, 100, Decay::Constant).unwrap(),
                seed,
            );
            set.update(step, &mut net, &mut masks).unwrap().unwrap();
            masks.remove("l").unwrap()
        };
        assert_eq!(run(1, 5), run(1, 5));
        assert_ne!(run(1, 5), run(1, 6));
        assert_ne!(run(1, 5), run(2, 5));
        assert_eq!(run(1, 5).count_kept(), mask.count_kept());
    }
}
