//! [`Pattern`]: the structure a pruned weight keeps, and [`Pruner`], which combines any
//! criterion with any pattern.

use nalgebra::{DMatrix, DVector};
use shears_core::{
    BlockShape, Granularity, GroupLayout, LayerContext, Mask, NmPattern, PruningStrategy,
    Reduction, Result, Rounding, Scalar, Selector, Sparsity, WeightShape, unstructured_mask,
};

use crate::error::Error;
use crate::nm::nm_mask;

/// The axis whose whole slices structured pruning removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Axis {
    /// Rows of a dense weight: output neurons (their bias entries go with them).
    Rows,
    /// Columns of a dense weight: inputs.
    Columns,
    /// Convolution filters (output channels; their bias entries go with them).
    Filters,
    /// Convolution input channels (`kh*kw` adjacent columns of the matrix view).
    Channels,
}

impl std::fmt::Display for Axis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Axis::Rows => "rows",
            Axis::Columns => "columns",
            Axis::Filters => "filters",
            Axis::Channels => "channels",
        })
    }
}

impl Axis {
    fn granularity(self) -> Granularity {
        match self {
            Axis::Rows => Granularity::Rows,
            Axis::Columns => Granularity::Columns,
            Axis::Filters => Granularity::Filters,
            Axis::Channels => Granularity::Channels,
        }
    }

    /// Whether removing a slice removes an output (and so its bias entry).
    pub fn removes_outputs(self) -> bool {
        matches!(self, Axis::Rows | Axis::Filters)
    }
}

/// Options of structured pruning: the axis, how a slice's scores reduce to one, and an
/// optional multiple that the number of kept slices is rounded up to.
///
/// ```
/// use shears_core::Reduction;
/// use shears_strategies::{Axis, Structured};
/// let s = Structured::new(Axis::Rows).with_reduction(Reduction::L1).round_kept_to(8)?;
/// assert_eq!(s.axis(), Axis::Rows);
/// assert!(Structured::new(Axis::Rows).round_kept_to(0).is_err());
/// # Ok::<(), shears_strategies::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Structured {
    axis: Axis,
    reduction: Reduction,
    multiple: usize,
}

impl Structured {
    /// Structured pruning along `axis`, slices scored by the L2 norm of their scores.
    pub fn new(axis: Axis) -> Self {
        Structured { axis, reduction: Reduction::L2, multiple: 1 }
    }

    /// How a slice's per-weight scores reduce to its score (L2 by default, as
    /// `ln_structured(n=2)`; use [`Reduction::Sum`] for importances such as `|w·g|`).
    pub fn with_reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }

    /// Rounds the number of kept slices *up* to a multiple of `multiple` (8 or 16 suit
    /// SIMD widths after compaction), never past the slice count. Rounding up means
    /// never pruning more than asked.
    ///
    /// # Errors
    /// [`Error::ZeroMultiple`] if `multiple == 0`.
    pub fn round_kept_to(mut self, multiple: usize) -> Result<Self, Error> {
        if multiple == 0 {
            return Err(Error::ZeroMultiple);
        }
        self.multiple = multiple;
        Ok(self)
    }

    /// The axis.
    pub fn axis(&self) -> Axis {
        self.axis
    }

    /// The slice reduction.
    pub fn reduction(&self) -> Reduction {
        self.reduction
    }

    /// The kept-slice multiple (1 = no rounding).
    pub fn multiple(&self) -> usize {
        self.multiple
    }
}

/// The structure of what a pruned weight keeps.
///
/// The sparsity passed with a pattern means: for `Unstructured` and `PerRow` the
/// fraction of weights (of each row, for `PerRow`); for `Structured` and `Blocks` the
/// fraction of slices or blocks; for `NM` it must be `1 - N/M` (the pattern fixes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Pattern {
    /// Single weights, the whole tensor compared at once.
    Unstructured,
    /// Single weights, each row pruned to the target on its own (row-balanced).
    PerRow,
    /// Whole rows, columns, filters or channels.
    Structured(Structured),
    /// N of every M consecutive weights along a row kept; for a convolution weight (a
    /// [`WeightShape`] in the context), N of every M input channels at each kernel
    /// position of a filter, the `(out, kh, kw, in)` grouping of NVIDIA's ASP.
    NM(NmPattern),
    /// Whole blocks, scored by a reduction of their weights' scores.
    Blocks {
        /// The block shape.
        shape: BlockShape,
        /// How a block's scores reduce to one.
        reduction: Reduction,
    },
}

