//! The batched N:M kernel with a vector of output rows per register (sixteen on the
//! AVX-512 copy, eight on AVX2), for `f32` matrices whose groups are 4 or 8 columns wide
//! (2:4, 1:4, 4:8, ...) on the AVX-512 copy, and on the AVX2 copy at batches of
//! [`AVX2_FROM_BATCH`] columns or more, where a measurement on first use shows it faster
//! than the row-major kernel ([`runs_here`]).
//!
//! `X` and `Y` stay column-major: a batch column's inputs of one group are `M`
//! consecutive values, which one load puts in a register; each slot of a vector of rows
//! then picks every row's input from them with one permute and adds its product with one
//! fused multiply-add, a whole vector of rows per instruction. The row-major kernel
//! (`nm_rows`) loads a row of `X` for every product instead, and copies `X` into panels
//! and its result out of row-major order around the product; here neither copy is made.
//! Both sum each output over the same windows of slots in the same order, so they give
//! the same bits.

use std::ops::Range;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nalgebra::DMatrix;
use shears_core::Scalar;

use super::isa::{Isa, fma, is};
use super::nm_rows::{NM_PANEL, NmRowBlocks, nm_rows, nm_window_slots};
use super::spmm::{PARALLEL_COPY, for_each_block, to_panels};
use super::{KernelPath, NmView, Split, Stored, combine, kernel_path, multiversion};
use crate::product::Epilogue;

/// Output rows per vector on the AVX2 copy, and in the vectors the AVX-512 copy takes
/// after its vectors of sixteen; also the fewest rows the kernel takes.
const LANES: usize = 8;

/// Bytes of packed slots (an `f32` value and a byte position each) per chunk of vectors
/// of rows: half of a usual L2, so the chunk stays there while the batch passes over it.
#[cfg(target_arch = "x86_64")]
const CHUNK_BYTES: usize = 256 << 10;

/// Bytes of a chunk's running sums (a vector of rows by the batch, per vector): a chunk of
/// short rows at a large batch would otherwise hold as many sums as its rows of `Y`.
#[cfg(target_arch = "x86_64")]
const TOTALS_BYTES: usize = 1 << 20;

/// Bytes of `X` one tile of eight batch columns reads per span of windows: half of L1.
#[cfg(target_arch = "x86_64")]
const SPAN_BYTES: usize = 16 << 10;

/// Batches from which the AVX2 copy runs this kernel: below, its row-major kernel's
/// one-row tiles of 64 columns ([`super::isa::Isa::ONE_ROW_NM_TILES`]) take fewer
/// instructions per product than a permute and a fused multiply-add each, and the copies
/// of `X` and `Y` around them are short.
const AVX2_FROM_BATCH: usize = 512;

/// Whether the product of `a` with `batch` columns runs on this kernel on `path`: `f32`
/// values (stored in any width), an x86 vector path (AVX2 from [`AVX2_FROM_BATCH`]
/// columns), groups of 4 or 8 columns that tile the rows exactly (so a group's inputs
/// never run past a column of `X`), 1, 2 or 4 slots per group, and at least one vector of
/// rows.
pub(super) fn applies<T: Scalar, V>(path: KernelPath, a: &NmView<'_, T, V>, batch: usize) -> bool {
    cfg!(target_arch = "x86_64")
        && match path {
            KernelPath::Avx2 => batch >= AVX2_FROM_BATCH,
            KernelPath::Avx512 => true,
            _ => false,
        }
        && is::<T, f32>()
        && matches!(a.m, 4 | 8)
        && a.ncols.is_multiple_of(a.m)
        && matches!(a.n, 1 | 2 | 4)
        && a.n < a.m
        && a.nrows >= LANES
}

/// Whether the products this kernel [`applies`] to on `path` run on it rather than on
/// the row-major kernel: `SHEARS_NM_LANES=on|off` if set (other values are ignored);
/// else whichever of the two runs a small 2:4 product faster on this CPU (measured once
/// per process; this kernel must win by 5%). Read once per process, as the kernel path
/// is. The two give the same bits, so the choice changes speed only.
///
/// Each product of this kernel takes a permute per fused multiply-add, the row-major
/// kernel a load from L1 instead; which is cheaper depends on the core (how many pipes
/// run permutes, whether they share them with the multiply-adds, how wide they are), so
/// the choice is measured rather than read from the CPU's name.
pub(super) fn runs_here(path: KernelPath) -> bool {
    static CHOICE: OnceLock<bool> = OnceLock::new();
    *CHOICE.get_or_init(|| {
        let forced = std::env::var("SHEARS_NM_LANES").ok().map(|v| v.trim().to_ascii_lowercase());
        match forced.as_deref() {
            Some("on" | "1") => true,
            Some("off" | "0") => false,
            _ => lanes_are_faster(path),
        }
    })
}

/// The product [`lanes_are_faster`] times on `path`: 2:4 weights of 128 rows (a small
/// transformer layer's) by 384 columns at 32 batch columns on the AVX-512 copy; on the
/// AVX2 copy, which takes this kernel only from [`AVX2_FROM_BATCH`] columns, by 256
/// columns at 128 batch columns, one whole panel of the row-major kernel (each batch
/// column costs either kernel the same past it).
fn measured(path: KernelPath) -> (usize, usize, usize) {
    match path {
        KernelPath::Avx2 => MEASURED_AVX2,
        _ => MEASURED_AVX512,
    }
}

