//! Int8 tensors with their scales: the layout `shears prune --quantize` writes, and which
//! every reader of a [`Checkpoint`](crate::Checkpoint) decodes back to floating point.
//!
//! A quantized tensor `NAME` keeps its name and shape with dtype `I8`. Seen as a matrix
//! of `rows = shape[0]` rows (the output features of a PyTorch linear or convolution
//! weight) and `cols` = the product of the other dimensions, its value at `(r, c)` is
//! `q[r, c] * scale`, where the scales are the F32 tensor `NAME.scale` in the same file:
//!
//! - shape `[rows]`: one scale per row (`int8` in the file's `shears.quantization`
//!   metadata, or no metadata);
//! - shape `[]`: one scale for the whole tensor (as other tools write it);
//! - shape `[rows, groups]`: one per row and per group of `G` consecutive columns
//!   (`int8:group=G` in the metadata, `groups = max(1, ceil(cols / G))`, the last group
//!   of a row possibly shorter).
//!
//! Scales are positive, and finite times 128 (so every value is finite); quantization is symmetric, so a zero (a pruned weight)
//! is stored as 0 and reads back as exactly zero. This is the layout of the ONNX export's
//! `NAME.scale` initializers too.

use std::collections::HashMap;
use std::path::Path;

use safetensors::Dtype;
use safetensors::tensor::TensorInfo;

use crate::dtype::Float;
use crate::error::{Error, Result};

/// The suffix of a quantized tensor's scales: `NAME.scale`.
pub const SCALE_SUFFIX: &str = ".scale";

/// The metadata key that says how a file's int8 tensors are quantized: `int8` (a scale
/// per row) or `int8:group=G`.
pub const QUANTIZATION_KEY: &str = "shears.quantization";

/// The metadata key naming the dtype the file's int8 tensors were quantized from (`F32`,
/// `BF16`, ...), when they all had one.
pub const QUANTIZED_FROM_KEY: &str = "shears.quantized_from";

/// The name of `weight`'s scales: `weight.scale`.
pub fn scale_name(weight: &str) -> String {
    format!("{weight}{SCALE_SUFFIX}")
}

/// `rows x cols`, the matrix a quantized tensor of this shape is seen as: rows along the
/// first dimension (1 for a scalar), columns the rest. For a shape a header accepted the
/// columns always fit (headers bound the product of the nonzero dimensions); for any
/// other whose columns would overflow, they are `usize::MAX`, which no tensor has.
pub fn quantized_matrix_shape(shape: &[usize]) -> (usize, usize) {
    let rows = shape.first().copied().unwrap_or(1);
    let cols = shape.iter().skip(1).try_fold(1usize, |acc, &d| acc.checked_mul(d));
    (rows, cols.unwrap_or(usize::MAX))
}

/// The group size written in the [`QUANTIZATION_KEY`] metadata of the file at `path`: `Ok(None)` for
/// `int8` (per row) or no key, `Ok(Some(G))` for `int8:group=G`.
///
/// # Errors
/// [`Error::Quantized`] naming the value when it is neither.
pub fn quantization_group(
    path: &Path,
    metadata: Option<&HashMap<String, String>>,
) -> Result<Option<usize>> {
    let Some(value) = metadata.and_then(|m| m.get(QUANTIZATION_KEY)) else {
        return Ok(None);
    };
    let bad = || Error::Metadata {
        path: path.to_owned(),
        key: QUANTIZATION_KEY.to_owned(),
        reason: format!("`{value}` is neither int8 nor int8:group=G with G >= 1"),
    };
    match value.strip_prefix("int8") {
        Some("") => Ok(None),
        Some(rest) => match rest.strip_prefix(":group=").map(str::parse::<usize>) {
            Some(Ok(g)) if g >= 1 => Ok(Some(g)),
            _ => Err(bad()),
        },
        None => Err(bad()),
    }
}