impl Pattern {
    /// Checks that this pattern, at `sparsity`, fits a weight of `shape` so that pruning
    /// reaches the target, before any weight is read:
    ///
    /// - N:M needs `sparsity == 1 - N/M` and whole groups: the matrix view's columns a
    ///   multiple of M (for a convolution, whose groups run along the input channels at
    ///   each kernel position, its input channels a multiple of M);
    /// - blocks need whole blocks: rows and columns multiples of the block's sides;
    /// - structured patterns (rows, columns, filters, channels) need the target to round
    ///   to a count that prunes some slices and keeps some (for a target strictly
    ///   between 0 and 1): `rows` at 0.5 on a one-row weight would prune nothing;
    /// - unstructured and per-row patterns fit every shape.
    ///
    /// A weight with no elements fits every pattern (there is nothing to prune).
    ///
    /// ```
    /// use shears_core::{Sparsity, WeightShape};
    /// use shears_strategies::Pattern;
    ///
    /// let half = Sparsity::new(0.5)?;
    /// let two_four: Pattern = "2:4".parse()?;
    /// assert!(two_four.check_fits("fc", &WeightShape::dense(10, 32)?, half).is_ok());
    /// assert!(two_four.check_fits("fc", &WeightShape::dense(10, 30)?, half).is_err());
    /// let rows: Pattern = "rows".parse()?;
    /// assert!(rows.check_fits("fc", &WeightShape::dense(1, 30)?, half).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::PatternDoesNotFit`] naming the tensor and the reason;
    /// [`shears_core::Error::NmSparsityMismatch`] for an N:M pattern at another sparsity;
    /// [`shears_core::Error::NotConvolution`] for filters or channels of a dense weight.
    pub fn check_fits(
        &self,
        tensor: &str,
        shape: &WeightShape,
        sparsity: Sparsity,
    ) -> Result<(), Error> {
        let misfit = |reason: String| Error::PatternDoesNotFit {
            tensor: tensor.to_owned(),
            pattern: self.to_string(),
            reason,
        };
        self.check_sparsity(sparsity)?;
        let (rows, cols) = shape.matrix_shape();
        match *self {
            Pattern::NM(p) => match shape.conv_dims() {
                _ if shape.is_empty() => Ok(()),
                Some((_, in_channels, _, _)) if in_channels % p.m() != 0 => Err(misfit(format!(
                    "its {in_channels} input channels are not whole groups of {}",
                    p.m()
                ))),
                None if cols % p.m() != 0 => {
                    Err(misfit(format!("its {cols} columns are not whole groups of {}", p.m())))
                }
                _ => Ok(()),
            },
            Pattern::Blocks { shape: b, .. } => {
                if shape.is_empty() || (rows % b.rows() == 0 && cols % b.cols() == 0) {
                    Ok(())
                } else {
                    Err(misfit(format!("its {rows}x{cols} matrix is not whole {b} blocks")))
                }
            }
            Pattern::Structured(s) => {
                let layout = GroupLayout::new(tensor, s.axis.granularity(), shape)?;
                let groups = layout.count();
                let pruned = sparsity.count_of(groups, Rounding::HalfEven);
                let strict = sparsity.get() > 0.0 && sparsity.get() < 1.0;
                if shape.is_empty() || !strict || (pruned > 0 && pruned < groups) {
                    Ok(())
                } else {
                    let what = if pruned == 0 { "none" } else { "all" };
                    Err(misfit(format!(
                        "{} of its {groups} {} round to {what} of them; use another sparsity or pattern",
                        sparsity, s.axis
                    )))
                }
            }
            Pattern::Unstructured | Pattern::PerRow => Ok(()),
        }
    }

