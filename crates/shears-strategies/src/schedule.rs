//! Schedules: which absolute sparsity to reach at which step.
//!
//! - [`Schedule::one_shot`]: the target at once;
//! - [`Schedule::iterative`] / [`Schedule::geometric`]: R rounds that each prune a fraction
//!   `p` of the remaining weights, so round k reaches `1-(1-p)^k` (the lottery ticket's);
//! - [`Schedule::polynomial`]: Zhu & Gupta's (2017) gradual pruning during training,
//!   `s_t = s_f + (s_i - s_f)(1 - (t - t_0)/(t_1 - t_0))^3`, every `frequency` steps
//!   (TensorFlow Model Optimization's `PolynomialDecay`).

use shears_core::Sparsity;

use crate::error::{Error, Result};

/// A per-round pruning rate: the fraction of the *remaining* weights one round removes.
///
/// # Invariants
/// `0 <= p < 1` (a rate of 1 would end in one round whatever the schedule says).
///
/// ```
/// use shears_strategies::PruneRate;
/// let p = PruneRate::new(0.2)?;
/// assert!((p.after(2).get() - 0.36).abs() < 1e-12);
/// assert_eq!(p.rounds_for(shears_core::Sparsity::new(0.36)?), 2);
/// # Ok::<(), shears_strategies::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct PruneRate(f64);

impl PruneRate {
    /// Validates a rate.
    ///
    /// # Errors
    /// [`Error::InvalidRate`] unless `0 <= rate < 1`.
    pub fn new(rate: f64) -> Result<Self> {
        if (0.0..1.0).contains(&rate) {
            Ok(PruneRate(rate))
        } else {
            Err(Error::InvalidRate { value: rate })
        }
    }

    /// The rate as a float.
    pub fn get(self) -> f64 {
        self.0
    }

    /// The sparsity after `rounds` rounds: `1 - (1 - p)^rounds` (as `-expm1(rounds ·
    /// ln(1 - p))`, exact for rates too small for `1 - p` to differ from 1).
    pub fn after(self, rounds: u32) -> Sparsity {
        let s = -(f64::from(rounds) * (-self.0).ln_1p()).exp_m1();
        Sparsity::new(s.clamp(0.0, 1.0)).unwrap_or(Sparsity::ONE)
    }

    /// The fewest rounds that reach `target` (within 1e-12); `u32::MAX` if no number of
    /// rounds a `u32` holds does (a rate of 0, or one too small, for a target above 0).
    pub fn rounds_for(self, target: Sparsity) -> u32 {
        let target = target.get();
        if target <= 1e-12 {
            return 0;
        }
        if self.0 == 0.0 || target >= 1.0 {
            return u32::MAX;
        }
        let exact = (-target).ln_1p() / (-self.0).ln_1p();
        if exact >= f64::from(u32::MAX) {
            return u32::MAX;
        }
        // The estimate is off by rounding alone, either way: a step or two at most.
        let reaches = |k: u32| self.after(k).get() >= target - 1e-12;
        let mut k = exact.floor().max(0.0) as u32;
        while k > 0 && reaches(k - 1) {
            k -= 1;
        }
        while !reaches(k) {
            if k == u32::MAX {
                return u32::MAX;
            }
            k += 1;
        }
        k
    }
}

/// Zhu & Gupta's polynomial decay, built with [`Schedule::polynomial`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Polynomial {
    initial: Sparsity,
    target: Sparsity,
    begin_step: usize,
    end_step: usize,
    frequency: usize,
    power: i32,
}

/// Which absolute sparsity to reach at which step.
///
/// ```
/// use shears_core::Sparsity;
/// use shears_strategies::Schedule;
///
/// let s = Schedule::iterative(Sparsity::new(0.9)?, 3)?;
/// let targets: Vec<f64> = s.targets().map(|(_, s)| s.get()).collect();
/// assert_eq!(targets.len(), 3);
/// assert_eq!(targets[2], 0.9);
///
/// let p = Schedule::polynomial(Sparsity::ZERO, Sparsity::new(0.8)?, 0, 100, 10)?;
/// assert_eq!(p.target_at(0).get(), 0.0);
/// assert_eq!(p.target_at(100).get(), 0.8);
/// assert!(p.target_at(50).get() > 0.6); // cubic: fast early, slow late
/// # Ok::<(), shears_strategies::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Schedule {
    /// The target at step 0.
    OneShot(Sparsity),
    /// Round `k` (steps 1..=R) reaches `1 - (1-p)^k`; the last round is the target exactly.
    Iterative {
        /// The per-round rate.
        rate: PruneRate,
        /// The number of rounds.
        rounds: u32,
        /// Where the last round lands.
        target: Sparsity,
    },
    /// Gradual pruning during training.
    Polynomial(Polynomial),
}

impl Schedule {
    /// The target in one step.
    pub fn one_shot(target: Sparsity) -> Self {
        Schedule::OneShot(target)
    }

