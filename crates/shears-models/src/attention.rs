//! Multi-head self-attention over packed sentences: each sentence attends to its own
//! tokens only, which is what the padding mask of a padded batch computes, without the
//! padding.

use faer::MatMut;
use nalgebra::DMatrix;
use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;

use crate::math::softmax_unscaled;

/// Where the queries, keys and values are: each `hidden` rows of a matrix with one column
/// per token, starting at a row (the three may be stacked in one matrix).
#[derive(Clone, Copy)]
pub(crate) struct Projections<'a> {
    pub(crate) q: (&'a DMatrix<f32>, usize),
    pub(crate) k: (&'a DMatrix<f32>, usize),
    pub(crate) v: (&'a DMatrix<f32>, usize),
}

/// `softmax(K_hᵀ Q_h / √d) ` applied to `V_h`, for every head `h` of every sentence:
/// the projections' columns are the sentences' tokens one after another (`lengths`),
/// heads `hidden / heads` rows each. Sentences and heads run in parallel.
pub(crate) fn self_attention(
    p: Projections<'_>,
    hidden: usize,
    heads: usize,
    lengths: &[usize],
) -> DMatrix<f32> {
    let tokens = p.q.0.ncols();
    let d = hidden / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let mut context = crate::linear::zeroed(hidden, tokens);
    let mut tasks: Vec<(usize, usize, usize, MatMut<'_, f32>)> =
        Vec::with_capacity(lengths.len() * heads);
    let mut rest = MatMut::from_column_major_slice_mut(context.as_mut_slice(), hidden, tokens);
    let mut start = 0;
    for &len in lengths {
        let (sentence, after) = rest.split_at_col_mut(len);
        rest = after;
        let mut below = sentence;
        for h in 0..heads {
            let (head, others) = below.split_at_row_mut(d);
            below = others;
            if len > 0 {
                tasks.push((start, len, h, head));
            }
        }
        start += len;
    }
    // A head of a sentence: for each of its `len` tokens from `start`, the `d` values from
    // row `row + h * d`.
    fn tokens_of(
        (m, row): (&DMatrix<f32>, usize),
        (start, len, h, d): (usize, usize, usize, usize),
    ) -> impl Iterator<Item = &[f32]> {
        let stride = m.nrows();
        (start..start + len).map(move |t| {
            let offset = t * stride + row + h * d;
            &m.as_slice()[offset..offset + d]
        })
    }
    tasks.into_par_iter().for_each_init(Scratch::default, |scratch, (start, len, h, mut out)| {
        let at = (start, len, h, d);
        scratch.load(tokens_of(p.q, at), tokens_of(p.k, at), tokens_of(p.v, at), d, len);
        Arch::new().dispatch(Head { s: scratch, d, len, scale });
        let dp = d.next_multiple_of(PAD);
        for (j, result) in scratch.out.chunks_exact(dp).take(len).enumerate() {
            let column = out.as_mut().col_mut(j).try_as_col_major_mut();
            if let Some(column) = column {
                column.as_slice_mut().copy_from_slice(&result[..d]);
            }
        }
    });
    context
}

/// Queries computed together: each key or value vector loaded is used this many times.
const QUERIES: usize = 4;
/// What the keys (for the scores) and head features (for the output) are padded to: a
/// whole number of register tiles for every SIMD width (a tile is two vectors, at most
/// sixteen lanes each).
const PAD: usize = 32;

/// One head of one sentence, copied into contiguous buffers padded with zeros: the
/// queries by token (`dp` values each, `dp` the head size rounded up to [`PAD`]), the
/// keys by feature (`lp` values each, `lp` the length rounded up to [`PAD`], so a
/// feature of a tile's keys is two whole vectors), the values by token; the scores of
/// one tile of queries; and the output.
#[derive(Default)]
struct Scratch {
    q: Vec<f32>,
    kt: Vec<f32>,
    v: Vec<f32>,
    scores: Vec<f32>,
    out: Vec<f32>,
}

impl Scratch {
    fn load<'a>(
        &mut self,
        q: impl Iterator<Item = &'a [f32]>,
        k: impl Iterator<Item = &'a [f32]>,
        v: impl Iterator<Item = &'a [f32]>,
        d: usize,
        len: usize,
    ) {
        let (dp, lp) = (d.next_multiple_of(PAD), len.next_multiple_of(PAD));
        let queries = len.next_multiple_of(QUERIES);
        let by_token = |tokens: &mut dyn Iterator<Item = &'a [f32]>, buf: &mut Vec<f32>, rows| {
            buf.clear();
            buf.resize(rows * dp, 0.0);
            for (t, token) in tokens.enumerate() {
                buf[t * dp..t * dp + d].copy_from_slice(token);
            }
        };
        by_token(&mut { q }, &mut self.q, queries);
        by_token(&mut { v }, &mut self.v, len);
        self.kt.clear();
        self.kt.resize(d * lp, 0.0);
        for (i, token) in k.enumerate() {
            for (x, &value) in token.iter().enumerate() {
                self.kt[x * lp + i] = value;
            }
        }
        // The scores of one tile of queries at a time: a whole head's would be len² values.
        self.scores.resize(QUERIES * lp, 0.0);
        self.out.resize(queries * dp, 0.0);
    }
}

/// The two vectors of a tile's values (`values` holds exactly a tile).
#[inline(always)]
fn pair<S: Simd>(values: &[f32]) -> [S::f32s; 2] {
    let (vectors, _) = S::as_simd_f32s(values);
    [vectors[0], vectors[1]]
}

/// The attention of one head, on a [`Scratch`], in register tiles of four queries by two
/// vectors of keys (the scores) and four queries by two vectors of features (the output):
/// eight independent sums, enough to hide the latency of a fused multiply-add on two FMA
/// pipes. Written with `pulp`'s vector types, so that the tiles are as wide as the CPU's
/// widest SIMD (sixteen keys a tile with AVX2, thirty-two with AVX-512); on an x86 CPU
/// without FMA, the scalar fallback multiplies and adds separately.
struct Head<'a> {
    s: &'a mut Scratch,
    d: usize,
    len: usize,
    scale: f32,
}

