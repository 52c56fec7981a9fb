//! [`Prunable`]: the view of a model that strategies, scopes and schedules work on.

use nalgebra::DMatrix;

use crate::error::{Error, Result};
use crate::scalar::Scalar;
use crate::shape::WeightShape;

/// A model that exposes its prunable weight matrices by name.
///
/// Implement it for any model (shears' own MLP does) and every scope and schedule of
/// shears-strategies works on it. Weights use shears' layout: `(out, in)`, a convolution
/// weight as its `(out, in*kh*kw)` matrix view with [`Prunable::weight_shape`] saying so.
///
/// # Examples
/// ```
/// use std::collections::BTreeMap;
/// use nalgebra::DMatrix;
/// use shears_core::Prunable;
///
/// struct Model(BTreeMap<String, DMatrix<f32>>);
/// impl Prunable<f32> for Model {
///     fn prunable_names(&self) -> Vec<String> { self.0.keys().cloned().collect() }
///     fn weight(&self, name: &str) -> Option<&DMatrix<f32>> { self.0.get(name) }
///     fn weight_mut(&mut self, name: &str) -> Option<&mut DMatrix<f32>> { self.0.get_mut(name) }
/// }
///
/// let model = Model(BTreeMap::from([("fc".to_string(), DMatrix::zeros(2, 3))]));
/// assert_eq!(model.require_weight("fc")?.shape(), (2, 3));
/// assert!(model.require_weight("nope").is_err());
/// # Ok::<(), shears_core::Error>(())
/// ```
pub trait Prunable<T: Scalar> {
    /// The names of the prunable weights, in a stable order (global scope breaks score
    /// ties by this order).
    fn prunable_names(&self) -> Vec<String>;

    /// The weight matrix called `name`.
    fn weight(&self, name: &str) -> Option<&DMatrix<T>>;

    /// The weight matrix called `name`, mutably.
    fn weight_mut(&mut self, name: &str) -> Option<&mut DMatrix<T>>;

    /// The gradient of the loss with respect to weight `name`, when the model has one.
    fn gradient(&self, _name: &str) -> Option<&DMatrix<T>> {
        None
    }

    /// The tensor shape of weight `name` (dense by default).
    fn weight_shape(&self, name: &str) -> Option<WeightShape> {
        self.weight(name).map(WeightShape::of_matrix)
    }

    /// [`Prunable::weight`], or an error naming the missing layer.
    ///
    /// # Errors
    /// [`Error::UnknownLayer`] if the model has no weight called `name`.
    fn require_weight(&self, name: &str) -> Result<&DMatrix<T>> {
        self.weight(name).ok_or_else(|| Error::UnknownLayer { name: name.to_owned() })
    }

    /// [`Prunable::weight_mut`], or an error naming the missing layer.
    ///
    /// # Errors
    /// [`Error::UnknownLayer`] if the model has no weight called `name`.
    fn require_weight_mut(&mut self, name: &str) -> Result<&mut DMatrix<T>> {
        self.weight_mut(name).ok_or_else(|| Error::UnknownLayer { name: name.to_owned() })
    }
}
