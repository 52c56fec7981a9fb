//! The fuzz targets' bodies: whatever decodes from outside bytes must re-validate,
//! round-trip byte for byte, and multiply like its dense form.
//!
//! Each `fuzz/fuzz_targets/NAME.rs` calls the function of the same name. This crate's
//! own test replays every committed corpus input (`fuzz/corpus/NAME/`) through the same
//! checks, so `cargo test --workspace` covers them without cargo-fuzz.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "a fuzz check fails by panicking, with a message that says which invariant broke"
)]

use nalgebra::{DMatrix, DVector};
use shears_core::{LayerContext, Mask, PruningStrategy, Scalar, Sparsity, WeightShape};
use shears_io::{
    Checkpoint, Dtype, decode_mask_set, encode_mask_set, is_float, matrix_shape, write_matrix,
};
use shears_sparse::{
    BlockSparse, Csr, Int8Csr, Int8Matrix, Int8Nm, NarrowBlock, NarrowCsr, NarrowNm, NarrowSell,
    NarrowValue, NmSparse, SlicedEll, SpIndex, SparseProduct,
};
use shears_strategies::{Magnitude, Pattern, Pruner};

/// A target's body: checks one input, panicking on a violated invariant.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/corpus/NAME` and `fuzz_targets/NAME.rs` call them.
pub const TARGETS: [(&str, Target); 11] = [
    ("checkpoint", checkpoint),
    ("mask", mask),
    ("mask_set", mask_set),
    ("csr", csr),
    ("sliced_ell", sliced_ell),
    ("nm_sparse", nm_sparse),
    ("block_sparse", block_sparse),
    ("narrow", narrow),
    ("cli_args", cli_args),
    ("pattern_fit", pattern_fit),
    ("paths", paths),
];

/// Largest matrix (in elements) whose dense form the checks build; larger ones are
/// checked structurally only (a tiny file may declare a huge, empty matrix).
pub const DENSE_LIMIT: usize = 1 << 16;

/// Whether a `nrows x ncols` matrix is small enough to densify and multiply (each side
/// too: a valid 2^64-1 x 0 matrix has no elements, but its products have 2^64-1 rows).
pub fn small(nrows: usize, ncols: usize) -> bool {
    nrows <= DENSE_LIMIT && ncols <= DENSE_LIMIT && nrows * ncols <= DENSE_LIMIT
}

/// `format` times a fixed vector and a fixed 3-column matrix equals `dense` times them,
/// when every stored value is finite and modest (so rounding is bounded).
pub fn check_products<T: Scalar, P: SparseProduct<T>>(format: &P, dense: &DMatrix<T>) {
    check_matmul(format, dense);
    check_matvec(format, dense);
}

/// The fixed 3-column matrix the products are checked on and the bound on their
/// rounding, or `None` where a stored value is not finite and modest (the products
/// must then merely not panic).
fn operands<T: Scalar>(dense: &DMatrix<T>) -> Option<(DMatrix<T>, f64)> {
    if !dense.iter().all(|v| v.finite() && v.as_f64().abs() < 1e6) {
        return None;
    }
    let x = DMatrix::from_fn(dense.ncols(), 3, |i, j| {
        T::from_f64_lossy(((i * 7 + j * 3) % 11) as f64 - 5.0)
    });
    let scale: f64 = dense.iter().map(|v| v.as_f64().abs()).sum::<f64>() * 5.0 + 1.0;
    Some((x, scale))
}

/// The 3-column half of [`check_products`].
pub fn check_matmul<T: Scalar, P: SparseProduct<T>>(format: &P, dense: &DMatrix<T>) {
    assert_eq!(format.shape(), dense.shape());
    let Some((x, scale)) = operands(dense) else {
        let _ = format.matmul(&DMatrix::zeros(dense.ncols(), 3));
        return;
    };
    let got = format.matmul(&x).expect("shapes agree");
    let want = dense * &x;
    for (g, w) in got.iter().zip(want.iter()) {
        assert!((g.as_f64() - w.as_f64()).abs() <= 1e-5 * scale, "matmul {g:?} vs dense {w:?}");
    }
}

