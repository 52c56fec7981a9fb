//! What `prune` reads besides the model: gradients, scores and masks, each tensor in the
//! same view as its weight.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nalgebra::DMatrix;
use rayon::prelude::*;
use shears_core::{Mask, WeightShape};
use shears_io::{
    Checkpoint, Dtype, Float, Model, mask_from_bytes, torch_mask_name, weight_of_torch_mask,
    zeros_in,
};

use crate::tensor_filter::Choice;

/// Values per parallel task when counting zeros.
const TASK: usize = 1 << 16;

/// How many of `values` are zero, on rayon's threads.
pub(crate) fn zeros<T: Float>(values: &DMatrix<T>) -> usize {
    values.as_slice().par_chunks(TASK).map(zeros_in).sum()
}

/// How many of `weights` a run starts from as pruned: those `kept` (a `--masks-in`
/// mask) prunes and the zeros among the rest, or all its zeros without a mask.
pub(crate) fn zeros_before<T: Float>(weights: &DMatrix<T>, kept: Option<&Mask>) -> usize {
    match kept {
        Some(kept) => {
            let w = weights.as_slice();
            kept.count_pruned() + kept.iter_kept_linear().filter(|&i| w[i] == T::zero()).count()
        }
        None => zeros(weights),
    }
}

/// How a tensor is held while it is pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum View {
    /// Its matrix view, column-major (transposed for a weight stored `(in, out)`): what
    /// structured patterns, N:M, blocks and seeded random scores are defined on.
    Matrix,
    /// Its values in file order as one column. Unstructured selection by a score of each
    /// weight alone (|w|, |w·g|, given scores) keeps the same weights in any layout, and
    /// ties to the lower row-major index are ties to the lower position in the column;
    /// so the transposes into and out of column-major order are skipped.
    Flat,
}

/// A tensor's place in the work: its name, the shape of its view, and how to read it.
#[derive(Debug, Clone)]
pub(crate) struct Tensor<'a> {
    /// The shard that holds it.
    pub(crate) shard: usize,
    pub(crate) name: &'a str,
    /// The stored shape (as in the file).
    pub(crate) dims: &'a [usize],
    pub(crate) dtype: Dtype,
    /// The shape patterns run on: the matrix view, `(out, in)` for a transposed weight.
    pub(crate) shape: WeightShape,
    pub(crate) transposed: bool,
}

