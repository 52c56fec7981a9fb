//! Parsers for the command line's `--pattern` and `--sparsity` values.
//!
//! ```
//! use shears_cli::parse::{PatternArg, parse_pattern, parse_sparsity};
//!
//! assert!(matches!(parse_pattern("2:4")?, PatternArg::Nm(p) if p.n() == 2 && p.m() == 4));
//! assert_eq!(parse_sparsity("0.9")?.get(), 0.9);
//! assert!(parse_pattern("block:4x0").is_err());
//! # Ok::<(), anyhow::Error>(())
//! ```

use anyhow::{Result, bail};
use shears_core::{BlockShape, NmPattern, Sparsity};

/// `unstructured`, `rows`, `columns`, `N:M` or `block:RxC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternArg {
    /// Single weights.
    Unstructured,
    /// Whole rows (output neurons; conv filters for 4-D tensors).
    Rows,
    /// Whole columns (inputs).
    Columns,
    /// N of every M consecutive weights along a row kept.
    Nm(NmPattern),
    /// Whole `r x c` blocks.
    Block(BlockShape),
}

/// Parses a `--pattern` value.
///
/// # Errors
/// Anything but the five forms, with a message that names the value and the forms.
pub fn parse_pattern(s: &str) -> Result<PatternArg> {
    Ok(match s {
        "unstructured" => PatternArg::Unstructured,
        "rows" => PatternArg::Rows,
        "columns" => PatternArg::Columns,
        _ if s.starts_with("block:") => {
            let Some((r, c)) = s["block:".len()..].split_once('x') else {
                bail!("block pattern must look like block:4x4, got `{s}`")
            };
            let (Ok(r), Ok(c)) = (r.parse(), c.parse()) else {
                bail!("block pattern must look like block:4x4, got `{s}`")
            };
            PatternArg::Block(BlockShape::new(r, c)?)
        }
        _ if s.contains(':') => PatternArg::Nm(s.parse::<NmPattern>().map_err(|_| {
            anyhow::anyhow!(
                "N:M pattern must be two whole numbers with 0 < M and N <= M, like 2:4; got `{s}`"
            )
        })?),
        _ => bail!(
            "unknown pattern `{s}`: use unstructured, rows, columns, N:M (e.g. 2:4) or block:RxC"
        ),
    })
}

/// Parses a `--sparsity` value: a number in [0, 1] (surrounding spaces allowed).
///
/// # Errors
/// Not a number, NaN, or out of range; the message names the value.
pub fn parse_sparsity(s: &str) -> Result<Sparsity> {
    let value: f64 = s
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("sparsity must be a number in [0, 1], got `{s}`"))?;
    Ok(Sparsity::new(value)?)
}