    /// `rounds` geometric rounds ending exactly at `target`.
    ///
    /// # Errors
    /// [`Error::InvalidSchedule`] if `rounds == 0` or `target == 1` (no geometric rate reaches it).
    pub fn iterative(target: Sparsity, rounds: u32) -> Result<Self> {
        if rounds == 0 {
            return Err(Error::InvalidSchedule {
                reason: "an iterative schedule needs at least one round",
            });
        }
        if target.get() >= 1.0 {
            return Err(Error::InvalidSchedule {
                reason: "geometric rounds never reach sparsity 1",
            });
        }
        let rate = PruneRate::new(1.0 - (1.0 - target.get()).powf(1.0 / f64::from(rounds)))?;
        Ok(Schedule::Iterative { rate, rounds, target })
    }

    /// `rounds` rounds at rate `rate` (the target is wherever they land). Unlike
    /// [`Schedule::iterative`], which needs a round to reach its target, 0 rounds is
    /// allowed here: a schedule of no rounds, landing at sparsity 0.
    pub fn geometric(rate: PruneRate, rounds: u32) -> Self {
        Schedule::Iterative { rate, rounds, target: rate.after(rounds) }
    }

    /// Polynomial decay (power 3) from `initial` at `begin_step` to `target` at
    /// `end_step`, pruning every `frequency` steps and at `end_step`.
    ///
    /// # Errors
    /// [`Error::InvalidSchedule`] if `end_step <= begin_step`, `frequency == 0` or
    /// `initial > target`.
    pub fn polynomial(
        initial: Sparsity,
        target: Sparsity,
        begin_step: usize,
        end_step: usize,
        frequency: usize,
    ) -> Result<Self> {
        if end_step <= begin_step {
            return Err(Error::InvalidSchedule { reason: "end_step must come after begin_step" });
        }
        if frequency == 0 {
            return Err(Error::InvalidSchedule { reason: "frequency must be at least 1" });
        }
        if initial > target {
            return Err(Error::InvalidSchedule { reason: "initial sparsity exceeds the target" });
        }
        Ok(Schedule::Polynomial(Polynomial {
            initial,
            target,
            begin_step,
            end_step,
            frequency,
            power: 3,
        }))
    }

    /// The final sparsity.
    pub fn final_target(&self) -> Sparsity {
        match self {
            Schedule::OneShot(s) => *s,
            Schedule::Iterative { target, .. } => *target,
            Schedule::Polynomial(p) => p.target,
        }
    }

    /// The sparsity the schedule has reached by `step` (0 before its first pruning step).
    pub fn target_at(&self, step: usize) -> Sparsity {
        match self {
            Schedule::OneShot(s) => *s,
            Schedule::Iterative { rate, rounds, target } => {
                if step >= *rounds as usize {
                    *target
                } else {
                    rate.after(step as u32)
                }
            }
            Schedule::Polynomial(p) => {
                if step < p.begin_step {
                    return Sparsity::ZERO;
                }
                let progress =
                    ((step - p.begin_step) as f64 / (p.end_step - p.begin_step) as f64).min(1.0);
                let s = p.target.get()
                    + (p.initial.get() - p.target.get()) * (1.0 - progress).powi(p.power);
                // Between initial and target by construction; clamp against rounding.
                Sparsity::new(s.clamp(p.initial.get(), p.target.get())).unwrap_or(p.target)
            }
        }
    }

