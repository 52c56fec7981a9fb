//! How much of a model a pruned copy keeps: its sentence embeddings against the dense
//! model's, one by one and as a neighbourhood.

use nalgebra::DMatrix;
use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};

/// The agreement of two models' embeddings of the same sentences.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Agreement {
    /// Sentences compared.
    pub sentences: usize,
    /// The mean cosine between each sentence's two embeddings.
    pub mean_cosine: f64,
    /// The 5th percentile of those cosines (nearest rank): the worst sentences' level.
    pub p5_cosine: f64,
    /// The lowest cosine.
    pub min_cosine: f64,
    /// Neighbours compared per sentence: 10, or two fewer than
    /// [`Agreement::neighbour_sentences`] if fewer, so that a sentence's neighbours are
    /// never all the others (which any two models would share); 0 below 3 sentences.
    pub k: usize,
    /// The sentences the neighbour measure runs over: the first
    /// [`NEIGHBOUR_SENTENCES`] at most, since it compares every pair.
    pub neighbour_sentences: usize,
    /// The mean fraction of each of those sentences' `k` nearest neighbours (by cosine,
    /// among the others of them) that both models share; `None` below 3 sentences.
    pub neighbour_overlap: Option<f64>,
}

/// The most sentences whose neighbours [`agreement`] compares: every pair of them is
/// compared, so time grows with their square (4096 sentences of 384 dimensions take
/// some 13 billion multiply-adds per model), and more would take minutes to hours.
pub const NEIGHBOUR_SENTENCES: usize = 4096;

/// Compares the embeddings `dense` and `pruned` (one column per sentence, the same
/// sentences in the same order). [`Comparison`] does the same a batch of sentences at a
/// time.
///
/// # Errors
/// [`Error::Argument`] if the two have different shapes or there is no sentence.
pub fn agreement(dense: &DMatrix<f32>, pruned: &DMatrix<f32>) -> Result<Agreement> {
    let mut comparison = Comparison::new();
    comparison.add(dense, pruned)?;
    comparison.finish()
}

/// [`agreement`] built up a batch of sentences at a time, so that a long text file
/// need not have all its embeddings in memory at once: each sentence leaves its cosine,
/// and the first [`NEIGHBOUR_SENTENCES`] their embeddings for the neighbour measure.
#[derive(Debug, Clone, Default)]
pub struct Comparison {
    /// The embeddings' dimension, from the first batch.
    hidden: Option<usize>,
    /// Each sentence's cosine between its two embeddings, in order.
    cosines: Vec<f64>,
    /// The first sentences' unit embeddings, column after column, of each model.
    dense_units: Vec<f64>,
    pruned_units: Vec<f64>,
}

impl Comparison {
    /// A comparison of no sentence yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sentences compared so far.
    #[must_use]
    pub fn sentences(&self) -> usize {
        self.cosines.len()
    }

