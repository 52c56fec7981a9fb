//! Batched kernels: `Y <- alpha * A X + beta * Y` for a dense `X` of `batch` columns.
//!
//! `X` is first copied row-major (`xt`, one contiguous batch-row per input feature), so
//! each stored weight multiplies a contiguous slice of `xt` into a register-resident
//! tile of accumulators: tiles of 32 batch columns, then 8, then 1, with four stored
//! weights summed per accumulator update so consecutive entries do not wait on each
//! other. N:M rows first expand their positions into columns, then run tiles of their
//! own: their rows all have the same length, so several advance in lockstep with one
//! fused multiply-add per product, eight rows at a time over L1-sized windows of groups. Results go to a
//! row-major buffer that is written back into `Y` at the end.

use std::ops::Range;

use nalgebra::DMatrix;
use rayon::prelude::*;
use shears_core::Scalar;

use super::isa::{Isa, fma};
use super::{BsrView, CsrView, NmView, combine, for_row_chunks, kernel_path, multiversion};
use crate::index::SpIndex;

/// Entries combined per accumulator update: four products are summed in a fixed tree
/// (two fused multiply-adds on two products) before one add into the tile, so the
/// accumulator's dependency chain advances once per four stored weights instead of once
/// per weight.
const UNROLL: usize = 4;

/// Adds one tile of `W` batch columns of one output row, from (a run of) the row's
/// values and columns, into `out`.
#[inline(always)]
fn tile<P: Isa, T: Scalar, I: SpIndex, const W: usize>(
    values: &[T],
    cols: &[I],
    xt: &[T],
    batch: usize,
    t0: usize,
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
    for (o, a) in out[t0..t0 + W].iter_mut().zip(acc) {
        *o += a;
    }
}

/// Adds one output row (or a run of its entries) into `out`: tiles of 32 batch columns,
/// then 8, then 1.
#[inline(always)]
fn row_tiles<P: Isa, T: Scalar, I: SpIndex>(
    values: &[T],
    cols: &[I],
    xt: &[T],
    batch: usize,
    out: &mut [T],
) {
    let mut t0 = 0;
    while t0 + 32 <= batch {
        tile::<P, T, I, 32>(values, cols, xt, batch, t0, out);
        t0 += 32;
    }
    while t0 + 8 <= batch {
        tile::<P, T, I, 8>(values, cols, xt, batch, t0, out);
        t0 += 8;
    }
    while t0 < batch {
        tile::<P, T, I, 1>(values, cols, xt, batch, t0, out);
        t0 += 1;
    }
}

#[inline(always)]
fn csr_rows_kernel<P: Isa, T: Scalar, I: SpIndex>(
    a: CsrView<'_, T, I>,
    rows: Range<usize>,
    xt: &[T],
    batch: usize,
    out: &mut [T],
) {
    for (k, r) in rows.enumerate() {
        let range = a.indptr[r]..a.indptr[r + 1];
        row_tiles::<P, T, I>(
            &a.values[range.clone()],
            &a.indices[range],
            xt,
            batch,
            &mut out[k * batch..(k + 1) * batch],
        );
    }
}