const MEASURED_AVX512: (usize, usize, usize) = (128, 384, 32);
const MEASURED_AVX2: (usize, usize, usize) = (128, 256, NM_PANEL);

// The measurement runs each kernel on the calling thread alone (it is inside a
// `OnceLock`'s initialisation, where a rayon task stolen while waiting could ask for
// the same cell): its copy of `X` must stay below what is copied in parallel.
const _: () = assert!(MEASURED_AVX512.1 * MEASURED_AVX512.2 < PARALLEL_COPY);
const _: () = assert!(MEASURED_AVX2.1 * MEASURED_AVX2.2 < PARALLEL_COPY);

/// The 2:4 values and positions of `nrows` x `ncols` weights: the slots of each group
/// at (0, 1), (1, 2), (2, 3), (0, 2), (1, 3), (0, 3) in turn.
fn measured_weights(nrows: usize, ncols: usize) -> (Vec<f32>, Vec<u8>) {
    const PAIRS: [[u8; 2]; 6] = [[0, 1], [1, 2], [2, 3], [0, 2], [1, 3], [0, 3]];
    let groups = nrows * ncols / 4;
    let positions: Vec<u8> = (0..groups).flat_map(|g| PAIRS[g % PAIRS.len()]).collect();
    let values = (0..2 * groups).map(|k| (k % 7) as f32 * 0.25 - 0.75).collect();
    (values, positions)
}

/// Whether this kernel beats the row-major one on `path` for its [`measured`] product:
/// each kernel called directly on this thread, the row-major one with its copies of `X`
/// in and of the result out, timed eleven times, alternately, best of eleven. False
/// where this kernel never applies.
fn lanes_are_faster(path: KernelPath) -> bool {
    let (nrows, ncols, batch) = measured(path);
    let (values, positions) = measured_weights(nrows, ncols);
    let a = NmView {
        nrows,
        ncols,
        n: 2,
        m: 4,
        values: &values,
        positions: &positions,
        row_scales: None,
    };
    // The shape this kernel takes, at a batch where it applies on `path`.
    if !applies(path, &a, batch.max(AVX2_FROM_BATCH)) {
        return false;
    }
    let x = DMatrix::from_fn(ncols, batch, |i, j| ((i + 3 * j) % 5) as f32 * 0.5);
    let mut y = DMatrix::zeros(nrows, batch);
    let window = nm_window_slots(a.n, a.m, batch, size_of::<f32>());
    let mut best = [Duration::MAX; 2];
    for _ in 0..11 {
        for lanes in [true, false] {
            let start = Instant::now();
            if lanes {
                let mut columns: Vec<&mut [f32]> =
                    y.as_mut_slice().chunks_exact_mut(nrows).collect();
                nm_lane_rows(
                    path,
                    a,
                    0..nrows,
                    x.as_slice(),
                    batch,
                    window,
                    1.0,
                    0.0,
                    &mut columns,
                );
            } else {
                let xt = to_panels(&x, NM_PANEL);
                let mut z = vec![0.0f32; nrows * batch];
                nm_rows(path, a, 0..nrows, xt.as_slice(), batch, window, &mut z);
                for (t, column) in y.as_mut_slice().chunks_exact_mut(nrows).enumerate() {
                    for (r, out) in column.iter_mut().enumerate() {
                        *out = z[r * batch + t];
                    }
                }
            }
            std::hint::black_box(&y);
            let took = start.elapsed();
            best[usize::from(lanes)] = best[usize::from(lanes)].min(took);
        }
    }
    best[1].as_secs_f64() * 1.05 < best[0].as_secs_f64()
}

/// `Y <- alpha A X + beta Y` for an N:M `a` that [`applies`] on the current path.
pub(super) fn nm_spmm_lanes<T: Scalar, V: Stored<T>>(
    a: NmView<'_, T, V>,
    alpha: T,
    x: &DMatrix<T>,
    beta: T,
    y: &mut DMatrix<T>,
    then: Option<Epilogue<'_, T>>,
) {
    let (path, batch) = (kernel_path(), x.ncols());
    let blocks = NmRowBlocks(a);
    // The windows follow from the whole batch, so a task's columns sum as all would.
    let window = nm_window_slots(a.n, a.m, batch, size_of::<T>());
    for_each_block(
        blocks,
        y,
        false,
        NM_PANEL,
        Split::Fine,
        then,
        |units, batch_columns, columns| {
            let x = &x.as_slice()[batch_columns.start * a.ncols..batch_columns.end * a.ncols];
            let (rows, width) = (blocks.rows(units), batch_columns.len());
            nm_lane_rows(path, a, rows, x, width, window, alpha, beta, columns);
        },
    );
}