/// The one-vector half of [`check_products`].
pub fn check_matvec<T: Scalar, P: SparseProduct<T>>(format: &P, dense: &DMatrix<T>) {
    assert_eq!(format.shape(), dense.shape());
    let Some((x, scale)) = operands(dense) else {
        let _ = format.matvec(&DVector::zeros(dense.ncols()));
        return;
    };
    let xv = DVector::from_iterator(dense.ncols(), x.column(0).iter().copied());
    let got = format.matvec(&xv).expect("shapes agree");
    let want = dense * xv;
    for (g, w) in got.iter().zip(want.iter()) {
        assert!((g.as_f64() - w.as_f64()).abs() <= 1e-5 * scale, "matvec {g:?} vs dense {w:?}");
    }
    assert_eq!(got.len(), dense.nrows());
}

/// The safetensors reading path of the `shears` binary: header, dtypes, offsets, and
/// decoding every floating tensor.
pub fn checkpoint(data: &[u8]) {
    let Ok(ckpt) = Checkpoint::from_source("fuzz", data.to_vec()) else { return };
    let mut end = 0;
    for (name, info) in ckpt.tensors() {
        assert!(ckpt.info(name).is_some_and(|i| std::ptr::eq(i, info)), "`{name}` is found");
        // Invariants the reader promised: contiguous, in order, sized by shape x dtype.
        assert_eq!(info.data_offsets.0, end, "`{name}` is not contiguous");
        end = info.data_offsets.1;
        let bytes = ckpt.read_bytes(name).expect("validated offsets are readable");
        assert_eq!(bytes.len(), info.data_offsets.1 - info.data_offsets.0);
        let elements: usize = info.shape.iter().product();
        assert_eq!(elements * info.dtype.bitsize(), bytes.len() * 8);
        if !is_float(info.dtype) {
            assert!(ckpt.read_values::<f32>(name).is_err());
            continue;
        }
        let values = ckpt.read_values::<f64>(name).expect("a float tensor decodes");
        assert_eq!(values.len(), elements);
        let zeros = values.iter().filter(|&&v| v == 0.0).count();
        assert_eq!(ckpt.count_zeros(name).expect("decodes"), zeros);
        if let Ok((r, c)) = matrix_shape(name, info) {
            // Decoding into a matrix and encoding back gives the same bytes (NaN payloads
            // aside: converting through another width may quiet a signalling NaN).
            let m = ckpt.read_matrix::<f64>(name).expect("a 2-D or 4-D float tensor decodes");
            assert_eq!(m.shape(), (r, c));
            let mut out = Vec::new();
            write_matrix(&m, info.dtype, &mut out).expect("encodes");
            assert_eq!(out.len(), bytes.len());
            let width = info.dtype.bitsize() / 8;
            for (i, (a, b)) in bytes.chunks(width).zip(out.chunks(width)).enumerate() {
                assert!(a == b || values[i].is_nan(), "`{name}` value {i} changed");
            }
            if info.dtype != Dtype::F64 {
                let narrow = ckpt.read_matrix::<f32>(name).expect("decodes as f32");
                assert!(
                    narrow.iter().zip(m.iter()).all(|(a, b)| f64::from(*a) == *b || b.is_nan())
                );
            }
        }
    }
}

/// The mask file format (`SHEARSMK`): whatever decodes is a valid mask that re-encodes to
/// the same bytes.
pub fn mask(data: &[u8]) {
    let Ok(mask) = Mask::from_bytes(data) else { return };
    let (nrows, ncols) = mask.shape();
    assert_eq!(mask.len(), nrows * ncols);
    assert_eq!(mask.count_kept() + mask.count_pruned(), mask.len());
    let again = Mask::from_words(nrows, ncols, mask.as_words().to_vec()).expect("re-validates");
    assert_eq!(again, mask);
    let bytes = mask.to_bytes();
    assert_eq!(Mask::from_bytes(&bytes).expect("round-trips"), mask);
    assert_eq!(Mask::read_from(bytes.as_slice()).expect("reads from a stream"), mask);
    if small(nrows, ncols) {
        assert_eq!(mask.iter_kept().count(), mask.count_kept());
        assert_eq!(Mask::from_matrix(&mask.to_matrix()), mask);
    }
}

