//! Texts to token ids with the folder's `tokenizer.json` (Hugging Face `tokenizers`),
//! packed without padding: a [`Batch`] holds every sentence's tokens one after another.

use std::io::BufRead;
use std::path::Path;

use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{PostProcessor, Tokenizer, TruncationParams};

use crate::error::{Error, Result};

/// `tokenizer.json` files larger than this are refused before they are read. Real ones
/// are a few MiB, the largest multilingual vocabularies about 35 MiB; parsing takes
/// about fourteen times the file's size in memory, which this keeps under a GiB.
const MAX_TOKENIZER_BYTES: u64 = 64 << 20;

/// Sentences as token ids, packed: sentence `i` is `lengths[i]` tokens starting at the
/// sum of the lengths before it. No padding is stored and none is computed on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    /// Every token's id, sentence after sentence.
    pub ids: Vec<u32>,
    /// Every token's type (segment) id.
    pub type_ids: Vec<u32>,
    /// Each sentence's token count (special tokens included).
    pub lengths: Vec<usize>,
}

impl Batch {
    /// Tokens in all sentences.
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// Sentences.
    pub fn sentences(&self) -> usize {
        self.lengths.len()
    }

    /// Each sentence's range of token positions.
    pub fn ranges(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        self.lengths.iter().scan(0, |start, &len| {
            let range = *start..*start + len;
            *start += len;
            Some(range)
        })
    }

    /// Checks that the fields agree: a type per token id, and the sentences' lengths
    /// adding up to the tokens (a `Batch` built in code can break either).
    ///
    /// # Errors
    /// [`Error::Argument`] saying which.
    pub fn check(&self) -> Result<()> {
        if self.type_ids.len() != self.ids.len() {
            return Err(Error::Argument(format!(
                "a batch of {} token ids has {} type ids",
                self.ids.len(),
                self.type_ids.len()
            )));
        }
        check_lengths(&self.lengths, self.ids.len())
    }

    /// Sentences `range` as a batch of their own.
    ///
    /// # Errors
    /// As [`Batch::check`]; [`Error::Argument`] for a range past the sentences.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Result<Batch> {
        self.check()?;
        if range.start > range.end || range.end > self.lengths.len() {
            return Err(Error::Argument(format!(
                "sentences {range:?} of a batch of {}",
                self.lengths.len()
            )));
        }
        let start: usize = self.lengths[..range.start].iter().sum();
        let len: usize = self.lengths[range.clone()].iter().sum();
        Ok(Batch {
            ids: self.ids[start..start + len].to_vec(),
            type_ids: self.type_ids[start..start + len].to_vec(),
            lengths: self.lengths[range].to_vec(),
        })
    }

    /// Consecutive groups of whole sentences of at most `tokens` tokens each (a longer
    /// sentence is a group alone): for running a large set in bounded memory.
    pub fn chunks(&self, tokens: usize) -> Vec<std::ops::Range<usize>> {
        let mut chunks = Vec::new();
        let (mut start, mut size) = (0, 0);
        for (i, &len) in self.lengths.iter().enumerate() {
            if size > 0 && size + len > tokens {
                chunks.push(start..i);
                (start, size) = (i, 0);
            }
            size += len;
        }
        if start < self.lengths.len() {
            chunks.push(start..self.lengths.len());
        }
        chunks
    }
}

/// Checks that sentences of `lengths` tokens are `tokens` tokens in all (of a batch's
/// ids, or of a matrix's columns).
pub(crate) fn check_lengths(lengths: &[usize], tokens: usize) -> Result<()> {
    let total = lengths.iter().try_fold(0usize, |sum, &len| sum.checked_add(len));
    if total != Some(tokens) {
        return Err(Error::Argument(format!(
            "sentence lengths that add up to {} for {tokens} tokens",
            total.map_or_else(|| "more than usize holds".to_owned(), |t| t.to_string())
        )));
    }
    Ok(())
}

/// A folder's tokenizer, truncating every text to a maximum length.
#[derive(Clone)]
pub struct TextEncoder {
    tokenizer: Tokenizer,
    max_len: usize,
    /// The `tokenizer.json` it was read from, which its errors name.
    path: std::path::PathBuf,
}

impl std::fmt::Debug for TextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEncoder")
            .field("path", &self.path)
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

