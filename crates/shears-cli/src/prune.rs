//! `shears prune`: prune a model tensor by tensor, shard by shard, writing every output
//! atomically and together.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use shears_io::{
    Dtype, Float, Model, SCALE_SUFFIX, SealedFile, TensorWriter, commit_sealed, is_float,
    mask_bytes, scale_name, torch_mask_name, write_matrix, write_values, zeros_in,
};
use shears_strategies::{Criterion, Pattern, Scope, TensorRole};

use crate::calibrated;
use crate::cli::PruneArgs;
use crate::global::Global;
use crate::job::Job;
use crate::outputs::{Outputs, Strangers};
use crate::progress::Progress;
use crate::quantize::{self, Quantize};
use crate::record;
use crate::report::{Warnings, byte_size, fraction, natural_cmp, print_json, print_table};
use crate::sources::{Sources, Tensor, View, zeros, zeros_before};
use crate::tensor_filter::{Choice, Filters, Why};

/// One tensor's line of the report. The rest of the line (name, shape, dtype, why) is
/// read from its choice, which borrows the model's header: a model may have a million
/// tensors, and the report must not hold a second copy of its header.
#[derive(Debug)]
struct Row<'a> {
    choice: &'a Choice<'a>,
    /// The sparsity this tensor was pruned towards (layer scope), if pruned.
    target: Option<f64>,
    /// `None` for tensors that are not floating point.
    sparsity_before: Option<f64>,
    sparsity_after: Option<f64>,
    /// Written as int8 with scales.
    quantized: bool,
    /// Weights this run's mask pruned beyond those pruned before it (the weights' zeros,
    /// and the `--masks-in` mask's), int8 rounding aside.
    pruned_now: usize,
}

impl Row<'_> {
    fn numel(&self) -> usize {
        self.choice.info.shape.iter().product()
    }
}

/// The rows, serialized line by line as JSON objects.
#[derive(Debug)]
struct Rows<'a> {
    rows: Vec<Row<'a>>,
    /// Each shard's file name, for a sharded model.
    shard_names: Vec<Option<String>>,
}

impl Serialize for Rows<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Line<'a> {
            name: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            shard: Option<&'a str>,
            shape: &'a [usize],
            dtype: String,
            /// The dtype written: `I8` for a quantized tensor.
            dtype_written: String,
            role: &'static str,
            pruned: bool,
            why: String,
            target: Option<f64>,
            sparsity_before: Option<f64>,
            sparsity_after: Option<f64>,
        }
        serializer.collect_seq(self.rows.iter().map(|r| {
            let c = r.choice;
            Line {
                name: c.name,
                shard: self.shard_names[c.shard].as_deref(),
                shape: &c.info.shape,
                dtype: format!("{:?}", c.info.dtype),
                dtype_written: if r.quantized {
                    "I8".into()
                } else {
                    format!("{:?}", c.info.dtype)
                },
                role: c.role.describe(),
                pruned: c.chosen,
                why: c.why(),
                target: r.target,
                sparsity_before: r.sparsity_before,
                sparsity_after: r.sparsity_after,
            }
        }))
    }
}

#[derive(Debug, Serialize)]
struct Totals {
    /// The parameters of the tensors whose zeros count: floating point, and int8 weights
    /// pruned again (read as floats); not integer buffers or int8 scales.
    parameters: usize,
    pruned_tensors_parameters: usize,
    sparsity_before: f64,
    sparsity_after: f64,
    pruned_tensors_sparsity_after: f64,
}

/// The record of a run: enough to run it again.
#[derive(Debug, Serialize)]
struct Report<'a> {
    input: String,
    output: String,
    method: String,
    pattern: String,
    scope: String,
    sparsity: f64,
    rounding: String,
    /// For the patterns that score slices or blocks.
    #[serde(skip_serializing_if = "Option::is_none")]
    reduction: Option<String>,
    min_density: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    /// The score at the global threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    threshold: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    masks_in: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    masks_out: Option<String>,
    /// What `--method wanda|sparsegpt` calibrated on.
    #[serde(skip_serializing_if = "Option::is_none")]
    calibration: Option<calibrated::Calibration>,
    /// `int8` or `int8:group=G` with `--quantize`.
    #[serde(skip_serializing_if = "Option::is_none")]
    quantized: Option<String>,
    tensors: Rows<'a>,
    total: Totals,
    /// The tensors' bytes in the model and as written.
    bytes_before: u64,
    bytes_after: u64,
    warnings: Warnings,
}

