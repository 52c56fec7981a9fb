//! [`SparseMlp`]: a trained, pruned [`Mlp`] with each layer in the format that runs it
//! fastest.

use nalgebra::{DMatrix, DVector};
use shears_core::{Mask, Masks, Scalar};
use shears_sparse::{AnySparse, Format, SparseProduct, choose_format};

use crate::error::Result;
use crate::mlp::{Mlp, argmax_columns, bias_then_activation, weight_name};

#[derive(Debug, Clone, PartialEq)]
struct SparseLayer<T: Scalar> {
    weight: AnySparse<T>,
    bias: DVector<T>,
}

/// A pruned network for inference.
///
/// Built in two steps. First **neuron compaction**: a hidden neuron whose weights are all
/// pruned outputs the constant `relu(b)`, so it is removed and `W_next[:, j] * relu(b_j)`
/// is folded into the next layer's bias (exact); inputs no layer-0 weight reads are
/// dropped. Then each (now smaller) layer takes the format [`choose_format`] picks for
/// its mask at the expected batch size: N:M, CSR, sliced ELLPACK (batch 1) or dense.
///
/// Predictions equal the masked dense network's (the same arithmetic minus zero terms).
///
/// ```
/// use shears_nn::{Mlp, SparseMlp};
/// use shears_core::Masks;
/// use nalgebra::DMatrix;
///
/// let mlp = Mlp::<f32>::new(&[8, 16, 4], 1)?;
/// let sparse = SparseMlp::from_mlp(&mlp, &Masks::new(), 1)?;
/// let x = DMatrix::from_element(8, 3, 0.25);
/// assert_eq!(sparse.predict(&x)?, mlp.predict(&x)?);
/// # Ok::<(), shears_nn::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SparseMlp<T: Scalar> {
    input_map: Option<Vec<usize>>,
    inputs: usize,
    layers: Vec<SparseLayer<T>>,
}

impl<T: Scalar> SparseMlp<T> {
    /// Builds the inference network from `mlp` and its `masks` (weights without a mask
    /// are dense), choosing formats for batches of `batch` samples.
    ///
    /// # Errors
    /// Shape errors from the masks or formats.
    pub fn from_mlp(mlp: &Mlp<T>, masks: &Masks, batch: usize) -> Result<Self> {
        Self::from_mlp_with(mlp, masks, |mask| choose_format(mask, batch))
    }

    /// As [`SparseMlp::from_mlp`], with the format of each (compacted) layer chosen by
    /// `choose` from its mask. `Format::Compact` runs dense: compaction has already
    /// removed the dead neurons and inputs.
    ///
    /// # Errors
    /// Shape errors; [`shears_sparse::Error::NotNm`] if `choose` asks for an N:M pattern
    /// the mask does not satisfy.
    pub fn from_mlp_with(
        mlp: &Mlp<T>,
        masks: &Masks,
        choose: impl Fn(&Mask) -> Format,
    ) -> Result<Self> {
        let n = mlp.layers().len();
        let mut weights: Vec<DMatrix<T>> = Vec::with_capacity(n);
        let mut biases: Vec<DVector<T>> = Vec::with_capacity(n);
        let mut keep: Vec<Mask> = Vec::with_capacity(n);
        for (i, layer) in mlp.layers().iter().enumerate() {
            let mask = masks
                .get(&weight_name(i))
                .cloned()
                .unwrap_or_else(|| Mask::all_kept_like(layer.weight()));
            weights.push(mask.apply(layer.weight())?);
            biases.push(layer.bias().clone());
            keep.push(mask);
        }
        // Remove dead hidden neurons, folding their constant output into the next bias.
        for i in 0..n - 1 {
            let dead = keep[i].fully_pruned_rows();
            if dead.is_empty() {
                continue;
            }
            for &j in &dead {
                let out = biases[i][j].max(T::zero());
                if out != T::zero() {
                    let column = weights[i + 1].column(j).clone_owned();
                    biases[i + 1].axpy(out, &column, T::one());
                }
            }
            let alive: Vec<usize> =
                (0..weights[i].nrows()).filter(|r| dead.binary_search(r).is_err()).collect();
            weights[i] = weights[i].select_rows(alive.iter());
            biases[i] = DVector::from_iterator(alive.len(), alive.iter().map(|&r| biases[i][r]));
            keep[i] = Mask::from_fn(alive.len(), keep[i].ncols(), |r, c| {
                keep[i].get(alive[r], c) == Some(true)
            })?;
            weights[i + 1] = weights[i + 1].select_columns(alive.iter());
            keep[i + 1] = Mask::from_fn(keep[i + 1].nrows(), alive.len(), |r, c| {
                keep[i + 1].get(r, alive[c]) == Some(true)
            })?;
        }
        let inputs = mlp.sizes()[0];
        let unused = keep[0].fully_pruned_cols();
        let input_map = (!unused.is_empty())
            .then(|| (0..inputs).filter(|c| unused.binary_search(c).is_err()).collect::<Vec<_>>());
        if let Some(map) = &input_map {
            weights[0] = weights[0].select_columns(map.iter());
            keep[0] = Mask::from_fn(keep[0].nrows(), map.len(), |r, c| {
                keep[0].get(r, map[c]) == Some(true)
            })?;
        }
        let layers = weights
            .into_iter()
            .zip(biases)
            .zip(&keep)
            .map(|((w, bias), mask)| {
                let format = match choose(mask) {
                    Format::Compact => Format::Dense,
                    format => format,
                };
                Ok(SparseLayer { weight: AnySparse::from_dense_masked(&w, mask, format)?, bias })
            })
            .collect::<Result<_>>()?;
        Ok(SparseMlp { input_map, inputs, layers })
    }

    /// The format and `(out, in)` shape of each layer.
    pub fn layer_formats(&self) -> Vec<(Format, (usize, usize))> {
        self.layers.iter().map(|l| (l.weight.format(), l.weight.shape())).collect()
    }

    /// Logits `(classes, batch)` for inputs `(features, batch)`.
    ///
    /// # Errors
    /// [`crate::Error::Shape`] if `x` has the wrong number of rows.
    pub fn forward(&self, x: &DMatrix<T>) -> Result<DMatrix<T>> {
        if x.nrows() != self.inputs {
            return Err(crate::Error::Shape {
                what: "input features",
                expected: self.inputs,
                got: x.nrows(),
            });
        }
        let mut a = match &self.input_map {
            Some(map) => x.select_rows(map.iter()),
            None => x.clone(),
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let mut z = layer.weight.matmul(&a)?;
            bias_then_activation(&mut z, &layer.bias, i + 1 < self.layers.len());
            a = z;
        }
        Ok(a)
    }

    /// The predicted class of each column of `x`.
    ///
    /// # Errors
    /// As [`SparseMlp::forward`].
    pub fn predict(&self, x: &DMatrix<T>) -> Result<Vec<usize>> {
        Ok(argmax_columns(&self.forward(x)?))
    }
}