impl TextEncoder {
    /// Loads `tokenizer.json` from `folder`; texts are truncated to `max_len` tokens,
    /// special tokens included.
    ///
    /// # Errors
    /// [`Error::File`] if there is no readable `tokenizer.json`, or it is not a tokenizer;
    /// [`Error::Argument`] if `max_len` leaves no room for a token after the special
    /// ones.
    pub fn from_folder(folder: &Path, max_len: usize) -> Result<TextEncoder> {
        let path = folder.join("tokenizer.json");
        let file_error = |reason: String| Error::File { path: path.clone(), reason };
        if !path.exists() {
            return Err(file_error(
                "no tokenizer.json in the model folder (shears reads Hugging Face fast tokenizers)"
                    .into(),
            ));
        }
        let file = shears_io::paths::open_regular_file(&path)?;
        let len = file.metadata().map_err(|e| file_error(e.to_string()))?.len();
        if len > MAX_TOKENIZER_BYTES {
            return Err(file_error(format!("{len} bytes is more than a tokenizer takes")));
        }
        // Bounded whatever size the file reports (a file of /proc reports 0).
        let bytes = shears_io::paths::read_at_most(file, MAX_TOKENIZER_BYTES)
            .map_err(|e| shears_io::Error::io("read", &path, e))?
            .ok_or_else(|| {
                file_error(format!(
                    "more than {MAX_TOKENIZER_BYTES} bytes, more than a tokenizer takes"
                ))
            })?;
        // The tokenizers library panics on some malformed files (a normalizer's bad
        // `precompiled_charsmap`, nesting past its recursion limit) instead of erring.
        let parsed = std::panic::catch_unwind(|| Tokenizer::from_bytes(&bytes))
            .map_err(|panic| file_error(format!("not a tokenizer: {}", panic_message(&*panic))))?;
        let mut tokenizer = parsed.map_err(|e| file_error(format!("not a tokenizer: {e}")))?;
        if let Some(flaw) = tokenizer.get_post_processor().and_then(post_processor_flaw) {
            return Err(file_error(format!("post_processor: {flaw}")));
        }
        tokenizer.with_padding(None);
        let encoder = TextEncoder { tokenizer, max_len, path: path.clone() };
        encoder.with_max_len(max_len).map_err(|e| match e {
            Error::Tokenizer(reason) => file_error(reason),
            e => e,
        })
    }

