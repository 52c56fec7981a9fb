//! Batched int8 CSR products in integers: `Y <- alpha * A X + beta * Y` where `A` stores
//! int8 weights with a scale per row, and `X` is quantized per token as the dense int8
//! products quantize it ([`super::quantize_columns`]).
//!
//! Each output is `xs[j] * sum_s(scale_r * dot_s)`, where `dot_s` is the exact 32-bit
//! integer sum of the row's stored weights times the token's quantized inputs at their
//! columns, over a span of [`MAX_SPAN`] columns (in order; one span unless the matrix
//! is wider). The float steps are one multiply and one add per span and one multiply
//! per output, never fused, so every path and thread count gives the same bits, which
//! are those of the dense int8 product ([`super::int8_dense_product`]) of the same
//! weights written out with their row scales.
//!
//! The quantized tokens are laid out as the f32 kernels lay out `X`: row-major, each
//! input's tokens contiguous, here as 16-bit values. Two stored weights are taken at a
//! time: their inputs' runs of tokens are interleaved per token with one unpack
//! instruction per vector, so that one `vpmaddwd` (or, with AVX-512 VNNI or AVX-VNNI,
//! `vpdpwssd`)
//! multiplies both by the weights' pair broadcast to every lane and adds the two
//! products. Per stored weight and 32 tokens that is one 64-byte load, one shuffle and
//! one multiply-add, where the f32 kernel loads 128 bytes and runs three float
//! operations. The unpacks leave the tokens permuted within each vector; the sums are
//! put back in token order once per tile.
//!
//! Each stored weight's run of tokens is a read from a place no other weight of the row
//! shares, so what bounds these products is how many cache lines they fetch from L2:
//! one per stored weight per 32 tokens of 16 bits. Batches of more than 32 tokens on
//! CPUs with AVX-512 VNNI and VL run the byte copy instead ([`x86::byte_rows`]): the
//! tokens as bytes biased by 128, 64 of them per line, four stored weights at a time
//! through two rounds of unpacks and `vpdpbusd`. It fetches half the lines there; at 32
//! tokens it fetches as many as the 16-bit copy and runs more instructions per weight,
//! so it does not run.

use std::ops::Range;

use nalgebra::DMatrix;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::vnni_copy_runs;
use super::{MAX_SPAN, PARALLEL_ELEMENTS, column_scale_into, quantize_run};
use crate::index::SpIndex;
use crate::kernels::isa::Isa;
use crate::kernels::spmm::{LineAligned, spmm_prepared};
use crate::kernels::{CsrView, KernelPath, kernel_path, multiversion};

/// Tokens per narrow tile: one 256-bit vector of 16-bit values. The token rows are
/// padded to a multiple of it.
const NARROW: usize = 16;

/// Tokens per wide tile: one 512-bit vector of 16-bit values.
const WIDE: usize = 32;

/// Tokens from which [`crate::Int8Csr`] products run in integers. Fewer widen the
/// weights to f32: the integer tiles pad the batch to 16 tokens, and up to 8 tokens the
/// f32 kernel's single tile is faster.
pub(crate) const INTEGER_MIN_BATCH: usize = 9;

/// Inputs per block of the transpose into token rows: each token's run of them is one
/// contiguous read, and the block's rows (2 KiB at 16 tokens, 32 KiB at 256) stay in L1
/// or L2 while every token is stored down them.
const TRANSPOSE_INPUTS: usize = 64;

/// Tokens per tile of the byte copy ([`byte_rows`](x86::byte_rows)): one 256-bit vector of bytes.
const BYTE_TILE: usize = 32;

/// `X`'s tokens quantized to int8, row-major: input `k`'s tokens at
/// `values[k * stride..][..batch]`, zeros past the batch; one scale per token. Held as
/// `i16` for the 16-bit copies, or as `u8` biased by
/// [`ACTIVATION_BIAS`](crate::kernels::isa::ACTIVATION_BIAS) for the byte copy (where a
/// zero is stored as 128).
pub(crate) struct TokenRows<T: 'static = i16> {
    /// Entries per input: the batch rounded up to a whole tile ([`NARROW`] tokens, or
    /// [`BYTE_TILE`] for bytes).
    stride: usize,
    values: LineAligned<T>,
    scales: Vec<f32>,
}

/// `x`'s tokens as 16-bit values ([`quantized_rows`]), for the 16-bit copies.
fn token_rows(x: &DMatrix<f32>) -> TokenRows {
    quantized_rows(x, NARROW, |v| v)
}

