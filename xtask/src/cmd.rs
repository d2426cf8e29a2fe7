//! Small process helpers for the tasks: echo and run a command, capture its output, find tools
//! on PATH or in cargo's bin directory, and tell whether we run as root.

use std::env;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

/// Renders a command the way a shell user would type it, for logs and error messages.
pub fn describe(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(key, value)| {
            // Only show variables we set explicitly; PATH tweaks would drown the line.
            let value = value?;
            (key != "PATH").then(|| format!("{}={}", key.to_string_lossy(), quote(value)))
        })
        .collect();
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:+,~@%".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Echoes `cmd`, runs it with inherited stdout/stderr and no stdin, and fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    println!("+ {line}");
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed: {status}");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its output, whatever its exit status.
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))
}

/// Runs `cmd` quietly and returns its stdout; fails with its stderr unless it exits 0.
pub fn stdout_of(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}\n{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the effective uid is 0, read from /proc/self/status (no libc needed).
pub fn is_root() -> bool {
    effective_uid() == Some(0)
}

/// The effective uid from /proc/self/status (`Uid: real effective saved fs`).
pub fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Cargo's bin directory, where `cargo install` puts binaries: `$CARGO_HOME/bin`, else
/// `~/.cargo/bin`.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(home).join("bin"));
    }
    env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".cargo").join("bin"))
}

/// Every existing file called `name` on PATH, then in cargo's bin directory, without duplicates.
pub fn tool_candidates(name: &str) -> Vec<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    let mut found: Vec<PathBuf> = Vec::new();
    for dir in env::split_paths(&path).chain(cargo_bin_dir()) {
        let candidate = dir.join(name);
        if candidate.is_file() && !found.contains(&candidate) {
            found.push(candidate);
        }
    }
    found
}

/// The first `name` on PATH or in cargo's bin directory.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    tool_candidates(name).into_iter().next()
}

/// The cargo that runs this xtask (so nested builds use the same toolchain), else `cargo`.
pub fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The current PATH with `dir` appended if it is not on it yet.
pub fn path_with(dir: &Path) -> Result<OsString> {
    let current = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&current).collect();
    if !dirs.iter().any(|d| d == dir) {
        dirs.push(dir.to_path_buf());
    }
    env::join_paths(dirs).context("cannot build PATH")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_quotes_what_a_shell_would_split() {
        let mut cmd = Command::new("cargo");
        cmd.args(["install", "--version", "~0.13", "a b", "it's"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22");
        assert_eq!(
            describe(&cmd),
            r"LLVM_PREFIX=/usr/lib/llvm-22 cargo install --version ~0.13 'a b' 'it'\''s'"
        );
    }

    #[test]
    fn effective_uid_is_readable() {
        assert!(effective_uid().is_some());
    }
}
