//! `shears prune`: prune a checkpoint tensor by tensor, writing the result atomically.

use std::collections::HashSet;

use anyhow::{Context, Result, bail};
use nalgebra::DMatrix;
use rayon::prelude::*;
use serde::Serialize;
use shears_core::{
    GlobalCount, LayerContext, LayerInput, Mask, PruningStrategy, Rounding, Sparsity, WeightShape,
};
use shears_io::{
    Checkpoint, Dtype, Float, commit_all, encode_mask_set, is_float, stage_safetensors,
    write_matrix, write_values, zeros_in,
};
use shears_strategies::{Criterion, Pattern, Pruner, Scope};

use crate::cli::PruneArgs;
use crate::report::{Table, fraction};
use crate::tensor_filter::prunable_tensors;

#[derive(Debug, Serialize)]
struct Row {
    name: String,
    shape: Vec<usize>,
    dtype: String,
    pruned: bool,
    /// `None` for tensors that are not floating point.
    sparsity_before: Option<f64>,
    sparsity_after: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Totals {
    parameters: usize,
    pruned_tensors_parameters: usize,
    sparsity_before: f64,
    sparsity_after: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    input: String,
    output: String,
    tensors: Vec<Row>,
    total: Totals,
}

/// What a run does to each selected tensor, decided once from the arguments.
struct Job {
    pruner: Pruner<Criterion>,
    scope: Scope,
    sparsity: Sparsity,
    view: View,
}

impl Job {
    fn new(args: &PruneArgs) -> Result<Self> {
        let criterion = args.method.with_seed(args.seed);
        if criterion.needs() == Some(LayerInput::ActivationNorms) {
            bail!(
                "--method {criterion} needs calibration activations, which a single file has none of"
            );
        }
        if args.scope == Scope::Global && args.pattern != Pattern::Unstructured {
            bail!("--scope global ranks single weights: use --pattern unstructured");
        }
        args.pattern.check_sparsity(args.sparsity)?;
        Ok(Job {
            pruner: Pruner::new(criterion).with_pattern(args.pattern),
            scope: args.scope,
            sparsity: args.sparsity,
            view: View::of(criterion, args.pattern),
        })
    }
}

/// How a tensor is held while it is pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    /// Its matrix view, column-major: what structured patterns, N:M, blocks and seeded
    /// random scores are defined on.
    Matrix,
    /// Its values in file order as one column. Unstructured selection by a score of each
    /// weight alone (|w|, |w·g|) keeps the same weights in any layout, and ties to the
    /// lower row-major index are ties to the lower position in the column; so the
    /// transposes into and out of column-major order are skipped.
    Flat,
}

impl View {
    fn of(criterion: Criterion, pattern: Pattern) -> View {
        let elementwise = matches!(criterion, Criterion::Magnitude | Criterion::Gradient);
        if pattern == Pattern::Unstructured && elementwise { View::Flat } else { View::Matrix }
    }

    /// Reads tensor `name` of `ckpt` in this view into `spare`'s allocation.
    fn read<T: Float>(self, ckpt: &Checkpoint, name: &str, spare: Vec<T>) -> Result<DMatrix<T>> {
        Ok(match self {
            View::Matrix => ckpt.read_matrix_reusing(name, spare)?,
            View::Flat => {
                let mut values = spare;
                ckpt.read_values_reusing(name, &mut values)?;
                DMatrix::from_vec(values.len(), 1, values)
            }
        })
    }
}

/// A tensor of the input in its [`View`], with its gradient when the method needs one.
struct Loaded<T: Float> {
    shape: WeightShape,
    view: View,
    weights: DMatrix<T>,
    grads: Option<DMatrix<T>>,
}