multiversion! {
    fn csr_rows<T: Scalar, I: SpIndex>(a: CsrView<'_, T, I>, rows: Range<usize>, xt: &[T], batch: usize, out: &mut [T]) => csr_rows_kernel
}

/// Rows of an N:M matrix processed together: they share their groups' input rows.
const NM_ROW_BLOCK: usize = 8;

/// Bytes of `xt` one window of groups may touch, so a window stays in L1 while every row
/// of a row block reads it.
const NM_WINDOW_BYTES: usize = 32 << 10;

/// Adds one tile of `W` batch columns of `R` output rows, from equally long runs of
/// their slots, into `out` (row `k`'s outputs start at `offsets[k]`).
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
    batch: usize,
    t0: usize,
    out: &mut [T],
    offsets: [usize; R],
) {
    let len = values[0].len();
    let values = values.map(|v| &v[..len]);
    let cols = cols.map(|c| &c[..len]);
    let mut acc = [[T::zero(); W]; R];
    for k in 0..len {
        for r in 0..R {
            let start = cols[r][k] as usize * batch + t0;
            // SAFETY: every column is < ncols (NmView::expand_columns) and t0 + W <= batch
            // (the tiling loop), so start + W <= ncols * batch == xt.len().
            let xs = unsafe { xt.get_unchecked(start..start + W) };
            let v = values[r][k];
            for j in 0..W {
                acc[r][j] = fma::<P, T>(v, xs[j], acc[r][j]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (o, &a) in out[offsets[r] + t0..][..W].iter_mut().zip(acc) {
            *o += a;
        }
    }
}

/// One N:M row's run of slots: its values, its columns, and where its outputs start.
type NmRun<'a, T> = (&'a [T], &'a [u32], usize);

/// [`nm_tile`] over the whole batch: tiles of 32 columns, then 8, then 1.
#[inline(always)]
fn nm_row_tiles<P: Isa, T: Scalar, const R: usize>(
    rows: [NmRun<'_, T>; R],
    xt: &[T],
    batch: usize,
    out: &mut [T],
) {
    let (values, cols, offsets) = (rows.map(|r| r.0), rows.map(|r| r.1), rows.map(|r| r.2));
    let mut t0 = 0;
    while t0 + 32 <= batch {
        nm_tile::<P, T, 32, R>(values, cols, xt, batch, t0, out, offsets);
        t0 += 32;
    }
    while t0 + 8 <= batch {
        nm_tile::<P, T, 8, R>(values, cols, xt, batch, t0, out, offsets);
        t0 += 8;
    }
    while t0 < batch {
        nm_tile::<P, T, 1, R>(values, cols, xt, batch, t0, out, offsets);
        t0 += 1;
    }
}

/// N:M rows in blocks of [`NM_ROW_BLOCK`], each walked in windows of whole groups: the
/// rows of a block pick their N of every M inputs from the same M input rows, so a
/// window's rows of `xt` are read from L2 once per block and then from L1, instead of
/// once per output row. Within a window, rows go through [`nm_tile`] four at a time on
/// the AVX-512 copy (32 registers hold 4 x 32 accumulator lanes) and two at a time on
/// the others.
#[inline(always)]
fn nm_rows_kernel<P: Isa, T: Scalar>(
    a: NmView<'_, T>,
    rows: Range<usize>,
    xt: &[T],
    batch: usize,
    out: &mut [T],
) {
    let per_row = a.groups() * a.n;
    if per_row == 0 || batch == 0 {
        return;
    }
    let window_groups = (NM_WINDOW_BYTES / (a.m * batch * size_of::<T>())).max(1);
    let window = window_groups * a.n;
    let mut cols = vec![0u32; NM_ROW_BLOCK * per_row];
    let first = rows.start;
    for block_start in rows.clone().step_by(NM_ROW_BLOCK) {
        let block = block_start..(block_start + NM_ROW_BLOCK).min(rows.end);
        for (k, r) in block.clone().enumerate() {
            a.expand_columns(r, &mut cols[k * per_row..(k + 1) * per_row]);
        }
        for w0 in (0..per_row).step_by(window) {
            let w = w0..(w0 + window).min(per_row);
            let row = |k: usize| -> NmRun<'_, T> {
                let r = block.start + k;
                (
                    &a.values[r * per_row..][w.clone()],
                    &cols[k * per_row..][w.clone()],
                    (r - first) * batch,
                )
            };
            let mut k = 0;
            if P::AVX512 {
                while k + 4 <= block.len() {
                    nm_row_tiles::<P, T, 4>(std::array::from_fn(|i| row(k + i)), xt, batch, out);
                    k += 4;
                }
            }
            while k + 2 <= block.len() {
                nm_row_tiles::<P, T, 2>(std::array::from_fn(|i| row(k + i)), xt, batch, out);
                k += 2;
            }
            if k < block.len() {
                nm_row_tiles::<P, T, 1>([row(k)], xt, batch, out);
            }
        }
    }
}

multiversion! {
    fn nm_rows<T: Scalar>(a: NmView<'_, T>, rows: Range<usize>, xt: &[T], batch: usize, out: &mut [T]) => nm_rows_kernel
}

/// Elements of `X` (or `Y`) from which the copies in and out of row-major order are
/// split across threads. The copies take about a tenth of a batch-32 product's time on
/// one thread (`perf`, 4096x4096 at 90%). Measured against serial copies with the two
/// variants interleaved in one process (12 rounds of 60 products per pool): two threads
/// 2.69 vs 3.12 ms and 1.94 vs 2.31 ms in two runs; the row-by-row fill is also faster
/// on one thread (3.39 vs 3.59 ms) than filling column by column.
const PARALLEL_COPY: usize = 1 << 16;

/// Rows of `xt` (or columns of `Y`) per parallel task of the copies.
const COPY_TASK: usize = 256;

fn copies_in_parallel(len: usize) -> bool {
    len >= PARALLEL_COPY && rayon::current_num_threads() > 1
}

/// A zeroed buffer whose first element sits on a 64-byte boundary, so that with a batch
/// of 16 `f32` (or 8 `f64`) or a multiple, every row of `xt` and of the output starts a
/// cache line and a 64-byte load never straddles two. The allocator only promises
/// 16 bytes, and a large allocation typically lands 16 bytes past a page: in
/// `cargo xtask bench` (4096x4096, batch 32, one thread) aligning took 2:4 from 1.2x to
/// 1.7x dense and CSR at 50% from 0.9x to 1.6x.
struct LineAligned<T> {
    buf: Vec<T>,
    start: usize,
    len: usize,
}

impl<T: Scalar> LineAligned<T> {
    fn zeroed(len: usize) -> Self {
        let slack = 64 / size_of::<T>();
        let buf = vec![T::zero(); len + slack];
        // `align_offset` may decline (usize::MAX); then the buffer is merely unaligned.
        let start = buf.as_ptr().align_offset(64).min(slack);
        LineAligned { buf, start, len }
    }

    fn as_slice(&self) -> &[T] {
        &self.buf[self.start..self.start + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// `X` (ncols x batch, column-major) as row-major rows of `batch`.
fn to_row_major<T: Scalar>(x: &DMatrix<T>) -> LineAligned<T> {
    let (n, b) = x.shape();
    let mut aligned = LineAligned::zeroed(n * b);
    let xt = aligned.as_mut_slice();
    if xt.is_empty() {
        return aligned;
    }
    let src = x.as_slice();
    let fill = |first_row: usize, rows: &mut [T]| {
        for (k, row) in rows.chunks_exact_mut(b).enumerate() {
            let i = first_row + k;
            for (j, v) in row.iter_mut().enumerate() {
                *v = src[j * n + i];
            }
        }
    };
    if copies_in_parallel(xt.len()) {
        xt.par_chunks_mut(COPY_TASK * b)
            .enumerate()
            .for_each(|(task, rows)| fill(task * COPY_TASK, rows));
    } else {
        fill(0, xt);
    }
    aligned
}

/// `Y <- alpha Z + beta Y` for the row-major product `z`.
fn write_back<T: Scalar>(alpha: T, z: &[T], beta: T, y: &mut DMatrix<T>) {
    let (n, b) = y.shape();
    if n == 0 || b == 0 {
        return;
    }
    let update = |first_col: usize, cols: &mut [T]| {
        for (k, col) in cols.chunks_exact_mut(n).enumerate() {
            let j = first_col + k;
            for (i, v) in col.iter_mut().enumerate() {
                *v = combine(alpha, z[i * b + j], beta, *v);
            }
        }
    };
    let ys = y.as_mut_slice();
    if copies_in_parallel(ys.len()) {
        // Columns of Y are contiguous; a task takes enough of them to be worth a task.
        let cols_per_task = COPY_TASK.div_ceil(n).max(1);
        ys.par_chunks_mut(cols_per_task * n)
            .enumerate()
            .for_each(|(task, cols)| update(task * cols_per_task, cols));
    } else {
        update(0, ys);
    }
}

/// Transposes `X`, runs `units_of(range, xt, out)` over ranges of work units (rows, or
/// block rows) into a row-major product, and writes it back into `Y`. Unit `u`'s output
/// rows start at `rows_before(u)`.
#[allow(clippy::too_many_arguments, reason = "the BLAS form plus the partition")]
fn spmm<T: Scalar>(
    units: usize,
    work_before: impl Fn(usize) -> usize + Sync,
    rows_before: impl Fn(usize) -> usize,
    alpha: T,
    x: &DMatrix<T>,
    beta: T,
    y: &mut DMatrix<T>,
    units_of: impl Fn(Range<usize>, &[T], &mut [T]) + Sync,
) {
    let batch = x.ncols();
    let xt = to_row_major(x);
    let mut z = LineAligned::zeroed(y.nrows() * batch);
    for_row_chunks(
        units,
        |u| work_before(u) * batch,
        |u| rows_before(u) * batch,
        z.as_mut_slice(),
        |range, out| units_of(range, xt.as_slice(), out),
    );
    write_back(alpha, z.as_slice(), beta, y);
}

pub(crate) fn csr_spmm<T: Scalar, I: SpIndex>(
    a: CsrView<'_, T, I>,
    alpha: T,
    x: &DMatrix<T>,
    beta: T,
    y: &mut DMatrix<T>,
) {
    let (path, batch) = (kernel_path(), x.ncols());
    spmm(
        a.nrows,
        |r| a.indptr[r],
        |r| r,
        alpha,
        x,
        beta,
        y,
        |range, xt, out| csr_rows(path, a, range, xt, batch, out),
    );
}

pub(crate) fn nm_spmm<T: Scalar>(
    a: NmView<'_, T>,
    alpha: T,
    x: &DMatrix<T>,
    beta: T,
    y: &mut DMatrix<T>,
) {
    let (path, batch) = (kernel_path(), x.ncols());
    let per_row = a.groups() * a.n;
    spmm(
        a.nrows,
        |r| r * per_row,
        |r| r,
        alpha,
        x,
        beta,
        y,
        |range, xt, out| nm_rows(path, a, range, xt, batch, out),
    );
}

#[inline(always)]
fn bsr_rows_kernel<P: Isa, T: Scalar>(
    a: BsrView<'_, T>,
    block_rows: Range<usize>,
    xt: &[T],
    batch: usize,
    out: &mut [T],
) {
    let (br, bc) = (a.br, a.bc);
    let first_row = block_rows.start * br;
    for i in block_rows {
        let r0 = i * br;
        let height = br.min(a.nrows - r0);
        for k in a.indptr[i]..a.indptr[i + 1] {
            let c0 = a.block_cols[k] as usize * bc;
            let width = bc.min(a.ncols - c0);
            let block = &a.values[k * br * bc..][..br * bc];
            for rr in 0..height {
                let o = &mut out[(r0 - first_row + rr) * batch..][..batch];
                for cc in 0..width {
                    let w = block[rr * bc + cc];
                    let xs = &xt[(c0 + cc) * batch..][..batch];
                    for (ov, &xv) in o.iter_mut().zip(xs) {
                        *ov += w * xv;
                    }
                }
            }
        }
    }
}

multiversion! {
    fn bsr_rows<T: Scalar>(a: BsrView<'_, T>, block_rows: Range<usize>, xt: &[T], batch: usize, out: &mut [T]) => bsr_rows_kernel
}

pub(crate) fn bsr_spmm<T: Scalar>(
    a: BsrView<'_, T>,
    alpha: T,
    x: &DMatrix<T>,
    beta: T,
    y: &mut DMatrix<T>,
) {
    let (path, batch) = (kernel_path(), x.ncols());
    let block = a.br * a.bc;
    spmm(
        a.block_rows(),
        |i| a.indptr[i] * block,
        |i| (i * a.br).min(a.nrows),
        alpha,
        x,
        beta,
        y,
        |range, xt, out| bsr_rows(path, a, range, xt, batch, out),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::KernelPath;

    /// Every compiled path gives the portable path's bits (fused multiply-adds included)
    /// for batches that use every tile width (32, 8, 1) and rows of every remainder of
    /// the four-weight unroll, and agrees with a plain sum.
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
        };
        for batch in [1, 8, 43] {
            let xt: Vec<f32> = (0..ncols * batch).map(|k| (k as f32 * 0.11).cos()).collect();
            let run = |path| {
                let mut out = vec![0.0f32; lens.len() * batch];
                csr_rows(KernelPath::resolve(path), a, 0..lens.len(), &xt, batch, &mut out);
                out
            };
            let portable = run(KernelPath::Portable);
            for path in [KernelPath::Avx2, KernelPath::Avx512] {
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&run(path)), bits(&portable), "{path:?}, batch {batch}");
            }
            for r in 0..lens.len() {
                for j in 0..batch {
                    let plain: f32 = (indptr[r]..indptr[r + 1])
                        .map(|k| values[k] * xt[usize::from(indices[k]) * batch + j])
                        .sum();
                    assert!((portable[r * batch + j] - plain).abs() < 1e-5, "({r}, {j})");
                }
            }
        }
    }

    /// N:M rows give the portable copy's bits on every copy, whichever number of rows a
    /// copy interleaves (4, 2, 1: blocks of 1 to 11 rows), for every tile width, and
    /// agree with a plain sum.
    #[test]
    fn nm_rows_give_the_portable_bits_for_any_interleave() {
        let (n, m, ncols) = (2usize, 4usize, 37usize);
        let groups = ncols.div_ceil(m);
        for nrows in [1usize, 3, 4, 5, 11] {
            let per_row = groups * n;
            let positions: Vec<u8> = (0..nrows * per_row)
                .map(|k| {
                    let (g, slot) = ((k % per_row) / n, k % n);
                    let width = m.min(ncols - g * m);
                    ((slot + k / per_row + g) % width) as u8
                })
                .collect();
            let values: Vec<f32> = (0..nrows * per_row).map(|k| (k as f32 * 0.37).sin()).collect();
            let a = NmView { nrows, ncols, n, m, values: &values, positions: &positions };
            for batch in [1, 8, 43] {
                let xt: Vec<f32> = (0..ncols * batch).map(|k| (k as f32 * 0.11).cos()).collect();
                let run = |path| {
                    let mut out = vec![0.0f32; nrows * batch];
                    nm_rows(KernelPath::resolve(path), a, 0..nrows, &xt, batch, &mut out);
                    out
                };
                let portable = run(KernelPath::Portable);
                for path in [KernelPath::Avx2, KernelPath::Avx512] {
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&run(path)),
                        bits(&portable),
                        "{path:?}, {nrows} rows, batch {batch}"
                    );
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

    /// The copies into and out of row-major order, split across threads (tasks of
    /// several columns when columns are short), land every element where the serial
    /// loop puts it.
    #[test]
    fn parallel_copies_match_the_element_formula() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for (n, b) in [(100, 700), (300, 250), (70_000, 1), (1, 70_000)] {
            assert!(n * b >= PARALLEL_COPY);
            let x = DMatrix::from_fn(n, b, |i, j| (i * 1000 + j) as f64);
            let xt = pool.install(|| to_row_major(&x));
            assert_eq!(xt.as_slice().as_ptr().align_offset(64), 0);
            let xt = xt.as_slice();
            assert!((0..n).all(|i| (0..b).all(|j| xt[i * b + j] == x[(i, j)])), "{n}x{b}");
            let mut y = DMatrix::from_fn(n, b, |i, j| (i + j) as f64);
            pool.install(|| write_back(2.0, xt, 0.5, &mut y));
            let want = DMatrix::from_fn(n, b, |i, j| 2.0 * x[(i, j)] + 0.5 * (i + j) as f64);
            assert_eq!(y, want, "{n}x{b}");
        }
        assert!(to_row_major(&DMatrix::<f32>::zeros(0, 5)).as_slice().is_empty());
        write_back(1.0, &[], 0.0, &mut DMatrix::<f32>::zeros(7, 0));
    }

    /// On a CPU without fused multiply-add, the portable copy multiplies and adds: the
    /// CSR tile's pair sums and the N:M rows' running sums, in the fused copies' order,
    /// each product rounded before its add.
    #[test]
    fn the_unfused_portable_copy_multiplies_then_adds() {
        use crate::kernels::isa::PortableUnfused;
        let (ncols, batch) = (40usize, 9usize);
        let xt: Vec<f32> = (0..ncols * batch).map(|k| (k as f32 * 0.11).cos()).collect();
        let x = |c: usize, j: usize| xt[c * batch + j];
        // CSR: one row of 7 entries (a group of four, then three one at a time).
        let (indptr, indices, values) = (
            vec![0, 7],
            vec![1u16, 4, 9, 13, 20, 31, 39],
            vec![0.3f32, -1.7, 2.2, 0.9, -0.4, 1.3, 0.6],
        );
        let a = CsrView { nrows: 1, ncols, indptr: &indptr, indices: &indices, values: &values };
        let mut out = vec![0.0f32; batch];
        csr_rows_kernel::<PortableUnfused, f32, u16>(a, 0..1, &xt, batch, &mut out);
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
        let a = NmView { nrows, ncols, n, m, values: &values, positions: &positions };
        let mut out = vec![0.0f32; nrows * batch];
        nm_rows_kernel::<PortableUnfused, f32>(a, 0..nrows, &xt, batch, &mut out);
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
