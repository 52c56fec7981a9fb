//! Optimizers that keep pruned weights at exactly zero.

use nalgebra::{DMatrix, DVector};
use shears_core::Masks;
use shears_core::{Mask, Scalar};

use crate::error::{Error, Result};
use crate::mlp::{Mlp, weight_name};

/// An optimizer and its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optimizer {
    /// SGD with (heavy-ball) momentum.
    Sgd {
        /// Learning rate.
        lr: f64,
        /// Momentum in `[0, 1)`.
        momentum: f64,
    },
    /// Adam (Kingma & Ba 2015).
    Adam {
        /// Learning rate.
        lr: f64,
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
        /// Denominator epsilon.
        eps: f64,
    },
}

impl Optimizer {
    /// Adam with the usual betas (0.9, 0.999) and epsilon 1e-8.
    pub fn adam(lr: f64) -> Self {
        Optimizer::Adam { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }

    /// SGD with momentum.
    pub fn sgd(lr: f64, momentum: f64) -> Self {
        Optimizer::Sgd { lr, momentum }
    }

    /// Checks the hyper-parameters.
    ///
    /// # Errors
    /// [`Error::BadParameter`] naming the first one out of range.
    pub fn validate(&self) -> Result<()> {
        let check = |name, ok: bool, requirement, value| {
            if ok { Ok(()) } else { Err(Error::BadParameter { name, requirement, value }) }
        };
        match *self {
            Optimizer::Sgd { lr, momentum } => {
                check("learning rate", lr > 0.0 && lr.is_finite(), "positive and finite", lr)?;
                check("momentum", (0.0..1.0).contains(&momentum), "in [0, 1)", momentum)
            }
            Optimizer::Adam { lr, beta1, beta2, eps } => {
                check("learning rate", lr > 0.0 && lr.is_finite(), "positive and finite", lr)?;
                check("beta1", (0.0..1.0).contains(&beta1), "in [0, 1)", beta1)?;
                check("beta2", (0.0..1.0).contains(&beta2), "in [0, 1)", beta2)?;
                check("eps", eps > 0.0, "positive", eps)
            }
        }
    }
}

/// Per-layer optimizer state (velocity, or Adam's two moments).
#[derive(Debug, Clone)]
struct Slot<T: Scalar> {
    m_w: DMatrix<T>,
    m_b: DVector<T>,
    v_w: DMatrix<T>,
    v_b: DVector<T>,
}

/// An optimizer bound to one network's shapes.
///
/// With masks, every step (1) zeroes the gradients of pruned weights, (2) updates, (3)
/// zeroes pruned weights and their optimizer state, so a pruned weight is exactly zero
/// after every step and momentum cannot carry it back.
#[derive(Debug, Clone)]
pub struct OptimizerState<T: Scalar> {
    config: Optimizer,
    slots: Vec<Slot<T>>,
    steps: u64,
}

impl<T: Scalar> OptimizerState<T> {
    /// Fresh state for `mlp`.
    ///
    /// # Errors
    /// [`Error::BadParameter`] for invalid hyper-parameters.
    pub fn new(config: Optimizer, mlp: &Mlp<T>) -> Result<Self> {
        config.validate()?;
        let slots = mlp
            .layers()
            .iter()
            .map(|l| {
                let (r, c) = l.shape();
                Slot {
                    m_w: DMatrix::zeros(r, c),
                    m_b: DVector::zeros(r),
                    v_w: DMatrix::zeros(r, c),
                    v_b: DVector::zeros(r),
                }
            })
            .collect();
        Ok(OptimizerState { config, slots, steps: 0 })
    }

