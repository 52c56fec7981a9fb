//! Batch-1 kernels: `y <- alpha * A x + beta * y`.
//!
//! The loop streams values and indices once and loads from `x`, which stays in cache;
//! those scattered loads, not the stream, bound the time. Eight accumulator lanes take
//! the products in order (entry `k` of a row into lane `k % 8`) and are summed in a fixed
//! tree, so every copy gives the same bits: the AVX2 / AVX-512 copies load eight inputs
//! with one gather instruction ([`gather_mul_add8`]) instead of eight scalar loads, and
//! N:M rows with `M <= 2N` (2:4) pick sixteen inputs from a 32-column window with one
//! AVX-512 permute ([`window_mul_add16`]) instead of sixteen.

use std::ops::Range;

use shears_core::Scalar;

use super::isa::{
    Isa, gather_mul_add8, gather_mul_add8_masked, permutes8, permutes16, window_mul_add8,
    window_mul_add16,
};
use super::{
    BsrView, CsrView, KernelPath, NmView, SLICE_ROWS, SellView, Stored, combine, for_units,
    kernel_path, multiversion,
};
use crate::index::SpIndex;

const LANES: usize = 8;

/// The kernel path for a product that gathers from `x` of length `ncols`: gathers take
/// signed 32-bit offsets, so wider inputs (over 2^31 columns) use the portable copy.
fn gathering_path(ncols: usize) -> KernelPath {
    if ncols <= 1 << 31 { kernel_path() } else { KernelPath::Portable }
}

/// Whether `path`'s gathering copy of the CSR row kernel beats its [`LaneLoads`] copy on
/// a small product run here: 128 rows of 512 entries at scattered columns of a 4096-entry
/// `x` (rows of a 4096-wide layer at 87.5%), each copy timed eleven times, alternately,
/// two products a time, best of eleven; gathers must win by 5%. About 2 ms in all.
///
/// [`LaneLoads`]: super::isa::LaneLoads
#[cfg(target_arch = "x86_64")]
pub(crate) fn gather_is_faster(path: KernelPath) -> bool {
    use std::time::{Duration, Instant};

    use super::isa::{Avx2, Avx512, LaneLoads};

    #[target_feature(enable = "avx2,fma,f16c")]
    fn avx2<Q: Isa>(a: CsrView<'_, f32, u32>, x: &[f32], out: &mut [f32]) {
        csr_rows_kernel::<Q, f32, f32, u32>(a, 0..a.nrows, 1.0, x, 0.0, out);
    }
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    fn avx512<Q: Isa>(a: CsrView<'_, f32, u32>, x: &[f32], out: &mut [f32]) {
        csr_rows_kernel::<Q, f32, f32, u32>(a, 0..a.nrows, 1.0, x, 0.0, out);
    }

    if !matches!(path, KernelPath::Avx2 | KernelPath::Avx512) {
        return false;
    }
    let (nrows, per_row, ncols) = (128usize, 512usize, 4096usize);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut indices: Vec<u32> = Vec::with_capacity(nrows * per_row);
    for _ in 0..nrows {
        let row = indices.len();
        // Distinct sorted columns: one per stride of ncols / per_row, at a random offset.
        for k in 0..per_row {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let stride = ncols / per_row;
            indices.push((k * stride + (state >> 33) as usize % stride) as u32);
        }
        debug_assert!(indices[row..].windows(2).all(|w| w[0] < w[1]));
    }
    let values: Vec<f32> = (0..nrows * per_row).map(|k| (k % 7) as f32 * 0.25 - 0.75).collect();
    let indptr: Vec<usize> = (0..=nrows).map(|r| r * per_row).collect();
    let x: Vec<f32> = (0..ncols).map(|c| (c % 5) as f32 * 0.5).collect();
    let a = CsrView {
        nrows,
        ncols,
        indptr: &indptr,
        indices: &indices,
        values: &values,
        row_scales: None,
    };
    let mut out = vec![0.0f32; nrows];
    let mut time = |gather: bool| {
        let start = Instant::now();
        for _ in 0..2 {
            // SAFETY: `path` is Avx2 or Avx512, resolved only where the CPU has it; the
            // matrix is valid (sorted columns < ncols == x.len() <= 2^31).
            unsafe {
                match (path, gather) {
                    (KernelPath::Avx512, true) => avx512::<Avx512>(a, &x, &mut out),
                    (KernelPath::Avx512, false) => avx512::<LaneLoads<Avx512>>(a, &x, &mut out),
                    (_, true) => avx2::<Avx2>(a, &x, &mut out),
                    (_, false) => avx2::<LaneLoads<Avx2>>(a, &x, &mut out),
                }
            }
        }
        std::hint::black_box(&out);
        start.elapsed()
    };
    let mut best = [Duration::MAX; 2];
    for _ in 0..11 {
        for gather in [true, false] {
            best[usize::from(gather)] = best[usize::from(gather)].min(time(gather));
        }
    }
    // Gathers only when clearly faster: within the noise of a shared machine, eight
    // loads are the choice that is never far off.
    best[1].as_secs_f64() * 1.05 < best[0].as_secs_f64()
}

