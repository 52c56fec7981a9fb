//! The speedup sweep behind `cargo xtask bench`: every cell times nalgebra dense, sprs
//! CSR (where it applies) and shears' format on the same matrix in the same run, and
//! prints one JSON document (the kernel path, the thread count, the cells and the
//! format crossovers measured here) on stdout.
//! Threads follow rayon's pool (`RAYON_NUM_THREADS`); nalgebra's dense products run on one.
//!
//! Run with: cargo run --release -p shears-benches --bin sweep -- [--quick]

#![allow(clippy::print_stdout, reason = "the sweep reports on stdout")]

use std::hint::black_box;
use std::time::{Duration, Instant};

use nalgebra::{DMatrix, DVector};
use serde::Serialize;
use shears_benches::{SEED, magnitude_mask, matrix, rows_mask, two_four_mask, vector};
use shears_core::{LayerContext, Mask, NmPattern, PruningStrategy, Sparsity};
use shears_sparse::calibrate::Crossovers;
use shears_sparse::{
    AnySparse, Bf16Csr, Bf16Nm, Bf16Sell, Compacted, Compaction, Csr, F16Csr, F16Nm, F16Sell,
    Format, Int8Compacted, Int8Csr, Int8Matrix, Int8Nm, Int8Sell, NmSparse, QuantScheme, SlicedEll,
    SparseProduct,
};
use shears_strategies::Magnitude;

/// One measured cell; the field names are read by tools and stay stable. Each format's
/// `speedup_vs_dense` divides a dense time measured alternately with it.
#[derive(Debug, Serialize)]
struct Cell {
    kernel: &'static str,
    format: &'static str,
    rows: usize,
    cols: usize,
    sparsity: f64,
    batch: usize,
    median_ns: f64,
    speedup_vs_dense: f64,
    threads: usize,
}

/// What the sweep prints: the kernel path it ran, its thread count, its cells, and the
/// crossovers measured on this machine beside the fixed ones.
#[derive(Debug, Serialize)]
struct Sweep {
    kernel_path: String,
    threads: usize,
    cells: Vec<Cell>,
    crossovers: CrossoverReport,
}

/// `choose_format`'s crossovers: `(batch, sparsity)` steps from which CSR (sliced
/// ELLPACK at batch 1) beats dense (a sparsity above 1: never), and the largest batch at
/// which 2:4 beats dense, measured here and fixed.
#[derive(Debug, Serialize)]
struct CrossoverReport {
    measured_csr: Vec<(usize, f64)>,
    measured_nm_max_batch: usize,
    fixed_csr: Vec<(usize, f64)>,
    fixed_nm_max_batch: usize,
    side: usize,
    seconds: f64,
}

impl CrossoverReport {
    fn measure() -> Self {
        let fixed = Crossovers::fixed();
        let measured = Crossovers::measure().unwrap_or_else(|e| panic!("calibration: {e}"));
        CrossoverReport {
            measured_csr: measured.csr_steps().to_vec(),
            measured_nm_max_batch: measured.nm_max_batch(),
            fixed_csr: fixed.csr_steps().to_vec(),
            fixed_nm_max_batch: fixed.nm_max_batch(),
            side: shears_sparse::calibrate::CALIBRATION_SIDE,
            seconds: measured.measured_in().map_or(0.0, |d| d.as_secs_f64()),
        }
    }
}

struct Timer {
    budget: Duration,
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

impl Timer {
    /// Median nanoseconds of `f` over at least 3 runs and about `budget`.
    fn median(&self, mut f: impl FnMut()) -> f64 {
        f();
        let start = Instant::now();
        let mut times = Vec::new();
        while times.len() < 3 || (start.elapsed() < self.budget && times.len() < 500) {
            let t = Instant::now();
            f();
            times.push(t.elapsed().as_nanos() as f64);
        }
        median(times)
    }

