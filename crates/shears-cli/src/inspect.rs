//! `shears inspect`: what a checkpoint holds and how sparse it is.

use anyhow::Result;
use serde::Serialize;
use shears_core::{Mask, NmPattern, WeightShape};
use shears_strategies::satisfies_nm;

use crate::cli::InspectArgs;
use crate::report::{Table, fraction};
use crate::tensors::{Checkpoint, decode, is_float};

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

/// The nonzero mask of a 2-D or 4-D tensor's matrix view, from row-major values.
pub(crate) fn nonzero_mask(shape: &WeightShape, values: &[f64]) -> Result<Mask> {
    let (r, c) = shape.matrix_shape();
    let keep: Vec<bool> = values.iter().map(|&v| v != 0.0).collect();
    Ok(Mask::from_row_major(r, c, &keep)?)
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
            let values = decode(info.dtype, ckpt.bytes(name)?)?;
            let z = values.iter().filter(|&&v| v == 0.0).count();
            params += values.len();
            zeros += z;
            stats.sparsity = Some(fraction(z, values.len()));
            if let Ok(shape) = WeightShape::from_dims(&info.shape) {
                let mask = nonzero_mask(&shape, &values)?;
                stats.zero_rows = Some(mask.fully_pruned_rows().len());
                stats.zero_cols = Some(mask.fully_pruned_cols().len());
                stats.is_2_4 = Some(satisfies_nm(&mask, NmPattern::TWO_FOUR));
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
