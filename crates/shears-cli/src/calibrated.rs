//! `prune --method wanda|sparsegpt`: the model folder is loaded as a transformer, run on
//! the calibration text layer by layer, and its chosen linear layers pruned; the rest of
//! `prune` writes the result as it writes any other.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result, bail};
use nalgebra::DMatrix;
use rayon::prelude::*;
use shears_core::{Mask, Masks};
use shears_io::{Dtype, Model};
use shears_models::{BertModel, Method, PruneSpec, Step, prune_model, read_texts};

use crate::cli::PruneArgs;
use crate::job::Job;
use crate::progress::Progress;
use crate::sources::{Sources, Tensor, View, zeros_before};

/// Tokens per calibration sentence unless `--max-len` says otherwise (or the model's own
/// limit is shorter): the length Wanda's and SparseGPT's evaluations of encoders use.
const CALIBRATION_TOKENS: usize = 128;

/// The most tokens the calibration sentences may reach (before tokenizing, as sentences
/// times the longest a sentence can be): 2^24, some 2 GiB of tokenizer output.
const CALIBRATION_MAX_TOKENS: usize = 1 << 24;

/// The most memory the calibration's activations may take: every calibration token's
/// hidden state in f32, twice (a layer's inputs and its outputs).
const CALIBRATION_MAX_BYTES: u64 = 8 << 30;

/// The largest finite f16.
const F16_MAX: f32 = 65504.0;

/// A linear layer as Wanda or SparseGPT left it.
pub(crate) struct PrunedLinear {
    /// The new weights, `outputs x inputs`.
    pub(crate) weights: DMatrix<f32>,
    pub(crate) mask: Mask,
    /// Its weights that were zero, or pruned by `--masks-in`, before the run: counted on
    /// the weights the model loaded, so that writing need not read them again.
    pub(crate) zeros_before: usize,
}

/// The pruned linear layers by tensor name.
pub(crate) type Pruned = HashMap<String, PrunedLinear>;

/// What the calibration ran on, for the run's record.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Calibration {
    /// The text file.
    pub(crate) texts: String,
    /// Sentences used: the first `--calib-samples` lines with text, or all there are.
    pub(crate) sentences: usize,
    /// Their tokens, special tokens included, after truncation to `max_len`.
    pub(crate) tokens: usize,
    pub(crate) max_len: usize,
    /// `--calib-samples`.
    pub(crate) asked: usize,
    /// [`crate::record::sentence_hashes`] of the sentences used.
    pub(crate) sentence_hashes: String,
    /// Sentences cut at `max_len` tokens.
    pub(crate) cut: usize,
    /// Sentences of the tokenizer's special tokens alone.
    pub(crate) wordless: usize,
    /// The model's position embeddings: the longest `max_len` can be.
    pub(crate) positions: usize,
    /// What loading the model warns of (see [`crate::embed::load_warnings`]).
    #[serde(skip)]
    pub(crate) model_warnings: Vec<String>,
}

impl Calibration {
    /// What the files' record keeps of this calibration: its file by name.
    pub(crate) fn record(&self) -> crate::record::Calibration {
        let name =
            std::path::Path::new(&self.texts).file_name().map(|n| n.to_string_lossy().into_owned());
        crate::record::Calibration {
            texts: name.unwrap_or_else(|| self.texts.clone()),
            sentences: self.sentences,
            tokens: self.tokens,
            max_len: self.max_len,
            sentence_hashes: self.sentence_hashes.clone(),
        }
    }
}

/// Why a calibrated method cannot prune `name` (and `count - 1` other chosen tensors),
/// and what to give instead: a layer past `config.json`'s `num_hidden_layers` never runs,
/// and a tensor the options chose must be left out of them.
fn not_a_linear(m: &str, name: &str, count: usize, model: &BertModel, args: &PruneArgs) -> String {
    let others = match count {
        1 => String::new(),
        2 => " (nor is 1 other chosen tensor)".to_owned(),
        n => format!(" (nor are {} other chosen tensors)", n - 1),
    };
    let them = if count == 1 { "it" } else { "them" };
    let layer = name.strip_prefix("encoder.layer.").and_then(|rest| rest.split('.').next());
    if let Some(layer) = layer.and_then(|l| l.parse::<usize>().ok())
        && model.unused_layers().contains(&layer)
    {
        let layers = model.config().num_hidden_layers;
        return format!(
            "--method {m} prunes the linear layers the encoder runs; `{name}` is in layer {layer}, past config.json's num_hidden_layers {layers}, so the model never runs it{others}: --exclude {them}"
        );
    }
    let chose = match (args.all, args.include.is_empty()) {
        (true, _) => format!("leave out --all, or --exclude {them}"),
        (false, false) => format!("narrow --include, or --exclude {them}"),
        (false, true) => format!("--exclude {them}"),
    };
    format!(
        "--method {m} prunes the encoder's linear layers; `{name}` is not one of them{others}: {chose}"
    )
}

