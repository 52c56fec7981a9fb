//! Serde and byte formats for [`Csr`], [`NmSparse`], [`BlockSparse`], [`SlicedEll`], the
//! narrow-valued [`NarrowCsr`], [`NarrowNm`], [`NarrowSell`] and [`NarrowBlock`], and
//! [`Int8Matrix`].
//!
//! Each file is shears' [envelope](shears_core::envelope) (magic tag, version, canonical
//! bincode payload) around the format's parts, tagged with the element width (narrow
//! formats: the value type's name) and (for CSR and sliced ELLPACK) the index width so a
//! file is never read as the wrong type. Narrow values are stored as their little-endian
//! bits. Loading and serde deserialisation both run the format's validator through
//! `try_from_parts`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shears_core::{BlockShape, NmPattern, Scalar, envelope};

use crate::block::BlockSparse;
use crate::csr::Csr;
use crate::error::{Error, FormatError, Result};
use crate::index::SpIndex;
use crate::narrow_block::NarrowBlock;
use crate::narrow_csr::{NarrowCsr, NarrowValue, values_from_bytes, values_to_bytes};
use crate::narrow_nm::NarrowNm;
use crate::narrow_sell::NarrowSell;
use crate::nm::NmSparse;
use crate::quant::{Int8Matrix, QuantScheme};
use crate::sell::{SlicedEll, SlicedEllParts};

/// The format version this build writes and reads, for every sparse format.
pub const SPARSE_FORMAT_VERSION: u32 = 1;

/// A format with a stored representation.
trait Stored: Sized {
    const MAGIC: &'static [u8; 8];
    const NAME: &'static str;
    type Repr: Serialize + DeserializeOwned;
    fn to_repr(&self) -> Self::Repr;
    fn from_repr(repr: Self::Repr) -> Result<Self>;
}

fn fail(format: &'static str, error: FormatError) -> Error {
    Error::Format { format, error }
}

fn check_tag(
    format: &'static str,
    what: &'static str,
    expected: usize,
    found: usize,
) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(fail(
            format,
            FormatError::InvalidStructure {
                reason: format!("stored {what} is {found} bits, this type reads {expected}"),
            },
        ))
    }
}

fn to_bytes<S: Stored>(s: &S) -> Vec<u8> {
    envelope::seal(S::MAGIC, SPARSE_FORMAT_VERSION, &s.to_repr())
}