    /// The same tokenizer truncating to `max_len` tokens instead (without reading
    /// `tokenizer.json` again).
    ///
    /// # Errors
    /// [`Error::Argument`] if `max_len` leaves no room for text after the special
    /// tokens; [`Error::Tokenizer`] if the tokenizer refuses the truncation.
    pub fn with_max_len(mut self, max_len: usize) -> Result<TextEncoder> {
        let special = self.tokenizer.get_post_processor().map_or(0, |p| p.added_tokens(false));
        if max_len <= special {
            return Err(Error::Argument(format!(
                "a maximum length of {max_len} tokens leaves no room for text after the tokenizer's {special} special tokens"
            )));
        }
        self.tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_len, ..Default::default() }))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        self.max_len = max_len;
        Ok(self)
    }

    /// The longest input, in tokens.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The number of token ids the tokenizer can give, its added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The token of the largest id the tokenizer can give, that id, and whether it is
    /// an added token (`added_tokens` in tokenizer.json) rather than one of the model's
    /// vocabulary; `None` for a tokenizer of no tokens.
    pub(crate) fn highest_id(&self) -> Option<(String, u32, bool)> {
        let vocab = self.tokenizer.get_vocab(false);
        let model = vocab.into_iter().map(|(token, id)| (token, id, false));
        let added = self.tokenizer.get_added_tokens_decoder();
        let added = added.into_iter().map(|(id, token)| (token.content, id, true));
        // Ties (an added token reusing a vocabulary id) name the vocabulary's token.
        model.chain(added).max_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)).then(b.0.cmp(&a.0)))
    }

    /// The id `tokenizer.json` gives the added token `content` in its `added_tokens`,
    /// which can differ from the id the tokenizer gives it (the tokenizers library numbers
    /// an added token past the vocabulary on from the vocabulary's end); `None` if the
    /// file cannot be read again or does not list it.
    pub(crate) fn declared_added_id(&self, content: &str) -> Option<u64> {
        let file = shears_io::paths::open_regular_file(&self.path).ok()?;
        let bytes = shears_io::paths::read_at_most(file, MAX_TOKENIZER_BYTES).ok()??;
        let json: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        let added = json["added_tokens"].as_array()?;
        added.iter().find(|t| t["content"] == content).and_then(|t| t["id"].as_u64())
    }

    /// The tokens the tokenizer gives a one-word text, as (token, id, token type, whether
    /// the post-processor placed it): the ids and types of `post_processor` in
    /// tokenizer.json show only when a text is encoded, so a probe finds them at load.
    ///
    /// # Errors
    /// As [`TextEncoder::encode`].
    pub(crate) fn probe(&self) -> Result<Vec<(String, u32, u32, bool)>> {
        let encodings = self.encodings(&["a"])?;
        let Some(e) = encodings.first() else { return Ok(Vec::new()) };
        let tokens = e.get_tokens().iter().zip(e.get_ids()).zip(e.get_type_ids());
        let placed = e.get_special_tokens_mask().iter().map(|&s| s != 0);
        Ok(tokens
            .zip(placed)
            .map(|(((t, &id), &ty), placed)| (t.clone(), id, ty, placed))
            .collect())
    }

    /// Tokenizes `texts`, each truncated to [`TextEncoder::max_len`].
    ///
    /// # Errors
    /// [`Error::File`] naming `tokenizer.json` if the tokenizer fails on a text.
    pub fn encode<S: AsRef<str>>(&self, texts: &[S]) -> Result<Batch> {
        let mut batch = Batch::default();
        for e in &self.encodings(texts)? {
            batch.ids.extend_from_slice(e.get_ids());
            batch.type_ids.extend_from_slice(e.get_type_ids());
            batch.lengths.push(e.get_ids().len());
        }
        Ok(batch)
    }

    /// The tokens of `texts` (each truncated to [`TextEncoder::max_len`]) apart from
    /// the special tokens, and the special tokens that go around a sentence, as the
    /// tokenizer's post-processor places them.
    ///
    /// # Errors
    /// [`Error::File`] naming `tokenizer.json` if the tokenizer fails on a text;
    /// [`Error::Texts`] if no text gives a token that is not a special one.
    pub fn word_pool<S: AsRef<str>>(&self, texts: &[S]) -> Result<WordPool> {
        let mut pool = None;
        let special_ids = self.special_ids();
        for e in &self.encodings(texts)? {
            let words = word_positions(e, &special_ids);
            if !words.iter().any(|&w| w) {
                continue;
            }
            let tokens = || e.get_ids().iter().copied().zip(e.get_type_ids().iter().copied());
            // Around the text: the tokens the post-processor placed before and after it.
            let placed = e.get_special_tokens_mask();
            let first = placed.iter().position(|&s| s == 0).unwrap_or(0);
            let last = placed.iter().rposition(|&s| s == 0).unwrap_or(first);
            let pool = pool.get_or_insert_with(|| WordPool {
                words: Vec::new(),
                prefix: tokens().take(first).collect(),
                suffix: tokens().skip(last + 1).collect(),
            });
            pool.words.extend(tokens().zip(&words).filter(|(_, w)| **w).map(|(t, _)| t));
        }
        pool.ok_or_else(no_words)
    }

    /// The ids of the tokenizer's special added tokens (`[CLS]`, `[SEP]`, `[PAD]`,
    /// `[MASK]`, ...), which a text may spell out and which are no words of it. The
    /// unknown token is not among them: it stands for text the vocabulary lacks (an
    /// emoji, a rare script), which is text all the same.
    fn special_ids(&self) -> std::collections::HashSet<u32> {
        use tokenizers::ModelWrapper;
        let unknown = match self.tokenizer.get_model() {
            ModelWrapper::WordPiece(m) => Some(m.unk_token.as_str()),
            ModelWrapper::WordLevel(m) => Some(m.unk_token.as_str()),
            ModelWrapper::BPE(m) => m.unk_token.as_deref(),
            ModelWrapper::Unigram(_) => None,
        };
        let unknown = unknown.and_then(|t| self.tokenizer.token_to_id(t));
        let added = self.tokenizer.get_added_tokens_decoder();
        let special = added.into_iter().filter(|(_, token)| token.special).map(|(id, _)| id);
        special.filter(|&id| Some(id) != unknown).collect()
    }

    /// Checks that some text gives a token other than the special ones the tokenizer
    /// adds: texts that all tokenize to nothing but those (control characters, zero-width
    /// spaces) hold nothing a model could be run, calibrated or timed on. One text that
    /// does is enough; the texts are tokenized a few at a time until one is found.
    ///
    /// # Errors
    /// [`Error::File`] naming `tokenizer.json` if the tokenizer fails on a text;
    /// [`Error::Texts`] if no text gives a token that is not a special one.
    pub fn check_words<S: AsRef<str>>(&self, texts: &[S]) -> Result<()> {
        for chunk in texts.chunks(64) {
            let encodings = self.encodings(chunk)?;
            let special_ids = self.special_ids();
            if encodings.iter().any(|e| word_positions(e, &special_ids).contains(&true)) {
                return Ok(());
            }
        }
        Err(no_words())
    }

    /// What tokenizing each of `texts` keeps of it: its tokens, whether one other than
    /// the special ones remains, and whether the text was cut at
    /// [`TextEncoder::max_len`] tokens. The model embeds a text without words as the
    /// special tokens alone, and a cut text from its first tokens.
    ///
    /// # Errors
    /// [`Error::File`] naming `tokenizer.json` if the tokenizer fails on a text.
    pub fn fit<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Fit>> {
        let special_ids = self.special_ids();
        Ok(self
            .encodings(texts)?
            .iter()
            .map(|e| Fit {
                tokens: e.get_ids().len(),
                has_words: word_positions(e, &special_ids).contains(&true),
                truncated: !e.get_overflowing().is_empty(),
            })
            .collect())
    }

    /// The tokenizer's encodings of `texts`, special tokens added, each truncated.
    fn encodings<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<tokenizers::Encoding>> {
        let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let failed = |reason: String| Error::File {
            path: self.path.clone(),
            reason: format!("the tokenizer fails on the text {reason}"),
        };
        // `from_folder` refuses the post-processors known to panic in the tokenizers
        // library; this catches any other panic it has, so that a file still gets an error.
        let encode = |inputs: Vec<&str>| {
            let batch = std::panic::AssertUnwindSafe(|| self.tokenizer.encode_batch(inputs, true));
            match std::panic::catch_unwind(batch) {
                Ok(encodings) => encodings.map_err(|e| e.to_string()),
                Err(panic) => Err(panic_message(&*panic)),
            }
        };
        encode(inputs.clone()).map_err(|reason| {
            // Which text: tokenized one at a time, on this path alone.
            match inputs.iter().find(|text| encode(vec![**text]).is_err()) {
                Some(text) => failed(format!("{}: {reason}", quoted(text))),
                None => failed(reason),
            }
        })
    }
}

