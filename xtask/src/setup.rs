//! `cargo xtask setup`: idempotently installs what pgwarden needs on a fresh Debian 12 machine
//! (system packages, nightly with rust-src and clippy, clippy/rustfmt, bpf-linker for LLVM 22,
//! the e2e suite's node and Python clients' dependencies, and cargo-fuzz).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cmd;

/// Debian packages the build and the end-to-end tests need: LLVM for bpf-linker, the PostgreSQL
/// server and client the tests run against (psql, pgbench), python3 for test peers and
/// python3-venv for the psycopg client's venv (Debian's python3 cannot `-m venv` without it),
/// `ip`, `setfattr`/`getfattr`, `ps`/`pgrep`, `openssl` for the certificates of the TLS tests, and
/// `pgbouncer` (1.18), the peer `cargo xtask bench` measures pgwarden against, `util-linux`
/// (`nsenter`, `unshare`) for the namespace tests, and `podman` with `runc` (crun refuses this
/// hybrid cgroup layout) for the one test with a real container, and `zstd` (`zstdcat`) for
/// reading the journal's compressed rotated files outside pgwarden.
const DEBIAN_PACKAGES: &[&str] = &[
    "zstd",
    "llvm-22-dev",
    "postgresql-15",
    "postgresql-client-15",
    "pgbouncer",
    "python3",
    "python3-venv",
    "iproute2",
    "attr",
    "procps",
    "openssl",
    "util-linux",
    "podman",
    "runc",
    // systemd-journald (started by hand in the tests where PID 1 is not systemd) and
    // systemd-analyze for the unit's verification.
    "systemd",
    // The approval page's browser test: headless Chromium driven over WebDriver, and curl
    // for the HTTP API's.
    "chromium",
    "chromium-driver",
    "curl",
    // The audit forwarder's tests: a real syslog collector, over TCP and TLS (RFC 5425).
    "rsyslog",
    "rsyslog-openssl",
    // `perf`, for the bench's budget of where each proxy's CPU goes.
    "linux-perf",
];

/// Debian packages for the node `pg` client, wanted only when the program is not on PATH: a
/// machine with Node.js from elsewhere (NodeSource's `nodejs` bundles npm and conflicts with
/// Debian's `npm`) keeps what it has.
const NODE_PACKAGES: &[(&str, &str)] = &[("node", "nodejs"), ("npm", "npm")];

/// The node client of the e2e suite (package.json, package-lock.json), relative to the workspace.
const NODE_CLIENT_DIR: &str = "tests/clients/node";

/// The MCP server for PostgreSQL (`@modelcontextprotocol/server-postgres`, pinned by its lock
/// file) that `cargo xtask demo` and the e2e suite run, relative to the workspace.
const MCP_CLIENT_DIR: &str = "tests/clients/mcp";

/// The psycopg client's pinned requirements, relative to the workspace.
const PYTHON_REQUIREMENTS: &str = "tests/clients/python/requirements.txt";

/// The venv the e2e suite runs the psycopg client with, relative to the workspace (the tests
/// look for `target/pyenv/bin/python`).
const PYTHON_VENV: &str = "target/pyenv";

/// Copy of the requirements last installed into the venv, to tell when they changed.
const PYTHON_STAMP: &str = "pgwarden-requirements.txt";

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
    let found = node_client(mode, NODE_CLIENT_DIR)?;
    outcome.record("node client dependencies", found);
    let found = node_client(mode, MCP_CLIENT_DIR)?;
    outcome.record("MCP server dependencies", found);
    let found = python_client(mode)?;
    outcome.record("python client venv", found);
    let found = cargo_fuzz(mode)?;
    outcome.record("cargo-fuzz", found);

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

/// [`DEBIAN_PACKAGES`], plus those of [`NODE_PACKAGES`] whose program is not on PATH.
fn wanted_debian_packages() -> Vec<&'static str> {
    let mut wanted = DEBIAN_PACKAGES.to_vec();
    wanted.extend(
        NODE_PACKAGES
            .iter()
            .filter(|(program, _)| cmd::find_tool(program).is_none())
            .map(|&(_, package)| package),
    );
    wanted
}

