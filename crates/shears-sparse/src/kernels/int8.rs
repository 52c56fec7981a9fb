//! Dense int8 products with integer arithmetic: `Y <- alpha * A X + beta * Y` where `A`
//! holds int8 weights with a scale per row or per group of columns, and `X` is quantized
//! on the fly to int8, one scale per column (per token).
//!
//! Each output is `xs[j] * sum_g(ws[r, g] * dot_g)`, where `dot_g` is the exact 32-bit
//! integer dot product of a weight row's group `g` with the quantized column, and the
//! float sum runs over the groups in order. A group wider than [`MAX_SPAN`] columns is
//! summed in spans of that many (each with the group's scale), so that no 32-bit sum can
//! overflow. The integer sums are exact, so every path and thread count gives the same
//! bits; the float steps are one multiply and one add each, never fused.
//!
//! The quantized activations are kept widened to 16 bits, so that the inner loop is
//! pairs of 16-bit products summed into 32-bit lanes: `vpmaddwd` on the AVX2 and AVX-512
//! paths (sixteen multiply-adds per instruction, twice as many as an f32 fused
//! multiply-add), plain loops the compiler vectorises elsewhere. Their values are int8's
//! (`-127..=127`, weights down to -128), so no pair's sum overflows. On CPUs with
//! AVX-512 VNNI the activations are also stored as unsigned bytes (plus 128) for
//! `vpdpbusd`, 64 byte products per instruction ([`int8_dots_biased`], and for batches
//! the weights packed by [`packed`] so that no output needs a horizontal sum); on CPUs
//! with AVX-VNNI but not AVX-512, the AVX2 path does the same with 256-bit `vpdpbusd`,
//! 32 byte products per instruction, on dot-product tiles.
//!
//! Int8 CSR batches ([`csr`]) quantize the tokens the same way and multiply pairs of
//! stored weights against their inputs' runs of tokens, interleaved, with `vpmaddwd` or
//! (AVX-512 VNNI, AVX-VNNI) `vpdpwssd`.

use std::ops::Range;

use crate::index::SpIndex;

use rayon::prelude::*;

use super::isa::{ACTIVATION_BIAS, DOT_STEP as STEP, Isa, int8_dots, int8_dots_biased};
use super::spmm::for_each_block_of;
use super::{KernelPath, NmView, Split, Units, combine, kernel_path, multiversion};
use crate::product::Epilogue;

mod csr;
mod csr_vector;
#[cfg(test)]
mod fixture;
#[cfg(target_arch = "x86_64")]
mod packed;

pub(crate) use csr::{INTEGER_MIN_BATCH, int8_csr_spmm};
pub(crate) use csr_vector::int8_csr_spmv;

/// Columns summed in one 32-bit integer sum at most. Weights may be -128 and activations
/// are within -127..=127, stored biased as 1..=255 for the VNNI copies, whose sums are
/// the largest: `65536 * 255 * 128 < 2^31`.
pub(crate) const MAX_SPAN: usize = 1 << 16;
const _: () = assert!(MAX_SPAN as i64 * 255 * 128 <= i32::MAX as i64);

/// How many of a row's increasing columns `cols` lie in the first one's span of
/// [`MAX_SPAN`] columns: all of them in a matrix of `ncols <= MAX_SPAN` columns.
#[inline(always)]
pub(crate) fn span_len<I: SpIndex>(cols: &[I], ncols: usize) -> usize {
    match cols.first() {
        Some(c) if ncols > MAX_SPAN => {
            let limit = (c.index() / MAX_SPAN + 1) * MAX_SPAN;
            cols.partition_point(|c| c.index() < limit)
        }
        _ => cols.len(),
    }
}

/// Rows and columns of `X` per register tile of a batched product: two weight rows
/// against six tokens keep twelve accumulators, two widened weight vectors and one
/// activation vector within AVX2's sixteen registers: eight loads per twelve
/// multiply-adds. The AVX-512 VNNI copy takes [`VNNI_TILE_ROWS`], the AVX-VNNI one
/// [`VNNI256_TILE_TOKENS`].
const TILE_ROWS: usize = 2;
const TILE_TOKENS: usize = 6;

/// Tokens per batched tile of the [`super::isa::AvxVnni`] copy: two rows by four tokens
/// keep eight accumulators, the two rows' sums and weights, a vector of ones and one
/// activation vector within AVX2's sixteen registers.
const VNNI256_TILE_TOKENS: usize = 4;

/// Tokens from which the AVX-512 VNNI copy packs its weights ([`packed`]) instead of
/// running dot-product tiles: packing reads the weights once more, which a handful of tokens
/// repays.
#[cfg(target_arch = "x86_64")]
const PACKED_MIN_BATCH: usize = 4;

/// Rows per batched dot-product tile of the [`super::isa::Avx512Vnni`] copy (rows too long
/// to pack): four rows by six tokens, so that each activation vector loaded (from L2, at
/// large batches) feeds four multiply-adds instead of two. Their 24 accumulators, the
/// rows' sums and weights and one activation are 34 vectors, two more than AVX-512's
/// registers: the compiler reloads two weight vectors from L1.
const VNNI_TILE_ROWS: usize = 4;

/// Elements of `X` (or `Y`) from which quantizing (or writing) them is split across
/// threads.
const PARALLEL_ELEMENTS: usize = 1 << 16;

/// Bytes of quantized activations a batched product works through at a time (a block
/// of tokens, a whole number of tiles), so that they stay in L2 while every row passes
/// over them, however many tokens the batch has.
const ACTIVATION_BLOCK_BYTES: usize = 256 << 10;

/// Rows per tile against one token (batch 1, and a batch's last rows): four independent
/// sums to hide the multiply-add latency.
const VECTOR_ROWS: usize = 4;

/// A borrowed, validated dense int8 matrix: `rows x cols` values row-major, and
/// `groups_per_row` scales per row, each for `group` consecutive columns (the last group
/// of a row may be shorter).
#[derive(Clone, Copy)]
pub(crate) struct Int8DenseView<'a> {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) group: usize,
    pub(crate) values: &'a [i8],
    pub(crate) scales: &'a [f32],
    /// Where the matrix keeps its weights packed across products, if it does (a matrix
    /// written out for one product does not).
    #[cfg_attr(
        not(target_arch = "x86_64"),
        allow(dead_code, reason = "only the x86 AVX-512 VNNI copy packs")
    )]
    pub(crate) packed: Option<&'a PackedWeights>,
}

