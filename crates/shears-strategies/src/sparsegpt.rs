//! [`SparseGpt`] (Frantar & Alistarh 2023): prunes a linear layer and updates the weights
//! it keeps, so that the layer's output on the calibration inputs changes least.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{
    LltRegularization, cholesky_in_place, cholesky_in_place_scratch,
};
use faer::linalg::matmul::matmul;
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::prelude::default;
use faer::{Accum, Par};
use std::ops::Range;

use nalgebra::DMatrix;
use pulp::{Arch, Simd, WithSimd};
use shears_core::{Mask, Rounding, Scalar, Sparsity, check_finite};

use crate::calibration::{InputStats, view, view_mut};
use crate::error::{Error, Result};
use crate::pattern::Pattern;

/// SparseGPT's reconstruction: the optimal-brain-surgeon update, column by column, with
/// lazy block updates.
///
/// For a weight `W` (outputs x inputs) and the Gram matrix `H = X Xᵀ` of its inputs,
/// columns are pruned left to right; pruning column `i`'s weights moves the error they
/// leave onto the columns not yet visited, weighted by the inverse Hessian, so the
/// layer's output on the calibration inputs is kept as well as a greedy pass can. The
/// inverse Hessian's upper Cholesky factor gives every step's weights at once; columns
/// are taken in blocks (128 by default) so the updates of all later columns are one
/// matrix product per block. `H` is dampened by a fraction (1% by default) of its mean
/// diagonal before it is inverted. All of it runs in f64.
///
/// Masks: unstructured pruning chooses within each block the weights with the least
/// `w² / [H⁻¹]ᵢᵢ²` (the paper's adaptive mask selection), each block pruning its share of
/// the exact target count; N:M keeps, in each group of M inputs of a row, the N weights
/// of most score when the group is reached, and prunes the other M - N. Weights that `kept` already prunes
/// stay pruned and count towards the target. Ties prune the lower row-major index first.
///
/// ```
/// use nalgebra::DMatrix;
/// use shears_core::{Rounding, Sparsity};
/// use shears_strategies::{InputStats, Pattern, SparseGpt};
///
/// let x = DMatrix::from_fn(8, 64, |i, j| ((i * 7 + j * 3) % 11) as f32 - 5.0);
/// let w = DMatrix::from_fn(4, 8, |i, j| (i as f64 - j as f64) / 4.0);
/// let mut stats = InputStats::new(8, true)?;
/// stats.add(&x)?;
/// let half = Sparsity::new(0.5)?;
/// let pruned = SparseGpt::new().prune("fc", &w, &stats, Pattern::Unstructured, half, Rounding::HalfEven, None)?;
/// assert_eq!(pruned.mask.count_pruned(), 16);
/// // The kept weights moved to make up for the pruned ones.
/// assert!(pruned.mask.iter_kept().any(|(r, c)| pruned.weights[(r, c)] != w[(r, c)]));
/// # Ok::<(), shears_strategies::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SparseGpt {
    block_size: usize,
    damping: f64,
}

impl Default for SparseGpt {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The dampened inverse Hessian of a layer's inputs as SparseGPT uses it: its upper
/// Cholesky factor, and the inputs no calibration token set.
#[derive(Debug, Clone, PartialEq)]
pub struct InverseHessian {
    factor: DMatrix<f64>,
    dead: Vec<usize>,
}

impl InverseHessian {
    /// The number of inputs.
    pub fn inputs(&self) -> usize {
        self.factor.nrows()
    }
}

/// A pruned layer: its updated weights, zero where the mask prunes, and the mask.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconstruction<T: Scalar> {
    /// The weights, pruned and updated.
    pub weights: DMatrix<T>,
    /// Which weights are kept.
    pub mask: Mask,
}

impl SparseGpt {
    /// Blocks of 128 columns, dampening 1% of the mean diagonal: the paper's settings.
    pub const DEFAULT: SparseGpt = SparseGpt { block_size: 128, damping: 0.01 };

    /// The paper's settings ([`SparseGpt::DEFAULT`]).
    pub fn new() -> Self {
        Self::DEFAULT
    }

    /// Sets the number of columns updated lazily together.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for 0.
    pub fn with_block_size(mut self, block_size: usize) -> Result<Self> {
        if block_size == 0 {
            return Err(Error::InvalidSetting { what: "SparseGPT block size", value: 0.0 });
        }
        self.block_size = block_size;
        Ok(self)
    }

