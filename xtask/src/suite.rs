//! `cargo xtask test`: every check CI runs, in order, failing fast: setup, fmt, clippy (host and
//! eBPF), build, unit tests, 30 s of fuzzing the protocol decoder, the end-to-end suite, which
//! needs root and never skips silently, and a smoke run of the bench.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{cmd, setup};

/// One finished step, for the closing summary.
struct Done {
    name: &'static str,
    took: Duration,
}

/// State shared by the steps: PATH for child processes (with bpf-linker's directory on it) and
/// what has run so far.
struct Suite {
    path: OsString,
    done: Vec<Done>,
}

pub fn run() -> Result<ExitCode> {
    let mut suite = Suite {
        path: std::env::var_os("PATH").unwrap_or_default(),
        done: Vec::new(),
    };
    let started = Instant::now();
    let result = suite.all();
    suite.summary(
        result.as_ref().err().map(|(name, _)| *name),
        started.elapsed(),
    );
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err((name, err)) => Err(err.context(format!("step `{name}` failed"))),
    }
}

impl Suite {
    fn all(&mut self) -> Result<(), (&'static str, anyhow::Error)> {
        self.step("setup", Self::setup)?;
        self.step("fmt", |s| {
            cmd::run(s.cargo().args(["fmt", "--all", "--", "--check"]))
        })?;
        self.step("clippy", |s| {
            cmd::run(
                s.cargo()
                    .args(["clippy", "--all-targets", "--", "-D", "warnings"]),
            )
        })?;
        self.step("clippy-ebpf", Self::clippy_ebpf)?;
        self.step("build", |s| {
            cmd::run(s.cargo().args(["build", "-p", "pgwarden"]))
        })?;
        self.step("unit-tests", |s| {
            cmd::run(s.cargo().args([
                "test",
                "--workspace",
                "--exclude",
                "pgwarden-e2e",
                "--exclude",
                "agent-ebpf",
            ]))
        })?;
        self.step("fuzz", Self::fuzz)?;
        self.step("e2e", Self::e2e)?;
        self.step("bench-smoke", Self::bench_smoke)?;
        Ok(())
    }

    fn step(
        &mut self,
        name: &'static str,
        body: impl FnOnce(&mut Self) -> Result<()>,
    ) -> Result<(), (&'static str, anyhow::Error)> {
        println!("\n==> {name}");
        let start = Instant::now();
        match body(self) {
            Ok(()) => {
                self.done.push(Done {
                    name,
                    took: start.elapsed(),
                });
                Ok(())
            }
            Err(err) => {
                println!("==> {name} FAILED");
                Err((name, err))
            }
        }
    }

    /// A cargo command for the toolchain running this task, with our PATH.
    fn cargo(&self) -> Command {
        let mut cargo = cmd::cargo();
        cargo.env("PATH", &self.path);
        cargo
    }

    fn setup(&mut self) -> Result<()> {
        let outcome = setup::run(setup::Mode::Install)?;
        // aya-build (from agent/build.rs) runs bpf-linker by name: make sure it is on PATH even
        // when ~/.cargo/bin is not.
        if let Some(dir) = outcome.bpf_linker.as_deref().and_then(|p| p.parent()) {
            self.path = cmd::path_with(dir)?;
        }
        Ok(())
    }

    /// Lints the eBPF crate for its real target. It is not a default member (it only builds for
    /// bpfel-unknown-none with the nightly and build-std), so the host clippy never sees it.
    fn clippy_ebpf(&mut self) -> Result<()> {
        let rustup = cmd::find_tool("rustup").context("rustup not found")?;
        let mut clippy = Command::new(rustup);
        clippy.env("PATH", &self.path).args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "-p",
            "agent-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
            "--",
            "-D",
            "warnings",
        ]);
        cmd::run(&mut clippy)
    }

    /// Fuzzes the protocol decoder (agent/fuzz, target `wire_decode`) for 30 s with the nightly
    /// (libFuzzer and the sanitizers need it); a crash fails the step and leaves the input in
    /// agent/fuzz/artifacts/wire_decode/. The corpus in agent/fuzz/corpus/ grows across runs.
    fn fuzz(&mut self) -> Result<()> {
        let rustup = cmd::find_tool("rustup").context("rustup not found")?;
        let agent = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask lives inside the workspace")?
            .join("agent");
        let mut fuzz = Command::new(rustup);
        fuzz.env("PATH", &self.path).current_dir(&agent).args([
            "run",
            "nightly",
            "cargo",
            "fuzz",
            "run",
            "wire_decode",
            "--",
            "-max_total_time=30",
            "-rss_limit_mb=2048",
        ]);
        cmd::run(&mut fuzz)
    }

    fn e2e(&mut self) -> Result<()> {
        if !cmd::is_root() {
            eprintln!(
                "\n\
                 ************************************************************************\n\
                 ERROR: the end-to-end tests need root (eBPF programs, cgroups, a\n\
                 PostgreSQL server run as the postgres user); this is uid {}.\n\
                 Run `cargo xtask test` as root. The suite refuses to pass without them.\n\
                 ************************************************************************\n",
                cmd::effective_uid().map_or_else(|| "unknown".to_owned(), |u| u.to_string())
            );
            bail!("end-to-end tests need root");
        }
        let bin = self.target_dir()?.join("debug").join("pgwarden");
        if !bin.is_file() {
            bail!("{} is missing after the build step", bin.display());
        }
        cmd::run(self.cargo().env("PGWARDEN_BIN", &bin).args([
            "test",
            "-p",
            "pgwarden-e2e",
            "--",
            "--test-threads=1",
        ]))
    }

    /// `cargo xtask bench --smoke` with the debug build: every bench section at tiny sizes, so
    /// the bench cannot rot. It asserts no timing and writes target/bench-smoke/, never
    /// BENCHMARKS.md.
    fn bench_smoke(&mut self) -> Result<()> {
        let bin = self.target_dir()?.join("debug").join("pgwarden");
        let xtask = std::env::current_exe().context("cannot find the xtask binary")?;
        let mut smoke = Command::new(xtask);
        smoke
            .env("PATH", &self.path)
            .args(["bench", "--smoke", "--pgwarden"])
            .arg(&bin);
        cmd::run(&mut smoke)
    }

    fn target_dir(&self) -> Result<PathBuf> {
        let json =
            cmd::stdout_of(
                self.cargo()
                    .args(["metadata", "--format-version", "1", "--no-deps"]),
            )?;
        let metadata: serde_json::Value =
            serde_json::from_str(&json).context("cannot parse `cargo metadata` output")?;
        metadata["target_directory"]
            .as_str()
            .map(PathBuf::from)
            .context("`cargo metadata` has no target_directory")
    }

    fn summary(&self, failed: Option<&'static str>, took: Duration) {
        let mut text = String::from("\n==> summary\n");
        for done in &self.done {
            let _ = writeln!(
                text,
                "  ok      {:<12} {:>7.1}s",
                done.name,
                done.took.as_secs_f64()
            );
        }
        if let Some(name) = failed {
            let _ = writeln!(text, "  FAILED  {name}");
        }
        match failed {
            None => {
                let _ = write!(
                    text,
                    "all {} steps passed in {:.1}s",
                    self.done.len(),
                    took.as_secs_f64()
                );
            }
            Some(name) => {
                let _ = write!(
                    text,
                    "cargo xtask test FAILED at step `{name}` after {:.1}s",
                    took.as_secs_f64()
                );
            }
        }
        println!("{text}");
    }
}
