//! Batched kernels: `Y <- alpha * A X + beta * Y` for a dense `X` of `batch` columns.
//!
//! `X` is first copied row-major (`xt`, one contiguous batch-row per input feature), so
//! each stored weight multiplies a contiguous slice of `xt` into a register-resident
//! tile of accumulators: tiles of 32 batch columns, then 8, then 1, with four stored
//! weights summed per accumulator update so consecutive entries do not wait on each
//! other. N:M rows first expand their positions into columns and then run the same tiles,
//! eight rows at a time over L1-sized windows of groups. Results go to a
//! row-major buffer that is written back into `Y` at the end.

use std::ops::Range;

use nalgebra::DMatrix;
use shears_core::Scalar;

use super::isa::Isa;
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
fn tile<T: Scalar, I: SpIndex, const W: usize>(
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
            let pair0 = v[0].mul_add(x0[j], v[1] * x1[j]);
            let pair1 = v[2].mul_add(x2[j], v[3] * x3[j]);
            acc[j] += pair0 + pair1;
        }
    }
    for (&v, &c) in values[full..].iter().zip(&cols[full..]) {
        let xs = x_row(c);
        for j in 0..W {
            acc[j] = v.mul_add(xs[j], acc[j]);
        }
    }
    for (o, a) in out[t0..t0 + W].iter_mut().zip(acc) {
        *o += a;
    }
}

/// Adds one output row (or a run of its entries) into `out`: tiles of 32 batch columns,
/// then 8, then 1.
#[inline(always)]
fn row_tiles<T: Scalar, I: SpIndex>(
    values: &[T],
    cols: &[I],
    xt: &[T],
    batch: usize,
    out: &mut [T],
) {
    let mut t0 = 0;
    while t0 + 32 <= batch {
        tile::<T, I, 32>(values, cols, xt, batch, t0, out);
        t0 += 32;
    }
    while t0 + 8 <= batch {
        tile::<T, I, 8>(values, cols, xt, batch, t0, out);
        t0 += 8;
    }
    while t0 < batch {
        tile::<T, I, 1>(values, cols, xt, batch, t0, out);
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
        row_tiles(
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

/// N:M rows in blocks of [`NM_ROW_BLOCK`], each walked in windows of whole groups: the
/// rows of a block pick their N of every M inputs from the same M input rows, so a
/// window's rows of `xt` are read from L2 once per block and then from L1, instead of
/// once per output row.
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
            for (k, r) in block.clone().enumerate() {
                let o = (r - first) * batch;
                row_tiles(
                    &a.values[r * per_row..][w.clone()],
                    &cols[k * per_row..][w.clone()],
                    xt,
                    batch,
                    &mut out[o..o + batch],
                );
            }
        }
    }
}

multiversion! {
    fn nm_rows<T: Scalar>(a: NmView<'_, T>, rows: Range<usize>, xt: &[T], batch: usize, out: &mut [T]) => nm_rows_kernel
}

/// `X` (ncols x batch, column-major) as row-major rows of `batch`.
fn to_row_major<T: Scalar>(x: &DMatrix<T>) -> Vec<T> {
    let (n, b) = x.shape();
    let mut xt = vec![T::zero(); n * b];
    for (j, col) in x.column_iter().enumerate() {
        for (i, &v) in col.iter().enumerate() {
            xt[i * b + j] = v;
        }
    }
    xt
}

/// `Y <- alpha * Z + beta * Y` for the row-major product `Z`.
fn write_back<T: Scalar>(alpha: T, z: &[T], beta: T, y: &mut DMatrix<T>) {
    let b = y.ncols();
    for (j, mut col) in y.column_iter_mut().enumerate() {
        for (i, v) in col.iter_mut().enumerate() {
            *v = combine(alpha, z[i * b + j], beta, *v);
        }
    }
}

/// Transposes `X`, runs `rows_of(range, out)` over row chunks into a row-major product,
/// and writes it back into `Y`.
fn spmm<T: Scalar>(
    nrows: usize,
    work_before: impl Fn(usize) -> usize + Sync,
    alpha: T,
    x: &DMatrix<T>,
    beta: T,
    y: &mut DMatrix<T>,
    rows_of: impl Fn(Range<usize>, &[T], &mut [T]) + Sync,
) {
    let batch = x.ncols();
    let xt = to_row_major(x);
    let mut z = vec![T::zero(); nrows * batch];
    for_row_chunks(
        nrows,
        |r| work_before(r) * batch,
        |r| r * batch,
        &mut z,
        |range, out| rows_of(range, &xt, out),
    );
    write_back(alpha, &z, beta, y);
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
    let xt = to_row_major(x);
    let mut z = vec![T::zero(); a.nrows * batch];
    let block = a.br * a.bc;
    for_row_chunks(
        a.block_rows(),
        |i| a.indptr[i] * block * batch,
        |i| (i * a.br).min(a.nrows) * batch,
        &mut z,
        |range, out| bsr_rows(path, a, range, &xt, batch, out),
    );
    write_back(alpha, &z, beta, y);
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
}
