//! `shears embed` and `shears eval`: running a (pruned) sentence-transformer folder, and
//! measuring what a pruned one keeps of the dense one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use nalgebra::DMatrix;
use serde::Serialize;
use shears_io::Dtype;
use shears_models::{
    Activation, Agreement, BertConfig, Comparison, FormatChoice, Pooling, SentenceTransformer,
    TIMING_TOKENS, TOKENS_PER_PASS, choose_formats, read_numbered_texts,
};

use crate::cli::{EmbedArgs, EvalArgs};
use crate::progress::Progress;
use crate::report::print_json;

/// Loads a folder as it is stored (int8 layers as int8), with a message that says what a
/// folder needs.
fn open(folder: &Path, max_len: Option<u32>) -> Result<SentenceTransformer> {
    check_folder(folder)?;
    load_truncating(folder, max_len, "--max-len")
}

/// [`SentenceTransformer::load`] truncating texts to `max_len` tokens if given, a length
/// the model cannot take reported against `flag`, the option that gave it.
pub(crate) fn load_truncating(
    folder: &Path,
    max_len: Option<u32>,
    flag: &str,
) -> Result<SentenceTransformer> {
    SentenceTransformer::load(folder, max_len.map(|m| m as usize)).map_err(|e| match e {
        shears_models::Error::Argument(reason) if max_len.is_some() => {
            anyhow::anyhow!("{flag}: {reason}")
        }
        e => e.into(),
    })
}

/// What a run that loaded `transformer` from `folder` warns of, once it has succeeded
/// (a warning before an error would make the error two lines): the weights' encoder
/// layers `config.json` leaves out, and a `flag` length `max_len` past the folder's
/// `max_seq_length`.
pub(crate) fn load_warnings(
    folder: &Path,
    transformer: &SentenceTransformer,
    max_len: Option<u32>,
    flag: &str,
) -> Vec<String> {
    let mut warnings: Vec<String> =
        unused_layers_warning(folder, &transformer.model).into_iter().collect();
    if let (Some(asked), Some(trained)) = (max_len, transformer.sentence.max_seq_length)
        && asked as usize > trained
    {
        warnings.push(format!(
            "{flag} {asked} is longer than the {trained} tokens of {}'s max_seq_length (sentence_bert_config.json), the length it was trained to embed",
            folder.display()
        ));
    }
    warnings
}

/// Which of the weights' encoder layers `config.json` leaves out, if any (the model
/// runs the first `num_hidden_layers`, as `transformers` does).
pub(crate) fn unused_layers_warning(
    folder: &Path,
    model: &shears_models::BertModel,
) -> Option<String> {
    let which = match model.unused_layers() {
        [] => return None,
        [one] => format!("layer {one} is"),
        [first, .., last] => {
            let n = model.unused_layers().len();
            format!("layers {first} to {last} ({n} layers) are")
        }
    };
    Some(format!(
        "{}: config.json's num_hidden_layers is {}, so the weights' encoder {which} not run",
        folder.display(),
        model.config().num_hidden_layers,
    ))
}

/// The files of a model folder and of its subfolders one level down (`1_Pooling/`),
/// wherever their links lead: what a run reads its configuration and tokenizer from,
/// none of which an output may be (a folder of links, as the Hugging Face cache lays
/// one out, can point at the file the output names).
pub(crate) fn folder_files(folder: &Path) -> Result<Vec<PathBuf>> {
    /// More entries than any model folder has: a bound on the listing.
    const MAX_ENTRIES: usize = 100_000;
    let list = |dir: &Path| -> Result<Vec<PathBuf>> {
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list the model folder {}", dir.display()))?;
        let mut paths = Vec::new();
        for entry in entries.take(MAX_ENTRIES) {
            let entry =
                entry.with_context(|| format!("cannot list the model folder {}", dir.display()))?;
            paths.push(entry.path());
        }
        Ok(paths)
    };
    let mut files = Vec::new();
    for path in list(folder)? {
        if path.is_dir() {
            files.extend(list(&path)?.into_iter().filter(|p| p.is_file()));
        } else if path.is_file() {
            files.push(path);
        }
    }
    Ok(files)
}

/// An error unless `folder` is a directory, saying whether it is missing or a file.
fn check_folder(folder: &Path) -> Result<()> {
    crate::hub::check_not_hub_id(folder)?;
    if !folder.exists() {
        bail!("{} does not exist: give a model folder", folder.display());
    }
    if !folder.is_dir() {
        bail!(
            "{} is not a model folder (config.json, tokenizer.json and the weights of a BERT-family model)",
            folder.display()
        );
    }
    Ok(())
}

/// Loads a folder for embedding, its int8 layers turned into f32: embeddings then depend
/// on the weights alone, not on how each batch's tokens round to int8.
fn load(folder: &Path, max_len: Option<u32>) -> Result<SentenceTransformer> {
    let mut transformer = open(folder, max_len)?;
    transformer.model.dequantize();
    Ok(transformer)
}

/// Sentences embedded per pass: the tokenizer's encodings of a whole file would weigh
/// far more than its embeddings.
const SENTENCES_PER_PASS: usize = 1024;

/// Texts read from a file, each with its line number there (from 1), so that an error
/// names the line and not the text's place among the lines that hold text.
struct Texts<'a> {
    file: &'a Path,
    lines: Vec<usize>,
    texts: Vec<String>,
    /// `--limit` when the file holds more lines of text than it let be read.
    cut_at: Option<u32>,
}

