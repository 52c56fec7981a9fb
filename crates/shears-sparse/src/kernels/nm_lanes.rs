//! The batched N:M kernel with eight output rows per vector, for `f32` matrices whose
//! groups are 4 or 8 columns wide (2:4, 1:4, 4:8, ...) on the AVX-512 copy, and on the
//! AVX2 copy at batches of [`AVX2_FROM_BATCH`] columns or more.
//!
//! `X` and `Y` stay column-major: a batch column's inputs of one group are `M`
//! consecutive values, which one load puts in a register; each slot of eight rows then
//! picks every row's input from them with one permute and adds its product with one
//! fused multiply-add, eight rows per instruction. The row-major kernel (`nm_rows`) loads
//! a row of `X` for every product instead, and copies `X` into panels and its result out
//! of row-major order around the product; here neither copy is made. Both sum each output
//! over the same windows of slots in the same order, so they give the same bits.

use std::ops::Range;

use nalgebra::DMatrix;
use shears_core::Scalar;

use super::isa::{Isa, fma, is};
use super::spmm::{NM_PANEL, NmRowBlocks, for_each_block, nm_window_slots};
use super::{KernelPath, NmView, Stored, combine, kernel_path, multiversion};

/// Output rows per vector.
const LANES: usize = 8;

/// Bytes of packed slots (an `f32` value and a byte position each) per chunk of vectors
/// of rows: half of a usual L2, so the chunk stays there while the batch passes over it.
#[cfg(target_arch = "x86_64")]
const CHUNK_BYTES: usize = 256 << 10;

/// Bytes of a chunk's running sums (eight rows by the batch, per vector): a chunk of
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

/// `Y <- alpha A X + beta Y` for an N:M `a` that [`applies`] on the current path.
pub(super) fn nm_spmm_lanes<T: Scalar, V: Stored<T>>(
    a: NmView<'_, T, V>,
    alpha: T,
    x: &DMatrix<T>,
    beta: T,
    y: &mut DMatrix<T>,
) {
    let (path, batch) = (kernel_path(), x.ncols());
    let blocks = NmRowBlocks(a);
    // The windows follow from the whole batch, so a task's columns sum as all would.
    let window = nm_window_slots(a.n, a.m, batch, size_of::<T>());
    for_each_block(blocks, y, NM_PANEL, |units, batch_columns, columns| {
        let x = &x.as_slice()[batch_columns.start * a.ncols..batch_columns.end * a.ncols];
        let (rows, width) = (blocks.rows(units), batch_columns.len());
        nm_lane_rows(path, a, rows, x, width, window, alpha, beta, columns);
    });
}

/// Rows `rows` of `alpha A X + beta Y` into `columns` (column `t` of `Y` cut to `rows`),
/// for `X` column-major (`a.ncols` values per batch column): eight rows at a time on the
/// x86 copies with AVX2 where [`applies`] holds (`lane_blocks`), the rest one row at a
/// time, in the same order of operations.
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
    let done = lane_blocks::<P, T, V>(a, rows.clone(), x, batch, alpha, beta, columns, window);
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

