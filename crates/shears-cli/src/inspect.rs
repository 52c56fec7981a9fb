//! `shears inspect`: what a checkpoint holds and how sparse it is.

use anyhow::Result;
use nalgebra::DMatrix;
use safetensors::Dtype;
use serde::Serialize;
use shears_cli::checkpoint::{Checkpoint, Float, is_float};
use shears_core::{Mask, NmPattern, WeightShape};
use shears_strategies::satisfies_nm;

use crate::cli::InspectArgs;
use crate::report::{Table, fraction};

#[derive(Debug, Serialize)]
pub(crate) struct TensorStats {
    pub(crate) name: String,
    pub(crate) dtype: String,
    pub(crate) shape: Vec<usize>,
    pub(crate) parameters: usize,
    pub(crate) sparsity: Option<f64>,
    pub(crate) zero_rows: Option<usize>,
    pub(crate) zero_cols: Option<usize>,
    pub(crate) is_2_4: Option<bool>,
}

#[derive(Debug, Serialize)]
struct Report {
    file: String,
    tensors: Vec<TensorStats>,
    total: Total,
}

#[derive(Debug, Serialize)]
struct Total {
    tensors: usize,
    parameters: usize,
    zeros: usize,
    sparsity: f64,
}

/// The nonzero mask of a matrix.
pub(crate) fn nonzero_mask<T: Float>(matrix: &DMatrix<T>) -> Result<Mask> {
    Ok(Mask::from_fn(matrix.nrows(), matrix.ncols(), |r, c| matrix[(r, c)] != T::zero())?)
}

/// Zero rows, zero columns and 2:4 conformity of a 2-D or 4-D tensor's matrix view.
fn structure<T: Float>(ckpt: &Checkpoint, name: &str) -> Result<(usize, usize, bool)> {
    let mask = nonzero_mask(&ckpt.read_matrix::<T>(name)?)?;
    Ok((
        mask.fully_pruned_rows().len(),
        mask.fully_pruned_cols().len(),
        satisfies_nm(&mask, NmPattern::TWO_FOUR),
    ))
}

pub(crate) fn run(args: &InspectArgs) -> Result<()> {
    let ckpt = Checkpoint::open(&args.input)?;
    let mut rows = Vec::new();
    let (mut params, mut zeros) = (0usize, 0usize);
    for name in ckpt.names() {
        let Some(info) = ckpt.info(name) else { continue };
        let count = info.shape.iter().product::<usize>();
        let mut stats = TensorStats {
            name: name.clone(),
            dtype: format!("{:?}", info.dtype),
            shape: info.shape.clone(),
            parameters: count,
            sparsity: None,
            zero_rows: None,
            zero_cols: None,
            is_2_4: None,
        };
        if is_float(info.dtype) {
            let z = ckpt.count_zeros(name)?;
            params += count;
            zeros += z;
            stats.sparsity = Some(fraction(z, count));
            if WeightShape::from_dims(&info.shape).is_ok() {
                let (zero_rows, zero_cols, is_2_4) = match info.dtype {
                    Dtype::F64 => structure::<f64>(&ckpt, name)?,
                    _ => structure::<f32>(&ckpt, name)?,
                };
                stats.zero_rows = Some(zero_rows);
                stats.zero_cols = Some(zero_cols);
                stats.is_2_4 = Some(is_2_4);
            }
        }
        rows.push(stats);
    }
    let total =
        Total { tensors: rows.len(), parameters: params, zeros, sparsity: fraction(zeros, params) };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&Report {
                file: args.input.display().to_string(),
                tensors: rows,
                total
            })?
        );
        return Ok(());
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut table =
        Table::new(&["tensor", "dtype", "shape", "sparsity", "zero rows", "zero cols", "2:4"]);
    for r in &rows {
        table.row(vec![
            r.name.clone(),
            r.dtype.clone(),
            format!("{:?}", r.shape),
            opt(r.sparsity.map(|s| format!("{s:.4}"))),
            opt(r.zero_rows.map(|v| v.to_string())),
            opt(r.zero_cols.map(|v| v.to_string())),
            opt(r.is_2_4.map(|b| if b { "yes".into() } else { "no".into() })),
        ]);
    }
    print!("{}", table.render());
    println!(
        "total: {} tensors, {} float parameters, {} zeros, sparsity {:.4}",
        total.tensors, total.parameters, total.zeros, total.sparsity
    );
    Ok(())
}
