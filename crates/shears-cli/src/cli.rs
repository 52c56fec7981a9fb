//! The command line, typed with clap's derive API; values parse straight into the
//! library's types (`Sparsity`, `Criterion`, `Pattern`, `Scope`, `Rounding`, `Reduction`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use shears_core::{Reduction, Rounding, Sparsity};
use shears_strategies::{Criterion, Pattern, Scope};

/// Prune neural-network weights and make them run faster.
///
/// MODEL is a safetensors file, a Hugging Face model folder (with model.safetensors, or
/// shards and model.safetensors.index.json), or such an index file.
#[derive(Debug, Parser)]
#[command(name = "shears", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Prune a model's linear and convolution weights.
    ///
    /// By default the weights of linear and convolution layers are pruned, and
    /// embeddings, norms, poolers, output heads and a network's first convolution are
    /// left alone (the report's table says why for each 2-D and 4-D floating tensor and
    /// counts the others, such as biases and norms, which are never pruned); --all
    /// prunes every 2-D and 4-D floating tensor. The output is written atomically (a
    /// temporary beside it, renamed when complete; with direct I/O where the file
    /// system allows it, which SHEARS_BUFFERED_WRITES=1 turns off). A model folder
    /// gives a folder: the same shards, an updated index, and every other file copied
    /// (into a folder that holds other versions of those files, it refuses to run).
    Prune(Box<PruneArgs>),
    /// Per-tensor dtype, shape, sparsity, empty rows and columns, 2:4 conformity as
    /// `prune --pattern 2:4` makes it (along input channels for conv weights, down the
    /// columns of GPT-2's Conv1D weights recognised by name), also of mask files.
    Inspect(InspectArgs),
    /// Time each linear and convolution weight `prune` would choose by default (pruned or
    /// not) as a model runs it, dense (the faster of faer's GEMM and nalgebra's) and in
    /// the format shears picks for its zeros (int8 for a layer stored as int8, except a
    /// transposed one), and as int8 CSR and dense int8.
    Bench(BenchArgs),
    /// Train, prune and fine-tune an MLP on the embedded digits, every method side by
    /// side.
    Demo(DemoArgs),
    /// Embed sentences with a BERT-family sentence-transformer folder (dense or pruned).
    Embed(EmbedArgs),
    /// How much a pruned model keeps: its sentence embeddings against the dense model's
    /// (an int8 model twice: with integer products, and with its weights as f32).
    ///
    /// The cosines cover every sentence; the top-10 neighbour overlap compares every
    /// pair of sentences, so it covers the first 4096. With 12 sentences or fewer it
    /// compares all of a sentence's neighbours but one (none below 3 sentences).
    Eval(EvalArgs),
    /// Write a model as ONNX: a shears-nn MLP checkpoint (as `shears demo` writes) or a
    /// BERT-family model folder, dense or pruned (pruned weights as zeros).
    ///
    /// An MLP takes `input` [batch, features] and gives `logits`; an encoder takes
    /// `input_ids`, `attention_mask` and `token_type_ids` (int64 [batch, sequence]) and
    /// gives `last_hidden_state` and the pooled `sentence_embedding`.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub(crate) struct PruneArgs {
    /// The model to prune (never modified): a .safetensors file, a model folder, or a
    /// model.safetensors.index.json.
    pub(crate) input: PathBuf,
    /// Where to write the pruned model: a file for a file (its name ending in
    /// .safetensors), a folder for a folder.
    #[arg(short, long)]
    pub(crate) output: PathBuf,
    /// Target sparsity in [0, 1]: of each tensor, or of all chosen tensors together in
    /// global scope. Default: N:M's own with --pattern N:M (0.5 for 2:4), 0 with
    /// --masks-in (apply the masks only), else required.
    #[arg(short, long, allow_negative_numbers = true)]
    pub(crate) sparsity: Option<Sparsity>,
    /// What scores the weights: magnitude (|w|), gradient (|w*g| summed over the --grads
    /// files), random (seeded by --seed); or, for a BERT-family model folder with
    /// --calib text, wanda (|w|*||x||, compared within each row) or sparsegpt (which also
    /// updates the kept weights to keep each layer's output).
    #[arg(long, default_value = "magnitude")]
    pub(crate) method: MethodArg,
    /// Calibration text for wanda and sparsegpt: one sentence per line.
    #[arg(long, value_name = "FILE")]
    pub(crate) calib: Option<PathBuf>,
    /// How many lines of --calib to use.
    #[arg(
        long,
        default_value_t = 128,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000),
        allow_negative_numbers = true,
    )]
    pub(crate) calib_samples: u32,
    /// Tokens per calibration sentence, longer ones truncated [default: 128, or the
    /// model's own limit if that is shorter].
    #[arg(
        long,
        value_parser = clap::value_parser!(u32).range(3..=65_536),
        allow_negative_numbers = true,
    )]
    pub(crate) max_len: Option<u32>,
    /// The structure kept: unstructured, per-row, rows, columns, filters, channels (conv
    /// input channels), N:M (N kept of every M consecutive inputs, e.g. 2:4; along
    /// input channels for conv weights) or block:RxC (e.g. block:4x4).
    #[arg(long, default_value = "unstructured")]
    pub(crate) pattern: Pattern,
    /// layer: each tensor pruned to the target; global: one threshold across all chosen
    /// tensors (unstructured only).
    #[arg(long, default_value = "layer")]
    pub(crate) scope: Scope,
    /// Keep at least this fraction of every tensor (in layer scope each count then
    /// rounds toward zero, so that none keeps less; global scope gives what a capped
    /// tensor cannot take to the others).
    #[arg(
        long,
        default_value_t = 0.0,
        value_parser = parse_fraction,
        allow_negative_numbers = true,
    )]
    pub(crate) min_density: f64,
    /// How sparsity x count becomes a number of weights (or rows, channels, blocks):
    /// half-even (PyTorch's), truncate or ceil; N:M prunes a fixed count of every group
    /// [default: half-even].
    #[arg(long)]
    pub(crate) rounding: Option<Rounding>,
    /// How rows, columns, filters, channels and blocks are scored from their weights'
    /// scores: l2 (PyTorch's ln_structured with n=2), l1 or sum [default: l2].
    #[arg(long)]
    pub(crate) reduction: Option<Reduction>,
    /// Prune only tensors whose name matches this regular expression (repeatable; it
    /// overrides the default choice, not the rule that only 2-D and 4-D floating
    /// tensors can be pruned).
    #[arg(long, value_name = "REGEX")]
    pub(crate) include: Vec<String>,
    /// Leave tensors whose name matches this regular expression (repeatable).
    #[arg(long, value_name = "REGEX")]
    pub(crate) exclude: Vec<String>,
    /// Prune every 2-D and 4-D floating tensor, embeddings and heads included.
    #[arg(long)]
    pub(crate) all: bool,
    /// Tensors whose name matches this regular expression are stored (in, out), as
    /// GPT-2's Conv1D (recognised by name otherwise): patterns run along (out, in). It
    /// says how they are stored, not whether they are pruned: an embedding, pooler or
    /// head matched stays unpruned unless --include or --all chooses it.
    #[arg(long, value_name = "REGEX")]
    pub(crate) transposed: Vec<String>,
    /// Gradients for --method gradient, same names and shapes as the weights; several
    /// files (one per batch) are summed as |w*g| per batch.
    #[arg(long, value_name = "FILE")]
    pub(crate) grads: Vec<PathBuf>,
    /// Importance scores to prune by, same names and shapes as the weights (higher is
    /// kept), instead of --method.
    #[arg(long, value_name = "FILE", conflicts_with = "grads")]
    pub(crate) scores: Option<PathBuf>,
    /// Start from these masks (a safetensors file of NAME_mask tensors, as --masks-out
    /// writes and torch.nn.utils.prune saves): their pruned weights stay pruned, and
    /// the target is reached among the kept ones.
    #[arg(long, value_name = "FILE")]
    pub(crate) masks_in: Option<PathBuf>,
    /// Also write the masks: a safetensors file (its name ending in .safetensors) of
    /// NAME_mask u8 tensors (1 = keep) in the weights' shapes, which
    /// torch.nn.utils.prune.custom_from_mask takes.
    #[arg(long, value_name = "FILE")]
    pub(crate) masks_out: Option<PathBuf>,
    /// Also quantize the pruned weights to int8 (symmetric; zeros stay zero): int8 with
    /// one scale per row of the stored tensor (a layer's output row; an input row for
    /// GPT-2's transposed Conv1D weights), or int8:group=G with one per row and per G
    /// columns. Each pruned tensor NAME is written as I8 in its own shape beside its
    /// F32 scales NAME.scale (one per row, or rows x ceil(cols/G)); shears reads such a
    /// model back as floating point everywhere.
    #[arg(long, value_name = "int8[:group=G]")]
    pub(crate) quantize: Option<shears_sparse::QuantScheme>,
    /// Seed for --method random [default: 0].
    #[arg(long, value_parser = parse_seed, allow_negative_numbers = true)]
    pub(crate) seed: Option<u64>,
    /// Print one JSON document (a record of the run) instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The model or mask file to inspect.
    pub(crate) input: PathBuf,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// The (pruned) model to benchmark.
    pub(crate) input: PathBuf,
    /// Batch sizes to time, comma-separated, each 1 to 65536 (a size given twice is
    /// timed once; smallest first, whatever the order given; a setting's time is the
    /// median of repeated runs):
    /// per layer, the input vectors (tokens) of one product; with --texts, sentences of
    /// --seq-len tokens each, so a batch of 1 is already 128 tokens by default (at most
    /// 131072 tokens a batch).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,32",
        value_parser = parse_batch,
        allow_negative_numbers = true,
    )]
    pub(crate) batch: Vec<usize>,
    /// Spatial size of convolution inputs, HxW: a conv layer is timed as its im2col
    /// product over H*W positions per sample [default: 14x14].
    #[arg(long, value_name = "HxW", value_parser = parse_spatial, allow_negative_numbers = true)]
    pub(crate) spatial: Option<(usize, usize)>,
    /// Time every 2-D and 4-D floating tensor, embeddings and heads included.
    #[arg(long)]
    pub(crate) all: bool,
    /// Time the whole model instead of its layers (a BERT-family folder): sentences of
    /// --seq-len tokens cut from this text, --batch sentences at a time, dense (f32) and
    /// with each pruned layer in the format that runs it fastest (int8 layers in integer
    /// products, or their weights dequantized, dense or sparse, where that is faster; the
    /// CSR and N:M layers of a bf16 or f16 checkpoint with its half-precision values).
    #[arg(long, value_name = "FILE")]
    pub(crate) texts: Option<PathBuf>,
    /// Tokens per sentence for --texts, the special tokens included (3 up to the model's
    /// position embeddings, 512 for BERT) [default: 128, or the folder's max_seq_length
    /// (else its position embeddings) if shorter; `embed` cuts sentences at max_seq_length].
    #[arg(
        long,
        value_parser = clap::value_parser!(u32).range(3..=65_536),
        allow_negative_numbers = true,
    )]
    pub(crate) seq_len: Option<u32>,
    /// Print one JSON document instead of the table. Per layer: `tensors`, each batch's
    /// row with `dense_us`, `sparse_us` (the table's "picked us", in `format`),
    /// `int8_csr_us` and `int8_dense_us`; per batch: `total`, with `chosen_us` (formats
    /// as picked) and `best_us` (dense where that is faster). With --texts, `settings`: a
    /// batch each, with the whole model's `dense_ms` and `sparse_ms` (median, min, max,
    /// runs), and each linear layer's timed formats under `layers`.
    #[arg(long)]
    pub(crate) json: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

