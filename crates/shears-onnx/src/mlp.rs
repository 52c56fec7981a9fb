//! shears-nn's [`Mlp`] as an ONNX graph: one `Gemm` per layer, `Relu` between.

use shears_nn::Mlp;

use crate::error::Result;
use crate::graph::{Dim, Graph, int};
use crate::linear::linear;
use crate::options::{ExportOptions, Weights};
use crate::proto::{ModelProto, tensor_proto::DataType};

/// The graph input: `input`, f32 `[batch, inputs]` (one sample per row, as PyTorch).
pub const MLP_INPUT: &str = "input";

/// The graph output: `logits`, f32 `[batch, classes]`.
pub const MLP_OUTPUT: &str = "logits";

/// `mlp` as an ONNX model: layer `i` is `Gemm(x, layers.i.weight, layers.i.bias,
/// transB=1)` with its weight as stored (`(out, in)`, pruned weights as zeros), or its
/// int8 form ([`Weights::Int8`](crate::Weights::Int8)), followed by `Relu` except after the last layer.
///
/// # Errors
/// [`crate::Error::Unsupported`] naming a weight or bias that is NaN or infinite.
pub fn export_mlp(mlp: &Mlp<f32>, options: &ExportOptions) -> Result<ModelProto> {
    let mut g = Graph::default();
    let sizes = mlp.sizes();
    let mut x = g.input(MLP_INPUT, DataType::Float, &[Dim::Named("batch"), Dim::Fixed(sizes[0])]);
    let last = mlp.layers().len() - 1;
    for (i, layer) in mlp.layers().iter().enumerate() {
        let (out, inp) = layer.shape();
        let hint = format!("layers.{i}");
        let z = match options.weights {
            Weights::F32 => {
                crate::linear::finite(&shears_nn::weight_name(i), layer.weight())?;
                crate::linear::finite(&shears_nn::bias_name(i), layer.bias())?;
                // Row-major (out, in): the transpose's column-major storage.
                let w = g.weight_f32s(
                    options.sparse_initializers,
                    &shears_nn::weight_name(i),
                    &[out, inp],
                    layer.weight().transpose().as_slice(),
                );
                let b = g.f32s(&shears_nn::bias_name(i), &[out], layer.bias().as_slice());
                g.op("Gemm", &[&x, &w, &b], &hint, vec![int("transB", 1)])
            }
            Weights::Int8(_) => linear(
                &mut g,
                options,
                &shears_nn::weight_name(i),
                layer.weight(),
                layer.bias(),
                &x,
            )?,
        };
        x = if i == last { z } else { g.op("Relu", &[&z], &hint, vec![]) };
    }
    g.op_into("Identity", &[&x], MLP_OUTPUT, vec![]);
    let x = MLP_OUTPUT;
    g.output(x, DataType::Float, &[Dim::Named("batch"), Dim::Fixed(sizes[sizes.len() - 1])]);
    let doc = format!(
        "shears-nn MLP {sizes:?}: logits = Gemm/Relu layers over input [batch, {}]",
        sizes[0]
    );
    Ok(g.into_model("shears_mlp", options.opset, doc))
}
