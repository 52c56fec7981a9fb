//! Which tensors a command works on: the role of each tensor by name (linear and
//! convolution weights by default), `--all`, and the `--include`/`--exclude` regexes.

use anyhow::{Result, anyhow, bail};
use regex::Regex;
use shears_io::{Dtype, Model, SCALE_SUFFIX, TensorInfo, TensorRef, is_float};
use shears_strategies::TensorRole;

/// The decision for one tensor of a model, borrowing its name and entry from the model.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Choice<'a> {
    /// The shard that holds it.
    pub(crate) shard: usize,
    pub(crate) name: &'a str,
    pub(crate) info: &'a TensorInfo,
    pub(crate) role: TensorRole,
    /// Stored `(in, out)`: patterns run along its transpose.
    pub(crate) transposed: bool,
    pub(crate) chosen: bool,
    pub(crate) why: Why,
}

/// Why a tensor is, or is not, chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// Its role decides: pruned by default, or never prunable.
    Role,
    Excluded,
    Included,
    NotIncluded,
    All,
    NotByDefault,
    /// Not a linear layer of the encoder, all a calibrated method prunes.
    NotLinear,
}

impl Choice<'_> {
    /// Why it is, or is not, chosen, in words.
    pub(crate) fn why(&self) -> String {
        let role = self.role;
        match self.why {
            Why::Role => role.describe().to_owned(),
            Why::Excluded => format!("{role}, excluded by --exclude"),
            Why::Included => format!("{role}, chosen by --include"),
            Why::NotIncluded => format!("{role}, not matched by --include"),
            Why::All => format!("{role}, chosen by --all"),
            Why::NotByDefault => {
                format!("{role}: not pruned by default (--all or --include prunes it)")
            }
            Why::NotLinear => {
                format!("{role}: {NOT_LINEAR_NOTE}")
            }
        }
    }

    /// [`why`](Choice::why) for a row of the summary table: the reasons every such row
    /// would repeat (how to prune what is left by default, what a calibrated method
    /// prunes) are left to one note under the table, [`Choice::table_note`].
    pub(crate) fn table_why(&self) -> String {
        let role = self.role;
        match self.why {
            Why::NotByDefault => format!("{role}, not by default"),
            Why::NotLinear => format!("{role}, not by this method"),
            _ => self.why(),
        }
    }

    /// The note under the summary table that [`table_why`](Choice::table_why) left out of
    /// this row, if any.
    pub(crate) fn table_note(&self) -> Option<&'static str> {
        match self.why {
            Why::NotByDefault => Some(
                "not by default: --all prunes them with the rest; --include prunes only what it matches",
            ),
            Why::NotLinear => Some(NOT_LINEAR_NOTE),
            _ => None,
        }
    }
}

/// Why a calibrated method leaves a tensor that is not a linear layer alone.
const NOT_LINEAR_NOTE: &str = "wanda and sparsegpt prune the encoder's linear layers only";

/// The command line's say in the choice.
pub(crate) struct Filters {
    include: Vec<(String, Regex)>,
    exclude: Vec<(String, Regex)>,
    transposed: Vec<(String, Regex)>,
    all: bool,
}

/// Why `regex` refused a pattern, on one line: its syntax errors are several lines
/// (the pattern again, a caret under the fault, then the reason), and the pattern is
/// quoted already.
fn regex_reason(e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(text) => {
            let reason = text.lines().rev().map(str::trim).find(|l| !l.is_empty());
            let reason = reason.unwrap_or(text);
            reason.strip_prefix("error: ").unwrap_or(reason).to_owned()
        }
        e => e.to_string(),
    }
}

impl Filters {
    /// Compiles the regexes.
    pub(crate) fn new(
        include: &[String],
        exclude: &[String],
        transposed: &[String],
        all: bool,
    ) -> Result<Filters> {
        let compile = |flag: &str, patterns: &[String]| -> Result<Vec<(String, Regex)>> {
            patterns
                .iter()
                .map(|p| {
                    if p.is_empty() {
                        bail!("{flag} is empty, which matches every tensor name: give a pattern");
                    }
                    let re = Regex::new(p).map_err(|e| {
                        anyhow!("{flag} `{p}` is not a valid regex: {}", regex_reason(&e))
                    })?;
                    Ok((p.clone(), re))
                })
                .collect()
        };
        Ok(Filters {
            include: compile("--include", include)?,
            exclude: compile("--exclude", exclude)?,
            transposed: compile("--transposed", transposed)?,
            all,
        })
    }