/// `text` quoted for an error: its first 60 characters, control characters escaped.
fn quoted(text: &str) -> String {
    const SHOWN: usize = 60;
    let start: String = text.chars().take(SHOWN).collect();
    let cut = if text.chars().nth(SHOWN).is_some() { "..." } else { "" };
    format!("{start:?}{cut}")
}

/// Which tokens of `e` are the text's words: neither placed by the post-processor nor
/// a special token the text spelled out (`special_ids`).
fn word_positions(
    e: &tokenizers::Encoding,
    special_ids: &std::collections::HashSet<u32>,
) -> Vec<bool> {
    let placed = e.get_special_tokens_mask();
    e.get_ids().iter().zip(placed).map(|(id, &p)| p == 0 && !special_ids.contains(id)).collect()
}

/// What tokenizing one text keeps of it ([`TextEncoder::fit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    /// The tokens kept, special ones included.
    pub tokens: usize,
    /// Whether a token other than the tokenizer's special ones remains (spelled out in
    /// the text or placed around it).
    pub has_words: bool,
    /// Whether the text had more tokens than [`TextEncoder::max_len`] and was cut.
    pub truncated: bool,
}

/// The error of texts that give the tokenizer nothing but its special tokens.
fn no_words() -> Error {
    Error::Texts("no line gives a token other than the tokenizer's special ones".into())
}

/// What a panic of the tokenizers library said, for an error naming the file that
/// made it panic.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let said = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned());
    match said {
        Some(said) => format!("the tokenizers library panicked: {said}"),
        None => "the tokenizers library panicked".to_owned(),
    }
}

/// What in a post-processor would make the tokenizers library panic on a single text,
/// or lose or repeat its tokens, if anything: a `TemplateProcessing` whose template names
/// a special token it does not define, uses `$B` (the second text of a pair) for one
/// text or `$A` other than once, or (in a `Sequence` after another template) receives
/// other than one or two encodings.
fn post_processor_flaw(processor: &PostProcessorWrapper) -> Option<String> {
    let json = serde_json::to_value(processor).ok()?;
    flaw_in(&json, &mut 1)
}