    /// One update from the gradients stored in `mlp`, keeping masked weights at zero.
    ///
    /// # Errors
    /// [`Error::Shape`] if `mlp` is not the network this state was made for (another
    /// layer count or layer shape), or a mask or gradient does not fit its layer; then
    /// neither the network nor the state has changed.
    pub fn step(&mut self, mlp: &mut Mlp<T>, masks: &Masks) -> Result<()> {
        self.check_fits(mlp, masks)?;
        self.steps += 1;
        let grads: Vec<_> = mlp.gradients().to_vec();
        for (i, (layer, grad)) in mlp.layers_mut().iter_mut().zip(grads).enumerate() {
            let Some(mut grad) = grad else { continue };
            let mask = masks.get(&weight_name(i));
            if let Some(m) = mask {
                m.apply_in_place(&mut grad.weight)?;
            }
            let slot = &mut self.slots[i];
            match self.config {
                Optimizer::Sgd { lr, momentum } => {
                    let (lr, mu) = (T::from_f64_lossy(lr), T::from_f64_lossy(momentum));
                    slot.m_w.zip_apply(&grad.weight, |v, g| *v = mu * *v + g);
                    slot.m_b.zip_apply(&grad.bias, |v, g| *v = mu * *v + g);
                    layer.weight_mut().zip_apply(&slot.m_w, |w, v| *w -= lr * v);
                    layer.bias_mut().zip_apply(&slot.m_b, |b, v| *b -= lr * v);
                }
                Optimizer::Adam { lr, beta1, beta2, eps } => {
                    let t = self.steps as i32;
                    let step = lr * (1.0 - beta2.powi(t)).sqrt() / (1.0 - beta1.powi(t));
                    let (b1, b2) = (T::from_f64_lossy(beta1), T::from_f64_lossy(beta2));
                    let (step, eps) = (T::from_f64_lossy(step), T::from_f64_lossy(eps));
                    let one = T::one();
                    slot.m_w.zip_apply(&grad.weight, |m, g| *m = b1 * *m + (one - b1) * g);
                    slot.v_w.zip_apply(&grad.weight, |v, g| *v = b2 * *v + (one - b2) * g * g);
                    slot.m_b.zip_apply(&grad.bias, |m, g| *m = b1 * *m + (one - b1) * g);
                    slot.v_b.zip_apply(&grad.bias, |v, g| *v = b2 * *v + (one - b2) * g * g);
                    layer.weight_mut().zip_zip_apply(&slot.m_w, &slot.v_w, |w, m, v| {
                        *w -= step * m / (v.sqrt() + eps)
                    });
                    layer.bias_mut().zip_zip_apply(&slot.m_b, &slot.v_b, |b, m, v| {
                        *b -= step * m / (v.sqrt() + eps)
                    });
                }
            }
            if let Some(m) = mask {
                apply_all(m, layer.weight_mut(), &mut slot.m_w, &mut slot.v_w)?;
            }
        }
        Ok(())
    }
}

impl<T: Scalar> OptimizerState<T> {
    /// Checks, before `step` changes anything, that `mlp` has this state's layers and that
    /// every mask and stored gradient has its layer's shape.
    fn check_fits(&self, mlp: &Mlp<T>, masks: &Masks) -> Result<()> {
        let layers = mlp.layers();
        if layers.len() != self.slots.len() {
            return Err(Error::Shape {
                what: "optimizer state layers",
                expected: self.slots.len(),
                got: layers.len(),
            });
        }
        let misfit = |what, expected: &DMatrix<T>, got: (usize, usize)| {
            (got != expected.shape()).then(|| Error::Shape {
                what,
                expected: expected.len(),
                got: got.0.saturating_mul(got.1),
            })
        };
        for (i, (layer, slot)) in layers.iter().zip(&self.slots).enumerate() {
            let grad = mlp.gradients().get(i).and_then(Option::as_ref);
            let biases = |what, got: usize| {
                (got != slot.m_b.len()).then(|| Error::Shape {
                    what,
                    expected: slot.m_b.len(),
                    got,
                })
            };
            let mask = masks.get(&weight_name(i));
            let error = misfit("optimizer state layer size", &slot.m_w, layer.shape())
                .or_else(|| biases("optimizer state bias size", layer.bias().len()))
                .or_else(|| misfit("mask size", &slot.m_w, mask?.shape()))
                .or_else(|| misfit("gradient size", &slot.m_w, grad?.weight.shape()))
                .or_else(|| biases("bias gradient size", grad?.bias.len()));
            if let Some(error) = error {
                return Err(error);
            }
        }
        Ok(())
    }

