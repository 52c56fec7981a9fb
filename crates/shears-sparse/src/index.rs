//! [`SpIndex`]: the column-index types of the sparse formats (`u16`, `u32`).
//!
//! Batch-1 products are memory-bound: every stored weight costs its value plus its index.
//! A `u16` index makes an f32 CSR entry 6 bytes instead of 8, which moves the sparsity at
//! which CSR beats dense down (docs/design.md, performance model).

use std::fmt::Debug;

/// A column index type.
pub trait SpIndex:
    Copy
    + Ord
    + Send
    + Sync
    + Debug
    + Default
    + serde::Serialize
    + serde::de::DeserializeOwned
    + 'static
{
    /// The width in bits.
    const BITS: u32;
    /// The largest column count this type can address (`MAX + 1`).
    const MAX_COLS: usize;
    /// Widens to `usize`.
    fn index(self) -> usize;
    /// Narrows from `usize`, `None` if it does not fit.
    fn try_from_index(i: usize) -> Option<Self>;
}

macro_rules! impl_index {
    ($t:ty) => {
        impl SpIndex for $t {
            const BITS: u32 = <$t>::BITS;
            const MAX_COLS: usize = <$t>::MAX as usize + 1;
            #[inline(always)]
            fn index(self) -> usize {
                self as usize
            }
            #[inline(always)]
            fn try_from_index(i: usize) -> Option<Self> {
                <$t>::try_from(i).ok()
            }
        }
    };
}

impl_index!(u16);
impl_index!(u32);

/// Defines `$any<T>`, a format with the narrowest column index that fits: an enum over
/// its `u16`- and `u32`-indexed versions, with the accessors and products both share.
/// Each format writes its own constructors (how to pick the width).
macro_rules! narrowest_index {
    ($(#[$meta:meta])* $any:ident($format:ident)) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub enum $any<T> {
            /// `u16` column indices.
            Narrow($format<T, u16>),
            /// `u32` column indices.
            Wide($format<T, u32>),
        }

        impl<T: shears_core::Scalar> $any<T> {
            /// The index width in bits.
            pub fn index_bits(&self) -> u32 {
                match self {
                    $any::Narrow(_) => 16,
                    $any::Wide(_) => 32,
                }
            }

            /// `(nrows, ncols)`.
            pub fn shape(&self) -> (usize, usize) {
                match self {
                    $any::Narrow(m) => m.shape(),
                    $any::Wide(m) => m.shape(),
                }
            }

            #[doc = concat!("See [`", stringify!($format), "::nnz`].")]
            pub fn nnz(&self) -> usize {
                match self {
                    $any::Narrow(m) => m.nnz(),
                    $any::Wide(m) => m.nnz(),
                }
            }

            #[doc = concat!("See [`", stringify!($format), "::bytes_read`].")]
            pub fn bytes_read(&self) -> usize {
                match self {
                    $any::Narrow(m) => m.bytes_read(),
                    $any::Wide(m) => m.bytes_read(),
                }
            }

            #[doc = concat!("See [`", stringify!($format), "::to_dense`].")]
            pub fn to_dense(&self) -> nalgebra::DMatrix<T> {
                match self {
                    $any::Narrow(m) => m.to_dense(),
                    $any::Wide(m) => m.to_dense(),
                }
            }
        }

        impl<T: shears_core::Scalar> $crate::product::Sealed<T> for $any<T> {
            fn product(&self, operands: $crate::product::Operands<'_, T>) {
                match self {
                    $any::Narrow(m) => m.product(operands),
                    $any::Wide(m) => m.product(operands),
                }
            }
        }

        impl<T: shears_core::Scalar> $crate::product::SparseProduct<T> for $any<T> {
            fn shape(&self) -> (usize, usize) {
                $any::shape(self)
            }
        }
    };
}
pub(crate) use narrowest_index;