    /// Medians of `base` and `f`, run alternately so that the machine's drift (this one is
    /// shared) affects both sides of the ratio alike.
    fn paired(&self, mut base: impl FnMut(), mut f: impl FnMut()) -> (f64, f64) {
        base();
        f();
        let start = Instant::now();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        while a.len() < 3 || (start.elapsed() < self.budget * 2 && a.len() < 500) {
            let t = Instant::now();
            base();
            a.push(t.elapsed().as_nanos() as f64);
            let t = Instant::now();
            f();
            b.push(t.elapsed().as_nanos() as f64);
        }
        (median(a), median(b))
    }
}

/// The dense product `w x` as a repeatable closure.
fn dense_run<'a>(w: &'a DMatrix<f32>, x: &'a DMatrix<f32>) -> Box<dyn FnMut() + 'a> {
    if x.ncols() == 1 {
        let xv = DVector::from_column_slice(x.as_slice());
        let mut y = DVector::zeros(w.nrows());
        Box::new(move || y.gemv(1.0, black_box(w), &xv, 0.0))
    } else {
        let mut y = DMatrix::zeros(w.nrows(), x.ncols());
        Box::new(move || y.gemm(1.0, black_box(w), x, 0.0))
    }
}

/// The product in a shears format as a repeatable closure (a batch of one runs the
/// batch-1 kernel; a compacted matrix gathers its inputs and scatters its outputs).
fn sparse_run<'a>(s: &'a AnySparse<f32>, x: &'a DMatrix<f32>) -> Box<dyn FnMut() + 'a> {
    let mut y = DMatrix::zeros(s.shape().0, x.ncols());
    Box::new(move || drop(black_box(s.matmul_into(1.0, black_box(x), 0.0, &mut y))))
}

/// The sprs product as a repeatable closure.
fn sprs_run<'a>(
    csr: &'a sprs::CsMat<f32>,
    xa: &'a ndarray::Array2<f32>,
    x: &'a DMatrix<f32>,
) -> Box<dyn FnMut() + 'a> {
    if x.ncols() == 1 {
        let mut y = vec![0.0f32; csr.rows()];
        Box::new(move || {
            y.iter_mut().for_each(|v| *v = 0.0);
            sprs::prod::mul_acc_mat_vec_csr(csr.view(), black_box(x.as_slice()), y.as_mut_slice());
        })
    } else {
        Box::new(move || drop(black_box(csr * xa)))
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let threads = rayon::current_num_threads();
    let timer = Timer { budget: Duration::from_millis(if quick { 150 } else { 400 }) };
    let shapes: &[(usize, usize)] = if quick {
        &[(4096, 4096)]
    } else {
        &[(1024, 1024), (4096, 4096), (1536, 384), (384, 1536)]
    };
    let sparsities: &[f64] =
        if quick { &[0.5, 0.9] } else { &[0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99] };
    let batches: &[usize] = if quick { &[1, 32] } else { &[1, 8, 32, 128] };
    let mut cells = Vec::new();
    let mut push = |kernel,
                    format,
                    (rows, cols): (usize, usize),
                    sparsity,
                    batch,
                    median_ns: f64,
                    dense_ns: f64| {
        cells.push(Cell {
            kernel,
            format,
            rows,
            cols,
            sparsity,
            batch,
            median_ns,
            speedup_vs_dense: dense_ns / median_ns,
            threads,
        });
    };

    for &(rows, cols) in shapes {
        let w = matrix(rows, cols, SEED);
        let build = |mask: &Mask, format| {
            AnySparse::from_dense_masked(&w, mask, format).unwrap_or_else(|e| panic!("{e}"))
        };
        let mut formats: Vec<(&'static str, f64, Mask, AnySparse<f32>)> = Vec::new();
        for &s in sparsities {
            let mask = magnitude_mask(&w, s);
            formats.push(("sell", s, mask.clone(), build(&mask, Format::SlicedEll)));
            formats.push(("csr", s, mask.clone(), build(&mask, Format::Csr)));
        }
        let nm_mask = two_four_mask(&w);
        let nm = build(&nm_mask, Format::Nm(NmPattern::TWO_FOUR));
        formats.push(("nm", 0.5, nm_mask, nm));
        let row_mask = rows_mask(&w, 0.5);
        let compact = build(&row_mask, Format::Compact);
        formats.push(("compact", 0.5, row_mask.clone(), compact));
        // The same CSR matrices with narrow stored values (int8 with a scale per row, bf16, f16),
        // at 90% and the sparsest level of the grid; and the dense matrix in int8, whose
        // products quantize X per column and sum in integers.
        let mut narrow: Vec<(&'static str, f64, Box<dyn SparseProduct<f32>>)> = Vec::new();
        let int8 = Int8Matrix::quantize(&w, QuantScheme::PerRow).unwrap_or_else(|e| panic!("{e}"));
        narrow.push(("dense-int8", 0.0, Box::new(int8)));
        // Half the rows pruned and compacted, in int8 beside the f32 "compact" cell.
        let compacted = Compacted::new(&w, &row_mask, Compaction::RowsAndColumns, None)
            .and_then(|c| Int8Compacted::from_compacted(&c, QuantScheme::PerRow))
            .unwrap_or_else(|e| panic!("{e}"));
        narrow.push(("compact-int8", 0.5, Box::new(compacted)));
        // 2:4 with bf16, f16 and int8 values beside the f32 "nm" cell.
        let nm = NmSparse::from_dense_masked(&w, &two_four_mask(&w), NmPattern::TWO_FOUR)
            .unwrap_or_else(|e| panic!("{e}"));
        let nm_bf16 = Bf16Nm::from_nm(&nm).unwrap_or_else(|e| panic!("{e}"));
        let nm_f16 = F16Nm::from_nm(&nm).unwrap_or_else(|e| panic!("{e}"));
        let nm_int8 = Int8Nm::from_nm(&nm).unwrap_or_else(|e| panic!("{e}"));
        narrow.push(("nm-bf16", 0.5, Box::new(nm_bf16)));
        narrow.push(("nm-f16", 0.5, Box::new(nm_f16)));
        narrow.push(("nm-int8", 0.5, Box::new(nm_int8)));
        for &s in sparsities.iter().filter(|&&s| s >= 0.9) {
            let csr = Csr::<f32, u16>::from_dense_masked(&w, &magnitude_mask(&w, s))
                .unwrap_or_else(|e| panic!("{e}"));
            let int8: Int8Csr<u16> = Int8Csr::from_csr(&csr).unwrap_or_else(|e| panic!("{e}"));
            let bf16: Bf16Csr<u16> = Bf16Csr::from_csr(&csr).unwrap_or_else(|e| panic!("{e}"));
            let f16: F16Csr<u16> = F16Csr::from_csr(&csr).unwrap_or_else(|e| panic!("{e}"));
            narrow.push(("csr-int8", s, Box::new(int8)));
            narrow.push(("csr-bf16", s, Box::new(bf16)));
            narrow.push(("csr-f16", s, Box::new(f16)));
            // Sliced ELLPACK of the same rows, batch 1 only (batched, it runs CSR's tiles).
            let sell = SlicedEll::from_csr(&csr);
            let int8: Int8Sell<u16> = Int8Sell::from_sell(&sell).unwrap_or_else(|e| panic!("{e}"));
            let bf16: Bf16Sell<u16> = Bf16Sell::from_sell(&sell).unwrap_or_else(|e| panic!("{e}"));
            let f16: F16Sell<u16> = F16Sell::from_sell(&sell).unwrap_or_else(|e| panic!("{e}"));
            narrow.push(("sell-int8", s, Box::new(int8)));
            narrow.push(("sell-bf16", s, Box::new(bf16)));
            narrow.push(("sell-f16", s, Box::new(f16)));
        }
        for &batch in batches {
            let x = if batch == 1 {
                DMatrix::from_column_slice(cols, 1, vector(cols, SEED + 1).as_slice())
            } else {
                matrix(cols, batch, SEED + 1)
            };
            let kernel = if batch == 1 { "spmv" } else { "spmm" };
            let xa = ndarray::Array2::from_shape_fn((x.nrows(), x.ncols()), |(i, j)| x[(i, j)]);
            let dense = timer.median(dense_run(&w, &x));
            push(kernel, "dense", (rows, cols), 0.0, batch, dense, dense);
            for (format, s, mask, sparse) in &formats {
                if *format == "sell" && batch > 1 {
                    continue; // batched, it runs CSR's tiles
                }
                let (d, t) = timer.paired(dense_run(&w, &x), sparse_run(sparse, &x));
                push(kernel, format, (rows, cols), *s, batch, t, d);
                let sprs_worth_it = *format == "csr" && (*s > 0.0 || batch == 1);
                if sprs_worth_it && let Ok(csr) = Csr::<f32, u32>::from_dense_masked(&w, mask) {
                    let csr = csr.to_sprs();
                    let (d, t) = timer.paired(dense_run(&w, &x), sprs_run(&csr, &xa, &x));
                    push(kernel, "sprs-csr", (rows, cols), *s, batch, t, d);
                }
            }
            for (format, s, matrix) in &narrow {
                if format.starts_with("sell") && batch > 1 {
                    continue;
                }
                let mut y = DMatrix::zeros(rows, x.ncols());
                let run = || drop(black_box(matrix.matmul_into(1.0, black_box(&x), 0.0, &mut y)));
                let (d, t) = timer.paired(dense_run(&w, &x), run);
                push(kernel, format, (rows, cols), *s, batch, t, d);
            }
        }
    }

    // Thread scaling at 90% on 4096x4096 (when the sweep itself runs on several threads):
    // each side's median on its own pool, calls back
    // to back as in inference. Alternating the two pools call by call would let each
    // pool's workers fall asleep between its calls and time the system waking them.
    if threads >= 2 {
        let (rows, cols) = (4096, 4096);
        let w = matrix(rows, cols, SEED);
        let mask = magnitude_mask(&w, 0.9);
        let build = |format| {
            AnySparse::from_dense_masked(&w, &mask, format).unwrap_or_else(|e| panic!("{e}"))
        };
        let (csr, sell) = (build(Format::Csr), build(Format::SlicedEll));
        let (one, two) = (shears_benches::pool(1), shears_benches::pool(2));
        for (batch, format, sparse) in [(1, "csr", &csr), (1, "sell", &sell), (32, "csr", &csr)] {
            let x = matrix(cols, batch, SEED + 1);
            let kernel = if batch == 1 { "threads-spmv" } else { "threads-spmm" };
            let (mut t1, mut t2) = (Vec::new(), Vec::new());
            for _ in 0..3 {
                t1.push(one.install(|| timer.median(sparse_run(sparse, &x))));
                t2.push(two.install(|| timer.median(sparse_run(sparse, &x))));
            }
            // The 1-thread median stands where the dense one does: speedup = t1 / t2.
            push(kernel, format, (rows, cols), 0.9, batch, median(t2), median(t1));
        }
    }

    // Mask creation on 4096x4096 against a full sort of the scores.
    let w = matrix(4096, 4096, SEED);
    for s in [0.5, 0.9] {
        let sparsity = Sparsity::new(s).unwrap_or(Sparsity::ZERO);
        let (sort, shears) = timer.paired(
            || {
                let mut scores: Vec<f32> = w.iter().map(|v| v.abs()).collect();
                scores.sort_unstable_by(f32::total_cmp);
                black_box(scores);
            },
            || drop(black_box(Magnitude.mask(&w, &LayerContext::new("w"), sparsity))),
        );
        let select_nth = timer.median(|| {
            let mut scores: Vec<f32> = w.iter().map(|v| v.abs()).collect();
            let k = sparsity.count_of(scores.len(), shears_core::Rounding::HalfEven).max(1);
            scores.select_nth_unstable_by(k - 1, f32::total_cmp);
            black_box(scores);
        });
        push("mask", "select_nth", (4096, 4096), s, 0, select_nth, sort);
        push("mask", "full-sort", (4096, 4096), s, 0, sort, sort);
        push("mask", "shears", (4096, 4096), s, 0, shears, sort);
    }
    let crossovers = CrossoverReport::measure();
    let sweep =
        Sweep { kernel_path: shears_sparse::kernel_description(), threads, cells, crossovers };
    match serde_json::to_string_pretty(&sweep) {
        Ok(json) => println!("{json}"),
        Err(e) => panic!("cannot encode the sweep: {e}"),
    }
}
