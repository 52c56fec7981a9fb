//! The floating-point element types shears works on (`f32`, `f64`).

use std::fmt::Debug;

/// A weight element: `f32` or `f64`.
///
/// Every algorithm in shears is written once against this trait. Beyond nalgebra's
/// [`RealField`](nalgebra::RealField) it gives a totally ordered integer key, so that
/// selection can use integer comparisons and radix buckets instead of `partial_cmp`.
pub trait Scalar:
    nalgebra::RealField
    + Copy
    + Default
    + Send
    + Sync
    + Debug
    + num_traits::FromPrimitive
    + serde::Serialize
    + serde::de::DeserializeOwned
    + 'static
{
    /// An unsigned integer whose order equals the order of the finite values of `Self`.
    type Key: Ord + Copy + Send + Sync + Debug;

    /// Bits in [`Self::Key`].
    const KEY_BITS: u32;

    /// The order key of a finite value; `-0.0` and `+0.0` get the same key.
    fn order_key(self) -> Self::Key;

    /// The value whose [`order_key`](Scalar::order_key) is `key` (`+0.0` for the key of
    /// zero).
    fn from_order_key(key: Self::Key) -> Self;

    /// The top `bits` bits of a key, as a bucket index (`bits <= 32`).
    fn key_bucket(key: Self::Key, bits: u32) -> usize;

    /// Whether the value is neither NaN nor infinite.
    fn finite(self) -> bool;

    /// Widens to `f64` (exact for both implementors).
    fn as_f64(self) -> f64;

    /// Narrows from `f64` (rounding to nearest for `f32`).
    fn from_f64_lossy(value: f64) -> Self;
}

macro_rules! impl_scalar {
    ($float:ty, $key:ty, $bits:expr) => {
        impl Scalar for $float {
            type Key = $key;
            const KEY_BITS: u32 = $bits;

            #[inline(always)]
            fn order_key(self) -> $key {
                // Fold -0.0 into +0.0 so equal values tie, then flip the sign bit of
                // positives and all bits of negatives: the classic total-order map.
                let x = if self == 0.0 { 0.0 } else { self };
                let bits = x.to_bits();
                let sign = 1 << ($bits - 1);
                if bits & sign == 0 { bits | sign } else { !bits }
            }

            fn from_order_key(key: $key) -> Self {
                let sign = 1 << ($bits - 1);
                <$float>::from_bits(if key & sign != 0 { key ^ sign } else { !key })
            }

            #[inline(always)]
            fn key_bucket(key: $key, bits: u32) -> usize {
                (key >> ($bits - bits)) as usize
            }

            #[inline(always)]
            fn finite(self) -> bool {
                self.is_finite()
            }

            #[inline(always)]
            fn as_f64(self) -> f64 {
                self as f64
            }

            #[inline(always)]
            fn from_f64_lossy(value: f64) -> Self {
                value as $float
            }
        }
    };
}

impl_scalar!(f32, u32, 32);
impl_scalar!(f64, u64, 64);

#[cfg(test)]
mod tests {
    use super::Scalar;

    #[track_caller]
    fn check_ordered<T: Scalar>(values: &[T]) {
        for pair in values.windows(2) {
            assert!(pair[0] < pair[1]);
            assert!(pair[0].order_key() < pair[1].order_key(), "{:?} vs {:?}", pair[0], pair[1]);
        }
    }

    #[test]
    fn keys_follow_float_order() {
        check_ordered(&[f32::MIN, -1.5, -1e-30, 0.0, 1e-40, 1.0, 3.5, f32::MAX]);
        check_ordered(&[f64::MIN, -2.0, -1e-300, 0.0, 5e-324, 1.0, f64::MAX]);
    }

    #[test]
    fn keys_map_back_to_their_values() {
        for v in [f32::MIN, -1.5, -1e-30, 0.0, 1e-40, 1.0, f32::MAX] {
            assert_eq!(f32::from_order_key(v.order_key()), v);
        }
        for v in [f64::MIN, -2.0, 0.0, 5e-324, 7.25] {
            assert_eq!(f64::from_order_key(v.order_key()), v);
        }
        assert_eq!(f32::from_order_key((-0.0f32).order_key()).to_bits(), 0.0f32.to_bits());
    }

    #[test]
    fn signed_zeros_tie() {
        assert_eq!((-0.0f32).order_key(), 0.0f32.order_key());
        assert_eq!((-0.0f64).order_key(), 0.0f64.order_key());
    }

    #[test]
    fn buckets_are_monotone() {
        let a = 0.25f32.order_key();
        let b = 4.0f32.order_key();
        assert!(f32::key_bucket(a, 16) <= f32::key_bucket(b, 16));
        assert!(f32::key_bucket(u32::MAX, 16) < 1 << 16);
        assert!(f64::key_bucket(u64::MAX, 16) < 1 << 16);
    }
}