/// An int8 tensor as stored, with its validated scales: what a reader that computes in
/// int8 takes instead of the decoded floating-point values
/// ([`Checkpoint::read_int8`](crate::Checkpoint::read_int8)).
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Tensor {
    rows: usize,
    cols: usize,
    group: Option<usize>,
    values: Vec<i8>,
    scales: Vec<f32>,
}

impl Int8Tensor {
    /// `(rows, cols)`, the matrix the tensor is seen as ([`quantized_matrix_shape`]).
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Columns per scale: `None` for one scale per row (a file's single scale for the
    /// whole tensor is given here as that scale for every row), `Some(G)` for groups.
    pub fn group(&self) -> Option<usize> {
        self.group
    }

    /// The values, row-major.
    pub fn values(&self) -> &[i8] {
        &self.values
    }

    /// The scales, row-major: one per row, or `max(1, ceil(cols / G))` per row.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// `(values, scales)`, without a copy.
    pub fn into_parts(self) -> (Vec<i8>, Vec<f32>) {
        (self.values, self.scales)
    }
}

/// Decodes an int8 tensor to floating point with its validated scales.
#[derive(Debug, Clone)]
pub(crate) struct Dequantizer {
    cols: usize,
    /// Columns per scale (`cols` when there is one scale per row).
    group: usize,
    groups: usize,
    /// One scale per row (not a file's groups, which may also be one per row).
    per_row: bool,
    scales: Vec<f32>,
}

impl Dequantizer {
    /// The dequantizer of tensor `name` (`info`, dtype `I8`) from its scale entry
    /// `scale_info` and the scale values `scales` read from the file, under the file's
    /// group size `group` (`None`: one scale per row).
    ///
    /// # Errors
    /// [`Error::Quantized`] when the scales are not F32, do not have the shape the tensor
    /// and the group size ask for, or are not all positive and finite.
    pub(crate) fn new(
        path: &Path,
        name: &str,
        info: &TensorInfo,
        scale_info: &TensorInfo,
        scales: Vec<f32>,
        group: Option<usize>,
    ) -> Result<Dequantizer> {
        let fail = |reason: String| Error::Quantized {
            path: path.to_owned(),
            tensor: scale_name(name),
            reason,
        };
        if scale_info.dtype != Dtype::F32 {
            return Err(fail(format!("has dtype {:?}; scales are F32", scale_info.dtype)));
        }
        let (rows, cols) = quantized_matrix_shape(&info.shape);
        // One scale is repeated for every row when the tensor is read, and rows of no
        // columns cost the file nothing: their count would size that copy unbounded.
        if scale_info.shape.is_empty() && cols == 0 && rows > 0 {
            return Err(fail(format!(
                "is one scale for tensor `{name}` of shape {:?}, which holds no values",
                info.shape
            )));
        }
        let (group, groups, expected) = match (group, scale_info.shape.len()) {
            // One scale for every row: each row's group is that scale, at index 0.
            (_, 0) => (cols.max(1), 0, vec![]),
            (None, 1) => (cols.max(1), 1, vec![rows]),
            (Some(g), 2) => {
                let groups = cols.div_ceil(g).max(1);
                (g, groups, vec![rows, groups])
            }
            (None, _) => {
                return Err(fail(format!(
                    "has shape {:?}; with one scale per row (the file's {QUANTIZATION_KEY} is int8 or absent) it is [{rows}]",
                    scale_info.shape
                )));
            }
            (Some(g), _) => {
                return Err(fail(format!(
                    "has shape {:?}; with groups of {g} columns it is [{rows}, {}]",
                    scale_info.shape,
                    cols.div_ceil(g).max(1)
                )));
            }
        };
        if scale_info.shape != expected {
            return Err(fail(format!(
                "has shape {:?}; tensor `{name}` of shape {:?} needs {expected:?}",
                scale_info.shape, info.shape
            )));
        }
        if let Some(i) = scales.iter().position(|s| !((s * 128.0).is_finite() && *s > 0.0)) {
            return Err(fail(format!(
                "scale {} at index {i} is not positive, or too large for int8 values times it to be finite",
                scales[i]
            )));
        }
        let per_row = group == cols.max(1) && groups == 1 && scale_info.shape.len() == 1;
        Ok(Dequantizer { cols, group, groups, per_row, scales })
    }

