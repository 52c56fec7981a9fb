//! [`InputStats`]: what a calibration pass learns about one linear layer's inputs, for
//! the methods that prune by what a layer sees (Wanda, SparseGPT).

use faer::linalg::matmul::triangular::BlockStructure;
use faer::{Accum, MatMut, MatRef, Par};
use nalgebra::{DMatrix, DVector, Dyn, U1};
use shears_core::{Scalar, check_finite};

use crate::error::{Error, Result};

/// Tokens converted and multiplied at a time: bounds the copy of the inputs to
/// `inputs * CHUNK` values whatever the calibration set's size, and each f32 partial
/// sum of the Gram matrix to `CHUNK` products.
const CHUNK: usize = 512;

/// Statistics of a linear layer's inputs over calibration data, accumulated in f64: the
/// sum of squares of each input feature (Wanda's activation norms) and, if asked for,
/// the Gram matrix `X Xᵀ` of the inputs (SparseGPT's Hessian, up to a factor). For f32
/// inputs the Gram matrix of each chunk of 512 tokens is an f32 product (twice the speed
/// of f64, each entry a sum of at most 512 products), accumulated in f64.
///
/// Inputs arrive as matrices of `inputs` rows, one column per token, in any number of
/// batches; the statistics are those of all the columns seen.
///
/// ```
/// use nalgebra::dmatrix;
/// use shears_strategies::InputStats;
///
/// let mut stats = InputStats::new(2, true)?;
/// stats.add(&dmatrix![1.0f32, 2.0; 0.0, 1.0])?; // two tokens of two features
/// stats.add(&dmatrix![2.0f32; 2.0])?;            // and a third
/// assert_eq!(stats.samples(), 3);
/// let rms = stats.activation_norms()[0]; // sqrt((1 + 4 + 4) / 3)
/// assert!((rms - 3f64.sqrt()).abs() < 1e-12);
/// assert_eq!(stats.gram().unwrap()[(0, 1)], 6.0); // 1*0 + 2*1 + 2*2
/// # Ok::<(), shears_strategies::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct InputStats {
    samples: usize,
    sum_squares: DVector<f64>,
    gram: Option<DMatrix<f64>>,
}

impl InputStats {
    /// No inputs seen yet, for a layer of `inputs` input features; `gram` asks for the
    /// `inputs x inputs` Gram matrix as well (SparseGPT needs it, Wanda does not).
    ///
    /// # Errors
    /// [`shears_core::Error::DimensionOverflow`] if the sums or the Gram matrix could not
    /// be addressed.
    pub fn new(inputs: usize, gram: bool) -> Result<Self> {
        // The Gram matrix is checked first: it is the one whose size can wrap.
        let gram = if gram { Some(shears_core::try_zeros(inputs, inputs)?) } else { None };
        let sum_squares = shears_core::try_zeros(inputs, 1)?.reshape_generic(Dyn(inputs), U1);
        Ok(InputStats { samples: 0, sum_squares, gram })
    }

    /// The number of input features.
    pub fn inputs(&self) -> usize {
        self.sum_squares.len()
    }

    /// Tokens seen so far.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Adds the tokens of `x`, one per column.
    ///
    /// # Errors
    /// [`shears_core::Error::LengthMismatch`] if `x` has not one row per input feature;
    /// [`shears_core::Error::NonFinite`] if it holds a NaN or infinity;
    /// [`shears_core::Error::DimensionOverflow`] if the token count would overflow.
    pub fn add<T: Scalar>(&mut self, x: &DMatrix<T>) -> Result<()> {
        if x.nrows() != self.inputs() {
            return Err(shears_core::Error::LengthMismatch {
                what: "calibration input rows",
                expected: self.inputs(),
                got: x.nrows(),
            }
            .into());
        }
        check_finite("calibration inputs", x.as_slice())?;
        // A layer of no inputs takes tokens at no cost, so their count is bounded here.
        let samples = self.samples.checked_add(x.ncols()).ok_or_else(|| {
            shears_core::Error::DimensionOverflow { dims: vec![self.samples, x.ncols()] }
        })?;
        let inputs = self.inputs();
        if inputs > 0 {
            let sums = self.sum_squares.as_mut_slice();
            for token in x.as_slice().chunks_exact(inputs) {
                for (s, v) in sums.iter_mut().zip(token) {
                    let v = v.as_f64();
                    *s += v * v;
                }
            }
        }
        if let Some(gram) = &mut self.gram {
            if size_of::<T>() <= size_of::<f32>() {
                add_gram_f32(gram, x);
            } else {
                add_gram_f64(gram, x);
            }
        }
        self.samples = samples;
        Ok(())
    }

