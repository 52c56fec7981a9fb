//! The error type of shears-models.

use std::path::PathBuf;

/// The result type of shears-models.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong loading, running or pruning a model. Each names the file,
/// field or tensor at fault, in one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration file shears cannot run (a missing or unsupported field).
    #[error("{}: {field}: {reason}", path.display())]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// The field at fault.
        field: String,
        /// Why.
        reason: String,
    },
    /// A file of the model folder that is missing or cannot be read.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A weight missing from the checkpoint, or of the wrong shape.
    #[error("{}: tensor `{tensor}`: {reason}", path.display())]
    Weight {
        /// The model's weights (file or folder).
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Why.
        reason: String,
    },
    /// The tokenizer failed on a text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A text file with no usable line, or texts the command cannot use.
    #[error("{0}")]
    Texts(String),
    /// An argument out of its range.
    #[error("{0}")]
    Argument(String),
    /// The model computed a NaN or an infinity (weights too large, a zero layer-norm
    /// epsilon on a constant input, ...).
    #[error("the model's output for sentence {} (of the lines with text) is not finite ({value}): check its weights and config", .sentence + 1)]
    NonFinite {
        /// The sentence (0-based, in the order given).
        sentence: usize,
        /// The value found.
        value: f32,
    },
    /// A text the tokenizer turned into no tokens at all (one without special tokens,
    /// given a text it keeps nothing of): it has no embedding.
    #[error("sentence {} (of the lines with text) gives no tokens: the tokenizer adds no special tokens and keeps nothing of its text", .sentence + 1)]
    NoTokens {
        /// The sentence (0-based, in the order given).
        sentence: usize,
    },
    /// Reading or writing checkpoint files.
    #[error(transparent)]
    Io(#[from] shears_io::Error),
    /// A pruning method failed on a layer.
    #[error(transparent)]
    Strategy(#[from] shears_strategies::Error),
    /// A sparse format could not be built.
    #[error(transparent)]
    Sparse(#[from] shears_sparse::Error),
}

impl From<shears_core::Error> for Error {
    fn from(e: shears_core::Error) -> Self {
        Error::Strategy(e.into())
    }
}
