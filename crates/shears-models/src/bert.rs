//! [`BertModel`]: a BERT-family encoder on nalgebra, loaded from a Hugging Face folder,
//! and [`SentenceTransformer`]: the encoder with its tokenizer and pooling.

use std::path::{Path, PathBuf};

use nalgebra::{DMatrix, DVector};
use rayon::prelude::*;
use shears_io::{Dtype, Model};
use shears_sparse::{Format, Int8Matrix, Layout, Orientation};

use crate::attention::{Projections, self_attention};
use crate::config::{Activation, BertConfig, Pooling, SentenceConfig};
use crate::error::{Error, Result};
use crate::linear::{Linear, StackedCache, int8_matrix, stacked_forward};
use crate::math::layer_norm;
use crate::tokenize::{Batch, TextEncoder, check_lengths};

/// Tokens run through the encoder at once when embedding many texts: bounds the memory
/// of the activations (`intermediate_size` values per token) whatever the input's size.
pub const TOKENS_PER_PASS: usize = 8192;

/// Where a linear layer's input comes from: what a calibration pass observes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    /// The layer's input, which the query, key and value projections share.
    Attention,
    /// The attention's context, the input of its output projection.
    AttentionOutput,
    /// The attention block's output, the input of the feed-forward's first projection.
    Intermediate,
    /// The activations of the feed-forward, the input of its second projection.
    Output,
}

/// A layer norm's scale, shift and epsilon.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f64,
}

impl LayerNorm {
    /// The scale (`γ`), one per hidden unit.
    pub fn weight(&self) -> &[f32] {
        &self.gamma
    }

    /// The shift (`β`), one per hidden unit.
    pub fn bias(&self) -> &[f32] {
        &self.beta
    }

    /// The epsilon added to the variance.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// Normalises every column (token) of `x` in place.
    fn apply(&self, x: &mut DMatrix<f32>) {
        let hidden = x.nrows();
        if hidden == 0 {
            return;
        }
        x.as_mut_slice()
            .par_chunks_mut(hidden)
            .for_each(|token| layer_norm(token, &self.gamma, &self.beta, self.eps));
    }

    /// Adds `residual` (the same shape as `x`) to `x` and normalises every column (token)
    /// of the sum in place: a residual connection and its norm in one pass over the
    /// tokens, on rayon's threads.
    fn add_and_apply(&self, x: &mut DMatrix<f32>, residual: &DMatrix<f32>) {
        debug_assert_eq!(x.shape(), residual.shape());
        let hidden = x.nrows();
        if hidden == 0 {
            return;
        }
        let residual = residual.as_slice().par_chunks(hidden);
        x.as_mut_slice().par_chunks_mut(hidden).zip(residual).for_each(|(token, residual)| {
            token.iter_mut().zip(residual).for_each(|(v, r)| *v += r);
            layer_norm(token, &self.gamma, &self.beta, self.eps);
        });
    }
}

/// One encoder layer: self-attention, then the feed-forward block, each with a residual
/// connection and a layer norm after it (BERT's post-norm).
#[derive(Debug, Clone)]
pub struct EncoderLayer {
    /// The query projection.
    pub query: Linear,
    /// The key projection.
    pub key: Linear,
    /// The value projection.
    pub value: Linear,
    /// The attention's output projection.
    pub attention_output: Linear,
    attention_norm: LayerNorm,
    /// The feed-forward's first projection (`hidden -> intermediate`).
    pub intermediate: Linear,
    /// The feed-forward's second projection (`intermediate -> hidden`).
    pub output: Linear,
    output_norm: LayerNorm,
    /// The query, key and value projections as one layer, where they run in one sparse
    /// format ([`crate::linear::stacked`]): a second copy of their weights, in that
    /// format, while the model runs so.
    projections: StackedCache,
}

impl EncoderLayer {
    /// The layer norm after the attention block.
    pub fn attention_norm(&self) -> &LayerNorm {
        &self.attention_norm
    }

    /// The layer norm after the feed-forward block.
    pub fn output_norm(&self) -> &LayerNorm {
        &self.output_norm
    }

    /// The six linear layers with the site of their input, in the order they run.
    pub fn linears(&self) -> [(Site, &Linear); 6] {
        [
            (Site::Attention, &self.query),
            (Site::Attention, &self.key),
            (Site::Attention, &self.value),
            (Site::AttentionOutput, &self.attention_output),
            (Site::Intermediate, &self.intermediate),
            (Site::Output, &self.output),
        ]
    }

