//! The one validator per format. Every path that accepts outside data (`try_from_parts`,
//! deserialisation, byte loaders) goes through these; each check has its own error.

use shears_core::NmPattern;

use crate::error::FormatError;
use crate::index::SpIndex;

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
    if indptr.len() != nrows + 1 {
        return Err(FormatError::IndptrLength { expected: nrows + 1, found: indptr.len() });
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
