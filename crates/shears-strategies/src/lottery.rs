//! The lottery ticket (Frankle & Carbin 2019): iterative magnitude pruning with the kept
//! weights rewound to their initial (or early-training) values before retraining.

use std::collections::BTreeMap;

use nalgebra::DMatrix;
use shears_core::{
    Granularity, LayerContext, Mask, Masks, Prunable, PruningStrategy, Scalar, Selector, Sparsity,
    check_finite,
};

use crate::criteria::Magnitude;
use crate::error::{Error, Result};
use crate::schedule::PruneRate;

/// Iterative magnitude pruning with rewinding.
///
/// Remember each layer's weights at initialisation (or at an early iteration k, for
/// rewinding), train, then per round: [`prune_round`](LotteryTicket::prune_round) removes
/// a fraction `p` of the weights each layer still keeps (so after round k its sparsity is
/// `1-(1-p)^k`), and [`rewind`](LotteryTicket::rewind) resets the kept weights to the
/// remembered values and the pruned ones to zero. Layers may prune at their own rate
/// (the paper prunes the output layer at half the rate). Masks are monotone across
/// rounds.
///
/// As a [`PruningStrategy`] it scores `|w|` of the trained weights, and its
/// [`prune`](PruningStrategy::prune) resets the weights to the masked initial weights
/// (from the context, else from what it remembered for that layer).
///
/// ```
/// use nalgebra::dmatrix;
/// use shears_core::{LayerContext, PruningStrategy, Sparsity};
/// use shears_strategies::LotteryTicket;
///
/// let initial = dmatrix![0.1, 0.2; 0.3, 0.4];
/// let mut trained = dmatrix![0.5, 0.6; 0.7, 0.8];
/// let ticket = LotteryTicket::new(0.2)?;
/// let ctx = LayerContext::new("fc").with_initial(&initial);
/// let mask = ticket.prune(&mut trained, &ctx, Sparsity::new(0.5)?)?;
/// assert_eq!(trained, mask.apply(&initial)?);
/// assert_eq!(trained, dmatrix![0.0, 0.0; 0.3, 0.4]);
/// assert_eq!(ticket.rounds_for(Sparsity::new(0.9)?), 11); // 1 - 0.8^11 >= 0.9
/// # Ok::<(), shears_strategies::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LotteryTicket<T: Scalar> {
    rewind_to: BTreeMap<String, DMatrix<T>>,
    rate: PruneRate,
    layer_rates: BTreeMap<String, PruneRate>,
}

impl<T: Scalar> LotteryTicket<T> {
    /// A ticket search that prunes `rate` of the remaining weights per round.
    ///
    /// # Errors
    /// [`Error::InvalidRate`] unless `0 <= rate < 1`.
    pub fn new(rate: f64) -> Result<Self> {
        Ok(LotteryTicket {
            rewind_to: BTreeMap::new(),
            rate: PruneRate::new(rate)?,
            layer_rates: BTreeMap::new(),
        })
    }

    /// Prunes layer `name` at its own per-round rate.
    ///
    /// # Errors
    /// [`Error::InvalidRate`] unless `0 <= rate < 1`.
    pub fn with_layer_rate(mut self, name: impl Into<String>, rate: f64) -> Result<Self> {
        self.layer_rates.insert(name.into(), PruneRate::new(rate)?);
        Ok(self)
    }

    /// Remembers the weights layer `name` is rewound to.
    pub fn remember(&mut self, name: impl Into<String>, weights: DMatrix<T>) {
        self.rewind_to.insert(name.into(), weights);
    }

    /// Remembers every prunable weight of `model` as it is now (call it at initialisation,
    /// or after k iterations for late rewinding).
    pub fn remember_model<M: Prunable<T> + ?Sized>(&mut self, model: &M) {
        for name in model.prunable_names() {
            if let Some(w) = model.weight(&name) {
                self.rewind_to.insert(name, w.clone());
            }
        }
    }

    /// The remembered weights of layer `name`.
    pub fn remembered(&self, name: &str) -> Option<&DMatrix<T>> {
        self.rewind_to.get(name)
    }

    /// The per-round rate of layer `name`.
    pub fn rate_of(&self, name: &str) -> PruneRate {
        self.layer_rates.get(name).copied().unwrap_or(self.rate)
    }

    /// The sparsity layer `name` reaches after `round` rounds: `1 - (1 - p)^round`.
    pub fn target(&self, name: &str, round: u32) -> Sparsity {
        self.rate_of(name).after(round)
    }

    /// The fewest rounds at the default rate that reach `target`.
    pub fn rounds_for(&self, target: Sparsity) -> u32 {
        self.rate.rounds_for(target)
    }

