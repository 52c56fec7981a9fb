//! Progress on stderr for long work: shown only when stderr is a terminal and the
//! command was not asked to be quiet.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::report::printable;

/// A progress bar over bytes (or any unit), hidden when it should not draw. The message
/// comes last and takes the rest of the line: tensor names are long, and a name cut to a
/// fixed width would not say which tensor it is.
pub(crate) struct Progress {
    bar: ProgressBar,
}

/// The byte bar: sizes in kB/MB/GB, as the reports give them.
const BYTES_TEMPLATE: &str =
    "[{bar:30}] {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} eta {eta} {wide_msg}";

impl Progress {
    /// A bar over `total` bytes with `message`; hidden when `quiet`, and whenever stderr
    /// is not a terminal (indicatif checks).
    pub(crate) fn bytes(total: u64, message: &str, quiet: bool) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if quiet {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar.set_style(
            ProgressStyle::with_template(BYTES_TEMPLATE)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(printable(message).into_owned());
        Progress { bar }
    }

    /// A bar over `total` steps named `unit`, redrawn every quarter second so that its
    /// elapsed time moves while one long step runs (a layer's calibration, a setting's
    /// timing, a pass of sentences).
    pub(crate) fn steps(total: u64, unit: &str, quiet: bool) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if quiet {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "[{{bar:30}}] {{pos}}/{{len}} {unit} {{elapsed}} {{wide_msg}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(250));
        Progress { bar }
    }

    /// Says what is being done now, escaped as every report is: messages name tensors
    /// and files, and a name from a file must not write escape sequences to the terminal.
    pub(crate) fn message(&self, message: impl Into<String>) {
        let message = message.into();
        self.bar.set_message(printable(&message).into_owned());
    }

    /// Moves on by `n`.
    pub(crate) fn advance(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Clears the bar.
    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_bar_template_is_one_indicatif_reads() {
        assert!(ProgressStyle::with_template(BYTES_TEMPLATE).is_ok());
    }

    #[test]
    fn messages_are_escaped_like_every_report() {
        let progress = Progress::steps(1, "tensors", true);
        progress.message("tensor \u{1b}]0;title\u{7}\u{202e}x.weight");
        assert_eq!(progress.bar.message(), "tensor \\u{1b}]0;title\\u{7}\\u{202e}x.weight");
        let bytes = Progress::bytes(1, "reading \u{1b}[31mred", true);
        assert_eq!(bytes.bar.message(), "reading \\u{1b}[31mred");
    }
}