    /// The six linear layers, mutably, with their sites.
    pub fn linears_mut(&mut self) -> [(Site, &mut Linear); 6] {
        [
            (Site::Attention, &mut self.query),
            (Site::Attention, &mut self.key),
            (Site::Attention, &mut self.value),
            (Site::AttentionOutput, &mut self.attention_output),
            (Site::Intermediate, &mut self.intermediate),
            (Site::Output, &mut self.output),
        ]
    }

    /// Checks what a pass relies on: `lengths` adding up to the columns of `x`, `heads`
    /// dividing its rows, and every linear layer (they are public fields, which a caller
    /// may replace) of the shape the layer's hidden size and its intermediate one take.
    fn check(&self, x: &DMatrix<f32>, lengths: &[usize], heads: usize) -> Result<()> {
        check_lengths(lengths, x.ncols())?;
        let hidden = x.nrows();
        if heads == 0 || !hidden.is_multiple_of(heads) {
            return Err(Error::Argument(format!(
                "{heads} attention heads do not divide the hidden size {hidden}"
            )));
        }
        let inner = self.intermediate.shape().0;
        let shapes = [
            (&self.query, (hidden, hidden)),
            (&self.key, (hidden, hidden)),
            (&self.value, (hidden, hidden)),
            (&self.attention_output, (hidden, hidden)),
            (&self.intermediate, (inner, hidden)),
            (&self.output, (hidden, inner)),
        ];
        for (linear, shape) in shapes {
            if linear.shape() != shape {
                return Err(Error::Argument(format!(
                    "`{}` is {:?} in a layer of hidden size {hidden}, where {shape:?} belongs",
                    linear.name(),
                    linear.shape()
                )));
            }
        }
        Ok(())
    }

    /// The layer's output for the packed sentences `x` (`lengths` tokens each), calling
    /// `observe` with the input of each linear layer before it runs (once for the query,
    /// key and value, which share theirs).
    ///
    /// # Errors
    /// Whatever `observe` returns; a shape error if `x` is not `hidden x tokens`.
    pub fn forward(
        &self,
        x: &DMatrix<f32>,
        lengths: &[usize],
        heads: usize,
        activation: Activation,
        observe: &mut dyn FnMut(Site, &DMatrix<f32>) -> Result<()>,
    ) -> Result<DMatrix<f32>> {
        let hidden = self.run(x, lengths, heads, activation, Some(observe), true)?;
        hidden.ok_or_else(|| Error::Argument("internal error: a full pass has an output".into()))
    }

    /// [`EncoderLayer::forward`] observing nothing: the same bits, and the feed-forward
    /// pair's intermediate held by rows where both its layers prefer rows (N:M), so
    /// neither copies it between orientations.
    ///
    /// # Errors
    /// As [`EncoderLayer::forward`].
    fn infer(
        &self,
        x: &DMatrix<f32>,
        lengths: &[usize],
        heads: usize,
        activation: Activation,
    ) -> Result<DMatrix<f32>> {
        let hidden = self.run(x, lengths, heads, activation, None, true)?;
        hidden.ok_or_else(|| Error::Argument("internal error: a full pass has an output".into()))
    }

    /// Observes the inputs of the layer's linear layers, as [`EncoderLayer::forward`],
    /// without computing the output (the last projection and norm are skipped).
    ///
    /// # Errors
    /// As [`EncoderLayer::forward`].
    pub fn observe_inputs(
        &self,
        x: &DMatrix<f32>,
        lengths: &[usize],
        heads: usize,
        activation: Activation,
        observe: &mut dyn FnMut(Site, &DMatrix<f32>) -> Result<()>,
    ) -> Result<()> {
        self.run(x, lengths, heads, activation, Some(observe), false).map(drop)
    }

