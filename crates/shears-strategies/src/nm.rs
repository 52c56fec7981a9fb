//! N:M selection: in every group of M consecutive weights of a row, keep the N best.

use nalgebra::DMatrix;
use shears_core::{Mask, NmPattern, Result, Scalar, check_finite};

/// The N:M mask of `scores`.
///
/// Groups run along each row: columns `[k*m, (k+1)*m)`. When the row length is not a
/// multiple of M, the last group is shorter and is treated as padded with pruned
/// weights: it keeps at most N, so every group, padded, satisfies the pattern (as a
/// packed N:M format needs). Only weights that `kept` keeps are candidates; a group with
/// N or fewer of them keeps them all. Ties prune the lower column first.
pub(crate) fn nm_mask<T: Scalar>(
    tensor: &str,
    scores: &DMatrix<T>,
    pattern: NmPattern,
    kept: Option<&Mask>,
) -> Result<Mask> {
    check_finite(tensor, scores.as_slice())?;
    let (nrows, ncols) = scores.shape();
    let (n, m) = (pattern.n(), pattern.m());
    let mut mask = kept.cloned().unwrap_or_else(|| Mask::all_kept_like(scores));
    let mut group: Vec<(T::Key, usize)> = Vec::with_capacity(m);
    for start in (0..ncols).step_by(m) {
        let end = (start + m).min(ncols);
        for r in 0..nrows {
            group.clear();
            group.extend(
                (start..end)
                    .filter(|&c| mask.get(r, c) == Some(true))
                    .map(|c| (scores[(r, c)].order_key(), c)),
            );
            if group.len() <= n {
                continue;
            }
            // Highest (key, column) first: among equal keys the higher column is kept,
            // so the lower one is pruned first.
            group.sort_unstable_by(|a, b| b.cmp(a));
            for &(_, c) in &group[n..] {
                mask.set(r, c, false)?;
            }
        }
    }
    Ok(mask)
}

/// Whether every (padded) group of M along each row keeps at most N weights.
pub fn satisfies_nm(mask: &Mask, pattern: NmPattern) -> bool {
    pattern.first_violation(mask).is_none()
}

/// The first `(row, first column of the group)` whose group keeps more than N weights.
pub fn first_nm_violation(mask: &Mask, pattern: NmPattern) -> Option<(usize, usize)> {
    pattern.first_violation(mask)
}