pub(crate) fn run(args: &PruneArgs) -> Result<()> {
    let job = Job::new(args)?;
    crate::hub::check_not_hub_id(&args.input)?;
    let model = Model::open(&args.input)?;
    let filters = Filters::new(&args.include, &args.exclude, &args.transposed, args.all)?;
    let mut choices = filters.choose(&model)?;
    if job.calibrated.is_some() {
        // Neither --all nor --include makes these prunable by a calibrated method.
        for c in choices.iter_mut().filter(|c| c.why == Why::NotByDefault) {
            c.why = Why::NotLinear;
        }
    }
    let in_input = || args.input.display().to_string();
    let chosen: Vec<Tensor> = choices
        .iter()
        .filter(|c| c.chosen)
        .map(Tensor::of)
        .collect::<Result<_>>()
        .with_context(in_input)?;
    // Every chosen tensor must fit the pattern, checked from the headers before any
    // weight is read.
    if job.scope == Scope::Layer {
        for t in &chosen {
            job.pattern.check_fits(t.name, &t.shape, job.layer_target()).with_context(in_input)?;
        }
    }
    // An int8 tensor whose scales do not fit it would be copied through into an output
    // no reader takes: refused now, as the commands that read it refuse it.
    for t in model.tensors() {
        model.shards()[t.shard].check_scales(t.name)?;
    }
    let quantize = Quantize::plan(args.quantize, &model, &choices)?;
    let outputs = Outputs::plan(&model, &args.output, args.masks_out.as_deref())?;
    check_paths(&model, args, &outputs)?;
    let strangers = outputs.strangers(3);
    check_output_folder(&outputs, &strangers, args.masks_in.as_deref())?;
    crate::outputs::check_extensions(&model, &args.output, args.masks_out.as_deref())?;
    outputs.check_space(output_bytes(&model, quantize.as_ref())?, masks_bytes(&chosen))?;
    let sources = Sources::open(
        &model,
        &args.grads,
        args.scores.as_deref(),
        args.masks_in.as_deref(),
        &chosen,
    )?;
    let (mut calibrated, calibration) = match job.calibrated {
        Some(method) => {
            let (pruned, calibration) =
                calibrated::prune(args, &job, method, &model, &chosen, &sources)?;
            (Some(pruned), Some(calibration))
        }
        None => (None, None),
    };
    // f32 holds f16, bf16 and f32 values exactly and halves the memory of f64; tensors
    // are worked on in f64 only when one of them (or its gradient) is f64.
    let record = record_of(args, &job, quantize.as_ref(), calibration.as_ref());
    let double = chosen.iter().any(|t| t.dtype == Dtype::F64 || sources.any_f64(t.name));
    let mut report = if double {
        prune::<f64>(
            args,
            &job,
            quantize.as_ref(),
            &model,
            &sources,
            &choices,
            &chosen,
            &outputs,
            &record,
            calibrated.as_mut(),
        )?
    } else {
        prune::<f32>(
            args,
            &job,
            quantize.as_ref(),
            &model,
            &sources,
            &choices,
            &chosen,
            &outputs,
            &record,
            calibrated.as_mut(),
        )?
    };
    for w in calibration.iter().flat_map(|c| &c.model_warnings) {
        report.warnings.add(w.clone());
    }
    if let Some(c) = &calibration
        && c.sentences < c.asked
    {
        report.warnings.add(format!(
            "{} has {} line{} with text, fewer than --calib-samples {}: all were used",
            c.texts,
            c.sentences,
            if c.sentences == 1 { "" } else { "s" },
            c.asked
        ));
    }
    if let Some(c) = &calibration {
        // "1 of the 128 calibration sentences has", "3 of the 128 ... have".
        let of = |n: usize, one: &str, many: &str| {
            let verb = if n == 1 { one } else { many };
            format!("{}: {n} of the {} calibration sentences {verb}", c.texts, c.sentences)
        };
        if c.cut > 0 {
            let hint = if c.max_len < c.positions {
                format!(
                    " (--max-len can raise it to {}, the model's position embeddings)",
                    c.positions
                )
            } else {
                String::new()
            };
            report.warnings.add(format!(
                "{} more than {} tokens, cut to the first {}{hint}",
                of(c.cut, "has", "have"),
                c.max_len,
                c.max_len
            ));
        }
        if c.wordless > 0 {
            let (holds, calibrate) = match c.wordless {
                1 => ("holds", "it calibrates"),
                _ => ("hold", "they calibrate"),
            };
            report.warnings.add(format!(
                "{} no token but the tokenizer's special ones, which are all {calibrate} on",
                of(c.wordless, holds, holds)
            ));
        }
    }
    report.calibration = calibration;
    if strangers.count > 0 {
        let count = strangers.count;
        let names: Vec<String> = strangers.named.iter().map(|p| p.display().to_string()).collect();
        let more = count - names.len();
        let (at_least, still_more) = if strangers.partial { ("at least ", "+") } else { ("", "") };
        report.warnings.add(format!(
            "the output folder already held {at_least}{count} file{} this run did not write, left as {}: {}{}",
            if count == 1 { "" } else { "s" },
            if count == 1 { "it was" } else { "they were" },
            names.join(", "),
            if more > 0 { format!(" and {more}{still_more} more") } else { String::new() }
        ));
    } else if strangers.partial {
        report.warnings.add(
            "the output folder has folders this run could not list; whatever they hold was left as it was"
                .to_owned(),
        );
    }
    if let Some(first) = strangers.replaced.first() {
        let count = strangers.replaced.len();
        report.warnings.add(format!(
            "the output folder already held {count} file{} this run wrote over: {}{}",
            if count == 1 { "" } else { "s" },
            first.display(),
            match count {
                1 => String::new(),
                2 => format!(", {}", strangers.replaced[1].display()),
                _ => format!(", {} and {} more", strangers.replaced[1].display(), count - 2),
            }
        ));
    }
    for (path, why) in &outputs.skipped {
        report.warnings.add(format!("{} was not copied: {why}", path.display()));
    }
    for (path, bytes) in outputs.leftovers() {
        report.warnings.add(format!(
            "{} ({bytes} bytes) is the partial output of a shears run that was killed: delete it",
            path.display()
        ));
    }
    print(args, report)
}

/// Files of a model folder that loaders (transformers, sentence-transformers, shears)
/// read by name. One of them that is there but is not a regular file would be left out
/// of the pruned folder, and the pruned model would load as another model (without its
/// normalisation, say): such a folder is refused, where other odd entries are only
/// named as not copied.
const LOADER_FILES: [&str; 9] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
];

/// `path` as written, `.` components aside (`out` and `./out/.` are one); paths that are
/// one file under other names are compared by [`shears_io::paths::check_distinct`].
fn as_written(path: &Path) -> PathBuf {
    path.components().filter(|c| *c != std::path::Component::CurDir).collect()
}

/// Bytes a header entry may take beyond its name: dtype, shape and offsets as JSON.
const ENTRY_BYTES: u64 = 128;

/// Refuses an output folder that holds weights a loader would read with the new ones,
/// weights shears did not write, or a file that differs from the one this run copies
/// there.
fn check_output_folder(
    outputs: &Outputs,
    strangers: &Strangers,
    masks_in: Option<&Path>,
) -> Result<()> {
    if let Some(weights) = &strangers.weights {
        // One file under two names is what check_all_distinct refuses.
        let same_file = |m: &Path| {
            shears_io::paths::check_all_distinct(&[("--masks-in", m), ("masks", weights)]).is_err()
        };
        if masks_in.is_some_and(same_file) {
            bail!(
                "the output folder already holds {}, the --masks-in masks, which would stay beside weights they no longer describe: give --masks-in a copy outside the folder, and --masks-out {0} to replace them",
                weights.display()
            );
        }
        if let Some(target) = dangling_link(weights) {
            bail!(
                "the output folder already holds {}, a link to {} that does not exist: remove the link, or give a new or empty folder",
                weights.display(),
                target.display()
            );
        }
        if holds_masks(weights) {
            bail!(
                "the output folder already holds {}, masks (as --masks-out writes) that would not match the new weights: give --masks-out {0} to replace them, or move that file",
                weights.display()
            );
        }
        bail!(
            "the output folder already holds {}, which would be loaded with the new weights: give a new or empty folder",
            weights.display()
        );
    }
    if let Some((existing, what)) = outputs.foreign_weights() {
        bail!(
            "{} is {what}: give a new or empty output folder, or move that file",
            existing.display()
        );
    }
    if let Some((existing, source)) = outputs.differing_copy()? {
        bail!(
            "{} differs from the model's {}, which this run copies there: give a new or empty output folder, or move that file",
            existing.display(),
            source.display()
        );
    }
    Ok(())
}

