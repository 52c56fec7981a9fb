//! [`Granularity`]: the unit a strategy prunes at, with the validated [`NmPattern`] and
//! [`BlockShape`].

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The unit a strategy removes.
///
/// Structured granularities name their axis explicitly (docs/design.md): nothing guesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Granularity {
    /// Single weights.
    Unstructured,
    /// Whole rows: output neurons of a dense layer.
    Rows,
    /// Whole columns: inputs of a dense layer.
    Columns,
    /// Whole convolution filters (rows of the conv matrix view).
    Filters,
    /// Whole convolution input channels (groups of `kh*kw` columns of the view).
    Channels,
    /// N of every M consecutive weights along a row kept.
    NM(NmPattern),
    /// Whole `r x c` blocks.
    Blocks(BlockShape),
}

/// An N:M pattern: in every group of `m` consecutive weights along a row, `n` are kept.
///
/// # Invariants
/// `0 < n <= m <= 256` ([`NmPattern::MAX_M`]), checked by [`NmPattern::new`] and on
/// deserialisation: a group keeps at least one weight, and positions within a group fit
/// a byte.
///
/// ```
/// use shears_core::NmPattern;
/// let p = NmPattern::new(2, 4)?;
/// assert_eq!((p.n(), p.m()), (2, 4));
/// assert_eq!(p.to_string(), "2:4");
/// assert!(NmPattern::new(5, 4).is_err());
/// assert_eq!("4:8".parse::<NmPattern>()?, NmPattern::new(4, 8)?);
/// # Ok::<(), shears_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "(usize, usize)", into = "(usize, usize)")]
pub struct NmPattern {
    n: usize,
    m: usize,
}

impl NmPattern {
    /// The 2:4 pattern that sparse tensor cores accelerate.
    pub const TWO_FOUR: NmPattern = NmPattern { n: 2, m: 4 };

    /// The largest group size.
    pub const MAX_M: usize = 256;

    /// Validates a pattern.
    ///
    /// # Errors
    /// [`Error::InvalidNmPattern`] unless `0 < n <= m <= 256`.
    pub fn new(n: usize, m: usize) -> Result<Self> {
        if n == 0 || n > m || m > Self::MAX_M {
            Err(Error::InvalidNmPattern { n, m })
        } else {
            Ok(NmPattern { n, m })
        }
    }

    /// Weights kept per group.
    pub fn n(self) -> usize {
        self.n
    }

    /// Group size.
    pub fn m(self) -> usize {
        self.m
    }

    /// Whether one row, given as its kept flags in column order, keeps at most N in
    /// every group of M (the last group may be shorter).
    pub fn row_conforms(self, kept: impl IntoIterator<Item = bool>) -> bool {
        let mut in_group = 0;
        for (c, k) in kept.into_iter().enumerate() {
            if c % self.m == 0 {
                in_group = 0;
            }
            in_group += usize::from(k);
            if in_group > self.n {
                return false;
            }
        }
        true
    }

    /// The first `(row, first column of the group)` of `mask` whose group keeps more
    /// than N weights; `None` when every group of every row conforms.
    ///
    /// ```
    /// use shears_core::{Mask, NmPattern};
    /// let mask = Mask::from_fn(2, 8, |r, c| r == 0 || c < 3)?;
    /// assert_eq!(NmPattern::TWO_FOUR.first_violation(&mask), Some((0, 0)));
    /// assert!(NmPattern::TWO_FOUR.first_violation(&Mask::from_fn(2, 8, |_, c| c % 2 == 0)?).is_none());
    /// # Ok::<(), shears_core::Error>(())
    /// ```
    pub fn first_violation(self, mask: &crate::Mask) -> Option<(usize, usize)> {
        let (nrows, ncols) = mask.shape();
        // A mask of no weights keeps nothing, however long its empty side.
        if nrows == 0 || ncols == 0 {
            return None;
        }
        (0..nrows).find_map(|r| {
            (0..ncols).step_by(self.m).find_map(|start| {
                let end = (start + self.m).min(ncols);
                let kept = (start..end).filter(|&c| mask.get(r, c) == Some(true)).count();
                (kept > self.n).then_some((r, start))
            })
        })
    }
}

impl TryFrom<(usize, usize)> for NmPattern {
    type Error = Error;
    fn try_from((n, m): (usize, usize)) -> Result<Self> {
        NmPattern::new(n, m)
    }
}

impl From<NmPattern> for (usize, usize) {
    fn from(p: NmPattern) -> Self {
        (p.n, p.m)
    }
}

impl std::fmt::Display for NmPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.n, self.m)
    }
}

impl std::str::FromStr for NmPattern {
    type Err = Error;
    /// Parses `"N:M"`: [`Error::Parse`] unless two whole numbers, then as [`NmPattern::new`].
    fn from_str(s: &str) -> Result<Self> {
        let parse = || Error::Parse {
            what: "N:M pattern",
            value: s.to_owned(),
            expected: "two whole numbers N:M with 0 < N <= M <= 256, like 2:4",
        };
        let (n, m) = s.split_once(':').ok_or_else(parse)?;
        let n = n.trim().parse().map_err(|_| parse())?;
        let m = m.trim().parse().map_err(|_| parse())?;
        NmPattern::new(n, m)
    }
}

