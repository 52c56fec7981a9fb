//! Inputs the fuzz targets in `fuzz/` found, replayed in the normal test suite.

use nalgebra::{DMatrix, DVector};
use shears_core::NmPattern;
use shears_sparse::{BlockSparse, NmSparse, SparseProduct};

/// `fuzz/artifacts/nm_sparse/slow-unit-f06aea…`: a 23-byte N:M file declaring a
/// 130 x 1,212,022,786 matrix with pattern 0:33. Validation used to visit every one of
/// its 4.8e9 (empty) groups, taking minutes; it walks the stored slots only, and a
/// pattern that keeps nothing (N = 0) is no longer a pattern at all.
#[test]
fn nm_with_zero_kept_per_group_is_refused_at_once() {
    let bytes = [
        0x53, 0x48, 0x45, 0x41, 0x52, 0x4e, 0x4d, 0x00, 0x01, 0x00, 0x00, 0x00, 0x40, 0x82, 0xfc,
        0x02, 0x00, 0x3d, 0x48, 0x00, 0x21, 0x00, 0x00,
    ];
    assert!(NmSparse::<f64>::from_bytes(&bytes).is_err(), "0:33 keeps nothing");
    assert!(NmSparse::<f32>::from_bytes(&bytes).is_err(), "the value width tag says f64");
}

/// `fuzz/artifacts/nm_sparse/crash-8ec7191d…`: an 11,817,445,422,220,181,503 x 0 matrix
/// (no elements, so no slot bounds the row count). The fuzz harness asked for its
/// allocating product, whose output cannot exist. Rows past the longest side shears
/// takes are refused when the bytes are decoded; the longest that is taken still
/// multiplies without touching memory.
#[test]
fn nm_with_astronomic_rows_and_no_columns_is_refused_at_decode() {
    let bytes = [
        0x53, 0x48, 0x45, 0x41, 0x52, 0x4e, 0x4d, 0x00, 0x01, 0x00, 0x00, 0x00, 0x20, 0xfd, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xa3, 0x00, 0x04, 0x3c, 0x00, 0x00,
    ];
    assert!(matches!(
        NmSparse::<f32>::from_bytes(&bytes),
        Err(shears_sparse::Error::Format { .. })
    ));
    let nm = NmSparse::<f32>::try_from_parts(
        shears_core::MAX_SIDE,
        0,
        NmPattern::TWO_FOUR,
        vec![],
        vec![],
    )
    .unwrap();
    let mut y = vec![0.0f32; 4];
    assert!(nm.matvec_into(1.0, &[], 0.0, &mut y).is_err());
    // The allocating forms refuse the output they could not address; the dense form has
    // no elements and is made without visiting the rows.
    assert!(nm.matvec(&DVector::zeros(0)).is_err());
    assert!(nm.matmul(&DMatrix::zeros(0, 2)).is_err());
    assert_eq!(nm.to_dense().shape(), (shears_core::MAX_SIDE, 0));
}

/// An `X` of no rows costs nothing at any width: 16 x 2^62 outputs wrapped to none in
/// release arithmetic, and nalgebra built that matrix on storage of no values, which the
/// dense product then wrote past. The allocating product refuses it, for every format.
#[test]
fn a_product_whose_output_cannot_be_addressed_is_refused() {
    let wide = DMatrix::<f32>::zeros(0, 1 << (usize::BITS - 2));
    let dense = DMatrix::<f32>::zeros(16, 0);
    assert!(SparseProduct::matmul(&dense, &wide).is_err());
    let csr = shears_sparse::Csr::<f32, u32>::from_dense(&dense).unwrap();
    assert!(csr.matmul(&wide).is_err());
    assert_eq!(csr.matmul(&DMatrix::zeros(0, 3)).unwrap(), DMatrix::zeros(16, 3));
}