/// `x`'s tokens as bytes biased by
/// [`ACTIVATION_BIAS`](crate::kernels::isa::ACTIVATION_BIAS) ([`quantized_rows`]), for
/// [`byte_rows`](x86::byte_rows).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code, reason = "only x86 has a byte copy"))]
fn token_bytes(x: &DMatrix<f32>) -> TokenRows<u8> {
    use crate::kernels::isa::ACTIVATION_BIAS;
    quantized_rows(x, BYTE_TILE, |v| (i32::from(v) + ACTIVATION_BIAS) as u8)
}

/// `x`'s tokens quantized as [`super::quantize_columns`] quantizes them (the same scales
/// and values), each stored as `store` makes it, written straight into [`TokenRows`]
/// with the batch padded to a multiple of `tile`: a block of inputs at a time, each
/// token's run of the block quantized contiguously, then stored down its column. Split
/// across threads, by tokens for the scales and by blocks for the rest, when `X` is
/// large enough to repay it.
fn quantized_rows<T: Copy + Default + Send + Sync + 'static>(
    x: &DMatrix<f32>,
    tile: usize,
    store: impl Fn(i16) -> T + Sync,
) -> TokenRows<T> {
    let (inputs, batch) = x.shape();
    let path = kernel_path();
    let stride = batch.next_multiple_of(tile);
    let parallel = x.len() >= PARALLEL_ELEMENTS && rayon::current_num_threads() > 1;
    let tokens: Vec<&[f32]> = (0..batch).map(|j| &x.as_slice()[j * inputs..][..inputs]).collect();
    let scale = |token: &&[f32]| {
        let mut scale = 1.0;
        if !token.is_empty() {
            column_scale_into(path, token, &mut scale);
        }
        scale
    };
    let scales: Vec<f32> = if parallel {
        tokens.par_iter().map(scale).collect()
    } else {
        tokens.iter().map(scale).collect()
    };
    // Fewer than `tile` entries per input more than X holds, each of 16 bits or fewer.
    let mut values = LineAligned::filled(inputs * stride, store(0));
    let fill = |(block, out): (usize, &mut [T])| {
        let (k0, height) = (block * TRANSPOSE_INPUTS, out.len() / stride);
        let mut run = [0i16; TRANSPOSE_INPUTS];
        for (j, (token, &scale)) in tokens.iter().zip(&scales).enumerate() {
            // A token with a NaN or an infinity keeps zeros (its scale makes it NaN).
            if !scale.is_nan() {
                quantize_run(path, &token[k0..k0 + height], scale, &mut run[..height]);
                for (row, &v) in out.chunks_exact_mut(stride).zip(&run) {
                    row[j] = store(v);
                }
            }
        }
    };
    let blocks = TRANSPOSE_INPUTS * stride;
    if parallel {
        values.as_mut_slice().par_chunks_mut(blocks).enumerate().for_each(fill);
    } else {
        values.as_mut_slice().chunks_mut(blocks).enumerate().for_each(fill);
    }
    TokenRows { stride, values, scales }
}

/// `Y <- alpha * A X + beta * Y` for an int8 CSR matrix (`a.values` in `-127..=127`,
/// its row scales given or all 1), `X` quantized per token.
pub(crate) fn int8_csr_spmm<I: SpIndex>(
    a: CsrView<'_, f32, I, i8>,
    alpha: f32,
    x: &DMatrix<f32>,
    beta: f32,
    y: &mut DMatrix<f32>,
) {
    let path = kernel_path();
    #[cfg(target_arch = "x86_64")]
    if x.ncols() > WIDE && byte_copy_runs(path) {
        spmm_prepared(a, alpha, x, token_bytes, beta, y, |range, tokens, z| {
            // SAFETY: byte_copy_runs detected the copy's features.
            unsafe { x86::byte_rows(a, range, tokens, z) }
        });
        return;
    }
    spmm_prepared(a, alpha, x, token_rows, beta, y, |range, tokens, z| {
        rows_best(path, a, range, tokens, z)
    });
}

/// Whether batches of more than [`WIDE`] tokens run the byte copy
/// ([`x86::byte_rows`]): on the AVX-512 path of CPUs with AVX-512 VNNI and VL.
#[cfg(target_arch = "x86_64")]
fn byte_copy_runs(path: KernelPath) -> bool {
    path == KernelPath::Avx512 && crate::kernels::isa::vnni512_vl()
}