/// The whole vectors of rows from `rows.start` on, eight rows at a time, on the copies
/// with [`Isa::NM_LANES`] and where [`applies`] holds (else none); returns the first row
/// it left.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments, reason = "the product's operands")]
fn lane_blocks<P: Isa, T: Scalar, V: Stored<T>>(
    a: NmView<'_, T, V>,
    rows: Range<usize>,
    x: &[T],
    batch: usize,
    alpha: T,
    beta: T,
    columns: &mut [&mut [T]],
    window: usize,
) -> usize {
    let per_row = a.groups() * a.n;
    let fits = matches!(a.m, 4 | 8) && a.ncols.is_multiple_of(a.m) && per_row > 0;
    if !(P::NM_LANES && is::<T, f32>() && fits) {
        return rows.start;
    }
    let vectors = rows.len() / LANES;
    // Vectors of rows are taken a chunk at a time, whose packed slots stay in L2 while
    // every window and tile of the batch passes over them, and whose sums stay within
    // TOTALS_BYTES.
    let by_slots = CHUNK_BYTES / (LANES * per_row * (size_of::<f32>() + 1));
    let by_totals = TOTALS_BYTES / (batch * size_of::<[f32; LANES]>());
    let chunk = by_slots.min(by_totals).max(1);
    // Whole windows per span: a tile's inputs for the span (8 columns of `X`) fit
    // SPAN_BYTES.
    let span_columns = SPAN_BYTES / (8 * size_of::<f32>());
    let span = (span_columns / a.m * a.n / window).max(1) * window;
    let mut values: Vec<f32> = Vec::with_capacity(chunk * LANES * per_row);
    let mut positions: Vec<u8> = Vec::with_capacity(chunk * LANES * per_row);
    let mut totals: Vec<[f32; LANES]> = Vec::with_capacity(chunk * batch);
    let mut widened: Vec<T> = Vec::with_capacity(LANES * per_row);
    for first in (0..vectors).step_by(chunk) {
        let count = chunk.min(vectors - first);
        // The chunk's vectors, each its eight rows' slots interleaved (slot-major):
        // values as `T` (widened and scaled), which is `f32` here, and positions as stored.
        values.clear();
        positions.clear();
        for i in first..first + count {
            let r0 = rows.start + i * LANES;
            let block: &[T] = match (a.row_scales, V::as_compute(a.values)) {
                (None, Some(all)) => &all[r0 * per_row..(r0 + LANES) * per_row],
                _ => {
                    widened.clear();
                    for r in r0..r0 + LANES {
                        a.widen_row_into(r, &mut widened);
                    }
                    &widened
                }
            };
            // SAFETY: T is f32 (checked above), so the slice is one of f32.
            let block: &[f32] =
                unsafe { std::slice::from_raw_parts(block.as_ptr().cast(), block.len()) };
            let stored = &a.positions[r0 * per_row..(r0 + LANES) * per_row];
            let start = values.len();
            values.resize(start + LANES * per_row, 0.0);
            positions.resize(start + LANES * per_row, 0);
            let (value_slots, _) = values[start..].as_chunks_mut::<LANES>();
            let (position_slots, _) = positions[start..].as_chunks_mut::<LANES>();
            for j in 0..LANES {
                let row =
                    block[j * per_row..][..per_row].iter().zip(&stored[j * per_row..][..per_row]);
                for ((v, p), (&value, &position)) in
                    value_slots.iter_mut().zip(&mut *position_slots).zip(row)
                {
                    v[j] = value;
                    p[j] = position;
                }
            }
        }
        // Spans of whole windows outermost, each as many columns of `X` as keep a tile's
        // inputs in L1, then tiles of the batch, then the chunk's vectors: a span of a
        // tile's columns of `X` stays in L1 while every vector passes over it, and each
        // window's sums are added to the totals in window order.
        totals.clear();
        totals.resize(count * batch, [0.0; LANES]);
        for s0 in (0..per_row).step_by(span) {
            let s = s0..(s0 + span).min(per_row);
            let mut t0 = 0;
            while t0 < batch {
                let tile = if t0 + 8 <= batch { 8 } else { 1 };
                for i in 0..count {
                    let at = i * LANES * per_row;
                    let v = &values[at..][..LANES * per_row];
                    let p = &positions[at..][..LANES * per_row];
                    let totals = &mut totals[i * batch + t0..][..tile];
                    if let Ok(t8) = <&mut [[f32; LANES]; 8]>::try_from(&mut *totals) {
                        *t8 = lanes::<8>(a.n, a.m, v, p, s.clone(), window, x, a.ncols, t0, *t8);
                    } else if let Ok(t1) = <&mut [[f32; LANES]; 1]>::try_from(totals) {
                        *t1 = lanes::<1>(a.n, a.m, v, p, s.clone(), window, x, a.ncols, t0, *t1);
                    }
                }
                t0 += tile;
            }
        }
        for i in 0..count {
            let out = (first + i) * LANES;
            for (column, total) in columns.iter_mut().zip(&totals[i * batch..(i + 1) * batch]) {
                for (y, &s) in column[out..out + LANES].iter_mut().zip(total) {
                    *y = combine(alpha, T::from_f64_lossy(f64::from(s)), beta, *y);
                }
            }
        }
    }
    rows.start + vectors * LANES
}