/// [`post_processor_flaw`] of one processor in serialised form, given how many
/// encodings reach it; `inputs` becomes the number it passes on.
fn flaw_in(processor: &serde_json::Value, inputs: &mut usize) -> Option<String> {
    match processor["type"].as_str()? {
        "Sequence" => {
            let processors = processor["processors"].as_array()?;
            processors.iter().find_map(|p| flaw_in(p, inputs))
        }
        "TemplateProcessing" => {
            let (name, template) = match *inputs {
                1 => ("single", &processor["single"]),
                2 => ("pair", &processor["pair"]),
                n => {
                    return Some(format!(
                        "a TemplateProcessing after another in a Sequence receives {n} \
                         encodings, and takes one or two"
                    ));
                }
            };
            let pieces = template.as_array()?;
            for piece in pieces {
                if let Some(id) = piece["SpecialToken"]["id"].as_str()
                    && processor["special_tokens"].get(id).is_none()
                {
                    return Some(format!(
                        "the {name} template's special token {id:?} is not among the \
                         TemplateProcessing's special_tokens"
                    ));
                }
                if *inputs == 1 && piece["Sequence"]["id"] == "B" {
                    return Some(
                        "the single template uses $B, the second text of a pair, and \
                         shears encodes one text at a time"
                            .into(),
                    );
                }
            }
            let texts = pieces.iter().filter(|p| p["Sequence"]["id"] == "A").count();
            if *inputs == 1 && texts != 1 {
                return Some(format!(
                    "the single template uses $A (the text) {texts} times, where a text takes it once"
                ));
            }
            *inputs = pieces.len();
            None
        }
        _ => None,
    }
}

/// The tokens of some texts without the special ones the tokenizer adds, and those
/// special tokens, to cut sentences of an exact length from: for timing a model on
/// full-length sentences, whatever the texts' own lengths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WordPool {
    /// The texts' tokens, text after text: `(id, type id)`.
    words: Vec<(u32, u32)>,
    /// The special tokens before a sentence's words, and after them.
    prefix: Vec<(u32, u32)>,
    suffix: Vec<(u32, u32)>,
}

impl WordPool {
    /// The most tokens one batch of [`WordPool::sentences`] holds (64 Mi: 512 MiB of
    /// ids and types, and far more states than any model pass takes at once).
    pub const MAX_TOKENS: usize = 1 << 26;

    /// `sentences` sentences of exactly `seq_len` tokens, special tokens included: the
    /// pool's words in order, from the start again when they run out.
    ///
    /// # Errors
    /// [`Error::Argument`] if `seq_len` leaves no room for a word after the special
    /// tokens, or the batch would hold more than [`WordPool::MAX_TOKENS`] tokens.
    pub fn sentences(&self, sentences: usize, seq_len: usize) -> Result<Batch> {
        let tokens = sentences.checked_mul(seq_len).filter(|&t| t <= Self::MAX_TOKENS);
        if tokens.is_none() {
            return Err(Error::Argument(format!(
                "{sentences} sentences of {seq_len} tokens are more than the {} tokens of one batch",
                Self::MAX_TOKENS
            )));
        }
        let special = self.prefix.len() + self.suffix.len();
        if seq_len <= special {
            return Err(Error::Argument(format!(
                "sentences of {seq_len} tokens leave no room for text after the tokenizer's {special} special tokens"
            )));
        }
        let mut batch = Batch::default();
        let mut words = self.words.iter().cycle();
        for _ in 0..sentences {
            let sentence = self
                .prefix
                .iter()
                .chain(words.by_ref().take(seq_len - special))
                .chain(&self.suffix);
            for &(id, type_id) in sentence {
                batch.ids.push(id);
                batch.type_ids.push(type_id);
            }
            batch.lengths.push(seq_len);
        }
        Ok(batch)
    }
}

/// The lines of a text file that hold text (trimmed, empty lines skipped), at most
/// `limit` of them, each its first 64 KiB (a longer line is truncated by the tokenizer
/// anyway; the bound keeps a file of one huge line from being held), the rest unread.
///
/// # Errors
/// [`Error::File`] if the file cannot be read or is not UTF-8, a line read holds a NUL
/// byte anywhere or is longer than 16 MiB, or a line's first 64 KiB are white space;
/// [`Error::Texts`] if it has no line with text.
pub fn read_texts(path: &Path, limit: usize) -> Result<Vec<String>> {
    Ok(read_numbered_texts(path, limit)?.into_iter().map(|(_, text)| text).collect())
}