/// `fuzz/artifacts/block_sparse/oom-b47913c2…`: a valid 6 x 25 block-sparse matrix with
/// 721,420,036 x 2 blocks and none stored. The SpMV kernel sized its per-block-row
/// accumulator by the block height (5.7 GB); it now caps it at the matrix height.
#[test]
fn bsr_with_blocks_taller_than_the_matrix_multiplies_in_small_memory() {
    let bytes = [
        0x53, 0x48, 0x45, 0x41, 0x52, 0x42, 0x53, 0x52, 0x01, 0x00, 0x00, 0x00, 0x40, 0x06, 0x19,
        0xfc, 0x04, 0x03, 0x00, 0x2b, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00,
    ];
    let bsr = BlockSparse::<f64>::from_bytes(&bytes).unwrap();
    assert_eq!(bsr.shape(), (6, 25));
    assert_eq!(bsr.block_shape().rows(), 0x2b00_0304);
    let y = bsr.matvec(&DVector::from_element(25, 1.0)).unwrap();
    assert_eq!(y, DVector::zeros(6));
    let y = bsr.matmul(&DMatrix::from_element(25, 3, 1.0)).unwrap();
    assert_eq!(y, DMatrix::zeros(6, 3));
}

/// `fuzz/corpus/block_sparse/c03f60aa…` (replayed with overflow checks on): a block shape
/// whose area overflows `usize`. Validation multiplied its sides unchecked (a panic with
/// overflow checks, a wrapped value count without); `BlockShape` now rejects it.
#[test]
fn bsr_with_a_block_area_that_overflows_is_an_error() {
    let bytes = [
        0x53, 0x48, 0x45, 0x41, 0x52, 0x42, 0x53, 0x52, 0x01, 0x00, 0x00, 0x00, 0x40, 0x28, 0x03,
        0xfd, 0xff, 0xff, 0xff, 0xfc, 0x04, 0xfd, 0xff, 0xff, 0xfd, 0xff, 0xff, 0xff, 0xff, 0x03,
        0x00, 0x02, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00,
    ];
    let e = BlockSparse::<f32>::from_bytes(&bytes).unwrap_err().to_string();
    assert!(e.contains("invalid block shape"), "{e}");
}

/// A block shape far larger than the matrix: each stored block is its full area of
/// values, padding included, so one nonzero of a 1 x 1 matrix in 2^31 x 2^31 blocks asked
/// for 2^62 values, pushed one at a time until the process aborted.
#[test]
fn blocks_whose_values_cannot_be_held_are_refused() {
    let huge = shears_sparse::BlockShape::new(1 << 31, 1 << 31).unwrap();
    let e = BlockSparse::from_dense(&DMatrix::from_element(1, 1, 1.0f32), huge).unwrap_err();
    assert!(e.to_string().contains("need more values than can be held"), "{e}");
    // Padding that fits is kept: one 4 x 4 block of a 1 x 1 matrix.
    let small = shears_sparse::BlockShape::new(4, 4).unwrap();
    let bsr = BlockSparse::from_dense(&DMatrix::from_element(1, 1, 2.0f32), small).unwrap();
    assert_eq!(bsr.to_dense(), DMatrix::from_element(1, 1, 2.0));
}

/// Blocks as tall as a matrix of 2^59 rows and one column, none stored: the buffers are
/// empty, so nothing but the narrow form's scale per row is sized by the row count,
/// which it now reserves fallibly instead of aborting.
#[test]
fn narrow_blocks_of_a_matrix_too_tall_to_scale_are_refused() {
    let tall = 1usize << 59;
    let shape = shears_sparse::BlockShape::new(tall, 1).unwrap();
    let bsr =
        BlockSparse::<f32>::try_from_parts(tall, 1, shape, vec![0, 0], vec![], vec![]).unwrap();
    let e = shears_sparse::Bf16Block::from_block(&bsr).unwrap_err();
    assert!(e.to_string().contains("no memory for the scales"), "{e}");
}
