//! [`Mlp`]: dense layers `(out, in)` with bias, ReLU between, softmax cross-entropy on top.

use nalgebra::{DMatrix, DVector};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shears_core::{Prunable, Scalar};

use crate::data::Dataset;
use crate::error::{Error, Result};

/// One dense layer: `y = W x + b`, `W` of shape `(out, in)`.
///
/// # Invariants
/// `bias.len() == weight.nrows()`.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer<T: Scalar> {
    weight: DMatrix<T>,
    bias: DVector<T>,
}

impl<T: Scalar> Layer<T> {
    /// A layer from its weight and bias.
    ///
    /// # Errors
    /// [`Error::Shape`] if the bias has not one entry per output.
    pub fn new(weight: DMatrix<T>, bias: DVector<T>) -> Result<Self> {
        if bias.len() != weight.nrows() {
            return Err(Error::Shape {
                what: "bias entries",
                expected: weight.nrows(),
                got: bias.len(),
            });
        }
        Ok(Layer { weight, bias })
    }

    /// The weight `(out, in)`.
    pub fn weight(&self) -> &DMatrix<T> {
        &self.weight
    }

    /// The bias.
    pub fn bias(&self) -> &DVector<T> {
        &self.bias
    }

    /// The weight, mutable (its shape is fixed).
    pub fn weight_mut(&mut self) -> &mut DMatrix<T> {
        &mut self.weight
    }

    /// The bias, mutable.
    pub fn bias_mut(&mut self) -> &mut DVector<T> {
        &mut self.bias
    }

    /// `(out, in)`.
    pub fn shape(&self) -> (usize, usize) {
        self.weight.shape()
    }
}

/// The gradients of one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerGrad<T: Scalar> {
    /// d loss / d W.
    pub weight: DMatrix<T>,
    /// d loss / d b.
    pub bias: DVector<T>,
}

/// A multi-layer perceptron for classification.
///
/// Samples are columns: `forward` takes `(inputs, batch)` and returns `(classes, batch)`
/// logits. Weight `i` is named `layers.{i}.weight` (its bias `layers.{i}.bias`), the
/// names PyTorch gives an `nn.Sequential` of `Linear`s stored as `layers`, so shears'
/// checkpoints load there and vice versa.
///
/// # Examples
/// ```
/// use nalgebra::DMatrix;
/// use shears_nn::Mlp;
///
/// let mlp = Mlp::<f32>::new(&[4, 8, 3], 42)?;
/// let logits = mlp.forward(&DMatrix::from_element(4, 5, 0.5))?;
/// assert_eq!(logits.shape(), (3, 5));
/// assert_eq!(mlp, Mlp::<f32>::new(&[4, 8, 3], 42)?); // seeded
/// # Ok::<(), shears_nn::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp<T: Scalar> {
    layers: Vec<Layer<T>>,
    names: Vec<String>,
    grads: Vec<Option<LayerGrad<T>>>,
}

/// The name of layer `i`'s weight.
pub fn weight_name(i: usize) -> String {
    format!("layers.{i}.weight")
}

/// The name of layer `i`'s bias.
pub fn bias_name(i: usize) -> String {
    format!("layers.{i}.bias")
}

