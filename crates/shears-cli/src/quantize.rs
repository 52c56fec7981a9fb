//! `shears prune --quantize`: pruned weights written as int8 beside their scales, in the
//! layout shears-io reads back (see [`shears_io::scale_name`]).

use std::collections::{BTreeSet, HashMap};
use std::io::Write;

use anyhow::{Result, bail};
use nalgebra::DMatrix;
use shears_io::{
    Checkpoint, Dtype, Float, Model, QUANTIZATION_KEY, QUANTIZED_FROM_KEY, SCALE_SUFFIX,
    TensorInfo, quantization_group, quantized_matrix_shape, scale_name,
};
use shears_sparse::{Int8Matrix, QuantScheme};

use crate::tensor_filter::Choice;

/// Which tensors a run writes as int8, and how, shard by shard.
///
/// With `--quantize`, every chosen tensor that has values; without it, the chosen
/// tensors that already were int8 (a quantized model pruned further), under their own
/// file's scheme. A file holds one scheme (its metadata says which), so a `--quantize`
/// unlike the scheme of int8 tensors a shard keeps is refused.
#[derive(Debug, Clone)]
pub(crate) struct Quantize {
    /// `--quantize`.
    requested: Option<QuantScheme>,
    /// Per shard: the scheme its int8 tensors are written with, and their names.
    shards: Vec<Option<(QuantScheme, BTreeSet<String>)>>,
    /// Int8 tensors of the input quantized again in another scheme (a shard whose int8
    /// tensors are all chosen): their count, the first one's name, and its scheme.
    requantized: Option<(usize, String, QuantScheme)>,
}

/// The scheme of `shard`'s int8 tensors, if it has any.
fn scheme_of(shard: &Checkpoint) -> Result<Option<QuantScheme>> {
    if !shard.tensors().iter().any(|(n, i)| i.dtype == Dtype::I8 && shard.decodes(n)) {
        return Ok(None);
    }
    Ok(Some(match quantization_group(shard.path(), shard.metadata())? {
        Some(g) => QuantScheme::PerGroup(g),
        None => QuantScheme::PerRow,
    }))
}

impl Quantize {
    /// What a run with `--quantize requested` (or none) quantizes of `choices`: `None`
    /// when nothing. Refused: a scale name taken by another tensor, a scheme unlike the
    /// one of the int8 tensors a shard keeps.
    pub(crate) fn plan(
        requested: Option<QuantScheme>,
        model: &Model,
        choices: &[Choice],
    ) -> Result<Option<Self>> {
        let mut shards = Vec::with_capacity(model.shards().len());
        let mut requantized: Option<(usize, String, QuantScheme)> = None;
        for (s, shard) in model.shards().iter().enumerate() {
            let existing = scheme_of(shard)?;
            let mine = || choices.iter().filter(move |c| c.shard == s && c.chosen);
            // An empty tensor has nothing to quantize (and a shape like [2^34, 0] would
            // ask for scales it has no bytes for): it is written as it is.
            let has_values = |c: &&Choice| c.info.shape.iter().product::<usize>() > 0;
            let (scheme, names): (_, BTreeSet<String>) = match (requested, existing) {
                (Some(r), _) => (r, mine().filter(has_values).map(|c| c.name.to_owned()).collect()),
                (None, Some(e)) => (
                    e,
                    mine()
                        .filter(|c| c.info.dtype == Dtype::I8)
                        .filter(has_values)
                        .map(|c| c.name.to_owned())
                        .collect(),
                ),
                (None, None) => {
                    shards.push(None);
                    continue;
                }
            };
            // Int8 tensors written as they are keep their scales, so their scheme.
            if let (Some(r), Some(e)) = (requested, existing)
                && r != e
                && let Some((name, _)) = shard
                    .tensors()
                    .iter()
                    .find(|(n, i)| i.dtype == Dtype::I8 && shard.decodes(n) && !names.contains(n))
            {
                bail!(
                    "--quantize {r}: {} keeps int8 tensors quantized as {e} (`{name}`), and a file holds one scheme: give --quantize {e}",
                    shard.path().display()
                );
            }
            for name in &names {
                let scale = scale_name(name);
                // A tensor quantized before has its scales there already: replaced.
                let own = shard.info(name).is_some_and(|i| i.dtype == Dtype::I8);
                if !own && model.find(&scale).is_some() {
                    bail!(
                        "--quantize: tensor `{name}` would get its scales in `{scale}`, a tensor the model already has"
                    );
                }
            }
            if let Some(e) = existing
                && e != scheme
            {
                let int8 = |n: &&String| shard.info(n).is_some_and(|i| i.dtype == Dtype::I8);
                for name in names.iter().filter(int8) {
                    let (count, _, _) = requantized.get_or_insert_with(|| (0, name.clone(), e));
                    *count += 1;
                }
            }
            shards.push((!names.is_empty()).then_some((scheme, names)));
        }
        if shards.iter().all(Option::is_none) {
            return Ok(None);
        }
        Ok(Some(Quantize { requested, shards, requantized }))
    }

