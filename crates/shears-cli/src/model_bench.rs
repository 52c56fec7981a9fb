//! `shears bench MODEL_DIR --texts FILE`: the whole model timed, dense (f32) against each
//! pruned layer in the format that runs it fastest and each int8 layer in int8, at each
//! batch of sentences.

use std::time::Instant;

use anyhow::{Result, bail};
use serde::Serialize;
use shears_models::{FormatChoice, choose_formats, read_texts};
use shears_sparse::Format;

use crate::cli::BenchArgs;
use crate::progress::Progress;
use crate::report::print_json;

/// Tokens per sentence unless `--seq-len` says otherwise (or the folder's limit is
/// shorter): a common length for sentence embeddings.
const DEFAULT_SEQ_LEN: usize = 128;

/// The most tokens one setting runs at once (sentences x `--seq-len`): each setting
/// runs the model at least a dozen times, and past this a single run takes minutes.
const MAX_TOKENS_PER_SETTING: usize = 1 << 17;

/// Wall time, in seconds, spent timing each setting (after a warm-up run), and the
/// fewest runs taken whatever it costs.
const SECONDS_PER_SETTING: f64 = 2.0;
const MIN_RUNS: usize = 5;

#[derive(Debug, Serialize)]
struct Setting {
    sentences: usize,
    tokens: usize,
    dense_ms: Timing,
    /// None when no layer runs sparse: the sparse model is then the dense one.
    sparse_ms: Option<Timing>,
    /// Dense time over sparse time (medians of runs taken alternately): above 1 the
    /// sparse model is faster.
    speedup: Option<f64>,
    /// Layers that run in a sparse format at this batch.
    sparse_layers: usize,
    layers: Vec<LayerChoice>,
}

/// A layer's [`FormatChoice`] with its times in milliseconds, as the setting's.
#[derive(Debug, Serialize)]
struct LayerChoice {
    name: String,
    sparsity: f64,
    proposed: String,
    dense_ms: f64,
    proposed_ms: Option<f64>,
    chosen: String,
    /// The layers these times are shared with (query, key and value run as one; the
    /// feed-forward pair is timed as one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    timed_with: Vec<String>,
}

impl From<FormatChoice> for LayerChoice {
    fn from(c: FormatChoice) -> LayerChoice {
        LayerChoice {
            name: c.name,
            sparsity: c.sparsity,
            proposed: c.proposed,
            dense_ms: c.dense_seconds * 1e3,
            proposed_ms: c.proposed_seconds.map(|s| s * 1e3),
            chosen: c.chosen,
            timed_with: c.timed_with,
        }
    }
}

#[derive(Debug, Serialize)]
struct Timing {
    median: f64,
    min: f64,
    max: f64,
    runs: usize,
}

/// What the pruned model's runs against the dense model's say beyond the speedup of
/// their medians: slower is a verdict (run it dense), and a gain no larger than the
/// dense runs' own spread is flagged as such.
fn caveat(dense: &Timing, sparse: &Timing) -> &'static str {
    if sparse.median > dense.median {
        if sparse.min <= dense.max {
            // Slower by the medians, but some pruned run as fast as some dense one.
            "; slower than dense here by the medians, though the runs' ranges overlap: run it dense"
        } else {
            "; slower than dense here as a whole: run it dense"
        }
    } else if sparse.median >= dense.min {
        // Faster by the medians, but no faster than the dense model's fastest run.
        "; faster by the medians, though within the range of the dense runs"
    } else {
        ""
    }
}

#[derive(Debug, Serialize)]
struct Report {
    model: String,
    /// The text the sentences are cut from: its tokens one after another, as many as
    /// fill each sentence, whatever its lines' lengths.
    texts: String,
    seq_len: usize,
    threads: usize,
    settings: Vec<Setting>,
}

