//! Reading safetensors checkpoints a tensor at a time, in bounded memory.
//!
//! A [`Checkpoint`] reads only the header when it opens a file, validates it against the
//! file's length (offsets contiguous from zero, byte counts equal to shape × dtype size,
//! no overflow, the data ending exactly at the end of the file), and reads each tensor's
//! bytes on demand with positioned reads. Nothing is memory-mapped, so a model far larger
//! than RAM costs one tensor's buffers, not resident pages of the whole file.
//!
//! ```
//! use shears_cli::checkpoint::Checkpoint;
//!
//! // One 2x2 f32 tensor, written by hand.
//! let header = br#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;
//! let mut file = (header.len() as u64).to_le_bytes().to_vec();
//! file.extend_from_slice(header);
//! for v in [1.0f32, 0.0, -2.0, 3.0] { file.extend_from_slice(&v.to_le_bytes()); }
//!
//! let ckpt = Checkpoint::from_source("in-memory", file)?;
//! let w = ckpt.read_matrix::<f32>("w")?;
//! assert_eq!(w[(1, 0)], -2.0); // row-major on disk, a column-major matrix in memory
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nalgebra::DMatrix;
use rayon::prelude::*;
use safetensors::tensor::{Dtype, TensorInfo};

/// The largest header accepted, as in the safetensors crate (100 MB).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Bytes read or written per step when a tensor is streamed (rounded to whole rows).
const CHUNK_BYTES: usize = 4 << 20;

/// Bytes that can be read at any offset, by several threads at once: a file, or bytes
/// in memory.
pub trait Source: Sync {
    /// The total length in bytes.
    ///
    /// # Errors
    /// When the length cannot be read (a file's metadata).
    fn len(&self) -> Result<u64>;

    /// Whether the source holds no byte.
    ///
    /// # Errors
    /// As [`Source::len`].
    fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Fills `buf` with the bytes at `offset..offset + buf.len()`.
    ///
    /// # Errors
    /// An I/O error, or `UnexpectedEof` when the range runs past the end.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl Source for File {
    fn len(&self) -> Result<u64> {
        Ok(self.metadata()?.len())
    }