    /// Checks the one constraint between a pattern and a sparsity that needs no shape:
    /// an N:M pattern prunes exactly `1 - N/M`, which a sparsity written to three or
    /// more decimals (`0.667` for 1:3) is taken to mean.
    ///
    /// # Errors
    /// [`shears_core::Error::NmSparsityMismatch`].
    pub fn check_sparsity(&self, sparsity: Sparsity) -> Result<()> {
        /// Half the last digit of a fraction written to three decimals.
        const WRITTEN: f64 = 5e-4;
        match *self {
            Pattern::NM(p)
                if (sparsity.get() - (1.0 - p.n() as f64 / p.m() as f64)).abs() > WRITTEN =>
            {
                Err(shears_core::Error::NmSparsityMismatch { pattern: p, sparsity: sparsity.get() })
            }
            _ => Ok(()),
        }
    }

    /// The granularity this pattern prunes at.
    pub fn granularity(&self) -> Granularity {
        match self {
            Pattern::Unstructured | Pattern::PerRow => Granularity::Unstructured,
            Pattern::Structured(s) => s.axis.granularity(),
            Pattern::NM(p) => Granularity::NM(*p),
            Pattern::Blocks { shape, .. } => Granularity::Blocks(*shape),
        }
    }
}

impl Pattern {
    /// The forms [`Pattern`]'s `FromStr` takes.
    pub const FORMS: &'static str = "unstructured, per-row, rows, columns, filters, channels, N:M (like 2:4) or block:RxC (like block:4x4)";
}

/// Parses the names [`Display`](std::fmt::Display) writes: `unstructured`, `per-row`,
/// `rows`, `columns`, `filters`, `channels` (structured, slices scored by their L2 norm),
/// `N:M` (`2:4`) and `block:RxC` (`block:4x4`, blocks scored by their L2 norm).
///
/// ```
/// use shears_core::NmPattern;
/// use shears_strategies::{Axis, Pattern, Structured};
///
/// assert_eq!("2:4".parse::<Pattern>()?, Pattern::NM(NmPattern::TWO_FOUR));
/// assert_eq!("rows".parse::<Pattern>()?, Pattern::Structured(Structured::new(Axis::Rows)));
/// assert_eq!("block:4x2".parse::<Pattern>()?.to_string(), "block:4x2");
/// assert!("diagonal".parse::<Pattern>().is_err());
/// # Ok::<(), shears_core::Error>(())
/// ```
impl std::str::FromStr for Pattern {
    type Err = shears_core::Error;

    fn from_str(s: &str) -> Result<Self> {
        let structured = |axis| Pattern::Structured(Structured::new(axis));
        Ok(match s {
            "unstructured" => Pattern::Unstructured,
            "per-row" => Pattern::PerRow,
            "rows" => structured(Axis::Rows),
            "columns" => structured(Axis::Columns),
            "filters" => structured(Axis::Filters),
            "channels" => structured(Axis::Channels),
            _ if s.starts_with("block:") => Pattern::Blocks {
                shape: s["block:".len()..].parse::<BlockShape>()?,
                reduction: Reduction::L2,
            },
            _ if s.contains(':') => Pattern::NM(s.parse()?),
            _ => {
                return Err(shears_core::Error::Parse {
                    what: "pattern",
                    value: s.to_owned(),
                    expected: Self::FORMS,
                });
            }
        })
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Unstructured => f.write_str("unstructured"),
            Pattern::PerRow => f.write_str("per-row"),
            Pattern::Structured(s) => write!(f, "{}", s.axis),
            Pattern::NM(p) => write!(f, "{p}"),
            Pattern::Blocks { shape, .. } => write!(f, "block:{shape}"),
        }
    }
}

/// Any criterion with any pattern: the criterion scores the weights, the pattern decides
/// the shape of what is kept.
///
/// ```
/// use nalgebra::dmatrix;
/// use shears_core::{LayerContext, NmPattern, PruningStrategy, Sparsity};
/// use shears_strategies::{Gradient, Pattern, Pruner};
///
/// // Gradient scores with 2:4 structure.
/// let w = dmatrix![1.0, 1.0, 1.0, 1.0];
/// let g = dmatrix![0.1, 0.4, 0.3, 0.2];
/// let pruner = Pruner::new(Gradient).with_pattern(Pattern::NM(NmPattern::TWO_FOUR));
/// let mask = pruner.mask(&w, &LayerContext::new("fc").with_gradients(&g), Sparsity::new(0.5)?)?;
/// assert_eq!(mask.to_matrix(), dmatrix![false, true, true, false]);
/// # Ok::<(), shears_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruner<S> {
    criterion: S,
    pattern: Pattern,
    rounding: Rounding,
}

