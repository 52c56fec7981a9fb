//! The configuration files of a Hugging Face BERT folder: `config.json` for the encoder,
//! and sentence-transformers' `modules.json`, `1_Pooling/config.json` and
//! `sentence_bert_config.json` for how token states become a sentence embedding.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Configuration files larger than this are refused before they are read: a real one is
/// a few KiB.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Bounds on the dimensions shears accepts, far above any BERT-family model, so a
/// hostile `config.json` cannot size an allocation.
const MAX_HIDDEN: usize = 1 << 16;
const MAX_LAYERS: usize = 1 << 10;
const MAX_VOCAB: usize = 1 << 24;
const MAX_POSITIONS: usize = 1 << 16;
const MAX_TYPES: usize = 1 << 10;
/// The longest reason a config error gives, in characters: a value quoted from the file
/// is clipped to fit.
const MAX_REASON_CHARS: usize = 240;

/// The activation of the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x * Φ(x)`, with the exact normal CDF (`"gelu"`, PyTorch's default).
    Gelu,
    /// The tanh approximation of GELU (`"gelu_new"`, `"gelu_pytorch_tanh"`).
    GeluTanh,
    /// `max(x, 0)`.
    Relu,
}

impl Activation {
    /// The element-wise function that computes it.
    pub(crate) fn elementwise(self) -> crate::math::Elementwise {
        match self {
            Activation::Gelu => crate::math::Elementwise::Gelu,
            Activation::GeluTanh => crate::math::Elementwise::GeluTanh,
            Activation::Relu => crate::math::Elementwise::Relu,
        }
    }
}

/// The encoder's shape and numerics, from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// The width of every token state.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer (dividing `hidden_size`).
    pub num_attention_heads: usize,
    /// The width of the feed-forward block.
    pub intermediate_size: usize,
    /// The feed-forward activation.
    pub hidden_act: Activation,
    /// The longest sequence the position embeddings cover.
    pub max_position_embeddings: usize,
    /// Token types (segments).
    pub type_vocab_size: usize,
    /// The layer norms' epsilon.
    pub layer_norm_eps: f64,
}

impl BertConfig {
    /// Reads `config.json`.
    ///
    /// # Errors
    /// [`Error::File`] if it cannot be read or is not JSON; [`Error::Config`] naming the
    /// field for a model shears cannot run: another `model_type`, a position embedding
    /// other than absolute, a decoder, or dimensions missing, zero or out of bounds.
    pub fn from_file(path: &Path) -> Result<BertConfig> {
        let json = read_json(path)?;
        let fields = json
            .as_object()
            .ok_or_else(|| config_error(path, "(top level)", "is not a JSON object"))?;
        BertConfig::from_fields(path, fields)
    }

