//! The batched N:M kernel on a row-major copy of `X`: `Y <- alpha * A X + beta * Y`
//! for an N:M matrix `A` and a dense `X` of `batch` columns, through `spmm`'s
//! panels, tasks and write-back.
//!
//! N:M rows first expand their positions into columns, then run tiles of their own:
//! every row has the same number of slots, so several rows advance in lockstep with one
//! fused multiply-add per product, in blocks of [`NM_ROW_BLOCK`] rows over L1-sized
//! windows of groups, on a copy of `X` in panels of [`NM_PANEL`] batch columns so that
//! a window is contiguous whatever the batch. On the x86 vector paths, `f32` matrices
//! with groups of 4 or 8 columns take `nm_lanes` instead where it is the faster, which
//! gives the same bits.

use std::ops::Range;

use nalgebra::DMatrix;
use shears_core::Scalar;

use super::isa::{Isa, fma};
use super::nm_lanes;
use super::spmm::spmm;
use super::{NmView, Stored, Units, kernel_path, multiversion};
use crate::product::{Epilogue, Layout};

/// Rows of an N:M matrix processed together: they share their groups' input rows.
const NM_ROW_BLOCK: usize = 32;

/// Batch columns per panel of the N:M kernel's copy of `X` (see `to_panels`): larger
/// batches are walked a panel at a time, each through every window.
pub(super) const NM_PANEL: usize = 128;

/// Bytes of `xt` one window of groups may touch, so a window stays in L1 while every row
/// of a row block reads it.
const NM_WINDOW_BYTES: usize = 32 << 10;

