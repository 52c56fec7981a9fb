//! Writing safetensors files tensor by tensor, atomically, in bounded memory.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use nalgebra::DMatrix;
use rayon::prelude::*;
use safetensors::Dtype;
use safetensors::tensor::TensorInfo;
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::atomic::{PendingFile, commit_all};
use crate::checkpoint::CHUNK_BYTES;
use crate::dtype::{Float, encode_append, encode_into, float_size};
use crate::error::{Error, Result};
use crate::header::{MAX_HEADER_BYTES, MAX_RANK, data_bytes};
use crate::transpose::transpose_from;
use crate::write_behind::WriteBehind;

/// The header entries of tensors laid out one after another in the given order:
/// `(name, dtype, shape)` in, `(name, TensorInfo)` with data offsets out.
///
/// # Errors
/// [`Error::Layout`] when a tensor's byte size overflows or is not whole bytes (which
/// readers refuse).
pub fn layout(
    tensors: impl IntoIterator<Item = (String, Dtype, Vec<usize>)>,
) -> Result<Vec<(String, TensorInfo)>> {
    let mut offset = 0usize;
    tensors
        .into_iter()
        .map(|(name, dtype, shape)| {
            let mut info = TensorInfo { dtype, shape, data_offsets: (0, 0) };
            let end = data_bytes(&info).and_then(|bytes| offset.checked_add(bytes));
            let Some(end) = end else {
                return Err(Error::Layout {
                    reason: format!(
                        "tensor `{name}` of shape {:?} and dtype {dtype:?} is too large or not whole bytes",
                        info.shape
                    ),
                });
            };
            info.data_offsets = (offset, end);
            offset = end;
            Ok((name, info))
        })
        .collect()
}

/// Writes a safetensors file tensor by tensor and commits it over `out` (see
/// [`stage_safetensors`]).
///
/// # Errors
/// As [`stage_safetensors`], and [`Error::Io`] if the commit fails.
pub fn write_safetensors<E: From<Error>>(
    out: &Path,
    tensors: &[(String, TensorInfo)],
    metadata: Option<&HashMap<String, String>>,
    produce: impl FnMut(&str, &mut dyn Write) -> Result<(), E>,
) -> Result<(), E> {
    let staged = stage_safetensors(out, tensors, metadata, produce)?;
    commit_all(vec![staged])?;
    Ok(())
}

/// Writes a safetensors file tensor by tensor to a temporary beside `out`, and returns it
/// ready to commit ([`PendingFile::commit`], or [`commit_all`] together with other
/// outputs); dropping it removes the temporary and leaves `out` as it was.
///
/// The header is written first (every size is known from `tensors`), then each tensor's
/// bytes as `produce(name, writer)` writes them, in the order of `tensors`. So at most
/// one tensor is in memory at a time, plus the bounded bytes a writer thread has not
/// written yet (256 MiB at most; with direct I/O where the file system takes it, which
/// `SHEARS_BUFFERED_WRITES=1` turns off).
///
/// # Errors
/// [`Error::Layout`] for entries that make no header; [`Error::WrittenLength`] if
/// `produce` writes another byte count than a tensor's entry declares; [`Error::Io`] for
/// failed writes; and whatever `produce` returns.
pub fn stage_safetensors<E: From<Error>>(
    out: &Path,
    tensors: &[(String, TensorInfo)],
    metadata: Option<&HashMap<String, String>>,
    mut produce: impl FnMut(&str, &mut dyn Write) -> Result<(), E>,
) -> Result<(PendingFile, File), E> {
    let mut writer = TensorWriter::create(out, tensors, metadata)?;
    for (name, _) in tensors {
        writer.write(name, |w| produce(name, w))?;
    }
    Ok(writer.finish()?)
}

/// A safetensors file being written tensor by tensor, in the order of its header, to a
/// temporary beside its target: [`stage_safetensors`] as an object, for a caller that
/// writes several files in one pass (a checkpoint and its masks, say).
///
/// It borrows its entries rather than copying them: a checkpoint may have a million
/// tensors, and its header is then the largest thing in memory.
pub struct TensorWriter<'a> {
    out: PathBuf,
    pending: PendingFile,
    writer: WriteBehind,
    /// The header's entries, in the order their bytes are written.
    tensors: &'a [(String, TensorInfo)],
    next: usize,
}