    /// Forgets the optimizer's memory of the weights of layer `name` that `positions`
    /// keeps: their velocity or Adam moments become zero, as for a fresh weight. Dynamic
    /// sparse training calls it on regrown connections.
    ///
    /// # Errors
    /// [`shears_core::Error::UnknownLayer`] for a name the network lacks; [`Error::Shape`] if
    /// `positions` does not fit the layer.
    pub fn reset(&mut self, name: &str, positions: &Mask) -> Result<()> {
        let index = (0..self.slots.len())
            .find(|&i| weight_name(i) == name)
            .ok_or_else(|| shears_core::Error::UnknownLayer { name: name.to_owned() })?;
        let slot = &mut self.slots[index];
        if positions.shape() != slot.m_w.shape() {
            return Err(Error::Shape {
                what: "reset positions",
                expected: slot.m_w.len(),
                got: positions.len(),
            });
        }
        let forget = positions.not();
        forget.apply_in_place(&mut slot.m_w)?;
        forget.apply_in_place(&mut slot.v_w)?;
        Ok(())
    }

    /// The first moment (or SGD velocity) of layer `name`'s weights.
    pub fn first_moment(&self, name: &str) -> Option<&DMatrix<T>> {
        (0..self.slots.len()).find(|&i| weight_name(i) == name).map(|i| &self.slots[i].m_w)
    }

    /// Adam's second moment of layer `name`'s weights (zero for SGD).
    pub fn second_moment(&self, name: &str) -> Option<&DMatrix<T>> {
        (0..self.slots.len()).find(|&i| weight_name(i) == name).map(|i| &self.slots[i].v_w)
    }
}

fn apply_all<T: Scalar>(
    mask: &Mask,
    w: &mut DMatrix<T>,
    a: &mut DMatrix<T>,
    b: &mut DMatrix<T>,
) -> Result<()> {
    mask.apply_in_place(w)?;
    mask.apply_in_place(a)?;
    mask.apply_in_place(b)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trained(sizes: &[usize]) -> Mlp<f32> {
        let mut mlp = Mlp::new(sizes, 3).unwrap();
        let x = DMatrix::from_fn(sizes[0], 4, |r, c| (r + 2 * c) as f32 / 8.0);
        mlp.backward(&x, &[0, 1, 0, 1]).unwrap();
        mlp
    }

    #[test]
    fn a_network_not_the_states_is_refused_before_anything_changes() {
        let mut state = OptimizerState::new(Optimizer::adam(1e-2), &trained(&[4, 3])).unwrap();
        let before = state.clone();
        for sizes in [&[4, 3, 2][..], &[5, 3], &[4, 2]] {
            let mut other = trained(sizes);
            let weights = other.clone();
            let err = state.step(&mut other, &Masks::new()).unwrap_err();
            assert!(matches!(err, Error::Shape { .. }), "{sizes:?}: {err}");
            assert_eq!(other.layers(), weights.layers(), "{sizes:?}");
            assert_eq!(state.steps, before.steps);
            assert_eq!(
                state.first_moment("layers.0.weight"),
                before.first_moment("layers.0.weight")
            );
        }
    }

    #[test]
    fn a_misfit_mask_on_a_later_layer_leaves_earlier_layers_alone() {
        let mut mlp = trained(&[4, 3, 2]);
        let mut state = OptimizerState::new(Optimizer::sgd(0.1, 0.9), &mlp).unwrap();
        let mut masks = Masks::new();
        masks.insert(weight_name(1), Mask::all_kept(3, 3).unwrap());
        let weights = mlp.clone();
        let err = state.step(&mut mlp, &masks).unwrap_err();
        assert!(err.to_string().contains("mask size"), "{err}");
        assert_eq!(mlp.layers(), weights.layers());
        // The same step with a fitting mask moves the weights.
        masks.insert(weight_name(1), Mask::all_kept(2, 3).unwrap());
        state.step(&mut mlp, &masks).unwrap();
        assert_ne!(mlp.layers(), weights.layers());
    }
}