/// Where `path` points, if it is a symbolic link to nothing.
fn dangling_link(path: &Path) -> Option<PathBuf> {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link || path.exists() {
        return None;
    }
    std::fs::read_link(path).ok()
}

/// Whether `path` is a regular file of masks only (every tensor named `*_mask`, as
/// `--masks-out` writes): no loader reads it as the model's weights, but left beside new
/// weights it would no longer describe them. Anything else, or a file that does not
/// open as safetensors, is not.
fn holds_masks(path: &Path) -> bool {
    if !std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) {
        return false;
    }
    Model::open(path).is_ok_and(|model| {
        model.tensors().next().is_some() && model.tensors().all(|t| t.name.ends_with("_mask"))
    })
}

/// How far a tensor's sparsity may sit from a target and still be said to be at it, in
/// the warnings after a run: patterns and whole counts land near a target, not on it.
const SPARSITY_SLACK: f64 = 0.005;

/// Bytes of metadata a run adds to each shard's header: its record (the calibration
/// text's hashes, the paths it read) and a quantization's.
const RECORD_BYTES: u64 = 64 << 10;

/// About the bytes the weights files take: each shard's tensors as they are written
/// (in the dtypes they are read in, or int8 and its scales where quantized), and its
/// header, the input's grown by the new entries and the run's record.
fn output_bytes(model: &Model, quantize: Option<&Quantize>) -> Result<u64> {
    let mut total = 0u64;
    for (s, shard) in model.shards().iter().enumerate() {
        let file = shard.path().metadata().map(|m| m.len()).unwrap_or(0);
        let header = file.saturating_sub(shard.data_len());
        let planned = match quantize {
            Some(q) => q.entries(s, shard)?,
            None => None,
        };
        let (data, added) = match &planned {
            Some(entries) => {
                let data = entries.last().map_or(0, |(_, info)| info.data_offsets.1 as u64);
                let names = |e: &[(String, _)]| e.iter().map(|(n, _)| n.len() as u64).sum::<u64>();
                let added = entries.len().saturating_sub(shard.tensors().len()) as u64;
                let added_names = names(entries).saturating_sub(names(shard.tensors()));
                (data, added_names + added * ENTRY_BYTES)
            }
            None => (shard.data_len(), 0),
        };
        total = total.saturating_add(data + header + added + RECORD_BYTES);
    }
    Ok(total)
}

