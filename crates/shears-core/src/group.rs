//! [`GroupLayout`]: how structured granularities partition a weight matrix into groups,
//! and how per-weight values reduce to one score per group.

use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::granularity::{BlockShape, Granularity};
use crate::mask::Mask;
use crate::scalar::Scalar;
use crate::shape::WeightShape;

/// How the values of a group reduce to its score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Reduction {
    /// Sum of absolute values (L1 norm).
    L1,
    /// Euclidean norm, as `torch.nn.utils.prune.ln_structured(n=2)` (the default).
    #[default]
    L2,
    /// Plain sum, for scores that are already importances (e.g. |w·g| summed per group).
    Sum,
}

impl Reduction {
    /// The names [`Reduction`]'s `FromStr` and `Display` use.
    pub const NAMES: &'static str = "l1, l2 or sum";
}

impl std::str::FromStr for Reduction {
    type Err = Error;
    /// `l1`, `l2` or `sum`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "l1" => Ok(Reduction::L1),
            "l2" => Ok(Reduction::L2),
            "sum" => Ok(Reduction::Sum),
            _ => {
                Err(Error::Parse { what: "reduction", value: s.to_owned(), expected: Self::NAMES })
            }
        }
    }
}

impl std::fmt::Display for Reduction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reduction::L1 => "l1",
            Reduction::L2 => "l2",
            Reduction::Sum => "sum",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rows,
    Columns,
    /// Groups of `width` adjacent columns (convolution input channels).
    ColumnBands {
        width: usize,
    },
    Blocks(BlockShape),
}

/// A partition of a `(nrows, ncols)` matrix into the groups that structured pruning
/// removes whole.
///
/// Groups are numbered in row-major order of their top-left element: row `r` is group
/// `r`, column `c` group `c`, channel `k` group `k`, and block `(i, j)` of a grid with `J`
/// block columns is group `i * J + j`. That numbering is the tie order of group
/// selection (lower number pruned first).
///
/// # Examples
/// ```
/// use nalgebra::dmatrix;
/// use shears_core::{GroupLayout, Granularity, Reduction, WeightShape};
///
/// let w = dmatrix![3.0, 4.0; 0.0, 1.0];
/// let rows = GroupLayout::new("fc", Granularity::Rows, &WeightShape::dense(2, 2)?)?;
/// assert_eq!(rows.count(), 2);
/// assert_eq!(rows.reduce("fc", &w, Reduction::L2)?, vec![5.0, 1.0]);
/// let mask = rows.mask_from_kept_groups(&[true, false])?;
/// assert_eq!(mask.fully_pruned_rows(), vec![1]);
/// # Ok::<(), shears_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLayout {
    kind: Kind,
    nrows: usize,
    ncols: usize,
}

impl GroupLayout {
    /// The layout of `granularity` over a weight of `shape`; `tensor` names it in errors.
    ///
    /// `Rows` and `Filters` are both rows of the matrix view, `Columns` single columns, and
    /// `Channels` the `kh*kw` columns of one input channel of a convolution weight.
    ///
    /// # Errors
    /// [`Error::NotConvolution`] for `Channels` or `Filters` on a dense shape;
    /// [`Error::NotGrouped`] for `Unstructured` and `NM`, which are not partitions into
    /// whole groups.
    pub fn new(tensor: &str, granularity: Granularity, shape: &WeightShape) -> Result<Self> {
        let (nrows, ncols) = shape.matrix_shape();
        let not_conv = |grouping| Error::NotConvolution { tensor: tensor.to_owned(), grouping };
        let kind = match granularity {
            Granularity::Rows => Kind::Rows,
            Granularity::Filters if shape.is_conv() => Kind::Rows,
            Granularity::Filters => return Err(not_conv("filters")),
            Granularity::Columns => Kind::Columns,
            Granularity::Channels => match shape.conv_dims() {
                Some((_, _, kh, kw)) => Kind::ColumnBands { width: kh * kw },
                None => return Err(not_conv("channels")),
            },
            Granularity::Blocks(block) => Kind::Blocks(block),
            Granularity::Unstructured | Granularity::NM(_) => {
                return Err(Error::NotGrouped { granularity });
            }
        };
        Ok(GroupLayout { kind, nrows, ncols })
    }

    /// `(nrows, ncols)` of the matrix this layout partitions.
    pub fn shape(&self) -> (usize, usize) {
        (self.nrows, self.ncols)
    }

    /// The number of groups.
    pub fn count(&self) -> usize {
        match self.kind {
            Kind::Rows => self.nrows,
            Kind::Columns => self.ncols,
            Kind::ColumnBands { width } => self.ncols.checked_div(width).unwrap_or(0),
            Kind::Blocks(b) => {
                let (gr, gc) = b.grid(self.nrows, self.ncols);
                gr * gc
            }
        }
    }

