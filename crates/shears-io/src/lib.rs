//! shears-io: the files shears reads and writes.
//!
//! A checkpoint to prune may be far larger than memory and may come from anywhere; an
//! output must never be half written or land on a file the user did not name. This
//! crate is the one place that touches them:
//!
//! - [`Checkpoint`] reads a safetensors file: the header is validated against the file
//!   when it opens, and tensors are read one at a time with positioned reads (nothing is
//!   memory-mapped), decoded from f16, bf16, f32 or f64 (or int8 with its scales, the
//!   layout `shears prune --quantize` writes: [`scale_name`]) into `f32` or `f64`, whole,
//!   as a matrix view, or streamed in pieces;
//! - [`write_safetensors`] / [`stage_safetensors`] write one tensor at a time through a
//!   writer thread, to a temporary file that is renamed over the target only when
//!   complete ([`PendingFile`], [`commit_all`] for outputs that must land together,
//!   [`write_atomic`] for small files);
//! - [`Model`] opens what users hand over: a file, a Hugging Face model folder, or the
//!   index of a sharded model, every shard validated and checked against the index;
//! - [`paths`] checks what a command is given: inputs are regular files, outputs are not
//!   links or special files, and no file plays two roles;
//! - mask sets ([`encode_mask_set`], [`read_mask_set`]) and SVG [`chart`]s.
//!
//! The key decision: **memory is bounded by one tensor, whatever the file**. Readers
//! never hold a whole checkpoint, writers never buffer one, and nothing sizes an
//! allocation from a file's claims before they are checked against the file's length.
//!
//! ```
//! use std::collections::HashMap;
//! use nalgebra::dmatrix;
//! use shears_io::{Checkpoint, Dtype, layout, write_matrix, write_safetensors};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("model.safetensors");
//! let w = dmatrix![1.0f32, 2.0; 3.0, 4.0];
//! let tensors = layout([("w".to_string(), Dtype::BF16, vec![2, 2])])?;
//! write_safetensors(&path, &tensors, None, |_, out| {
//!     write_matrix(&w, Dtype::BF16, out).map_err(|e| shears_io::Error::io("write", &path, e))
//! })?;
//! assert_eq!(Checkpoint::open(&path)?.read_matrix::<f32>("w")?, w);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

mod atomic;
pub mod chart;
mod checkpoint;
mod dtype;
mod error;
mod header;
mod masks;
mod model;
pub mod paths;
mod quantized;
mod source;
mod transpose;
mod write_behind;
mod writer;

pub use atomic::{
    Leftover, PendingFile, SealedFile, TEMPORARY_PREFIX, commit_all, commit_sealed, exiting,
    leftovers, remove_pending, remove_stale, temporary_name, write_atomic,
};
pub use checkpoint::{Checkpoint, matrix_shape};
pub use dtype::{Float, decode_into, encode_append, encode_into, float_size, is_float, zeros_in};
pub use error::{Error, FileKind, HeaderProblem, Result, clipped};
pub use header::MAX_HEADER_BYTES;
pub use masks::{
    MASK_SET_MAGIC, MASK_SET_VERSION, MAX_MASK_SET_BYTES, decode_mask_set, encode_mask_set,
    mask_bytes, mask_from_bytes, read_mask_set, torch_mask_name, weight_of_torch_mask,
};
pub use model::{
    INDEX_NAME, Index, Layout, MAX_FOLDER_DEPTH, MAX_FOLDER_ENTRIES, Model, SINGLE_NAME, TensorRef,
};
pub use quantized::{
    Int8Tensor, QUANTIZATION_KEY, QUANTIZED_FROM_KEY, SCALE_SUFFIX, quantization_group,
    quantized_matrix_shape, scale_name,
};
pub use safetensors::Dtype;
pub use safetensors::tensor::TensorInfo;
pub use source::Source;
pub use writer::{
    TensorWriter, layout, stage_safetensors, write_matrix, write_safetensors, write_values,
};