fn csr_as<T: Scalar, I: SpIndex>(data: &[u8]) {
    let Ok(csr) = Csr::<T, I>::from_bytes(data) else { return };
    let bytes = csr.to_bytes();
    assert_eq!(Csr::<T, I>::from_bytes(&bytes).expect("round-trips").to_bytes(), bytes);
    let (nrows, ncols) = csr.shape();
    if small(nrows, ncols) {
        let dense = csr.to_dense();
        check_products(&csr, &dense);
    }
    let (r, c, indptr, indices, values) = csr.into_parts();
    Csr::<T, I>::try_from_parts(r, c, indptr, indices, values).expect("its own parts validate");
}

/// The CSR file format (`SHEARCSR`) for every value and index width: whatever decodes
/// re-validates from its parts, round-trips, and multiplies like its dense form.
pub fn csr(data: &[u8]) {
    csr_as::<f32, u16>(data);
    csr_as::<f32, u32>(data);
    csr_as::<f64, u16>(data);
    csr_as::<f64, u32>(data);
}

fn sliced_ell_as<T: Scalar, I: SpIndex>(data: &[u8]) {
    let Ok(sell) = SlicedEll::<T, I>::from_bytes(data) else { return };
    let bytes = sell.to_bytes();
    assert_eq!(SlicedEll::<T, I>::from_bytes(&bytes).expect("round-trips").to_bytes(), bytes);
    let csr = sell.to_csr();
    assert_eq!(csr.nnz(), sell.nnz());
    let (nrows, ncols) = sell.shape();
    if small(nrows, ncols) {
        let dense = sell.to_dense();
        assert_eq!(
            csr.to_dense().map(|v| v.as_f64().to_bits()),
            dense.map(|v| v.as_f64().to_bits())
        );
        check_products(&sell, &dense);
    }
    SlicedEll::<T, I>::try_from_parts(sell.into_parts()).expect("its own parts validate");
}

/// The sliced-ELLPACK file format (`SHEARSEL`) for every value and index width: whatever
/// decodes re-validates from its parts, round-trips, converts to the same CSR matrix, and
/// multiplies like its dense form.
pub fn sliced_ell(data: &[u8]) {
    sliced_ell_as::<f32, u16>(data);
    sliced_ell_as::<f32, u32>(data);
    sliced_ell_as::<f64, u16>(data);
    sliced_ell_as::<f64, u32>(data);
}

fn nm_sparse_as<T: Scalar>(data: &[u8]) {
    let Ok(nm) = NmSparse::<T>::from_bytes(data) else { return };
    let bytes = nm.to_bytes();
    assert_eq!(NmSparse::<T>::from_bytes(&bytes).expect("round-trips").to_bytes(), bytes);
    let (nrows, ncols) = nm.shape();
    if small(nrows, ncols) {
        let dense = nm.to_dense();
        check_products(&nm, &dense);
    }
    let (r, c, pattern, values, positions) = nm.into_parts();
    NmSparse::<T>::try_from_parts(r, c, pattern, values, positions)
        .expect("its own parts validate");
}

/// The N:M file format (`SHEARNM`): whatever decodes re-validates from its parts,
/// round-trips, and multiplies like its dense form.
pub fn nm_sparse(data: &[u8]) {
    nm_sparse_as::<f32>(data);
    nm_sparse_as::<f64>(data);
}

fn block_sparse_as<T: Scalar>(data: &[u8]) {
    let Ok(bsr) = BlockSparse::<T>::from_bytes(data) else { return };
    let bytes = bsr.to_bytes();
    assert_eq!(BlockSparse::<T>::from_bytes(&bytes).expect("round-trips").to_bytes(), bytes);
    let (nrows, ncols) = bsr.shape();
    if small(nrows, ncols) {
        let dense = bsr.to_dense();
        check_products(&bsr, &dense);
    }
    let (r, c, block, indptr, block_cols, values) = bsr.into_parts();
    BlockSparse::<T>::try_from_parts(r, c, block, indptr, block_cols, values)
        .expect("its own parts validate");
}