/// About the bytes of a masks file for `chosen`: a byte a weight and a header entry each.
fn masks_bytes(chosen: &[Tensor<'_>]) -> u64 {
    let entry = |t: &Tensor<'_>| t.name.len() as u64 + ENTRY_BYTES;
    chosen.iter().map(|t| t.dims.iter().product::<usize>() as u64 + entry(t)).sum()
}

/// No path is both read and written, under any name: the model's files, the gradient,
/// score and mask files, and every output; and no gradient file is given twice.
fn check_paths(model: &Model, args: &PruneArgs, outputs: &Outputs) -> Result<()> {
    // Where the output folder lies, first: inside the model's folder, its files would
    // otherwise be refused one by one as the model's.
    let folder = outputs.folder();
    if let Some(root) = folder
        && shears_io::paths::is_filesystem_root(root)
    {
        bail!("refusing to write a model folder into the filesystem root {}", root.display());
    }
    if let (Some(root), Some(model_folder)) = (folder, model.folder())
        && shears_io::paths::is_within(root, model_folder)
    {
        bail!(
            "the output folder {} is inside the model's folder {}: give a folder outside it",
            root.display(),
            model_folder.display()
        );
    }
    if let (Some(root), Some(model_folder)) = (folder, model.folder())
        && shears_io::paths::is_within(model_folder, root)
    {
        // `-o ..` from inside the model's folder: the new model's files would land among
        // whatever else the parent holds, the model's own folder included.
        bail!(
            "the output folder {} holds the model's folder {}: give a new or empty folder beside it",
            root.display(),
            model_folder.display()
        );
    }
    let mut paths: Vec<(&'static str, &Path, bool)> = Vec::new();
    for shard in model.shards() {
        paths.push(("model", shard.path(), false));
    }
    if model.index().is_some() {
        paths.push(("model's index", model.path(), false));
    }
    for copied in outputs.copied() {
        paths.push(("model", copied, false));
    }
    for g in &args.grads {
        paths.push(("--grads", g, false));
    }
    // Each gradient file is summed once: one given twice would count its gradients twice.
    let grads: Vec<_> = args.grads.iter().map(|g| ("--grads", g.as_path())).collect();
    shears_io::paths::check_all_distinct(&grads)?;
    if let Some(s) = &args.scores {
        paths.push(("--scores", s, false));
    }
    if let Some(m) = &args.masks_in {
        paths.push(("--masks-in", m, false));
    }
    if let Some(c) = &args.calib {
        paths.push(("--calib", c, false));
    }
    // The mask file is the last output written.
    let count = outputs.written().count();
    let masks = outputs.masks.is_some();
    for (i, written) in outputs.written().enumerate() {
        let role = if masks && i + 1 == count { "--masks-out" } else { "output" };
        paths.push((role, written, true));
    }
    shears_io::paths::check_distinct(&paths)?;
    for written in outputs.written() {
        // Caught here rather than when the last output is moved into place, after the
        // others were.
        shears_io::paths::check_output(written)?;
    }
    if let Some(model_folder) = model.folder() {
        for name in LOADER_FILES {
            let path = model_folder.join(name);
            if shears_io::paths::is_present(&path) {
                shears_io::paths::require_regular_file(&path)?;
            }
        }
    }
    if let (Some(masks), Some(model_folder)) = (&args.masks_out, model.folder())
        && shears_io::paths::is_within(masks, model_folder)
    {
        // The folder's next reader would find a stray file, or take it for a shard.
        bail!(
            "refusing to write {}: it is inside the model folder {} (write the masks elsewhere)",
            masks.display(),
            model_folder.display()
        );
    }
    // A checkpoint given by its file, in a model folder: the folder's other files (its
    // config, tokenizer, other shards) are the model's, and no output goes among them.
    if model.folder().is_none()
        && let Some(model_folder) = crate::export::model_folder_of(model.path())
        && let Some(written) =
            outputs.written().find(|w| shears_io::paths::is_within(w, model_folder))
    {
        bail!(
            "refusing to write {}: it is inside the model folder {} that {} is in (write elsewhere, or prune the folder: shears prune {} -o NEW_FOLDER)",
            written.display(),
            model_folder.display(),
            model.path().display(),
            model_folder.display()
        );
    }
    if let Some(root) = folder {
        for written in outputs.written().filter(|w| w.starts_with(root)) {
            // A linked folder inside the output would take the file outside it.
            let mut dir = written.parent();
            while let Some(d) = dir.filter(|d| *d != root) {
                if std::fs::symlink_metadata(d).is_ok_and(|m| m.file_type().is_symlink()) {
                    bail!(
                        "refusing to write {}: the folder {} is a symbolic link",
                        written.display(),
                        d.display()
                    );
                }
                dir = d.parent();
            }
        }
        if let Some(masks) = &outputs.masks {
            // A folder the run writes files into cannot be the mask file too.
            let file = as_written(masks);
            let holds = |w: &Path| {
                as_written(w).strip_prefix(&file).is_ok_and(|rest| !rest.as_os_str().is_empty())
            };
            let typed = args.masks_out.as_deref().unwrap_or(masks);
            if outputs.written().any(holds) {
                bail!(
                    "--masks-out {} is {}: give a file name, in it or elsewhere",
                    typed.display(),
                    if file == as_written(root) {
                        "the output folder"
                    } else {
                        "a folder of the output model"
                    }
                );
            }
            // Nor can a file the run writes be a folder holding the mask file.
            let inside = |w: &&Path| {
                file.strip_prefix(as_written(w)).is_ok_and(|rest| !rest.as_os_str().is_empty())
            };
            if let Some(written) = outputs.written().find(inside) {
                bail!(
                    "--masks-out {} is inside {}, a file of the output model: give a file name in the folder or elsewhere",
                    typed.display(),
                    written.display()
                );
            }
        }
        if let Some(masks) = &outputs.masks
            && masks.starts_with(root)
            && masks.to_string_lossy().ends_with(".index.json")
        {
            bail!(
                "--masks-out {}: a file named like a shard index in the output folder would be read as the model's",
                masks.display()
            );
        }
    }
    // Files are written beside their targets: the folders must exist (an output
    // folder's own subfolders are made when it is).
    for written in outputs.written() {
        let dir = match folder {
            Some(root) if written.starts_with(root) => root,
            _ => written,
        }
        .parent()
        .filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir
            && !dir.is_dir()
        {
            let is = if dir.exists() { "is not a folder" } else { "does not exist" };
            bail!("{}: the folder {} {is}", written.display(), dir.display());
        }
    }
    Ok(())
}

/// The record of this run that the written files carry.
fn record_of(
    args: &PruneArgs,
    job: &Job,
    quantize: Option<&Quantize>,
    calibration: Option<&calibrated::Calibration>,
) -> record::Run {
    record::Run {
        shears: env!("CARGO_PKG_VERSION"),
        method: match (&args.scores, job.calibrated, job.criterion) {
            (Some(_), _, _) => "scores".into(),
            (None, Some(m), _) => m.name().into(),
            (None, None, c) => c.to_string(),
        },
        pattern: job.pattern.to_string(),
        scope: job.scope.to_string(),
        sparsity: job.sparsity.get(),
        rounding: job.rounding.to_string(),
        // The reduction of a pattern that scores slices or blocks.
        reduction: match job.pattern {
            Pattern::Structured(s) => Some(s.reduction().to_string()),
            Pattern::Blocks { reduction, .. } => Some(reduction.to_string()),
            _ => None,
        },
        // The floor that lowers a tensor's target, in either scope, when given.
        min_density: (job.min_density > 0.0).then_some(job.min_density),
        seed: matches!(job.criterion, Criterion::Random { .. }).then_some(args.seed.unwrap_or(0)),
        masks_in: args.masks_in.is_some(),
        calibration: calibration.map(calibrated::Calibration::record),
        quantized: quantize.map(Quantize::describe),
    }
}

#[allow(clippy::too_many_arguments, reason = "the run's pieces, each decided once in run")]
fn prune<'a, T: Float>(
    args: &PruneArgs,
    job: &Job,
    quantize: Option<&Quantize>,
    model: &Model,
    sources: &Sources,
    choices: &'a [Choice<'a>],
    chosen: &[Tensor],
    outputs: &Outputs,
    record: &record::Run,
    mut calibrated: Option<&mut calibrated::Pruned>,
) -> Result<Report<'a>> {
    let mut global = match job.scope {
        Scope::Layer => None,
        Scope::Global => Some(Global::<T>::plan(job, model, sources, chosen, args.quiet)?),
    };
    // The output folder is locked until the files are in place (see
    // `Outputs::create_folders`). Another run into it may have written there since the
    // checks before the work: they run again under the lock.
    let folders = outputs.create_folders()?;
    check_output_folder(outputs, &outputs.strangers(3), args.masks_in.as_deref())?;
    let mask_entries = match &outputs.masks {
        Some(_) => shears_io::layout(
            chosen.iter().map(|t| (torch_mask_name(t.name), Dtype::U8, t.dims.to_vec())),
        )?,
        None => Vec::new(),
    };
    let mut masks_out = match &outputs.masks {
        Some(path) => Some(TensorWriter::create(path, &mask_entries, None)?),
        None => None,
    };
    let total_bytes: u64 = model.shards().iter().map(|s| s.data_len()).sum();
    let progress = Progress::bytes(total_bytes, "pruning", args.quiet);
    let mut rows = Vec::with_capacity(choices.len());
    let mut staged: Vec<SealedFile> = Vec::new();
    let mut spare = Vec::new();
    let mut next_chosen = chosen.iter().peekable();
    let mut decisions = choices.iter();
    let shard_names = model
        .shards()
        .iter()
        .map(|shard| {
            (model.shards().len() > 1)
                .then(|| shard.path().file_name().map(|n| n.to_string_lossy().into_owned()))
                .flatten()
        })
        .collect();
    // Bytes of each tensor of a shard written anew, for a sharded model's index.
    let mut sizes: HashMap<String, u64> = HashMap::new();
    let mut bytes_after = 0u64;
    let mut rounded_to_zero = 0usize;
    for (s, shard) in model.shards().iter().enumerate() {
        let out = &outputs.shards[s];
        let planned = match quantize {
            Some(q) => q.entries(s, shard)?,
            None => None,
        };
        let (entries, metadata) = match (planned, quantize) {
            (Some(entries), Some(q)) => {
                for (name, info) in &entries {
                    sizes.insert(name.clone(), (info.data_offsets.1 - info.data_offsets.0) as u64);
                }
                (Cow::Owned(entries), q.metadata(s, shard).map(Cow::Owned))
            }
            _ => (Cow::Borrowed(shard.tensors()), shard.metadata().map(Cow::Borrowed)),
        };
        let metadata = record::with_run(metadata.as_deref(), record);
        bytes_after += entries.last().map_or(0, |(_, info)| info.data_offsets.1 as u64);
        // A header past the readers' bound can be the input's metadata's doing: say so.
        let metadata_bytes: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        let mut writer = match TensorWriter::create(out, &entries, Some(&metadata)) {
            Err(e) if metadata_bytes > 1_000_000 => bail!(
                "writing {} with the {metadata_bytes} bytes of metadata of {} and the run's record: {e}",
                out.display(),
                shard.path().display()
            ),
            created => created?,
        };
        for (name, info) in shard.tensors() {
            let choice = decisions.next().context("internal error: one decision per tensor")?;
            progress.message(format!("tensor {name}"));
            let io = |e: std::io::Error| shears_io::Error::io("write", out, e);
            let row_base = Row {
                choice,
                target: None,
                sparsity_before: None,
                sparsity_after: None,
                quantized: false,
                pruned_now: 0,
            };
            let bytes = (info.data_offsets.1 - info.data_offsets.0) as u64;
            if !choice.chosen && quantize.is_some_and(|q| q.replaces(s, name)) {
                // Old scales of a tensor quantized anew: its new ones are written.
                rows.push(row_base);
                progress.advance(bytes);
                continue;
            }
            if !choice.chosen {
                let s = if is_float(info.dtype) {
                    let count = info.shape.iter().product();
                    Some(fraction(shard.count_zeros(name)?, count))
                } else {
                    None
                };
                rows.push(Row { sparsity_before: s, sparsity_after: s, ..row_base });
                writer.write(name, |w| -> Result<()> { Ok(shard.copy_to(name, w, out)?) })?;
                progress.advance(bytes);
                continue;
            }
            let t = next_chosen.next().context("internal error: chosen tensors in model order")?;
            let (mut new_weights, zeros_before, mask) =
                match calibrated.as_mut().and_then(|c| c.remove(t.name)) {
                    // Wanda's or SparseGPT's weights (SparseGPT's kept ones are updated).
                    Some(p) => {
                        (p.weights.map(|v| T::from_f64_lossy(f64::from(v))), p.zeros_before, p.mask)
                    }
                    None => {
                        let spare = std::mem::take(&mut spare);
                        let loaded = sources.load::<T>(model, t, job.view, spare)?;
                        let zeros_before = zeros_before(&loaded.weights, loaded.kept.as_ref());
                        let mask = match global.as_mut() {
                            Some(g) => g.mask(job, t, &loaded)?,
                            None => job.layer_mask(t, &loaded)?,
                        };
                        (loaded.weights, zeros_before, mask)
                    }
                };
            let before = fraction(zeros_before, new_weights.len());
            mask.apply_in_place(&mut new_weights)?;
            let zeros_after = zeros(&new_weights);
            let after = fraction(zeros_after, new_weights.len());
            let target = (job.scope == Scope::Layer).then(|| job.layer_target().get());
            rows.push(Row {
                target,
                sparsity_before: Some(before),
                sparsity_after: Some(after),
                pruned_now: zeros_after.saturating_sub(zeros_before),
                ..row_base
            });
            let weights = &new_weights;
            if let Some(q) = quantize.filter(|q| q.quantizes(s, name)) {
                let view = (job.view == View::Flat, t.transposed);
                let int8 = q.quantize(s, name, weights, &info.shape, view)?;
                // Kept weights below half a step round to zero: the report counts them.
                let zeros = int8.values().iter().filter(|&&v| v == 0).count();
                let pruned = zeros_in(weights.as_slice());
                rounded_to_zero += zeros - pruned.min(zeros);
                if let Some(row) = rows.last_mut() {
                    row.sparsity_after = Some(fraction(zeros, weights.len()));
                    row.quantized = true;
                }
                writer.write(name, |w| -> Result<()> {
                    Ok(quantize::write_values(&int8, w).map_err(io)?)
                })?;
                writer.write(&scale_name(name), |w| -> Result<()> {
                    Ok(quantize::write_scales(&int8, w).map_err(io)?)
                })?;
            } else if !is_float(info.dtype) {
                // An int8 tensor without values: nothing to quantize or write but its
                // (empty) bytes.
                writer.write(name, |w| -> Result<()> { Ok(shard.copy_to(name, w, out)?) })?;
            } else {
                writer.write(name, |w| -> Result<()> {
                    let written = match job.view {
                        View::Flat => write_values(weights.as_slice(), info.dtype, w),
                        View::Matrix if t.transposed => {
                            write_matrix(&weights.transpose(), info.dtype, w)
                        }
                        View::Matrix => write_matrix(weights, info.dtype, w),
                    };
                    Ok(written.map_err(io)?)
                })?;
            }
            if let Some(masks) = masks_out.as_mut() {
                let stored = t.mask_from_view(&mask, job.view)?;
                let path = masks.target().to_owned();
                masks.write(&torch_mask_name(name), |w| -> Result<()> {
                    w.write_all(&mask_bytes(&stored))
                        .map_err(|e| shears_io::Error::io("write", &path, e))?;
                    Ok(())
                })?;
            }
            spare = new_weights.data.into();
            progress.advance(bytes);
        }
        let (pending, file) = writer.finish()?;
        staged.push(pending.seal(file)?);
    }
    progress.finish();
    if let Some(masks) = masks_out {
        let (pending, file) = masks.finish()?;
        staged.push(pending.seal(file)?);
    }
    let size = |name: &str| match sizes.get(name) {
        Some(&bytes) => bytes,
        None => {
            model.find(name).map_or(0, |t| (t.info.data_offsets.1 - t.info.data_offsets.0) as u64)
        }
    };
    let index = model.index_with_sizes(size).map(|mut index| {
        // The scales live in their tensor's shard.
        let scales: Vec<(String, String)> = sizes
            .keys()
            .filter_map(|n| {
                let weight = n.strip_suffix(SCALE_SUFFIX)?;
                let shard = index.weight_map.get(weight)?;
                (!index.weight_map.contains_key(n)).then(|| (n.clone(), shard.clone()))
            })
            .collect();
        let extra: u64 = scales.iter().map(|(n, _)| size(n)).sum();
        index.weight_map.extend(scales);
        let total = index.metadata.get("total_size").and_then(serde_json::Value::as_u64);
        index.metadata.insert("total_size".into(), (total.unwrap_or(0) + extra).into());
        index
    });
    staged.extend(outputs.stage_index(index)?);
    staged.extend(outputs.stage_copies()?);
    commit_sealed(staged)?;
    folders.keep();
    let threshold = global.as_ref().and_then(Global::threshold);
    let mut warnings = Warnings::default();
    if rounded_to_zero > 0 {
        // The mask file, where there is one, records the pruning, not the rounding.
        let masks =
            if outputs.masks.is_some() { "; --masks-out still marks them kept" } else { "" };
        warnings.add(format!(
            "{rounded_to_zero} kept weights are below half their int8 step and were stored as zero (the sparsity after counts them{masks})"
        ));
    }
    if quantize.is_some() {
        warnings.add(
            "int8 weights read back as floating point in shears only: transformers and PyTorch take the int8 values for the weights, without their .scale tensors and without an error (keep an f32 prune for them)"
                .to_owned(),
        );
    }
    if let Some(warning) = quantize.and_then(Quantize::requantized_warning) {
        warnings.add(warning);
    }
    // SparseGPT moves kept weights to make up for those it prunes, or those the
    // --masks-in masks prune: with neither, it changed nothing.
    let pruned_any = rows.iter().any(|r| r.pruned_now > 0) || args.masks_in.is_some();
    if let (Some(masks), Some(shears_models::Method::SparseGpt(_)), true) =
        (&args.masks_out, job.calibrated, pruned_any)
    {
        warnings.add(format!(
            "--masks-out {} marks the weights sparsegpt kept, but it also changed their values: the masks on the original weights do not give this model (load the pruned weights, zero where the masks prune)",
            masks.display()
        ));
    }
    if let Some(q) = quantize
        && bytes_after > total_bytes
    {
        let advice = if q.grouped() {
            ": the scales of small groups outweigh the int8 values (a larger int8:group=G, or int8 per row, is smaller)"
        } else {
            ""
        };
        warnings.add(format!(
            "the output's tensors take {bytes_after} bytes, more than the model's {total_bytes}{advice}"
        ));
    }
    if global.is_none() && job.layer_target() != job.sparsity {
        warnings.add(format!(
            "--min-density {} lowers each tensor's target from {} to {} (in layer scope every tensor keeps at least that much)",
            sparsity_text(job.min_density),
            sparsity_text(job.sparsity.get()),
            sparsity_text(computed(job.layer_target().get()))
        ));
    }
    // Under the floor before the run: its --masks-in mask, or its own zeros, had pruned
    // past it, in either scope. A tensor a pattern took under the floor (whole rows,
    // rounded up) is warned of as one that missed its target instead.
    let under_floor = |s: Option<f64>| s.is_some_and(|s| 1.0 - s < job.min_density - 1e-9);
    let under = if args.masks_in.is_some() { "under its --masks-in mask" } else { "(its zeros)" };
    let mut below = std::collections::HashSet::new();
    for r in rows.iter().filter(|r| r.choice.chosen).filter(|r| under_floor(r.sparsity_before)) {
        let (Some(before), Some(after)) = (r.sparsity_before, r.sparsity_after) else {
            continue;
        };
        below.insert(r.choice.name);
        let what = if after > before + 1e-9 {
            format!(", and its pattern pruned it further, to keep {:.4}", 1.0 - after)
        } else {
            ": nothing more was pruned".to_owned()
        };
        warnings.add(format!(
            "tensor `{}` keeps {:.4} of its weights {under}, less than --min-density {}{what}",
            r.choice.name,
            1.0 - before,
            job.min_density
        ));
    }
    if let Some(g) = &global {
        for name in g.capped().filter(|name| !below.contains(name)) {
            warnings.add(format!(
                "tensor `{name}` was held at --min-density {}: global scope would have pruned more of it",
                job.min_density
            ));
        }
        // The chosen tensors as one, as global scope counts them.
        let (mut numel, mut zeros_before, mut zeros_after) = (0.0, 0.0, 0.0);
        for r in rows.iter().filter(|r| r.choice.chosen) {
            if let (Some(before), Some(after)) = (r.sparsity_before, r.sparsity_after) {
                let n = r.numel() as f64;
                (numel, zeros_before, zeros_after) =
                    (numel + n, zeros_before + before * n, zeros_after + after * n);
            }
        }
        let target = job.sparsity.get();
        if numel > 0.0
            && target > 0.0
            && args.masks_in.is_none()
            && zeros_before / numel > target + SPARSITY_SLACK
        {
            warnings.add(format!(
                "the pruned tensors were already sparser than the target before this run ({:.4} against {target:.4}): zeros stay pruned, so they end at {:.4}",
                zeros_before / numel,
                zeros_after / numel
            ));
        }
    }
    // A target too small to prune one weight anywhere: the run wrote the weights as
    // they were (calibrating for nothing, with a calibrated method). Tensors already past
    // their target have a warning of their own below.
    let mut chosen = rows.iter().filter(|r| r.choice.chosen).peekable();
    let unpruned = |r: &Row| {
        let target = r.target.unwrap_or(job.sparsity.get());
        r.pruned_now == 0
            && r.sparsity_before.is_some_and(|before| before <= target + SPARSITY_SLACK)
    };
    // A --min-density that takes the target to 0 (or holds every tensor, in global
    // scope) has said so already.
    let asked = if global.is_some() { job.sparsity } else { job.layer_target() };
    let held = global.as_ref().is_some_and(|g| g.capped().next().is_some());
    if asked.get() > 0.0 && !held && chosen.peek().is_some() && chosen.all(unpruned) {
        let count = if global.is_some() {
            "as one count over the chosen tensors it rounds to none, or their zeros had reached it"
        } else {
            "in each chosen tensor it rounds to none, or its zeros had reached it"
        };
        warnings.add(format!(
            "--sparsity {} pruned no weight: {count}",
            sparsity_text(job.sparsity.get())
        ));
    }
    // Tensors whose zeros already passed their target: zeros stay pruned, so these end
    // above it (further still where a pattern or int8 rounding adds zeros), and one
    // warning says so for all of them; none at --sparsity 0, which asks for no pruning.
    let mut sparser_before: Vec<(&str, f64, f64, f64)> = Vec::new();
    // Tensors whose --masks-in mask already passed a target asked for (not the default
    // -s 0, which only applies the masks) and that end where their mask is.
    let mut masked_past: Vec<(&str, f64, f64)> = Vec::new();
    for r in rows.iter().filter(|r| r.choice.chosen) {
        let (Some(after), numel) = (r.sparsity_after, r.numel()) else {
            continue;
        };
        if let (Some(target), Some(before), Some(_)) = (r.target, r.sparsity_before, &args.masks_in)
            && target > 0.0
            && before > target + SPARSITY_SLACK
            && after <= before + SPARSITY_SLACK
            && after < 1.0
        {
            masked_past.push((r.choice.name, before, target));
        }
        if let (Some(target), Some(before)) = (r.target, r.sparsity_before)
            && before > target + SPARSITY_SLACK
            && args.masks_in.is_none()
            && after < 1.0
        {
            // Warned of already as a tensor its zeros left under --min-density.
            if below.contains(r.choice.name) {
                continue;
            }
            if target > 0.0 {
                sparser_before.push((r.choice.name, before, target, after));
            }
            continue;
        }
        if after == 1.0 && numel > 0 {
            let hint = if job.scope == Scope::Global {
                " (--min-density keeps a fraction of every tensor)"
            } else {
                ""
            };
            warnings.add(format!("tensor `{}` was pruned whole{hint}", r.choice.name));
        } else if let Some(target) = r.target
            && (after - target).abs() > SPARSITY_SLACK
            && !below.contains(r.choice.name)
            // Masks given with --masks-in are kept whole: a tensor whose mask is already
            // sparser than the target (with the default -s 0, every one) is expected to
            // end where its mask is, and one a pattern pruned past that is not. Kept
            // weights that int8 rounds to zero have their own warning.
            && !(args.masks_in.is_some()
                && after > target
                && r.sparsity_before.is_some_and(|b| b > target + SPARSITY_SLACK && after <= b + SPARSITY_SLACK))
            && !(r.quantized && after > target)
        {
            warnings.add(format!(
                "tensor `{}` reached sparsity {after:.4}, its target was {target:.4}",
                r.choice.name
            ));
        }
    }
    if let [(first, before, target), rest @ ..] = masked_past.as_slice() {
        warnings.add(match rest {
            [] => format!(
                "tensor `{first}`'s mask (--masks-in) already prunes {before:.4} of it, past its target {target:.4}: masks only grow, so it ends there"
            ),
            _ => format!(
                "{} tensors' masks (--masks-in) already prune past their target (the first, `{first}`: {before:.4} against {target:.4}): masks only grow, so they end where their masks are",
                masked_past.len()
            ),
        });
    }
    if let [(first, before, target, after), rest @ ..] = sparser_before.as_slice() {
        warnings.add(match rest {
            [] => format!(
                "tensor `{first}` was already sparser than its target before this run ({before:.4} against {target:.4}): zeros stay pruned, so it ends at {after:.4}"
            ),
            _ => format!(
                "{} tensors were already sparser than their target before this run (the first, `{first}`: {before:.4} against {target:.4}): zeros stay pruned, so they end above it (the first at {after:.4})",
                sparser_before.len()
            ),
        });
    }
    Ok(Report {
        input: args.input.display().to_string(),
        output: args.output.display().to_string(),
        // The settings as the files' record has them.
        method: record.method.clone(),
        pattern: record.pattern.clone(),
        scope: record.scope.clone(),
        sparsity: record.sparsity,
        rounding: record.rounding.clone(),
        reduction: record.reduction.clone(),
        min_density: job.min_density,
        seed: record.seed,
        threshold,
        masks_in: args.masks_in.as_ref().map(|p| p.display().to_string()),
        masks_out: args.masks_out.as_ref().map(|p| p.display().to_string()),
        calibration: None,
        quantized: record.quantized.clone(),
        bytes_before: total_bytes,
        bytes_after,
        total: totals(&rows),
        tensors: Rows { rows, shard_names },
        warnings,
    })
}