    /// Sets the dampening, a fraction of the Hessian's mean diagonal added to it.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] unless it is finite and positive.
    pub fn with_damping(mut self, damping: f64) -> Result<Self> {
        if !(damping.is_finite() && damping > 0.0) {
            return Err(Error::InvalidSetting { what: "SparseGPT dampening", value: damping });
        }
        self.damping = damping;
        Ok(self)
    }

    /// The block size.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The dampening.
    pub fn damping(&self) -> f64 {
        self.damping
    }

    /// Prunes `weights` (outputs x inputs) of layer `tensor`, whose inputs `stats`
    /// describes, to `sparsity` in `pattern` (unstructured or N:M). Weights pruned
    /// already, those `kept` prunes and those that are zero, stay pruned and zero and
    /// count towards the target (an unstructured result prunes
    /// `max(target, already pruned)`).
    ///
    /// # Errors
    /// [`Error::UnsupportedPattern`] for another pattern;
    /// [`Error::MissingCalibration`] if `stats` has no Gram matrix or saw no token;
    /// shape and NaN errors from shears-core; [`Error::NotPositiveDefinite`] if the
    /// dampened Hessian cannot be factored.
    #[allow(clippy::too_many_arguments, reason = "the layer, its statistics and the target")]
    pub fn prune<T: Scalar>(
        &self,
        tensor: &str,
        weights: &DMatrix<T>,
        stats: &InputStats,
        pattern: Pattern,
        sparsity: Sparsity,
        rounding: Rounding,
        kept: Option<&Mask>,
    ) -> Result<Reconstruction<T>> {
        let hessian = self.inverse_hessian(tensor, stats)?;
        self.prune_with(tensor, weights, &hessian, pattern, sparsity, rounding, kept)
    }

    /// The dampened inverse Hessian of the inputs `stats` describes, factored: what
    /// [`SparseGpt::prune_with`] needs, computed once for every layer that shares these
    /// inputs (a transformer's query, key and value projections).
    ///
    /// # Errors
    /// [`Error::MissingCalibration`] if `stats` has no Gram matrix or saw no token;
    /// [`Error::NotPositiveDefinite`] if the dampened Hessian cannot be factored;
    /// [`Error::HessianOverflow`] if the Gram matrix is not finite.
    pub fn inverse_hessian(&self, tensor: &str, stats: &InputStats) -> Result<InverseHessian> {
        let gram = stats.require_gram(tensor)?;
        if stats.samples() == 0 {
            return Err(Error::MissingCalibration {
                tensor: tensor.to_owned(),
                what: "calibration tokens (none were seen)",
            });
        }
        self.factor(tensor, gram)
    }