impl WithSimd for Head<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Head { s, d, len, scale } = self;
        let (dp, lp) = (d.next_multiple_of(PAD), len.next_multiple_of(PAD));
        let queries = len.next_multiple_of(QUERIES);
        // Two vectors; `PAD` is a multiple of it for every width pulp dispatches to. The
        // loops run to the length and head size rounded up to the tile, not to `PAD`.
        const { assert!(PAD.is_multiple_of(2 * S::F32_LANES)) };
        let tile = 2 * S::F32_LANES;
        let (key_end, feature_end) = (len.next_multiple_of(tile), d.next_multiple_of(tile));
        let zero = simd.splat_f32s(0.0);
        let scale_v = simd.splat_f32s(scale);
        for j0 in (0..queries).step_by(QUERIES) {
            // Scores of queries j0..j0+4 over every key: Σ_x q[x, j] k[x, i].
            let q: [&[f32]; QUERIES] = std::array::from_fn(|a| &s.q[(j0 + a) * dp..][..d]);
            for i0 in (0..key_end).step_by(tile) {
                let mut acc = [[zero; 2]; QUERIES];
                for (x, features) in s.kt.chunks_exact(lp).enumerate() {
                    let [k0, k1] = pair::<S>(&features[i0..i0 + tile]);
                    for (a, q) in acc.iter_mut().zip(&q) {
                        let qx = simd.splat_f32s(q[x]);
                        a[0] = simd.mul_add_e_f32s(qx, k0, a[0]);
                        a[1] = simd.mul_add_e_f32s(qx, k1, a[1]);
                    }
                }
                for (a, row) in acc.iter().zip(s.scores.chunks_exact_mut(lp)) {
                    let row = &mut row[i0..i0 + tile];
                    let (row, _) = S::as_mut_simd_f32s(row);
                    for (r, &v) in row.iter_mut().zip(a) {
                        *r = simd.mul_f32s(v, scale_v);
                    }
                }
            }
            // Each query's probabilities, unscaled, and the factors that scale their sums.
            // (A loop, not a closure: a closure would be compiled without the dispatch's
            // SIMD features, and `exp` would not vectorise.)
            let mut inv = [zero; QUERIES];
            for (inv, row) in inv.iter_mut().zip(s.scores.chunks_exact_mut(lp)) {
                *inv = simd.splat_f32s(softmax_unscaled(&mut row[..len]));
            }
            // Their outputs: Σ_i p[i, j] v[:, i], a tile of the head's features at a time.
            let p: [&[f32]; QUERIES] = std::array::from_fn(|a| &s.scores[a * lp..][..len]);
            for x0 in (0..feature_end).step_by(tile) {
                let mut acc = [[zero; 2]; QUERIES];
                for (i, token) in s.v.chunks_exact(dp).enumerate() {
                    let [v0, v1] = pair::<S>(&token[x0..x0 + tile]);
                    for (a, p) in acc.iter_mut().zip(&p) {
                        let pi = simd.splat_f32s(p[i]);
                        a[0] = simd.mul_add_e_f32s(pi, v0, a[0]);
                        a[1] = simd.mul_add_e_f32s(pi, v1, a[1]);
                    }
                }
                for ((a, &inv), qj) in acc.iter().zip(&inv).zip(j0..) {
                    let out = &mut s.out[qj * dp + x0..qj * dp + x0 + tile];
                    let (out, _) = S::as_mut_simd_f32s(out);
                    for (o, &v) in out.iter_mut().zip(a) {
                        *o = simd.mul_f32s(v, inv);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention written as loops over sentences, heads, queries and keys.
    fn naive(
        q: &DMatrix<f32>,
        k: &DMatrix<f32>,
        v: &DMatrix<f32>,
        heads: usize,
        lengths: &[usize],
    ) -> DMatrix<f64> {
        let (hidden, tokens) = q.shape();
        let d = hidden / heads;
        let mut out = DMatrix::<f64>::zeros(hidden, tokens);
        let mut start = 0;
        for &len in lengths {
            for h in 0..heads {
                for qi in start..start + len {
                    let logits: Vec<f64> = (start..start + len)
                        .map(|ki| {
                            (0..d)
                                .map(|x| {
                                    f64::from(q[(h * d + x, qi)]) * f64::from(k[(h * d + x, ki)])
                                })
                                .sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                    let total: f64 = weights.iter().sum();
                    for x in 0..d {
                        out[(h * d + x, qi)] = (start..start + len)
                            .zip(&weights)
                            .map(|(ki, w)| w / total * f64::from(v[(h * d + x, ki)]))
                            .sum();
                    }
                }
            }
            start += len;
        }
        out
    }

    /// Checks [`self_attention`] against [`naive`] on `lengths` tokens, with the
    /// projections separate and stacked.
    fn check(hidden: usize, heads: usize, lengths: &[usize]) {
        let tokens: usize = lengths.iter().sum();
        let (q, k, v) =
            (filled(hidden, tokens, 1), filled(hidden, tokens, 2), filled(hidden, tokens, 3));
        let separate = Projections { q: (&q, 0), k: (&k, 0), v: (&v, 0) };
        let got = self_attention(separate, hidden, heads, lengths);
        let mut stacked = DMatrix::<f32>::zeros(3 * hidden, tokens);
        stacked.rows_mut(0, hidden).copy_from(&q);
        stacked.rows_mut(hidden, hidden).copy_from(&k);
        stacked.rows_mut(2 * hidden, hidden).copy_from(&v);
        let together =
            Projections { q: (&stacked, 0), k: (&stacked, hidden), v: (&stacked, 2 * hidden) };
        assert_eq!(self_attention(together, hidden, heads, lengths), got);
        let want = naive(&q, &k, &v, heads, lengths);
        let err = (got.map(f64::from) - want).abs().max();
        assert!(err < 1e-5, "hidden {hidden}, heads {heads}, lengths {lengths:?}: {err}");
    }

    /// A `rows x cols` matrix of small values that vary with `seed`.
    fn filled(rows: usize, cols: usize, seed: usize) -> DMatrix<f32> {
        DMatrix::from_fn(rows, cols, |r, c| (((r * 7 + c * 13 + seed) % 17) as f32 - 8.0) / 4.0)
    }

    /// One head of one sentence (`q`, `k`, `v`: a token per column) through the kernel
    /// built for `simd`: the outputs of its queries, a column each.
    fn head_with<S: Simd>(
        simd: S,
        q: &DMatrix<f32>,
        k: &DMatrix<f32>,
        v: &DMatrix<f32>,
    ) -> DMatrix<f32> {
        let (d, len) = q.shape();
        let mut s = Scratch::default();
        let columns = |m| DMatrix::as_slice(m).chunks_exact(d);
        s.load(columns(q), columns(k), columns(v), d, len);
        simd.vectorize(Head { s: &mut s, d, len, scale: 1.0 / (d as f32).sqrt() });
        let dp = d.next_multiple_of(PAD);
        DMatrix::from_fn(d, len, |x, j| s.out[j * dp + x])
    }

    /// [`head_with`] for the widest SIMD this CPU has.
    struct Native<'a>(&'a DMatrix<f32>, &'a DMatrix<f32>, &'a DMatrix<f32>);

    impl WithSimd for Native<'_> {
        type Output = DMatrix<f32>;
        fn with_simd<S: Simd>(self, simd: S) -> DMatrix<f32> {
            head_with(simd, self.0, self.1, self.2)
        }
    }

    #[test]
    fn a_head_holds_one_tile_of_queries_scores_not_the_whole_square() {
        // A sentence of 1000 tokens: its scores would be a million values at once.
        let (d, len) = (8, 1000);
        let token = vec![0.5f32; d];
        let tokens = || std::iter::repeat_n(token.as_slice(), len);
        let mut scratch = Scratch::default();
        scratch.load(tokens(), tokens(), tokens(), d, len);
        assert_eq!(scratch.scores.len(), QUERIES * len.next_multiple_of(PAD));
    }

    #[test]
    fn every_simd_width_equals_the_naive_loops() {
        // Tiles of 2, 8, 16 and 32 values (pulp's scalar types of one to sixteen lanes),
        // and this CPU's own, on heads and sentences of whole, partial and single tiles.
        for (d, len) in [(32, 128), (20, 37), (5, 3), (1, 1), (64, 33)] {
            let (q, k, v) = (filled(d, len, 1), filled(d, len, 2), filled(d, len, 3));
            let want = naive(&q, &k, &v, 1, &[len]);
            let got = [
                ("scalar", head_with(pulp::Scalar, &q, &k, &v)),
                ("128-bit", head_with(pulp::Scalar128b, &q, &k, &v)),
                ("256-bit", head_with(pulp::Scalar256b, &q, &k, &v)),
                ("512-bit", head_with(pulp::Scalar512b, &q, &k, &v)),
                ("this CPU", Arch::new().dispatch(Native(&q, &k, &v))),
            ];
            for (name, got) in got {
                let err = (got.map(f64::from) - &want).abs().max();
                assert!(err < 1e-5, "{name}, d {d}, len {len}: {err}");
            }
        }
    }

    #[test]
    fn equals_the_naive_loops() {
        // Heads narrower than a tile, and sentences shorter than one.
        check(12, 3, &[3, 1, 7, 0, 5]);
    }

    #[test]
    fn equals_the_naive_loops_over_whole_and_partial_tiles() {
        // MiniLM's head size (32: two tiles of features) and one not a multiple of a
        // tile (20); sentences of whole tiles of keys and queries and ragged ones.
        check(64, 2, &[16, 37, 1, 130]);
        check(60, 3, &[33, 4, 64]);
    }
}