/// Rows `rows` of `alpha A X + beta Y` into `columns` (column `t` of `Y` cut to `rows`),
/// for `X` column-major (`a.ncols` values per batch column): sixteen rows at a time on
/// the AVX-512 copy and eight on the x86 copies with AVX2 where [`applies`] holds
/// (`lane_blocks`), the rest one row at a time, in the same order of operations.
#[inline(always)]
#[allow(clippy::too_many_arguments, reason = "the product's operands")]
fn nm_lane_rows_kernel<P: Isa, T: Scalar, V: Stored<T>>(
    a: NmView<'_, T, V>,
    rows: Range<usize>,
    x: &[T],
    batch: usize,
    window: usize,
    alpha: T,
    beta: T,
    columns: &mut [&mut [T]],
) {
    let per_row = a.groups() * a.n;
    if batch == 0 {
        return;
    }
    let first = rows.start;
    let mut widened: Vec<T> = Vec::with_capacity(LANES * per_row);
    // Sixteen rows per vector on the AVX-512 copy (half the permutes per product), then
    // eight.
    let mut done = first;
    let operands = (x, batch, alpha, beta, window);
    if P::PERMUTES16 {
        done = lane_blocks::<P, T, V, 16>(a, done..rows.end, first, operands, columns);
    }
    let done = lane_blocks::<P, T, V, LANES>(a, done..rows.end, first, operands, columns);
    // One row at a time, in the same order: per batch column, each window's slots summed
    // from zero with one fused multiply-add each, the windows' sums added to a total.
    let mut cols = vec![0u32; per_row];
    for r in done..rows.end {
        widened.clear();
        a.widen_row_into(r, &mut widened);
        a.expand_columns(r, &mut cols);
        for (t, column) in columns.iter_mut().enumerate() {
            let inputs = &x[t * a.ncols..][..a.ncols];
            let mut total = T::zero();
            for (v, c) in widened.chunks(window).zip(cols.chunks(window)) {
                let mut acc = T::zero();
                for (&v, &c) in v.iter().zip(c) {
                    acc = fma::<P, T>(v, inputs[c as usize], acc);
                }
                total += acc;
            }
            let y = &mut column[r - first];
            *y = combine(alpha, total, beta, *y);
        }
    }
}

/// The whole vectors of `L` rows (8 or 16) from `rows.start` on, on the copies with
/// [`Isa::NM_LANES`] (and [`Isa::PERMUTES16`] for 16) where [`applies`] holds (else
/// none); returns the first row it left. `columns` start at row `first_row`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn lane_blocks<P: Isa, T: Scalar, V: Stored<T>, const L: usize>(
    a: NmView<'_, T, V>,
    rows: Range<usize>,
    first_row: usize,
    (x, batch, alpha, beta, window): LaneOperands<'_, T>,
    columns: &mut [&mut [T]],
) -> usize {
    let per_row = a.groups() * a.n;
    let fits = matches!(a.m, 4 | 8)
        && matches!(a.n, 1 | 2 | 4)
        && a.n < a.m
        && a.ncols.is_multiple_of(a.m)
        && per_row > 0;
    let vectors = rows.len() / L;
    if !(P::NM_LANES && (L == LANES || P::PERMUTES16) && is::<T, f32>() && fits) || vectors == 0 {
        return rows.start;
    }
    // Vectors of rows are taken a chunk at a time, whose packed slots stay in L2 while
    // every window and tile of the batch passes over them, and whose sums stay within
    // TOTALS_BYTES.
    let by_slots = CHUNK_BYTES / (L * per_row * (size_of::<f32>() + 1));
    let by_totals = TOTALS_BYTES / (batch * size_of::<[f32; L]>());
    let chunk = by_slots.min(by_totals).max(1);
    // Whole windows per span: a tile's inputs for the span (8 columns of `X`) fit
    // SPAN_BYTES.
    let span_columns = SPAN_BYTES / (8 * size_of::<f32>());
    let span = (span_columns / a.m * a.n / window).max(1) * window;
    // Sized once: each chunk overwrites the vectors it packs.
    let vector_slots = L * per_row;
    let mut values = vec![0.0f32; chunk.min(vectors) * vector_slots];
    let mut positions = vec![0u8; chunk.min(vectors) * vector_slots];
    let mut totals: Vec<[f32; L]> = Vec::with_capacity(chunk.min(vectors) * batch);
    let mut widened: Vec<T> = Vec::with_capacity(L * per_row);
    for first in (0..vectors).step_by(chunk) {
        let count = chunk.min(vectors - first);
        // The chunk's vectors, each its L rows' slots interleaved (slot-major): values as
        // `T` (widened and scaled), which is `f32` here, and positions as stored.
        for i in first..first + count {
            let r0 = rows.start + i * L;
            let block: &[T] = match (a.row_scales, V::as_compute(a.values)) {
                (None, Some(all)) => &all[r0 * per_row..(r0 + L) * per_row],
                _ => {
                    widened.clear();
                    for r in r0..r0 + L {
                        a.widen_row_into(r, &mut widened);
                    }
                    &widened
                }
            };
            // SAFETY: T is f32 (checked above), so the slice is one of f32.
            let block: &[f32] =
                unsafe { std::slice::from_raw_parts(block.as_ptr().cast(), block.len()) };
            let stored = &a.positions[r0 * per_row..(r0 + L) * per_row];
            let start = (i - first) * vector_slots;
            let (value_slots, _) = values[start..][..vector_slots].as_chunks_mut::<L>();
            let (position_slots, _) = positions[start..][..vector_slots].as_chunks_mut::<L>();
            interleave_values(block, per_row, value_slots);
            interleave_positions(stored, per_row, position_slots);
        }
        // Spans of whole windows outermost, each as many columns of `X` as keep a tile's
        // inputs in L1, then tiles of the batch, then the chunk's vectors: a span of a
        // tile's columns of `X` stays in L1 while every vector passes over it, and each
        // window's sums are added to the totals in window order.
        totals.clear();
        totals.resize(count * batch, [0.0; L]);
        for s0 in (0..per_row).step_by(span) {
            let s = s0..(s0 + span).min(per_row);
            let mut t0 = 0;
            while t0 < batch {
                let tile = if t0 + 8 <= batch { 8 } else { 1 };
                for i in 0..count {
                    let at = i * L * per_row;
                    let v = &values[at..][..L * per_row];
                    let p = &positions[at..][..L * per_row];
                    let totals = &mut totals[i * batch + t0..][..tile];
                    if let Ok(t8) = <&mut [[f32; L]; 8]>::try_from(&mut *totals) {
                        lanes::<L, 8>(a.n, a.m, v, p, s.clone(), window, x, a.ncols, t0, t8);
                    } else if let Ok(t1) = <&mut [[f32; L]; 1]>::try_from(totals) {
                        lanes::<L, 1>(a.n, a.m, v, p, s.clone(), window, x, a.ncols, t0, t1);
                    }
                }
                t0 += tile;
            }
        }
        for i in 0..count {
            let out = rows.start - first_row + (first + i) * L;
            for (column, total) in columns.iter_mut().zip(&totals[i * batch..(i + 1) * batch]) {
                for (y, &s) in column[out..out + L].iter_mut().zip(total) {
                    *y = combine(alpha, T::from_f64_lossy(f64::from(s)), beta, *y);
                }
            }
        }
    }
    rows.start + vectors * L
}

