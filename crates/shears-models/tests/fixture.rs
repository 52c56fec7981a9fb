//! The tiny BERT of `data/tiny-bert` (made by `python/make_tiny_bert.py`) computes
//! what `transformers` computed for it.

use std::path::{Path, PathBuf};

use nalgebra::DMatrix;
use shears_io::{Checkpoint, Dtype};
use shears_models::{Batch, SentenceTransformer};
use shears_sparse::Format;

pub(crate) fn folder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/tiny-bert")
}

/// Copies the tiny BERT's folder into `to` (made if missing), all but the file `skip`.
pub(crate) fn copy_folder(to: &Path, skip: Option<&str>) {
    std::fs::create_dir_all(to.join("1_Pooling")).unwrap();
    for entry in std::fs::read_dir(folder()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file()
            && Some(&*entry.file_name()) != skip.map(|s| s.as_ref())
        {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    let pooling = "1_Pooling/config.json";
    std::fs::copy(folder().join(pooling), to.join(pooling)).unwrap();
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
    // Built from weights opened already, the folder is the same model.
    let weights = shears_io::Model::open(&folder()).unwrap();
    let again = SentenceTransformer::from_weights(&folder(), &weights, None).unwrap();
    assert_eq!(again.embed(&want.sentences).unwrap(), embeddings);
    assert_eq!(again.tokenizer.max_len(), model.tokenizer.max_len());
}

/// The same model stored in f16 and bf16 loads and runs: its outputs are those of its
/// rounded weights, close to the f32 model's. Its linear layers keep the checkpoint's
/// bf16 or f16 values, dense and in CSR, with the bits of the same weights in f32.
#[test]
fn half_precision_weights_load() {
    let dir = tempfile::tempdir().unwrap();
    let want = expected();
    for dtype in [Dtype::F16, Dtype::BF16] {
        let copy = dir.path().join(format!("{dtype:?}"));
        copy_folder(&copy, Some("model.safetensors"));
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
        let values = if dtype == Dtype::F16 { "f16" } else { "bf16" };
        for linear in model.model.linears() {
            let stored = (linear.format(), linear.value_type());
            assert_eq!(stored, (Format::Dense, values), "{}", linear.name());
        }
        let dense = model.embed(&want.sentences).unwrap();
        let diff = (&dense - &want.embeddings).abs().max();
        assert!(diff < 0.05, "{dtype:?}: {diff}");
        let mut widened = model.clone();
        for layer in widened.model.layers_mut() {
            for (_, linear) in layer.linears_mut() {
                linear.set_f32_format(Format::Dense).unwrap();
                assert_eq!(linear.value_type(), "f32", "{}", linear.name());
            }
        }
        assert_eq!(widened.embed(&want.sentences).unwrap(), dense, "{dtype:?} widened to f32");
        // Choosing formats times dense layers in their type and in f32: either way, the
        // same bits.
        let mut chosen = model.clone();
        let choices = shears_models::choose_formats(&mut chosen.model, 16).unwrap();
        assert!(choices.iter().all(|c| c.chosen == "dense"), "{choices:?}");
        for linear in chosen.model.linears() {
            assert!(["f32", values].contains(&linear.value_type()), "{}", linear.name());
        }
        assert_eq!(chosen.embed(&want.sentences).unwrap(), dense, "{dtype:?} chosen");
        // In CSR the layers keep the checkpoint's values, in half the bytes.
        let mut sparse = model.clone();
        for layer in sparse.model.layers_mut() {
            for (_, linear) in layer.linears_mut() {
                linear.set_format(Format::Csr).unwrap();
                assert_eq!(linear.value_type(), values, "{}", linear.name());
            }
        }
        let diff = (sparse.embed(&want.sentences).unwrap() - &dense).abs().max();
        assert!(diff < 1e-5, "{dtype:?} in CSR: {diff}");
    }
}

/// Where both feed-forward layers are N:M, the model passes their intermediate by rows;
/// its states keep the bits of the pass that observes every layer's input (by columns),
/// in f32 and bf16 values, whatever the threads; in the other formats, by columns too.
#[test]
fn feed_forward_layers_by_rows_keep_the_bits() {
    use shears_core::{BlockShape, NmPattern};
    let model = SentenceTransformer::load(&folder(), None).unwrap();
    let batch = model.tokenizer.encode(&expected().sentences).unwrap();
    let formats = [
        Format::Csr,
        Format::SlicedEll,
        Format::Nm(NmPattern::TWO_FOUR),
        Format::Bsr(BlockShape::new(2, 2).unwrap()),
    ];
    let bits = |m: &DMatrix<f32>| m.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for format in formats {
        for half in [false, true] {
            let mut sparse = model.model.clone();
            for layer in sparse.layers_mut() {
                for (_, linear) in layer.linears_mut() {
                    // Two of every four inputs of each row, where the row says.
                    let w = linear.dense_weights();
                    let kept = |r: usize, c: usize| (r + c) % 4 < 2;
                    let round = |v: f32| if half { half::bf16::from_f32(v).to_f32() } else { v };
                    let w = DMatrix::from_fn(w.nrows(), w.ncols(), |r, c| {
                        if kept(r, c) { round(w[(r, c)]) } else { 0.0 }
                    });
                    linear.set_dense(w).unwrap();
                    linear.set_format(format).unwrap();
                    let values = if half { "bf16" } else { "f32" };
                    let csr_or_nm = matches!(format, Format::Csr | Format::Nm(_));
                    assert!(!csr_or_nm || linear.value_type() == values, "{format}");
                }
            }
            let mut observed = sparse.embed_tokens(&batch).unwrap();
            let mut inputs = 0;
            for layer in sparse.layers() {
                let mut count = |_: shears_models::Site, _: &DMatrix<f32>| {
                    inputs += 1;
                    Ok(())
                };
                observed = sparse.run_layer(layer, &observed, &batch.lengths, &mut count).unwrap();
            }
            assert_eq!(inputs, 4 * sparse.layers().len(), "{format}");
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let states = pool.install(|| sparse.forward(&batch)).unwrap();
                assert!(bits(&states) == bits(&observed), "{format}, half {half}, {threads}");
            }
        }
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
    let err = SentenceTransformer::load(&copy, Some(2)).unwrap_err();
    assert!(matches!(err, shears_models::Error::Argument(_)), "{err}");
    assert!(err.to_string().starts_with("a maximum length of 2 tokens leaves no room"), "{err}");
    // The same length from the folder's own config names that file and field.
    std::fs::write(copy.join("sentence_bert_config.json"), r#"{"max_seq_length": 2}"#).unwrap();
    let err = SentenceTransformer::load(&copy, None).unwrap_err().to_string();
    assert!(err.contains("sentence_bert_config.json") && err.contains("max_seq_length"), "{err}");
    assert!(err.contains("no room"), "{err}");
    std::fs::remove_file(copy.join("sentence_bert_config.json")).unwrap();
    // A pooling module that expects token states of another width.
    std::fs::create_dir(copy.join("1_Pooling")).unwrap();
    let pooling = std::fs::read_to_string(folder().join("1_Pooling/config.json")).unwrap();
    let wider =
        pooling.replace("\"word_embedding_dimension\": 32", "\"word_embedding_dimension\": 999");
    assert_ne!(wider, pooling);
    std::fs::write(copy.join("1_Pooling/config.json"), wider).unwrap();
    let err = SentenceTransformer::load(&copy, None).unwrap_err().to_string();
    assert!(
        err.contains("word_embedding_dimension: the pooling module expects 999")
            && err.contains("hidden_size is 32"),
        "{err}"
    );
    std::fs::write(copy.join("1_Pooling/config.json"), pooling).unwrap();
    assert!(SentenceTransformer::load(&copy, None).is_ok());
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
    // Layers load side by side; the error is still the first layer's.
    std::fs::write(
        copy.join("config.json"),
        config.replace("\"intermediate_size\": 64", "\"intermediate_size\": 63"),
    )
    .unwrap();
    let err = SentenceTransformer::load(&copy, None).unwrap_err().to_string();
    assert!(err.contains("has shape") && err.contains("layer.0.intermediate"), "{err}");

    let model = SentenceTransformer::load(&folder(), None).unwrap();
    let vocab = model.model.config().vocab_size as u32;
    let bad = Batch { ids: vec![vocab], type_ids: vec![0], lengths: vec![1] };
    assert!(model.model.forward(&bad).unwrap_err().to_string().contains("outside the vocabulary"));
    let long = Batch { ids: vec![1; 65], type_ids: vec![0; 65], lengths: vec![65] };
    assert!(model.model.forward(&long).unwrap_err().to_string().contains("position embeddings"));
    // A sentence of no tokens has no embedding (pooling would make it a zero vector).
    let empty = Batch { ids: vec![1, 2], type_ids: vec![0, 0], lengths: vec![2, 0] };
    let err = model.embed_batch(&empty).unwrap_err();
    assert!(matches!(err, shears_models::Error::NoTokens { sentence: 1 }), "{err}");
    assert!(err.to_string().starts_with("sentence 2 (of the lines with text) gives no tokens"));
}

/// A weight of a type the encoder cannot compute with (`I32` here, the bytes of its `f32`
/// values) is refused naming the file and the tensor once, an embedding table and a
/// linear layer's weight alike.
#[test]
fn weights_of_an_integer_type_are_named_once() {
    let dir = tempfile::tempdir().unwrap();
    let source = Checkpoint::open(&folder().join("model.safetensors")).unwrap();
    let tensors =
        ["embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight"];
    for (k, tensor) in tensors.into_iter().enumerate() {
        assert!(source.info(tensor).is_some(), "{tensor}");
        let copy = dir.path().join(format!("m{k}"));
        copy_folder(&copy, Some("model.safetensors"));
        let entries = shears_io::layout(source.tensors().iter().map(|(n, info)| {
            let d = if n == tensor { Dtype::I32 } else { info.dtype };
            (n.clone(), d, info.shape.clone())
        }))
        .unwrap();
        shears_io::write_safetensors(&copy.join("model.safetensors"), &entries, None, |n, w| {
            source.copy_to(n, w, Path::new(n))
        })
        .unwrap();
        let err = SentenceTransformer::load(&copy, None).unwrap_err().to_string();
        assert_eq!(err.matches(tensor).count(), 1, "{err}");
        assert_eq!(err.matches("model.safetensors").count(), 1, "{err}");
        assert!(err.contains("I32"), "{err}");
    }
}

/// The public pieces of a forward pass refuse inputs whose parts disagree (a `Batch`,
/// lengths, heads, or a linear layer swapped in by hand) with an error, not a panic or
/// a silently wrong output.
#[test]
fn inconsistent_inputs_to_the_forward_pass_are_errors() {
    let mut model = SentenceTransformer::load(&folder(), None).unwrap();
    let fine = Batch { ids: vec![1, 2, 3], type_ids: vec![0; 3], lengths: vec![2, 1] };
    model.model.forward(&fine).unwrap();
    for (bad, says) in [
        (Batch { lengths: vec![1], ..fine.clone() }, "lengths that add up to 1"),
        (Batch { lengths: vec![2, 5], ..fine.clone() }, "lengths that add up to 7"),
        (Batch { lengths: vec![usize::MAX, 4], ..fine.clone() }, "more than usize holds"),
        (Batch { type_ids: vec![0], ..fine.clone() }, "has 1 type ids"),
    ] {
        for err in [model.model.forward(&bad).unwrap_err(), model.embed_batch(&bad).unwrap_err()] {
            assert!(err.to_string().contains(says), "{err}");
        }
    }
    let states = model.model.forward(&fine).unwrap();
    let pooled = shears_models::pool(&states, &[2, 1], shears_models::Pooling::Mean, true);
    assert_eq!(pooled.unwrap().ncols(), 2);
    for lengths in [&[3, 1][..], &[1][..]] {
        assert!(shears_models::pool(&states, lengths, shears_models::Pooling::Cls, false).is_err());
    }
    let x = model.model.embed_tokens(&fine).unwrap();
    let layer = &model.model.layers()[0];
    let act = shears_models::Activation::Gelu;
    for (lengths, heads, says) in [
        (&[2, 2][..], 2, "add up to 4 for 3 tokens"),
        (&[3][..], 0, "0 attention heads"),
        (&[3][..], 5, "5 attention heads"),
    ] {
        let err = layer.forward(&x, lengths, heads, act, &mut |_, _| Ok(())).unwrap_err();
        assert!(err.to_string().contains(says), "{err}");
    }
    // A query projection of the wrong width, put in place of the layer's own.
    let hidden = model.model.config().hidden_size;
    let narrow = shears_models::Linear::new(
        "narrow",
        DMatrix::zeros(8, hidden),
        nalgebra::DVector::zeros(8),
    )
    .unwrap();
    model.model.layers_mut()[0].query = narrow;
    let err = model.model.forward(&fine).unwrap_err().to_string();
    assert!(err.contains("`narrow` is (8, 32) in a layer of hidden size 32"), "{err}");
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

/// The tiny BERT with every encoder linear weight quantized to int8 (per row, or in
/// groups of 8 columns) loads those layers as int8, running integer products: the
/// embeddings stay close to the f32 model's, and `dequantize` turns them into the f32
/// layers of their values times their scales.
#[test]
fn int8_weights_load_as_int8_layers() {
    use shears_sparse::{Int8Matrix, QuantScheme};
    let dir = tempfile::tempdir().unwrap();
    let want = expected();
    for (tag, scheme) in [("row", QuantScheme::PerRow), ("group", QuantScheme::PerGroup(8))] {
        let copy = dir.path().join(tag);
        copy_folder(&copy, Some("model.safetensors"));
        let source = Checkpoint::open(&folder().join("model.safetensors")).unwrap();
        let linear = |n: &str| {
            n.contains("encoder.layer.") && n.ends_with("dense.weight")
                || n.contains("attention.self.") && n.ends_with(".weight")
        };
        let quantized: std::collections::HashMap<String, Int8Matrix> = source
            .names()
            .filter(|n| linear(n))
            .map(|n| {
                let w = source.read_matrix::<f32>(n).unwrap();
                (n.to_owned(), Int8Matrix::quantize(&w, scheme).unwrap())
            })
            .collect();
        let mut specs = Vec::new();
        for (n, info) in source.tensors() {
            match quantized.get(n) {
                Some(q) => {
                    specs.push((n.clone(), Dtype::I8, info.shape.clone()));
                    let scales = q.scales().len() / q.shape().0;
                    let shape = match scheme {
                        QuantScheme::PerRow => vec![q.shape().0],
                        QuantScheme::PerGroup(_) => vec![q.shape().0, scales],
                    };
                    specs.push((shears_io::scale_name(n), Dtype::F32, shape));
                }
                None => specs.push((n.clone(), info.dtype, info.shape.clone())),
            }
        }
        let metadata = std::collections::HashMap::from([(
            shears_io::QUANTIZATION_KEY.to_owned(),
            scheme.to_string(),
        )]);
        let entries = shears_io::layout(specs).unwrap();
        shears_io::write_safetensors(
            &copy.join("model.safetensors"),
            &entries,
            Some(&metadata),
            |name, w| -> shears_io::Result<()> {
                let io = |e| shears_io::Error::io("write", Path::new(name), e);
                let weight = name.strip_suffix(shears_io::SCALE_SUFFIX).unwrap_or(name);
                match quantized.get(weight) {
                    Some(q) if weight == name => w
                        .write_all(&q.values().iter().map(|&v| v as u8).collect::<Vec<_>>())
                        .map_err(io),
                    Some(q) => shears_io::write_values(q.scales(), Dtype::F32, w).map_err(io),
                    None => source.copy_to(name, w, Path::new(name)),
                }
            },
        )
        .unwrap();
        let mut model = SentenceTransformer::load(&copy, None).unwrap();
        let int8 = model.model.linears().filter(|l| l.int8().is_some()).count();
        assert_eq!(int8, quantized.len(), "{tag}");
        assert!(int8 >= 6, "{tag}: {int8} int8 layers");
        let native = model.embed(&want.sentences).unwrap();
        let diff = (&native - &want.embeddings).abs().max();
        assert!(diff < 0.05, "{tag}: {diff}");
        for l in model.model.linears().filter(|l| l.int8().is_some()) {
            let q = &quantized[l.name()];
            assert_eq!(l.int8(), Some(q), "{}", l.name());
            let x = DMatrix::from_fn(q.shape().1, 3, |r, c| ((r * 5 + c * 3) % 7) as f32 - 3.0);
            let mut expected = shears_sparse::SparseProduct::matmul(q, &x).unwrap();
            expected.column_iter_mut().for_each(|mut c| c += l.bias());
            assert_eq!(l.forward(&x).unwrap(), expected, "{}", l.name());
        }
        assert_eq!(model.model.dequantize(), int8);
        assert!(model.model.linears().all(|l| l.int8().is_none()));
        for l in model.model.linears() {
            if let Some(q) = quantized.get(l.name()) {
                assert_eq!(l.dense_weights(), q.dequantize(), "{}", l.name());
            }
        }
        let diff = (model.embed(&want.sentences).unwrap() - &want.embeddings).abs().max();
        assert!(diff < 0.05, "{tag} dequantized: {diff}");
    }
}

/// A text is cut exactly when it has more tokens than the encoder keeps (the oracle:
/// its length under an encoder that keeps them all), and has words exactly when a token
/// other than [CLS] and [SEP] remains.
#[test]
fn fits_say_which_texts_are_cut_and_which_hold_no_words() {
    use shears_models::{Fit, TextEncoder};
    let texts = ["the cat sat", "\u{7}", "the dog ran far away", "", "a b", "the cat"];
    let whole = TextEncoder::from_folder(&folder(), 64).unwrap().encode(&texts).unwrap();
    assert_eq!(whole.lengths[1], 2, "a control character gives [CLS] [SEP] alone");
    assert!(whole.lengths[2] > 7, "a text longer than every cut but the last");
    for max_len in [3, 4, 5, 7, 64] {
        let encoder = TextEncoder::from_folder(&folder(), max_len).unwrap();
        let fits = encoder.fit(&texts).unwrap();
        let expected: Vec<Fit> = whole
            .lengths
            .iter()
            .map(|&len| Fit {
                tokens: len.min(max_len),
                has_words: len > 2,
                truncated: len > max_len,
            })
            .collect();
        assert_eq!(fits, expected, "max_len {max_len}");
    }
    // Special tokens spelled out in a text are no words of it, for every rule that asks.
    // The fixture's tokenizer declares no added tokens (so `[CLS]` is four word pieces
    // there); Hugging Face's tokenizers declare them special, as here.
    let dir = tempfile::tempdir().unwrap();
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder().join("tokenizer.json")).unwrap()).unwrap();
    let special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].iter().map(|content| {
        let id = json["model"]["vocab"][content].clone();
        serde_json::json!({"id": id, "special": true, "content": content, "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false})
    });
    json["added_tokens"] = special.collect();
    std::fs::write(dir.path().join("tokenizer.json"), json.to_string()).unwrap();
    let encoder = TextEncoder::from_folder(dir.path(), 64).unwrap();
    let spelled = ["[CLS]", "[SEP] [PAD] [MASK]", "the [MASK] sat"];
    let fits = encoder.fit(&spelled).unwrap();
    assert_eq!(fits.iter().map(|f| f.has_words).collect::<Vec<_>>(), [false, false, true]);
    // Text the vocabulary lacks is [UNK], which is text all the same.
    let unknown = ["\u{2603}", "[UNK]"];
    let encoded = encoder.encode(&unknown).unwrap();
    assert_eq!(encoded.ids[1], encoder.encode(&["[UNK]"]).unwrap().ids[1], "the snowman is [UNK]");
    assert!(encoder.fit(&unknown).unwrap().iter().all(|f| f.has_words));
    assert!(encoder.check_words(&spelled[..2]).is_err());
    let pool = encoder.word_pool(&spelled).unwrap().sentences(1, 4).unwrap();
    let the_sat = encoder.encode(&["the sat"]).unwrap();
    assert_eq!(pool.ids, the_sat.ids, "the words of `the [MASK] sat`, around them [CLS] [SEP]");
}

/// Sentences cut from a word pool are the texts' tokens without the special ones, in
/// order and repeated, between the special tokens a sentence is encoded with; a
/// tokenizer that adds none gives sentences of words alone.
#[test]
fn word_pools_cut_exact_sentences_between_the_special_tokens() {
    use shears_models::TextEncoder;
    let texts = ["the cat sat", "\u{7}", "the dog ran far away"];
    let encoder = TextEncoder::from_folder(&folder(), 64).unwrap();
    let encoded = encoder.encode(&texts).unwrap();
    // The oracle: BERT's template is [CLS] text [SEP], so a text's words are all of its
    // tokens but the first and the last.
    let mut words = Vec::new();
    for range in encoded.ranges() {
        words.extend_from_slice(&encoded.ids[range.start + 1..range.end - 1]);
    }
    let (cls, sep) = (encoded.ids[0], encoded.ids[encoded.lengths[0] - 1]);
    let pool = encoder.word_pool(&texts).unwrap();
    let batch = pool.sentences(3, 7).unwrap();
    assert_eq!(batch.lengths, [7, 7, 7]);
    assert_eq!(batch.type_ids, [0; 21]);
    let cycled: Vec<u32> = words.iter().copied().cycle().take(15).collect();
    for (s, range) in batch.ranges().enumerate() {
        let sentence = &batch.ids[range];
        assert_eq!((sentence[0], sentence[6]), (cls, sep), "sentence {s}");
        assert_eq!(sentence[1..6], cycled[s * 5..s * 5 + 5], "sentence {s}");
    }
    let err = pool.sentences(1, 2).unwrap_err().to_string();
    assert!(err.contains("sentences of 2 tokens leave no room") && err.contains("2 special"));
    let err = encoder.word_pool(&["\u{7}", " "]).unwrap_err();
    assert!(matches!(err, shears_models::Error::Texts(_)), "{err}");
    // The same rule for every command: texts of special tokens alone are refused, with
    // the word pool's words; one text with a word, however late, is enough.
    let err = encoder.check_words(&["\u{7}", " ", "\u{200b}"]).unwrap_err();
    assert_eq!(err.to_string(), encoder.word_pool(&["\u{7}"]).unwrap_err().to_string());
    let mut late = vec!["\u{7}"; 200];
    late.push("the cat");
    encoder.check_words(&late).unwrap();
    assert!(encoder.check_words(&late[..200]).is_err());
    encoder.check_words(&texts).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let tokenizer = folder().join("tokenizer.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tokenizer).unwrap()).unwrap();
    json["post_processor"] = serde_json::Value::Null;
    std::fs::write(dir.path().join("tokenizer.json"), serde_json::to_vec(&json).unwrap()).unwrap();
    let bare = TextEncoder::from_folder(dir.path(), 64).unwrap();
    let batch = bare.word_pool(&texts).unwrap().sentences(2, 4).unwrap();
    assert_eq!(batch.ids, words.iter().copied().cycle().take(8).collect::<Vec<_>>());
    assert_eq!(batch.lengths, [4, 4]);
    // A batch past the bound (or past usize) is refused before anything is allocated.
    let pool = bare.word_pool(&texts).unwrap();
    for (sentences, seq_len) in [(usize::MAX, 512), (1 << 20, 128)] {
        let err = pool.sentences(sentences, seq_len).unwrap_err().to_string();
        assert!(err.contains("more than the 67108864 tokens of one batch"), "{err}");
    }
}

/// A tokenizer that fails on a text is named by its file, and the text by its start.
#[test]
fn a_tokenizer_that_fails_on_a_text_is_named() {
    use shears_models::TextEncoder;
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = folder().join("tokenizer.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tokenizer).unwrap()).unwrap();
    // WordPiece needs its unknown token for a word outside the vocabulary.
    json["model"]["vocab"].as_object_mut().unwrap().remove("[UNK]").unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    let encoder = TextEncoder::from_folder(dir.path(), 64).unwrap();
    // Named with the text it fails on (an empty one needs no unknown token).
    let texts = ["", "zzqxj\u{2603}"];
    let err = encoder.encode(&texts).unwrap_err().to_string();
    let named = format!("{}: the tokenizer fails on the text \"zzqxj\u{2603}\": ", path.display());
    assert!(err.starts_with(&named) && err.contains("[UNK]"), "{err}");
    assert_eq!(encoder.word_pool(&texts).unwrap_err().to_string(), err);
    // A long text is shown by its start.
    let long = format!("{}zzqxj", "\u{2603}".repeat(70));
    let err = encoder.encode(&[long]).unwrap_err().to_string();
    let shown = format!("\"{}\"...: ", "\u{2603}".repeat(60));
    assert!(err.contains(&shown), "{err}");
}

/// A post-processor the tokenizers library would panic on is refused when the
/// tokenizer is loaded, naming its file and the flaw; a sound `Sequence` around the
/// template encodes as the template alone does.
#[test]
fn a_post_processor_that_would_panic_is_refused_at_load() {
    use serde_json::json;
    use shears_models::TextEncoder;
    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder().join("tokenizer.json")).unwrap()).unwrap();
    let template = original["post_processor"].clone();
    assert_eq!(template["type"], "TemplateProcessing");
    let load = |post_processor: serde_json::Value| {
        let dir = tempfile::tempdir().unwrap();
        let mut json = original.clone();
        json["post_processor"] = post_processor;
        std::fs::write(dir.path().join("tokenizer.json"), serde_json::to_vec(&json).unwrap())
            .unwrap();
        let loaded = TextEncoder::from_folder(dir.path(), 64);
        let path = dir.path().join("tokenizer.json");
        loaded.map_err(|e| (e.to_string(), format!("{}: post_processor: ", path.display())))
    };

    let mut undefined = template.clone();
    undefined["single"].as_array_mut().unwrap().insert(
        1,
        json!({"SpecialToken":
        {"id": "[NOPE]", "type_id": 0}}),
    );
    let (err, named) = load(undefined).unwrap_err();
    assert!(err.starts_with(&named) && err.contains("\"[NOPE]\" is not among"), "{err}");

    let mut second_text = template.clone();
    second_text["single"][1] = json!({"Sequence": {"id": "B", "type_id": 0}});
    let (err, named) = load(second_text).unwrap_err();
    assert!(err.starts_with(&named) && err.contains("uses $B"), "{err}");

    // A template that drops the text, or repeats it past what truncation counts.
    for (texts, pieces) in [(0, vec![0, 2]), (2, vec![0, 1, 1, 2])] {
        let mut template = template.clone();
        let single = template["single"].as_array().unwrap().clone();
        template["single"] = pieces.iter().map(|&i| single[i].clone()).collect();
        let (err, named) = load(template).unwrap_err();
        let says = format!("the single template uses $A (the text) {texts} times");
        assert!(err.starts_with(&named) && err.contains(&says), "{err}");
    }

    let twice = json!({"type": "Sequence", "processors": [template.clone(), template.clone()]});
    let (err, named) = load(twice).unwrap_err();
    assert!(err.starts_with(&named) && err.contains("receives 3 encodings"), "{err}");

    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": true,
        "trim_offsets": false, "use_regex": true});
    let wrapped =
        load(json!({"type": "Sequence", "processors": [byte_level, template.clone()]})).unwrap();
    let plain = TextEncoder::from_folder(&folder(), 64).unwrap();
    let texts = ["the cat sat", "a dog"];
    assert_eq!(wrapped.encode(&texts).unwrap(), plain.encode(&texts).unwrap());

    // A file the tokenizers library panics on as it reads it (a normalizer's charsmap it
    // cannot parse) is not a tokenizer, named by its file.
    let dir = tempfile::tempdir().unwrap();
    let mut json = original.clone();
    json["normalizer"] = json!({"type": "Precompiled", "precompiled_charsmap": "AAAA"});
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    let err = TextEncoder::from_folder(dir.path(), 64).unwrap_err().to_string();
    let named = format!("{}: not a tokenizer: the tokenizers library panicked: ", path.display());
    assert!(err.starts_with(&named), "{err}");
}

/// A token id past the word embeddings is refused when the folder is loaded, naming the
/// token, its id and where tokenizer.json defines it (the vocabulary or an added token);
/// a count of ids that fits is not enough when the ids do not.
#[test]
fn token_ids_past_the_embeddings_are_named_at_load() {
    use serde_json::json;
    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder().join("tokenizer.json")).unwrap()).unwrap();
    let rows = original["model"]["vocab"].as_object().unwrap().len();
    let load = |edit: &dyn Fn(&mut serde_json::Value)| {
        let dir = tempfile::tempdir().unwrap();
        copy_folder(dir.path(), None);
        let mut json = original.clone();
        edit(&mut json);
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        let loaded = SentenceTransformer::load(dir.path(), None);
        loaded.map(drop).map_err(|e| (e.to_string(), path.display().to_string()))
    };
    load(&|_| {}).unwrap();

    let (err, path) = load(&|json| {
        json["added_tokens"].as_array_mut().unwrap().push(json!({"id": 40000,
            "content": "[XTRA]", "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": true}));
    })
    .unwrap_err();
    // The tokenizers library numbers an added token past the vocabulary on from its end.
    let says = format!(
        "{path}: added_tokens: the tokenizer gives \"[XTRA]\" id {rows} (tokenizer.json says 40000, renumbered from the vocabulary's end), past the {rows} rows of the word embeddings"
    );
    assert!(err.starts_with(&says), "{err}");

    // One word moved past the end: as many ids as rows, one of them too large.
    let (err, path) = load(&|json| {
        let vocab = json["model"]["vocab"].as_object_mut().unwrap();
        let (word, _) = vocab.iter().find(|(_, id)| id.as_u64() == Some(5)).unwrap();
        let word = word.clone();
        vocab.insert(word, json!(rows));
    })
    .unwrap_err();
    let says = format!("{path}: model.vocab: the tokenizer gives ");
    let id = format!(" id {rows}, past the {rows} rows");
    assert!(err.starts_with(&says) && err.contains(&id), "{err}");

    // The post-processor's own ids and token types, seen only when a text is encoded.
    let (err, path) = load(&|json| {
        json["post_processor"]["special_tokens"]["[SEP]"]["ids"] = json!([rows + 7]);
    })
    .unwrap_err();
    let says = format!(
        "{path}: post_processor: places \"[SEP]\" id {} around each text, past the {rows} rows",
        rows + 7
    );
    assert!(err.starts_with(&says), "{err}");
    let (err, path) = load(&|json| {
        json["post_processor"]["single"][1]["Sequence"]["type_id"] = json!(2);
    })
    .unwrap_err();
    let says = format!(
        "{path}: post_processor: gives a text's tokens token type 2, outside the model's 2 token types"
    );
    assert!(err.starts_with(&says), "{err}");
    let (err, path) = load(&|json| {
        json["post_processor"]["single"][2]["SpecialToken"]["type_id"] = json!(3);
    })
    .unwrap_err();
    let says = format!("{path}: post_processor: gives \"[SEP]\" token type 3, outside the model's");
    assert!(err.starts_with(&says), "{err}");
}

#[test]
fn layers_the_config_leaves_out_are_reported() {
    let full = SentenceTransformer::load(&folder(), None).unwrap();
    assert!(full.model.unused_layers().is_empty());
    let dir = tempfile::tempdir().unwrap();
    copy_folder(dir.path(), None);
    let config = std::fs::read_to_string(folder().join("config.json")).unwrap();
    let fewer = config.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1");
    assert_ne!(fewer, config);
    std::fs::write(dir.path().join("config.json"), fewer).unwrap();
    let first = SentenceTransformer::load(dir.path(), None).unwrap();
    assert_eq!(first.model.layers().len(), 1);
    assert_eq!(first.model.unused_layers(), &[1]);
    // The layer it runs is the checkpoint's first.
    let (a, b) = (&first.model.layers()[0], &full.model.layers()[0]);
    for ((_, x), (_, y)) in a.linears().iter().zip(b.linears().iter()) {
        assert_eq!(x.dense_weights(), y.dense_weights());
    }
}
