//! The error type of shears-onnx.

/// The result type of shears-onnx.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in an export.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operator set the exporters do not write.
    #[error("opset {version} is not supported: shears exports opsets {lowest}-{highest}")]
    Opset {
        /// The version asked for.
        version: i64,
        /// The lowest version the exporters write.
        lowest: i64,
        /// The highest.
        highest: i64,
    },
    /// A model too large for one protobuf file.
    #[error(
        "the model is {bytes} bytes, past the 2 GiB a single .onnx file can hold, even with its large initializers in external data"
    )]
    TooLarge {
        /// Its encoded size.
        bytes: usize,
    },
    /// Weights that cannot be quantized (a NaN or infinite weight).
    #[error(transparent)]
    Quantize(#[from] shears_sparse::Error),
    /// A model the exporter cannot map to a graph.
    #[error("cannot export: {0}")]
    Unsupported(String),
}
