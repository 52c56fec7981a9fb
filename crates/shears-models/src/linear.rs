//! [`Linear`]: every linear layer of the encoder, `y = W x + b`, its weights dense (one
//! GEMM over all of a batch's tokens) or in any shears-sparse format.

use faer::{Accum, MatMut, MatRef, Par};
use nalgebra::{DMatrix, DVector};
use shears_core::Mask;
use shears_sparse::{AnySparse, Format, SparseProduct};

use crate::error::{Error, Result};

/// The weights of a linear layer, in the form its products run in.
#[derive(Debug, Clone)]
pub enum LinearWeights {
    /// Dense: the product is one GEMM (faer's, multi-threaded).
    Dense(DMatrix<f32>),
    /// Sparse, in the format chosen for it.
    Sparse(AnySparse<f32>),
}

/// A linear layer `y = W x + b` of the encoder: `W` is `outputs x inputs` (PyTorch's
/// `nn.Linear.weight`), `x` one token per column.
#[derive(Debug, Clone)]
pub struct Linear {
    name: String,
    weights: LinearWeights,
    bias: DVector<f32>,
}

impl Linear {
    /// A dense layer named `name` (its weight's tensor name).
    ///
    /// # Errors
    /// [`Error::Argument`] if `bias` has not one entry per output.
    pub fn new(
        name: impl Into<String>,
        weights: DMatrix<f32>,
        bias: DVector<f32>,
    ) -> Result<Linear> {
        let name = name.into();
        if bias.len() != weights.nrows() {
            return Err(Error::Argument(format!(
                "layer `{name}`: {} bias entries for {} outputs",
                bias.len(),
                weights.nrows()
            )));
        }
        Ok(Linear { name, weights: LinearWeights::Dense(weights), bias })
    }

    /// The weight's tensor name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `(outputs, inputs)`.
    pub fn shape(&self) -> (usize, usize) {
        match &self.weights {
            LinearWeights::Dense(w) => w.shape(),
            LinearWeights::Sparse(s) => s.shape(),
        }
    }

    /// The weights as they run.
    pub fn weights(&self) -> &LinearWeights {
        &self.weights
    }

    /// The bias.
    pub fn bias(&self) -> &DVector<f32> {
        &self.bias
    }

    /// The weights as a dense matrix (zeros where a sparse format stores nothing).
    pub fn dense_weights(&self) -> DMatrix<f32> {
        match &self.weights {
            LinearWeights::Dense(w) => w.clone(),
            LinearWeights::Sparse(s) => s.to_dense(),
        }
    }

    /// Replaces the weights with dense `weights` of the same shape.
    ///
    /// # Errors
    /// [`Error::Argument`] for another shape.
    pub fn set_dense(&mut self, weights: DMatrix<f32>) -> Result<()> {
        if weights.shape() != self.shape() {
            return Err(Error::Argument(format!(
                "layer `{}`: new weights are {:?}, the layer is {:?}",
                self.name,
                weights.shape(),
                self.shape()
            )));
        }
        self.weights = LinearWeights::Dense(weights);
        Ok(())
    }

    /// Stores the weights in `format`, keeping the nonzeros (dense keeps them all).
    ///
    /// # Errors
    /// [`Error::Sparse`] if the format cannot hold the weights (an N:M format for
    /// weights that are not N:M).
    pub fn set_format(&mut self, format: Format) -> Result<()> {
        let dense = self.dense_weights();
        self.weights = match format {
            Format::Dense => LinearWeights::Dense(dense),
            other => {
                let kept =
                    Mask::from_fn(dense.nrows(), dense.ncols(), |r, c| dense[(r, c)] != 0.0)?;
                LinearWeights::Sparse(AnySparse::from_dense_masked(&dense, &kept, other)?)
            }
        };
        Ok(())
    }

    /// The format the weights run in.
    pub fn format(&self) -> Format {
        match &self.weights {
            LinearWeights::Dense(_) => Format::Dense,
            LinearWeights::Sparse(s) => s.format(),
        }
    }

    /// `W x + b` for the tokens of `x` (one per column).
    ///
    /// # Errors
    /// [`Error::Argument`] if `x` has not one row per input.
    pub fn forward(&self, x: &DMatrix<f32>) -> Result<DMatrix<f32>> {
        let (outputs, inputs) = self.shape();
        if x.nrows() != inputs {
            return Err(Error::Argument(format!(
                "layer `{}` takes {inputs} inputs, got {}",
                self.name,
                x.nrows()
            )));
        }
        let tokens = x.ncols();
        match &self.weights {
            LinearWeights::Dense(w) => {
                let mut y = DMatrix::from_fn(outputs, tokens, |r, _| self.bias[r]);
                gemm(&mut y, w, x, Accum::Add);
                Ok(y)
            }
            LinearWeights::Sparse(s) => {
                let mut y = s.matmul(x)?;
                for mut column in y.column_iter_mut() {
                    column += &self.bias;
                }
                Ok(y)
            }
        }
    }
}

/// `y (+)= a b`, on all of rayon's threads.
pub(crate) fn gemm(y: &mut DMatrix<f32>, a: &DMatrix<f32>, b: &DMatrix<f32>, accum: Accum) {
    let (m, n) = y.shape();
    let dst = MatMut::from_column_major_slice_mut(y.as_mut_slice(), m, n);
    let lhs = MatRef::from_column_major_slice(a.as_slice(), a.nrows(), a.ncols());
    let rhs = MatRef::from_column_major_slice(b.as_slice(), b.nrows(), b.ncols());
    faer::linalg::matmul::matmul(dst, accum, lhs, rhs, 1.0, Par::rayon(0));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer() -> Linear {
        let w = DMatrix::from_fn(6, 8, |r, c| {
            if (r + c) % 3 == 0 { 0.0 } else { (r * 8 + c) as f32 * 0.1 - 2.0 }
        });
        Linear::new("l.weight", w, DVector::from_fn(6, |r, _| r as f32)).unwrap()
    }

    #[test]
    fn every_format_computes_the_dense_product() {
        let x = DMatrix::from_fn(8, 5, |r, c| (r as f32 - c as f32) * 0.25);
        let l = layer();
        let w = l.dense_weights();
        let mut expected = &w * &x;
        for mut col in expected.column_iter_mut() {
            col += l.bias();
        }
        assert!((l.forward(&x).unwrap() - &expected).abs().max() < 1e-5);
        for format in [Format::Csr, Format::SlicedEll, Format::Dense] {
            let mut sparse = l.clone();
            sparse.set_format(format).unwrap();
            assert_eq!(sparse.format(), format);
            assert_eq!(sparse.dense_weights(), w);
            let got = sparse.forward(&x).unwrap();
            assert!((got - &expected).abs().max() < 1e-5, "{format:?}");
        }
    }

    #[test]
    fn shapes_are_checked() {
        let mut l = layer();
        assert!(l.forward(&DMatrix::zeros(7, 2)).is_err());
        assert!(l.set_dense(DMatrix::zeros(8, 6)).is_err());
        assert!(Linear::new("x", DMatrix::zeros(2, 2), DVector::zeros(3)).is_err());
        assert_eq!(l.forward(&DMatrix::zeros(8, 0)).unwrap().shape(), (6, 0));
    }
}