    /// A positioned read (`pread`): no shared file position, so threads may read at once.
    #[cfg(unix)]
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }

    /// A positioned read (`ReadFile` with an offset), repeated until `buf` is full.
    #[cfg(windows)]
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
        while !buf.is_empty() {
            match std::os::windows::fs::FileExt::seek_read(self, buf, offset) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Source for [u8] {
    fn len(&self) -> Result<u64> {
        Ok(<[u8]>::len(self) as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let bytes = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

impl Source for Vec<u8> {
    fn len(&self) -> Result<u64> {
        <[u8] as Source>::len(self.as_slice())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
}

/// A floating-point type tensors are decoded into: `f32` (exact for f16, bf16 and f32
/// data) or `f64` (exact for all four float dtypes).
pub trait Float: shears_core::Scalar + From<f32> + bytemuck::Pod {}
impl Float for f32 {}
impl Float for f64 {}

/// How many of `values` are zero (either sign). Counted in `u32` lanes a block at a
/// time, which vectorises twice as wide as a `usize` count.
pub fn zeros_in<T: Float>(values: &[T]) -> usize {
    let block = |b: &[T]| b.iter().map(|&v| u32::from(v == T::zero())).sum::<u32>() as usize;
    values.chunks(1 << 16).map(block).sum()
}

/// Whether shears can prune tensors of this dtype.
pub fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
}

/// Bytes per element of a floating dtype.
fn float_size(dtype: Dtype) -> Result<usize> {
    if !is_float(dtype) {
        bail!("dtype {dtype:?} is not a floating type");
    }
    Ok(dtype.bitsize() / 8)
}

/// Decodes little-endian `dtype` values into `out` (`bytes.len()` must be
/// `out.len()` elements). Decoding f64 data into `f32` rounds; everything else is exact.
///
/// # Errors
/// A non-floating dtype, or a byte count that does not match.
pub fn decode_into<T: Float>(dtype: Dtype, bytes: &[u8], out: &mut [T]) -> Result<()> {
    let size = float_size(dtype)?;
    if bytes.len() != out.len() * size {
        bail!("{} bytes cannot hold {} {dtype:?} values", bytes.len(), out.len());
    }
    let pairs = bytes.chunks_exact(size).zip(out.iter_mut());
    match dtype {
        Dtype::F16 => {
            pairs.for_each(|(b, o)| *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32().into())
        }
        Dtype::BF16 => {
            pairs.for_each(|(b, o)| *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32().into())
        }
        Dtype::F32 => {
            pairs.for_each(|(b, o)| *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]).into())
        }
        _ => pairs.for_each(|(b, o)| {
            *o = T::from_f64_lossy(f64::from_le_bytes([
                b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
            ]))
        }),
    }
    Ok(())
}

/// Encodes `values` as little-endian `dtype` bytes, appended to `out`. Values that came
/// from `dtype` (or are zero) round-trip exactly.
///
/// # Errors
/// A non-floating dtype.
pub fn encode_into<T: Float>(dtype: Dtype, values: &[T], out: &mut Vec<u8>) -> Result<()> {
    let size = float_size(dtype)?;
    let start = out.len();
    out.resize(start + values.len() * size, 0);
    encode_to_slice(dtype, values, &mut out[start..])
}

/// [`encode_into`] into `out`, exactly `values.len()` elements of `dtype` long.
fn encode_to_slice<T: Float>(dtype: Dtype, values: &[T], out: &mut [u8]) -> Result<()> {
    let size = float_size(dtype)?;
    if out.len() != values.len() * size {
        bail!("{} bytes cannot hold {} {dtype:?} values", out.len(), values.len());
    }
    let pairs = out.chunks_exact_mut(size).zip(values);
    // From `f32` values the narrowing goes through f32, several times faster than
    // through f64 and exact (`as_f64` of an f32 is exact); `f64` values round once.
    let single = size_of::<T>() == 4;
    match dtype {
        Dtype::F16 if single => pairs.for_each(|(o, v)| {
            o.copy_from_slice(&half::f16::from_f32(v.as_f64() as f32).to_le_bytes())
        }),
        Dtype::BF16 if single => pairs.for_each(|(o, v)| {
            o.copy_from_slice(&half::bf16::from_f32(v.as_f64() as f32).to_le_bytes())
        }),
        Dtype::F16 => pairs
            .for_each(|(o, v)| o.copy_from_slice(&half::f16::from_f64(v.as_f64()).to_le_bytes())),
        Dtype::BF16 => pairs
            .for_each(|(o, v)| o.copy_from_slice(&half::bf16::from_f64(v.as_f64()).to_le_bytes())),
        Dtype::F32 => {
            pairs.for_each(|(o, v)| o.copy_from_slice(&(v.as_f64() as f32).to_le_bytes()))
        }
        _ => pairs.for_each(|(o, v)| o.copy_from_slice(&v.as_f64().to_le_bytes())),
    }
    Ok(())
}

/// A safetensors checkpoint whose header has been read and validated; tensor data is read
/// on demand.
#[derive(Debug)]
pub struct Checkpoint<S = File> {
    path: PathBuf,
    source: S,
    /// Tensor names in the order their data appears in the file.
    names: Vec<String>,
    infos: HashMap<String, TensorInfo>,
    metadata: Option<HashMap<String, String>>,
    data_start: u64,
}

impl Checkpoint<File> {
    /// Opens and validates the checkpoint at `path`.
    ///
    /// # Errors
    /// When the file cannot be opened or read, or is not a valid safetensors file; the
    /// message names the file and what is wrong.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Checkpoint::from_source(path, file)
    }
}

impl<S: Source> Checkpoint<S> {
    /// Reads and validates the header of `source`; `path` names it in messages.
    ///
    /// # Errors
    /// A header that is too short, too large, not UTF-8 JSON, names an unknown dtype,
    /// has offsets that overlap, leave gaps or disagree with shape × dtype size,
    /// overflows, or does not end exactly at the end of the source.
    pub fn from_source(path: impl Into<PathBuf>, source: S) -> Result<Self> {
        let path = path.into();
        let shown = path.display().to_string();
        let invalid = |why: String| anyhow::anyhow!("{shown}: not a valid safetensors file: {why}");
        let len = source.len().with_context(|| format!("cannot read {shown}"))?;
        if len < 8 {
            return Err(invalid(format!("{len} bytes, shorter than the 8-byte header length")));
        }
        let mut n = [0u8; 8];
        source.read_exact_at(&mut n, 0).with_context(|| format!("cannot read {shown}"))?;
        let header_len = u64::from_le_bytes(n);
        if header_len > MAX_HEADER_BYTES {
            return Err(invalid(format!(
                "header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit"
            )));
        }
        if header_len > len - 8 {
            return Err(invalid(format!(
                "header length {header_len} runs past the end of the {len}-byte file"
            )));
        }
        // Both bounds above make this fit in memory and in usize.
        let mut header = vec![0u8; header_len as usize];
        source.read_exact_at(&mut header, 8).with_context(|| format!("cannot read {shown}"))?;
        let text = std::str::from_utf8(&header)
            .map_err(|e| invalid(format!("header is not UTF-8: {e}")))?;
        let (metadata, mut entries) = parse_header(text).map_err(invalid)?;
        let data_start = 8 + header_len;
        entries.sort_by(|(a, x), (b, y)| x.data_offsets.cmp(&y.data_offsets).then(a.cmp(b)));
        let mut end = 0usize;
        for (name, info) in &entries {
            let (s, e) = info.data_offsets;
            if s != end || e < s {
                return Err(invalid(format!(
                    "tensor `{name}` has data offsets [{s}, {e}], expected to start at {end}"
                )));
            }
            let bytes = data_bytes(info).ok_or_else(|| {
                invalid(format!(
                    "tensor `{name}` of shape {:?} and dtype {:?} has no whole byte size",
                    info.shape, info.dtype
                ))
            })?;
            if e - s != bytes {
                return Err(invalid(format!(
                    "tensor `{name}` of shape {:?} and dtype {:?} needs {bytes} bytes, its \
                     offsets span {}",
                    info.shape,
                    info.dtype,
                    e - s
                )));
            }
            end = e;
        }
        if (end as u64).checked_add(data_start) != Some(len) {
            return Err(invalid(format!(
                "the header describes {end} bytes of data, the file holds {}",
                len - data_start
            )));
        }
        Ok(Checkpoint {
            path,
            names: entries.iter().map(|(n, _)| n.clone()).collect(),
            infos: entries.into_iter().collect(),
            metadata,
            source,
            data_start,
        })
    }

    /// The path the checkpoint was opened from (or the label it was given).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names, in the order their data appears in the file.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The dtype, shape and offsets of tensor `name`.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.infos.get(name)
    }

    /// The `__metadata__` string map, if the file has one.
    pub fn metadata(&self) -> &Option<HashMap<String, String>> {
        &self.metadata
    }

    fn located(&self, name: &str) -> Result<(&TensorInfo, u64)> {
        let info = self
            .info(name)
            .with_context(|| format!("{}: no tensor `{name}`", self.path.display()))?;
        Ok((info, self.data_start + info.data_offsets.0 as u64))
    }

    fn read_at(&self, name: &str, buf: &mut [u8], offset: u64) -> Result<()> {
        self.source.read_exact_at(buf, offset).with_context(|| {
            format!("{}: cannot read the data of tensor `{name}`", self.path.display())
        })
    }

    /// Calls `f` on consecutive pieces of tensor `name`'s raw bytes, each at most a few
    /// MiB and a whole number of `unit`-byte records (`unit` must divide the tensor).
    ///
    /// # Errors
    /// An unknown name, a read error, or the error `f` returns.
    pub fn for_each_chunk(
        &self,
        name: &str,
        unit: usize,
        mut f: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let (info, start) = self.located(name)?;
        let total = info.data_offsets.1 - info.data_offsets.0;
        let unit = unit.max(1);
        if total % unit != 0 {
            bail!("tensor `{name}`: {total} bytes are not whole records of {unit} bytes");
        }
        let step = (CHUNK_BYTES / unit).max(1) * unit;
        let mut buf = vec![0u8; step.min(total)];
        let mut done = 0;
        while done < total {
            let piece = &mut buf[..step.min(total - done)];
            self.read_at(name, piece, start + done as u64)?;
            f(piece)?;
            done += piece.len();
        }
        Ok(())
    }

    /// Copies tensor `name`'s raw bytes to `out`, a chunk at a time.
    ///
    /// # Errors
    /// An unknown name, or a read or write error.
    pub fn copy_to(&self, name: &str, out: &mut dyn Write) -> Result<()> {
        self.for_each_chunk(name, 1, |bytes| Ok(out.write_all(bytes)?))
    }

    /// All of tensor `name`'s raw bytes.
    ///
    /// # Errors
    /// An unknown name or a read error.
    pub fn read_bytes(&self, name: &str) -> Result<Vec<u8>> {
        let (info, start) = self.located(name)?;
        let mut bytes = vec![0u8; info.data_offsets.1 - info.data_offsets.0];
        self.read_at(name, &mut bytes, start)?;
        Ok(bytes)
    }

    /// Tensor `name`'s values in file (row-major) order, decoded into `T`.
    ///
    /// # Errors
    /// An unknown name, a non-floating dtype, or a read error.
    pub fn read_values<T: Float>(&self, name: &str) -> Result<Vec<T>> {
        let mut values = Vec::new();
        self.read_values_reusing(name, &mut values)?;
        Ok(values)
    }

    /// How many of tensor `name`'s values are zero (either sign), read a chunk at a time.
    ///
    /// # Errors
    /// An unknown name, a non-floating dtype, or a read error.
    pub fn count_zeros(&self, name: &str) -> Result<usize> {
        Ok(self.map_decoded(name, 1, zeros_in::<f64>)?.into_iter().sum())
    }

    /// Calls `f` on consecutive pieces of tensor `name` decoded into `T`, each a whole
    /// number of `unit` values (a row, for matrices), in file order. Memory: one piece.
    ///
    /// # Errors
    /// An unknown name, a non-floating dtype, a tensor that is not whole records of
    /// `unit` values, a read error, or the first error of `f`.
    pub fn for_each_decoded<T: Float>(
        &self,
        name: &str,
        unit: usize,
        mut f: impl FnMut(&[T]) -> Result<()>,
    ) -> Result<()> {
        let (info, _) = self.located(name)?;
        let size = float_size(info.dtype).with_context(|| format!("tensor `{name}`"))?;
        let mut scratch = Vec::new();
        self.for_each_chunk(name, unit * size, |bytes| {
            scratch.clear();
            scratch.resize(bytes.len() / size, T::zero());
            decode_into(info.dtype, bytes, &mut scratch)?;
            f(&scratch)
        })
    }

    /// `f` of each consecutive piece of tensor `name` decoded into `T`, in file order;
    /// pieces are a whole number of `unit` values (a row, for matrices) and are read,
    /// decoded and passed to `f` on rayon's threads. Memory: a piece per thread.
    ///
    /// # Errors
    /// As [`Checkpoint::for_each_decoded`].
    pub fn map_decoded<T: Float, R: Send>(
        &self,
        name: &str,
        unit: usize,
        f: impl Fn(&[T]) -> R + Sync + Send,
    ) -> Result<Vec<R>> {
        let (info, start) = self.located(name)?;
        let dtype = info.dtype;
        let size = float_size(dtype).with_context(|| format!("tensor `{name}`"))?;
        let total = info.data_offsets.1 - info.data_offsets.0;
        if total == 0 {
            return Ok(Vec::new());
        }
        let record = unit.max(1).checked_mul(size).filter(|r| total % r == 0);
        let Some(record) = record else {
            bail!("tensor `{name}`: {total} bytes are not whole records of {unit} values");
        };
        let step = (CHUNK_BYTES / record).max(1) * record;
        let scratch = || (Vec::new(), Vec::new());
        (0..total.div_ceil(step))
            .into_par_iter()
            .map_init(scratch, |(bytes, values): &mut (Vec<u8>, Vec<T>), i| {
                bytes.resize(step.min(total - i * step), 0);
                self.read_at(name, bytes, start + (i * step) as u64)?;
                values.resize(bytes.len() / size, T::zero());
                decode_into(dtype, bytes, values)?;
                Ok(f(values))
            })
            .collect()
    }

    /// Reads tensor `name`'s values in file (row-major) order into `spare`, whose
    /// allocation is reused. Little-endian data of `T`'s own type is read straight into
    /// the buffer, with no decoding pass.
    ///
    /// # Errors
    /// A missing or non-floating tensor, or a read error; messages name the tensor.
    pub fn read_values_reusing<T: Float>(&self, name: &str, spare: &mut Vec<T>) -> Result<()> {
        let (info, start) = self.located(name)?;
        let dtype = info.dtype;
        let size = float_size(dtype).with_context(|| format!("tensor `{name}`"))?;
        let len = (info.data_offsets.1 - info.data_offsets.0) / size;
        // Old values are all overwritten, so only a longer tail needs filling first.
        spare.truncate(len);
        spare.resize(len, T::zero());
        // Pieces of CHUNK_BYTES of the file, read (and decoded) on rayon's threads.
        let per_piece = (CHUNK_BYTES / size).max(1);
        let at = |piece: usize| start + (piece * per_piece * size) as u64;
        if size == size_of::<T>() && cfg!(target_endian = "little") {
            // Same width and both floating: the file holds `T`'s own bytes.
            return spare.par_chunks_mut(per_piece).enumerate().try_for_each(|(i, values)| {
                self.read_at(name, bytemuck::cast_slice_mut(values), at(i))
            });
        }
        spare.par_chunks_mut(per_piece).enumerate().try_for_each_init(
            Vec::new,
            |bytes, (i, values)| {
                bytes.resize(values.len() * size, 0);
                self.read_at(name, bytes, at(i))?;
                decode_into(dtype, bytes, values)
            },
        )
    }

    /// Tensor `name` as its matrix view (a 2-D tensor as it is; a conv weight
    /// `[out, in, kh, kw]` as `out x (in·kh·kw)`), decoded into a column-major matrix
    /// straight from the file: the tensor is never held twice.
    ///
    /// # Errors
    /// An unknown name, a tensor that is not 2-D or 4-D, a non-floating dtype, or a read
    /// error.
    pub fn read_matrix<T: Float>(&self, name: &str) -> Result<DMatrix<T>> {
        self.read_matrix_reusing(name, Vec::new())
    }

    /// [`Checkpoint::read_matrix`] into the allocation of `spare` (its contents are
    /// dropped): a loop over tensors that hands each matrix's buffer back here touches
    /// fresh pages only for the largest tensor, not for every tensor.
    ///
    /// # Errors
    /// As [`Checkpoint::read_matrix`].
    pub fn read_matrix_reusing<T: Float>(
        &self,
        name: &str,
        mut spare: Vec<T>,
    ) -> Result<DMatrix<T>> {
        let (info, _) = self.located(name)?;
        let (rows, cols) = matrix_shape(name, info)?;
        float_size(info.dtype).with_context(|| format!("tensor `{name}`"))?;
        let len =
            rows.checked_mul(cols).with_context(|| format!("tensor `{name}` is too large"))?;
        spare.clear();
        spare.resize(len, T::zero());
        let mut matrix = DMatrix::from_vec(rows, cols, spare);
        if matrix.is_empty() {
            return Ok(matrix);
        }
        let mut next_row = 0;
        self.for_each_decoded(name, cols, |block: &[T]| {
            let n = block.len() / cols;
            transpose_into(block, n, cols, matrix.as_mut_slice(), rows, next_row);
            next_row += n;
            Ok(())
        })?;
        Ok(matrix)
    }
}

