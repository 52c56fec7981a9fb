//! Plain-text tables for the commands' human output.

/// `part / whole`, 0 for an empty whole.
pub(crate) fn fraction(part: usize, whole: usize) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
}

/// A size in bytes as people read it: bytes below a kilobyte, else kB, MB or GB
/// (powers of 1000) to one decimal.
pub(crate) fn byte_size(bytes: u64) -> String {
    let bytes = bytes as f64;
    match ["kB", "MB", "GB"].iter().zip([1e3, 1e6, 1e9]).rev().find(|(_, unit)| bytes >= *unit) {
        Some((name, unit)) => format!("{:.1} {name}", bytes / unit),
        None => format!("{bytes} bytes"),
    }
}

/// Compares tensor names as people read them: runs of digits by value, so `layers.2`
/// comes before `layers.10`.
pub(crate) fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let digits = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
                let (da, db) = (digits(a), digits(b));
                fn trim(s: &[u8]) -> &[u8] {
                    let zeros = s.iter().take_while(|&&c| c == b'0').count();
                    &s[zeros..]
                }
                let (na, nb) = (trim(&a[..da]), trim(&b[..db]));
                let order = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb)).then(da.cmp(&db));
                if order != std::cmp::Ordering::Equal {
                    return order;
                }
                (a, b) = (&a[da..], &b[db..]);
            }
            (Some(x), Some(y)) if x != y => return x.cmp(y),
            _ => (a, b) = (&a[1..], &b[1..]),
        }
    }
}

/// The longest error or warning the binary prints, in characters: room for any path a
/// user would type and the reason beside it; a message quoting kilobytes from a file or
/// the command line (a path thousands of folders deep, a value of a config) is clipped.
pub(crate) const MAX_MESSAGE_CHARS: usize = 2000;

/// The warnings of a run: the first [`Warnings::KEPT`] word for word, the rest counted.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Warnings {
    shown: Vec<String>,
    #[serde(skip_serializing_if = "is_zero")]
    more: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Warnings {
    /// Warnings kept word for word (in `--json`); stderr shows the first
    /// [`Warnings::PRINTED`].
    const KEPT: usize = 1000;
    const PRINTED: usize = 20;

    /// Adds a warning, clipped to [`MAX_MESSAGE_CHARS`] as errors are (one that names
    /// a tensor or path of kilobytes stays a line).
    pub(crate) fn add(&mut self, warning: String) {
        if self.shown.len() < Self::KEPT {
            let warning = match shears_io::clipped(&warning, MAX_MESSAGE_CHARS) {
                std::borrow::Cow::Borrowed(_) => warning,
                clipped => clipped.into_owned(),
            };
            self.shown.push(warning);
        } else {
            self.more += 1;
        }
    }

    /// Prints the first warnings on stderr, and how many more there are.
    pub(crate) fn report(&self) {
        for w in self.shown.iter().take(Self::PRINTED) {
            to_stderr(format_args!("shears: warning: {}", shown(w)));
        }
        let rest = self.shown.len().saturating_sub(Self::PRINTED) + self.more;
        if rest > 0 {
            to_stderr(format_args!(
                "shears: warning: ... and {rest} more (--json lists the first {})",
                Self::KEPT
            ));
        }
    }
}

/// A message as stderr shows it: escaped ([`printable`]), then clipped to
/// [`MAX_MESSAGE_CHARS`] (an escape is up to ten characters, so clipping first would
/// not bound the line).
pub(crate) fn shown(message: &str) -> String {
    shears_io::clipped(&printable(message), MAX_MESSAGE_CHARS).into_owned()
}

/// Writes `line` and a newline to stderr. A failed write (stderr closed, as under
/// `shears ... 2>&1 | grep -q warning` once grep has its answer) is ignored: there is
/// nowhere left to say so, and the run's outputs and exit status stand.
pub(crate) fn to_stderr(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Writes a left-aligned text table of `rows` to stdout, each row's cells made by
/// `cells`, with `footer` as a last row. Rows are formatted twice (once to measure the
/// columns, once to write) rather than held as text, so a table of a million tensors
/// costs one row's text at a time.
///
/// # Errors
/// The write's error (a closed pipe, say).
pub(crate) fn print_table<R>(
    header: &[&str],
    rows: &[R],
    cells: impl Fn(&R) -> Vec<String>,
    footer: Option<Vec<String>>,
) -> std::io::Result<()> {
    use std::io::Write;
    let width = |cell: &str| printable(cell).chars().count();
    let mut widths: Vec<usize> = header.iter().map(|h| width(h)).collect();
    let mut measure = |row: &[String]| {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(cell));
        }
    };
    rows.iter().for_each(|r| measure(&cells(r)));
    if let Some(f) = &footer {
        measure(f);
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut write = || {
        let mut line = |cells: &[String]| writeln!(out, "{}", format_line(cells, &widths));
        line(&header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>())?;
        line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>())?;
        for r in rows {
            line(&cells(r))?;
        }
        if let Some(f) = &footer {
            line(f)?;
        }
        out.flush()
    };
    write().map_err(stdout_error)
}

/// A failed write to stdout, saying so (its kind kept, so that a closed pipe is still
/// one): reports are written last, so the outputs were written and the input was good,
/// which `main` tells apart from bad input by [`is_stdout_failure`].
pub(crate) fn stdout_error(e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), StdoutFailure(e))
}

/// Whether `e` is a write to stdout that failed (see [`stdout_error`]).
pub(crate) fn is_stdout_failure(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .is_some_and(|inner| inner.is::<StdoutFailure>())
    })
}