impl<S> Pruner<S> {
    /// Unstructured pruning with `criterion`.
    pub fn new(criterion: S) -> Self {
        Pruner { criterion, pattern: Pattern::Unstructured, rounding: Rounding::HalfEven }
    }

    /// Sets the pattern.
    pub fn with_pattern(mut self, pattern: Pattern) -> Self {
        self.pattern = pattern;
        self
    }

    /// Sets how `sparsity * n` becomes a count (half-even by default).
    pub fn with_rounding(mut self, rounding: Rounding) -> Self {
        self.rounding = rounding;
        self
    }

    /// The criterion.
    pub fn criterion(&self) -> &S {
        &self.criterion
    }

    /// The pattern in use.
    pub fn pattern(&self) -> Pattern {
        self.pattern
    }

    /// The rounding in use.
    pub fn rounding(&self) -> Rounding {
        self.rounding
    }

    /// The output neurons (rows) whose bias entries go with `mask`: the fully pruned
    /// rows when the pattern removes rows or filters, else none (an unstructured mask
    /// that happens to empty a row leaves that neuron's bias, which still feeds the next
    /// layer through the activation).
    pub fn pruned_bias(&self, mask: &Mask) -> Vec<usize> {
        match self.pattern {
            Pattern::Structured(s) if s.axis.removes_outputs() => mask.fully_pruned_rows(),
            _ => Vec::new(),
        }
    }

    /// Zeroes the bias entries that [`Pruner::pruned_bias`] names.
    ///
    /// # Errors
    /// [`shears_core::Error::LengthMismatch`] if `bias` has not one entry per mask row.
    pub fn prune_bias<T: Scalar>(&self, mask: &Mask, bias: &mut DVector<T>) -> Result<()> {
        if bias.len() != mask.nrows() {
            return Err(shears_core::Error::LengthMismatch {
                what: "bias",
                expected: mask.nrows(),
                got: bias.len(),
            });
        }
        for r in self.pruned_bias(mask) {
            bias[r] = T::zero();
        }
        Ok(())
    }
}

impl<T: Scalar, S: PruningStrategy<T>> PruningStrategy<T> for Pruner<S> {
    fn scores(&self, weights: &DMatrix<T>, ctx: &LayerContext<'_, T>) -> Result<DMatrix<T>> {
        self.criterion.scores(weights, ctx)
    }

    fn granularity(&self) -> Granularity {
        self.pattern.granularity()
    }

    fn requires_gradients(&self) -> bool {
        self.criterion.requires_gradients()
    }

    fn scores_are_magnitude(&self) -> bool {
        self.criterion.scores_are_magnitude()
    }

