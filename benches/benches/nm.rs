//! 2:4 at 50%: shears N:M kernels against nalgebra dense (and CSR at the same mask), at
//! batch 1 and 32, shears on a one-thread rayon pool (nalgebra's products use one thread).
//!
//! Run with: cargo bench -p shears-benches --bench nm

#![allow(missing_docs, reason = "criterion's macros generate undocumented functions")]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use nalgebra::{DMatrix, DVector};
use shears_benches::{SEED, matrix, pool, two_four_mask, vector};
use shears_core::NmPattern;
use shears_sparse::{AnyCsr, NmSparse, SparseProduct};

fn nm(c: &mut Criterion) {
    let one = pool(1);
    for (rows, cols) in [(4096, 4096), (1536, 384)] {
        let w = matrix(rows, cols, SEED);
        let mask = two_four_mask(&w);
        let nm = NmSparse::from_dense_masked(&w, &mask, NmPattern::TWO_FOUR)
            .unwrap_or_else(|e| panic!("{e}"));
        let csr = AnyCsr::from_dense_masked(&w, &mask).unwrap_or_else(|e| panic!("{e}"));
        for batch in [1usize, 32] {
            let mut group = c.benchmark_group(format!("nm/{rows}x{cols}/b{batch}"));
            group.sample_size(20).measurement_time(std::time::Duration::from_secs(2));
            if batch == 1 {
                let x = vector(cols, SEED + 1);
                let mut y = DVector::zeros(rows);
                group.bench_function(BenchmarkId::new("dense", 0), |b| {
                    b.iter(|| y.gemv(1.0, black_box(&w), &x, 0.0))
                });
                let mut ys = vec![0.0f32; rows];
                group.bench_function(BenchmarkId::new("nm", 50), |b| {
                    one.install(|| {
                        b.iter(|| nm.matvec_into(1.0, black_box(x.as_slice()), 0.0, &mut ys))
                    })
                });
                group.bench_function(BenchmarkId::new("csr", 50), |b| {
                    one.install(|| {
                        b.iter(|| csr.matvec_into(1.0, black_box(x.as_slice()), 0.0, &mut ys))
                    })
                });
            } else {
                let x = matrix(cols, batch, SEED + 1);
                let mut y = DMatrix::zeros(rows, batch);
                group.bench_function(BenchmarkId::new("dense", 0), |b| {
                    b.iter(|| y.gemm(1.0, black_box(&w), &x, 0.0))
                });
                group.bench_function(BenchmarkId::new("nm", 50), |b| {
                    one.install(|| b.iter(|| nm.matmul_into(1.0, black_box(&x), 0.0, &mut y)))
                });
                group.bench_function(BenchmarkId::new("csr", 50), |b| {
                    one.install(|| b.iter(|| csr.matmul_into(1.0, black_box(&x), 0.0, &mut y)))
                });
            }
            group.finish();
        }
    }
}

criterion_group!(benches, nm);
criterion_main!(benches);