/// A matrix's weights packed for the AVX-512 VNNI batched product, made by its first
/// product that packs and kept for the next ones (packing is a pass over the weights,
/// which at a transformer's shapes costs a good part of a product): as many bytes as
/// the weights, and a sum and a scale per row and span. A cache, not part of the matrix's value: clones start without it, and it
/// never makes two matrices unequal.
#[derive(Default)]
pub(crate) struct PackedWeights {
    #[cfg(target_arch = "x86_64")]
    packed: std::sync::OnceLock<packed::Packed>,
}

impl PackedWeights {
    /// Whether the weights are packed yet.
    fn is_packed(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self.packed.get().is_some();
        #[cfg(not(target_arch = "x86_64"))]
        false
    }
}

impl Clone for PackedWeights {
    fn clone(&self) -> Self {
        PackedWeights::default()
    }
}

impl PartialEq for PackedWeights {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for PackedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedWeights").field("packed", &self.is_packed()).finish()
    }
}

impl Int8DenseView<'_> {
    fn groups_per_row(&self) -> usize {
        self.cols.div_ceil(self.group).max(1)
    }
}

/// `X`'s columns quantized to int8 (held as `i16`), one scale per column.
pub(crate) struct QuantizedColumns {
    /// Entries per column.
    pub(crate) stride: usize,
    pub(crate) values: Vec<i16>,
    /// The values plus [`ACTIVATION_BIAS`] as bytes, for the VNNI copy; empty unless
    /// that copy runs, which fills it first ([`QuantizedColumns::bias`]; the copy's
    /// slicing panics if it did not). Each column is padded to a whole number of four
    /// bytes (with the bias, which stands for zero).
    pub(crate) biased: Vec<u8>,
    /// Entries per column of `biased`.
    pub(crate) biased_stride: usize,
    pub(crate) scales: Vec<f32>,
}

/// A range of [`QuantizedColumns`]' tokens, as the products read them: token `j` of the
/// range at `values[j * stride..]` (and `biased[j * biased_stride..]`), its scale
/// `scales[j]`. Each token is quantized alone, so a token's outputs do not depend on
/// which range it is read in.
pub(crate) struct QuantizedTokens<'a> {
    pub(crate) stride: usize,
    pub(crate) values: &'a [i16],
    pub(crate) biased: &'a [u8],
    pub(crate) biased_stride: usize,
    pub(crate) scales: &'a [f32],
}

impl QuantizedColumns {
    /// The tokens `tokens`.
    pub(crate) fn tokens(&self, tokens: Range<usize>) -> QuantizedTokens<'_> {
        let slice = |stride: usize| tokens.start * stride..tokens.end * stride;
        QuantizedTokens {
            stride: self.stride,
            values: &self.values[slice(self.stride)],
            // Empty (and its stride 0) unless the VNNI copy runs and `bias` filled it.
            biased: &self.biased[slice(self.biased_stride)],
            biased_stride: self.biased_stride,
            scales: &self.scales[tokens],
        }
    }

    /// Fills [`QuantizedColumns::biased`].
    fn bias(&mut self) {
        let stride = self.stride.next_multiple_of(4);
        let batch = self.scales.len();
        let mut biased = vec![ACTIVATION_BIAS as u8; stride * batch];
        if self.stride > 0 {
            let columns = self.values.chunks_exact(self.stride);
            for (out, column) in biased.chunks_exact_mut(stride).zip(columns) {
                // -127..=127 plus 128 is 1..=255: every value fits a byte.
                for (b, &v) in out.iter_mut().zip(column) {
                    debug_assert!((-127..=127).contains(&v));
                    *b = (i32::from(v) + ACTIVATION_BIAS) as u8;
                }
            }
        }
        self.biased = biased;
        self.biased_stride = stride;
    }
}

/// Quantizes each column of `x` (`cols` entries each, column-major) symmetrically:
/// `scale = max |x| / 127` (1 for a zero column), `q = round(x / scale)` in f32, ties to
/// even.
/// A column with a NaN or infinity gets a NaN scale, so its outputs are NaN (an f32
/// product would give NaN or an infinity).
pub(crate) fn quantize_columns(x: &[f32], cols: usize, batch: usize) -> QuantizedColumns {
    debug_assert_eq!(x.len(), cols * batch);
    let stride = cols;
    let mut values = vec![0i16; stride * batch];
    if cols == 0 {
        return QuantizedColumns {
            stride,
            values,
            biased: Vec::new(),
            biased_stride: 0,
            scales: vec![1.0; batch],
        };
    }
    let path = kernel_path();
    let quantize = |(column, out): (&[f32], &mut [i16])| -> f32 {
        let mut scale = 1.0;
        quantize_column(path, column, out, &mut scale);
        scale
    };
    let scales = if x.len() >= PARALLEL_ELEMENTS {
        x.par_chunks_exact(cols).zip(values.par_chunks_exact_mut(stride)).map(quantize).collect()
    } else {
        x.chunks_exact(cols).zip(values.chunks_exact_mut(stride)).map(quantize).collect()
    };
    QuantizedColumns { stride, values, biased: Vec::new(), biased_stride: 0, scales }
}

/// Quantizes one column of `X` into `out`, its scale into `scale` (NaN, and `out` left
/// as it is, when the column holds a NaN or an infinity).
#[inline(always)]
fn quantize_column_kernel<P: Isa>(column: &[f32], out: &mut [i16], scale: &mut f32) {
    *scale = column_scale_kernel::<P>(column);
    if !scale.is_nan() {
        quantize_run_kernel::<P>(column, *scale, out);
    }
}

multiversion! {
    fn quantize_column<>(column: &[f32], out: &mut [i16], scale: &mut f32) => quantize_column_kernel
}

/// The int8 scale of one column of `X` ([`scale_of_max`] of its largest magnitude), or
/// NaN when it holds a NaN or an infinity. The two reductions run on the values' bits,
/// so that they vectorise (a float sum or maximum would not, its order being fixed):
/// below the exponent of infinity, `|v|`'s bits order as `|v|` does.
#[inline(always)]
fn column_scale_kernel<P: Isa>(column: &[f32]) -> f32 {
    const INFINITY_BITS: u32 = 0x7f80_0000;
    let (max_bits, poison) = column.iter().fold((0u32, 0u32), |(m, p), v| {
        let bits = v.to_bits() & 0x7fff_ffff;
        (m.max(bits), p | u32::from(bits >= INFINITY_BITS))
    });
    if poison != 0 { f32::NAN } else { scale_of_max(f32::from_bits(max_bits)) }
}

/// Quantizes a run of one column of `X` with the column's (finite) `scale`: `round(v /
/// scale)`, ties to even, into `out`.
#[inline(always)]
fn quantize_run_kernel<P: Isa>(run: &[f32], scale: f32, out: &mut [i16]) {
    for (q, &v) in out.iter_mut().zip(run) {
        *q = small_int_ties_even((v / scale).clamp(-127.0, 127.0)) as i16;
    }
}

