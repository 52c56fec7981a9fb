//! [`Job`]: what `prune` does to each chosen tensor, decided once from the arguments.

use anyhow::{Result, bail};
use shears_core::{LayerContext, LayerInput, Mask, PruningStrategy, Rounding, Sparsity};
use shears_io::Float;
use shears_strategies::{Criterion, Pattern, Pruner, Scope, UserScores};

use crate::cli::{MethodArg, PruneArgs};
use crate::sources::{Loaded, Tensor, View};

/// What a run does to each chosen tensor, decided once from the arguments, before any
/// file is opened.
pub(crate) struct Job {
    pub(crate) criterion: Criterion,
    /// Wanda or SparseGPT from calibration text: the model is run, and these masks and
    /// weights replace the per-tensor selection.
    pub(crate) calibrated: Option<shears_models::Method>,
    /// The pattern, with the structured reduction asked for.
    pub(crate) pattern: Pattern,
    pub(crate) scope: Scope,
    pub(crate) sparsity: Sparsity,
    pub(crate) min_density: f64,
    pub(crate) rounding: Rounding,
    pub(crate) view: View,
}

impl Job {
    pub(crate) fn new(args: &PruneArgs) -> Result<Job> {
        let (criterion, calibrated) = match args.method {
            MethodArg::Criterion(c) if c.needs() == Some(LayerInput::ActivationNorms) => {
                (Criterion::Magnitude, Some(shears_models::Method::Wanda))
            }
            MethodArg::Criterion(c) => (c.with_seed(args.seed.unwrap_or(0)), None),
            MethodArg::SparseGpt => (
                Criterion::Magnitude,
                Some(shears_models::Method::SparseGpt(shears_strategies::SparseGpt::new())),
            ),
        };
        if let Some(method) = calibrated {
            let m = method.name();
            if args.calib.is_none() {
                bail!("--method {m} needs --calib FILE: calibration text, one sentence per line");
            }
            if !args.grads.is_empty() || args.scores.is_some() {
                bail!("--method {m} scores from --calib text; --grads and --scores are not read");
            }
            if args.scope != Scope::Layer {
                bail!(
                    "--method {m} prunes each layer to its own target, from that layer's inputs: --scope global does not apply"
                );
            }
            if !args.transposed.is_empty() {
                bail!(
                    "--method {m} runs the encoder's linear layers as BERT stores them (outputs x inputs): --transposed does not apply"
                );
            }
            if !matches!(args.pattern, Pattern::Unstructured | Pattern::NM(_)) {
                // Wanda's unstructured pattern compares within each row, as per-row does.
                let per_row = if matches!(
                    (method, args.pattern),
                    (shears_models::Method::Wanda, Pattern::PerRow)
                ) {
                    ": its unstructured pattern already prunes each row to the target"
                } else {
                    ""
                };
                bail!(
                    "--method {m} prunes unstructured or N:M (e.g. 2:4), not {}{per_row}",
                    args.pattern
                );
            }
        } else if args.calib.is_some() {
            bail!("--calib is read by --method wanda and sparsegpt only");
        }
        match (criterion, args.grads.is_empty()) {
            (Criterion::Gradient, true) => {
                bail!("--method gradient needs --grads GRADS.safetensors")
            }
            (Criterion::Gradient, false) | (_, true) => {}
            (_, false) => bail!("--grads is only read by --method gradient"),
        }
        if args.seed.is_some() && !matches!(criterion, Criterion::Random { .. }) {
            bail!("--seed is read by --method random only");
        }
        if args.scores.is_some() && criterion != Criterion::Magnitude {
            bail!("--scores replaces --method: give one of them");
        }
        let sparsity = match (args.sparsity, &args.masks_in, args.pattern) {
            (Some(s), _, _) => s,
            // N:M fixes the sparsity.
            (None, _, Pattern::NM(p)) => Sparsity::new(1.0 - p.n() as f64 / p.m() as f64)?,
            (None, Some(_), _) => Sparsity::ZERO,
            (None, None, _) => bail!("--sparsity is required (a number in [0, 1])"),
        };
        if let Some(method) = calibrated
            && sparsity == Sparsity::ZERO
        {
            // SparseGPT still moves the weights the --masks-in masks keep to make up for
            // those they prune; nothing else calibrates for anything at no target.
            let reconstructs =
                matches!(method, shears_models::Method::SparseGpt(_)) && args.masks_in.is_some();
            if !reconstructs {
                let (m, masks) = (method.name(), args.masks_in.is_some());
                let (does, or) = if masks {
                    ("applies the --masks-in masks only", ", or leave out --method and --calib")
                } else {
                    ("prunes nothing", "")
                };
                bail!(
                    "--method {m} at sparsity 0 {does}, so its --calib text would not be read: give --sparsity above 0{or}"
                );
            }
        }
        if let (Some(r), true) = (args.rounding, sparsity == Sparsity::ZERO) {
            bail!(
                "--sparsity 0 prunes no count of weights, so --rounding {r} rounds nothing: --rounding does not apply"
            );
        }
        let reduction = args.reduction.unwrap_or_default();
        let pattern = match args.pattern {
            Pattern::Structured(s) => Pattern::Structured(s.with_reduction(reduction)),
            Pattern::Blocks { shape, .. } => Pattern::Blocks { shape, reduction },
            other if args.reduction.is_some() => bail!(
                "--reduction scores rows, columns, filters, channels and blocks; --pattern {other} scores single weights"
            ),
            other => other,
        };
        if let (Pattern::NM(p), Some(_)) = (pattern, args.rounding) {
            bail!(
                "--pattern {p} prunes {} of every {} weights, no count to round: --rounding does not apply",
                p.m() - p.n(),
                p.m()
            );
        }
        if args.scope == Scope::Global && pattern != Pattern::Unstructured {
            bail!("--scope global ranks single weights: use --pattern unstructured");
        }
        pattern.check_sparsity(sparsity)?;
        if let Pattern::NM(p) = pattern {
            let kept = p.n() as f64 / p.m() as f64;
            if args.min_density > kept + 1e-9 {
                bail!(
                    "--pattern {p} keeps {kept:.4} of each tensor, less than --min-density {}",
                    args.min_density
                );
            }
        }
        // A floor in layer scope rounds every count toward zero: rounded to nearest or up,
        // a target at or under the floor can still prune one weight, row or block past
        // it (0.7 of 1024 weights to nearest keeps 307, under 0.3).
        let floored = args.min_density > 0.0
            && args.scope == Scope::Layer
            && !matches!(pattern, Pattern::NM(_));
        let rounding = match (args.rounding, floored) {
            (Some(r), true) if r != Rounding::Truncate => bail!(
                "--min-density {} rounds each tensor's count toward zero, so that none keeps less: --rounding {r} does not apply",
                args.min_density
            ),
            (_, true) => Rounding::Truncate,
            (r, false) => r.unwrap_or_default(),
        };
        let elementwise = matches!(criterion, Criterion::Magnitude | Criterion::Gradient);
        let view = if pattern == Pattern::Unstructured && elementwise && calibrated.is_none() {
            View::Flat
        } else {
            View::Matrix
        };
        Ok(Job {
            criterion,
            calibrated,
            pattern,
            scope: args.scope,
            sparsity,
            min_density: args.min_density,
            rounding,
            view,
        })
    }

