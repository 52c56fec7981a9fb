//! Multi-head self-attention over packed sentences: each sentence attends to its own
//! tokens only, which is what the padding mask of a padded batch computes, without the
//! padding.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use nalgebra::DMatrix;
use rayon::prelude::*;

use crate::math::softmax;

/// `softmax(K_hᵀ Q_h / √d) ` applied to `V_h`, for every head `h` of every sentence:
/// `q`, `k`, `v` are `hidden x tokens`, the sentences' tokens one after another
/// (`lengths`), heads `hidden / heads` rows each. Sentences and heads run in parallel.
pub(crate) fn self_attention(
    q: &DMatrix<f32>,
    k: &DMatrix<f32>,
    v: &DMatrix<f32>,
    heads: usize,
    lengths: &[usize],
) -> DMatrix<f32> {
    let (hidden, tokens) = q.shape();
    let d = hidden / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let mut context = DMatrix::<f32>::zeros(hidden, tokens);
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
    // A head of a sentence: `d` rows from `h * d`, `len` columns from `start`.
    fn head(m: &DMatrix<f32>, (start, len, h, d): (usize, usize, usize, usize)) -> MatRef<'_, f32> {
        let hidden = m.nrows();
        let offset = start * hidden + h * d;
        MatRef::from_column_major_slice_with_stride(&m.as_slice()[offset..], d, len, hidden)
    }
    tasks.into_par_iter().for_each(|(start, len, h, out)| {
        let at = (start, len, h, d);
        let (qh, kh, vh) = (head(q, at), head(k, at), head(v, at));
        // scores[i, j]: key i for query j; each column is softmaxed over the keys.
        let mut scores = Mat::<f32>::zeros(len, len);
        matmul(scores.as_mut(), Accum::Replace, kh.transpose(), qh, scale, Par::Seq);
        for j in 0..len {
            softmax(scores.col_as_slice_mut(j), 1.0);
        }
        matmul(out, Accum::Replace, vh, scores.as_ref(), 1.0, Par::Seq);
    });
    context
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

    #[test]
    fn equals_the_naive_loops() {
        let lengths = [3, 1, 7, 0, 5];
        let tokens: usize = lengths.iter().sum();
        let (hidden, heads) = (12, 3);
        let m = |seed: usize| {
            DMatrix::from_fn(hidden, tokens, |r, c| {
                (((r * 7 + c * 13 + seed) % 17) as f32 - 8.0) / 4.0
            })
        };
        let (q, k, v) = (m(1), m(2), m(3));
        let got = self_attention(&q, &k, &v, heads, &lengths);
        let want = naive(&q, &k, &v, heads, &lengths);
        let err = (got.map(f64::from) - want).abs().max();
        assert!(err < 1e-5, "{err}");
    }
}