    /// Round `round` (1-based) of iterative magnitude pruning on every remembered layer of
    /// `model`: each layer's mask in `masks` is tightened to [`LotteryTicket::target`],
    /// choosing only among the weights it still keeps, and the pruned weights are zeroed.
    ///
    /// # Errors
    /// [`shears_core::Error::UnknownLayer`] for a remembered layer the model lacks;
    /// [`Error::MaskShape`] for a stored mask of the wrong shape; non-finite weights.
    /// Every layer is checked and its mask chosen before any changes, so on an error
    /// neither `model` nor `masks` has.
    pub fn prune_round<M: Prunable<T> + ?Sized>(
        &self,
        model: &mut M,
        masks: &mut Masks,
        round: u32,
    ) -> Result<()> {
        let mut chosen = Vec::with_capacity(self.rewind_to.len());
        for name in self.rewind_to.keys() {
            let weights = model.require_weight(name)?;
            let current = masks.get(name);
            check_mask(name, current, weights)?;
            let target = self.target(name, round);
            chosen.push(Selector::new().select_magnitude(name, weights, target, current)?);
        }
        for (name, mask) in self.rewind_to.keys().zip(chosen) {
            mask.apply_in_place(model.require_weight_mut(name)?)?;
            masks.insert(name.clone(), mask);
        }
        Ok(())
    }

    /// Resets every masked layer of `model` to its remembered weights, masked.
    ///
    /// # Errors
    /// [`Error::MissingInitial`] for a masked layer with no remembered weights;
    /// [`shears_core::Error::UnknownLayer`] for a layer the model lacks; [`Error::MaskShape`]
    /// if a mask or remembered matrix does not fit its layer;
    /// [`shears_core::Error::NonFinite`] naming `"<layer>.initial"` for remembered weights
    /// that are not all finite.
    /// Every layer is checked before any is reset, so on an error `model` is unchanged.
    pub fn rewind<M: Prunable<T> + ?Sized>(&self, model: &mut M, masks: &Masks) -> Result<()> {
        for (name, mask) in masks {
            let initial = self
                .rewind_to
                .get(name)
                .ok_or_else(|| Error::MissingInitial { layer: name.clone() })?;
            let weights = model.require_weight(name)?;
            check_mask(name, Some(mask), weights)?;
            if initial.shape() != weights.shape() {
                return Err(Error::MaskShape {
                    layer: name.clone(),
                    mask: initial.shape(),
                    weights: weights.shape(),
                });
            }
            check_finite(&format!("{name}.initial"), initial.as_slice())?;
        }
        for (name, mask) in masks {
            // Checked above: every masked layer has remembered weights of its shape.
            if let Some(initial) = self.rewind_to.get(name) {
                *model.require_weight_mut(name)? = mask.apply(initial)?;
            }
        }
        Ok(())
    }
}

fn check_mask<T: Scalar>(name: &str, mask: Option<&Mask>, weights: &DMatrix<T>) -> Result<()> {
    match mask {
        Some(m) if m.shape() != weights.shape() => Err(Error::MaskShape {
            layer: name.to_owned(),
            mask: m.shape(),
            weights: weights.shape(),
        }),
        _ => Ok(()),
    }
}

/// Scores and masks are [`Magnitude`]'s, on the trained weights.
impl<T: Scalar> PruningStrategy<T> for LotteryTicket<T> {
    fn scores(
        &self,
        weights: &DMatrix<T>,
        ctx: &LayerContext<'_, T>,
    ) -> shears_core::Result<DMatrix<T>> {
        Magnitude.scores(weights, ctx)
    }

    fn granularity(&self) -> Granularity {
        Granularity::Unstructured
    }

    fn scores_are_magnitude(&self) -> bool {
        true
    }