#[derive(Debug, Args)]
pub(crate) struct EmbedArgs {
    /// The model folder (config.json, tokenizer.json, the weights).
    pub(crate) model: PathBuf,
    /// The sentences, one per line.
    #[arg(long, value_name = "FILE")]
    pub(crate) texts: PathBuf,
    /// Write the embeddings here: a .safetensors file with an F32 tensor `embeddings` of
    /// shape [sentences, hidden] and an I64 tensor `lines`, the line of FILE (counted
    /// from 1) each row embeds, and metadata naming the model folder and FILE (model,
    /// texts, max_len, pooling, normalized, linear_layers: the formats the layers ran in,
    /// e.g. `36 dense`, shears). Give it, --json, or both
    /// (--fastest alone only reports its timing).
    #[arg(short, long, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
    /// Tokens per sentence (default: the model's max_seq_length).
    #[arg(
        long,
        value_parser = clap::value_parser!(u32).range(3..=65_536),
        allow_negative_numbers = true,
    )]
    pub(crate) max_len: Option<u32>,
    /// How many lines of --texts to embed (blank lines are skipped and not counted).
    #[arg(
        long,
        default_value_t = 100_000,
        value_parser = clap::value_parser!(u32).range(1..=10_000_000),
        allow_negative_numbers = true,
    )]
    pub(crate) limit: u32,
    /// Print the embeddings as one JSON document (`embeddings`: one array per sentence)
    /// instead of the summary.
    #[arg(long)]
    pub(crate) json: bool,
    /// Run each pruned layer in the format that a timed product shows fastest at this
    /// input's token count, and int8 layers in integer arithmetic where that is faster
    /// than their dequantized weights, dense or sparse (the plan `bench --texts` times),
    /// then time the whole model with that plan against dense on the first sentences (up
    /// to 4096 tokens) and keep the plan only if it is at least 2% faster (the summary
    /// says which ran, and how long loading and planning took beside the embedding;
    /// `--json` has `whole_model` where a plan was compared). Without it every layer
    /// runs dense in f32, so the embeddings depend on the weights alone; with it they
    /// differ from those by rounding (int8 layers: by their inputs' rounding to int8),
    /// and the plan can change from run to run on a busy machine. Timing the layers and
    /// the model takes seconds, longer than embedding a few hundred sentences, which
    /// only a long input wins back.
    #[arg(long)]
    pub(crate) fastest: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

