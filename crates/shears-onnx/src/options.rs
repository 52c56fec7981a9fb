//! What an export writes: the operator set, and f32 or int8 weights.

use crate::graph::Opset;

/// What an export writes: the operator set, and how linear layers hold their weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportOptions {
    /// The operator set.
    pub opset: Opset,
    /// f32 or int8 weights.
    pub weights: Weights,
    /// Write each linear layer's weight, where that is smaller than dense, as a
    /// `Constant` whose `sparse_value` is a `SparseTensorProto` (its nonzero values and
    /// their int64 row-major indices): smaller files, and sparse weights for runtimes
    /// that keep them. ONNX Runtime densifies them when it loads the model, so it
    /// computes the same, no faster.
    pub sparse_initializers: bool,
}

/// How the exporters write linear layers' weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Weights {
    /// f32, as the model holds them: `MatMul` (or `Gemm`) then `Add`.
    #[default]
    F32,
    /// Symmetric int8 per output row (zeros, so pruned weights, stay exactly zero),
    /// multiplied by `MatMulInteger` (int32 accumulation) with activations quantized as
    /// the graph runs, then rescaled once by the activations' and the row's scales.
    Int8(Activations),
}

/// How an int8 graph quantizes the activations a linear layer multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activations {
    /// One scale and zero point for the whole input tensor (`DynamicQuantizeLinear`,
    /// uint8): the pattern ONNX Runtime fuses into its int8 kernels, so the fastest
    /// there, and the coarsest (outlier tokens set everyone's scale).
    #[default]
    PerTensor,
    /// A symmetric int8 scale `max |x| / 127` per token (round half to even), from
    /// standard operators (`Abs`, `ReduceMax`, `Div`, `Round`, `Clip`, `Cast`): closer
    /// to f32, but ONNX Runtime runs those operators one by one.
    PerToken,
}
