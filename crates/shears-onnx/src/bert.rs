//! A BERT-family sentence encoder ([`BertModel`] and its [`SentenceConfig`]) as an ONNX graph: embeddings,
//! post-norm encoder layers, pooling and normalisation, with the tokenizer left outside
//! (the graph takes token ids, as Hugging Face's ONNX exports do).

use shears_models::{Activation, BertModel, LayerNorm, Linear, Pooling, SentenceConfig};

use crate::error::Result;
use crate::graph::{Dim, Graph, Opset, float, int, ints};
use crate::options::ExportOptions;
use crate::proto::{ModelProto, tensor_proto::DataType};

/// The token ids input: i64 `[batch, sequence]`.
pub const INPUT_IDS: &str = "input_ids";
/// The attention mask input: i64 `[batch, sequence]`, 1 for a token, 0 for padding.
pub const ATTENTION_MASK: &str = "attention_mask";
/// The token type (segment) ids input: i64 `[batch, sequence]`.
pub const TOKEN_TYPE_IDS: &str = "token_type_ids";
/// The token states output: f32 `[batch, sequence, hidden]`.
pub const LAST_HIDDEN_STATE: &str = "last_hidden_state";
/// The sentence embeddings output: f32 `[batch, hidden]`, pooled (and normalised) as the
/// folder's sentence-transformers files say.
pub const SENTENCE_EMBEDDING: &str = "sentence_embedding";

const BATCH: Dim = Dim::Named("batch");
const SEQUENCE: Dim = Dim::Named("sequence");

/// `model` with the pooling of `sentence` as an ONNX model with inputs [`INPUT_IDS`], [`ATTENTION_MASK`],
/// [`TOKEN_TYPE_IDS`] and outputs [`LAST_HIDDEN_STATE`], [`SENTENCE_EMBEDDING`].
///
/// Linear layers are `MatMul` with `Wᵀ` (pruned weights as zeros) then `Add` of the bias;
/// attention adds `(1 - mask) * f32::MIN` to the scores before `Softmax`, as
/// `transformers` does (int8 weights: see [`crate::Weights::Int8`]); GELU is `x/2 (1 + erf(x/√2))` (or its tanh form); layer norms are
/// `LayerNormalization`. Sparse-format layers are written dense.
///
/// # Errors
/// [`crate::Error::Unsupported`] naming a weight or bias that is NaN or infinite.
pub fn export_sentence_encoder(
    model: &BertModel,
    sentence: &SentenceConfig,
    options: &ExportOptions,
) -> Result<ModelProto> {
    let opset = options.opset;
    let config = model.config();
    let mut g = Graph::default();
    let ids = g.input(INPUT_IDS, DataType::Int64, &[BATCH, SEQUENCE]);
    let mask = g.input(ATTENTION_MASK, DataType::Int64, &[BATCH, SEQUENCE]);
    let types = g.input(TOKEN_TYPE_IDS, DataType::Int64, &[BATCH, SEQUENCE]);
    let mut h = embeddings(&mut g, model, &ids, &types);

    // The additive attention mask, [batch, 1, 1, sequence].
    let mask_f = g.op("Cast", &[&mask], "mask", vec![int("to", DataType::Float as i64)]);
    let one = g.scalar("one", 1.0);
    let padding = g.op("Sub", &[&one, &mask_f], "mask", vec![]);
    let lowest = g.scalar("mask.lowest", f32::MIN);
    let additive = g.op("Mul", &[&padding, &lowest], "mask", vec![]);
    let axes_1_2 = g.i64s("axes.1_2", &[2], &[1, 2]);
    let additive = g.op("Unsqueeze", &[&additive, &axes_1_2], "mask", vec![]);

    let heads = config.num_attention_heads;
    let head = config.head_size();
    let hidden = config.hidden_size;
    let split = g.i64s("shape.split_heads", &[4], &[0, 0, heads as i64, head as i64]);
    let merge = g.i64s("shape.merge_heads", &[3], &[0, 0, hidden as i64]);
    let scale = g.scalar("attention.scale", 1.0 / (head as f32).sqrt());
    for (l, layer) in model.layers().iter().enumerate() {
        let p = format!("encoder.layer.{l}");
        let q = linear(&mut g, options, &layer.query, &h)?;
        let k = linear(&mut g, options, &layer.key, &h)?;
        let v = linear(&mut g, options, &layer.value, &h)?;
        let heads_of = |g: &mut Graph, x: &str, perm: &[i64]| {
            let x = g.op("Reshape", &[x, &split], &p, vec![]);
            g.op("Transpose", &[&x], &p, vec![ints("perm", perm)])
        };
        let q = heads_of(&mut g, &q, &[0, 2, 1, 3]);
        let k = heads_of(&mut g, &k, &[0, 2, 3, 1]);
        let v = heads_of(&mut g, &v, &[0, 2, 1, 3]);
        let scores = g.op("MatMul", &[&q, &k], &p, vec![]);
        let scores = g.op("Mul", &[&scores, &scale], &p, vec![]);
        let scores = g.op("Add", &[&scores, &additive], &p, vec![]);
        let probs = g.op("Softmax", &[&scores], &p, vec![int("axis", -1)]);
        let context = g.op("MatMul", &[&probs, &v], &p, vec![]);
        let context = g.op("Transpose", &[&context], &p, vec![ints("perm", &[0, 2, 1, 3])]);
        let context = g.op("Reshape", &[&context, &merge], &p, vec![]);
        let attended = linear(&mut g, options, &layer.attention_output, &context)?;
        let residual = g.op("Add", &[&attended, &h], &p, vec![]);
        let a = layer_norm(
            &mut g,
            layer.attention_norm(),
            &format!("{p}.attention.output.LayerNorm"),
            &residual,
        );
        let up = linear(&mut g, options, &layer.intermediate, &a)?;
        let act = activation(&mut g, config.hidden_act, &up, &p);
        let down = linear(&mut g, options, &layer.output, &act)?;
        let residual = g.op("Add", &[&down, &a], &p, vec![]);
        h = layer_norm(&mut g, layer.output_norm(), &format!("{p}.output.LayerNorm"), &residual);
    }
    g.op_into("Identity", &[&h], LAST_HIDDEN_STATE, vec![]);
    g.output(LAST_HIDDEN_STATE, DataType::Float, &[BATCH, SEQUENCE, Dim::Fixed(hidden)]);

    let pooled = pool(&mut g, sentence.pooling, &h, &mask_f, opset);
    let embedding = if sentence.normalize { normalize(&mut g, &pooled) } else { pooled };
    g.op_into("Identity", &[&embedding], SENTENCE_EMBEDDING, vec![]);
    g.output(SENTENCE_EMBEDDING, DataType::Float, &[BATCH, Dim::Fixed(hidden)]);

    let doc = format!(
        "BERT-family sentence encoder from {}: {} layers, hidden {hidden}, {heads} heads; {:?} pooling{}",
        model.path().display(),
        config.num_hidden_layers,
        sentence.pooling,
        if sentence.normalize { ", normalised" } else { "" }
    );
    Ok(g.into_model("shears_sentence_encoder", opset, doc))
}