/// Times the model at each of `batches` sentences (sorted, each once).
pub(crate) fn run(args: &BenchArgs, batches: &[usize]) -> Result<()> {
    let Some(texts_path) = &args.texts else { bail!("internal error: --texts") };
    if !args.input.exists() {
        bail!("{} does not exist: --texts times a model folder", args.input.display());
    }
    if !args.input.is_dir() {
        bail!(
            "{} is not a model folder: --texts times a whole BERT-family model",
            args.input.display()
        );
    }
    // A given --seq-len replaces the folder's max_seq_length, which is then not checked.
    let mut loaded = crate::embed::load_truncating(&args.input, args.seq_len, "--seq-len")?;
    // Said once the timing has run (an error after a warning would be two lines).
    let mut said = crate::report::Warnings::default();
    for w in crate::embed::load_warnings(&args.input, &loaded, args.seq_len, "--seq-len") {
        said.add(w);
    }
    // The baseline is f32 dense: int8 layers dequantized, bf16 and f16 ones widened.
    let mut dense = loaded.clone();
    for layer in dense.model.layers_mut() {
        for (_, linear) in layer.linears_mut() {
            linear.set_f32_format(Format::Dense)?;
        }
    }
    let positions = dense.model.config().max_position_embeddings;
    // The folder's own limit (its `max_seq_length`, else its position embeddings), as
    // `embed` and `eval` cut sentences to it.
    let limit = loaded.tokenizer.max_len().min(positions);
    // A given length was checked against the model as it loaded.
    let seq_len = args.seq_len.map_or(DEFAULT_SEQ_LEN.min(limit), |n| n as usize);
    let largest = batches.last().copied().unwrap_or(1);
    if largest * seq_len > MAX_TOKENS_PER_SETTING {
        bail!(
            "--batch {largest} of sentences of {seq_len} tokens is {} tokens at once; bench times at most {MAX_TOKENS_PER_SETTING} (a smaller --batch or --seq-len)",
            largest * seq_len
        );
    }
    dense.tokenizer = dense.tokenizer.with_max_len(seq_len)?;
    loaded.tokenizer = dense.tokenizer.clone();
    let texts = read_texts(texts_path, 100_000)?;
    let pool =
        dense.tokenizer.word_pool(&texts).map_err(|e| crate::embed::texts_error(e, texts_path))?;
    let progress = Progress::steps(batches.len() as u64, "settings", args.quiet);
    let mut settings = Vec::new();
    for &sentences in batches {
        progress.message(format!("{sentences} x {seq_len} tokens"));
        let batch = pool.sentences(sentences, seq_len)?;
        let mut sparse = loaded.clone();
        let layers = choose_formats(&mut sparse.model, batch.tokens())?;
        let sparse_layers = layers.iter().filter(|l| l.chosen != "dense").count();
        let (dense_ms, sparse_ms) = if sparse_layers == 0 {
            (time(&mut [&mut || dense.embed_batch(&batch).map(drop)])?.remove(0), None)
        } else {
            let mut both = time(&mut [&mut || dense.embed_batch(&batch).map(drop), &mut || {
                sparse.embed_batch(&batch).map(drop)
            }])?;
            let sparse_ms = both.pop();
            (both.remove(0), sparse_ms)
        };
        settings.push(Setting {
            sentences,
            tokens: batch.tokens(),
            speedup: sparse_ms.as_ref().map(|s| dense_ms.median / s.median),
            dense_ms,
            sparse_ms,
            sparse_layers,
            layers: layers.into_iter().map(LayerChoice::from).collect(),
        });
        progress.advance(1);
    }
    progress.finish();
    let report = Report {
        model: args.input.display().to_string(),
        texts: texts_path.display().to_string(),
        seq_len,
        threads: rayon::current_num_threads(),
        settings,
    };
    if args.json {
        print_json(&report)?;
        said.report();
        return Ok(());
    }
    outln!(
        "{}: whole model, sentences of {seq_len} tokens cut from the words of {}, {} thread{} (median, range of the runs)",
        report.model,
        report.texts,
        report.threads,
        if report.threads == 1 { "" } else { "s" }
    )?;
    let t = |t: &Timing| format!("{:.2} ({:.2}-{:.2})", t.median, t.min, t.max);
    let mut lines = Vec::with_capacity(report.settings.len());
    let mut verdicts = Vec::with_capacity(report.settings.len());
    for s in &report.settings {
        let layers = s.layers.len();
        let verdict = if s.layers.iter().all(|l| l.sparsity == 0.0) {
            "no layer is pruned; the model runs dense".to_owned()
        } else if s.sparse_layers == 0 {
            "no other format beats dense here; the model runs dense".to_owned()
        } else {
            // Which formats, in the order they first appear: int8 layers gain by their
            // bytes, not by their zeros, and the reader should see which it was.
            let mut formats: Vec<(&str, usize)> = Vec::new();
            for l in s.layers.iter().filter(|l| l.chosen != "dense") {
                match formats.iter_mut().find(|(f, _)| *f == l.chosen) {
                    Some((_, n)) => *n += 1,
                    None => formats.push((&l.chosen, 1)),
                }
            }
            let caveat = match &s.sparse_ms {
                Some(sparse) => caveat(&s.dense_ms, sparse),
                None => "",
            };
            let ran = match formats[..] {
                [(format, _)] => format!("in {format}"),
                _ => {
                    let each: Vec<String> =
                        formats.iter().map(|(f, n)| format!("{n} in {f}")).collect();
                    format!("({})", each.join(", "))
                }
            };
            format!("{} of {layers} layers {ran}{caveat}", s.sparse_layers)
        };
        let (sparse_ms, speedup) = match (&s.sparse_ms, s.speedup) {
            (Some(ms), Some(x)) => (t(ms), format!("{x:.2}x")),
            _ => ("-".to_owned(), "-".to_owned()),
        };
        let not_dense = format!("{} of {layers}", s.sparse_layers);
        lines.push((s.sentences, s.tokens, t(&s.dense_ms), sparse_ms, speedup, not_dense));
        let plural = if s.sentences == 1 { "" } else { "s" };
        verdicts.push(format!("{} sentence{plural}: {verdict}.", s.sentences));
    }
    // The times' columns as wide as their widest cell, whatever the times' digits; what
    // each setting ran, and the verdict, follow the table a line each, so that the table
    // fits a terminal.
    let dense_width = lines.iter().map(|l| l.2.len()).max().unwrap_or(0).max(19);
    let sparse_width = lines.iter().map(|l| l.3.len()).max().unwrap_or(0).max(19);
    outln!(
        "{:>9}  {:>6}  {:>dense_width$}  {:>sparse_width$}  {:>7}  {:>9}",
        "sentences",
        "tokens",
        "dense ms",
        "pruned ms",
        "speedup",
        "not dense"
    )?;
    for (sentences, tokens, dense, sparse, speedup, not_dense) in &lines {
        outln!(
            "{sentences:>9}  {tokens:>6}  {dense:>dense_width$}  {sparse:>sparse_width$}  {speedup:>7}  {not_dense:>9}"
        )?;
    }
    for verdict in &verdicts {
        outln!("{verdict}")?;
    }
    let pruned = report.settings.iter().flat_map(|s| &s.layers).any(|l| l.sparsity > 0.0);
    if report.settings.iter().any(|s| s.sparse_layers > 0) {
        outln!(
            "Each pruned layer runs in the format that was faster than dense when timed here, so on a busy machine the choice and the speedup vary from run to run."
        )?;
    } else if pruned {
        outln!(
            "Each pruned layer was timed in its format against dense here and ran dense; on a busy machine the choice can vary from run to run."
        )?;
    }
    said.report();
    Ok(())
}