/// Rows `rows` of the product before `alpha` and `beta`, into `out` (row-major, a row of
/// `batch` entries per output row, zeroed).
#[inline(always)]
fn rows_kernel<P: Isa, I: SpIndex>(
    a: CsrView<'_, f32, I, i8>,
    rows: Range<usize>,
    tokens: &TokenRows,
    out: &mut [f32],
) {
    let (batch, stride) = (tokens.scales.len(), tokens.stride);
    assert!(tokens.values.as_slice().len() >= a.ncols * stride);
    let mut weights = Vec::new();
    for (r, z) in rows.zip(out.chunks_exact_mut(batch)) {
        let entries = a.indptr[r]..a.indptr[r + 1];
        let scale = a.row_scales.map_or(1.0, |s| s[r]);
        weights.clear();
        weights.extend(a.values[entries.clone()].iter().map(|&v| i16::from(v)));
        let cols = &a.indices[entries];
        let mut t0 = 0;
        while t0 < stride {
            let z = z.get_mut(t0..).unwrap_or_default();
            if t0 + WIDE <= stride {
                spans::<P, I, WIDE>(&weights, cols, tokens, t0, scale, z);
                t0 += WIDE;
            } else {
                spans::<P, I, NARROW>(&weights, cols, tokens, t0, scale, z);
                t0 += NARROW;
            }
        }
        for (v, &s) in z.iter_mut().zip(&tokens.scales) {
            *v *= s;
        }
    }
}

/// Adds one row's tile of `W` tokens from `t0` to `z` (its outputs from `t0`, before
/// the tokens' scales): for each span of [`MAX_SPAN`] columns that holds entries, the
/// exact integer sums, converted and times the row's scale. (A span without entries
/// would add zeros.)
#[inline(always)]
fn spans<P: Isa, I: SpIndex, const W: usize>(
    weights: &[i16],
    cols: &[I],
    tokens: &TokenRows,
    t0: usize,
    scale: f32,
    z: &mut [f32],
) {
    let mut e = 0;
    while let Some(c) = cols.get(e) {
        let limit = (c.index() / MAX_SPAN + 1) * MAX_SPAN;
        let mut sums = [0; W];
        e += add_sums::<P, I, W>(&weights[e..], &cols[e..], limit, tokens, t0, &mut sums);
        for (v, &d) in z.iter_mut().zip(&sums) {
            *v += d as f32 * scale;
        }
    }
}

/// Adds to `sums` the exact sums `sums[j] += sum_e weights[e] * tokens[cols[e]][t0 + j]`
/// over the leading entries whose columns are below `limit`, for `W` tokens from `t0`
/// (`W` one of [`NARROW`] and [`WIDE`], `t0 + W` within the stride); returns how many
/// entries that was.
#[inline(always)]
fn add_sums<P: Isa, I: SpIndex, const W: usize>(
    weights: &[i16],
    cols: &[I],
    limit: usize,
    tokens: &TokenRows,
    t0: usize,
    sums: &mut [i32],
) -> usize {
    let (rows, stride) = (tokens.values.as_slice(), tokens.stride);
    assert!(t0 + W <= stride && W.is_multiple_of(NARROW) && sums.len() >= W);
    assert_eq!(weights.len(), cols.len());
    // The format's validator keeps a row's columns strictly increasing, which both the
    // tiles' `limit` checks and the span bound (at most MAX_SPAN entries per sum) rely on.
    debug_assert!(cols.windows(2).all(|c| c[0].index() < c[1].index()));
    #[cfg(target_arch = "x86_64")]
    {
        // Every column is below `ncols` and a row's columns strictly increase (the
        // format's validator), and the rows hold `ncols * stride` entries (asserted by
        // the caller), so each input's run of W tokens from t0 (t0 + W <= stride,
        // asserted above) is in bounds.
        let at = rows[t0..].as_ptr();
        if P::VNNI512 && W == WIDE {
            // SAFETY: the runs are in bounds (above); P::VNNI512 holds for the Avx512Vnni
            // copy alone, compiled with (and run after detecting) AVX-512F, AVX-512BW and
            // AVX-512 VNNI.
            let (tile, used) = unsafe { x86::wide_sums(weights, cols, limit, at, stride) };
            sums.iter_mut().zip(tile).for_each(|(s, t)| *s += t);
            return used;
        }
        if P::MADD256 {
            // SAFETY: the runs are in bounds (above); the copy is compiled with AVX2 (only
            // the AVX2, AVX-512 and VNNI copies set P::MADD256), and with AVX-VNNI where
            // P::VNNI256 holds (the AvxVnni copy alone, run after detecting it).
            let (tiles, used): ([i32; W], usize) = unsafe {
                if W == WIDE {
                    let (t, used) = x86::narrow_sums::<P, I, 2>(weights, cols, limit, at, stride);
                    (std::array::from_fn(|j| t.as_flattened()[j]), used)
                } else {
                    let (t, used) = x86::narrow_sums::<P, I, 1>(weights, cols, limit, at, stride);
                    (std::array::from_fn(|j| t.as_flattened()[j]), used)
                }
            };
            sums.iter_mut().zip(tiles).for_each(|(s, t)| *s += t);
            return used;
        }
    }
    let used = cols.partition_point(|c| c.index() < limit);
    for (&w, &c) in weights[..used].iter().zip(&cols[..used]) {
        let run = &rows[c.index() * stride + t0..][..W];
        for (s, &x) in sums.iter_mut().zip(run) {
            *s += i32::from(w) * i32::from(x);
        }
    }
    used
}