/// Loads tensor `name`; its weights reuse `spare`'s allocation (see
/// [`Checkpoint::read_matrix_reusing`]), which [`Loaded::recycle`] hands back.
fn load<T: Float>(
    ckpt: &Checkpoint,
    grads: Option<&Checkpoint>,
    name: &str,
    view: View,
    spare: &mut Vec<T>,
) -> Result<Loaded<T>> {
    let info = ckpt.info(name).with_context(|| format!("no tensor `{name}`"))?;
    let shape = WeightShape::from_dims(&info.shape).with_context(|| format!("tensor `{name}`"))?;
    let weights = view.read(ckpt, name, std::mem::take(spare))?;
    let grads = match grads {
        None => None,
        Some(g) => {
            let gi = g.info(name).with_context(|| {
                format!("{}: no gradient for tensor `{name}`", g.path().display())
            })?;
            if gi.shape != info.shape {
                bail!(
                    "{}: gradient `{name}` has shape {:?}, the weight has {:?}",
                    g.path().display(),
                    gi.shape,
                    info.shape
                );
            }
            Some(
                view.read(g, name, Vec::new())
                    .with_context(|| format!("{}: gradient `{name}`", g.path().display()))?,
            )
        }
    };
    Ok(Loaded { shape, view, weights, grads })
}

impl<T: Float> Loaded<T> {
    /// Gives the weights' buffer back for the next [`load`].
    fn recycle(self, spare: &mut Vec<T>) {
        *spare = self.weights.data.into();
    }

    fn context<'a>(&'a self, name: &'a str) -> LayerContext<'a, T> {
        let ctx = LayerContext::new(name);
        let ctx = if self.view == View::Matrix { ctx.with_shape(self.shape) } else { ctx };
        match &self.grads {
            Some(g) => ctx.with_gradients(g),
            None => ctx,
        }
    }

    /// `mask` (of this view) as a mask of the tensor's matrix view.
    fn matrix_mask(&self, mask: Mask) -> Result<Mask> {
        match self.view {
            View::Matrix => Ok(mask),
            View::Flat => {
                let (_, cols) = self.shape.matrix_shape();
                Ok(Mask::from_fn(self.shape.rows(), cols, |r, c| {
                    mask.get_linear(r * cols + c) == Some(true)
                })?)
            }
        }
    }

    /// Writes the weights in file order as `dtype`.
    fn write(&self, dtype: Dtype, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        match self.view {
            View::Matrix => write_matrix(&self.weights, dtype, out),
            View::Flat => write_values(self.weights.as_slice(), dtype, out),
        }
    }
}

/// Values per parallel task when counting zeros.
const TASK: usize = 1 << 16;

/// How many of `values` are zero, on rayon's threads.
fn zeros<T: Float>(values: &DMatrix<T>) -> usize {
    values.as_slice().par_chunks(TASK).map(zeros_in).sum()
}

pub(crate) fn run(args: &PruneArgs) -> Result<()> {
    let mut paths = vec![("input", args.input.as_path(), false), ("-o", &args.output, true)];
    if let Some(g) = &args.grads {
        paths.push(("--grads", g, false));
    }
    if let Some(m) = &args.masks_out {
        paths.push(("--masks-out", m, true));
    }
    shears_io::paths::check_distinct(&paths)?;
    let job = Job::new(args)?;
    let ckpt = Checkpoint::open(&args.input)?;
    let chosen: HashSet<String> =
        prunable_tensors(&ckpt, &args.include, &args.exclude)?.into_iter().collect();
    // Every chosen tensor must fit the pattern, checked from the header before any
    // weight is read.
    for (name, info) in ckpt.tensors().iter().filter(|(n, _)| chosen.contains(n)) {
        let shape =
            WeightShape::from_dims(&info.shape).with_context(|| format!("tensor `{name}`"))?;
        args.pattern.check_fits(name, &shape, args.sparsity)?;
    }
    let grads = match (job.pruner.criterion(), &args.grads) {
        (Criterion::Gradient, Some(path)) => Some(Checkpoint::open(path)?),
        (Criterion::Gradient, None) => bail!("--method gradient needs --grads GRADS.safetensors"),
        (_, _) => None,
    };
    // f32 holds f16, bf16 and f32 values exactly and halves the memory of f64; tensors
    // are worked on in f64 only when one of them (or its gradient) is f64.
    let is_f64 = |c: &Checkpoint, name: &str| c.info(name).is_some_and(|i| i.dtype == Dtype::F64);
    let double =
        chosen.iter().any(|n| is_f64(&ckpt, n) || grads.as_ref().is_some_and(|g| is_f64(g, n)));
    let rows = if double {
        prune::<f64>(args, &job, &ckpt, grads.as_ref(), &chosen)?
    } else {
        prune::<f32>(args, &job, &ckpt, grads.as_ref(), &chosen)?
    };
    report(args, rows)
}