fn debian_packages(mode: Mode) -> Result<Found> {
    let missing = missing_debian_packages()?;
    if missing.is_empty() {
        println!(
            "setup: debian packages {} present",
            wanted_debian_packages().join(" ")
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
    for package in wanted_debian_packages() {
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

/// The workspace root: xtask lives one level below it.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Whether `file` exists and was modified no earlier than every one of `inputs`.
fn newer_than_all(file: &Path, inputs: &[PathBuf]) -> bool {
    let modified = |path: &Path| fs::metadata(path).and_then(|m| m.modified()).ok();
    let Some(built) = modified(file) else {
        return false;
    };
    inputs
        .iter()
        .all(|input| modified(input).is_some_and(|changed| changed <= built))
}

/// `npm ci` in `client` (tests/clients/node, tests/clients/mcp) when node_modules is missing or
/// older than the lock file (npm writes node_modules/.package-lock.json on every install); `npm
/// install` when there is no lock.
fn node_client(mode: Mode, client: &str) -> Result<Found> {
    let dir = workspace_root().join(client);
    let lock = dir.join("package-lock.json");
    let manifest = dir.join("package.json");
    let installed = dir.join("node_modules").join(".package-lock.json");
    let label = format!("node client dependencies ({client}/node_modules)");
    let inputs: Vec<PathBuf> = [manifest, lock.clone()]
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    if newer_than_all(&installed, &inputs) {
        println!("setup: {label} present");
        return Ok(Found::Present);
    }
    if mode == Mode::Check {
        println!("setup: {label} missing");
        return Ok(Found::Missing);
    }
    if cmd::find_tool("node").is_none() {
        bail!(
            "`node` is not on PATH: {client} needs Node.js \
             (Debian packages nodejs and npm; `cargo xtask setup` as root installs them)"
        );
    }
    let npm = cmd::find_tool("npm").with_context(|| {
        format!(
            "`npm` is not on PATH: {client} needs it to install its packages \
             (Debian package npm; `cargo xtask setup` as root installs it)"
        )
    })?;
    let verb = if lock.is_file() { "ci" } else { "install" };
    println!("setup: {label} installing (npm {verb})");
    cmd::run(
        Command::new(npm)
            .arg(verb)
            .args(["--no-audit", "--no-fund", "--prefix"])
            .arg(&dir),
    )?;
    if !installed.is_file() {
        bail!(
            "`npm {verb}` succeeded but {} is missing",
            installed.display()
        );
    }
    Ok(Found::Installed)
}

/// The interpreter to build the venv from: Debian's (the python3 and python3-venv packages
/// above), else the first `python3` on PATH.
fn system_python() -> Result<PathBuf> {
    let debian = Path::new("/usr/bin/python3");
    if debian.is_file() {
        return Ok(debian.to_path_buf());
    }
    cmd::find_tool("python3").context("python3 not found (Debian package python3)")
}

/// Whether the venv's python runs and imports psycopg, and the requirements installed into it
/// are the ones in the repository.
fn python_venv_current(venv: &Path, requirements: &Path) -> bool {
    let python = venv.join("bin").join("python");
    let stamp_matches = match (fs::read(venv.join(PYTHON_STAMP)), fs::read(requirements)) {
        (Ok(installed), Ok(wanted)) => installed == wanted,
        _ => false,
    };
    stamp_matches
        && cmd::output(Command::new(python).args(["-c", "import psycopg"]))
            .is_ok_and(|out| out.status.success())
}

/// A venv at target/pyenv with tests/clients/python/requirements.txt installed (psycopg 3 with
/// its bundled libpq), made or refreshed when missing, broken or behind the requirements.
fn python_client(mode: Mode) -> Result<Found> {
    let root = workspace_root();
    let venv = root.join(PYTHON_VENV);
    let requirements = root.join(PYTHON_REQUIREMENTS);
    let label = format!("python client venv ({PYTHON_VENV}, {PYTHON_REQUIREMENTS})");
    if python_venv_current(&venv, &requirements) {
        println!("setup: {label} present");
        return Ok(Found::Present);
    }
    if mode == Mode::Check {
        println!("setup: {label} missing");
        return Ok(Found::Missing);
    }
    println!("setup: {label} installing");
    let python = venv.join("bin").join("python");
    let runs = cmd::output(Command::new(&python).args(["-c", "import sys"]))
        .is_ok_and(|out| out.status.success());
    if !runs {
        let system = system_python()?;
        cmd::run(
            Command::new(&system)
                .args(["-m", "venv", "--clear"])
                .arg(&venv),
        )
        .with_context(|| {
            format!(
                "`{} -m venv` failed: on Debian install python3-venv (`cargo xtask setup` as \
                 root does)",
                system.display()
            )
        })?;
    }
    cmd::run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
            ])
            .arg(&requirements),
    )?;
    fs::copy(&requirements, venv.join(PYTHON_STAMP)).with_context(|| {
        format!(
            "cannot copy {} into {}",
            requirements.display(),
            venv.display()
        )
    })?;
    if !python_venv_current(&venv, &requirements) {
        bail!(
            "pip installed {} but `{} -c 'import psycopg'` still fails",
            requirements.display(),
            python.display()
        );
    }
    Ok(Found::Installed)
}

/// `cargo fuzz --version`'s output when cargo-fuzz runs.
fn cargo_fuzz_version() -> Option<String> {
    let out = cmd::output(cmd::cargo().args(["fuzz", "--version"])).ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// cargo-fuzz, for the decoder's fuzz target (agent/fuzz, run with the nightly by the suite's
/// `fuzz` step).
fn cargo_fuzz(mode: Mode) -> Result<Found> {
    if let Some(version) = cargo_fuzz_version() {
        println!("setup: {version} present");
        return Ok(Found::Present);
    }
    if mode == Mode::Check {
        println!("setup: cargo-fuzz missing");
        return Ok(Found::Missing);
    }
    println!("setup: cargo-fuzz installing (builds from source, ~1 minute)");
    cmd::run(cmd::cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    let Some(version) = cargo_fuzz_version() else {
        bail!("`cargo install cargo-fuzz` succeeded but `cargo fuzz --version` still fails");
    };
    println!("setup: {version} installed");
    Ok(Found::Installed)
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
    fn freshness_compares_modification_times() {
        let dir = std::env::temp_dir().join(format!("xtask-fresh-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (old, new) = (dir.join("old"), dir.join("new"));
        fs::write(&old, "").unwrap();
        fs::write(&new, "").unwrap();
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(past)
            .unwrap();
        assert!(newer_than_all(&new, std::slice::from_ref(&old)));
        assert!(!newer_than_all(&old, std::slice::from_ref(&new)));
        assert!(!newer_than_all(&dir.join("absent"), &[old]));
        assert!(newer_than_all(&new, &[]));
        fs::remove_dir_all(&dir).unwrap();
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
