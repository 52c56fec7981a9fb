//! `shears export`: a shears-nn MLP checkpoint or a BERT-family model folder, dense or
//! pruned, as an ONNX model.

use std::path::Path;

use anyhow::{Context, Result, bail};
use shears_models::{BertConfig, BertModel, SentenceConfig};
use shears_onnx::Opset;

use crate::cli::ExportArgs;

pub(crate) fn run(args: &ExportArgs) -> Result<()> {
    let opset = Opset::new(args.opset)?;
    let out = &args.output;
    shears_io::paths::check_output(out)?;
    if args.model.is_dir() && shears_io::paths::is_within(out, &args.model) {
        bail!(
            "refusing to write {}: it is inside the model folder {} (write the ONNX model elsewhere)",
            out.display(),
            args.model.display()
        );
    }
    let (model, what) = if args.model.is_dir() {
        let files = shears_io::Model::open(&args.model)?;
        let mut paths = vec![("--output", out.as_path(), true)];
        for shard in files.shards() {
            paths.push(("model", shard.path(), false));
        }
        shears_io::paths::check_distinct(&paths)?;
        let config = BertConfig::from_file(&args.model.join("config.json"))?;
        let bert = BertModel::from_weights(config, &files)?;
        let sentence = SentenceConfig::from_folder(&args.model)?;
        let what = format!(
            "BERT-family encoder, {} layers, hidden {}",
            bert.config().num_hidden_layers,
            bert.config().hidden_size
        );
        (shears_onnx::export_sentence_encoder(&bert, &sentence, opset)?, what)
    } else {
        shears_io::paths::check_distinct(&[
            ("MODEL", args.model.as_path(), false),
            ("--output", out.as_path(), true),
        ])?;
        let (mlp, _) = load_mlp(&args.model)?;
        let what = format!("MLP {:?}", mlp.sizes());
        (shears_onnx::export_mlp(&mlp, opset)?, what)
    };
    let bytes = shears_onnx::encode(&model)?;
    shears_io::write_atomic(out, &bytes)?;
    let nodes = model.graph.as_ref().map_or(0, |g| g.node.len());
    outln!(
        "exported {} ({what}) to {}: opset {}, {nodes} nodes, {:.1} MB",
        args.model.display(),
        out.display(),
        opset.get(),
        bytes.len() as f64 / 1e6
    )?;
    Ok(())
}

/// An MLP checkpoint, or an error that says what export takes.
fn load_mlp(path: &Path) -> Result<(shears_nn::Mlp<f32>, shears_core::Masks)> {
    shears_nn::checkpoint::load::<f32>(path).with_context(|| {
        format!(
            "cannot export {}: shears exports shears-nn MLP checkpoints (layers.N.weight and layers.N.bias) and BERT-family model folders",
            path.display()
        )
    })
}
