//! Tiled transposes between the row-major order of files and nalgebra's column-major
//! matrices.

/// Side of the square tiles [`transpose`] works in.
const TILE: usize = 32;

/// Writes the transpose of the `nr x nc` block of `src` (row `i` at `i * src_stride`)
/// into `dst` (row `j` at `j * dst_stride`), a tile at a time through a small buffer:
/// both sides are then read and written in contiguous runs. Strides are often powers of
/// two, where writing element by element sends every row of a tile to one L1 set.
fn transpose<T: Copy>(
    src: &[T],
    src_stride: usize,
    dst: &mut [T],
    dst_stride: usize,
    nr: usize,
    nc: usize,
) {
    let Some(&fill) = src.first() else { return };
    let mut tile = [fill; TILE * TILE];
    for i0 in (0..nr).step_by(TILE) {
        let ni = TILE.min(nr - i0);
        for j0 in (0..nc).step_by(TILE) {
            let nj = TILE.min(nc - j0);
            for i in 0..ni {
                let row = &src[(i0 + i) * src_stride + j0..][..nj];
                for (j, &v) in row.iter().enumerate() {
                    tile[j * TILE + i] = v;
                }
            }
            for j in 0..nj {
                let (start, from) = ((j0 + j) * dst_stride + i0, &tile[j * TILE..]);
                if ni == TILE {
                    // A constant length: the compiler unrolls the copy, where a copy of
                    // run-time length calls memmove for every 32 elements.
                    dst[start..start + TILE].copy_from_slice(&from[..TILE]);
                } else {
                    dst[start..start + ni].copy_from_slice(&from[..ni]);
                }
            }
        }
    }
}

/// Copies the row-major `n x cols` block `src` into rows `first..first + n` of the
/// column-major matrix `dst` with `rows` rows.
pub(crate) fn transpose_into<T: Copy>(
    src: &[T],
    n: usize,
    cols: usize,
    dst: &mut [T],
    rows: usize,
    first: usize,
) {
    transpose(src, cols, &mut dst[first..], rows, n, cols);
}

/// Copies rows `first..first + n` of the column-major matrix `src` (with `rows` rows)
/// into the row-major `n x cols` block `dst`.
pub(crate) fn transpose_from<T: Copy>(
    src: &[T],
    rows: usize,
    first: usize,
    dst: &mut [T],
    n: usize,
    cols: usize,
) {
    transpose(&src[first..], rows, dst, cols, cols, n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiled_transposes_match_indexing() {
        let (rows, cols, first, n) = (101, 67, 33, 50);
        let src: Vec<u32> = (0..(n * cols) as u32).collect();
        let mut dst = vec![u32::MAX; rows * cols];
        transpose_into(&src, n, cols, &mut dst, rows, first);
        for r in 0..rows {
            for c in 0..cols {
                let want = if (first..first + n).contains(&r) {
                    src[(r - first) * cols + c]
                } else {
                    u32::MAX
                };
                assert_eq!(dst[c * rows + r], want, "({r}, {c})");
            }
        }
        let mut back = vec![0; n * cols];
        transpose_from(&dst, rows, first, &mut back, n, cols);
        assert_eq!(back, src);
    }
}
