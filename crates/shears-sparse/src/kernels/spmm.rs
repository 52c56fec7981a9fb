//! Batched kernels: `Y <- alpha * A X + beta * Y` for a dense `X` of `batch` columns.
//!
//! `X` is first copied row-major in panels of batch columns (`xt`: per panel, one
//! contiguous row per input feature, the panel sized to about L1 for CSR and to L2 for
//! the others, and never narrower than one tile; a large `X` is copied by each parallel
//! task a panel at a time, just before its rows pass over it), so each stored weight
//! multiplies a contiguous slice of `xt` into a register-resident tile of accumulators.
//! CSR's tiles are 32 batch columns, then 8, 4, 2 and 1, with four stored weights summed
//! per accumulator update so consecutive entries do not wait on each other. All rows pass
//! over one panel before any goes on to the next. Each parallel task computes its rows
//! into a row-major buffer of its own and writes them into `Y` while they are still in
//! cache.
//!
//! The N:M kernel that runs on these panels and tasks is in `nm_rows`, the int8 ones in
//! `int8`.

use std::ops::Range;

use nalgebra::DMatrix;
use rayon::prelude::*;
use shears_core::Scalar;

use super::isa::{Isa, fma};
pub(super) use super::scratch::LineAligned;
use super::{
    BsrView, CsrView, SLICE_ROWS, SellView, Split, Stored, Units, kernel_path, multiversion,
    parallel_ranges, partition,
};
use crate::index::SpIndex;
use crate::product::{Epilogue, Layout};

/// Entries combined per accumulator update: four products are summed in a fixed tree
/// (two fused multiply-adds on two products) before one add into the tile, so the
/// accumulator's dependency chain advances once per four stored weights instead of once
/// per weight.
const UNROLL: usize = 4;

/// Adds one tile of `W` batch columns of one output row, from (a run of) the row's
/// values and columns, times the row's scale if it has one, into `out`.
#[inline(always)]
fn tile<P: Isa, T: Scalar, I: SpIndex, const W: usize>(
    values: &[T],
    cols: &[I],
    xt: &[T],
    batch: usize,
    t0: usize,
    scale: Option<T>,
    out: &mut [T],
) {
    let mut acc = [T::zero(); W];
    let full = values.len() / UNROLL * UNROLL;
    let x_row = |i: I| -> &[T] {
        let start = i.index() * batch + t0;
        // SAFETY: every column is < ncols (the format's validator, or NmView::expand_columns)
        // and t0 + W <= batch (the tiling loop), so start + W <= ncols * batch == xt.len().
        unsafe { xt.get_unchecked(start..start + W) }
    };
    for (v, c) in values[..full].chunks_exact(UNROLL).zip(cols[..full].chunks_exact(UNROLL)) {
        let (x0, x1, x2, x3) = (x_row(c[0]), x_row(c[1]), x_row(c[2]), x_row(c[3]));
        for j in 0..W {
            let pair0 = fma::<P, T>(v[0], x0[j], v[1] * x1[j]);
            let pair1 = fma::<P, T>(v[2], x2[j], v[3] * x3[j]);
            acc[j] += pair0 + pair1;
        }
    }
    for (&v, &c) in values[full..].iter().zip(&cols[full..]) {
        let xs = x_row(c);
        for j in 0..W {
            acc[j] = fma::<P, T>(v, xs[j], acc[j]);
        }
    }
    match scale {
        Some(s) => out[t0..t0 + W].iter_mut().zip(acc).for_each(|(o, a)| *o += a * s),
        None => out[t0..t0 + W].iter_mut().zip(acc).for_each(|(o, a)| *o += a),
    }
}

/// Adds one output row (or a run of its entries) into `out`: tiles of 32 batch columns,
/// then 8, then at most one each of 4, 2 and 1. Each output's sum runs over the entries
/// in the same order whatever its tile's width, so the widths change speed, never bits.
#[inline(always)]
fn row_tiles<P: Isa, T: Scalar, I: SpIndex>(
    values: &[T],
    cols: &[I],
    xt: &[T],
    batch: usize,
    scale: Option<T>,
    out: &mut [T],
) {
    let mut t0 = 0;
    while t0 + 32 <= batch {
        tile::<P, T, I, 32>(values, cols, xt, batch, t0, scale, out);
        t0 += 32;
    }
    while t0 + 8 <= batch {
        tile::<P, T, I, 8>(values, cols, xt, batch, t0, scale, out);
        t0 += 8;
    }
    if t0 + 4 <= batch {
        tile::<P, T, I, 4>(values, cols, xt, batch, t0, scale, out);
        t0 += 4;
    }
    if t0 + 2 <= batch {
        tile::<P, T, I, 2>(values, cols, xt, batch, t0, scale, out);
        t0 += 2;
    }
    if t0 < batch {
        tile::<P, T, I, 1>(values, cols, xt, batch, t0, scale, out);
    }
}

/// CSR rows over `xt` in panels of `panel` batch columns (see [`panels`]): every row
/// passes over one panel of `X` before any goes on to the next, so the panel is read
/// from cache, where rows over the whole of a large batch would each fetch all of `X`
/// again from L3 or memory.
#[inline(always)]
fn csr_rows_kernel<P: Isa, T: Scalar, V: Stored<T>, I: SpIndex>(
    a: CsrView<'_, T, I, V>,
    rows: Range<usize>,
    xt: &[T],
    batch: usize,
    panel: usize,
    out: &mut [T],
) {
    // Narrow values are widened once per row and panel, not once per tile of the batch.
    let mut widened: Vec<T> = Vec::new();
    for (panel, c0, width) in panels(xt, batch, panel) {
        for (k, r) in rows.clone().enumerate() {
            let range = a.indptr[r]..a.indptr[r + 1];
            let values = V::as_compute_in::<P>(&a.values[range.clone()], &mut widened);
            row_tiles::<P, T, I>(
                values,
                &a.indices[range],
                panel,
                width,
                a.row_scales.map(|s| s[r]),
                &mut out[k * batch + c0..][..width],
            );
        }
    }
}

