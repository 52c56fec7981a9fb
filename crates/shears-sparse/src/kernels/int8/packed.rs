//! The batched dense int8 product of the AVX-512 VNNI copy: weights packed so that one
//! `vpdpbusd` multiplies four columns of sixteen rows by four entries of one token
//! (broadcast to every lane), which adds into sixteen outputs at once.
//!
//! The parent module's dot-product tiles end every tile with one horizontal sum per output,
//! which costs as much as the products themselves when rows are a few hundred columns
//! long (a transformer's 384); here no output needs a horizontal sum. A matrix packs its
//! weights whole at its first such product and keeps them; weights it does not keep (an
//! N:M matrix's rows written out dense) are packed by each task for its rows, one pass
//! over them against the task's passes for its tokens.
//!
//! The sums are the exact integer sums the parent module defines (activations biased to unsigned
//! bytes, 128 times each row's sum taken back out, then one convert, one multiply by the
//! group's scale and one add per span, in span order), so the bits are the other copies'.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{Int8DenseView, QuantizedTokens, spans};
use crate::kernels::isa::ACTIVATION_BIAS;

/// Rows per packed block: the sixteen 32-bit lanes of a vector.
const LANES: usize = 16;

/// Columns per packed step: `vpdpbusd` sums four byte products into each lane.
const QUAD: usize = 4;

/// Blocks and tokens per register tile: 2 x 12 accumulators, two weight vectors and one
/// broadcast activation within AVX-512's 32 registers; fourteen loads per 24
/// multiply-adds.
const TILE_BLOCKS: usize = 2;
const TILE_TOKENS: usize = 12;

/// Rows of a full tile: products split rows across threads in multiples of this, so
/// that no thread's share ends in a part-filled block or a lone one.
pub(crate) const TILE_ROWS: usize = TILE_BLOCKS * LANES;

/// Columns up to which rows are packed. Longer rows lose less to the dot-product tiles'
/// horizontal sums, and a tile's two packed blocks (32 bytes per column) no longer stay
/// in L1 between its tokens, so the dot-product tiles run them faster.
const MAX_COLS: usize = 2048;

/// Whether the packed product should run `a`: rows of at most [`MAX_COLS`] columns, and
/// every span starting on a whole step of four columns (one span per row, or groups of a
/// multiple of four columns).
pub(crate) fn packable(a: &Int8DenseView<'_>) -> bool {
    a.cols <= MAX_COLS && (a.group >= a.cols || a.group.is_multiple_of(QUAD))
}

/// Rows `rows` of `a`, packed: for each block of sixteen rows (the last padded with zero
/// rows), its columns four at a time as 64 bytes (each row's four in turn), and per span
/// the rows' weight sums and scales.
pub(crate) struct Packed {
    /// Packed steps per block (columns / 4, rounded up).
    quads: usize,
    values: Vec<i8>,
    /// Per block and span: sixteen row sums, then (in `scales`) sixteen scales.
    sums: Vec<i32>,
    scales: Vec<f32>,
    /// Each span's steps.
    spans: Vec<Range<usize>>,
}

impl Packed {
    fn new(a: &Int8DenseView<'_>, rows: Range<usize>) -> Packed {
        let quads = a.cols.div_ceil(QUAD);
        let blocks = rows.len().div_ceil(LANES);
        let groups = a.cols.div_ceil(a.group).max(1);
        let spans_of_a: Vec<(usize, Range<usize>)> = spans(a.cols, a.group).collect();
        let mut values = vec![0i8; blocks * quads * LANES * QUAD];
        let mut sums = vec![0i32; blocks * spans_of_a.len() * LANES];
        let mut scales = vec![0f32; blocks * spans_of_a.len() * LANES];
        for (lane_row, r) in rows.clone().enumerate() {
            let (block, lane) = (lane_row / LANES, lane_row % LANES);
            let row = &a.values[r * a.cols..][..a.cols];
            let packed = &mut values[block * quads * LANES * QUAD..][..quads * LANES * QUAD];
            let whole = row.len() / QUAD;
            for (q, four) in row.chunks_exact(QUAD).enumerate() {
                let at = (q * LANES + lane) * QUAD;
                packed[at..at + QUAD].copy_from_slice(four);
            }
            let rest = &row[whole * QUAD..];
            if !rest.is_empty() {
                packed[(whole * LANES + lane) * QUAD..][..rest.len()].copy_from_slice(rest);
            }
            for (s, (g, span)) in spans_of_a.iter().enumerate() {
                let at = (block * spans_of_a.len() + s) * LANES + lane;
                sums[at] = row[span.clone()].iter().map(|&w| i32::from(w)).sum();
                scales[at] = a.scales[r * groups + g];
            }
        }
        let spans = spans_of_a
            .into_iter()
            .map(|(_, span)| span.start / QUAD..span.end.div_ceil(QUAD))
            .collect();
        Packed { quads, values, sums, scales, spans }
    }