/// Word, position and token-type embeddings summed, then the embedding layer norm.
fn embeddings(g: &mut Graph, model: &BertModel, ids: &str, types: &str) -> String {
    let table = |g: &mut Graph, name: &str, m: &nalgebra::DMatrix<f32>| {
        // Column i of the hidden x n matrix is row i of the checkpoint's n x hidden table.
        g.f32s(name, &[m.ncols(), m.nrows()], m.as_slice())
    };
    let p = model.prefix();
    let word = table(g, &format!("{p}embeddings.word_embeddings.weight"), model.word_embeddings());
    let position =
        table(g, &format!("{p}embeddings.position_embeddings.weight"), model.position_embeddings());
    let token_type = table(
        g,
        &format!("{p}embeddings.token_type_embeddings.weight"),
        model.token_type_embeddings(),
    );
    let e = "embeddings";
    let words = g.op("Gather", &[&word, ids], e, vec![]);
    let shape = g.op("Shape", &[ids], e, vec![]);
    let one_index = g.i64s("index.1", &[], &[1]);
    let length = g.op("Gather", &[&shape, &one_index], e, vec![int("axis", 0)]);
    let zero = g.i64s("int.0", &[], &[0]);
    let step = g.i64s("int.1", &[], &[1]);
    let positions = g.op("Range", &[&zero, &length, &step], e, vec![]);
    let positions = g.op("Gather", &[&position, &positions], e, vec![]);
    let kinds = g.op("Gather", &[&token_type, types], e, vec![]);
    let sum = g.op("Add", &[&words, &positions], e, vec![]);
    let sum = g.op("Add", &[&sum, &kinds], e, vec![]);
    layer_norm(g, model.embedding_norm(), &format!("{p}embeddings.LayerNorm"), &sum)
}

fn linear(g: &mut Graph, options: &ExportOptions, layer: &Linear, x: &str) -> Result<String> {
    crate::linear::linear(g, options, layer.name(), &layer.dense_weights(), layer.bias(), x)
}

fn layer_norm(g: &mut Graph, norm: &LayerNorm, name: &str, x: &str) -> String {
    let hidden = norm.weight().len();
    let gamma = g.f32s(&format!("{name}.weight"), &[hidden], norm.weight());
    let beta = g.f32s(&format!("{name}.bias"), &[hidden], norm.bias());
    g.op(
        "LayerNormalization",
        &[x, &gamma, &beta],
        name,
        vec![int("axis", -1), float("epsilon", norm.eps() as f32)],
    )
}

