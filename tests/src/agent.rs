//! The pgwarden daemon under test: started from a YAML config with `pgwarden run`, ready once
//! `pgwarden status` answers on its control socket, stopped with SIGTERM (then SIGKILL) on drop.

use std::env;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::process::{describe, dump_output, run_output};

/// How long [`Agent::start`] waits for the control socket to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long drop waits after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `pgwarden run --config <tmp>/pgwarden.yaml`, logging (RUST_LOG=debug) to
/// `<tmp>/agent.log`.
pub struct Agent {
    bin: PathBuf,
    control: PathBuf,
    tmp: TempDir,
    child: Child,
    /// Set once a panic message carried the log, so drop does not print it twice.
    log_shown: bool,
    /// Leave the pinned programs in place on drop (another agent adopts them).
    keep_pins: bool,
}

impl Agent {
    /// Writes `config_yaml` to `<tmp>/pgwarden.yaml`, starts the daemon and waits until
    /// `pgwarden status --json --control <control_socket>` succeeds. `control_socket` must be the
    /// path the YAML gives under `control: { socket: ... }`; put it in a directory the test owns
    /// (the agent's temp dir does not exist before this call).
    ///
    /// The binary is `$PGWARDEN_BIN`, else `pgwarden` in the target directory this test was built
    /// into (`cargo xtask test` builds it; plain `cargo test -p pgwarden-e2e` does not).
    ///
    /// # Panics
    ///
    /// When the binary is missing, or the daemon exits or is not ready within 20 s; the message
    /// includes the agent log.
    #[track_caller]
    pub fn start(config_yaml: &str, control_socket: &Path) -> Agent {
        Self::start_with_args(config_yaml, control_socket, &[])
    }

    /// As [`Agent::start`], with extra arguments after `run --config FILE`.
    ///
    /// # Panics
    ///
    /// As [`Agent::start`].
    #[track_caller]
    pub fn start_with_args(config_yaml: &str, control_socket: &Path, extra: &[&str]) -> Agent {
        Self::start_bin(agent_bin(), config_yaml, control_socket, extra)
    }

