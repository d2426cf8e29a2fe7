//! Developer tasks for pgwarden, run as `cargo xtask <task>`: `setup` installs what a fresh
//! Debian 12 machine needs, `test` runs every check CI runs (`.ci/run` calls it).
#![forbid(unsafe_code)]

mod cmd;
mod setup;
mod suite;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "pgwarden developer tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the project needs (Debian packages, nightly + rust-src, bpf-linker): idempotent.
    Setup {
        /// Only report what is present or missing; exit 1 if anything is missing.
        #[arg(long)]
        check: bool,
    },
    /// Setup, fmt, clippy (host and eBPF), build, unit tests, end-to-end tests (root only).
    Test,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup { check } => {
            let mode = if check {
                setup::Mode::Check
            } else {
                setup::Mode::Install
            };
            setup::run(mode).map(|outcome| {
                if outcome.missing.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            })
        }
        Task::Test => suite::run(),
    };
    result.unwrap_or_else(|err| {
        eprintln!("xtask: error: {err:#}");
        ExitCode::FAILURE
    })
}
