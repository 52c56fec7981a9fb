//! Building checkpoints and running the binary.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use safetensors::tensor::{Dtype, TensorView};

/// A tensor to write: name, dtype, shape, values (converted to the dtype).
#[derive(Clone)]
pub(crate) struct T {
    pub(crate) name: &'static str,
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<usize>,
    pub(crate) values: Vec<f64>,
}

pub(crate) fn encode(dtype: Dtype, values: &[f64]) -> Vec<u8> {
    let mut out = Vec::new();
    for &v in values {
        match dtype {
            Dtype::F16 => out.extend_from_slice(&half::f16::from_f64(v).to_le_bytes()),
            Dtype::BF16 => out.extend_from_slice(&half::bf16::from_f64(v).to_le_bytes()),
            Dtype::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
            Dtype::F64 => out.extend_from_slice(&v.to_le_bytes()),
            Dtype::I64 => out.extend_from_slice(&(v as i64).to_le_bytes()),
            Dtype::U8 | Dtype::BOOL => out.push(v as u8),
            Dtype::I8 => out.push((v as i8).to_le_bytes()[0]),
            other => panic!("unsupported test dtype {other:?}"),
        }
    }
    out
}

pub(crate) fn decode(dtype: Dtype, bytes: &[u8]) -> Vec<f64> {
    match dtype {
        Dtype::F16 => {
            bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64()).collect()
        }
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64())
            .collect(),
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap())))
            .collect(),
        Dtype::F64 => {
            bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect()
        }
        Dtype::I64 => bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        Dtype::U8 | Dtype::BOOL => bytes.iter().map(|&b| f64::from(b)).collect(),
        Dtype::I8 => bytes.iter().map(|&b| f64::from(b as i8)).collect(),
        other => panic!("unsupported test dtype {other:?}"),
    }
}

pub(crate) fn write(path: &Path, tensors: &[T]) {
    let data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|t| (t.name.to_string(), t.dtype, t.shape.clone(), encode(t.dtype, &t.values)))
        .collect();
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

/// Reads every tensor of a file: name -> (dtype, shape, values).
pub(crate) fn read(path: &Path) -> HashMap<String, (Dtype, Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), decode(v.dtype(), v.data()))))
        .collect()
}

pub(crate) fn metadata(path: &Path) -> Option<HashMap<String, String>> {
    let bytes = std::fs::read(path).unwrap();
    let (_, m) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    m.metadata().clone()
}

pub(crate) fn shears(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shears")).args(args).output().unwrap()
}

/// Runs `shears ARGS...` with stdout and stderr into one file, and returns what it holds
/// in the order written: where warnings fall against the summary.
pub(crate) fn shears_interleaved(args: &[&str]) -> String {
    let both = tempfile::tempfile().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_shears"))
        .args(args)
        .stdout(both.try_clone().unwrap())
        .stderr(both.try_clone().unwrap())
        .status()
        .unwrap();
    let mut both = both;
    let mut text = String::new();
    std::io::Seek::rewind(&mut both).unwrap();
    std::io::Read::read_to_string(&mut both, &mut text).unwrap();
    assert!(status.success(), "shears {args:?}: {text}");
    text
}

/// Runs `shears prune INPUT -o OUT ARGS...` and asserts it succeeded.
pub(crate) fn prune_ok(input: &Path, out: &Path, args: &[&str]) -> Output {
    let mut all = vec!["prune", input.to_str().unwrap(), "-o", out.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = shears(&all);
    assert!(o.status.success(), "shears {all:?}: {}", stderr(&o));
    o
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Deterministic distinct values: a permutation of 1..=n scaled, with alternating signs.
pub(crate) fn values(n: usize, seed: usize) -> Vec<f64> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 104_729) % (n * 3 + 1)) as f64 / 16.0 + 0.0625)
        .map(|v| if (v * 16.0) as i64 % 2 == 0 { v } else { -v })
        .collect()
}

/// A model: two f32 weights of different scales, a bias, an int tensor.
pub(crate) fn model(path: &Path) {
    write(
        path,
        &[
            T { name: "fc1.weight", dtype: Dtype::F32, shape: vec![8, 16], values: values(128, 1) },
            T { name: "fc1.bias", dtype: Dtype::F32, shape: vec![8], values: vec![0.5; 8] },
            T {
                name: "fc2.weight",
                dtype: Dtype::F32,
                shape: vec![4, 8],
                values: values(32, 2).iter().map(|v| v / 100.0).collect(),
            },
            T { name: "step", dtype: Dtype::I64, shape: vec![1, 1], values: vec![7.0] },
        ],
    );
}

/// Each row of two `embed --json` documents' embeddings, and the least cosine between
/// a row of one and the same row of the other.
pub(crate) fn least_cosine(a: &serde_json::Value, b: &serde_json::Value) -> f64 {
    let rows = |v: &serde_json::Value| -> Vec<Vec<f64>> {
        let rows = v["embeddings"].as_array().unwrap();
        rows.iter()
            .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
            .collect()
    };
    let (a, b) = (rows(a), rows(b));
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            let dot: f64 = x.iter().zip(y).map(|(p, q)| p * q).sum();
            let norm = |v: &[f64]| v.iter().map(|p| p * p).sum::<f64>().sqrt();
            dot / (norm(x) * norm(y))
        })
        .fold(f64::INFINITY, f64::min)
}

/// Rewrites the JSON file at `path` (a model folder's config or tokenizer) as `edit`
/// changes it.
pub(crate) fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(path, serde_json::to_vec(&json).unwrap()).unwrap();
}