/// `export --quantize`: int8 per output row, the one scheme MatMulInteger's scales take.
fn per_row_int8(text: &str) -> Result<shears_sparse::QuantScheme, String> {
    match text.parse() {
        Ok(shears_sparse::QuantScheme::PerRow) => Ok(shears_sparse::QuantScheme::PerRow),
        Ok(_) => Err("ONNX export quantizes per output row (int8): MatMulInteger has no \
                       per-group scales"
            .to_owned()),
        Err(_) => Err("expected int8 (ONNX export quantizes per output row)".to_owned()),
    }
}

/// How an int8 ONNX graph quantizes activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ActivationQuant {
    /// One scale per layer input tensor.
    PerTensor,
    /// One scale per token.
    PerToken,
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// The model: a .safetensors MLP checkpoint or a model folder (config.json and the
    /// weights; its sentence-transformers files choose the pooling).
    pub(crate) model: PathBuf,
    /// The .onnx file to write (a name that does not end in .onnx is refused: it may be a
    /// checkpoint or another file to keep).
    #[arg(short, long, value_name = "FILE")]
    pub(crate) output: PathBuf,
    /// The ONNX operator set (17 to 21).
    #[arg(long, default_value_t = shears_onnx::DEFAULT_OPSET, allow_negative_numbers = true)]
    pub(crate) opset: i64,
    /// Write linear layers' weights as int8, symmetric per output row (zeros stay zero),
    /// multiplied by MatMulInteger with activations quantized as the graph runs.
    #[arg(long, value_name = "int8", value_parser = per_row_int8)]
    pub(crate) quantize: Option<shears_sparse::QuantScheme>,
    /// With --quantize: one scale for each layer's whole input (per-tensor, the default;
    /// ONNX Runtime fuses it into its int8 kernels, the fastest) or one per token
    /// (per-token; closer to f32, slower in ONNX Runtime).
    #[arg(long, value_enum)]
    pub(crate) activations: Option<ActivationQuant>,
    /// Write each linear layer's weight, where that is smaller than dense (above about
    /// 67% sparsity in f32, 89% in int8), as a Constant holding a SparseTensorProto (its
    /// nonzero values and their indices). ONNX Runtime densifies them when it loads the
    /// model: a smaller file, the same speed.
    #[arg(long)]
    pub(crate) sparse_initializers: bool,
    /// Write the initializers of 1 KiB or more to OUTPUT.data beside the .onnx file
    /// (ONNX external data, which ONNX Runtime reads from there), replacing a file of that
    /// name as the model replaces OUTPUT. Models past protobuf's 2 GiB limit get it
    /// without asking.
    #[arg(long)]
    pub(crate) external_data: bool,
    /// No progress bar: export shows none, and takes -q as every command does, so that
    /// scripts can pass it to all of them.
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