    fn run(
        &self,
        x: &DMatrix<f32>,
        lengths: &[usize],
        heads: usize,
        activation: Activation,
        mut observer: Option<&mut Observer<'_>>,
        output: bool,
    ) -> Result<Option<DMatrix<f32>>> {
        let observed = observer.is_some();
        let mut observe = |site: Site, m: &DMatrix<f32>| match observer.as_mut() {
            Some(observe) => observe(site, m),
            None => Ok(()),
        };
        self.check(x, lengths, heads)?;
        observe(Site::Attention, x)?;
        let hidden = x.nrows();
        let context = match stacked_forward(&[&self.query, &self.key, &self.value], x) {
            // Dense projections write their rows of one output.
            Some(qkv) => {
                let qkv = qkv?;
                let p = Projections { q: (&qkv, 0), k: (&qkv, hidden), v: (&qkv, 2 * hidden) };
                self_attention(p, hidden, heads, lengths)
            }
            None => match self.projections.get(&[&self.query, &self.key, &self.value]) {
                // Sparse projections in one format run as one product of their rows.
                Some(stacked) => {
                    let qkv = stacked.forward(x)?;
                    let p = Projections { q: (&qkv, 0), k: (&qkv, hidden), v: (&qkv, 2 * hidden) };
                    self_attention(p, hidden, heads, lengths)
                }
                None => {
                    let (q, k, v) =
                        (self.query.forward(x)?, self.key.forward(x)?, self.value.forward(x)?);
                    let p = Projections { q: (&q, 0), k: (&k, 0), v: (&v, 0) };
                    self_attention(p, hidden, heads, lengths)
                }
            },
        };
        observe(Site::AttentionOutput, &context)?;
        let mut attended = self.attention_output.forward(&context)?;
        drop(context);
        self.attention_norm.add_and_apply(&mut attended, x);
        observe(Site::Intermediate, &attended)?;
        let f = activation.elementwise();
        let by_rows =
            !observed && output && self.intermediate.prefers_rows() && self.output.prefers_rows();
        let mut out = if by_rows {
            // The intermediate goes from one sparse product to the next by rows, as their
            // kernels write and read it.
            let (columns, rows) = (Orientation::Columns, Orientation::Rows);
            let into_rows = Layout::new(columns, rows);
            let hidden = self.intermediate.forward_oriented(&attended, into_rows, Some(f))?;
            self.output.forward_oriented(&hidden, Layout::new(rows, columns), None)?
        } else {
            let hidden = self.intermediate.forward_then(&attended, Some(f))?;
            observe(Site::Output, &hidden)?;
            if !output {
                return Ok(None);
            }
            self.output.forward(&hidden)?
        };
        self.output_norm.add_and_apply(&mut out, &attended);
        Ok(Some(out))
    }
}

/// What sees the input of each linear layer of a pass ([`EncoderLayer::forward`]).
type Observer<'a> = dyn FnMut(Site, &DMatrix<f32>) -> Result<()> + 'a;

/// The embeddings: word, position and token type, summed and normalised. Each is
/// `hidden x count`: every token's (position's, type's) vector is a column, as the
/// checkpoint's rows are.
#[derive(Debug, Clone)]
struct Embeddings {
    word: DMatrix<f32>,
    position: DMatrix<f32>,
    token_type: DMatrix<f32>,
    norm: LayerNorm,
}

/// The layer numbers past the first `layers` that `model`'s tensor names
/// `{prefix}encoder.layer.N.` hold, each once and in order (`N` in plain decimal, as
/// `transformers` writes it).
fn layers_past(model: &Model, prefix: &str, layers: usize) -> Vec<usize> {
    let past: std::collections::BTreeSet<usize> = model
        .tensors()
        .filter_map(|t| {
            let rest = t.name.strip_prefix(prefix)?.strip_prefix("encoder.layer.")?;
            let (number, _) = rest.split_once('.')?;
            let plain = !number.is_empty()
                && number.bytes().all(|b| b.is_ascii_digit())
                && (number == "0" || !number.starts_with('0'));
            plain.then(|| number.parse::<usize>().ok()).flatten()
        })
        .filter(|&n| n >= layers)
        .collect();
    past.into_iter().collect()
}

/// A BERT-family encoder: embeddings and `num_hidden_layers` encoder layers, computing
/// in f32; the linear layers of an f16 or bf16 checkpoint keep their weights in it (see
/// [`Linear::set_format`]), the embeddings and norms are widened on load.
#[derive(Debug, Clone)]
pub struct BertModel {
    config: BertConfig,
    path: PathBuf,
    /// What the tensor names start with (`""`, or `"bert."` for a model with a head).
    prefix: String,
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
    /// Layer numbers of the checkpoint's tensors past `num_hidden_layers`.
    unused_layers: Vec<usize>,
}

impl BertModel {
    /// Loads the encoder of the Hugging Face folder `folder`: `config.json`, and the
    /// weights of `model.safetensors` or of the shards its index lists.
    ///
    /// # Errors
    /// [`Error::Config`] for a configuration shears cannot run; [`Error::Weight`] for a
    /// missing tensor, one of the wrong shape, or one holding NaN or infinity;
    /// [`Error::Io`] for unreadable weights.
    pub fn load(folder: &Path) -> Result<BertModel> {
        let config = BertConfig::from_file(&folder.join("config.json"))?;
        let model = Model::open(folder)?;
        Self::from_weights(config, &model)
    }

