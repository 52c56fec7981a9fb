//! The masks `torch.nn.utils.prune` gives on the same weights.
//!
//! torch's `l1_unstructured` prunes `round(amount * n)` entries (Python's `round`, half to
//! even) with the smallest `|w|` via `topk(largest=False)` on the row-major flattening;
//! `ln_structured(n=2, dim=0)` prunes `round(amount * rows)` rows with the smallest L2
//! norm. The expected masks below were worked out by those rules; where scores tie, the
//! lower row-major index is pruned first (docs/design.md).

use nalgebra::{DMatrix, dmatrix};
use shears_core::{PruningStrategy, Sparsity};
use shears_strategies::{Axis, LayerContext, Magnitude, Pattern, Pruner, Structured};

#[track_caller]
fn check_unstructured(w: DMatrix<f32>, amount: f64, expected_zeros_row_major: &[usize]) {
    let mask = Magnitude.mask(&w, &LayerContext::new("w"), Sparsity::new(amount).unwrap()).unwrap();
    let zeros: Vec<usize> =
        (0..w.len()).filter(|&i| mask.get(i / w.ncols(), i % w.ncols()) == Some(false)).collect();
    assert_eq!(zeros, expected_zeros_row_major);
}

#[test]
fn l1_unstructured_half_counts_round_to_even() {
    // n = 5, amount = 0.5: round(2.5) = 2.
    check_unstructured(dmatrix![0.5, -0.1, 0.3, -0.2, 0.4], 0.5, &[1, 3]);
    // n = 7, amount = 0.5: round(3.5) = 4.
    check_unstructured(dmatrix![0.7, 0.1, 0.6, 0.2, 0.5, 0.3, 0.4], 0.5, &[1, 3, 5, 6]);
    // n = 10, amount = 0.35: 3.5 rounds to 4. Row-major order on a 2x5 matrix.
    check_unstructured(
        dmatrix![1.0, 0.2, 3.0, 0.4, 5.0; 0.6, 7.0, 0.8, 9.0, 0.1],
        0.35,
        &[1, 3, 5, 9],
    );
    // n = 25, amount = 0.1: 2.5 rounds to 2.
    let w = DMatrix::from_fn(5, 5, |r, c| (r * 5 + c) as f32 + 1.0);
    check_unstructured(w, 0.1, &[0, 1]);
}

#[test]
fn l1_unstructured_ties_go_to_lower_index() {
    check_unstructured(dmatrix![1.0, -1.0; 1.0, 2.0], 0.5, &[0, 1]);
}

#[test]
fn ln_structured_rows() {
    let w = dmatrix![3.0f32, 4.0; 1.0, 0.0; 0.0, 2.0; 6.0, 8.0; 0.5, 0.5];
    // Row norms 5, 1, 2, 10, 0.707; amount 0.5 of 5 rows: round(2.5) = 2 rows go: 4 and 1.
    let rows =
        Pruner::new(Magnitude).with_pattern(Pattern::Structured(Structured::new(Axis::Rows)));
    let mask = rows.mask(&w, &LayerContext::new("w"), Sparsity::new(0.5).unwrap()).unwrap();
    assert_eq!(mask.fully_pruned_rows(), vec![1, 4]);
    // amount 0.7 of 5: round(3.5) = 4 rows: all but row 3.
    let mask = rows.mask(&w, &LayerContext::new("w"), Sparsity::new(0.7).unwrap()).unwrap();
    assert_eq!(mask.fully_pruned_rows(), vec![0, 1, 2, 4]);
}
