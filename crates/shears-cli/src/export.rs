//! `shears export`: a shears-nn MLP checkpoint or a BERT-family model folder, dense or
//! pruned, as an ONNX model.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use shears_io::PendingFile;
use shears_models::SentenceTransformer;
use shears_onnx::{Activations, EXTERNAL_THRESHOLD, ExportOptions, Opset, Weights};

use crate::cli::{ActivationQuant, ExportArgs};

pub(crate) fn run(args: &ExportArgs) -> Result<()> {
    crate::hub::check_not_hub_id(&args.model)?;
    let opset = Opset::new(args.opset)?;
    let weights = match args.quantize {
        None => Weights::F32,
        // The argument's parser takes int8 per row alone.
        Some(_) => Weights::Int8(args.activations.unwrap_or(ActivationQuant::PerTensor).into()),
    };
    if let (Some(activations), None) = (args.activations, args.quantize) {
        let name = clap::ValueEnum::to_possible_value(&activations)
            .map_or_else(String::new, |v| v.get_name().to_owned());
        bail!(
            "--activations {name} says how int8 layers quantize their inputs: it takes --quantize int8 (f32 weights multiply f32 inputs)"
        );
    }
    let options = ExportOptions { opset, weights, sparse_initializers: args.sparse_initializers };
    let out = &args.output;
    // A config or shard index stands for its folder in prune, but export reads the
    // folder's other files too.
    if args.model.is_file() && args.model.extension().is_some_and(|e| e == "json") {
        bail!(
            "{} is JSON, a file of a model folder: export reads the whole folder (config, tokenizer, pooling), so give the folder, {}",
            args.model.display(),
            folder_of(&args.model).display()
        );
    }
    if args.model.is_dir() && !args.model.join("config.json").is_file() {
        bail!(
            "{} is not a model folder: it has no config.json (shears exports BERT-family model folders and shears-nn MLP checkpoints)",
            args.model.display()
        );
    }
    shears_io::paths::check_output(out)?;
    crate::outputs::check_extension(out, "onnx", "an ONNX model")?;
    let data_path = data_file(out)?;
    if args.external_data {
        shears_io::paths::check_output(&data_path)?;
    }
    if args.model.is_dir() && shears_io::paths::is_within(out, &args.model) {
        bail!(
            "refusing to write {}: it is inside the model folder {} (write the ONNX model elsewhere)",
            out.display(),
            args.model.display()
        );
    }
    let int8_stored;
    // Warnings, said once the model is written.
    let mut said = crate::report::Warnings::default();
    let (model, what) = if args.model.is_dir() {
        let files = shears_io::Model::open(&args.model)?;
        int8_stored = stored_int8(&files)?;
        let mut paths =
            vec![("--output", out.as_path(), true), ("external data", data_path.as_path(), true)];
        for shard in files.shards() {
            paths.push(("model", shard.path(), false));
        }
        // The files the folder's configuration and tokenizer are read from, wherever
        // they really are.
        let folder_files = crate::embed::folder_files(&args.model)?;
        paths.extend(folder_files.iter().map(|p| ("model", p.as_path(), false)));
        shears_io::paths::check_distinct(&paths)?;
        // Loaded as embed loads it, the tokenizer checked against the weights: the
        // exported model is only as usable as the tokenizer run before it.
        let SentenceTransformer { model: bert, sentence, .. } =
            SentenceTransformer::from_weights(&args.model, &files, None)?;
        if let Some(w) = crate::embed::unused_layers_warning(&args.model, &bert) {
            said.add(w);
        }
        let what = format!(
            "BERT-family encoder, {} layers, hidden {}",
            bert.config().num_hidden_layers,
            bert.config().hidden_size
        );
        let exported = shears_onnx::export_sentence_encoder(&bert, &sentence, &options)
            .with_context(|| args.model.display().to_string())?;
        (exported, what)
    } else {
        shears_io::paths::check_distinct(&[
            ("MODEL", args.model.as_path(), false),
            ("--output", out.as_path(), true),
            ("external data", data_path.as_path(), true),
        ])?;
        int8_stored = stored_int8(&shears_io::Model::open(&args.model)?)?;
        let (mut mlp, masks) = load_mlp(&args.model)?;
        // A checkpoint's `layers.N.weight_mask` tensors (as `shears demo` saves them) hold
        // which weights are pruned: the graph gets the weights they leave.
        for (name, mask) in &masks {
            if let Some(w) = shears_core::Prunable::weight_mut(&mut mlp, name) {
                mask.apply_in_place(w)?;
            }
        }
        let what = format!("MLP {:?}", mlp.sizes());
        let exported = shears_onnx::export_mlp(&mlp, &options)
            .with_context(|| args.model.display().to_string())?;
        (exported, what)
    };
    let mut model = model;
    // The model names its data file in UTF-8.
    let location = data_path.file_name().and_then(|n| n.to_str()).map(str::to_owned);
    let externalize = |model: &mut shears_onnx::proto::ModelProto| match &location {
        Some(location) => Ok(shears_onnx::externalize(model, location, EXTERNAL_THRESHOLD)),
        None => Err(anyhow::anyhow!(
            "{}: external data needs a file name in UTF-8, which the model names it by",
            data_path.display()
        )),
    };
    let mut data = if args.external_data { Some(externalize(&mut model)?) } else { None };
    let bytes = match shears_onnx::encode(&model) {
        // Past 2 GiB: external data without asking.
        Err(shears_onnx::Error::TooLarge { .. }) if data.is_none() => {
            shears_io::paths::check_output(&data_path)?;
            data = Some(externalize(&mut model)?);
            shears_onnx::encode(&model)?
        }
        encoded => encoded?,
    };
    // Nothing moved (no initializer of 1 KiB or more): no data file.
    let data = data.filter(|d| !d.is_empty());
    // A data file already there (an earlier export's, or any file of that name) is
    // replaced as the model is: the report says so.
    let replaces_data = data.is_some() && data_path.is_file();
    // Each file is staged beside the one it replaces, so the old one still counts.
    let mut needs = vec![(out.as_path(), bytes.len() as u64)];
    if let Some(data) = &data {
        needs.push((data_path.as_path(), data.len() as u64));
    }
    crate::outputs::check_fits(&needs)?;
    // The model and its data land together; the data first, so that a failure between
    // the two renames leaves the old model, not a new one without its data.
    let mut files = Vec::new();
    for (path, content) in [(data_path.as_path(), data.as_ref()), (out.as_path(), Some(&bytes))] {
        let Some(content) = content else { continue };
        let (pending, mut file) = PendingFile::create(path)?;
        file.write_all(content).with_context(|| format!("cannot write {}", path.display()))?;
        files.push((pending, file));
    }
    shears_io::commit_all(files)?;
    let nodes = model.graph.as_ref().map_or(0, |g| g.node.len());
    outln!(
        "exported {} ({what}, {}) to {}: opset {}, {nodes} nodes, {}",
        args.model.display(),
        match weights {
            Weights::F32 => "f32 weights",
            Weights::Int8(Activations::PerTensor) => "int8 weights, activations per tensor",
            Weights::Int8(Activations::PerToken) => "int8 weights, activations per token",
        },
        out.display(),
        opset.get(),
        crate::report::byte_size(bytes.len() as u64)
    )?;
    if let Some(data) = &data {
        outln!(
            "initializers of 1 KiB or more: {} ({}){}",
            data_path.display(),
            crate::report::byte_size(data.len() as u64),
            if replaces_data { ", replacing the file that was there" } else { "" }
        )?;
    }
    if args.sparse_initializers {
        let sparse = model.graph.as_ref().map_or(0, |g| {
            let holds_sparse = |n: &&shears_onnx::proto::NodeProto| {
                n.op_type() == "Constant" && n.attribute.iter().any(|a| a.name() == "sparse_value")
            };
            g.node.iter().filter(holds_sparse).count()
        });
        // The break-even the help gives: an index (8 bytes) per kept value against a
        // dense value of 4 bytes (f32) or 1 (int8).
        let break_even = match weights {
            Weights::F32 => "about two thirds zeros in f32",
            Weights::Int8(_) => "about 89% zeros in int8",
        };
        match sparse {
            0 => outln!(
                "--sparse-initializers: no weight is sparse enough to take fewer bytes sparse ({break_even}); all are dense"
            )?,
            n => outln!("--sparse-initializers: {n} weights written sparse")?,
        }
    }
    match (int8_stored, weights) {
        (Some(_), Weights::F32) => outln!(
            "the model's int8 layers were written as f32 (their values times their scales); --quantize int8 exports int8 weights"
        )?,
        (Some(Some(group)), Weights::Int8(_)) => outln!(
            "the model's int8 layers, quantized in groups of {group} columns, were quantized again per output row (their values times their scales, rounded a second time): MatMulInteger takes one scale per row"
        )?,
        _ => {}
    }
    said.report();
    Ok(())
}

