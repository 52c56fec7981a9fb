//! Pruning a transformer's linear layers with the methods that keep it working: Wanda
//! and SparseGPT from calibration text, layer by layer, as the papers do (and magnitude,
//! which needs no calibration, for comparison).

use nalgebra::{DMatrix, DVector};
use rayon::prelude::*;
use shears_core::{LayerContext, Mask, Masks, PruningStrategy, Rounding, Selector, Sparsity};
use shears_strategies::{InputStats, InverseHessian, Magnitude, Pattern, Pruner, SparseGpt, Wanda};

use crate::bert::{BertModel, EncoderLayer, Site, TOKENS_PER_PASS};
use crate::error::{Error, Result};
use crate::tokenize::Batch;

/// How the linear layers are pruned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// `|w|`, per layer; no calibration.
    Magnitude,
    /// Wanda: `|w| * ||x||`, compared within each output row (N:M within each group).
    Wanda,
    /// SparseGPT: masks chosen by `w² / [H⁻¹]ᵢᵢ²` and kept weights updated to
    /// reconstruct each layer's output.
    SparseGpt(SparseGpt),
}

impl Method {
    /// Whether the method needs calibration inputs.
    pub fn needs_calibration(&self) -> bool {
        !matches!(self, Method::Magnitude)
    }

    /// The method's name as the command line spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Magnitude => "magnitude",
            Method::Wanda => "wanda",
            Method::SparseGpt(_) => "sparsegpt",
        }
    }
}

/// What to prune and how far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PruneSpec {
    /// The method.
    pub method: Method,
    /// Unstructured or N:M.
    pub pattern: Pattern,
    /// The fraction of each layer's weights to prune (N:M fixes it).
    pub sparsity: Sparsity,
    /// How `sparsity * n` becomes a count.
    pub rounding: Rounding,
}

/// A step of the work, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Encoder layer `layer` (from 0) of `layers` is being calibrated and pruned.
    Layer {
        /// The layer.
        layer: usize,
        /// How many there are.
        layers: usize,
    },
}

/// One pruned linear layer.
#[derive(Debug, Clone, PartialEq)]
pub struct PrunedLinear {
    /// The weight's tensor name.
    pub name: String,
    /// Which weights are kept.
    pub mask: Mask,
}

