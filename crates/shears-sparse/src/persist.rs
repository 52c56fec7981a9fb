//! Serde and byte formats for [`Csr`], [`NmSparse`], [`BlockSparse`] and [`SlicedEll`].
//!
//! Each file is shears' [envelope](shears_core::envelope) (magic tag, version, canonical
//! bincode payload) around the format's parts, tagged with the element width and (for
//! CSR and sliced ELLPACK) the index width so a file is never read as the wrong type.
//! Loading and serde deserialisation both run the format's validator through
//! `try_from_parts`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shears_core::{BlockShape, NmPattern, Scalar, envelope};

use crate::block::BlockSparse;
use crate::csr::Csr;
use crate::error::{Error, FormatError, Result};
use crate::index::SpIndex;
use crate::nm::NmSparse;
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

macro_rules! stored_api {
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