impl<T: Scalar> Mlp<T> {
    /// A network with layer sizes `sizes` (inputs, hidden..., classes), weights drawn
    /// Kaiming-uniform (`U(-sqrt(6/fan_in), sqrt(6/fan_in))`, suited to ReLU) from
    /// ChaCha8 seeded with `seed`, biases zero.
    ///
    /// # Errors
    /// [`Error::BadArchitecture`] for fewer than two sizes, a zero size, or a layer
    /// whose weight's bytes could not be addressed.
    pub fn new(sizes: &[usize], seed: u64) -> Result<Self> {
        // nalgebra multiplies the dimensions unchecked: a wrapped count would build a
        // matrix whose storage is shorter than its shape.
        let addressable = |w: &[usize]| shears_core::check_addressable::<T>(w).is_ok();
        if sizes.len() < 2 || sizes.contains(&0) || !sizes.windows(2).all(addressable) {
            return Err(Error::BadArchitecture { sizes: sizes.to_vec() });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let layers = sizes
            .windows(2)
            .map(|w| {
                let bound = (6.0 / w[0] as f64).sqrt();
                let weight = DMatrix::from_fn(w[1], w[0], |_, _| {
                    T::from_f64_lossy(rng.random_range(-bound..bound))
                });
                Layer { weight, bias: DVector::zeros(w[1]) }
            })
            .collect();
        Mlp::from_layers(layers)
    }

    /// A network from its layers.
    ///
    /// # Errors
    /// [`Error::BadArchitecture`] if there are none or one has no inputs or no outputs;
    /// [`Error::Shape`] if a layer's input size is not the previous layer's output size.
    pub fn from_layers(layers: Vec<Layer<T>>) -> Result<Self> {
        if layers.is_empty() {
            return Err(Error::BadArchitecture { sizes: Vec::new() });
        }
        if layers.iter().any(|l| l.weight.is_empty()) {
            let sizes = std::iter::once(layers[0].weight.ncols())
                .chain(layers.iter().map(|l| l.weight.nrows()))
                .collect();
            return Err(Error::BadArchitecture { sizes });
        }
        for pair in layers.windows(2) {
            if pair[1].weight.ncols() != pair[0].weight.nrows() {
                return Err(Error::Shape {
                    what: "layer input size",
                    expected: pair[0].weight.nrows(),
                    got: pair[1].weight.ncols(),
                });
            }
        }
        let names = (0..layers.len()).map(weight_name).collect();
        let grads = vec![None; layers.len()];
        Ok(Mlp { layers, names, grads })
    }

    /// Layer sizes: inputs, then each layer's outputs.
    pub fn sizes(&self) -> Vec<usize> {
        std::iter::once(self.layers[0].weight.ncols())
            .chain(self.layers.iter().map(|l| l.weight.nrows()))
            .collect()
    }

    /// The layers.
    pub fn layers(&self) -> &[Layer<T>] {
        &self.layers
    }

    /// The layers, mutable.
    pub fn layers_mut(&mut self) -> &mut [Layer<T>] {
        &mut self.layers
    }

    /// The gradients from the last [`Mlp::backward`], per layer.
    pub fn gradients(&self) -> &[Option<LayerGrad<T>>] {
        &self.grads
    }

    /// Drops stored gradients.
    pub fn clear_gradients(&mut self) {
        self.grads.iter_mut().for_each(|g| *g = None);
    }

    /// Total weights (without biases).
    pub fn weight_count(&self) -> usize {
        self.layers.iter().map(|l| l.weight.len()).sum()
    }

    fn check_input(&self, x: &DMatrix<T>) -> Result<()> {
        let inputs = self.layers[0].weight.ncols();
        if x.nrows() != inputs {
            return Err(Error::Shape { what: "input features", expected: inputs, got: x.nrows() });
        }
        Ok(())
    }

    /// Logits `(classes, batch)` for inputs `(features, batch)`.
    ///
    /// # Errors
    /// [`Error::Shape`] if `x` has the wrong number of rows.
    pub fn forward(&self, x: &DMatrix<T>) -> Result<DMatrix<T>> {
        self.check_input(x)?;
        let mut a = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let mut z = &layer.weight * &a;
            bias_then_activation(&mut z, &layer.bias, i + 1 < self.layers.len());
            a = z;
        }
        Ok(a)
    }

    /// The predicted class of each column of `x`.
    ///
    /// # Errors
    /// As [`Mlp::forward`].
    pub fn predict(&self, x: &DMatrix<T>) -> Result<Vec<usize>> {
        Ok(argmax_columns(&self.forward(x)?))
    }

    /// The fraction of `data` classified correctly.
    ///
    /// # Errors
    /// [`Error::Shape`] if the data has the wrong number of features.
    pub fn accuracy(&self, data: &Dataset) -> Result<f64> {
        if data.is_empty() {
            return Ok(0.0);
        }
        let x = to_scalar::<T>(data.features());
        let predicted = self.predict(&x)?;
        let correct =
            predicted.iter().zip(data.labels()).filter(|&(&p, &l)| p == usize::from(l)).count();
        Ok(correct as f64 / data.len() as f64)
    }

