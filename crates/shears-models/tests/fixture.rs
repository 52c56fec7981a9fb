//! The tiny BERT of `data/tiny-bert` (made by `python/make_tiny_bert.py`) computes
//! what `transformers` computed for it.

use std::path::{Path, PathBuf};

use nalgebra::DMatrix;
use shears_io::{Checkpoint, Dtype};
use shears_models::{Batch, SentenceTransformer};

pub(crate) fn folder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/tiny-bert")
}

/// PyTorch's outputs: the sentences, their padded ids and mask, the last hidden states
/// (`batch x seq x hidden`) and the embeddings (`batch x hidden`).
pub(crate) struct Expected {
    pub(crate) sentences: Vec<String>,
    pub(crate) ids: Vec<Vec<u32>>,
    pub(crate) states: Vec<f32>,
    pub(crate) seq: usize,
    pub(crate) embeddings: DMatrix<f32>,
}

pub(crate) fn expected() -> Expected {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert-expected.safetensors");
    let ckpt = Checkpoint::open(&path).unwrap();
    let sentences: Vec<String> =
        serde_json::from_str(&ckpt.metadata().unwrap()["sentences"]).unwrap();
    let shape = ckpt.info("input_ids").unwrap().shape.clone();
    let (batch, seq) = (shape[0], shape[1]);
    let ids_raw: Vec<i64> = ckpt
        .read_bytes("input_ids")
        .unwrap()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let mask_raw: Vec<i64> = ckpt
        .read_bytes("attention_mask")
        .unwrap()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let ids = (0..batch)
        .map(|s| {
            (0..seq)
                .filter(|&t| mask_raw[s * seq + t] == 1)
                .map(|t| ids_raw[s * seq + t] as u32)
                .collect()
        })
        .collect();
    let embeddings = ckpt.read_matrix::<f32>("embeddings").unwrap().transpose();
    Expected {
        sentences,
        ids,
        states: ckpt.read_values("last_hidden_state").unwrap(),
        seq,
        embeddings,
    }
}

#[test]
fn tokens_states_and_embeddings_equal_pytorch() {
    let model = SentenceTransformer::load(&folder(), None).unwrap();
    let want = expected();
    let batch = model.tokenizer.encode(&want.sentences).unwrap();
    let got_ids: Vec<Vec<u32>> = batch.ranges().map(|r| batch.ids[r].to_vec()).collect();
    assert_eq!(got_ids, want.ids, "token ids");
    let states = model.model.forward(&batch).unwrap();
    let hidden = states.nrows();
    let mut worst = 0.0f32;
    for (s, range) in batch.ranges().enumerate() {
        for (p, t) in range.enumerate() {
            for h in 0..hidden {
                let expected = want.states[(s * want.seq + p) * hidden + h];
                worst = worst.max((states[(h, t)] - expected).abs());
            }
        }
    }
    assert!(worst < 1e-5, "token states differ from PyTorch by {worst}");
    let embeddings = model.embed(&want.sentences).unwrap();
    let diff = (&embeddings - &want.embeddings).abs().max();
    assert!(diff < 1e-5, "embeddings differ from PyTorch by {diff}");
}

