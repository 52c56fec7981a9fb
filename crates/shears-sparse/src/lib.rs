//! shears-sparse: pruned matrices in formats that run faster than dense.
//!
//! Pruning only pays when the pruned matrix runs faster. This crate turns a weight
//! matrix and its [`Mask`] into
//!
//! - [`Csr`] / [`AnyCsr`]: compressed sparse rows with `u16` or `u32` column indices,
//!   for unstructured sparsity;
//! - [`SlicedEll`] / [`AnySlicedEll`]: the same entries in sliced ELLPACK layout, eight
//!   rows advancing in lockstep, for batch-1 products;
//! - [`NmSparse`]: N:M-packed values and in-group positions (2:4 at 50%, where CSR cannot
//!   win);
//! - [`BlockSparse`]: dense `r x c` blocks for block-pruned matrices;
//! - [`Compacted`] / [`compact_pair`]: physically smaller dense matrices after
//!   structured pruning ([`Int8Compacted`] in int8, multiplied with integer sums);
//! - [`NarrowCsr`] ([`Int8Csr`], [`Bf16Csr`], [`F16Csr`]): CSR with values stored in
//!   fewer bytes (int8 with a scale per row, bf16, f16), on CSR's kernels (int8 products
//!   against one token and batches of 9 tokens or more on integer ones);
//! - [`NarrowNm`] ([`Int8Nm`], [`Bf16Nm`], [`F16Nm`]): the same for N:M, on N:M's kernels
//!   (int8 batches on the integer ones);
//! - [`NarrowSell`] ([`Int8Sell`], [`Bf16Sell`], [`F16Sell`]) and [`NarrowBlock`]
//!   ([`Int8Block`], [`Bf16Block`], [`F16Block`]): the same for sliced ELLPACK and
//!   block-sparse, on their kernels;
//!
//! and [`choose_format`] picks among the `f32`/`f64` ones from a mask and a batch size
//! (with fixed crossovers, or with this machine's measured by [`calibrate::Crossovers`]
//! through [`choose_format_with`]); [`AnySparse`] holds whichever it picked, and
//! multiplies through the same [`SparseProduct`] trait as every format. Every format validates at construction
//! ([`Csr::try_from_parts`] and friends) and round-trips with `to_dense` (`to_csr`,
//! `to_nm`, `to_sell` and `to_block` for the narrow ones); all but [`Compacted`] persist with a magic
//! tag and a version (`to_bytes`, `from_bytes`), and so does [`Int8Matrix`].
//!
//! The key decision: **one generic kernel per operation, compiled per instruction set.**
//! The products ([`SparseProduct`]: `matvec_into`, `matmul_into`, in the BLAS form
//! `Y <- alpha A X + beta Y`) are each written once over `f32`/`f64` and both index
//! types, and [`kernel_path`] runs the AVX-512, AVX2, NEON (aarch64) or portable
//! compilation of that same code, picked at run time. A plain `cargo build --release` gets the SIMD (including the
//! two instructions the compiler does not emit by itself: a gather from `x` for each
//! eight stored weights, and for 2:4 a permute over a 32-column window), every path a
//! CPU can run computes bit-identical results, and rows are split across rayon threads
//! by stored entries with the same bit-identical guarantee. (A CPU without fused
//! multiply-add runs only the portable path, whose batched products then multiply and
//! add separately.)
//!
//! ```
//! use nalgebra::{DMatrix, DVector};
//! use shears_core::Mask;
//! use shears_sparse::{AnyCsr, SparseProduct};
//!
//! let w = DMatrix::<f32>::from_fn(64, 64, |r, c| (r * 64 + c) as f32);
//! let mask = Mask::from_fn(64, 64, |r, c| (r + c) % 10 == 0)?; // 90% pruned
//! let csr = AnyCsr::from_dense_masked(&w, &mask)?;
//! let x = DVector::from_element(64, 1.0);
//! assert_eq!(csr.matvec(&x)?, mask.apply(&w)? * &x);
//! # Ok::<(), shears_sparse::Error>(())
//! ```
//!
//! # Features
//! - `sprs` (default): `Csr::to_sprs` and `Csr::from_sprs`, conversions to and from
//!   the `sprs` crate's matrices.
//!
//! Force a kernel path with `SHEARS_KERNEL=portable`, `avx2`, `avx512` or `neon` (it falls back
//! to the best the CPU supports); threads follow rayon's pool (`RAYON_NUM_THREADS`). Two
//! choices within a path are measured once per process, and each can be forced, for
//! comparisons: `SHEARS_GATHER=on|off` (gather instructions at batch 1) and
//! `SHEARS_NM_LANES=on|off` (batched `f32` N:M products by a permute per product rather
//! than a load; on AVX2 the permutes run only from 512 batch columns). Other values are
//! ignored. [`kernel_description`] says what runs.