    /// The steps at which to prune and the target at each, in order, one at a time: a
    /// schedule may have billions of rounds or steps, so none is listed ahead. The last
    /// target is exactly [`Schedule::final_target`].
    pub fn targets(&self) -> impl Iterator<Item = (usize, Sparsity)> + '_ {
        let steps: Box<dyn Iterator<Item = usize>> = match self {
            Schedule::OneShot(_) => Box::new(std::iter::once(0)),
            Schedule::Iterative { rounds, .. } => Box::new(1..=*rounds as usize),
            Schedule::Polynomial(p) => Box::new(
                (p.begin_step..p.end_step).step_by(p.frequency).chain(std::iter::once(p.end_step)),
            ),
        };
        steps.map(|t| (t, self.target_at(t)))
    }

    /// The target if `step` is a pruning step of the schedule.
    pub fn prune_at(&self, step: usize) -> Option<Sparsity> {
        match self {
            Schedule::Polynomial(p) => {
                let on_grid = step >= p.begin_step
                    && step < p.end_step
                    && (step - p.begin_step).is_multiple_of(p.frequency);
                (on_grid || step == p.end_step).then(|| self.target_at(step))
            }
            Schedule::OneShot(s) => (step == 0).then_some(*s),
            // Without listing the rounds, which may be billions.
            Schedule::Iterative { rounds, .. } => {
                (1..=*rounds as usize).contains(&step).then(|| self.target_at(step))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: f64) -> Sparsity {
        Sparsity::new(x).unwrap()
    }

    #[test]
    fn iterative_ends_exactly() {
        let sch = Schedule::iterative(s(0.9), 5).unwrap();
        let t: Vec<_> = sch.targets().collect();
        assert_eq!(t.last().map(|x| x.1), Some(s(0.9)));
        assert!(t.windows(2).all(|w| w[0].1 <= w[1].1));
        assert_eq!(sch.final_target(), s(0.9));
        assert_eq!(sch.prune_at(3), Some(t[2].1));
        assert_eq!(sch.prune_at(6), None);
    }

    /// Targets come one at a time: a schedule of billions of rounds or steps gives its
    /// first ones at once, without listing the rest.
    #[test]
    fn targets_of_huge_schedules_are_not_listed_ahead() {
        let rounds = Schedule::geometric(PruneRate::new(1e-9).unwrap(), u32::MAX);
        let first: Vec<usize> = rounds.targets().take(3).map(|(k, _)| k).collect();
        assert_eq!(first, [1, 2, 3]);
        let steps = Schedule::polynomial(s(0.0), s(0.5), 0, usize::MAX / 2, 1).unwrap();
        let first: Vec<(usize, Sparsity)> = steps.targets().take(2).collect();
        assert_eq!(first, [(0, s(0.0)), (1, steps.target_at(1))]);
    }

    #[test]
    fn geometric_rounds() {
        let sch = Schedule::geometric(PruneRate::new(0.2).unwrap(), 2);
        assert!((sch.final_target().get() - 0.36).abs() < 1e-12);
        let none = Schedule::geometric(PruneRate::new(0.2).unwrap(), 0);
        assert_eq!((none.targets().count(), none.final_target()), (0, s(0.0)));
        assert_eq!(PruneRate::new(0.2).unwrap().rounds_for(s(0.0)), 0);
        assert_eq!(PruneRate::new(0.0).unwrap().rounds_for(s(0.5)), u32::MAX);
        assert_eq!(PruneRate::new(0.5).unwrap().rounds_for(s(0.75)), 2);
        assert_eq!(PruneRate::new(0.5).unwrap().rounds_for(s(0.76)), 3);
    }

    /// `rounds_for` gives the fewest rounds whose `after` reaches the target, for rates
    /// from large to so small that no u32 of rounds reaches it (which used to loop).
    #[test]
    fn rounds_for_is_the_fewest_rounds_that_reach_the_target() {
        let rates = [0.9, 0.5, 0.2, 0.01, 1e-4, 1e-6, 1e-9, 1e-10, 1e-17, f64::MIN_POSITIVE];
        let targets = [1e-9, 0.001, 0.1, 0.36, 0.5, 0.9, 0.999, 1.0 - 1e-9];
        for (rate, target) in rates.iter().flat_map(|r| targets.iter().map(move |t| (*r, *t))) {
            let (p, t) = (PruneRate::new(rate).unwrap(), s(target));
            let k = p.rounds_for(t);
            let reaches = |k: u32| p.after(k).get() >= target - 1e-12;
            if k == u32::MAX {
                // Only where the closed form is past u32's range.
                let exact = (-target).ln_1p() / (-rate).ln_1p();
                assert!(exact > f64::from(u32::MAX) - 2.0, "{rate} {target}: {exact}");
            } else {
                assert!(reaches(k), "{rate} {target}: {k}");
                assert!(k == 0 || !reaches(k - 1), "{rate} {target}: {k} is not the fewest");
            }
        }
        // Billions of rounds are answered without listing them.
        let long = Schedule::iterative(s(0.9), u32::MAX).unwrap();
        assert_eq!(long.prune_at(u32::MAX as usize), Some(s(0.9)));
        assert!(long.prune_at(1).is_some_and(|t| t.get() > 0.0 && t.get() < 1e-9));
        assert_eq!(long.prune_at(0), None);
        // Rates too small for 1 - p to differ from 1 still accumulate.
        assert!(PruneRate::new(1e-17).unwrap().after(u32::MAX).get() > 0.0);
    }

    #[test]
    fn polynomial_shape() {
        let sch = Schedule::polynomial(s(0.1), s(0.9), 10, 110, 25).unwrap();
        assert_eq!(sch.target_at(5), Sparsity::ZERO);
        assert_eq!(sch.target_at(10), s(0.1));
        assert_eq!(sch.target_at(1000), s(0.9));
        let steps: Vec<usize> = sch.targets().map(|x| x.0).collect();
        assert_eq!(steps, vec![10, 35, 60, 85, 110]);
        // (1 - 0.5)^3 = 0.125 of the way left at the midpoint.
        assert!((sch.target_at(60).get() - (0.9 - 0.8 * 0.125)).abs() < 1e-12);
        assert_eq!(sch.prune_at(35), Some(sch.target_at(35)));
        assert_eq!(sch.prune_at(36), None);
        assert_eq!(sch.prune_at(110), Some(s(0.9)));
    }

    #[test]
    fn invalid_schedules() {
        let bad = |r: Result<Schedule>| assert!(matches!(r, Err(Error::InvalidSchedule { .. })));
        bad(Schedule::iterative(s(0.5), 0));
        bad(Schedule::iterative(s(1.0), 3));
        bad(Schedule::polynomial(s(0.0), s(0.5), 10, 10, 1));
        bad(Schedule::polynomial(s(0.0), s(0.5), 0, 10, 0));
        bad(Schedule::polynomial(s(0.6), s(0.5), 0, 10, 1));
        assert!(matches!(PruneRate::new(f64::NAN), Err(Error::InvalidRate { .. })));
    }
}
