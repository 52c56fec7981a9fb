//! The error type of shears-io.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use safetensors::Dtype;

/// The result type of shears-io.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong reading or writing shears' files.
///
/// Every variant names the file or the tensor it is about, so a one-line report of it is
/// enough for a user to act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operation on a file failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was being done: `open`, `read`, `create`, `write`, `sync`, `rename`...
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not a valid safetensors file.
    #[error("{}: not a valid safetensors file: {problem}", path.display())]
    Header {
        /// The file.
        path: PathBuf,
        /// What is wrong with its header.
        problem: HeaderProblem,
    },
    /// A file is something else than a safetensors file.
    #[error("{}: not a safetensors file: it looks like {kind}", path.display())]
    NotSafetensors {
        /// The file.
        path: PathBuf,
        /// What it looks like.
        kind: FileKind,
    },
    /// A checkpoint has no tensor of that name.
    #[error("{}: no tensor `{tensor}`", path.display())]
    UnknownTensor {
        /// The checkpoint.
        path: PathBuf,
        /// The name asked for.
        tensor: String,
    },
    /// A tensor's dtype is not a floating-point one (nor int8 with scales).
    #[error(
        "{}: tensor `{tensor}` has dtype {dtype:?}: only f16, bf16, f32 and f64 tensors, and int8 ones with their `.scale` tensor, can be decoded",
        path.display()
    )]
    NotFloat {
        /// The checkpoint.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: Dtype,
    },
    /// A tensor is larger than the memory this process can allocate for it.
    #[error(
        "tensor `{tensor}` needs {bytes} bytes of memory decoded, more than can be allocated here"
    )]
    TooLarge {
        /// The tensor.
        tensor: String,
        /// The bytes its decoded values take.
        bytes: u64,
    },
    /// A quantized tensor's scales are invalid.
    #[error("{}: quantized tensor `{tensor}`: {reason}", path.display())]
    Quantized {
        /// The file.
        path: PathBuf,
        /// The tensor at fault.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// An entry of the file's `__metadata__` that shears reads is invalid.
    #[error("{}: metadata `{key}`: {reason}", path.display())]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The entry.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor's shape does not fit what was asked of it (a matrix view of a 3-D
    /// tensor, records that do not divide it).
    #[error("tensor `{tensor}` of shape {shape:?}: {reason}")]
    Shape {
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<usize>,
        /// What does not fit.
        reason: String,
    },
    /// A tensor written through [`crate::write_safetensors`] did not take the bytes its
    /// header entry declares.
    #[error(
        "tensor `{tensor}` was written as {written} bytes, its header entry declares {declared}"
    )]
    WrittenLength {
        /// The tensor.
        tensor: String,
        /// Bytes written.
        written: usize,
        /// Bytes declared.
        declared: usize,
    },
    /// A set of tensors cannot make a safetensors header (duplicate names, offsets
    /// that overlap).
    #[error("cannot build a safetensors header: {reason}")]
    Layout {
        /// What the safetensors crate reported.
        reason: String,
    },
    /// A stored mask or mask set is invalid.
    #[error("{}", path.display())]
    Masks {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: shears_core::Error,
    },
    /// A path given as an input is not a file or folder shears may read.
    #[error("cannot read {}: it {reason}", path.display())]
    Input {
        /// The path.
        path: PathBuf,
        /// What it is, or holds.
        reason: String,
    },
    /// A sharded model's index is invalid or does not match its shards.
    #[error("{}: {reason}", path.display())]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// One file was given in two roles, at least one of them written (or twice in one
    /// role, as two of a folder's outputs).
    #[error("{}", same_file(path, other, first, second))]
    SameFile {
        /// The file (as the first role named it).
        path: PathBuf,
        /// The file as the second role named it.
        other: PathBuf,
        /// The first role.
        first: &'static str,
        /// The second role.
        second: &'static str,
    },
    /// A path given as an output is not one shears may write.
    #[error("refusing to write {}: {reason}", path.display())]
    Output {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
}

/// `text` in at most about `max_chars` characters, for an error that quotes what a file or
/// the command line held: a longer text keeps its first two thirds and its last third,
/// around a note of how many characters were left out, so that a value of megabytes makes
/// a line of a few hundred characters that still shows how it starts and ends.
pub fn clipped(text: &str, max_chars: usize) -> Cow<'_, str> {
    let count = text.chars().count();
    if count <= max_chars {
        return text.into();
    }
    let head = max_chars * 2 / 3;
    let tail = max_chars - head;
    let start: String = text.chars().take(head).collect();
    let end: String = text.chars().skip(count - tail).collect();
    format!("{start}... ({} characters left out) ...{end}", count - head - tail).into()
}