mod any;
mod block;
pub mod calibrate;
mod choose;
mod compact;
mod csr;
mod dense;
mod error;
mod index;
mod kernels;
mod narrow_block;
mod narrow_csr;
mod narrow_nm;
mod narrow_sell;
mod nm;
mod persist;
mod product;
mod quant;
mod sell;
pub mod tuning;
mod validate;

pub use any::AnySparse;
pub use block::BlockSparse;
pub use choose::{Format, choose_format, choose_format_with};
pub use compact::{Compacted, Compaction, Int8Compacted, compact_pair};
pub use csr::{AnyCsr, Csr};
pub use error::{Error, FormatError, Result};
pub use index::SpIndex;
pub use kernels::{KernelPath, SLICE_ROWS, kernel_description, kernel_path, uses_gathers};
pub use narrow_block::{Bf16Block, F16Block, Int8Block, NarrowBlock};
pub use narrow_csr::{Bf16Csr, F16Csr, Int8Csr, NarrowCsr, NarrowValue};
pub use narrow_nm::{Bf16Nm, F16Nm, Int8Nm, NarrowNm};
pub use narrow_sell::{Bf16Sell, F16Sell, Int8Sell, NarrowSell};
pub use nm::NmSparse;
pub use persist::SPARSE_FORMAT_VERSION;
pub use product::{Epilogue, Layout, Orientation, SparseProduct};
pub use quant::{Int8Matrix, QuantScheme};
pub use sell::{AnySlicedEll, SlicedEll, SlicedEllParts};
pub use shears_core::{BlockShape, Mask, NmPattern};

/// Test-only helpers shared by the crate's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use nalgebra::DMatrix;

    use crate::SparseProduct;

    /// A pruned matrix of values spread over several magnitudes, about `density` kept.
    pub(crate) fn pruned(nrows: usize, ncols: usize, density: f64, seed: u64) -> DMatrix<f32> {
        let mut next = xorshift(seed);
        DMatrix::from_fn(nrows, ncols, |_, _| {
            let state = next();
            if ((state >> 11) as f64 / (1u64 << 53) as f64) >= density {
                0.0
            } else {
                (((state % 1000) as f64 / 500.0 - 1.0) * 10f64.powi((state % 4) as i32 - 2)) as f32
            }
        })
    }

    /// Whether `got`, the [`product`] of a matrix with `x`, is within rounding of the
    /// product of `dense`, the values it stands for, computed in f64; else the first
    /// entry that is not.
    pub(crate) fn near_product(
        got: &DMatrix<f32>,
        dense: &DMatrix<f32>,
        x: &DMatrix<f32>,
    ) -> Result<(), String> {
        let want = dense.map(f64::from) * x.map(f64::from);
        let y0 = DMatrix::from_fn(dense.nrows(), x.ncols(), |r, j| (r + 2 * j) as f64 * 0.5);
        for ((g, e), y0) in got.iter().zip(want.iter()).zip(y0.iter()) {
            let e = 0.5 * e + 2.0 * y0;
            let tol = 1e-4 * (1.0 + e.abs()) + 1e-5 * x.nrows() as f64;
            if (f64::from(*g) - e).abs() > tol {
                return Err(format!("{g} vs {e}"));
            }
        }
        Ok(())
    }

    /// A matrix's values as bits, to compare results exactly.
    pub(crate) fn bits(m: &DMatrix<f32>) -> Vec<u32> {
        m.iter().map(|v| v.to_bits()).collect()
    }

    /// `a`'s product with `x` (alpha 0.5, beta 2 on a set `Y`): a vector product for one
    /// column, else a matrix one.
    pub(crate) fn product(a: &impl SparseProduct<f32>, x: &DMatrix<f32>) -> DMatrix<f32> {
        let mut y = DMatrix::from_fn(a.shape().0, x.ncols(), |r, j| (r + 2 * j) as f32 * 0.5);
        if x.ncols() == 1 {
            let mut column = y.column(0).into_owned();
            a.matvec_into(0.5, x.column(0).as_slice(), 2.0, column.as_mut_slice()).unwrap();
            y.set_column(0, &column);
        } else {
            a.matmul_into(0.5, x, 2.0, &mut y).unwrap();
        }
        y
    }

    /// A xorshift64 generator seeded with `seed` (made odd, so never stuck at zero): the
    /// same sequence for a seed, on every machine.
    pub(crate) fn xorshift(seed: u64) -> impl FnMut() -> u64 {
        let mut state = seed | 1;
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }
}
