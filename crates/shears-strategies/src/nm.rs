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
    first_nm_violation(mask, pattern).is_none()
}

/// The first `(row, first column of the group)` whose group keeps more than N weights.
pub fn first_nm_violation(mask: &Mask, pattern: NmPattern) -> Option<(usize, usize)> {
    let (nrows, ncols) = mask.shape();
    (0..nrows).find_map(|r| {
        (0..ncols).step_by(pattern.m()).find_map(|start| {
            let end = (start + pattern.m()).min(ncols);
            let kept = (start..end).filter(|&c| mask.get(r, c) == Some(true)).count();
            (kept > pattern.n()).then_some((r, start))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::dmatrix;

    #[test]
    fn two_four_keeps_the_best_two() {
        let s = dmatrix![1.0, 4.0, 3.0, 2.0, 5.0, 5.0, 5.0, 5.0];
        let mask = nm_mask("t", &s, NmPattern::TWO_FOUR, None).unwrap();
        assert_eq!(mask.to_matrix(), dmatrix![false, true, true, false, false, false, true, true]);
        assert!(satisfies_nm(&mask, NmPattern::TWO_FOUR));
    }

    #[test]
    fn short_tail_group_keeps_at_most_n() {
        let s = dmatrix![1.0, 2.0, 3.0, 4.0, 9.0, 8.0, 7.0];
        let mask = nm_mask("t", &s, NmPattern::TWO_FOUR, None).unwrap();
        assert_eq!(mask.to_matrix(), dmatrix![false, false, true, true, true, true, false]);
        let s = dmatrix![1.0, 2.0, 3.0, 4.0, 9.0];
        assert_eq!(nm_mask("t", &s, NmPattern::TWO_FOUR, None).unwrap().count_kept(), 3);
    }

    #[test]
    fn respects_kept_mask() {
        let s = dmatrix![4.0, 3.0, 2.0, 1.0];
        let kept = Mask::from_fn(1, 4, |_, c| c != 0).unwrap();
        let mask = nm_mask("t", &s, NmPattern::TWO_FOUR, Some(&kept)).unwrap();
        assert_eq!(mask.to_matrix(), dmatrix![false, true, true, false]);
    }

    #[test]
    fn violation_is_located() {
        let mask = Mask::from_matrix(&dmatrix![true, true, false, false; true, true, true, false]);
        assert_eq!(first_nm_violation(&mask, NmPattern::TWO_FOUR), Some((1, 0)));
        assert!(!satisfies_nm(&mask, NmPattern::TWO_FOUR));
    }
}