    fn mask(
        &self,
        weights: &DMatrix<T>,
        ctx: &LayerContext<'_, T>,
        sparsity: Sparsity,
    ) -> Result<Mask> {
        if weights.is_empty() {
            // Nothing to prune; and no group layout is sized from the dimensions of an
            // empty matrix (a `[0, 2^33]` weight has no element but 2^33 columns).
            return Mask::all_kept(weights.nrows(), weights.ncols());
        }
        let selector = Selector::new().with_rounding(self.rounding);
        let name = ctx.name();
        let scores = || self.criterion.scores(weights, ctx);
        match self.pattern {
            Pattern::Unstructured => {
                unstructured_mask(&self.criterion, selector, weights, ctx, sparsity)
            }
            Pattern::PerRow => selector.select_per_row(name, &scores()?, sparsity, ctx.mask()),
            Pattern::NM(p) => {
                self.pattern.check_sparsity(sparsity)?;
                if let Some(kept) = ctx.mask()
                    && kept.shape() != weights.shape()
                {
                    return Err(shears_core::Error::ShapeMismatch {
                        op: "N:M selection among kept weights",
                        expected: weights.shape(),
                        got: kept.shape(),
                    });
                }
                let shape = ctx.shape_or_dense(weights);
                match shape.conv_dims() {
                    Some((_, in_channels, kh, kw)) => {
                        check_view(&shape, weights)?;
                        conv_nm_mask(name, &scores()?, p, ctx.mask(), in_channels, kh * kw)
                    }
                    None => nm_mask(name, &scores()?, p, ctx.mask()),
                }
            }
            Pattern::Structured(s) => {
                let shape = ctx.shape_or_dense(weights);
                check_view(&shape, weights)?;
                let layout = GroupLayout::new(name, s.axis.granularity(), &shape)?;
                let group_scores = layout.reduce(name, &scores()?, s.reduction)?;
                let groups = layout.count();
                let kept_now = match ctx.mask() {
                    Some(m) => layout.kept_groups(m)?.iter().filter(|&&k| k).count(),
                    None => groups,
                };
                let target_kept = groups - sparsity.count_of(groups, self.rounding);
                let target_kept = (target_kept.div_ceil(s.multiple) * s.multiple).min(groups);
                let count = kept_now.saturating_sub(target_kept);
                selector.prune_lowest_groups(name, &layout, &group_scores, count, ctx.mask())
            }
            Pattern::Blocks { shape, reduction } => {
                let layout = GroupLayout::new(
                    name,
                    Granularity::Blocks(shape),
                    &ctx.shape_or_dense(weights),
                )?;
                let group_scores = layout.reduce(name, &scores()?, reduction)?;
                selector.select_groups(name, &layout, &group_scores, sparsity, ctx.mask())
            }
        }
    }
}

/// N:M for a convolution weight, its groups along the input channels: the matrix view's
/// columns `(in, kh, kw)` are taken in the `(kh, kw, in)` order NVIDIA's ASP prunes
/// convolutions in, so each group is M input channels at one kernel position.
fn conv_nm_mask<T: Scalar>(
    name: &str,
    scores: &DMatrix<T>,
    pattern: NmPattern,
    kept: Option<&Mask>,
    in_channels: usize,
    spatial: usize,
) -> Result<Mask> {
    // Column `c` of the ASP order is input channel `c % in` at kernel position `c / in`.
    let original = |c: usize| (c % in_channels) * spatial + c / in_channels;
    let (rows, cols) = scores.shape();
    let reordered = DMatrix::from_fn(rows, cols, |r, c| scores[(r, original(c))]);
    let kept = kept
        .map(|m| Mask::from_fn(rows, cols, |r, c| m.get(r, original(c)) == Some(true)))
        .transpose()?;
    let asp = nm_mask(name, &reordered, pattern, kept.as_ref())?;
    let mut back = Mask::all_kept(rows, cols)?;
    for c in 0..cols {
        for r in 0..rows {
            if asp.get(r, c) == Some(false) {
                back.set(r, original(c), false)?;
            }
        }
    }
    Ok(back)
}

