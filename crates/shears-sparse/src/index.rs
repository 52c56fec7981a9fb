//! [`SpIndex`]: the column-index types of the sparse formats (`u16`, `u32`).
//!
//! Batch-1 products are memory-bound: every stored weight costs its value plus its index.
//! A `u16` index makes an f32 CSR entry 6 bytes instead of 8, which moves the sparsity at
//! which CSR beats dense down (DESIGN.md, performance model).

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