    /// Builds the encoder from `config` and the weights of `model`.
    ///
    /// # Errors
    /// [`Error::Argument`] for a config [`BertConfig::check`] refuses; otherwise as
    /// [`BertModel::load`].
    pub fn from_weights(config: BertConfig, model: &Model) -> Result<BertModel> {
        config.check()?;
        let prefix = ["", "bert."]
            .into_iter()
            .find(|p| model.find(&format!("{p}embeddings.word_embeddings.weight")).is_some())
            .ok_or_else(|| Error::Weight {
                path: model.path().to_owned(),
                tensor: "embeddings.word_embeddings.weight".into(),
                reason: "missing: this is not a BERT checkpoint".into(),
            })?;
        let weights = Weights { model, prefix };
        let h = config.hidden_size;
        let norm = |name: &str| -> Result<LayerNorm> {
            Ok(LayerNorm {
                gamma: weights.vector(&format!("{name}.weight"), h)?,
                beta: weights.vector(&format!("{name}.bias"), h)?,
                eps: config.layer_norm_eps,
            })
        };
        let embeddings = || -> Result<Embeddings> {
            Ok(Embeddings {
                word: weights.rows("embeddings.word_embeddings.weight", (config.vocab_size, h))?,
                position: weights.rows(
                    "embeddings.position_embeddings.weight",
                    (config.max_position_embeddings, h),
                )?,
                token_type: weights
                    .rows("embeddings.token_type_embeddings.weight", (config.type_vocab_size, h))?,
                norm: norm("embeddings.LayerNorm")?,
            })
        };
        let layer = |l: usize| -> Result<EncoderLayer> {
            let p = format!("encoder.layer.{l}");
            let linear =
                |name: &str, shape: (usize, usize)| weights.linear(&format!("{p}.{name}"), shape);
            let i = config.intermediate_size;
            Ok(EncoderLayer {
                query: linear("attention.self.query", (h, h))?,
                key: linear("attention.self.key", (h, h))?,
                value: linear("attention.self.value", (h, h))?,
                attention_output: linear("attention.output.dense", (h, h))?,
                attention_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                intermediate: linear("intermediate.dense", (i, h))?,
                output: linear("output.dense", (h, i))?,
                output_norm: norm(&format!("{p}.output.LayerNorm"))?,
                projections: StackedCache::default(),
            })
        };
        // The tensors are read, checked and laid out on rayon's threads, layers side by
        // side (most of a load is that work and the first touch of fresh memory, not the
        // file); the first error in the model's order is the one returned.
        let (embeddings, layers) = rayon::join(embeddings, || {
            (0..config.num_hidden_layers).into_par_iter().map(layer).collect::<Vec<_>>()
        });
        let embeddings = embeddings?;
        let layers = layers.into_iter().collect::<Result<Vec<_>>>()?;
        let unused_layers = layers_past(model, prefix, config.num_hidden_layers);
        Ok(BertModel {
            config,
            path: model.path().to_owned(),
            prefix: prefix.to_owned(),
            embeddings,
            layers,
            unused_layers,
        })
    }

    /// The layer numbers `N` of the checkpoint's `encoder.layer.N.` tensors that
    /// `config.json`'s `num_hidden_layers` leaves out, in order: the encoder runs the
    /// first layers only, as `transformers` does (it warns of the weights it did not
    /// use). Empty for a checkpoint that holds exactly the configured layers.
    pub fn unused_layers(&self) -> &[usize] {
        &self.unused_layers
    }

    /// The configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Where the weights were loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The word embeddings, `hidden x vocabulary`: column `i` is token id `i`'s vector
    /// (so the values, in order, are the checkpoint's `vocabulary x hidden` rows).
    pub fn word_embeddings(&self) -> &DMatrix<f32> {
        &self.embeddings.word
    }

    /// The position embeddings, `hidden x positions`, one column per position.
    pub fn position_embeddings(&self) -> &DMatrix<f32> {
        &self.embeddings.position
    }

    /// The token-type embeddings, `hidden x types`, one column per type.
    pub fn token_type_embeddings(&self) -> &DMatrix<f32> {
        &self.embeddings.token_type
    }

    /// The layer norm after the embeddings.
    pub fn embedding_norm(&self) -> &LayerNorm {
        &self.embeddings.norm
    }

    /// The encoder layers.
    pub fn layers(&self) -> &[EncoderLayer] {
        &self.layers
    }