/// Prunes the linear layers of `model` whose weight names `select` accepts, with
/// `spec`; `calibration` is the tokenized calibration text (unused by magnitude).
/// `kept` may hold earlier masks by weight name: what they prune stays pruned and counts
/// towards the target. Returns each pruned layer's mask, in model order.
///
/// Calibration runs as in the papers: the calibration tokens pass through the encoder
/// one layer at a time; each layer's linear inputs are observed with the layers before
/// it already pruned, its selected linears are pruned, and its (pruned) output is the
/// next layer's input. One layer's statistics are held at a time.
///
/// # Errors
/// [`Error::Argument`] for a pattern other than unstructured or N:M, no calibration
/// token for a method that needs them, or SparseGPT on a layer of more than
/// [`MAX_GRAM_INPUTS`] inputs; the errors of the methods and of the forward pass.
pub fn prune_model(
    model: &mut BertModel,
    calibration: &Batch,
    spec: &PruneSpec,
    select: &dyn Fn(&str) -> bool,
    kept: Option<&Masks>,
    progress: &mut dyn FnMut(Step),
) -> Result<Vec<PrunedLinear>> {
    if !matches!(spec.pattern, Pattern::Unstructured | Pattern::NM(_)) {
        return Err(Error::Argument(format!(
            "{} prunes unstructured or N:M, not {}",
            spec.method.name(),
            spec.pattern
        )));
    }
    spec.pattern.check_sparsity(spec.sparsity).map_err(shears_strategies::Error::from)?;
    calibration.check()?;
    if spec.method.needs_calibration() && calibration.tokens() == 0 {
        return Err(Error::Argument(format!("{} needs calibration text", spec.method.name())));
    }
    // Every chosen linear fits the pattern (N:M groups dividing its inputs) before any
    // is pruned: a last group padded with pruned weights would miss the sparsity asked.
    for layer in model.layers() {
        for (_, linear) in layer.linears().into_iter().filter(|(_, l)| select(l.name())) {
            let (rows, cols) = linear.shape();
            let shape = shears_core::WeightShape::dense(rows, cols)?;
            spec.pattern.check_fits(linear.name(), &shape, spec.sparsity)?;
        }
    }
    let layers = model.layers().len();
    let mut pruned = Vec::new();
    let mut x =
        if spec.method.needs_calibration() { Some(model.embed_tokens(calibration)?) } else { None };
    for l in 0..layers {
        progress(Step::Layer { layer: l, layers });
        let chosen: Vec<usize> =
            (0..6).filter(|&k| select(model.layers()[l].linears()[k].1.name())).collect();
        let mut stats = match &x {
            Some(x) if !chosen.is_empty() => {
                Some(observe(model, l, x, &calibration.lengths, &chosen, spec)?)
            }
            _ => None,
        };
        if let (Method::SparseGpt(gpt), Some(stats)) = (spec.method, &mut stats) {
            // One factor per site, shared by the linears that read it (query, key and
            // value), the sites' factors computed side by side.
            let factored: Vec<Result<()>> = stats
                .par_iter_mut()
                .map(|c| {
                    c.hessian = Some(gpt.inverse_hessian(&c.reader, &c.stats)?);
                    Ok(())
                })
                .collect();
            factored.into_iter().collect::<Result<()>>()?;
        }
        // The chosen linears are pruned side by side: each reads only its own weights
        // and its site's statistics.
        let linears = model.layers()[l].linears();
        let jobs: Vec<(usize, Site, String, DMatrix<f32>)> = chosen
            .iter()
            .map(|&k| {
                let (site, linear) = &linears[k];
                (k, *site, linear.name().to_owned(), linear.dense_weights())
            })
            .collect();
        let results: Vec<(DMatrix<f32>, Mask)> = jobs
            .par_iter()
            .map(|(_, site, name, weights)| {
                let prior = kept.and_then(|m| m.get(name));
                if let Some(p) = prior
                    && p.shape() != weights.shape()
                {
                    return Err(Error::Argument(format!(
                        "the mask of `{name}` is {:?}, the weight is {:?}",
                        p.shape(),
                        weights.shape()
                    )));
                }
                let site_stats = stats.as_ref().and_then(|s| s.iter().find(|c| c.site == *site));
                prune_linear(name, weights, site_stats, spec, prior)
            })
            .collect::<Vec<_>>()
            .into_iter()
            // The first error in model order, whichever thread met it first.
            .collect::<Result<_>>()?;
        drop(stats);
        for ((k, _, name, _), (new_weights, mask)) in jobs.into_iter().zip(results) {
            model.layers_mut()[l].linears_mut()[k].1.set_dense(new_weights)?;
            pruned.push(PrunedLinear { name, mask });
        }
        // The next layer's inputs come from this one as pruned; the last one's outputs
        // feed nothing.
        if let Some(input) = x.take()
            && l + 1 < layers
        {
            x = Some(run_layer(model, l, &input, &calibration.lengths)?);
        }
    }
    Ok(pruned)
}

/// The most inputs of a linear layer SparseGPT prunes: its Hessian of them, in f64,
/// then takes 8 GiB (and its factor as much again), as the widest feed-forward layers
/// of today's large language models need.
pub const MAX_GRAM_INPUTS: usize = 1 << 15;

/// Checks that SparseGPT can calibrate layer `tensor` of `inputs` inputs: its Hessian and
/// factors grow with their square, which a config can set far out of proportion to the
/// weights' bytes.
///
/// # Errors
/// [`Error::Argument`] naming the layer for more than [`MAX_GRAM_INPUTS`].
pub fn check_gram_inputs(tensor: &str, inputs: usize) -> Result<()> {
    if inputs > MAX_GRAM_INPUTS {
        return Err(Error::Argument(format!(
            "`{tensor}` has {inputs} inputs: SparseGPT's Hessian of them would take {} GiB (shears factors at most {MAX_GRAM_INPUTS} inputs)",
            // In u128: the square of a usize does not wrap there.
            ((inputs as u128).pow(2) * 8) >> 30
        )));
    }
    Ok(())
}

