//! A small builder of ONNX graphs: nodes with generated output names, initializers from
//! slices, typed inputs and outputs, and the model around them.

use prost::Message;

use crate::error::{Error, Result};
use crate::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, SparseTensorProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType,
    tensor_proto::DataType, tensor_shape_proto, type_proto,
};

/// The operator-set versions the exporters write. Every operator they use has the same
/// meaning from 17 (the first with `LayerNormalization`) to 21; only `ReduceMax` moves
/// its axes from an attribute to an input at 18, and the graph follows.
pub const OPSETS: std::ops::RangeInclusive<i64> = 17..=21;

/// The default operator set: 17, which every ONNX Runtime since 1.13 runs.
pub const DEFAULT_OPSET: i64 = 17;

/// The largest model a single protobuf file holds (protobuf's 2 GiB limit).
pub const MAX_MODEL_BYTES: usize = (1 << 31) - 1;

/// A validated operator-set version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Opset(i64);

impl Opset {
    /// Checks that the exporters can write `version`.
    ///
    /// # Errors
    /// [`Error::Opset`] outside [`OPSETS`].
    pub fn new(version: i64) -> Result<Opset> {
        if OPSETS.contains(&version) {
            Ok(Opset(version))
        } else {
            Err(Error::Opset { version, lowest: *OPSETS.start(), highest: *OPSETS.end() })
        }
    }

    /// The version number.
    pub fn get(self) -> i64 {
        self.0
    }

    /// The IR version a model of this operator set declares (ONNX's versioning table).
    fn ir_version(self) -> i64 {
        match self.0 {
            ..=18 => 8,
            19 | 20 => 9,
            _ => 10,
        }
    }
}

impl Default for Opset {
    fn default() -> Self {
        Opset(DEFAULT_OPSET)
    }
}

/// A dimension of an input or output: fixed, or named and free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dim {
    Fixed(usize),
    Named(&'static str),
}

/// A graph under construction.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    names: usize,
    constants: std::collections::HashSet<String>,
}

impl Graph {
    /// A node `op(inputs)` with attributes, whose one output gets a fresh name with
    /// `hint` in it; returns that name.
    pub(crate) fn op(
        &mut self,
        op: &str,
        inputs: &[&str],
        hint: &str,
        attributes: Vec<AttributeProto>,
    ) -> String {
        self.names += 1;
        let output = format!("{hint}/{op}_{}", self.names);
        self.op_into(op, inputs, &output, attributes);
        output
    }

