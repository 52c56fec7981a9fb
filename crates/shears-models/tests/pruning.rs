//! Pruning the tiny BERT: exact counts, monotone masks, N:M conformance, Wanda against a
//! full sort, and calibration that sees the layers before already pruned.

use nalgebra::{DMatrix, DVector};
use shears_core::{Mask, Masks, NmPattern, Rounding, Sparsity};
use shears_models::{
    BertModel, Linear, Method, PruneSpec, SentenceTransformer, Site, Step, choose_formats,
    prune_model,
};
use shears_strategies::{Pattern, SparseGpt, satisfies_nm};

use crate::fixture::{expected, folder};

fn spec(method: Method, pattern: Pattern, sparsity: f64) -> PruneSpec {
    PruneSpec {
        method,
        pattern,
        sparsity: Sparsity::new(sparsity).unwrap(),
        rounding: Rounding::HalfEven,
    }
}

fn calibration(model: &SentenceTransformer) -> shears_models::Batch {
    model.tokenizer.encode(&expected().sentences).unwrap()
}

const METHODS: [Method; 3] =
    [Method::Magnitude, Method::Wanda, Method::SparseGpt(SparseGpt::DEFAULT)];

#[test]
fn every_method_prunes_every_linear_to_the_exact_count() {
    for method in METHODS {
        let mut m = SentenceTransformer::load(&folder(), None).unwrap();
        let calib = calibration(&m);
        let mut steps = Vec::new();
        let pruned = prune_model(
            &mut m.model,
            &calib,
            &spec(method, Pattern::Unstructured, 0.5),
            &|_| true,
            None,
            &mut |s| steps.push(s),
        )
        .unwrap();
        assert_eq!(pruned.len(), 12, "{method:?}");
        assert_eq!(
            steps,
            [Step::Layer { layer: 0, layers: 2 }, Step::Layer { layer: 1, layers: 2 }]
        );
        for (p, linear) in pruned.iter().zip(m.model.linears()) {
            assert_eq!(p.name, linear.name());
            let n = p.mask.len();
            // Wanda prunes per row; the others per layer: both exactly half here.
            assert_eq!(p.mask.count_pruned(), n / 2, "{method:?} {}", p.name);
            let w = linear.dense_weights();
            for (r, c) in (0..w.nrows()).flat_map(|r| (0..w.ncols()).map(move |c| (r, c))) {
                if p.mask.get(r, c) == Some(false) {
                    assert_eq!(w[(r, c)], 0.0);
                }
            }
        }
        // The pruned model still runs.
        assert!(m.embed(&expected().sentences).unwrap().iter().all(|v| v.is_finite()));
    }
}

#[test]
fn n_m_masks_conform_and_earlier_masks_stay_pruned() {
    let two_four = Pattern::NM(NmPattern::TWO_FOUR);
    for method in METHODS {
        let mut m = SentenceTransformer::load(&folder(), None).unwrap();
        let calib = calibration(&m);
        let pruned = prune_model(
            &mut m.model,
            &calib,
            &spec(method, two_four, 0.5),
            &|_| true,
            None,
            &mut |_| {},
        )
        .unwrap();
        for p in &pruned {
            assert!(satisfies_nm(&p.mask, NmPattern::TWO_FOUR), "{method:?} {}", p.name);
            assert_eq!(p.mask.count_kept(), p.mask.len() / 2);
        }
        // Groups of 7 do not divide 32 inputs: refused before anything is pruned.
        let before = m.model.clone();
        let three_seven = NmPattern::new(3, 7).unwrap();
        let s = spec(method, Pattern::NM(three_seven), 4.0 / 7.0);
        let err = prune_model(&mut m.model, &calib, &s, &|_| true, None, &mut |_| {});
        let err = err.unwrap_err().to_string();
        assert!(err.contains("encoder.layer.0.attention.self.query.weight"), "{err}");
        assert!(
            m.model
                .linears()
                .zip(before.linears())
                .all(|(a, b)| a.dense_weights() == b.dense_weights())
        );
        // From earlier 30% masks to 60%: what they pruned stays pruned.
        let mut m = SentenceTransformer::load(&folder(), None).unwrap();
        let earlier: Masks = m
            .model
            .linears()
            .map(|l| {
                let (r, c) = l.shape();
                (
                    l.name().to_owned(),
                    Mask::from_fn(r, c, |i, j| (i * 7 + j * 3) % 10 >= 3).unwrap(),
                )
            })
            .collect();
        let pruned = prune_model(
            &mut m.model,
            &calib,
            &spec(method, Pattern::Unstructured, 0.6),
            &|_| true,
            Some(&earlier),
            &mut |_| {},
        )
        .unwrap();
        for p in &pruned {
            assert!(
                p.mask.is_subset_of(&earlier[&p.name]).unwrap(),
                "{method:?} {}: monotone",
                p.name
            );
            let target = Sparsity::new(0.6).unwrap().count_of(p.mask.len(), Rounding::HalfEven);
            let tolerance = if matches!(method, Method::Wanda) { p.mask.nrows() } else { 0 };
            assert!(p.mask.count_pruned().abs_diff(target) <= tolerance, "{method:?} {}", p.name);
        }
    }
}

