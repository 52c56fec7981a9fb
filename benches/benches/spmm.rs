//! Batched products `A X` (X is `cols x batch`): shears CSR against nalgebra dense gemm
//! and sprs, plus the compacted dense matrix after 50% row pruning. In the `spmm/*` groups
//! shears runs on a one-thread rayon pool, as nalgebra's gemm runs on one thread;
//! `spmm-threads` measures two.
//!
//! Run with: cargo bench -p shears-benches --bench spmm

#![allow(missing_docs, reason = "criterion's macros generate undocumented functions")]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nalgebra::DMatrix;
use shears_benches::{
    SEED, csr_halves, independent_halves, magnitude_mask, matrix, pool, rows_mask,
};
use shears_sparse::{AnyCsr, Compacted, Compaction, SparseProduct};

const SHAPES: [(usize, usize); 2] = [(4096, 4096), (1536, 384)];
const BATCHES: [usize; 3] = [8, 32, 128];
const SPARSITIES: [f64; 4] = [0.5, 0.8, 0.9, 0.95];

fn spmm(c: &mut Criterion) {
    let one = pool(1);
    for (rows, cols) in SHAPES {
        let w = matrix(rows, cols, SEED);
        for batch in BATCHES {
            let x = matrix(cols, batch, SEED + 1);
            let mut group = c.benchmark_group(format!("spmm/{rows}x{cols}/b{batch}"));
            group.sample_size(10).measurement_time(std::time::Duration::from_secs(2));
            group.throughput(Throughput::Elements((rows * cols * batch) as u64));
            let mut y = DMatrix::zeros(rows, batch);
            group.bench_function(BenchmarkId::new("dense", 0), |b| {
                b.iter(|| y.gemm(1.0, black_box(&w), &x, 0.0))
            });
            for s in SPARSITIES {
                let pct = (s * 100.0).round() as u32;
                let mask = magnitude_mask(&w, s);
                let csr = AnyCsr::from_dense_masked(&w, &mask).unwrap_or_else(|e| panic!("{e}"));
                group.bench_function(BenchmarkId::new("csr", pct), |b| {
                    one.install(|| b.iter(|| csr.matmul_into(1.0, black_box(&x), 0.0, &mut y)))
                });
                let sp = shears_sparse::Csr::<f32, u32>::from_dense_masked(&w, &mask)
                    .unwrap_or_else(|e| panic!("{e}"))
                    .to_sprs();
                let xa = ndarray::Array2::from_shape_fn((cols, batch), |(i, j)| x[(i, j)]);
                group.bench_function(BenchmarkId::new("sprs-csr", pct), |b| {
                    b.iter(|| &sp * black_box(&xa))
                });
            }
            let compact = Compacted::new(&w, &rows_mask(&w, 0.5), Compaction::Rows, None)
                .unwrap_or_else(|e| panic!("{e}"));
            let mut yc = DMatrix::zeros(compact.matrix().nrows(), batch);
            group.bench_function(BenchmarkId::new("compact", 50), |b| {
                b.iter(|| yc.gemm(1.0, black_box(compact.matrix()), &x, 0.0))
            });
            group.finish();
        }
    }
}

/// CSR SpMM at 90%, batch 32, on 4096x4096 with 1 and with 2 threads, each on its own
/// rayon pool, and the machine's ceiling for the 2-thread product: its two halves on two
/// threads that never synchronize.
fn spmm_threads(c: &mut Criterion) {
    let (rows, cols, batch) = (4096, 4096, 32);
    let w = matrix(rows, cols, SEED);
    let x = matrix(cols, batch, SEED + 1);
    let mask = magnitude_mask(&w, 0.9);
    let csr = AnyCsr::from_dense_masked(&w, &mask).unwrap_or_else(|e| panic!("{e}"));
    let mut group = c.benchmark_group(format!("spmm-threads/{rows}x{cols}/b{batch}/csr90"));
    group.sample_size(20).measurement_time(std::time::Duration::from_secs(2));
    for threads in [1, 2] {
        let pool = pool(threads);
        let mut y = DMatrix::zeros(rows, batch);
        group.bench_function(BenchmarkId::new("threads", threads), |b| {
            pool.install(|| b.iter(|| csr.matmul_into(1.0, black_box(&x), 0.0, &mut y)))
        });
    }
    let halves = csr_halves(&w, &mask);
    group.bench_function(BenchmarkId::new("independent-halves", 2), |b| {
        b.iter_custom(|iters| {
            let (mut y0, mut y1) =
                (DMatrix::zeros(rows / 2, batch), DMatrix::zeros(rows / 2, batch));
            independent_halves(
                iters,
                || drop(halves[0].matmul_into(1.0, black_box(&x), 0.0, &mut y0)),
                || drop(halves[1].matmul_into(1.0, black_box(&x), 0.0, &mut y1)),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, spmm, spmm_threads);
criterion_main!(benches);