impl<'a> Texts<'a> {
    fn read(file: &'a Path, limit: u32) -> Result<Texts<'a>> {
        // One line past the limit tells whether it left any out.
        let mut numbered = read_numbered_texts(file, limit as usize + 1)?;
        let cut_at = (numbered.len() > limit as usize).then_some(limit);
        numbered.truncate(limit as usize);
        let (lines, texts) = numbered.into_iter().unzip();
        Ok(Texts { file, lines, texts, cut_at })
    }

    /// The warning that `--limit` left lines of the file unread, if it did.
    fn limit_warning(&self) -> Option<String> {
        self.cut_at.map(|limit| {
            format!(
                "{}: only its first {limit} lines that hold text were read (--limit {limit}); \
                 it has more",
                self.file.display()
            )
        })
    }

    /// An error naming the file unless some line gives `tokenizer` a token other than
    /// its special ones (the rule of every command that reads texts).
    fn check_words(&self, tokenizer: &shears_models::TextEncoder) -> Result<()> {
        tokenizer.check_words(&self.texts).map_err(|e| texts_error(e, self.file))
    }

    /// The first line (its number) that `a` and `b` tokenize differently, in ids, token
    /// types or length: models whose tokenizers differ embed different tokens.
    fn first_tokenized_differently(
        &self,
        a: &SentenceTransformer,
        b: &SentenceTransformer,
    ) -> Result<Option<usize>> {
        for (pass, chunk) in self.texts.chunks(SENTENCES_PER_PASS).enumerate() {
            let encode = |model: &SentenceTransformer| {
                model.tokenizer.encode(chunk).map_err(|e| texts_error(e, self.file))
            };
            let (x, y) = (encode(a)?, encode(b)?);
            let mut start = 0;
            for (i, (&lx, &ly)) in x.lengths.iter().zip(&y.lengths).enumerate() {
                let tokens = start..start + lx;
                let same = lx == ly
                    && x.ids[tokens.clone()] == y.ids[tokens.clone()]
                    && x.type_ids[tokens.clone()] == y.type_ids[tokens];
                if !same {
                    return Ok(Some(self.lines[pass * SENTENCES_PER_PASS + i]));
                }
                start += lx;
            }
        }
        Ok(None)
    }

    /// Warnings for the lines `tokenizer` cuts at its maximum length, and for those it
    /// keeps nothing of but its special tokens (embedded from those alone), each counted
    /// with its first line: both give embeddings of something other than the line.
    fn warn_fit(
        &self,
        model: &SentenceTransformer,
        warnings: &mut crate::report::Warnings,
    ) -> Result<()> {
        let tokenizer = &model.tokenizer;
        let (mut cut, mut empty) = (Vec::new(), Vec::new());
        for (pass, chunk) in self.texts.chunks(SENTENCES_PER_PASS).enumerate() {
            let fits = tokenizer.fit(chunk)?;
            for (i, fit) in fits.iter().enumerate() {
                let line = self.lines[pass * SENTENCES_PER_PASS + i];
                if fit.truncated {
                    cut.push(line);
                }
                // A text of no tokens at all is an error when it is embedded.
                if !fit.has_words && fit.tokens > 0 {
                    empty.push(line);
                }
            }
        }
        // "1 line (line 7) has ...", "3 lines (the first: line 7) have ...".
        let counted = |lines: &[usize], one: String, many: String| match lines {
            [line] => format!("1 line (line {line}) {one}"),
            _ => format!("{} lines (the first: line {}) {many}", lines.len(), lines[0]),
        };
        if !cut.is_empty() {
            let max = tokenizer.max_len();
            let cut_at = |verb: &str, own: &str| {
                format!("{verb} more than {max} tokens and {own} first {max}")
            };
            // How to read more of them, where the model has positions to spare.
            let positions = model.model.config().max_position_embeddings;
            let hint = if max < positions {
                format!(" (--max-len can raise it to {positions}, the model's position embeddings)")
            } else {
                String::new()
            };
            warnings.add(format!(
                "{}: {}{hint}",
                self.file.display(),
                counted(
                    &cut,
                    cut_at("has", "was embedded from its"),
                    cut_at("have", "were embedded from their")
                )
            ));
        }
        if !empty.is_empty() {
            let none = "no token but the tokenizer's special ones";
            warnings.add(format!(
                "{}: {}",
                self.file.display(),
                counted(
                    &empty,
                    format!("holds {none} and was embedded from them alone"),
                    format!("hold {none} and were embedded from them alone")
                )
            ));
        }
        Ok(())
    }

    /// `e` naming the file and line of the sentence it is about (`first` being the
    /// sentence `e` counts from), and the model folder whose tokenizer gave it no tokens.
    fn name_line(&self, e: shears_models::Error, first: usize, model: &Path) -> anyhow::Error {
        let at = |sentence: usize| {
            let line = self.lines.get(first + sentence).copied().unwrap_or(0);
            format!("{}: line {line}", self.file.display())
        };
        match e {
            shears_models::Error::NonFinite { sentence, value } => anyhow::anyhow!(
                "{}: the output of {} is not finite ({value}): check its weights and config",
                at(sentence),
                model.display()
            ),
            shears_models::Error::NoTokens { sentence } => anyhow::anyhow!(
                "{}: no tokens: the tokenizer of {} adds no special tokens and keeps nothing of this text",
                at(sentence),
                model.display()
            ),
            e => e.into(),
        }
    }
}

/// How many of `texts`' sentences calibrated `model` in some run of its record (by the
/// hashes the record keeps of its calibration sentences).
fn calibration_sentences_in(model: &Path, texts: &Texts) -> usize {
    let Ok(files) = shears_io::Model::open(model) else { return 0 };
    let Some(first) = files.shards().first() else { return 0 };
    let calibrated: std::collections::HashSet<u64> = crate::record::runs(first.metadata())
        .iter()
        .filter_map(|run| run["calibration"]["sentence_hashes"].as_str())
        .flat_map(crate::record::parse_sentence_hashes)
        .collect();
    if calibrated.is_empty() {
        return 0;
    }
    let hashed = texts.texts.iter().map(|t| crate::record::fnv1a64(t));
    hashed.filter(|h| calibrated.contains(h)).count()
}

/// `e` naming `file` if it is about the texts as a whole.
pub(crate) fn texts_error(e: shears_models::Error, file: &Path) -> anyhow::Error {
    match e {
        shears_models::Error::Texts(reason) => anyhow::anyhow!("{}: {reason}", file.display()),
        e => e.into(),
    }
}

/// The embeddings of `texts`, one column per text, a pass of sentences at a time.
fn embed_all(
    model: &SentenceTransformer,
    folder: &Path,
    texts: &Texts,
    progress: &Progress,
) -> Result<DMatrix<f32>> {
    let hidden = model.model.config().hidden_size;
    let mut embeddings = DMatrix::<f32>::zeros(hidden, texts.texts.len());
    progress.message(folder.display().to_string());
    for (pass, chunk) in texts.texts.chunks(SENTENCES_PER_PASS).enumerate() {
        let start = pass * SENTENCES_PER_PASS;
        let part = model.embed(chunk).map_err(|e| texts.name_line(e, start, folder))?;
        embeddings.columns_mut(start, chunk.len()).copy_from(&part);
        progress.advance(chunk.len() as u64);
    }
    Ok(embeddings)
}

pub(crate) fn embed(args: &EmbedArgs) -> Result<()> {
    check_folder(&args.model)?;
    // Embeddings neither written nor printed would be computed for nothing; --fastest
    // alone still reports its plan and timing.
    if args.output.is_none() && !args.json && !args.fastest {
        bail!("nothing to do: -o FILE writes the embeddings, --json prints them");
    }
    if let Some(out) = &args.output {
        shears_io::paths::check_output(out)?;
        if shears_io::paths::is_within(out, &args.model) {
            bail!(
                "refusing to write {}: it is inside the model folder {} (write the embeddings elsewhere)",
                out.display(),
                args.model.display()
            );
        }
        let mut paths =
            vec![("--texts", args.texts.as_path(), false), ("--output", out.as_path(), true)];
        let model_files = shears_io::Model::open(&args.model)?;
        for shard in model_files.shards() {
            paths.push(("model", shard.path(), false));
        }
        let folder_files = folder_files(&args.model)?;
        paths.extend(folder_files.iter().map(|p| ("model", p.as_path(), false)));
        shears_io::paths::check_distinct(&paths)?;
        crate::outputs::check_extension(out, "safetensors", "embeddings")?;
        // A folder that cannot be written to is found now, not after the embedding: a
        // temporary beside the output is made and removed again.
        drop(shears_io::PendingFile::create(out)?);
    }
    let texts = Texts::read(&args.texts, args.limit)?;
    let (model, plan) = if args.fastest {
        let (model, plan) = run_fastest(&args.model, args.max_len, &texts)?;
        (model, Some(plan))
    } else {
        let model = load(&args.model, args.max_len)?;
        texts.check_words(&model.tokenizer)?;
        (model, None)
    };
    let mut warnings = crate::report::Warnings::default();
    for w in load_warnings(&args.model, &model, args.max_len, "--max-len") {
        warnings.add(w);
    }
    if let Some(w) = texts.limit_warning() {
        warnings.add(w);
    }
    texts.warn_fit(&model, &mut warnings)?;
    if let Some(out) = &args.output {
        // An embedding of f32s and a line number per sentence, and the header: known
        // now, so a file that would not fit is refused before the embedding runs.
        let row = model.model.config().hidden_size as u64 * 4 + 8;
        let bytes = (texts.lines.len() as u64).saturating_mul(row).saturating_add(4096);
        crate::outputs::check_fits(&[(out.as_path(), bytes)])?;
    }
    let start = Instant::now();
    let progress = Progress::steps(texts.texts.len() as u64, "sentences", args.quiet);
    let embeddings = embed_all(&model, &args.model, &texts, &progress)?;
    progress.finish();
    let embedding_seconds = start.elapsed().as_secs_f64();
    let lines = &texts.lines;
    if let Some(out) = &args.output {
        let metadata = embeddings_metadata(&args.model, &args.texts, &model);
        write_embeddings(out, &embeddings, lines, &metadata)?;
    }
    // Rows no longer match lines one for one when blank lines were skipped.
    let skipped = lines.last().map_or(0, |&last| last - lines.len());
    if args.json {
        #[derive(Serialize)]
        struct Output<'a> {
            model: String,
            sentences: usize,
            dimensions: usize,
            #[serde(skip_serializing_if = "Option::is_none")]
            output: Option<String>,
            embeddings: Vec<&'a [f32]>,
            /// Each embedding's line in the text file, from 1.
            lines: &'a [usize],
            /// With `--fastest`: each linear layer's timed formats and the one it ran
            /// (dense throughout where the whole model ran dense).
            #[serde(skip_serializing_if = "Option::is_none")]
            layers: Option<&'a [FormatChoice]>,
            /// With `--fastest`, when the plan runs a layer other than dense: the whole
            /// model timed with the plan and dense, and which of the two ran.
            #[serde(skip_serializing_if = "Option::is_none")]
            whole_model: Option<&'a WholeModel>,
            /// With `--fastest`: what planning and the whole-model check took, loading
            /// included, in seconds.
            #[serde(skip_serializing_if = "Option::is_none")]
            planning_seconds: Option<f64>,
            /// With `--fastest`: what the embedding itself took, in seconds.
            #[serde(skip_serializing_if = "Option::is_none")]
            embedding_seconds: Option<f64>,
            /// What stderr warned of, as `prune --json` has it.
            warnings: &'a crate::report::Warnings,
        }
        print_json(&Output {
            model: args.model.display().to_string(),
            sentences: texts.texts.len(),
            dimensions: embeddings.nrows(),
            output: args.output.as_ref().map(|p| p.display().to_string()),
            embeddings: embeddings.as_slice().chunks(embeddings.nrows().max(1)).collect(),
            lines,
            layers: plan.as_ref().map(|p| p.layers.as_slice()),
            whole_model: plan.as_ref().and_then(|p| p.whole_model.as_ref()),
            planning_seconds: plan.as_ref().map(|p| p.seconds),
            embedding_seconds: plan.as_ref().map(|_| embedding_seconds),
            warnings: &warnings,
        })?;
        // After the output, which can still fail: an error is one line.
        warnings.report();
        return Ok(());
    }
    let written = match &args.output {
        Some(p) => format!(": wrote {}", p.display()),
        None => "; -o FILE writes them, --json prints them".to_owned(),
    };
    // Where rows are written, how to find each one's line.
    let find = if args.output.is_some() { ": row i is the text on line lines[i]" } else { "" };
    let skipped = match skipped {
        0 => String::new(),
        n => format!(" ({n} blank line{} skipped{find})", if n == 1 { "" } else { "s" }),
    };
    outln!(
        "embedded {} sentence{} into {} dimensions{skipped}{written}",
        texts.texts.len(),
        if texts.texts.len() == 1 { "" } else { "s" },
        embeddings.nrows()
    )?;
    if let Some(plan) = &plan {
        outln!("{}", describe_run(plan, embedding_seconds))?;
    }
    warnings.report();
    Ok(())
}