/// Other architectures have no copy with the permutes: every row is left to the one-row
/// loop.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
#[allow(clippy::too_many_arguments, reason = "the product's operands")]
fn lane_blocks<P: Isa, T: Scalar, V: Stored<T>>(
    _: NmView<'_, T, V>,
    rows: Range<usize>,
    _: &[T],
    _: usize,
    _: T,
    _: T,
    _: &mut [&mut [T]],
    _: usize,
) -> usize {
    rows.start
}

/// [`super::isa::x86::nm_lanes_f32`] over the slots `s` (whole windows of `window`) of
/// a vector of rows (`values` and `positions`, all its slots interleaved), for `J` batch
/// columns from `t0`, added to `totals`, with the slots per group and the group width as
/// constants.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments, reason = "the kernel's operands")]
fn lanes<const J: usize>(
    n: usize,
    m: usize,
    values: &[f32],
    positions: &[u8],
    s: Range<usize>,
    window: usize,
    x: &[impl Scalar],
    ncols: usize,
    t0: usize,
    totals: [[f32; LANES]; J],
) -> [[f32; LANES]; J] {
    use super::isa::x86::nm_lanes_f32;
    debug_assert!(values.len() >= s.end * LANES && positions.len() >= s.end * LANES);
    debug_assert!(x.len() >= (t0 + J) * ncols && ncols.is_multiple_of(m));
    debug_assert!(s.start.is_multiple_of(window) && window.is_multiple_of(n));
    // The span's first group starts at column s.start / n * m of every batch column.
    let first_column = s.start / n * m;
    let x: [*const f32; J] =
        std::array::from_fn(|t| x[(t0 + t) * ncols + first_column..].as_ptr().cast());
    let (v, p) = (values[s.start * LANES..].as_ptr(), positions[s.start * LANES..].as_ptr());
    let slots = s.len();
    // SAFETY: the caller runs this only on copies with Isa::NM_LANES (compiled with AVX2
    // and FMA) and for f32 `x`; from `s.start`, `values` and `positions` hold the span's
    // `slots` interleaved slots of eight rows, positions below `m` (the view's validator);
    // the span starts at a window boundary and holds whole groups (windows are multiples
    // of `n`, and so is the row's slot count); column t0 + t of `x` holds `ncols` values,
    // whole groups of `m` since `m` divides `ncols`, and the span's groups lie within it.
    unsafe {
        match (n, m) {
            (1, 4) => nm_lanes_f32::<1, 4, J>(v, p, slots, window, x, totals),
            (2, 4) => nm_lanes_f32::<2, 4, J>(v, p, slots, window, x, totals),
            (1, 8) => nm_lanes_f32::<1, 8, J>(v, p, slots, window, x, totals),
            (2, 8) => nm_lanes_f32::<2, 8, J>(v, p, slots, window, x, totals),
            _ => nm_lanes_f32::<4, 8, J>(v, p, slots, window, x, totals),
        }
    }
}

multiversion! {
    fn nm_lane_rows<T: Scalar, V: Stored<T>>(a: NmView<'_, T, V>, rows: Range<usize>, x: &[T], batch: usize, window: usize, alpha: T, beta: T, columns: &mut [&mut [T]]) => nm_lane_rows_kernel
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::spmm::{NM_PANEL, nm_rows, to_panels};

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

    fn bits(m: &DMatrix<f32>) -> Vec<u32> {
        m.iter().map(|v| v.to_bits()).collect()
    }

    /// Every copy gives the row-major kernel's bits, for every pattern the kernel takes,
    /// row counts with and without a partial vector, batches with and without a partial
    /// tile, rows that span several windows (the batch of 130), `beta` zero or not, and
    /// row ranges that start inside a vector.
    #[test]
    fn every_copy_gives_the_row_major_bits() {
        for (n, m) in [(2usize, 4usize), (1, 4), (4, 8), (2, 8), (1, 8)] {
            let ncols = 40 * m;
            let per_row = ncols / m * n;
            for nrows in [8usize, 13, 37] {
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