/// The same model stored in f16 and bf16 loads and runs (widened to f32): its outputs
/// are those of its rounded weights, close to the f32 model's.
#[test]
fn half_precision_weights_load() {
    let dir = tempfile::tempdir().unwrap();
    let want = expected();
    for dtype in [Dtype::F16, Dtype::BF16] {
        let copy = dir.path().join(format!("{dtype:?}"));
        std::fs::create_dir(&copy).unwrap();
        for entry in std::fs::read_dir(folder()).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() && entry.file_name() != "model.safetensors" {
                std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
            }
        }
        std::fs::create_dir(copy.join("1_Pooling")).unwrap();
        std::fs::copy(folder().join("1_Pooling/config.json"), copy.join("1_Pooling/config.json"))
            .unwrap();
        let source = Checkpoint::open(&folder().join("model.safetensors")).unwrap();
        let entries = shears_io::layout(source.tensors().iter().map(|(n, info)| {
            let d = if shears_io::is_float(info.dtype) { dtype } else { info.dtype };
            (n.clone(), d, info.shape.clone())
        }))
        .unwrap();
        shears_io::write_safetensors(
            &copy.join("model.safetensors"),
            &entries,
            None,
            |name, w| -> shears_io::Result<()> {
                let info = source.info(name).unwrap();
                if shears_io::is_float(info.dtype) {
                    shears_io::write_values(&source.read_values::<f32>(name)?, dtype, w)
                        .map_err(|e| shears_io::Error::io("write", Path::new(name), e))
                } else {
                    source.copy_to(name, w, Path::new(name))
                }
            },
        )
        .unwrap();
        let model = SentenceTransformer::load(&copy, None).unwrap();
        let diff = (model.embed(&want.sentences).unwrap() - &want.embeddings).abs().max();
        assert!(diff < 0.05, "{dtype:?}: {diff}");
    }
}

#[test]
fn bad_folders_and_inputs_are_errors_that_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("m");
    std::fs::create_dir(&copy).unwrap();
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(folder().join(name), copy.join(name)).unwrap();
    }
    let err = SentenceTransformer::load(&copy, None).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json") && err.contains("no tokenizer.json"), "{err}");
    std::fs::write(copy.join("tokenizer.json"), "{}").unwrap();
    let err = SentenceTransformer::load(&copy, None).unwrap_err().to_string();
    assert!(err.contains("not a tokenizer"), "{err}");
    std::fs::copy(folder().join("tokenizer.json"), copy.join("tokenizer.json")).unwrap();
    let err = SentenceTransformer::load(&copy, Some(1000)).unwrap_err().to_string();
    assert!(err.contains("64 position embeddings"), "{err}");
    let err = SentenceTransformer::load(&copy, Some(2)).unwrap_err().to_string();
    assert!(err.contains("no room"), "{err}");
    let config = std::fs::read_to_string(folder().join("config.json")).unwrap();
    std::fs::write(copy.join("config.json"), config.replace("\"bert\"", "\"gpt2\"")).unwrap();
    let err = SentenceTransformer::load(&copy, None).unwrap_err().to_string();
    assert!(err.contains("model_type") && err.contains("gpt2"), "{err}");
    std::fs::write(
        copy.join("config.json"),
        config.replace("\"hidden_size\": 32", "\"hidden_size\": 16"),
    )
    .unwrap();
    let err = SentenceTransformer::load(&copy, None).unwrap_err().to_string();
    assert!(err.contains("has shape") && err.contains("word_embeddings"), "{err}");

    let model = SentenceTransformer::load(&folder(), None).unwrap();
    let vocab = model.model.config().vocab_size as u32;
    let bad = Batch { ids: vec![vocab], type_ids: vec![0], lengths: vec![1] };
    assert!(model.model.forward(&bad).unwrap_err().to_string().contains("outside the vocabulary"));
    let long = Batch { ids: vec![1; 65], type_ids: vec![0; 65], lengths: vec![65] };
    assert!(model.model.forward(&long).unwrap_err().to_string().contains("position embeddings"));
}

/// Packing is exact: embedding sentences together or one at a time gives the same
/// vectors, in any pass size.
#[test]
fn sentences_do_not_see_each_other() {
    let model = SentenceTransformer::load(&folder(), None).unwrap();
    let want = expected();
    let together = model.embed(&want.sentences).unwrap();
    for (i, s) in want.sentences.iter().enumerate() {
        let alone = model.embed(&[s]).unwrap();
        let diff = (alone.column(0) - together.column(i)).abs().max();
        assert!(diff < 1e-6, "sentence {i}: {diff}");
    }
}