/// What `--fastest` planned and ran.
#[derive(Debug)]
struct Fastest {
    /// Each linear layer's timed formats and the one it was set to.
    layers: Vec<FormatChoice>,
    /// The whole model timed with those formats and dense, when a layer is not dense.
    whole_model: Option<WholeModel>,
    /// What the plan and the check took, loading the models included, in seconds.
    seconds: f64,
}

/// How the whole model ran with the layers' planned formats against dense.
#[derive(Debug, Serialize)]
struct WholeModel {
    /// The first sentences of the input, up to the tokens each layer was timed on.
    sentences: usize,
    tokens: usize,
    /// Whether those sentences are the whole input.
    #[serde(skip)]
    whole_input: bool,
    /// The plan's formats other than dense, each with its number of layers, as timed:
    /// where dense ran, the layers' `chosen` say dense.
    #[serde(skip)]
    planned: Vec<(String, usize)>,
    /// The fastest of the passes over those sentences dense (as without `--fastest`),
    /// alternating with the planned model's ([`WHOLE_MODEL_PASSES`]).
    dense_seconds: f64,
    /// The fastest of as many passes with the planned formats.
    planned_seconds: f64,
    /// `planned` if it was faster by [`PLAN_MARGIN`], else `dense`: the model the input
    /// then ran.
    ran: &'static str,
}