    /// The schemes written, as `--quantize` takes them (for the report and the files'
    /// record): `--quantize`'s, or those of the model's int8 tensors quantized anew,
    /// comma-separated.
    pub(crate) fn describe(&self) -> String {
        if let Some(r) = self.requested {
            return r.to_string();
        }
        let schemes: BTreeSet<String> =
            self.shards.iter().flatten().map(|(scheme, _)| scheme.to_string()).collect();
        schemes.into_iter().collect::<Vec<_>>().join(", ")
    }

    /// A warning if int8 tensors of the input are quantized again in another scheme:
    /// their values were rounded to the old scales' steps and are rounded again.
    pub(crate) fn requantized_warning(&self) -> Option<String> {
        let (count, first, old) = self.requantized.as_ref()?;
        let new = self.describe();
        let (which, verb, their) = match count {
            1 => (format!("int8 tensor `{first}`"), "is", "its"),
            n => (format!("{n} int8 tensors (the first: `{first}`)"), "are", "their"),
        };
        Some(format!(
            "{which}, quantized as {old} in the input, {verb} quantized again as {new}: {their} values are rounded a second time (quantizing the floating-point model rounds once)"
        ))
    }

    /// Whether some shard is quantized in groups.
    pub(crate) fn grouped(&self) -> bool {
        self.shards.iter().flatten().any(|(scheme, _)| matches!(scheme, QuantScheme::PerGroup(_)))
    }

    /// Whether shard `s` writes tensor `name` as int8.
    pub(crate) fn quantizes(&self, s: usize, name: &str) -> bool {
        self.shards[s].as_ref().is_some_and(|(_, names)| names.contains(name))
    }

    /// Whether `name` is the old scales of a tensor shard `s` quantizes anew: not
    /// copied, since new ones are written.
    pub(crate) fn replaces(&self, s: usize, name: &str) -> bool {
        name.strip_suffix(SCALE_SUFFIX).is_some_and(|w| self.quantizes(s, w))
    }

    fn scheme(&self, s: usize) -> Option<QuantScheme> {
        self.shards[s].as_ref().map(|(scheme, _)| *scheme)
    }

    /// The shape of the scales of a tensor of shape `shape` under `scheme`.
    fn scale_shape(scheme: QuantScheme, shape: &[usize]) -> Vec<usize> {
        let (rows, cols) = quantized_matrix_shape(shape);
        match scheme {
            QuantScheme::PerRow => vec![rows],
            QuantScheme::PerGroup(g) => vec![rows, cols.div_ceil(g).max(1)],
        }
    }

