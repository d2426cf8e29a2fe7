//! `cargo xtask setup`: idempotently installs what pgwarden needs on a fresh Debian 12 machine
//! (system packages, nightly with rust-src and clippy, clippy/rustfmt, bpf-linker for LLVM 22).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cmd;

/// Debian packages the build and the end-to-end tests need: LLVM for bpf-linker, the PostgreSQL
/// server and client the tests run against, python3 for test peers, `ip`, `setfattr`/`getfattr`
/// and `ps`/`pgrep`.
const DEBIAN_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "postgresql-15",
    "postgresql-client-15",
    "python3",
    "iproute2",
    "attr",
    "procps",
];

/// Where Debian's llvm-22-dev lives; bpf-linker's build looks in /usr without it.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// bpf-linker release series that works with LLVM 22 and the pinned aya crates.
const BPF_LINKER_SERIES: &str = "0.13";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Report only.
    Check,
    /// Install whatever is missing.
    Install,
}

/// What a setup run found and did.
#[derive(Default)]
pub struct Outcome {
    /// Things installed by this run.
    pub installed: Vec<String>,
    /// Things still missing (only in [`Mode::Check`]; installing fails instead).
    pub missing: Vec<String>,
    /// The working bpf-linker, if one is there.
    pub bpf_linker: Option<PathBuf>,
}

enum Found {
    Present,
    Missing,
    Installed,
}

impl Outcome {
    fn record(&mut self, what: &str, found: Found) {
        match found {
            Found::Present => {}
            Found::Missing => self.missing.push(what.to_owned()),
            Found::Installed => self.installed.push(what.to_owned()),
        }
    }
}

/// Runs every setup step in order and prints one line per step plus a closing line.
pub fn run(mode: Mode) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let found = debian_packages(mode)?;
    outcome.record("debian packages", found);
    let found = nightly_toolchain(mode)?;
    outcome.record("rust nightly", found);
    let found = components(mode, Some("nightly"), NIGHTLY_COMPONENTS)?;
    outcome.record("nightly components", found);
    let found = components(mode, None, ACTIVE_COMPONENTS)?;
    outcome.record("active toolchain components", found);
    let (found, linker) = bpf_linker(mode)?;
    outcome.record("bpf-linker", found);
    outcome.bpf_linker = linker;

    if !outcome.missing.is_empty() {
        println!(
            "setup: missing: {} (run `cargo xtask setup` as root to install)",
            outcome.missing.join(", ")
        );
    } else if outcome.installed.is_empty() {
        println!("setup: all present");
    } else {
        println!("setup: installed: {}", outcome.installed.join(", "));
    }
    Ok(outcome)
}

fn debian_packages(mode: Mode) -> Result<Found> {
    let missing = missing_debian_packages()?;
    if missing.is_empty() {
        println!(
            "setup: debian packages {} present",
            DEBIAN_PACKAGES.join(" ")
        );
        return Ok(Found::Present);
    }
    let names = missing.join(" ");
    if mode == Mode::Check {
        println!("setup: debian packages {names} missing");
        return Ok(Found::Missing);
    }
    if !cmd::is_root() {
        bail!(
            "debian packages {names} are missing and installing them needs root: \
             run `cargo xtask setup` as root (or `sudo apt-get install {names}`)"
        );
    }
    println!("setup: debian packages {names} installing");
    cmd::run(apt_get().arg("update"))?;
    cmd::run(
        apt_get()
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )?;
    let still = missing_debian_packages()?;
    if !still.is_empty() {
        bail!(
            "apt-get reported success but {} are still not installed",
            still.join(" ")
        );
    }
    Ok(Found::Installed)
}

fn apt_get() -> Command {
    let mut apt = Command::new("apt-get");
    apt.env("DEBIAN_FRONTEND", "noninteractive");
    apt
}

fn missing_debian_packages() -> Result<Vec<&'static str>> {
    let mut missing = Vec::new();
    for &package in DEBIAN_PACKAGES {
        // `dpkg-query` exits 1 for packages it has never heard of: that is "missing" too.
        let out = cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
            .context("dpkg-query is needed to check packages (this task expects Debian 12)")?;
        if String::from_utf8_lossy(&out.stdout).trim() != "install ok installed" {
            missing.push(package);
        }
    }
    Ok(missing)
}

fn rustup() -> Result<Command> {
    let rustup = cmd::find_tool("rustup").context(
        "rustup not found on PATH or in ~/.cargo/bin; install it from https://rustup.rs",
    )?;
    Ok(Command::new(rustup))
}

fn has_nightly() -> Result<bool> {
    let list = cmd::stdout_of(rustup()?.args(["toolchain", "list"]))?;
    Ok(list.lines().any(|line| line.starts_with("nightly")))
}

fn nightly_toolchain(mode: Mode) -> Result<Found> {
    if has_nightly()? {
        println!("setup: rust nightly toolchain present");
        return Ok(Found::Present);
    }
    if mode == Mode::Check {
        println!("setup: rust nightly toolchain missing");
        return Ok(Found::Missing);
    }
    println!("setup: rust nightly toolchain installing");
    cmd::run(rustup()?.args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    if !has_nightly()? {
        bail!("`rustup toolchain install nightly` succeeded but no nightly toolchain is listed");
    }
    Ok(Found::Installed)
}

/// Components the tasks need: rust-src for `-Z build-std` and clippy for the eBPF lint step on
/// the nightly; clippy and rustfmt on the toolchain that runs `cargo xtask` (a `--profile minimal`
/// install lacks them).
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "clippy"];
const ACTIVE_COMPONENTS: &[&str] = &["clippy", "rustfmt"];