fn activation(g: &mut Graph, act: Activation, x: &str, hint: &str) -> String {
    let half = g.scalar("gelu.half", 0.5);
    let one = g.scalar("one", 1.0);
    match act {
        Activation::Relu => g.op("Relu", &[x], hint, vec![]),
        Activation::Gelu => {
            let root2 = g.scalar("gelu.sqrt2", std::f32::consts::SQRT_2);
            let scaled = g.op("Div", &[x, &root2], hint, vec![]);
            let erf = g.op("Erf", &[&scaled], hint, vec![]);
            let shifted = g.op("Add", &[&erf, &one], hint, vec![]);
            let halved = g.op("Mul", &[x, &half], hint, vec![]);
            g.op("Mul", &[&halved, &shifted], hint, vec![])
        }
        Activation::GeluTanh => {
            // x/2 (1 + tanh(√(2/π) (x + 0.044715 x³)))
            let c = g.scalar("gelu.sqrt_2_over_pi", (2.0 / std::f32::consts::PI).sqrt());
            let k = g.scalar("gelu.cubic", 0.044_715);
            let x2 = g.op("Mul", &[x, x], hint, vec![]);
            let x3 = g.op("Mul", &[&x2, x], hint, vec![]);
            let kx3 = g.op("Mul", &[&x3, &k], hint, vec![]);
            let inner = g.op("Add", &[x, &kx3], hint, vec![]);
            let inner = g.op("Mul", &[&inner, &c], hint, vec![]);
            let t = g.op("Tanh", &[&inner], hint, vec![]);
            let shifted = g.op("Add", &[&t, &one], hint, vec![]);
            let halved = g.op("Mul", &[x, &half], hint, vec![]);
            g.op("Mul", &[&halved, &shifted], hint, vec![])
        }
    }
}

/// Token states `[batch, sequence, hidden]` to `[batch, hidden]`, padding excluded.
fn pool(g: &mut Graph, pooling: Pooling, h: &str, mask_f: &str, opset: Opset) -> String {
    let p = "pooling";
    let token_mask = |g: &mut Graph| {
        let axis_2 = g.i64s("axes.2", &[1], &[2]);
        g.op("Unsqueeze", &[mask_f, &axis_2], p, vec![])
    };
    let axis_1 = |g: &mut Graph| g.i64s("axes.1", &[1], &[1]);
    match pooling {
        Pooling::Mean => {
            let (mask, axis_1) = (token_mask(g), axis_1(g));
            let masked = g.op("Mul", &[h, &mask], p, vec![]);
            let sum = g.op("ReduceSum", &[&masked, &axis_1], p, vec![int("keepdims", 0)]);
            let count = g.op("ReduceSum", &[&mask, &axis_1], p, vec![int("keepdims", 0)]);
            // As sentence-transformers: the count clamped to at least 1e-9.
            let floor = g.scalar("pooling.min_count", 1e-9);
            let count = g.op("Max", &[&count, &floor], p, vec![]);
            g.op("Div", &[&sum, &count], p, vec![])
        }
        Pooling::Cls => {
            let first = g.i64s("index.0", &[], &[0]);
            g.op("Gather", &[h, &first], p, vec![int("axis", 1)])
        }
        Pooling::Max => {
            // Padding pushed far below any state, then the maximum over tokens.
            let mask = token_mask(g);
            let one = g.scalar("one", 1.0);
            let padding = g.op("Sub", &[&one, &mask], p, vec![]);
            let low = g.scalar("pooling.padding", -1e9);
            let push = g.op("Mul", &[&padding, &low], p, vec![]);
            let pushed = g.op("Add", &[h, &push], p, vec![]);
            if opset.get() >= 18 {
                let axis_1 = axis_1(g);
                g.op("ReduceMax", &[&pushed, &axis_1], p, vec![int("keepdims", 0)])
            } else {
                g.op("ReduceMax", &[&pushed], p, vec![ints("axes", &[1]), int("keepdims", 0)])
            }
        }
    }
}

/// `x / max(‖x‖, 1e-12)` per row, as `torch.nn.functional.normalize`.
fn normalize(g: &mut Graph, x: &str) -> String {
    let p = "normalize";
    let axis_1 = g.i64s("axes.1", &[1], &[1]);
    let squares = g.op("Mul", &[x, x], p, vec![]);
    let sum = g.op("ReduceSum", &[&squares, &axis_1], p, vec![int("keepdims", 1)]);
    let norm = g.op("Sqrt", &[&sum], p, vec![]);
    let floor = g.scalar("normalize.eps", 1e-12);
    let norm = g.op("Max", &[&norm, &floor], p, vec![]);
    g.op("Div", &[x, &norm], p, vec![])
}