    fn prune(
        &self,
        weights: &mut DMatrix<T>,
        ctx: &LayerContext<'_, T>,
        sparsity: Sparsity,
    ) -> shears_core::Result<Mask> {
        let initial = match ctx.initial() {
            Some(_) => ctx.require_initial(weights)?,
            None => match self.rewind_to.get(ctx.name()) {
                Some(m) => ctx.with_initial(m).require_initial(weights)?,
                None => return Err(ctx.missing(shears_core::LayerInput::InitialWeights)),
            },
        };
        let mask = self.mask(weights, ctx, sparsity)?;
        *weights = mask.apply(initial)?;
        Ok(mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::dmatrix;

    struct Model(BTreeMap<String, DMatrix<f64>>);
    impl Prunable<f64> for Model {
        fn prunable_names(&self) -> Vec<String> {
            self.0.keys().cloned().collect()
        }
        fn weight(&self, name: &str) -> Option<&DMatrix<f64>> {
            self.0.get(name)
        }
        fn weight_mut(&mut self, name: &str) -> Option<&mut DMatrix<f64>> {
            self.0.get_mut(name)
        }
    }

    fn model() -> Model {
        Model(BTreeMap::from([
            ("hidden".into(), DMatrix::from_fn(10, 10, |r, c| (r * 10 + c) as f64 / 100.0 + 0.01)),
            ("out".into(), DMatrix::from_fn(2, 10, |r, c| (r * 10 + c) as f64 / 20.0 + 0.01)),
        ]))
    }

    #[test]
    fn rounds_are_monotone_and_rewind() {
        let mut m = model();
        let mut ticket = LotteryTicket::new(0.2).unwrap().with_layer_rate("out", 0.1).unwrap();
        ticket.remember_model(&m);
        let init = m.0.clone();
        // "Train": scale every weight.
        m.0.values_mut().for_each(|w| *w *= 3.0);
        let mut masks = Masks::new();
        let mut previous: Option<Masks> = None;
        for round in 1..=4 {
            ticket.prune_round(&mut m, &mut masks, round).unwrap();
            assert_eq!(
                masks["hidden"].count_pruned(),
                ticket.target("hidden", round).count_of(100, Default::default())
            );
            assert_eq!(
                masks["out"].count_pruned(),
                ticket.target("out", round).count_of(20, Default::default())
            );
            if let Some(prev) = &previous {
                for (name, mask) in &masks {
                    assert!(mask.is_subset_of(&prev[name]).unwrap());
                }
            }
            ticket.rewind(&mut m, &masks).unwrap();
            for (name, w) in &m.0 {
                assert_eq!(w, &masks[name].apply(&init[name]).unwrap());
            }
            previous = Some(masks.clone());
        }
        assert!((ticket.target("hidden", 4).get() - (1.0 - 0.8f64.powi(4))).abs() < 1e-12);
    }

    #[test]
    fn missing_initial_is_an_error() {
        let mut m = model();
        let ticket = LotteryTicket::<f64>::new(0.2).unwrap();
        let masks = Masks::from([("hidden".to_string(), Mask::all_kept(10, 10).unwrap())]);
        assert_eq!(
            ticket.rewind(&mut m, &masks),
            Err(Error::MissingInitial { layer: "hidden".into() })
        );
        let mut w = dmatrix![1.0, 2.0];
        let err = ticket.prune(&mut w, &LayerContext::new("x"), Sparsity::ZERO).unwrap_err();
        assert!(matches!(err, shears_core::Error::MissingInput { .. }));
    }

    #[test]
    fn bad_inputs() {
        assert!(matches!(LotteryTicket::<f32>::new(1.0), Err(Error::InvalidRate { .. })));
        assert!(matches!(LotteryTicket::<f32>::new(-0.1), Err(Error::InvalidRate { .. })));
        let mut m = model();
        let mut ticket = LotteryTicket::new(0.2).unwrap();
        ticket.remember("missing", DMatrix::zeros(1, 1));
        let err = ticket.prune_round(&mut m, &mut Masks::new(), 1).unwrap_err();
        assert!(matches!(err, Error::Core(shears_core::Error::UnknownLayer { .. })));
        let mut ticket = LotteryTicket::new(0.2).unwrap();
        ticket.remember_model(&m);
        let mut wrong = Masks::from([("hidden".to_string(), Mask::all_kept(3, 3).unwrap())]);
        assert!(matches!(ticket.prune_round(&mut m, &mut wrong, 1), Err(Error::MaskShape { .. })));
        assert!(matches!(ticket.rewind(&mut m, &wrong), Err(Error::MaskShape { .. })));
    }

    #[test]
    fn a_failing_layer_leaves_every_layer_as_it_was() {
        let mut m = model();
        let mut ticket = LotteryTicket::new(0.2).unwrap();
        ticket.remember_model(&m);
        let before = m.0.clone();
        // "hidden" comes first and fits; "out"'s mask does not.
        let mut masks = Masks::from([
            ("hidden".to_string(), Mask::all_kept(10, 10).unwrap()),
            ("out".to_string(), Mask::all_kept(3, 3).unwrap()),
        ]);
        let kept = masks.clone();
        assert!(matches!(ticket.prune_round(&mut m, &mut masks, 1), Err(Error::MaskShape { .. })));
        assert_eq!((&m.0, &masks), (&before, &kept));
        assert!(matches!(ticket.rewind(&mut m, &masks), Err(Error::MaskShape { .. })));
        assert_eq!(m.0, before);
        // Remembered weights that are not finite are named, and nothing is reset.
        let mut scaled = model();
        scaled.0.values_mut().for_each(|w| *w *= 3.0);
        let trained = scaled.0.clone();
        ticket.remember("out", DMatrix::from_element(2, 10, f64::NAN));
        masks.insert("out".into(), Mask::all_kept(2, 10).unwrap());
        let err = ticket.rewind(&mut scaled, &masks).unwrap_err();
        assert_eq!(
            err,
            shears_core::Error::NonFinite { tensor: "out.initial".into(), index: 0 }.into()
        );
        assert_eq!(scaled.0, trained);
    }

    #[test]
    fn remembered_weights_serve_prune() {
        let mut ticket = LotteryTicket::new(0.5).unwrap();
        ticket.remember("fc", dmatrix![0.1, 0.2; 0.3, 0.4]);
        let mut trained = dmatrix![0.5, 0.6; 0.7, 0.8];
        ticket.prune(&mut trained, &LayerContext::new("fc"), Sparsity::new(0.5).unwrap()).unwrap();
        assert_eq!(trained, dmatrix![0.0, 0.0; 0.3, 0.4]);
        assert_eq!(ticket.remembered("fc").map(|m| m.shape()), Some((2, 2)));
    }
}