#[derive(Debug, Args)]
pub(crate) struct EvalArgs {
    /// The dense model folder.
    pub(crate) dense: PathBuf,
    /// The pruned model folder.
    pub(crate) pruned: PathBuf,
    /// The sentences to compare on, one per line (use ones the pruning did not see).
    #[arg(long, value_name = "FILE")]
    pub(crate) texts: PathBuf,
    /// Tokens per sentence (default: the model's max_seq_length).
    #[arg(
        long,
        value_parser = clap::value_parser!(u32).range(3..=65_536),
        allow_negative_numbers = true,
    )]
    pub(crate) max_len: Option<u32>,
    /// How many lines of --texts to use (blank lines are skipped and not counted).
    #[arg(
        long,
        default_value_t = 100_000,
        value_parser = clap::value_parser!(u32).range(2..=1_000_000),
        allow_negative_numbers = true,
    )]
    pub(crate) limit: u32,
    /// Print one JSON document instead of the summary: the measures with the pruned
    /// model's weights as f32 (`"weights": "f32"`), and for an int8 model the same
    /// measures with integer products under `int8_products`.
    #[arg(long)]
    pub(crate) json: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Where to write the accuracy-against-sparsity plot (a name ending in .svg).
    #[arg(long, default_value = "shears-demo.svg")]
    pub(crate) plot: PathBuf,
    /// Where to save the trained dense network (a safetensors checkpoint to try
    /// `shears prune` on; a name ending in .safetensors).
    #[arg(long, default_value = "shears-demo.safetensors")]
    pub(crate) model: PathBuf,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