/// Which of `wanted` are not installed on `toolchain` (`None`: the active toolchain).
fn missing_components(
    toolchain: Option<&str>,
    wanted: &[&'static str],
) -> Result<Vec<&'static str>> {
    let mut rustup = rustup()?;
    rustup.args(["component", "list", "--installed"]);
    if let Some(toolchain) = toolchain {
        if !has_nightly()? {
            return Ok(wanted.to_vec());
        }
        rustup.args(["--toolchain", toolchain]);
    }
    let list = cmd::stdout_of(&mut rustup)?;
    // Lines read `rust-src` or `clippy-x86_64-unknown-linux-gnu`.
    let installed = |name: &str| {
        list.lines()
            .any(|line| line == name || line.strip_prefix(name).is_some_and(|r| r.starts_with('-')))
    };
    Ok(wanted
        .iter()
        .copied()
        .filter(|name| !installed(name))
        .collect())
}

fn components(mode: Mode, toolchain: Option<&str>, wanted: &[&'static str]) -> Result<Found> {
    let label = toolchain.map_or_else(
        || "rust components (active toolchain)".to_owned(),
        |t| format!("rust {t} components"),
    );
    let missing = missing_components(toolchain, wanted)?;
    if missing.is_empty() {
        println!("setup: {label} {} present", wanted.join(" "));
        return Ok(Found::Present);
    }
    let names = missing.join(" ");
    if mode == Mode::Check {
        println!("setup: {label} {names} missing");
        return Ok(Found::Missing);
    }
    println!("setup: {label} {names} installing");
    let mut rustup = rustup()?;
    rustup.args(["component", "add"]).args(&missing);
    if let Some(toolchain) = toolchain {
        rustup.args(["--toolchain", toolchain]);
    }
    cmd::run(&mut rustup)?;
    let still = missing_components(toolchain, wanted)?;
    if !still.is_empty() {
        bail!(
            "`rustup component add` succeeded but {} are not installed",
            still.join(" ")
        );
    }
    Ok(Found::Installed)
}

/// The version a `bpf-linker --version` line reports (`bpf-linker 0.13.2` -> `0.13.2`).
fn linker_version(version_output: &str) -> Option<&str> {
    version_output.lines().next()?.split_whitespace().last()
}

fn in_series(version: &str) -> bool {
    version
        .strip_prefix(BPF_LINKER_SERIES)
        .is_some_and(|rest| rest.starts_with('.'))
}

/// The first bpf-linker on PATH or in cargo's bin directory that runs and is a 0.13.x.
fn working_bpf_linker() -> Option<(PathBuf, String)> {
    cmd::tool_candidates("bpf-linker")
        .into_iter()
        .find_map(|path| {
            let out = cmd::output(Command::new(&path).arg("--version")).ok()?;
            if !out.status.success() {
                return None;
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let version = linker_version(&text)?;
            in_series(version).then(|| (path.clone(), version.to_owned()))
        })
}

fn bpf_linker(mode: Mode) -> Result<(Found, Option<PathBuf>)> {
    if let Some((path, version)) = working_bpf_linker() {
        println!("setup: bpf-linker {version} ({}) present", path.display());
        return Ok((Found::Present, Some(path)));
    }
    if mode == Mode::Check {
        println!("setup: bpf-linker {BPF_LINKER_SERIES}.x (llvm-22) missing");
        return Ok((Found::Missing, None));
    }
    if !Path::new(LLVM_PREFIX).join("bin/llvm-config").is_file() {
        bail!("{LLVM_PREFIX}/bin/llvm-config not found: llvm-22-dev must be installed first");
    }
    println!(
        "setup: bpf-linker {BPF_LINKER_SERIES}.x (llvm-22) installing (builds from source, ~1 minute)"
    );
    cmd::run(
        cmd::cargo()
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .args(["install", "bpf-linker", "--version"])
            .arg(format!("~{BPF_LINKER_SERIES}"))
            .args(["--no-default-features", "--features", "llvm-22"]),
    )?;
    let Some((path, version)) = working_bpf_linker() else {
        bail!(
            "`cargo install bpf-linker` succeeded but no working bpf-linker {BPF_LINKER_SERIES}.x \
             was found on PATH or in {}",
            cmd::cargo_bin_dir().map_or_else(|| "~/.cargo/bin".into(), |d| d.display().to_string())
        );
    };
    println!("setup: bpf-linker {version} ({}) installed", path.display());
    Ok((Found::Installed, Some(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_linker_version() {
        assert_eq!(linker_version("bpf-linker 0.13.2\n"), Some("0.13.2"));
        assert_eq!(linker_version(""), None);
    }

    #[test]
    fn only_the_013_series_fits() {
        assert!(in_series("0.13.0"));
        assert!(in_series("0.13.12"));
        assert!(!in_series("0.130.0"));
        assert!(!in_series("0.12.9"));
        assert!(!in_series("0.14.0"));
    }
}
