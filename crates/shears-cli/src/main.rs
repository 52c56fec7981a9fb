//! `shears`: prune, inspect, benchmark, run and export checkpoints and model folders, and a
//! demo.
//!
//! Errors print one line on stderr and exit with status 2; nothing is written then. A
//! report or help that cannot be written to stdout (the outputs written first) exits
//! with 1.

#![allow(clippy::print_stdout, reason = "a command-line tool reports on stdout")]

/// `println!` of one line that returns the write's error instead of panicking, so that
/// output into a closed pipe ends the command quietly (see `main`), and any other failure
/// says it was stdout that failed (its kind kept). The line's control characters are
/// escaped ([`report::printable`]): a name from a file or the command line reaches the
/// terminal as text, and a newline in it does not start another line.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let line = format!($($arg)*);
        writeln!(std::io::stdout().lock(), "{}", $crate::report::printable(&line))
            .map_err($crate::report::stdout_error)
    }};
}

mod bench;
mod calibrated;
mod cli;
mod demo;
mod embed;
mod export;
mod global;
mod hub;
mod inspect;
mod job;
mod model_bench;
mod outputs;
mod progress;
mod prune;
mod quantize;
mod record;
mod report;
mod sources;
mod tensor_filter;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    remove_temporaries_on_signals();
    quiet_tokenizer_panics();
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                // `shears` alone: the help, as it is.
                let _ = e.print();
            } else {
                report_error(&refusal(&args, e));
            }
            return ExitCode::from(2);
        }
        // --help, --version: their text on stdout, which may not take it. A reader that
        // went away (`shears prune --help | head -3`) ends it quietly, as for any output.
        Err(e) => {
            let text = match e.kind() {
                clap::error::ErrorKind::DisplayVersion => "version",
                _ => "help",
            };
            return match e.print() {
                Ok(()) => ExitCode::SUCCESS,
                Err(write) if write.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::from(141),
                Err(write) => {
                    report_error(&format!("cannot write the {text} to stdout: {write}"));
                    ExitCode::from(1)
                }
            };
        }
    };
    let result = match &cli.command {
        Command::Prune(args) => prune::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Embed(args) => embed::embed(args),
        Command::Eval(args) => embed::eval(args),
        Command::Export(args) => export::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`shears inspect big.st | head -1`): stop
        // without a word, with the status a shell reports for a tool SIGPIPE ended.
        Err(e) if closed_pipe(&e) => ExitCode::from(141),
        // A signal's handler is removing the outputs (which is why the run failed) and
        // will exit with the signal's status: let it.
        Err(_) if shears_io::exiting() => loop {
            std::thread::park();
        },
        // The input was good and the outputs are written: only the report failed (a full
        // disk behind stdout), which is not the bad input that status 2 says.
        Err(e) if report::is_stdout_failure(&e) => {
            report_error(&format!("{e:#}"));
            ExitCode::from(1)
        }
        Err(e) => {
            report_error(&format!("{e:#}"));
            ExitCode::from(2)
        }
    }
}

/// On SIGINT, SIGTERM or SIGHUP, removes the temporary files of outputs not yet committed
/// (their targets keep their old contents) and the folders created for them that are left
/// empty, then exits with 128 + the signal's number, as
/// the signal itself would have. SIGKILL cannot be caught: the next run that writes into
/// the same directory removes what such a run leaves.
#[cfg(unix)]
fn remove_temporaries_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    let watcher = std::thread::Builder::new().name("shears-signals".into()).spawn(move || {
        if let Some(signal) = signals.forever().next() {
            shears_io::remove_pending();
            outputs::remove_new_folders();
            std::process::exit(128 + signal);
        }
    });
    // Without the watcher the signals keep their default action; outputs stay atomic.
    drop(watcher);
}

#[cfg(not(unix))]
fn remove_temporaries_on_signals() {}

/// Keeps the panics of the tokenizers library off stderr: shears-models catches them and
/// returns an error naming the `tokenizer.json` that caused them, which is the one line
/// reported; the default hook would first print each (once per thread that ran into it).
/// Every other panic is printed as before.
fn quiet_tokenizer_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let file = info.location().map_or("", |l| l.file());
        let in_tokenizers = file.split(['/', '\\']).any(|part| part.starts_with("tokenizers-"));
        if !in_tokenizers {
            default(info);
        }
    }));
}