multiversion! {
    fn csr_rows<T: Scalar, V: Stored<T>, I: SpIndex>(a: CsrView<'_, T, I, V>, rows: Range<usize>, xt: &[T], batch: usize, panel: usize, out: &mut [T]) => csr_rows_kernel
}

/// Elements of `X` from which its copy into row-major order is split across threads: the
/// copies in and out of row-major order are a noticeable share of a batched product's
/// time, and on several threads the copy in should not run on one. The inputs of a layer
/// of 384 columns at 128 tokens (a transformer's sentence) are split.
pub(super) const PARALLEL_COPY: usize = 3 << 14;

/// Rows of `xt` per parallel task of the copy. (Both apply to an `X` copied whole before
/// the product: a larger one is copied inside the product's own tasks.)
const COPY_TASK: usize = 256;

/// The tiles the transposes between the column-major `X` and `Y` and the row-major
/// buffers move at a time: rows (along a column of `X` or `Y`: 64 bytes of `f32`) by
/// columns. A tile is read whole and written whole, and each pass over a band of rows
/// touches one or two cache lines per column on the column-major side. On the x86 vector
/// paths `f32` moves in 8 x 8 blocks transposed in registers instead (`Isa::TRANSPOSES8`):
/// left to itself, the compiler moves a tile's values one at a time through the stack.
const TILE_ROWS: usize = 16;
const TILE_COLUMNS: usize = 8;

/// Copies batch columns `c0..` of `X` given by rows (`source`, `batch x n` column-major:
/// each input's values over the batch are one run) into `panel`, `n` row-major rows of
/// as many values as `panel` holds per input.
fn copy_rows_in<T: Scalar>(source: &[T], batch: usize, c0: usize, n: usize, panel: &mut [T]) {
    let Some(width) = panel.len().checked_div(n) else { return };
    if width == 0 {
        return;
    }
    for (i, row) in panel.chunks_exact_mut(width).enumerate() {
        copy_run(&source[i * batch + c0..][..width], row);
    }
}

/// `to.copy_from_slice(from)` for the short runs of the copies between orientations, a
/// line of `f32` at a time, which the compiler moves in registers (a call to `memcpy`
/// per run would cost as much as the run).
#[inline(always)]
fn copy_run<T: Copy>(from: &[T], to: &mut [T]) {
    const RUN: usize = 16;
    let mut to_runs = to.chunks_exact_mut(RUN);
    let mut from_runs = from.chunks_exact(RUN);
    for (to, from) in (&mut to_runs).zip(&mut from_runs) {
        let from: &[T; RUN] = from.try_into().unwrap_or_else(|_| unreachable!());
        let to: &mut [T; RUN] = to.try_into().unwrap_or_else(|_| unreachable!());
        *to = *from;
    }
    for (to, from) in to_runs.into_remainder().iter_mut().zip(from_runs.remainder()) {
        *to = *from;
    }
}

/// [`to_panels`] of an `X` given by rows (`batch x n`): each panel's rows are runs of
/// `X`'s columns, copied as they are.
fn rows_to_panels<T: Scalar>(x: &DMatrix<T>, width: usize) -> LineAligned<T> {
    let (b, n) = x.shape();
    // Every element is written by the copies below.
    let mut aligned = LineAligned::for_overwrite(n * b);
    let xt = aligned.as_mut_slice();
    if xt.is_empty() {
        return aligned;
    }
    let source = x.as_slice();
    if copies_in_parallel(n * b) {
        let panels = xt.par_chunks_mut(n * width).enumerate();
        panels.for_each(|(p, panel)| copy_rows_in(source, b, p * width, n, panel));
    } else {
        let panels = xt.chunks_mut(n * width).enumerate();
        panels.for_each(|(p, panel)| copy_rows_in(source, b, p * width, n, panel));
    }
    aligned
}

fn copies_in_parallel(len: usize) -> bool {
    len >= PARALLEL_COPY && rayon::current_num_threads() > 1
}

/// Bytes of `X` in one panel of the sliced-ELLPACK and block kernels' copy: a panel
/// stays in L2 while every row of a task passes over it. Rows over the whole of a large
/// batch would each stream all of `X` from L3 or memory.
const PANEL_BYTES: usize = 256 << 10;

/// Bytes of `X` in one panel of the CSR kernel's copy, about an L1 data cache (48 KiB on
/// recent Intel cores, 32 KiB on AMD's up to Zen 4; a panel is never narrower than one
/// tile of 32 columns, so past 384 `f32` input features it outgrows L1). Each CSR row
/// reads a scattered subset of the panel's rows, and the rows after it read them again:
/// in an L1-sized panel most of those reads hit L1, in an L2-sized one most come from
/// L2, which bounds the kernel at the batches transformers run (a few hundred tokens
/// over a few hundred input features). Sliced ELLPACK keeps L2-sized panels: its batched
/// product repacks a task's windows as CSR, and a parallel product over more panels has
/// more tasks repeat that packing.
const CSR_PANEL_BYTES: usize = 48 << 10;

/// Batch columns per panel of the sliced-ELLPACK and block kernels' copy of `X`: see
/// [`whole_tiles_within`] and [`PANEL_BYTES`].
pub(super) fn panel_width(ncols: usize, value_bytes: usize) -> usize {
    whole_tiles_within(PANEL_BYTES, ncols, value_bytes)
}

/// Batch columns per panel of the CSR kernel's copy of `X`: see [`whole_tiles_within`]
/// and [`CSR_PANEL_BYTES`].
pub(super) fn csr_panel_width(ncols: usize, value_bytes: usize) -> usize {
    whole_tiles_within(CSR_PANEL_BYTES, ncols, value_bytes)
}

/// Batch columns per panel of a copy of `X` (`ncols` rows of `value_bytes` values): as
/// many whole tiles of 32 as fit `bytes`, from one tile to four. It depends on the shape
/// alone, and a tile's sums do not depend on where its panel starts, so neither do the
/// outputs' bits.
fn whole_tiles_within(bytes: usize, ncols: usize, value_bytes: usize) -> usize {
    let fit = bytes / (ncols * value_bytes).max(1);
    (fit / 32 * 32).clamp(32, 128)
}

/// The panels of `xt`, `X` of `batch` columns copied in panels of `width` columns: each
/// panel (row-major rows of its width), its first batch column and its width.
fn panels<T: Scalar>(
    xt: &[T],
    batch: usize,
    width: usize,
) -> impl Iterator<Item = (&[T], usize, usize)> {
    let ncols = xt.len().checked_div(batch).unwrap_or(0);
    (0..batch).step_by(width.max(1)).map(move |c0| {
        let w = width.min(batch - c0);
        (&xt[c0 * ncols..(c0 + w) * ncols], c0, w)
    })
}

/// `X` (ncols x batch, column-major) as panels of `width` batch columns (the last may be
/// narrower), one after the other, each `ncols` row-major rows of its width. One panel
/// of a large batch is then a contiguous window of memory: whole rows of `X` would put
/// the values a window of input rows reads a power of two apart, into the same L1 sets.
pub(super) fn to_panels<T: Scalar>(x: &DMatrix<T>, width: usize) -> LineAligned<T> {
    let (n, b) = x.shape();
    // Every element is written by the copy below.
    let mut aligned = LineAligned::for_overwrite(n * b);
    let xt = aligned.as_mut_slice();
    if xt.is_empty() {
        return aligned;
    }
    // Column-major, a panel's columns are one contiguous run of `X`, as its rows are of
    // `xt`.
    let (source, panel_len) = (x.as_slice(), n * width);
    // Rows first_row.. of the panel copied from `columns` (`n` values each).
    let path = kernel_path();
    let fill = |columns: &[T], first_row: usize, rows: &mut [T]| {
        transpose_in(path, columns, n, first_row, rows);
    };
    if copies_in_parallel(n * b) {
        let panels = source.par_chunks(panel_len).zip(xt.par_chunks_mut(panel_len));
        panels.for_each(|(columns, panel)| {
            panel
                .par_chunks_mut(COPY_TASK * (columns.len() / n))
                .enumerate()
                .for_each(|(task, rows)| fill(columns, task * COPY_TASK, rows));
        });
    } else {
        let panels = source.chunks(panel_len).zip(xt.chunks_mut(panel_len));
        panels.for_each(|(columns, panel)| fill(columns, 0, panel));
    }
    aligned
}

/// Copies rows `first_row..` of `columns` (column-major, `n` values each) into `rows`,
/// row-major rows of as many values as there are columns, as many rows as `rows` holds.
#[inline(always)]
fn transpose_in_kernel<P: Isa, T: Scalar>(
    columns: &[T],
    n: usize,
    first_row: usize,
    rows: &mut [T],
) {
    let w = columns.len().checked_div(n).unwrap_or(0);
    if w == 0 {
        return;
    }
    let height = rows.len() / w;
    let within = first_row.checked_add(height).is_some_and(|end| end <= n);
    assert!(within && columns.len() == w * n, "transpose_in: out of bounds");
    let column = |j: usize, i: usize| &columns[j * n + first_row + i..];
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if P::TRANSPOSES8 && super::isa::is::<T, f32>() {
        let (src, dst) = (columns.as_ptr().cast::<f32>(), rows.as_mut_ptr().cast::<f32>());
        while i + 8 <= height {
            for j in (0..w - w % 8).step_by(8) {
                // SAFETY: T is f32; the copy was compiled with AVX (P::TRANSPOSES8). The
                // block reads columns[(j + jj) * n + first_row + i + ii] for jj, ii < 8,
                // below w * n as first_row + i + 8 <= first_row + height <= n (asserted),
                // and writes rows[(i + ii) * w + j + jj], below height * w.
                unsafe {
                    super::isa::x86::transpose8_f32(
                        src.add(j * n + first_row + i),
                        n,
                        dst.add(i * w + j),
                        w,
                    );
                }
            }
            for j in w - w % 8..w {
                for (ii, &v) in column(j, i)[..8].iter().enumerate() {
                    rows[(i + ii) * w + j] = v;
                }
            }
            i += 8;
        }
    }
    while i + TILE_ROWS <= height {
        let mut j = 0;
        while j + TILE_COLUMNS <= w {
            let mut tile = [[T::zero(); TILE_ROWS]; TILE_COLUMNS];
            for (jj, tile_column) in tile.iter_mut().enumerate() {
                tile_column.copy_from_slice(&column(j + jj, i)[..TILE_ROWS]);
            }
            for ii in 0..TILE_ROWS {
                let row = &mut rows[(i + ii) * w + j..][..TILE_COLUMNS];
                for (v, tile_column) in row.iter_mut().zip(&tile) {
                    *v = tile_column[ii];
                }
            }
            j += TILE_COLUMNS;
        }
        for j in j..w {
            for (ii, &v) in column(j, i)[..TILE_ROWS].iter().enumerate() {
                rows[(i + ii) * w + j] = v;
            }
        }
        i += TILE_ROWS;
    }
    for i in i..height {
        for (j, v) in rows[i * w..][..w].iter_mut().enumerate() {
            *v = column(j, i)[0];
        }
    }
}

multiversion! {
    fn transpose_in<T: Scalar>(columns: &[T], n: usize, first_row: usize, rows: &mut [T]) => transpose_in_kernel
}

/// `Y <- alpha Z + beta Y` over a range of rows: `z` holds the range's rows of the
/// product row-major, and `columns[j]` is column `j` of `Y` cut to the range. Each value
/// is [`combine`](super::combine)'s (keep the two equal): `Y` is not read where `beta`
/// is zero.
fn write_rows<T: Scalar>(alpha: T, z: &[T], beta: T, columns: &mut [&mut [T]]) {
    transpose_out(kernel_path(), alpha, z, beta, columns);
}

/// [`write_rows`] of `z`'s `width` batch columns into a task's block of `Y`
/// ([`for_each_block`]) from its batch column `first` on: `pieces` are the block's
/// columns of `Y` cut to its rows, or, for a `Y` by rows (`y_rows`), its rows of outputs
/// cut to its batch columns, which take `z`'s rows as they are.
fn write_block<T: Scalar>(
    (alpha, z, beta): (T, &[T], T),
    pieces: &mut [&mut [T]],
    y_rows: bool,
    first: usize,
    width: usize,
) {
    if !y_rows {
        return write_rows(alpha, z, beta, &mut pieces[first..first + width]);
    }
    // `combine`'s forms, chosen once per call: with `alpha` one and `beta` zero each
    // value is the product's as it is.
    let (one, zero) = (alpha == T::one(), beta == T::zero());
    for (piece, z) in pieces.iter_mut().zip(z.chunks_exact(width.max(1))) {
        let piece = &mut piece[first..first + width];
        match (one, zero) {
            (true, true) => copy_run(z, piece),
            (_, true) => piece.iter_mut().zip(z).for_each(|(y, &v)| *y = alpha * v),
            _ => piece.iter_mut().zip(z).for_each(|(y, &v)| *y = alpha * v + beta * *y),
        }
    }
}

/// The output rows of a task's block of `Y` ([`for_each_block`]'s `pieces`).
fn block_rows<T>(pieces: &[&mut [T]], y_rows: bool) -> usize {
    if y_rows { pieces.len() } else { pieces.first().map_or(0, |p| p.len()) }
}

/// Sets each `columns[j][i]` to `alpha * z[i * b + j] + beta * columns[j][i]`, `z` being
/// row-major rows of `b = columns.len()` values: [`combine`](super::combine)'s two
/// forms, chosen once per call for the scalar steps and once per 8 x 8 block on the x86
/// vector paths (the same test, the same roundings).
#[inline(always)]
fn transpose_out_kernel<P: Isa, T: Scalar>(alpha: T, z: &[T], beta: T, columns: &mut [&mut [T]]) {
    if beta == T::zero() {
        transpose_out_with::<P, T>(alpha, z, beta, columns, |z, _| alpha * z);
    } else {
        transpose_out_with::<P, T>(alpha, z, beta, columns, |z, y| alpha * z + beta * y);
    }
}

/// [`transpose_out_kernel`] with its form of `combine` chosen.
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables, reason = "x86 blocks only"))]
fn transpose_out_with<P: Isa, T: Scalar>(
    alpha: T,
    z: &[T],
    beta: T,
    columns: &mut [&mut [T]],
    combine: impl Fn(T, T) -> T,
) {
    let b = columns.len();
    if b == 0 {
        return;
    }
    let height = z.len() / b;
    assert!(columns.iter().all(|c| c.len() >= height), "transpose_out: out of bounds");
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if P::TRANSPOSES8 && super::isa::is::<T, f32>() {
        let (alpha, beta) = (alpha.as_f64() as f32, beta.as_f64() as f32);
        while i + 8 <= height {
            for j in (0..b - b % 8).step_by(8) {
                let y = std::array::from_fn(|jj| columns[j + jj][i..].as_mut_ptr().cast::<f32>());
                // SAFETY: T is f32; the copy was compiled with AVX (P::TRANSPOSES8). The
                // block reads z[(i + ii) * b + j + jj] for ii, jj < 8, below height * b,
                // and reads and writes columns[j + jj][i + ii], every column holding at
                // least height values (asserted).
                unsafe {
                    super::isa::x86::transpose8_combine_f32(
                        alpha,
                        z[i * b + j..].as_ptr().cast::<f32>(),
                        b,
                        beta,
                        y,
                    );
                }
            }
            for (j, column) in columns.iter_mut().enumerate().skip(b - b % 8) {
                for (ii, y) in column[i..i + 8].iter_mut().enumerate() {
                    *y = combine(z[(i + ii) * b + j], *y);
                }
            }
            i += 8;
        }
    }
    while i + TILE_ROWS <= height {
        let mut j = 0;
        while j + TILE_COLUMNS <= b {
            let mut tile = [[T::zero(); TILE_COLUMNS]; TILE_ROWS];
            for (ii, tile_row) in tile.iter_mut().enumerate() {
                tile_row.copy_from_slice(&z[(i + ii) * b + j..][..TILE_COLUMNS]);
            }
            for (jj, column) in columns[j..j + TILE_COLUMNS].iter_mut().enumerate() {
                for (y, tile_row) in column[i..i + TILE_ROWS].iter_mut().zip(&tile) {
                    *y = combine(tile_row[jj], *y);
                }
            }
            j += TILE_COLUMNS;
        }
        for (j, column) in columns.iter_mut().enumerate().skip(j) {
            for (ii, y) in column[i..i + TILE_ROWS].iter_mut().enumerate() {
                *y = combine(z[(i + ii) * b + j], *y);
            }
        }
        i += TILE_ROWS;
    }
    for i in i..height {
        for (j, column) in columns.iter_mut().enumerate() {
            column[i] = combine(z[i * b + j], column[i]);
        }
    }
}