    /// Each input feature's root mean square over the tokens seen, `||x_j||_2 / sqrt(n)`
    /// (Wanda's activation norms; the scale is the same for every feature, so the
    /// comparisons Wanda makes are those of the plain norms).
    pub fn activation_norms(&self) -> DVector<f64> {
        let n = self.samples.max(1) as f64;
        self.sum_squares.map(|s| (s / n).sqrt())
    }

    /// The Gram matrix `X Xᵀ` of the inputs seen, if it was asked for.
    pub fn gram(&self) -> Option<&DMatrix<f64>> {
        self.gram.as_ref()
    }

    /// The Gram matrix, or the error that names the layer that has none.
    pub(crate) fn require_gram(&self, tensor: &str) -> Result<&DMatrix<f64>> {
        self.gram.as_ref().ok_or_else(|| Error::MissingCalibration {
            tensor: tensor.to_owned(),
            what: "the Gram matrix of its inputs (InputStats::new(.., true))",
        })
    }
}

/// `gram += x xᵀ` for inputs held in f32: each chunk's product is one f32 GEMM of its
/// lower triangle (the f32 inputs are exact in it, each entry a sum of at most `CHUNK`
/// products), added to the f64 Gram matrix, which is mirrored once at the end.
fn add_gram_f32<T: Scalar>(gram: &mut DMatrix<f64>, x: &DMatrix<T>) {
    let inputs = x.nrows();
    if inputs == 0 {
        return;
    }
    let mut part = faer::Mat::<f32>::zeros(inputs, inputs);
    // f32 inputs are multiplied where they are; others are converted a chunk at a time.
    let direct = (x as &dyn std::any::Any).downcast_ref::<DMatrix<f32>>();
    let mut chunk: Vec<f32> = Vec::new();
    for start in (0..x.ncols()).step_by(CHUNK) {
        let end = (start + CHUNK).min(x.ncols());
        let tokens = match direct {
            Some(x) => &x.as_slice()[start * inputs..end * inputs],
            None => {
                chunk.clear();
                let values = &x.as_slice()[start * inputs..end * inputs];
                chunk.extend(values.iter().map(|v| v.as_f64() as f32));
                &chunk[..]
            }
        };
        let tokens = MatRef::from_column_major_slice(tokens, inputs, end - start);
        faer::linalg::matmul::triangular::matmul(
            part.as_mut(),
            BlockStructure::TriangularLower,
            Accum::Replace,
            tokens,
            BlockStructure::Rectangular,
            tokens.transpose(),
            BlockStructure::Rectangular,
            1.0,
            Par::rayon(0),
        );
        for (c, total) in gram.as_mut_slice().chunks_exact_mut(inputs).enumerate() {
            for (g, p) in total[c..].iter_mut().zip(&part.col_as_slice(c)[c..]) {
                *g += f64::from(*p);
            }
        }
    }
    mirror_lower(gram);
}

/// `gram += x xᵀ` in f64, a chunk at a time.
fn add_gram_f64<T: Scalar>(gram: &mut DMatrix<f64>, x: &DMatrix<T>) {
    let inputs = x.nrows();
    if inputs == 0 {
        return;
    }
    let mut chunk = Vec::with_capacity(inputs * CHUNK.min(x.ncols()));
    for start in (0..x.ncols()).step_by(CHUNK) {
        let end = (start + CHUNK).min(x.ncols());
        chunk.clear();
        chunk.extend(x.columns(start, end - start).iter().map(|v| v.as_f64()));
        let tokens = MatRef::from_column_major_slice(&chunk, inputs, end - start);
        faer::linalg::matmul::triangular::matmul(
            view_mut(gram),
            BlockStructure::TriangularLower,
            Accum::Add,
            tokens,
            BlockStructure::Rectangular,
            tokens.transpose(),
            BlockStructure::Rectangular,
            1.0,
            Par::rayon(0),
        );
    }
    mirror_lower(gram);
}