    /// The group of element `(row, col)`.
    #[inline]
    pub fn group_of(&self, row: usize, col: usize) -> usize {
        match self.kind {
            Kind::Rows => row,
            Kind::Columns => col,
            Kind::ColumnBands { width } => col / width,
            Kind::Blocks(b) => (row / b.rows()) * self.ncols.div_ceil(b.cols()) + col / b.cols(),
        }
    }

    fn check_shape(&self, got: (usize, usize), op: &'static str) -> Result<()> {
        if got == self.shape() {
            Ok(())
        } else {
            Err(Error::ShapeMismatch { op, expected: self.shape(), got })
        }
    }

    /// One score per group: the [`Reduction`] of `values` (tensor `tensor`'s, which
    /// errors name) over each group, in `f64`. An L2 norm is finite whenever the norm
    /// itself is (a group whose sum of squares overflows is summed again scaled by its
    /// largest value).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `values` does not have the layout's shape;
    /// [`Error::ScoreOverflow`] if a group of finite values has a score beyond `f64`
    /// (values near `f64::MAX`). Non-finite values give non-finite scores, which the
    /// selection refuses.
    pub fn reduce<T: Scalar>(
        &self,
        tensor: &str,
        values: &DMatrix<T>,
        reduction: Reduction,
    ) -> Result<Vec<f64>> {
        self.check_shape(values.shape(), "group reduce")?;
        let mut acc = vec![0.0f64; self.count()];
        self.for_each_value(values, |g, x| {
            acc[g] += match reduction {
                Reduction::L1 => x.abs(),
                Reduction::L2 => x * x,
                Reduction::Sum => x,
            };
        });
        if reduction == Reduction::L2 {
            let overflowed: Vec<bool> = acc.iter().map(|a| a.is_infinite()).collect();
            let scaled = overflowed.contains(&true).then(|| self.scaled_norms(values, &overflowed));
            for (g, a) in acc.iter_mut().enumerate() {
                *a = match &scaled {
                    Some(norms) if overflowed[g] => norms[g],
                    _ => a.sqrt(),
                };
            }
        }
        if let Some(group) = acc.iter().position(|a| a.is_infinite()) {
            let mut finite = true;
            self.for_each_value(values, |g, x| finite &= g != group || x.is_finite());
            if finite {
                return Err(Error::ScoreOverflow { tensor: tensor.to_owned(), reduction, group });
            }
        }
        Ok(acc)
    }

    /// Calls `f(group, value)` for every element of `values`, in column-major order.
    fn for_each_value<T: Scalar>(&self, values: &DMatrix<T>, mut f: impl FnMut(usize, f64)) {
        for c in 0..self.ncols {
            for (r, &x) in values.column(c).iter().enumerate() {
                f(self.group_of(r, c), x.as_f64());
            }
        }
    }

    /// The L2 norm of each group marked in `groups`, as `max * sqrt(sum((x / max)^2))`
    /// with `max` the group's largest magnitude, which stays finite wherever the norm
    /// does (the sum of squares itself overflows from about 1.3e154 up).
    fn scaled_norms<T: Scalar>(&self, values: &DMatrix<T>, groups: &[bool]) -> Vec<f64> {
        let mut max = vec![0.0f64; self.count()];
        self.for_each_value(values, |g, x| {
            if groups[g] {
                max[g] = max[g].max(x.abs());
            }
        });
        let mut sums = vec![0.0f64; self.count()];
        self.for_each_value(values, |g, x| {
            if groups[g] && max[g] > 0.0 {
                let unit = x / max[g];
                sums[g] += unit * unit;
            }
        });
        max.iter().zip(&sums).map(|(m, s)| m * s.sqrt()).collect()
    }

    /// Which groups still hold at least one kept element of `mask`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `mask` does not have the layout's shape.
    pub fn kept_groups(&self, mask: &Mask) -> Result<Vec<bool>> {
        self.check_shape(mask.shape(), "kept groups")?;
        let mut kept = vec![false; self.count()];
        for (r, c) in mask.iter_kept() {
            kept[self.group_of(r, c)] = true;
        }
        Ok(kept)
    }