/// How much faster than dense the planned model must run as a whole to be kept: a plan
/// within the timing's noise of dense would make the embeddings switch between dense
/// ones and rounded ones from run to run, for no real gain.
const PLAN_MARGIN: f64 = 0.02;

/// Passes over the first sentences each model is timed on as a whole, alternating: at
/// least two, and more while either model has run for less than [`WHOLE_MODEL_SECONDS`],
/// up to the most. A pass of up to 4096 tokens embeds nothing the input keeps, so two
/// of those are enough to catch a plan that loses as a whole; passes of a few sentences
/// take milliseconds, which two would leave to the timer's noise.
const WHOLE_MODEL_PASSES: std::ops::RangeInclusive<usize> = 2..=20;

/// The time each model runs in the whole-model check, at least, unless it reaches the
/// most passes first.
const WHOLE_MODEL_SECONDS: f64 = 0.25;

/// The model `--fastest` runs: each linear layer set to the fastest of dense and the
/// format its zeros (or its int8 weights) allow, timed at the token count of the first
/// pass over `texts` (the passes after it hold as many sentences, the last fewer); then,
/// where a layer is not dense, that model timed as a whole against the dense one on the
/// first sentences, and the faster kept. Layers timed alone can each win and the model
/// still lose as a whole (the formats' copies of their inputs, or caches the products
/// share), so the whole model decides. Both models are held while they are compared.
fn run_fastest(
    folder: &Path,
    max_len: Option<u32>,
    all_texts: &Texts,
) -> Result<(SentenceTransformer, Fastest)> {
    let start = Instant::now();
    let mut planned = open(folder, max_len)?;
    all_texts.check_words(&planned.tokenizer)?;
    let texts = &all_texts.texts;
    let first = planned.tokenizer.encode(&texts[..texts.len().min(SENTENCES_PER_PASS)])?;
    // A text of no tokens would fail only after planning.
    if let Some(sentence) = first.lengths.iter().position(|&len| len == 0) {
        return Err(all_texts.name_line(shears_models::Error::NoTokens { sentence }, 0, folder));
    }
    let tokens = first.tokens().clamp(1, TOKENS_PER_PASS);
    let mut layers = choose_formats(&mut planned.model, tokens)?;
    let timed = first.slice(first.chunks(TIMING_TOKENS).first().cloned().unwrap_or(0..0))?;
    if layers.iter().all(|l| l.chosen == "dense") || timed.tokens() == 0 {
        let seconds = start.elapsed().as_secs_f64();
        return Ok((planned, Fastest { layers, whole_model: None, seconds }));
    }
    let dense = load(folder, max_len)?;
    let (mut dense_seconds, mut planned_seconds) = (f64::INFINITY, f64::INFINITY);
    let (mut dense_total, mut planned_total) = (0.0, 0.0);
    for pass in 1..=*WHOLE_MODEL_PASSES.end() {
        let dense_pass = seconds(|| dense.embed_batch(&timed))?;
        let planned_pass = seconds(|| planned.embed_batch(&timed))?;
        (dense_seconds, planned_seconds) =
            (dense_seconds.min(dense_pass), planned_seconds.min(planned_pass));
        (dense_total, planned_total) = (dense_total + dense_pass, planned_total + planned_pass);
        let long_enough = dense_total.min(planned_total) >= WHOLE_MODEL_SECONDS;
        if pass >= *WHOLE_MODEL_PASSES.start() && long_enough {
            break;
        }
    }
    let planned_formats =
        chosen_formats(&layers).into_iter().map(|(f, n)| (f.to_owned(), n)).collect();
    let (model, ran) = if planned_seconds < dense_seconds * (1.0 - PLAN_MARGIN) {
        (planned, "planned")
    } else {
        // What runs is dense, so that is what the layers say.
        for layer in &mut layers {
            "dense".clone_into(&mut layer.chosen);
        }
        (dense, "dense")
    };
    let whole_model = WholeModel {
        sentences: timed.sentences(),
        tokens: timed.tokens(),
        whole_input: timed.sentences() == texts.len(),
        planned: planned_formats,
        dense_seconds,
        planned_seconds,
        ran,
    };
    let seconds = start.elapsed().as_secs_f64();
    Ok((model, Fastest { layers, whole_model: Some(whole_model), seconds }))
}

