//! Decoding and encoding floating-point tensor data: f16, bf16, f32 and f64, little-endian.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
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
        Dtype::F16 => decode_half(bytes, out, f16::from_bits, |h, f| h.convert_to_f32_slice(f)),
        Dtype::BF16 => {
            pairs.for_each(|(b, o)| *o = bf16::from_le_bytes([b[0], b[1]]).to_f32().into())
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
        Dtype::F16 if single => {
            encode_half(values, out, |f, h| h.convert_from_f32_slice(f), f16::to_bits);
        }
        Dtype::BF16 if single => pairs
            .for_each(|(o, v)| o.copy_from_slice(&bf16::from_f32(v.as_f64() as f32).to_le_bytes())),
        Dtype::F16 => {
            pairs.for_each(|(o, v)| o.copy_from_slice(&f16::from_f64(v.as_f64()).to_le_bytes()))
        }
        Dtype::BF16 => {
            pairs.for_each(|(o, v)| o.copy_from_slice(&bf16::from_f64(v.as_f64()).to_le_bytes()))
        }
        Dtype::F32 => {
            pairs.for_each(|(o, v)| o.copy_from_slice(&(v.as_f64() as f32).to_le_bytes()))
        }
        _ => pairs.for_each(|(o, v)| o.copy_from_slice(&v.as_f64().to_le_bytes())),
    }
    true
}

/// f16 values converted at a time by `half`'s slice conversions, which check the CPU
/// once per call and use F16C (x86) or FP16 (Arm) where it has them: a call and a
/// feature check per value cost more than the conversion itself. (bf16 is a shift,
/// which the compiler vectorises value by value.)
const HALF_BATCH: usize = 256;

/// Decodes little-endian f16 `bytes` (two per value of `out`) through stack
/// buffers of `HALF_BATCH` values, each widened by `widen`.
fn decode_half<T: Float, H: Copy + Default>(
    bytes: &[u8],
    out: &mut [T],
    from_bits: fn(u16) -> H,
    widen: fn(&[H], &mut [f32]),
) {
    let mut halves = [H::default(); HALF_BATCH];
    let mut floats = [0f32; HALF_BATCH];
    for (b, o) in bytes.chunks(2 * HALF_BATCH).zip(out.chunks_mut(HALF_BATCH)) {
        let n = o.len();
        for (h, pair) in halves.iter_mut().zip(b.chunks_exact(2)) {
            *h = from_bits(u16::from_le_bytes([pair[0], pair[1]]));
        }
        widen(&halves[..n], &mut floats[..n]);
        o.iter_mut().zip(&floats[..n]).for_each(|(o, &f)| *o = f.into());
    }
}

/// Encodes f32-valued `values` (`T` is `f32`) as little-endian f16 into `out`
/// (two bytes per value) through stack buffers, each narrowed by `narrow`.
fn encode_half<T: Float, H: Copy + Default>(
    values: &[T],
    out: &mut [u8],
    narrow: fn(&[f32], &mut [H]),
    to_bits: fn(H) -> u16,
) {
    let mut floats = [0f32; HALF_BATCH];
    let mut halves = [H::default(); HALF_BATCH];
    for (v, o) in values.chunks(HALF_BATCH).zip(out.chunks_mut(2 * HALF_BATCH)) {
        let n = v.len();
        floats.iter_mut().zip(v).for_each(|(f, v)| *f = v.as_f64() as f32);
        narrow(&floats[..n], &mut halves[..n]);
        for (pair, &h) in o.chunks_exact_mut(2).zip(&halves[..n]) {
            pair.copy_from_slice(&to_bits(h).to_le_bytes());
        }
    }
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

    /// The batched f16 conversions give `half`'s value-by-value ones: every f16 bit
    /// pattern decoded (into f32 and f64), and f32 values across the whole range
    /// (subnormal, overflowing, halfway, infinite, NaN) encoded, over lengths that end
    /// mid-batch.
    #[test]
    fn f16_batches_convert_as_each_value_does() {
        let all: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
        let mut wide = vec![0f32; 1 << 16];
        assert!(decode_into(Dtype::F16, &all, &mut wide));
        let mut double = vec![0f64; 1 << 16];
        assert!(decode_into(Dtype::F16, &all, &mut double));
        for bits in 0..=u16::MAX {
            let expected = f16::from_bits(bits).to_f32();
            let i = usize::from(bits);
            assert_eq!(wide[i].to_bits(), expected.to_bits(), "{bits:#06x}");
            assert_eq!(double[i].to_bits(), f64::from(expected).to_bits(), "{bits:#06x}");
        }
        let mut values: Vec<f32> = (0..=u32::MAX).step_by(65_521).map(f32::from_bits).collect();
        values.extend([65_504.0, 65_520.0, 65_519.996, 2f32.powi(-25), 1.0 + 2f32.powi(-11)]);
        for len in [values.len(), 1000, 257, 1] {
            let mut out = vec![0u8; 2 * len];
            assert!(encode_into(Dtype::F16, &values[..len], &mut out));
            for (v, pair) in values.iter().zip(out.chunks_exact(2)) {
                let expected = f16::from_f32(*v).to_bits();
                assert_eq!(u16::from_le_bytes([pair[0], pair[1]]), expected, "{v:e}");
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
