//! Saving and loading an [`Mlp`] and its masks as safetensors.
//!
//! Names follow PyTorch: `layers.{i}.weight` and `layers.{i}.bias` in the network's
//! dtype, row-major `(out, in)`; masks as `layers.{i}.weight_mask` (`u8`, 1 = keep), the
//! buffer name `torch.nn.utils.prune` uses. Writes are atomic: a temporary file beside
//! the target, then a rename.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use nalgebra::{DMatrix, DVector};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use shears_core::Masks;
use shears_core::{Mask, Scalar};

use crate::data::read_file;
use crate::error::{Error, Result};
use crate::mlp::{Layer, Mlp, bias_name, weight_name};

fn dtype_of<T: Scalar>() -> Dtype {
    if size_of::<T>() == 4 { Dtype::F32 } else { Dtype::F64 }
}

fn bytes_of<T: Scalar>(values: impl Iterator<Item = T>) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        if size_of::<T>() == 4 {
            out.extend_from_slice(&(v.as_f64() as f32).to_le_bytes());
        } else {
            out.extend_from_slice(&v.as_f64().to_le_bytes());
        }
    }
    out
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, flushed
/// and synced, then renamed over the target.
///
/// # Errors
/// [`Error::Io`] naming the file that failed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| Error::Io { path: path.to_owned(), source };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Saves `mlp` (and `masks`) to `path` as safetensors, atomically.
///
/// # Errors
/// [`Error::Io`] if writing fails; [`Error::BadCheckpoint`] if serialisation fails.
pub fn save<T: Scalar>(mlp: &Mlp<T>, masks: &Masks, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let bad = |reason: String| Error::BadCheckpoint { path: path.to_owned(), reason };
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, layer) in mlp.layers().iter().enumerate() {
        let (r, c) = layer.shape();
        owned.push((
            weight_name(i),
            dtype_of::<T>(),
            vec![r, c],
            bytes_of(layer.weight().transpose().iter().copied()),
        ));
        owned.push((
            bias_name(i),
            dtype_of::<T>(),
            vec![r],
            bytes_of(layer.bias().iter().copied()),
        ));
        if let Some(mask) = masks.get(&weight_name(i)) {
            let bits = mask.to_matrix().transpose().iter().map(|&k| u8::from(k)).collect();
            owned.push((format!("{}_mask", weight_name(i)), Dtype::U8, vec![r, c], bits));
        }
    }
    let views = owned
        .iter()
        .map(|(name, dtype, shape, data)| {
            TensorView::new(*dtype, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| bad(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("producer".to_string(), "shears".to_string()),
    ]);
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| bad(e.to_string()))?;
    write_atomic(path, &bytes)
}

fn read_values<T: Scalar>(view: &TensorView<'_>, name: &str, path: &Path) -> Result<Vec<T>> {
    let data = view.data();
    let bad = |reason: String| Error::BadCheckpoint {
        path: path.to_owned(),
        reason: format!("tensor `{name}`: {reason}"),
    };
    match view.dtype() {
        Dtype::F32 => Ok(data
            .chunks_exact(4)
            .map(|b| T::from_f64_lossy(f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))))
            .collect()),
        Dtype::F64 => Ok(data
            .chunks_exact(8)
            .map(|b| {
                T::from_f64_lossy(f64::from_le_bytes([
                    b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
                ]))
            })
            .collect()),
        other => Err(bad(format!("dtype {other:?} is not f32 or f64"))),
    }
}

/// Loads a network (and any `*_mask` tensors) saved by [`save`], or any safetensors file
/// with `layers.{i}.weight` / `layers.{i}.bias` in f32 or f64.
///
/// # Errors
/// [`Error::Io`] if the file cannot be read; [`Error::BadCheckpoint`] for a malformed
/// file, a missing tensor, a wrong dtype or inconsistent shapes.
pub fn load<T: Scalar>(path: impl AsRef<Path>) -> Result<(Mlp<T>, Masks)> {
    let path = path.as_ref();
    let bad = |reason: String| Error::BadCheckpoint { path: path.to_owned(), reason };
    let bytes = read_file(path)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut layers = Vec::new();
    let mut masks = Masks::new();
    for i in 0.. {
        let (wn, bn) = (weight_name(i), bias_name(i));
        let Ok(w) = st.tensor(&wn) else { break };
        let b = st.tensor(&bn).map_err(|_| bad(format!("`{wn}` has no `{bn}`")))?;
        let &[rows, cols] = w.shape() else {
            return Err(bad(format!("`{wn}` has shape {:?}, not 2-D", w.shape())));
        };
        if b.shape() != [rows] {
            return Err(bad(format!("`{bn}` has shape {:?}, expected [{rows}]", b.shape())));
        }
        let weight = DMatrix::from_row_slice(rows, cols, &read_values::<T>(&w, &wn, path)?);
        let bias = DVector::from_vec(read_values::<T>(&b, &bn, path)?);
        if let Ok(m) = st.tensor(&format!("{wn}_mask")) {
            if m.shape() != [rows, cols] || m.dtype() != Dtype::U8 {
                return Err(bad(format!("`{wn}_mask` must be u8 of shape [{rows}, {cols}]")));
            }
            let keep: Vec<bool> = m.data().iter().map(|&v| v != 0).collect();
            masks.insert(wn.clone(), Mask::from_row_major(rows, cols, &keep)?);
        }
        layers.push(Layer::new(weight, bias)?);
    }
    if layers.is_empty() {
        return Err(bad("no `layers.0.weight` tensor".into()));
    }
    Ok((Mlp::from_layers(layers)?, masks))
}