fn check_view<T: Scalar>(shape: &WeightShape, weights: &DMatrix<T>) -> Result<()> {
    if shape.matrix_shape() == weights.shape() {
        Ok(())
    } else {
        Err(shears_core::Error::ShapeMismatch {
            op: "weight shape view",
            expected: shape.matrix_shape(),
            got: weights.shape(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Magnitude;
    use nalgebra::dmatrix;
    use shears_core::WeightShape;

    #[test]
    fn seed_structured_columns() {
        // The seed's [inputs x neurons] case: columns 0 and 2 weak, 1 and 3 strong.
        let w = dmatrix![0.1, 0.9, 0.2, 0.8; 0.1, 0.9, 0.2, 0.8; 0.1, 0.9, 0.2, 0.8];
        let pruner = Pruner::new(Magnitude)
            .with_pattern(Pattern::Structured(Structured::new(Axis::Columns)));
        let mask = pruner.mask(&w, &LayerContext::new("fc"), Sparsity::new(0.5).unwrap()).unwrap();
        assert_eq!(mask.fully_pruned_cols(), vec![0, 2]);
        assert_eq!(mask.count_kept(), 6);
        assert!(pruner.pruned_bias(&mask).is_empty());
    }

    #[test]
    fn rows_report_their_bias() {
        let w = dmatrix![0.1, 0.1; 5.0, 5.0; 0.2, 0.2; 3.0, 3.0];
        let pruner =
            Pruner::new(Magnitude).with_pattern(Pattern::Structured(Structured::new(Axis::Rows)));
        let mask = pruner.mask(&w, &LayerContext::new("fc"), Sparsity::new(0.5).unwrap()).unwrap();
        assert_eq!(pruner.pruned_bias(&mask), vec![0, 2]);
        let mut bias = DVector::from_vec(vec![1.0, 2.0, 3.0, 4.0]);
        pruner.prune_bias(&mask, &mut bias).unwrap();
        assert_eq!(bias.as_slice(), &[0.0, 2.0, 0.0, 4.0]);
        let mut short = DVector::from_vec(vec![1.0]);
        assert!(matches!(
            pruner.prune_bias(&mask, &mut short),
            Err(shears_core::Error::LengthMismatch { .. })
        ));
    }

    #[test]
    fn kept_rows_round_up_to_multiple() {
        let w = DMatrix::from_fn(20, 3, |r, _| r as f64 + 1.0);
        let s = Structured::new(Axis::Rows).round_kept_to(8).unwrap();
        let pruner = Pruner::new(Magnitude).with_pattern(Pattern::Structured(s));
        // 50% of 20 rows keeps 10, rounded up to 16.
        let mask = pruner.mask(&w, &LayerContext::new("fc"), Sparsity::new(0.5).unwrap()).unwrap();
        assert_eq!(mask.fully_pruned_rows(), (0..4).collect::<Vec<_>>());
        // 99% keeps 0 rows: a multiple of 8, so all go.
        let mask = pruner.mask(&w, &LayerContext::new("fc"), Sparsity::ONE).unwrap();
        assert_eq!(mask.count_kept(), 0);
    }

    #[test]
    fn conv_filters_and_channels() {
        let shape = WeightShape::conv(3, 2, 2, 2).unwrap();
        // Filter 1 is weak; input channel 0 is weak in every filter.
        let w = DMatrix::from_fn(3, 8, |r, c| {
            if r == 1 {
                0.01
            } else if c < 4 {
                0.1
            } else {
                1.0
            }
        });
        let ctx = LayerContext::new("conv").with_shape(shape);
        let third = Sparsity::new(1.0 / 3.0).unwrap();
        let filters = Pruner::new(Magnitude)
            .with_pattern(Pattern::Structured(Structured::new(Axis::Filters)));
        let mask = filters.mask(&w, &ctx, third).unwrap();
        assert_eq!(mask.fully_pruned_rows(), vec![1]);
        assert_eq!(filters.pruned_bias(&mask), vec![1]);
        let channels = Pruner::new(Magnitude)
            .with_pattern(Pattern::Structured(Structured::new(Axis::Channels)));
        let mask = channels.mask(&w, &ctx, Sparsity::new(0.5).unwrap()).unwrap();
        assert_eq!(mask.fully_pruned_cols(), vec![0, 1, 2, 3]);
        // Channels of a dense weight, and a view that does not fit the weight, are errors.
        let err = channels.mask(&w, &LayerContext::new("fc"), third).unwrap_err();
        assert!(matches!(err, shears_core::Error::NotConvolution { .. }));
        let wrong = LayerContext::new("conv").with_shape(WeightShape::conv(3, 1, 2, 2).unwrap());
        assert!(matches!(
            filters.mask(&w, &wrong, third),
            Err(shears_core::Error::ShapeMismatch { .. })
        ));
    }

    #[test]
    fn nm_needs_its_own_sparsity() {
        let pruner = Pruner::new(Magnitude).with_pattern(Pattern::NM(NmPattern::TWO_FOUR));
        let w = DMatrix::<f32>::from_element(2, 8, 1.0);
        let err =
            pruner.mask(&w, &LayerContext::new("fc"), Sparsity::new(0.7).unwrap()).unwrap_err();
        assert!(matches!(err, shears_core::Error::NmSparsityMismatch { .. }));
        assert!(err.to_string().contains("2:4"));
        // 1:3 prunes two thirds, which a user writes to a few decimals, not exactly.
        let one_three = Pattern::NM(NmPattern::new(1, 3).unwrap());
        for written in [0.667, 0.6667, 0.666_667, 2.0 / 3.0] {
            assert!(one_three.check_sparsity(Sparsity::new(written).unwrap()).is_ok());
        }
        for other in [0.67, 0.666, 0.5] {
            assert!(one_three.check_sparsity(Sparsity::new(other).unwrap()).is_err(), "{other}");
        }
        assert_eq!(
            pruner
                .mask(&w, &LayerContext::new("fc"), Sparsity::new(0.5).unwrap())
                .unwrap()
                .count_kept(),
            8
        );
    }

    /// On a convolution weight, 2:4 groups run along input channels at each kernel
    /// position (ASP's order), not along the flattened `(in, kh, kw)` columns.
    #[test]
    fn conv_nm_groups_input_channels() {
        let (out, inp, kh, kw) = (3, 8, 2, 1);
        let shape = WeightShape::conv(out, inp, kh, kw).unwrap();
        let w = DMatrix::from_fn(out, inp * kh * kw, |r, c| ((r * 7 + c * 5) % 13) as f64 + 1.0);
        let ctx = LayerContext::new("conv").with_shape(shape);
        let pruner = Pruner::new(Magnitude).with_pattern(Pattern::NM(NmPattern::TWO_FOUR));
        let mask = pruner.mask(&w, &ctx, Sparsity::new(0.5).unwrap()).unwrap();
        for r in 0..out {
            for q in 0..kh * kw {
                for group in 0..inp / 4 {
                    let channels = (group * 4..group * 4 + 4).map(|i| i * kh * kw + q);
                    let kept: Vec<f64> = channels
                        .clone()
                        .filter(|&c| mask.get(r, c) == Some(true))
                        .map(|c| w[(r, c)])
                        .collect();
                    assert_eq!(kept.len(), 2, "row {r}, position {q}, group {group}");
                    let pruned_max = channels
                        .filter(|&c| mask.get(r, c) == Some(false))
                        .map(|c| w[(r, c)])
                        .fold(0.0, f64::max);
                    assert!(kept.iter().all(|&k| k >= pruned_max));
                }
            }
        }
        // A kept mask of another shape is an error, not rows read as pruned.
        let other = Mask::all_kept(2, inp * kh * kw).unwrap();
        let err = pruner.mask(&w, &ctx.with_mask(&other), Sparsity::new(0.5).unwrap());
        assert!(matches!(err, Err(shears_core::Error::ShapeMismatch { .. })), "{err:?}");
        let dense = LayerContext::new("fc").with_mask(&other);
        let err = pruner.mask(&w, &dense, Sparsity::new(0.5).unwrap());
        assert!(matches!(err, Err(shears_core::Error::ShapeMismatch { .. })), "{err:?}");
        let odd = WeightShape::conv(3, 6, 2, 1).unwrap();
        let half = Sparsity::new(0.5).unwrap();
        assert!(Pattern::NM(NmPattern::TWO_FOUR).check_fits("conv", &odd, half).is_err());
        assert!(Pattern::NM(NmPattern::TWO_FOUR).check_fits("conv", &shape, half).is_ok());
    }

    #[test]
    fn blocks_are_pruned_whole() {
        let w = DMatrix::from_fn(4, 4, |r, c| if (r < 2) == (c < 2) { 1.0 } else { 0.1 });
        let shape = BlockShape::new(2, 2).unwrap();
        let pruner = Pruner::new(Magnitude)
            .with_pattern(Pattern::Blocks { shape, reduction: Reduction::L1 });
        let mask = pruner.mask(&w, &LayerContext::new("fc"), Sparsity::new(0.5).unwrap()).unwrap();
        assert_eq!(mask.to_matrix(), DMatrix::from_fn(4, 4, |r, c| (r < 2) == (c < 2)));
        assert_eq!(PruningStrategy::<f64>::granularity(&pruner), Granularity::Blocks(shape));
    }
}