/// How long `run` took, in seconds.
fn seconds<T>(run: impl FnOnce() -> shears_models::Result<T>) -> Result<f64> {
    let start = Instant::now();
    run()?;
    Ok(start.elapsed().as_secs_f64())
}

/// One line: how the layers ran (see [`describe_plan`]), where the whole model was
/// timed, how it compared with dense, and what planning cost beside the embedding's
/// `embedding_seconds`: where the plan ran, planning longer than the embedding (as the
/// line rounds them) is named as not paying off; where dense ran, it could not have.
fn describe_run(plan: &Fastest, embedding_seconds: f64) -> String {
    let planned_ran = plan.whole_model.as_ref().is_some_and(|w| w.ran == "planned");
    let tenths = |seconds: f64| (seconds * 10.0).round();
    let cost = if planned_ran && tenths(plan.seconds) > tenths(embedding_seconds) {
        format!(
            "more than the embedding's {embedding_seconds:.1} s: --fastest pays off on longer inputs"
        )
    } else {
        format!("the embedding {embedding_seconds:.1} s")
    };
    format!("{}; loading and planning took {:.1} s, {cost}", describe_outcome(plan), plan.seconds)
}

/// [`describe_run`] without the planning time.
fn describe_outcome(plan: &Fastest) -> String {
    let Some(whole) = &plan.whole_model else { return describe_plan(&plan.layers) };
    let sentences = match (whole.whole_input, whole.sentences) {
        (true, 1) => "its 1 sentence".to_owned(),
        (true, n) => format!("all {n} sentences"),
        (false, 1) => "the first sentence".to_owned(),
        (false, n) => format!("the first {n} sentences"),
    };
    let on = format!(
        "{:.1} ms against {:.1} ms dense on {sentences}",
        whole.planned_seconds * 1e3,
        whole.dense_seconds * 1e3,
    );
    if whole.ran == "dense" {
        let planned: Vec<String> =
            whole.planned.iter().map(|(format, n)| format!("{n} in {format}")).collect();
        return format!(
            "all {} linear layers ran dense: with the timed plan ({}) the model was not {:.0}% faster as a whole ({on})",
            plan.layers.len(),
            planned.join(", "),
            PLAN_MARGIN * 100.0
        );
    }
    let speedup = whole.dense_seconds / whole.planned_seconds;
    format!("{}: the whole model {speedup:.2}x dense ({on})", describe_plan(&plan.layers))
}

/// One line: how many layers run in each format other than dense, and, where all run
/// dense, whether another format was timed and lost or none was worth timing.
fn describe_plan(plan: &[FormatChoice]) -> String {
    let total = plan.len();
    let counts = chosen_formats(plan);
    if counts.is_empty() {
        let timed = plan.iter().filter(|c| c.proposed_seconds.is_some()).count();
        return match timed {
            0 => format!(
                "all {total} linear layers ran dense: none is sparse enough, N:M or int8 for another format to be worth timing"
            ),
            n if n == total => {
                format!(
                    "all {total} linear layers ran dense: each was faster than the format timed against it"
                )
            }
            1 => format!(
                "all {total} linear layers ran dense: 1 was faster than the format timed against it, the rest had none to time"
            ),
            n => format!(
                "all {total} linear layers ran dense: {n} were faster than the format timed against them, the rest had none to time"
            ),
        };
    }
    let name = format_name;
    match counts[..] {
        [(format, n)] if n == total => {
            return format!("all {total} linear layers ran in {}", name(format));
        }
        [(format, n)] => {
            return format!("{n} of {total} linear layers ran in {}, the rest dense", name(format));
        }
        _ => {}
    }
    let formats: Vec<String> = counts.iter().map(|(f, n)| format!("{n} in {}", name(f))).collect();
    let sparse: usize = counts.iter().map(|(_, n)| n).sum();
    if sparse == total {
        return format!("all {total} linear layers ran {}", formats.join(", "));
    }
    format!("{sparse} of {total} linear layers ran {}, the rest dense", formats.join(", "))
}

/// The formats other than dense the plan chose, each with its number of layers, in the
/// order of their first layers.
fn chosen_formats(plan: &[FormatChoice]) -> Vec<(&str, usize)> {
    counted_in_order(plan.iter().map(|c| c.chosen.as_str()).filter(|&c| c != "dense"))
}

/// Each distinct name with its number of occurrences, in the order of their first.
fn counted_in_order<'a>(names: impl Iterator<Item = &'a str>) -> Vec<(&'a str, usize)> {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for name in names {
        match counts.iter_mut().find(|(counted, _)| *counted == name) {
            Some((_, n)) => *n += 1,
            None => counts.push((name, 1)),
        }
    }
    counts
}

/// A chosen format as the summary names it: int8 layers gain by their integer products,
/// not by zeros, so it says so.
fn format_name(format: &str) -> String {
    if format == "int8" { "int8 (integer products)".to_owned() } else { format.to_owned() }
}