/// `slots[k][j] = rows[j * per_row + k]`: `L` rows (a multiple of `B`) of `per_row`
/// entries interleaved slot by slot, in `B` x `B` blocks that `transpose` turns in
/// registers (`out[i][j] = block[j][i]`). Written one lane of a slot at a time (a pass
/// per row), this took longer than the product at small batches.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn interleave<E: Copy + Default, const L: usize, const B: usize>(
    rows: &[E],
    per_row: usize,
    slots: &mut [[E; L]],
    transpose: impl Fn([[E; B]; B]) -> [[E; B]; B],
) {
    let (rows, slots) = (&rows[..L * per_row], &mut slots[..per_row]);
    let full = per_row / B * B;
    for k0 in (0..full).step_by(B) {
        for j0 in (0..L).step_by(B) {
            let block = transpose(std::array::from_fn(|jj| {
                let mut run = [E::default(); B];
                run.copy_from_slice(&rows[(j0 + jj) * per_row + k0..][..B]);
                run
            }));
            for (slot, lanes) in slots[k0..k0 + B].iter_mut().zip(block) {
                slot[j0..j0 + B].copy_from_slice(&lanes);
            }
        }
    }
    for (k, slot) in slots.iter_mut().enumerate().skip(full) {
        *slot = std::array::from_fn(|j| rows[j * per_row + k]);
    }
}

/// The values of `L` rows interleaved ([`interleave`]) in 4 x 4 blocks.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn interleave_values<const L: usize>(rows: &[f32], per_row: usize, slots: &mut [[f32; L]]) {
    interleave::<f32, L, 4>(rows, per_row, slots, transpose4);
}

/// The byte positions of `L` rows interleaved ([`interleave`]) in 8 x 8 blocks, each
/// transposed in 64-bit words.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn interleave_positions<const L: usize>(rows: &[u8], per_row: usize, slots: &mut [[u8; L]]) {
    interleave::<u8, L, 8>(rows, per_row, slots, |block| {
        transpose8_bytes(block.map(u64::from_le_bytes)).map(u64::to_le_bytes)
    });
}

/// A 4 x 4 block transposed: `out[i][j] = rows[j][i]`, with SSE's unpacks and moves.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn transpose4(rows: [[f32; 4]; 4]) -> [[f32; 4]; 4] {
    use std::arch::x86_64::*;
    // SAFETY: [f32; 4] and __m128 have the same size and any bits are valid, in both
    // directions; SSE is part of x86-64.
    unsafe {
        let [r0, r1, r2, r3] = rows.map(|r| std::mem::transmute::<[f32; 4], __m128>(r));
        let (t0, t1) = (_mm_unpacklo_ps(r0, r1), _mm_unpacklo_ps(r2, r3));
        let (t2, t3) = (_mm_unpackhi_ps(r0, r1), _mm_unpackhi_ps(r2, r3));
        let out = [
            _mm_movelh_ps(t0, t1),
            _mm_movehl_ps(t1, t0),
            _mm_movelh_ps(t2, t3),
            _mm_movehl_ps(t3, t2),
        ];
        out.map(|o| std::mem::transmute::<__m128, [f32; 4]>(o))
    }
}