/// The block-sparse file format (`SHEARBSR`): whatever decodes re-validates from its
/// parts, round-trips, and multiplies like its dense form.
pub fn block_sparse(data: &[u8]) {
    block_sparse_as::<f32>(data);
    block_sparse_as::<f64>(data);
}

fn narrow_csr_as<V: NarrowValue, I: SpIndex>(data: &[u8]) {
    let Ok(csr) = NarrowCsr::<V, I>::from_bytes(data) else { return };
    let bytes = csr.to_bytes();
    assert_eq!(NarrowCsr::<V, I>::from_bytes(&bytes).expect("round-trips").to_bytes(), bytes);
    let (nrows, ncols) = csr.shape();
    if small(nrows, ncols) {
        // The products are those of the f32 matrix the values stand for (but int8's
        // against one vector, which run in integers: `int8_csr_integers`).
        let dense = csr.to_csr().to_dense();
        check_matmul(&csr, &dense);
        if V::NAME != "int8" {
            check_matvec(&csr, &dense);
        }
    }
    let (indptr, indices) = (csr.indptr().to_vec(), csr.indices().to_vec());
    let (values, scales) = (csr.values().to_vec(), csr.scales().to_vec());
    NarrowCsr::<V, I>::try_from_parts(nrows, ncols, indptr, indices, values, scales)
        .expect("its own parts validate");
}

/// An int8 CSR matrix's products against one token, and its batch of 33 (past the 9
/// from which they run in integers: a 32-token tile and a 16-token one), round the
/// tokens to int8 and give the bits of its entries written out as dense int8.
fn int8_csr_integers<I: SpIndex>(csr: &Int8Csr<I>) {
    let (nrows, ncols) = csr.shape();
    if !small(nrows, ncols) {
        return;
    }
    let mut dense = vec![0i8; nrows * ncols];
    for r in 0..nrows {
        for k in csr.indptr()[r]..csr.indptr()[r + 1] {
            dense[r * ncols + csr.indices()[k].index()] = csr.values()[k];
        }
    }
    let scheme = shears_sparse::QuantScheme::PerRow;
    let Ok(dense) = Int8Matrix::try_from_parts(nrows, ncols, scheme, dense, csr.scales().to_vec())
    else {
        return;
    };
    let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let x = DMatrix::from_fn(ncols, 33, |i, j| ((i * 7 + j * 3) % 11) as f32 - 5.0);
    let got = csr.matmul(&x).expect("shapes agree");
    let want = dense.matmul(&x).expect("shapes agree");
    assert_eq!(bits(got.as_slice()), bits(want.as_slice()), "int8 csr batch");
    let x = DMatrix::from_fn(ncols, 1, |i, _| ((i * 7) % 11) as f32 - 5.0);
    let want = dense.matmul(&x).expect("shapes agree");
    let got = csr.matmul(&x).expect("shapes agree");
    assert_eq!(bits(got.as_slice()), bits(want.as_slice()), "int8 csr one column");
    let got = csr.matvec(&DVector::from_column_slice(x.as_slice())).expect("shapes agree");
    assert_eq!(bits(got.as_slice()), bits(want.as_slice()), "int8 csr matvec");
}

fn narrow_block_as<V: NarrowValue>(data: &[u8]) {
    let Ok(block) = NarrowBlock::<V>::from_bytes(data) else { return };
    let bytes = block.to_bytes();
    assert_eq!(NarrowBlock::<V>::from_bytes(&bytes).expect("round-trips").to_bytes(), bytes);
    let (nrows, ncols) = block.shape();
    if small(nrows, ncols) {
        // The products are those of the f32 matrix the values stand for.
        check_products(&block, &block.to_dense());
    }
    let parts = (block.indptr().to_vec(), block.block_cols().to_vec(), block.values().to_vec());
    let dims = (nrows, ncols, block.block_shape());
    NarrowBlock::<V>::try_from_parts(dims, parts.0, parts.1, parts.2, block.scales().to_vec())
        .expect("its own parts validate");
}

