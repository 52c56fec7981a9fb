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
    /// [`Error::Shape`] if a mask does not fit its layer.
    pub fn step(&mut self, mlp: &mut Mlp<T>, masks: &Masks) -> Result<()> {
        self.steps += 1;
        let grads: Vec<_> = mlp.gradients().to_vec();
        for (i, (layer, grad)) in mlp.layers_mut().iter_mut().zip(grads).enumerate() {
            let Some(mut grad) = grad else { continue };
            let mask = masks.get(&weight_name(i));
            if let Some(m) = mask {
                if m.shape() != layer.shape() {
                    return Err(Error::Shape {
                        what: "mask size",
                        expected: layer.weight().len(),
                        got: m.len(),
                    });
                }
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