/// An 8 x 8 block of bytes transposed: byte `i` of `out[j]` is byte `j` of `rows[i]`
/// (little-endian). Three rounds swap the off-diagonal blocks of 4, 2 and 1 bytes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn transpose8_bytes(mut x: [u64; 8]) -> [u64; 8] {
    for (half, mask) in
        [(4, 0x0000_0000_ffff_ffff_u64), (2, 0x0000_ffff_0000_ffff), (1, 0x00ff_00ff_00ff_00ff)]
    {
        let shift = 8 * half as u32;
        for j in (0..8).filter(|j| j & half == 0) {
            let (a, b) = (x[j], x[j + half]);
            x[j] = (a & mask) | ((b & mask) << shift);
            x[j + half] = ((a >> shift) & mask) | (b & !mask);
        }
    }
    x
}

/// The operands every vector of rows shares: `X` (column-major), the batch, `alpha`,
/// `beta` and the window of slots.
type LaneOperands<'a, T> = (&'a [T], usize, T, T, usize);

/// Other architectures have no copy with the permutes: every row is left to the one-row
/// loop.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn lane_blocks<P: Isa, T: Scalar, V: Stored<T>, const L: usize>(
    _: NmView<'_, T, V>,
    rows: Range<usize>,
    _: usize,
    _: LaneOperands<'_, T>,
    _: &mut [&mut [T]],
) -> usize {
    rows.start
}

/// [`super::isa::x86::nm_lanes_f32`] (`L` = 8) or [`super::isa::x86::nm_lanes16_f32`]
/// (`L` = 16) over the slots `s` (whole windows of `window`) of a vector of rows
/// (`values` and `positions`, all its slots interleaved), for `J` batch columns from
/// `t0`, added to `totals`, with the slots per group and the group width as constants.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments, reason = "the kernel's operands")]
fn lanes<const L: usize, const J: usize>(
    n: usize,
    m: usize,
    values: &[f32],
    positions: &[u8],
    s: Range<usize>,
    window: usize,
    x: &[impl Scalar],
    ncols: usize,
    t0: usize,
    totals: &mut [[f32; L]; J],
) {
    use super::isa::x86::{nm_lanes_f32, nm_lanes16_f32};
    const { assert!(L == 8 || L == 16) };
    debug_assert!(values.len() >= s.end * L && positions.len() >= s.end * L);
    debug_assert!(x.len() >= (t0 + J) * ncols && ncols.is_multiple_of(m));
    debug_assert!(s.start.is_multiple_of(window) && window.is_multiple_of(n));
    // The span's first group starts at column s.start / n * m of every batch column.
    let first_column = s.start / n * m;
    let x: [*const f32; J] =
        std::array::from_fn(|t| x[(t0 + t) * ncols + first_column..].as_ptr().cast());
    let (v, p) = (values[s.start * L..].as_ptr(), positions[s.start * L..].as_ptr());
    let totals: *mut f32 = totals.as_mut_ptr().cast();
    let slots = s.len();
    // SAFETY: the caller runs this only on copies with Isa::NM_LANES (compiled with AVX2
    // and FMA), with L = 16 only on those with Isa::PERMUTES16 too (compiled with
    // AVX-512F), and for f32 `x`; from `s.start`, `values` and `positions` hold the span's
    // `slots` interleaved slots of L rows, positions below `m` (the view's validator), and
    // `totals` J * L sums; the span starts at a window boundary and holds whole groups
    // (windows are multiples of `n`, and so is the row's slot count); column t0 + t of `x`
    // holds `ncols` values, whole groups of `m` since `m` divides `ncols`, and the span's
    // groups lie within it.
    unsafe {
        match (L, n, m) {
            (16, 1, 4) => nm_lanes16_f32::<1, 4, J>(v, p, slots, window, x, totals),
            (16, 2, 4) => nm_lanes16_f32::<2, 4, J>(v, p, slots, window, x, totals),
            (16, 1, 8) => nm_lanes16_f32::<1, 8, J>(v, p, slots, window, x, totals),
            (16, 2, 8) => nm_lanes16_f32::<2, 8, J>(v, p, slots, window, x, totals),
            (16, 4, 8) => nm_lanes16_f32::<4, 8, J>(v, p, slots, window, x, totals),
            (_, 1, 4) => nm_lanes_f32::<1, 4, J>(v, p, slots, window, x, totals),
            (_, 2, 4) => nm_lanes_f32::<2, 4, J>(v, p, slots, window, x, totals),
            (_, 1, 8) => nm_lanes_f32::<1, 8, J>(v, p, slots, window, x, totals),
            (_, 2, 8) => nm_lanes_f32::<2, 8, J>(v, p, slots, window, x, totals),
            (_, 4, 8) => nm_lanes_f32::<4, 8, J>(v, p, slots, window, x, totals),
            _ => unreachable!("lane_blocks takes 1, 2 or 4 slots of groups of 4 or 8"),
        }
    }
}

