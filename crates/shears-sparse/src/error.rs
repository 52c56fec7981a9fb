//! The error types of shears-sparse.

use shears_core::NmPattern;

/// The result type of shears-sparse.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in shears-sparse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error from shears-core (mask shapes, dimension overflow).
    #[error(transparent)]
    Core(#[from] shears_core::Error),
    /// Raw parts or stored bytes do not describe a valid matrix.
    #[error("invalid {format} data: {error}")]
    Format {
        /// Which format was being built.
        format: &'static str,
        /// What is wrong.
        error: FormatError,
    },
    /// A quantization scheme that cannot be applied.
    #[error("invalid quantization: {reason}")]
    InvalidQuantization {
        /// What is wrong.
        reason: String,
    },
    /// Operand shapes do not fit.
    #[error("{op}: shape mismatch, expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// The operation.
        op: &'static str,
        /// The shape it needs.
        expected: (usize, usize),
        /// The shape it was given.
        got: (usize, usize),
    },
    /// A mask does not satisfy the N:M pattern a format needs.
    #[error("row {row}, columns {col}..: more than {} of {} weights kept, the mask is not {pattern}", pattern.n(), pattern.m())]
    NotNm {
        /// The pattern.
        pattern: NmPattern,
        /// The first offending row.
        row: usize,
        /// The first column of the offending group.
        col: usize,
    },
    /// Crossovers that do not describe where formats win.
    #[error("invalid crossovers: {reason}")]
    InvalidCrossovers {
        /// What is wrong.
        reason: String,
    },
    /// A dimension exceeds what the index type can address.
    #[error("{what} {value} does not fit the {bits}-bit index type")]
    IndexOverflow {
        /// Which dimension.
        what: &'static str,
        /// Its value.
        value: usize,
        /// The index type's width.
        bits: u32,
    },
}

/// Why raw parts or stored bytes were rejected; one variant per check of the validator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The stored bytes' envelope (magic tag, version, canonical payload) is wrong.
    #[error(transparent)]
    Envelope(shears_core::FormatError),
    /// The row-pointer array does not have `nrows + 1` entries.
    #[error("indptr has {found} entries, {expected} needed")]
    IndptrLength {
        /// `nrows + 1`.
        expected: usize,
        /// What was given.
        found: usize,
    },
    /// The row pointers do not start at 0.
    #[error("indptr starts at {found}, not 0")]
    IndptrStart {
        /// The first entry.
        found: usize,
    },
    /// A row pointer decreases.
    #[error("indptr decreases at row {row}")]
    IndptrNotMonotone {
        /// The row whose end is before its start.
        row: usize,
    },
    /// The last row pointer is not the number of stored entries.
    #[error("indptr ends at {found}, but {expected} entries are stored")]
    IndptrEnd {
        /// The number of stored entries.
        expected: usize,
        /// The last row pointer.
        found: usize,
    },
    /// Indices and values differ in length.
    #[error("{indices} indices but {values} values")]
    LengthMismatch {
        /// Number of indices.
        indices: usize,
        /// Number of values.
        values: usize,
    },
    /// A column index is out of range.
    #[error("row {row}: column index {index} is out of range for {ncols} columns")]
    IndexOutOfRange {
        /// The row.
        row: usize,
        /// The index.
        index: usize,
        /// The number of columns.
        ncols: usize,
    },
    /// Column indices in a row are not strictly increasing (unsorted or duplicated).
    #[error("row {row}: column indices are not strictly increasing")]
    UnsortedIndices {
        /// The row.
        row: usize,
    },
    /// An N:M position is outside its group (or past the row's end in the last group).
    #[error("row {row}, group {group}: in-group position {position} is out of range")]
    PositionOutOfRange {
        /// The row.
        row: usize,
        /// The group.
        group: usize,
        /// The position.
        position: usize,
    },
    /// A stored N:M pattern or block shape is invalid.
    #[error("invalid pattern or block shape: {reason}")]
    InvalidStructure {
        /// What is wrong.
        reason: String,
    },
    /// A sliced-ELLPACK lane holds a row it may not: past the last row, outside the
    /// lane's sorting window, or a row another lane holds too.
    #[error("lane {lane} holds row {row}: {reason}")]
    RowOrder {
        /// The lane.
        lane: usize,
        /// The row it holds.
        row: usize,
        /// Why that row cannot be there.
        reason: &'static str,
    },
    /// A sliced-ELLPACK slice does not store exactly eight times its longest lane.
    #[error("slice {slice} stores {found} entries, its lanes need {expected}")]
    SliceWidth {
        /// The slice.
        slice: usize,
        /// Eight times its longest lane's length.
        expected: usize,
        /// The entries its pointers give it.
        found: usize,
    },
    /// A sliced-ELLPACK padding entry (past its lane's length) is not a zero at column 0.
    #[error("slice {slice}, lane {lane}: padding entry {step} is not a zero at column 0")]
    PaddingNotEmpty {
        /// The slice.
        slice: usize,
        /// The lane within the slice.
        lane: usize,
        /// The entry's position in the lane.
        step: usize,
    },
    /// A buffer's length does not match what the shape implies.
    #[error("{what} has {found} entries, {expected} needed")]
    BufferLength {
        /// Which buffer.
        what: &'static str,
        /// The needed length.
        expected: usize,
        /// The given length.
        found: usize,
    },
}
