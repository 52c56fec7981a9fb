//! Scoring + masking for each strategy on a 4096x4096 f32 matrix at 50%.
//!
//! Run with: cargo bench -p shears-benches --bench strategies

#![allow(missing_docs, reason = "criterion's macros generate undocumented functions")]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use nalgebra::DVector;
use shears_benches::{SEED, matrix};
use shears_core::{BlockShape, LayerContext, NmPattern, PruningStrategy, Reduction, Sparsity};
use shears_strategies::{
    Axis, Gradient, LotteryTicket, Magnitude, Pattern, Pruner, Random, Structured, Wanda,
};

fn strategies(c: &mut Criterion) {
    let w = matrix(4096, 4096, SEED);
    let g = matrix(4096, 4096, SEED + 1);
    let init = matrix(4096, 4096, SEED + 2);
    let norms = DVector::from_fn(4096, |i, _| 1.0 + (i % 7) as f32);
    let half = Sparsity::new(0.5).unwrap_or(Sparsity::ZERO);
    let ctx =
        LayerContext::new("w").with_gradients(&g).with_activation_norms(&norms).with_initial(&init);
    let mut group = c.benchmark_group("strategy/4096x4096/s50");
    group.sample_size(10);
    let cases: Vec<(&str, Box<dyn PruningStrategy<f32>>)> = vec![
        ("magnitude", Box::new(Magnitude)),
        ("gradient", Box::new(Gradient)),
        ("random", Box::new(Random::new(1))),
        ("wanda", Box::new(Wanda)),
        ("lottery", Box::new(LotteryTicket::<f32>::new(0.2).unwrap_or_else(|_| unreachable!()))),
        ("per_row", Box::new(Pruner::new(Magnitude).with_pattern(Pattern::PerRow))),
        (
            "rows_l2",
            Box::new(
                Pruner::new(Magnitude)
                    .with_pattern(Pattern::Structured(Structured::new(Axis::Rows))),
            ),
        ),
        ("nm_2_4", Box::new(Pruner::new(Magnitude).with_pattern(Pattern::NM(NmPattern::TWO_FOUR)))),
        (
            "block_4x4",
            Box::new(Pruner::new(Magnitude).with_pattern(Pattern::Blocks {
                shape: BlockShape::new(4, 4).unwrap_or_else(|_| unreachable!()),
                reduction: Reduction::L1,
            })),
        ),
    ];
    for (name, strategy) in &cases {
        group.bench_function(BenchmarkId::new(*name, 50), |b| {
            b.iter(|| strategy.mask(black_box(&w), &ctx, half))
        });
    }
    group.finish();
}

criterion_group!(benches, strategies);
criterion_main!(benches);