multiversion! {
    fn nm_lane_rows<T: Scalar, V: Stored<T>>(a: NmView<'_, T, V>, rows: Range<usize>, x: &[T], batch: usize, window: usize, alpha: T, beta: T, columns: &mut [&mut [T]]) => nm_lane_rows_kernel
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::nm_rows::nm_spmm_row_major;

    const PATHS: [KernelPath; 4] =
        [KernelPath::Portable, KernelPath::Avx2, KernelPath::Avx512, KernelPath::Neon];

    /// `alpha A X + beta Y` by the row-major kernel on the portable copy: the bits every
    /// batched N:M product gives.
    fn row_major<V: Stored<f32>>(
        a: NmView<'_, f32, V>,
        alpha: f32,
        x: &DMatrix<f32>,
        beta: f32,
        y: &DMatrix<f32>,
    ) -> DMatrix<f32> {
        let batch = x.ncols();
        let mut z = vec![0.0f32; a.nrows * batch];
        let xt = to_panels(x, NM_PANEL);
        let portable = KernelPath::resolve(KernelPath::Portable);
        let window = nm_window_slots(a.n, a.m, batch, 4);
        nm_rows(portable, a, 0..a.nrows, xt.as_slice(), batch, window, &mut z);
        DMatrix::from_fn(a.nrows, batch, |r, t| combine(alpha, z[r * batch + t], beta, y[(r, t)]))
    }

    /// This kernel on `path` over rows `rows` of `a`, the other rows of `y` untouched.
    fn lanes_on<V: Stored<f32>>(
        path: KernelPath,
        a: NmView<'_, f32, V>,
        rows: Range<usize>,
        alpha: f32,
        x: &DMatrix<f32>,
        beta: f32,
        y: &DMatrix<f32>,
    ) -> DMatrix<f32> {
        let (batch, mut out) = (x.ncols(), y.clone());
        let mut columns: Vec<&mut [f32]> =
            out.as_mut_slice().chunks_exact_mut(a.nrows).map(|c| &mut c[rows.clone()]).collect();
        let path = KernelPath::resolve(path);
        let window = nm_window_slots(a.n, a.m, batch, 4);
        nm_lane_rows(path, a, rows, x.as_slice(), batch, window, alpha, beta, &mut columns);
        out
    }

    /// The interleaving of rows into slots matches the element formula for row lengths
    /// with and without a partial block, for 8 and 16 rows.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn interleaving_matches_the_element_formula() {
        fn check<const L: usize>(per_row: usize) {
            let values: Vec<f32> = (0..L * per_row).map(|k| k as f32).collect();
            let positions: Vec<u8> = (0..L * per_row).map(|k| (k * 7 % 251) as u8).collect();
            let mut value_slots = vec![[0.0f32; L]; per_row];
            let mut position_slots = vec![[0u8; L]; per_row];
            interleave_values(&values, per_row, &mut value_slots);
            interleave_positions(&positions, per_row, &mut position_slots);
            for k in 0..per_row {
                for j in 0..L {
                    assert_eq!(value_slots[k][j], values[j * per_row + k], "{L} rows, {k}, {j}");
                    assert_eq!(position_slots[k][j], positions[j * per_row + k], "{k}, {j}");
                }
            }
        }
        for per_row in [1, 3, 4, 8, 13, 24, 37] {
            check::<8>(per_row);
            check::<16>(per_row);
        }
    }

    fn bits(m: &DMatrix<f32>) -> Vec<u32> {
        m.iter().map(|v| v.to_bits()).collect()
    }

    /// The two kernels `nm_spmm` chooses between, called at their entries (tasks, panels
    /// and the choice of copy included), give the same bits on the weights the choice is
    /// measured on, and on others, at batches around their panels and tiles and on row
    /// counts with a partial vector, so the measured choice changes speed only.
    #[test]
    fn both_entries_give_the_same_bits() {
        let (nrows, ncols, _) = MEASURED_AVX512;
        let slots = nrows * ncols / 2;
        let other_positions: Vec<u8> =
            (0..slots).map(|k| ((k % 2) * 2 + k % 3 / 2) as u8).collect();
        let other_values: Vec<f32> = (0..slots).map(|k| (k as f32 * 0.37).sin()).collect();
        let measured = measured_weights(nrows, ncols);
        for (values, positions) in [measured, (other_values, other_positions)] {
            for rows in [nrows, 45] {
                let a = NmView {
                    nrows: rows,
                    ncols,
                    n: 2,
                    m: 4,
                    values: &values[..rows * ncols / 2],
                    positions: &positions[..rows * ncols / 2],
                    row_scales: None,
                };
                for batch in [2usize, 32, 129, 300] {
                    let x =
                        DMatrix::from_fn(ncols, batch, |i, j| ((i * 3 + j) as f32 * 0.07).cos());
                    let y = DMatrix::from_fn(rows, batch, |i, j| ((i + 2 * j) as f32 * 0.05).sin());
                    let (mut lanes, mut row_major) = (y.clone(), y);
                    nm_spmm_lanes(a, 0.5, &x, 2.0, &mut lanes, None);
                    let by_columns = crate::Layout::COLUMNS;
                    nm_spmm_row_major(a, 0.5, &x, 2.0, &mut row_major, None, by_columns);
                    assert_eq!(bits(&lanes), bits(&row_major), "{rows} rows, batch {batch}");
                }
            }
        }
    }

    /// The weights the choice is measured on are a valid 2:4 matrix that this kernel
    /// takes on each x86 vector copy (on AVX2 at the batches it takes), so the
    /// measurement times it, and within one panel of the row-major kernel on AVX2.
    #[test]
    fn the_measured_product_is_one_this_kernel_takes() {
        for path in [KernelPath::Avx512, KernelPath::Avx2] {
            let (nrows, ncols, batch) = measured(path);
            let (values, positions) = measured_weights(nrows, ncols);
            let pattern = shears_core::NmPattern::new(2, 4).unwrap();
            let matrix =
                crate::NmSparse::try_from_parts(nrows, ncols, pattern, values, positions).unwrap();
            let a = NmView::<'_, f32> {
                nrows,
                ncols,
                n: 2,
                m: 4,
                values: matrix.values(),
                positions: matrix.positions(),
                row_scales: None,
            };
            let on_x86 = cfg!(target_arch = "x86_64");
            assert_eq!(applies(path, &a, batch.max(AVX2_FROM_BATCH)), on_x86, "{path:?}");
            assert!(batch <= NM_PANEL, "{path:?}");
        }
        assert_eq!(measured(KernelPath::Avx512).2, 32);
    }

    /// Every copy gives the row-major kernel's bits, for every pattern the kernel takes,
    /// row counts with and without a partial vector (of 8 or 16), batches with and
    /// without a partial tile, rows that span several windows (the batch of 130), `beta`
    /// zero or not, and row ranges that start inside a vector.
    #[test]
    fn every_copy_gives_the_row_major_bits() {
        for (n, m) in [(2usize, 4usize), (1, 4), (4, 8), (2, 8), (1, 8)] {
            let ncols = 40 * m;
            let per_row = ncols / m * n;
            // 29 rows are a vector of 16, one of 8 and 5 rows alone on the AVX-512 copy.
            for nrows in [8usize, 13, 29, 37] {
                let positions: Vec<u8> = (0..nrows * per_row)
                    .map(|k| {
                        // Distinct positions within each group, varied by row and group.
                        let (row, g, slot) = (k / per_row, (k % per_row) / n, k % n);
                        ((slot * (m / n) + row + g) % m) as u8
                    })
                    .collect();
                let values: Vec<f32> =
                    (0..nrows * per_row).map(|k| (k as f32 * 0.37).sin()).collect();
                let a = NmView {
                    nrows,
                    ncols,
                    n,
                    m,
                    values: &values,
                    positions: &positions,
                    row_scales: None,
                };
                for batch in [1usize, 7, 8, 9, 17, 130] {
                    let x = DMatrix::from_fn(ncols, batch, |i, j| ((i * 3 + j * 7) as f32).cos());
                    let y = DMatrix::from_fn(nrows, batch, |i, j| ((i + 2 * j) as f32).sin());
                    for (alpha, beta) in [(1.0, 0.0), (0.5, -2.0)] {
                        let want = row_major(a, alpha, &x, beta, &y);
                        for path in PATHS {
                            for rows in [0..nrows, 3..nrows] {
                                let got = lanes_on(path, a, rows.clone(), alpha, &x, beta, &y);
                                let mut expected = y.clone();
                                for r in rows.clone() {
                                    expected.row_mut(r).copy_from(&want.row(r));
                                }
                                assert_eq!(
                                    bits(&got),
                                    bits(&expected),
                                    "{n}:{m}, {nrows} rows ({rows:?}), batch {batch}, {path:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// Rows long enough for several spans of windows, and enough of them for several
    /// chunks of vectors, give the row-major bits too (x86-64 only: elsewhere no copy
    /// packs rows or walks spans).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn several_spans_and_chunks_give_the_row_major_bits() {
        let (n, m, ncols, nrows) = (2usize, 4usize, 1200usize, 130usize);
        let per_row = ncols / m * n;
        assert!(
            per_row * LANES * 5 * (nrows / LANES) > CHUNK_BYTES,
            "one chunk would hold every row"
        );
        assert!(per_row > SPAN_BYTES / 32 / m * n, "one span would hold a row");
        let positions: Vec<u8> =
            (0..nrows * per_row).map(|k| ((k % n) * 2 + (k / per_row) % 2) as u8).collect();
        let values: Vec<f32> = (0..nrows * per_row).map(|k| (k as f32 * 0.13).sin()).collect();
        let a =
            NmView { nrows, ncols, n, m, values: &values, positions: &positions, row_scales: None };
        for batch in [9usize, 130] {
            let x = DMatrix::from_fn(ncols, batch, |i, j| ((i * 5 + j * 3) as f32 * 0.07).cos());
            let y = DMatrix::zeros(nrows, batch);
            let want = bits(&row_major(a, 1.0, &x, 0.0, &y));
            for path in PATHS {
                let got = bits(&lanes_on(path, a, 0..nrows, 1.0, &x, 0.0, &y));
                assert_eq!(got, want, "batch {batch}, {path:?}");
            }
        }
    }

    /// Short rows at a batch whose sums alone would pass TOTALS_BYTES are taken a few
    /// vectors at a time, and give the row-major bits too.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn short_rows_at_a_large_batch_give_the_row_major_bits() {
        let (n, m, ncols, nrows, batch) = (2usize, 4usize, 8usize, 41usize, 8201usize);
        assert!(TOTALS_BYTES / (batch * 32) < nrows / LANES, "one chunk would hold every row");
        let per_row = ncols / m * n;
        let positions: Vec<u8> =
            (0..nrows * per_row).map(|k| ((k % n) * 2 + k % 3 / 2) as u8).collect();
        let values: Vec<f32> = (0..nrows * per_row).map(|k| (k as f32 * 0.29).sin()).collect();
        let a =
            NmView { nrows, ncols, n, m, values: &values, positions: &positions, row_scales: None };
        let x = DMatrix::from_fn(ncols, batch, |i, j| ((i * 7 + j) as f32 * 0.01).cos());
        let y = DMatrix::from_fn(nrows, batch, |i, j| ((i + j) as f32 * 0.03).sin());
        let want = bits(&row_major(a, 0.5, &x, 2.0, &y));
        for path in PATHS {
            assert_eq!(bits(&lanes_on(path, a, 0..nrows, 0.5, &x, 2.0, &y)), want, "{path:?}");
        }
    }

    /// Narrow values (int8 with row scales, bf16, f16) give, on every copy, the row-major
    /// kernel's bits for the f32 values they stand for.
    #[test]
    fn narrow_values_give_the_widened_bits_on_every_copy() {
        fn check<V: Stored<f32>>(narrow: impl Fn(f32) -> V + Copy, scaled: bool) {
            let fixture = crate::kernels::NarrowNmFixture::new((19, 64), (2, 4), narrow, scaled);
            let (a, widened) = (fixture.view(), fixture.widened_view());
            for batch in [3usize, 16] {
                let x = DMatrix::from_fn(64, batch, |i, j| ((i * 5 + j) as f32 * 0.11).cos());
                let y = DMatrix::zeros(19, batch);
                let want = bits(&row_major(widened, 1.0, &x, 0.0, &y));
                for path in PATHS {
                    let got = bits(&lanes_on(path, a, 0..19, 1.0, &x, 0.0, &y));
                    assert_eq!(got, want, "batch {batch}, {path:?}");
                }
            }
        }
        check::<i8>(|v| v.round_ties_even().clamp(-127.0, 127.0) as i8, true);
        check::<half::bf16>(half::bf16::from_f32, false);
        check::<half::f16>(half::f16::from_f32, false);
    }

    /// The kernel takes f32 matrices with whole groups of 4 or 8 and 1, 2 or 4 slots, at
    /// least eight rows, on the x86 vector paths; every other product stays row-major.
    #[test]
    fn it_applies_where_its_loads_and_permutes_fit() {
        let (values, positions) = (vec![0.0f32; 64 * 64], vec![0u8; 64 * 64]);
        let view = |nrows, ncols, n, m| NmView::<'_, f32> {
            nrows,
            ncols,
            n,
            m,
            values: &values,
            positions: &positions,
            row_scales: None,
        };
        let on_x86 = cfg!(target_arch = "x86_64");
        let many = AVX2_FROM_BATCH;
        assert_eq!(applies(KernelPath::Avx2, &view(16, 64, 2, 4), many), on_x86);
        assert!(!applies(KernelPath::Avx2, &view(16, 64, 2, 4), many - 1), "one-row tiles");
        assert_eq!(applies(KernelPath::Avx512, &view(8, 64, 4, 8), 1), on_x86);
        assert!(!applies(KernelPath::Portable, &view(16, 64, 2, 4), many));
        assert!(!applies(KernelPath::Neon, &view(16, 64, 2, 4), many));
        assert!(!applies(KernelPath::Avx2, &view(7, 64, 2, 4), many), "less than a vector");
        assert!(!applies(KernelPath::Avx2, &view(16, 62, 2, 4), many), "a partial group");
        assert!(!applies(KernelPath::Avx2, &view(16, 63, 3, 7), many), "groups of 7");
        assert!(!applies(KernelPath::Avx2, &view(16, 64, 3, 4), many), "3 slots");
        let f64_values = vec![0.0f64; 64 * 64];
        let wide = NmView::<'_, f64> {
            nrows: 16,
            ncols: 64,
            n: 2,
            m: 4,
            values: &f64_values,
            positions: &positions,
            row_scales: None,
        };
        assert!(!applies(KernelPath::Avx2, &wide, many), "f64");
    }

    /// Without columns the product is `beta Y` on every copy.
    #[test]
    fn no_columns_scale_y() {
        let a = NmView::<'_, f32> {
            nrows: 9,
            ncols: 0,
            n: 2,
            m: 4,
            values: &[],
            positions: &[],
            row_scales: None,
        };
        let (x, y) = (DMatrix::zeros(0, 3), DMatrix::from_fn(9, 3, |i, j| (i + j) as f32));
        for path in PATHS {
            assert_eq!(lanes_on(path, a, 0..9, 2.0, &x, 0.5, &y), &y * 0.5, "{path:?}");
        }
    }
}
