//! Mask algebra laws, against a `DMatrix<bool>` oracle.

use nalgebra::DMatrix;
use proptest::prelude::*;
use shears_core::{Mask, proptest as arb};

fn pair(max: usize) -> impl Strategy<Value = (Mask, Mask)> {
    arb::shape(max).prop_flat_map(|(r, c)| (arb::mask(r, c), arb::mask(r, c)))
}

fn triple(max: usize) -> impl Strategy<Value = (Mask, Mask, Mask)> {
    arb::shape(max).prop_flat_map(|(r, c)| (arb::mask(r, c), arb::mask(r, c), arb::mask(r, c)))
}

proptest! {
    #[test]
    fn counts_match_a_scan(m in arb::any_mask(20)) {
        let dense = m.to_matrix();
        prop_assert_eq!(m.count_kept(), dense.iter().filter(|&&k| k).count());
        prop_assert_eq!(m.count_kept() + m.count_pruned(), m.len());
        prop_assert_eq!(Mask::from_matrix(&dense), m.clone());
        let kept: Vec<_> = m.iter_kept().collect();
        let expected: Vec<_> = (0..m.ncols()).flat_map(|c| (0..m.nrows()).map(move |r| (r, c)))
            .filter(|&(r, c)| dense[(r, c)]).collect();
        prop_assert_eq!(kept, expected);
    }

    #[test]
    fn and_or_not_are_elementwise((a, b) in pair(20)) {
        let (da, db) = (a.to_matrix(), b.to_matrix());
        prop_assert_eq!(a.and(&b).unwrap().to_matrix(), da.zip_map(&db, |x, y| x && y));
        prop_assert_eq!(a.or(&b).unwrap().to_matrix(), da.zip_map(&db, |x, y| x || y));
        prop_assert_eq!((!&a).to_matrix(), da.map(|x| !x));
        prop_assert_eq!(a.is_subset_of(&b).unwrap(), da.iter().zip(db.iter()).all(|(&x, &y)| !x || y));
    }

    #[test]
    fn algebra_laws((a, b, c) in triple(12)) {
        // Commutative, associative, De Morgan, absorption, double negation.
        prop_assert_eq!(a.and(&b).unwrap(), b.and(&a).unwrap());
        prop_assert_eq!(a.or(&b).unwrap(), b.or(&a).unwrap());
        prop_assert_eq!(a.and(&b).unwrap().and(&c).unwrap(), a.and(&b.and(&c).unwrap()).unwrap());
        prop_assert_eq!(!a.and(&b).unwrap(), (!&a).or(&!&b).unwrap());
        prop_assert_eq!(a.or(&a.and(&b).unwrap()).unwrap(), a.clone());
        prop_assert_eq!(!!a.clone(), a.clone());
        prop_assert!(a.and(&b).unwrap().is_subset_of(&a).unwrap());
        prop_assert!(a.is_subset_of(&a.or(&b).unwrap()).unwrap());
        let mut d = a.clone();
        d.and_assign(&b).unwrap();
        prop_assert_eq!(d, a.and(&b).unwrap());
        let mut e = a.clone();
        e.or_assign(&b).unwrap();
        prop_assert_eq!(e, a.or(&b).unwrap());
    }

    #[test]
    fn pruned_rows_and_cols(m in arb::any_mask(16)) {
        let d = m.to_matrix();
        let rows: Vec<usize> = (0..d.nrows()).filter(|&r| d.row(r).iter().all(|&k| !k)).collect();
        let cols: Vec<usize> = (0..d.ncols()).filter(|&c| d.column(c).iter().all(|&k| !k)).collect();
        prop_assert_eq!(m.count_fully_pruned_rows(), rows.len());
        prop_assert_eq!(m.count_fully_pruned_cols(), cols.len());
        prop_assert_eq!(m.fully_pruned_rows(), rows);
        prop_assert_eq!(m.fully_pruned_cols(), cols);
    }

    #[test]
    fn apply_zeroes_exactly_the_pruned((m, w) in arb::shape(16).prop_flat_map(|(r, c)| (arb::mask(r, c), arb::matrix_f32(r, c)))) {
        let applied = m.apply(&w).unwrap();
        let expected = DMatrix::from_fn(w.nrows(), w.ncols(), |r, c| if m.get(r, c) == Some(true) { w[(r, c)] } else { 0.0 });
        prop_assert_eq!(&applied, &expected);
        // The tensor path (row-major data) agrees with the matrix path.
        let mut row_major: Vec<f32> = w.transpose().as_slice().to_vec();
        let shape = shears_core::WeightShape::of_matrix(&w);
        m.apply_to_tensor(&shape, &mut row_major).unwrap();
        prop_assert_eq!(row_major, expected.transpose().as_slice().to_vec());
    }
}

/// Applying a mask zeroes one pruned weight, a few, or nearly all of a 64-bit word alike
/// (the kernel visits few pruned bits one by one and selects over the word otherwise).
/// A mask of no weights may claim any length on its other side (a file can say
/// 0 x 2^40 in a few bytes): counting its pruned rows and columns and checking its N:M
/// conformance take neither that many steps nor that much memory.
#[test]
fn empty_masks_with_a_huge_side_are_counted_at_once() {
    let huge = 1usize << 40;
    for (rows, cols) in [(0, huge), (huge, 0)] {
        let m = Mask::all_kept(rows, cols).unwrap();
        assert_eq!((m.count_fully_pruned_rows(), m.count_fully_pruned_cols()), (rows, cols));
        assert_eq!(shears_core::NmPattern::TWO_FOUR.first_violation(&m), None);
    }
}

#[test]
fn apply_handles_sparse_and_dense_words() {
    for pruned_every in [1, 2, 7, 8, 9, 64, 130] {
        let (rows, cols) = (13, 21);
        let keep = |r: usize, c: usize| !(c * rows + r).is_multiple_of(pruned_every);
        let mask = Mask::from_fn(rows, cols, keep).unwrap();
        let w = DMatrix::from_fn(rows, cols, |r, c| (r * cols + c) as f32 + 1.0);
        let applied = mask.apply(&w).unwrap();
        for c in 0..cols {
            for r in 0..rows {
                let want = if keep(r, c) { w[(r, c)] } else { 0.0 };
                assert_eq!(applied[(r, c)], want, "every {pruned_every}: ({r}, {c})");
            }
        }
    }
}
