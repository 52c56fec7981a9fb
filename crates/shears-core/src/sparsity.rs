//! [`Sparsity`], the validated fraction of pruned weights, and the [`Rounding`] rule that
//! turns it into a count.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The fraction of a tensor's (or a whole model's) weights that are pruned, in `[0, 1]`.
///
/// Sparsity is absolute (docs/design.md): 0.9 means 90% of all weights are zero, however many
/// were already pruned before.
///
/// # Invariants
/// The value is finite and in `[0, 1]`; checked by [`Sparsity::new`] and on deserialisation.
///
/// # Examples
/// ```
/// use shears_core::Sparsity;
/// let s = Sparsity::new(0.9)?;
/// assert_eq!(s.get(), 0.9);
/// assert_eq!(s.density(), 1.0 - 0.9);
/// assert!(Sparsity::new(1.5).is_err());
/// assert!(Sparsity::new(f64::NAN).is_err());
/// # Ok::<(), shears_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Sparsity(f64);

impl Sparsity {
    /// No weight pruned.
    pub const ZERO: Sparsity = Sparsity(0.0);
    /// Every weight pruned.
    pub const ONE: Sparsity = Sparsity(1.0);

    /// Validates a fraction.
    ///
    /// # Errors
    /// [`Error::InvalidSparsity`] if `value` is NaN or outside `[0, 1]`.
    pub fn new(value: f64) -> Result<Self> {
        if (0.0..=1.0).contains(&value) {
            // -0.0 is in the range; adding 0.0 makes it 0.0, so it never prints as "-0".
            Ok(Sparsity(value + 0.0))
        } else {
            Err(Error::InvalidSparsity { value })
        }
    }

    /// The fraction of `pruned` out of `total` elements (`0` when `total == 0`).
    pub fn from_counts(pruned: usize, total: usize) -> Self {
        if total == 0 {
            Sparsity::ZERO
        } else {
            Sparsity((pruned.min(total)) as f64 / total as f64)
        }
    }

    /// The fraction as a float.
    pub fn get(self) -> f64 {
        self.0
    }

    /// The kept fraction, `1 - sparsity`.
    pub fn density(self) -> f64 {
        1.0 - self.0
    }

    /// How many of `n` elements to prune under the given rounding rule.
    ///
    /// ```
    /// use shears_core::{Rounding, Sparsity};
    /// let s = Sparsity::new(0.5)?;
    /// assert_eq!(s.count_of(5, Rounding::HalfEven), 2); // 2.5 rounds to even
    /// assert_eq!(s.count_of(7, Rounding::HalfEven), 4); // 3.5 rounds to even
    /// assert_eq!(s.count_of(5, Rounding::Ceil), 3);
    /// assert_eq!(s.count_of(5, Rounding::Truncate), 2);
    /// # Ok::<(), shears_core::Error>(())
    /// ```
    pub fn count_of(self, n: usize, rounding: Rounding) -> usize {
        rounding.apply(self.0 * n as f64).min(n)
    }
}

impl TryFrom<f64> for Sparsity {
    type Error = Error;
    fn try_from(value: f64) -> Result<Self> {
        Sparsity::new(value)
    }
}

/// A number in `[0, 1]`, surrounding spaces allowed.
///
/// ```
/// use shears_core::Sparsity;
/// assert_eq!(" 0.9".parse::<Sparsity>()?.get(), 0.9);
/// assert!("1.5".parse::<Sparsity>().is_err());
/// assert!("half".parse::<Sparsity>().is_err());
/// # Ok::<(), shears_core::Error>(())
/// ```
impl std::str::FromStr for Sparsity {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        // A percentage is not taken as one (is "50%" 0.5 or a typo?), but named as one.
        let percent = s.trim().strip_suffix('%').and_then(|p| p.trim().parse::<f64>().ok());
        let value: f64 = s.trim().parse().map_err(|_| Error::Parse {
            what: "sparsity",
            value: s.to_owned(),
            expected: match percent {
                Some(_) => "a fraction in [0, 1], not a percentage (50% is 0.5)",
                None => "a number in [0, 1]",
            },
        })?;
        Sparsity::new(value)
    }
}

impl From<Sparsity> for f64 {
    fn from(s: Sparsity) -> f64 {
        s.0
    }
}

impl std::fmt::Display for Sparsity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// How `sparsity * n` (computed in `f64`) becomes a whole number of pruned weights.
///
/// Tools disagree: PyTorch's `torch.nn.utils.prune` and TensorFlow round half to even;
/// Torch-Pruning, Intel Neural Compressor and Wanda truncate; OpenLTH takes the ceiling.
/// Pick the rule of the tool whose counts you need to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, Serialize, Deserialize)]
pub enum Rounding {
    /// Round to nearest, ties to even, as `torch.nn.utils.prune` does (the default).
    #[default]
    HalfEven,
    /// Round toward zero, as Torch-Pruning, Intel Neural Compressor and Wanda do.
    Truncate,
    /// Round up, as OpenLTH does.
    Ceil,
}

impl Rounding {
    /// The names [`Rounding`]'s `FromStr` and `Display` use, in declaration order.
    pub const NAMES: &'static str = "half-even, truncate or ceil";