/// How `model` stores int8 tensors: `None` without any, else `Some` of their group of
/// columns (`None` for one scale per row; the largest where shards differ).
fn stored_int8(model: &shears_io::Model) -> Result<Option<Option<usize>>> {
    if !model.tensors().any(|t| t.info.dtype == shears_io::Dtype::I8) {
        return Ok(None);
    }
    let mut group = None;
    for shard in model.shards() {
        group = group.max(shears_io::quantization_group(shard.path(), shard.metadata())?);
    }
    Ok(Some(group))
}

/// Where `out`'s external data goes: `OUT.data` beside it.
fn data_file(out: &Path) -> Result<PathBuf> {
    let Some(name) = out.file_name() else {
        bail!("{} names no file", out.display());
    };
    let mut name = name.to_owned();
    name.push(".data");
    Ok(out.with_file_name(name))
}

/// An MLP checkpoint, or an error that says what export takes.
fn load_mlp(path: &Path) -> Result<(shears_nn::Mlp<f32>, shears_core::Masks)> {
    shears_nn::checkpoint::load::<f32>(path).map_err(|e| match e {
        // Not laid out as an MLP: say what exports. Any other error (a value, the file,
        // memory) is about the checkpoint as it is, and says so itself.
        shears_nn::Error::BadCheckpoint { .. } => {
            // The weights of a model folder: the folder is what exports.
            let folder = match model_folder_of(path) {
                Some(folder) => format!(" (give its folder, {})", folder.display()),
                None => String::new(),
            };
            anyhow::Error::from(e).context(format!(
                "cannot export {}: shears exports shears-nn MLP checkpoints (layers.N.weight and layers.N.bias) and BERT-family model folders{folder}",
                path.display()
            ))
        }
        e => e.into(),
    })
}

/// The folder `file` is in.
pub(crate) fn folder_of(file: &Path) -> &Path {
    file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// The folder `file` is in if that folder is a model folder (it has a `config.json`).
pub(crate) fn model_folder_of(file: &Path) -> Option<&Path> {
    let folder = folder_of(file);
    folder.join("config.json").is_file().then_some(folder)
}

impl From<ActivationQuant> for Activations {
    fn from(a: ActivationQuant) -> Self {
        match a {
            ActivationQuant::PerTensor => Activations::PerTensor,
            ActivationQuant::PerToken => Activations::PerToken,
        }
    }
}
