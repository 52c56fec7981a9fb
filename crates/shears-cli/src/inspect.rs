//! `shears inspect`: what a checkpoint holds and how sparse it is.

use anyhow::Result;
use nalgebra::DMatrix;
use serde::Serialize;
use shears_core::{Mask, NmPattern, WeightShape};
use shears_io::{
    Checkpoint, Dtype, FileKind, Float, Model, QUANTIZED_FROM_KEY, Source, is_float, scale_name,
    weight_of_torch_mask, zeros_in,
};
use shears_strategies::TensorRole;

use crate::cli::InspectArgs;
use crate::progress::Progress;
use crate::record;
use crate::report::{fraction, natural_cmp, print_json, print_table};
use crate::tensor_filter::role_of;

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
    /// The bytes of its data in the file (none for a mask set's masks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) bytes: Option<u64>,
    /// For an int8 tensor with scales: its bytes and its scales' in the dtype it was
    /// quantized from, over its bytes and its scales' now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) compression: Option<f64>,
    /// NaN and infinite values, where a floating tensor holds any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) non_finite: Option<usize>,
}

#[derive(Debug, Serialize)]
struct Report {
    file: String,
    /// How shears pruned the file, run by run (its `shears.pruning` metadata).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pruning: Vec<serde_json::Value>,
    tensors: Vec<TensorStats>,
    total: Total,
}

#[derive(Debug, Serialize)]
struct Total {
    tensors: usize,
    parameters: usize,
    zeros: usize,
    sparsity: f64,
    /// The tensors' bytes (none for a mask set).
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
    /// For a quantized model: its tensors' bytes with the quantized ones (and their
    /// scales) in the dtype they were quantized from, over `bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    compression: Option<f64>,
    /// For a file of PyTorch masks (`NAME_mask`, 1 = keep): how many, their entries and
    /// the share of them that prune.
    #[serde(skip_serializing_if = "Option::is_none")]
    masks: Option<MaskTotal>,
}

#[derive(Debug, Serialize)]
struct MaskTotal {
    masks: usize,
    entries: usize,
    pruned: usize,
    sparsity: f64,
}

/// Bytes per value of a dtype named as the metadata records it (`F32`, `BF16`, ...).
fn dtype_bytes(name: &str) -> Option<u64> {
    match name {
        "F64" => Some(8),
        "F32" => Some(4),
        "F16" | "BF16" => Some(2),
        _ => None,
    }
}

/// The nonzero mask of a matrix.
pub(crate) fn nonzero_mask<T: Float>(matrix: &DMatrix<T>) -> Result<Mask> {
    Ok(Mask::from_fn(matrix.nrows(), matrix.ncols(), |r, c| matrix[(r, c)] != T::zero())?)
}

/// What `inspect` reports on one floating tensor.
#[derive(Debug, Default, PartialEq, Eq)]
struct Scan {
    zeros: usize,
    /// NaN and infinite values.
    non_finite: usize,
    /// For 2-D and 4-D tensors: zero rows, zero columns, and whether the tensor is 2:4
    /// as `prune --pattern 2:4` makes it: each group of 4 along a row (of a convolution,
    /// 4 input channels at one kernel position; of a weight stored `(in, out)`, 4 rows
    /// down a column) keeps at most 2, and the groups are whole (as `satisfies_nm` with
    /// 2:4 defines it on the layer's matrix in that order).
    structure: Option<(usize, usize, bool)>,
}

/// A 2-D or 4-D tensor as a matrix, and how its 2:4 groups run.
#[derive(Debug, Clone, Copy)]
struct View {
    rows: usize,
    cols: usize,
    /// Kernel positions per input channel: 1 for a matrix.
    spatial: usize,
    /// Stored `(in, out)` (GPT-2's `Conv1D`): groups run down the columns.
    transposed: bool,
}

impl View {
    /// The view of a tensor of shape `dims`, `None` for other ranks.
    fn of(dims: &[usize], transposed: bool) -> Option<View> {
        let shape = WeightShape::from_dims(dims).ok()?;
        let (rows, cols) = shape.matrix_shape();
        let spatial = shape.conv_dims().map_or(1, |(_, _, kh, kw)| kh * kw);
        Some(View { rows, cols, spatial, transposed: transposed && !shape.is_conv() })
    }