/// `--method`: a criterion that scores weights alone, or SparseGPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MethodArg {
    /// Magnitude, gradient, random or Wanda.
    Criterion(Criterion),
    /// SparseGPT.
    SparseGpt,
}

impl std::str::FromStr for MethodArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "sparsegpt" {
            return Ok(MethodArg::SparseGpt);
        }
        s.parse::<Criterion>()
            .map(MethodArg::Criterion)
            .map_err(|_| "one of magnitude, gradient, random, wanda, sparsegpt".to_owned())
    }
}

impl std::fmt::Display for MethodArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MethodArg::Criterion(c) => write!(f, "{c}"),
            MethodArg::SparseGpt => f.write_str("sparsegpt"),
        }
    }
}

/// The largest batch `bench` times.
pub(crate) const MAX_BATCH: usize = 65_536;

/// A `--batch` value: a whole number from 1 to [`MAX_BATCH`].
fn parse_batch(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(b) if (1..=MAX_BATCH).contains(&b) => Ok(b),
        _ => Err(format!("a batch is a whole number from 1 to {MAX_BATCH}")),
    }
}

/// A `--seed`: any 64-bit unsigned number.
fn parse_seed(s: &str) -> Result<u64, String> {
    s.trim().parse().map_err(|_| format!("a seed is a whole number from 0 to {}", u64::MAX))
}

/// A `--spatial` value: `HxW`, each side 1 to 4096.
fn parse_spatial(s: &str) -> Result<(usize, usize), String> {
    let side = |v: &str| v.trim().parse::<usize>().ok().filter(|n| (1..=4096).contains(n));
    match s.split_once('x').map(|(h, w)| (side(h), side(w))) {
        Some((Some(h), Some(w))) => Ok((h, w)),
        _ => Err("a spatial size is HxW, each side a whole number from 1 to 4096".into()),
    }
}

/// A fraction in [0, 1].
fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err("a number in [0, 1]".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_values() {
        assert_eq!(parse_batch("32"), Ok(32));
        assert!(parse_batch("0").is_err() && parse_batch("65537").is_err());
        assert!(parse_batch("18446744073709551616").is_err());
        assert_eq!(parse_spatial("56x56"), Ok((56, 56)));
        assert!(parse_spatial("56").is_err() && parse_spatial("0x4").is_err());
        assert_eq!(parse_fraction("0.1"), Ok(0.1));
        assert!(parse_fraction("-0.1").is_err() && parse_fraction("nan").is_err());
    }

    #[test]
    fn eval_help_names_the_neighbour_measures_bound() {
        use clap::CommandFactory;
        let command = Cli::command();
        let eval = command.find_subcommand("eval").unwrap();
        let about = eval.get_long_about().unwrap().to_string();
        let bound = format!("covers the first {}.", shears_models::NEIGHBOUR_SENTENCES);
        assert!(about.contains(&bound), "{about}");
    }
}