multiversion! {
    fn transpose_out<T: Scalar>(alpha: T, z: &[T], beta: T, columns: &mut [&mut [T]]) => transpose_out_kernel
}

/// One parallel task of a batched product: its work units, the output rows they make,
/// its batch columns, and each of those columns of `Y` cut to its rows.
struct Task<'y, T> {
    units: Range<usize>,
    rows: Range<usize>,
    batch_columns: Range<usize>,
    columns: Vec<&'y mut [T]>,
}

/// Bytes of `X` from which [`spmm`] copies it into panels inside each task, a panel at a
/// time, rather than whole before the product: a threshold measured on MiniLM's shapes
/// (384 and 1536 inputs, 32 to 4096 tokens). A whole copy of a large `X` goes out to
/// memory and is read back, where a task's panel stays in cache from its copy to the
/// product; for a smaller `X` the whole copy measured no slower.
const COPY_PER_TASK_BYTES: usize = 2 << 20;

/// Runs `units_of(range, panels, width, z)` over blocks of `Y` ([`for_each_block`]):
/// `panels` are `X`'s batch columns of the block copied row-major in panels of `panel`
/// columns, `width` batch columns in all, and `z` a zeroed row-major buffer for the
/// block's rows at those columns (before `alpha` and `beta`), which the task then
/// writes into `Y`. Each task copies its own panels, a panel at a time, and `units_of`
/// is called once per panel with a `z` of that panel alone, its results written before
/// the next panel is copied:
/// - on one thread, or with enough panels that no two of the [`Split::Fine`] tasks
///   share one, for an `X` of [`COPY_PER_TASK_BYTES`] or more (a smaller one is copied
///   whole first, [`spmm_copied_whole`]);
/// - with fewer panels (one, or a multiple of the threads), for an `X` below
///   [`COPY_PER_TASK_BYTES`], in one task per thread ([`Split::PerThread`]): each
///   thread copies the panels it needs once, inside the product's one parallel region,
///   where a whole copy first is a parallel region of its own whose halves the tasks
///   then fetch from each other's cores. A larger `X`, or panels that one task per
///   thread would share unevenly, are copied whole first, once.
///
/// So nothing `units_of` derives from `width` may change the bits: a window or block
/// size must follow from the whole batch, as `nm_spmm`'s does.
#[expect(clippy::too_many_arguments, reason = "the BLAS form's operands and the kernel")]
pub(super) fn spmm<T: Scalar, U: Units>(
    a: U,
    alpha: T,
    x: &DMatrix<T>,
    panel: usize,
    beta: T,
    y: &mut DMatrix<T>,
    (then, layout): (Option<Epilogue<'_, T>>, Layout),
    units_of: impl Fn(Range<usize>, &[T], usize, &mut [T]) + Sync,
) {
    // Tasks split a batch of fewer panels than ranges of work by rows, and each copies
    // the panels it needs.
    let threads = rayon::current_num_threads();
    let (ncols, batch) = layout.inputs_and_batch(x);
    let panels = batch.div_ceil(panel.max(1));
    let whole_panels = threads <= 1 || panels >= threads * super::PARTS_PER_THREAD;
    let large = size_of_val(x.as_slice()) >= COPY_PER_TASK_BYTES;
    let split = match (whole_panels, large) {
        (true, true) => Split::Fine,
        // One task per thread splits several panels between the threads, evenly only
        // if they are a multiple of the threads (three on two: one and two).
        (false, false) if panels == 1 || panels.is_multiple_of(threads) => Split::PerThread,
        _ => return spmm_copied_whole(a, alpha, x, panel, beta, y, (then, layout), units_of),
    };
    if y.is_empty() {
        return;
    }
    let (path, source, y_rows) = (kernel_path(), x.as_slice(), layout.y_rows());
    for_each_block(a, y, y_rows, panel, split, then, |units, batch_columns, pieces| {
        let (rows, widest) = (block_rows(pieces, y_rows), panel.min(batch_columns.len()));
        // Fully written by each panel's copy before it is read.
        let mut xt = LineAligned::for_overwrite(ncols * widest);
        let mut z = output_buffer(&a, rows * widest);
        for (k, c0) in batch_columns.clone().step_by(panel).enumerate() {
            let width = panel.min(batch_columns.end - c0);
            let xt = &mut xt.as_mut_slice()[..ncols * width];
            if layout.x_rows() {
                copy_rows_in(source, batch, c0, ncols, xt);
            } else {
                transpose_in(path, &source[c0 * ncols..(c0 + width) * ncols], ncols, 0, xt);
            }
            let z = &mut z.as_mut_slice()[..rows * width];
            if k > 0 && !a.overwrites_output() {
                z.fill(T::zero());
            }
            units_of(units.clone(), xt, width, z);
            let first = c0 - batch_columns.start;
            write_block((alpha, z, beta), pieces, y_rows, first, width);
        }
    });
}

/// [`spmm`] with `X` copied whole into panels ([`to_panels`]) before the product, for
/// units that set up once per task what they run over every panel (sliced ELLPACK
/// repacks its windows as CSR at each call).
#[expect(clippy::too_many_arguments, reason = "the BLAS form's operands and the kernel")]
fn spmm_copied_whole<T: Scalar, U: Units>(
    a: U,
    alpha: T,
    x: &DMatrix<T>,
    panel: usize,
    beta: T,
    y: &mut DMatrix<T>,
    (then, layout): (Option<Epilogue<'_, T>>, Layout),
    units_of: impl Fn(Range<usize>, &[T], usize, &mut [T]) + Sync,
) {
    let ncols = layout.inputs_and_batch(x).0;
    let prepare = |x: &DMatrix<T>| {
        if layout.x_rows() { rows_to_panels(x, panel) } else { to_panels(x, panel) }
    };
    let then = (then, layout);
    spmm_prepared(a, alpha, x, prepare, panel, beta, y, then, |units, xt, batch_columns, z| {
        let xt = &xt.as_slice()[batch_columns.start * ncols..batch_columns.end * ncols];
        units_of(units, xt, batch_columns.len(), z);
    });
}

/// Prepares `X` with `prepare` (copied into panels, or quantized too), then runs
/// `units_of(range, prepared, batch_columns, z)` over blocks of `Y` of whole panels of
/// `panel` batch columns ([`for_each_block`]): `z` is a zeroed row-major buffer of the
/// task's own for the range's rows of the product at those batch columns, before
/// `alpha` and `beta`, which the same task then writes into its block of `Y` while it
/// is still in cache: one parallel region for the product and its write-back.
#[expect(clippy::too_many_arguments, reason = "the BLAS form's operands and the kernel")]
pub(super) fn spmm_prepared<T: Scalar, U: Units, X: Sync>(
    a: U,
    alpha: T,
    x: &DMatrix<T>,
    prepare: impl FnOnce(&DMatrix<T>) -> X,
    panel: usize,
    beta: T,
    y: &mut DMatrix<T>,
    (then, layout): (Option<Epilogue<'_, T>>, Layout),
    units_of: impl Fn(Range<usize>, &X, Range<usize>, &mut [T]) + Sync,
) {
    if y.is_empty() {
        return;
    }
    let xt = prepare(x);
    let y_rows = layout.y_rows();
    for_each_block(a, y, y_rows, panel, Split::Fine, then, |units, batch_columns, pieces| {
        let width = batch_columns.len();
        let mut z = output_buffer(&a, block_rows(pieces, y_rows) * width);
        units_of(units, &xt, batch_columns, z.as_mut_slice());
        write_block((alpha, z.as_slice(), beta), pieces, y_rows, 0, width);
    });
}

/// A task's row-major buffer of `len` outputs for `a`'s kernel: zeroed, unless the kernel
/// overwrites it ([`Units::overwrites_output`]).
fn output_buffer<T: Scalar>(a: &impl Units, len: usize) -> LineAligned<T> {
    if a.overwrites_output() { LineAligned::for_overwrite(len) } else { LineAligned::zeroed(len) }
}

/// Runs `run(units, batch_columns, columns)` over blocks of `Y` on rayon's threads (or
/// as one call, see `parallel_ranges`): ranges of `a`'s work units by ranges of batch
/// columns in whole panels of `panel` columns, `columns` being the block's columns of
/// `Y` cut to its rows. Each task writes its own block of `Y`. A batch of one panel is
/// split by rows alone; a wider one by panels first, so that no task passes over the
/// whole of a large `X` for a few rows, which would fetch `X` from memory once per
/// task. Nothing runs if `Y` is empty. After `run`, the same task calls `then`, if any,
/// on each of its block's columns ([`Epilogue`]).
///
/// With `y_rows`, `Y` holds the product's outputs by rows (`batch x nrows`), and
/// `columns` are the block's rows of outputs cut to its batch columns instead (one per
/// output row), as are the pieces `then` is called on.
pub(super) fn for_each_block<T: Scalar, U: Units>(
    a: U,
    y: &mut DMatrix<T>,
    y_rows: bool,
    panel: usize,
    split: Split,
    then: Option<Epilogue<'_, T>>,
    run: impl Fn(Range<usize>, Range<usize>, &mut [&mut [T]]) + Sync,
) {
    let nrows = if y_rows { y.ncols() } else { y.nrows() };
    let y_of = (nrows, y.as_mut_slice(), y_rows);
    for_each_block_of(a, y_of, panel, split, then, run);
}

/// [`for_each_block`] for `Y` given as its entries (`y`, column-major), with `nrows`
/// outputs per item of the batch, by rows if `y_rows`.
pub(super) fn for_each_block_of<T: Send, U: Units>(
    a: U,
    (nrows, y, y_rows): (usize, &mut [T], bool),
    panel: usize,
    split: Split,
    then: Option<Epilogue<'_, T>>,
    run: impl Fn(Range<usize>, Range<usize>, &mut [&mut [T]]) + Sync,
) {
    let batch = y.len().checked_div(nrows).unwrap_or(0);
    if nrows == 0 || batch == 0 {
        return;
    }
    let (units, panels) = (a.units(), batch.div_ceil(panel));
    let work_before = |u| a.work_before(u) * batch;
    let (unit_ranges, panel_ranges): (Vec<Range<usize>>, Vec<Range<usize>>) =
        match parallel_ranges(units, work_before, split) {
            None => (std::iter::once(0..units).collect(), std::iter::once(0..panels).collect()),
            Some(ranges) if panels == 1 => (ranges, std::iter::once(0..1).collect()),
            Some(ranges) => {
                let panel_parts = panels.min(ranges.len());
                let unit_parts = ranges.len() / panel_parts;
                let panel_ranges = (0..panel_parts)
                    .map(|p| panels * p / panel_parts..panels * (p + 1) / panel_parts)
                    .collect();
                (partition(units, unit_parts, work_before), panel_ranges)
            }
        };
    let mut tasks: Vec<Task<'_, T>> = Vec::with_capacity(unit_ranges.len() * panel_ranges.len());
    for range in &panel_ranges {
        let batch_columns = range.start * panel..(range.end * panel).min(batch);
        for units in &unit_ranges {
            let rows = a.rows_before(units.start)..a.rows_before(units.end);
            let pieces = if y_rows { rows.len() } else { batch_columns.len() };
            let columns = Vec::with_capacity(pieces);
            tasks.push(Task {
                units: units.clone(),
                rows,
                batch_columns: batch_columns.clone(),
                columns,
            });
        }
    }
    // Tasks are grouped by batch columns, each group's in row order.
    let mut group = tasks.chunk_by_mut(|t, u| t.batch_columns == u.batch_columns);
    if y_rows {
        // Each output's row of `Y` is cut at the groups' batch columns, in order, and
        // each cut goes to the group's task whose rows hold the output.
        let mut groups: Vec<(&mut [Task<'_, T>], usize)> = group.map(|g| (g, 0)).collect();
        for (r, row) in y.chunks_exact_mut(batch).enumerate() {
            let mut rest = row;
            for (tasks, at) in &mut groups {
                while *at + 1 < tasks.len() && !tasks[*at].rows.contains(&r) {
                    *at += 1;
                }
                let task = &mut tasks[*at];
                let (piece, tail) = rest.split_at_mut(task.batch_columns.len());
                task.columns.push(piece);
                rest = tail;
            }
        }
    } else {
        let mut current = group.next();
        for (j, column) in y.chunks_exact_mut(nrows).enumerate() {
            while current.as_ref().is_some_and(|g| !g[0].batch_columns.contains(&j)) {
                current = group.next();
            }
            let Some(tasks) = current.as_mut() else { break };
            let mut rest = column;
            for task in tasks.iter_mut() {
                let (piece, tail) = rest.split_at_mut(task.rows.len());
                task.columns.push(piece);
                rest = tail;
            }
        }
    }
    let run = |mut task: Task<'_, T>| {
        run(task.units, task.batch_columns.clone(), &mut task.columns);
        if let Some(then) = then {
            if y_rows {
                for (r, piece) in task.rows.zip(task.columns) {
                    then(r, task.batch_columns.start, piece);
                }
            } else {
                for (j, piece) in task.batch_columns.zip(task.columns) {
                    then(j, task.rows.start, piece);
                }
            }
        }
    };
    if tasks.len() == 1 {
        tasks.into_iter().for_each(run);
    } else {
        tasks.into_par_iter().for_each(run);
    }
}

pub(crate) fn csr_spmm<T: Scalar, V: Stored<T>, I: SpIndex>(
    a: CsrView<'_, T, I, V>,
    alpha: T,
    x: &DMatrix<T>,
    beta: T,
    y: &mut DMatrix<T>,
    then: Option<Epilogue<'_, T>>,
    layout: Layout,
) {
    let path = kernel_path();
    let panel = csr_panel_width(layout.inputs_and_batch(x).0, size_of::<T>());
    spmm(a, alpha, x, panel, beta, y, (then, layout), |range, xt, width, out| {
        csr_rows(path, a, range, xt, width, panel, out)
    });
}

#[inline(always)]
fn bsr_rows_kernel<P: Isa, T: Scalar, V: Stored<T>>(
    a: BsrView<'_, T, V>,
    block_rows: Range<usize>,
    xt: &[T],
    batch: usize,
    out: &mut [T],
) {
    let (br, bc) = (a.br, a.bc);
    let first_row = block_rows.start * br;
    // Narrow values are widened a block at a time, eight per step.
    let mut widened: Vec<T> = Vec::new();
    for (panel, c0, width) in panels(xt, batch, panel_width(a.ncols, size_of::<T>())) {
        for i in block_rows.clone() {
            let r0 = i * br;
            let height = br.min(a.nrows - r0);
            for k in a.indptr[i]..a.indptr[i + 1] {
                let col0 = a.block_cols[k] as usize * bc;
                let block_width = bc.min(a.ncols - col0);
                let block =
                    V::as_compute_in::<P>(&a.values[k * br * bc..][..br * bc], &mut widened);
                for rr in 0..height {
                    let o = &mut out[(r0 - first_row + rr) * batch + c0..][..width];
                    for cc in 0..block_width {
                        let w = block[rr * bc + cc];
                        let xs = &panel[(col0 + cc) * width..][..width];
                        for (ov, &xv) in o.iter_mut().zip(xs) {
                            *ov += w * xv;
                        }
                    }
                }
            }
        }
    }
    if let Some(scales) = a.row_scales {
        for i in block_rows {
            let r0 = i * br;
            for rr in 0..br.min(a.nrows - r0) {
                let o = &mut out[(r0 - first_row + rr) * batch..][..batch];
                o.iter_mut().for_each(|v| *v *= scales[r0 + rr]);
            }
        }
    }
}

multiversion! {
    fn bsr_rows<T: Scalar, V: Stored<T>>(a: BsrView<'_, T, V>, block_rows: Range<usize>, xt: &[T], batch: usize, out: &mut [T]) => bsr_rows_kernel
}

pub(crate) fn bsr_spmm<T: Scalar, V: Stored<T>>(
    a: BsrView<'_, T, V>,
    alpha: T,
    x: &DMatrix<T>,
    beta: T,
    y: &mut DMatrix<T>,
    then: Option<Epilogue<'_, T>>,
    layout: Layout,
) {
    let path = kernel_path();
    let panel = panel_width(layout.inputs_and_batch(x).0, size_of::<T>());
    spmm(a, alpha, x, panel, beta, y, (then, layout), |range, xt, width, out| {
        bsr_rows(path, a, range, xt, width, out)
    });
}

/// Sliced-ELLPACK rows, copied out of their slices' interleaved layout into CSR arrays
/// in row order and run through CSR's kernel: the layout only pays at batch 1, and this
/// way a row's sum is the one CSR computes, bit for bit.
#[inline(always)]
fn sell_windows_kernel<P: Isa, T: Scalar, V: Stored<T>, I: SpIndex>(
    a: SellView<'_, T, I, V>,
    windows: Range<usize>,
    xt: &[T],
    batch: usize,
    out: &mut [T],
) {
    let rows = a.first_row(windows.start)..a.first_row(windows.end);
    let slices = a.first_slice(windows.start)..a.first_slice(windows.end);
    let mut indptr = vec![0; rows.len() + 1];
    for s in slices.clone() {
        for lane in a.lanes(s) {
            indptr[a.order[lane] - rows.start + 1] = a.lengths[lane];
        }
    }
    for k in 0..rows.len() {
        indptr[k + 1] += indptr[k];
    }
    let mut values = vec![T::zero(); indptr[rows.len()]];
    let mut indices = vec![I::default(); indptr[rows.len()]];
    for s in slices {
        let (slice_values, slice_cols) = a.slice(s);
        for (l, lane) in a.lanes(s).enumerate() {
            let at = indptr[a.order[lane] - rows.start];
            for j in 0..a.lengths[lane] {
                values[at + j] = slice_values[j * SLICE_ROWS + l].get();
                indices[at + j] = slice_cols[j * SLICE_ROWS + l];
            }
        }
    }
    let csr = CsrView {
        nrows: rows.len(),
        ncols: a.ncols,
        indptr: &indptr,
        indices: &indices,
        values: &values,
        row_scales: a.row_scales.map(|s| &s[rows.clone()]),
    };
    let panel = panel_width(a.ncols, size_of::<T>());
    csr_rows_kernel::<P, T, T, I>(csr, 0..rows.len(), xt, batch, panel, out);
}

multiversion! {
    fn sell_windows<T: Scalar, V: Stored<T>, I: SpIndex>(a: SellView<'_, T, I, V>, windows: Range<usize>, xt: &[T], batch: usize, out: &mut [T]) => sell_windows_kernel
}

pub(crate) fn sell_spmm<T: Scalar, V: Stored<T>, I: SpIndex>(
    a: SellView<'_, T, I, V>,
    alpha: T,
    x: &DMatrix<T>,
    beta: T,
    y: &mut DMatrix<T>,
    then: Option<Epilogue<'_, T>>,
    layout: Layout,
) {
    let path = kernel_path();
    let panel = panel_width(layout.inputs_and_batch(x).0, size_of::<T>());
    let then = (then, layout);
    spmm_copied_whole(a, alpha, x, panel, beta, y, then, |range, xt, width, out| {
        sell_windows(path, a, range, xt, width, out)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::KernelPath;

    /// `a`'s product with `x` (`alpha`, `beta` on a filled `Y`, and `beta = 0` on a `Y`
    /// of NaN, which it must not read) has the bits of the products of `x`'s first and
    /// second halves of batch columns, and the dense product's value within rounding.
    fn check_halves<T: Scalar, A: crate::SparseProduct<T>>(
        name: &str,
        a: &A,
        dense: &DMatrix<T>,
        x: &DMatrix<T>,
    ) {
        let (nrows, batch) = (dense.nrows(), x.ncols());
        let half = batch / 2;
        let filled = DMatrix::from_fn(nrows, batch, |i, j| T::from_f64_lossy(((i + j) % 7) as f64));
        let nan = DMatrix::from_element(nrows, batch, T::from_f64_lossy(f64::NAN));
        for (alpha, beta, y0) in [(1.0, 0.0, &filled), (0.5, 2.0, &filled), (1.5, 0.0, &nan)] {
            let (alpha, beta) = (T::from_f64_lossy(alpha), T::from_f64_lossy(beta));
            let mut whole = y0.clone();
            a.matmul_into(alpha, x, beta, &mut whole).unwrap();
            let mut parts = y0.clone();
            for (start, len) in [(0, half), (half, batch - half)] {
                let mut y = y0.columns(start, len).into_owned();
                a.matmul_into(alpha, &x.columns(start, len).into_owned(), beta, &mut y).unwrap();
                parts.columns_mut(start, len).copy_from(&y);
            }
            assert!(whole == parts, "{name}: the whole batch and its halves differ");
            let expected =
                if beta == T::zero() { dense * x * alpha } else { dense * x * alpha + y0 * beta };
            let error = (&whole - &expected).amax();
            assert!(error <= T::from_f64_lossy(1e-4), "{name}: {error} from the dense product");
        }
    }

    /// A batch whose `X` passes [`COPY_PER_TASK_BYTES`] is copied a panel at a time in
    /// each task, its halves whole before the product: every format gives the same bits
    /// both ways, on every thread count. (`f32` N:M runs the lane kernels on the x86
    /// vector paths, which copy nothing; `f64` N:M goes through `spmm` everywhere.
    /// Sliced ELLPACK always copies whole.)
    #[test]
    fn a_batch_copied_per_task_gives_the_bits_of_one_copied_whole() {
        fn check<T: Scalar>() {
            let (nrows, ncols) = (45, 24);
            let batch = COPY_PER_TASK_BYTES / (ncols * size_of::<T>()) + 37;
            assert!(batch / 2 * ncols * size_of::<T>() < COPY_PER_TASK_BYTES);
            let value = |r: usize, c: usize| T::from_f64_lossy(((r * ncols + c) as f64).sin());
            // 2:4 in every row: two of each group of four columns kept.
            let mask = shears_core::Mask::from_fn(nrows, ncols, |r, c| (c + r) % 4 < 2).unwrap();
            let dense = DMatrix::from_fn(nrows, ncols, |r, c| {
                if mask.get(r, c) == Some(true) { value(r, c) } else { T::zero() }
            });
            let x = DMatrix::from_fn(ncols, batch, |i, j| {
                T::from_f64_lossy(((i * 31 + j * 17) % 97) as f64 / 97.0 - 0.5)
            });
            let block = shears_core::BlockShape::new(4, 4).unwrap();
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| {
                    let csr = crate::Csr::<T, u16>::from_dense_masked(&dense, &mask).unwrap();
                    check_halves("csr", &csr, &dense, &x);
                    let sell = crate::SlicedEll::<T>::from_dense_masked(&dense, &mask).unwrap();
                    check_halves("sliced ellpack", &sell, &dense, &x);
                    let bsr = crate::BlockSparse::from_dense(&dense, block).unwrap();
                    check_halves("block-sparse", &bsr, &dense, &x);
                    let nm = crate::NmSparse::from_dense(&dense, crate::NmPattern::TWO_FOUR);
                    check_halves("n:m", &nm.unwrap(), &dense, &x);
                });
            }
        }
        check::<f32>();
        check::<f64>();
    }

    /// Narrow stored values (int8 with row scales, bf16, f16) give the portable copy's
    /// bits on every copy of the batched CSR kernel.
    #[test]
    fn narrow_values_give_the_portable_bits_on_every_copy() {
        fn check<V: Stored<f32>>(narrow: impl Fn(f32) -> V, scaled: bool) {
            let (nrows, ncols, batch) = (21usize, 203usize, 43usize);
            let fixture = crate::kernels::NarrowFixture::new(nrows, ncols, narrow, scaled);
            let a = fixture.view();
            let xt: Vec<f32> = (0..ncols * batch).map(|k| (k as f32 * 0.07).sin()).collect();
            let run = |path| {
                let mut out = vec![0.0f32; nrows * batch];
                // One panel of the whole batch.
                csr_rows(KernelPath::resolve(path), a, 0..nrows, &xt, batch, batch, &mut out);
                out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            let portable = run(KernelPath::Portable);
            for path in [KernelPath::Avx2, KernelPath::Avx512, KernelPath::Neon] {
                assert_eq!(run(path), portable, "{path:?}");
            }
        }
        check::<i8>(|v| v.round_ties_even().clamp(-127.0, 127.0) as i8, true);
        check::<half::bf16>(half::bf16::from_f32, false);
        check::<half::f16>(half::f16::from_f32, false);
    }

    /// Narrow sliced-ELLPACK and block-sparse values (int8 with row scales, bf16, f16)
    /// give the portable copy's bits on every copy of the batched kernels.
    #[test]
    fn narrow_sell_and_block_values_give_the_portable_bits_on_every_copy() {
        fn check<V: crate::NarrowValue>() {
            let (nrows, ncols, batch) = (37usize, 203usize, 43usize);
            let w = crate::testing::pruned(nrows, ncols, 0.3, 5);
            let csr: crate::Csr<f32, u32> = crate::Csr::from_dense(&w).unwrap();
            let sell = crate::NarrowSell::<V, u32>::from_csr(&csr).unwrap();
            let shape = shears_core::BlockShape::new(4, 3).unwrap();
            let block = crate::NarrowBlock::<V>::from_dense(&w, shape).unwrap();
            let (sell, block) = (sell.view(), block.view());
            let xt: Vec<f32> = (0..ncols * batch).map(|k| (k as f32 * 0.07).sin()).collect();
            let run = |path| {
                let path = KernelPath::resolve(path);
                let mut by_sell = vec![0.0f32; nrows * batch];
                sell_windows(path, sell, 0..sell.windows(), &xt, batch, &mut by_sell);
                let mut by_block = vec![0.0f32; nrows * batch];
                bsr_rows(path, block, 0..block.block_rows(), &xt, batch, &mut by_block);
                let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                (bits(&by_sell), bits(&by_block))
            };
            let portable = run(KernelPath::Portable);
            for path in [KernelPath::Avx2, KernelPath::Avx512, KernelPath::Neon] {
                assert_eq!(run(path), portable, "{} {path:?}", V::NAME);
            }
        }
        check::<i8>();
        check::<half::bf16>();
        check::<half::f16>();
    }

    /// Every compiled path gives the portable path's bits (fused multiply-adds included)
    /// for batches that use every tile width (32, 8, 4, 2, 1) and rows of every remainder
    /// of the four-weight unroll, gives each column the bits it gets alone, and agrees
    /// with a plain sum.
    #[test]
    fn every_path_gives_the_portable_bits() {
        let (ncols, lens) = (40usize, [0usize, 1, 6, 13, 22]);
        let mut indptr = vec![0];
        let mut indices: Vec<u16> = Vec::new();
        for (r, &len) in lens.iter().enumerate() {
            let mut row: Vec<u16> = (0..len).map(|k| ((k * 7 + r) % ncols) as u16).collect();
            row.sort_unstable();
            row.dedup();
            indices.extend(row);
            indptr.push(indices.len());
        }
        let values: Vec<f32> = (0..indices.len()).map(|k| (k as f32 * 0.37).sin()).collect();
        let a = CsrView {
            nrows: lens.len(),
            ncols,
            indptr: &indptr,
            indices: &indices,
            values: &values,
            row_scales: None,
        };
        // 43 columns are one panel; 300 are three, the last one narrower.
        let panel = csr_panel_width(ncols, 4);
        assert_eq!(panel, 128);
        assert_eq!(
            [panel_width(1000, 4), panel_width(1000, 8), panel_width(1 << 20, 4)],
            [64, 32, 32]
        );
        assert_eq!([csr_panel_width(100, 4), csr_panel_width(384, 4)], [96, 32]);
        for batch in [1, 2, 7, 8, 15, 43, 300] {
            let x = DMatrix::from_fn(ncols, batch, |c, j| ((c * batch + j) as f32 * 0.11).cos());
            let xt = to_panels(&x, panel);
            let run = |path| {
                let mut out = vec![0.0f32; lens.len() * batch];
                let xt = xt.as_slice();
                csr_rows(KernelPath::resolve(path), a, 0..lens.len(), xt, batch, panel, &mut out);
                out
            };
            let portable = run(KernelPath::Portable);
            for path in [KernelPath::Avx2, KernelPath::Avx512, KernelPath::Neon] {
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&run(path)), bits(&portable), "{path:?}, batch {batch}");
            }
            // Every tile width and panel gives each column the bits it gets alone.
            for j in 0..batch {
                let column: Vec<f32> = x.column(j).iter().copied().collect();
                let mut alone = vec![0.0f32; lens.len()];
                let portable_path = KernelPath::resolve(KernelPath::Portable);
                csr_rows(portable_path, a, 0..lens.len(), &column, 1, 1, &mut alone);
                for (r, v) in alone.iter().enumerate() {
                    assert_eq!(v.to_bits(), portable[r * batch + j].to_bits(), "({r}, {j})");
                }
            }
            for r in 0..lens.len() {
                for j in 0..batch {
                    let plain: f32 = (indptr[r]..indptr[r + 1])
                        .map(|k| values[k] * x[(usize::from(indices[k]), j)])
                        .sum();
                    assert!((portable[r * batch + j] - plain).abs() < 1e-5, "({r}, {j})");
                }
            }
        }
    }

    /// The copy into row-major order (one panel as wide as the batch), serial or split
    /// across threads, puts every element where the formula says, for heights that are
    /// and are not multiples of the transpose tile and of the parallel task.
    #[test]
    fn the_copy_in_matches_the_element_formula() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for (n, b) in [(1, 1), (17, 3), (100, 700), (300, 250), (70_000, 1), (1, 70_000)] {
            let x = DMatrix::from_fn(n, b, |i, j| (i * 1000 + j) as f64);
            for parallel in [false, true] {
                let xt =
                    if parallel { pool.install(|| to_panels(&x, b)) } else { to_panels(&x, b) };
                assert_eq!(xt.as_slice().as_ptr().align_offset(64), 0);
                let xt = xt.as_slice();
                assert!((0..n).all(|i| (0..b).all(|j| xt[i * b + j] == x[(i, j)])), "{n}x{b}");
            }
        }
        assert!(to_panels(&DMatrix::<f32>::zeros(0, 5), 5).as_slice().is_empty());
    }

    /// A product's blocks cover every element of `Y` once, each block's batch columns
    /// whole panels (the last one narrower), on one thread and on several, whose tasks
    /// split a batch of several panels by panels.
    #[test]
    fn blocks_cover_y_once_in_whole_panels() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (nrows, per_row) = (300usize, 40usize);
        let indptr: Vec<usize> = (0..=nrows).map(|r| r * per_row).collect();
        let indices: Vec<u16> = (0..nrows * per_row).map(|k| (k % per_row) as u16).collect();
        let values = vec![1.0f32; nrows * per_row];
        let a: CsrView<'_, f32, u16> = CsrView {
            nrows,
            ncols: per_row,
            indptr: &indptr,
            indices: &indices,
            values: &values,
            row_scales: None,
        };
        let cases = [(1, 32), (64, 32), (100, 32), (300, 128), (5000, 64)];
        for (threads, split) in
            [1, 2, 3].into_iter().flat_map(|t| [(t, Split::Fine), (t, Split::PerThread)])
        {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for (batch, panel) in cases {
                let mut y = DMatrix::<f32>::zeros(nrows, batch);
                let (tasks, column_splits) = (AtomicUsize::new(0), AtomicUsize::new(0));
                pool.install(|| {
                    for_each_block(a, &mut y, false, panel, split, None, |units, cols, columns| {
                        assert_eq!(cols.start % panel, 0);
                        assert!(cols.end % panel == 0 || cols.end == batch);
                        assert_eq!(columns.len(), cols.len());
                        tasks.fetch_add(1, Ordering::Relaxed);
                        if cols.len() < batch {
                            column_splits.fetch_add(1, Ordering::Relaxed);
                        }
                        for column in columns.iter_mut() {
                            assert_eq!(column.len(), units.len());
                            column.iter_mut().for_each(|v| *v += 1.0);
                        }
                    });
                });
                let case =
                    format!("{threads} threads, {split:?}, batch {batch}, panels of {panel}");
                assert!(y.iter().all(|&v| v == 1.0), "{case}");
                // By rows, a task gets one piece per output row, its batch columns long,
                // and the pieces cover `Y` once too.
                let mut yt = DMatrix::<f32>::zeros(batch, nrows);
                pool.install(|| {
                    for_each_block(a, &mut yt, true, panel, split, None, |units, cols, rows| {
                        assert_eq!(rows.len(), units.len());
                        for row in rows.iter_mut() {
                            assert_eq!(row.len(), cols.len());
                            row.iter_mut().for_each(|v| *v += 1.0);
                        }
                    });
                });
                assert!(yt.iter().all(|&v| v == 1.0), "{case}, by rows");
                // One task per thread, each with whole panels or all of them.
                if split == Split::PerThread {
                    assert!(tasks.load(Ordering::Relaxed) <= threads, "{case}");
                }
                let several_panels =
                    batch > panel && batch * nrows * per_row >= crate::kernels::PARALLEL_WORK;
                if threads > 1 && several_panels {
                    assert!(column_splits.load(Ordering::Relaxed) > 0, "{case}");
                } else if threads == 1 {
                    assert_eq!(tasks.load(Ordering::Relaxed), 1, "{case}");
                }
            }
        }
    }

    /// The copy into panels puts element (i, j) in panel j / width, at row i and column
    /// j % width of that panel's rows (the last panel's rows are narrower).
    #[test]
    fn the_copy_into_panels_matches_the_element_formula() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for (n, b, width) in [(1, 1, 128), (17, 300, 128), (300, 257, 128), (600, 200, 64)] {
            let x = DMatrix::from_fn(n, b, |i, j| (i * 1000 + j) as f64);
            for parallel in [false, true] {
                let copy = || to_panels(&x, width);
                let xt = if parallel { pool.install(copy) } else { copy() };
                let xt = xt.as_slice();
                for (i, j) in (0..n).flat_map(|i| (0..b).map(move |j| (i, j))) {
                    let (panel, column) = (j / width, j % width);
                    let panel_width = width.min(b - panel * width);
                    let at = panel * width * n + i * panel_width + column;
                    assert_eq!(xt[at], x[(i, j)], "{n}x{b} in panels of {width}: ({i}, {j})");
                }
            }
        }
    }

    /// The copy out writes `alpha Z + beta Y` into exactly the rows it is given, and
    /// does not read `Y` when `beta` is zero.
    #[test]
    fn the_copy_out_combines_a_range_of_rows() {
        let cases = [(40, 3, 5..38), (64, 1, 0..64), (9, 20, 4..5), (7, 2, 3..3), (40, 20, 3..37)];
        for (n, b, rows) in cases {
            let z: Vec<f64> = (0..rows.len() * b).map(|k| k as f64).collect();
            let z_at = |i: usize, j: usize| z[(i - rows.start) * b + j];
            for (alpha, beta, fill) in [(2.0, 0.5, 1.0), (1.0, 0.0, f64::NAN)] {
                let mut y = DMatrix::from_element(n, b, fill);
                let mut pieces: Vec<&mut [f64]> =
                    y.as_mut_slice().chunks_exact_mut(n).map(|c| &mut c[rows.clone()]).collect();
                write_rows(alpha, &z, beta, &mut pieces);
                for (i, j) in (0..n).flat_map(|i| (0..b).map(move |j| (i, j))) {
                    let got = y[(i, j)];
                    if !rows.contains(&i) {
                        assert!(got == fill || (fill.is_nan() && got.is_nan()), "({i}, {j})");
                    } else if beta == 0.0 {
                        assert_eq!(got, alpha * z_at(i, j), "({i}, {j})");
                    } else {
                        assert_eq!(got, alpha * z_at(i, j) + beta * fill, "({i}, {j})");
                    }
                }
            }
        }
        write_rows(1.0, &[], 0.0, &mut [] as &mut [&mut [f32]]);
    }

    /// On every path, `f32` copies in and out of row-major order (in 8 x 8 blocks
    /// transposed in registers on the x86 vector paths) put every element where the
    /// formula says, with the scalar `combine`'s bits, for sizes around the blocks and from
    /// a first row inside the columns.
    #[test]
    fn f32_copies_match_the_element_formulas_on_every_path() {
        let value = |i: usize, j: usize| ((i * 131 + j * 17) % 1000) as f32 * 0.37 - 50.0;
        for path in crate::kernels::all_paths() {
            for (n, first_row, height, w) in [
                (8, 0, 8, 8),
                (40, 3, 33, 17),
                (19, 0, 19, 9),
                (64, 7, 50, 64),
                (5, 1, 3, 2),
                (16, 0, 16, 3),
            ] {
                let columns: Vec<f32> = (0..w * n).map(|k| value(k % n, k / n)).collect();
                let mut rows = vec![f32::NAN; height * w];
                transpose_in(path, &columns, n, first_row, &mut rows);
                for (i, j) in (0..height).flat_map(|i| (0..w).map(move |j| (i, j))) {
                    let want = value(first_row + i, j);
                    assert_eq!(rows[i * w + j], want, "{path:?} in: {n}x{w} ({i}, {j})");
                }
            }
            for (height, b) in [(8, 8), (33, 17), (9, 19), (64, 64), (3, 2), (16, 3)] {
                let z: Vec<f32> = (0..height * b).map(|k| value(k / b, k % b)).collect();
                for (alpha, beta) in [(0.3f32, 0.0f32), (1.7, -0.9), (-2.5, -0.0), (1.0, f32::NAN)]
                {
                    let mut y: Vec<Vec<f32>> =
                        (0..b).map(|j| (0..height + 2).map(|i| value(j, i)).collect()).collect();
                    let mut columns: Vec<&mut [f32]> = y.iter_mut().map(|c| &mut c[1..]).collect();
                    transpose_out(path, alpha, &z, beta, &mut columns);
                    for (i, j) in (0..height + 2).flat_map(|i| (0..b).map(move |j| (i, j))) {
                        let old = value(j, i);
                        let want = if i == 0 || i > height {
                            old
                        } else if beta == 0.0 {
                            // -0.0 too: Y is not read (so neither are its NaNs).
                            alpha * z[(i - 1) * b + j]
                        } else {
                            alpha * z[(i - 1) * b + j] + beta * old
                        };
                        let case = format!("{path:?} out: {height}x{b} ({i}, {j})");
                        assert_eq!(y[j][i].to_bits(), want.to_bits(), "{case}");
                    }
                }
            }
        }
    }

    /// On a CPU without fused multiply-add, the portable copy multiplies and adds: the
    /// CSR tile's pair sums and the N:M rows' running sums, in the fused copies' order,
    /// each product rounded before its add.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_unfused_portable_copy_multiplies_then_adds() {
        use crate::kernels::NmView;
        use crate::kernels::isa::PortableUnfused;
        use crate::kernels::nm_rows::{nm_rows_kernel, nm_window_slots};
        let (ncols, batch) = (40usize, 9usize);
        let xt: Vec<f32> = (0..ncols * batch).map(|k| (k as f32 * 0.11).cos()).collect();
        let x = |c: usize, j: usize| xt[c * batch + j];
        // CSR: one row of 7 entries (a group of four, then three one at a time).
        let (indptr, indices, values) = (
            vec![0, 7],
            vec![1u16, 4, 9, 13, 20, 31, 39],
            vec![0.3f32, -1.7, 2.2, 0.9, -0.4, 1.3, 0.6],
        );
        let a = CsrView {
            nrows: 1,
            ncols,
            indptr: &indptr,
            indices: &indices,
            values: &values,
            row_scales: None,
        };
        let mut out = vec![0.0f32; batch];
        csr_rows_kernel::<PortableUnfused, f32, f32, u16>(a, 0..1, &xt, batch, batch, &mut out);
        for (j, &got) in out.iter().enumerate() {
            let c = |k: usize| usize::from(indices[k]);
            let mut acc = 0.0f32;
            acc += (values[0] * x(c(0), j) + values[1] * x(c(1), j))
                + (values[2] * x(c(2), j) + values[3] * x(c(3), j));
            for (k, &v) in values.iter().enumerate().skip(4) {
                acc += v * x(c(k), j);
            }
            assert_eq!(got.to_bits(), acc.to_bits(), "csr, column {j}");
        }
        // N:M: 2:4 over 40 columns, two rows in lockstep.
        let (n, m, nrows) = (2usize, 4usize, 2usize);
        let per_row = ncols / m * n;
        let positions: Vec<u8> = (0..nrows * per_row).map(|k| ((k * 3) % 4) as u8).collect();
        let values: Vec<f32> = (0..nrows * per_row).map(|k| (k as f32 * 0.37).sin()).collect();
        let a =
            NmView { nrows, ncols, n, m, values: &values, positions: &positions, row_scales: None };
        let mut out = vec![0.0f32; nrows * batch];
        let window = nm_window_slots(n, m, batch, 4);
        nm_rows_kernel::<PortableUnfused, f32, f32>(a, 0..nrows, &xt, batch, window, &mut out);
        for r in 0..nrows {
            for j in 0..batch {
                let mut acc = 0.0f32;
                for s in 0..per_row {
                    let col = s / n * m + usize::from(positions[r * per_row + s]);
                    acc += values[r * per_row + s] * x(col, j);
                }
                assert_eq!(out[r * batch + j].to_bits(), acc.to_bits(), "2:4 row {r}, column {j}");
            }
        }
    }
}