fn narrow_sell_as<V: NarrowValue, I: SpIndex>(data: &[u8]) {
    let Ok(sell) = NarrowSell::<V, I>::from_bytes(data) else { return };
    let bytes = sell.to_bytes();
    assert_eq!(NarrowSell::<V, I>::from_bytes(&bytes).expect("round-trips").to_bytes(), bytes);
    let (nrows, ncols) = sell.shape();
    if small(nrows, ncols) {
        // The products are those of the f32 matrix the values stand for.
        check_products(&sell, &sell.to_sell().to_dense());
    }
    let (parts, scales) = sell.into_parts();
    NarrowSell::<V, I>::try_from_parts(parts, scales).expect("its own parts validate");
}

fn narrow_nm_as<V: NarrowValue>(data: &[u8]) -> Option<NarrowNm<V>> {
    let nm = NarrowNm::<V>::from_bytes(data).ok()?;
    let bytes = nm.to_bytes();
    assert_eq!(NarrowNm::<V>::from_bytes(&bytes).expect("round-trips").to_bytes(), bytes);
    let (nrows, ncols) = nm.shape();
    if small(nrows, ncols) && V::NAME != "int8" {
        check_products(&nm, &nm.to_nm().to_dense());
    }
    let parts = (nm.values().to_vec(), nm.positions().to_vec(), nm.scales().to_vec());
    NarrowNm::<V>::try_from_parts(nrows, ncols, nm.pattern(), parts.0, parts.1, parts.2)
        .expect("its own parts validate");
    Some(nm)
}

/// An int8 N:M matrix's products: one token widens to the f32 matrix, bit for bit;
/// batches round the tokens to int8 and give the bits of the slots written out as dense
/// int8.
fn int8_nm_products(nm: &Int8Nm) {
    let (nrows, ncols) = nm.shape();
    if !small(nrows, ncols) {
        return;
    }
    let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let xv = DVector::from_fn(ncols, |i, _| ((i * 7) % 11) as f32 - 5.0);
    let (got, want) = (nm.matvec(&xv).expect("shapes agree"), nm.to_nm().matvec(&xv));
    assert_eq!(bits(got.as_slice()), bits(want.expect("shapes agree").as_slice()));
    let x = DMatrix::from_fn(ncols, 3, |i, j| ((i * 7 + j * 3) % 11) as f32 - 5.0);
    let got = nm.matmul(&x).expect("shapes agree");
    if let Some(dense) = written_out(nm) {
        let want = dense.matmul(&x).expect("shapes agree");
        assert_eq!(bits(got.as_slice()), bits(want.as_slice()), "int8 batch");
    }
}

/// The dense int8 matrix of an int8 N:M matrix's slots (a plain loop); `None` where two
/// nonzero slots share a position (such matrices widen) or a row scale is one
/// `Int8Matrix` refuses.
fn written_out(nm: &Int8Nm) -> Option<Int8Matrix> {
    let ((nrows, ncols), pattern) = (nm.shape(), nm.pattern());
    let (n, m, groups) = (pattern.n(), pattern.m(), ncols.div_ceil(pattern.m()));
    let mut dense = vec![0i8; nrows * ncols];
    for (k, (&v, &p)) in nm.values().iter().zip(nm.positions()).enumerate() {
        let at = (k / (groups * n)) * ncols + (k / n % groups) * m + usize::from(p);
        if v != 0 {
            if dense[at] != 0 {
                return None;
            }
            dense[at] = v;
        }
    }
    let scheme = shears_sparse::QuantScheme::PerRow;
    Int8Matrix::try_from_parts(nrows, ncols, scheme, dense, nm.scales().to_vec()).ok()
}

