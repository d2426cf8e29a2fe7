//! pgwarden: puts AI workloads' PostgreSQL connections under policy, masking and audit.
//! This file parses the command line and hands over; the work lives in the modules.

mod cgroup;
mod cli;
mod config;
mod control;
mod daemon;
mod dest;
mod identity;
mod names;
mod redirect;
mod session;
mod tags;

fn main() -> std::process::ExitCode {
    cli::main()
}
