//! The error type of shears-core.

/// The result type of shears-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in shears-core.
///
/// Variants carry the data needed to act on them: which tensor, which shape, which value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A sparsity was NaN or outside `[0, 1]`.
    #[error("sparsity must be in [0, 1], got {value}{}", percent_hint(*.value))]
    InvalidSparsity {
        /// The rejected value.
        value: f64,
    },
    /// Two shapes that must agree do not.
    #[error("{op}: shape mismatch, expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// The operation that compared the shapes.
        op: &'static str,
        /// The shape the operation required.
        expected: (usize, usize),
        /// The shape it was given.
        got: (usize, usize),
    },
    /// A length that must match a shape does not.
    #[error("{what}: expected {expected} elements, got {got}")]
    LengthMismatch {
        /// What was measured.
        what: &'static str,
        /// The required length.
        expected: usize,
        /// The given length.
        got: usize,
    },
    /// A position lies outside a mask or matrix.
    #[error("index ({row}, {col}) is out of bounds for shape {shape:?}")]
    IndexOutOfBounds {
        /// The row asked for.
        row: usize,
        /// The column asked for.
        col: usize,
        /// The shape it was asked of.
        shape: (usize, usize),
    },
    /// Regrowth asked to revive a weight the mask already keeps.
    #[error("cannot regrow ({row}, {col}): the mask already keeps it")]
    RegrowKept {
        /// The row of the first such position.
        row: usize,
        /// Its column.
        col: usize,
    },
    /// A dimension product does not fit in `usize`.
    #[error("shape {dims:?} is too large for this machine to address")]
    DimensionOverflow {
        /// The dimensions whose product overflowed.
        dims: Vec<usize>,
    },
    /// An array whose bytes can be addressed, but that this machine has no memory for
    /// (its allocator refused it).
    #[error("no memory for an array of shape {dims:?} ({bytes} bytes)")]
    OutOfMemory {
        /// The array's dimensions.
        dims: Vec<usize>,
        /// The bytes it would take.
        bytes: usize,
    },
    /// A tensor shape is neither 2-D (dense) nor 4-D (convolution).
    #[error("a prunable weight must be 2-D or 4-D, got shape {dims:?}")]
    UnsupportedRank {
        /// The rejected dimensions.
        dims: Vec<usize>,
    },
    /// A weight, gradient or score is NaN or infinite.
    #[error("tensor `{tensor}` holds a non-finite value at index {index} of its values as stored")]
    NonFinite {
        /// The tensor's name.
        tensor: String,
        /// The column-major element index of the first offending value.
        index: usize,
    },
    /// A group's score (the reduction of its finite values) is beyond `f64`.
    #[error(
        "tensor `{tensor}`: the {reduction} score of group {group} overflows f64: its values are too large to compare"
    )]
    ScoreOverflow {
        /// The tensor's name.
        tensor: String,
        /// The reduction.
        reduction: crate::Reduction,
        /// The group's number in its layout.
        group: usize,
    },
    /// An element's score, a product of finite factors (`|w * g|`, `|w| * ||x||`), is
    /// beyond the scalar type.
    #[error(
        "tensor `{tensor}`: the {score} score at row {row}, column {col} overflows: its factors are finite but their product is too large to compare"
    )]
    ProductOverflow {
        /// The tensor's name.
        tensor: String,
        /// The score, as a formula (`|w * g|`).
        score: &'static str,
        /// The row of the first overflowing score (column-major order).
        row: usize,
        /// Its column.
        col: usize,
    },
    /// An N:M pattern outside `0 < n <= m <= 256`.
    #[error("invalid N:M pattern {n}:{m}: need 0 < N <= M <= 256")]
    InvalidNmPattern {
        /// Kept weights per group.
        n: usize,
        /// Group size.
        m: usize,
    },
    /// A block shape with a zero side, or whose area overflows `usize`.
    #[error(
        "invalid block shape {rows}x{cols}: both sides must be positive and their product fit in usize"
    )]
    InvalidBlockShape {
        /// Block height.
        rows: usize,
        /// Block width.
        cols: usize,
    },
    /// A grouping that needs a convolution shape was used on a dense weight.
    #[error("tensor `{tensor}`: grouping by {grouping} needs a convolution weight shape")]
    NotConvolution {
        /// The tensor's name.
        tensor: String,
        /// The grouping that was asked for.
        grouping: &'static str,
    },
    /// A granularity that is not a partition into whole groups was used as one.
    #[error("granularity {granularity:?} does not split a matrix into whole groups")]
    NotGrouped {
        /// The granularity that was given.
        granularity: crate::Granularity,
    },
    /// A strategy needs a piece of per-layer data that its context does not hold.
    #[error("tensor `{tensor}`: this strategy needs {input}, none were given")]
    MissingInput {
        /// The tensor's name.
        tensor: String,
        /// What is missing.
        input: crate::LayerInput,
    },
    /// A per-layer input that is a norm (never negative) holds a negative value.
    #[error("tensor `{tensor}`: {input} must not be negative, got {value} at index {index}")]
    NegativeInput {
        /// The tensor's name.
        tensor: String,
        /// Which input.
        input: crate::LayerInput,
        /// The first negative value's index.
        index: usize,
        /// The value.
        value: f64,
    },
    /// A per-layer input does not have the shape its weight requires.
    #[error("tensor `{tensor}`: {input} have shape {got:?}, the weight needs {expected:?}")]
    InputShape {
        /// The tensor's name.
        tensor: String,
        /// Which input.
        input: crate::LayerInput,
        /// The shape the weight requires.
        expected: (usize, usize),
        /// The shape given.
        got: (usize, usize),
    },
    /// An N:M pattern was asked for a sparsity other than `1 - N/M`.
    #[error("pattern {pattern} prunes {} of every {} weights (a fraction {:.4}), but sparsity {sparsity} was asked for (an N:M pattern sets its own sparsity)", pattern.m() - pattern.n(), pattern.m(), 1.0 - pattern.n() as f64 / pattern.m() as f64)]
    NmSparsityMismatch {
        /// The pattern.
        pattern: crate::NmPattern,
        /// The requested sparsity.
        sparsity: f64,
    },
    /// A named layer is not known.
    #[error("no layer named `{name}`")]
    UnknownLayer {
        /// The name asked for.
        name: String,
    },
    /// A name or value given as text (a command-line argument) is not one this type
    /// takes.
    #[error("invalid {what} `{value}`: expected {expected}")]
    Parse {
        /// What was being parsed.
        what: &'static str,
        /// The text given.
        value: String,
        /// The forms that parse.
        expected: &'static str,
    },
    /// Decoding a stored mask failed. The message includes the [`FormatError`]'s, so the
    /// error is reported as one link of a chain, not two that say the same.
    #[error("invalid mask file: {0}")]
    Format(FormatError),
}