/// What an embeddings file says of how it was made, in its safetensors metadata: the
/// model folder and the text file by name (not by this machine's paths), the tokens per
/// sentence, the pooling and normalisation, how the linear layers ran ([`ran_as`]:
/// `--fastest` rounds some products differently from dense) and the shears version.
fn embeddings_metadata(
    folder: &Path,
    texts: &Path,
    model: &SentenceTransformer,
) -> HashMap<String, String> {
    // The name a user gave, or for `.` and the like the folder's own.
    let name = |path: &Path| {
        let named = path.file_name().map(|n| n.to_owned());
        let resolved = || path.canonicalize().ok()?.file_name().map(|n| n.to_owned());
        named.or_else(resolved).map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    };
    HashMap::from([
        ("model".to_owned(), name(folder)),
        ("texts".to_owned(), name(texts)),
        ("max_len".to_owned(), model.tokenizer.max_len().to_string()),
        ("pooling".to_owned(), pooling_name(model.sentence.pooling).to_owned()),
        ("normalized".to_owned(), model.sentence.normalize.to_string()),
        ("linear_layers".to_owned(), ran_as(model)),
        ("shears".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
    ])
}

/// The formats the model's linear layers ran in, each with its number of layers, in the
/// order of their first layers: `36 dense`, or `24 n:m 2:4, 12 dense`; int8 weights
/// running integer products are `int8`, half-precision values follow their format
/// (`csr bf16`).
fn ran_as(model: &SentenceTransformer) -> String {
    let names: Vec<String> = model
        .model
        .linears()
        .map(|linear| match (linear.int8(), linear.value_type()) {
            (Some(_), _) => "int8".to_owned(),
            (None, "f32") => linear.format().to_string(),
            (None, values) => format!("{} {values}", linear.format()),
        })
        .collect();
    let counts = counted_in_order(names.iter().map(String::as_str));
    let counts: Vec<String> = counts.iter().map(|(format, n)| format!("{n} {format}")).collect();
    counts.join(", ")
}

/// A pooling as sentence-transformers' `1_Pooling/config.json` names its mode.
fn pooling_name(pooling: Pooling) -> &'static str {
    match pooling {
        Pooling::Mean => "mean",
        Pooling::Cls => "cls",
        Pooling::Max => "max",
    }
}

/// `embeddings` (hidden x sentences) as a safetensors file of an `[sentences, hidden]`
/// F32 tensor `embeddings` and a `[sentences]` I64 tensor `lines` (each row's line in the
/// text file, from 1), with `metadata`, written atomically.
fn write_embeddings(
    out: &Path,
    embeddings: &DMatrix<f32>,
    lines: &[usize],
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let (hidden, n) = embeddings.shape();
    let entries = shears_io::layout([
        ("embeddings".to_owned(), Dtype::F32, vec![n, hidden]),
        ("lines".to_owned(), Dtype::I64, vec![n]),
    ])?;
    let metadata = Some(metadata);
    shears_io::write_safetensors(out, &entries, metadata, |name, w| -> shears_io::Result<()> {
        let written = if name == "lines" {
            let bytes: Vec<u8> = lines.iter().flat_map(|&l| (l as i64).to_le_bytes()).collect();
            w.write_all(&bytes)
        } else {
            // Column-major hidden x n is row-major n x hidden.
            shears_io::write_values(embeddings.as_slice(), Dtype::F32, w)
        };
        written.map_err(|e| shears_io::Error::io("write", out, e))
    })?;
    Ok(())
}

/// How much sparser than the pruned model the dense one may be before `eval` says the
/// two look swapped: a dense checkpoint has a few exact zeros of its own.
const SWAPPED_MARGIN: f64 = 0.01;

/// The settings in which two models of one hidden size differ, each as `field a and b`:
/// fields of `config.json`, then the pooling and normalisation of the
/// sentence-transformers files. Pruning changes none of them, so a difference means two
/// different models (or files edited by hand), which `eval` still compares but says so.
fn config_differences(a: &SentenceTransformer, b: &SentenceTransformer) -> Vec<String> {
    let mut differ = encoder_differences(a.model.config(), b.model.config());
    let (x, y) = (&a.sentence, &b.sentence);
    if x.pooling != y.pooling {
        differ.push(format!("pooling {} and {}", pooling_name(x.pooling), pooling_name(y.pooling)));
    }
    if x.normalize != y.normalize {
        differ.push(format!("normalize {} and {}", x.normalize, y.normalize));
    }
    differ
}

/// The fields of `config.json` of [`config_differences`].
fn encoder_differences(a: &BertConfig, b: &BertConfig) -> Vec<String> {
    fn act(a: Activation) -> &'static str {
        match a {
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu (tanh)",
            Activation::Relu => "relu",
        }
    }
    let mut differ = Vec::new();
    let mut field = |name: &str, x: String, y: String| {
        if x != y {
            differ.push(format!("{name} {x} and {y}"));
        }
    };
    field("num_hidden_layers", a.num_hidden_layers.to_string(), b.num_hidden_layers.to_string());
    let heads = (a.num_attention_heads, b.num_attention_heads);
    field("num_attention_heads", heads.0.to_string(), heads.1.to_string());
    field("intermediate_size", a.intermediate_size.to_string(), b.intermediate_size.to_string());
    field("hidden_act", act(a.hidden_act).to_owned(), act(b.hidden_act).to_owned());
    // 1e-12 rather than 0.000000000001, and 0 rather than 0e0.
    let eps = |e: f64| if e == 0.0 { "0".to_owned() } else { format!("{e:e}") };
    field("layer_norm_eps", eps(a.layer_norm_eps), eps(b.layer_norm_eps));
    field("type_vocab_size", a.type_vocab_size.to_string(), b.type_vocab_size.to_string());
    differ
}

/// The share of zeros among the weights of a model's linear layers.
fn zero_share(transformer: &SentenceTransformer) -> f64 {
    let (zeros, total) = transformer.model.linears().fold((0, 0), |(zeros, total), linear| {
        let weights = linear.dense_weights();
        (zeros + weights.iter().filter(|&&w| w == 0.0).count(), total + weights.len())
    });
    zeros as f64 / total.max(1) as f64
}

