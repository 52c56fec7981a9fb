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
//! The quantized tokens are laid out as the f32 kernels lay out `X`: in panels of tokens
//! that fit L2, row-major within each, each input's tokens contiguous, here as 16-bit
//! values. Two stored weights are taken at a time: their inputs' runs of tokens are
//! interleaved per token with one unpack instruction per vector, so that one `vpmaddwd`
//! (or, with AVX-512 VNNI or AVX-VNNI, `vpdpwssd`) multiplies both by the weights' pair
//! broadcast to every lane and adds the two products. Per stored weight and 32 tokens that is one 64-byte load, one shuffle and
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
use crate::kernels::spmm::{LineAligned, panel_width, spmm_prepared};
use crate::kernels::{CsrView, KernelPath, kernel_path, multiversion};
use crate::product::{Epilogue, Layout};

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
/// contiguous read, and the block's rows (2 KiB at 16 tokens, 16 KiB at a panel of 128)
/// stay in L1 while every token is stored down them.
const TRANSPOSE_INPUTS: usize = 64;

/// Tokens per tile of the byte copy ([`byte_rows`](x86::byte_rows)): one 256-bit vector of bytes.
const BYTE_TILE: usize = 32;

/// `X`'s tokens quantized to int8, in panels of [`panel_width`] tokens as the f32
/// sliced-ELLPACK and block kernels copy `X`
/// ([`to_panels`](crate::kernels::spmm::to_panels)): within a panel, input `k`'s tokens
/// at `k * stride..`, zeros past the batch, `stride` the panel's tokens rounded up to a
/// whole tile; one scale per token. Held as `i16` for the 16-bit
/// copies, or as `u8` biased by [`ACTIVATION_BIAS`](crate::kernels::isa::ACTIVATION_BIAS)
/// for the byte copy (where a zero is stored as 128). Rows over one panel read it from
/// L2; rows over the whole of a large batch would each fetch all of it from memory.
pub(crate) struct TokenRows<T: 'static = i16> {
    /// Tokens per panel but the last: whole tiles.
    panel: usize,
    /// Entries per tile ([`NARROW`] tokens, or [`BYTE_TILE`] for bytes).
    tile: usize,
    /// Inputs: `X`'s rows.
    inputs: usize,
    values: LineAligned<T>,
    scales: Vec<f32>,
}

/// One panel of [`TokenRows`]: input `k`'s tokens at `values[k * stride..]`, `stride`
/// a whole number of tiles, and the panel's tokens' scales.
pub(crate) struct TokenPanel<'a, T> {
    stride: usize,
    values: &'a [T],
    scales: &'a [f32],
}

impl<T: Copy + Default> TokenRows<T> {
    /// The panels of `tokens` (a range of whole panels), each with its first token.
    fn panels(&self, tokens: Range<usize>) -> impl Iterator<Item = (TokenPanel<'_, T>, usize)> {
        let batch = self.scales.len();
        debug_assert!(tokens.start.is_multiple_of(self.panel));
        tokens.step_by(self.panel).map(move |t0| {
            let width = self.panel.min(batch - t0);
            let stride = width.next_multiple_of(self.tile);
            let values = &self.values.as_slice()[t0 * self.inputs..][..self.inputs * stride];
            (TokenPanel { stride, values, scales: &self.scales[t0..t0 + width] }, t0)
        })
    }
}

/// `x`'s tokens as 16-bit values ([`quantized_rows`]), for the 16-bit copies.
fn token_rows(x: &DMatrix<f32>, panel: usize) -> TokenRows {
    quantized_rows(x, panel, NARROW, |v| v)
}

/// `x`'s tokens as bytes biased by
/// [`ACTIVATION_BIAS`](crate::kernels::isa::ACTIVATION_BIAS) ([`quantized_rows`]), for
/// [`byte_rows`](x86::byte_rows).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code, reason = "only x86 has a byte copy"))]
fn token_bytes(x: &DMatrix<f32>, panel: usize) -> TokenRows<u8> {
    use crate::kernels::isa::ACTIVATION_BIAS;
    quantized_rows(x, panel, BYTE_TILE, |v| (i32::from(v) + ACTIVATION_BIAS) as u8)
}