    /// The header entries of shard `s` as written: each tensor it quantizes as int8
    /// followed by its scales, old scales of those dropped, everything else as it was;
    /// `None` when the shard is written as it is.
    pub(crate) fn entries(
        &self,
        s: usize,
        shard: &Checkpoint,
    ) -> Result<Option<Vec<(String, TensorInfo)>>> {
        let Some(scheme) = self.scheme(s) else { return Ok(None) };
        let mut tensors = Vec::with_capacity(shard.tensors().len() * 2);
        for (name, info) in shard.tensors() {
            if self.quantizes(s, name) {
                tensors.push((name.clone(), Dtype::I8, info.shape.clone()));
                tensors.push((
                    scale_name(name),
                    Dtype::F32,
                    Self::scale_shape(scheme, &info.shape),
                ));
            } else if !self.replaces(s, name) {
                tensors.push((name.clone(), info.dtype, info.shape.clone()));
            }
        }
        Ok(Some(shears_io::layout(tensors)?))
    }

    /// Shard `s`'s metadata with its quantization recorded: the scheme, and the dtype its
    /// int8 tensors were quantized from when they all had one.
    pub(crate) fn metadata(&self, s: usize, shard: &Checkpoint) -> Option<HashMap<String, String>> {
        let (scheme, names) = self.shards[s].as_ref()?;
        let mut metadata = shard.metadata().cloned().unwrap_or_default();
        let before = metadata.remove(QUANTIZED_FROM_KEY);
        metadata.insert(QUANTIZATION_KEY.to_owned(), scheme.to_string());
        // Int8 tensors (quantized before, or now again) came from the file's record.
        let mut dtypes = BTreeSet::new();
        for (name, info) in shard.tensors() {
            match info.dtype {
                Dtype::I8 if shard.decodes(name) => {
                    dtypes.insert(before.clone().unwrap_or_else(|| "unknown".into()));
                }
                dtype if names.contains(name.as_str()) => {
                    dtypes.insert(format!("{dtype:?}"));
                }
                _ => {}
            }
        }
        if let (1, Some(from)) = (dtypes.len(), dtypes.pop_first())
            && from != "unknown"
        {
            metadata.insert(QUANTIZED_FROM_KEY.to_owned(), from);
        }
        Some(metadata)
    }

    /// Tensor `name` of shard `s`, of stored shape `shape`, quantized from its values
    /// `loaded` in the run's view (`flat`: in file order; else its matrix view,
    /// `transposed` for a tensor stored `(in, out)`): the int8 values in file order,
    /// and the scales.
    pub(crate) fn quantize<T: Float>(
        &self,
        s: usize,
        name: &str,
        loaded: &DMatrix<T>,
        shape: &[usize],
        (flat, transposed): (bool, bool),
    ) -> Result<Int8Matrix> {
        let Some(scheme) = self.scheme(s) else {
            bail!("internal error: tensor `{name}` quantized in a shard that quantizes nothing")
        };
        // f64 weights beyond f32's range have no f32 scale.
        if let Some(v) = loaded.iter().find(|v| v.as_f64().abs() > f64::from(f32::MAX)) {
            bail!(
                "--quantize: tensor `{name}` holds {}, beyond the range of f32, which int8 scales are in",
                v.as_f64()
            );
        }
        let stored = stored_matrix(loaded, shape, flat, transposed);
        let q = Int8Matrix::quantize(&stored, scheme)
            .map_err(|e| anyhow::anyhow!("--quantize: tensor `{name}`: {e}"))?;
        // The file's readers (shears-io) take a scale only if 128 times it, int8's widest
        // value, is finite: weights within 1/128 of f32's largest have scales past that.
        if q.scales().iter().any(|s| !(s * 128.0).is_finite()) {
            let most = loaded.iter().fold(0.0f64, |m, v| m.max(v.as_f64().abs()));
            bail!(
                "--quantize: tensor `{name}` holds a weight of magnitude {most}, too large for int8: its scale ({most} / 127) times 128 would not be finite in f32"
            );
        }
        Ok(q)
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