    /// Mean softmax cross-entropy over the batch; stores every layer's gradients.
    ///
    /// # Errors
    /// [`Error::Shape`] for a wrong input size or label count; [`Error::BadLabel`] for a
    /// label outside the classes.
    pub fn backward(&mut self, x: &DMatrix<T>, labels: &[u8]) -> Result<f64> {
        self.check_input(x)?;
        let batch = x.ncols();
        if labels.len() != batch {
            return Err(Error::Shape {
                what: "labels in batch",
                expected: batch,
                got: labels.len(),
            });
        }
        let classes = self.layers[self.layers.len() - 1].weight.nrows();
        if let Some((index, &l)) =
            labels.iter().enumerate().find(|&(_, &l)| usize::from(l) >= classes)
        {
            return Err(Error::BadLabel { label: usize::from(l), index, classes });
        }
        // Forward, keeping every layer's input activation.
        let mut activations = vec![x.clone()];
        for (i, layer) in self.layers.iter().enumerate() {
            let mut z = &layer.weight * &activations[i];
            bias_then_activation(&mut z, &layer.bias, i + 1 < self.layers.len());
            activations.push(z);
        }
        let mut delta = activations.pop().unwrap_or_else(|| DMatrix::zeros(0, 0));
        let mut loss = 0.0;
        let scale = T::from_f64_lossy(1.0 / batch as f64);
        for (mut col, &label) in delta.column_iter_mut().zip(labels) {
            let max = col.max();
            col.apply(|v| *v = (*v - max).exp());
            let sum = col.sum();
            col /= sum;
            loss -= col[usize::from(label)].as_f64().max(1e-30).ln();
            col[usize::from(label)] -= T::one();
            col *= scale;
        }
        for i in (0..self.layers.len()).rev() {
            let input = &activations[i];
            let grad = LayerGrad { weight: &delta * input.transpose(), bias: delta.column_sum() };
            if i > 0 {
                let mut next = self.layers[i].weight.transpose() * &delta;
                next.zip_apply(input, |d, a| {
                    if a <= T::zero() {
                        *d = T::zero();
                    }
                });
                delta = next;
            }
            self.grads[i] = Some(grad);
        }
        Ok(loss / batch as f64)
    }
}

/// Adds `bias` to every column of the pre-activation `z`, then applies ReLU when the
/// layer is `hidden` (the output layer keeps its logits).
pub(crate) fn bias_then_activation<T: Scalar>(z: &mut DMatrix<T>, bias: &DVector<T>, hidden: bool) {
    for mut col in z.column_iter_mut() {
        col += bias;
    }
    if hidden {
        z.apply(|v| *v = v.max(T::zero()));
    }
}

/// The index of the largest entry of each column (the first, on ties).
pub fn argmax_columns<T: Scalar>(m: &DMatrix<T>) -> Vec<usize> {
    m.column_iter()
        .map(|c| {
            c.iter()
                .enumerate()
                .fold((0, T::min_value().unwrap_or_else(T::zero)), |best, (i, &v)| {
                    if v > best.1 { (i, v) } else { best }
                })
                .0
        })
        .collect()
}

/// Dataset features converted to the network's scalar type.
pub(crate) fn to_scalar<T: Scalar>(x: &DMatrix<f32>) -> DMatrix<T> {
    x.map(|v| T::from_f64_lossy(f64::from(v)))
}

impl<T: Scalar> Prunable<T> for Mlp<T> {
    fn prunable_names(&self) -> Vec<String> {
        self.names.clone()
    }

    fn weight(&self, name: &str) -> Option<&DMatrix<T>> {
        let i = self.names.iter().position(|n| n == name)?;
        Some(&self.layers[i].weight)
    }

    fn weight_mut(&mut self, name: &str) -> Option<&mut DMatrix<T>> {
        let i = self.names.iter().position(|n| n == name)?;
        Some(&mut self.layers[i].weight)
    }

