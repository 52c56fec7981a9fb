//! Batch-1 kernels: `y <- alpha * A x + beta * y`.
//!
//! Memory-bound: the loop streams values and indices once and gathers from `x`, which
//! stays in cache. Eight independent accumulator lanes hide the add latency and let the
//! AVX2 / AVX-512 copies use gathers; the lanes are summed in a fixed tree.

use std::ops::Range;

use shears_core::Scalar;

use super::{BsrView, CsrView, NmView, combine, for_row_chunks, kernel_path, multiversion};
use crate::index::SpIndex;

const LANES: usize = 8;

#[inline(always)]
fn reduce<T: Scalar>(acc: [T; LANES]) -> T {
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

/// The dot product of one CSR row with `x`. With `CHECKED`, every gather is
/// bounds-checked: the reference the unchecked path is tested against.
#[inline(always)]
pub(crate) fn dot_row<T: Scalar, I: SpIndex, const CHECKED: bool>(
    values: &[T],
    indices: &[I],
    x: &[T],
) -> T {
    let mut acc = [T::zero(); LANES];
    let full = values.len() / LANES * LANES;
    let gather = |i: I| -> T {
        if CHECKED {
            x[i.index()]
        } else {
            // SAFETY: the CSR validator (or the trusted constructor, checked in debug)
            // guarantees every column index is < ncols, and the public entry points
            // check x.len() == ncols.
            unsafe { *x.get_unchecked(i.index()) }
        }
    };
    for (v, i) in values[..full].chunks_exact(LANES).zip(indices[..full].chunks_exact(LANES)) {
        for j in 0..LANES {
            acc[j] += v[j] * gather(i[j]);
        }
    }
    let mut tail = T::zero();
    for (&v, &i) in values[full..].iter().zip(&indices[full..]) {
        tail += v * gather(i);
    }
    reduce(acc) + tail
}

#[inline(always)]
fn csr_rows_kernel<T: Scalar, I: SpIndex>(
    a: CsrView<'_, T, I>,
    rows: Range<usize>,
    alpha: T,
    x: &[T],
    beta: T,
    out: &mut [T],
) {
    for (r, y) in rows.zip(out.iter_mut()) {
        let range = a.indptr[r]..a.indptr[r + 1];
        let dot = dot_row::<T, I, false>(&a.values[range.clone()], &a.indices[range], x);
        *y = combine(alpha, dot, beta, *y);
    }
}

multiversion! {
    fn csr_rows<T: Scalar, I: SpIndex>(a: CsrView<'_, T, I>, rows: Range<usize>, alpha: T, x: &[T], beta: T, out: &mut [T]) => csr_rows_kernel
}

pub(crate) fn csr_spmv<T: Scalar, I: SpIndex>(
    a: CsrView<'_, T, I>,
    alpha: T,
    x: &[T],
    beta: T,
    y: &mut [T],
) {
    debug_assert_eq!((x.len(), y.len()), (a.ncols, a.nrows));
    let path = kernel_path();
    for_row_chunks(
        a.nrows,
        |r| a.indptr[r],
        |r| r,
        y,
        |rows, out| csr_rows(path, a, rows, alpha, x, beta, out),
    );
}

/// The dot product of one N:M row with `x`, the column of slot `s` computed in the loop
/// (`(s / N) * m + position`), so no index array is read or written.
#[inline(always)]
fn nm_dot<T: Scalar, const N: usize>(values: &[T], positions: &[u8], m: usize, x: &[T]) -> T {
    let mut acc = [T::zero(); LANES];
    let full = values.len() / LANES * LANES;
    let gather = |s: usize, p: u8| -> T {
        // SAFETY: the N:M validator bounds every position by its group's width, so
        // (s / N) * m + p < ncols == x.len() (checked at the public entry points).
        unsafe { *x.get_unchecked((s / N) * m + usize::from(p)) }
    };
    for (c, (v, p)) in
        values[..full].chunks_exact(LANES).zip(positions[..full].chunks_exact(LANES)).enumerate()
    {
        for j in 0..LANES {
            acc[j] += v[j] * gather(c * LANES + j, p[j]);
        }
    }
    let mut tail = T::zero();
    for (s, (&v, &p)) in values.iter().zip(positions).enumerate().skip(full) {
        tail += v * gather(s, p);
    }
    reduce(acc) + tail
}

#[inline(always)]
fn nm_rows_kernel<T: Scalar>(
    a: NmView<'_, T>,
    rows: Range<usize>,
    alpha: T,
    x: &[T],
    beta: T,
    out: &mut [T],
) {
    let per_row = a.groups() * a.n;
    let mut cols = Vec::new();
    for (r, y) in rows.zip(out.iter_mut()) {
        let values = &a.values[r * per_row..][..per_row];
        let positions = &a.positions[r * per_row..][..per_row];
        let dot = match a.n {
            1 => nm_dot::<T, 1>(values, positions, a.m, x),
            2 => nm_dot::<T, 2>(values, positions, a.m, x),
            4 => nm_dot::<T, 4>(values, positions, a.m, x),
            _ => {
                cols.resize(per_row, 0u32);
                a.expand_columns(r, &mut cols);
                dot_row::<T, u32, false>(values, &cols, x)
            }
        };
        *y = combine(alpha, dot, beta, *y);
    }
}

multiversion! {
    fn nm_rows<T: Scalar>(a: NmView<'_, T>, rows: Range<usize>, alpha: T, x: &[T], beta: T, out: &mut [T]) => nm_rows_kernel
}

pub(crate) fn nm_spmv<T: Scalar>(a: NmView<'_, T>, alpha: T, x: &[T], beta: T, y: &mut [T]) {
    let path = kernel_path();
    let per_row = a.groups() * a.n;
    for_row_chunks(
        a.nrows,
        |r| r * per_row,
        |r| r,
        y,
        |rows, out| nm_rows(path, a, rows, alpha, x, beta, out),
    );
}

#[inline(always)]
fn bsr_rows_kernel<T: Scalar>(
    a: BsrView<'_, T>,
    block_rows: Range<usize>,
    alpha: T,
    x: &[T],
    beta: T,
    out: &mut [T],
) {
    let (br, bc) = (a.br, a.bc);
    let first_row = block_rows.start * br;
    // A block may be taller than the matrix (a valid file can declare 721M x 2 blocks on
    // a 6-row matrix); rows past the end are padding, so never allocate more than nrows.
    let mut acc = vec![T::zero(); br.min(a.nrows)];
    for i in block_rows {
        acc.iter_mut().for_each(|v| *v = T::zero());
        for k in a.indptr[i]..a.indptr[i + 1] {
            let c0 = a.block_cols[k] as usize * bc;
            let width = bc.min(a.ncols - c0);
            let block = &a.values[k * br * bc..][..br * bc];
            let xs = &x[c0..c0 + width];
            for (rr, acc_r) in acc.iter_mut().enumerate() {
                let row = &block[rr * bc..rr * bc + width];
                let mut s = T::zero();
                for (&w, &xv) in row.iter().zip(xs) {
                    s += w * xv;
                }
                *acc_r += s;
            }
        }
        let r0 = i * br;
        let height = br.min(a.nrows - r0);
        for (rr, &v) in acc[..height].iter().enumerate() {
            let y = &mut out[r0 - first_row + rr];
            *y = combine(alpha, v, beta, *y);
        }
    }
}

multiversion! {
    fn bsr_rows<T: Scalar>(a: BsrView<'_, T>, block_rows: Range<usize>, alpha: T, x: &[T], beta: T, out: &mut [T]) => bsr_rows_kernel
}

pub(crate) fn bsr_spmv<T: Scalar>(a: BsrView<'_, T>, alpha: T, x: &[T], beta: T, y: &mut [T]) {
    let path = kernel_path();
    let block = a.br * a.bc;
    for_row_chunks(
        a.block_rows(),
        |i| a.indptr[i] * block,
        |i| (i * a.br).min(a.nrows),
        y,
        |rows, out| bsr_rows(path, a, rows, alpha, x, beta, out),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::KernelPath;

    fn fixture() -> (Vec<usize>, Vec<u16>, Vec<f32>, Vec<f32>) {
        // 5 rows of lengths 0, 1, 8, 13, 20 over 37 columns.
        let lens = [0usize, 1, 8, 13, 20];
        let mut indptr = vec![0];
        let mut indices = Vec::new();
        for (r, &len) in lens.iter().enumerate() {
            indices.extend((0..len).map(|k| ((k * 3 + r) % 37) as u16));
            indptr.push(indices.len());
        }
        for r in 0..lens.len() {
            indices[indptr[r]..indptr[r + 1]].sort_unstable();
            let row = &mut indices[indptr[r]..indptr[r + 1]];
            for k in 1..row.len() {
                if row[k] <= row[k - 1] {
                    row[k] = row[k - 1] + 1;
                }
            }
        }
        let values = (0..indices.len()).map(|k| (k as f32 * 0.37).sin()).collect();
        let x = (0..40).map(|k| (k as f32 * 0.11).cos()).collect();
        (indptr, indices, values, x)
    }

    #[test]
    fn every_path_matches_the_checked_reference_bitwise() {
        let (indptr, indices, values, x) = fixture();
        let a =
            CsrView { nrows: 5, ncols: 40, indptr: &indptr, indices: &indices, values: &values };
        let reference: Vec<f32> = (0..5)
            .map(|r| {
                dot_row::<f32, u16, true>(
                    &values[indptr[r]..indptr[r + 1]],
                    &indices[indptr[r]..indptr[r + 1]],
                    &x,
                )
            })
            .collect();
        for path in [KernelPath::Portable, KernelPath::Avx2, KernelPath::Avx512] {
            let mut y = vec![f32::NAN; 5];
            csr_rows(KernelPath::resolve(path), a, 0..5, 1.0, &x, 0.0, &mut y);
            assert_eq!(
                y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                reference.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{path:?}"
            );
        }
    }
}
