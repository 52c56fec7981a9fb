//! [`Checkpoint`]: a safetensors file read a tensor at a time, in bounded memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use nalgebra::DMatrix;
use rayon::prelude::*;
use safetensors::Dtype;
use safetensors::tensor::TensorInfo;

use crate::dtype::{Float, decode_into, float_size, zeros_in};
use crate::error::{Error, Result};
use crate::header::{self, Header, Invalid};
use crate::quantized::{
    Dequantizer, Int8Tensor, quantization_group, quantized_matrix_shape, scale_name,
};
use crate::source::Source;
use crate::transpose::transpose_into;

/// Bytes read per step when a tensor is streamed (rounded to whole records).
pub(crate) const CHUNK_BYTES: usize = 4 << 20;

/// A safetensors checkpoint whose header has been read and validated; tensor data is
/// read on demand, with positioned reads.
///
/// Opening reads only the header and validates it against the file's length (offsets
/// contiguous from zero, byte counts equal to shape × dtype size, no overflow, the data
/// ending exactly at the end of the file). Nothing is memory-mapped, so a model far
/// larger than RAM costs one tensor's buffers, not resident pages of the whole file.
///
/// ```
/// use shears_io::Checkpoint;
///
/// // One 2x2 f32 tensor, written by hand.
/// let header = br#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;
/// let mut file = (header.len() as u64).to_le_bytes().to_vec();
/// file.extend_from_slice(header);
/// for v in [1.0f32, 0.0, -2.0, 3.0] { file.extend_from_slice(&v.to_le_bytes()); }
///
/// let ckpt = Checkpoint::from_source("in-memory", file)?;
/// let w = ckpt.read_matrix::<f32>("w")?;
/// assert_eq!(w[(1, 0)], -2.0); // row-major on disk, a column-major matrix in memory
/// assert_eq!(ckpt.count_zeros("w")?, 1);
/// # Ok::<(), shears_io::Error>(())
/// ```
#[derive(Debug)]
pub struct Checkpoint<S = File> {
    path: PathBuf,
    source: S,
    header: Header,
}

impl Checkpoint<File> {
    /// Opens and validates the checkpoint at `path`, which must be a regular file (a FIFO
    /// or a device is refused before it is opened, so nothing blocks on it).
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be opened or read, [`Error::NotSafetensors`] for
    /// a file that looks like another format, [`Error::Header`] for an invalid header.
    pub fn open(path: &Path) -> Result<Self> {
        let file = crate::paths::open_regular_file(path)?;
        Checkpoint::from_source(path, file)
    }
}

impl<S: Source> Checkpoint<S> {
    /// Reads and validates the header of `source`; `path` names it in messages.
    ///
    /// # Errors
    /// As [`Checkpoint::open`].
    pub fn from_source(path: impl Into<PathBuf>, source: S) -> Result<Self> {
        let path = path.into();
        let header = header::read(&source).map_err(|invalid| match invalid {
            Invalid::Io(e) => Error::io("read", path.clone(), e),
            Invalid::Problem(problem) => Error::Header { path: path.clone(), problem },
            Invalid::Kind(kind) => Error::NotSafetensors { path: path.clone(), kind },
        })?;
        Ok(Checkpoint { path, source, header })
    }

    /// The path the checkpoint was opened from (or the label it was given).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensors with their dtype, shape and offsets, in the order their data appears
    /// in the file.
    pub fn tensors(&self) -> &[(String, TensorInfo)] {
        &self.header.entries
    }

    /// The tensor names, in the order their data appears in the file.
    pub fn names(&self) -> impl ExactSizeIterator<Item = &str> {
        self.header.entries.iter().map(|(n, _)| n.as_str())
    }

