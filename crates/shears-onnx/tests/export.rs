//! The exported graphs, checked against their expected node lists and the models' own
//! weights. (ONNX Runtime runs them in `python/check_onnx_export.py`.)

use std::collections::HashSet;
use std::path::Path;

use prost::Message;
use shears_models::{BertModel, Pooling, SentenceConfig};
use shears_nn::Mlp;
use shears_onnx::proto::{GraphProto, ModelProto, TensorProto, tensor_proto::DataType};
use shears_onnx::{
    Activations, Error, ExportOptions, Opset, Weights, encode, export_mlp, export_sentence_encoder,
};

fn tiny_bert() -> (BertModel, SentenceConfig) {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/tiny-bert");
    (BertModel::load(&folder).unwrap(), SentenceConfig::from_folder(&folder).unwrap())
}

fn graph(model: &ModelProto) -> &GraphProto {
    model.graph.as_ref().unwrap()
}

fn ops(model: &ModelProto) -> Vec<&str> {
    graph(model).node.iter().map(|n| n.op_type()).collect()
}

fn initializer<'a>(model: &'a ModelProto, name: &str) -> &'a TensorProto {
    graph(model).initializer.iter().find(|t| t.name() == name).unwrap_or_else(|| panic!("{name}"))
}

fn floats(t: &TensorProto) -> Vec<f32> {
    assert_eq!(t.data_type(), DataType::Float as i32);
    t.raw_data().chunks(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// Nodes in topological order, each input defined before use, every initializer used,
/// names unique, and the bytes decode to the same model.
fn check_well_formed(model: &ModelProto) {
    let g = graph(model);
    let mut defined: HashSet<&str> = g.input.iter().map(|i| i.name()).collect();
    let initializers: HashSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
    assert_eq!(initializers.len(), g.initializer.len(), "initializer names repeat");
    defined.extend(&initializers);
    let mut used = HashSet::new();
    let mut node_names = HashSet::new();
    for node in &g.node {
        for input in &node.input {
            assert!(
                defined.contains(input.as_str()),
                "{} reads {input} before it exists",
                node.name()
            );
            used.insert(input.as_str());
        }
        for output in &node.output {
            assert!(defined.insert(output.as_str()), "{output} is written twice");
        }
        assert!(node_names.insert(node.name()), "node name {} repeats", node.name());
    }
    for t in &initializers {
        assert!(used.contains(t), "initializer {t} is never used");
    }
    for output in &g.output {
        assert!(defined.contains(output.name()), "output {} is never written", output.name());
    }
    let bytes = encode(model).unwrap();
    assert_eq!(&ModelProto::decode(bytes.as_slice()).unwrap(), model);
}

#[test]
fn an_mlp_is_gemm_and_relu_with_its_own_weights() {
    let mlp = Mlp::<f32>::new(&[6, 5, 4, 3], 2).unwrap();
    let model = export_mlp(&mlp, &ExportOptions::default()).unwrap();
    check_well_formed(&model);
    assert_eq!(ops(&model), ["Gemm", "Relu", "Gemm", "Relu", "Gemm", "Identity"]);
    assert_eq!(model.opset_import[0].version(), 17);
    assert_eq!(model.ir_version(), 8);
    assert_eq!(graph(&model).input[0].name(), "input");
    assert_eq!(graph(&model).output[0].name(), "logits");
    for (i, layer) in mlp.layers().iter().enumerate() {
        let w = initializer(&model, &format!("layers.{i}.weight"));
        assert_eq!(w.dims, [layer.shape().0 as i64, layer.shape().1 as i64]);
        // Row-major (out, in), as PyTorch stores it.
        let expected: Vec<f32> = (0..layer.shape().0)
            .flat_map(|r| layer.weight().row(r).iter().copied().collect::<Vec<_>>())
            .collect();
        assert_eq!(floats(w), expected);
        assert_eq!(
            floats(initializer(&model, &format!("layers.{i}.bias"))),
            layer.bias().as_slice()
        );
    }
}

#[test]
fn a_sentence_encoder_follows_bert() {
    let (bert, sentence) = tiny_bert();
    let model = export_sentence_encoder(&bert, &sentence, &ExportOptions::default()).unwrap();
    check_well_formed(&model);
    let config = bert.config();
    let embeddings = [
        "Gather",
        "Shape",
        "Gather",
        "Range",
        "Gather",
        "Gather",
        "Add",
        "Add",
        "LayerNormalization",
    ];
    let mask = ["Cast", "Sub", "Mul", "Unsqueeze"];
    let linear = ["MatMul", "Add"];
    let mut layer: Vec<&str> = Vec::new();
    for _ in 0..3 {
        layer.extend(linear);
    }
    for _ in 0..3 {
        layer.extend(["Reshape", "Transpose"]);
    }
    layer.extend(["MatMul", "Mul", "Add", "Softmax", "MatMul", "Transpose", "Reshape"]);
    layer.extend(linear);
    layer.extend(["Add", "LayerNormalization"]);
    layer.extend(linear);
    layer.extend(["Div", "Erf", "Add", "Mul", "Mul"]); // exact GELU
    layer.extend(linear);
    layer.extend(["Add", "LayerNormalization"]);
    let mut expected: Vec<&str> = embeddings.into_iter().chain(mask).collect();
    for _ in 0..config.num_hidden_layers {
        expected.extend(&layer);
    }
    expected.push("Identity");
    assert_eq!(sentence.pooling, Pooling::Mean);
    expected.extend(["Unsqueeze", "Mul", "ReduceSum", "ReduceSum", "Max", "Div"]);
    assert!(sentence.normalize);
    expected.extend(["Mul", "ReduceSum", "Sqrt", "Max", "Div", "Identity"]);
    assert_eq!(ops(&model), expected);

    let names: Vec<&str> = graph(&model).input.iter().map(|i| i.name()).collect();
    assert_eq!(names, ["input_ids", "attention_mask", "token_type_ids"]);
    let names: Vec<&str> = graph(&model).output.iter().map(|i| i.name()).collect();
    assert_eq!(names, ["last_hidden_state", "sentence_embedding"]);

    // Wᵀ row-major is W's column-major storage; tables are the checkpoint's rows.
    let query = &bert.layers()[1].query;
    let wt = initializer(&model, &format!("{}.T", query.name()));
    assert_eq!(wt.dims, [config.hidden_size as i64, config.hidden_size as i64]);
    assert_eq!(floats(wt), query.dense_weights().as_slice());
    let words = initializer(&model, "embeddings.word_embeddings.weight");
    assert_eq!(words.dims, [config.vocab_size as i64, config.hidden_size as i64]);
    assert_eq!(floats(words), bert.word_embeddings().as_slice());
    let norm = initializer(&model, "encoder.layer.0.output.LayerNorm.weight");
    assert_eq!(floats(norm), bert.layers()[0].output_norm().weight());
}

#[test]
fn other_poolings_and_opsets() {
    let (bert, sentence) = tiny_bert();
    let cls = SentenceConfig { pooling: Pooling::Cls, normalize: false, ..sentence };
    let model = export_sentence_encoder(&bert, &cls, &ExportOptions::default()).unwrap();
    check_well_formed(&model);
    let tail: Vec<&str> = ops(&model).into_iter().rev().take(3).collect();
    assert_eq!(tail, ["Identity", "Gather", "Identity"]);

    let max = SentenceConfig { pooling: Pooling::Max, normalize: false, ..sentence };
    for version in shears_onnx::OPSETS {
        let model = export_sentence_encoder(
            &bert,
            &max,
            &ExportOptions { opset: Opset::new(version).unwrap(), ..ExportOptions::default() },
        )
        .unwrap();
        check_well_formed(&model);
        let reduce = graph(&model).node.iter().find(|n| n.op_type() == "ReduceMax").unwrap();
        // The axes are an attribute until opset 17, an input from 18.
        let as_attribute = reduce.attribute.iter().any(|a| a.name() == "axes");
        assert_eq!(
            (reduce.input.len(), as_attribute),
            if version < 18 { (1, true) } else { (2, false) }
        );
        assert_eq!(model.opset_import[0].version(), version);
    }
}

#[test]
fn unsupported_opsets_are_refused() {
    for version in [0, 16, 22, -1] {
        let err = Opset::new(version).unwrap_err();
        assert!(matches!(err, Error::Opset { .. }));
        assert_eq!(
            err.to_string(),
            format!("opset {version} is not supported: shears exports opsets 17-21")
        );
    }
}

#[test]
fn int8_weights_are_per_row_symmetric_with_zeros_kept() {
    let mut mlp = Mlp::<f32>::new(&[6, 5, 3], 4).unwrap();
    // Prune a third of the first layer: its zeros must stay zeros in int8.
    mlp.layers_mut()[0].weight_mut().iter_mut().step_by(3).for_each(|w| *w = 0.0);
    let options = ExportOptions {
        weights: Weights::Int8(Activations::PerTensor),
        ..ExportOptions::default()
    };
    let model = export_mlp(&mlp, &options).unwrap();
    check_well_formed(&model);
    let layer = ["DynamicQuantizeLinear", "MatMulInteger", "Cast", "Mul", "Mul", "Add"];
    let expected: Vec<&str> = layer
        .iter()
        .chain(["Relu"].iter())
        .chain(layer.iter())
        .chain(["Identity"].iter())
        .copied()
        .collect();
    assert_eq!(ops(&model), expected);
    let w = mlp.layers()[0].weight();
    let q = initializer(&model, "layers.0.weight.T.int8");
    assert_eq!(q.data_type(), DataType::Int8 as i32);
    assert_eq!(q.dims, [6, 5]);
    let scales = floats(initializer(&model, "layers.0.weight.scale"));
    for (i, &byte) in q.raw_data().iter().enumerate() {
        let (c, r) = (i / 5, i % 5); // Wᵀ row-major: input column, then output row
        let v = f32::from(byte as i8);
        if w[(r, c)] == 0.0 {
            assert_eq!(v, 0.0, "a pruned weight stays zero");
        }
        // Half a step, plus f32 roundings (each at most 127 units of 2^-24 of a step).
        assert!((w[(r, c)] - v * scales[r]).abs() <= scales[r] * (0.5 + 2f32.powi(-15)));
    }
    // Every row's largest magnitude maps to ±127.
    for (r, scale) in scales.iter().enumerate() {
        let max = w.row(r).iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!((scale - max / 127.0).abs() <= f32::EPSILON * scale);
    }
    let (bert, sentence) = tiny_bert();
    let model = export_sentence_encoder(&bert, &sentence, &options).unwrap();
    check_well_formed(&model);
    let count = |op: &str| ops(&model).iter().filter(|o| **o == op).count();
    assert_eq!(count("MatMulInteger"), 6 * bert.config().num_hidden_layers);
    assert_eq!(count("MatMul"), 2 * bert.config().num_hidden_layers, "only attention stays f32");
}

#[test]
fn per_token_activations_follow_the_opset() {
    let mlp = Mlp::<f32>::new(&[6, 5, 3], 4).unwrap();
    for version in [17, 18] {
        let options = ExportOptions {
            opset: Opset::new(version).unwrap(),
            weights: Weights::Int8(Activations::PerToken),
            ..ExportOptions::default()
        };
        let model = export_mlp(&mlp, &options).unwrap();
        check_well_formed(&model);
        let layer = [
            "Abs",
            "ReduceMax",
            "Mul",
            "Max",
            "Div",
            "Round",
            "Clip",
            "Cast",
            "MatMulInteger",
            "Cast",
            "Mul",
            "Mul",
            "Add",
        ];
        assert_eq!(ops(&model)[..layer.len()], layer);
        let reduce = graph(&model).node.iter().find(|n| n.op_type() == "ReduceMax").unwrap();
        assert_eq!(reduce.input.len(), if version < 18 { 1 } else { 2 });
    }
}

/// The dims, dense row-major bytes and nonzero count of the sparse `Constant` that
/// writes `name`.
fn densified(model: &ModelProto, name: &str) -> (Vec<i64>, Vec<u8>, usize) {
    let node = graph(model)
        .node
        .iter()
        .find(|n| n.op_type() == "Constant" && n.output == [name])
        .unwrap_or_else(|| panic!("no Constant writes {name}"));
    assert_eq!(node.attribute[0].name(), "sparse_value");
    let sparse = node.attribute[0].sparse_tensor.as_ref().unwrap();
    let (values, indices) = (sparse.values.as_ref().unwrap(), sparse.indices.as_ref().unwrap());
    assert_eq!(indices.data_type(), DataType::Int64 as i32);
    let size = if values.data_type() == DataType::Float as i32 { 4 } else { 1 };
    let total: i64 = sparse.dims.iter().product();
    let mut dense = vec![0u8; total as usize * size];
    let idx: Vec<i64> =
        indices.raw_data().chunks(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
    assert!(idx.windows(2).all(|w| w[0] < w[1]), "indices ascend");
    assert_eq!(values.dims, [idx.len() as i64]);
    for (k, &i) in idx.iter().enumerate() {
        let i = i as usize;
        dense[i * size..(i + 1) * size]
            .copy_from_slice(&values.raw_data()[k * size..(k + 1) * size]);
    }
    (sparse.dims.clone(), dense, idx.len())
}

#[test]
fn sparse_initializers_hold_exactly_the_dense_weights_where_smaller() {
    let mut mlp = Mlp::<f32>::new(&[200, 30, 3], 5).unwrap();
    // 90% of the first layer pruned (sparse is smaller), the last layer dense.
    mlp.layers_mut()[0].weight_mut().iter_mut().enumerate().for_each(|(i, w)| {
        if i % 10 != 0 {
            *w = 0.0;
        }
    });
    for weights in [Weights::F32, Weights::Int8(Activations::PerTensor)] {
        let dense =
            export_mlp(&mlp, &ExportOptions { weights, ..ExportOptions::default() }).unwrap();
        let options =
            ExportOptions { weights, sparse_initializers: true, ..ExportOptions::default() };
        let sparse = export_mlp(&mlp, &options).unwrap();
        check_well_formed(&sparse);
        let without_constants: Vec<&str> =
            ops(&sparse).into_iter().filter(|op| *op != "Constant").collect();
        assert_eq!(without_constants, ops(&dense));
        let first =
            if weights == Weights::F32 { "layers.0.weight" } else { "layers.0.weight.T.int8" };
        let (dims, values, nnz) = densified(&sparse, first);
        let expected = initializer(&dense, first);
        assert_eq!((dims, values.as_slice()), (expected.dims.clone(), expected.raw_data()));
        // The kept tenth (in int8, less the kept weights that round to zero).
        let size = if weights == Weights::F32 { 4 } else { 1 };
        let nonzero = values.chunks(size).filter(|v| v.iter().any(|&b| b != 0)).count();
        assert_eq!(nnz, nonzero);
        assert!(nnz <= 600 && nnz > 500, "{weights:?}: {nnz}");
        // A dense layer stays a dense initializer.
        let last =
            if weights == Weights::F32 { "layers.1.weight" } else { "layers.1.weight.T.int8" };
        assert_eq!(initializer(&sparse, last), initializer(&dense, last));
        assert!(encode(&sparse).unwrap().len() < encode(&dense).unwrap().len());
    }
}