    fn from_fields(path: &Path, f: &Map<String, Value>) -> Result<BertConfig> {
        let err = |field: &str, reason: String| config_error(path, field, &reason);
        // A field that must be a string when present: any other JSON type is an error,
        // not a default (`"hidden_act": ["relu"]` must not run as gelu).
        let text = |field: &str| -> Result<Option<&str>> {
            match f.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(other) => Err(err(field, format!("must be a string, got {other}"))),
            }
        };
        match text("model_type")? {
            Some("bert") => {}
            Some(other) => {
                return Err(err(
                    "model_type",
                    format!(
                        "`{other}` is not supported (shears runs BERT-family encoders: `bert`)"
                    ),
                ));
            }
            None => return Err(err("model_type", "is missing".into())),
        }
        if let Some(kind) = text("position_embedding_type")?
            && kind != "absolute"
        {
            return Err(err(
                "position_embedding_type",
                format!("`{kind}` is not supported (only `absolute`)"),
            ));
        }
        for flag in ["is_decoder", "add_cross_attention"] {
            if f.get(flag).and_then(Value::as_bool) == Some(true) {
                return Err(err(flag, "is true: shears runs encoders only".into()));
            }
        }
        let dim = |field: &str, max: usize| -> Result<usize> {
            let value = f.get(field).ok_or_else(|| err(field, "is missing".into()))?;
            match value.as_u64().and_then(|v| usize::try_from(v).ok()) {
                Some(v) if (1..=max).contains(&v) => Ok(v),
                _ => Err(err(field, format!("must be an integer in 1..={max}, got {value}"))),
            }
        };
        let hidden_size = dim("hidden_size", MAX_HIDDEN)?;
        let num_attention_heads = dim("num_attention_heads", MAX_HIDDEN)?;
        if hidden_size % num_attention_heads != 0 {
            return Err(err(
                "num_attention_heads",
                format!("{num_attention_heads} does not divide hidden_size {hidden_size}"),
            ));
        }
        let hidden_act = match text("hidden_act")? {
            Some("gelu") | None => Activation::Gelu,
            Some("gelu_new" | "gelu_pytorch_tanh" | "gelu_fast") => Activation::GeluTanh,
            Some("relu") => Activation::Relu,
            Some(other) => {
                return Err(err(
                    "hidden_act",
                    format!("`{other}` is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)"),
                ));
            }
        };
        let layer_norm_eps = match f.get("layer_norm_eps") {
            None => 1e-12,
            Some(v) => match v.as_f64() {
                Some(eps) if eps.is_finite() && eps >= 0.0 => eps,
                _ => return Err(err("layer_norm_eps", format!("must be a number >= 0, got {v}"))),
            },
        };
        Ok(BertConfig {
            vocab_size: dim("vocab_size", MAX_VOCAB)?,
            hidden_size,
            num_hidden_layers: dim("num_hidden_layers", MAX_LAYERS)?,
            num_attention_heads,
            intermediate_size: dim("intermediate_size", MAX_HIDDEN * 8)?,
            hidden_act,
            max_position_embeddings: dim("max_position_embeddings", MAX_POSITIONS)?,
            type_vocab_size: match f.get("type_vocab_size") {
                None => 2,
                Some(_) => dim("type_vocab_size", MAX_TYPES)?,
            },
            layer_norm_eps,
        })
    }

    /// Checks what the encoder relies on, for a config built in code ([`from_file`]
    /// checks the same of a file): every dimension in 1 to its bound, the heads dividing
    /// the hidden size, and an epsilon finite and not negative.
    ///
    /// # Errors
    /// [`Error::Argument`] naming the field.
    ///
    /// [`from_file`]: BertConfig::from_file
    pub fn check(&self) -> Result<()> {
        let dimensions = [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("hidden_size", self.hidden_size, MAX_HIDDEN),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_HIDDEN),
            ("intermediate_size", self.intermediate_size, MAX_HIDDEN * 8),
            ("max_position_embeddings", self.max_position_embeddings, MAX_POSITIONS),
            ("type_vocab_size", self.type_vocab_size, MAX_TYPES),
        ];
        let wrong =
            |field: &str, reason: String| Error::Argument(format!("config {field}: {reason}"));
        for (field, value, max) in dimensions {
            if !(1..=max).contains(&value) {
                return Err(wrong(field, format!("must be in 1..={max}, got {value}")));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            let (heads, hidden) = (self.num_attention_heads, self.hidden_size);
            return Err(wrong(
                "num_attention_heads",
                format!("{heads} does not divide hidden_size {hidden}"),
            ));
        }
        let eps = self.layer_norm_eps;
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(wrong("layer_norm_eps", format!("must be a number >= 0, got {eps}")));
        }
        Ok(())
    }

    /// The width of one attention head; 0 for a config of no heads, which
    /// [`BertConfig::check`] refuses.
    pub fn head_size(&self) -> usize {
        self.hidden_size.checked_div(self.num_attention_heads).unwrap_or(0)
    }
}

/// How token states become a sentence embedding (sentence-transformers' pooling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean of the sentence's token states.
    Mean,
    /// The state of its first token (`[CLS]`).
    Cls,
    /// The element-wise maximum over its tokens.
    Max,
}

/// The sentence-transformers head of a folder: pooling, normalisation, and the longest
/// input it embeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentenceConfig {
    /// How token states are pooled.
    pub pooling: Pooling,
    /// Whether embeddings are scaled to unit length (a `Normalize` module).
    pub normalize: bool,
    /// Tokens per input, special tokens included; longer inputs are truncated.
    pub max_seq_length: Option<usize>,
    /// The token states' width the pooling module expects (its
    /// `word_embedding_dimension`), where it says.
    pub word_embedding_dimension: Option<usize>,
}