/// The error of a write to stdout.
#[derive(Debug)]
struct StdoutFailure(std::io::Error);

impl std::fmt::Display for StdoutFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot write the report to stdout: {}", self.0)
    }
}

impl std::error::Error for StdoutFailure {}

/// `text` with its control characters and bidirectional-text controls escaped
/// (`\u{1b}`, `\u{202e}`): names read from a file or the command line reach the terminal
/// as text, never as escape sequences that could rewrite what it shows, nor as marks
/// that reorder the line.
pub(crate) fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(needs_escape) {
        text.chars()
            .map(|c| if needs_escape(c) { c.escape_default().collect() } else { c.to_string() })
            .collect::<String>()
            .into()
    } else {
        text.into()
    }
}

/// A control character, a mark that changes the direction of the text around it, a
/// line or paragraph separator, or a character of no width (which would hide in a name).
fn needs_escape(c: char) -> bool {
    let direction = matches!(c, '\u{61c}' | '\u{200e}' | '\u{200f}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c);
    let separator = matches!(c, '\u{2028}' | '\u{2029}');
    let invisible = matches!(c, '\u{200b}'..='\u{200d}' | '\u{2060}' | '\u{feff}');
    c.is_control() || direction || separator || invisible
}

/// One table line: each cell padded to its column's width (in characters), two spaces
/// between columns, no trailing spaces. Padded by hand: `format!`'s width is a `u16`, and
/// a tensor name may be longer.
fn format_line(cells: &[String], widths: &[usize]) -> String {
    let mut s = String::new();
    for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
        if i > 0 {
            s.push_str("  ");
        }
        let c = printable(c);
        s.push_str(&c);
        s.extend(std::iter::repeat_n(' ', w.saturating_sub(c.chars().count())));
    }
    s.truncate(s.trim_end().len());
    s
}

/// Writes `value` to stdout as pretty JSON, streamed (a report of a million tensors is
/// never held as one string).
///
/// # Errors
/// The write's or the encoder's error.
pub(crate) fn print_json(value: &impl serde::Serialize) -> std::io::Result<()> {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut write = || {
        // `From` keeps an I/O error as it was, so a closed pipe is still one.
        serde_json::to_writer_pretty(&mut out, value).map_err(std::io::Error::from)?;
        writeln!(out)?;
        out.flush()
    };
    write().map_err(stdout_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A warning naming a tensor of 200000 characters is kept (and printed) clipped;
    /// a short one word for word.
    #[test]
    fn long_warnings_are_clipped() {
        let mut warnings = Warnings::default();
        let name = "t".repeat(200_000);
        warnings.add(format!("tensor `{name}` was pruned whole"));
        warnings.add("short".to_owned());
        let kept = &warnings.shown;
        assert!(kept[0].chars().count() < MAX_MESSAGE_CHARS + 50, "{}", kept[0].len());
        assert!(kept[0].starts_with("tensor `ttt") && kept[0].ends_with("` was pruned whole"));
        assert!(kept[0].contains("characters left out"));
        assert_eq!(kept[1], "short");
        // Escaped, then clipped: a name of bidirectional controls stays one short line.
        let marks = "\u{202e}".repeat(200_000);
        for message in [marks.as_str(), "\u{1}a\u{1}"] {
            let printed = shown(message);
            assert!(printed.chars().count() <= MAX_MESSAGE_CHARS + 40, "{}", printed.len());
            assert!(!printed.chars().any(|c| c == '\u{202e}' || c == '\u{1}'), "{printed}");
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("layers.0.weight"), "layers.0.weight");
        assert_eq!(printable("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\n");
        assert_eq!(printable("a\u{202e}cba\u{2069}"), "a\\u{202e}cba\\u{2069}");
        assert_eq!(printable("naïve café"), "naïve café");
        assert_eq!(printable("a\u{2028}b\u{200b}c"), "a\\u{2028}b\\u{200b}c");
        let widths = [4, 1];
        assert_eq!(format_line(&["\u{7}".into(), "1".into()], &widths), "\\u{7}  1");
    }

    #[test]
    fn sizes_read_in_the_largest_unit_they_reach() {
        for (bytes, text) in [
            (0, "0 bytes"),
            (999, "999 bytes"),
            (1000, "1.0 kB"),
            (49_152, "49.2 kB"),
            (999_949, "999.9 kB"),
            (1_000_000, "1.0 MB"),
            (90_868_000, "90.9 MB"),
            (3_000_000_000, "3.0 GB"),
        ] {
            assert_eq!(byte_size(bytes), text, "{bytes}");
        }
    }

    #[test]
    fn names_sort_naturally() {
        let mut names =
            vec!["layers.10.weight", "layers.2.weight", "layers.1.bias", "a", "layers.02.x"];
        names.sort_unstable_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            ["a", "layers.1.bias", "layers.2.weight", "layers.02.x", "layers.10.weight"]
        );
        assert_eq!(natural_cmp("x9", "x10"), std::cmp::Ordering::Less);
        assert_eq!(natural_cmp("same", "same"), std::cmp::Ordering::Equal);
    }

    #[test]
    fn cells_of_any_length_line_up() {
        let long = "x".repeat(70_000);
        let widths = [70_000, 2];
        assert_eq!(format_line(&[long.clone(), "1".into()], &widths), format!("{long}  1"));
        assert_eq!(
            format_line(&["é".into(), "22".into()], &widths),
            format!("é{}  22", " ".repeat(69_999))
        );
        assert_eq!(format_line(&["a".into(), String::new()], &widths), "a");
    }
}