multiversion! {
    fn rows<I: SpIndex>(
        a: CsrView<'_, f32, I, i8>,
        rows: Range<usize>,
        tokens: &TokenRows,
        out: &mut [f32],
    ) => rows_kernel
}

/// [`rows`] on `path`, except where [`vnni_copy_runs`]: the AVX-512 path then runs the
/// [`crate::kernels::isa::Avx512Vnni`] copy, the AVX2 path the
/// [`crate::kernels::isa::AvxVnni`] one.
fn rows_best<I: SpIndex>(
    path: KernelPath,
    a: CsrView<'_, f32, I, i8>,
    range: Range<usize>,
    tokens: &TokenRows,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if vnni_copy_runs(path) {
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
        fn vnni_copy<I: SpIndex>(
            a: CsrView<'_, f32, I, i8>,
            range: Range<usize>,
            tokens: &TokenRows,
            out: &mut [f32],
        ) {
            rows_kernel::<crate::kernels::isa::Avx512Vnni, I>(a, range, tokens, out);
        }
        #[target_feature(enable = "avxvnni,avx2,fma,f16c")]
        fn avx_vnni_copy<I: SpIndex>(
            a: CsrView<'_, f32, I, i8>,
            range: Range<usize>,
            tokens: &TokenRows,
            out: &mut [f32],
        ) {
            rows_kernel::<crate::kernels::isa::AvxVnni, I>(a, range, tokens, out);
        }
        if path == KernelPath::Avx512 {
            // SAFETY: vnni512() detected every feature the copy is compiled with.
            return unsafe { vnni_copy(a, range, tokens, out) };
        }
        // SAFETY: on the AVX2 path, avx_vnni() detected every feature the copy is
        // compiled with.
        return unsafe { avx_vnni_copy(a, range, tokens, out) };
    }
    rows(path, a, range, tokens, out);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{BYTE_TILE, TokenRows};
    use crate::index::SpIndex;
    use crate::kernels::CsrView;
    use crate::kernels::int8::span_len;
    use crate::kernels::isa::{ACTIVATION_BIAS, Isa};

    /// A pair of 16-bit weights as the 32-bit word they make in memory (the first in the
    /// low half): one load, which the compiler folds into the broadcast.
    #[inline(always)]
    fn word(pair: &[i16]) -> i32 {
        (i32::from(pair[1]) << 16) | i32::from(pair[0] as u16)
    }

    /// [`super::add_sums`]'s tile for `16 * H` tokens with AVX2: per pair of stored
    /// weights and 16 tokens, two loads, an unpack of each half and a `vpmaddwd` +
    /// `vpaddd` (on the [`AvxVnni`](crate::kernels::isa::AvxVnni) copy, one `vpdpwssd`) into each of two accumulators
    /// (whose lanes then hold tokens 0-3 and 8-11, and 4-7 and 12-15), over the leading
    /// entries below `limit`; the tile in token order and how many entries it took.
    ///
    /// # Safety
    /// AVX2 must be available, and AVX-VNNI too where `P::VNNI256`; `weights` as long as
    /// `cols`, `cols` strictly increasing (the loop checks only the last of each pair
    /// against `limit`), and `x + c * stride` valid for `16 * H` reads for every column
    /// `c` in `cols`.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn narrow_sums<P: Isa, I: SpIndex, const H: usize>(
        weights: &[i16],
        cols: &[I],
        limit: usize,
        x: *const i16,
        stride: usize,
    ) -> ([[i32; 16]; H], usize) {
        // SAFETY: in bounds by the caller's contract (16 * H entries from each input's).
        let load = |c: I, h: usize| unsafe {
            _mm256_loadu_si256(x.add(c.index() * stride + 16 * h).cast())
        };
        let mut acc = [[_mm256_setzero_si256(); 2]; H];
        let mut madd = |first: I, second: Option<I>, w: i32| {
            let w = _mm256_set1_epi32(w);
            for (h, acc) in acc.iter_mut().enumerate() {
                let a = load(first, h);
                let b = second.map_or(_mm256_setzero_si256(), |c| load(c, h));
                let (low, high) = (_mm256_unpacklo_epi16(a, b), _mm256_unpackhi_epi16(a, b));
                *acc = if P::VNNI256 {
                    // SAFETY: with P::VNNI256 the caller has AVX-VNNI (the contract).
                    unsafe {
                        [
                            _mm256_dpwssd_avx_epi32(acc[0], low, w),
                            _mm256_dpwssd_avx_epi32(acc[1], high, w),
                        ]
                    }
                } else {
                    let (low, high) = (_mm256_madd_epi16(low, w), _mm256_madd_epi16(high, w));
                    [_mm256_add_epi32(acc[0], low), _mm256_add_epi32(acc[1], high)]
                };
            }
        };
        let (n, mut e) = (cols.len().min(weights.len()), 0);
        // Columns increase along a row: the second of a pair below the limit means both.
        while e + 2 <= n && cols[e + 1].index() < limit {
            madd(cols[e], Some(cols[e + 1]), word(&weights[e..e + 2]));
            e += 2;
        }
        if e < n && cols[e].index() < limit {
            madd(cols[e], None, word(&[weights[e], 0]));
            e += 1;
        }
        let mut out = [[0i32; 16]; H];
        for (out, acc) in out.iter_mut().zip(acc) {
            // SAFETY: `out` holds 16 lanes: tokens 0-7, then 8-15.
            unsafe {
                let first = _mm256_permute2x128_si256::<0x20>(acc[0], acc[1]);
                let second = _mm256_permute2x128_si256::<0x31>(acc[0], acc[1]);
                _mm256_storeu_si256(out.as_mut_ptr().cast(), first);
                _mm256_storeu_si256(out.as_mut_ptr().add(8).cast(), second);
            }
        }
        (out, e)
    }

    /// Rows `rows` of the product before `alpha` and `beta`, into `out` (row-major, a row
    /// of `batch` entries per output row, zeroed), with [`byte_sums`]: the float steps of
    /// [`super::rows_kernel`], so the same bits.
    ///
    /// # Safety
    /// The CPU must have AVX2, AVX-512F, AVX-512VL and AVX-512 VNNI; `a`'s columns must
    /// be below `a.ncols` (as the format's validator keeps them).
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
    pub(super) unsafe fn byte_rows<I: SpIndex>(
        a: CsrView<'_, f32, I, i8>,
        rows: Range<usize>,
        tokens: &TokenRows<u8>,
        out: &mut [f32],
    ) {
        let (batch, stride) = (tokens.scales.len(), tokens.stride);
        let x = tokens.values.as_slice();
        assert!(x.len() >= a.ncols * stride && stride.is_multiple_of(BYTE_TILE));
        for (r, z) in rows.zip(out.chunks_exact_mut(batch)) {
            let entries = a.indptr[r]..a.indptr[r + 1];
            let scale = a.row_scales.map_or(1.0, |s| s[r]);
            let (weights, cols) = (&a.values[entries.clone()], &a.indices[entries]);
            for t0 in (0..stride).step_by(BYTE_TILE) {
                let z = z.get_mut(t0..).unwrap_or_default();
                let mut e = 0;
                while e < cols.len() {
                    let used = span_len(&cols[e..], a.ncols);
                    // SAFETY: every column is below `ncols` (the format's validator) and
                    // `t0 + BYTE_TILE <= stride`, so each input's run of the tile is in
                    // `x` (asserted above); the features are this function's.
                    let sums = unsafe {
                        byte_sums(&weights[e..e + used], &cols[e..e + used], &x[t0..], stride)
                    };
                    for (v, &d) in z.iter_mut().zip(&sums) {
                        *v += d as f32 * scale;
                    }
                    e += used;
                }
            }
            for (v, &s) in z.iter_mut().zip(&tokens.scales) {
                *v *= s;
            }
        }
    }

    /// The exact sums `sum_e weights[e] * (x[cols[e] * stride + j] - 128)` for the 32
    /// tokens `j` of a tile (`x` holds the tokens biased by 128, as bytes). Four stored
    /// weights at a time: their inputs' 32 bytes each are interleaved per token by two
    /// rounds of unpacks (eight, on 256-bit vectors), and four `vpdpbusd` multiply each
    /// token's four inputs by the four weights broadcast and add them; two sets of
    /// accumulators take the quads in turn. Per stored weight and 32 tokens that is 32
    /// bytes read, half a cache line (the 16-bit copies read a whole one), two shuffles
    /// and one multiply-add. The bias comes out once at the end: `128 * sum(weights)`.
    ///
    /// # Safety
    /// AVX2, AVX-512F, AVX-512VL and AVX-512 VNNI must be available; every column's run
    /// of 32 bytes from `c * stride` must lie in `x`.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
    unsafe fn byte_sums<I: SpIndex>(
        weights: &[i8],
        cols: &[I],
        x: &[u8],
        stride: usize,
    ) -> [i32; 32] {
        let n = cols.len().min(weights.len());
        // SAFETY: in bounds by the caller's contract.
        let load = |c: I| unsafe { _mm256_loadu_si256(x.as_ptr().add(c.index() * stride).cast()) };
        let dots = |acc: [__m256i; 4], c: [I; 4], w: [i8; 4]| {
            let w = _mm256_set1_epi32(i32::from_le_bytes(w.map(|w| w as u8)));
            let (a, b, c, d) = (load(c[0]), load(c[1]), load(c[2]), load(c[3]));
            let (ab_low, ab_high) = (_mm256_unpacklo_epi8(a, b), _mm256_unpackhi_epi8(a, b));
            let (cd_low, cd_high) = (_mm256_unpacklo_epi8(c, d), _mm256_unpackhi_epi8(c, d));
            // Lanes of 128 bits: tokens 0-3 and 16-19, 4-7 and 20-23, 8-11 and 24-27,
            // 12-15 and 28-31, each token's four bytes together.
            [
                _mm256_dpbusd_epi32(acc[0], _mm256_unpacklo_epi16(ab_low, cd_low), w),
                _mm256_dpbusd_epi32(acc[1], _mm256_unpackhi_epi16(ab_low, cd_low), w),
                _mm256_dpbusd_epi32(acc[2], _mm256_unpacklo_epi16(ab_high, cd_high), w),
                _mm256_dpbusd_epi32(acc[3], _mm256_unpackhi_epi16(ab_high, cd_high), w),
            ]
        };
        let quad = |e: usize| -> ([I; 4], [i8; 4]) {
            (std::array::from_fn(|k| cols[e + k]), std::array::from_fn(|k| weights[e + k]))
        };
        let (mut first, mut second) = ([_mm256_setzero_si256(); 4], [_mm256_setzero_si256(); 4]);
        let mut e = 0;
        while e + 8 <= n {
            let ((c0, w0), (c1, w1)) = (quad(e), quad(e + 4));
            first = dots(first, c0, w0);
            second = dots(second, c1, w1);
            e += 8;
        }
        if e + 4 <= n {
            let (c, w) = quad(e);
            first = dots(first, c, w);
            e += 4;
        }
        if e < n {
            // The last few, padded with weights of zero at the last column.
            let c = std::array::from_fn(|k| cols[(e + k).min(n - 1)]);
            let w = std::array::from_fn(|k| if e + k < n { weights[e + k] } else { 0 });
            second = dots(second, c, w);
        }
        // Each lane's biased sum, and the bias, are within i32 (at most MAX_SPAN weights
        // of at most 128 by bytes of at most 255), and so is their difference.
        let bias = ACTIVATION_BIAS * weights[..n].iter().map(|&w| i32::from(w)).sum::<i32>();
        let bias = _mm256_set1_epi32(bias);
        let acc: [__m256i; 4] =
            std::array::from_fn(|k| _mm256_sub_epi32(_mm256_add_epi32(first[k], second[k]), bias));
        let mut out = [0i32; 32];
        let halves = [
            _mm256_permute2x128_si256::<0x20>(acc[0], acc[1]),
            _mm256_permute2x128_si256::<0x20>(acc[2], acc[3]),
            _mm256_permute2x128_si256::<0x31>(acc[0], acc[1]),
            _mm256_permute2x128_si256::<0x31>(acc[2], acc[3]),
        ];
        for (k, v) in halves.into_iter().enumerate() {
            // SAFETY: `out` holds four runs of eight lanes: tokens 0-7, 8-15, 16-23, 24-31.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(8 * k).cast(), v) };
        }
        out
    }

    /// [`super::add_sums`]'s tile for 32 tokens with AVX-512 VNNI: per pair of stored
    /// weights, two loads, two unpacks and two `vpdpwssd`, into two sets of accumulators
    /// taken in turn (each `vpdpwssd` waits for the last into its accumulator), over the
    /// leading entries below `limit`; the tile in token order and how many entries it
    /// took.
    ///
    /// # Safety
    /// AVX-512F, AVX-512BW and AVX-512 VNNI must be available, `weights` as long as
    /// `cols`, `cols` strictly increasing (the loops check only the last of each run
    /// against `limit`), and `x + c * stride` valid for 32 reads for every column `c` in
    /// `cols`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn wide_sums<I: SpIndex>(
        weights: &[i16],
        cols: &[I],
        limit: usize,
        x: *const i16,
        stride: usize,
    ) -> ([i32; 32], usize) {
        // SAFETY: in bounds by the caller's contract.
        let load = |c: I| unsafe { _mm512_loadu_si512(x.add(c.index() * stride).cast()) };
        let dot = |acc: [__m512i; 2], a: __m512i, b: __m512i, w: i32| {
            let w = _mm512_set1_epi32(w);
            [
                _mm512_dpwssd_epi32(acc[0], _mm512_unpacklo_epi16(a, b), w),
                _mm512_dpwssd_epi32(acc[1], _mm512_unpackhi_epi16(a, b), w),
            ]
        };
        let (n, mut e) = (cols.len().min(weights.len()), 0);
        let (mut first, mut second) = ([_mm512_setzero_si512(); 2], [_mm512_setzero_si512(); 2]);
        // Columns increase along a row: the last of a run below the limit means all.
        // Pairs two at a time, one into each set, then the last ones into the first.
        while e + 4 <= n && cols[e + 3].index() < limit {
            first = dot(first, load(cols[e]), load(cols[e + 1]), word(&weights[e..e + 2]));
            second =
                dot(second, load(cols[e + 2]), load(cols[e + 3]), word(&weights[e + 2..e + 4]));
            e += 4;
        }
        if e + 2 <= n && cols[e + 1].index() < limit {
            first = dot(first, load(cols[e]), load(cols[e + 1]), word(&weights[e..e + 2]));
            e += 2;
        }
        if e < n && cols[e].index() < limit {
            second = dot(second, load(cols[e]), _mm512_setzero_si512(), word(&[weights[e], 0]));
            e += 1;
        }
        let low = _mm512_add_epi32(first[0], second[0]);
        let high = _mm512_add_epi32(first[1], second[1]);
        // Lanes of 128 bits: `low` holds tokens 0-3, 8-11, 16-19, 24-27 and `high` the
        // four after each; pairs of 64-bit lanes from each, alternately, restore the order.
        let first_order = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
        let second_order = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
        let first = _mm512_permutex2var_epi64(low, first_order, high);
        let second = _mm512_permutex2var_epi64(low, second_order, high);
        let mut out = [0i32; 32];
        // SAFETY: `out` holds 32 lanes: tokens 0-15, then 16-31.
        unsafe {
            _mm512_storeu_si512(out.as_mut_ptr().cast(), first);
            _mm512_storeu_si512(out.as_mut_ptr().add(16).cast(), second);
        }
        (out, e)
    }
}

