//! The command line, typed with clap's derive API.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use shears_core::Sparsity;
use shears_strategies::{Criterion, Pattern, Scope};

/// Prune neural-network weights and make them run faster.
#[derive(Debug, Parser)]
#[command(name = "shears", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Prune the 2-D (and 4-D conv) weights of a safetensors checkpoint.
    ///
    /// The output is written with direct I/O where the filesystem allows it; set
    /// SHEARS_BUFFERED_WRITES=1 to write through the page cache instead.
    Prune(PruneArgs),
    /// Per-tensor dtype, shape, sparsity, empty rows and columns, 2:4 conformity.
    Inspect(InspectArgs),
    /// Time dense and sparse products of every pruned 2-D tensor.
    Bench(BenchArgs),
    /// Train, prune and fine-tune an MLP on the embedded digits, side by side.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub(crate) struct PruneArgs {
    /// The checkpoint to prune (never modified).
    pub(crate) input: PathBuf,
    /// Where to write the pruned checkpoint (atomically; must differ from the input).
    #[arg(short, long)]
    pub(crate) output: PathBuf,
    /// Target sparsity in [0, 1] (of each tensor, or of all selected tensors in global scope).
    #[arg(short, long)]
    pub(crate) sparsity: Sparsity,
    /// What scores the weights: magnitude (|w|), gradient (|w*g|, with --grads) or
    /// random (seeded by --seed).
    #[arg(long, default_value = "magnitude")]
    pub(crate) method: Criterion,
    /// The structure kept: unstructured, per-row, rows (conv filters), columns, N:M (e.g.
    /// 2:4) or block:RxC.
    #[arg(long, default_value = "unstructured")]
    pub(crate) pattern: Pattern,
    /// Prune each tensor to the target (layer), or rank all selected tensors together
    /// (global).
    #[arg(long, default_value = "layer")]
    pub(crate) scope: Scope,
    /// Only tensors whose name matches (repeatable; default: every 2-D and 4-D float tensor).
    #[arg(long)]
    pub(crate) include: Vec<String>,
    /// Leave tensors whose name matches (repeatable).
    #[arg(long)]
    pub(crate) exclude: Vec<String>,
    /// Gradients for --method gradient: same names and shapes as the weights.
    #[arg(long)]
    pub(crate) grads: Option<PathBuf>,
    /// Seed for --method random.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Also write the masks (shears' mask-set format).
    #[arg(long)]
    pub(crate) masks_out: Option<PathBuf>,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The checkpoint to inspect.
    pub(crate) input: PathBuf,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// The (pruned) checkpoint to benchmark.
    pub(crate) input: PathBuf,
    /// Batch sizes to time, comma-separated (each 1 to 65536).
    #[arg(long, value_delimiter = ',', default_value = "1,32", value_parser = parse_batch)]
    pub(crate) batch: Vec<usize>,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Where to write the accuracy-against-sparsity plot.
    #[arg(long, default_value = "shears-demo.svg")]
    pub(crate) plot: PathBuf,
    /// Where to save the trained dense network (a safetensors checkpoint to try
    /// `shears prune` on).
    #[arg(long, default_value = "shears-demo.safetensors")]
    pub(crate) model: PathBuf,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
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