/// Runs `method` on the chosen tensors of the model folder `model`.
pub(crate) fn prune(
    args: &PruneArgs,
    job: &Job,
    method: Method,
    model: &Model,
    chosen: &[Tensor],
    sources: &Sources,
) -> Result<(Pruned, Calibration)> {
    let m = method.name();
    let Some(folder) = model.folder() else {
        bail!(
            "--method {m} runs the model: give its Hugging Face folder (config.json, tokenizer.json and the weights), not {}",
            model.path().display()
        );
    };
    let Some(calib) = &args.calib else { bail!("--method {m} needs --calib FILE") };
    // What prune_model refuses, refused before a model of such width is loaded for it.
    if matches!(method, Method::SparseGpt(_)) {
        for t in chosen {
            shears_models::check_gram_inputs(t.name, t.shape.matrix_shape().1)?;
        }
    }
    let mut transformer = crate::embed::load_truncating(folder, args.max_len, "--max-len")?;
    let model_warnings =
        crate::embed::load_warnings(folder, &transformer, args.max_len, "--max-len");
    // Calibrate on the f32 values an int8 model stands for.
    transformer.model.dequantize();
    if args.max_len.is_none() && transformer.tokenizer.max_len() > CALIBRATION_TOKENS {
        transformer.tokenizer = transformer.tokenizer.with_max_len(CALIBRATION_TOKENS)?;
    }
    let linears: HashSet<&str> = transformer.model.linears().map(|l| l.name()).collect();
    let others: Vec<&str> =
        chosen.iter().map(|t| t.name).filter(|name| !linears.contains(name)).collect();
    if let Some(first) = others.first() {
        bail!("{}", not_a_linear(m, first, others.len(), &transformer.model, args));
    }
    let chosen_names: HashSet<String> = chosen.iter().map(|t| t.name.to_owned()).collect();
    drop(linears);
    let texts = read_texts(calib, args.calib_samples as usize)?;
    transformer.tokenizer.check_words(&texts).map_err(|e| crate::embed::texts_error(e, calib))?;
    let (hidden, max_len) =
        (transformer.model.config().hidden_size, transformer.tokenizer.max_len());
    // Tokenizing holds some hundred bytes a token: bound it before, by the longest the
    // sentences can be, and the activations after, by the tokens they made.
    let most = texts.len().saturating_mul(max_len);
    if most > CALIBRATION_MAX_TOKENS {
        bail!(
            "{} calibration sentences of up to {max_len} tokens are up to {most} tokens, more than the {CALIBRATION_MAX_TOKENS} calibration can hold: lower --calib-samples or --max-len",
            texts.len()
        );
    }
    let batch = transformer.tokenizer.encode(&texts)?;
    let fits = transformer.tokenizer.fit(&texts)?;
    let activations = (2 * 4 * hidden as u64).saturating_mul(batch.tokens() as u64);
    if activations > CALIBRATION_MAX_BYTES {
        bail!(
            "{} calibration tokens of hidden size {hidden} need {:.1} GiB of activations, more than {} GiB: lower --calib-samples or --max-len",
            batch.tokens(),
            activations as f64 / (1u64 << 30) as f64,
            CALIBRATION_MAX_BYTES >> 30
        );
    }
    let calibration = Calibration {
        texts: calib.display().to_string(),
        sentences: texts.len(),
        tokens: batch.tokens(),
        max_len: transformer.tokenizer.max_len(),
        asked: args.calib_samples as usize,
        sentence_hashes: crate::record::sentence_hashes(&texts),
        cut: fits.iter().filter(|f| f.truncated).count(),
        wordless: fits.iter().filter(|f| !f.has_words).count(),
        positions: transformer.model.config().max_position_embeddings,
        model_warnings,
    };
    let mut prior = Masks::new();
    for t in chosen {
        if let Some(mask) = sources.mask(t, View::Matrix)? {
            prior.insert(t.name.to_owned(), mask);
        }
    }
    let spec = PruneSpec {
        method,
        pattern: job.pattern,
        sparsity: job.layer_target(),
        rounding: job.rounding,
    };
    let zeros_before: HashMap<String, usize> = transformer
        .model
        .linears()
        .filter(|l| chosen_names.contains(l.name()))
        .collect::<Vec<_>>()
        .par_iter()
        .map(|l| (l.name().to_owned(), zeros_before(&l.dense_weights(), prior.get(l.name()))))
        .collect();
    let layers = transformer.model.layers().len() as u64;
    let progress = Progress::steps(layers, "layers", args.quiet);
    progress.message(format!("{m}: {} sentences", texts.len()));
    let masks = prune_model(
        &mut transformer.model,
        &batch,
        &spec,
        &|name| chosen_names.contains(name),
        (!prior.is_empty()).then_some(&prior),
        &mut |Step::Layer { layer, layers }| {
            // The layers done first, then the one starting: a redraw between the two
            // would show the new layer's message beside the old count.
            if layer > 0 {
                progress.advance(1);
            }
            progress.message(format!("{m}: layer {} of {layers}", layer + 1));
        },
    )
    .with_context(|| format!("{m} on {}", folder.display()))?;
    progress.finish();
    let pruned = masks
        .into_iter()
        .map(|p| {
            let weights = (transformer.model.linears().find(|l| l.name() == p.name))
                .map(|l| l.dense_weights())
                .context("internal error: a pruned layer")?;
            let zeros_before = *zeros_before
                .get(p.name.as_str())
                .context("internal error: a pruned layer's count of zeros")?;
            Ok((p.name, PrunedLinear { weights, mask: p.mask, zeros_before }))
        })
        .collect::<Result<Pruned>>()?;
    // SparseGPT's updates may grow a weight past what a half-precision file holds.
    for t in chosen.iter().filter(|t| t.dtype == Dtype::F16) {
        if let Some(p) = pruned.get(t.name)
            && let Some(v) = p.weights.iter().find(|v| v.abs() > F16_MAX)
        {
            bail!(
                "{m} updates tensor `{}` to {v}, beyond the largest f16 value ({F16_MAX}): the file cannot hold it",
                t.name
            );
        }
    }
    Ok((pruned, calibration))
}