#[cfg(test)]
mod tests {
    use nalgebra::DMatrix;
    use proptest::prelude::*;

    use super::*;
    use crate::kernels::int8::fixture::Fixture;

    fn activations(cols: usize, batch: usize, seed: u64) -> DMatrix<f32> {
        DMatrix::from_fn(cols, batch, |c, j| {
            let k = (c as u64 * 31 + j as u64 * 17 + seed) % 97;
            if k.is_multiple_of(6) { 0.0 } else { (k as f32 - 48.0) * (1.0 + j as f32) * 0.01 }
        })
    }

    /// The rows kernel on a path, its VNNI copy when `vnni` and the CPU has one, as
    /// row-major bits (before alpha and beta).
    fn on_path(
        path: KernelPath,
        vnni: bool,
        a: CsrView<'_, f32, u32, i8>,
        x: &DMatrix<f32>,
    ) -> Vec<u32> {
        let path = KernelPath::resolve(path);
        let tokens = token_rows(x);
        let mut out = vec![0.0f32; a.nrows * x.ncols()];
        if vnni {
            rows_best(path, a, 0..a.nrows, &tokens, &mut out);
        } else {
            rows(path, a, 0..a.nrows, &tokens, &mut out);
        }
        out.iter().map(|v| v.to_bits()).collect()
    }