/// [`read_texts`] with each text's line number in the file (from 1), so that results
/// can be matched with lines when empty ones were skipped.
///
/// # Errors
/// As [`read_texts`].
pub fn read_numbered_texts(path: &Path, limit: usize) -> Result<Vec<(usize, String)>> {
    const MAX_LINE: usize = 64 << 10;
    let file_error = |reason: String| Error::File { path: path.to_owned(), reason };
    let file = shears_io::paths::open_regular_file(path)?;
    let mut reader = std::io::BufReader::new(file);
    let mut texts = Vec::new();
    let mut line = Vec::new();
    let mut number = 0;
    while texts.len() < limit {
        let read = match read_line(&mut reader, &mut line, MAX_LINE) {
            Ok(Some(read)) => read,
            Ok(None) => break,
            Err(e) => return Err(shears_io::Error::io("read", path, e).into()),
        };
        number += 1;
        let cut = match read {
            LineRead::Whole => false,
            LineRead::Cut => true,
            // UTF-8 allows NUL, text files do not: one is a binary file's (or a sparse
            // file's hole), which would otherwise be embedded as sentences of nothing.
            LineRead::Nul => {
                return Err(file_error(format!("line {number} holds a NUL byte: not a text file")));
            }
            LineRead::TooLong => {
                return Err(file_error(format!(
                    "line {number} is longer than {} MiB: not a file of one text per line",
                    MAX_LINE_SCANNED >> 20
                )));
            }
        };
        // The cut may split a character: drop its first bytes, and nothing else (a byte
        // that is not UTF-8 anywhere in the line is reported below).
        if cut
            && let Err(e) = std::str::from_utf8(&line)
            && e.error_len().is_none()
        {
            line.truncate(e.valid_up_to());
        }
        let text = std::str::from_utf8(&line)
            .map_err(|_| file_error(format!("line {number} is not UTF-8 text")))?;
        // A byte-order mark opens the file, and is no text.
        let text = if number == 1 { text.trim_start_matches('\u{feff}') } else { text };
        let text = text.trim();
        // A line cut before its text would be skipped as blank, or hold a stray byte of
        // the text: its first MAX_LINE bytes are white space.
        if cut && text.is_empty() {
            return Err(file_error(format!(
                "line {number} holds no text in its first {} KiB, the most shears reads of a line (white space)",
                MAX_LINE >> 10
            )));
        }
        if !text.is_empty() {
            texts.push((number, text.to_owned()));
        }
    }
    if texts.is_empty() {
        return Err(Error::Texts(format!("{}: no line holds text", path.display())));
    }
    Ok(texts)
}

/// The most bytes of one line [`read_line`] goes through (keeping the first `max`)
/// before it calls the line no text.
const MAX_LINE_SCANNED: usize = 16 << 20;

/// How [`read_line`] ended a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineRead {
    /// The whole line is kept.
    Whole,
    /// The line's first `max` bytes are kept and the rest skipped.
    Cut,
    /// The line holds a NUL byte: no text does. Read up to that byte.
    Nul,
    /// The line runs past [`MAX_LINE_SCANNED`] bytes. Read up to there.
    TooLong,
}

