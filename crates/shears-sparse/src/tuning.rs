//! Measured crossovers and defaults: where one format starts to beat another.
//!
//! These constants encode measurements (`cargo xtask bench`, whose method and figures are
//! in `docs/performance.md`) of the machines shears is tuned on. They steer
//! [`choose_format`](crate::choose_format) and the sliced-ELLPACK packing, and they are
//! **not** part of the semver-stable API: any release may change them as measurements
//! change. Depend on what `choose_format` returns, not on these values.

/// The sparsity from which CSR beats the dense product, by batch size.
///
/// At small batches a product streams the matrix once, so CSR wins as soon as its bytes
/// (value plus a narrow index per kept weight) fall well below the dense matrix's; at
/// large batches the dense product is compute-bound and efficient, and CSR needs far
/// fewer weights to win. At batch 1 a layer-sized matrix can stay in a large last-level
/// cache between products, where the dense product streams it faster than the formats'
/// indices allow, so batch 1 asks for more sparsity than the small batches after it.
pub fn csr_break_even(batch: usize) -> f64 {
    match batch {
        0..=1 => 0.6,
        2..=32 => 0.5,
        _ => 0.7,
    }
}

/// The largest batch at which N:M packing beats the dense product: past it, the dense
/// product's register tiling wins over N:M's halved arithmetic.
pub const NM_MAX_BATCH: usize = 32;

/// Matrices with fewer elements than this stay dense unless they compact: they sit in
/// L1/L2, where the dense kernels beat any index-chasing format.
pub const SMALL_MATRIX: usize = 65_536;

/// The rows a sliced-ELLPACK matrix sorts by length together. Longer windows pad less
/// (rows of similar length share a slice) but are also the units threads split, so a
/// matrix needs a few windows per thread.
pub const SELL_WINDOW: usize = 128;