    fn block_values(&self, block: usize) -> *const i8 {
        self.values[block * self.quads * LANES * QUAD..].as_ptr()
    }

    fn block_sums(&self, block: usize) -> *const i32 {
        self.sums[block * self.spans.len() * LANES..].as_ptr()
    }

    fn block_scales(&self, block: usize) -> *const f32 {
        self.scales[block * self.spans.len() * LANES..].as_ptr()
    }
}

/// Rows `range` of the product, every token of `xq` (whose `biased` values are filled,
/// each token's padded to whole steps): `put(r, j, v)` receives each output before the
/// token's scale. `a` must be [`packable`].
///
/// # Safety
/// AVX-512F, AVX-512BW and AVX-512 VNNI must be available.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn rows(
    a: Int8DenseView<'_>,
    range: Range<usize>,
    xq: &QuantizedTokens<'_>,
    put: &mut impl FnMut(usize, usize, f32),
) {
    // The matrix's own packed weights where it keeps them (packed whole at its first
    // product; a range starts on a whole block, as the products split rows in whole
    // tiles), else this range's, packed now.
    let kept = a
        .packed
        .filter(|_| range.start.is_multiple_of(LANES))
        .map(|kept| kept.packed.get_or_init(|| Packed::new(&a, 0..a.rows)));
    let local;
    let (packed, first) = match kept {
        Some(kept) => (kept, range.start / LANES),
        None => {
            local = Packed::new(&a, range.clone());
            (&local, 0)
        }
    };
    let batch = xq.scales.len();
    let blocks = range.len().div_ceil(LANES);
    let token = |j: usize| -> *const u8 { xq.biased[j * xq.biased_stride..].as_ptr() };
    assert!(xq.biased.len() >= batch * xq.biased_stride);
    assert!(xq.biased_stride >= packed.quads * QUAD);
    assert!((first + blocks) * packed.quads * LANES * QUAD <= packed.values.len());
    let mut emit = |block: usize, j: usize, lanes: &[f32; LANES]| {
        for (lane, &v) in lanes.iter().enumerate() {
            let r = range.start + (block - first) * LANES + lane;
            if r < range.end {
                put(r, j, v);
            }
        }
    };
    let mut block = 0;
    while block < blocks {
        // Pairs of blocks, then the last block alone.
        if block + TILE_BLOCKS <= blocks {
            let pair = std::array::from_fn(|b| first + block + b);
            // SAFETY: the features by the caller's contract; the blocks and tokens are in
            // bounds (asserted above), every step of them within their packed or padded
            // lengths.
            unsafe { every_token::<TILE_BLOCKS>(packed, pair, batch, &token, &mut emit) };
            block += TILE_BLOCKS;
        } else {
            // SAFETY: as above.
            unsafe { every_token::<1>(packed, [first + block], batch, &token, &mut emit) };
            block += 1;
        }
    }
}

