//! `shears prune`: prune a checkpoint tensor by tensor, writing the result atomically.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, Result, bail};
use nalgebra::DMatrix;
use rayon::prelude::*;
use serde::Serialize;
use shears_core::{
    GlobalCount, LayerContext, Mask, PruningStrategy, Reduction, Rounding, WeightShape,
};
use shears_strategies::{Axis, Gradient, Magnitude, Pattern, Pruner, Random, Structured};

use safetensors::Dtype;
use shears_cli::checkpoint::{Checkpoint, Float, is_float, write_matrix, write_values, zeros_in};
use shears_cli::parse::PatternArg;

use crate::cli::{Method, PruneArgs, ScopeArg};
use crate::report::{Table, fraction};
use crate::select::select;
use crate::tensors::{write_file_atomic, write_streaming};

/// The magic tag of a mask-set file.
pub(crate) const MASKS_MAGIC: &[u8; 8] = b"SHEARSMS";
/// Its format version.
pub(crate) const MASKS_VERSION: u32 = 1;

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

fn same_file(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| -> Option<std::path::PathBuf> {
        if let Ok(c) = p.canonicalize() {
            return Some(c);
        }
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.canonicalize().ok()?,
            _ => std::env::current_dir().ok()?,
        };
        Some(parent.join(p.file_name()?))
    };
    matches!((canon(a), canon(b)), (Some(x), Some(y)) if x == y)
}

