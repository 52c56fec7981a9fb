//! Proptest generators for shears' types, shared with the other crates' property tests
//! (enable the `proptest-support` feature).

use nalgebra::DMatrix;
use proptest::prelude::*;

use crate::mask::Mask;
use crate::sparsity::Sparsity;

/// Any valid sparsity, with the endpoints and 0.5 drawn often.
pub fn sparsity() -> impl Strategy<Value = Sparsity> {
    prop_oneof![
        1 => Just(Sparsity::ZERO),
        1 => Just(Sparsity::ONE),
        1 => Just(Sparsity::new(0.5).unwrap_or_default()),
        6 => (0.0..=1.0f64).prop_map(|s| Sparsity::new(s).unwrap_or_default()),
    ]
}

/// A shape with each side in `0..=max_side`.
pub fn shape(max_side: usize) -> impl Strategy<Value = (usize, usize)> {
    (0..=max_side, 0..=max_side)
}

/// A matrix of the given shape whose values come from a small set, so that ties occur.
pub fn tied_matrix(nrows: usize, ncols: usize) -> impl Strategy<Value = DMatrix<f64>> {
    proptest::collection::vec(-4i8..=4, nrows * ncols).prop_map(move |v| {
        DMatrix::from_iterator(nrows, ncols, v.into_iter().map(|x| f64::from(x) / 2.0))
    })
}

/// A matrix of the given shape with values in `[-1, 1]` (f32).
pub fn matrix_f32(nrows: usize, ncols: usize) -> impl Strategy<Value = DMatrix<f32>> {
    proptest::collection::vec(-1.0f32..=1.0, nrows * ncols)
        .prop_map(move |v| DMatrix::from_vec(nrows, ncols, v))
}

/// A mask of the given shape with arbitrary bits.
pub fn mask(nrows: usize, ncols: usize) -> impl Strategy<Value = Mask> {
    proptest::collection::vec(any::<bool>(), nrows * ncols)
        .prop_map(move |bits| Mask::from_matrix(&DMatrix::from_vec(nrows, ncols, bits)))
}

/// A shape up to `max_side` per side and a mask of it.
pub fn any_mask(max_side: usize) -> impl Strategy<Value = Mask> {
    shape(max_side).prop_flat_map(|(r, c)| mask(r, c))
}