    /// As [`Agent::start_with_args`], running the pgwarden binary `bin` (`cargo xtask demo`
    /// runs its release build).
    ///
    /// # Panics
    ///
    /// As [`Agent::start`].
    #[track_caller]
    pub fn start_bin(
        bin: PathBuf,
        config_yaml: &str,
        control_socket: &Path,
        extra: &[&str],
    ) -> Agent {
        let tmp = tempfile::Builder::new()
            .prefix("pgwarden-agent-")
            .tempdir_in("/tmp")
            .expect("cannot create a temp dir under /tmp");
        let config = tmp.path().join("pgwarden.yaml");
        // Each agent pins its kernel state in its own bpffs directory, detached on drop.
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/pgwarden-test-{}",
            tmp.path()
                .file_name()
                .map_or_else(|| "x".into(), |n| n.to_string_lossy().into_owned())
        ));
        let mut config_yaml = if config_yaml.contains("pin_dir:") {
            config_yaml.to_owned()
        } else {
            format!("{config_yaml}\nbpf:\n  pin_dir: {}\n", pin_dir.display())
        };
        // And its own audit journal (and the chain's head beside it, not in the host's
        // /var/lib/pgwarden), unless the test chose one.
        if !config_yaml.starts_with("audit:") && !config_yaml.contains("\naudit:") {
            config_yaml.push_str(&format!(
                "audit:\n  path: {}\n  state_dir: {}\n",
                tmp.path().join("audit.jsonl").display(),
                tmp.path().join("state").display()
            ));
        }
        fs::write(&config, &config_yaml)
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", config.display()));
        let log_path = tmp.path().join("agent.log");
        let log = File::create(&log_path)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", log_path.display()));
        let log_err = log
            .try_clone()
            .expect("cannot duplicate the log file handle");
        let child = Command::new(&bin)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(extra)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", bin.display()));
        // Built before waiting, so a panic below still stops the daemon (Drop).
        let mut agent = Agent {
            bin,
            control: control_socket.to_path_buf(),
            tmp,
            child,
            log_shown: false,
            keep_pins: false,
        };
        agent.wait_ready();
        agent
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.log_shown = true;
                    panic!(
                        "pgwarden exited during startup ({status})\n--- agent log ---\n{}",
                        self.log()
                    )
                }
                Ok(None) => {}
                Err(err) => panic!("cannot poll the pgwarden process: {err}"),
            }
            let out = self.cli(&["status", "--json"]);
            if out.status.success() {
                return;
            }
            if Instant::now() >= deadline {
                self.log_shown = true;
                panic!(
                    "pgwarden not ready after {READY_TIMEOUT:?}: `status` on {} still fails\n\
                     {}\n--- agent log ---\n{}",
                    self.control.display(),
                    dump_output(&out),
                    self.log()
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// Runs the pgwarden CLI with `args` followed by `--control <socket>`; any exit status.
    pub fn cli(&self, args: &[&str]) -> Output {
        run_output(
            Command::new(&self.bin)
                .args(args)
                .arg("--control")
                .arg(&self.control),
        )
    }

    /// `pgwarden status --json`, parsed.
    ///
    /// # Panics
    ///
    /// When the command fails or does not print JSON.
    #[track_caller]
    pub fn status(&self) -> serde_json::Value {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["status", "--json", "--control"])
            .arg(&self.control);
        let out = run_output(&mut cmd);
        assert!(
            out.status.success(),
            "{} failed: {}\n{}",
            describe(&cmd),
            out.status,
            dump_output(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
            panic!(
                "`pgwarden status --json` printed no JSON ({err})\n{}",
                dump_output(&out)
            )
        })
    }

    /// Where the daemon's stdout and stderr go.
    pub fn log_path(&self) -> PathBuf {
        self.tmp.path().join("agent.log")
    }

    /// The daemon's stdout and stderr so far.
    pub fn log(&self) -> String {
        let path = self.tmp.path().join("agent.log");
        fs::read_to_string(&path)
            .unwrap_or_else(|err| format!("(cannot read {}: {err})", path.display()))
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the agent with SIGKILL, as a crash would, leaving its pinned programs attached
    /// for the next agent to adopt.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.keep_pins = true;
    }

    /// The YAML the agent was started with (with the pin directory the harness added).
    #[must_use]
    pub fn config_yaml(&self) -> String {
        fs::read_to_string(self.tmp.path().join("pgwarden.yaml")).unwrap_or_default()
    }

    /// The records of the journal the harness gave the agent (`audit.jsonl` in its temp dir,
    /// when the test chose none), parsed; empty when there is none.
    #[must_use]
    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(self.tmp.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The pgwarden binary it runs (for CLI commands that need no agent, e.g. `audit tail`).
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The agent's temp dir (holds `pgwarden.yaml` and `agent.log`).
    pub fn tmp_dir(&self) -> &Path {
        self.tmp.path()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            let deadline = Instant::now() + STOP_TIMEOUT;
            while matches!(self.child.try_wait(), Ok(None)) {
                if Instant::now() >= deadline {
                    eprintln!("warning: pgwarden ignored SIGTERM for {STOP_TIMEOUT:?}; killing it");
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                sleep(Duration::from_millis(20));
            }
        }
        // Pinned programs outlive the agent by design: a test detaches them, as an operator
        // would with `pgwarden detach`.
        if self.keep_pins {
            return;
        }
        let _ = Command::new(&self.bin)
            .args(["detach", "--config"])
            .arg(self.tmp.path().join("pgwarden.yaml"))
            .output();
        // A failing test gets the daemon's side of the story.
        if std::thread::panicking() && !self.log_shown {
            eprintln!(
                "--- pgwarden agent log ---\n{}\n--- end of agent log ---",
                self.log()
            );
        }
    }
}

/// `$PGWARDEN_BIN`, else `pgwarden` beside the test binary's profile directory
/// (`target/debug/deps/<test>` -> `target/debug/pgwarden`), else `<workspace>/target/debug/pgwarden`.
fn agent_bin() -> PathBuf {
    if let Some(bin) = env::var_os("PGWARDEN_BIN").filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "PGWARDEN_BIN={} does not exist; build it with `cargo build -p pgwarden`",
            bin.display()
        );
        return bin;
    }
    let beside_tests = env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("pgwarden")));
    let in_workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|ws| ws.join("target").join("debug").join("pgwarden"));
    let mut candidates: Vec<PathBuf> = beside_tests.into_iter().chain(in_workspace).collect();
    candidates.dedup();
    if let Some(bin) = candidates.iter().find(|c| c.is_file()) {
        return bin.clone();
    }
    panic!(
        "\n\
         ************************************************************************\n\
         the pgwarden binary is missing (looked at {candidates:?}).\n\
         Build it first (`cargo build -p pgwarden`) or set PGWARDEN_BIN;\n\
         `cargo xtask test` does both.\n\
         ************************************************************************\n"
    );
}
