//! Decoding and encoding floating-point tensor data: f16, bf16, f32 and f64, little-endian.

use safetensors::Dtype;

/// A floating-point type tensors are decoded into: `f32` (exact for f16, bf16 and f32
/// data) or `f64` (exact for all four float dtypes).
pub trait Float: shears_core::Scalar + From<f32> + bytemuck::Pod {}
impl Float for f32 {}
impl Float for f64 {}

/// Whether tensors of this dtype decode as floating point.
pub fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
}

/// Bytes per element of a floating dtype, `None` for any other.
pub fn float_size(dtype: Dtype) -> Option<usize> {
    is_float(dtype).then(|| dtype.bitsize() / 8)
}

/// How many of `values` are zero (either sign). Counted in `u32` lanes a block at a
/// time, which vectorises twice as wide as a `usize` count.
pub fn zeros_in<T: Float>(values: &[T]) -> usize {
    let block = |b: &[T]| b.iter().map(|&v| u32::from(v == T::zero())).sum::<u32>() as usize;
    values.chunks(1 << 16).map(block).sum()
}

/// Decodes little-endian `dtype` values into `out`. Decoding f64 data into `f32` rounds;
/// everything else is exact.
///
/// Returns `false` (and leaves `out` alone) for a non-floating dtype or a byte count
/// that is not `out.len()` values.
pub fn decode_into<T: Float>(dtype: Dtype, bytes: &[u8], out: &mut [T]) -> bool {
    let Some(size) = float_size(dtype) else { return false };
    if bytes.len() != out.len() * size {
        return false;
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
    true
}

/// Encodes `values` as little-endian `dtype` bytes into `out`, exactly `values.len()`
/// elements long. Values that came from `dtype` (or are zero) round-trip exactly.
///
/// Returns `false` (and leaves `out` alone) for a non-floating dtype or a wrong length.
pub fn encode_into<T: Float>(dtype: Dtype, values: &[T], out: &mut [u8]) -> bool {
    let Some(size) = float_size(dtype) else { return false };
    if out.len() != values.len() * size {
        return false;
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
    true
}

/// `values` encoded as little-endian `dtype` bytes, appended to `out`; `false` for a
/// non-floating dtype.
pub fn encode_append<T: Float>(dtype: Dtype, values: &[T], out: &mut Vec<u8>) -> bool {
    let Some(size) = float_size(dtype) else { return false };
    let start = out.len();
    out.resize(start + values.len() * size, 0);
    encode_into(dtype, values, &mut out[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_round_trips_through_f32() {
        for dtype in [Dtype::F16, Dtype::BF16] {
            let bits: Vec<u8> = (0u16..64).flat_map(|i| (i * 997).to_le_bytes()).collect();
            let mut values = vec![0f32; 64];
            assert!(decode_into(dtype, &bits, &mut values));
            let mut back = Vec::new();
            assert!(encode_append(dtype, &values, &mut back));
            // NaN payloads may change; every other value is bit-exact.
            for (i, (a, b)) in bits.chunks(2).zip(back.chunks(2)).enumerate() {
                assert!(a == b || values[i].is_nan(), "{dtype:?} value {i}");
            }
        }
    }

    #[test]
    fn wrong_dtypes_and_lengths_decode_nothing() {
        let mut out = [7.0f32; 2];
        assert!(!decode_into(Dtype::I32, &[0; 8], &mut out));
        assert!(!decode_into(Dtype::F32, &[0; 7], &mut out));
        assert!(!encode_into(Dtype::U8, &out, &mut [0; 2]));
        assert!(!encode_into(Dtype::F32, &out, &mut [0; 7]));
        assert_eq!(out, [7.0; 2]);
        assert_eq!(zeros_in(&[0.0f32, -0.0, 1.0]), 2);
    }
}