    /// The dtype, shape and offsets of tensor `name`.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.header.find(name).map(|(_, info)| info)
    }

    /// Tensor `name`'s entry: its name as stored, and its dtype, shape and offsets.
    pub fn entry(&self, name: &str) -> Option<(&str, &TensorInfo)> {
        self.header.find(name).map(|(n, info)| (n.as_str(), info))
    }

    /// The `__metadata__` string map, if the file has one.
    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.header.metadata.as_ref()
    }

    /// The bytes the tensors' data takes (the file minus its header).
    pub fn data_len(&self) -> u64 {
        self.header.entries.last().map_or(0, |(_, info)| info.data_offsets.1 as u64)
    }

    fn located(&self, name: &str) -> Result<(&TensorInfo, u64)> {
        let info = self.info(name).ok_or_else(|| Error::UnknownTensor {
            path: self.path.clone(),
            tensor: name.to_owned(),
        })?;
        Ok((info, self.header.data_start + info.data_offsets.0 as u64))
    }

    /// Whether tensor `name` reads as floating point: a floating dtype, or int8 beside
    /// its `NAME.scale` (whose validity is checked when it is read).
    pub fn decodes(&self, name: &str) -> bool {
        self.info(name).is_some_and(|info| {
            float_size(info.dtype).is_some()
                || (info.dtype == Dtype::I8 && self.info(&scale_name(name)).is_some())
        })
    }

    /// Checks what [`Checkpoint::decodes`] leaves to the read: that an int8 tensor's
    /// scales fit it (dtype, shape for the file's group size, positive and finite), reading
    /// only the scales. `Ok` for any tensor that is not int8 beside a `NAME.scale`.
    ///
    /// # Errors
    /// [`Error::UnknownTensor`], [`Error::Quantized`] naming the scales and what is wrong,
    /// or a read error.
    pub fn check_scales(&self, name: &str) -> Result<()> {
        let (info, _) = self.located(name)?;
        if info.dtype != Dtype::I8 || !self.decodes(name) {
            return Ok(());
        }
        self.decoding(name, info).map(drop)
    }

    /// How tensor `name` decodes: a floating dtype, or int8 with the scales of its
    /// `NAME.scale` tensor (read and validated here).
    fn decoding(&self, name: &str, info: &TensorInfo) -> Result<Decoding> {
        if let Some(size) = float_size(info.dtype) {
            return Ok(Decoding::Float(info.dtype, size));
        }
        let not_float = || Error::NotFloat {
            path: self.path.clone(),
            tensor: name.to_owned(),
            dtype: info.dtype,
        };
        let scale = scale_name(name);
        let (Dtype::I8, Some(scale_info)) = (info.dtype, self.info(&scale)) else {
            return Err(not_float());
        };
        let group = quantization_group(&self.path, self.metadata())?;
        // The header was validated against the file, so this is bounded by its length.
        let scales = match scale_info.dtype {
            Dtype::F32 => self
                .read_bytes(&scale)?
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            _ => Vec::new(),
        };
        Dequantizer::new(&self.path, name, info, scale_info, scales, group).map(Decoding::Int8)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.source.read_exact_at(buf, offset).map_err(|e| Error::io("read", &self.path, e))
    }

    /// Calls `f` on consecutive pieces of tensor `name`'s raw bytes, each at most a few
    /// MiB and a whole number of `unit`-byte records (`unit` must divide the tensor).
    ///
    /// # Errors
    /// [`Error::UnknownTensor`], [`Error::Shape`] when `unit` does not divide the
    /// tensor, a read error, or the error `f` returns.
    pub fn for_each_chunk<E: From<Error>>(
        &self,
        name: &str,
        unit: usize,
        mut f: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let (info, start) = self.located(name)?;
        let total = info.data_offsets.1 - info.data_offsets.0;
        let unit = unit.max(1);
        if total % unit != 0 {
            return Err(Error::Shape {
                tensor: name.to_owned(),
                shape: info.shape.clone(),
                reason: format!("its {total} bytes are not whole records of {unit} bytes"),
            }
            .into());
        }
        let step = (CHUNK_BYTES / unit).max(1) * unit;
        let mut buf = vec![0u8; step.min(total)];
        let mut done = 0;
        while done < total {
            let piece = &mut buf[..step.min(total - done)];
            self.read_at(piece, start + done as u64)?;
            f(piece)?;
            done += piece.len();
        }
        Ok(())
    }

    /// Copies tensor `name`'s raw bytes to `out`, a chunk at a time.
    ///
    /// # Errors
    /// [`Error::UnknownTensor`], or a read error; a write error as [`Error::Io`] naming
    /// `out_path`.
    pub fn copy_to(&self, name: &str, out: &mut dyn Write, out_path: &Path) -> Result<()> {
        self.for_each_chunk(name, 1, |bytes| {
            out.write_all(bytes).map_err(|e| Error::io("write", out_path, e))
        })
    }

    /// All of tensor `name`'s raw bytes.
    ///
    /// # Errors
    /// [`Error::UnknownTensor`] or a read error.
    pub fn read_bytes(&self, name: &str) -> Result<Vec<u8>> {
        let (info, start) = self.located(name)?;
        let mut bytes = Vec::new();
        let len = info.data_offsets.1 - info.data_offsets.0;
        reserve(&mut bytes, len, name)?;
        bytes.resize(len, 0);
        self.read_at(&mut bytes, start)?;
        Ok(bytes)
    }

    /// Tensor `name`'s values in file (row-major) order, decoded into `T`.
    ///
    /// # Errors
    /// [`Error::UnknownTensor`], [`Error::NotFloat`], [`Error::Quantized`] (an int8 tensor
    /// with invalid scales), or a read error.
    pub fn read_values<T: Float>(&self, name: &str) -> Result<Vec<T>> {
        let mut values = Vec::new();
        self.read_values_reusing(name, &mut values)?;
        Ok(values)
    }

    /// Tensor `name` as stored int8 values with its validated scales, when it is an int8
    /// tensor beside its `NAME.scale` (`Ok(None)` for any other tensor): for readers that
    /// compute in int8 rather than on the decoded values.
    ///
    /// # Errors
    /// [`Error::UnknownTensor`], [`Error::Quantized`] (invalid scales), or a read error.
    pub fn read_int8(&self, name: &str) -> Result<Option<Int8Tensor>> {
        let (info, _) = self.located(name)?;
        match self.decoding(name, info) {
            Ok(Decoding::Int8(dequantizer)) => {
                let rows = quantized_matrix_shape(&info.shape).0;
                Ok(Some(dequantizer.into_tensor(rows, self.read_bytes(name)?)))
            }
            Ok(Decoding::Float(..)) | Err(Error::NotFloat { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// How many of tensor `name`'s values are zero (either sign), read a chunk at a time.
    ///
    /// # Errors
    /// [`Error::UnknownTensor`], [`Error::NotFloat`], [`Error::Quantized`] (an int8 tensor
    /// with invalid scales), or a read error.
    pub fn count_zeros(&self, name: &str) -> Result<usize> {
        Ok(self.map_decoded(name, 1, zeros_in::<f64>)?.into_iter().sum())
    }

    /// Calls `f` on consecutive pieces of tensor `name` decoded into `T`, each a whole
    /// number of `unit` values (a row, for matrices), in file order. Memory: one piece.
    ///
    /// # Errors
    /// [`Error::UnknownTensor`], [`Error::NotFloat`], [`Error::Shape`] for a tensor that
    /// is not whole records of `unit` values, a read error, or the first error of `f`.
    pub fn for_each_decoded<T: Float, E: From<Error>>(
        &self,
        name: &str,
        unit: usize,
        mut f: impl FnMut(&[T]) -> Result<(), E>,
    ) -> Result<(), E> {
        let (info, _) = self.located(name)?;
        let decoding = self.decoding(name, info)?;
        let size = decoding.size();
        let mut scratch = Vec::new();
        let mut first = 0;
        self.for_each_chunk(name, unit.saturating_mul(size), |bytes| {
            scratch.clear();
            scratch.resize(bytes.len() / size, T::zero());
            decoding.decode(bytes, first, &mut scratch);
            first += scratch.len();
            f(&scratch)
        })
    }

    /// Folds the consecutive pieces of tensor `name` decoded into `T` into accumulators
    /// made by `identity`, on rayon's threads, and `reduce`s those into one; pieces are a
    /// whole number of `unit` values (a row, for matrices), read and decoded as for
    /// [`Checkpoint::map_decoded`]. Memory: a piece and an accumulator per thread's run
    /// of pieces, whatever the tensor's size. For folds whose result does not depend on
    /// which pieces an accumulator took (sums, counts, flags).
    ///
    /// # Errors
    /// As [`Checkpoint::map_decoded`].
    pub fn fold_decoded<T: Float, A: Send>(
        &self,
        name: &str,
        unit: usize,
        identity: impl Fn() -> A + Sync + Send,
        fold: impl Fn(A, &[T]) -> A + Sync + Send,
        reduce: impl Fn(A, A) -> A + Sync + Send,
    ) -> Result<A> {
        let pieces = self.pieces(name, unit)?;
        // Each accumulator carries its run's read and decode buffers.
        let start_run = || (identity(), Vec::new(), Vec::new());
        (0..pieces.count())
            .into_par_iter()
            .try_fold(start_run, |(acc, mut bytes, mut values): (A, Vec<u8>, Vec<T>), i| {
                self.read_piece(&pieces, i, &mut bytes, &mut values)?;
                Ok((fold(acc, &values), bytes, values))
            })
            .map(|run: Result<(A, Vec<u8>, Vec<T>)>| run.map(|(acc, _, _)| acc))
            .try_reduce(&identity, |a, b| Ok(reduce(a, b)))
    }

    /// `f` of each consecutive piece of tensor `name` decoded into `T`, in file order;
    /// pieces are a whole number of `unit` values (a row, for matrices) and are read,
    /// decoded and passed to `f` on rayon's threads. Memory: a piece per thread.
    ///
    /// # Errors
    /// As [`Checkpoint::for_each_decoded`] (but `f` cannot fail).
    pub fn map_decoded<T: Float, R: Send>(
        &self,
        name: &str,
        unit: usize,
        f: impl Fn(&[T]) -> R + Sync + Send,
    ) -> Result<Vec<R>> {
        let pieces = self.pieces(name, unit)?;
        (0..pieces.count())
            .into_par_iter()
            .map_init(
                || (Vec::new(), Vec::new()),
                |(bytes, values): &mut (Vec<u8>, Vec<T>), i| {
                    self.read_piece(&pieces, i, bytes, values)?;
                    Ok(f(values))
                },
            )
            .collect()
    }

    /// How tensor `name` is read in pieces of whole records of `unit` values.
    fn pieces(&self, name: &str, unit: usize) -> Result<Pieces> {
        let (info, start) = self.located(name)?;
        let decoding = self.decoding(name, info)?;
        let size = decoding.size();
        let total = info.data_offsets.1 - info.data_offsets.0;
        let record = unit.max(1).checked_mul(size).filter(|r| total % r == 0);
        let Some(record) = record else {
            return Err(Error::Shape {
                tensor: name.to_owned(),
                shape: info.shape.clone(),
                reason: format!("its {total} bytes are not whole records of {unit} values"),
            });
        };
        let step = (CHUNK_BYTES / record).max(1) * record;
        Ok(Pieces { start, decoding, size, total, step })
    }

    /// Reads piece `i` into `bytes` and decodes it into `values`, both resized to it.
    fn read_piece<T: Float>(
        &self,
        pieces: &Pieces,
        i: usize,
        bytes: &mut Vec<u8>,
        values: &mut Vec<T>,
    ) -> Result<()> {
        let Pieces { start, ref decoding, size, total, step } = *pieces;
        bytes.resize(step.min(total - i * step), 0);
        self.read_at(bytes, start + (i * step) as u64)?;
        values.resize(bytes.len() / size, T::zero());
        decoding.decode(bytes, i * step / size, values);
        Ok(())
    }

    /// Reads tensor `name`'s values in file (row-major) order into `spare`, whose
    /// allocation is reused. Little-endian data of `T`'s own type is read straight into
    /// the buffer, with no decoding pass.
    ///
    /// # Errors
    /// [`Error::UnknownTensor`], [`Error::NotFloat`], [`Error::Quantized`] (an int8 tensor
    /// with invalid scales), or a read error.
    pub fn read_values_reusing<T: Float>(&self, name: &str, spare: &mut Vec<T>) -> Result<()> {
        let (info, start) = self.located(name)?;
        let decoding = self.decoding(name, info)?;
        let size = decoding.size();
        let len = (info.data_offsets.1 - info.data_offsets.0) / size;
        // Old values are all overwritten, so only a longer tail needs filling first.
        spare.truncate(len);
        reserve(spare, len, name)?;
        spare.resize(len, T::zero());
        // Pieces of CHUNK_BYTES of the file, read (and decoded) on rayon's threads.
        let per_piece = (CHUNK_BYTES / size).max(1);
        let at = |piece: usize| start + (piece * per_piece * size) as u64;
        if matches!(decoding, Decoding::Float(..))
            && size == size_of::<T>()
            && cfg!(target_endian = "little")
        {
            // Same width and both floating: the file holds `T`'s own bytes.
            return spare
                .par_chunks_mut(per_piece)
                .enumerate()
                .try_for_each(|(i, values)| self.read_at(bytemuck::cast_slice_mut(values), at(i)));
        }
        spare.par_chunks_mut(per_piece).enumerate().try_for_each_init(
            Vec::new,
            |bytes, (i, values)| {
                bytes.resize(values.len() * size, 0);
                self.read_at(bytes, at(i))?;
                decoding.decode(bytes, i * per_piece, values);
                Ok(())
            },
        )
    }

    /// Tensor `name` as its matrix view (a 2-D tensor as it is; a conv weight
    /// `[out, in, kh, kw]` as `out x (in·kh·kw)`), decoded into a column-major matrix
    /// straight from the file: the tensor is never held twice.
    ///
    /// # Errors
    /// [`Error::UnknownTensor`], [`Error::Shape`] for a tensor that is not 2-D or 4-D,
    /// [`Error::NotFloat`], or a read error.
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
        self.decoding(name, info)?;
        // The header's validation bounds the element count by the file's length.
        let len = rows * cols;
        spare.clear();
        reserve(&mut spare, len, name)?;
        spare.resize(len, T::zero());
        let mut matrix = DMatrix::from_vec(rows, cols, spare);
        if matrix.is_empty() {
            return Ok(matrix);
        }
        let mut next_row = 0;
        self.for_each_decoded(name, cols, |block: &[T]| -> Result<()> {
            let n = block.len() / cols;
            transpose_into(block, n, cols, matrix.as_mut_slice(), rows, next_row);
            next_row += n;
            Ok(())
        })?;
        Ok(matrix)
    }
}

/// Room in `buffer` for `len` values of tensor `name`, or [`Error::TooLarge`]: a file's
/// header bounds a tensor by the file's length, not by the memory there is, so a
/// tensor of a terabyte in a sparse file must fail here rather than abort the process.
fn reserve<T>(buffer: &mut Vec<T>, len: usize, name: &str) -> Result<()> {
    buffer.try_reserve_exact(len.saturating_sub(buffer.len())).map_err(|_| Error::TooLarge {
        tensor: name.to_owned(),
        bytes: (len as u64).saturating_mul(size_of::<T>() as u64),
    })
}

/// A tensor's data read in pieces: where it starts, how it decodes (`size` bytes a
/// value), its length and a piece's, in bytes (the last piece may be shorter).
#[derive(Debug)]
struct Pieces {
    start: u64,
    decoding: Decoding,
    size: usize,
    total: usize,
    step: usize,
}

impl Pieces {
    fn count(&self) -> usize {
        self.total.div_ceil(self.step)
    }
}

/// How a tensor's bytes become floating-point values.
#[derive(Debug)]
enum Decoding {
    /// A floating dtype, and its bytes per value.
    Float(Dtype, usize),
    /// Int8 values (a byte each) with their scales.
    Int8(Dequantizer),
}

impl Decoding {
    /// Bytes per value.
    fn size(&self) -> usize {
        match self {
            Decoding::Float(_, size) => *size,
            Decoding::Int8(_) => 1,
        }
    }

    /// Decodes `bytes`, whole values from the tensor's flat index `first` on, into `out`.
    fn decode<T: Float>(&self, bytes: &[u8], first: usize, out: &mut [T]) {
        match self {
            // The dtype is a float one and the length whole values: this decodes.
            Decoding::Float(dtype, _) => {
                decode_into(*dtype, bytes, out);
            }
            Decoding::Int8(d) => d.decode_into(bytes, first, out),
        }
    }
}

/// The matrix view of a 2-D or 4-D tensor: `(rows, cols)`, a conv weight
/// `[out, in, kh, kw]` as `(out, in·kh·kw)`.
///
/// # Errors
/// [`Error::Shape`] for any other rank or a shape whose size overflows.
pub fn matrix_shape(name: &str, info: &TensorInfo) -> Result<(usize, usize)> {
    shears_core::WeightShape::from_dims(&info.shape).map(|s| s.matrix_shape()).map_err(|e| {
        Error::Shape { tensor: name.to_owned(), shape: info.shape.clone(), reason: e.to_string() }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tensor_too_large_to_allocate_is_an_error_that_names_it() {
        // More than any address space holds: the allocation fails whatever the
        // system's overcommit policy, and the error says which tensor and how much.
        let mut buffer: Vec<f32> = Vec::new();
        let err = reserve(&mut buffer, usize::MAX / 2, "fc1.weight").unwrap_err();
        assert!(matches!(&err, Error::TooLarge { tensor, .. } if tensor == "fc1.weight"));
        assert!(err.to_string().contains(&format!("{} bytes", u64::MAX)), "{err}");
        // What fits is reserved, and nothing is written.
        reserve(&mut buffer, 1000, "fc1.weight").unwrap();
        assert!(buffer.capacity() >= 1000 && buffer.is_empty());
    }
}