/// The shape of a pruning block, `rows x cols`.
///
/// # Invariants
/// Both sides are positive, checked by [`BlockShape::new`] and on deserialisation.
///
/// ```
/// use shears_core::BlockShape;
/// let b = BlockShape::new(4, 4)?;
/// assert_eq!(b.grid(10, 8), (3, 2)); // edge blocks are partial
/// assert!(BlockShape::new(0, 4).is_err());
/// assert!(BlockShape::new(1 << 40, 1 << 40).is_err()); // its area overflows
/// # Ok::<(), shears_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "(usize, usize)", into = "(usize, usize)")]
pub struct BlockShape {
    rows: usize,
    cols: usize,
}

impl BlockShape {
    /// Validates a block shape.
    ///
    /// # Errors
    /// [`Error::InvalidBlockShape`] if either side is zero or `rows * cols` overflows
    /// (every block is stored as `rows * cols` values).
    pub fn new(rows: usize, cols: usize) -> Result<Self> {
        if rows == 0 || cols == 0 || rows.checked_mul(cols).is_none() {
            Err(Error::InvalidBlockShape { rows, cols })
        } else {
            Ok(BlockShape { rows, cols })
        }
    }

    /// Block height.
    pub fn rows(self) -> usize {
        self.rows
    }

    /// Block width.
    pub fn cols(self) -> usize {
        self.cols
    }

    /// How many block rows and block columns cover a `(nrows, ncols)` matrix; blocks at
    /// the bottom and right edges may be partial.
    pub fn grid(self, nrows: usize, ncols: usize) -> (usize, usize) {
        (nrows.div_ceil(self.rows), ncols.div_ceil(self.cols))
    }
}

impl std::str::FromStr for BlockShape {
    type Err = Error;
    /// Parses `"RxC"` (`4x4`): [`Error::Parse`] unless two whole numbers, then as
    /// [`BlockShape::new`].
    fn from_str(s: &str) -> Result<Self> {
        let parse = || Error::Parse {
            what: "block shape",
            value: s.to_owned(),
            expected: "two positive whole numbers RxC, like 4x4",
        };
        let (r, c) = s.split_once('x').ok_or_else(parse)?;
        let (Ok(r), Ok(c)) = (r.trim().parse(), c.trim().parse()) else { return Err(parse()) };
        BlockShape::new(r, c)
    }
}

impl std::fmt::Display for BlockShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.rows, self.cols)
    }
}

impl TryFrom<(usize, usize)> for BlockShape {
    type Error = Error;
    fn try_from((rows, cols): (usize, usize)) -> Result<Self> {
        BlockShape::new(rows, cols)
    }
}

impl From<BlockShape> for (usize, usize) {
    fn from(b: BlockShape) -> Self {
        (b.rows, b.cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nm_validation() {
        assert!(matches!(NmPattern::new(1, 0), Err(Error::InvalidNmPattern { n: 1, m: 0 })));
        assert!(matches!(NmPattern::new(3, 2), Err(Error::InvalidNmPattern { .. })));
        assert!(matches!(NmPattern::new(0, 4), Err(Error::InvalidNmPattern { .. })));
        assert!(NmPattern::new(1, 256).is_ok());
        assert!(matches!(NmPattern::new(1, 257), Err(Error::InvalidNmPattern { .. })));
        assert!("0:1000000000000".parse::<NmPattern>().is_err());
        assert!(NmPattern::new(4, 4).is_ok());
        for bad in ["", "2", "2:", ":4", "a:b", "2:4:8", "5:4", "-1:4"] {
            assert!(bad.parse::<NmPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn block_validation() {
        assert!(matches!(BlockShape::new(0, 0), Err(Error::InvalidBlockShape { .. })));
        assert!(matches!(
            BlockShape::new(2, 0),
            Err(Error::InvalidBlockShape { rows: 2, cols: 0 })
        ));
        assert_eq!(BlockShape::new(2, 3).map(|b| b.grid(0, 0)), Ok((0, 0)));
        assert_eq!("4x2".parse::<BlockShape>(), BlockShape::new(4, 2));
        assert_eq!(BlockShape::new(4, 2).map(|b| b.to_string()), Ok("4x2".to_owned()));
        for bad in ["", "4", "4x", "x4", "ax4", "4x4x4", "0x4"] {
            assert!(bad.parse::<BlockShape>().is_err(), "{bad}");
        }
    }

    #[test]
    fn serde_validates() {
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec((5usize, 4usize), cfg).unwrap();
        assert!(bincode::serde::decode_from_slice::<NmPattern, _>(&bytes, cfg).is_err());
        assert!(bincode::serde::decode_from_slice::<BlockShape, _>(&[0, 3], cfg).is_err());
    }
}