/// [`column_scale_kernel`] into `scale` (the copies return nothing).
#[inline(always)]
fn column_scale_into_kernel<P: Isa>(column: &[f32], scale: &mut f32) {
    *scale = column_scale_kernel::<P>(column);
}

multiversion! {
    fn column_scale_into<>(column: &[f32], scale: &mut f32) => column_scale_into_kernel
}

multiversion! {
    fn quantize_run<>(run: &[f32], scale: f32, out: &mut [i16]) => quantize_run_kernel
}

/// The symmetric int8 scale of values whose largest magnitude is `max` (finite):
/// `max / 127`, or 1 when that is zero, stepped down where 127 times it would overflow.
/// Weights (`Int8Matrix::quantize`) and activations share it.
pub(crate) fn scale_of_max(max: f32) -> f32 {
    let mut scale = max / 127.0;
    if scale <= 0.0 {
        return 1.0;
    }
    // Near f32::MAX, max / 127 can round up so far that 127 * scale overflows: step the
    // scale down (by at most a few ulps) until the largest value dequantizes finitely.
    while (127.0 * scale).is_infinite() {
        scale = f32::from_bits(scale.to_bits() - 1);
    }
    scale
}

/// `v` rounded to the nearest integer, ties to even, for `|v| < 2^22`: `v + 1.5 * 2^23`
/// leaves no fraction bits, the add rounds as the FPU does, to nearest even, and the
/// integer sits in the sum's low mantissa bits. It vectorises everywhere, where
/// `f32::round_ties_even` compiles to a libm call per value on the baseline x86-64
/// target (SSE2, no `roundps`), and `as i32` on a float to a scalar saturating
/// conversion per value (x86 has no vector instruction for it).
#[inline(always)]
fn small_int_ties_even(v: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32
}

/// The spans of one row's columns that share a scale and fit one integer sum: each
/// group in pieces of at most [`MAX_SPAN`], with the group's index.
#[inline(always)]
pub(super) fn spans(cols: usize, group: usize) -> impl Iterator<Item = (usize, Range<usize>)> {
    (0..cols.div_ceil(group)).flat_map(move |g| {
        let end = ((g + 1) * group).min(cols);
        (g * group..end).step_by(MAX_SPAN).map(move |s| (g, s..(s + MAX_SPAN).min(end)))
    })
}

/// One tile of `R` rows and `J` tokens: fills `out[i][j]` with
/// `sum_g(ws[r0 + i, g] * dot_g)` for tokens `j0 + j` (not yet times their scales).
#[inline(always)]
fn tile<P: Isa, const R: usize, const J: usize>(
    a: Int8DenseView<'_>,
    r0: usize,
    xq: &QuantizedTokens<'_>,
    j0: usize,
) -> [[f32; J]; R] {
    let (cols, groups) = (a.cols, a.groups_per_row());
    let rows: [&[i8]; R] = std::array::from_fn(|i| &a.values[(r0 + i) * cols..][..cols]);
    let xs: [&[i16]; J] = std::array::from_fn(|j| &xq.values[(j0 + j) * xq.stride..][..cols]);
    let mut out = [[0.0f32; J]; R];
    for (g, span) in spans(cols, a.group) {
        let steps = span.len() / STEP;
        let vector_end = span.start + steps * STEP;
        let weights = rows.map(|row| &row[span.start..vector_end]);
        let dots = if P::BIASED {
            let biased: [&[u8]; J] = std::array::from_fn(|j| {
                &xq.biased[(j0 + j) * xq.biased_stride..][..cols][span.start..vector_end]
            });
            int8_dots_biased::<P, R, J>(weights, biased, steps)
        } else {
            int8_dots::<P, R, J>(weights, xs.map(|x| &x[span.start..vector_end]), steps)
        };
        for i in 0..R {
            let scale = a.scales[(r0 + i) * groups + g];
            for j in 0..J {
                let tail: i32 = (vector_end..span.end)
                    .map(|k| i32::from(rows[i][k]) * i32::from(xs[j][k]))
                    .sum();
                out[i][j] += (dots[i][j] + tail) as f32 * scale;
            }
        }
    }
    out
}

/// Rows `rows` of `Y <- alpha * A X + beta * Y`, into `out`: for each column of `Y`,
/// its entries for these rows (`out[j][r - rows.start]`).
#[inline(always)]
fn int8_rows_kernel<P: Isa>(
    a: Int8DenseView<'_>,
    rows: Range<usize>,
    xq: &QuantizedTokens<'_>,
    alpha: f32,
    beta: f32,
    out: &mut [&mut [f32]],
) {
    let batch = xq.scales.len();
    let first = rows.start;
    let mut put = |r: usize, j: usize, v: f32| {
        let y = &mut out[j][r - first];
        *y = combine(alpha, v * xq.scales[j], beta, *y);
    };
    let mut r = rows.start;
    // The VNNI copy's batches, on packed weights.
    #[cfg(target_arch = "x86_64")]
    if P::VNNI512 && packs(&a, batch) {
        // SAFETY: P::VNNI512 holds for Avx512Vnni alone, and int8_rows_kernel is only
        // instantiated with it inside int8_rows_best's copy, compiled with (and run after
        // detecting) every feature the packed product needs.
        unsafe { packed::rows(a, rows, xq, &mut put) };
        return;
    }
    // Batched: tiles of rows x TILE_TOKENS, the last tokens one at a time, over blocks of
    // tokens whose activations stay in L2 while every row passes over them.
    let tile_tokens = if P::VNNI256 { VNNI256_TILE_TOKENS } else { TILE_TOKENS };
    if batch >= tile_tokens {
        r = if P::VNNI512 {
            batched_rows::<P, VNNI_TILE_ROWS, TILE_TOKENS>(a, rows.clone(), xq, &mut put)
        } else if P::VNNI256 {
            batched_rows::<P, TILE_ROWS, VNNI256_TILE_TOKENS>(a, rows.clone(), xq, &mut put)
        } else {
            batched_rows::<P, TILE_ROWS, TILE_TOKENS>(a, rows.clone(), xq, &mut put)
        };
    }
    // One token (or the last rows): VECTOR_ROWS rows at a time, then single rows.
    while r + VECTOR_ROWS <= rows.end {
        for j in 0..batch {
            let t = tile::<P, VECTOR_ROWS, 1>(a, r, xq, j);
            t.iter().enumerate().for_each(|(i, row)| put(r + i, j, row[0]));
        }
        r += VECTOR_ROWS;
    }
    for r in r..rows.end {
        for j in 0..batch {
            put(r, j, tile::<P, 1, 1>(a, r, xq, j)[0][0]);
        }
    }
}