    /// Whether its 2:4 groups are whole.
    fn whole_groups(&self) -> bool {
        let along = if self.transposed { self.rows } else { self.cols / self.spatial };
        along.is_multiple_of(NmPattern::TWO_FOUR.m())
    }

    /// Entries per piece of a streamed scan: whole rows, and whole groups of rows when
    /// the groups run down the columns.
    fn unit(&self) -> usize {
        if self.transposed && self.whole_groups() {
            NmPattern::TWO_FOUR.m() * self.cols
        } else {
            self.cols
        }
    }
}

/// Rows whose 2:4 groups are checked: wider ones (more entries than this) are scanned for
/// zeros only, so that no piece read is larger than a few tens of MiB whatever a row's
/// length.
const MAX_STRUCTURED_ROW: usize = 1 << 22;

/// What a run of whole rows holds: zeros, zero rows, the columns with a nonzero, and
/// whether every group is 2:4 so far. Memory: a flag per column.
struct Rows {
    zeros: usize,
    non_finite: usize,
    zero_rows: usize,
    col_used: Vec<bool>,
    is_2_4: bool,
}

impl Rows {
    /// None yet, of `cols` columns.
    fn new(cols: usize) -> Rows {
        Rows { zeros: 0, non_finite: 0, zero_rows: 0, col_used: vec![false; cols], is_2_4: true }
    }

    /// Adds `piece`, whole rows of `view` (whole groups of rows if they run down the
    /// columns), `is_zero` telling a zero.
    fn add<E>(&mut self, piece: &[E], view: View, is_zero: impl Fn(&E) -> bool) {
        let (cols, spatial) = (view.cols, view.spatial);
        for row in piece.chunks_exact(cols) {
            let row_zeros = row.iter().filter(|v| is_zero(v)).count();
            self.zeros += row_zeros;
            self.zero_rows += usize::from(row_zeros == cols);
            for (used, v) in self.col_used.iter_mut().zip(row) {
                *used |= !is_zero(v);
            }
            if !view.transposed {
                // 2:4 groups run along the input channels at each kernel position.
                for position in 0..spatial {
                    let kept = row[position..].iter().step_by(spatial).map(|v| !is_zero(v));
                    self.is_2_4 &= NmPattern::TWO_FOUR.row_conforms(kept);
                }
            }
        }
        if view.transposed {
            let m = NmPattern::TWO_FOUR.m();
            for group in piece.chunks_exact(m * cols) {
                self.is_2_4 &= (0..cols).all(|c| {
                    let kept = (0..m).map(|r| !is_zero(&group[r * cols + c]));
                    NmPattern::TWO_FOUR.row_conforms(kept)
                });
            }
        }
    }

    /// Two runs' rows together.
    fn join(mut self, other: Rows) -> Rows {
        self.zeros += other.zeros;
        self.non_finite += other.non_finite;
        self.zero_rows += other.zero_rows;
        self.is_2_4 &= other.is_2_4;
        self.col_used.iter_mut().zip(other.col_used).for_each(|(a, b)| *a |= b);
        self
    }

    /// The scan of a tensor of `view` whose rows these are.
    fn scan(self, view: View) -> Scan {
        let zero_cols = self.col_used.iter().filter(|&&used| !used).count();
        Scan {
            zeros: self.zeros,
            non_finite: self.non_finite,
            structure: Some((self.zero_rows, zero_cols, self.is_2_4 && view.whole_groups())),
        }
    }
}

/// The view of a tensor whose structure is scanned: one with entries, rows no longer
/// than [`MAX_STRUCTURED_ROW`].
fn structured(view: Option<View>) -> Option<View> {
    view.filter(|v| v.rows > 0 && v.cols > 0 && v.unit() <= MAX_STRUCTURED_ROW)
}

/// The structure reported without a scan: an empty tensor's rows and columns are all
/// empty (and vacuously 2:4); a tensor of rows too long to scan has none reported.
fn unscanned(view: Option<View>) -> Option<(usize, usize, bool)> {
    view.filter(|v| v.rows == 0 || v.cols == 0).map(|v| (v.rows, v.cols, true))
}