/// Blocks `blocks` against every token: tiles of 12 tokens, then of 8, 4 and 1 for the
/// batch's last tokens.
///
/// # Safety
/// As [`tile`]'s, for every token.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn every_token<const B: usize>(
    packed: &Packed,
    blocks: [usize; B],
    batch: usize,
    token: &impl Fn(usize) -> *const u8,
    emit: &mut impl FnMut(usize, usize, &[f32; LANES]),
) {
    let mut j = 0;
    while j < batch {
        // SAFETY: by the caller's contract, for tokens j.. below the batch.
        j += unsafe {
            match batch - j {
                TILE_TOKENS.. => run::<B, TILE_TOKENS>(packed, blocks, j, token, emit),
                8.. => run::<B, 8>(packed, blocks, j, token, emit),
                4.. => run::<B, 4>(packed, blocks, j, token, emit),
                _ => run::<B, 1>(packed, blocks, j, token, emit),
            }
        };
    }
}

/// One [`tile`] of blocks `blocks` and tokens from `j`, its outputs emitted; the number
/// of tokens (`J`).
///
/// # Safety
/// As [`tile`]'s, for the tokens `token(j..j + J)`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn run<const B: usize, const J: usize>(
    packed: &Packed,
    blocks: [usize; B],
    j: usize,
    token: &impl Fn(usize) -> *const u8,
    emit: &mut impl FnMut(usize, usize, &[f32; LANES]),
) -> usize {
    // SAFETY: by the caller's contract.
    let t = unsafe { tile::<B, J>(packed, blocks, std::array::from_fn(|jj| token(j + jj))) };
    for (b, columns) in t.iter().enumerate() {
        columns.iter().enumerate().for_each(|(jj, v)| emit(blocks[b], j + jj, v));
    }
    J
}

/// The outputs of `B` packed blocks for `J` tokens: per span, `B x J` accumulators of
/// `vpdpbusd` over the span's steps, the bias taken out, converted, times the span's
/// scales and added to the total.
///
/// # Safety
/// AVX-512F, AVX-512BW and AVX-512 VNNI must be available; every block must exist and
/// every token pointer be valid for the packed steps' bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const B: usize, const J: usize>(
    packed: &Packed,
    blocks: [usize; B],
    tokens: [*const u8; J],
) -> [[[f32; LANES]; J]; B] {
    let values = blocks.map(|b| packed.block_values(b));
    let mut total = [[_mm512_setzero_ps(); J]; B];
    for (s, steps) in packed.spans.iter().enumerate() {
        let mut acc = [[_mm512_setzero_si512(); J]; B];
        for q in steps.clone() {
            // SAFETY: step q of each block is in bounds (q < quads).
            let w: [__m512i; B] = std::array::from_fn(|b| unsafe {
                _mm512_loadu_si512(values[b].add(q * LANES * QUAD).cast::<__m512i>())
            });
            for j in 0..J {
                // SAFETY: the token's four bytes at step q are in bounds (its padded
                // length covers every step).
                let four = unsafe { tokens[j].add(q * QUAD).cast::<i32>().read_unaligned() };
                let x = _mm512_set1_epi32(four);
                for b in 0..B {
                    acc[b][j] = _mm512_dpbusd_epi32(acc[b][j], x, w[b]);
                }
            }
        }
        for b in 0..B {
            // SAFETY: each block holds sixteen sums and scales per span.
            let (sums, scales) = unsafe {
                (
                    _mm512_loadu_si512(packed.block_sums(blocks[b]).add(s * LANES).cast()),
                    _mm512_loadu_ps(packed.block_scales(blocks[b]).add(s * LANES)),
                )
            };
            let bias = _mm512_mullo_epi32(sums, _mm512_set1_epi32(ACTIVATION_BIAS));
            for j in 0..J {
                let dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[b][j], bias));
                total[b][j] = _mm512_add_ps(total[b][j], _mm512_mul_ps(dot, scales));
            }
        }
    }
    let mut out = [[[0f32; LANES]; J]; B];
    for b in 0..B {
        for j in 0..J {
            // SAFETY: sixteen f32 fit the array.
            unsafe { _mm512_storeu_ps(out[b][j].as_mut_ptr(), total[b][j]) };
        }
    }
    out
}
