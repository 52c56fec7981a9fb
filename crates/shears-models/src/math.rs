//! The element-wise functions of the encoder (GELU, softmax, layer norm), written so the
//! compiler vectorises them, and compiled for the CPU's widest SIMD at run time (through
//! `pulp`'s dispatch, which runs the loop inside a function built for AVX-512, or AVX2
//! and FMA, where the CPU has them).
//!
//! `exp` and `erf` are polynomial approximations accurate to a few units in the last
//! place of an f32, branch-free so that a loop over a slice becomes vector code; the
//! standard library's calls into libm would not.

use pulp::{Arch, Simd, WithSimd};

/// `e^x`, for `x` in `[-87.3, 88.37]` (clamped to it; past 88.37 `2^n` would overflow):
/// `2^n * p(r)` with `x = n ln 2 + r`, `|r| <= ln 2 / 2`, and a degree-6 polynomial `p`
/// (Cephes' `expf`).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.37);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p.mul_add(r, 1.398_2e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 0.166_666_65);
    p = p.mul_add(r, 0.5);
    let y = p.mul_add(r * r, r) + 1.0;
    // 2^n for n in [-126, 127]; the exponent field holds n + 127. The integer n is the
    // difference of `shifted`'s and ROUND's bits (their exponents are equal), which
    // vectorises; `n as i32`, a saturating conversion, would not.
    let n_bits = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let scale = f32::from_bits(((n_bits + 127).clamp(0, 255) as u32) << 23);
    y * scale
}

/// The error function, as a rational function of `x` clamped to `[-4, 4]` (beyond which
/// `erf` is ±1 in f32): an odd degree-13 polynomial over an even degree-8 one.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p.mul_add(x2, 2.770_681_4e-8);
    p = p.mul_add(x2, -2.101_024e-6);
    p = p.mul_add(x2, -5.692_506_4e-5);
    p = p.mul_add(x2, -7.349_906e-4);
    p = p.mul_add(x2, -2.954_6e-3);
    p = p.mul_add(x2, -1.609_603_3e-2);
    let mut q = -1.456_607_2e-5_f32;
    q = q.mul_add(x2, -2.133_740_6e-4);
    q = q.mul_add(x2, -1.682_827e-3);
    q = q.mul_add(x2, -7.373_329e-3);
    q = q.mul_add(x2, -1.426_473_9e-2);
    x * p / q
}

/// GELU with the exact normal CDF: `x Φ(x) = x (1 + erf(x / √2)) / 2`.
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU's tanh approximation: `x (1 + tanh(√(2/π) (x + 0.044715 x³))) / 2`, with
/// `tanh(y) = 1 - 2 / (e^{2y} + 1)`.
#[inline(always)]
pub(crate) fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let y = SQRT_2_OVER_PI * x.mul_add(0.044_715 * x * x, x);
    let tanh = 1.0 - 2.0 / (exp(2.0 * y) + 1.0);
    0.5 * x * (1.0 + tanh)
}

/// The sum of `values` in eight independent f32 lanes (so the loop vectorises; a single
/// running sum is a chain of dependent additions), the lanes added in f64.
#[inline(always)]
pub(crate) fn sum(values: &[f32]) -> f64 {
    let mut lanes = [0.0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (l, v) in lanes.iter_mut().zip(chunk) {
            *l += v;
        }
    }
    lanes.iter().map(|&l| f64::from(l)).sum::<f64>()
        + tail.iter().map(|&v| f64::from(v)).sum::<f64>()
}

/// The largest of `values` (−∞ for none), in eight lanes.
#[inline(always)]
pub(crate) fn max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (l, v) in lanes.iter_mut().zip(chunk) {
            *l = l.max(*v);
        }
    }
    lanes.iter().chain(tail).fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// An element-wise activation over a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elementwise {
    Gelu,
    GeluTanh,
    Relu,
}

/// Applies `f` to every value of `values`, vectorised.
pub(crate) fn apply(f: Elementwise, values: &mut [f32]) {
    struct Apply<'a>(Elementwise, &'a mut [f32]);
    impl WithSimd for Apply<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, _simd: S) {
            match self.0 {
                Elementwise::Gelu => self.1.iter_mut().for_each(|v| *v = gelu(*v)),
                Elementwise::GeluTanh => self.1.iter_mut().for_each(|v| *v = gelu_tanh(*v)),
                Elementwise::Relu => self.1.iter_mut().for_each(|v| *v = v.max(0.0)),
            }
        }
    }
    Arch::new().dispatch(Apply(f, values));
}

/// Softmax without its last pass, for a caller already inside a SIMD dispatch: replaces
/// every value `v` by `e^(v - max)` and returns `1 / Σ e^(v - max)`, the factor that
/// normalises them (attention applies it to the few outputs the values weight, not to
/// every value).
#[inline(always)]
pub(crate) fn softmax_unscaled(values: &mut [f32]) -> f32 {
    let top = max(values);
    values.iter_mut().for_each(|v| *v = exp(*v - top));
    (1.0 / sum(values)) as f32
}