/// The narrow-valued formats (`SHEARNCS`, `SHEARNSE`, `SHEARNBS`, `SHEARNNM`: int8,
/// bf16, f16) and dense int8 (`SHEARI8D`): whatever decodes re-validates from its parts,
/// round-trips, and multiplies (narrow CSR, SELL and block-sparse and float N:M like the
/// f32 matrix their values stand for; int8 CSR and N:M batches like dense int8).
pub fn narrow(data: &[u8]) {
    narrow_csr_as::<i8, u32>(data);
    if let Ok(csr) = Int8Csr::<u32>::from_bytes(data) {
        int8_csr_integers(&csr);
    }
    narrow_csr_as::<half::bf16, u16>(data);
    narrow_csr_as::<half::f16, u32>(data);
    narrow_sell_as::<i8, u32>(data);
    narrow_sell_as::<half::bf16, u16>(data);
    narrow_sell_as::<half::f16, u32>(data);
    narrow_block_as::<i8>(data);
    narrow_block_as::<half::bf16>(data);
    narrow_block_as::<half::f16>(data);
    if let Some(nm) = narrow_nm_as::<i8>(data) {
        int8_nm_products(&nm);
    }
    narrow_nm_as::<half::bf16>(data);
    narrow_nm_as::<half::f16>(data);
    let Ok(int8) = Int8Matrix::from_bytes(data) else { return };
    let bytes = int8.to_bytes();
    assert_eq!(Int8Matrix::from_bytes(&bytes).expect("round-trips").to_bytes(), bytes);
    let (nrows, ncols) = int8.shape();
    if small(nrows, ncols) {
        let x = DMatrix::from_fn(ncols, 3, |i, j| ((i * 7 + j * 3) % 11) as f32 - 5.0);
        assert_eq!(int8.matmul(&x).expect("shapes agree").shape(), (nrows, 3));
    }
    let (values, scales) = (int8.values().to_vec(), int8.scales().to_vec());
    Int8Matrix::try_from_parts(nrows, ncols, int8.scheme(), values, scales)
        .expect("its own parts validate");
}

/// The `--pattern` and `--sparsity` parsers of the `shears` binary (the library types'
/// `FromStr`): any string gives a value or an error, every value satisfies its type's
/// invariants, and a pattern's name parses back to the same pattern.
pub fn cli_args(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(s) = text.parse::<Sparsity>() {
        assert!((0.0..=1.0).contains(&s.get()), "sparsity {} from `{text}`", s.get());
    }
    let Ok(pattern) = text.parse::<Pattern>() else { return };
    match pattern {
        Pattern::NM(p) => assert!(p.n() <= p.m() && p.m() > 0, "{p:?} from `{text}`"),
        Pattern::Blocks { shape, .. } => {
            assert!(shape.rows() > 0 && shape.cols() > 0, "{shape:?} from `{text}`")
        }
        _ => {}
    }
    assert_eq!(pattern.to_string().parse::<Pattern>().ok(), Some(pattern), "from `{text}`");
}

/// The mask-set file format (`SHEARSMS`): whatever decodes has distinct names and
/// re-encodes to the same bytes.
pub fn mask_set(data: &[u8]) {
    let Ok(masks) = decode_mask_set(data) else { return };
    assert_eq!(encode_mask_set(&masks), data, "a decoded mask set re-encodes to its bytes");
    let mut names: Vec<&str> = masks.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    assert!(names.windows(2).all(|p| p[0] != p[1]), "duplicate names decoded");
}

/// The pattern check `shears prune` runs on every tensor before reading it: for any
/// shape, pattern and sparsity it answers without panicking, and when it says the
/// pattern fits, pruning a matrix of that shape succeeds and prunes some but not all of
/// it for a target strictly between 0 and 1.
///
/// Input: two bytes of shape (a 2-D weight; or, with the first byte's high bit, a
/// `[rows, 2, 1, cols]` conv weight), one byte of sparsity (`/ 255`), then the pattern's
/// text.
pub fn pattern_fit(data: &[u8]) {
    let [a, b, s, text @ ..] = data else { return };
    let Ok(text) = std::str::from_utf8(text) else { return };
    let Ok(pattern) = text.parse::<Pattern>() else { return };
    let (rows, cols) = (usize::from(a & 0x3f), usize::from(b & 0x3f));
    let shape = if a & 0x80 != 0 {
        WeightShape::conv(rows, 2, 1, cols).expect("small dimensions")
    } else {
        WeightShape::dense(rows, cols).expect("small dimensions")
    };
    let Ok(sparsity) = Sparsity::new(f64::from(*s) / 255.0) else { return };
    if pattern.check_fits("w", &shape, sparsity).is_err() {
        return;
    }
    let (r, c) = shape.matrix_shape();
    let w = DMatrix::from_fn(r, c, |i, j| ((i * 31 + j * 17) % 23) as f32 - 11.0);
    let ctx = LayerContext::new("w").with_shape(shape);
    let mask = Pruner::new(Magnitude)
        .with_pattern(pattern)
        .mask(&w, &ctx, sparsity)
        .expect("a pattern that fits prunes");
    assert_eq!(mask.shape(), (r, c));
    let strict = sparsity.get() > 0.0 && sparsity.get() < 1.0;
    let structured = matches!(pattern, Pattern::Structured(_));
    if strict && structured && r * c > 0 {
        assert!(mask.count_pruned() > 0, "{pattern} at {sparsity} on {r}x{c} pruned nothing");
        assert!(mask.count_kept() > 0, "{pattern} at {sparsity} on {r}x{c} pruned everything");
    }
    if let Pattern::NM(p) = pattern {
        assert!(p.first_violation(&mask).is_none());
    }
}