    fn gradient(&self, name: &str) -> Option<&DMatrix<T>> {
        let i = self.names.iter().position(|n| n == name)?;
        self.grads[i].as_ref().map(|g| &g.weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradients_match_finite_differences() {
        let mut mlp = Mlp::<f64>::new(&[3, 5, 4], 7).unwrap();
        mlp.layers_mut()[0].bias_mut().fill(0.1);
        let x = DMatrix::from_fn(3, 6, |r, c| ((r * 6 + c) as f64 * 0.37).sin());
        let labels = [0u8, 1, 2, 3, 1, 0];
        mlp.backward(&x, &labels).unwrap();
        let analytic = mlp.gradients()[0].clone().unwrap();
        let eps = 1e-6;
        for (r, c) in [(0, 0), (2, 1), (4, 2)] {
            let mut plus = mlp.clone();
            plus.layers_mut()[0].weight_mut()[(r, c)] += eps;
            let mut minus = mlp.clone();
            minus.layers_mut()[0].weight_mut()[(r, c)] -= eps;
            let numeric = (plus.backward(&x, &labels).unwrap()
                - minus.backward(&x, &labels).unwrap())
                / (2.0 * eps);
            assert!(
                (numeric - analytic.weight[(r, c)]).abs() < 1e-6,
                "{numeric} vs {}",
                analytic.weight[(r, c)]
            );
        }
    }

    #[test]
    fn errors() {
        assert!(matches!(Mlp::<f32>::new(&[4], 0), Err(Error::BadArchitecture { .. })));
        assert!(matches!(Mlp::<f32>::new(&[4, 0, 2], 0), Err(Error::BadArchitecture { .. })));
        // 2^32 x 2^32 elements wrap to none in release arithmetic.
        let wraps = 1usize << (usize::BITS / 2);
        for sizes in [[wraps, wraps], [usize::MAX, 2], [isize::MAX as usize / 4, 2]] {
            assert!(matches!(Mlp::<f32>::new(&sizes, 0), Err(Error::BadArchitecture { .. })));
        }
        let mut mlp = Mlp::<f32>::new(&[4, 3], 0).unwrap();
        assert!(matches!(mlp.forward(&DMatrix::zeros(5, 1)), Err(Error::Shape { .. })));
        assert!(matches!(mlp.backward(&DMatrix::zeros(4, 2), &[0]), Err(Error::Shape { .. })));
        assert!(matches!(
            mlp.backward(&DMatrix::zeros(4, 1), &[3]),
            Err(Error::BadLabel { label: 3, .. })
        ));
        assert!(matches!(
            Layer::new(DMatrix::<f32>::zeros(2, 2), DVector::zeros(3)),
            Err(Error::Shape { .. })
        ));
        let a = Layer::new(DMatrix::<f32>::zeros(2, 3), DVector::zeros(2)).unwrap();
        let b = Layer::new(DMatrix::<f32>::zeros(2, 3), DVector::zeros(2)).unwrap();
        assert!(matches!(Mlp::from_layers(vec![a, b]), Err(Error::Shape { .. })));
        assert!(matches!(Mlp::<f32>::from_layers(vec![]), Err(Error::BadArchitecture { .. })));
        let empty = Layer::new(DMatrix::<f32>::zeros(0, 3), DVector::zeros(0)).unwrap();
        assert!(matches!(
            Mlp::from_layers(vec![empty]),
            Err(Error::BadArchitecture { sizes }) if sizes == [3, 0]
        ));
    }

    #[test]
    fn names_follow_pytorch() {
        let mlp = Mlp::<f32>::new(&[2, 3, 2], 0).unwrap();
        assert_eq!(mlp.prunable_names(), vec!["layers.0.weight", "layers.1.weight"]);
        assert_eq!(mlp.weight("layers.1.weight").map(|w| w.shape()), Some((2, 3)));
        assert!(mlp.gradient("layers.0.weight").is_none());
        assert_eq!(mlp.sizes(), vec![2, 3, 2]);
    }
}