/// The batched part of [`int8_rows_kernel`]: tiles of `R` rows by `J`
/// tokens over blocks of tokens, then the block's last tokens one at a time; returns the
/// first row it left (the last `rows.len() % R`).
#[inline(always)]
fn batched_rows<P: Isa, const R: usize, const J: usize>(
    a: Int8DenseView<'_>,
    rows: Range<usize>,
    xq: &QuantizedTokens<'_>,
    put: &mut impl FnMut(usize, usize, f32),
) -> usize {
    let batch = xq.scales.len();
    // The VNNI copies read the activations as bytes, the others as 16-bit values.
    let bytes = if P::BIASED { xq.biased_stride } else { 2 * xq.stride };
    let block = (ACTIVATION_BLOCK_BYTES / bytes.max(1) / J * J).max(J);
    let full_rows = rows.start + (rows.len() / R) * R;
    for start in (0..batch).step_by(block) {
        let end = (start + block).min(batch);
        for r in (rows.start..full_rows).step_by(R) {
            let mut j = start;
            while j + J <= end {
                let t = tile::<P, R, J>(a, r, xq, j);
                for (i, row) in t.iter().enumerate() {
                    row.iter().enumerate().for_each(|(jj, &v)| put(r + i, j + jj, v));
                }
                j += J;
            }
            for j in j..end {
                let t = tile::<P, R, 1>(a, r, xq, j);
                t.iter().enumerate().for_each(|(i, row)| put(r + i, j, row[0]));
            }
        }
    }
    full_rows
}

multiversion! {
    fn int8_rows<>(
        a: Int8DenseView<'_>,
        rows: Range<usize>,
        xq: &QuantizedTokens<'_>,
        alpha: f32,
        beta: f32,
        out: &mut [&mut [f32]],
    ) => int8_rows_kernel
}

/// Whether the AVX-512 VNNI copy, when it runs, runs a product of `a` with `batch`
/// tokens on packed weights.
#[cfg(target_arch = "x86_64")]
fn packs(a: &Int8DenseView<'_>, batch: usize) -> bool {
    batch >= PACKED_MIN_BATCH && packed::packable(a)
}

/// Rows per unit of work split across threads: whole packed tiles when the AVX-512 VNNI
/// copy packs, else single rows.
fn rows_per_unit(path: KernelPath, a: &Int8DenseView<'_>, batch: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if path == KernelPath::Avx512 && vnni_copy_runs(path) && packs(a, batch) {
        return packed::TILE_ROWS;
    }
    let _ = (path, a, batch);
    1
}

/// Whether [`int8_rows_best`] runs a VNNI copy on `path` (whose activations must then
/// be biased): the AVX-512 path on a CPU with AVX-512 VNNI, the AVX2 path on one with
/// AVX-VNNI.
pub(super) fn vnni_copy_runs(path: KernelPath) -> bool {
    #[cfg(target_arch = "x86_64")]
    return match path {
        KernelPath::Avx512 => super::isa::vnni512(),
        KernelPath::Avx2 => super::isa::avx_vnni(),
        _ => false,
    };
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = path;
        false
    }
}

/// [`int8_rows`] on `path`, except where [`vnni_copy_runs`] (`xq` biased first): the
/// AVX-512 path then runs the [`super::isa::Avx512Vnni`] copy, the AVX2 path the
/// [`super::isa::AvxVnni`] one.
fn int8_rows_best(
    path: KernelPath,
    a: Int8DenseView<'_>,
    rows: Range<usize>,
    xq: &QuantizedTokens<'_>,
    alpha: f32,
    beta: f32,
    out: &mut [&mut [f32]],
) {
    #[cfg(target_arch = "x86_64")]
    if vnni_copy_runs(path) {
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
        fn vnni_copy(
            a: Int8DenseView<'_>,
            rows: Range<usize>,
            xq: &QuantizedTokens<'_>,
            alpha: f32,
            beta: f32,
            out: &mut [&mut [f32]],
        ) {
            int8_rows_kernel::<super::isa::Avx512Vnni>(a, rows, xq, alpha, beta, out);
        }
        #[target_feature(enable = "avxvnni,avx2,fma,f16c")]
        fn avx_vnni_copy(
            a: Int8DenseView<'_>,
            rows: Range<usize>,
            xq: &QuantizedTokens<'_>,
            alpha: f32,
            beta: f32,
            out: &mut [&mut [f32]],
        ) {
            int8_rows_kernel::<super::isa::AvxVnni>(a, rows, xq, alpha, beta, out);
        }
        if path == KernelPath::Avx512 {
            // SAFETY: vnni512() detected every feature the copy is compiled with.
            return unsafe { vnni_copy(a, rows, xq, alpha, beta, out) };
        }
        // SAFETY: on the AVX2 path, avx_vnni() detected every feature the copy is
        // compiled with.
        return unsafe { avx_vnni_copy(a, rows, xq, alpha, beta, out) };
    }
    int8_rows(path, a, rows, xq, alpha, beta, out);
}

/// `Y <- alpha * A X + beta * Y`, `X` given column-major as `batch` columns of `a.cols`
/// entries and `Y` as `batch` columns of `a.rows` (`beta == 0`: `Y` not read).
pub(crate) fn int8_dense_product(
    a: Int8DenseView<'_>,
    alpha: f32,
    x: &[f32],
    beta: f32,
    y: &mut [f32],
    then: Option<Epilogue<'_, f32>>,
) {
    let Some(batch) = y.len().checked_div(a.rows).filter(|&b| b > 0) else {
        return;
    };
    let path = kernel_path();
    let xq = quantize_for(path, x, a.cols, batch);
    let unit = rows_per_unit(path, &a, batch);
    for_row_tasks(path, a.rows, a.cols, unit, y, then, |range, tokens, pieces| {
        int8_rows_best(path, a, range, &xq.tokens(tokens), alpha, beta, pieces)
    });
}

/// Rows of an int8 N:M matrix written out dense at a time by [`int8_nm_product`]: one
/// packed tile (whose packing then reads them from L1 or L2), or eight to sixteen
/// dot-product tiles.
const EXPANDED_ROWS: usize = 32;