    /// [`SparseGpt::prune`] with the inverse Hessian of the layer's inputs already
    /// factored ([`SparseGpt::inverse_hessian`]).
    ///
    /// # Errors
    /// As [`SparseGpt::prune`].
    #[allow(clippy::too_many_arguments, reason = "the layer, its statistics and the target")]
    pub fn prune_with<T: Scalar>(
        &self,
        tensor: &str,
        weights: &DMatrix<T>,
        hessian: &InverseHessian,
        pattern: Pattern,
        sparsity: Sparsity,
        rounding: Rounding,
        kept: Option<&Mask>,
    ) -> Result<Reconstruction<T>> {
        let (rows, cols) = weights.shape();
        let nm = match pattern {
            Pattern::Unstructured => None,
            Pattern::NM(p) => {
                pattern.check_sparsity(sparsity)?;
                Some((p.n(), p.m()))
            }
            other => {
                return Err(Error::UnsupportedPattern {
                    method: "sparsegpt",
                    pattern: other.to_string(),
                });
            }
        };
        check_finite(tensor, weights.as_slice())?;
        if hessian.factor.nrows() != cols {
            return Err(shears_core::Error::LengthMismatch {
                what: "calibration inputs",
                expected: cols,
                got: hessian.factor.nrows(),
            }
            .into());
        }
        if let Some(k) = kept
            && k.shape() != (rows, cols)
        {
            return Err(shears_core::Error::ShapeMismatch {
                op: "sparsegpt kept mask",
                expected: (rows, cols),
                got: k.shape(),
            }
            .into());
        }
        let mut w = weights.map(|v| v.as_f64());
        // A weight that is already zero is a pruned one (masks only ever grow): left out
        // of the reconstruction, whose updates would otherwise give it a value again.
        let nonzero = Mask::from_fn(rows, cols, |r, c| weights[(r, c)] != T::zero())?;
        let mut mask = match kept {
            Some(k) => k.and(&nonzero)?,
            None => nonzero,
        };
        if rows == 0 || cols == 0 {
            return Ok(Reconstruction { weights: weights.clone(), mask });
        }
        // Inputs no token ever set carry nothing: their weights go to zero first, as in
        // the reference.
        for &i in &hessian.dead {
            w.column_mut(i).fill(0.0);
        }
        let hinv = &hessian.factor;
        let block = match nm {
            // Groups never straddle blocks.
            Some((_, m)) => (self.block_size / m).max(1) * m,
            None => self.block_size,
        };
        let target = sparsity.count_of(rows * cols, rounding);
        let mut pruned = 0usize;
        for start in (0..cols).step_by(block) {
            let end = (start + block).min(cols);
            if nm.is_none() {
                let d: Vec<f64> = (start..end).map(|i| hinv[(i, i)]).collect();
                // The blocks so far prune their share of the exact target: what is
                // already pruned (before and in this block) counts towards it.
                let share = (target as u128 * end as u128 / cols as u128) as usize;
                let forced = (start..end)
                    .map(|c| (0..rows).filter(|&r| mask.get(r, c) == Some(false)).count())
                    .sum::<usize>();
                let want = share.saturating_sub(pruned + forced);
                pruned += forced + prune_lowest_in_block(&w, &mut mask, start, end, &d, want)?;
            }
            let err = prune_block(&mut w, &mut mask, hinv, start..end, nm)?;
            if end < cols {
                // And the block's onto every later column, in one product.
                let (width, rest) = (end - start, cols - end);
                let h = view(hinv).submatrix(start, end, width, rest);
                let later = view_mut(&mut w).submatrix_mut(0, end, rows, rest);
                matmul(later, Accum::Add, view(&err), h, -1.0, Par::rayon(0));
            }
        }
        // Pruned weights are exact zeros; kept ones carry their updates.
        let weights = DMatrix::from_fn(rows, cols, |r, c| {
            if mask.get(r, c) == Some(true) { T::from_f64_lossy(w[(r, c)]) } else { T::zero() }
        });
        check_finite(tensor, weights.as_slice())?;
        Ok(Reconstruction { weights, mask })
    }

    /// The upper Cholesky factor `U` of the dampened inverse Hessian (`H⁻¹ = Uᵀ U`).
    /// Inputs no token ever set (a zero diagonal) get a unit diagonal, as in the
    /// reference.
    fn factor(&self, tensor: &str, gram: &DMatrix<f64>) -> Result<InverseHessian> {
        let cols = gram.ncols();
        if gram.iter().any(|v| !v.is_finite()) {
            let largest = (0..cols).map(|i| gram[(i, i)].sqrt()).fold(0.0, f64::max);
            return Err(Error::HessianOverflow { tensor: tensor.to_owned(), largest });
        }
        // With J the reversal permutation and J H J = L Lᵀ (Cholesky), H⁻¹ = Uᵀ U for
        // the upper triangular U = J L⁻¹ J: one factorisation and one triangular
        // inverse, instead of inverting H and factoring the inverse. For a square
        // column-major matrix, J A J is A's buffer reversed, so both reversals are
        // sequential passes, and the work happens in two buffers.
        let mut h = gram.clone();
        h.as_mut_slice().reverse();
        let mut dead = Vec::new();
        for i in 0..cols {
            let r = cols - 1 - i;
            if h[(r, r)] == 0.0 {
                h[(r, r)] = 1.0;
                dead.push(i);
            }
        }
        let mean_diagonal = (0..cols).map(|i| h[(i, i)]).sum::<f64>() / cols as f64;
        let damp = self.damping * mean_diagonal;
        for i in 0..cols {
            h[(i, i)] += damp;
        }
        let par = Par::rayon(0);
        let mut scratch = MemBuffer::new(cholesky_in_place_scratch::<f64>(cols, par, default()));
        // The factorisation reads and writes the lower triangle only.
        cholesky_in_place(
            view_mut(&mut h),
            LltRegularization::default(),
            par,
            MemStack::new(&mut scratch),
            default(),
        )
        .map_err(|_| Error::NotPositiveDefinite { tensor: tensor.to_owned() })?;
        // The inverse is written to the lower triangle; the upper stays zero.
        let mut factor = DMatrix::<f64>::zeros(cols, cols);
        invert_lower_triangular(view_mut(&mut factor), view(&h), par);
        factor.as_mut_slice().reverse();
        Ok(InverseHessian { factor, dead })
    }
}