/// A parsed header: the `__metadata__` string map and the named tensor entries.
type Header = (Option<HashMap<String, String>>, Vec<(String, TensorInfo)>);

/// The `__metadata__` map and the tensor table of a header, every entry checked by name.
fn parse_header(text: &str) -> Result<Header, String> {
    let table: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| format!("header is not a JSON object: {e}"))?;
    let mut metadata = None;
    let mut entries = Vec::with_capacity(table.len());
    for (name, value) in table {
        if name == "__metadata__" {
            metadata = Some(
                serde_json::from_value(value)
                    .map_err(|e| format!("`__metadata__` is not a map of strings: {e}"))?,
            );
        } else {
            let info: TensorInfo = serde_json::from_value(value)
                .map_err(|e| format!("tensor `{name}` has an invalid entry: {e}"))?;
            entries.push((name, info));
        }
    }
    Ok((metadata, entries))
}

/// Side of the square tiles [`transpose`] works in.
const TILE: usize = 32;

/// Writes the transpose of the `nr x nc` block of `src` (row `i` at `i * src_stride`)
/// into `dst` (row `j` at `j * dst_stride`), a tile at a time through a small buffer:
/// both sides are then read and written in contiguous runs. Strides are often powers of
/// two, where writing element by element sends every row of a tile to one L1 set.
fn transpose<T: Copy>(
    src: &[T],
    src_stride: usize,
    dst: &mut [T],
    dst_stride: usize,
    nr: usize,
    nc: usize,
) {
    let Some(&fill) = src.first() else { return };
    let mut tile = [fill; TILE * TILE];
    for i0 in (0..nr).step_by(TILE) {
        let ni = TILE.min(nr - i0);
        for j0 in (0..nc).step_by(TILE) {
            let nj = TILE.min(nc - j0);
            for i in 0..ni {
                let row = &src[(i0 + i) * src_stride + j0..][..nj];
                for (j, &v) in row.iter().enumerate() {
                    tile[j * TILE + i] = v;
                }
            }
            for j in 0..nj {
                let (start, from) = ((j0 + j) * dst_stride + i0, &tile[j * TILE..]);
                if ni == TILE {
                    // A constant length: the compiler unrolls the copy, where a copy of
                    // run-time length calls memmove for every 32 elements.
                    dst[start..start + TILE].copy_from_slice(&from[..TILE]);
                } else {
                    dst[start..start + ni].copy_from_slice(&from[..ni]);
                }
            }
        }
    }
}