    /// The encoder layers, mutably (to prune or re-format their linear layers).
    pub fn layers_mut(&mut self) -> &mut [EncoderLayer] {
        &mut self.layers
    }

    /// Turns every int8 linear layer into f32 dense (its values times its scales): int8
    /// layers run integer products on tokens quantized to int8, whose rounding changes
    /// the results a little, and which beat the f32 GEMM at this encoder's shapes only on
    /// CPUs with VNNI instructions, if there (`shears bench --texts` measures which
    /// layers gain).
    /// Returns how many layers it changed.
    pub fn dequantize(&mut self) -> usize {
        let mut changed = 0;
        for layer in &mut self.layers {
            for (_, linear) in layer.linears_mut() {
                changed += usize::from(linear.dequantize());
            }
        }
        changed
    }

    /// Every linear layer of the encoder, layer by layer.
    pub fn linears(&self) -> impl Iterator<Item = &Linear> {
        self.layers.iter().flat_map(|l| l.linears().map(|(_, linear)| linear))
    }

    /// The tensor-name prefix of the checkpoint (`""` or `"bert."`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The embeddings' output for `batch`: one column per token.
    ///
    /// # Errors
    /// [`Error::Argument`] for a batch [`Batch::check`] refuses, a token id outside the vocabulary, a type id outside the
    /// token types, or a sentence longer than the position embeddings.
    pub fn embed_tokens(&self, batch: &Batch) -> Result<DMatrix<f32>> {
        batch.check()?;
        let e = &self.embeddings;
        let (vocab, types, positions) = (e.word.ncols(), e.token_type.ncols(), e.position.ncols());
        if let Some(&id) = batch.ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::Argument(format!(
                "token id {id} is outside the vocabulary of {vocab} (config.json's vocab_size): the tokenizer gives ids the model's weights do not have"
            )));
        }
        if let Some(&t) = batch.type_ids.iter().find(|&&t| t as usize >= types) {
            return Err(Error::Argument(format!(
                "token type {t} is outside the {types} token types (config.json's type_vocab_size): the tokenizer gives types the model's weights do not have"
            )));
        }
        if let Some(&len) = batch.lengths.iter().find(|&&len| len > positions) {
            return Err(Error::Argument(format!(
                "a sentence of {len} tokens is longer than the {positions} position embeddings"
            )));
        }
        let hidden = self.config.hidden_size;
        let mut x = DMatrix::<f32>::zeros(hidden, batch.tokens());
        let mut t = 0;
        for range in batch.ranges() {
            for (p, token) in range.enumerate() {
                let (id, ty) = (batch.ids[token] as usize, batch.type_ids[token] as usize);
                let mut column = x.column_mut(t);
                column.copy_from(&e.word.column(id));
                column += e.position.column(p);
                column += e.token_type.column(ty);
                t += 1;
            }
        }
        e.norm.apply(&mut x);
        Ok(x)
    }

    /// The last hidden states of `batch`: one column per token.
    ///
    /// # Errors
    /// As [`BertModel::embed_tokens`].
    pub fn forward(&self, batch: &Batch) -> Result<DMatrix<f32>> {
        // The whole pass runs on one of rayon's threads, so that each of its parallel
        // steps starts and ends there: called from outside the pool, every step would
        // hand its work to the pool and put the caller to sleep until it is done.
        rayon::scope(|_| {
            let mut x = self.embed_tokens(batch)?;
            for layer in &self.layers {
                let c = &self.config;
                x = layer.infer(&x, &batch.lengths, c.num_attention_heads, c.hidden_act)?;
            }
            Ok(x)
        })
    }

    /// Observes the inputs of `layer`'s linear layers for `x`, without its output.
    ///
    /// # Errors
    /// As [`EncoderLayer::forward`].
    pub fn observe_layer(
        &self,
        layer: &EncoderLayer,
        x: &DMatrix<f32>,
        lengths: &[usize],
        observe: &mut dyn FnMut(Site, &DMatrix<f32>) -> Result<()>,
    ) -> Result<()> {
        let c = &self.config;
        layer.observe_inputs(x, lengths, c.num_attention_heads, c.hidden_act, observe)
    }

    /// Runs `layer` (one of this model's) on `x`, observing its linear layers' inputs.
    ///
    /// # Errors
    /// As [`EncoderLayer::forward`].
    pub fn run_layer(
        &self,
        layer: &EncoderLayer,
        x: &DMatrix<f32>,
        lengths: &[usize],
        observe: &mut dyn FnMut(Site, &DMatrix<f32>) -> Result<()>,
    ) -> Result<DMatrix<f32>> {
        layer.forward(x, lengths, self.config.num_attention_heads, self.config.hidden_act, observe)
    }
}