/// The product of an int8 N:M matrix (a scale per row) with quantized activations: the
/// bits of [`int8_dense_product`] on the same weights written out dense, which is how it
/// runs, [`EXPANDED_ROWS`] rows at a time. `a` must carry its `nrows` row scales, and
/// must not hold two nonzero slots at one position of a group (a dense matrix holds one
/// value there).
pub(crate) fn int8_nm_product(
    a: NmView<'_, f32, i8>,
    alpha: f32,
    x: &[f32],
    beta: f32,
    y: &mut [f32],
    then: Option<Epilogue<'_, f32>>,
) {
    let Some(batch) = y.len().checked_div(a.nrows).filter(|&b| b > 0) else {
        return;
    };
    let (scales, cols) = (a.row_scales.unwrap_or_default(), a.ncols);
    debug_assert_eq!(scales.len(), a.nrows);
    let path = kernel_path();
    let xq = quantize_for(path, x, cols, batch);
    let group = cols.max(1);
    let shape =
        Int8DenseView { rows: a.nrows, cols, group, values: &[], scales: &[], packed: None };
    let unit = rows_per_unit(path, &shape, batch);
    for_row_tasks(path, a.nrows, cols, unit, y, then, |range, tokens, pieces| {
        let xq = xq.tokens(tokens);
        // Bounded by X, which holds `cols` entries for each of at least two tokens.
        let mut dense = vec![0i8; EXPANDED_ROWS.min(range.len()) * cols];
        for start in range.clone().step_by(EXPANDED_ROWS) {
            let rows = start..(start + EXPANDED_ROWS).min(range.end);
            let dense = &mut dense[..rows.len() * cols];
            expand_rows(path, &a, rows.clone(), dense);
            let view = Int8DenseView {
                rows: rows.len(),
                cols,
                group,
                values: dense,
                scales: &scales[rows.clone()],
                packed: None,
            };
            let local = rows.start - range.start..rows.end - range.start;
            let mut part: Vec<&mut [f32]> =
                pieces.iter_mut().map(|p| &mut p[local.clone()]).collect();
            int8_rows_best(path, view, 0..rows.len(), &xq, alpha, beta, &mut part);
        }
    });
}

/// Writes rows `rows` of `a` into `dense` (row-major, `a.ncols` per row): each nonzero
/// slot's value at its column, zeros elsewhere.
#[inline(always)]
fn expand_rows_kernel<P: Isa>(a: &NmView<'_, f32, i8>, rows: Range<usize>, dense: &mut [i8]) {
    if a.ncols == 0 {
        return;
    }
    let per_row = a.groups() * a.n;
    for (r, out) in rows.zip(dense.chunks_exact_mut(a.ncols)) {
        let slots = r * per_row..(r + 1) * per_row;
        let (values, positions) = (&a.values[slots.clone()], &a.positions[slots]);
        match (a.n, a.m) {
            (1, 2) => expand_row::<1, 2>(values, positions, out),
            (2, 4) => expand_row::<2, 4>(values, positions, out),
            (4, 8) => expand_row::<4, 8>(values, positions, out),
            (n, m) => {
                out.fill(0);
                let groups = values.chunks(n.max(1)).zip(positions.chunks(n.max(1)));
                for ((values, positions), group) in groups.zip(out.chunks_mut(m)) {
                    for (&v, &p) in values.iter().zip(positions) {
                        if v != 0 {
                            group[usize::from(p)] = v;
                        }
                    }
                }
            }
        }
    }
}