fn prune<T: Float>(
    args: &PruneArgs,
    job: &Job,
    ckpt: &Checkpoint,
    grads: Option<&Checkpoint>,
    chosen: &HashSet<String>,
) -> Result<Vec<Row>> {
    let order: Vec<&str> = ckpt.names().filter(|n| chosen.contains(*n)).collect();
    let mut spare = Vec::new();
    let mut global = match job.scope {
        Scope::Layer => None,
        Scope::Global => Some(global_threshold::<T>(job, ckpt, grads, &order, &mut spare)?),
    };

    let mut rows = Vec::new();
    let mut masks: Vec<(String, Mask)> = Vec::new();
    let out = args.output.as_path();
    let staged =
        stage_safetensors(out, ckpt.tensors(), ckpt.metadata().cloned(), |name, w| -> Result<()> {
            let info = ckpt.info(name).with_context(|| format!("no tensor `{name}`"))?;
            let written = |r: std::io::Result<()>| {
                r.map_err(|e| shears_io::Error::io("write", out, e))
                    .with_context(|| format!("cannot write tensor `{name}`"))
            };
            if !chosen.contains(name) {
                let s = if is_float(info.dtype) {
                    let count = info.shape.iter().product();
                    Some(fraction(ckpt.count_zeros(name)?, count))
                } else {
                    None
                };
                rows.push(Row {
                    name: name.into(),
                    shape: info.shape.clone(),
                    dtype: format!("{:?}", info.dtype),
                    pruned: false,
                    sparsity_before: s,
                    sparsity_after: s,
                });
                return Ok(ckpt.copy_to(name, w, out)?);
            }
            let mut t = load::<T>(ckpt, grads, name, job.view, &mut spare)?;
            let before = fraction(zeros(&t.weights), t.weights.len());
            let mask = match global.as_mut() {
                Some(g) => match GlobalInput::of(job, name, &t)? {
                    GlobalInput::Magnitude(w) => g.mask_magnitude(w, None)?,
                    GlobalInput::Scores(s) => g.mask(&s, None)?,
                },
                None => job.pruner.mask(&t.weights, &t.context(name), job.sparsity)?,
            };
            mask.apply_in_place(&mut t.weights)?;
            let after = zeros(&t.weights);
            rows.push(Row {
                name: name.into(),
                shape: info.shape.clone(),
                dtype: format!("{:?}", info.dtype),
                pruned: true,
                sparsity_before: Some(before),
                sparsity_after: Some(fraction(after, t.weights.len())),
            });
            written(t.write(info.dtype, w))?;
            if args.masks_out.is_some() {
                masks.push((name.to_owned(), t.matrix_mask(mask)?));
            }
            t.recycle(&mut spare);
            Ok(())
        })
        .with_context(|| format!("cannot write {}", out.display()))?;

    let mut outputs = vec![staged];
    if let Some(path) = &args.masks_out {
        let (pending, mut file) = shears_io::PendingFile::create(path)?;
        std::io::Write::write_all(&mut file, &encode_mask_set(&masks))
            .with_context(|| format!("cannot write {}", path.display()))?;
        outputs.push((pending, file));
    }
    commit_all(outputs)?;
    Ok(rows)
}