impl<'a> TensorWriter<'a> {
    /// Starts the file: checks the entries, creates the temporary, writes the header.
    ///
    /// The header is the safetensors JSON: `__metadata__` first (its keys sorted, so the
    /// same inputs give the same bytes), then the tensors in the order given, padded with
    /// spaces to a multiple of 8 bytes.
    ///
    /// # Errors
    /// [`Error::Layout`] for entries that make no header (a repeated or reserved name,
    /// data offsets that do not follow one another from 0, a header longer than
    /// [`MAX_HEADER_BYTES`]); the errors of
    /// [`PendingFile::create`]; [`Error::Io`] for a failed write.
    pub fn create(
        out: &Path,
        tensors: &'a [(String, TensorInfo)],
        metadata: Option<&HashMap<String, String>>,
    ) -> Result<TensorWriter<'a>> {
        check_entries(tensors)?;
        let json = HeaderJson { tensors, metadata: metadata.map(|m| m.iter().collect()) };
        let mut counted = Counted { inner: &mut std::io::sink(), bytes: 0 };
        serde_json::to_writer(&mut counted, &json)
            .map_err(|e| Error::Layout { reason: e.to_string() })?;
        let padded = counted.bytes.next_multiple_of(8);
        if padded as u64 > MAX_HEADER_BYTES {
            // Readers refuse such a header (shears and the safetensors crate alike).
            return Err(Error::Layout {
                reason: format!(
                    "its header would be {padded} bytes ({} tensors), past the {MAX_HEADER_BYTES} bytes safetensors readers take",
                    tensors.len()
                ),
            });
        }
        let (pending, file) = PendingFile::create(out)?;
        let io = |e| Error::io("write", out, e);
        let mut writer = WriteBehind::new(file).map_err(io)?;
        {
            let mut header = BufWriter::with_capacity(1 << 16, &mut writer);
            header.write_all(&(padded as u64).to_le_bytes()).map_err(io)?;
            serde_json::to_writer(&mut header, &json).map_err(|e| match e.io_error_kind() {
                Some(kind) => Error::io("write", out, kind.into()),
                None => Error::Layout { reason: e.to_string() },
            })?;
            header.write_all(&b"        "[..padded - counted.bytes]).map_err(io)?;
            header.flush().map_err(io)?;
        }
        Ok(TensorWriter { out: out.to_owned(), pending, writer, tensors, next: 0 })
    }

    /// The target this file will be committed to.
    pub fn target(&self) -> &Path {
        &self.out
    }

    /// Writes the next tensor, which must be `name`: `produce` writes its bytes.
    ///
    /// # Errors
    /// [`Error::Layout`] when `name` is not the next tensor of the header;
    /// [`Error::WrittenLength`] when `produce` writes another byte count than its entry
    /// declares; whatever `produce` returns.
    pub fn write<E: From<Error>>(
        &mut self,
        name: &str,
        produce: impl FnOnce(&mut dyn Write) -> Result<(), E>,
    ) -> Result<(), E> {
        let Some((expected, info)) = self.tensors.get(self.next) else {
            return Err(
                Error::Layout { reason: format!("tensor `{name}` is not in the header") }.into()
            );
        };
        if expected != name {
            return Err(Error::Layout {
                reason: format!("tensor `{name}` written where `{expected}` comes next"),
            }
            .into());
        }
        let mut counted = Counted { inner: &mut self.writer, bytes: 0 };
        produce(&mut counted)?;
        let declared = info.data_offsets.1 - info.data_offsets.0;
        if counted.bytes != declared {
            return Err(Error::WrittenLength {
                tensor: name.to_owned(),
                written: counted.bytes,
                declared,
            }
            .into());
        }
        self.next += 1;
        Ok(())
    }

    /// Waits for every byte to be written and returns the file ready to commit.
    ///
    /// # Errors
    /// [`Error::Layout`] if tensors of the header were not written; [`Error::Io`] for
    /// the first failed write.
    pub fn finish(self) -> Result<(PendingFile, File)> {
        if let Some((missing, _)) = self.tensors.get(self.next) {
            return Err(Error::Layout { reason: format!("tensor `{missing}` was not written") });
        }
        let file = self.writer.finish().map_err(|e| Error::io("write", &self.out, e))?;
        Ok((self.pending, file))
    }
}

