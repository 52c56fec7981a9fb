//! The one validator per format. Every path that accepts outside data (`try_from_parts`,
//! deserialisation, byte loaders) goes through these; each check has its own error.

use shears_core::{BlockShape, NmPattern};

use crate::error::FormatError;
use crate::index::SpIndex;
use crate::kernels::SLICE_ROWS;

/// Checks compressed-row structure in one pass: `indptr` has `nrows + 1` entries, starts
/// at 0, never decreases and ends at `indices.len() == values_len`; every row's indices
/// are in `0..ncols` and strictly increasing.
pub(crate) fn compressed<I: SpIndex>(
    nrows: usize,
    ncols: usize,
    indptr: &[usize],
    indices: &[I],
    values_len: usize,
) -> Result<(), FormatError> {
    // nrows = usize::MAX cannot have its nrows + 1 pointers: saturating keeps it an error.
    if indptr.len() != nrows.saturating_add(1) || nrows == usize::MAX {
        return Err(FormatError::IndptrLength {
            expected: nrows.saturating_add(1),
            found: indptr.len(),
        });
    }
    if indices.len() != values_len {
        return Err(FormatError::LengthMismatch { indices: indices.len(), values: values_len });
    }
    if indptr[0] != 0 {
        return Err(FormatError::IndptrStart { found: indptr[0] });
    }
    if indptr[nrows] != indices.len() {
        return Err(FormatError::IndptrEnd { expected: indices.len(), found: indptr[nrows] });
    }
    for row in 0..nrows {
        let (start, end) = (indptr[row], indptr[row + 1]);
        if end < start || end > indices.len() {
            return Err(FormatError::IndptrNotMonotone { row });
        }
        let mut previous: Option<usize> = None;
        for &i in &indices[start..end] {
            let index = i.index();
            if index >= ncols {
                return Err(FormatError::IndexOutOfRange { row, index, ncols });
            }
            if previous.is_some_and(|p| p >= index) {
                return Err(FormatError::UnsortedIndices { row });
            }
            previous = Some(index);
        }
    }
    Ok(())
}

/// Checks N:M packed structure: `n` slots per group of `m` columns (the last group may be
/// shorter), `values` and `positions` both `nrows * groups * n` long, and every position
/// inside its group. Positions may repeat (padding slots hold zeros); the matrix entry is
/// the sum of the slots at its position, which is what the kernels compute.
pub(crate) fn nm(
    nrows: usize,
    ncols: usize,
    pattern: NmPattern,
    positions: &[u8],
    values_len: usize,
) -> Result<(), FormatError> {
    let (n, m) = (pattern.n(), pattern.m());
    if m > 256 {
        return Err(FormatError::InvalidStructure {
            reason: format!("group size {m} exceeds 256"),
        });
    }
    if ncols > u32::MAX as usize {
        return Err(FormatError::InvalidStructure {
            reason: format!("{ncols} columns exceed the u32 column range"),
        });
    }
    // With no columns (or N = 0) no slot bounds the rows, yet products size their output
    // by them: the same bound as every other side shears takes.
    if nrows > shears_core::MAX_SIDE {
        return Err(FormatError::InvalidStructure {
            reason: format!("{nrows} rows exceed the longest side an array may have"),
        });
    }
    let groups = ncols.div_ceil(m);
    let expected = nrows
        .checked_mul(groups)
        .and_then(|x| x.checked_mul(n))
        .ok_or_else(|| FormatError::InvalidStructure { reason: "slot count overflows".into() })?;
    if values_len != expected {
        return Err(FormatError::BufferLength { what: "values", expected, found: values_len });
    }
    if positions.len() != expected {
        return Err(FormatError::BufferLength {
            what: "positions",
            expected,
            found: positions.len(),
        });
    }
    // Walk the stored slots, not rows x groups: with N = 0 a tiny file may declare
    // billions of empty groups.
    if n == 0 {
        return Ok(());
    }
    for (slot, group_slots) in positions.chunks_exact(n).enumerate() {
        let (row, group) = (slot / groups, slot % groups);
        let width = (ncols - group * m).min(m);
        if let Some(&p) = group_slots.iter().find(|&&p| usize::from(p) >= width) {
            return Err(FormatError::PositionOutOfRange { row, group, position: usize::from(p) });
        }
    }
    Ok(())
}

/// Checks a sliced-ELLPACK window: a positive multiple of the slice height.
pub(crate) fn sell_window(window: usize) -> Result<(), FormatError> {
    if window == 0 || !window.is_multiple_of(SLICE_ROWS) {
        return Err(FormatError::InvalidStructure {
            reason: format!("window of {window} rows is not a positive multiple of {SLICE_ROWS}"),
        });
    }
    Ok(())
}