/// Copies the row-major `n x cols` block `src` into rows `first..first + n` of the
/// column-major matrix `dst` with `rows` rows.
fn transpose_into<T: Copy>(
    src: &[T],
    n: usize,
    cols: usize,
    dst: &mut [T],
    rows: usize,
    first: usize,
) {
    transpose(src, cols, &mut dst[first..], rows, n, cols);
}

/// Copies rows `first..first + n` of the column-major matrix `src` (with `rows` rows)
/// into the row-major `n x cols` block `dst`.
fn transpose_from<T: Copy>(
    src: &[T],
    rows: usize,
    first: usize,
    dst: &mut [T],
    n: usize,
    cols: usize,
) {
    transpose(&src[first..], rows, dst, cols, cols, n);
}

/// The bytes a tensor's data takes, or `None` on overflow or a partial byte.
fn data_bytes(info: &TensorInfo) -> Option<usize> {
    let elements = info.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
    let bits = elements.checked_mul(info.dtype.bitsize())?;
    (bits % 8 == 0).then_some(bits / 8)
}

/// The matrix view of a 2-D or 4-D tensor.
///
/// # Errors
/// Any other rank, naming the tensor.
pub fn matrix_shape(name: &str, info: &TensorInfo) -> Result<(usize, usize)> {
    Ok(shears_core::WeightShape::from_dims(&info.shape)
        .with_context(|| format!("tensor `{name}`"))?
        .matrix_shape())
}