    /// A tensor's own target in layer scope: the sparsity, capped by the minimum
    /// density; an N:M pattern's own (a floor above it was refused).
    pub(crate) fn layer_target(&self) -> Sparsity {
        if matches!(self.pattern, Pattern::NM(_)) {
            return self.sparsity;
        }
        Sparsity::new(self.sparsity.get().min(1.0 - self.min_density)).unwrap_or(self.sparsity)
    }

    /// The mask of `t` in layer scope.
    pub(crate) fn layer_mask<T: Float>(&self, t: &Tensor, loaded: &Loaded<T>) -> Result<Mask> {
        let ctx = LayerContext::new(t.name);
        let ctx = if self.view == View::Matrix { ctx.with_shape(t.shape) } else { ctx };
        let ctx = match &loaded.kept {
            Some(kept) => ctx.with_mask(kept),
            None => ctx,
        };
        let target = self.layer_target();
        Ok(match &loaded.scores {
            Some(scores) => {
                let supplied = UserScores::new().with_layer(t.name, scores.clone());
                let pruner =
                    Pruner::new(supplied).with_pattern(self.pattern).with_rounding(self.rounding);
                pruner.mask(&loaded.weights, &ctx, target)?
            }
            None => {
                let pruner = Pruner::new(self.criterion)
                    .with_pattern(self.pattern)
                    .with_rounding(self.rounding);
                pruner.mask(&loaded.weights, &ctx, target)?
            }
        })
    }
}