/// Reads a model's tensors by name, with the checkpoint's prefix, checking shapes.
struct Weights<'a> {
    model: &'a Model,
    prefix: &'a str,
}

impl Weights<'_> {
    fn error(&self, tensor: &str, reason: String) -> Error {
        Error::Weight { path: self.model.path().to_owned(), tensor: tensor.to_owned(), reason }
    }

    fn read(&self, name: &str, shape: &[usize]) -> Result<(String, Vec<f32>)> {
        let (full, shard) = self.find(name, shape)?;
        // shears-io's errors name the file and the tensor already.
        let values = self.model.shards()[shard].read_values::<f32>(&full)?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(
                self.error(&full, format!("value {} at index {i} is not finite", values[i]))
            );
        }
        Ok((full, values))
    }

    /// Tensor `name`'s full name and shard, once its shape is checked against `shape`.
    fn find(&self, name: &str, shape: &[usize]) -> Result<(String, usize)> {
        let full = format!("{}{name}", self.prefix);
        let found = self.model.find(&full).ok_or_else(|| self.error(&full, "missing".into()))?;
        if found.info.shape != shape {
            return Err(self.error(
                &full,
                format!("has shape {:?}, the config asks for {shape:?}", found.info.shape),
            ));
        }
        Ok((full, found.shard))
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        Ok(self.read(name, &[len])?.1)
    }

    /// A `(rows, cols)` tensor, row-major in the file, as the `cols x rows` matrix whose
    /// columns are its rows (no copy, no transpose): an embedding table, looked up by
    /// row.
    fn rows(&self, name: &str, (rows, cols): (usize, usize)) -> Result<DMatrix<f32>> {
        let values = self.read(name, &[rows, cols])?.1;
        Ok(DMatrix::from_vec(cols, rows, values))
    }

    /// A `(rows, cols)` tensor, row-major in the file, as the `rows x cols` matrix.
    fn matrix(&self, name: &str, (rows, cols): (usize, usize)) -> Result<DMatrix<f32>> {
        let (full, shard) = self.find(name, &[rows, cols])?;
        let matrix = self.model.shards()[shard].read_matrix::<f32>(&full)?;
        if let Some(i) = matrix.iter().position(|v| !v.is_finite()) {
            let (r, c) = (i % rows, i / rows);
            let reason = format!("value {} at [{r}, {c}] is not finite", matrix[(r, c)]);
            return Err(self.error(&full, reason));
        }
        Ok(matrix)
    }

    /// A linear layer: int8 (integer products) when its weight is stored as int8 with
    /// scales, else dense, with the weight's bf16 or f16 values when it is stored so
    /// (the products widen them exactly), else f32.
    fn linear(&self, name: &str, shape: (usize, usize)) -> Result<Linear> {
        let bias = DVector::from_vec(self.vector(&format!("{name}.bias"), shape.0)?);
        let weight = format!("{name}.weight");
        if let Some(int8) = self.int8(&weight, shape)? {
            return Linear::from_int8(format!("{}{weight}", self.prefix), int8, bias);
        }
        let weights = self.matrix(&weight, shape)?;
        let full = format!("{}{weight}", self.prefix);
        let stored = self.model.find(&full).map(|t| t.info.dtype);
        let mut linear = Linear::new(full, weights, bias)?;
        if matches!(stored, Some(Dtype::BF16 | Dtype::F16)) {
            linear.set_format(Format::Dense)?;
        }
        Ok(linear)
    }

    /// Tensor `name` as int8 weights with their scales, if it is stored so.
    fn int8(&self, name: &str, (rows, cols): (usize, usize)) -> Result<Option<Int8Matrix>> {
        let full = format!("{}{name}", self.prefix);
        let found = self.model.find(&full).ok_or_else(|| self.error(&full, "missing".into()))?;
        if found.info.dtype != Dtype::I8 {
            return Ok(None);
        }
        if found.info.shape != [rows, cols] {
            return Err(self.error(
                &full,
                format!("has shape {:?}, the config asks for {:?}", found.info.shape, [rows, cols]),
            ));
        }
        let shard = &self.model.shards()[found.shard];
        let Some(tensor) = shard.read_int8(&full)? else {
            return Ok(None);
        };
        int8_matrix(tensor).map(Some).map_err(|e| self.error(&full, e.to_string()))
    }
}