/// Scans tensor `name` in one streaming pass over its rows, on rayon's threads: memory is
/// a chunk of rows and a flag per column per thread, whatever the tensor's size.
fn scan<T: Float, S: Source>(ckpt: &Checkpoint<S>, name: &str, view: Option<View>) -> Result<Scan> {
    let non_finite_in = |piece: &[T]| piece.iter().filter(|v| !v.is_finite()).count();
    let Some(view) = structured(view) else {
        let count = |(zeros, bad): (usize, usize), piece: &[T]| {
            (zeros + zeros_in(piece), bad + non_finite_in(piece))
        };
        let join = |a: (usize, usize), b: (usize, usize)| (a.0 + b.0, a.1 + b.1);
        let (zeros, non_finite) = ckpt.fold_decoded(name, 1, || (0, 0), count, join)?;
        return Ok(Scan { zeros, non_finite, structure: unscanned(view) });
    };
    let add = |mut rows: Rows, piece: &[T]| {
        rows.add(piece, view, |&v| v == T::zero());
        rows.non_finite += non_finite_in(piece);
        rows
    };
    let rows = ckpt.fold_decoded(name, view.unit(), || Rows::new(view.cols), add, Rows::join)?;
    Ok(rows.scan(view))
}

/// [`scan`] of a PyTorch mask (bytes, 1 = keep) of a weight of shape `dims`: its zeros
/// are the weight's pruned entries.
///
/// # Errors
/// As `prune --masks-in` would refuse it: a byte that is neither 0 nor 1.
fn scan_mask<S: Source>(
    ckpt: &Checkpoint<S>,
    name: &str,
    dims: &[usize],
    view: Option<View>,
) -> Result<Scan> {
    let sized = structured(view);
    let mut rows = Rows::new(sized.map_or(0, |v| v.cols));
    let mut seen = 0usize;
    ckpt.for_each_chunk(name, sized.map_or(1, |v| v.unit()), |bytes| -> Result<()> {
        if let Some(at) = bytes.iter().position(|&b| b > 1) {
            let error = shears_io::Error::Shape {
                tensor: name.to_owned(),
                shape: dims.to_vec(),
                reason: format!("element {} is {}, not 0 or 1", seen + at, bytes[at]),
            };
            return Err(anyhow::anyhow!("{}: {error}", ckpt.path().display()));
        }
        seen += bytes.len();
        match sized {
            Some(view) => rows.add(bytes, view, |&b| b == 0),
            None => rows.zeros += bytes.iter().filter(|&&b| b == 0).count(),
        }
        Ok(())
    })?;
    Ok(match sized {
        Some(view) => rows.scan(view),
        None => Scan { zeros: rows.zeros, non_finite: 0, structure: unscanned(view) },
    })
}