/// `x`'s tokens quantized as [`super::quantize_columns`] quantizes them (the same scales
/// and values), each stored as `store` makes it, written straight into [`TokenRows`] in
/// panels of `panel` tokens (a multiple of `tile`), each padded to a multiple of `tile`:
/// a block of inputs of a panel at a time, each token's run of the block quantized
/// contiguously, then stored down its column. Split across threads, by tokens for the
/// scales and by blocks for the rest, when `X` is large enough to repay it.
fn quantized_rows<T: Copy + Default + Send + Sync + 'static>(
    x: &DMatrix<f32>,
    panel: usize,
    tile: usize,
    store: impl Fn(i16) -> T + Sync,
) -> TokenRows<T> {
    assert!(panel > 0 && panel.is_multiple_of(tile));
    let (inputs, batch) = x.shape();
    let path = kernel_path();
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
    let mut values = LineAligned::filled(inputs * batch.next_multiple_of(tile), store(0));
    // Each block: its panel's first token, the panel's stride, its first input and its
    // entries.
    let mut blocks: Vec<(usize, usize, usize, &mut [T])> = Vec::new();
    let mut rest = values.as_mut_slice();
    for t0 in (0..batch).step_by(panel) {
        let stride = panel.min(batch - t0).next_multiple_of(tile);
        let (entries, tail) = rest.split_at_mut(inputs * stride);
        rest = tail;
        for (k, block) in entries.chunks_mut(TRANSPOSE_INPUTS * stride).enumerate() {
            blocks.push((t0, stride, k * TRANSPOSE_INPUTS, block));
        }
    }
    let fill = |(t0, stride, k0, out): (usize, usize, usize, &mut [T])| {
        let height = out.len() / stride;
        let mut run = [0i16; TRANSPOSE_INPUTS];
        let width = panel.min(batch - t0);
        let panel_tokens = tokens[t0..t0 + width].iter().zip(&scales[t0..]);
        for (j, (token, &scale)) in panel_tokens.enumerate() {
            // A token with a NaN or an infinity keeps zeros (its scale makes it NaN).
            if !scale.is_nan() {
                quantize_run(path, &token[k0..k0 + height], scale, &mut run[..height]);
                for (row, &v) in out.chunks_exact_mut(stride).zip(&run) {
                    row[j] = store(v);
                }
            }
        }
    };
    if parallel {
        blocks.into_par_iter().for_each(fill);
    } else {
        blocks.into_iter().for_each(fill);
    }
    TokenRows { panel, tile, inputs, values, scales }
}

/// `Y <- alpha * A X + beta * Y` for an int8 CSR matrix (`a.values` in `-127..=127`,
/// its row scales given or all 1), `X` quantized per token.
pub(crate) fn int8_csr_spmm<I: SpIndex>(
    a: CsrView<'_, f32, I, i8>,
    alpha: f32,
    x: &DMatrix<f32>,
    beta: f32,
    y: &mut DMatrix<f32>,
    then: Option<Epilogue<'_, f32>>,
) {
    let path = kernel_path();
    // The integer products take `X` and `Y` by columns.
    let by_columns = (then, Layout::COLUMNS);
    #[cfg(target_arch = "x86_64")]
    if x.ncols() > WIDE && byte_copy_runs(path) {
        let panel = panel_width(x.nrows(), size_of::<u8>());
        let prepare = |x: &DMatrix<f32>| token_bytes(x, panel);
        spmm_prepared(
            a,
            alpha,
            x,
            prepare,
            panel,
            beta,
            y,
            by_columns,
            |range, tokens, columns, z| {
                // SAFETY: byte_copy_runs detected the copy's features.
                unsafe { x86::byte_rows(a, range, tokens, columns, z) }
            },
        );
        return;
    }
    let panel = panel_width(x.nrows(), size_of::<i16>());
    let prepare = |x: &DMatrix<f32>| token_rows(x, panel);
    spmm_prepared(a, alpha, x, prepare, panel, beta, y, by_columns, |range, tokens, columns, z| {
        rows_best(path, a, range, tokens, columns, z)
    });
}

