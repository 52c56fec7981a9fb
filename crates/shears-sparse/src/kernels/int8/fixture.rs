//! The int8 CSR kernels' test matrix and its oracle: the dense int8 product's
//! reference loop on the same weights written out.

use nalgebra::DMatrix;

use super::{Int8DenseView, int8_dense_reference};
use crate::index::SpIndex;
use crate::kernels::CsrView;

/// A CSR matrix of int8 values with columns of type `I` and a scale per row.
pub(super) struct Fixture<I> {
    pub(super) nrows: usize,
    pub(super) ncols: usize,
    pub(super) indptr: Vec<usize>,
    pub(super) indices: Vec<I>,
    pub(super) values: Vec<i8>,
    pub(super) scales: Vec<f32>,
}

impl<I: SpIndex> Fixture<I> {
    /// Values of every sign (-127 and 127 among them), about `density` of the entries
    /// stored, a distinct scale per row.
    pub(super) fn new(nrows: usize, ncols: usize, density: f64, seed: u64) -> Fixture<I> {
        let mut next = crate::testing::xorshift(seed);
        let (mut indptr, mut indices, mut values) = (vec![0], Vec::new(), Vec::new());
        for _ in 0..nrows {
            for c in 0..ncols {
                if ((next() >> 11) as f64 / (1u64 << 53) as f64) < density {
                    indices.push(I::try_from_index(c).expect("the index type holds the column"));
                    values.push(match next() % 4 {
                        0 => 127,
                        1 => -127,
                        _ => ((next() % 255) as i64 - 127) as i8,
                    });
                }
            }
            indptr.push(indices.len());
        }
        let scales = (0..nrows).map(|r| 1e-3 + (r % 7) as f32 * 3e-4).collect();
        Fixture { nrows, ncols, indptr, indices, values, scales }
    }

    pub(super) fn view(&self) -> CsrView<'_, f32, I, i8> {
        CsrView {
            nrows: self.nrows,
            ncols: self.ncols,
            indptr: &self.indptr,
            indices: &self.indices,
            values: &self.values,
            row_scales: Some(&self.scales),
        }
    }

    /// The dense int8 product's reference loop on the same weights written out, as bits,
    /// row-major (as the rows kernels write).
    pub(super) fn reference(&self, x: &DMatrix<f32>) -> Vec<u32> {
        let mut dense = vec![0i8; self.nrows * self.ncols];
        for r in 0..self.nrows {
            for k in self.indptr[r]..self.indptr[r + 1] {
                dense[r * self.ncols + self.indices[k].index()] = self.values[k];
            }
        }
        let a = Int8DenseView {
            rows: self.nrows,
            cols: self.ncols,
            group: self.ncols.max(1),
            values: &dense,
            scales: &self.scales,
            packed: None,
        };
        let want = int8_dense_reference(a, x);
        (0..self.nrows)
            .flat_map(|r| (0..x.ncols()).map(move |j| (r, j)))
            .map(|(r, j)| want[(r, j)].to_bits())
            .collect()
    }
}