impl<'a> Tensor<'a> {
    pub(crate) fn of(choice: &Choice<'a>) -> Result<Tensor<'a>> {
        let info = choice.info;
        let stored = WeightShape::from_dims(&info.shape)
            .with_context(|| format!("tensor `{}`", choice.name))?;
        let shape = if choice.transposed {
            WeightShape::dense(stored.cols(), stored.rows())?
        } else {
            stored
        };
        Ok(Tensor {
            shard: choice.shard,
            name: choice.name,
            dims: &info.shape,
            dtype: info.dtype,
            shape,
            transposed: choice.transposed,
        })
    }

    /// Weight count.
    pub(crate) fn len(&self) -> usize {
        self.shape.len()
    }

    /// Reads this tensor's counterpart in `ckpt` (the weight itself, or a gradient or
    /// score of the same name and shape) in `view`, into `spare`'s allocation.
    pub(crate) fn read<T: Float>(
        &self,
        ckpt: &Checkpoint,
        view: View,
        spare: Vec<T>,
    ) -> Result<DMatrix<T>> {
        Ok(match view {
            View::Flat => {
                let mut values = spare;
                ckpt.read_values_reusing(self.name, &mut values)?;
                DMatrix::from_vec(values.len(), 1, values)
            }
            View::Matrix if self.transposed => {
                ckpt.read_matrix_reusing(self.name, spare)?.transpose()
            }
            View::Matrix => ckpt.read_matrix_reusing(self.name, spare)?,
        })
    }

    /// [`Tensor::read`], refusing a NaN or infinity with one line that names the file,
    /// the tensor and the value's position in its stored shape.
    pub(crate) fn read_finite<T: Float>(
        &self,
        ckpt: &Checkpoint,
        view: View,
        spare: Vec<T>,
    ) -> Result<DMatrix<T>> {
        let m = self.read(ckpt, view, spare)?;
        let Some(i) = m.iter().position(|v| !v.is_finite()) else {
            return Ok(m);
        };
        bail!(
            "{}: tensor `{}` holds {} at {:?}: pruning needs finite values",
            ckpt.path().display(),
            self.name,
            m[i],
            self.stored_position(&m, i, view)
        )
    }

    /// The position in the stored tensor of element `i` (column-major) of `m`, its
    /// values read in `view`.
    fn stored_position<T>(&self, m: &DMatrix<T>, i: usize, view: View) -> Vec<usize> {
        let (r, c) = (i % m.nrows(), i / m.nrows());
        // The row-major index of the value in the stored tensor.
        let stored = match view {
            View::Flat => r,
            View::Matrix if self.transposed => c * m.nrows() + r,
            View::Matrix => r * m.ncols() + c,
        };
        let mut position = Vec::with_capacity(self.dims.len());
        let mut rest = stored;
        for &d in self.dims.iter().rev() {
            position.push(rest % d.max(1));
            rest /= d.max(1);
        }
        position.reverse();
        position
    }

    /// `mask` of the stored matrix view (as a mask file holds it) in `view`.
    pub(crate) fn mask_to_view(&self, mask: &Mask, view: View) -> Result<Mask> {
        let (rows, cols) = mask.shape();
        Ok(match view {
            View::Flat => {
                Mask::from_fn(rows * cols, 1, |i, _| mask.get(i / cols, i % cols) == Some(true))?
            }
            View::Matrix if self.transposed => {
                Mask::from_fn(cols, rows, |r, c| mask.get(c, r) == Some(true))?
            }
            View::Matrix => mask.clone(),
        })
    }

    /// `mask` of `view` as a mask of the stored matrix view.
    pub(crate) fn mask_from_view(&self, mask: &Mask, view: View) -> Result<Mask> {
        let stored = WeightShape::from_dims(self.dims)?;
        let (rows, cols) = stored.matrix_shape();
        Ok(match view {
            View::Flat => {
                Mask::from_fn(rows, cols, |r, c| mask.get_linear(r * cols + c) == Some(true))?
            }
            View::Matrix if self.transposed => {
                Mask::from_fn(rows, cols, |r, c| mask.get(c, r) == Some(true))?
            }
            View::Matrix => mask.clone(),
        })
    }
}

/// A tensor as pruning works on it: its weights, the scores the files give it, and the
/// mask it starts from, all in one view.
pub(crate) struct Loaded<T> {
    pub(crate) weights: DMatrix<T>,
    pub(crate) scores: Option<DMatrix<T>>,
    pub(crate) kept: Option<Mask>,
}

/// Files of per-tensor data, opened and checked against the chosen tensors before any
/// weight is read.
pub(crate) struct Sources {
    /// Gradient files, one per batch.
    grads: Vec<Checkpoint>,
    /// A scores file.
    scores: Option<Checkpoint>,
    masks: Option<MaskSource>,
}

/// Where starting masks come from.
enum MaskSource {
    /// A safetensors file of `NAME_mask` tensors.
    Torch(Checkpoint),
    /// A shears mask set, read whole (it is bit-packed).
    Set(Vec<(String, Mask)>),
}

impl Sources {
    /// Opens the files and checks that each holds every chosen tensor's counterpart with
    /// its shape, and that the masks file holds no mask for a tensor `model` lacks or
    /// that is not chosen.
    pub(crate) fn open(
        model: &Model,
        grads: &[PathBuf],
        scores: Option<&Path>,
        masks: Option<&Path>,
        chosen: &[Tensor],
    ) -> Result<Sources> {
        let open_counterparts = |path: &Path, what: &str| -> Result<Checkpoint> {
            let ckpt = Checkpoint::open(path)?;
            for t in chosen {
                let info = ckpt.info(t.name).with_context(|| {
                    format!("{}: no {what} for tensor `{}`", path.display(), t.name)
                })?;
                if info.shape != t.dims {
                    bail!(
                        "{}: {what} `{}` has shape {:?}, the weight has {:?}",
                        path.display(),
                        t.name,
                        info.shape,
                        t.dims
                    );
                }
            }
            Ok(ckpt)
        };
        let grads =
            grads.iter().map(|p| open_counterparts(p, "gradient")).collect::<Result<Vec<_>>>()?;
        let scores = scores.map(|p| open_counterparts(p, "scores")).transpose()?;
        let masks = masks.map(|p| open_masks(model, p, chosen)).transpose()?;
        Ok(Sources { grads, scores, masks })
    }

    /// Whether the files hold f64 data for `name` (the work then runs in f64).
    pub(crate) fn any_f64(&self, name: &str) -> bool {
        self.grads
            .iter()
            .chain(&self.scores)
            .any(|c| c.info(name).is_some_and(|i| i.dtype == Dtype::F64))
    }

    /// Tensor `t` of `model` in `view`, with its scores from the files and its starting
    /// mask, if there are any; the weights reuse `spare`'s allocation.
    pub(crate) fn load<T: Float>(
        &self,
        model: &Model,
        t: &Tensor,
        view: View,
        spare: Vec<T>,
    ) -> Result<Loaded<T>> {
        let weights = t.read_finite(&model.shards()[t.shard], view, spare)?;
        let scores = self.scores(t, &weights, view)?;
        let kept = self.mask(t, view)?;
        Ok(Loaded { weights, scores, kept })
    }