    /// Applies the rule to a non-negative product.
    pub fn apply(self, x: f64) -> usize {
        let rounded = match self {
            Rounding::HalfEven => x.round_ties_even(),
            Rounding::Truncate => x.trunc(),
            Rounding::Ceil => x.ceil(),
        };
        // The product is in [0, n] for a valid sparsity; `as` saturates anyway.
        rounded.max(0.0) as usize
    }
}

impl std::str::FromStr for Rounding {
    type Err = Error;
    /// `half-even`, `truncate` or `ceil`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "half-even" => Ok(Rounding::HalfEven),
            "truncate" => Ok(Rounding::Truncate),
            "ceil" => Ok(Rounding::Ceil),
            _ => Err(Error::Parse { what: "rounding", value: s.to_owned(), expected: Self::NAMES }),
        }
    }
}

impl std::fmt::Display for Rounding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rounding::HalfEven => "half-even",
            Rounding::Truncate => "truncate",
            Rounding::Ceil => "ceil",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_names_round_trip() {
        for r in [Rounding::HalfEven, Rounding::Truncate, Rounding::Ceil] {
            assert_eq!(r.to_string().parse::<Rounding>(), Ok(r));
        }
        let err = "nearest".parse::<Rounding>().unwrap_err();
        assert!(matches!(err, Error::Parse { what: "rounding", .. }));
        assert!(err.to_string().contains("half-even, truncate or ceil"), "{err}");
    }

    #[test]
    fn negative_zero_is_zero() {
        let zero = Sparsity::new(-0.0).unwrap();
        assert_eq!(zero.get().to_bits(), 0.0f64.to_bits());
        assert_eq!(format!("{:.4}", zero.get()), "0.0000");
    }

    #[track_caller]
    fn check(s: f64, n: usize, rounding: Rounding, expected: usize) {
        assert_eq!(Sparsity::new(s).map(|s| s.count_of(n, rounding)), Ok(expected));
    }

    #[test]
    fn half_even_matches_torch() {
        // torch: round(0.5 * 5) = 2, round(0.5 * 7) = 4, round(0.3 * 5) = round(1.5) = 2.
        check(0.5, 5, Rounding::HalfEven, 2);
        check(0.5, 7, Rounding::HalfEven, 4);
        check(0.3, 5, Rounding::HalfEven, 2);
        check(0.25, 10, Rounding::HalfEven, 2);
        check(0.35, 10, Rounding::HalfEven, 4); // 0.35 * 10 is exactly 3.5 in f64: ties to 4
        check(0.1, 25, Rounding::HalfEven, 2); // 2.5 ties to 2
        check(0.9, 5, Rounding::HalfEven, 4); // 4.5 ties to 4
        check(0.0, 10, Rounding::HalfEven, 0);
        check(1.0, 10, Rounding::HalfEven, 10);
        check(0.5, 0, Rounding::HalfEven, 0);
    }

    #[test]
    fn other_rules() {
        check(0.25, 10, Rounding::Truncate, 2);
        check(0.25, 10, Rounding::Ceil, 3);
        check(0.999, 10, Rounding::Truncate, 9);
        check(0.001, 10, Rounding::Ceil, 1);
    }

    #[test]
    fn rejects_out_of_range() {
        for bad in [-0.1, 1.0000001, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(matches!(Sparsity::new(bad), Err(Error::InvalidSparsity { .. })), "{bad}");
        }
    }

    #[test]
    fn a_percentage_is_answered_with_its_fraction() {
        let said = |v: f64| Sparsity::new(v).map(drop).unwrap_err().to_string();
        assert_eq!(said(80.0), "sparsity must be in [0, 1], got 80 (a fraction: 80% is 0.8)");
        let percent = "50%".parse::<Sparsity>().unwrap_err().to_string();
        assert!(percent.contains("not a percentage (50% is 0.5)"), "{percent}");
        assert_eq!(said(-0.5), "sparsity must be in [0, 1], got -0.5");
        assert_eq!(said(150.0), "sparsity must be in [0, 1], got 150");
        assert_eq!(said(100.0), "sparsity must be in [0, 1], got 100 (a fraction: 100% is 1)");
        // Two decimals at most, and the fraction written as the percentage is.
        for (percent, fraction) in [(12.5, "0.125"), (33.33, "0.3333"), (1.5, "0.015")] {
            assert!(said(percent).ends_with(&format!("{percent}% is {fraction})")), "{percent}");
        }
        // Just past 1 is a fraction's rounding, not a percentage.
        assert_eq!(said(1.0000001), "sparsity must be in [0, 1], got 1.0000001");
        assert_eq!(said(7.123), "sparsity must be in [0, 1], got 7.123");
    }

    #[test]
    fn deserialisation_validates() {
        let bad: std::result::Result<Sparsity, _> =
            bincode::serde::decode_from_slice(&[0u8; 0], bincode::config::standard())
                .map(|(s, _)| s);
        assert!(bad.is_err());
        let bytes =
            bincode::serde::encode_to_vec(2.0f64, bincode::config::standard()).unwrap_or_default();
        let decoded: std::result::Result<(Sparsity, usize), _> =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard());
        assert!(decoded.is_err());
    }

    #[test]
    fn counts_and_density() {
        assert_eq!(Sparsity::from_counts(3, 4).get(), 0.75);
        assert_eq!(Sparsity::from_counts(0, 0), Sparsity::ZERO);
        assert_eq!(Sparsity::ONE.density(), 0.0);
    }
}