fn strategy<T: Float>(args: &PruneArgs, shape: &WeightShape) -> Box<dyn PruningStrategy<T>> {
    let pattern = match args.pattern {
        PatternArg::Unstructured => Pattern::Unstructured,
        PatternArg::Rows => Pattern::Structured(Structured::new(if shape.is_conv() {
            Axis::Filters
        } else {
            Axis::Rows
        })),
        PatternArg::Columns => Pattern::Structured(Structured::new(Axis::Columns)),
        PatternArg::Nm(p) => Pattern::NM(p),
        PatternArg::Block(b) => Pattern::Blocks { shape: b, reduction: Reduction::L2 },
    };
    match args.method {
        Method::Magnitude => Box::new(Pruner::new(Magnitude).with_pattern(pattern)),
        Method::Gradient => Box::new(Pruner::new(Gradient).with_pattern(pattern)),
        Method::Random => Box::new(Pruner::new(Random::new(args.seed)).with_pattern(pattern)),
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
    fn of(args: &PruneArgs) -> View {
        let elementwise = matches!(args.method, Method::Magnitude | Method::Gradient);
        if args.pattern == PatternArg::Unstructured && elementwise {
            View::Flat
        } else {
            View::Matrix
        }
    }

    /// Reads tensor `name` of `ckpt` in this view into `spare`'s allocation.
    fn read<T: Float>(self, ckpt: &Checkpoint, name: &str, spare: Vec<T>) -> Result<DMatrix<T>> {
        match self {
            View::Matrix => ckpt.read_matrix_reusing(name, spare),
            View::Flat => {
                let mut values = spare;
                ckpt.read_values_reusing(name, &mut values)?;
                Ok(DMatrix::from_vec(values.len(), 1, values))
            }
        }
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
    fn write(&self, dtype: Dtype, out: &mut dyn std::io::Write) -> Result<()> {
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
    if same_file(&args.input, &args.output) {
        bail!(
            "refusing to overwrite the input {}: choose another output path",
            args.input.display()
        );
    }
    let ckpt = Checkpoint::open(&args.input)?;
    let chosen: HashSet<String> =
        select(&ckpt, &args.include, &args.exclude)?.into_iter().map(|s| s.name).collect();
    let grads = match (args.method, &args.grads) {
        (Method::Gradient, Some(path)) => Some(Checkpoint::open(path)?),
        (Method::Gradient, None) => bail!("--method gradient needs --grads GRADS.safetensors"),
        (_, _) => None,
    };
    // f32 holds f16, bf16 and f32 values exactly and halves the memory of f64; tensors
    // are worked on in f64 only when one of them (or its gradient) is f64.
    let is_f64 = |c: &Checkpoint, name: &str| c.info(name).is_some_and(|i| i.dtype == Dtype::F64);
    let double =
        chosen.iter().any(|n| is_f64(&ckpt, n) || grads.as_ref().is_some_and(|g| is_f64(g, n)));
    if double {
        prune::<f64>(args, &ckpt, grads.as_ref(), &chosen)
    } else {
        prune::<f32>(args, &ckpt, grads.as_ref(), &chosen)
    }
}

fn prune<T: Float>(
    args: &PruneArgs,
    ckpt: &Checkpoint,
    grads: Option<&Checkpoint>,
    chosen: &HashSet<String>,
) -> Result<()> {
    let order: Vec<&String> = ckpt.names().iter().filter(|n| chosen.contains(*n)).collect();
    let view = View::of(args);

    // Global scope: two read-only passes fix one threshold across all selected tensors,
    // holding one tensor at a time.
    let mut spare = Vec::new();
    let mut global = match args.scope {
        ScopeArg::Layer => None,
        ScopeArg::Global => {
            if args.pattern != PatternArg::Unstructured {
                bail!("--scope global ranks single weights: use --pattern unstructured");
            }
            let mut count = GlobalCount::<T>::new(Rounding::HalfEven);
            for name in &order {
                let t = load::<T>(ckpt, grads, name, view, &mut spare)?;
                match GlobalInput::of(args, name, &t)? {
                    GlobalInput::Magnitude(w) => count.add_magnitude(name, w, None)?,
                    GlobalInput::Scores(s) => count.add(name, &s, None)?,
                }
                t.recycle(&mut spare);
            }
            let mut bucket = count.plan(args.sparsity);
            for name in &order {
                let t = load::<T>(ckpt, grads, name, view, &mut spare)?;
                match GlobalInput::of(args, name, &t)? {
                    GlobalInput::Magnitude(w) => bucket.add_magnitude(w, None)?,
                    GlobalInput::Scores(s) => bucket.add(&s, None)?,
                }
                t.recycle(&mut spare);
            }
            Some(bucket.threshold())
        }
    };

    let mut rows = Vec::new();
    let mut masks: Vec<(String, Mask)> = Vec::new();
    let tensors: Vec<_> =
        ckpt.names().iter().filter_map(|n| ckpt.info(n).map(|i| (n.clone(), i.clone()))).collect();
    write_streaming(&args.output, &tensors, ckpt.metadata().clone(), |name, out| {
        let info = ckpt.info(name).with_context(|| format!("no tensor `{name}`"))?;
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
            return ckpt.copy_to(name, out);
        }
        let mut t = load::<T>(ckpt, grads, name, view, &mut spare)?;
        let before = fraction(zeros(&t.weights), t.weights.len());
        let mask = match global.as_mut() {
            Some(g) => match GlobalInput::of(args, name, &t)? {
                GlobalInput::Magnitude(w) => g.mask_magnitude(w, None)?,
                GlobalInput::Scores(s) => g.mask(&s, None)?,
            },
            None => strategy(args, &t.shape).mask(&t.weights, &context(name, &t), args.sparsity)?,
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
        t.write(info.dtype, out)?;
        if args.masks_out.is_some() {
            masks.push((name.to_owned(), t.matrix_mask(mask)?));
        }
        t.recycle(&mut spare);
        Ok(())
    })
    .with_context(|| format!("cannot write {}", args.output.display()))?;

    if let Some(path) = &args.masks_out {
        let mut bytes = MASKS_MAGIC.to_vec();
        bytes.extend_from_slice(&MASKS_VERSION.to_le_bytes());
        bytes.extend(bincode::serde::encode_to_vec(&masks, bincode::config::standard())?);
        write_file_atomic(path, &bytes)?;
    }
    report(args, rows)
}

/// What a global selection ranks for one tensor: the weights themselves, read as |w| in
/// place (magnitude, no copy), or a score matrix.
enum GlobalInput<'a, T: Float> {
    Magnitude(&'a DMatrix<T>),
    Scores(DMatrix<T>),
}

impl<'a, T: Float> GlobalInput<'a, T> {
    fn of(args: &PruneArgs, name: &str, t: &'a Loaded<T>) -> Result<Self> {
        let strategy = strategy::<T>(args, &t.shape);
        Ok(if strategy.scores_are_magnitude() {
            GlobalInput::Magnitude(&t.weights)
        } else {
            GlobalInput::Scores(strategy.scores(&t.weights, &context(name, t))?)
        })
    }
}

fn context<'a, T: Float>(name: &'a str, t: &'a Loaded<T>) -> LayerContext<'a, T> {
    let ctx = LayerContext::new(name);
    let ctx = if t.view == View::Matrix { ctx.with_shape(t.shape) } else { ctx };
    match &t.grads {
        Some(g) => ctx.with_gradients(g),
        None => ctx,
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
        println!("{}", serde_json::to_string_pretty(&report)?);
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
    print!("{}", table.render());
    println!("wrote {}", args.output.display());
    Ok(())
}
