//! `shears prune`: prune a checkpoint tensor by tensor, writing the result atomically.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, Result, bail};
use nalgebra::DMatrix;
use serde::Serialize;
use shears_core::{
    GlobalCount, LayerContext, Mask, PruningStrategy, Reduction, Rounding, WeightShape,
};
use shears_strategies::{Axis, Gradient, Magnitude, Pattern, Pruner, Random, Structured};

use crate::cli::{Method, PatternArg, PruneArgs, ScopeArg};
use crate::report::{Table, fraction};
use crate::select::select;
use crate::tensors::{Checkpoint, decode, encode, write_file_atomic, write_streaming};

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

fn strategy(args: &PruneArgs, shape: &WeightShape) -> Box<dyn PruningStrategy<f64>> {
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
        Method::Magnitude => Box::new(Pruner::new(Magnitude).pattern(pattern)),
        Method::Gradient => Box::new(Pruner::new(Gradient).pattern(pattern)),
        Method::Random => Box::new(Pruner::new(Random::new(args.seed)).pattern(pattern)),
    }
}

/// A tensor of the input, decoded, with its gradient when the method needs one.
struct Loaded {
    shape: WeightShape,
    values: Vec<f64>,
    weights: DMatrix<f64>,
    grads: Option<DMatrix<f64>>,
}

fn load(ckpt: &Checkpoint, grads: Option<&Checkpoint>, name: &str) -> Result<Loaded> {
    let info = ckpt.info(name).with_context(|| format!("no tensor `{name}`"))?;
    let shape = WeightShape::from_dims(&info.shape).with_context(|| format!("tensor `{name}`"))?;
    let values =
        decode(info.dtype, ckpt.bytes(name)?).with_context(|| format!("tensor `{name}`"))?;
    let (r, c) = shape.matrix_shape();
    let weights = DMatrix::from_row_slice(r, c, &values);
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
            let gv = decode(gi.dtype, g.bytes(name)?)
                .with_context(|| format!("{}: gradient `{name}`", g.path().display()))?;
            Some(DMatrix::from_row_slice(r, c, &gv))
        }
    };
    Ok(Loaded { shape, values, weights, grads })
}

fn zeros(values: &[f64]) -> usize {
    values.iter().filter(|&&v| v == 0.0).count()
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
    let order: Vec<String> = ckpt.names().iter().filter(|n| chosen.contains(*n)).cloned().collect();

    // Global scope: two read-only passes fix one threshold across all selected tensors.
    let mut global = match args.scope {
        ScopeArg::Layer => None,
        ScopeArg::Global => {
            if args.pattern != PatternArg::Unstructured {
                bail!("--scope global ranks single weights: use --pattern unstructured");
            }
            let mut count = GlobalCount::<f64>::new(Rounding::HalfEven);
            for name in &order {
                let t = load(&ckpt, grads.as_ref(), name)?;
                let s = strategy(args, &t.shape).scores(&t.weights, &context(name, &t))?;
                count.add(name, &s, None)?;
            }
            let mut bucket = count.plan(args.sparsity);
            for name in &order {
                let t = load(&ckpt, grads.as_ref(), name)?;
                bucket
                    .add(&strategy(args, &t.shape).scores(&t.weights, &context(name, &t))?, None)?;
            }
            Some(bucket.threshold())
        }
    };

    let mut rows = Vec::new();
    let mut masks: Vec<(String, Mask)> = Vec::new();
    let tensors: Vec<_> =
        ckpt.names().iter().filter_map(|n| ckpt.info(n).map(|i| (n.clone(), i.clone()))).collect();
    write_streaming(&args.output, &tensors, ckpt.metadata().clone(), |name| {
        let info = ckpt.info(name).with_context(|| format!("no tensor `{name}`"))?;
        let raw = ckpt.bytes(name)?;
        if !chosen.contains(name) {
            let s = if crate::tensors::is_float(info.dtype) {
                let v = decode(info.dtype, raw)?;
                Some(fraction(zeros(&v), v.len()))
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
            return Ok(raw.to_vec());
        }
        let mut t = load(&ckpt, grads.as_ref(), name)?;
        let before = fraction(zeros(&t.values), t.values.len());
        let ctx = context(name, &t);
        let mask = match global.as_mut() {
            Some(g) => g.mask(&strategy(args, &t.shape).scores(&t.weights, &ctx)?, None)?,
            None => strategy(args, &t.shape).mask(&t.weights, &ctx, args.sparsity)?,
        };
        mask.apply_to_tensor(&t.shape, &mut t.values)?;
        rows.push(Row {
            name: name.into(),
            shape: info.shape.clone(),
            dtype: format!("{:?}", info.dtype),
            pruned: true,
            sparsity_before: Some(before),
            sparsity_after: Some(fraction(zeros(&t.values), t.values.len())),
        });
        if args.masks_out.is_some() {
            masks.push((name.to_owned(), mask));
        }
        encode(info.dtype, &t.values)
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

fn context<'a>(name: &'a str, t: &'a Loaded) -> LayerContext<'a, f64> {
    let ctx = LayerContext::new(name).with_shape(t.shape);
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
