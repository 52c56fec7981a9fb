//! `shears bench`: each layer timed as a model's layer runs it (product and bias), dense
//! (or nalgebra's product where that is faster), in the format shears-sparse picks for
//! it (an int8 layer: its stored int8 values) and as dense int8, its product alone as
//! int8 CSR, and the sums over the layers.

use std::time::Instant;

use anyhow::{Result, bail};
use nalgebra::{DMatrix, DVector};
use serde::Serialize;
use shears_core::WeightShape;
use shears_io::{Dtype, Model, TensorRef, is_float, quantized_matrix_shape, scale_name};
use shears_models::Linear;
use shears_sparse::{Format, Int8Csr, Int8Matrix, QuantScheme, SparseProduct, choose_format};
use shears_strategies::TensorRole;

use crate::cli::BenchArgs;
use crate::inspect::nonzero_mask;
use crate::progress::Progress;
use crate::report::{natural_cmp, print_json, print_table};
use crate::tensor_filter::role_of;

#[derive(Debug, Serialize)]
struct Row {
    name: String,
    /// The matrix timed: `(out, in)`.
    shape: [usize; 2],
    sparsity: f64,
    batch: usize,
    /// Columns of the product: the batch, times the spatial positions for a convolution.
    columns: usize,
    /// The format `choose_format` picks, or `int8` for a layer stored as int8 values
    /// and scales (run with integer products, as a model built from the file runs it;
    /// not a transposed layer, GPT-2's `Conv1D`, whose scales are per input).
    format: String,
    /// The faster of the layer's dense forward pass (faer's GEMM and the bias) and
    /// nalgebra's product alone.
    dense_us: f64,
    /// The layer's forward pass in `format` (product and bias).
    sparse_us: f64,
    /// The product alone with the weights as int8 CSR (per-row scales), the format for
    /// pruned and quantized layers.
    int8_csr_us: f64,
    /// The layer's forward pass with the weights as dense int8 (an int8 layer's stored
    /// values and scales, others quantized per row), multiplied with integer arithmetic
    /// on inputs quantized per column.
    int8_dense_us: f64,
    speedup: f64,
    /// Whether the picked format is slower than dense here (the model total counts
    /// dense for it).
    slower: bool,
}

#[derive(Debug, Serialize)]
struct Total {
    batch: usize,
    /// The layers' `dense_us` summed: each the faster of two dense products, where a
    /// model's dense layers all run faer's.
    dense_us: f64,
    /// Every layer in the format `choose_format` picks (an int8 layer in int8).
    chosen_us: f64,
    /// Every layer in the faster of dense and that format.
    best_us: f64,
    chosen_speedup: f64,
    best_speedup: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    model: String,
    threads: usize,
    kernel_path: String,
    /// The `--spatial` size convolutions were timed at; absent without convolutions.
    #[serde(skip_serializing_if = "Option::is_none")]
    spatial: Option<[usize; 2]>,
    tensors: Vec<Row>,
    total: Vec<Total>,
}

/// The format name of a layer stored as int8: its int8 products over all its weights,
/// the time of the table's "int8 dense" column.
const INT8: &str = "int8 dense";

/// The spatial size of convolution inputs without `--spatial`: a late ResNet stage's.
const DEFAULT_SPATIAL: (usize, usize) = (14, 14);

/// The most f32 values of inputs and outputs one timed product may take (1 GiB).
const MAX_OPERANDS: usize = 1 << 28;

/// The most weights one run times (a model of thousands of layers has fewer): each takes
/// a few milliseconds at least, so a file of millions of tiny tensors would run for hours.
const MAX_TIMED: usize = 10_000;

/// Median microseconds of `f`, over at least 5 runs and about 0.2 s.
fn median_us(mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < 5 || (start.elapsed().as_secs_f64() < 0.2 && times.len() < 1000) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Median microseconds of `a`'s product with `x`.
fn product_us(a: &impl SparseProduct<f32>, x: &DMatrix<f32>) -> Result<f64> {
    let mut y = DMatrix::zeros(a.shape().0, x.ncols());
    let mut failed = None;
    let us = median_us(|| {
        if let Err(e) = a.matmul_into(1.0, x, 0.0, &mut y) {
            failed = Some(e);
        }
    });
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(us),
    }
}

