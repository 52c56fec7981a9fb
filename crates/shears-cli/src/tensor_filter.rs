//! Which tensors a command works on: include/exclude regexes and dtype/rank rules.

use anyhow::{Context, Result, bail};
use regex::Regex;

use shears_io::{Checkpoint, is_float};

/// The tensors to prune: every 2-D or 4-D floating tensor whose name matches an
/// `--include` (all, if none is given) and no `--exclude`. 1-D tensors (biases, norms)
/// and other ranks are never pruned. Errors: a regex that does not compile or matches no
/// tensor, and a non-floating tensor that an `--include` names.
pub(crate) fn prunable_tensors(
    ckpt: &Checkpoint,
    include: &[String],
    exclude: &[String],
) -> Result<Vec<String>> {
    let compile = |patterns: &[String]| -> Result<Vec<Regex>> {
        patterns
            .iter()
            .map(|p| Regex::new(p).with_context(|| format!("invalid regex `{p}`")))
            .collect()
    };
    let (inc, exc) = (compile(include)?, compile(exclude)?);
    for (patterns, regexes) in [(include, &inc), (exclude, &exc)] {
        for (p, re) in patterns.iter().zip(regexes) {
            if !ckpt.names().any(|n| re.is_match(n)) {
                bail!("regex `{p}` matches no tensor in {}", ckpt.path().display());
            }
        }
    }
    let mut chosen = Vec::new();
    for (name, info) in ckpt.tensors() {
        let included = inc.is_empty() || inc.iter().any(|re| re.is_match(name));
        if !included || exc.iter().any(|re| re.is_match(name)) {
            continue;
        }
        if !matches!(info.shape.len(), 2 | 4) {
            continue;
        }
        if !is_float(info.dtype) {
            if inc.is_empty() {
                continue;
            }
            bail!(
                "tensor `{name}` has dtype {:?}: only f16, bf16, f32 and f64 tensors can be pruned",
                info.dtype
            );
        }
        chosen.push(name.clone());
    }
    if chosen.is_empty() {
        bail!("no 2-D or 4-D floating tensor in {} is selected for pruning", ckpt.path().display());
    }
    Ok(chosen)
}