impl Error {
    /// An [`Error::Io`] for `op` on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { op, path: path.into(), source }
    }
}

/// What is wrong with a safetensors header; one variant per check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderProblem {
    /// The file is too short to hold the 8-byte header length.
    #[error("{len} bytes, shorter than the 8-byte header length")]
    TooShort {
        /// The file's length.
        len: u64,
    },
    /// The header length exceeds the limit.
    #[error("header length {len} exceeds the {limit}-byte limit")]
    TooLong {
        /// The declared length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// The header runs past the end of the file.
    #[error("header length {len} runs past the end of the {file_len}-byte file")]
    PastEnd {
        /// The declared length.
        len: u64,
        /// The file's length.
        file_len: u64,
    },
    /// The header is not UTF-8.
    #[error("header is not UTF-8: {reason}")]
    NotUtf8 {
        /// The decoder's message.
        reason: String,
    },
    /// The header is not a JSON object.
    #[error("header is not a JSON object: {reason}")]
    NotJson {
        /// The parser's message.
        reason: String,
    },
    /// `__metadata__` is not a map of strings.
    #[error("`__metadata__` is not a map of strings: {reason}")]
    Metadata {
        /// The parser's message.
        reason: String,
    },
    /// A tensor's entry is not `{dtype, shape, data_offsets}`.
    #[error("tensor `{tensor}` has an invalid entry: {reason}")]
    Entry {
        /// The tensor.
        tensor: String,
        /// The parser's message.
        reason: String,
    },
    /// Two tensors have the same name.
    #[error("tensor `{tensor}` appears twice")]
    Duplicate {
        /// The name.
        tensor: String,
    },
    /// A tensor's data does not start where the previous one ends.
    #[error("tensor `{tensor}` has data offsets [{start}, {end}], expected to start at {expected}")]
    Offsets {
        /// The tensor.
        tensor: String,
        /// Its first byte.
        start: usize,
        /// One past its last byte.
        end: usize,
        /// Where it should start.
        expected: usize,
    },
    /// A tensor's data runs past the data the file holds.
    #[error(
        "tensor `{tensor}` has data offsets [{start}, {end}], past the {held} bytes of data the file holds"
    )]
    PastData {
        /// The tensor.
        tensor: String,
        /// Its first byte.
        start: usize,
        /// One past its last byte.
        end: usize,
        /// Bytes after the header.
        held: u64,
    },
    /// A tensor's shape times its dtype size overflows or is not whole bytes.
    #[error(
        "tensor `{tensor}` of shape {shape:?} and dtype {dtype:?} is too large to address or not whole bytes"
    )]
    NoByteSize {
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<usize>,
        /// Its dtype.
        dtype: Dtype,
    },
    /// A tensor's offsets span another byte count than its shape and dtype need.
    #[error(
        "tensor `{tensor}` of shape {shape:?} and dtype {dtype:?} needs {needed} bytes, its offsets span {spanned}"
    )]
    Size {
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<usize>,
        /// Its dtype.
        dtype: Dtype,
        /// Bytes its shape needs.
        needed: usize,
        /// Bytes its offsets span.
        spanned: usize,
    },
    /// The tensors' data does not end exactly at the end of the file.
    #[error("the header describes {described} bytes of data, the file holds {held}")]
    DataLength {
        /// Bytes the header describes.
        described: usize,
        /// Bytes after the header.
        held: u64,
    },
}

/// What a file that is not safetensors looks like, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FileKind {
    /// A zip archive: PyTorch's `torch.save` format (`pytorch_model.bin`, `.pt`, `.pth`).
    #[error(
        "a zip archive, as torch.save writes (pytorch_model.bin, .pt): convert it to safetensors first"
    )]
    TorchZip,
    /// A Python pickle: an old `torch.save` file.
    #[error("a Python pickle (an old torch.save file): convert it to safetensors first")]
    Pickle,
    /// One of shears' own binary formats (a mask, a mask set, a sparse matrix).
    #[error("a shears {0} file, not a checkpoint")]
    Shears(&'static str),
    /// The start of one of shears' own formats' tags, but fewer bytes than a tag: a
    /// mask, mask set or matrix file cut short.
    #[error("the start of a shears file (a mask, mask set or matrix), cut short inside its tag")]
    ShearsCutShort,
    /// JSON text: a config or an index.
    #[error(
        "JSON text (a config or model.safetensors.index.json?): give the model folder or the index"
    )]
    Json,
    /// gzip-compressed data.
    #[error("gzip-compressed data: decompress it first")]
    Gzip,
    /// A GGUF file (llama.cpp).
    #[error("a GGUF file (llama.cpp), which shears does not read")]
    Gguf,
    /// An ONNX model or another protobuf.
    #[error("an ONNX model, which shears does not read")]
    Onnx,
    /// Text: printable UTF-8 with line breaks, such as a file of sentences.
    #[error("text")]
    Text,
}