/// Prunes the `want` kept weights of columns `[start, end)` with the least `w² / d²`
/// (`d` the inverse Hessian's diagonal over those columns), or all of them if fewer are
/// kept; ties prune the lower row-major index first. Returns how many it pruned.
fn prune_lowest_in_block(
    w: &DMatrix<f64>,
    mask: &mut Mask,
    start: usize,
    end: usize,
    d: &[f64],
    want: usize,
) -> Result<usize> {
    if want == 0 {
        return Ok(0);
    }
    let rows = w.nrows();
    let mut candidates: Vec<(f64, usize, usize)> = Vec::with_capacity(rows * (end - start));
    for c in start..end {
        let dc = d[c - start];
        for r in 0..rows {
            if mask.get(r, c) == Some(true) {
                let v = w[(r, c)];
                candidates.push((v * v / (dc * dc), r, c));
            }
        }
    }
    let want = want.min(candidates.len());
    let order = |a: &(f64, usize, usize), b: &(f64, usize, usize)| {
        a.0.total_cmp(&b.0).then((a.1, a.2).cmp(&(b.1, b.2)))
    };
    if want < candidates.len() {
        candidates.select_nth_unstable_by(want, order);
    }
    for &(_, r, c) in &candidates[..want] {
        mask.set(r, c, false)?;
    }
    Ok(want)
}

/// Prunes the columns `block` of `w` left to right (N:M groups chosen as they are
/// reached, unstructured ones already chosen in `mask`) and moves each pruned
/// weight's error onto the block's later columns; returns the errors (`rows x
/// block.len()`, each divided by its column's inverse Hessian diagonal) for the
/// update of the columns after the block.
///
/// Each row's steps depend on that row alone, so the block is taken [`ROW_TILE`]
/// rows at a time, copied into a tile small enough for L1 whose column loop runs in
/// the CPU's widest vectors ([`ColumnLoop`]). Each weight sees the same operations in
/// the same order as in a loop over whole columns.
fn prune_block(
    w: &mut DMatrix<f64>,
    mask: &mut Mask,
    hinv: &DMatrix<f64>,
    block: Range<usize>,
    nm: Option<(usize, usize)>,
) -> Result<DMatrix<f64>> {
    let (rows, start, width) = (w.nrows(), block.start, block.len());
    // Row k of the block's inverse Hessian factor, contiguous: the weights of
    // column `start + k`'s error on each later column.
    let mut h = vec![0.0; width * width];
    for k in 0..width {
        for j in k..width {
            h[k * width + j] = hinv[(start + k, start + j)];
        }
    }
    let diagonal: Vec<f64> = (0..width).map(|k| h[k * width + k]).collect();
    let mut err = DMatrix::<f64>::zeros(rows, width);
    let mut tile = RowTile::new(width);
    let arch = Arch::new();
    for first in (0..rows).step_by(ROW_TILE) {
        let height = ROW_TILE.min(rows - first);
        tile.load(w, mask, first, height, start);
        arch.dispatch(ColumnLoop { tile: &mut tile, h: &h, diagonal: &diagonal, start, nm });
        tile.store(w, mask, &mut err, first, height, start)?;
    }
    Ok(err)
}

/// A tile's steps through its block's columns, compiled for the widest SIMD the CPU has
/// (a baseline x86-64 build would take two f64 per instruction). The operations, and
/// so the bits, are the same at every width.
struct ColumnLoop<'a> {
    tile: &'a mut RowTile,
    /// The block's inverse Hessian factor, row by row ([`prune_block`]).
    h: &'a [f64],
    /// The block's inverse Hessian diagonal, the N:M groups' scores' divisors.
    diagonal: &'a [f64],
    /// The block's first column.
    start: usize,
    /// `(n, m)` for N:M pruning; `None` when the block's mask is already chosen.
    nm: Option<(usize, usize)>,
}

impl WithSimd for ColumnLoop<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let width = self.diagonal.len();
        // (A loop, not iterator adaptors taking closures: a closure would be compiled
        // without the dispatch's target features. The N:M groups' scoring and sorting
        // does take closures and stays at baseline width: it runs once per group, the
        // error loop once per later column.)
        for k in 0..width {
            if let Some((n, m)) = self.nm
                && (self.start + k).is_multiple_of(m)
            {
                self.tile.prune_groups(k..(k + m).min(width), &self.diagonal[k..], n);
            }
            self.tile.prune_column(k, &self.h[k * width..(k + 1) * width]);
        }
    }
}

