//! The audit journal's part of the demo: `pgwarden audit tail` of the MCP server's sessions
//! and `pgwarden audit verify`, shown only when the pgwarden binary has an `audit` command.

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

use crate::cmd;

/// Shows the journal's records of `sessions` and verifies the journal, if `bin` knows `audit`
/// (probed with `pgwarden audit --help`); without it, does and prints nothing. `config` is the
/// configuration the agent runs with.
pub fn show(bin: &Path, config: &Path, sessions: &[String]) -> Result<()> {
    let probe = cmd::output(Command::new(bin).args(["audit", "--help"]))?;
    if !probe.status.success() {
        return Ok(());
    }
    for session in sessions {
        shown(
            &format!("the audit journal of session {session}"),
            Command::new(bin)
                .args(["audit", "tail", "--all", "--config"])
                .arg(config)
                .args(["--session", session]),
        )?;
    }
    shown(
        "the journal's hash chain",
        Command::new(bin)
            .args(["audit", "verify", "--config"])
            .arg(config),
    )
}

/// Prints `title`, the command line and its output, indented; fails when it fails.
fn shown(title: &str, command: &mut Command) -> Result<()> {
    println!("\n==> {title}: {}", cmd::describe(command));
    let out = cmd::output(command)?;
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        println!("    {line}");
    }
    if !out.status.success() {
        bail!("`{}` failed: {}", cmd::describe(command), out.status);
    }
    Ok(())
}