    /// Adds the next sentences: their embeddings by the dense and the pruned model, one
    /// column per sentence, in the same order.
    ///
    /// # Errors
    /// [`Error::Argument`] if the two have different shapes, or a different dimension
    /// than the sentences added before, or either holds NaN or infinity.
    pub fn add(&mut self, dense: &DMatrix<f32>, pruned: &DMatrix<f32>) -> Result<()> {
        if dense.shape() != pruned.shape() {
            return Err(Error::Argument(format!(
                "the embeddings differ in shape: {:?} and {:?} (hidden x sentences)",
                dense.shape(),
                pruned.shape()
            )));
        }
        let hidden = dense.nrows();
        if let Some(before) = self.hidden
            && before != hidden
        {
            return Err(Error::Argument(format!(
                "the embeddings have {hidden} dimensions, those added before {before}"
            )));
        }
        // A cosine with NaN in it would make the mean NaN while the percentiles, sorted
        // past it, look fine.
        for (which, embeddings) in [("dense", dense), ("pruned", pruned)] {
            if let Some(i) = embeddings.iter().position(|v| !v.is_finite()) {
                return Err(Error::Argument(format!(
                    "the {which} embedding of sentence {} holds {}",
                    self.cosines.len() + i / hidden.max(1) + 1,
                    embeddings.as_slice()[i]
                )));
            }
        }
        self.hidden = Some(hidden);
        let unit = |c: nalgebra::DVectorView<'_, f32>| {
            let mut c = c.map(f64::from);
            let norm = c.norm().max(1e-12);
            c /= norm;
            c
        };
        for (a, b) in dense.column_iter().zip(pruned.column_iter()) {
            let (a, b) = (unit(a), unit(b));
            self.cosines.push(a.dot(&b));
            if self.cosines.len() <= NEIGHBOUR_SENTENCES {
                self.dense_units.extend(a.iter());
                self.pruned_units.extend(b.iter());
            }
        }
        Ok(())
    }

    /// The agreement over every sentence added.
    ///
    /// # Errors
    /// [`Error::Argument`] if no sentence was added.
    pub fn finish(self) -> Result<Agreement> {
        let Self { hidden, mut cosines, dense_units, pruned_units } = self;
        let n = cosines.len();
        if n == 0 {
            return Err(Error::Argument("no sentence to compare".into()));
        }
        let hidden = hidden.unwrap_or(0);
        let mean_cosine = cosines.iter().sum::<f64>() / n as f64;
        cosines.sort_by(f64::total_cmp);
        // Nearest rank: the ceil(0.05 n)-th smallest (1-based).
        let p5_cosine = cosines[((0.05 * n as f64).ceil() as usize).max(1) - 1];
        let m = n.min(NEIGHBOUR_SENTENCES);
        let k = 10.min(m.saturating_sub(2));
        let neighbour_overlap = if k == 0 {
            None
        } else {
            let a = DMatrix::from_vec(hidden, m, dense_units);
            let b = DMatrix::from_vec(hidden, m, pruned_units);
            // A sentence at a time (on rayon's threads), so that memory grows with the
            // sentences, not with their pairs.
            let shared: usize = (0..m)
                .into_par_iter()
                .map(|i| {
                    let na = nearest(&a, i, k);
                    nearest(&b, i, k).iter().filter(|j| na.contains(j)).count()
                })
                .sum();
            Some(shared as f64 / (m * k) as f64)
        };
        Ok(Agreement {
            sentences: n,
            mean_cosine,
            p5_cosine,
            min_cosine: cosines[0],
            k,
            neighbour_sentences: m,
            neighbour_overlap,
        })
    }
}