/// Median microseconds of `linear`'s forward pass on `x` (its product and bias).
fn forward_us(linear: &Linear, x: &DMatrix<f32>) -> Result<f64> {
    let mut failed = None;
    let us = median_us(|| {
        if let Err(e) = linear.forward(x) {
            failed = Some(e);
        }
    });
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(us),
    }
}

/// Tensor `t`'s stored int8 values and scales as an [`Int8Matrix`] of the matrix it is
/// seen as ([`quantized_matrix_shape`]: a convolution's `(out, in * kh * kw)`), if it is
/// a 2-D or 4-D int8 tensor.
fn stored_int8(model: &Model, t: TensorRef) -> Result<Option<Int8Matrix>> {
    if !matches!(t.info.shape.len(), 2 | 4) {
        return Ok(None);
    }
    let Some(tensor) = model.shards()[t.shard].read_int8(t.name)? else { return Ok(None) };
    match shears_models::int8_matrix(tensor) {
        Ok(matrix) => Ok(Some(matrix)),
        Err(e) => {
            let shard = model.shards()[t.shard].path();
            bail!("{}: int8 tensor `{}`: {e}", shard.display(), t.name)
        }
    }
}

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    // Each batch size once, smallest first: rows, totals and settings follow this order.
    let mut batches = args.batch.clone();
    batches.sort_unstable();
    batches.dedup();
    if batches.is_empty() {
        bail!("--batch takes batch sizes, e.g. 1,32");
    }
    crate::hub::check_not_hub_id(&args.input)?;
    if args.texts.is_some() {
        // The whole model runs its own layers on the sentences: nothing to choose or shape.
        if args.spatial.is_some() {
            bail!(
                "--spatial shapes the inputs of convolution layers; --texts times a BERT-family model, which has none"
            );
        }
        if args.all {
            bail!(
                "--all times every 2-D and 4-D tensor as a layer; --texts times the whole model, which runs the layers it has"
            );
        }
        return crate::model_bench::run(args, &batches);
    }
    if args.seq_len.is_some() {
        bail!("--seq-len is read with --texts only: it sets the tokens of each sentence");
    }
    let model = Model::open(&args.input)?;
    let layers: Vec<_> = model
        .tensors()
        .filter_map(|t| {
            let role = role_of(&model, t);
            let timed = role.pruned_by_default() || (args.all && role.prunable());
            timed.then_some((t, role))
        })
        .collect();
    if layers.len() > MAX_TIMED {
        bail!(
            "{} has {} weights to time, more than the {MAX_TIMED} bench times in one run",
            args.input.display(),
            layers.len()
        );
    }
    // An int8 weight without its scales cannot be decoded, so it is not among the layers;
    // one that would be timed if it could is refused rather than left out of the table
    // and the model's totals without a word (and so is any, when nothing else is timed).
    let unscaled = |t: &TensorRef<'_>| {
        t.info.dtype == Dtype::I8
            && matches!(t.info.shape.len(), 2 | 4)
            && model.find(&scale_name(t.name)).is_none()
    };
    let would_time = |t: &TensorRef<'_>| {
        let role = TensorRole::classify(t.name, true, &t.info.shape);
        role.pruned_by_default() || (args.all && role.prunable())
    };
    let timed = model.tensors().find(|t| unscaled(t) && would_time(t));
    if let Some(t) = timed.or_else(|| model.tensors().find(|t| unscaled(t) && layers.is_empty())) {
        bail!(
            "{}: tensor `{}` is int8 without its scales `{}`, so it cannot be decoded or timed",
            args.input.display(),
            t.name,
            scale_name(t.name)
        );
    }
    // Scales that do not fit their int8 tensor are refused for every tensor, timed or not,
    // as the commands that read the model refuse them.
    for t in model.tensors() {
        model.shards()[t.shard].check_scales(t.name)?;
    }
    if layers.is_empty() {
        let floating =
            model.tensors().any(|t| is_float(t.info.dtype) && matches!(t.info.shape.len(), 2 | 4));
        if args.all || !floating {
            bail!(
                "{} has no 2-D or 4-D floating tensor to time (a mask file, or other data?)",
                args.input.display()
            );
        }
        bail!(
            "{} has no linear or convolution weight to time (--all times every 2-D and 4-D floating tensor)",
            args.input.display()
        );
    }
    let (h, w) = args.spatial.unwrap_or(DEFAULT_SPATIAL);
    let convolutions = layers.iter().any(|(t, _)| t.info.shape.len() == 4);
    // Every product's operands are bounded before anything is read or timed.
    let largest = batches.last().copied().unwrap_or(1);
    for (t, _) in &layers {
        let (r, c) = quantized_matrix_shape(&t.info.shape);
        let columns = if t.info.shape.len() == 4 { largest.saturating_mul(h * w) } else { largest };
        let operands = r.saturating_add(c).saturating_mul(columns);
        if operands > MAX_OPERANDS {
            bail!(
                "tensor `{}` ({r}x{c}) at {columns} columns needs {} MiB of inputs and outputs, more than the {} MiB bench allows: use a smaller --batch or --spatial",
                t.name,
                operands.saturating_mul(4) >> 20,
                (MAX_OPERANDS * 4) >> 20
            );
        }
    }
    let progress =
        Progress::steps((layers.len() * batches.len()) as u64, "products", args.quiet || args.json);
    let mut rows = Vec::new();
    for (t, role) in layers {
        progress.message(format!("tensor {}", t.name));
        let shape = WeightShape::from_dims(&t.info.shape)?;
        // Timed in f32 whatever the stored dtype, in the (out, in) sense of the layer.
        let stored = model.shards()[t.shard].read_matrix::<f32>(t.name)?;
        let weights =
            if role == TensorRole::TransposedLinear { stored.transpose() } else { stored };
        if let Some(i) = weights.iter().position(|v| !v.is_finite()) {
            let (r, c) = (i % weights.nrows(), i / weights.nrows());
            bail!(
                "{}: tensor `{}` holds {} at [{r}, {c}] (of the layer's (out, in) matrix): only finite weights can be timed",
                args.input.display(),
                t.name,
                weights[(r, c)]
            );
        }
        let mask = nonzero_mask(&weights)?;
        let (r, c) = weights.shape();
        let linear = Linear::new(t.name, weights.clone(), DVector::zeros(r))?;
        // An int8 layer runs its stored values and scales, as a model built from this
        // file runs it (`shears embed --fastest`); other layers are quantized per row,
        // and so is a transposed one (GPT-2's `Conv1D`), whose stored scales belong to
        // its inputs rather than to the layer's output rows.
        let stored_int8 = match role {
            TensorRole::TransposedLinear => None,
            _ => stored_int8(&model, t)?,
        };
        let int8_linear = Linear::from_int8(
            t.name,
            match &stored_int8 {
                Some(stored) => stored.clone(),
                None => Int8Matrix::quantize(&weights, QuantScheme::PerRow)?,
            },
            DVector::zeros(r),
        )?;
        for &batch in &batches {
            // A convolution multiplies its im2col matrix: one column per output position.
            let columns = if shape.is_conv() { batch * h * w } else { batch };
            let x =
                DMatrix::from_fn(c, columns, |i, j| ((i * 31 + j * 17) % 97) as f32 / 97.0 - 0.5);
            // The picked format runs as a model's layer runs it (a `Linear`, as `shears
            // embed` does), against whichever of two dense products is faster here: the
            // same layer dense (faer's GEMM on rayon's threads) and nalgebra's.
            let format = choose_format(&mask, columns);
            let int8_dense_us = forward_us(&int8_linear, &x)?;
            let nalgebra_us = if columns == 1 {
                let xv = DVector::from_column_slice(x.as_slice());
                let mut yv = DVector::zeros(r);
                median_us(|| yv.gemv(1.0, &weights, &xv, 0.0))
            } else {
                let mut y = DMatrix::zeros(r, columns);
                median_us(|| y.gemm(1.0, &weights, &x, 0.0))
            };
            let dense_us = forward_us(&linear, &x)?.min(nalgebra_us);
            let (format, sparse_us) = if stored_int8.is_some() {
                (INT8.to_owned(), int8_dense_us)
            } else if format == Format::Dense {
                (format.to_string(), dense_us)
            } else {
                let mut sparse = linear.clone();
                sparse.set_f32_format(format)?;
                (format.to_string(), forward_us(&sparse, &x)?)
            };
            // With the narrowest column index, as `AnySparse` stores f32 CSR.
            let int8_csr_us = if c <= usize::from(u16::MAX) + 1 {
                product_us(&Int8Csr::<u16>::from_dense_masked(&weights, &mask)?, &x)?
            } else {
                product_us(&Int8Csr::<u32>::from_dense_masked(&weights, &mask)?, &x)?
            };
            rows.push(Row {
                name: t.name.to_owned(),
                shape: [r, c],
                sparsity: mask.sparsity().get(),
                batch,
                columns,
                slower: sparse_us > dense_us && format != "dense",
                format,
                dense_us,
                sparse_us,
                int8_csr_us,
                int8_dense_us,
                speedup: dense_us / sparse_us,
            });
            progress.advance(1);
        }
    }
    progress.finish();
    let total: Vec<Total> = batches
        .iter()
        .map(|&b| {
            let of_batch = || rows.iter().filter(|r| r.batch == b);
            let dense: f64 = of_batch().map(|r| r.dense_us).sum();
            let chosen: f64 = of_batch().map(|r| r.sparse_us).sum();
            let best: f64 = of_batch().map(|r| r.sparse_us.min(r.dense_us)).sum();
            Total {
                batch: b,
                dense_us: dense,
                chosen_us: chosen,
                best_us: best,
                chosen_speedup: dense / chosen,
                best_speedup: dense / best,
            }
        })
        .collect();
    rows.sort_unstable_by(|a, b| natural_cmp(&a.name, &b.name).then(a.batch.cmp(&b.batch)));
    let report = Report {
        model: args.input.display().to_string(),
        threads: rayon::current_num_threads(),
        kernel_path: shears_sparse::kernel_description(),
        spatial: convolutions.then_some([h, w]),
        tensors: rows,
        total,
    };
    if args.json {
        print_json(&report)?;
        return Ok(());
    }
    let cells = |r: &Row| {
        let speedup = if r.slower {
            // Rounded down: a ratio just under 1 reads as slower, not as 1.00x.
            format!("{:.2}x (slower: dense is faster here)", (r.speedup * 100.0).floor() / 100.0)
        } else {
            format!("{:.2}x", r.speedup)
        };
        vec![
            r.name.clone(),
            format!("{}x{}", r.shape[0], r.shape[1]),
            format!("{:.3}", r.sparsity),
            if r.columns == r.batch {
                r.batch.to_string()
            } else {
                format!("{} ({} cols)", r.batch, r.columns)
            },
            r.format.clone(),
            format!("{:.1}", r.dense_us),
            format!("{:.1}", r.sparse_us),
            speedup,
            format!("{:.1}", r.int8_csr_us),
            format!("{:.1}", r.int8_dense_us),
        ]
    };
    let header = [
        "tensor",
        "shape",
        "sparsity",
        "batch",
        "format",
        "dense us",
        "picked us",
        "speedup",
        "int8 csr us",
        "int8 dense us",
    ];
    print_table(&header, &report.tensors, cells, None)?;
    for t in &report.total {
        outln!(
            "model, batch {}: dense {:.1} us; formats as picked {:.1} us ({:.2}x); dense where that is faster {:.1} us ({:.2}x)",
            t.batch,
            t.dense_us,
            t.chosen_us,
            t.chosen_speedup,
            t.best_us,
            t.best_speedup
        )?;
    }
    if report.tensors.iter().any(|r| !r.format.starts_with("int8")) {
        outln!(
            "int8 columns: the same layers quantized to int8, as prune --quantize int8 stores them; f32 layers are picked among f32 formats"
        )?;
    }
    let spatial =
        if convolutions { format!(", convolutions at {h}x{w} positions") } else { String::new() };
    outln!(
        "({} threads, {} kernels{spatial}; medians on a possibly noisy machine)",
        report.threads,
        report.kernel_path
    )?;
    Ok(())
}