impl Default for SentenceConfig {
    /// Mean pooling, not normalised: what sentence-transformers builds for a plain BERT
    /// (a Transformer and a mean Pooling module, no Normalize).
    fn default() -> Self {
        SentenceConfig {
            pooling: Pooling::Mean,
            normalize: false,
            max_seq_length: None,
            word_embedding_dimension: None,
        }
    }
}

impl SentenceConfig {
    /// Reads the sentence-transformers files of `folder`, where there are any; a folder
    /// without them gets the default (mean pooling, not normalised).
    ///
    /// # Errors
    /// [`Error::File`] for a file that cannot be read or parsed; [`Error::Config`] for a
    /// pooling mode shears does not run (`mean_sqrt_len`, weighted, several at once), or a
    /// pooling module `modules.json` lists whose `config.json` is missing.
    pub fn from_folder(folder: &Path) -> Result<SentenceConfig> {
        let mut config = SentenceConfig::default();
        let modules_path = folder.join("modules.json");
        let mut pooling_dir: Option<PathBuf> = None;
        if shears_io::paths::is_present(&modules_path) {
            let modules = read_json(&modules_path)?;
            let list = modules
                .as_array()
                .ok_or_else(|| config_error(&modules_path, "(top level)", "is not a JSON array"))?;
            config.normalize = false;
            let mut kinds = Vec::new();
            for module in list {
                // Both fields as sentence-transformers writes them: a missing or
                // non-string one would be read as some other module or folder.
                let field = |name: &str| match module.get(name) {
                    Some(Value::String(text)) => Ok(text.as_str()),
                    Some(other) => Err(config_error(
                        &modules_path,
                        name,
                        &format!("must be a string, got {other}"),
                    )),
                    None if name == "path" => Ok(""),
                    None => Err(config_error(&modules_path, name, "is missing from a module")),
                };
                let (kind, sub) = (field("type")?, field("path")?);
                let kind = kind.rsplit('.').next().unwrap_or_default();
                match kind {
                    "Normalize" => config.normalize = true,
                    "Pooling" => pooling_dir = Some(safe_join(folder, sub, &modules_path)?),
                    // shears reads the encoder from the folder's top, where
                    // sentence-transformers writes it; an encoder in a subfolder
                    // (`0_Transformer`) would be another model than the one read.
                    "Transformer" if !sub.is_empty() => {
                        return Err(config_error(
                            &modules_path,
                            "path",
                            &format!(
                                "the Transformer module is in `{sub}`; shears reads the encoder from the model folder's top (path \"\")"
                            ),
                        ));
                    }
                    "Transformer" => {}
                    other => {
                        return Err(config_error(
                            &modules_path,
                            "type",
                            &format!(
                                "module `{other}` is not supported (Transformer, Pooling, Normalize)"
                            ),
                        ));
                    }
                }
                // Only the three kinds above get here; a list longer than four is out
                // of order whatever follows.
                if kinds.len() <= 3 {
                    kinds.push(kind);
                }
            }
            check_module_order(&modules_path, &kinds)?;
        }
        let listed = pooling_dir.is_some();
        let pooling_path =
            pooling_dir.unwrap_or_else(|| folder.join("1_Pooling")).join("config.json");
        if shears_io::paths::is_present(&pooling_path) {
            (config.pooling, config.word_embedding_dimension) = read_pooling(&pooling_path)?;
        } else if listed {
            // modules.json names a pooling module: guessing its mode would give other
            // embeddings than sentence-transformers (which refuses such a folder).
            return Err(config_error(
                &pooling_path,
                "(file)",
                "is missing or not a file, but modules.json lists this pooling module",
            ));
        }
        let sentence_path = folder.join("sentence_bert_config.json");
        if shears_io::paths::is_present(&sentence_path) {
            let json = read_json(&sentence_path)?;
            // null: no limit given (sentence-transformers writes it for a tokenizer
            // without one).
            if let Some(v) = json.get("max_seq_length").filter(|v| !v.is_null()) {
                match v.as_u64().and_then(|v| usize::try_from(v).ok()) {
                    Some(n) if (2..=MAX_POSITIONS).contains(&n) => config.max_seq_length = Some(n),
                    _ => {
                        return Err(config_error(
                            &sentence_path,
                            "max_seq_length",
                            &format!("must be an integer in 2..={MAX_POSITIONS}, got {v}"),
                        ));
                    }
                }
            }
        }
        Ok(config)
    }
}