    /// The tensor of `rows` rows with these scales and `bytes`, its stored values.
    pub(crate) fn into_tensor(self, rows: usize, bytes: Vec<u8>) -> Int8Tensor {
        let values = bytes.into_iter().map(|b| b as i8).collect();
        let (group, scales) = match self.groups {
            // One scale for the whole tensor: the same scale for every row.
            0 => (None, vec![self.scales[0]; rows]),
            _ if self.per_row => (None, self.scales),
            _ => (Some(self.group), self.scales),
        };
        Int8Tensor { rows, cols: self.cols, group, values, scales }
    }

    /// Decodes `bytes`, the int8 values from flat index `first` on, into `out` (as long).
    pub(crate) fn decode_into<T: Float>(&self, bytes: &[u8], first: usize, out: &mut [T]) {
        debug_assert_eq!(bytes.len(), out.len());
        if out.is_empty() || self.cols == 0 {
            return;
        }
        let (mut row, mut col) = (first / self.cols, first % self.cols);
        let mut rest = bytes.iter().zip(out.iter_mut());
        loop {
            // The rest of this row, a group at a time.
            // `groups` is 0 for one scale of the whole tensor: every row reads index 0.
            let row_scales = &self.scales[row * self.groups..];
            while col < self.cols {
                let end = ((col / self.group + 1) * self.group).min(self.cols);
                let scale = row_scales[col / self.group];
                for (&b, o) in rest.by_ref().take(end - col) {
                    *o = T::from(f32::from(b as i8) * scale);
                }
                if rest.len() == 0 {
                    return;
                }
                col = end;
            }
            row += 1;
            col = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(dtype: Dtype, shape: &[usize]) -> TensorInfo {
        let bytes = shape.iter().product::<usize>() * dtype.bitsize() / 8;
        TensorInfo { dtype, shape: shape.to_vec(), data_offsets: (0, bytes) }
    }

    /// The dequantized values by the layout's formula, one at a time.
    fn oracle(q: &[i8], cols: usize, group: usize, groups: usize, scales: &[f32]) -> Vec<f32> {
        q.iter()
            .enumerate()
            .map(|(i, &v)| f32::from(v) * scales[(i / cols) * groups + (i % cols) / group])
            .collect()
    }

    #[test]
    fn decodes_per_group_from_any_start() {
        // 3 rows of 7 columns in groups of 3 (the last group of each row is 1 wide).
        let q: Vec<i8> = (0..21).map(|i| (i * 13 % 255 - 127) as i8).collect();
        let scales: Vec<f32> = (1..=9).map(|s| s as f32 * 0.5).collect();
        let d = Dequantizer::new(
            Path::new("f"),
            "w",
            &info(Dtype::I8, &[3, 7]),
            &info(Dtype::F32, &[3, 3]),
            scales.clone(),
            Some(3),
        )
        .unwrap();
        let expected = oracle(&q, 7, 3, 3, &scales);
        let bytes: Vec<u8> = q.iter().map(|&v| v as u8).collect();
        for first in 0..21 {
            for len in 0..=21 - first {
                let mut out = vec![f32::NAN; len];
                d.decode_into(&bytes[first..first + len], first, &mut out);
                assert_eq!(out, expected[first..first + len], "from {first}, {len} values");
            }
        }
    }

    #[test]
    fn decodes_per_row_of_a_conv_weight() {
        // [2, 2, 1, 3]: rows of 6 values, one scale each.
        let q: Vec<i8> = vec![1, -2, 3, 0, 127, -127, 0, 0, 5, -5, 64, 1];
        let scales = vec![0.25, 4.0];
        let d = Dequantizer::new(
            Path::new("f"),
            "conv",
            &info(Dtype::I8, &[2, 2, 1, 3]),
            &info(Dtype::F32, &[2]),
            scales.clone(),
            None,
        )
        .unwrap();
        let bytes: Vec<u8> = q.iter().map(|&v| v as u8).collect();
        let mut out = vec![0.0f64; 12];
        d.decode_into(&bytes, 0, &mut out);
        let expected: Vec<f64> = oracle(&q, 6, 6, 1, &scales).into_iter().map(f64::from).collect();
        assert_eq!(out, expected);
        assert_eq!(out[3], 0.0, "zero stays zero");
    }

    #[test]
    fn rejects_scales_that_do_not_fit() {
        let w = info(Dtype::I8, &[4, 10]);
        let err = |scale: TensorInfo, values: Vec<f32>, group| {
            Dequantizer::new(Path::new("f"), "w", &w, &scale, values, group)
                .unwrap_err()
                .to_string()
        };
        assert!(err(info(Dtype::F16, &[4]), vec![1.0; 4], None).contains("dtype F16"));
        assert!(err(info(Dtype::F32, &[5]), vec![1.0; 5], None).contains("needs [4]"));
        assert!(err(info(Dtype::F32, &[4, 3]), vec![1.0; 12], None).contains("one scale per row"));
        // ceil(10 / 4) = 3 groups per row.
        assert!(err(info(Dtype::F32, &[4, 2]), vec![1.0; 8], Some(4)).contains("needs [4, 3]"));
        assert!(err(info(Dtype::F32, &[4]), vec![1.0; 4], Some(4)).contains("[4, 3]"));
        let message = err(info(Dtype::F32, &[4]), vec![1.0, 0.0, 1.0, 1.0], None);
        assert!(message.contains("w.scale") && message.contains("index 1"), "{message}");
        assert!(err(info(Dtype::F32, &[4]), vec![1.0, 1.0, f32::NAN, 1.0], None).contains("NaN"));
        // -128 times a scale this large is not finite.
        assert!(err(info(Dtype::F32, &[4]), vec![1.0, 3e38, 1.0, 1.0], None).contains("index 1"));
    }

    #[test]
    fn one_scale_may_serve_the_whole_tensor() {
        let d = Dequantizer::new(
            Path::new("f"),
            "w",
            &info(Dtype::I8, &[2, 3]),
            &info(Dtype::F32, &[]),
            vec![0.5],
            None,
        )
        .unwrap();
        let mut out = vec![0.0f32; 5];
        d.decode_into(&[1, 2, 3, 4, 254], 1, &mut out);
        assert_eq!(out, [0.5, 1.0, 1.5, 2.0, -1.0]);
    }

    #[test]
    fn reads_the_group_from_metadata() {
        let meta = |v: &str| HashMap::from([(QUANTIZATION_KEY.to_owned(), v.to_owned())]);
        assert_eq!(quantization_group(Path::new("f"), None).unwrap(), None);
        assert_eq!(quantization_group(Path::new("f"), Some(&meta("int8"))).unwrap(), None);
        assert_eq!(
            quantization_group(Path::new("f"), Some(&meta("int8:group=64"))).unwrap(),
            Some(64)
        );
        for bad in ["int4", "int8:group=0", "int8:group=", "int8:g=4", "int8:group=-1"] {
            let e = quantization_group(Path::new("f"), Some(&meta(bad))).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
        assert_eq!(quantized_matrix_shape(&[3, 4, 5]), (3, 20));
        assert_eq!(quantized_matrix_shape(&[]), (1, 1));
        let half = 1 << (usize::BITS / 2);
        assert_eq!(quantized_matrix_shape(&[0, half, half]), (0, usize::MAX));
        assert_eq!(scale_name("a.weight"), "a.weight.scale");
    }
}
