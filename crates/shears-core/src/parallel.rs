//! When a pass over one tensor is split across threads (with the `rayon` feature).

/// Tensors of at least this many values have their passes (selection histograms, mask
/// application) split across rayon's threads; below it, the split costs more than it
/// saves. Each value still belongs to exactly one task, so results do not depend on the
/// thread count.
#[cfg_attr(not(feature = "rayon"), allow(dead_code))]
pub(crate) const PARALLEL_MIN_LEN: usize = 1 << 22;
