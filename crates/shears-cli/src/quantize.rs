//! `shears prune --quantize`: pruned weights written as int8 beside their scales, in the
//! layout shears-io reads back (see [`shears_io::scale_name`]).

use std::collections::{BTreeSet, HashMap};
use std::io::Write;

use anyhow::{Result, bail};
use nalgebra::DMatrix;
use shears_io::{
    Checkpoint, Dtype, Float, Model, QUANTIZATION_KEY, QUANTIZED_FROM_KEY, TensorInfo,
    quantized_matrix_shape, scale_name,
};
use shears_sparse::{Int8Matrix, QuantScheme};

use crate::tensor_filter::Choice;

/// How a run quantizes its pruned tensors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Quantize {
    scheme: QuantScheme,
}

impl Quantize {
    /// Quantizing the chosen tensors of `model` under `scheme`: refused when a scale's
    /// name is taken by a tensor of the model.
    pub(crate) fn plan(scheme: QuantScheme, model: &Model, choices: &[Choice]) -> Result<Self> {
        for c in choices.iter().filter(|c| c.chosen) {
            let scale = scale_name(c.name);
            if model.find(&scale).is_some() {
                bail!(
                    "--quantize: tensor `{}` would get its scales in `{scale}`, a tensor the model already has",
                    c.name
                );
            }
        }
        Ok(Quantize { scheme })
    }

    /// The scheme, as `--quantize` takes it.
    pub(crate) fn scheme(&self) -> QuantScheme {
        self.scheme
    }

    /// The shape of the scales of a tensor of shape `shape`.
    fn scale_shape(&self, shape: &[usize]) -> Vec<usize> {
        let (rows, cols) = quantized_matrix_shape(shape);
        match self.scheme {
            QuantScheme::PerRow => vec![rows],
            QuantScheme::PerGroup(g) => vec![rows, cols.div_ceil(g).max(1)],
        }
    }

    /// The header entries of `shard` as written with `quantized` tensors in int8: each
    /// followed by its scales, everything else as it was.
    pub(crate) fn entries(
        &self,
        shard: &Checkpoint,
        quantized: &BTreeSet<&str>,
    ) -> Result<Vec<(String, TensorInfo)>> {
        let mut tensors = Vec::with_capacity(shard.tensors().len() + quantized.len());
        for (name, info) in shard.tensors() {
            if quantized.contains(name.as_str()) {
                tensors.push((name.clone(), Dtype::I8, info.shape.clone()));
                tensors.push((scale_name(name), Dtype::F32, self.scale_shape(&info.shape)));
            } else {
                tensors.push((name.clone(), info.dtype, info.shape.clone()));
            }
        }
        Ok(shears_io::layout(tensors)?)
    }

    /// `shard`'s metadata with the quantization recorded: the scheme, and the dtype the
    /// `quantized` tensors had when they all had one.
    pub(crate) fn metadata(
        &self,
        shard: &Checkpoint,
        quantized: &BTreeSet<&str>,
    ) -> HashMap<String, String> {
        let mut metadata = shard.metadata().cloned().unwrap_or_default();
        metadata.insert(QUANTIZATION_KEY.to_owned(), self.scheme.to_string());
        let dtypes: BTreeSet<String> = quantized
            .iter()
            .filter_map(|n| shard.info(n))
            .map(|info| format!("{:?}", info.dtype))
            .collect();
        match dtypes.len() {
            1 => metadata.extend(dtypes.into_iter().map(|d| (QUANTIZED_FROM_KEY.to_owned(), d))),
            _ => {
                metadata.remove(QUANTIZED_FROM_KEY);
            }
        }
        metadata
    }

    /// Tensor `name` of stored shape `shape` quantized, from its values `loaded` in the
    /// run's view (`flat`: in file order; else its matrix view, `transposed` for a
    /// tensor stored `(in, out)`): the int8 values in file order, and the scales.
    pub(crate) fn quantize<T: Float>(
        &self,
        name: &str,
        loaded: &DMatrix<T>,
        shape: &[usize],
        (flat, transposed): (bool, bool),
    ) -> Result<Int8Matrix> {
        let stored = stored_matrix(loaded, shape, flat, transposed);
        Int8Matrix::quantize(&stored, self.scheme)
            .map_err(|e| anyhow::anyhow!("--quantize: tensor `{name}`: {e}"))
    }
}

/// Writes `q`'s values (one byte each, row-major) to `out`.
pub(crate) fn write_values(q: &Int8Matrix, out: &mut dyn Write) -> std::io::Result<()> {
    let bytes: Vec<u8> = q.values().iter().map(|v| v.to_le_bytes()[0]).collect();
    out.write_all(&bytes)
}

/// Writes `q`'s scales (little-endian f32) to `out`.
pub(crate) fn write_scales(q: &Int8Matrix, out: &mut dyn Write) -> std::io::Result<()> {
    let bytes: Vec<u8> = q.scales().iter().flat_map(|s| s.to_le_bytes()).collect();
    out.write_all(&bytes)
}

/// The values of a tensor as its file lays them out, in f32, `rows x cols` as
/// [`quantized_matrix_shape`] sees the stored shape, from the values `loaded` in the
/// run's view.
fn stored_matrix<T: Float>(
    loaded: &DMatrix<T>,
    shape: &[usize],
    flat: bool,
    transposed: bool,
) -> DMatrix<f32> {
    let (rows, cols) = quantized_matrix_shape(shape);
    let single = |v: T| v.as_f64() as f32;
    if flat {
        // Values in file order: row-major.
        let values = loaded.as_slice();
        DMatrix::from_fn(rows, cols, |r, c| single(values[r * cols + c]))
    } else if transposed {
        DMatrix::from_fn(rows, cols, |r, c| single(loaded[(c, r)]))
    } else {
        // The matrix view is the stored `[out, ...]` as `out x rest` already.
        loaded.map(single)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_matrix_follows_the_file_order_in_every_view() {
        // A [2, 3] tensor stored row-major: 0 1 2 / 3 4 5.
        let stored = DMatrix::from_row_slice(2, 3, &[0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let flat = DMatrix::from_vec(6, 1, (0..6).map(f64::from).collect());
        assert_eq!(stored_matrix(&flat, &[2, 3], true, false), stored);
        assert_eq!(stored_matrix(&stored.transpose(), &[2, 3], false, true), stored);
        let wide = stored.map(f64::from);
        assert_eq!(stored_matrix(&wide, &[2, 3], false, false), stored);
        // A conv weight [2, 1, 1, 3] is 2 x 3 too.
        assert_eq!(stored_matrix(&flat, &[2, 1, 1, 3], true, false), stored);
    }
}