    /// Every tensor of `model` with its decision. Errors: a regex that matches no tensor,
    /// an `--include` that names a tensor that cannot be pruned, and a choice of nothing.
    pub(crate) fn choose<'a>(&self, model: &'a Model) -> Result<Vec<Choice<'a>>> {
        for (flag, patterns) in [
            ("--include", &self.include),
            ("--exclude", &self.exclude),
            ("--transposed", &self.transposed),
        ] {
            for (p, re) in patterns {
                if !model.tensors().any(|t| re.is_match(t.name)) {
                    bail!("{flag} `{p}` matches no tensor of {}", model.path().display());
                }
            }
        }
        let matches =
            |list: &[(String, Regex)], name: &str| list.iter().any(|(_, re)| re.is_match(name));
        let mut choices = Vec::new();
        for t in model.tensors() {
            let mut role = role_of(model, t);
            // --transposed says how a matrix is stored, not whether it is pruned: a
            // layer's weight (or a matrix the names do not place) becomes a linear layer
            // stored (in, out); an embedding, pooler or head keeps its role, and stays
            // unpruned unless --include or --all chooses it.
            let forced = matches(&self.transposed, t.name) && t.info.shape.len() == 2;
            if forced && matches!(role, TensorRole::Linear | TensorRole::OtherMatrix) {
                role = TensorRole::TransposedLinear;
            }
            let transposed = role == TensorRole::TransposedLinear || (forced && role.prunable());
            let included = matches(&self.include, t.name);
            let (chosen, why) = if !role.prunable() {
                // A regex that also matches a layer's bias is not a mistake; naming an
                // integer matrix is.
                if included && role == TensorRole::NotFloat {
                    bail!(
                        "--include names tensor `{}`, {} (dtype {:?}, shape {:?}): only 2-D and 4-D f16, bf16, f32 and f64 tensors, and int8 ones with scales, can be pruned",
                        t.name,
                        role,
                        t.info.dtype,
                        t.info.shape
                    );
                }
                (false, Why::Role)
            } else if matches(&self.exclude, t.name) {
                (false, Why::Excluded)
            } else if !self.include.is_empty() {
                if included { (true, Why::Included) } else { (false, Why::NotIncluded) }
            } else if role.pruned_by_default() {
                (true, Why::Role)
            } else if self.all {
                (true, Why::All)
            } else {
                (false, Why::NotByDefault)
            };
            choices.push(Choice {
                shard: t.shard,
                name: t.name,
                info: t.info,
                role,
                transposed,
                chosen,
                why,
            });
        }
        if !choices.iter().any(|c| c.chosen) {
            // Say which choice left nothing: the file, --exclude, --include, or the names.
            let path = model.path().display();
            if !choices.iter().any(|c| c.role.prunable()) {
                bail!(
                    "{path} has no tensor that can be pruned: only 2-D and 4-D f16, bf16, f32 and f64 tensors, and int8 ones with scales, can be"
                );
            }
            if choices.iter().any(|c| c.why == Why::Excluded) {
                bail!("--exclude leaves no tensor of {path} to prune");
            }
            if !self.include.is_empty() {
                bail!(
                    "--include matches no tensor of {path} that can be pruned (2-D or 4-D floating point), only others such as biases and norms"
                );
            }
            // Its prunable tensors are all of roles left alone by default: name them.
            let left: Vec<&Choice> =
                choices.iter().filter(|c| c.why == Why::NotByDefault).collect();
            let named: Vec<String> =
                left.iter().take(3).map(|c| format!("`{}` ({})", c.name, c.role)).collect();
            let more = match left.len().saturating_sub(named.len()) {
                0 => String::new(),
                n => format!(" and {n} more"),
            };
            bail!(
                "no tensor of {path} is chosen for pruning: it has no linear or convolution weight that is pruned by default, only {}{more}: --include REGEX or --all prunes them",
                named.join(", ")
            );
        }
        Ok(choices)
    }
}

/// The role of tensor `t` of `model`: by its name, dtype and shape, an int8 tensor with
/// scales counting as floating point (it reads as such) and its scales as scales.
pub(crate) fn role_of(model: &Model, t: TensorRef) -> TensorRole {
    let shard = &model.shards()[t.shard];
    let scales_of_int8 = t
        .name
        .strip_suffix(SCALE_SUFFIX)
        .is_some_and(|w| shard.info(w).is_some_and(|i| i.dtype == Dtype::I8));
    if scales_of_int8 {
        return TensorRole::QuantizationScale;
    }
    TensorRole::classify(t.name, is_float(t.info.dtype) || shard.decodes(t.name), &t.info.shape)
}