/// Whether batches of more than [`WIDE`] tokens run the byte copy
/// ([`x86::byte_rows`]): on the AVX-512 path of CPUs with AVX-512 VNNI and VL.
#[cfg(target_arch = "x86_64")]
fn byte_copy_runs(path: KernelPath) -> bool {
    path == KernelPath::Avx512 && crate::kernels::isa::vnni512_vl()
}

/// Rows `rows` of the product at the tokens `columns` (whole panels of `tokens`) before
/// `alpha` and `beta`, into `out` (row-major, a row of `columns.len()` entries per
/// output row, zeroed): every row passes over one panel before any goes on to the next.
#[inline(always)]
fn rows_kernel<P: Isa, I: SpIndex>(
    a: CsrView<'_, f32, I, i8>,
    rows: Range<usize>,
    tokens: &TokenRows,
    columns: Range<usize>,
    out: &mut [f32],
) {
    let (first, width) = (columns.start, columns.len());
    let mut weights = Vec::new();
    for (panel, t0) in tokens.panels(columns) {
        let (stride, batch) = (panel.stride, panel.scales.len());
        assert!(panel.values.len() >= a.ncols * stride);
        for (k, r) in rows.clone().enumerate() {
            let entries = a.indptr[r]..a.indptr[r + 1];
            let scale = a.row_scales.map_or(1.0, |s| s[r]);
            weights.clear();
            weights.extend(a.values[entries.clone()].iter().map(|&v| i16::from(v)));
            let cols = &a.indices[entries];
            let z = &mut out[k * width + t0 - first..][..batch];
            let mut t = 0;
            while t < stride {
                let z = z.get_mut(t..).unwrap_or_default();
                if t + WIDE <= stride {
                    spans::<P, I, WIDE>(&weights, cols, &panel, t, scale, z);
                    t += WIDE;
                } else {
                    spans::<P, I, NARROW>(&weights, cols, &panel, t, scale, z);
                    t += NARROW;
                }
            }
            for (v, &s) in z.iter_mut().zip(panel.scales) {
                *v *= s;
            }
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
    tokens: &TokenPanel<'_, i16>,
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
    tokens: &TokenPanel<'_, i16>,
    t0: usize,
    sums: &mut [i32],
) -> usize {
    let (rows, stride) = (tokens.values, tokens.stride);
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
        columns: Range<usize>,
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
    columns: Range<usize>,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if vnni_copy_runs(path) {
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
        fn vnni_copy<I: SpIndex>(
            a: CsrView<'_, f32, I, i8>,
            range: Range<usize>,
            tokens: &TokenRows,
            columns: Range<usize>,
            out: &mut [f32],
        ) {
            rows_kernel::<crate::kernels::isa::Avx512Vnni, I>(a, range, tokens, columns, out);
        }
        #[target_feature(enable = "avxvnni,avx2,fma,f16c")]
        fn avx_vnni_copy<I: SpIndex>(
            a: CsrView<'_, f32, I, i8>,
            range: Range<usize>,
            tokens: &TokenRows,
            columns: Range<usize>,
            out: &mut [f32],
        ) {
            rows_kernel::<crate::kernels::isa::AvxVnni, I>(a, range, tokens, columns, out);
        }
        if path == KernelPath::Avx512 {
            // SAFETY: vnni512() detected every feature the copy is compiled with.
            return unsafe { vnni_copy(a, range, tokens, columns, out) };
        }
        // SAFETY: on the AVX2 path, avx_vnni() detected every feature the copy is
        // compiled with.
        return unsafe { avx_vnni_copy(a, range, tokens, columns, out) };
    }
    rows(path, a, range, tokens, columns, out);
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

    /// Rows `rows` of the product at the tokens `columns` (whole panels of `tokens`)
    /// before `alpha` and `beta`, into `out` (row-major, a row of `columns.len()` entries
    /// per output row, zeroed), with [`byte_sums`]: the float steps of
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
        columns: Range<usize>,
        out: &mut [f32],
    ) {
        let (first, width) = (columns.start, columns.len());
        for (panel, t0) in tokens.panels(columns) {
            let (batch, stride, x) = (panel.scales.len(), panel.stride, panel.values);
            assert!(x.len() >= a.ncols * stride && stride.is_multiple_of(BYTE_TILE));
            for (k, r) in rows.clone().enumerate() {
                let entries = a.indptr[r]..a.indptr[r + 1];
                let scale = a.row_scales.map_or(1.0, |s| s[r]);
                let (weights, cols) = (&a.values[entries.clone()], &a.indices[entries]);
                let z = &mut out[k * width + t0 - first..][..batch];
                for t in (0..stride).step_by(BYTE_TILE) {
                    let z = z.get_mut(t..).unwrap_or_default();
                    let mut e = 0;
                    while e < cols.len() {
                        let used = span_len(&cols[e..], a.ncols);
                        let (weights, cols) = (&weights[e..e + used], &cols[e..e + used]);
                        // SAFETY: every column is below `ncols` (the format's validator)
                        // and `t + BYTE_TILE <= stride`, so each input's run of the tile
                        // is in `x` (asserted above); the features are this function's.
                        let sums = unsafe { byte_sums(weights, cols, &x[t..], stride) };
                        for (v, &d) in z.iter_mut().zip(&sums) {
                            *v += d as f32 * scale;
                        }
                        e += used;
                    }
                }
                for (v, &s) in z.iter_mut().zip(panel.scales) {
                    *v *= s;
                }
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
    /// row-major bits (before alpha and beta), over `X` in panels of `panel` tokens, the
    /// rows in two ranges and the panels in two, as parallel tasks take them.
    fn on_path(
        path: KernelPath,
        vnni: bool,
        a: CsrView<'_, f32, u32, i8>,
        x: &DMatrix<f32>,
        panel: usize,
    ) -> Vec<u32> {
        let path = KernelPath::resolve(path);
        let tokens = token_rows(x, panel);
        by_blocks(a.nrows, x.ncols(), panel, |rows, columns, out| {
            if vnni {
                rows_best(path, a, rows, &tokens, columns, out);
            } else {
                self::rows(path, a, rows, &tokens, columns, out);
            }
        })
    }

    /// The product's rows, row-major bits, from `block(rows, columns, out)` run on two
    /// ranges of rows by two ranges of whole panels of `panel` tokens of `batch`.
    fn by_blocks(
        nrows: usize,
        batch: usize,
        panel: usize,
        block: impl Fn(Range<usize>, Range<usize>, &mut [f32]),
    ) -> Vec<u32> {
        let mut want = vec![0u32; nrows * batch];
        let split = batch.div_ceil(panel) / 2 * panel;
        for rows in [0..nrows / 2, nrows / 2..nrows] {
            for columns in [0..split, split..batch] {
                let mut out = vec![0.0f32; rows.len() * columns.len()];
                block(rows.clone(), columns.clone(), &mut out);
                for (k, r) in rows.clone().enumerate() {
                    let got = &out[k * columns.len()..][..columns.len()];
                    for (w, v) in want[r * batch..][columns.clone()].iter_mut().zip(got) {
                        *w = v.to_bits();
                    }
                }
            }
        }
        want
    }

    /// The byte copy's rows, as row-major bits (before alpha and beta), in panels as
    /// [`on_path`]; `None` where the CPU lacks it.
    fn by_bytes<I: SpIndex>(
        a: CsrView<'_, f32, I, i8>,
        x: &DMatrix<f32>,
        panel: usize,
    ) -> Option<Vec<u32>> {
        #[cfg(target_arch = "x86_64")]
        if byte_copy_runs(KernelPath::resolve(KernelPath::Avx512)) {
            let tokens = token_bytes(x, panel);
            return Some(by_blocks(a.nrows, x.ncols(), panel, |rows, columns, out| {
                // SAFETY: byte_copy_runs detected the copy's features.
                unsafe { x86::byte_rows(a, rows, &tokens, columns, out) }
            }));
        }
        let _ = (a, x, panel);
        None
    }

    proptest! {
        /// Every compiled copy gives the bits of the dense int8 product's reference loop
        /// on the same weights written out, for batches around the 16- and 32-token
        /// tiles, rows of odd and even lengths and of none, in one panel or several of 32
        /// or 64 tokens, and blocks of rows and panels; the byte copy too, at every batch
        /// (products run it above 32 tokens).
        #[test]
        fn every_copy_equals_the_dense_reference(
            (nrows, ncols) in (1usize..30, 0usize..120),
            density in 0.0f64..1.0,
            batch in 1usize..160,
            panel in prop::sample::select(vec![32usize, 64, 128]),
            seed in any::<u64>(),
        ) {
            let fixture = Fixture::new(nrows, ncols, density, seed);
            let x = activations(ncols, batch, seed);
            let want = fixture.reference(&x);
            for path in KernelPath::ORDER {
                for vnni in [false, true] {
                    prop_assert_eq!(
                        &on_path(path, vnni, fixture.view(), &x, panel),
                        &want,
                        "{:?}, vnni {}",
                        path,
                        vnni
                    );
                }
            }
            if let Some(got) = by_bytes(fixture.view(), &x, panel) {
                prop_assert_eq!(&got, &want, "bytes");
            }
            let narrow = Fixture::<u16>::new(nrows, ncols, density, seed);
            if let Some(got) = by_bytes(narrow.view(), &x, panel) {
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
        for panel in [32, 128] {
            for path in KernelPath::ORDER {
                for vnni in [false, true] {
                    let got = on_path(path, vnni, fixture.view(), &x, panel);
                    assert_eq!(got, want, "{path:?}, {vnni}, panel {panel}");
                }
            }
            if let Some(got) = by_bytes(fixture.view(), &x, panel) {
                assert_eq!(got, want, "bytes, panel {panel}");
            }
        }
        // Two panels, the second of 8 tokens padded to a whole tile.
        let bytes = token_bytes(&x, 32);
        let panels: Vec<_> = bytes.panels(0..batch).collect();
        assert_eq!(
            panels.iter().map(|(p, t0)| (p.stride, *t0)).collect::<Vec<_>>(),
            [(32, 0), (32, 32)]
        );
        for (panel, t0) in panels {
            for input in panel.values.chunks_exact(panel.stride) {
                for (j, &b) in input.iter().enumerate() {
                    if [3, 36].contains(&(t0 + j)) || t0 + j >= batch {
                        assert_eq!(b, 128, "token {}", t0 + j);
                    }
                }
            }
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
        // In one panel, and in two: 32 tokens, then 16.
        for panel in [32, 64] {
            for path in KernelPath::ORDER {
                for vnni in [false, true] {
                    let got = on_path(path, vnni, fixture.view(), &x, panel);
                    assert_eq!(got, want, "{path:?}, vnni {vnni}, panel {panel}");
                    // Row 0, token 0: 140 000 products of 127 by 127, scaled back by 127^2.
                    let full = f64::from(f32::from_bits(got[0]));
                    assert!((full - ncols as f64).abs() < 1e-3 * ncols as f64, "{full}");
                }
            }
            if let Some(got) = by_bytes(fixture.view(), &x, panel) {
                assert_eq!(got, want, "bytes, panel {panel}");
            }
        }
    }
}
