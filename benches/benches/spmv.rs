//! Batch-1 products: shears CSR and sliced ELLPACK (u16 indices) against nalgebra dense
//! gemv and sprs, on unstructured magnitude masks, plus the compacted dense matrix after
//! 50% row pruning.
//! In the `spmv/*` groups shears runs on a one-thread rayon pool, as nalgebra's gemv runs
//! on one thread, so the ratios are one core against one core; `spmv-threads` measures two.
//!
//! Run with: cargo bench -p shears-benches --bench spmv

#![allow(missing_docs, reason = "criterion's macros generate undocumented functions")]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nalgebra::DVector;
use shears_benches::{
    SEED, csr_halves, independent_halves, magnitude_mask, matrix, pool, rows_mask, vector,
};
use shears_sparse::{AnyCsr, AnySlicedEll, Compacted, Compaction, SparseProduct};

const SHAPES: [(usize, usize); 4] = [(4096, 4096), (1024, 1024), (1536, 384), (384, 1536)];
const SPARSITIES: [f64; 6] = [0.5, 0.7, 0.8, 0.9, 0.95, 0.99];

fn spmv(c: &mut Criterion) {
    let one = pool(1);
    for (rows, cols) in SHAPES {
        let w = matrix(rows, cols, SEED);
        let x = vector(cols, SEED + 1);
        let mut group = c.benchmark_group(format!("spmv/{rows}x{cols}"));
        group.sample_size(20).measurement_time(std::time::Duration::from_secs(2));
        group.throughput(Throughput::Bytes((rows * cols * 4) as u64));
        let mut y = DVector::zeros(rows);
        group.bench_function(BenchmarkId::new("dense", 0), |b| {
            b.iter(|| y.gemv(1.0, black_box(&w), &x, 0.0))
        });
        for s in SPARSITIES {
            let pct = (s * 100.0).round() as u32;
            let mask = magnitude_mask(&w, s);
            let csr = AnyCsr::from_dense_masked(&w, &mask).unwrap_or_else(|e| panic!("{e}"));
            let mut y = vec![0.0f32; rows];
            group.bench_function(BenchmarkId::new("csr", pct), |b| {
                one.install(|| {
                    b.iter(|| csr.matvec_into(1.0, black_box(x.as_slice()), 0.0, &mut y))
                })
            });
            let sell = AnySlicedEll::from(&csr);
            group.bench_function(BenchmarkId::new("sell", pct), |b| {
                one.install(|| {
                    b.iter(|| sell.matvec_into(1.0, black_box(x.as_slice()), 0.0, &mut y))
                })
            });
            let sp = shears_sparse::Csr::<f32, u32>::from_dense_masked(&w, &mask)
                .unwrap_or_else(|e| panic!("{e}"))
                .to_sprs();
            let mut ys = vec![0.0f32; rows];
            group.bench_function(BenchmarkId::new("sprs-csr", pct), |b| {
                b.iter(|| {
                    ys.iter_mut().for_each(|v| *v = 0.0);
                    sprs::prod::mul_acc_mat_vec_csr(
                        sp.view(),
                        black_box(x.as_slice()),
                        ys.as_mut_slice(),
                    );
                })
            });
        }
        let compact = Compacted::new(&w, &rows_mask(&w, 0.5), Compaction::Rows, None)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut yc = DVector::zeros(compact.matrix().nrows());
        group.bench_function(BenchmarkId::new("compact", 50), |b| {
            b.iter(|| yc.gemv(1.0, black_box(compact.matrix()), &x, 0.0))
        });
        group.finish();
    }
}

/// CSR and sliced-ELLPACK SpMV at 90% on 4096x4096 with 1 and with 2 threads, each on
/// its own rayon pool (criterion's back-to-back calls, as in inference), and the
/// machine's ceiling for the 2-thread CSR product: its two halves on two threads that
/// never synchronize.
fn spmv_threads(c: &mut Criterion) {
    let (rows, cols) = (4096, 4096);
    let w = matrix(rows, cols, SEED);
    let x = vector(cols, SEED + 1);
    let mask = magnitude_mask(&w, 0.9);
    let csr = AnyCsr::from_dense_masked(&w, &mask).unwrap_or_else(|e| panic!("{e}"));
    let mut group = c.benchmark_group(format!("spmv-threads/{rows}x{cols}/csr90"));
    group.sample_size(30).measurement_time(std::time::Duration::from_secs(2));
    let sell = AnySlicedEll::from(&csr);
    for threads in [1, 2] {
        let pool = pool(threads);
        let mut y = vec![0.0f32; rows];
        group.bench_function(BenchmarkId::new("threads", threads), |b| {
            pool.install(|| b.iter(|| csr.matvec_into(1.0, black_box(x.as_slice()), 0.0, &mut y)))
        });
        group.bench_function(BenchmarkId::new("sell-threads", threads), |b| {
            pool.install(|| b.iter(|| sell.matvec_into(1.0, black_box(x.as_slice()), 0.0, &mut y)))
        });
    }
    let halves = csr_halves(&w, &mask);
    group.bench_function(BenchmarkId::new("independent-halves", 2), |b| {
        b.iter_custom(|iters| {
            let (mut y0, mut y1) = (vec![0.0f32; rows / 2], vec![0.0f32; rows / 2]);
            independent_halves(
                iters,
                || drop(halves[0].matvec_into(1.0, black_box(x.as_slice()), 0.0, &mut y0)),
                || drop(halves[1].matvec_into(1.0, black_box(x.as_slice()), 0.0, &mut y1)),
            )
        })
    });
    group.finish();
}

/// What a batch-1 call costs beyond the arithmetic: CSR products with nothing stored
/// (every weight pruned), so the time is the checks, the dispatch, the threading decision
/// and one pass over the rows writing zeros.
fn spmv_overhead(c: &mut Criterion) {
    let mut group = c.benchmark_group("spmv-overhead");
    group.sample_size(50).measurement_time(std::time::Duration::from_secs(1));
    for (rows, cols) in [(1, 1), (384, 1536), (1536, 384)] {
        let w = matrix(rows, cols, SEED);
        let empty = shears_core::Mask::all_pruned(rows, cols).unwrap_or_else(|e| panic!("{e}"));
        let csr = AnyCsr::from_dense_masked(&w, &empty).unwrap_or_else(|e| panic!("{e}"));
        let x = vector(cols, SEED + 1);
        let mut y = vec![0.0f32; rows];
        group.bench_function(BenchmarkId::new("csr-empty", format!("{rows}x{cols}")), |b| {
            b.iter(|| csr.matvec_into(1.0, black_box(x.as_slice()), 0.0, &mut y))
        });
    }
    group.finish();
}

criterion_group!(benches, spmv, spmv_threads, spmv_overhead);
criterion_main!(benches);