    /// The mask that keeps exactly the elements of the groups marked `true`.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] if `keep` does not hold one flag per group.
    pub fn mask_from_kept_groups(&self, keep: &[bool]) -> Result<Mask> {
        if keep.len() != self.count() {
            return Err(Error::LengthMismatch {
                what: "group flags",
                expected: self.count(),
                got: keep.len(),
            });
        }
        Mask::from_fn(self.nrows, self.ncols, |r, c| keep[self.group_of(r, c)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::dmatrix;

    #[test]
    fn reduction_names_round_trip() {
        for r in [Reduction::L1, Reduction::L2, Reduction::Sum] {
            assert_eq!(r.to_string().parse::<Reduction>(), Ok(r));
        }
        assert!(matches!("l3".parse::<Reduction>(), Err(Error::Parse { what: "reduction", .. })));
    }

    fn layout(g: Granularity, shape: WeightShape) -> GroupLayout {
        GroupLayout::new("t", g, &shape).unwrap()
    }

    #[test]
    fn block_numbering_is_row_major() {
        let l = layout(
            Granularity::Blocks(BlockShape::new(2, 2).unwrap()),
            WeightShape::dense(3, 5).unwrap(),
        );
        assert_eq!(l.count(), 6);
        assert_eq!(l.group_of(0, 0), 0);
        assert_eq!(l.group_of(1, 4), 2);
        assert_eq!(l.group_of(2, 0), 3);
        assert_eq!(l.group_of(2, 4), 5);
    }

    #[test]
    fn channels_of_conv() {
        let l = layout(Granularity::Channels, WeightShape::conv(2, 3, 2, 2).unwrap());
        assert_eq!(l.count(), 3);
        assert_eq!(l.group_of(1, 7), 1);
        let m = l.mask_from_kept_groups(&[true, false, true]).unwrap();
        assert_eq!(m.fully_pruned_cols(), vec![4, 5, 6, 7]);
    }

    fn cols_of(nrows: usize, ncols: usize) -> GroupLayout {
        layout(Granularity::Columns, WeightShape::dense(nrows, ncols).unwrap())
    }

    #[test]
    fn reductions() {
        let w = dmatrix![1.0f32, -2.0; 3.0, -4.0];
        let cols = layout(Granularity::Columns, WeightShape::dense(2, 2).unwrap());
        assert_eq!(cols.reduce("x", &w, Reduction::L1).unwrap(), vec![4.0, 6.0]);
        assert_eq!(cols.reduce("x", &w, Reduction::Sum).unwrap(), vec![4.0, -6.0]);
        assert_eq!(cols.reduce("x", &w, Reduction::L2).unwrap(), vec![10f64.sqrt(), 20f64.sqrt()]);
    }

    /// Values whose squares overflow f64 still have their L2 norm, equal (to rounding)
    /// to the norm of the same values scaled down by a power of two and scaled back; a
    /// score that is itself beyond f64 is an error naming the group, and a non-finite
    /// value gives a non-finite score, as before.
    #[test]
    fn large_values_keep_their_norms() {
        let huge = 1e300f64;
        let w = dmatrix![huge, 1.0, -3.0 * huge; huge, 2.0, 4.0 * huge];
        let rows = layout(Granularity::Rows, WeightShape::dense(2, 3).unwrap());
        let norms = rows.reduce("x", &w, Reduction::L2).unwrap();
        let small = w.map(|x| x * 2f64.powi(-600));
        let want: Vec<f64> = rows
            .reduce("x", &small, Reduction::L2)
            .unwrap()
            .iter()
            .map(|n| n * 2f64.powi(600))
            .collect();
        for (got, want) in norms.iter().zip(&want) {
            assert!(got.is_finite() && ((got - want) / want).abs() < 1e-15, "{got} {want}");
        }
        let cols = layout(Granularity::Columns, WeightShape::dense(2, 3).unwrap());
        let norms = cols.reduce("x", &w, Reduction::L2).unwrap();
        assert_eq!(norms[1], 5f64.sqrt());
        assert!((norms[2] / (5.0 * huge) - 1.0).abs() < 1e-15);
        let over = dmatrix![f64::MAX, f64::MAX; 1.0, 1.0];
        for reduction in [Reduction::L1, Reduction::L2, Reduction::Sum] {
            let rows = layout(Granularity::Rows, WeightShape::dense(2, 2).unwrap());
            let err = rows.reduce("x", &over, reduction).unwrap_err();
            assert_eq!(err, Error::ScoreOverflow { tensor: "x".into(), reduction, group: 0 });
            assert!(err.to_string().contains("group 0 overflows f64"), "{err}");
        }
        let infinite = dmatrix![f64::INFINITY, 1.0; 1.0, 1.0];
        let norms = cols_of(2, 2).reduce("x", &infinite, Reduction::L2).unwrap();
        assert!(!norms[0].is_finite() && norms[1] == 2f64.sqrt());
    }

    #[test]
    fn errors() {
        let dense = WeightShape::dense(2, 2).unwrap();
        assert!(matches!(
            GroupLayout::new("x", Granularity::Channels, &dense),
            Err(Error::NotConvolution { .. })
        ));
        assert!(matches!(
            GroupLayout::new("x", Granularity::Filters, &dense),
            Err(Error::NotConvolution { .. })
        ));
        assert!(matches!(
            GroupLayout::new("x", Granularity::Unstructured, &dense),
            Err(Error::NotGrouped { .. })
        ));
        let rows = layout(Granularity::Rows, dense);
        assert!(matches!(
            rows.reduce("x", &DMatrix::<f64>::zeros(3, 2), Reduction::L1),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            rows.kept_groups(&Mask::all_kept(1, 1).unwrap()),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(rows.mask_from_kept_groups(&[true]), Err(Error::LengthMismatch { .. })));
    }
}