/// The `k` sentences whose unit embeddings (the columns of `unit`) are most similar to
/// sentence `me`'s: most similar first, ties to the lower index.
fn nearest(unit: &DMatrix<f64>, me: usize, k: usize) -> Vec<usize> {
    let mine = unit.column(me);
    let similar: Vec<f64> = unit.column_iter().map(|c| c.dot(&mine)).collect();
    let mut others: Vec<usize> = (0..unit.ncols()).filter(|&j| j != me).collect();
    let order = |x: &usize, y: &usize| similar[*y].total_cmp(&similar[*x]).then(x.cmp(y));
    if others.len() > k {
        others.select_nth_unstable_by(k - 1, order);
        others.truncate(k);
    }
    others.sort_by(order);
    others
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Embeddings of `n` sentences by two models that agree in part, 3 dimensions each.
    fn two_models(n: usize) -> (DMatrix<f32>, DMatrix<f32>) {
        let dense = DMatrix::from_fn(3, n, |r, c| (((c % 97) * (r + 3) * 7) % 11) as f32 - 5.0);
        let pruned = DMatrix::from_fn(3, n, |r, c| (((c % 89) * (r + 2) * 5) % 13) as f32 - 6.0);
        (dense, pruned)
    }

    #[test]
    fn a_comparison_in_batches_equals_one_over_all_sentences() {
        let n = NEIGHBOUR_SENTENCES + 70;
        let (dense, pruned) = two_models(n);
        let whole = agreement(&dense, &pruned).unwrap();
        // Uneven batches, one of them straddling the neighbour sentences' end.
        let mut comparison = Comparison::new();
        let mut start = 0;
        for width in [1, 1000, NEIGHBOUR_SENTENCES - 1020, 50, 39] {
            let (a, b) = (dense.columns(start, width), pruned.columns(start, width));
            comparison.add(&a.into_owned(), &b.into_owned()).unwrap();
            start += width;
        }
        assert_eq!((start, comparison.sentences()), (n, n));
        assert_eq!(comparison.finish().unwrap(), whole);
        // A batch of another dimension is refused, as is finishing with no sentence.
        let mut comparison = Comparison::new();
        comparison
            .add(&dense.columns(0, 2).into_owned(), &pruned.columns(0, 2).into_owned())
            .unwrap();
        let wider = DMatrix::<f32>::zeros(4, 2);
        let err = comparison.add(&wider, &wider).unwrap_err().to_string();
        assert!(err.contains("4 dimensions, those added before 3"), "{err}");
        assert!(Comparison::new().finish().is_err());
    }

    #[test]
    fn identical_embeddings_agree_fully() {
        let e = DMatrix::from_fn(4, 12, |r, c| ((r * 5 + c * 3) % 7) as f32 - 3.0);
        let a = agreement(&e, &e).unwrap();
        assert!((a.mean_cosine - 1.0).abs() < 1e-12 && (a.p5_cosine - 1.0).abs() < 1e-12);
        assert_eq!((a.k, a.neighbour_overlap, a.sentences), (10, Some(1.0), 12));
        assert_eq!(a.neighbour_sentences, 12);
    }

    /// Past NEIGHBOUR_SENTENCES the neighbours are those of the first sentences alone:
    /// what follows changes the cosines, not the neighbour measure.
    #[test]
    fn neighbours_are_measured_over_the_first_sentences() {
        let n = NEIGHBOUR_SENTENCES + 50;
        let (dense, pruned) = two_models(n);
        let all = agreement(&dense, &pruned).unwrap();
        let m = NEIGHBOUR_SENTENCES;
        let first =
            agreement(&dense.columns(0, m).into_owned(), &pruned.columns(0, m).into_owned())
                .unwrap();
        assert_eq!((all.sentences, all.neighbour_sentences, all.k), (n, m, 10));
        assert_eq!(all.neighbour_overlap, first.neighbour_overlap);
        // The tail still counts in the cosines: every pruned embedding past the first
        // sentences is the dense one, so the mean rises.
        let mut tail = pruned.clone();
        tail.columns_mut(m, 50).copy_from(&dense.columns(m, 50));
        let with_tail = agreement(&dense, &tail).unwrap();
        assert!(with_tail.mean_cosine > all.mean_cosine);
        assert_eq!(with_tail.neighbour_overlap, all.neighbour_overlap);
    }

    #[test]
    fn cosines_and_percentile_follow_their_definitions() {
        // 20 sentences: sentence i's pruned embedding is rotated by angle i * 0.05.
        let n = 20;
        let dense = DMatrix::from_fn(2, n, |r, _| if r == 0 { 1.0 } else { 0.0 });
        let pruned = DMatrix::from_fn(2, n, |r, c| {
            let t = c as f32 * 0.05;
            if r == 0 { t.cos() } else { t.sin() }
        });
        let a = agreement(&dense, &pruned).unwrap();
        let cos: Vec<f64> = (0..n).map(|i| f64::from((i as f32 * 0.05).cos())).collect();
        assert!((a.mean_cosine - cos.iter().sum::<f64>() / n as f64).abs() < 1e-6);
        // Nearest rank: the 1st of 20 sorted ascending (ceil(0.05 * 20) = 1).
        assert!((a.p5_cosine - cos[n - 1]).abs() < 1e-6);
        assert!((a.min_cosine - cos[n - 1]).abs() < 1e-6);
        assert!(agreement(&dense, &DMatrix::zeros(2, 3)).is_err());
        assert!(agreement(&DMatrix::zeros(2, 0), &DMatrix::zeros(2, 0)).is_err());
        let mut broken = pruned.clone();
        broken[(1, 4)] = f32::NAN;
        let err = agreement(&dense, &broken).unwrap_err().to_string();
        assert_eq!(err, "the pruned embedding of sentence 5 holds NaN");
    }

    #[test]
    fn neighbours_equal_a_full_sort_of_every_pair() {
        // With ties: repeated columns.
        let n = 300;
        let dense = DMatrix::from_fn(3, n, |r, c| (((c % 50) * (r + 3) * 7) % 11) as f32 - 5.0);
        let pruned = DMatrix::from_fn(3, n, |r, c| (((c % 61) * (r + 2) * 5) % 13) as f32 - 6.0);
        let got = agreement(&dense, &pruned).unwrap();
        let unit = |m: &DMatrix<f32>| {
            let mut m = m.map(f64::from);
            for mut c in m.column_iter_mut() {
                let norm = c.norm().max(1e-12);
                c /= norm;
            }
            m
        };
        let (a, b) = (unit(&dense), unit(&pruned));
        // Every pair's similarity, each row fully sorted.
        let full = |m: &DMatrix<f64>, i: usize| {
            let s = |j: usize| m.column(j).dot(&m.column(i));
            let mut o: Vec<usize> = (0..n).filter(|&j| j != i).collect();
            o.sort_by(|&x, &y| s(y).total_cmp(&s(x)).then(x.cmp(&y)));
            o.truncate(10);
            o
        };
        let shared: usize =
            (0..n).map(|i| full(&b, i).iter().filter(|j| full(&a, i).contains(j)).count()).sum();
        assert_eq!(got.neighbour_overlap, Some(shared as f64 / (n * 10) as f64));
    }

    #[test]
    fn neighbour_overlap_counts_shared_neighbours() {
        // Points on a line: everyone's nearest neighbours by cosine in 2-D at distinct angles.
        let angles: Vec<f32> = (0..12).map(|i| i as f32 * 0.1).collect();
        let dense =
            DMatrix::from_fn(2, 12, |r, c| if r == 0 { angles[c].cos() } else { angles[c].sin() });
        // Reversing the angle order keeps every neighbourhood.
        let mirrored =
            DMatrix::from_fn(2, 12, |r, c| if r == 0 { angles[c].cos() } else { -angles[c].sin() });
        assert_eq!(agreement(&dense, &mirrored).unwrap().neighbour_overlap, Some(1.0));
    }

    /// With few sentences a sentence's neighbours leave at least one other out: a model
    /// that moves every sentence keeps less than all of them, where comparing all the
    /// others would find them all shared.
    #[test]
    fn few_sentences_compare_all_but_one_other_and_two_none() {
        let on_circle = |angles: &[f32]| {
            DMatrix::from_fn(2, angles.len(), |r, c| {
                if r == 0 { angles[c].cos() } else { angles[c].sin() }
            })
        };
        let dense = on_circle(&[0.0, 0.1, 0.2, 0.3, 1.5]);
        // Sentence 4 moves beside sentence 0, so 0's nearest are 4, 1, 2 (not 1, 2, 3).
        let pruned = on_circle(&[0.0, 0.1, 0.2, 0.3, -0.05]);
        let a = agreement(&dense, &pruned).unwrap();
        assert_eq!((a.k, a.neighbour_sentences), (3, 5));
        let overlap = a.neighbour_overlap.unwrap();
        assert!(overlap < 1.0, "{overlap}");
        for n in [1, 2] {
            let a =
                agreement(&dense.columns(0, n).into_owned(), &pruned.columns(0, n).into_owned())
                    .unwrap();
            assert_eq!((a.k, a.neighbour_overlap), (0, None), "{n} sentences");
        }
        let eleven: Vec<f32> = (0..11).map(|i| i as f32 * 0.1).collect();
        assert_eq!(agreement(&on_circle(&eleven), &on_circle(&eleven)).unwrap().k, 9);
    }
}