    /// A node `op(inputs)` with three outputs, each with a fresh name.
    pub(crate) fn op3(&mut self, op: &str, inputs: &[&str], hint: &str) -> [String; 3] {
        self.names += 1;
        let n = self.names;
        let outputs = [0, 1, 2].map(|k| format!("{hint}/{op}_{n}.{k}"));
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: outputs.to_vec(),
            name: Some(format!("{hint}/{op}_{n}/node")),
            op_type: Some(op.to_owned()),
            ..NodeProto::default()
        });
        outputs
    }

    /// An i8 weight: a sparse initializer when `sparse` and that is smaller.
    pub(crate) fn weight_i8s(
        &mut self,
        sparse: bool,
        name: &str,
        dims: &[usize],
        data: &[i8],
    ) -> String {
        let raw = data.iter().map(|&v| v.to_le_bytes()[0]).collect();
        self.weight(sparse, name, dims, DataType::Int8, 1, raw)
    }

    /// An f32 weight: a sparse initializer when `sparse` and that is smaller.
    pub(crate) fn weight_f32s(
        &mut self,
        sparse: bool,
        name: &str,
        dims: &[usize],
        data: &[f32],
    ) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.weight(sparse, name, dims, DataType::Float, 4, raw)
    }

    /// A weight of `size`-byte values `raw` (row-major): with `sparse`, a `Constant`
    /// node whose `sparse_value` is a `SparseTensorProto` of its nonzero values (zero:
    /// every byte zero, `+0.0` or `0`) and their row-major linear indices, when that
    /// takes fewer bytes than dense; otherwise a dense initializer. (A `Constant`, not a
    /// graph's `sparse_initializer`: operators take a `Constant`'s output as the dense
    /// tensor it is, so the graph passes ONNX's full check with shape inference.)
    fn weight(
        &mut self,
        sparse: bool,
        name: &str,
        dims: &[usize],
        ty: DataType,
        size: usize,
        raw: Vec<u8>,
    ) -> String {
        let values = raw.len() / size;
        let nonzero =
            || raw.chunks_exact(size).enumerate().filter(|(_, v)| v.iter().any(|&b| b != 0));
        let nnz = nonzero().count();
        // Each kept value costs its bytes and an 8-byte index.
        if !sparse || nnz * (size + 8) >= values * size || !self.constants.insert(name.to_owned()) {
            return self.initializer(name, dims, ty, raw);
        }
        let (mut kept, mut indices) = (Vec::with_capacity(nnz * size), Vec::with_capacity(nnz * 8));
        for (i, v) in nonzero() {
            kept.extend_from_slice(v);
            indices.extend_from_slice(&(i as i64).to_le_bytes());
        }
        let tensor = SparseTensorProto {
            values: Some(TensorProto {
                dims: vec![nnz as i64],
                data_type: Some(ty as i32),
                name: Some(format!("{name}.values")),
                raw_data: Some(kept),
                ..TensorProto::default()
            }),
            indices: Some(TensorProto {
                dims: vec![nnz as i64],
                data_type: Some(DataType::Int64 as i32),
                name: Some(format!("{name}.indices")),
                raw_data: Some(indices),
                ..TensorProto::default()
            }),
            dims: dims.iter().map(|&d| d as i64).collect(),
        };
        let value = AttributeProto {
            name: Some("sparse_value".into()),
            r#type: Some(AttributeType::SparseTensor as i32),
            sparse_tensor: Some(tensor),
            ..AttributeProto::default()
        };
        self.op_into("Constant", &[], name, vec![value]);
        name.to_owned()
    }

    /// A node `op(inputs)` writing the named `output`.
    pub(crate) fn op_into(
        &mut self,
        op: &str,
        inputs: &[&str],
        output: &str,
        attributes: Vec<AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: vec![output.to_owned()],
            name: Some(format!("{output}/node")),
            op_type: Some(op.to_owned()),
            attribute: attributes,
            ..NodeProto::default()
        });
    }

    /// An f32 initializer of shape `dims` with `data` in row-major order.
    pub(crate) fn f32s(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, dims, DataType::Float, raw)
    }

    /// An i64 initializer.
    pub(crate) fn i64s(&mut self, name: &str, dims: &[usize], data: &[i64]) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, dims, DataType::Int64, raw)
    }

    /// An f32 scalar constant.
    pub(crate) fn scalar(&mut self, name: &str, value: f32) -> String {
        self.f32s(name, &[], &[value])
    }

    /// Adds an initializer; a name given again refers to the first (shared constants such
    /// as `one` are asked for by every part that needs them).
    fn initializer(&mut self, name: &str, dims: &[usize], ty: DataType, raw: Vec<u8>) -> String {
        if !self.constants.insert(name.to_owned()) {
            return name.to_owned();
        }
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(ty as i32),
            name: Some(name.to_owned()),
            raw_data: Some(raw),
            ..TensorProto::default()
        });
        name.to_owned()
    }

    /// A graph input.
    pub(crate) fn input(&mut self, name: &str, ty: DataType, dims: &[Dim]) -> String {
        self.inputs.push(value_info(name, ty, dims));
        name.to_owned()
    }

    /// A graph output (some node must write `name`).
    pub(crate) fn output(&mut self, name: &str, ty: DataType, dims: &[Dim]) {
        self.outputs.push(value_info(name, ty, dims));
    }

    /// The model: this graph, its operator set, and who made it.
    pub(crate) fn into_model(self, name: &str, opset: Opset, doc: String) -> ModelProto {
        ModelProto {
            ir_version: Some(opset.ir_version()),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(opset.get()),
            }],
            producer_name: Some("shears".into()),
            producer_version: Some(env!("CARGO_PKG_VERSION").into()),
            doc_string: Some(doc),
            graph: Some(GraphProto {
                node: self.nodes,
                name: Some(name.to_owned()),
                initializer: self.initializers,
                input: self.inputs,
                output: self.outputs,
                ..GraphProto::default()
            }),
            ..ModelProto::default()
        }
    }
}

fn value_info(name: &str, ty: DataType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match *d {
                Dim::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(n as i64),
                Dim::Named(s) => tensor_shape_proto::dimension::Value::DimParam(s.to_owned()),
            }),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_owned()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(ty as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: None,
        }),
        ..ValueInfoProto::default()
    }
}

/// An integer attribute.
pub(crate) fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_owned()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(value),
        ..AttributeProto::default()
    }
}

/// A float attribute.
pub(crate) fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_owned()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(value),
        ..AttributeProto::default()
    }
}

/// An attribute holding a list of integers.
pub(crate) fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_owned()),
        r#type: Some(AttributeType::Ints as i32),
        ints: values.to_vec(),
        ..AttributeProto::default()
    }
}

/// The model's bytes, as an `.onnx` file holds them.
///
/// # Errors
/// [`Error::TooLarge`] for a model past protobuf's 2 GiB limit.
pub fn encode(model: &ModelProto) -> Result<Vec<u8>> {
    let len = model.encoded_len();
    if len > MAX_MODEL_BYTES {
        return Err(Error::TooLarge { bytes: len });
    }
    Ok(model.encode_to_vec())
}
