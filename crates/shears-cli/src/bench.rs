//! `shears bench`: the speedup of each pruned tensor in the format shears-sparse picks.

use std::time::Instant;

use anyhow::{Result, bail};
use nalgebra::{DMatrix, DVector};
use serde::Serialize;
use shears_core::WeightShape;
use shears_io::{Checkpoint, is_float};
use shears_sparse::{AnySparse, SparseProduct};

use crate::cli::BenchArgs;
use crate::inspect::nonzero_mask;
use crate::report::Table;

#[derive(Debug, Serialize)]
struct Row {
    name: String,
    shape: [usize; 2],
    sparsity: f64,
    batch: usize,
    format: String,
    dense_us: f64,
    sparse_us: f64,
    speedup: f64,
}

#[derive(Debug, Serialize)]
struct Total {
    batch: usize,
    dense_us: f64,
    sparse_us: f64,
    speedup: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    file: String,
    threads: usize,
    kernel_path: String,
    tensors: Vec<Row>,
    total: Vec<Total>,
}

/// The most f32 values of inputs and outputs one timed product may take (1 GiB).
const MAX_OPERANDS: usize = 1 << 28;

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

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    if args.batch.is_empty() {
        bail!("--batch takes batch sizes, e.g. 1,32");
    }
    let ckpt = Checkpoint::open(&args.input)?;
    let mut rows = Vec::new();
    for (name, info) in ckpt.tensors() {
        if !is_float(info.dtype) {
            continue;
        }
        let Ok(shape) = WeightShape::from_dims(&info.shape) else { continue };
        // Timed in f32 whatever the stored dtype: what inference would run.
        let w = ckpt.read_matrix::<f32>(name)?;
        let mask = nonzero_mask(&w)?;
        if mask.count_pruned() == 0 || mask.is_empty() {
            continue;
        }
        let (r, c) = shape.matrix_shape();
        for &batch in &args.batch {
            let operands = (r + c).saturating_mul(batch);
            if operands > MAX_OPERANDS {
                bail!(
                    "tensor `{name}` ({r}x{c}) at batch {batch} needs {} MiB of inputs and outputs, more than the {} MiB bench allows: use a smaller --batch",
                    (operands * 4) >> 20,
                    (MAX_OPERANDS * 4) >> 20
                );
            }
            let x = DMatrix::from_fn(c, batch, |i, j| ((i * 31 + j * 17) % 97) as f32 / 97.0 - 0.5);
            let dense_us = if batch == 1 {
                let xv = DVector::from_column_slice(x.as_slice());
                let mut yv = DVector::zeros(r);
                median_us(|| yv.gemv(1.0, &w, &xv, 0.0))
            } else {
                let mut y = DMatrix::zeros(r, batch);
                median_us(|| y.gemm(1.0, &w, &x, 0.0))
            };
            let sparse = AnySparse::for_batch(&w, &mask, batch)?;
            let format = sparse.format();
            let mut y = DMatrix::zeros(r, batch);
            let mut failed = None;
            let sparse_us = median_us(|| {
                if let Err(e) = sparse.matmul_into(1.0, &x, 0.0, &mut y) {
                    failed = Some(e);
                }
            });
            if let Some(e) = failed {
                return Err(e.into());
            }
            rows.push(Row {
                name: name.clone(),
                shape: [r, c],
                sparsity: mask.sparsity().get(),
                batch,
                format: format.to_string(),
                dense_us,
                sparse_us,
                speedup: dense_us / sparse_us,
            });
        }
    }
    if rows.is_empty() {
        bail!("{} has no pruned 2-D or 4-D floating tensor to benchmark", args.input.display());
    }
    let total: Vec<Total> = args
        .batch
        .iter()
        .map(|&b| {
            let (d, s) = rows
                .iter()
                .filter(|r| r.batch == b)
                .fold((0.0, 0.0), |(d, s), r| (d + r.dense_us, s + r.sparse_us));
            Total { batch: b, dense_us: d, sparse_us: s, speedup: d / s }
        })
        .collect();
    let report = Report {
        file: args.input.display().to_string(),
        threads: rayon::current_num_threads(),
        kernel_path: format!("{:?}", shears_sparse::kernel_path()),
        tensors: rows,
        total,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    let mut table = Table::new(&[
        "tensor",
        "shape",
        "sparsity",
        "batch",
        "format",
        "dense us",
        "sparse us",
        "speedup",
    ]);
    for r in &report.tensors {
        table.row(vec![
            r.name.clone(),
            format!("{}x{}", r.shape[0], r.shape[1]),
            format!("{:.3}", r.sparsity),
            r.batch.to_string(),
            r.format.clone(),
            format!("{:.1}", r.dense_us),
            format!("{:.1}", r.sparse_us),
            format!("{:.2}x", r.speedup),
        ]);
    }
    out!("{}", table.render())?;
    for t in &report.total {
        outln!(
            "model, batch {}: dense {:.1} us, sparse {:.1} us, {:.2}x",
            t.batch,
            t.dense_us,
            t.sparse_us,
            t.speedup
        )?;
    }
    println!(
        "({} threads, {} kernels; medians on a possibly noisy machine)",
        report.threads, report.kernel_path
    );
    Ok(())
}