/// The header's JSON object, serialized straight to the file.
struct HeaderJson<'a> {
    tensors: &'a [(String, TensorInfo)],
    metadata: Option<BTreeMap<&'a String, &'a String>>,
}

impl Serialize for HeaderJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if let Some(metadata) = &self.metadata {
            map.serialize_entry("__metadata__", metadata)?;
        }
        for (name, info) in self.tensors {
            map.serialize_entry(name, info)?;
        }
        map.end()
    }
}

/// Names unique and not `__metadata__`, the data offsets contiguous from 0, and each
/// tensor's bytes those of its shape and dtype in at most `MAX_RANK` dimensions: the
/// entries of a file that readers accept.
fn check_entries(tensors: &[(String, TensorInfo)]) -> Result<()> {
    let mut end = 0;
    for (name, info) in tensors {
        let (start, stop) = info.data_offsets;
        if start != end || stop < start {
            return Err(Error::Layout {
                reason: format!(
                    "tensor `{name}` has data offsets [{start}, {stop}] where {end} comes next"
                ),
            });
        }
        if info.shape.len() > MAX_RANK {
            return Err(Error::Layout {
                reason: format!("tensor `{name}` has more than {MAX_RANK} dimensions"),
            });
        }
        if data_bytes(info) != Some(stop - start) {
            return Err(Error::Layout {
                reason: format!(
                    "tensor `{name}` of shape {:?} and dtype {:?} is given {} bytes, not its size",
                    info.shape,
                    info.dtype,
                    stop - start
                ),
            });
        }
        if name == "__metadata__" {
            return Err(Error::Layout { reason: "a tensor is named `__metadata__`".into() });
        }
        end = stop;
    }
    let mut names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|p| p[0] == p[1]) {
        return Err(Error::Layout { reason: format!("tensor `{}` appears twice", pair[0]) });
    }
    Ok(())
}

/// A writer that counts the bytes passed through it.
struct Counted<'a, W: Write> {
    inner: &'a mut W,
    bytes: usize,
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Chunks of [`CHUNK_BYTES`] that [`write_values`] encodes at once, on rayon's threads.
const ENCODE_CHUNKS: usize = 8;

fn not_float(dtype: Dtype) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("dtype {dtype:?} is not a floating type"),
    )
}

/// Writes `values` (in file order) as little-endian `dtype` bytes to `out`, a chunk at a
/// time; `T`'s own little-endian type is written without an encoding pass.
///
/// # Errors
/// `InvalidInput` for a non-floating dtype, or the writer's error.
pub fn write_values<T: Float>(
    values: &[T],
    dtype: Dtype,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let size = float_size(dtype).ok_or_else(|| not_float(dtype))?;
    if size == size_of::<T>() && cfg!(target_endian = "little") {
        return out.write_all(bytemuck::cast_slice(values));
    }
    let per_chunk = (CHUNK_BYTES / size).max(1);
    let mut bytes = Vec::new();
    for piece in values.chunks(per_chunk * ENCODE_CHUNKS) {
        bytes.resize(piece.len() * size, 0);
        bytes.par_chunks_mut(per_chunk * size).zip(piece.par_chunks(per_chunk)).for_each(
            |(b, v)| {
                encode_into(dtype, v, b);
            },
        );
        out.write_all(&bytes)?;
    }
    Ok(())
}

/// Writes `matrix` to `out` in row-major order as `dtype`, a block of rows at a time.
///
/// # Errors
/// `InvalidInput` for a non-floating dtype, or the writer's error.
pub fn write_matrix<T: Float>(
    matrix: &DMatrix<T>,
    dtype: Dtype,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let (rows, cols) = matrix.shape();
    let size = float_size(dtype).ok_or_else(|| not_float(dtype))?;
    if matrix.is_empty() {
        return Ok(());
    }
    let block = (CHUNK_BYTES / (cols * size)).clamp(1, rows);
    let (mut values, mut bytes) = (Vec::new(), Vec::new());
    for first in (0..rows).step_by(block) {
        let n = block.min(rows - first);
        values.clear();
        values.resize(n * cols, T::zero());
        transpose_from(matrix.as_slice(), rows, first, &mut values, n, cols);
        bytes.clear();
        encode_append(dtype, &values, &mut bytes);
        out.write_all(&bytes)?;
    }
    Ok(())
}