    /// The byte copy's rows, as row-major bits (before alpha and beta); `None` where the
    /// CPU lacks it.
    fn by_bytes<I: SpIndex>(a: CsrView<'_, f32, I, i8>, x: &DMatrix<f32>) -> Option<Vec<u32>> {
        #[cfg(target_arch = "x86_64")]
        if byte_copy_runs(KernelPath::resolve(KernelPath::Avx512)) {
            let tokens = token_bytes(x);
            let mut out = vec![0.0f32; a.nrows * x.ncols()];
            // SAFETY: byte_copy_runs detected the copy's features.
            unsafe { x86::byte_rows(a, 0..a.nrows, &tokens, &mut out) };
            return Some(out.iter().map(|v| v.to_bits()).collect());
        }
        let _ = (a, x);
        None
    }

    proptest! {
        /// Every compiled copy gives the bits of the dense int8 product's reference loop
        /// on the same weights written out, for batches around the 16- and 32-token
        /// tiles, rows of odd and even lengths and of none; the byte copy too, at every
        /// batch (products run it above 32 tokens).
        #[test]
        fn every_copy_equals_the_dense_reference(
            (nrows, ncols) in (1usize..30, 0usize..120),
            density in 0.0f64..1.0,
            batch in 1usize..70,
            seed in any::<u64>(),
        ) {
            let fixture = Fixture::new(nrows, ncols, density, seed);
            let x = activations(ncols, batch, seed);
            let want = fixture.reference(&x);
            for path in KernelPath::ORDER {
                for vnni in [false, true] {
                    prop_assert_eq!(
                        &on_path(path, vnni, fixture.view(), &x), &want, "{:?}, vnni {}", path, vnni
                    );
                }
            }
            if let Some(got) = by_bytes(fixture.view(), &x) {
                prop_assert_eq!(&got, &want, "bytes");
            }
            let narrow = Fixture::<u16>::new(nrows, ncols, density, seed);
            if let Some(got) = by_bytes(narrow.view(), &x) {
                prop_assert_eq!(&got, &want, "bytes, 16-bit columns");
            }
        }
    }

