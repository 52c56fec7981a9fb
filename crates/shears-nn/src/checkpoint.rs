//! Saving and loading an [`Mlp`] and its masks as safetensors.
//!
//! Names follow PyTorch: `layers.{i}.weight` and `layers.{i}.bias` in the network's
//! dtype, row-major `(out, in)`; masks as `layers.{i}.weight_mask` (`u8`, 1 = keep), the
//! buffer name `torch.nn.utils.prune` uses. Files are read and written by shears-io:
//! validated on load, written atomically; int8 weights with their `NAME.scale` (as
//! `shears prune --quantize` writes them) load as their dequantized values.

use std::collections::HashMap;
use std::path::Path;

use nalgebra::{DMatrix, DVector};
use shears_core::{Mask, Masks, Scalar};
use shears_io::{Checkpoint, Dtype, Float, layout, write_matrix, write_safetensors, write_values};

use crate::error::{Error, Result};
use crate::mlp::{Layer, Mlp, bias_name, weight_name};

fn dtype_of<T: Scalar>() -> Dtype {
    if size_of::<T>() == 4 { Dtype::F32 } else { Dtype::F64 }
}

/// What one tensor of a saved network holds.
enum Saved<'a, T: Scalar> {
    Matrix(&'a DMatrix<T>),
    Vector(&'a DVector<T>),
    Mask(&'a Mask),
}

/// Saves `mlp` (and `masks`) to `path` as safetensors, atomically.
///
/// # Errors
/// [`Error::File`] if writing fails.
pub fn save<T: Float>(mlp: &Mlp<T>, masks: &Masks, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Saved<'_, T>)> = Vec::new();
    for (i, layer) in mlp.layers().iter().enumerate() {
        let (r, c) = layer.shape();
        tensors.push((weight_name(i), dtype_of::<T>(), vec![r, c], Saved::Matrix(layer.weight())));
        tensors.push((bias_name(i), dtype_of::<T>(), vec![r], Saved::Vector(layer.bias())));
        if let Some(mask) = masks.get(&weight_name(i)) {
            tensors.push((
                format!("{}_mask", weight_name(i)),
                Dtype::U8,
                vec![r, c],
                Saved::Mask(mask),
            ));
        }
    }
    let entries = layout(tensors.iter().map(|(n, d, s, _)| (n.clone(), *d, s.clone())))?;
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("producer".to_string(), "shears".to_string()),
    ]);
    let mut contents = tensors.iter().map(|(_, _, _, saved)| saved);
    write_safetensors(path, &entries, Some(&metadata), |_, out| -> Result<()> {
        let written = match contents.next() {
            Some(Saved::Matrix(m)) => write_matrix(m, dtype_of::<T>(), out),
            Some(Saved::Vector(v)) => write_values(v.as_slice(), dtype_of::<T>(), out),
            Some(Saved::Mask(mask)) => {
                let bits: Vec<u8> =
                    mask.to_matrix().transpose().iter().map(|&k| u8::from(k)).collect();
                out.write_all(&bits)
            }
            None => Ok(()),
        };
        written.map_err(|e| shears_io::Error::io("write", path, e).into())
    })
}

/// Loads a network (and any `*_mask` tensors) saved by [`save`], or any safetensors file
/// with `layers.{i}.weight` / `layers.{i}.bias` in f16, bf16, f32 or f64.
///
/// # Errors
/// [`Error::File`] if the file cannot be read or is not valid safetensors;
/// [`Error::BadCheckpoint`] for a missing tensor, a wrong dtype or inconsistent shapes.
pub fn load<T: Float>(path: impl AsRef<Path>) -> Result<(Mlp<T>, Masks)> {
    let path = path.as_ref();
    let bad = |reason: String| Error::BadCheckpoint { path: path.to_owned(), reason };
    let ckpt = Checkpoint::open(path)?;
    let mut layers = Vec::new();
    let mut masks = Masks::new();
    for i in 0.. {
        let (wn, bn) = (weight_name(i), bias_name(i));
        let Some(w) = ckpt.info(&wn) else { break };
        let b = ckpt.info(&bn).ok_or_else(|| bad(format!("`{wn}` has no `{bn}`")))?;
        let &[rows, cols] = w.shape.as_slice() else {
            return Err(bad(format!("`{wn}` has shape {:?}, not 2-D", w.shape)));
        };
        if rows == 0 || cols == 0 {
            return Err(bad(format!(
                "`{wn}` has shape [{rows}, {cols}]: a layer needs at least one input and one output"
            )));
        }
        if b.shape != [rows] {
            return Err(bad(format!("`{bn}` has shape {:?}, expected [{rows}]", b.shape)));
        }
        if let Some((outputs, inputs)) = layers.last().map(|l: &Layer<T>| l.weight().shape())
            && cols != outputs
        {
            return Err(bad(format!(
                "`{wn}` has shape [{rows}, {cols}]: it takes {cols} inputs, but `{}` of shape [{outputs}, {inputs}] gives {outputs} outputs",
                weight_name(i - 1)
            )));
        }
        let weight = ckpt.read_matrix::<T>(&wn)?;
        let bias = DVector::from_vec(ckpt.read_values::<T>(&bn)?);
        let mask_name = format!("{wn}_mask");
        if let Some(m) = ckpt.info(&mask_name) {
            if m.shape != [rows, cols] || m.dtype != Dtype::U8 {
                return Err(bad(format!("`{mask_name}` must be u8 of shape [{rows}, {cols}]")));
            }
            let keep: Vec<bool> = ckpt.read_bytes(&mask_name)?.iter().map(|&v| v != 0).collect();
            masks.insert(wn.clone(), Mask::from_row_major(rows, cols, &keep)?);
        }
        layers.push(Layer::new(weight, bias)?);
    }
    if layers.is_empty() {
        return Err(bad("no `layers.0.weight` tensor".into()));
    }
    // Every `layers.N.` tensor must belong to the layers read: a gap would drop the rest,
    // and so would a number spelled otherwise (`layers.01.`, `layers.-1.`, `layers.1x.`).
    let n = layers.len();
    for name in ckpt.names() {
        let Some(index) = name.strip_prefix("layers.").and_then(|rest| rest.split('.').next())
        else {
            continue;
        };
        if !index.starts_with(|c: char| c.is_ascii_digit() || c == '+' || c == '-') {
            continue;
        }
        match index.parse::<usize>() {
            Ok(i) if i.to_string() == index => {
                if i >= n {
                    return Err(bad(format!("`{name}` follows a missing `layers.{n}.weight`")));
                }
            }
            _ => {
                // The layers read stop at the first gap, so their count says nothing of
                // which numbers the checkpoint meant.
                return Err(bad(format!(
                    "`{name}` names layer `{index}`: layers are numbered 0, 1, 2, ... in plain decimal"
                )));
            }
        }
    }
    Ok((Mlp::from_layers(layers)?, masks))
}
