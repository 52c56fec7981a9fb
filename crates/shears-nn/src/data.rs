//! [`Dataset`]: labelled samples as columns of a matrix, the embedded digits data and the
//! fixed train/test split.

use std::io::Read;

use flate2::read::GzDecoder;
use nalgebra::DMatrix;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// Labelled samples: `features` is `(n_features, n_samples)`, one sample per column, so a
/// mini-batch is a block of columns and `W x` applies to it directly.
///
/// # Invariants
/// `labels.len() == features.ncols()` and every label is `< classes`; checked by
/// [`Dataset::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    features: DMatrix<f32>,
    labels: Vec<u8>,
    classes: usize,
}

impl Dataset {
    /// A dataset from features (one sample per column) and labels.
    ///
    /// # Errors
    /// [`Error::Shape`] if the counts differ; [`Error::BadLabel`] for a label `>= classes`.
    pub fn new(features: DMatrix<f32>, labels: Vec<u8>, classes: usize) -> Result<Self> {
        if labels.len() != features.ncols() {
            return Err(Error::Shape {
                what: "labels per sample",
                expected: features.ncols(),
                got: labels.len(),
            });
        }
        if let Some((index, &label)) =
            labels.iter().enumerate().find(|&(_, &l)| usize::from(l) >= classes)
        {
            return Err(Error::BadLabel { label: usize::from(label), index, classes });
        }
        Ok(Dataset { features, labels, classes })
    }

    /// The features, one sample per column.
    pub fn features(&self) -> &DMatrix<f32> {
        &self.features
    }

    /// The labels.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Features per sample.
    pub fn n_features(&self) -> usize {
        self.features.nrows()
    }

    /// The samples at `indices`, in that order.
    ///
    /// # Errors
    /// [`Error::SampleIndex`] naming the first index past the last sample.
    pub fn select(&self, indices: &[usize]) -> Result<Dataset> {
        if let Some(&i) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::SampleIndex { index: i, len: self.len() });
        }
        Ok(self.select_valid(indices))
    }

    /// [`Dataset::select`] of indices known to be in range.
    fn select_valid(&self, indices: &[usize]) -> Dataset {
        Dataset {
            features: self.features.select_columns(indices),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            classes: self.classes,
        }
    }

    /// The first `n` samples (all if fewer).
    pub fn take(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        self.select_valid(&(0..n).collect::<Vec<_>>())
    }

    /// Splits off `n` samples chosen by a seeded shuffle: `(rest, held_out)`, each in the
    /// original order. The lottery ticket holds out a validation set this way (5,000 of
    /// MNIST's training images, as the paper).
    ///
    /// # Errors
    /// [`Error::BadParameter`] if `n` is not smaller than the number of samples.
    pub fn hold_out(&self, n: usize, seed: u64) -> Result<(Dataset, Dataset)> {
        if n >= self.len() {
            return Err(Error::BadParameter {
                name: "held-out samples",
                requirement: "fewer than the samples",
                value: n as f64,
            });
        }
        let order = self.shuffled_indices(seed);
        let (mut rest, mut held) = (order[n..].to_vec(), order[..n].to_vec());
        rest.sort_unstable();
        held.sort_unstable();
        Ok((self.select_valid(&rest), self.select_valid(&held)))
    }

    /// A seeded permutation of the sample indices.
    pub fn shuffled_indices(&self, seed: u64) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        idx
    }
}

/// A train/test pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Samples to train on.
    pub train: Dataset,
    /// Samples to report accuracy on.
    pub test: Dataset,
}

const DIGITS_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");

/// The embedded handwritten digits (UCI optical recognition of handwritten digits,
/// CC BY 4.0, as scikit-learn ships it): 1,797 samples of 8x8 pixels scaled from 0..16
/// to [0, 1], 10 classes.
///
/// ```
/// let digits = shears_nn::digits()?;
/// assert_eq!((digits.len(), digits.n_features(), digits.classes()), (1797, 64, 10));
/// # Ok::<(), shears_nn::Error>(())
/// ```
///
/// # Errors
/// [`Error::BadDataFile`] only if the embedded copy were corrupted.
pub fn digits() -> Result<Dataset> {
    let bad = |reason: String| Error::BadDataFile { path: "embedded digits.csv.gz".into(), reason };
    let mut text = String::new();
    GzDecoder::new(DIGITS_GZ).read_to_string(&mut text).map_err(|e| bad(e.to_string()))?;
    let mut pixels = Vec::with_capacity(1797 * 64);
    let mut labels = Vec::with_capacity(1797);
    for (line_no, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let values: Vec<u8> = line
            .split(',')
            .map(|v| v.trim().parse::<u8>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| bad(format!("line {}: {e}", line_no + 1)))?;
        if values.len() != 65 {
            return Err(bad(format!("line {}: {} values, 65 expected", line_no + 1, values.len())));
        }
        pixels.extend(values[..64].iter().map(|&p| f32::from(p) / 16.0));
        labels.push(values[64]);
    }
    let n = labels.len();
    Dataset::new(DMatrix::from_vec(64, n, pixels), labels, 10)
}

/// The embedded digits split the fixed, documented way: every fifth sample (index
/// `i % 5 == 4`) is a test sample, the rest train. 1,438 train and 359 test samples,
/// every class in both, the same on every machine.
///
/// # Errors
/// As [`digits`].
pub fn digits_split() -> Result<Split> {
    let all = digits()?;
    let (test, train): (Vec<usize>, Vec<usize>) = (0..all.len()).partition(|i| i % 5 == 4);
    Ok(Split { train: all.select_valid(&train), test: all.select_valid(&test) })
}