/// Copies the lower triangle of a square matrix onto its upper one, in tiles: a plain
/// loop writes along rows of a column-major matrix, a cache line (and, for the sizes of
/// transformer layers, a page) per value.
fn mirror_lower(m: &mut DMatrix<f64>) {
    const TILE: usize = 32;
    let n = m.nrows();
    for c0 in (0..n).step_by(TILE) {
        for r0 in (c0..n).step_by(TILE) {
            for c in c0..(c0 + TILE).min(n) {
                for r in r0.max(c + 1)..(r0 + TILE).min(n) {
                    m[(c, r)] = m[(r, c)];
                }
            }
        }
    }
}

/// A faer view of a column-major nalgebra matrix.
pub(crate) fn view(m: &DMatrix<f64>) -> MatRef<'_, f64> {
    MatRef::from_column_major_slice(m.as_slice(), m.nrows(), m.ncols())
}

/// A mutable faer view of a column-major nalgebra matrix.
pub(crate) fn view_mut(m: &mut DMatrix<f64>) -> MatMut<'_, f64> {
    let (nrows, ncols) = m.shape();
    MatMut::from_column_major_slice_mut(m.as_mut_slice(), nrows, ncols)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Gram matrix and norms equal a naive sum over tokens, across batch and chunk
    /// boundaries.
    #[test]
    fn statistics_equal_naive_sums() {
        let x = DMatrix::from_fn(5, 2 * CHUNK + 37, |i, j| ((i * 31 + j * 17) % 13) as f32 - 6.0);
        let mut stats = InputStats::new(5, true).unwrap();
        stats.add(&x.columns(0, 100).into_owned()).unwrap();
        stats.add(&x.columns(100, x.ncols() - 100).into_owned()).unwrap();
        let xd = x.map(f64::from);
        let naive = &xd * xd.transpose();
        assert_eq!(stats.gram().unwrap(), &naive);
        let mut wide = InputStats::new(5, true).unwrap();
        wide.add(&xd).unwrap();
        assert_eq!(wide.gram().unwrap(), &naive, "the f64 path");
        for j in 0..5 {
            let expected = (naive[(j, j)] / x.ncols() as f64).sqrt();
            assert!((stats.activation_norms()[j] - expected).abs() < 1e-12);
        }
        assert_eq!(stats.samples(), x.ncols());
    }

    /// Every entry above the diagonal becomes its mirror, across tile edges.
    #[test]
    fn mirror_copies_the_lower_triangle() {
        for n in [0, 1, 31, 32, 33, 70] {
            let lower =
                DMatrix::from_fn(n, n, |r, c| if r >= c { (r * 100 + c) as f64 } else { -1.0 });
            let mut m = lower.clone();
            mirror_lower(&mut m);
            let expected = DMatrix::from_fn(n, n, |r, c| lower[(r.max(c), r.min(c))]);
            assert_eq!(m, expected, "{n}");
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut stats = InputStats::new(3, false).unwrap();
        assert!(stats.add(&DMatrix::<f32>::zeros(2, 4)).is_err());
        assert!(stats.add(&DMatrix::from_element(3, 1, f32::NAN)).is_err());
        assert!(matches!(stats.require_gram("l"), Err(Error::MissingCalibration { .. })));
        assert_eq!(stats.samples(), 0);
        // A layer of no inputs has nothing to add, in f32 as in f64.
        let mut empty = InputStats::new(0, true).unwrap();
        empty.add(&DMatrix::<f32>::zeros(0, 3)).unwrap();
        empty.add(&DMatrix::<f64>::zeros(0, 3)).unwrap();
        assert_eq!(empty.samples(), 6);
        // Tokens of no inputs cost nothing, so their count is what is bounded.
        empty.add(&DMatrix::<f64>::zeros(0, usize::MAX - 6)).unwrap();
        assert!(empty.add(&DMatrix::<f32>::zeros(0, 1)).is_err());
        assert_eq!(empty.samples(), usize::MAX);
    }

    #[test]
    fn statistics_that_could_not_be_addressed_are_refused() {
        // The Gram matrix of 2^32 inputs has 2^64 entries: its count wraps to 0.
        let wide = 1usize << (usize::BITS / 2);
        assert!(InputStats::new(wide, true).is_err());
        assert!(InputStats::new(usize::MAX, false).is_err());
    }
}