fn from_bytes<S: Stored>(bytes: &[u8]) -> Result<S> {
    let repr = envelope::open(S::MAGIC, SPARSE_FORMAT_VERSION, bytes)
        .map_err(|e| fail(S::NAME, FormatError::Envelope(e)))?;
    S::from_repr(repr)
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct CsrRepr<T: Scalar, I: SpIndex> {
    value_bits: u32,
    index_bits: u32,
    nrows: usize,
    ncols: usize,
    indptr: Vec<usize>,
    indices: Vec<I>,
    values: Vec<T>,
}

impl<T: Scalar, I: SpIndex> Stored for Csr<T, I> {
    const MAGIC: &'static [u8; 8] = b"SHEARCSR";
    const NAME: &'static str = "csr";
    type Repr = CsrRepr<T, I>;
    fn to_repr(&self) -> CsrRepr<T, I> {
        let (nrows, ncols, indptr, indices, values) = self.clone().into_parts();
        CsrRepr {
            value_bits: 8 * size_of::<T>() as u32,
            index_bits: I::BITS,
            nrows,
            ncols,
            indptr,
            indices,
            values,
        }
    }
    fn from_repr(r: CsrRepr<T, I>) -> Result<Self> {
        check_tag("csr", "value type", 8 * size_of::<T>(), r.value_bits as usize)?;
        check_tag("csr", "index type", I::BITS as usize, r.index_bits as usize)?;
        Csr::try_from_parts(r.nrows, r.ncols, r.indptr, r.indices, r.values)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct NmRepr<T: Scalar> {
    value_bits: u32,
    nrows: usize,
    ncols: usize,
    pattern: NmPattern,
    values: Vec<T>,
    positions: Vec<u8>,
}

impl<T: Scalar> Stored for NmSparse<T> {
    const MAGIC: &'static [u8; 8] = b"SHEARNM\0";
    const NAME: &'static str = "n:m";
    type Repr = NmRepr<T>;
    fn to_repr(&self) -> NmRepr<T> {
        let (nrows, ncols, pattern, values, positions) = self.clone().into_parts();
        NmRepr { value_bits: 8 * size_of::<T>() as u32, nrows, ncols, pattern, values, positions }
    }
    fn from_repr(r: NmRepr<T>) -> Result<Self> {
        check_tag("n:m", "value type", 8 * size_of::<T>(), r.value_bits as usize)?;
        NmSparse::try_from_parts(r.nrows, r.ncols, r.pattern, r.values, r.positions)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct BsrRepr<T: Scalar> {
    value_bits: u32,
    nrows: usize,
    ncols: usize,
    block: BlockShape,
    indptr: Vec<usize>,
    block_cols: Vec<u32>,
    values: Vec<T>,
}

impl<T: Scalar> Stored for BlockSparse<T> {
    const MAGIC: &'static [u8; 8] = b"SHEARBSR";
    const NAME: &'static str = "bsr";
    type Repr = BsrRepr<T>;
    fn to_repr(&self) -> BsrRepr<T> {
        let (nrows, ncols, block, indptr, block_cols, values) = self.clone().into_parts();
        BsrRepr {
            value_bits: 8 * size_of::<T>() as u32,
            nrows,
            ncols,
            block,
            indptr,
            block_cols,
            values,
        }
    }
    fn from_repr(r: BsrRepr<T>) -> Result<Self> {
        check_tag("bsr", "value type", 8 * size_of::<T>(), r.value_bits as usize)?;
        BlockSparse::try_from_parts(r.nrows, r.ncols, r.block, r.indptr, r.block_cols, r.values)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct SellRepr<T: Scalar, I: SpIndex> {
    value_bits: u32,
    index_bits: u32,
    parts: SlicedEllParts<T, I>,
}

impl<T: Scalar, I: SpIndex> Stored for SlicedEll<T, I> {
    const MAGIC: &'static [u8; 8] = b"SHEARSEL";
    const NAME: &'static str = "sell";
    type Repr = SellRepr<T, I>;
    fn to_repr(&self) -> SellRepr<T, I> {
        SellRepr {
            value_bits: 8 * size_of::<T>() as u32,
            index_bits: I::BITS,
            parts: self.clone().into_parts(),
        }
    }
    fn from_repr(r: SellRepr<T, I>) -> Result<Self> {
        check_tag("sell", "value type", 8 * size_of::<T>(), r.value_bits as usize)?;
        check_tag("sell", "index type", I::BITS as usize, r.index_bits as usize)?;
        SlicedEll::try_from_parts(r.parts)
    }
}

/// Checks a narrow format's stored value type against the one `V` reads.
fn check_value_type<V: NarrowValue>(format: &'static str, found: &str) -> Result<()> {
    if found == V::NAME {
        return Ok(());
    }
    let reason = format!("stored values are {found}, this type reads {}", V::NAME);
    Err(fail(format, FormatError::InvalidStructure { reason }))
}

/// The values of a narrow format's stored bytes.
fn narrow_values<V: NarrowValue>(format: &'static str, bytes: &[u8]) -> Result<Vec<V>> {
    values_from_bytes(bytes).ok_or_else(|| {
        let reason =
            format!("{} value bytes are not a whole number of {} values", bytes.len(), V::NAME);
        fail(format, FormatError::InvalidStructure { reason })
    })
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct NarrowCsrRepr<I: SpIndex> {
    value_type: String,
    index_bits: u32,
    nrows: usize,
    ncols: usize,
    indptr: Vec<usize>,
    indices: Vec<I>,
    values: Vec<u8>,
    scales: Vec<f32>,
}

impl<V: NarrowValue, I: SpIndex> Stored for NarrowCsr<V, I> {
    const MAGIC: &'static [u8; 8] = b"SHEARNCS";
    const NAME: &'static str = "narrow csr";
    type Repr = NarrowCsrRepr<I>;
    fn to_repr(&self) -> NarrowCsrRepr<I> {
        let (nrows, ncols) = self.shape();
        NarrowCsrRepr {
            value_type: V::NAME.to_owned(),
            index_bits: I::BITS,
            nrows,
            ncols,
            indptr: self.indptr().to_vec(),
            indices: self.indices().to_vec(),
            values: values_to_bytes(self.values()),
            scales: self.scales().to_vec(),
        }
    }
    fn from_repr(r: NarrowCsrRepr<I>) -> Result<Self> {
        check_value_type::<V>(Self::NAME, &r.value_type)?;
        check_tag(Self::NAME, "index type", I::BITS as usize, r.index_bits as usize)?;
        let values = narrow_values(Self::NAME, &r.values)?;
        NarrowCsr::try_from_parts(r.nrows, r.ncols, r.indptr, r.indices, values, r.scales)
    }
}

#[derive(Serialize, Deserialize)]
struct NarrowNmRepr {
    value_type: String,
    nrows: usize,
    ncols: usize,
    pattern: NmPattern,
    values: Vec<u8>,
    positions: Vec<u8>,
    scales: Vec<f32>,
}

impl<V: NarrowValue> Stored for NarrowNm<V> {
    const MAGIC: &'static [u8; 8] = b"SHEARNNM";
    const NAME: &'static str = "narrow n:m";
    type Repr = NarrowNmRepr;
    fn to_repr(&self) -> NarrowNmRepr {
        let (nrows, ncols) = self.shape();
        NarrowNmRepr {
            value_type: V::NAME.to_owned(),
            nrows,
            ncols,
            pattern: self.pattern(),
            values: values_to_bytes(self.values()),
            positions: self.positions().to_vec(),
            scales: self.scales().to_vec(),
        }
    }
    fn from_repr(r: NarrowNmRepr) -> Result<Self> {
        check_value_type::<V>(Self::NAME, &r.value_type)?;
        let values = narrow_values(Self::NAME, &r.values)?;
        NarrowNm::try_from_parts(r.nrows, r.ncols, r.pattern, values, r.positions, r.scales)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct NarrowSellRepr<I: SpIndex> {
    value_type: String,
    index_bits: u32,
    nrows: usize,
    ncols: usize,
    window: usize,
    order: Vec<usize>,
    lengths: Vec<usize>,
    slice_ptr: Vec<usize>,
    indices: Vec<I>,
    values: Vec<u8>,
    scales: Vec<f32>,
}

impl<V: NarrowValue, I: SpIndex> Stored for NarrowSell<V, I> {
    const MAGIC: &'static [u8; 8] = b"SHEARNSE";
    const NAME: &'static str = "narrow sell";
    type Repr = NarrowSellRepr<I>;
    fn to_repr(&self) -> NarrowSellRepr<I> {
        let p = self.layout();
        NarrowSellRepr {
            value_type: V::NAME.to_owned(),
            index_bits: I::BITS,
            nrows: p.nrows,
            ncols: p.ncols,
            window: p.window,
            order: p.order.clone(),
            lengths: p.lengths.clone(),
            slice_ptr: p.slice_ptr.clone(),
            indices: p.indices.clone(),
            values: values_to_bytes(&p.values),
            scales: self.scales().to_vec(),
        }
    }
    fn from_repr(r: NarrowSellRepr<I>) -> Result<Self> {
        check_value_type::<V>(Self::NAME, &r.value_type)?;
        check_tag(Self::NAME, "index type", I::BITS as usize, r.index_bits as usize)?;
        let values = narrow_values(Self::NAME, &r.values)?;
        let parts = SlicedEllParts {
            nrows: r.nrows,
            ncols: r.ncols,
            window: r.window,
            order: r.order,
            lengths: r.lengths,
            slice_ptr: r.slice_ptr,
            indices: r.indices,
            values,
        };
        NarrowSell::try_from_parts(parts, r.scales)
    }
}

#[derive(Serialize, Deserialize)]
struct NarrowBlockRepr {
    value_type: String,
    nrows: usize,
    ncols: usize,
    block: BlockShape,
    indptr: Vec<usize>,
    block_cols: Vec<u32>,
    values: Vec<u8>,
    scales: Vec<f32>,
}

impl<V: NarrowValue> Stored for NarrowBlock<V> {
    const MAGIC: &'static [u8; 8] = b"SHEARNBS";
    const NAME: &'static str = "narrow bsr";
    type Repr = NarrowBlockRepr;
    fn to_repr(&self) -> NarrowBlockRepr {
        let (nrows, ncols) = self.shape();
        NarrowBlockRepr {
            value_type: V::NAME.to_owned(),
            nrows,
            ncols,
            block: self.block_shape(),
            indptr: self.indptr().to_vec(),
            block_cols: self.block_cols().to_vec(),
            values: values_to_bytes(self.values()),
            scales: self.scales().to_vec(),
        }
    }
    fn from_repr(r: NarrowBlockRepr) -> Result<Self> {
        check_value_type::<V>(Self::NAME, &r.value_type)?;
        let values = narrow_values(Self::NAME, &r.values)?;
        let dims = (r.nrows, r.ncols, r.block);
        NarrowBlock::try_from_parts(dims, r.indptr, r.block_cols, values, r.scales)
    }
}

#[derive(Serialize, Deserialize)]
struct Int8MatrixRepr {
    rows: usize,
    cols: usize,
    /// Columns per scale, or `None` for one scale per row.
    group: Option<usize>,
    values: Vec<i8>,
    scales: Vec<f32>,
}

impl Stored for Int8Matrix {
    const MAGIC: &'static [u8; 8] = b"SHEARI8D";
    const NAME: &'static str = "int8 dense";
    type Repr = Int8MatrixRepr;
    fn to_repr(&self) -> Int8MatrixRepr {
        let (rows, cols) = self.shape();
        let group = match self.scheme() {
            QuantScheme::PerRow => None,
            QuantScheme::PerGroup(g) => Some(g),
        };
        let (values, scales) = (self.values().to_vec(), self.scales().to_vec());
        Int8MatrixRepr { rows, cols, group, values, scales }
    }
    fn from_repr(r: Int8MatrixRepr) -> Result<Self> {
        let scheme = r.group.map_or(QuantScheme::PerRow, QuantScheme::PerGroup);
        Int8Matrix::try_from_parts(r.rows, r.cols, scheme, r.values, r.scales)
    }
}

macro_rules! stored_api {
    ($ty:ident, $name:literal) => {
        stored_api!($ty<>, $name);
    };
    ($ty:ident < $($g:ident : $b:ident),* >, $name:literal) => {
        impl<$($g: $b),*> $ty<$($g),*> {
            #[doc = concat!("Encodes the ", $name, " matrix: magic tag, version, bincode payload.")]
            pub fn to_bytes(&self) -> Vec<u8> {
                to_bytes(self)
            }

            #[doc = concat!("Decodes and validates a ", $name, " matrix written by `to_bytes`.")]
            ///
            /// # Errors
            /// [`Error::Format`] with the failed check (magic, version, truncation,
            /// trailing bytes, type widths, and every structural invariant).
            pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
                from_bytes(bytes)
            }
        }

        impl<$($g: $b),*> Serialize for $ty<$($g),*> {
            fn serialize<Ser: Serializer>(&self, s: Ser) -> std::result::Result<Ser::Ok, Ser::Error> {
                self.to_repr().serialize(s)
            }
        }

        impl<'de, $($g: $b),*> Deserialize<'de> for $ty<$($g),*> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let repr = <Self as Stored>::Repr::deserialize(d)?;
                Self::from_repr(repr).map_err(serde::de::Error::custom)
            }
        }
    };
}

stored_api!(Csr<T: Scalar, I: SpIndex>, "CSR");
stored_api!(NmSparse<T: Scalar>, "N:M");
stored_api!(BlockSparse<T: Scalar>, "block-sparse");
stored_api!(SlicedEll<T: Scalar, I: SpIndex>, "sliced-ELLPACK");
stored_api!(NarrowCsr<V: NarrowValue, I: SpIndex>, "narrow-valued CSR");
stored_api!(NarrowNm<V: NarrowValue>, "narrow-valued N:M");
stored_api!(NarrowSell<V: NarrowValue, I: SpIndex>, "narrow-valued sliced-ELLPACK");
stored_api!(NarrowBlock<V: NarrowValue>, "narrow-valued block-sparse");
stored_api!(Int8Matrix, "dense int8");