multiversion! {
    fn expand_rows<>(a: &NmView<'_, f32, i8>, rows: Range<usize>, dense: &mut [i8]) => expand_rows_kernel
}

/// One row of [`expand_rows`] for `N:M` with `M` a power of two up to 8: each group's
/// slots shifted to their bytes and OR-ed into a word (a zero slot adds nothing, and no
/// two nonzero slots share a position), whose low `M` bytes are the group's columns;
/// the last group, if short, as the general case. Shifts in registers, not byte stores
/// that a wider load would read back, so that the compiler vectorises it.
#[inline(always)]
fn expand_row<const N: usize, const M: usize>(values: &[i8], positions: &[u8], out: &mut [i8]) {
    debug_assert!(M.is_power_of_two());
    let full = out.len() / M;
    let (head, tail) = out.split_at_mut(full * M);
    let mut slots = values.chunks_exact(N).zip(positions.chunks_exact(N));
    for ((values, positions), group) in slots.clone().zip(head.chunks_exact_mut(M)) {
        let mut word = 0u64;
        for s in 0..N {
            // Positions are below M <= 8: the mask only tells the compiler so.
            let shift = 8 * (u64::from(positions[s]) & (M as u64 - 1));
            word |= u64::from(values[s] as u8) << shift;
        }
        for (column, byte) in group.iter_mut().zip(word.to_le_bytes()) {
            *column = byte as i8;
        }
    }
    tail.fill(0);
    if let Some((values, positions)) = slots.nth(full) {
        for (&v, &p) in values.iter().zip(positions) {
            if v != 0 {
                tail[usize::from(p)] = v;
            }
        }
    }
}

/// `x` (`batch` columns of `cols`) quantized per column, and biased too when `path` runs
/// the VNNI copy.
fn quantize_for(path: KernelPath, x: &[f32], cols: usize, batch: usize) -> QuantizedColumns {
    let mut xq = quantize_columns(x, cols, batch);
    if vnni_copy_runs(path) {
        xq.bias();
    }
    xq
}

/// Rows of `Y` in units of `unit` rows of `cols` inputs each: [`for_row_tasks`]' work
/// units.
#[derive(Clone, Copy)]
struct RowUnits {
    rows: usize,
    cols: usize,
    unit: usize,
}

impl Units for RowUnits {
    fn units(&self) -> usize {
        self.rows.div_ceil(self.unit)
    }
    fn work_before(&self, u: usize) -> usize {
        self.rows_before(u) * self.cols.max(1)
    }
    fn rows_before(&self, u: usize) -> usize {
        (u * self.unit).min(self.rows)
    }
}

/// Tokens per panel of a batch split between tasks ([`for_row_tasks`]): as many as
/// [`ACTIVATION_BLOCK_BYTES`] of quantized activations hold (`cols` inputs of 16 bits,
/// or of a byte where `path` runs the VNNI copy), so that a task's tokens stay in L2
/// while its rows pass over them; a whole number of tiles (of 4, 6 or 12 tokens), at
/// least two of 12.
fn token_panel(path: KernelPath, cols: usize) -> usize {
    let bytes = if vnni_copy_runs(path) { 1 } else { 2 };
    (ACTIVATION_BLOCK_BYTES / (bytes * cols.max(1)) / 12 * 12).max(24)
}

/// Splits `Y` (columns of `rows` entries in `y`) into blocks of whole units of `unit`
/// rows by whole panels of tokens ([`token_panel`] on `path`), and runs `run(rows, tokens,
/// pieces)` for each, on several threads when the work repays it ([`for_each_block_of`]):
/// `pieces[j]` holds token `tokens.start + j`'s entries for rows `rows`. A batch larger
/// than a panel is split by panels first, so that no task passes over all of a large
/// `X` for a few rows, which would fetch it from memory once per task.
fn for_row_tasks(
    path: KernelPath,
    rows: usize,
    cols: usize,
    unit: usize,
    y: &mut [f32],
    then: Option<Epilogue<'_, f32>>,
    run: impl Fn(Range<usize>, Range<usize>, &mut [&mut [f32]]) + Sync,
) {
    let units = RowUnits { rows, cols, unit };
    let panel = token_panel(path, cols);
    for_each_block_of(units, (rows, y, false), panel, Split::Fine, then, |u, tokens, pieces| {
        run(units.rows_before(u.start)..units.rows_before(u.end), tokens, pieces)
    });
}

/// The product as [`int8_dense_product`] defines it, with plain loops: the oracle of
/// the kernel tests (and nothing else).
#[cfg(test)]
pub(crate) fn int8_dense_reference(
    a: Int8DenseView<'_>,
    x: &nalgebra::DMatrix<f32>,
) -> nalgebra::DMatrix<f32> {
    let xq = quantize_columns(x.as_slice(), a.cols, x.ncols());
    nalgebra::DMatrix::from_fn(a.rows, x.ncols(), |r, j| {
        let mut sum = 0.0f32;
        for (g, span) in spans(a.cols, a.group) {
            let dot: i32 = span
                .map(|c| {
                    i32::from(a.values[r * a.cols + c]) * i32::from(xq.values[j * xq.stride + c])
                })
                .sum();
            sum += dot as f32 * a.scales[r * a.groups_per_row() + g];
        }
        sum * xq.scales[j]
    })
}

#[cfg(test)]
mod tests {
    use nalgebra::DMatrix;
    use proptest::prelude::*;

    use super::*;

    /// Deterministic int8 weights, scales and activations of every sign, with zeros.
    struct Fixture {
        rows: usize,
        cols: usize,
        group: usize,
        values: Vec<i8>,
        scales: Vec<f32>,
        /// Kept across the fixture's products, as `Int8Matrix` keeps it.
        packed: PackedWeights,
    }

    impl Fixture {
        fn new(rows: usize, cols: usize, group: usize, seed: u64) -> Fixture {
            let mut next = crate::testing::xorshift(seed);
            let values = (0..rows * cols)
                .map(|_| match next() % 5 {
                    0 => 0,
                    1 => 127,
                    2 => -127,
                    _ => (next() % 255) as i64 as i8,
                })
                .map(|v: i8| v.max(-127))
                .collect();
            let groups = cols.div_ceil(group).max(1);
            let scales = (0..rows * groups).map(|k| 1e-3 + (k % 7) as f32 * 3e-4).collect();
            Fixture { rows, cols, group, values, scales, packed: PackedWeights::default() }
        }

        fn view(&self) -> Int8DenseView<'_> {
            Int8DenseView {
                rows: self.rows,
                cols: self.cols,
                group: self.group,
                values: &self.values,
                scales: &self.scales,
                packed: Some(&self.packed),
            }
        }
    }

    fn activations(cols: usize, batch: usize, seed: u64) -> DMatrix<f32> {
        DMatrix::from_fn(cols, batch, |c, j| {
            let k = (c as u64 * 31 + j as u64 * 17 + seed) % 97;
            if k.is_multiple_of(6) { 0.0 } else { (k as f32 - 48.0) * (1.0 + j as f32) * 0.01 }
        })
    }

    /// The rows kernel on a given path, its VNNI copy when `vnni` and the CPU has one
    /// (alpha 1, beta 0; `Y` starts as NaN, which must not be read), as column-major bits:
    /// on the first half of the tokens, then the second, as tasks of a batch split by
    /// tokens run it.
    fn on_path(path: KernelPath, vnni: bool, a: Int8DenseView<'_>, x: &DMatrix<f32>) -> Vec<u32> {
        let path = KernelPath::resolve(path);
        let batch = x.ncols();
        let mut xq = quantize_columns(x.as_slice(), a.cols, batch);
        let vnni = vnni && vnni_copy_runs(path);
        if vnni {
            xq.bias();
        }
        let mut y = vec![f32::NAN; a.rows * batch];
        let mut columns: Vec<&mut [f32]> = y.chunks_exact_mut(a.rows.max(1)).collect();
        let split = (batch / 2).min(columns.len());
        let (first, second) = columns.split_at_mut(split);
        for (tokens, part) in [(0..split, first), (split..batch, second)] {
            let xq = xq.tokens(tokens);
            if vnni {
                int8_rows_best(path, a, 0..a.rows, &xq, 1.0, 0.0, part);
            } else {
                int8_rows(path, a, 0..a.rows, &xq, 1.0, 0.0, part);
            }
        }
        y.iter().map(|v| v.to_bits()).collect()
    }

    proptest! {
        /// Every compiled copy gives the reference loop's bits, for row counts around
        /// the tiles, columns around the vector step, groups narrower and wider than a
        /// row, and batches around the token tile.
        #[test]
        fn every_copy_equals_the_reference_loop(
            rows in 1usize..40,
            cols in 0usize..80,
            group in prop_oneof![Just(usize::MAX), 1usize..40],
            batch in 1usize..30,
            seed in any::<u64>(),
        ) {
            let group = if group == usize::MAX { cols.max(1) } else { group };
            let fixture = Fixture::new(rows, cols, group, seed);
            let x = activations(cols, batch, seed);
            let want: Vec<u32> =
                int8_dense_reference(fixture.view(), &x).iter().map(|v| v.to_bits()).collect();
            for path in KernelPath::ORDER {
                for vnni in [false, true] {
                    prop_assert_eq!(
                        &on_path(path, vnni, fixture.view(), &x), &want, "{:?}, vnni {}", path, vnni
                    );
                }
            }
        }
    }

    /// The integer rounding equals `round_ties_even` over the range it is used on.
    #[test]
    fn the_small_integer_rounding_is_round_ties_even() {
        for k in -2_000_000i32..=2_000_000 {
            let v = k as f32 / 15_000.0;
            assert_eq!(small_int_ties_even(v), v.round_ties_even() as i32, "{v}");
        }
        for v in [-127.5f32, -126.5, -0.5, 0.5, 1.5, 2.5, 126.5, 127.0, -0.0, 0.49999997] {
            assert_eq!(small_int_ties_even(v), v.round_ties_even() as i32, "{v}");
        }
    }

    /// Activations are quantized per column with ties to even, zero columns get scale 1,
    /// and a column holding NaN or infinity gets a NaN scale.
    #[test]
    fn columns_quantize_to_int8_with_their_own_scales() {
        let x = [127.0f32, 0.5, -1.5, 2.5, 0.0, 0.0, 0.0, 0.0, 1.0, f32::INFINITY, 0.0, 3.0];
        let q = quantize_columns(&x, 4, 3);
        assert_eq!(q.stride, 4);
        assert_eq!(q.scales[..2], [1.0, 1.0]);
        assert_eq!(q.values[..4], [127, 0, -2, 2]);
        assert!(q.values[4..8].iter().all(|&v| v == 0), "the zero column");
        assert!(q.scales[2].is_nan());
        assert_eq!(quantize_columns(&[], 0, 2).scales, [1.0, 1.0], "empty columns");
    }

    /// A row longer than one 32-bit sum can hold (140 000 columns of 127 * 127) is summed
    /// in spans, so it neither overflows nor wraps: the product is the exact value.
    #[test]
    fn rows_longer_than_an_integer_sum_holds_are_split_into_spans() {
        let cols = 140_000;
        assert!(cols as i64 * 127 * 127 > i64::from(i32::MAX));
        let (values, scales) = (vec![127i8; cols], vec![1.0f32 / 127.0]);
        let a = Int8DenseView {
            rows: 1,
            cols,
            group: cols,
            values: &values,
            scales: &scales,
            packed: None,
        };
        let x = vec![1.0f32; cols];
        let mut y = [f32::NAN];
        int8_dense_product(a, 1.0, &x, 0.0, &mut y, None);
        assert!((f64::from(y[0]) - cols as f64).abs() < 1e-3 * cols as f64, "{}", y[0]);
        let reference = int8_dense_reference(a, &DMatrix::from_column_slice(cols, 1, &x));
        assert_eq!(y[0].to_bits(), reference[0].to_bits());
    }

    fn every_copy_gives_the_reference_bits(fixture: &Fixture, x: &DMatrix<f32>) {
        let want: Vec<u32> =
            int8_dense_reference(fixture.view(), x).iter().map(|v| v.to_bits()).collect();
        for (path, vnni) in KernelPath::ORDER.into_iter().flat_map(|p| [(p, false), (p, true)]) {
            let (rows, cols, group) = (fixture.rows, fixture.cols, fixture.group);
            assert_eq!(
                on_path(path, vnni, fixture.view(), x),
                want,
                "{path:?} (vnni {vnni}), {rows}x{cols} by {group}"
            );
        }
    }

    /// Groups longer than one integer sum holds, with spans and tails that are not
    /// whole vector steps, give the reference loop's bits on every copy.
    #[test]
    fn long_groups_split_into_ragged_spans_match_the_reference() {
        let cols = 140_007;
        for group in [70_001, cols] {
            every_copy_gives_the_reference_bits(
                &Fixture::new(3, cols, group, 11),
                &activations(cols, 3, 5),
            );
        }
    }

    /// Batches whose activations exceed one block run block by block (here blocks of six
    /// tokens, the last shorter) with the reference loop's bits on every copy.
    #[test]
    fn batches_larger_than_a_block_run_block_by_block() {
        let (rows, cols, batch) = (5, 20_001, 15);
        assert!(ACTIVATION_BLOCK_BYTES / (2 * cols) < 2 * TILE_TOKENS, "blocks of one tile");
        every_copy_gives_the_reference_bits(
            &Fixture::new(rows, cols, 64, 3),
            &activations(cols, batch, 9),
        );
    }

    /// Row counts around the packed blocks of the VNNI copy (16 rows, tiles of two),
    /// batches around its token tile (12), columns around its step (4), per-row scales
    /// and groups it packs and does not pack, give the reference bits on every copy.
    #[test]
    fn packed_blocks_and_tiles_match_the_reference() {
        for (rows, cols, batch, group) in [
            (33, 384, 12, 384),
            (64, 101, 25, 101),
            (47, 130, 13, 32),
            (31, 7, 4, 7),
            (50, 96, 30, 12),
            (40, 60, 14, 3),
            (18, 1, 5, 1),
            (35, 50, 20, 50),
        ] {
            let seed = (rows * cols + batch) as u64;
            every_copy_gives_the_reference_bits(
                &Fixture::new(rows, cols, group, seed),
                &activations(cols, batch, seed),
            );
        }
    }

    /// A matrix that keeps its packed weights packs them at its first product, then
    /// serves any range of rows from them (a range starting off a block packs its own):
    /// the reference bits either way, before and after the weights are kept.
    #[test]
    fn kept_packed_weights_serve_every_range() {
        let path = KernelPath::resolve(KernelPath::Avx512);
        if !vnni_copy_runs(path) {
            eprintln!("skipped: this CPU has no AVX-512 VNNI, so nothing is packed");
            return;
        }
        let (rows, cols, batch) = (70, 96, 13);
        let fixture = Fixture::new(rows, cols, 8, 4);
        let x = activations(cols, batch, 4);
        let want = int8_dense_reference(fixture.view(), &x);
        let mut xq = quantize_columns(x.as_slice(), cols, batch);
        xq.bias();
        assert!(!fixture.packed.is_packed());
        for range in [32..70, 0..70, 0..32, 16..48, 5..40, 64..70, 69..70] {
            let mut y = vec![f32::NAN; range.len() * batch];
            let mut columns: Vec<&mut [f32]> = y.chunks_exact_mut(range.len()).collect();
            let tokens = xq.tokens(0..batch);
            int8_rows_best(path, fixture.view(), range.clone(), &tokens, 1.0, 0.0, &mut columns);
            for (j, column) in y.chunks_exact(range.len()).enumerate() {
                for (r, v) in range.clone().zip(column) {
                    assert_eq!(v.to_bits(), want[j * rows + r].to_bits(), "{range:?}: ({r}, {j})");
                }
            }
            assert!(fixture.packed.is_packed(), "packed after a range on whole blocks");
        }
    }

    /// The largest sums the spans allow: a row of weights -128 as long as a span, and one
    /// longer, against activations that quantize to 127 (biased: 255), give the
    /// reference bits on every copy, one token and a batch.
    #[test]
    fn the_largest_sums_of_a_span_do_not_overflow() {
        for cols in [MAX_SPAN, MAX_SPAN + 5] {
            let (rows, group) = (2, cols);
            let fixture = Fixture {
                rows,
                cols,
                group,
                values: vec![-128; rows * cols],
                scales: vec![1e-3; rows],
                packed: PackedWeights::default(),
            };
            for batch in [1, 5] {
                let x = DMatrix::from_element(cols, batch, 0.5f32);
                every_copy_gives_the_reference_bits(&fixture, &x);
            }
        }
    }

    /// Rows at the packed product's column limit and one past it (dot-product tiles),
    /// split across threads, give the reference bits.
    #[test]
    fn rows_at_the_packing_limit_match_the_reference() {
        for cols in [2048, 2049, 2052] {
            let fixture = Fixture::new(70, cols, cols, cols as u64);
            every_copy_gives_the_reference_bits(&fixture, &activations(cols, 13, 5));
        }
    }

    /// Alpha and beta combine as in BLAS; with beta zero a NaN in Y is not read; a NaN in
    /// one column of X makes that column's outputs NaN and no other's; the result does
    /// not depend on the thread count.
    #[test]
    fn products_combine_propagate_nan_per_column_and_ignore_threads() {
        let fixture = Fixture::new(300, 1100, 64, 7);
        let a = fixture.view();
        let mut x = activations(1100, 9, 3);
        let base = int8_dense_reference(a, &x);
        let mut y = DMatrix::from_element(300, 9, f32::NAN);
        int8_dense_product(a, 1.0, x.as_slice(), 0.0, y.as_mut_slice(), None);
        assert_eq!(y, base);
        let mut y2 = DMatrix::from_element(300, 9, 1.0f32);
        int8_dense_product(a, 2.0, x.as_slice(), 0.5, y2.as_mut_slice(), None);
        assert!(y2.iter().zip(base.iter()).all(|(g, b)| *g == 2.0 * b + 0.5));
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut yt = DMatrix::from_element(300, 9, 0.0f32);
            pool.install(|| int8_dense_product(a, 1.0, x.as_slice(), 0.0, yt.as_mut_slice(), None));
            assert_eq!(yt, base, "{threads} threads");
        }
        x[(5, 4)] = f32::NAN;
        int8_dense_product(a, 1.0, x.as_slice(), 0.0, y.as_mut_slice(), None);
        for j in 0..9 {
            assert_eq!(y.column(j).iter().all(|v| v.is_nan()), j == 4, "column {j}");
            assert!(j == 4 || y.column(j) == base.column(j));
        }
    }

    /// An int8 N:M matrix of `rows x cols` (`n` slots per group of `m`): in each group
    /// distinct positions, some values zero, and the slots past a short last group's
    /// width zero padding at a taken position; with its rows written out dense.
    struct NmFixture {
        rows: usize,
        cols: usize,
        n: usize,
        m: usize,
        values: Vec<i8>,
        positions: Vec<u8>,
        scales: Vec<f32>,
        dense: Vec<i8>,
    }

    impl NmFixture {
        fn new(rows: usize, cols: usize, (n, m): (usize, usize), seed: u64) -> NmFixture {
            let mut next = crate::testing::xorshift(seed);
            let groups = cols.div_ceil(m);
            let (mut values, mut positions) = (Vec::new(), Vec::new());
            let mut dense = vec![0i8; rows * cols];
            for r in 0..rows {
                for g in 0..groups {
                    let width = m.min(cols - g * m);
                    let mut free: Vec<usize> = (0..width).collect();
                    for s in 0..n {
                        if s >= width {
                            values.push(0);
                            positions.push((s % width) as u8);
                            continue;
                        }
                        let p = free.swap_remove(next() as usize % free.len());
                        let v = match next() % 4 {
                            0 => 0,
                            1 => -127,
                            _ => (next() % 255) as i64 as i8,
                        }
                        .max(-127);
                        values.push(v);
                        positions.push(p as u8);
                        dense[r * cols + g * m + p] = v;
                    }
                }
            }
            let scales = (0..rows).map(|r| 1e-3 + (r % 5) as f32 * 2e-4).collect();
            NmFixture { rows, cols, n, m, values, positions, scales, dense }
        }

        fn view(&self) -> NmView<'_, f32, i8> {
            NmView {
                nrows: self.rows,
                ncols: self.cols,
                n: self.n,
                m: self.m,
                values: &self.values,
                positions: &self.positions,
                row_scales: Some(&self.scales),
            }
        }

        fn dense(&self) -> Int8DenseView<'_> {
            Int8DenseView {
                rows: self.rows,
                cols: self.cols,
                group: self.cols.max(1),
                values: &self.dense,
                scales: &self.scales,
                packed: None,
            }
        }
    }

    proptest! {
        /// The N:M product gives the dense reference's bits on the rows written out dense,
        /// for row counts around the expanded chunks and packed tiles, the patterns the
        /// float kernels special-case and one they do not (short last groups), and
        /// batches around the token tiles (on this run's kernel path).
        #[test]
        fn nm_products_equal_the_dense_reference(
            rows in 1usize..70,
            cols in 0usize..90,
            pattern in prop_oneof![
                Just((1usize, 2usize)), Just((2, 4)), Just((4, 8)), Just((3, 7))
            ],
            batch in 1usize..30,
            seed in any::<u64>(),
        ) {
            let fixture = NmFixture::new(rows, cols, pattern, seed);
            let x = activations(cols, batch, seed);
            let want = int8_dense_reference(fixture.dense(), &x);
            let mut got = DMatrix::from_element(rows, batch, f32::NAN);
            int8_nm_product(fixture.view(), 1.0, x.as_slice(), 0.0, got.as_mut_slice(), None);
            let bits = |m: &DMatrix<f32>| m.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&got), bits(&want));
        }
    }

    #[test]
    fn nm_products_combine_and_ignore_threads() {
        // 300 rows split into tasks: of whole packed tiles (1100 columns, packed on the
        // VNNI copy), the last chunk of expanded rows short; of single rows (2100
        // columns), chunks cut anywhere.
        for cols in [1100, 2100] {
            let fixture = NmFixture::new(300, cols, (2, 4), 11);
            let x = activations(cols, 9, 5);
            let base = int8_dense_reference(fixture.dense(), &x);
            let mut y = DMatrix::from_element(300, 9, 1.0f32);
            int8_nm_product(fixture.view(), 2.0, x.as_slice(), 0.5, y.as_mut_slice(), None);
            assert!(y.iter().zip(base.iter()).all(|(g, b)| *g == 2.0 * b + 0.5));
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut yt = DMatrix::from_element(300, 9, f32::NAN);
                let product = || {
                    int8_nm_product(fixture.view(), 1.0, x.as_slice(), 0.0, yt.as_mut_slice(), None)
                };
                pool.install(product);
                assert_eq!(yt, base, "{cols} columns, {threads} threads");
            }
        }
    }
}