/// Without gather instructions there is nothing to measure.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn gather_is_faster(_path: KernelPath) -> bool {
    false
}

#[inline(always)]
fn reduce<T: Scalar>(acc: [T; LANES]) -> T {
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

/// The first eight of `values`.
///
/// # Panics
/// If there are fewer (as slicing them would).
#[inline(always)]
fn first8<V>(values: &[V]) -> &[V; 8] {
    &values.as_chunks::<8>().0[0]
}

/// The dot product of one CSR row with `x`. With `CHECKED`, every load from `x` is
/// bounds-checked: the reference the gathering path is tested against. Stored values are
/// widened to `T` eight at a time before the multiply.
#[inline(always)]
pub(crate) fn dot_row<P: Isa, T: Scalar, V: Stored<T>, I: SpIndex, const CHECKED: bool>(
    values: &[V],
    indices: &[I],
    x: &[T],
) -> T {
    let mut acc = [T::zero(); LANES];
    let full = values.len() / LANES * LANES;
    for (v, i) in values[..full].chunks_exact(LANES).zip(indices[..full].chunks_exact(LANES)) {
        let v: [T; LANES] = V::widen8::<P>(first8(v));
        if CHECKED {
            for j in 0..LANES {
                acc[j] += v[j] * x[i[j].index()];
            }
        } else {
            // SAFETY: the CSR validator (or the trusted constructor, checked in debug)
            // guarantees every column index is < ncols, the public entry points check
            // x.len() == ncols, and `csr_spmv` runs gathering copies only when
            // ncols <= 2^31.
            acc = unsafe {
                gather_mul_add8::<P, T>(acc, &v, x, std::array::from_fn(|j| i[j].index() as u32))
            };
        }
    }
    let mut tail = T::zero();
    for (&v, &i) in values[full..].iter().zip(&indices[full..]) {
        tail += v.get()
            * if CHECKED {
                x[i.index()]
            } else {
                // SAFETY: as above.
                unsafe { *x.get_unchecked(i.index()) }
            };
    }
    reduce(acc) + tail
}

#[inline(always)]
fn csr_rows_kernel<P: Isa, T: Scalar, V: Stored<T>, I: SpIndex>(
    a: CsrView<'_, T, I, V>,
    rows: Range<usize>,
    alpha: T,
    x: &[T],
    beta: T,
    out: &mut [T],
) {
    for (r, y) in rows.zip(out.iter_mut()) {
        let range = a.indptr[r]..a.indptr[r + 1];
        let dot = dot_row::<P, T, V, I, false>(&a.values[range.clone()], &a.indices[range], x);
        let dot = match a.row_scales {
            Some(scales) => dot * scales[r],
            None => dot,
        };
        *y = combine(alpha, dot, beta, *y);
    }
}

multiversion! {
    gathering fn csr_rows<T: Scalar, V: Stored<T>, I: SpIndex>(a: CsrView<'_, T, I, V>, rows: Range<usize>, alpha: T, x: &[T], beta: T, out: &mut [T]) => csr_rows_kernel
}

pub(crate) fn csr_spmv<T: Scalar, V: Stored<T>, I: SpIndex>(
    a: CsrView<'_, T, I, V>,
    alpha: T,
    x: &[T],
    beta: T,
    y: &mut [T],
) {
    debug_assert_eq!((x.len(), y.len()), (a.ncols, a.nrows));
    let path = gathering_path(a.ncols);
    for_units(a, y, |rows, out| csr_rows(path, a, rows, alpha, x, beta, out));
}

/// The dot product of one N:M row with `x`, the column of slot `s` computed in the loop
/// (`(s / N) * m + position`), so no index array is read or written. Stored values go
/// through [`Stored::widen8`] as they are loaded, then `scale` (the row's, if it has one), so
/// the products are exactly those of the `T` values they stand for.
#[inline(always)]
fn nm_dot<P: Isa, T: Scalar, V: Stored<T>, const N: usize>(
    values: &[V],
    positions: &[u8],
    m: usize,
    x: &[T],
    scale: impl Fn(T) -> T,
) -> T {
    let widen = |v: V| scale(v.get());
    let widen8 = |v: &[V]| V::widen8::<P>(first8(v)).map(&scale);
    let mut acc = [T::zero(); LANES];
    let full = values.len() / LANES * LANES;
    let column = |s: usize, p: u8| (s / N) * m + usize::from(p);
    // Sixteen slots at a time from a 32-column window where the pattern allows (2:4, 4:8:
    // M <= 2N) and the window lies inside `x`; the AVX-512 copy permutes instead of
    // gathering. The lanes see the same products in the same order as below.
    let mut start = 0;
    if permutes16::<P, T>() && (16 / N) * m <= 32 {
        let offsets: [u32; 16] = std::array::from_fn(|j| ((j / N) * m) as u32);
        while start + 16 <= full && (start / N) * m + 32 <= x.len() {
            let c0 = (start / N) * m;
            let stored = &values[start..start + 16];
            let (low, high) = (widen8(&stored[..8]), widen8(&stored[8..]));
            let v: [T; 16] = std::array::from_fn(|j| if j < 8 { low[j] } else { high[j - 8] });
            // SAFETY: 16 slots from `start` exist (start + 16 <= full), the window of 32
            // lies in x (checked), and (j / N) * m + p < (16 / N) * m <= 32 because the
            // validator bounds every position by m.
            acc = unsafe {
                window_mul_add16::<P, T>(acc, &v, &positions[start..], &x[c0..c0 + 32], offsets)
            };
            start += 16;
        }
    }
    // Eight slots at a time from a 16-column window where M = 2N (1:2, 2:4, 4:8): four
    // slots in each half of the window, which the AVX2 copies permute instead of gathering.
    if permutes8::<P, T>() && m == 2 * N {
        let offsets: [u32; 8] = std::array::from_fn(|j| ((j / N) * m) as u32);
        while start + 8 <= full && (start / N) * m + 16 <= x.len() {
            let c0 = (start / N) * m;
            let stored = &values[start..start + 8];
            let v: [T; 8] = widen8(stored);
            // SAFETY: 8 slots from `start` exist (start + 8 <= full), the window of 16 lies
            // in x (checked), and with M = 2N slot j's column (j / N) * m + p is below 8
            // for j < 4 and in 8..16 for j >= 4, because the validator bounds every
            // position by m.
            acc = unsafe {
                window_mul_add8::<P, T>(acc, &v, &positions[start..], &x[c0..c0 + 16], offsets)
            };
            start += 8;
        }
    }
    for (c, (v, p)) in values[start..full]
        .chunks_exact(LANES)
        .zip(positions[start..full].chunks_exact(LANES))
        .enumerate()
    {
        let c = c + start / LANES;
        let v: [T; LANES] = widen8(v);
        // SAFETY: the N:M validator bounds every position by its group's width, so
        // (s / N) * m + p < ncols == x.len() (checked at the public entry points), and
        // `nm_spmv` runs gathering copies only when ncols <= 2^31.
        acc = unsafe {
            gather_mul_add8::<P, T>(
                acc,
                &v,
                x,
                std::array::from_fn(|j| column(c * LANES + j, p[j]) as u32),
            )
        };
    }
    let mut tail = T::zero();
    for (s, (&v, &p)) in values.iter().zip(positions).enumerate().skip(full) {
        // SAFETY: as above.
        tail += widen(v) * unsafe { *x.get_unchecked(column(s, p)) };
    }
    reduce(acc) + tail
}

#[inline(always)]
fn nm_rows_kernel<P: Isa, T: Scalar, V: Stored<T>>(
    a: NmView<'_, T, V>,
    rows: Range<usize>,
    alpha: T,
    x: &[T],
    beta: T,
    out: &mut [T],
) {
    let per_row = a.groups() * a.n;
    let (mut cols, mut widened) = (Vec::new(), Vec::new());
    for (r, y) in rows.zip(out.iter_mut()) {
        let values = &a.values[r * per_row..][..per_row];
        let positions = &a.positions[r * per_row..][..per_row];
        // Two copies of each loop: one that only widens, one that also scales.
        let dot = match (a.n, a.row_scales.map(|s| s[r])) {
            (1, None) => nm_dot::<P, T, V, 1>(values, positions, a.m, x, |v| v),
            (2, None) => nm_dot::<P, T, V, 2>(values, positions, a.m, x, |v| v),
            (4, None) => nm_dot::<P, T, V, 4>(values, positions, a.m, x, |v| v),
            (1, Some(s)) => nm_dot::<P, T, V, 1>(values, positions, a.m, x, |v| s * v),
            (2, Some(s)) => nm_dot::<P, T, V, 2>(values, positions, a.m, x, |v| s * v),
            (4, Some(s)) => nm_dot::<P, T, V, 4>(values, positions, a.m, x, |v| s * v),
            _ => {
                cols.resize(per_row, 0u32);
                a.expand_columns(r, &mut cols);
                let values = match (a.row_scales, V::as_compute(values)) {
                    (None, Some(values)) => values,
                    _ => {
                        widened.clear();
                        a.widen_row_into(r, &mut widened);
                        &widened[..]
                    }
                };
                dot_row::<P, T, T, u32, false>(values, &cols, x)
            }
        };
        *y = combine(alpha, dot, beta, *y);
    }
}

multiversion! {
    gathering fn nm_rows<T: Scalar, V: Stored<T>>(a: NmView<'_, T, V>, rows: Range<usize>, alpha: T, x: &[T], beta: T, out: &mut [T]) => nm_rows_kernel
}

pub(crate) fn nm_spmv<T: Scalar, V: Stored<T>>(
    a: NmView<'_, T, V>,
    alpha: T,
    x: &[T],
    beta: T,
    y: &mut [T],
) {
    let path = gathering_path(a.ncols);
    for_units(a, y, |rows, out| nm_rows(path, a, rows, alpha, x, beta, out));
}

/// The eight row sums of one sliced-ELLPACK slice (`values` and `indices` hold its
/// `8 * width` entries, step by step; lane `l`'s row has `lengths[l]` entries).
///
/// Lane `l` of step `j` goes into accumulator `j % 2`, in step order, and the two are
/// added at the end: two chains, so consecutive steps do not wait on each other's add.
/// Steps where every lane has an entry (all of them but the last few, since a slice's
/// rows are sorted by length) gather unmasked; the rest mask out the lanes past their
/// row's end, which neither read `x` nor change their sum, so every copy gives the bits
/// of the portable one.
#[inline(always)]
fn sell_slice<P: Isa, T: Scalar, V: Stored<T>, I: SpIndex>(
    values: &[V],
    indices: &[I],
    lengths: [usize; SLICE_ROWS],
    x: &[T],
) -> [T; SLICE_ROWS] {
    let width = values.len() / SLICE_ROWS;
    let indices = &indices[..values.len()];
    let common = lengths.iter().copied().min().unwrap_or(0).min(width);
    let (mut even, mut odd) = ([T::zero(); SLICE_ROWS], [T::zero(); SLICE_ROWS]);
    let mut j = 0;
    while j + 2 <= common {
        even = sell_step::<P, T, V, I>(even, values, indices, j, x);
        odd = sell_step::<P, T, V, I>(odd, values, indices, j + 1, x);
        j += 2;
    }
    while j < width {
        let acc = if j % 2 == 0 { &mut even } else { &mut odd };
        *acc = if j < common {
            sell_step::<P, T, V, I>(*acc, values, indices, j, x)
        } else {
            sell_masked_step::<P, T, V, I>(*acc, values, indices, j, lengths, x)
        };
        j += 1;
    }
    std::array::from_fn(|l| even[l] + odd[l])
}

/// Step `j` of a slice whose eight lanes all have an entry there.
#[inline(always)]
fn sell_step<P: Isa, T: Scalar, V: Stored<T>, I: SpIndex>(
    acc: [T; SLICE_ROWS],
    values: &[V],
    indices: &[I],
    j: usize,
    x: &[T],
) -> [T; SLICE_ROWS] {
    let (v, i) =
        (&values[j * SLICE_ROWS..][..SLICE_ROWS], &indices[j * SLICE_ROWS..][..SLICE_ROWS]);
    let v: [T; SLICE_ROWS] = V::widen8::<P>(first8(v));
    // SAFETY: the slice validator bounds the column of every entry inside its lane's
    // length by ncols (and `sell_slice` calls this only below every lane's length), the
    // public entry points check x.len() == ncols, and `sell_spmv` runs gathering copies
    // only when ncols <= 2^31.
    unsafe { gather_mul_add8::<P, T>(acc, &v, x, std::array::from_fn(|l| i[l].index() as u32)) }
}

/// Step `j` of a slice, on the lanes whose row has an entry there.
#[inline(always)]
fn sell_masked_step<P: Isa, T: Scalar, V: Stored<T>, I: SpIndex>(
    acc: [T; SLICE_ROWS],
    values: &[V],
    indices: &[I],
    j: usize,
    lengths: [usize; SLICE_ROWS],
    x: &[T],
) -> [T; SLICE_ROWS] {
    let (v, i) =
        (&values[j * SLICE_ROWS..][..SLICE_ROWS], &indices[j * SLICE_ROWS..][..SLICE_ROWS]);
    let v: [T; SLICE_ROWS] = V::widen8::<P>(first8(v));
    let idx = std::array::from_fn(|l| i[l].index() as u32);
    let live = std::array::from_fn(|l| j < lengths[l]);
    // SAFETY: as in `sell_step`, for the live lanes; the others are not read.
    unsafe { gather_mul_add8_masked::<P, T>(acc, &v, x, idx, live) }
}

#[inline(always)]
fn sell_windows_kernel<P: Isa, T: Scalar, V: Stored<T>, I: SpIndex>(
    a: SellView<'_, T, I, V>,
    windows: Range<usize>,
    alpha: T,
    x: &[T],
    beta: T,
    out: &mut [T],
) {
    let first_row = a.first_row(windows.start);
    for s in a.first_slice(windows.start)..a.first_slice(windows.end) {
        let lanes = a.lanes(s);
        let lengths = std::array::from_fn(|l| a.lengths.get(lanes.start + l).copied().unwrap_or(0));
        let (values, indices) = a.slice(s);
        let sums = sell_slice::<P, T, V, I>(values, indices, lengths, x);
        for (lane, sum) in lanes.zip(sums) {
            let row = a.order[lane];
            let sum = match a.row_scales {
                Some(scales) => sum * scales[row],
                None => sum,
            };
            // The validator keeps every row in its lane's window, so inside `out`.
            let y = &mut out[row - first_row];
            *y = combine(alpha, sum, beta, *y);
        }
    }
}

multiversion! {
    gathering fn sell_windows<T: Scalar, V: Stored<T>, I: SpIndex>(a: SellView<'_, T, I, V>, windows: Range<usize>, alpha: T, x: &[T], beta: T, out: &mut [T]) => sell_windows_kernel
}

pub(crate) fn sell_spmv<T: Scalar, V: Stored<T>, I: SpIndex>(
    a: SellView<'_, T, I, V>,
    alpha: T,
    x: &[T],
    beta: T,
    y: &mut [T],
) {
    debug_assert_eq!((x.len(), y.len()), (a.ncols, a.nrows));
    let path = gathering_path(a.ncols);
    for_units(a, y, |windows, out| sell_windows(path, a, windows, alpha, x, beta, out));
}

#[inline(always)]
fn bsr_rows_kernel<P: Isa, T: Scalar, V: Stored<T>>(
    a: BsrView<'_, T, V>,
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
    // Narrow values are widened a block at a time, eight per step.
    let mut widened: Vec<T> = Vec::new();
    for i in block_rows {
        acc.iter_mut().for_each(|v| *v = T::zero());
        for k in a.indptr[i]..a.indptr[i + 1] {
            let c0 = a.block_cols[k] as usize * bc;
            let width = bc.min(a.ncols - c0);
            let block = V::as_compute_in::<P>(&a.values[k * br * bc..][..br * bc], &mut widened);
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
            let v = match a.row_scales {
                Some(scales) => v * scales[r0 + rr],
                None => v,
            };
            let y = &mut out[r0 - first_row + rr];
            *y = combine(alpha, v, beta, *y);
        }
    }
}

multiversion! {
    fn bsr_rows<T: Scalar, V: Stored<T>>(a: BsrView<'_, T, V>, block_rows: Range<usize>, alpha: T, x: &[T], beta: T, out: &mut [T]) => bsr_rows_kernel
}

pub(crate) fn bsr_spmv<T: Scalar, V: Stored<T>>(
    a: BsrView<'_, T, V>,
    alpha: T,
    x: &[T],
    beta: T,
    y: &mut [T],
) {
    let path = kernel_path();
    for_units(a, y, |block_rows, out| bsr_rows(path, a, block_rows, alpha, x, beta, out));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{KernelPath, all_paths};

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
        let a = CsrView {
            nrows: 5,
            ncols: 40,
            indptr: &indptr,
            indices: &indices,
            values: &values,
            row_scales: None,
        };
        let reference: Vec<f32> = (0..5)
            .map(|r| {
                dot_row::<crate::kernels::isa::Portable, f32, f32, u16, true>(
                    &values[indptr[r]..indptr[r + 1]],
                    &indices[indptr[r]..indptr[r + 1]],
                    &x,
                )
            })
            .collect();
        for path in [KernelPath::Portable, KernelPath::Avx2, KernelPath::Avx512, KernelPath::Neon] {
            let mut y = vec![f32::NAN; 5];
            csr_rows(KernelPath::resolve(path), a, 0..5, 1.0, &x, 0.0, &mut y);
            assert_eq!(
                y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                reference.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{path:?}"
            );
        }
    }

    #[test]
    fn inputs_past_signed_32_bit_offsets_do_not_gather() {
        assert_eq!(gathering_path((1 << 31) + 1), KernelPath::Portable);
        assert_eq!(gathering_path(1 << 31), kernel_path());
        assert_eq!(gathering_path(0), kernel_path());
    }

    fn bits<T: Scalar>(v: &[T]) -> Vec<u64> {
        v.iter().map(|x| x.as_f64().to_bits()).collect()
    }

    /// The gathering copies of the CSR row kernel give the portable copy's bits, for both
    /// element types, on rows long and short (every remainder modulo the 8 lanes).
    #[test]
    fn gathering_csr_rows_match_the_portable_bits_for_f32_and_f64() {
        fn check<T: Scalar>() {
            let ncols = 301;
            let (mut indptr, mut indices, mut values) = (vec![0], Vec::new(), Vec::new());
            for r in 0..40 {
                indices.extend(
                    (0..ncols).filter(|c| (c * 7 + r * 13) % 5 < r % 5 + 1).map(|c| c as u32),
                );
                values.extend(
                    (values.len()..indices.len())
                        .map(|k| T::from_f64_lossy((k as f64 * 0.37).sin())),
                );
                indptr.push(indices.len());
            }
            let x: Vec<T> =
                (0..ncols).map(|k| T::from_f64_lossy((k as f64 * 0.11).cos())).collect();
            let a = CsrView {
                nrows: 40,
                ncols,
                indptr: &indptr,
                indices: &indices,
                values: &values,
                row_scales: None,
            };
            let mut reference = vec![T::zero(); 40];
            csr_rows(KernelPath::Portable, a, 0..40, T::one(), &x, T::zero(), &mut reference);
            for path in all_paths() {
                let mut y = vec![T::zero(); 40];
                csr_rows(path, a, 0..40, T::one(), &x, T::zero(), &mut y);
                assert_eq!(bits(&y), bits(&reference), "{path:?}");
            }
        }
        check::<f32>();
        check::<f64>();
    }

    /// Narrow stored values (int8 with row scales, bf16, f16) give the same bits on every
    /// copy as the portable copy (the batched kernel: `spmm`'s tests).
    #[test]
    fn narrow_values_give_the_portable_bits_on_every_copy() {
        fn check<V: Stored<f32>>(narrow: impl Fn(f32) -> V, scaled: bool) {
            let (nrows, ncols) = (33usize, 301usize);
            let fixture = crate::kernels::NarrowFixture::new(nrows, ncols, narrow, scaled);
            let a = fixture.view();
            let x: Vec<f32> = (0..ncols).map(|k| (k as f32 * 0.11).cos()).collect();
            let mut reference = vec![0.0f32; nrows];
            csr_rows(KernelPath::Portable, a, 0..nrows, 1.0, &x, 0.0, &mut reference);
            for path in all_paths() {
                let mut y = vec![0.0f32; nrows];
                csr_rows(path, a, 0..nrows, 1.0, &x, 0.0, &mut y);
                assert_eq!(bits(&y), bits(&reference), "{path:?}");
            }
        }
        check::<i8>(|v| v.round_ties_even().clamp(-127.0, 127.0) as i8, true);
        check::<half::bf16>(half::bf16::from_f32, false);
        check::<half::f16>(half::f16::from_f32, false);
    }

    /// Narrow sliced-ELLPACK and block-sparse values (int8 with row scales, bf16, f16)
    /// give the same bits on every copy as the portable copy (blocks that overhang the
    /// matrix included).
    #[test]
    fn narrow_sell_and_block_values_give_the_portable_bits_on_every_copy() {
        fn check<V: crate::NarrowValue>() {
            let (nrows, ncols) = (37, 203);
            let w = crate::testing::pruned(nrows, ncols, 0.3, 5);
            let csr: crate::Csr<f32, u32> = crate::Csr::from_dense(&w).unwrap();
            let sell = crate::NarrowSell::<V, u32>::from_csr(&csr).unwrap();
            let shape = shears_core::BlockShape::new(4, 3).unwrap();
            let block = crate::NarrowBlock::<V>::from_dense(&w, shape).unwrap();
            let (sell, block) = (sell.view(), block.view());
            let x: Vec<f32> = (0..ncols).map(|k| (k as f32 * 0.11).cos()).collect();
            let run = |path| {
                let (mut by_sell, mut by_block) = (vec![0.0f32; nrows], vec![0.0f32; nrows]);
                sell_windows(path, sell, 0..sell.windows(), 1.0, &x, 0.0, &mut by_sell);
                bsr_rows(path, block, 0..block.block_rows(), 1.0, &x, 0.0, &mut by_block);
                (bits(&by_sell), bits(&by_block))
            };
            let portable = run(KernelPath::Portable);
            for path in all_paths() {
                assert_eq!(run(path), portable, "{} {path:?}", V::NAME);
            }
        }
        check::<i8>();
        check::<half::bf16>();
        check::<half::f16>();
    }

    /// Narrow N:M values (int8 with row scales, bf16, f16) give, on every copy, the bits
    /// of the f32 values they stand for on the portable copy: windowed patterns (2:4,
    /// 4:8) and a gathered one (3:7, a short last group).
    #[test]
    fn narrow_nm_rows_give_the_widened_bits_on_every_copy() {
        fn check<V: Stored<f32>>(narrow: impl Fn(f32) -> V + Copy, scaled: bool) {
            for (n, m, ncols) in [(2, 4, 301), (4, 8, 77), (3, 7, 50)] {
                let fixture =
                    crate::kernels::NarrowNmFixture::new((13, ncols), (n, m), narrow, scaled);
                let x: Vec<f32> = (0..ncols).map(|k| (k as f32 * 0.11).cos()).collect();
                let rows = 0..fixture.nrows;
                let mut want = vec![0.0f32; fixture.nrows];
                let wide = fixture.widened_view();
                nm_rows(KernelPath::Portable, wide, rows.clone(), 1.0, &x, 0.0, &mut want);
                for path in all_paths() {
                    let mut y = vec![0.0f32; fixture.nrows];
                    nm_rows(path, fixture.view(), rows.clone(), 1.0, &x, 0.0, &mut y);
                    assert_eq!(bits(&y), bits(&want), "{n}:{m}, {path:?}");
                }
            }
        }
        check::<i8>(|v| v.round_ties_even().clamp(-127.0, 127.0) as i8, true);
        check::<half::bf16>(half::bf16::from_f32, false);
        check::<half::f16>(half::f16::from_f32, false);
    }

    /// Every copy of the sliced-ELLPACK kernel gives the bits of each row's two
    /// alternating sums added, for both element types: rows of every length (empty ones,
    /// lanes that run out before their slice's last steps, odd and even widths), a window
    /// and a slice cut short by the last row, and `x` holding a NaN that only padding
    /// lanes could reach.
    #[test]
    fn sell_windows_match_the_alternating_sums_on_every_copy() {
        fn check<T: Scalar>() {
            let (nrows, ncols) = (21, 301);
            let (mut indptr, mut indices, mut values) = (vec![0], Vec::new(), Vec::new());
            for r in 0..nrows {
                indices
                    .extend((1..ncols).filter(|c| (c * 7 + r * 13) % 9 < r % 9).map(|c| c as u32));
                values.extend(
                    (values.len()..indices.len())
                        .map(|k| T::from_f64_lossy((k as f64 * 0.37).sin())),
                );
                indptr.push(indices.len());
            }
            let csr = crate::Csr::try_from_parts(nrows, ncols, indptr, indices, values).unwrap();
            let sell = crate::SlicedEll::from_csr_with_window(&csr, 16).unwrap();
            // Column 0 is never kept: only padding entries point at it.
            let mut x: Vec<T> =
                (0..ncols).map(|k| T::from_f64_lossy((k as f64 * 0.11).cos())).collect();
            x[0] = T::from_f64_lossy(f64::NAN);
            let want: Vec<T> = (0..nrows)
                .map(|r| {
                    let (cols, vals) = csr.row(r).unwrap();
                    let (mut even, mut odd) = (T::zero(), T::zero());
                    for (j, (&c, &v)) in cols.iter().zip(vals).enumerate() {
                        let sum = if j % 2 == 0 { &mut even } else { &mut odd };
                        *sum += v * x[c as usize];
                    }
                    even + odd
                })
                .collect();
            for path in all_paths() {
                let mut y = vec![T::zero(); nrows];
                sell_windows(path, sell.view(), 0..2, T::one(), &x, T::zero(), &mut y);
                assert_eq!(bits(&y), bits(&want), "{path:?}");
            }
        }
        check::<f32>();
        check::<f64>();
    }

    /// N:M rows give the portable copy's bits on every copy, including the AVX-512
    /// windowed permute (patterns with M <= 2N) and the gather it falls back to where a
    /// row's last window would run past the input; and both equal the checked CSR
    /// reference of the same matrix.
    #[test]
    fn nm_rows_match_the_portable_bits_and_the_csr_reference() {
        fn check<T: Scalar>(n: usize, m: usize, ncols: usize) {
            let nrows = 5;
            let groups = ncols.div_ceil(m);
            let per_row = groups * n;
            let mut positions = Vec::new();
            for r in 0..nrows {
                for g in 0..groups {
                    let width = m.min(ncols - g * m);
                    let kept = n.min(width);
                    // `kept` distinct, increasing positions, then padding slots (value 0).
                    let first = (r + g) % (width - kept + 1);
                    positions.extend((0..n).map(|k| (first + k.min(kept - 1)) as u8));
                }
            }
            let values: Vec<T> = (0..nrows * per_row)
                .map(|k| {
                    let (g, slot) = ((k % per_row) / n, k % n);
                    let width = m.min(ncols - g * m);
                    if slot < n.min(width) {
                        T::from_f64_lossy((k as f64 * 0.37).sin())
                    } else {
                        T::zero()
                    }
                })
                .collect();
            let x: Vec<T> =
                (0..ncols).map(|k| T::from_f64_lossy((k as f64 * 0.11).cos())).collect();
            let a = NmView {
                nrows,
                ncols,
                n,
                m,
                values: &values,
                positions: &positions,
                row_scales: None,
            };
            let mut reference = vec![T::zero(); nrows];
            nm_rows(KernelPath::Portable, a, 0..nrows, T::one(), &x, T::zero(), &mut reference);
            for path in all_paths() {
                let mut y = vec![T::zero(); nrows];
                nm_rows(path, a, 0..nrows, T::one(), &x, T::zero(), &mut y);
                assert_eq!(bits(&y), bits(&reference), "{n}:{m} over {ncols} columns, {path:?}");
            }
            let mut cols = vec![0u32; per_row];
            for (r, &got) in reference.iter().enumerate() {
                a.expand_columns(r, &mut cols);
                let row = &values[r * per_row..][..per_row];
                let want =
                    dot_row::<crate::kernels::isa::Portable, T, T, u32, true>(row, &cols, &x);
                assert_eq!(got.as_f64().to_bits(), want.as_f64().to_bits(), "{n}:{m} row {r}");
            }
        }
        for (n, m) in [(2, 4), (4, 8), (1, 2), (2, 8), (1, 4)] {
            for ncols in [m, 31, 32, 33, 64, 100, 4 * 64 + 3, 1000] {
                if ncols >= m {
                    check::<f32>(n, m, ncols);
                    check::<f64>(n, m, ncols);
                }
            }
        }
    }
}