/// The names a [`paths`] input picks from, each with the file it reaches in the tree
/// [`paths`] builds: regular files 0-3, `d/g` (4), the directory `d` (5), and two names
/// that do not exist (6, 7; a path that does not exist yet is one file with itself).
const PATH_NAMES: [(&str, u8); 11] = [
    ("f0", 0),
    ("f1", 1),
    ("f2", 2),
    ("f3", 3),
    ("h", u8::MAX), // a hard link to the file the input's first byte names
    ("s", u8::MAX), // a symbolic link to that file
    ("d/g", 4),
    ("l/g", 4), // `l` is a symbolic link to `d`
    ("d", 5),
    ("new0", 6),
    ("new1", 7),
];

/// Ways of spelling a name that reach the same place.
const SPELLINGS: [&str; 4] = ["", "./", "d/../", "l/../"];

/// The path checks every command runs before it writes: `check_distinct` refuses
/// exactly the lists where one file is written and also read or written under another
/// role (through any spelling, hard link or symbolic link), and `check_output` refuses
/// exactly symbolic links and directories. The oracle is the tree's own record of which
/// name reaches which file, not the file system.
///
/// Input: the first byte picks the file the hard and symbolic links reach; then each
/// byte is one path (its low nibble the name, the next two bits the spelling, the top
/// bit whether it is written), up to six.
pub fn paths(data: &[u8]) {
    let [link_target, picks @ ..] = data else { return };
    let target = link_target % 4;
    let dir = std::env::temp_dir().join(format!(
        "shears-fuzz-paths-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("d")).expect("temporary directory");
    for k in 0..4 {
        std::fs::write(dir.join(format!("f{k}")), [k]).expect("file");
    }
    std::fs::write(dir.join("d/g"), b"g").expect("file");
    let reached = |k: u8| format!("f{k}");
    std::fs::hard_link(dir.join(reached(target)), dir.join("h")).expect("hard link");
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(reached(target), dir.join("s")).expect("symlink");
        std::os::unix::fs::symlink("d", dir.join("l")).expect("symlink");
    }
    let chosen: Vec<(std::path::PathBuf, u8, bool, &str)> = picks
        .iter()
        .take(6)
        .map(|&b| {
            let (name, file) = PATH_NAMES[usize::from(b & 0x0f) % PATH_NAMES.len()];
            let spelling = SPELLINGS[usize::from((b >> 4) & 0x03)];
            let file = if file == u8::MAX { target } else { file };
            (dir.join(format!("{spelling}{name}")), file, b & 0x80 != 0, name)
        })
        .collect();
    let roles = ["a", "b", "c", "d", "e", "f"];
    let list: Vec<(&'static str, &std::path::Path, bool)> =
        chosen.iter().zip(roles).map(|((p, _, w, _), r)| (r, p.as_path(), *w)).collect();
    let clash = chosen.iter().enumerate().any(|(i, (_, fi, wi, _))| {
        chosen[i + 1..].iter().any(|(_, fj, wj, _)| fi == fj && (*wi || *wj))
    });
    let distinct = shears_io::paths::check_distinct(&list);
    assert_eq!(distinct.is_err(), clash, "check_distinct on {list:?}: {distinct:?}");
    #[cfg(unix)]
    for (path, _, _, name) in &chosen {
        let refused = matches!(*name, "s" | "d");
        let checked = shears_io::paths::check_output(path);
        assert_eq!(checked.is_err(), refused, "check_output({}): {checked:?}", path.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
