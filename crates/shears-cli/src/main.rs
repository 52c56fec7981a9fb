//! `shears`: prune, inspect and benchmark safetensors checkpoints, and a demo.
//!
//! Errors print one line on stderr and exit with status 2; nothing is written then.

#![allow(clippy::print_stdout, reason = "a command-line tool reports on stdout")]

mod bench;
mod cli;
mod demo;
mod inspect;
mod prune;
mod report;
mod tensor_filter;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // clap's report spans several lines (usage, hints); keep the one that says
            // what is wrong, so every failure is one line on stderr.
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            report_error(first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let result = match &cli.command {
        Command::Prune(args) => prune::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Demo(args) => demo::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report_error(&format!("{e:#}"));
            ExitCode::from(2)
        }
    }
}

#[allow(clippy::print_stderr, reason = "the one-line error report of the binary")]
fn report_error(message: &str) {
    eprintln!("shears: error: {}", message.replace('\n', " "));
}