/// Reads the next line of `reader` into `line`, without its ending: `\n`, `\r\n` or a
/// lone `\r`, the line ends Python's text files know (a file from an old Mac has only
/// `\r`). Keeps the first `max` bytes of a longer line and skips the rest. Returns how
/// the line ended, or `None` at the end of the input. A NUL byte, or a line past
/// [`MAX_LINE_SCANNED`] bytes, stops the read where it is found, so that a sparse file
/// of gigabytes is not read to its end.
fn read_line(
    reader: &mut impl BufRead,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<LineRead>> {
    line.clear();
    let (mut read, mut cut) = (false, false);
    let mut scanned = 0usize;
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(read.then_some(if cut { LineRead::Cut } else { LineRead::Whole }));
        }
        read = true;
        let end = buf.iter().position(|&b| b == b'\n' || b == b'\r');
        let text = &buf[..end.unwrap_or(buf.len())];
        if let Some(nul) = text.iter().position(|&b| b == 0) {
            reader.consume(nul + 1);
            return Ok(Some(LineRead::Nul));
        }
        scanned += text.len();
        if scanned > MAX_LINE_SCANNED {
            let n = text.len();
            reader.consume(n);
            return Ok(Some(LineRead::TooLong));
        }
        let room = max - line.len();
        cut |= text.len() > room;
        line.extend_from_slice(&text[..text.len().min(room)]);
        let Some(end) = end else {
            let n = buf.len();
            reader.consume(n);
            continue;
        };
        let carriage_return = buf[end] == b'\r';
        reader.consume(end + 1);
        if carriage_return {
            // `\r\n` is one line end.
            let next = loop {
                match reader.fill_buf() {
                    Ok(next) => break next.first().copied(),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            };
            if next == Some(b'\n') {
                reader.consume(1);
            }
        }
        return Ok(Some(if cut { LineRead::Cut } else { LineRead::Whole }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_tokenizer_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("tokenizer.json")).unwrap();
        // Sparse: no bytes are written, and reading it would parse a GiB of zeros.
        file.set_len(MAX_TOKENIZER_BYTES + 1).unwrap();
        let err = TextEncoder::from_folder(dir.path(), 128).err().unwrap().to_string();
        assert!(
            err.contains("tokenizer.json") && err.contains("more than a tokenizer takes"),
            "{err}"
        );
    }

    #[test]
    fn batches_slice_and_chunk_by_whole_sentences() {
        let batch =
            Batch { ids: (0..10).collect(), type_ids: vec![0; 10], lengths: vec![3, 4, 1, 2] };
        assert_eq!(batch.ranges().collect::<Vec<_>>(), [0..3, 3..7, 7..8, 8..10]);
        assert_eq!(batch.slice(1..3).unwrap().ids, [3, 4, 5, 6, 7]);
        // A range past the sentences, or a batch whose fields disagree, is an error.
        assert!(batch.slice(1..9).is_err() && Batch::default().slice(0..1).is_err());
        let short = Batch { type_ids: vec![0], ..batch.clone() };
        let long = Batch { lengths: vec![2, 2, 9], ..batch.clone() };
        for bad in [short, long] {
            assert!(bad.check().is_err() && bad.slice(0..1).is_err(), "{bad:?}");
        }
        assert_eq!(batch.chunks(5), [0..1, 1..3, 3..4]);
        assert_eq!(batch.chunks(2), [0..1, 1..2, 2..3, 3..4]);
        assert_eq!(batch.chunks(100), vec![0..4]);
        assert_eq!(Batch::default().chunks(5), Vec::<std::ops::Range<usize>>::new());
    }

    #[test]
    fn texts_skip_blank_lines_and_bound_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt");
        let long = "é".repeat(40_000); // 80,000 bytes
        std::fs::write(&path, format!("  one \n\n\t\ntwo\n{long}\nthree")).unwrap();
        let texts = read_texts(&path, 100).unwrap();
        assert_eq!(texts.len(), 4);
        assert_eq!(&texts[..2], ["one", "two"]);
        assert!(texts[2].len() <= 64 << 10 && texts[2].starts_with('é'));
        assert_eq!(texts[3], "three");
        assert_eq!(read_texts(&path, 1).unwrap(), ["one"]);
        std::fs::write(&path, "\n \n").unwrap();
        assert!(read_texts(&path, 10).unwrap_err().to_string().contains("no line holds text"));
        std::fs::write(&path, b"ok\n\xff\xfe\n").unwrap();
        assert!(read_texts(&path, 10).unwrap_err().to_string().contains("line 2 is not UTF-8"));
        // An overlong line is cut at a character, but a stray byte before the cut is
        // still an error, as in a short line.
        let mut bad = b"ok\nhello \xff ".to_vec();
        bad.extend(std::iter::repeat_n(b'a', 100_000));
        std::fs::write(&path, &bad).unwrap();
        assert!(read_texts(&path, 10).unwrap_err().to_string().contains("line 2 is not UTF-8"));
        // The cut at 64 KiB falls inside a two-byte character: only its first byte goes.
        let split = format!("x{}", "é".repeat(40_000));
        std::fs::write(&path, &split).unwrap();
        assert_eq!(read_texts(&path, 10).unwrap()[0].len(), (64 << 10) - 1);
        // A line whose first 64 KiB are white space is refused, not skipped as blank:
        // its text lies past what is read (here also past a character cut in two).
        std::fs::write(&path, format!("hello\n{}x y z\nbye\n", " ".repeat(64 << 10))).unwrap();
        let err = read_texts(&path, 10).unwrap_err().to_string();
        assert!(err.contains("line 2 holds no text in its first 64 KiB"), "{err}");
        let cut = format!("hello\n{}\u{4e2d} more\n", " ".repeat((64 << 10) - 1));
        std::fs::write(&path, cut).unwrap();
        let err = read_texts(&path, 10).unwrap_err().to_string();
        assert!(err.contains("line 2 holds no text in its first 64 KiB"), "{err}");
        std::fs::write(&path, format!("hello\n{}x y z\nbye\n", " ".repeat((64 << 10) - 6)))
            .unwrap();
        assert_eq!(read_texts(&path, 10).unwrap(), ["hello", "x y z", "bye"]);
        // A byte-order mark is no text: a file of one holds none.
        std::fs::write(&path, "\u{feff}\n\n").unwrap();
        assert!(read_texts(&path, 10).unwrap_err().to_string().contains("no line holds text"));
        std::fs::write(&path, "\u{feff}one\r\ntwo\r\n").unwrap();
        assert_eq!(read_texts(&path, 10).unwrap(), ["one", "two"]);
        // Lines end as Python reads them: `\n`, `\r\n` or a lone `\r`, and are counted
        // so (a `\r\n` split between two reads of the buffer is still one end).
        std::fs::write(&path, "one\rtwo\r\rfour\r\nfive\n\rseven\r").unwrap();
        let numbered = read_numbered_texts(&path, 10).unwrap();
        let want = [(1, "one"), (2, "two"), (4, "four"), (5, "five"), (7, "seven")];
        assert_eq!(numbered, want.map(|(n, t)| (n, t.to_owned())));
        for split in 1..12 {
            let bytes = b"one\r\ntwo\r\n";
            let mut reader = std::io::BufReader::with_capacity(split, &bytes[..]);
            let mut line = Vec::new();
            let mut lines = Vec::new();
            while let Some(read) = read_line(&mut reader, &mut line, 2).unwrap() {
                lines.push((String::from_utf8(line.clone()).unwrap(), read == LineRead::Cut));
            }
            let want = [("on", true), ("tw", true)].map(|(l, c)| (l.to_owned(), c));
            assert_eq!(lines, want, "buffer of {split}");
        }
        // NUL bytes are a binary file's, whether alone on a line or inside text.
        for bytes in [&b"one\n\0\0\0\n"[..], b"one\ntw\0o\n", b"\0"] {
            std::fs::write(&path, bytes).unwrap();
            let err = read_texts(&path, 10).unwrap_err().to_string();
            assert!(err.contains("holds a NUL byte: not a text file"), "{err}");
        }
    }

    /// A line of NUL bytes (a sparse file's hole) is refused at its first buffer, not
    /// after reading to its end: of a TiB of them, less than a MiB is read. So is one
    /// whose NUL bytes come after its first 64 KiB, and a line longer than 16 MiB is
    /// refused after 16 MiB, whatever follows.
    #[test]
    fn a_line_of_nul_bytes_is_refused_unread() {
        let endless = |prefix: &'static [u8], byte: u8| {
            let rest = std::io::Read::take(std::io::repeat(byte), 1 << 40);
            std::io::BufReader::new(std::io::Read::chain(prefix, rest))
        };
        for (prefix, byte, want, most) in [
            (&b""[..], 0, LineRead::Nul, 1 << 20),
            (&[b'a'; 70_000][..], 0, LineRead::Nul, 1 << 20),
            (&b"ab"[..], b'a', LineRead::TooLong, MAX_LINE_SCANNED as u64 + (1 << 20)),
        ] {
            let mut reader = endless(prefix, byte);
            let mut line = Vec::new();
            assert_eq!(read_line(&mut reader, &mut line, 64 << 10).unwrap(), Some(want));
            assert!(line.len() <= 64 << 10);
            let unread = reader.into_inner().into_inner().1.limit();
            let read = (1u64 << 40) - unread;
            assert!(read < most, "{want:?}: {read} bytes read");
        }

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.txt");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(1 << 36).unwrap();
        let err = read_texts(&path, 10).unwrap_err().to_string();
        assert!(err.contains("line 1 holds a NUL byte"), "{err}");
    }
}