/// Rows of a block taken together through its column loop: one AVX-512 vector of f64
/// per column, and a 128-column block's tile (8 KiB of weights and as much of errors)
/// stays in L1 while the block's inverse Hessian rows stream past it.
const ROW_TILE: usize = 8;

/// [`ROW_TILE`] rows of a block, column by column: weight `(t, k)` of the tile at
/// `k * ROW_TILE + t`. Rows past the matrix's last are zeros that nothing keeps, whose
/// errors stay zero.
struct RowTile {
    values: Vec<f64>,
    kept: Vec<bool>,
    errors: Vec<f64>,
}

impl RowTile {
    fn new(width: usize) -> RowTile {
        let len = width * ROW_TILE;
        RowTile { values: vec![0.0; len], kept: vec![false; len], errors: vec![0.0; len] }
    }

    /// Rows `first..first + height` of columns `start..` of `w` and `mask`.
    fn load(&mut self, w: &DMatrix<f64>, mask: &Mask, first: usize, height: usize, start: usize) {
        self.values.fill(0.0);
        self.kept.fill(false);
        let columns =
            self.values.chunks_exact_mut(ROW_TILE).zip(self.kept.chunks_exact_mut(ROW_TILE));
        for (k, (values, kept)) in columns.enumerate() {
            let c = start + k;
            values[..height].copy_from_slice(&w.column(c).as_slice()[first..first + height]);
            for (t, keep) in kept[..height].iter_mut().enumerate() {
                *keep = mask.get(first + t, c) == Some(true);
            }
        }
    }

    /// In each row, prunes all but the `n` kept weights of the tile's columns `group`
    /// with the highest `w² / d²` (`d` the inverse Hessian's diagonal from the group's
    /// first column on); ties prune the lower column first. A group with `n` or fewer
    /// kept weights keeps them.
    fn prune_groups(&mut self, group: Range<usize>, d: &[f64], n: usize) {
        let mut scores: Vec<(f64, usize)> = Vec::with_capacity(group.len());
        for t in 0..ROW_TILE {
            scores.clear();
            scores.extend(group.clone().filter(|&k| self.kept[k * ROW_TILE + t]).map(|k| {
                let (v, dk) = (self.values[k * ROW_TILE + t], d[k - group.start]);
                (v * v / (dk * dk), k)
            }));
            if scores.len() <= n {
                continue;
            }
            // Highest first; among equal scores the higher column is kept.
            scores.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
            for &(_, k) in &scores[n..] {
                self.kept[k * ROW_TILE + t] = false;
            }
        }
    }

    /// Column `k`'s pruned weights become zero; their errors (over the diagonal,
    /// `h[k]`) move onto the later columns, weighted by `h[k + 1..]`.
    #[inline(always)]
    fn prune_column(&mut self, k: usize, h: &[f64]) {
        let (before, later) = self.values.split_at_mut((k + 1) * ROW_TILE);
        let column = &mut before[k * ROW_TILE..];
        let kept = &self.kept[k * ROW_TILE..(k + 1) * ROW_TILE];
        let errors = &mut self.errors[k * ROW_TILE..(k + 1) * ROW_TILE];
        let mut e = [0.0; ROW_TILE];
        for t in 0..ROW_TILE {
            let q = if kept[t] { column[t] } else { 0.0 };
            e[t] = (column[t] - q) / h[k];
            column[t] = q;
        }
        errors.copy_from_slice(&e);
        for (later, &hj) in later.chunks_exact_mut(ROW_TILE).zip(&h[k + 1..]) {
            if hj != 0.0 {
                for t in 0..ROW_TILE {
                    later[t] -= hj * e[t];
                }
            }
        }
    }

    /// Writes the tile's weights, mask and errors back to rows `first..first + height`.
    fn store(
        &self,
        w: &mut DMatrix<f64>,
        mask: &mut Mask,
        err: &mut DMatrix<f64>,
        first: usize,
        height: usize,
        start: usize,
    ) -> Result<()> {
        for (k, values) in self.values.chunks_exact(ROW_TILE).enumerate() {
            let c = start + k;
            w.column_mut(c).as_mut_slice()[first..first + height]
                .copy_from_slice(&values[..height]);
            let errors = &self.errors[k * ROW_TILE..k * ROW_TILE + height];
            err.column_mut(k).as_mut_slice()[first..first + height].copy_from_slice(errors);
            for t in 0..height {
                if !self.kept[k * ROW_TILE + t] && mask.get(first + t, c) == Some(true) {
                    mask.set(first + t, c, false)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