/// Global scope: two read-only passes fix one threshold across all selected tensors,
/// holding one tensor at a time.
fn global_threshold<T: Float>(
    job: &Job,
    ckpt: &Checkpoint,
    grads: Option<&Checkpoint>,
    order: &[&str],
    spare: &mut Vec<T>,
) -> Result<shears_core::GlobalMasks<T>> {
    let mut count = GlobalCount::<T>::new(Rounding::HalfEven);
    for name in order {
        let t = load::<T>(ckpt, grads, name, job.view, spare)?;
        match GlobalInput::of(job, name, &t)? {
            GlobalInput::Magnitude(w) => count.add_magnitude(name, w, None)?,
            GlobalInput::Scores(s) => count.add(name, &s, None)?,
        }
        t.recycle(spare);
    }
    let mut bucket = count.plan(job.sparsity);
    for name in order {
        let t = load::<T>(ckpt, grads, name, job.view, spare)?;
        match GlobalInput::of(job, name, &t)? {
            GlobalInput::Magnitude(w) => bucket.add_magnitude(w, None)?,
            GlobalInput::Scores(s) => bucket.add(&s, None)?,
        }
        t.recycle(spare);
    }
    Ok(bucket.threshold())
}

/// What a global selection ranks for one tensor: the weights themselves, read as |w| in
/// place (magnitude, no copy), or a score matrix.
enum GlobalInput<'a, T: Float> {
    Magnitude(&'a DMatrix<T>),
    Scores(DMatrix<T>),
}

impl<'a, T: Float> GlobalInput<'a, T> {
    fn of(job: &Job, name: &str, t: &'a Loaded<T>) -> Result<Self> {
        let pruner = &job.pruner;
        Ok(if PruningStrategy::<T>::scores_are_magnitude(pruner) {
            GlobalInput::Magnitude(&t.weights)
        } else {
            GlobalInput::Scores(pruner.scores(&t.weights, &t.context(name))?)
        })
    }
}

fn report(args: &PruneArgs, rows: Vec<Row>) -> Result<()> {
    let weight = |r: &Row| r.shape.iter().product::<usize>();
    let floats = || rows.iter().filter(|r| r.sparsity_before.is_some());
    let total: usize = floats().map(weight).sum();
    let pruned_params: usize = rows.iter().filter(|r| r.pruned).map(weight).sum();
    let zeros_before: f64 =
        floats().map(|r| r.sparsity_before.unwrap_or(0.0) * weight(r) as f64).sum();
    let zeros_after: f64 =
        floats().map(|r| r.sparsity_after.unwrap_or(0.0) * weight(r) as f64).sum();
    let totals = Totals {
        parameters: total,
        pruned_tensors_parameters: pruned_params,
        sparsity_before: zeros_before / total.max(1) as f64,
        sparsity_after: zeros_after / total.max(1) as f64,
    };
    if args.json {
        let report = Report {
            input: args.input.display().to_string(),
            output: args.output.display().to_string(),
            tensors: rows,
            total: totals,
        };
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    let mut table =
        Table::new(&["tensor", "shape", "dtype", "pruned", "sparsity before", "sparsity after"]);
    for r in &rows {
        table.row(vec![
            r.name.clone(),
            format!("{:?}", r.shape),
            r.dtype.clone(),
            if r.pruned { "yes".into() } else { "no".into() },
            r.sparsity_before.map_or_else(|| "-".into(), |s| format!("{s:.4}")),
            r.sparsity_after.map_or_else(|| "-".into(), |s| format!("{s:.4}")),
        ]);
    }
    table.row(vec![
        "total".into(),
        format!("{} float params", totals.parameters),
        String::new(),
        format!("{} params", totals.pruned_tensors_parameters),
        format!("{:.4}", totals.sparsity_before),
        format!("{:.4}", totals.sparsity_after),
    ]);
    out!("{}", table.render())?;
    outln!("wrote {}", args.output.display())?;
    Ok(())
}
