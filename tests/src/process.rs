//! Running commands from tests: the root check, and runners whose failures print everything a
//! reader needs (command line, exit status, stdout, stderr).

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::process::{Command, Output};

/// Panics loudly unless the test runs as root: the end-to-end tests load eBPF programs and create
/// cgroups, and a suite that quietly skips them would report a pass it has not earned.
///
/// # Panics
///
/// When the effective uid is not 0.
#[track_caller]
pub fn require_root() {
    let euid = nix::unistd::geteuid();
    assert!(
        euid.is_root(),
        "\n\
         ************************************************************************\n\
         pgwarden e2e tests need root (eBPF, cgroups); this process runs as uid {euid}.\n\
         Run them as root: `cargo xtask test` (or `cargo test -p pgwarden-e2e`) as root.\n\
         They are refusing to pass silently.\n\
         ************************************************************************\n"
    );
}

/// Runs `cmd` to completion (stdin closed, stdout and stderr captured) and returns its output
/// whatever the exit status.
///
/// # Panics
///
/// When the program cannot be started.
#[track_caller]
pub fn run_output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|err| panic!("cannot start `{}`: {err}", describe(cmd)))
}

/// Runs `cmd`, asserts it exits 0 and returns its stdout (untrimmed, lossily decoded).
///
/// # Panics
///
/// When the program cannot be started or fails; the message carries the command line, the
/// status, stdout and stderr.
#[track_caller]
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run_output(cmd);
    assert!(
        out.status.success(),
        "command failed: {}\nstatus: {}\n{}",
        describe(cmd),
        out.status,
        dump_output(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stdout and stderr of `out`, labelled, for failure messages.
pub(crate) fn dump_output(out: &Output) -> String {
    format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}\n--- end ---",
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// A command as a shell user would type it, explicit environment first.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut line = String::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            let _ = write!(line, "{}={} ", key.to_string_lossy(), quote(value));
        }
    }
    line.push_str(&quote(cmd.get_program()));
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    line
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_quotes_like_a_shell() {
        let mut cmd = Command::new("psql");
        cmd.args(["-Atc", "select 'x'"])
            .env("PGCONNECT_TIMEOUT", "5");
        assert_eq!(
            describe(&cmd),
            r"PGCONNECT_TIMEOUT=5 psql -Atc 'select '\''x'\'''"
        );
    }

    #[test]
    #[should_panic(expected = "command failed: false")]
    fn run_ok_reports_failures() {
        run_ok(&mut Command::new("false"));
    }
}
