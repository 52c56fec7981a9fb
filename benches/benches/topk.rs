//! Magnitude mask creation (scores, selection, bit-packed mask) against a full sort and a
//! bare `select_nth_unstable_by` on the same scores.
//!
//! Run with: cargo bench -p shears-benches --bench topk

#![allow(missing_docs, reason = "criterion's macros generate undocumented functions")]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shears_benches::{SEED, matrix};
use shears_core::{LayerContext, PruningStrategy, Sparsity};
use shears_strategies::Magnitude;

fn topk(c: &mut Criterion) {
    let w = matrix(4096, 4096, SEED);
    let n = w.len();
    for s in [0.5, 0.9] {
        let mut group = c.benchmark_group(format!("mask/4096x4096/s{}", (s * 100.0) as u32));
        group.sample_size(10).throughput(Throughput::Elements(n as u64));
        let sparsity = Sparsity::new(s).unwrap_or(Sparsity::ZERO);
        let k = sparsity.count_of(n, shears_core::Rounding::HalfEven);
        group.bench_function(BenchmarkId::new("shears", (s * 100.0) as u32), |b| {
            b.iter(|| Magnitude.mask(black_box(&w), &LayerContext::new("w"), sparsity))
        });
        group.bench_function(BenchmarkId::new("select_nth", (s * 100.0) as u32), |b| {
            b.iter(|| {
                let mut scores: Vec<f32> = w.iter().map(|x| x.abs()).collect();
                scores.select_nth_unstable_by(k - 1, |a, b| a.total_cmp(b));
                black_box(scores[k - 1])
            })
        });
        group.bench_function(BenchmarkId::new("full_sort", (s * 100.0) as u32), |b| {
            b.iter(|| {
                let mut scores: Vec<f32> = w.iter().map(|x| x.abs()).collect();
                scores.sort_unstable_by(|a, b| a.total_cmp(b));
                black_box(scores[k - 1])
            })
        });
        group.finish();
    }
}

criterion_group!(benches, topk);
criterion_main!(benches);