/// A sentence-embedding model: a [`BertModel`], its tokenizer and its pooling, as
/// sentence-transformers runs it.
#[derive(Debug, Clone)]
pub struct SentenceTransformer {
    /// The encoder.
    pub model: BertModel,
    /// The tokenizer.
    pub tokenizer: TextEncoder,
    /// Pooling and normalisation.
    pub sentence: SentenceConfig,
}

impl SentenceTransformer {
    /// Loads a folder: the encoder, `tokenizer.json`, and the sentence-transformers
    /// files (mean pooling and normalisation when there are none). Texts are truncated
    /// to `max_len` tokens, or to the folder's `max_seq_length` (else the position
    /// embeddings' length, at most 512).
    ///
    /// # Errors
    /// As [`BertModel::load`] and [`TextEncoder::from_folder`]; [`Error::Argument`] if
    /// `max_len` passes the position embeddings; [`Error::Config`] if the pooling
    /// module's `word_embedding_dimension` is not the encoder's `hidden_size`, if the
    /// tokenizer gives a token id past the word embeddings' rows, or if its
    /// post-processor gives a token type past the model's.
    pub fn load(folder: &Path, max_len: Option<usize>) -> Result<SentenceTransformer> {
        let config = BertConfig::from_file(&folder.join("config.json"))?;
        Self::build(folder, config, &Model::open(folder)?, max_len)
    }

    /// [`SentenceTransformer::load`] of `folder`, its weights taken from `weights`, the
    /// folder's weights opened already (the files a caller checked are the files read).
    ///
    /// # Errors
    /// As [`SentenceTransformer::load`].
    pub fn from_weights(
        folder: &Path,
        weights: &Model,
        max_len: Option<usize>,
    ) -> Result<SentenceTransformer> {
        let config = BertConfig::from_file(&folder.join("config.json"))?;
        Self::build(folder, config, weights, max_len)
    }

    /// The folder's sentence-transformer: the encoder of `config` built from `weights`
    /// while the tokenizer loads beside it, and the sentence-transformers files checked
    /// against both.
    fn build(
        folder: &Path,
        config: BertConfig,
        weights: &Model,
        max_len: Option<usize>,
    ) -> Result<SentenceTransformer> {
        let (model, sentence_side) = rayon::join(
            || BertModel::from_weights(config.clone(), weights),
            || Self::sentence_side(folder, &config, max_len),
        );
        // The weights' errors first, as when the two loaded one after the other.
        let model = model?;
        let (sentence, tokenizer) = sentence_side?;
        Self::check_tokenizer(folder, &model, &tokenizer)?;
        Ok(SentenceTransformer { model, tokenizer, sentence })
    }

    /// The sentence-transformers files of `folder` and its tokenizer, checked against
    /// the encoder's `config`.
    fn sentence_side(
        folder: &Path,
        config: &BertConfig,
        max_len: Option<usize>,
    ) -> Result<(SentenceConfig, TextEncoder)> {
        let sentence = SentenceConfig::from_folder(folder)?;
        let positions = config.max_position_embeddings;
        if let (None, Some(len)) = (max_len, sentence.max_seq_length)
            && len > positions
        {
            return Err(Error::Config {
                path: folder.join("sentence_bert_config.json"),
                field: "max_seq_length".into(),
                reason: format!("{len} is longer than the model's {positions} position embeddings"),
            });
        }
        sentence.check_width(folder, config.hidden_size)?;
        let max_len_given = max_len;
        let max_len = max_len.or(sentence.max_seq_length).unwrap_or(positions.min(512));
        if max_len > positions {
            return Err(Error::Argument(format!(
                "a maximum length of {max_len} tokens is longer than the model's {positions} position embeddings"
            )));
        }
        let tokenizer = TextEncoder::from_folder(folder, max_len).map_err(|e| match e {
            // The length came from the folder, not from the caller: name where.
            Error::Argument(reason) if max_len_given.is_none() => Error::Config {
                path: folder.join("sentence_bert_config.json"),
                field: "max_seq_length".into(),
                reason,
            },
            e => e,
        })?;
        Ok((sentence, tokenizer))
    }