/// Layer 0's inputs are the embeddings, whatever is pruned: its Wanda masks are those of
/// a full sort of `|w| * ||x||` in each row (ties to the lower column).
#[test]
fn wanda_equals_a_full_sort_per_row() {
    let mut m = SentenceTransformer::load(&folder(), None).unwrap();
    let calib = calibration(&m);
    let x = m.model.embed_tokens(&calib).unwrap();
    let norms: Vec<f64> = (0..x.nrows())
        .map(|j| x.row(j).iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt())
        .collect();
    let query = m.model.layers()[0].query.dense_weights();
    let pruned = prune_model(
        &mut m.model,
        &calib,
        &spec(Method::Wanda, Pattern::Unstructured, 0.5),
        &|n| n.contains("layer.0.attention.self.query"),
        None,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(pruned.len(), 1);
    let cols = query.ncols();
    for r in 0..query.nrows() {
        let mut order: Vec<(f64, usize)> =
            (0..cols).map(|c| (f64::from(query[(r, c)].abs()) * norms[c], c)).collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for (rank, &(_, c)) in order.iter().enumerate() {
            assert_eq!(pruned[0].mask.get(r, c), Some(rank >= cols / 2), "row {r} column {c}");
        }
    }
}

/// Layer 1 is calibrated on the output of layer 0 already pruned: pruning both at once
/// equals pruning layer 0, then pruning layer 1 of the result.
#[test]
fn calibration_sees_the_layers_before_pruned() {
    for method in [Method::Wanda, Method::SparseGpt(SparseGpt::DEFAULT)] {
        let s = spec(method, Pattern::Unstructured, 0.5);
        let base = SentenceTransformer::load(&folder(), None).unwrap();
        let calib = calibration(&base);
        let mut together = base.model.clone();
        let all = prune_model(&mut together, &calib, &s, &|_| true, None, &mut |_| {}).unwrap();
        let mut stepwise = base.model.clone();
        prune_model(&mut stepwise, &calib, &s, &|n| n.contains("layer.0."), None, &mut |_| {})
            .unwrap();
        let second =
            prune_model(&mut stepwise, &calib, &s, &|n| n.contains("layer.1."), None, &mut |_| {})
                .unwrap();
        assert_eq!(&all[6..], &second[..], "{method:?}");
        // And not on the dense layer 0: a model whose layer 0 is dense calibrates
        // layer 1 differently.
        let mut dense_first = base.model.clone();
        let other = prune_model(
            &mut dense_first,
            &calib,
            &s,
            &|n| n.contains("layer.1."),
            None,
            &mut |_| {},
        )
        .unwrap();
        assert_ne!(weights_of(&stepwise), weights_of(&dense_first), "{method:?}");
        let _ = other;
    }
}

fn weights_of(model: &BertModel) -> Vec<DMatrix<f32>> {
    model.layers()[1].linears().iter().map(|(_, l)| l.dense_weights()).collect()
}

/// The observed sites are each linear's input: the query, key and value share one.
#[test]
fn observers_see_each_linear_input() {
    let m = SentenceTransformer::load(&folder(), None).unwrap();
    let calib = calibration(&m);
    let x = m.model.embed_tokens(&calib).unwrap();
    let layer = &m.model.layers()[0];
    let mut seen = Vec::new();
    let out = m
        .model
        .run_layer(layer, &x, &calib.lengths, &mut |site, input| {
            seen.push((site, input.shape()));
            Ok(())
        })
        .unwrap();
    let c = m.model.config();
    let t = calib.tokens();
    assert_eq!(
        seen,
        [
            (Site::Attention, (c.hidden_size, t)),
            (Site::AttentionOutput, (c.hidden_size, t)),
            (Site::Intermediate, (c.hidden_size, t)),
            (Site::Output, (c.intermediate_size, t)),
        ]
    );
    assert_eq!(out.shape(), (c.hidden_size, t));
    let _ = DVector::<f32>::zeros(0);
}

#[test]
fn bad_specs_are_errors() {
    let mut m = SentenceTransformer::load(&folder(), None).unwrap();
    let calib = calibration(&m);
    let rows = "rows".parse::<Pattern>().unwrap();
    assert!(
        prune_model(
            &mut m.model,
            &calib,
            &spec(Method::Wanda, rows, 0.5),
            &|_| true,
            None,
            &mut |_| {}
        )
        .is_err()
    );
    let empty = shears_models::Batch::default();
    let err = prune_model(
        &mut m.model,
        &empty,
        &spec(Method::Wanda, Pattern::Unstructured, 0.5),
        &|_| true,
        None,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("calibration"), "{err}");
    let two_four = Pattern::NM(NmPattern::TWO_FOUR);
    assert!(
        prune_model(
            &mut m.model,
            &calib,
            &spec(Method::Wanda, two_four, 0.7),
            &|_| true,
            None,
            &mut |_| {}
        )
        .is_err()
    );
}

/// A huge weight makes the next linear's calibration inputs overflow: Wanda's error
/// names that linear, and SparseGPT's (whose Gram matrix overflows first when the
/// inputs are merely huge) names a layer and the cause.
#[test]
fn overflowing_calibration_inputs_name_the_layer() {
    for (value, method) in [
        (f32::MAX, Method::Wanda),
        (f32::MAX, Method::SparseGpt(SparseGpt::DEFAULT)),
        (1e25, Method::SparseGpt(SparseGpt::DEFAULT)),
    ] {
        let mut m = SentenceTransformer::load(&folder(), None).unwrap();
        let calib = calibration(&m);
        let (_, ff1) = &mut m.model.layers_mut()[0].linears_mut()[4];
        let mut w = ff1.dense_weights();
        w.fill(value);
        ff1.set_dense(w).unwrap();
        let s = spec(method, Pattern::Unstructured, 0.5);
        let err = prune_model(&mut m.model, &calib, &s, &|_| true, None, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("encoder.layer.0.output.dense.weight"), "{value}: {err}");
        assert!(err.contains("overflow"), "{value}: {err}");
        if matches!(method, Method::Wanda) {
            assert!(err.contains("(input feature "), "{value}: {err}");
        }
    }
}

/// A 2:4 model's layers are timed in 2:4 at one token and at many (where `choose_format`
/// alone proposes dense), each keeps the format its timing favoured (the query, key and
/// value projections as one), and the model in those formats gives the dense model's
/// embeddings.
#[test]
fn two_four_layers_are_timed_in_n_m_at_any_token_count() {
    let mut m = SentenceTransformer::load(&folder(), None).unwrap();
    let calib = calibration(&m);
    let two_four = spec(Method::Magnitude, Pattern::NM(NmPattern::TWO_FOUR), 0.5);
    prune_model(&mut m.model, &calib, &two_four, &|_| true, None, &mut |_| {}).unwrap();
    let dense = m.embed(&expected().sentences).unwrap();
    for tokens in [1, 4096] {
        let mut sparse = m.clone();
        let choices = choose_formats(&mut sparse.model, tokens).unwrap();
        assert_eq!(choices.len(), sparse.model.linears().count());
        for c in &choices {
            assert_eq!(c.proposed, "n:m 2:4", "{} at {tokens} tokens", c.name);
            let sparse_seconds = c.proposed_seconds.unwrap();
            let kept = c.chosen == c.proposed;
            assert!(kept || c.chosen == "dense", "{}: {}", c.name, c.chosen);
            assert_eq!(kept, sparse_seconds < c.dense_seconds, "{} at {tokens} tokens", c.name);
        }
        // The query, key and value projections, which run as one product, are timed and
        // chosen as one.
        let times = |c: &shears_models::FormatChoice| {
            (c.chosen.clone(), c.dense_seconds, c.proposed_seconds)
        };
        for layer in choices.chunks(6) {
            assert!(layer[0].name.contains("query") && layer[2].name.contains("value"));
            assert_eq!(times(&layer[0]), times(&layer[1]), "{}", layer[0].name);
            assert_eq!(times(&layer[0]), times(&layer[2]), "{}", layer[0].name);
        }
        // So are the feed-forward layers, which pass their intermediate by rows when
        // both run in N:M: each names the other.
        for layer in choices.chunks(6) {
            let (up, down) = (&layer[4], &layer[5]);
            assert!(up.name.contains("intermediate") && down.name.contains("output.dense"));
            assert_eq!(times(up), times(down), "{}", up.name);
            assert_eq!(
                (&up.timed_with, &down.timed_with),
                (&vec![down.name.clone()], &vec![up.name.clone()])
            );
        }
        // Every encoder layer has the same shapes, and N:M products of one shape are one
        // kind: each is decided on the fastest runs of its kind, over all the layers.
        for layer in choices.chunks(6).skip(1) {
            for (first, c) in choices.iter().zip(layer) {
                assert_eq!(times(c), times(first), "{} at {tokens} tokens", c.name);
            }
        }
        for (c, linear) in choices.iter().zip(sparse.model.linears()) {
            assert_eq!(linear.format().to_string(), c.chosen, "{}", c.name);
        }
        let got = sparse.embed(&expected().sentences).unwrap();
        let worst = got.iter().zip(dense.iter()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-5, "{worst} at {tokens} tokens");
    }
}

/// SparseGPT's Hessian is inputs² f64s: a layer wider than `MAX_GRAM_INPUTS` is refused
/// naming it, before any statistics are allocated; the methods that need no Hessian
/// prune it.
#[test]
fn sparsegpt_refuses_a_layer_too_wide_for_its_hessian() {
    let mut m = SentenceTransformer::load(&folder(), None).unwrap();
    let calib = calibration(&m);
    let hidden = m.model.config().hidden_size;
    let wide = shears_models::MAX_GRAM_INPUTS + 1;
    let layer = &mut m.model.layers_mut()[0];
    let (intermediate, output) = (layer.intermediate.name(), layer.output.name());
    let (intermediate, output) = (intermediate.to_owned(), output.to_owned());
    let small =
        |r: usize, c: usize| DMatrix::from_fn(r, c, |i, j| ((i * 7 + j * 3) % 5) as f32 - 2.0);
    layer.intermediate =
        Linear::new(intermediate, small(wide, hidden), DVector::zeros(wide)).unwrap();
    layer.output =
        Linear::new(output.clone(), small(hidden, wide), DVector::zeros(hidden)).unwrap();
    let only = |n: &str| n == output;
    let gpt = spec(Method::SparseGpt(SparseGpt::DEFAULT), Pattern::Unstructured, 0.5);
    let err = prune_model(&mut m.model, &calib, &gpt, &only, None, &mut |_| {}).unwrap_err();
    let says =
        format!("`{output}` has {wide} inputs: SparseGPT's Hessian of them would take 8 GiB");
    assert!(err.to_string().contains(&says), "{err}");
    let wanda = spec(Method::Wanda, Pattern::Unstructured, 0.5);
    let pruned = prune_model(&mut m.model, &calib, &wanda, &only, None, &mut |_| {}).unwrap();
    assert_eq!(pruned.len(), 1);
    // Widths whose square passes u64 are sized without wrapping: 2^32 inputs are 2^37 GiB.
    let err = shears_models::check_gram_inputs("w", 1 << 32).unwrap_err().to_string();
    assert!(err.contains("would take 137438953472 GiB"), "{err}");
}