    /// A token with a NaN or an infinity makes its own outputs NaN and leaves the
    /// others' bits alone, on every copy; the byte copy stores its quantized zeros (and
    /// the padding past the batch) as 128.
    #[test]
    fn special_tokens_stay_in_their_columns() {
        let fixture = Fixture::<u32>::new(9, 70, 0.4, 8);
        let clean = activations(70, 40, 8);
        let mut x = clean.clone();
        x[(17, 3)] = f32::NAN;
        x[(5, 36)] = f32::INFINITY;
        let (want, clean_want) = (fixture.reference(&x), fixture.reference(&clean));
        let batch = x.ncols();
        for (k, (&got, &bits)) in want.iter().zip(&clean_want).enumerate() {
            let j = k % batch;
            assert_eq!(f32::from_bits(got).is_nan(), j == 3 || j == 36, "output {k}");
            if j != 3 && j != 36 {
                assert_eq!(got, bits, "output {k}");
            }
        }
        for path in KernelPath::ORDER {
            for vnni in [false, true] {
                assert_eq!(on_path(path, vnni, fixture.view(), &x), want, "{path:?}, {vnni}");
            }
        }
        if let Some(got) = by_bytes(fixture.view(), &x) {
            assert_eq!(got, want, "bytes");
        }
        let bytes = token_bytes(&x);
        assert_eq!(bytes.stride, 64);
        for input in bytes.values.as_slice().chunks_exact(bytes.stride) {
            assert_eq!(input[3], 128);
            assert_eq!(input[36], 128);
            assert!(input[batch..].iter().all(|&b| b == 128));
        }
    }