pub(crate) fn run(args: &InspectArgs) -> Result<()> {
    crate::hub::check_not_hub_id(&args.input)?;
    let model = match Model::open(&args.input) {
        Ok(model) => model,
        Err(shears_io::Error::NotSafetensors { kind: FileKind::Shears("mask set"), .. }) => {
            return mask_set(args);
        }
        Err(e) => return Err(e.into()),
    };
    let bytes: u64 = model.shards().iter().map(|s| s.data_len()).sum();
    let progress = Progress::bytes(bytes, "scanning", args.quiet || args.json);
    let mut rows = Vec::new();
    let (mut params, mut zeros) = (0usize, 0usize);
    // The model's bytes, and as they were before quantization (if it was quantized).
    let (mut total_bytes, mut original_bytes, mut quantized_any) = (0u64, 0u64, false);
    let mut scale_params = 0usize;
    let (mut masks, mut mask_entries, mut mask_pruned) = (0usize, 0usize, 0usize);
    for t in model.tensors() {
        let (name, info) = (t.name, t.info);
        let ckpt = &model.shards()[t.shard];
        let count = info.shape.iter().product::<usize>();
        let bytes = (info.data_offsets.1 - info.data_offsets.0) as u64;
        let scales = (info.dtype == Dtype::I8).then(|| ckpt.info(&scale_name(name))).flatten();
        let from = ckpt.metadata().and_then(|m| m.get(QUANTIZED_FROM_KEY));
        let original = |i: &shears_io::TensorInfo| {
            let values: u64 = i.shape.iter().product::<usize>() as u64;
            from.and_then(|d| dtype_bytes(d)).map(|size| values * size)
        };
        // What the tensor took before (no scales then) over what it and its scales take.
        let compression = scales.and_then(|s| {
            let now = bytes + (s.data_offsets.1 - s.data_offsets.0) as u64;
            let before = original(info)?;
            (now > 0).then(|| before as f64 / now as f64)
        });
        total_bytes += bytes;
        // A quantized tensor's scales are counted with it.
        let scale_of_quantized = name
            .strip_suffix(shears_io::SCALE_SUFFIX)
            .is_some_and(|w| ckpt.info(w).is_some_and(|i| i.dtype == Dtype::I8));
        original_bytes += match (scales, scale_of_quantized) {
            (Some(_), _) => original(info).unwrap_or(bytes),
            (None, true) => original(info).map_or(bytes, |_| 0),
            (None, false) => bytes,
        };
        quantized_any |= compression.is_some();
        if scale_of_quantized {
            scale_params += count;
        }
        let mut stats = TensorStats {
            name: name.to_owned(),
            dtype: format!("{:?}", info.dtype),
            shape: info.shape.clone(),
            parameters: count,
            sparsity: None,
            zero_rows: None,
            zero_cols: None,
            is_2_4: None,
            bytes: Some(bytes),
            compression,
            non_finite: None,
        };
        progress.message(format!("tensor {name}"));
        let mask =
            weight_of_torch_mask(name).is_some() && matches!(info.dtype, Dtype::U8 | Dtype::BOOL);
        if scale_of_quantized {
            // Part of its int8 tensor: not parameters of their own.
        } else if is_float(info.dtype) || scales.is_some() {
            let transposed = role_of(&model, t) == TensorRole::TransposedLinear;
            let view = View::of(&info.shape, transposed);
            // f64 data is scanned as f64: a tiny f64 is not a zero.
            let found = match info.dtype {
                Dtype::F64 => scan::<f64, _>(ckpt, name, view)?,
                _ => scan::<f32, _>(ckpt, name, view)?,
            };
            params += count;
            zeros += found.zeros;
            stats.sparsity = Some(fraction(found.zeros, count));
            stats.non_finite = (found.non_finite > 0).then_some(found.non_finite);
            if let Some((zero_rows, zero_cols, is_2_4)) = found.structure {
                stats.zero_rows = Some(zero_rows);
                stats.zero_cols = Some(zero_cols);
                stats.is_2_4 = Some(is_2_4);
            }
        } else if mask {
            // A torch mask (1 = keep): its sparsity is the share of zeros, the weight's.
            // A mask has its weight's layout.
            let weight = weight_of_torch_mask(name).unwrap_or(name);
            let transposed =
                TensorRole::classify(weight, true, &info.shape) == TensorRole::TransposedLinear;
            let found = scan_mask(ckpt, name, &info.shape, View::of(&info.shape, transposed))?;
            let pruned = found.zeros;
            stats.sparsity = Some(fraction(pruned, count));
            if let Some((zero_rows, zero_cols, is_2_4)) = found.structure {
                stats.zero_rows = Some(zero_rows);
                stats.zero_cols = Some(zero_cols);
                stats.is_2_4 = Some(is_2_4);
            }
            masks += 1;
            mask_entries += count;
            mask_pruned += pruned;
        }
        progress.advance((info.data_offsets.1 - info.data_offsets.0) as u64);
        rows.push(stats);
    }
    progress.finish();
    rows.sort_unstable_by(|a, b| natural_cmp(&a.name, &b.name));
    let total = Total {
        tensors: rows.len(),
        parameters: params,
        zeros,
        sparsity: fraction(zeros, params),
        bytes: Some(total_bytes),
        compression: quantized_any.then(|| original_bytes as f64 / total_bytes.max(1) as f64),
        masks: (masks > 0).then(|| MaskTotal {
            masks,
            entries: mask_entries,
            pruned: mask_pruned,
            sparsity: fraction(mask_pruned, mask_entries),
        }),
    };
    // Every shard of a model shears wrote carries the same record.
    let pruning = model.shards().first().map_or_else(Vec::new, |s| record::runs(s.metadata()));
    let mut warnings = crate::report::Warnings::default();
    for r in &rows {
        if let Some(n) = r.non_finite {
            let values = if n == 1 { "value" } else { "values" };
            warnings.add(format!("tensor `{}` holds {n} NaN or infinite {values}", r.name));
        }
    }
    if args.json {
        let file = args.input.display().to_string();
        print_json(&Report { file, pruning, tensors: rows, total })?;
        warnings.report();
        return Ok(());
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let cells = |r: &TensorStats| {
        vec![
            r.name.clone(),
            format!("{:?}", r.shape),
            r.dtype.clone(),
            opt(r.sparsity.map(|s| format!("{s:.4}"))),
            opt(r.zero_rows.map(|v| v.to_string())),
            opt(r.zero_cols.map(|v| v.to_string())),
            opt(r.is_2_4.map(|b| if b { "yes".into() } else { "no".into() })),
            opt(r.bytes.map(|b| b.to_string())),
            opt(r.compression.map(|c| format!("{c:.2}x"))),
        ]
    };
    let header = [
        "tensor",
        "shape",
        "dtype",
        "sparsity",
        "zero rows",
        "zero cols",
        "2:4",
        "bytes",
        "compression",
    ];
    print_table(&header, &rows, cells, None)?;
    let compression = match total.compression {
        // Groups of few columns carry more scale bytes than the int8 values save.
        Some(c) if c < 1.0 => format!(", {:.2}x larger than before quantization", 1.0 / c),
        Some(c) => format!(", {c:.2}x smaller than before quantization"),
        None => String::new(),
    };
    if total.parameters == 0 && total.masks.is_some() {
        // A file of masks only: their line below says what they hold.
        outln!("total: {}, {total_bytes} bytes", count(total.tensors, "tensor"))?;
    } else {
        outln!(
            "total: {}, {} parameters (floating point or int8), {} zeros, sparsity {:.4}, {} bytes{compression}{scales}",
            count(total.tensors, "tensor"),
            total.parameters,
            total.zeros,
            total.sparsity,
            total_bytes,
            scales = if scale_params > 0 {
                format!(
                    " (the {scale_params} scales of int8 tensors are in the bytes, not the parameters)"
                )
            } else {
                String::new()
            }
        )?;
    }
    if let Some(m) = &total.masks {
        outln!(
            "masks: {}, {} entries, {} of them pruned, sparsity {:.4}",
            count(m.masks, "PyTorch mask"),
            m.entries,
            m.pruned,
            m.sparsity
        )?;
    }
    // The latest runs; a record of many (a file pruned step by step, or one another tool
    // filled) is listed whole by --json.
    const SHOWN_RUNS: usize = 10;
    let earlier = pruning.len().saturating_sub(SHOWN_RUNS);
    if earlier > 0 {
        outln!("pruned by shears: {earlier} earlier runs (--json lists them), then")?;
    }
    for run in &pruning[earlier..] {
        outln!("pruned by shears: {}", record::describe(run))?;
    }
    warnings.report();
    Ok(())
}

/// `inspect` of a shears mask set: each mask's shape and sparsity.
fn mask_set(args: &InspectArgs) -> Result<()> {
    let set = shears_io::read_mask_set(&args.input)?;
    let mut rows: Vec<TensorStats> = set
        .iter()
        .map(|(name, mask)| TensorStats {
            name: name.clone(),
            dtype: "mask".into(),
            shape: vec![mask.nrows(), mask.ncols()],
            parameters: mask.len(),
            sparsity: Some(fraction(mask.count_pruned(), mask.len())),
            zero_rows: Some(mask.count_fully_pruned_rows()),
            zero_cols: Some(mask.count_fully_pruned_cols()),
            is_2_4: Some(
                mask.ncols() % 4 == 0 && NmPattern::TWO_FOUR.first_violation(mask).is_none(),
            ),
            bytes: None,
            compression: None,
            non_finite: None,
        })
        .collect();
    rows.sort_unstable_by(|a, b| natural_cmp(&a.name, &b.name));
    let (params, zeros) =
        set.iter().fold((0, 0), |(p, z), (_, m)| (p + m.len(), z + m.count_pruned()));
    let total = Total {
        tensors: rows.len(),
        parameters: params,
        zeros,
        sparsity: fraction(zeros, params),
        bytes: None,
        compression: None,
        masks: None,
    };
    if args.json {
        let file = args.input.display().to_string();
        print_json(&Report { file, pruning: Vec::new(), tensors: rows, total })?;
        return Ok(());
    }
    let flag = |b: Option<bool>| if b == Some(true) { "yes" } else { "no" };
    let cells = |r: &TensorStats| {
        vec![
            r.name.clone(),
            format!("{:?}", r.shape),
            format!("{:.4}", r.sparsity.unwrap_or(0.0)),
            r.zero_rows.unwrap_or(0).to_string(),
            r.zero_cols.unwrap_or(0).to_string(),
            flag(r.is_2_4).into(),
        ]
    };
    print_table(
        &["mask", "shape", "sparsity", "zero rows", "zero cols", "2:4"],
        &rows,
        cells,
        None,
    )?;
    outln!(
        "total: {}, {} weights, sparsity {:.4}",
        count(total.tensors, "mask"),
        total.parameters,
        total.sparsity
    )?;
    Ok(())
}

/// `n` and the noun, plural unless `n` is one: "1 tensor", "3 tensors".
fn count(n: usize, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shears_strategies::satisfies_nm;

    /// A one-tensor safetensors file in memory.
    fn file(dtype: Dtype, shape: &[usize], values: &[f32]) -> Checkpoint<Vec<u8>> {
        let mut data = Vec::new();
        for &v in values {
            match dtype {
                Dtype::F64 => data.extend_from_slice(&f64::from(v).to_le_bytes()),
                Dtype::BF16 => data.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
                _ => data.extend_from_slice(&v.to_le_bytes()),
            }
        }
        let header = format!(
            r#"{{"w":{{"dtype":"{dtype:?}","shape":{shape:?},"data_offsets":[0,{}]}}}}"#,
            data.len()
        );
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&data);
        Checkpoint::from_source("t", bytes).unwrap()
    }

    /// NaN and infinities are counted on both paths, whole-row scans and the flat count,
    /// in every dtype that can hold them.
    #[test]
    fn non_finite_values_are_counted() {
        let values = [1.0, f32::NAN, 0.0, f32::INFINITY, 2.0, f32::NEG_INFINITY, 0.0, 3.0];
        for dtype in [Dtype::F32, Dtype::F64, Dtype::BF16] {
            let ckpt = file(dtype, &[2, 4], &values);
            let rows = scan::<f32, _>(&ckpt, "w", View::of(&[2, 4], false)).unwrap();
            assert_eq!((rows.zeros, rows.non_finite), (2, 3), "{dtype:?}");
            let flat = scan::<f32, _>(&ckpt, "w", None).unwrap();
            assert_eq!((flat.zeros, flat.non_finite), (2, 3), "{dtype:?}");
        }
    }

    /// Rows too long to scan for structure are counted for zeros alone: memory stays a
    /// few chunks whatever a row's length.
    #[test]
    fn rows_past_the_bound_are_counted_without_structure() {
        let cols = MAX_STRUCTURED_ROW + 4;
        let values: Vec<f32> = (0..2 * cols).map(|i| if i % 3 == 0 { 0.0 } else { 1.0 }).collect();
        let ckpt = file(Dtype::F32, &[2, cols], &values);
        let zeros = values.iter().filter(|&&v| v == 0.0).count();
        let view = View::of(&[2, cols], false);
        assert_eq!(
            scan::<f32, _>(&ckpt, "w", view).unwrap(),
            Scan { zeros, non_finite: 0, structure: None }
        );
    }

    /// A mask byte other than 0 or 1 is refused, as `prune --masks-in` refuses it.
    #[test]
    fn a_mask_of_other_bytes_is_refused() {
        let mut file = Vec::new();
        let header = r#"{"w_mask":{"dtype":"U8","shape":[2,3],"data_offsets":[0,6]}}"#;
        file.extend_from_slice(&(header.len() as u64).to_le_bytes());
        file.extend_from_slice(header.as_bytes());
        file.extend_from_slice(&[1, 0, 1, 1, 255, 0]);
        let masks = Checkpoint::from_source("m", file).unwrap();
        let view = View::of(&[2, 3], false);
        let err = scan_mask(&masks, "w_mask", &[2, 3], view).unwrap_err().to_string();
        let expected = "m: tensor `w_mask` of shape [2, 3]: element 4 is 255, not 0 or 1";
        assert_eq!(err, expected);
    }

    proptest! {
        /// The one-pass scan reports what the matrix, its nonzero mask and
        /// `satisfies_nm` report.
        #[test]
        fn scan_matches_the_mask_of_the_matrix(
            (rows, cols, values) in (0usize..9, 0usize..11).prop_flat_map(|(r, c)| {
                (Just(r), Just(c), proptest::collection::vec(prop_oneof![Just(0.0f32), Just(1.5), Just(-2.0)], r * c))
            }),
            dtype in prop_oneof![Just(Dtype::F32), Just(Dtype::BF16), Just(Dtype::F64)],
        ) {
            let ckpt = file(dtype, &[rows, cols], &values);
            let got = scan::<f32, _>(&ckpt, "w", View::of(&[rows, cols], false)).unwrap();
            let mask = nonzero_mask(&DMatrix::from_row_slice(rows, cols, &values)).unwrap();
            let structure = (
                mask.fully_pruned_rows().len(),
                mask.fully_pruned_cols().len(),
                satisfies_nm(&mask, NmPattern::TWO_FOUR) && (cols % 4 == 0 || rows == 0),
            );
            prop_assert_eq!(got, Scan { zeros: mask.count_pruned(), non_finite: 0, structure: Some(structure) });
            let flat = scan::<f64, _>(&ckpt, "w", None).unwrap();
            prop_assert_eq!(flat, Scan { zeros: mask.count_pruned(), non_finite: 0, structure: None });
            // Stored (in, out), the layer's matrix is the transpose: 2:4 down the columns.
            let stored = scan::<f32, _>(&ckpt, "w", View::of(&[rows, cols], true)).unwrap();
            let layer = nonzero_mask(&DMatrix::from_row_slice(rows, cols, &values).transpose())
                .unwrap();
            let is_2_4 =
                satisfies_nm(&layer, NmPattern::TWO_FOUR) && (rows % 4 == 0 || cols == 0);
            prop_assert_eq!(stored.structure.map(|s| s.2), Some(is_2_4));
        }

        /// A convolution weight is 2:4 when its matrix view, columns taken in the
        /// `(kh, kw, in)` order `prune --pattern 2:4` groups them in, satisfies 2:4.
        #[test]
        fn a_convolution_is_2_4_along_its_input_channels(
            (dims, values) in (1usize..4, 1usize..10, 1usize..3, 1usize..3).prop_flat_map(
                |(o, i, kh, kw)| (
                    Just([o, i, kh, kw]),
                    proptest::collection::vec(
                        prop_oneof![3 => Just(0.0f32), 1 => Just(1.0)],
                        o * i * kh * kw,
                    ),
                ),
            ),
        ) {
            let [o, i, kh, kw] = dims;
            let (cols, spatial) = (i * kh * kw, kh * kw);
            let ckpt = file(Dtype::F32, &dims, &values);
            let got = scan::<f32, _>(&ckpt, "w", View::of(&dims, false)).unwrap();
            // Column `c` in that order is input channel `c % i` at position `c / i`.
            let asp = Mask::from_fn(o, cols, |r, c| {
                values[r * cols + (c % i) * spatial + c / i] != 0.0
            })
            .unwrap();
            let is_2_4 = satisfies_nm(&asp, NmPattern::TWO_FOUR) && i % 4 == 0;
            prop_assert_eq!(got.structure.map(|s| s.2), Some(is_2_4));
            let bytes: Vec<u8> = values.iter().map(|&v| u8::from(v != 0.0)).collect();
            let header = format!(
                r#"{{"w_mask":{{"dtype":"U8","shape":{dims:?},"data_offsets":[0,{}]}}}}"#,
                bytes.len()
            );
            let mut file = (header.len() as u64).to_le_bytes().to_vec();
            file.extend_from_slice(header.as_bytes());
            file.extend_from_slice(&bytes);
            let masks = Checkpoint::from_source("m", file).unwrap();
            let scanned = scan_mask(&masks, "w_mask", &dims, View::of(&dims, false)).unwrap();
            prop_assert_eq!(scanned, got);
        }
    }
}