fn totals(rows: &[Row]) -> Totals {
    let weight = |r: &Row| r.numel();
    let floats = || rows.iter().filter(|r| r.sparsity_before.is_some());
    let total: usize = floats().map(weight).sum();
    let pruned: Vec<&Row> = rows.iter().filter(|r| r.choice.chosen).collect();
    let pruned_params: usize = pruned.iter().map(|r| weight(r)).sum();
    let zeros = |rows: &mut dyn Iterator<Item = &Row>, after: bool| -> f64 {
        rows.map(|r| {
            let s = if after { r.sparsity_after } else { r.sparsity_before };
            s.unwrap_or(0.0) * weight(r) as f64
        })
        .sum()
    };
    Totals {
        parameters: total,
        pruned_tensors_parameters: pruned_params,
        sparsity_before: zeros(&mut floats(), false) / total.max(1) as f64,
        sparsity_after: zeros(&mut floats(), true) / total.max(1) as f64,
        pruned_tensors_sparsity_after: zeros(&mut pruned.iter().copied(), true)
            / pruned_params.max(1) as f64,
    }
}

/// "62 tensors not 2-D or 4-D, 1 not floating point (step)": how many of `rows` there
/// are of each role, the commonest first, naming the tensor of a role that has one;
/// `None` for no rows.
fn unprunable_counts(rows: &[&Row<'_>]) -> Option<String> {
    let mut counts: Vec<(&'static str, usize, &str)> = Vec::new();
    for row in rows {
        // Counted, a role reads as what the tensors are: "36 tensors of int8 scales".
        let role = match row.choice.role {
            TensorRole::QuantizationScale => "of int8 scales",
            role => role.describe(),
        };
        match counts.iter_mut().find(|(r, ..)| *r == role) {
            Some((_, n, _)) => *n += 1,
            None => counts.push((role, 1, row.choice.name)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut parts = counts.iter().enumerate().map(|(i, (role, n, name))| match (i, n) {
        (0, 1) => format!("1 tensor {role} ({name})"),
        (0, n) => format!("{n} tensors {role}"),
        (_, 1) => format!("1 {role} ({name})"),
        (_, n) => format!("{n} {role}"),
    });
    let first = parts.next()?;
    Some(parts.fold(first, |all, part| format!("{all}, {part}")))
}

/// A sparsity (or density) as the summary and warnings write it: a tiny one (1e-320) in
/// plain decimals would be hundreds of digits.
fn sparsity_text(sparsity: f64) -> String {
    if sparsity > 0.0 && sparsity < 1e-4 { format!("{sparsity:e}") } else { format!("{sparsity}") }
}

/// `value`, the result of arithmetic on what the user gave, rounded to 12 significant
/// digits: `1 - 0.9999` is printed as the 0.0001 it stands for, not as
/// 0.00009999999999998899.
fn computed(value: f64) -> f64 {
    format!("{value:.11e}").parse().unwrap_or(value)
}

/// The summary (or JSON) on stdout, then the warnings on stderr: they follow what
/// succeeded, as every command's do.
fn print(args: &PruneArgs, mut report: Report) -> Result<()> {
    if args.json {
        print_json(&report)?;
        report.warnings.report();
        return Ok(());
    }
    report.tensors.rows.sort_unstable_by(|a, b| natural_cmp(a.choice.name, b.choice.name));
    let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |s| format!("{s:.4}"));
    let cells = |r: &Row| {
        let c = r.choice;
        vec![
            c.name.to_owned(),
            format!("{:?}", c.info.shape),
            // A tensor quantized on the way out: the dtype read, then the one written.
            if r.quantized {
                format!("{:?} -> I8", c.info.dtype)
            } else {
                format!("{:?}", c.info.dtype)
            },
            if c.chosen { "yes".into() } else { "no".into() },
            c.table_why(),
            opt(r.target),
            opt(r.sparsity_before),
            opt(r.sparsity_after),
        ]
    };
    let t = &report.total;
    // The whole model's count and sparsity, the tensors not listed included: those whose
    // zeros count (floating point, and int8 weights pruned again; not integer buffers).
    let footer = vec![
        "all tensors".into(),
        format!("{} params", t.parameters),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        format!("{:.4}", t.sparsity_before),
        format!("{:.4}", t.sparsity_after),
    ];
    // Tensors no option can prune (biases, norms, integer buffers) are most of a
    // transformer's and would bury the layers: they are counted under the table.
    let (shown, unprunable): (Vec<&Row<'_>>, Vec<&Row<'_>>) =
        report.tensors.rows.iter().partition(|r| r.choice.role.prunable());
    // From --masks-in masks the run starts from the masked weights, not the file's.
    let before = if args.masks_in.is_some() { "masked" } else { "before" };
    let header = ["tensor", "shape", "dtype", "pruned", "why", "target", before, "after"];
    print_table(&header, &shown, |r| cells(r), Some(footer))?;
    let mut notes: Vec<&str> = Vec::new();
    for note in shown.iter().filter_map(|r| r.choice.table_note()) {
        if !notes.contains(&note) {
            notes.push(note);
        }
    }
    for note in notes {
        outln!("{note}")?;
    }
    if let Some(counts) = unprunable_counts(&unprunable) {
        outln!("not in the table, as no option prunes them: {counts} (--json lists every tensor)")?;
    }
    outln!(
        "pruned tensors: {} params, sparsity {:.4}",
        t.pruned_tensors_parameters,
        t.pruned_tensors_sparsity_after
    )?;
    let how = match report.threshold {
        Some(th) => format!(", global threshold {th:.6e}"),
        None => String::new(),
    };
    let calibrated = match &report.calibration {
        Some(c) => format!(
            ", calibrated on {} sentences ({} tokens, at most {} each) of {}",
            c.sentences, c.tokens, c.max_len, c.texts
        ),
        None => String::new(),
    };
    let quantized = match &report.quantized {
        Some(scheme) => format!(
            ", quantized to {scheme}{} ({} to {} of tensors)",
            // Without --quantize, int8 tensors pruned again keep the scheme they had.
            if args.quantize.is_none() { ", the model's own scheme" } else { "" },
            byte_size(report.bytes_before),
            byte_size(report.bytes_after)
        ),
        None => String::new(),
    };
    let masks = match &report.masks_out {
        Some(m) => format!(" and the masks to {m}"),
        None => String::new(),
    };
    let mut at = sparsity_text(report.sparsity);
    // A floor's rounding toward zero is said by the floor; a --rounding given is named.
    if args.rounding.is_some() && report.rounding != shears_core::Rounding::default().to_string() {
        at.push_str(&format!(" (--rounding {})", report.rounding));
    }
    if report.min_density > 0.0 {
        at.push_str(&format!(" (--min-density {})", sparsity_text(report.min_density)));
    }
    let what = match &report.masks_in {
        // Without a target, the run applies the masks and prunes nothing more.
        // SparseGPT moves the weights the masks keep to make up for those they prune.
        Some(m) if report.sparsity == 0.0 && report.calibration.is_some() => {
            format!("{} from the masks of {m}", report.method)
        }
        Some(m) if report.sparsity == 0.0 => format!("the masks of {m}"),
        None if report.sparsity == 0.0 => "nothing pruned (--sparsity 0)".to_owned(),
        Some(m) => format!(
            "{} {}, {} scope, at {at} from the masks of {}",
            report.method, report.pattern, report.scope, m
        ),
        None => format!("{} {}, {} scope, at {at}", report.method, report.pattern, report.scope),
    };
    outln!("{what}{how}{calibrated}{quantized}: wrote {}{masks}", report.output)?;
    report.warnings.report();
    Ok(())
}
