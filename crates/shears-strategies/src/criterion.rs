//! [`Criterion`]: the scoring criteria by name, the vocabulary the command line and the
//! experiments share.

use nalgebra::DMatrix;
use shears_core::{
    Granularity, LayerContext, LayerInput, Mask, PruningStrategy, Result, Scalar, Sparsity,
};

use crate::criteria::{Gradient, Magnitude, Random, Wanda};

/// A criterion that scores single weights, chosen by name.
///
/// It is a [`PruningStrategy`] itself (each variant behaves exactly as the criterion's own
/// type), so a [`Pruner`](crate::Pruner)`<Criterion>` built once from a command line's
/// `--method` prunes every tensor without boxing. What a variant needs from the
/// [`LayerContext`] is [`Criterion::needs`].
///
/// ```
/// use nalgebra::dmatrix;
/// use shears_core::{LayerContext, LayerInput, PruningStrategy, Sparsity};
/// use shears_strategies::Criterion;
///
/// let criterion: Criterion = "magnitude".parse()?;
/// let mask = criterion.mask(&dmatrix![0.1, -0.9; 0.2, 0.8], &LayerContext::new("fc"), Sparsity::new(0.5)?)?;
/// assert_eq!(mask.count_kept(), 2);
/// assert_eq!("random".parse::<Criterion>()?.with_seed(7), Criterion::Random { seed: 7 });
/// assert_eq!(Criterion::Gradient.needs(), Some(LayerInput::Gradients));
/// assert!("l1".parse::<Criterion>().is_err());
/// # Ok::<(), shears_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Criterion {
    /// `|w|` ([`Magnitude`]).
    Magnitude,
    /// `|w·g|` with gradients from the context ([`Gradient`]).
    Gradient,
    /// Seeded uniform scores ([`Random`]).
    Random {
        /// The seed.
        seed: u64,
    },
    /// `|w|·||x||` with activation norms from the context, compared within each row
    /// ([`Wanda`]).
    Wanda,
}

impl Criterion {
    /// The names [`Criterion`]'s `FromStr` and `Display` use.
    pub const NAMES: &'static str = "magnitude, gradient, random or wanda";

    /// The same criterion with `seed` (only [`Criterion::Random`] has one).
    pub fn with_seed(self, seed: u64) -> Self {
        match self {
            Criterion::Random { .. } => Criterion::Random { seed },
            other => other,
        }
    }

    /// The per-layer data the criterion reads from the context, if any.
    pub fn needs(self) -> Option<LayerInput> {
        match self {
            Criterion::Gradient => Some(LayerInput::Gradients),
            Criterion::Wanda => Some(LayerInput::ActivationNorms),
            Criterion::Magnitude | Criterion::Random { .. } => None,
        }
    }

    /// The criterion's own strategy, to which every call is forwarded.
    fn strategy<T: Scalar>(self) -> Box<dyn PruningStrategy<T>> {
        match self {
            Criterion::Magnitude => Box::new(Magnitude),
            Criterion::Gradient => Box::new(Gradient),
            Criterion::Random { seed } => Box::new(Random::new(seed)),
            Criterion::Wanda => Box::new(Wanda),
        }
    }
}

/// `magnitude`, `gradient`, `random` (seed 0; see [`Criterion::with_seed`]) or `wanda`.
impl std::str::FromStr for Criterion {
    type Err = shears_core::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "magnitude" => Ok(Criterion::Magnitude),
            "gradient" => Ok(Criterion::Gradient),
            "random" => Ok(Criterion::Random { seed: 0 }),
            "wanda" => Ok(Criterion::Wanda),
            _ => Err(shears_core::Error::Parse {
                what: "criterion",
                value: s.to_owned(),
                expected: Self::NAMES,
            }),
        }
    }
}

impl std::fmt::Display for Criterion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Criterion::Magnitude => "magnitude",
            Criterion::Gradient => "gradient",
            Criterion::Random { .. } => "random",
            Criterion::Wanda => "wanda",
        })
    }
}

impl<T: Scalar> PruningStrategy<T> for Criterion {
    fn scores(&self, weights: &DMatrix<T>, ctx: &LayerContext<'_, T>) -> Result<DMatrix<T>> {
        self.strategy().scores(weights, ctx)
    }

    fn granularity(&self) -> Granularity {
        Granularity::Unstructured
    }

    fn requires_gradients(&self) -> bool {
        *self == Criterion::Gradient
    }

    fn scores_are_magnitude(&self) -> bool {
        *self == Criterion::Magnitude
    }

    fn mask(
        &self,
        weights: &DMatrix<T>,
        ctx: &LayerContext<'_, T>,
        sparsity: Sparsity,
    ) -> Result<Mask> {
        self.strategy().mask(weights, ctx, sparsity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::{dmatrix, dvector};

    /// Each variant gives its own type's mask.
    #[test]
    fn variants_behave_as_their_criteria() {
        let w = dmatrix![0.1, -0.9, 0.3; 0.2, 0.8, -0.05];
        let g = dmatrix![5.0, 0.1, 1.0; 0.1, 0.2, 9.0];
        let norms = dvector![4.0, 0.1, 1.0];
        let ctx = LayerContext::new("fc").with_gradients(&g).with_activation_norms(&norms);
        let s = Sparsity::new(0.5).unwrap();
        let pairs: [(Criterion, &dyn PruningStrategy<f64>); 4] = [
            (Criterion::Magnitude, &Magnitude),
            (Criterion::Gradient, &Gradient),
            (Criterion::Random { seed: 3 }, &Random::new(3)),
            (Criterion::Wanda, &Wanda),
        ];
        for (criterion, strategy) in pairs {
            assert_eq!(criterion.mask(&w, &ctx, s), strategy.mask(&w, &ctx, s), "{criterion}");
            assert_eq!(criterion.scores(&w, &ctx), strategy.scores(&w, &ctx), "{criterion}");
            assert_eq!(
                criterion.to_string().parse::<Criterion>().map(|c| c.with_seed(3)),
                Ok(criterion.with_seed(3))
            );
        }
        assert!(matches!("sparsegpt".parse::<Criterion>(), Err(shears_core::Error::Parse { .. })));
    }
}