/// Whether `e` comes from writing into a pipe whose reader has gone.
fn closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// clap's report of the command line `args` it refused with `e`, on one line, quoting the
/// arguments with their control characters escaped: clap drops escape sequences from what
/// it renders, so it would quote another value than the one given, and a value holding a
/// newline would split the report. So the escaped arguments are parsed again, and their
/// report is the one given when clap refuses them for the same reason.
fn refusal(args: &[OsString], e: clap::Error) -> String {
    let escaped: Vec<OsString> = args
        .iter()
        .map(|arg| match arg.to_str() {
            Some(text) => report::printable(text).into_owned().into(),
            None => arg.clone(),
        })
        .collect();
    let e = match Cli::try_parse_from(&escaped) {
        Err(again) if escaped != args && again.kind() == e.kind() => again,
        _ => e,
    };
    let report = one_line(&e.render().to_string()) + &stray_value_tip(args, &e);
    // clap says only that "one or more arguments" are not UTF-8, or quotes a value that
    // is not as text with U+FFFD in place of its bytes: name the first.
    let not_text = args.iter().enumerate().skip(1).find(|(_, arg)| arg.to_str().is_none());
    let unnamed = e.kind() == clap::error::ErrorKind::InvalidUtf8 || report.contains('\u{fffd}');
    match not_text {
        Some((i, arg)) if unnamed => {
            // `--opt=VALUE` is the option and its value in one: after nothing.
            let after = match i {
                _ if arg.as_encoded_bytes().starts_with(b"-") => String::new(),
                1 => String::new(),
                _ => format!(" (after `{}`)", escape_bytes(&args[i - 1])),
            };
            let usage = report.find("; usage: ").map_or("", |at| &report[at..]);
            format!(
                "argument `{}`{after} is not UTF-8: only file paths may be other bytes{usage}",
                escape_bytes(arg)
            )
        }
        _ => report,
    }
}

/// For a value where clap expected none (`shears export M out.onnx`): the flag it
/// probably belongs to, which clap does not suggest for a value.
fn stray_value_tip(args: &[OsString], e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    if e.kind() != clap::error::ErrorKind::UnknownArgument {
        return String::new();
    }
    let Some(ContextValue::String(value)) = e.get(ContextKind::InvalidArg) else {
        return String::new();
    };
    if value.starts_with('-') {
        return String::new();
    }
    let (flag, long) = match args.get(1).and_then(|a| a.to_str()) {
        Some("prune" | "export") => ("-o", "--output"),
        Some("embed" | "eval" | "bench") => ("--texts", "--texts"),
        _ => return String::new(),
    };
    // With the flag given already, the value is a stray of another kind.
    let given = args
        .iter()
        .skip(2)
        .filter_map(|a| a.to_str())
        .any(|a| a == long || a.starts_with(&format!("{long}=")) || a.starts_with(flag));
    if given {
        return String::new();
    }
    format!("; tip: a value goes after its flag, as in `{flag} {}`", report::printable(value))
}

/// An argument as text: its UTF-8 runs as they are (escaped where they must be, as in
/// every report), each byte that is not UTF-8 as `\xNN`.
fn escape_bytes(arg: &std::ffi::OsStr) -> String {
    let mut text = String::new();
    for chunk in arg.as_encoded_bytes().utf8_chunks() {
        text.push_str(&report::printable(chunk.valid()));
        for byte in chunk.invalid() {
            text.push_str(&format!("\\x{byte:02x}"));
        }
    }
    text
}

/// clap's report of a command line it refuses, on one line as every other error: what is
/// wrong, its valid values and tips ("a similar argument exists"), and the usage, without
/// the pointer to `--help`.
fn one_line(report: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    // Within a list ("the following required arguments were not provided:").
    let mut listing = false;
    for line in report.lines().map(str::trim).filter(|line| !line.is_empty()) {
        if line.starts_with("For more information") {
            continue;
        }
        let line = line.strip_prefix("error: ").unwrap_or(line);
        if let Some(usage) = line.strip_prefix("Usage: ") {
            parts.push(format!("usage: {usage}"));
            listing = false;
        } else if let Some(last) = parts.last_mut().filter(|_| listing && !line.starts_with("tip:"))
        {
            last.push_str(if last.ends_with(':') { " " } else { ", " });
            last.push_str(line);
        } else {
            parts.push(line.to_owned());
            listing = line.ends_with(':');
        }
    }
    parts.join("; ")
}