/// Adds one tile of `W` batch columns (from `t0`, in `xt`'s rows of `stride`) of `R`
/// output rows, from equally long runs of their slots, into `out` (row `k`'s outputs
/// start at `offsets[k]`), or with `first`, stores `0 + sum` there: the bits of adding it
/// to a zeroed `out`, without the zeroing.
///
/// Every row of an N:M matrix has the same number of slots, so `R` rows advance in
/// lockstep: each lane of each row's accumulator takes one fused multiply-add per slot,
/// in slot order, and the `R * W` lanes are independent chains. That keeps the FMA units
/// busy with one instruction per product (the CSR tiles, whose rows differ in length,
/// spend three instructions per two products on a summing tree instead). `R` only
/// interleaves rows: a row's result does not depend on it, so copies may pick different
/// `R` for their register counts.
#[inline(always)]
fn nm_tile<P: Isa, T: Scalar, const W: usize, const R: usize>(
    values: [&[T]; R],
    cols: [&[u32]; R],
    xt: &[T],
    stride: usize,
    t0: usize,
    (out, offsets, first): (&mut [T], [usize; R], bool),
) {
    let len = values[0].len();
    let values = values.map(|v| &v[..len]);
    let cols = cols.map(|c| &c[..len]);
    let mut acc = [[T::zero(); W]; R];
    for k in 0..len {
        for r in 0..R {
            let start = cols[r][k] as usize * stride + t0;
            // SAFETY: every column is < ncols (NmView::expand_columns) and t0 + W <= stride
            // (the tiling loop), so start + W <= ncols * stride == xt.len().
            let xs = unsafe { xt.get_unchecked(start..start + W) };
            let v = values[r][k];
            for j in 0..W {
                acc[r][j] = fma::<P, T>(v, xs[j], acc[r][j]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let out = &mut out[offsets[r] + t0..][..W];
        if first {
            for (o, &a) in out.iter_mut().zip(acc) {
                *o = T::zero() + a;
            }
        } else {
            for (o, &a) in out.iter_mut().zip(acc) {
                *o += a;
            }
        }
    }
}

/// One N:M row's run of slots: its values, its columns, and where its outputs start.
type NmRun<'a, T> = (&'a [T], &'a [u32], usize);

/// [`nm_tile`] (storing if `first`) over the columns `tokens` of a panel of `xt` (rows
/// of `stride`): on copies with [`Isa::WIDE_NM_TILES`] tiles of 128 columns for one or
/// two rows (whose accumulators then fill half the registers) and of 64, on copies with
/// [`Isa::ONE_ROW_NM_TILES`] tiles of 64 for one row, then 32, then 8, then at most one
/// each of 4, 2 and 1 (the same bits whatever the width, as for the CSR tiles of `spmm`).
#[inline(always)]
fn nm_row_tiles<P: Isa, T: Scalar, const R: usize>(
    rows: [NmRun<'_, T>; R],
    xt: &[T],
    stride: usize,
    tokens: Range<usize>,
    out: &mut [T],
    first: bool,
) {
    let (values, cols, offsets) = (rows.map(|r| r.0), rows.map(|r| r.1), rows.map(|r| r.2));
    let (mut t0, end) = (tokens.start, tokens.end);
    while P::WIDE_NM_TILES && R <= 2 && t0 + 128 <= end {
        nm_tile::<P, T, 128, R>(values, cols, xt, stride, t0, (out, offsets, first));
        t0 += 128;
    }
    while (P::WIDE_NM_TILES || (P::ONE_ROW_NM_TILES && R == 1)) && t0 + 64 <= end {
        nm_tile::<P, T, 64, R>(values, cols, xt, stride, t0, (out, offsets, first));
        t0 += 64;
    }
    while t0 + 32 <= end {
        nm_tile::<P, T, 32, R>(values, cols, xt, stride, t0, (out, offsets, first));
        t0 += 32;
    }
    while t0 + 8 <= end {
        nm_tile::<P, T, 8, R>(values, cols, xt, stride, t0, (out, offsets, first));
        t0 += 8;
    }
    if t0 + 4 <= end {
        nm_tile::<P, T, 4, R>(values, cols, xt, stride, t0, (out, offsets, first));
        t0 += 4;
    }
    if t0 + 2 <= end {
        nm_tile::<P, T, 2, R>(values, cols, xt, stride, t0, (out, offsets, first));
        t0 += 2;
    }
    if t0 < end {
        nm_tile::<P, T, 1, R>(values, cols, xt, stride, t0, (out, offsets, first));
    }
}

/// `out <- A[rows] X` (row-major, `batch` outputs per row; whatever `out` held is
/// overwritten, the first window of each row storing its sum where the others add).
///
/// N:M rows in blocks of [`NM_ROW_BLOCK`], each walked in windows of whole groups: the
/// rows of a block pick their N of every M inputs from the same M input rows, so a
/// window's rows of `xt` are read from L2 once per block and then from L1, instead of
/// once per output row.
///
/// `xt` is `X` in panels of [`NM_PANEL`] batch columns (`to_panels`). Panels are the
/// outer loop: one panel (`ncols` rows of 512 bytes in `f32`) stays in L2 while every
/// block of rows passes over it, where a whole large batch would be fetched again from
/// L3 for each block. A block's columns are expanded (and narrow values widened) once
/// per panel, a pass over its slots that is small beside the products. Windows hold
/// `window` slots ([`nm_window_slots`] of the whole batch, which `xt` may be panels of).
///
/// Within a window, rows go through [`nm_tile`] together. On the AVX-512 copy a full
/// panel is one tile of 128 columns for two rows at a time (16 accumulators; per slot,
/// one column and one value load for eight vectors of products), and narrower panels
/// take four rows at a time in tiles of 64; the AVX2 copy takes panels of 64 columns or
/// more one row at a time ([`Isa::ONE_ROW_NM_TILES`]); the others take two rows at a
/// time.
#[inline(always)]
pub(super) fn nm_rows_kernel<P: Isa, T: Scalar, V: Stored<T>>(
    a: NmView<'_, T, V>,
    rows: Range<usize>,
    xt: &[T],
    batch: usize,
    window: usize,
    out: &mut [T],
) {
    let per_row = a.groups() * a.n;
    if per_row == 0 || batch == 0 {
        out.fill(T::zero());
        return;
    }
    let ncols = xt.len() / batch;
    let mut cols = vec![0u32; NM_ROW_BLOCK * per_row];
    // A block's values as `T`, unless they are stored as `T` already.
    let mut values = Vec::new();
    let first = rows.start;
    for c0 in (0..batch).step_by(NM_PANEL) {
        // The panel of `xt` holding batch columns c0.. (see `to_panels`).
        let width = NM_PANEL.min(batch - c0);
        let panel = &xt[c0 * ncols..(c0 + width) * ncols];
        for block_start in rows.clone().step_by(NM_ROW_BLOCK) {
            let block = block_start..(block_start + NM_ROW_BLOCK).min(rows.end);
            for (k, r) in block.clone().enumerate() {
                a.expand_columns(r, &mut cols[k * per_row..(k + 1) * per_row]);
            }
            let block_values: &[T] = match (a.row_scales, V::as_compute(a.values)) {
                (None, Some(all)) => &all[block.start * per_row..block.end * per_row],
                _ => {
                    values.clear();
                    values.reserve(NM_ROW_BLOCK * per_row);
                    for r in block.clone() {
                        a.widen_row_into(r, &mut values);
                    }
                    &values
                }
            };
            for w0 in (0..per_row).step_by(window) {
                let (w, first_window) = (w0..(w0 + window).min(per_row), w0 == 0);
                let row = |k: usize| -> NmRun<'_, T> {
                    let r = block.start + k;
                    (
                        &block_values[k * per_row..][w.clone()],
                        &cols[k * per_row..][w.clone()],
                        (r - first) * batch + c0,
                    )
                };
                if P::ONE_ROW_NM_TILES && !P::WIDE_NM_TILES && width >= 64 {
                    for k in 0..block.len() {
                        nm_row_tiles::<P, T, 1>(
                            [row(k)],
                            panel,
                            width,
                            0..width,
                            out,
                            first_window,
                        );
                    }
                    continue;
                }
                let mut k = 0;
                if P::WIDE_NM_TILES && width < 128 {
                    while k + 4 <= block.len() {
                        let rows = std::array::from_fn(|i| row(k + i));
                        nm_row_tiles::<P, T, 4>(rows, panel, width, 0..width, out, first_window);
                        k += 4;
                    }
                }
                while k + 2 <= block.len() {
                    let rows = std::array::from_fn(|i| row(k + i));
                    nm_row_tiles::<P, T, 2>(rows, panel, width, 0..width, out, first_window);
                    k += 2;
                }
                if k < block.len() {
                    nm_row_tiles::<P, T, 1>([row(k)], panel, width, 0..width, out, first_window);
                }
            }
        }
    }
}

/// The slots of an N:M row summed from zero before their sum is added to the row's
/// total, for groups of `m` columns with `n` slots and `batch` columns of `X` of
/// `value_bytes` each: as many whole groups as fit [`NM_WINDOW_BYTES`] of one panel of
/// the batch (at least one). A window of few groups would leave each tile few products
/// to sum per read and write of its outputs. Every N:M batched kernel sums over these
/// windows, so they all give the same bits.
pub(super) fn nm_window_slots(n: usize, m: usize, batch: usize, value_bytes: usize) -> usize {
    let window_groups = NM_WINDOW_BYTES / (m * batch.clamp(1, NM_PANEL) * value_bytes).max(1);
    window_groups.max(1) * n
}

multiversion! {
    pub(super) fn nm_rows<T: Scalar, V: Stored<T>>(a: NmView<'_, T, V>, rows: Range<usize>, xt: &[T], batch: usize, window: usize, out: &mut [T]) => nm_rows_kernel
}

/// An N:M matrix's rows as work units of [`NM_ROW_BLOCK`] rows, so that a parallel task
/// holds whole blocks: rows split finer would each fetch their windows of `X` from L2
/// for a few rows, and every task zeroes and writes back a buffer of its own.
#[derive(Clone, Copy)]
pub(super) struct NmRowBlocks<'a, T, V>(pub(super) NmView<'a, T, V>);

impl<T, V> NmRowBlocks<'_, T, V> {
    pub(super) fn rows(&self, blocks: Range<usize>) -> Range<usize> {
        let nrows = self.0.nrows;
        (blocks.start * NM_ROW_BLOCK).min(nrows)..(blocks.end * NM_ROW_BLOCK).min(nrows)
    }
}

impl<T: Copy + Sync, V: Copy + Sync> Units for NmRowBlocks<'_, T, V> {
    fn units(&self) -> usize {
        self.0.nrows.div_ceil(NM_ROW_BLOCK)
    }
    fn overwrites_output(&self) -> bool {
        true
    }
    fn work_before(&self, u: usize) -> usize {
        self.0.work_before(self.rows_before(u))
    }
    fn rows_before(&self, u: usize) -> usize {
        self.rows(0..u).end
    }
}

pub(crate) fn nm_spmm<T: Scalar, V: Stored<T>>(
    a: NmView<'_, T, V>,
    alpha: T,
    x: &DMatrix<T>,
    beta: T,
    y: &mut DMatrix<T>,
    then: Option<Epilogue<'_, T>>,
    layout: Layout,
) {
    let (path, batch) = (kernel_path(), layout.inputs_and_batch(x).1);
    // The lane kernel reads `X` and writes `Y` by columns; by rows, the row-major kernel
    // copies neither.
    if layout == Layout::COLUMNS && nm_lanes::applies(path, &a, batch) && nm_lanes::runs_here(path)
    {
        return nm_lanes::nm_spmm_lanes(a, alpha, x, beta, y, then);
    }
    nm_spmm_row_major(a, alpha, x, beta, y, then, layout);
}

/// [`nm_spmm`] on the row-major kernel, whatever the matrix and path.
pub(super) fn nm_spmm_row_major<T: Scalar, V: Stored<T>>(
    a: NmView<'_, T, V>,
    alpha: T,
    x: &DMatrix<T>,
    beta: T,
    y: &mut DMatrix<T>,
    then: Option<Epilogue<'_, T>>,
    layout: Layout,
) {
    let (path, batch) = (kernel_path(), layout.inputs_and_batch(x).1);
    // The windows follow from the whole batch, so a task's panels sum as all would.
    let window = nm_window_slots(a.n, a.m, batch, size_of::<T>());
    let blocks = NmRowBlocks(a);
    spmm(blocks, alpha, x, NM_PANEL, beta, y, (then, layout), |range, xt, width, out| {
        nm_rows(path, a, blocks.rows(range), xt, width, window, out)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::KernelPath;
    use crate::kernels::spmm::to_panels;

    /// N:M rows give the portable copy's bits on every copy, whichever number of rows a
    /// copy interleaves (4, 2, 1: blocks of 1 to 11 rows) and whatever the output buffer
    /// held (NaN there, zeros for the portable copy), for every tile width, give each
    /// column the bits it gets alone, and agree with a plain sum.
    #[test]
    fn nm_rows_give_the_portable_bits_for_any_interleave() {
        let (n, m, ncols) = (2usize, 4usize, 37usize);
        let groups = ncols.div_ceil(m);
        for nrows in [1usize, 3, 4, 5, 11, NM_ROW_BLOCK + 5] {
            let per_row = groups * n;
            let positions: Vec<u8> = (0..nrows * per_row)
                .map(|k| {
                    let (g, slot) = ((k % per_row) / n, k % n);
                    let width = m.min(ncols - g * m);
                    ((slot + k / per_row + g) % width) as u8
                })
                .collect();
            let values: Vec<f32> = (0..nrows * per_row).map(|k| (k as f32 * 0.37).sin()).collect();
            let a = NmView {
                nrows,
                ncols,
                n,
                m,
                values: &values,
                positions: &positions,
                row_scales: None,
            };
            for batch in [1, 2, 7, 8, 15, 43, 73, NM_PANEL] {
                let xt: Vec<f32> = (0..ncols * batch).map(|k| (k as f32 * 0.11).cos()).collect();
                let run = |path, held| {
                    let mut out = vec![held; nrows * batch];
                    let window = nm_window_slots(n, m, batch, 4);
                    nm_rows(KernelPath::resolve(path), a, 0..nrows, &xt, batch, window, &mut out);
                    out
                };
                let portable = run(KernelPath::Portable, 0.0);
                for path in [KernelPath::Avx2, KernelPath::Avx512, KernelPath::Neon] {
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&run(path, f32::NAN)),
                        bits(&portable),
                        "{path:?}, {nrows} rows, batch {batch}"
                    );
                }
                // Every tile width gives each column the bits it gets alone, as long as
                // a row fits one window of groups (windows narrow as batches grow, and
                // each window's sums start afresh), as these rows do.
                let window_groups = NM_WINDOW_BYTES / (m * batch * size_of::<f32>());
                assert!(groups <= window_groups, "{groups} groups, windows of {window_groups}");
                for j in 0..batch {
                    let column: Vec<f32> = (0..ncols).map(|c| xt[c * batch + j]).collect();
                    let mut alone = vec![0.0f32; nrows];
                    let portable_path = KernelPath::resolve(KernelPath::Portable);
                    let window = nm_window_slots(n, m, 1, 4);
                    nm_rows(portable_path, a, 0..nrows, &column, 1, window, &mut alone);
                    for (r, v) in alone.iter().enumerate() {
                        assert_eq!(v.to_bits(), portable[r * batch + j].to_bits(), "({r}, {j})");
                    }
                }
                let mut cols = vec![0u32; per_row];
                for r in 0..nrows {
                    a.expand_columns(r, &mut cols);
                    for j in 0..batch {
                        let plain: f32 = (0..per_row)
                            .map(|s| values[r * per_row + s] * xt[cols[s] as usize * batch + j])
                            .sum();
                        assert!((portable[r * batch + j] - plain).abs() < 1e-5, "({r}, {j})");
                    }
                }
            }
        }
    }

    /// Narrow N:M values (int8 with row scales, bf16, f16) give, on every copy and tile
    /// width, the bits of the f32 values they stand for on the portable copy.
    #[test]
    fn narrow_nm_rows_give_the_widened_bits_on_every_copy() {
        fn product<W: Stored<f32>>(
            path: KernelPath,
            a: NmView<'_, f32, W>,
            xt: &[f32],
            batch: usize,
        ) -> Vec<u32> {
            let mut out = vec![0.0f32; a.nrows * batch];
            let window = nm_window_slots(a.n, a.m, batch, 4);
            nm_rows(KernelPath::resolve(path), a, 0..a.nrows, xt, batch, window, &mut out);
            out.iter().map(|v| v.to_bits()).collect()
        }
        fn check<V: Stored<f32>>(narrow: impl Fn(f32) -> V + Copy, scaled: bool) {
            for (n, m, ncols) in [(2, 4, 301), (3, 7, 50)] {
                let fixture =
                    crate::kernels::NarrowNmFixture::new((11, ncols), (n, m), narrow, scaled);
                for batch in [1, 2, 7, 8, 15, 43] {
                    let xt: Vec<f32> =
                        (0..ncols * batch).map(|k| (k as f32 * 0.11).cos()).collect();
                    let want = product(KernelPath::Portable, fixture.widened_view(), &xt, batch);
                    for path in [
                        KernelPath::Portable,
                        KernelPath::Avx2,
                        KernelPath::Avx512,
                        KernelPath::Neon,
                    ] {
                        let got = product(path, fixture.view(), &xt, batch);
                        assert_eq!(got, want, "{n}:{m}, batch {batch}, {path:?}");
                    }
                }
            }
        }
        check::<i8>(|v| v.round_ties_even().clamp(-127.0, 127.0) as i8, true);
        check::<half::bf16>(half::bf16::from_f32, false);
        check::<half::f16>(half::f16::from_f32, false);
    }

    /// N:M rows of batches wider than one panel, their `xt` in panels, equal the plain
    /// sum over the stored weights on every copy, the last panel full or not, their rows
    /// longer than one window, whatever the output buffer held.
    #[test]
    fn nm_rows_past_one_panel_equal_the_plain_sum() {
        // Rows of two blocks, so every block passes over every panel, and of 37 groups,
        // more than two windows at these batches.
        let (nrows, ncols, n, m) = (NM_ROW_BLOCK + 5, 148, 2, 4);
        let (groups, per_row) = (ncols / m, ncols / m * n);
        // Slots at positions {0, 2} or {1, 3} of each group, by row and group.
        let positions: Vec<u8> =
            (0..nrows * per_row).map(|k| ((k % n) * 2 + (k / per_row + k / n) % 2) as u8).collect();
        let values: Vec<f32> =
            (0..nrows * per_row).map(|k| 1.5 + (k as f32 * 0.37).sin()).collect();
        let a =
            NmView { nrows, ncols, n, m, values: &values, positions: &positions, row_scales: None };
        let mut dense = DMatrix::<f64>::zeros(nrows, ncols);
        for (k, (&v, &p)) in values.iter().zip(&positions).enumerate() {
            let (r, g) = (k / per_row, (k % per_row) / n);
            dense[(r, g * m + p as usize)] = f64::from(v);
        }
        assert_eq!(dense.iter().filter(|v| **v != 0.0).count(), nrows * groups * n);
        for batch in [NM_PANEL + 1, 2 * NM_PANEL, 2 * NM_PANEL + 37] {
            let x = DMatrix::from_fn(ncols, batch, |i, j| ((i * 13 + j * 5) as f32 * 0.07).cos());
            let want = &dense * x.map(f64::from);
            // Each sum's rounding is bounded by the sum of its terms' magnitudes.
            let bound = dense.abs() * x.map(|v| f64::from(v).abs());
            let xt = to_panels(&x, NM_PANEL);
            for path in [KernelPath::Portable, KernelPath::Avx2, KernelPath::Avx512] {
                let mut out = vec![f32::NAN; nrows * batch];
                let window = nm_window_slots(n, m, batch, 4);
                assert!(window * 2 < per_row, "{window} slots a window, {per_row} a row");
                let xt = xt.as_slice();
                nm_rows(KernelPath::resolve(path), a, 0..nrows, xt, batch, window, &mut out);
                for (r, j) in (0..nrows).flat_map(|r| (0..batch).map(move |j| (r, j))) {
                    let got = f64::from(out[r * batch + j]);
                    assert!(
                        (got - want[(r, j)]).abs() <= 1e-6 * bound[(r, j)],
                        "{path:?}, batch {batch}: ({r}, {j})"
                    );
                }
            }
        }
    }
}
