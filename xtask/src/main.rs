//! Developer tasks for pgwarden, run as `cargo xtask <task>`: `setup` installs what a fresh
//! Debian 12 machine needs, `test` runs every check CI runs (`.ci/run` calls it), `demo` shows
//! pgwarden between an MCP server and PostgreSQL.
#![forbid(unsafe_code)]

mod bench;
mod cmd;
mod demo;
mod install;
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
    /// The one-command demo: PostgreSQL, pgwarden and the MCP server for PostgreSQL in a tagged
    /// cgroup, driven step by step; everything is removed on exit or Ctrl-C (root only).
    Demo {
        /// Leave PostgreSQL and pgwarden running afterwards, print how to connect, wait for Ctrl-C.
        #[arg(long)]
        keep: bool,
    },
    /// Benchmarks: pgbench direct vs PgBouncer vs pgwarden, masking throughput, agent memory,
    /// untagged connect overhead; writes BENCHMARKS.md and bench/results.json (root only).
    Bench(bench::Args),
    /// Install the release binary, the systemd unit, a default config, the example policies.
    Install {
        /// Prefix for the binary and docs.
        #[arg(long, default_value = "/usr/local")]
        prefix: std::path::PathBuf,
        /// Staging root prepended to every path (packaging, tests).
        #[arg(long, default_value = "/")]
        root: std::path::PathBuf,
    },
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
        Task::Bench(args) => bench::run(&args),
        Task::Demo { keep } => demo::run(&demo::Options { keep }),
        Task::Install { prefix, root } => {
            install::run(&install::Options { prefix, root }).map(|()| ExitCode::SUCCESS)
        }
    };
    result.unwrap_or_else(|err| {
        eprintln!("xtask: error: {err:#}");
        ExitCode::FAILURE
    })
}