    /// Rows wider than one 32-bit sum can hold are summed per span of columns, as the
    /// dense product sums them, in both tile widths: a full row of 140 000 entries of 127
    /// against 127s (which one sum would overflow), a row whose entries all lie in its
    /// second span, and one of odd counts on both sides of the span's end.
    #[test]
    fn wide_rows_are_summed_per_span_of_columns() {
        let ncols = 140_000;
        assert!(ncols as i64 * 127 * 127 > i64::from(i32::MAX));
        let span = MAX_SPAN as u32;
        let late: Vec<u32> = (span + 5..span + 40).collect();
        // An odd count of entries before the span's end and after it.
        let straddling: Vec<u32> = std::iter::once(1).chain(span - 5..span + 6).collect();
        let rows = [(0..ncols as u32).collect::<Vec<_>>(), late, straddling];
        let mut indptr = vec![0];
        for row in &rows {
            indptr.push(indptr[indptr.len() - 1] + row.len());
        }
        let fixture = Fixture {
            nrows: 3,
            ncols,
            indptr,
            indices: rows.concat(),
            values: (0..rows.iter().map(Vec::len).sum::<usize>())
                .map(|k| if k >= ncols && k % 3 == 2 { -127 } else { 127 })
                .collect(),
            scales: vec![1.0 / 127.0, 0.5, 0.25],
        };
        // A 32-token tile and a 16-token one.
        let x =
            DMatrix::from_fn(ncols, 48, |c, j| if j % 2 == 1 && c < 10 { -1.0 } else { 1.0f32 });
        let want = fixture.reference(&x);
        for path in KernelPath::ORDER {
            for vnni in [false, true] {
                let got = on_path(path, vnni, fixture.view(), &x);
                assert_eq!(got, want, "{path:?}, vnni {vnni}");
                // Row 0, token 0: 140 000 products of 127 by 127, scaled back by 127^2.
                let full = f64::from(f32::from_bits(got[0]));
                assert!((full - ncols as f64).abs() < 1e-3 * ncols as f64, "{full}");
            }
        }
        if let Some(got) = by_bytes(fixture.view(), &x) {
            assert_eq!(got, want, "bytes");
        }
    }
}