impl SentenceConfig {
    /// Checks that the pooling module (of the folder `folder`) pools token states as wide
    /// as the encoder's `hidden` size, where it says how wide it expects them.
    ///
    /// # Errors
    /// [`Error::Config`] naming `word_embedding_dimension` if they differ.
    pub fn check_width(&self, folder: &Path, hidden: usize) -> Result<()> {
        match self.word_embedding_dimension {
            Some(width) if width != hidden => Err(config_error(
                folder,
                "word_embedding_dimension",
                &format!(
                    "the pooling module expects {width}, but config.json's hidden_size is {hidden}"
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// Refuses modules (`kinds`, the first few, in `modules.json`'s order) that do not run as
/// shears runs them: sentence-transformers applies them in order, and shears runs the
/// encoder, pools its token states and may normalise the result, so another order, or
/// no pooling (which gives token embeddings), would embed differently.
fn check_module_order(path: &Path, kinds: &[&str]) -> Result<()> {
    match kinds {
        ["Transformer", "Pooling"] | ["Transformer", "Pooling", "Normalize"] => Ok(()),
        _ => {
            let order = if kinds.is_empty() { "none".to_owned() } else { kinds.join(", ") };
            Err(config_error(
                path,
                "(order)",
                &format!(
                    "lists the modules {order}; shears runs Transformer, Pooling and an optional Normalize, in that order"
                ),
            ))
        }
    }
}

/// The pooling mode of a pooling module's `config.json`, and its
/// `word_embedding_dimension` where it has one.
fn read_pooling(path: &Path) -> Result<(Pooling, Option<usize>)> {
    let json = read_json(path)?;
    let dimension = match json.get("word_embedding_dimension") {
        None => None,
        Some(v) => match v.as_u64().and_then(|d| usize::try_from(d).ok()) {
            Some(d) if d > 0 => Some(d),
            _ => {
                return Err(config_error(
                    path,
                    "word_embedding_dimension",
                    &format!("must be a positive integer, got {v}"),
                ));
            }
        },
    };
    // A flag that is not a boolean would read as off, and the embeddings change with the
    // mode left: every `pooling_mode_*` must say true or false.
    if let Some(fields) = json.as_object()
        && let Some((key, v)) =
            fields.iter().find(|(k, v)| k.starts_with("pooling_mode_") && !v.is_boolean())
    {
        return Err(config_error(path, key, &format!("must be true or false, got {v}")));
    }
    let on = |key: &str| json.get(key).and_then(Value::as_bool) == Some(true);
    let modes: Vec<(&str, Pooling)> = [
        ("pooling_mode_mean_tokens", Pooling::Mean),
        ("pooling_mode_cls_token", Pooling::Cls),
        ("pooling_mode_max_tokens", Pooling::Max),
    ]
    .into_iter()
    .filter(|(k, _)| on(k))
    .collect();
    for unsupported in [
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens",
        "pooling_mode_lasttoken",
    ] {
        if on(unsupported) {
            return Err(config_error(
                path,
                unsupported,
                "is not supported (mean, cls or max pooling)",
            ));
        }
    }
    match modes.as_slice() {
        [(_, mode)] => Ok((*mode, dimension)),
        [] => Err(config_error(path, "pooling_mode_*", "no pooling mode is set")),
        _ => Err(config_error(
            path,
            "pooling_mode_*",
            "several pooling modes at once are not supported",
        )),
    }
}

/// `folder/sub`, refusing a `sub` that leaves the folder.
fn safe_join(folder: &Path, sub: &str, file: &Path) -> Result<PathBuf> {
    let relative = Path::new(sub);
    if relative.is_absolute()
        || relative.components().any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(config_error(file, "path", &format!("`{sub}` leaves the model folder")));
    }
    Ok(folder.join(relative))
}

/// Reads a small JSON file.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let file_error = |reason: String| Error::File { path: path.to_owned(), reason };
    let file =
        shears_io::paths::open_regular_file(path).map_err(|e| file_error(short_reason(&e)))?;
    let len = file.metadata().map_err(|e| file_error(e.to_string()))?.len();
    if len > MAX_CONFIG_BYTES {
        return Err(file_error(format!(
            "{len} bytes; a configuration file is at most {MAX_CONFIG_BYTES}"
        )));
    }
    // The size a file reports can be wrong (a file of /proc reports 0): the read is
    // bounded as well.
    let text = shears_io::paths::read_at_most(file, MAX_CONFIG_BYTES)
        .map_err(|e| file_error(e.to_string()))?
        .ok_or_else(|| {
            file_error(format!(
                "more than {MAX_CONFIG_BYTES} bytes; a configuration file is at most that"
            ))
        })?;
    serde_json::from_slice(&text).map_err(|e| file_error(format!("not valid JSON: {e}")))
}

/// An error's message without the path it starts with (the caller names the file).
fn short_reason(e: &shears_io::Error) -> String {
    match e {
        shears_io::Error::Input { reason, .. } => reason.clone(),
        // The operating system's reason ("No such file or directory"), which the
        // error's own message leaves to its source.
        shears_io::Error::Io { op, source, .. } => format!("cannot {op} it: {source}"),
        other => other.to_string(),
    }
}

/// An [`Error::Config`]; a reason that quotes a long value from the file is clipped, so
/// that a field of megabytes makes an error of one short line.
fn config_error(path: &Path, field: &str, reason: &str) -> Error {
    let reason = shears_io::clipped(reason, MAX_REASON_CHARS).into_owned();
    Error::Config { path: path.to_owned(), field: field.to_owned(), reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config built in code is checked as a file's is, each field by name.
    #[test]
    fn a_config_built_in_code_is_checked() {
        let good = BertConfig {
            vocab_size: 100,
            hidden_size: 8,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 16,
            hidden_act: Activation::Gelu,
            max_position_embeddings: 32,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
        };
        good.check().unwrap();
        type Spoil = fn(&mut BertConfig);
        let cases: [(Spoil, &str); 6] = [
            (|c| c.num_attention_heads = 0, "num_attention_heads: must be in 1..=65536, got 0"),
            (|c| c.num_attention_heads = 3, "num_attention_heads: 3 does not divide hidden_size 8"),
            (|c| c.num_attention_heads = 16, "num_attention_heads: 16 does not divide"),
            (|c| c.num_hidden_layers = usize::MAX, "num_hidden_layers: must be in 1..=1024"),
            (|c| c.vocab_size = 0, "vocab_size: must be in"),
            (|c| c.layer_norm_eps = f64::NAN, "layer_norm_eps: must be a number >= 0, got NaN"),
        ];
        for (spoil, says) in cases {
            let mut bad = good.clone();
            spoil(&mut bad);
            let err = bad.check().unwrap_err().to_string();
            assert!(err.starts_with("config ") && err.contains(says), "{err}");
        }
    }

    #[test]
    fn a_missing_file_says_why_it_cannot_be_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let err = BertConfig::from_file(&path).unwrap_err().to_string();
        let why = format!("{}: cannot open it: No such file or directory", path.display());
        assert!(err.starts_with(&why), "{err}");
    }

    /// Modules run as sentence-transformers orders them: only the encoder, then pooling,
    /// then an optional normalisation, embed as shears does; any other order, a list
    /// without pooling or a repeated module is refused, naming the order found.
    #[test]
    fn modules_with_fields_of_other_types_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (modules, says) in [
            (r#"[{"path": "", "type": 5}]"#, "type: must be a string, got 5"),
            (r#"[{"path": ""}]"#, "type: is missing from a module"),
            (
                r#"[{"path": [1], "type": "sentence_transformers.models.Pooling"}]"#,
                "path: must be a string, got [1]",
            ),
            (
                r#"[{"path": "0_Transformer", "type": "sentence_transformers.models.Transformer"}]"#,
                "the Transformer module is in `0_Transformer`",
            ),
        ] {
            std::fs::write(dir.path().join("modules.json"), modules).unwrap();
            let err = SentenceConfig::from_folder(dir.path()).unwrap_err().to_string();
            assert!(err.contains("modules.json") && err.contains(says), "{modules}: {err}");
        }
    }

    #[test]
    fn modules_in_another_order_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
        std::fs::write(
            dir.path().join("1_Pooling/config.json"),
            r#"{"pooling_mode_mean_tokens": true}"#,
        )
        .unwrap();
        let module = |kind: &str| {
            let path = if kind == "Pooling" { "1_Pooling" } else { "" };
            format!(r#"{{"path": "{path}", "type": "sentence_transformers.models.{kind}"}}"#)
        };
        for (kinds, runs) in [
            (&["Transformer", "Pooling"][..], true),
            (&["Transformer", "Pooling", "Normalize"], true),
            (&["Transformer", "Normalize", "Pooling"], false),
            (&["Pooling", "Transformer"], false),
            (&["Transformer"], false),
            (&["Transformer", "Pooling", "Normalize", "Normalize"], false),
            (&["Transformer", "Pooling", "Pooling", "Normalize", "Normalize"], false),
            (&[], false),
        ] {
            let list: Vec<String> = kinds.iter().map(|k| module(k)).collect();
            std::fs::write(dir.path().join("modules.json"), format!("[{}]", list.join(", ")))
                .unwrap();
            match SentenceConfig::from_folder(dir.path()) {
                Ok(config) => {
                    assert!(runs, "{kinds:?} ran");
                    assert_eq!(config.normalize, kinds.len() == 3);
                }
                Err(err) => {
                    assert!(!runs, "{kinds:?}: {err}");
                    let shown: Vec<&str> = kinds.iter().take(4).copied().collect();
                    let order = if kinds.is_empty() { "none".to_owned() } else { shown.join(", ") };
                    let said =
                        format!("lists the modules {order}; shears runs Transformer, Pooling");
                    assert!(err.to_string().contains(&said), "{kinds:?}: {err}");
                    assert!(err.to_string().contains("modules.json"), "{err}");
                }
            }
        }
    }

    fn parse(json: &str) -> Result<BertConfig> {
        let value: Value = serde_json::from_str(json).unwrap();
        BertConfig::from_fields(Path::new("config.json"), value.as_object().unwrap())
    }

    const MINILM: &str = r#"{"model_type": "bert", "hidden_size": 384, "num_attention_heads": 12,
        "num_hidden_layers": 6, "intermediate_size": 1536, "vocab_size": 30522,
        "max_position_embeddings": 512, "type_vocab_size": 2, "hidden_act": "gelu",
        "layer_norm_eps": 1e-12, "position_embedding_type": "absolute"}"#;

    #[test]
    fn sentence_files_say_pooling_or_fail() {
        let dir = tempfile::tempdir().unwrap();
        // No sentence-transformers files: what sentence-transformers builds for a BERT.
        let plain = SentenceConfig::from_folder(dir.path()).unwrap();
        assert_eq!((plain.pooling, plain.normalize), (Pooling::Mean, false));
        let modules = r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]"#;
        std::fs::write(dir.path().join("modules.json"), modules).unwrap();
        let err = SentenceConfig::from_folder(dir.path()).unwrap_err();
        assert!(err.to_string().contains("modules.json lists this pooling module"), "{err}");
        std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
        std::fs::write(
            dir.path().join("1_Pooling/config.json"),
            r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#,
        )
        .unwrap();
        let cls = SentenceConfig::from_folder(dir.path()).unwrap();
        assert_eq!((cls.pooling, cls.normalize), (Pooling::Cls, false));
        assert_eq!(cls.word_embedding_dimension, None);
        for flag in ["\"yes\"", "1", "null"] {
            std::fs::write(
                dir.path().join("1_Pooling/config.json"),
                format!(r#"{{"pooling_mode_cls_token": true, "pooling_mode_max_tokens": {flag}}}"#),
            )
            .unwrap();
            let err = SentenceConfig::from_folder(dir.path()).unwrap_err().to_string();
            let want = format!("pooling_mode_max_tokens: must be true or false, got {flag}");
            assert!(err.contains(&want), "{err}");
        }
        for (dimension, read) in
            [("384", Ok(Some(384))), ("0", Err(())), ("-3", Err(())), ("\"384\"", Err(()))]
        {
            std::fs::write(
                dir.path().join("1_Pooling/config.json"),
                format!(r#"{{"pooling_mode_mean_tokens": true, "word_embedding_dimension": {dimension}}}"#),
            )
            .unwrap();
            match (SentenceConfig::from_folder(dir.path()), read) {
                (Ok(config), Ok(want)) => assert_eq!(config.word_embedding_dimension, want),
                (Err(err), Err(())) => {
                    let err = err.to_string();
                    assert!(
                        err.contains("word_embedding_dimension: must be a positive integer"),
                        "{err}"
                    );
                }
                (got, want) => panic!("{dimension}: got {got:?}, want {want:?}"),
            }
        }
    }

    /// A sentence-transformers file that is there but is not a regular file (a folder
    /// here; a FIFO or a device likewise) is refused by name: taken for no file, it
    /// would change the embeddings without a word.
    #[test]
    fn sentence_files_that_are_not_files_are_refused_by_name() {
        for name in ["modules.json", "sentence_bert_config.json", "1_Pooling/config.json"] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
            let err = SentenceConfig::from_folder(dir.path()).unwrap_err().to_string();
            assert!(err.contains(name) && err.contains("is a directory"), "{name}: {err}");
        }
    }

    #[test]
    fn reads_a_bert_config() {
        let c = parse(MINILM).unwrap();
        assert_eq!((c.hidden_size, c.num_attention_heads, c.head_size()), (384, 12, 32));
        let headless = BertConfig { num_attention_heads: 0, ..c.clone() };
        assert_eq!(headless.head_size(), 0);
        assert!(headless.check().is_err());
        assert_eq!(c.hidden_act, Activation::Gelu);
    }

    #[test]
    fn unsupported_configs_name_the_field() {
        for (edit, field) in [
            (("\"bert\"", "\"roberta\""), "model_type"),
            (("\"absolute\"", "\"relative_key\""), "position_embedding_type"),
            (("\"gelu\"", "\"swish\""), "hidden_act"),
            (("\"num_attention_heads\": 12", "\"num_attention_heads\": 7"), "num_attention_heads"),
            (("\"hidden_size\": 384", "\"hidden_size\": 0"), "hidden_size"),
            (("\"vocab_size\": 30522", "\"vocab_size\": 1e30"), "vocab_size"),
            (("\"num_hidden_layers\": 6", "\"num_hidden_layers\": -1"), "num_hidden_layers"),
            (("\"layer_norm_eps\": 1e-12", "\"layer_norm_eps\": \"x\""), "layer_norm_eps"),
        ] {
            let json = MINILM.replace(edit.0, edit.1);
            let err = parse(&json).unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
        let err = parse(&MINILM.replace("\"hidden_size\": 384,", "")).unwrap_err().to_string();
        assert!(err.contains("hidden_size: is missing"), "{err}");
        // A string field of another JSON type is named, not read as missing or default.
        for (edit, field) in [
            (("\"gelu\"", "[\"relu\"]"), "hidden_act"),
            (("\"gelu\"", "3"), "hidden_act"),
            (("\"absolute\"", "5"), "position_embedding_type"),
            (("\"bert\"", "[\"bert\"]"), "model_type"),
        ] {
            let err = parse(&MINILM.replace(edit.0, edit.1)).unwrap_err().to_string();
            assert!(err.contains(field) && err.contains("must be a string"), "{field}: {err}");
        }
        let decoder = MINILM.replace("\"bert\",", "\"bert\", \"is_decoder\": true,");
        assert!(parse(&decoder).unwrap_err().to_string().contains("is_decoder"));
    }

    /// A value of any length is quoted in a short error that still names the field and
    /// shows how the value starts.
    #[test]
    fn long_values_are_clipped_in_errors() {
        let long = "9".repeat(100_000);
        for (edit, field, starts) in [
            (("\"gelu\"", format!("\"{long}\"")), "hidden_act", "`999"),
            (("384", format!("\"{long}\"")), "hidden_size", "got \"999"),
            (("\"bert\"", format!("[\"{long}\"]")), "model_type", "got [\"999"),
        ] {
            let err = parse(&MINILM.replacen(edit.0, &edit.1, 1)).unwrap_err().to_string();
            assert!(err.contains(field) && err.contains(starts), "{field}: {err}");
            assert!(err.contains("characters left out"), "{field}: {err}");
            assert!(err.len() < 400, "{field}: {} bytes", err.len());
        }
    }
}
