//! shears-models: real transformers, pruned with the methods that keep them working.
//!
//! - [`BertModel`] is a BERT-family encoder on nalgebra, loaded from a Hugging Face
//!   folder (`config.json`, `model.safetensors` or its shards; f32, f16 or bf16), and
//!   [`SentenceTransformer`] adds the folder's tokenizer (`tokenizer.json`, through the
//!   `tokenizers` crate) and sentence-transformers' pooling, so it embeds sentences as
//!   PyTorch does;
//! - every linear layer is a [`Linear`], dense (one faer GEMM over all of a batch's
//!   tokens) or in any shears-sparse format, and each layer's inputs can be observed;
//! - [`prune_model`] calibrates and prunes the encoder layer by layer with Wanda or
//!   SparseGPT ([`Method`]) from calibration text, or by magnitude;
//! - [`choose_formats`] runs each pruned layer in the sparse format `choose_format`
//!   proposes (or the N:M pattern its zeros follow, or CSR a little below its
//!   break-even) where a timed product shows it beats the dense GEMM, and dense
//!   elsewhere;
//! - [`agreement`] measures what a pruned model keeps: the cosine between its sentence
//!   embeddings and the dense model's, and how many nearest neighbours stay.
//!
//! The key decision: sentences are packed, not padded. A batch holds every sentence's
//! tokens one after another and attention runs per sentence, which is what a padded
//! batch with its attention mask computes, without computing on the padding.
//!
//! ```no_run
//! use std::path::Path;
//! use shears_core::{Rounding, Sparsity};
//! use shears_models::{Method, PruneSpec, SentenceTransformer, agreement, prune_model};
//! use shears_strategies::Pattern;
//!
//! let folder = Path::new("all-MiniLM-L6-v2");
//! let dense = SentenceTransformer::load(folder, None)?;
//! let mut pruned = dense.clone();
//! let calibration = pruned.tokenizer.encode(&["A calibration sentence.", "Another one."])?;
//! let spec = PruneSpec {
//!     method: Method::Wanda,
//!     pattern: Pattern::Unstructured,
//!     sparsity: Sparsity::new(0.5)?,
//!     rounding: Rounding::HalfEven,
//! };
//! prune_model(&mut pruned.model, &calibration, &spec, &|_| true, None, &mut |_| {})?;
//! let texts = ["How well does the pruned model embed this?"];
//! let kept = agreement(&dense.embed(&texts)?, &pruned.embed(&texts)?)?;
//! println!("mean cosine {:.3}", kept.mean_cosine);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod attention;
mod bert;
mod config;
mod error;
mod eval;
mod formats;
mod linear;
mod math;
mod prune;
mod tokenize;

pub use bert::{
    BertModel, EncoderLayer, LayerNorm, SentenceTransformer, Site, TOKENS_PER_PASS, pool,
};
pub use config::{Activation, BertConfig, Pooling, SentenceConfig};
pub use error::{Error, Result};
pub use eval::{Agreement, Comparison, NEIGHBOUR_SENTENCES, agreement};
pub use formats::{FormatChoice, TIMING_TOKENS, choose_formats};
pub use linear::{Linear, int8_matrix};
pub use prune::{
    MAX_GRAM_INPUTS, Method, PruneSpec, PrunedLinear, Step, check_gram_inputs, prune_model,
};
pub use tokenize::{Batch, Fit, TextEncoder, WordPool, read_numbered_texts, read_texts};