pub(crate) fn eval(args: &EvalArgs) -> Result<()> {
    // The texts first: a file that cannot be used fails before the pruned model is
    // loaded, and alone, without a warning about the models ahead of it (whether its lines
    // hold words the dense model's tokenizer says).
    crate::hub::check_not_hub_id(&args.dense)?;
    crate::hub::check_not_hub_id(&args.pruned)?;
    let texts = Texts::read(&args.texts, args.limit)?;
    let dense = load(&args.dense, args.max_len)?;
    texts.check_words(&dense.tokenizer)?;
    if texts.texts.len() < 2 {
        let found = texts.texts.len();
        bail!("{}: eval needs at least 2 sentences, it has {found}", args.texts.display());
    }
    let mut pruned = open(&args.pruned, args.max_len)?;
    let sizes = (dense.model.config().hidden_size, pruned.model.config().hidden_size);
    if sizes.0 != sizes.1 {
        bail!(
            "{} and {} are different models: hidden sizes {} and {}",
            args.dense.display(),
            args.pruned.display(),
            sizes.0,
            sizes.1
        );
    }
    let lengths = (dense.tokenizer.max_len(), pruned.tokenizer.max_len());
    if let Some(line) = texts.first_tokenized_differently(&dense, &pruned)? {
        if lengths.0 != lengths.1 {
            bail!(
                "{} and {} cut sentences at different lengths ({} and {} tokens, from their max_seq_length or position embeddings), so line {line} of {} reads differently: give --max-len",
                args.dense.display(),
                args.pruned.display(),
                lengths.0,
                lengths.1,
                args.texts.display()
            );
        }
        bail!(
            "{} and {} are different models: their tokenizers read line {line} of {} differently",
            args.dense.display(),
            args.pruned.display(),
            args.texts.display()
        );
    }
    let mut warnings = crate::report::Warnings::default();
    let mut said = load_warnings(&args.dense, &dense, args.max_len, "--max-len");
    said.extend(load_warnings(&args.pruned, &pruned, args.max_len, "--max-len"));
    // One folder given twice warns once.
    said.dedup();
    for w in said {
        warnings.add(w);
    }
    let differ = config_differences(&dense, &pruned);
    if !differ.is_empty() {
        warnings.add(format!(
            "{} and {} differ in {}: pruning changes none of these, so they look like two different models, not a model and its pruned copy",
            args.dense.display(),
            args.pruned.display(),
            differ.join(", ")
        ));
    }
    let shares = (zero_share(&dense), zero_share(&pruned));
    if shares.0 > shares.1 + SWAPPED_MARGIN {
        warnings.add(format!(
            "{} has {:.1}% of its linear layers' weights zero, {} {:.1}%: eval takes the dense model first, then the pruned one",
            args.dense.display(),
            100.0 * shares.0,
            args.pruned.display(),
            100.0 * shares.1
        ));
    }
    if let (Ok(a), Ok(b)) = (args.dense.canonicalize(), args.pruned.canonicalize())
        && a == b
    {
        warnings
            .add(format!("{} is both models: eval compares it with itself", args.dense.display()));
    }
    let seen = calibration_sentences_in(&args.pruned, &texts);
    if seen > 0 {
        warnings.add(format!(
            "{}: {seen} of its {} sentences calibrated {}: on those a pruned model tends to agree more with the dense one than on others, so held-out sentences measure it fairly",
            args.texts.display(),
            texts.texts.len(),
            args.pruned.display()
        ));
    }
    if let Some(w) = texts.limit_warning() {
        warnings.add(w);
    }
    texts.warn_fit(&dense, &mut warnings)?;
    // A pruned folder with int8 layers is measured twice: with integer products on
    // tokens rounded to int8 (as the library runs it, and `bench` where that is
    // fastest), then with its weights as f32.
    let has_int8 = pruned.model.linears().any(|l| l.int8().is_some());
    let runs = if has_int8 { 3 } else { 2 };
    let progress = Progress::steps(runs * texts.texts.len() as u64, "sentences", args.quiet);
    progress.message(format!("{} and {}", args.dense.display(), args.pruned.display()));
    // A pass of sentences at a time through every model, compared as it goes: memory
    // holds one pass's embeddings, whatever the count of sentences.
    let int8_products = has_int8.then(|| pruned.clone());
    pruned.model.dequantize();
    let mut int8_comparison = has_int8.then(Comparison::new);
    let mut comparison = Comparison::new();
    for (pass, chunk) in texts.texts.chunks(SENTENCES_PER_PASS).enumerate() {
        let start = pass * SENTENCES_PER_PASS;
        let embed = |model: &SentenceTransformer, folder: &Path| {
            let part = model.embed(chunk).map_err(|e| texts.name_line(e, start, folder));
            progress.advance(chunk.len() as u64);
            part
        };
        let a = embed(&dense, &args.dense)?;
        if let (Some(model), Some(c)) = (&int8_products, &mut int8_comparison) {
            c.add(&a, &embed(model, &args.pruned)?)?;
        }
        comparison.add(&a, &embed(&pruned, &args.pruned)?)?;
    }
    let int8 = int8_comparison.map(Comparison::finish).transpose()?;
    let result = comparison.finish()?;
    progress.finish();
    if args.json {
        #[derive(Serialize)]
        struct Output<'a> {
            dense: String,
            pruned: String,
            texts: String,
            /// What the top-level measures ran: the pruned model with its weights as
            /// f32 (an int8 model's integer products are under `int8_products`).
            weights: &'static str,
            #[serde(flatten)]
            agreement: &'a Agreement,
            #[serde(skip_serializing_if = "Option::is_none")]
            int8_products: Option<&'a Agreement>,
            /// What stderr warned of, as `prune --json` has it.
            warnings: &'a crate::report::Warnings,
        }
        print_json(&Output {
            dense: args.dense.display().to_string(),
            pruned: args.pruned.display().to_string(),
            texts: args.texts.display().to_string(),
            weights: "f32",
            agreement: &result,
            int8_products: int8.as_ref(),
            warnings: &warnings,
        })?;
        // After the output, which can still fail: an error is one line.
        warnings.report();
        return Ok(());
    }
    let neighbours = match result.k {
        0 => "neighbours kept".to_owned(),
        k => format!("top-{k} neighbours kept"),
    };
    type Measure = fn(&Agreement) -> Option<f64>;
    let rows: [(&str, Measure); 4] = [
        ("mean cosine", |r| Some(r.mean_cosine)),
        ("5th percentile cosine", |r| Some(r.p5_cosine)),
        ("lowest cosine", |r| Some(r.min_cosine)),
        (&neighbours, |r| r.neighbour_overlap),
    ];
    let show = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"));
    outln!(
        "{} against {}, on the sentences of {}:",
        args.pruned.display(),
        args.dense.display(),
        args.texts.display()
    )?;
    outln!("{:<24}{}", "sentences", result.sentences)?;
    match &int8 {
        None => {
            for (name, value) in rows {
                outln!("{name:<24}{}", show(value(&result)))?;
            }
        }
        Some(int8) => {
            outln!("{:<24}{:<16}{}", "", "int8 products", "weights as f32")?;
            for (name, value) in rows {
                outln!("{name:<24}{:<16}{}", show(value(int8)), show(value(&result)))?;
            }
            outln!(
                "(int8 products: the int8 layers run on tokens rounded to int8, as bench and embed --fastest run them where that is fastest; weights as f32: dequantized, as embed runs them)"
            )?;
        }
    }
    if result.neighbour_overlap.is_none() {
        outln!("(no neighbour measure: it needs 3 sentences or more)")?;
    } else if result.neighbour_sentences < result.sentences {
        outln!(
            "(neighbours among the first {} sentences: the measure compares every pair)",
            result.neighbour_sentences
        )?;
    }
    warnings.report();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice(proposed: &str, timed: bool, chosen: &str) -> FormatChoice {
        FormatChoice {
            name: "layer.weight".to_owned(),
            sparsity: 0.0,
            proposed: proposed.to_owned(),
            dense_seconds: 1.0,
            proposed_seconds: timed.then_some(2.0),
            chosen: chosen.to_owned(),
            timed_with: Vec::new(),
        }
    }

    #[test]
    fn a_plan_is_described_by_what_ran_and_why_the_rest_ran_dense() {
        let untimed = [choice("dense", false, "dense"), choice("dense", false, "dense")];
        assert!(describe_plan(&untimed).contains("none is sparse enough"), "{}", {
            describe_plan(&untimed)
        });
        let lost = [choice("csr", true, "dense"), choice("n:m 2:4", true, "dense")];
        assert_eq!(
            describe_plan(&lost),
            "all 2 linear layers ran dense: each was faster than the format timed against it"
        );
        let some_lost = [choice("csr", true, "dense"), choice("dense", false, "dense")];
        assert!(describe_plan(&some_lost).contains("1 was faster"), "{}", {
            describe_plan(&some_lost)
        });
        let int8 = [choice("int8", true, "int8"), choice("int8", true, "int8")];
        assert_eq!(describe_plan(&int8), "all 2 linear layers ran in int8 (integer products)");
        let mixed = [
            choice("csr", true, "csr"),
            choice("int8", true, "int8"),
            choice("csr", true, "csr"),
            choice("dense", false, "dense"),
        ];
        assert_eq!(
            describe_plan(&mixed),
            "3 of 4 linear layers ran 2 in csr, 1 in int8 (integer products), the rest dense"
        );
        let one = [choice("csr", true, "csr"), choice("csr", true, "dense")];
        assert_eq!(describe_plan(&one), "1 of 2 linear layers ran in csr, the rest dense");
        let none_left = [choice("csr", true, "csr"), choice("csr", true, "csr bf16")];
        assert_eq!(describe_plan(&none_left), "all 2 linear layers ran 1 in csr, 1 in csr bf16");
    }

    #[test]
    fn a_run_says_how_the_whole_model_compared_with_dense() {
        let layers = vec![choice("n:m 2:4", true, "n:m 2:4"), choice("csr", true, "dense")];
        let whole = |planned_seconds: f64, ran: &'static str, whole_input: bool| WholeModel {
            sentences: 3,
            tokens: 40,
            whole_input,
            planned: vec![("n:m 2:4".to_owned(), 1)],
            dense_seconds: 0.02,
            planned_seconds,
            ran,
        };
        let faster = Fastest {
            layers: layers.clone(),
            whole_model: Some(whole(0.016, "planned", false)),
            seconds: 3.04,
        };
        assert_eq!(
            describe_run(&faster, 40.0),
            "1 of 2 linear layers ran in n:m 2:4, the rest dense: the whole model 1.25x dense \
             (16.0 ms against 20.0 ms dense on the first 3 sentences); loading and planning took \
             3.0 s, the embedding 40.0 s"
        );
        let all = Fastest {
            layers: layers.clone(),
            whole_model: Some(whole(0.016, "planned", true)),
            seconds: 1.0,
        };
        assert!(
            describe_run(&all, 0.5).ends_with(
                "dense on all 3 sentences); loading and planning took 1.0 s, more than the \
                 embedding's 0.5 s: --fastest pays off on longer inputs"
            ),
            "{}",
            describe_run(&all, 0.5)
        );
        // Where dense ran, the layers say dense and the line names the plan that lost.
        let dense_layers = vec![choice("n:m 2:4", true, "dense"), choice("csr", true, "dense")];
        let slower = Fastest {
            layers: dense_layers,
            whole_model: Some(whole(0.0199, "dense", false)),
            seconds: 2.0,
        };
        // Planning that took longer than a dense embedding is no reason to expect longer
        // inputs to pay for it; nor are times that print alike.
        assert!(describe_run(&slower, 0.5).ends_with("took 2.0 s, the embedding 0.5 s"));
        assert!(describe_run(&all, 0.96).ends_with("took 1.0 s, the embedding 1.0 s"));
        assert_eq!(
            describe_run(&slower, 2.0),
            "all 2 linear layers ran dense: with the timed plan (1 in n:m 2:4) the model was not \
             2% faster as a whole (19.9 ms against 20.0 ms dense on the first 3 sentences); \
             loading and planning took 2.0 s, the embedding 2.0 s"
        );
        // Without a layer out of dense, nothing was timed as a whole.
        let dense = vec![choice("csr", true, "dense")];
        let untimed = Fastest { layers: dense.clone(), whole_model: None, seconds: 0.5 };
        assert!(describe_run(&untimed, 0.01).ends_with("took 0.5 s, the embedding 0.0 s"));
        assert_eq!(
            describe_run(&untimed, 9.0),
            format!(
                "{}; loading and planning took 0.5 s, the embedding 9.0 s",
                describe_plan(&dense)
            )
        );
    }
}