/// Checks sliced-ELLPACK structure (the invariants listed on [`crate::SlicedEll`]) in
/// one pass over the lanes and one over the stored entries; padding holds `zero`.
#[allow(clippy::too_many_arguments, reason = "the parts of the format")]
pub(crate) fn sell<V: Copy + PartialEq, I: SpIndex>(
    nrows: usize,
    ncols: usize,
    window: usize,
    order: &[usize],
    lengths: &[usize],
    slice_ptr: &[usize],
    indices: &[I],
    values: &[V],
    zero: V,
) -> Result<(), FormatError> {
    sell_window(window)?;
    for (what, found) in [("order", order.len()), ("lengths", lengths.len())] {
        if found != nrows {
            return Err(FormatError::BufferLength { what, expected: nrows, found });
        }
    }
    let slices = nrows.div_ceil(SLICE_ROWS);
    if slice_ptr.len() != slices + 1 {
        return Err(FormatError::BufferLength {
            what: "slice_ptr",
            expected: slices + 1,
            found: slice_ptr.len(),
        });
    }
    if indices.len() != values.len() {
        return Err(FormatError::LengthMismatch { indices: indices.len(), values: values.len() });
    }
    let mut seen = vec![false; nrows];
    for (lane, &row) in order.iter().enumerate() {
        let reason = if row >= nrows {
            "past the last row"
        } else if row / window != lane / window {
            "outside the lane's window"
        } else if std::mem::replace(&mut seen[row], true) {
            "already held by another lane"
        } else {
            continue;
        };
        return Err(FormatError::RowOrder { lane, row, reason });
    }
    if slice_ptr[0] != 0 {
        return Err(FormatError::InvalidStructure {
            reason: format!("slice_ptr starts at {}, not 0", slice_ptr[0]),
        });
    }
    for (slice, lanes) in lengths.chunks(SLICE_ROWS).enumerate() {
        let (start, end) = (slice_ptr[slice], slice_ptr[slice + 1]);
        let width = lanes.iter().copied().max().unwrap_or(0);
        let expected = width.checked_mul(SLICE_ROWS).ok_or_else(|| {
            FormatError::InvalidStructure { reason: format!("lane length {width} overflows") }
        })?;
        if end < start {
            return Err(FormatError::InvalidStructure {
                reason: format!("slice_ptr decreases after slice {slice}"),
            });
        }
        if end - start != expected {
            return Err(FormatError::SliceWidth { slice, expected, found: end - start });
        }
        if end > values.len() {
            return Err(FormatError::BufferLength {
                what: "values",
                expected: slice_ptr[slices],
                found: values.len(),
            });
        }
        // Lanes past the last row (in a last, partial slice) have length 0: all padding.
        for l in 0..SLICE_ROWS {
            let length = lanes.get(l).copied().unwrap_or(0);
            let mut previous: Option<usize> = None;
            for step in 0..width {
                let k = start + step * SLICE_ROWS + l;
                let index = indices[k].index();
                if step >= length {
                    if index != 0 || values[k] != zero {
                        return Err(FormatError::PaddingNotEmpty { slice, lane: l, step });
                    }
                    continue;
                }
                let row = order[slice * SLICE_ROWS + l];
                if index >= ncols {
                    return Err(FormatError::IndexOutOfRange { row, index, ncols });
                }
                if previous.is_some_and(|p| p >= index) {
                    return Err(FormatError::UnsortedIndices { row });
                }
                previous = Some(index);
            }
        }
    }
    if slice_ptr[slices] != values.len() {
        return Err(FormatError::BufferLength {
            what: "values",
            expected: slice_ptr[slices],
            found: values.len(),
        });
    }
    Ok(())
}

/// Checks block-sparse structure (the invariants listed on [`crate::BlockSparse`]): a
/// valid compressed-row index over the grid of blocks, and `values` entries for every
/// stored block.
pub(crate) fn bsr(
    nrows: usize,
    ncols: usize,
    block: BlockShape,
    indptr: &[usize],
    block_cols: &[u32],
    values: usize,
) -> Result<(), FormatError> {
    // Blocks may be taller and wider than any index, so unlike the other formats the
    // shape is not bounded by the buffers: `to_dense` must still be able to address it
    // in the widest value type (nalgebra multiplies the dimensions unchecked).
    if shears_core::check_addressable::<f64>(&[nrows, ncols]).is_err() {
        return Err(FormatError::InvalidStructure {
            reason: format!("a {nrows}x{ncols} matrix has more elements than can be addressed"),
        });
    }
    let (grid_rows, grid_cols) = block.grid(nrows, ncols);
    compressed(grid_rows, grid_cols, indptr, block_cols, block_cols.len())?;
    let per_block = block.rows() * block.cols();
    let expected = block_cols.len().checked_mul(per_block).ok_or_else(|| {
        FormatError::InvalidStructure { reason: "block value count overflows".into() }
    })?;
    if values != expected {
        return Err(FormatError::BufferLength { what: "values", expected, found: values });
    }
    Ok(())
}