/// Layer norm of one token's state: `(x - mean) / sqrt(var + eps) * gamma + beta`, the
/// variance biased as PyTorch's (two passes; the sums in eight f32 lanes, added in f64).
pub(crate) fn layer_norm(values: &mut [f32], gamma: &[f32], beta: &[f32], eps: f64) {
    struct Norm<'a>(&'a mut [f32], &'a [f32], &'a [f32], f64);
    impl WithSimd for Norm<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, _simd: S) {
            let Norm(values, gamma, beta, eps) = self;
            let n = values.len() as f64;
            let mean = (sum(values) / n) as f32;
            values.iter_mut().for_each(|v| *v -= mean);
            let mut squares = [0.0f32; 8];
            let chunks = values.chunks_exact(8);
            let tail: f64 = chunks.remainder().iter().map(|&v| f64::from(v * v)).sum();
            for chunk in chunks {
                for (s, v) in squares.iter_mut().zip(chunk) {
                    *s += v * v;
                }
            }
            let var = (squares.iter().map(|&s| f64::from(s)).sum::<f64>() + tail) / n;
            let inv = (1.0 / (var + eps).sqrt()) as f32;
            for ((v, &g), &b) in values.iter_mut().zip(gamma).zip(beta) {
                *v = *v * inv * g + b;
            }
        }
    }
    if !values.is_empty() {
        Arch::new().dispatch(Norm(values, gamma, beta, eps));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `erf` in f64 by its series `2/√π e^{-x²} Σ 2ⁿ x^{2n+1} / (1·3···(2n+1))`, whose
    /// terms are all positive (no cancellation).
    fn erf_reference(x: f64) -> f64 {
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-18 * sum.abs().max(1e-300) {
            n += 1.0;
            term *= 2.0 * x * x / (2.0 * n + 1.0);
            sum += term;
        }
        2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp() * sum
    }

    fn grid() -> impl Iterator<Item = f32> {
        (-6000..=6000).map(|i| i as f32 / 1000.0)
    }

    #[test]
    fn exp_is_accurate() {
        for x in (-8700..=8837).map(|i| i as f32 / 100.0) {
            let want = f64::from(x).exp();
            let got = f64::from(exp(x));
            assert!(((got - want) / want).abs() < 4e-7, "exp({x}) = {got}, want {want}");
        }
        assert!(exp(-1000.0) < 1e-37);
    }

    #[test]
    fn erf_and_gelu_are_accurate() {
        for x in grid() {
            let want = erf_reference(f64::from(x));
            let got = f64::from(erf(x));
            assert!((got - want).abs() < 5e-7, "erf({x}) = {got}, want {want}");
            let gelu_want = 0.5 * f64::from(x) * (1.0 + erf_reference(f64::from(x) / 2f64.sqrt()));
            // erf's absolute error, scaled by x/2, bounds GELU's.
            let bound = 1e-6 * (1.0 + f64::from(x).abs());
            assert!((f64::from(gelu(x)) - gelu_want).abs() < bound, "gelu({x})");
            let y = (2.0 / std::f64::consts::PI).sqrt()
                * (f64::from(x) + 0.044715 * f64::from(x).powi(3));
            let tanh_want = 0.5 * f64::from(x) * (1.0 + y.tanh());
            let tanh_got = f64::from(gelu_tanh(x));
            assert!((tanh_got - tanh_want).abs() < bound, "gelu_tanh({x})");
        }
    }

    #[test]
    fn lane_reductions_equal_plain_ones() {
        for n in [0, 1, 7, 8, 9, 100, 385] {
            let v: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
            let plain: f64 = v.iter().map(|&x| f64::from(x)).sum();
            assert_eq!(sum(&v), plain, "{n}");
            assert_eq!(max(&v), v.iter().cloned().fold(f32::NEG_INFINITY, f32::max));
        }
    }

    #[test]
    fn vectorised_loops_equal_the_scalar_functions() {
        let mut values: Vec<f32> = grid().collect();
        let expected: Vec<f32> = values.iter().map(|&v| gelu(v)).collect();
        apply(Elementwise::Gelu, &mut values);
        for (a, b) in values.iter().zip(&expected) {
            assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()));
        }
        let mut relu = vec![-1.0, 0.0, 2.0];
        apply(Elementwise::Relu, &mut relu);
        assert_eq!(relu, [0.0, 0.0, 2.0]);
    }

    #[test]
    fn softmax_and_layer_norm_match_their_formulas() {
        // Lengths below, at and past the eight lanes of `sum` and `max`, with a tail.
        for n in [1, 4, 16, 37] {
            let logits: Vec<f32> = (0..n).map(|i| ((i * 7) % 13) as f32 * 0.75 - 25.0).collect();
            let mut v = logits.clone();
            let inv = softmax_unscaled(&mut v);
            let e: Vec<f64> = logits.iter().map(|&x| f64::from(x).exp()).collect();
            let total: f64 = e.iter().sum();
            for (got, want) in v.iter().zip(&e) {
                assert!((f64::from(*got * inv) - want / total).abs() < 1e-7, "{n}");
            }
        }
        // Mean 4.
        let mut x = vec![1.0f32, 2.0, 4.0, 9.0];
        layer_norm(&mut x, &[1.0, 2.0, 1.0, 1.0], &[0.0, 0.0, 1.0, 0.0], 1e-5);
        let var = (9.0 + 4.0 + 0.0 + 25.0) / 4.0;
        let want = [
            -3.0 / (var + 1e-5f64).sqrt(),
            -4.0 / (var + 1e-5f64).sqrt(),
            1.0,
            5.0 / (var + 1e-5f64).sqrt(),
        ];
        for (got, want) in x.iter().zip(want) {
            assert!((f64::from(*got) - want).abs() < 1e-6, "{got} vs {want}");
        }
    }
}