    /// An error unless every token id and token type `tokenizer` gives is within
    /// `model`'s embeddings.
    fn check_tokenizer(folder: &Path, model: &BertModel, tokenizer: &TextEncoder) -> Result<()> {
        let rows = model.config().vocab_size;
        if let Some((token, id, added)) = tokenizer.highest_id()
            && id as usize >= rows
        {
            // The id the file gives, where the tokenizers library renumbered it.
            let declared = match tokenizer.declared_added_id(&token).filter(|_| added) {
                Some(declared) if declared != u64::from(id) => {
                    format!(
                        " (tokenizer.json says {declared}, renumbered from the vocabulary's end)"
                    )
                }
                _ => String::new(),
            };
            return Err(Error::Config {
                path: folder.join("tokenizer.json"),
                field: if added { "added_tokens" } else { "model.vocab" }.into(),
                reason: format!(
                    "the tokenizer gives {token:?} id {id}{declared}, past the {rows} rows of the word embeddings (config.json's vocab_size)"
                ),
            });
        }
        // The post-processor's special tokens carry ids and types of their own.
        let types = model.config().type_vocab_size;
        for (token, id, type_id, placed) in tokenizer.probe()? {
            let reason = if placed && id as usize >= rows {
                format!(
                    "places {token:?} id {id} around each text, past the {rows} rows of the word embeddings (config.json's vocab_size)"
                )
            } else if type_id as usize >= types {
                // The probe's own word would name nothing the user wrote.
                let what = if placed { format!("{token:?}") } else { "a text's tokens".into() };
                format!(
                    "gives {what} token type {type_id}, outside the model's {types} token types (config.json's type_vocab_size)"
                )
            } else {
                continue;
            };
            let field = "post_processor".into();
            return Err(Error::Config { path: folder.join("tokenizer.json"), field, reason });
        }
        Ok(())
    }

    /// The embeddings of `texts`: one column per text, pooled (and normalised) as the
    /// folder says. Texts run [`TOKENS_PER_PASS`] tokens at a time.
    ///
    /// # Errors
    /// As [`TextEncoder::encode`] and [`SentenceTransformer::embed_batch`].
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<DMatrix<f32>> {
        let batch = self.tokenizer.encode(texts)?;
        self.embed_batch(&batch)
    }

    /// The embeddings of a tokenized batch.
    ///
    /// # Errors
    /// [`Error::NoTokens`] for a sentence of no tokens (pooling it would give a zero
    /// vector, which is no embedding); as [`BertModel::forward`].
    pub fn embed_batch(&self, batch: &Batch) -> Result<DMatrix<f32>> {
        batch.check()?;
        if let Some(sentence) = batch.lengths.iter().position(|&len| len == 0) {
            return Err(Error::NoTokens { sentence });
        }
        let hidden = self.model.config().hidden_size;
        let mut out = DMatrix::<f32>::zeros(hidden, batch.sentences());
        for chunk in batch.chunks(TOKENS_PER_PASS) {
            let part = batch.slice(chunk.clone())?;
            let states = self.model.forward(&part)?;
            let pooled =
                pool(&states, &part.lengths, self.sentence.pooling, self.sentence.normalize)?;
            if let Some(i) = pooled.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    sentence: chunk.start + i / hidden.max(1),
                    value: pooled.as_slice()[i],
                });
            }
            out.columns_mut(chunk.start, chunk.len()).copy_from(&pooled);
        }
        Ok(out)
    }
}

/// One vector per sentence from its tokens' states (`lengths` tokens each, packed).
///
/// # Errors
/// [`Error::Argument`] if the lengths do not add up to the columns of `states`.
pub fn pool(
    states: &DMatrix<f32>,
    lengths: &[usize],
    pooling: Pooling,
    normalize: bool,
) -> Result<DMatrix<f32>> {
    check_lengths(lengths, states.ncols())?;
    let hidden = states.nrows();
    let mut out = DMatrix::<f32>::zeros(hidden, lengths.len());
    let mut start = 0;
    for (s, &len) in lengths.iter().enumerate() {
        let tokens = states.columns(start, len);
        let mut v = DVector::<f64>::zeros(hidden);
        if len > 0 {
            match pooling {
                Pooling::Mean => {
                    for t in tokens.column_iter() {
                        v += t.map(f64::from);
                    }
                    v /= len as f64;
                }
                Pooling::Cls => v = tokens.column(0).map(f64::from),
                Pooling::Max => {
                    v = tokens.column(0).map(f64::from);
                    for t in tokens.column_iter() {
                        v.zip_apply(&t.map(f64::from), |a, b| *a = a.max(b));
                    }
                }
            }
        }
        if normalize {
            // As torch.nn.functional.normalize: divide by max(norm, 1e-12).
            let norm = v.norm().max(1e-12);
            v /= norm;
        }
        out.column_mut(s).copy_from(&v.map(|x| x as f32));
        start += len;
    }
    Ok(out)
}
