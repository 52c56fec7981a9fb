//! The error type of shears-nn.

use std::path::PathBuf;

/// The result type of shears-nn.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in shears-nn.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error from shears-core.
    #[error(transparent)]
    Core(#[from] shears_core::Error),
    /// An error from shears-strategies.
    #[error(transparent)]
    Strategies(#[from] shears_strategies::Error),
    /// An error from shears-sparse.
    #[error(transparent)]
    Sparse(#[from] shears_sparse::Error),
    /// A checkpoint could not be read or written (shears-io names the file and why).
    #[error(transparent)]
    File(#[from] shears_io::Error),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A data file is not what it claims to be.
    #[error("{}: {reason}", path.display())]
    BadDataFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Images and labels disagree in count.
    #[error("{} has {images} images but {} has {labels} labels", images_path.display(), labels_path.display())]
    CountMismatch {
        /// The image file.
        images_path: PathBuf,
        /// Its image count.
        images: usize,
        /// The label file.
        labels_path: PathBuf,
        /// Its label count.
        labels: usize,
    },
    /// A network needs at least an input and an output size, and weights that can be
    /// addressed.
    #[error(
        "a network needs at least two layer sizes, all positive, each weight small enough \
         to address; got {sizes:?}"
    )]
    BadArchitecture {
        /// The sizes given.
        sizes: Vec<usize>,
    },
    /// An input does not fit the network.
    #[error("{what}: expected {expected}, got {got}")]
    Shape {
        /// What was checked.
        what: &'static str,
        /// The expected size.
        expected: usize,
        /// The given size.
        got: usize,
    },
    /// A label is not a valid class.
    #[error("label {label} at sample {index} is not below the class count {classes}")]
    BadLabel {
        /// The label.
        label: usize,
        /// The sample.
        index: usize,
        /// The number of classes.
        classes: usize,
    },
    /// A sample index past the end of a dataset.
    #[error("sample index {index} is past the dataset's {len} samples")]
    SampleIndex {
        /// The index asked for.
        index: usize,
        /// The samples the dataset has.
        len: usize,
    },
    /// A hyper-parameter is out of range.
    #[error("{name} must be {requirement}, got {value}")]
    BadParameter {
        /// The parameter.
        name: &'static str,
        /// What it must be.
        requirement: &'static str,
        /// The value given.
        value: f64,
    },
    /// A criterion needs per-layer data the experiment does not collect.
    #[error("criterion {criterion} needs {needs}, which this experiment does not collect")]
    UnsupportedCriterion {
        /// The criterion.
        criterion: shears_strategies::Criterion,
        /// What it needs.
        needs: shears_core::LayerInput,
    },
    /// A checkpoint does not hold what a network needs.
    #[error("checkpoint {}: {reason}", path.display())]
    BadCheckpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Training diverged (a loss or weight became NaN or infinite).
    #[error("training diverged at epoch {epoch}: loss is {loss}")]
    Diverged {
        /// The epoch.
        epoch: usize,
        /// The loss.
        loss: f64,
    },
}