impl FileKind {
    /// Recognises a file by its first bytes, if it is a kind shears knows.
    pub fn sniff(head: &[u8]) -> Option<FileKind> {
        let shears = [
            (b"SHEARSMK", "mask"),
            (b"SHEARSMS", "mask set"),
            (b"SHEARCSR", "CSR matrix"),
            (b"SHEARSEL", "sliced-ELLPACK matrix"),
            (b"SHEARNM\0", "N:M matrix"),
            (b"SHEARBSR", "block-sparse matrix"),
        ];
        if let Some((_, what)) = shears.iter().find(|(magic, _)| head.starts_with(*magic)) {
            return Some(FileKind::Shears(what));
        }
        // "SHEAR", the tags' common start, or more of one of them, and nothing after.
        if (5..8).contains(&head.len()) && shears.iter().any(|(magic, _)| magic.starts_with(head)) {
            return Some(FileKind::ShearsCutShort);
        }
        let first = head.iter().copied().find(|b| !b.is_ascii_whitespace());
        Some(match head {
            [b'P', b'K', 3, 4, ..] => FileKind::TorchZip,
            [0x80, 2..=5, ..] => FileKind::Pickle,
            [0x1f, 0x8b, ..] => FileKind::Gzip,
            [b'G', b'G', b'U', b'F', ..] => FileKind::Gguf,
            // ModelProto starts with field 1 (ir_version, a small varint), then the next
            // of its fields 2-8 (producer, version, domain, model version, doc, graph,
            // opsets), or names ONNX.
            [0x08, 1..=32, 0x12 | 0x1a | 0x22 | 0x28 | 0x32 | 0x3a | 0x42, ..] => FileKind::Onnx,
            [0x08, _, ..] if head.windows(4).any(|w| w == b"onnx" || w == b"ONNX") => {
                FileKind::Onnx
            }
            _ if first == Some(b'{') => FileKind::Json,
            // Eight bytes or more: a safetensors header's length, little-endian and far
            // below 2^56, ends in a zero byte, which text never holds.
            _ if head.len() >= 8 && is_text(head) => FileKind::Text,
            _ => return None,
        })
    }
}

/// Whether `head`, the first bytes of a file, is UTF-8 (the last character possibly cut
/// off) without control characters but tabs, line and page breaks.
fn is_text(head: &[u8]) -> bool {
    let valid = match std::str::from_utf8(head) {
        Ok(text) => text,
        // Cut inside a character's bytes: the bytes before it.
        Err(e) if e.error_len().is_none() => {
            std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or_default()
        }
        Err(_) => return false,
    };
    !valid.is_empty()
        && valid.chars().all(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r' | '\x0c'))
}

/// [`Error::SameFile`]'s message: the roles, or the two names when the role is one.
fn same_file(path: &Path, other: &Path, first: &str, second: &str) -> String {
    if first == second {
        format!(
            "{} and {} are one file, and both are the {first}: give distinct files",
            path.display(),
            other.display()
        )
    } else if path == other {
        format!("{} is both the {first} and the {second}: give distinct files", path.display())
    } else {
        // Two names of one file: a hard link, a link to it, or another path.
        format!(
            "the {first} {} and the {second} {} are one file: give distinct files",
            path.display(),
            other.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A text within the bound is shown whole; a longer one keeps its start and end,
    /// whole characters (multi-byte ones too), and says how many it left out, so the
    /// characters shown and left out add up to the text.
    #[test]
    fn clipped_keeps_both_ends_and_counts_the_rest() {
        assert_eq!(clipped("hidden_size", 11), "hidden_size");
        for (text, max) in [("é".repeat(100_000), 240), ("ab".repeat(7), 9), ("xyz".into(), 2)] {
            let shown = clipped(&text, max);
            let (start, rest) = shown.split_once("... (").unwrap();
            let (left_out, end) = rest.split_once(" characters left out) ...").unwrap();
            let left_out: usize = left_out.parse().unwrap();
            assert!(text.starts_with(start) && text.ends_with(end), "{shown}");
            assert_eq!(start.chars().count() + end.chars().count(), max, "{shown}");
            assert_eq!(
                start.chars().count() + left_out + end.chars().count(),
                text.chars().count()
            );
        }
    }
}