/// Writes `values` (in file order) as little-endian `dtype` bytes to `out`, a chunk at a
/// time; `T`'s own little-endian type is written without an encoding pass.
///
/// # Errors
/// A non-floating dtype, or a write error.
pub fn write_values<T: Float>(values: &[T], dtype: Dtype, out: &mut dyn Write) -> Result<()> {
    let size = float_size(dtype)?;
    if size == size_of::<T>() && cfg!(target_endian = "little") {
        out.write_all(bytemuck::cast_slice(values))?;
        return Ok(());
    }
    // Encoded on rayon's threads, a few chunks at a time.
    let per_chunk = (CHUNK_BYTES / size).max(1);
    let mut bytes = Vec::new();
    for piece in values.chunks(per_chunk * ENCODE_CHUNKS) {
        bytes.resize(piece.len() * size, 0);
        bytes
            .par_chunks_mut(per_chunk * size)
            .zip(piece.par_chunks(per_chunk))
            .try_for_each(|(b, v)| encode_to_slice(dtype, v, b))?;
        out.write_all(&bytes)?;
    }
    Ok(())
}

/// Chunks of [`CHUNK_BYTES`] that [`write_values`] encodes at once.
const ENCODE_CHUNKS: usize = 8;

/// Writes `matrix` to `out` in row-major order as `dtype`, a block of rows at a time.
///
/// # Errors
/// A non-floating dtype or a write error.
pub fn write_matrix<T: Float>(
    matrix: &DMatrix<T>,
    dtype: Dtype,
    out: &mut dyn Write,
) -> Result<()> {
    let (rows, cols) = matrix.shape();
    let size = float_size(dtype)?;
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
        encode_into(dtype, &values, &mut bytes)?;
        out.write_all(&bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    fn error(bytes: Vec<u8>) -> String {
        format!("{:#}", Checkpoint::from_source("t.safetensors", bytes).unwrap_err())
    }

    #[test]
    fn reads_a_matrix_column_major_and_writes_it_back_row_major() {
        let values: Vec<f32> = (0..15).map(|i| i as f32 - 7.0).collect();
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let ckpt = Checkpoint::from_source(
            "t",
            file(r#"{"w":{"dtype":"F32","shape":[3,5],"data_offsets":[0,60]}}"#, &data),
        )
        .unwrap();
        let m = ckpt.read_matrix::<f32>("w").unwrap();
        assert_eq!(m, DMatrix::from_row_slice(3, 5, &values));
        let mut out = Vec::new();
        write_matrix(&m, Dtype::F32, &mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(ckpt.read_values::<f64>("w").unwrap()[14], 7.0);
    }

    #[test]
    fn pieces_come_back_in_file_order_and_whole_rows() {
        // 6 and 12 MB of bf16 and f32: more than one CHUNK_BYTES piece, read on several threads.
        let (rows, cols) = (3000, 1003);
        for (dtype, size) in [(Dtype::BF16, 2), (Dtype::F32, 4)] {
            let values: Vec<f32> = (0..rows * cols).map(|i| (i % 251) as f32 - 125.0).collect();
            let mut data = Vec::new();
            encode_into(dtype, &values, &mut data).unwrap();
            let header = format!(
                r#"{{"w":{{"dtype":"{dtype:?}","shape":[{rows},{cols}],"data_offsets":[0,{}]}}}}"#,
                rows * cols * size
            );
            let ckpt = Checkpoint::from_source("t", file(&header, &data)).unwrap();
            let pieces = ckpt.map_decoded("w", cols, |p: &[f32]| p.to_vec()).unwrap();
            assert!(pieces.len() > 1, "{dtype:?}");
            assert!(pieces.iter().all(|p| p.len() % cols == 0));
            assert_eq!(pieces.concat(), values, "{dtype:?}");
            assert_eq!(ckpt.read_values::<f32>("w").unwrap(), values);
            assert_eq!(
                ckpt.count_zeros("w").unwrap(),
                values.iter().filter(|&&v| v == 0.0).count()
            );
        }
    }

    #[test]
    fn tiled_transposes_match_indexing() {
        let (rows, cols, first, n) = (101, 67, 33, 50);
        let src: Vec<u32> = (0..(n * cols) as u32).collect();
        let mut dst = vec![u32::MAX; rows * cols];
        transpose_into(&src, n, cols, &mut dst, rows, first);
        for r in 0..rows {
            for c in 0..cols {
                let want = if (first..first + n).contains(&r) {
                    src[(r - first) * cols + c]
                } else {
                    u32::MAX
                };
                assert_eq!(dst[c * rows + r], want, "({r}, {c})");
            }
        }
        let mut back = vec![0; n * cols];
        transpose_from(&dst, rows, first, &mut back, n, cols);
        assert_eq!(back, src);
    }

    #[test]
    fn half_precision_round_trips_through_f32() {
        for dtype in [Dtype::F16, Dtype::BF16] {
            let bits: Vec<u8> = (0u16..64).flat_map(|i| (i * 997).to_le_bytes()).collect();
            let mut values = vec![0f32; 64];
            decode_into(dtype, &bits, &mut values).unwrap();
            let mut back = Vec::new();
            encode_into(dtype, &values, &mut back).unwrap();
            // NaN payloads may change; every other value is bit-exact.
            for (i, (a, b)) in bits.chunks(2).zip(back.chunks(2)).enumerate() {
                assert!(a == b || values[i].is_nan(), "{dtype:?} value {i}");
            }
        }
    }

    #[test]
    fn header_errors_name_the_problem() {
        assert!(error(vec![1, 2, 3]).contains("shorter than the 8-byte header length"));
        assert!(error(u64::MAX.to_le_bytes().to_vec()).contains("exceeds"));
        assert!(error(100u64.to_le_bytes().to_vec()).contains("runs past the end"));
        assert!(error(file("{\"w\": 1}", &[])).contains("tensor `w` has an invalid entry"));
        assert!(error(file("[]", &[])).contains("not a JSON object"));
        assert!(error(file(r#"{"__metadata__": 1}"#, &[])).contains("`__metadata__`"));
        let gap = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        let wrong = r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        let huge = r#"{"w":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#;
        for header in [gap, wrong, huge] {
            let e = error(file(header, &[0; 8]));
            assert!(e.starts_with("t.safetensors: not a valid safetensors file"), "{e}");
            assert!(e.contains("tensor `w`"), "{e}");
        }
        let short = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        assert!(error(file(short, &[0; 4])).contains("holds 4"));
        assert!(error(file(short, &[0; 12])).contains("holds 12"));
    }

    #[test]
    fn non_float_tensors_are_refused_by_the_decoders() {
        let ckpt = Checkpoint::from_source(
            "t",
            file(r#"{"i":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}}"#, &[0; 16]),
        )
        .unwrap();
        let e = format!("{:#}", ckpt.read_matrix::<f32>("i").unwrap_err());
        assert!(e.contains("tensor `i`") && e.contains("not a floating type"), "{e}");
        assert_eq!(ckpt.read_bytes("i").unwrap(), vec![0; 16]);
        assert!(ckpt.read_bytes("nope").is_err());
    }
}