/// The binary's one-line error report, on stderr (where a failed write is ignored),
/// clipped to [`report::MAX_MESSAGE_CHARS`].
fn report_error(message: &str) {
    report::to_stderr(format_args!("shears: error: {}", report::shown(message)));
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// clap's report for `args`, made one line.
    fn refused(args: &[&str]) -> String {
        let e = Cli::try_parse_from([&["shears"], args].concat()).err().unwrap();
        assert!(e.use_stderr(), "{args:?}");
        one_line(&e.render().to_string())
    }

    #[test]
    fn clap_reports_become_one_line_that_keeps_what_helps() {
        for args in [
            &["prnue"][..],
            &["prune", "m", "-o", "out", "--sparsty", "0.5"],
            &["embed"],
            &["prune", "m", "-o", "out", "-s", "2"],
        ] {
            let line = refused(args);
            assert!(!line.contains('\n') && !line.contains("For more information"), "{line}");
            assert!(!line.starts_with("error:"), "{line}");
        }
        let line = refused(&["prnue"]);
        assert!(line.starts_with("unrecognized subcommand 'prnue'"), "{line}");
        assert!(line.contains("similar subcommand exists: 'prune'"), "{line}");
        assert!(line.ends_with("; usage: shears <COMMAND>"), "{line}");
        // A list after a colon stays one clause, its items joined by commas.
        let line = refused(&["embed"]);
        assert!(
            line.starts_with(
                "the following required arguments were not provided: --texts <FILE>, <MODEL>; "
            ),
            "{line}"
        );
        assert!(refused(&["prune", "m", "-o", "out", "-s", "2"]).contains("[0, 1]"));
    }

    /// An argument that is not UTF-8 where clap wants text is named, its other bytes
    /// escaped, with the option it follows.
    #[test]
    #[cfg(unix)]
    fn an_argument_that_is_not_utf8_is_named() {
        use std::os::unix::ffi::OsStringExt;
        let args: Vec<OsString> = ["shears", "prune", "m", "-o", "out", "--method"]
            .iter()
            .map(OsString::from)
            .chain([OsString::from_vec(b"w\xffnda\x1b".to_vec())])
            .collect();
        let e = Cli::try_parse_from(&args).err().unwrap();
        let line = refusal(&args, e);
        assert!(
            line.starts_with(
                "argument `w\\xffnda\\u{1b}` (after `--method`) is not UTF-8: only file paths may"
            ),
            "{line}"
        );
        assert!(line.contains("; usage: shears prune "), "{line}");
        assert!(!line.contains('\n'), "{line}");
        // An option and its value in one argument; a value clap quotes lossily (the
        // possible values of an enum) rather than calling it not UTF-8.
        let parse = |tail: &[&[u8]]| {
            let args: Vec<OsString> = tail.iter().map(|a| OsString::from_vec(a.to_vec())).collect();
            let args = [vec![OsString::from("shears")], args].concat();
            refusal(&args, Cli::try_parse_from(&args).err().unwrap())
        };
        let joined = parse(&[b"prune", b"m", b"-o", b"o", b"--method=\xff"]);
        assert!(joined.starts_with("argument `--method=\\xff` is not UTF-8"), "{joined}");
        let enumerated = parse(&[b"export", b"m", b"-o", b"o", b"--activations", b"\xff"]);
        assert!(
            enumerated.starts_with("argument `\\xff` (after `--activations`) is not UTF-8"),
            "{enumerated}"
        );
    }

    #[test]
    fn a_value_without_its_flag_is_pointed_to_the_flag() {
        // Unless the flag is given: then the value is a stray of another kind.
        let stray = |tail: &[&str]| {
            let args: Vec<OsString> = ["shears"].iter().chain(tail).map(OsString::from).collect();
            refusal(&args, Cli::try_parse_from(&args).err().unwrap())
        };
        let tip = "tip: a value goes after its flag, as in";
        assert!(stray(&["export", "m", "out.onnx"]).ends_with(&format!("{tip} `-o out.onnx`")));
        assert!(stray(&["embed", "m", "t.txt"]).ends_with(&format!("{tip} `--texts t.txt`")));
        assert!(!stray(&["export", "m", "-o", "x", "out.onnx"]).contains(tip));
        assert!(!stray(&["eval", "a", "b", "c", "--texts=t"]).contains(tip));
        assert!(!stray(&["inspect", "a", "b"]).contains(tip));
    }
}