/// Times each of `runs` after one warm-up run each, taking them in turn so that the
/// machine's drift touches all alike: at least five rounds, more while the setting's
/// time budget lasts.
fn time(runs: &mut [&mut dyn FnMut() -> shears_models::Result<()>]) -> Result<Vec<Timing>> {
    for run in runs.iter_mut() {
        run()?;
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); runs.len()];
    let start = Instant::now();
    let mut rounds = 0;
    while rounds < MIN_RUNS || start.elapsed().as_secs_f64() < SECONDS_PER_SETTING {
        for (run, times) in runs.iter_mut().zip(&mut times) {
            let t = Instant::now();
            run()?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        rounds += 1;
        if rounds >= 1000 {
            break;
        }
    }
    Ok(times
        .into_iter()
        .map(|mut runs| {
            runs.sort_by(f64::total_cmp);
            Timing {
                median: runs[runs.len() / 2],
                min: runs[0],
                max: runs[runs.len() - 1],
                runs: runs.len(),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(median: f64, min: f64, max: f64) -> Timing {
        Timing { median, min, max, runs: 5 }
    }

    #[test]
    fn a_gain_within_the_dense_runs_spread_is_flagged_and_a_clear_one_is_not() {
        let dense = timing(25.0, 20.0, 40.0);
        // Faster than every dense run by its median: no caveat.
        assert_eq!(caveat(&dense, &timing(18.0, 17.0, 19.0)), "");
        // Faster by the medians, but the dense model's fastest run was faster still.
        assert!(caveat(&dense, &timing(22.0, 21.0, 30.0)).contains("within the range"));
        assert!(caveat(&dense, &timing(20.0, 19.0, 21.0)).contains("within the range"));
        // Slower by the medians: run it dense, with or without overlapping runs.
        assert!(caveat(&dense, &timing(27.0, 22.0, 31.0)).contains("ranges overlap: run it dense"));
        assert!(caveat(&dense, &timing(45.0, 41.0, 50.0)).contains("as a whole: run it dense"));
    }
}