/// What calibration learned about one site's inputs, and (for SparseGPT) the factored
/// inverse Hessian, computed once for the linears that share the site.
struct Calibrated {
    site: Site,
    /// The first chosen linear that reads the site, which errors name.
    reader: String,
    stats: InputStats,
    hessian: Option<InverseHessian>,
}

/// The statistics of the inputs of layer `l`'s chosen linears, over all of `x`.
fn observe(
    model: &BertModel,
    l: usize,
    x: &DMatrix<f32>,
    lengths: &[usize],
    chosen: &[usize],
    spec: &PruneSpec,
) -> Result<Vec<Calibrated>> {
    let layer = &model.layers()[l];
    let gram = matches!(spec.method, Method::SparseGpt(_));
    let mut stats: Vec<Calibrated> = Vec::new();
    for &k in chosen {
        let (site, linear) = layer.linears()[k];
        if !stats.iter().any(|c| c.site == site) {
            let inputs = linear.shape().1;
            if gram {
                check_gram_inputs(linear.name(), inputs)?;
            }
            let s = InputStats::new(inputs, gram)?;
            let reader = linear.name().to_owned();
            stats.push(Calibrated { site, reader, stats: s, hessian: None });
        }
    }
    let batch = Batch { ids: Vec::new(), type_ids: Vec::new(), lengths: lengths.to_vec() };
    let mut start = 0;
    // On rayon's threads throughout, as `BertModel::forward`.
    rayon::scope(|_| {
        for chunk in batch.chunks(TOKENS_PER_PASS) {
            observe_chunk(model, layer, x, start, &lengths[chunk.clone()], &mut stats)?;
            start += lengths[chunk].iter().sum::<usize>();
        }
        Ok::<_, Error>(())
    })?;
    Ok(stats)
}

/// Adds to `stats` the inputs of `layer`'s linears for the sentences of `lengths`, whose
/// tokens are the columns of `x` from `start` on.
fn observe_chunk(
    model: &BertModel,
    layer: &EncoderLayer,
    x: &DMatrix<f32>,
    start: usize,
    lengths: &[usize],
    stats: &mut [Calibrated],
) -> Result<()> {
    let tokens: usize = lengths.iter().sum();
    let input = x.columns(start, tokens).into_owned();
    model.observe_layer(layer, &input, lengths, &mut |site, seen| {
            if let Some(c) = stats.iter_mut().find(|c| c.site == site) {
                // `add` refuses non-finite inputs; the error names the layer that reads them.
                c.stats.add(seen).map_err(|e| match e {
                    shears_strategies::Error::Core(shears_core::Error::NonFinite { index, .. })
                        if index < seen.len() =>
                    {
                        Error::Argument(format!(
                            "the calibration inputs of `{}` reach {} (input feature {}): a weight or output before this layer overflows",
                            c.reader,
                            seen[index],
                            index % seen.nrows()
                        ))
                    }
                    other => other.into(),
                })?;
            }
            Ok(())
        })
}

/// Layer `l`'s output for all of `x`, a pass at a time.
fn run_layer(
    model: &BertModel,
    l: usize,
    x: &DMatrix<f32>,
    lengths: &[usize],
) -> Result<DMatrix<f32>> {
    let layer = &model.layers()[l];
    let batch = Batch { ids: Vec::new(), type_ids: Vec::new(), lengths: lengths.to_vec() };
    let mut out = DMatrix::<f32>::zeros(x.nrows(), x.ncols());
    let mut start = 0;
    // On rayon's threads throughout, as `BertModel::forward`.
    rayon::scope(|_| {
        for chunk in batch.chunks(TOKENS_PER_PASS) {
            let tokens: usize = lengths[chunk.clone()].iter().sum();
            let input = x.columns(start, tokens).into_owned();
            let output = model.run_layer(layer, &input, &lengths[chunk], &mut |_, _| Ok(()))?;
            out.columns_mut(start, tokens).copy_from(&output);
            start += tokens;
        }
        Ok::<_, Error>(())
    })?;
    Ok(out)
}