    /// The scores of `t` in `view`, given its weights `w` in that view: the scores file's
    /// values, or `sum_b |w * g_b|` over the gradient files; `None` when no file scores.
    fn scores<T: Float>(
        &self,
        t: &Tensor,
        w: &DMatrix<T>,
        view: View,
    ) -> Result<Option<DMatrix<T>>> {
        if let Some(ckpt) = &self.scores {
            return Ok(Some(t.read_finite(ckpt, view, Vec::new())?));
        }
        let mut sum: Option<DMatrix<T>> = None;
        for (file, ckpt) in self.grads.iter().enumerate() {
            let g = t.read_finite(ckpt, view, Vec::new())?;
            let term = w.zip_map(&g, |w, g| (w * g).abs());
            let total = match sum {
                None => term,
                Some(s) => s + term,
            };
            if let Some(i) = total.iter().position(|v| !v.is_finite()) {
                bail!(
                    "{}: tensor `{}`: |w * g| at {:?} overflows {}{}: its weight and gradients are finite, but pruning needs finite scores",
                    ckpt.path().display(),
                    t.name,
                    t.stored_position(&total, i, view),
                    std::any::type_name::<T>(),
                    if file > 0 { " (summed over the gradient files)" } else { "" }
                );
            }
            sum = Some(total);
        }
        Ok(sum)
    }

    /// The starting mask of `t` in `view`, if masks were given.
    pub(crate) fn mask(&self, t: &Tensor, view: View) -> Result<Option<Mask>> {
        let stored = match &self.masks {
            None => return Ok(None),
            Some(MaskSource::Torch(ckpt)) => {
                let bytes = ckpt.read_bytes(&torch_mask_name(t.name))?;
                mask_from_bytes(t.name, t.dims, &bytes)
                    .with_context(|| ckpt.path().display().to_string())?
            }
            Some(MaskSource::Set(set)) => match set.iter().find(|(n, _)| *n == t.name) {
                Some((_, m)) => m.clone(),
                None => bail!("the masks have none for tensor `{}`", t.name),
            },
        };
        Ok(Some(t.mask_to_view(&stored, view)?))
    }
}

/// Opens a masks file and checks it has every chosen tensor's mask, of its shape, and no
/// mask for a tensor `model` does not have or that is not chosen.
fn open_masks(model: &Model, path: &Path, chosen: &[Tensor]) -> Result<MaskSource> {
    // A mask for a tensor the model does not have means masks of another model (or a
    // renamed one), and one for a tensor this run leaves alone would not be applied:
    // both are refused, rather than pruning with the masks that happen to match.
    let stranger = |weight: &str| -> Result<()> {
        if model.find(weight).is_none() {
            bail!("{}: mask for `{weight}`, which the model does not have", path.display());
        }
        if !chosen.iter().any(|t| t.name == weight) {
            bail!(
                "{}: mask for `{weight}`, which this run does not prune: choose it (--include) or leave its mask out",
                path.display()
            );
        }
        Ok(())
    };
    match Checkpoint::open(path) {
        Ok(ckpt) => {
            // A name the model holds itself (a `causal_mask` buffer of a state dict given
            // as the masks) is not a pruning mask.
            let masks = ckpt.names().filter(|name| model.find(name).is_none());
            let mut any = false;
            for weight in masks.filter_map(weight_of_torch_mask) {
                stranger(weight)?;
                any = true;
            }
            if !any && !chosen.is_empty() {
                bail!(
                    "{}: no NAME_mask tensor: not a mask file (prune --masks-out writes one)",
                    path.display()
                );
            }
            for t in chosen {
                let name = torch_mask_name(t.name);
                let info = ckpt
                    .info(&name)
                    .with_context(|| {
                        format!(
                            "{}: no mask `{name}` for tensor `{}`, which this run prunes: --exclude it, or give masks for it",
                            path.display(),
                            t.name
                        )
                    })?;
                if info.shape != t.dims || !matches!(info.dtype, Dtype::U8 | Dtype::BOOL) {
                    bail!(
                        "{}: mask `{name}` is {:?} of shape {:?}; tensor `{}` needs u8 or bool of shape {:?}",
                        path.display(),
                        info.dtype,
                        info.shape,
                        t.name,
                        t.dims
                    );
                }
            }
            Ok(MaskSource::Torch(ckpt))
        }
        Err(shears_io::Error::NotSafetensors {
            kind: shears_io::FileKind::Shears("mask set"),
            ..
        }) => {
            let set = shears_io::read_mask_set(path)?;
            for (weight, _) in &set {
                stranger(weight)?;
            }
            for t in chosen {
                let stored = WeightShape::from_dims(t.dims)?.matrix_shape();
                match set.iter().find(|(n, _)| *n == t.name) {
                    Some((_, m)) if m.shape() == stored => {}
                    Some((_, m)) => bail!(
                        "{}: the mask of `{}` is {:?}, the tensor's matrix is {stored:?}",
                        path.display(),
                        t.name,
                        m.shape()
                    ),
                    None => bail!("{}: no mask for tensor `{}`", path.display(), t.name),
                }
            }
            Ok(MaskSource::Set(set))
        }
        Err(e) => Err(e.into()),
    }
}