impl From<FormatError> for Error {
    fn from(e: FormatError) -> Self {
        Error::Format(e)
    }
}

/// Why stored bytes (a mask, or any format in shears' [envelope](crate::envelope)) were
/// rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The bytes do not start with the format's magic tag.
    #[error("missing magic tag \"{}\"", expected.escape_ascii())]
    BadMagic {
        /// The tag the format starts with.
        expected: &'static [u8],
    },
    /// The format version is not one this build reads.
    #[error("format version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion {
        /// The version in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The payload could not be decoded (truncated or corrupted).
    #[error("corrupted payload: {reason}")]
    Corrupted {
        /// What the decoder reported.
        reason: String,
    },
    /// The bit buffer does not hold `rows * cols` bits.
    #[error("shape {rows}x{cols} needs {expected} words of bits, found {found}")]
    WordCount {
        /// Rows in the stored shape.
        rows: usize,
        /// Columns in the stored shape.
        cols: usize,
        /// Words the shape needs.
        expected: usize,
        /// Words stored.
        found: usize,
    },
    /// Bits past the last element are set.
    #[error("padding bits past element {len} are set")]
    DirtyPadding {
        /// The number of elements in the mask.
        len: usize,
    },
    /// Bytes remain after the payload.
    #[error("{count} trailing {} after the payload", if *count == 1 { "byte" } else { "bytes" })]
    TrailingBytes {
        /// How many bytes remain.
        count: usize,
    },
    /// The payload decodes, but is not the one encoding of what it decodes to (an
    /// over-long integer): every stored value has exactly one encoding.
    #[error("the payload is not in canonical form")]
    NonCanonical,
    /// An I/O error while reading or writing.
    #[error("i/o error: {reason}")]
    Io {
        /// The underlying error's message.
        reason: String,
    },
}

/// For a sparsity that reads like a percentage (in (1, 100], at most two decimals: `80`,
/// `12.5`), the fraction it likely means, written without the float's noise. A value
/// just past 1 (`1.0000001`) is a computed fraction's rounding, not a percentage.
fn percent_hint(value: f64) -> String {
    if !(value > 1.0 && value <= 100.0) {
        return String::new();
    }
    let Some(decimals) = (0..=2).find(|&d| {
        let scaled = value * 10f64.powi(d);
        (scaled - scaled.round()).abs() < 1e-9
    }) else {
        return String::new();
    };
    let fraction = format!("{:.*}", decimals as usize + 2, value / 100.0);
    let fraction = fraction.trim_end_matches('0').trim_end_matches('.');
    format!(" (a fraction: {value}% is {fraction})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_shapes_read_as_sentences() {
        let one = FormatError::TrailingBytes { count: 1 };
        assert_eq!(one.to_string(), "1 trailing byte after the payload");
        let many = FormatError::TrailingBytes { count: 7 };
        assert_eq!(many.to_string(), "7 trailing bytes after the payload");
        let huge = Error::DimensionOverflow { dims: vec![usize::MAX, 2] };
        assert_eq!(
            huge.to_string(),
            format!("shape [{}, 2] is too large for this machine to address", usize::MAX)
        );
    }
}
