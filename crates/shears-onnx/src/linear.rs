//! A linear layer `y = x Wᵀ + b` in the graph, with f32 or int8 weights.

use nalgebra::{DMatrix, DVector, Dim, Matrix, RawStorage};
use shears_sparse::{Int8Matrix, QuantScheme};

use crate::error::Result;
use crate::graph::{Graph, int, ints};
use crate::options::{Activations, ExportOptions, Weights};
use crate::proto::tensor_proto::DataType;

/// `x Wᵀ + b` for `x` of shape `[..., in]`, `w` of shape `(out, in)`; initializers are
/// named after `name` (the weight's tensor name).
///
/// # Errors
/// [`crate::Error::Unsupported`] naming a weight or bias that is NaN or infinite.
pub(crate) fn linear(
    g: &mut Graph,
    options: &ExportOptions,
    name: &str,
    w: &DMatrix<f32>,
    bias: &DVector<f32>,
    x: &str,
) -> Result<String> {
    let (out, inp) = w.shape();
    finite(name, w)?;
    let bias_name = name.strip_suffix(".weight").unwrap_or(name).to_owned() + ".bias";
    finite(&bias_name, bias)?;
    let b = g.f32s(&bias_name, &[out], bias.as_slice());
    let y = match options.weights {
        Weights::F32 => {
            // W's column-major storage is Wᵀ row-major: (in, out).
            let wt = g.weight_f32s(
                options.sparse_initializers,
                &format!("{name}.T"),
                &[inp, out],
                w.as_slice(),
            );
            g.op("MatMul", &[x, &wt], name, vec![])
        }
        Weights::Int8(activations) => {
            let q = Int8Matrix::quantize(w, QuantScheme::PerRow)?;
            // Wᵀ row-major: for each input column, the outputs' values.
            let mut transposed = Vec::with_capacity(out * inp);
            for c in 0..inp {
                transposed.extend((0..out).map(|r| q.row(r)[c]));
            }
            let wq = g.weight_i8s(
                options.sparse_initializers,
                &format!("{name}.T.int8"),
                &[inp, out],
                &transposed,
            );
            let scales = g.f32s(&format!("{name}.scale"), &[out], q.scales());
            let (xq, x_scale, zero_point) = match activations {
                Activations::PerTensor => {
                    let [xq, scale, zero] = g.op3("DynamicQuantizeLinear", &[x], name);
                    (xq, scale, Some(zero))
                }
                Activations::PerToken => {
                    let (xq, scale) = quantize_per_token(g, options, name, x);
                    (xq, scale, None)
                }
            };
            let product = match &zero_point {
                Some(zero) => g.op("MatMulInteger", &[&xq, &wq, zero], name, vec![]),
                None => g.op("MatMulInteger", &[&xq, &wq], name, vec![]),
            };
            let product = g.op("Cast", &[&product], name, vec![int("to", DataType::Float as i64)]);
            let rows = g.op("Mul", &[&product, &x_scale], name, vec![]);
            g.op("Mul", &[&rows, &scales], name, vec![])
        }
    };
    Ok(g.op("Add", &[&y, &b], name, vec![]))
}

/// Each token (row of `x`) to symmetric int8 with its own scale: `(x_q, scale)`, the
/// scale of shape `[..., 1]`.
fn quantize_per_token(
    g: &mut Graph,
    options: &ExportOptions,
    name: &str,
    x: &str,
) -> (String, String) {
    let magnitude = g.op("Abs", &[x], name, vec![]);
    let max = if options.opset.get() >= 18 {
        let axis = g.i64s("axes.last", &[1], &[-1]);
        g.op("ReduceMax", &[&magnitude, &axis], name, vec![int("keepdims", 1)])
    } else {
        let attributes = vec![ints("axes", &[-1]), int("keepdims", 1)];
        g.op("ReduceMax", &[&magnitude], name, attributes)
    };
    let step = g.scalar("int8.step", 1.0 / 127.0);
    let scale = g.op("Mul", &[&max, &step], name, vec![]);
    // An all-zero token: any positive scale gives zeros.
    let tiny = g.scalar("int8.min_scale", f32::MIN_POSITIVE);
    let scale = g.op("Max", &[&scale, &tiny], name, vec![]);
    let ratio = g.op("Div", &[x, &scale], name, vec![]);
    let rounded = g.op("Round", &[&ratio], name, vec![]);
    let low = g.scalar("int8.low", -127.0);
    let high = g.scalar("int8.high", 127.0);
    let clipped = g.op("Clip", &[&rounded, &low, &high], name, vec![]);
    let xq = g.op("Cast", &[&clipped], name, vec![int("to", DataType::Int8 as i64)]);
    (xq, scale)
}

/// A NaN or infinite value would make every output NaN: an error naming the tensor and
/// the value's `[row, column]` (`[index]` for a vector), as the checkpoint lays it out.
pub(crate) fn finite<R: Dim, C: Dim, S: RawStorage<f32, R, C>>(
    name: &str,
    values: &Matrix<f32, R, C, S>,
) -> Result<()> {
    let Some(i) = values.iter().position(|v| !v.is_finite()) else { return Ok(()) };
    let (rows, value) = (values.nrows(), values[i]);
    let at = if values.ncols() == 1 {
        format!("[{i}]")
    } else {
        format!("[{}, {}]", i % rows, i / rows)
    };
    Err(crate::error::Error::Unsupported(format!("tensor `{name}` holds {value} at {at}")))
}