/// One linear layer pruned by `spec`: its new weights and mask.
fn prune_linear(
    name: &str,
    weights: &DMatrix<f32>,
    calibrated: Option<&Calibrated>,
    spec: &PruneSpec,
    kept: Option<&Mask>,
) -> Result<(DMatrix<f32>, Mask)> {
    let ctx = LayerContext::new(name);
    let ctx = match kept {
        Some(m) => ctx.with_mask(m),
        None => ctx,
    };
    let missing = || Error::Argument(format!("no calibration statistics for `{name}`"));
    let mask = match spec.method {
        Method::SparseGpt(gpt) => {
            let hessian = calibrated.and_then(|c| c.hessian.as_ref()).ok_or_else(missing)?;
            let (pattern, sparsity, rounding) = (spec.pattern, spec.sparsity, spec.rounding);
            let r = gpt.prune_with(name, weights, hessian, pattern, sparsity, rounding, kept)?;
            return Ok((r.weights, r.mask));
        }
        Method::Magnitude => Pruner::new(Magnitude)
            .with_pattern(spec.pattern)
            .with_rounding(spec.rounding)
            .mask(weights, &ctx, spec.sparsity)?,
        Method::Wanda => {
            let stats = &calibrated.ok_or_else(missing)?.stats;
            let norms: DVector<f32> = stats.activation_norms().map(|n| n as f32);
            wanda_mask(weights, &ctx.with_activation_norms(&norms), spec)?
        }
    };
    Ok((mask.apply(weights)?, mask))
}

/// Wanda's mask of `weights`, the activation norms in `ctx`: unstructured compares
/// within each output row, each row's count rounded by `spec.rounding`; N:M within each
/// group.
fn wanda_mask(
    weights: &DMatrix<f32>,
    ctx: &LayerContext<'_, f32>,
    spec: &PruneSpec,
) -> Result<Mask> {
    Ok(match spec.pattern {
        Pattern::Unstructured => {
            let scores = Wanda.scores(weights, ctx)?;
            Selector::new().with_rounding(spec.rounding).select_per_row(
                ctx.name(),
                &scores,
                spec.sparsity,
                ctx.mask(),
            )?
        }
        pattern => Pruner::new(Wanda).with_pattern(pattern).with_rounding(spec.rounding).mask(
            weights,
            ctx,
            spec.sparsity,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use nalgebra::{DMatrix, DVector};
    use shears_core::{LayerContext, PruningStrategy, Rounding, Sparsity};
    use shears_strategies::{Pattern, Wanda};

    use super::{Method, PruneSpec, wanda_mask};

    #[test]
    fn wanda_rounds_each_rows_count_as_asked() {
        // 5 weights a row at 50%: 2.5 pruned, 2 half-even, 2 truncated, 3 ceil.
        let weights = DMatrix::from_fn(3, 5, |i, j| (1 + i * 5 + j) as f32);
        let norms = DVector::from_element(5, 1.0f32);
        let ctx = LayerContext::new("fc").with_activation_norms(&norms);
        let sparsity = Sparsity::new(0.5).unwrap();
        for (rounding, pruned) in
            [(Rounding::HalfEven, 2), (Rounding::Truncate, 2), (Rounding::Ceil, 3)]
        {
            let spec = PruneSpec {
                method: Method::Wanda,
                pattern: Pattern::Unstructured,
                sparsity,
                rounding,
            };
            let mask = wanda_mask(&weights, &ctx, &spec).unwrap();
            let m = mask.to_matrix();
            for row in m.row_iter() {
                assert_eq!(row.iter().filter(|k| !**k).count(), pruned, "{rounding:?}");
            }
            // The default rounding is Wanda's own, row by row.
            if rounding == Rounding::HalfEven {
                assert_eq!(mask, Wanda.mask(&weights, &ctx, sparsity).unwrap());
            }
        }
    }
}
