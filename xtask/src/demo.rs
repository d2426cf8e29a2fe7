//! `cargo xtask demo`: PostgreSQL seeded with the payments schema, pgwarden under
//! policies/pci-dss.yaml, and the unchanged MCP server for PostgreSQL in a tagged cgroup, driven
//! over MCP stdio; everything it starts is stopped and removed on exit, error or Ctrl-C.

mod audit;
mod interrupt;
mod scenario;

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use anyhow::{Context, Result, bail};
use pgwarden_e2e::{
    Agent, DEMO_WORKLOAD, DemoConfig, McpServer, PgServer, TestCgroup, client_dir, demo_seed_sql,
    mcp_server, pg_bin, policy_path, unique_name, workspace_root,
};
use serde_json::Value;

use crate::{cmd, setup};
use interrupt::Interrupt;
use scenario::{Scenario, say, text};

/// What `cargo xtask demo` was asked for.
pub struct Options {
    /// Leave PostgreSQL and pgwarden running after the scenario, until Ctrl-C.
    pub keep: bool,
}

/// Runs the demo. Ctrl-C (or SIGTERM, SIGHUP) at any point stops it, cleans up and exits 130;
/// with `--keep` it is how the demo ends, and exits 0.
pub fn run(options: &Options) -> Result<ExitCode> {
    let interrupt = Interrupt::install()?;
    // The harness panics on failure; unwinding runs the same cleanup as an error does. A panic
    // caused by the interrupt itself (a child that took the terminal's SIGINT) says nothing.
    let default_hook = panic::take_hook();
    let fired = interrupt.flag();
    panic::set_hook(Box::new(move |info| {
        if !fired.load(std::sync::atomic::Ordering::SeqCst) {
            default_hook(info);
        }
    }));
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| demo(options, &interrupt)));
    let _ = panic::take_hook();
    match outcome {
        Ok(Ok(())) => Ok(ExitCode::SUCCESS),
        _ if interrupt.fired() => {
            println!("demo: interrupted; everything it started is stopped and removed");
            Ok(ExitCode::from(130))
        }
        Ok(Err(err)) => Err(err),
        Err(panicked) => panic::resume_unwind(panicked),
    }
}

fn demo(options: &Options, interrupt: &Interrupt) -> Result<()> {
    if !cmd::is_root() {
        bail!("the demo loads eBPF programs and creates a cgroup: run `cargo xtask demo` as root");
    }
    println!(
        "pgwarden demo: the unchanged MCP server for PostgreSQL (@modelcontextprotocol/server-postgres)\n\
         reads a payments database. It connects to PostgreSQL's real address; its cgroup is tagged as\n\
         workload `{DEMO_WORKLOAD}`, so pgwarden's eBPF redirect hands the connection to pgwarden,\n\
         which enforces policies/pci-dss.yaml (profile `reader`)."
    );

    section("setup (installs only what is missing)");
    let outcome = setup::run(setup::Mode::Install)?;
    if !outcome.missing.is_empty() {
        bail!("setup left {} missing", outcome.missing.join(", "));
    }
    interrupt.check()?;

    section("building pgwarden (release)");
    let bin = build_release()?;
    interrupt.check()?;

    let dir = Cleanup::new(
        tempfile::Builder::new()
            .prefix("pgwarden-demo-")
            .tempdir_in("/tmp")
            .context("cannot create a temp dir under /tmp")?,
        |dir| {
            let path = dir.path().display().to_string();
            match dir.close() {
                Ok(()) => format!("removed {path}"),
                Err(err) => format!("cannot remove {path}: {err}"),
            }
        },
    );

    section("starting PostgreSQL 15 (initdb in a temp dir, run as the postgres user)");
    let pg = Cleanup::new(PgServer::start(), |pg| {
        let data = pg.dir.path().display().to_string();
        drop(pg);
        format!("stopped PostgreSQL, removed {data}")
    });
    say(&format!(
        "ready on 127.0.0.1:{port} and [::1]:{port}, data in {}",
        pg.dir.path().display(),
        port = pg.port
    ));
    interrupt.check()?;
    pg.psql_direct(&demo_seed_sql());
    let counts = pg.psql_direct(
        "SELECT (SELECT count(*) FROM payments) || ' payments, ' || \
         (SELECT count(*) FROM customers) || ' customers, ' || \
         (SELECT count(*) FROM secrets) || ' secrets'",
    );
    say(&format!(
        "seeded from demo/seed.sql: {counts} (synthetic, Luhn-valid card numbers)"
    ));

    section("creating the workload's cgroup");
    let cg = Cleanup::new(TestCgroup::create(&unique_name("pgwarden-demo")), |cg| {
        let path = cg.path.display().to_string();
        match cg.remove() {
            Ok(()) => format!("removed cgroup {path}"),
            Err(err) => format!("cannot remove cgroup {path}: {err:#}"),
        }
    });
    say(&cg.path.display().to_string());

    section("starting pgwarden");
    let key = dir.path().join("mask.key");
    write_random_key(&key)?;
    let control = dir.path().join("control.sock");
    let policy = policy_path("pci-dss.yaml");
    let config = DemoConfig {
        pg_port: pg.port,
        control: &control,
        cgroup: &cg.rel,
        policy: &policy,
        hash_key_file: &key,
        audit_file: &dir.path().join("audit.jsonl"),
        pg_socket_dir: pg.dir.path(),
    }
    .render();
    let agent = Cleanup::new(Agent::start_bin(bin.clone(), &config, &control, &[]), |a| {
        drop(a);
        "stopped pgwarden".to_owned()
    });
    let config_file = agent.tmp_dir().join("pgwarden.yaml");
    say(&format!(
        "{} run --config {}",
        bin.display(),
        config_file.display()
    ));
    say(&format!(
        "ready: cgroup {} is workload {DEMO_WORKLOAD}, policy {} (profile reader)",
        cg.rel,
        policy
            .canonicalize()
            .unwrap_or_else(|_| policy.clone())
            .display()
    ));
    say(&format!(
        "log: {}",
        agent.tmp_dir().join("agent.log").display()
    ));
    interrupt.check()?;

    section("starting the MCP server in the cgroup");
    let url = pg.url("127.0.0.1");
    let mut command = mcp_server(&cg.path, &url);
    // Its own process group: the terminal's Ctrl-C is the demo's to handle, in order.
    command.process_group(0);
    say(&format!(
        "@modelcontextprotocol/server-postgres {}, pointed at PostgreSQL's real address {url}",
        mcp_server_version()
    ));
    let mut mcp = Cleanup::new(McpServer::spawn(command)?, |mut mcp| {
        let pid = mcp.pid();
        match mcp.stop() {
            Ok(_) => format!("stopped the MCP server (pid {pid})"),
            Err(err) => format!("cannot stop the MCP server (pid {pid}): {err:#}"),
        }
    });
    let init = mcp.initialize("pgwarden-demo")?;
    say(&format!(
        "MCP initialize: server {} {}, protocol {}, pid {}",
        text(&init["serverInfo"]["name"]),
        text(&init["serverInfo"]["version"]),
        text(&init["protocolVersion"]),
        mcp.pid()
    ));

    let mut scenario = Scenario::new(&mut mcp, &agent, &pg, interrupt);
    scenario.run()?;
    let mut sessions: Vec<String> = scenario.sessions.iter().cloned().collect();
    interrupt.check()?;
    sessions.push(unix_socket_step(&cg, &pg, &dir.path().join("audit.jsonl"))?);
    audit::show(&bin, &config_file, &sessions)?;

    println!();
    drop(mcp);
    if options.keep {
        keep_running(&bin, &control, &cg, &pg, &agent);
        interrupt.wait();
    }
    Ok(())
}

/// The same tagged cgroup, over PostgreSQL's Unix socket (libpq's default transport on a
/// database host): pgwarden intercepts that too. Returns the session's id from the journal.
fn unix_socket_step(cg: &TestCgroup, pg: &PgServer, journal: &Path) -> Result<String> {
    let sql = "SELECT id, card_number FROM payments ORDER BY id LIMIT 3";
    let dir = pg.dir.path();
    println!("\n[8] the same cgroup, over PostgreSQL's Unix socket");
    say(&format!(
        "psql -h {} -p {} -c \"{sql}\" (no TCP at all)",
        dir.display(),
        pg.port
    ));
    let psql = pg_bin("psql");
    let mut command = pgwarden_e2e::in_cgroup(&cg.path, &psql.to_string_lossy());
    command
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(dir)
        .args([
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            sql,
        ]);
    let out = cmd::output(&mut command)?;
    if !out.status.success() {
        bail!(
            "psql over the Unix socket failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let shown = String::from_utf8_lossy(&out.stdout);
    for line in shown.lines() {
        say(&format!("  {line}"));
    }
    let starts: Vec<Value> = fs::read_to_string(journal)?
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["event"] == "session.start" && r["server"]["path"].is_string())
        .collect();
    let Some(start) = starts.last() else {
        bail!("the journal has no session over a Unix socket: the connection was not intercepted");
    };
    if !shown.contains("******") {
        bail!("the card numbers read over the Unix socket are not masked:\n{shown}");
    }
    say(&format!(
        "-> intercepted: pgwarden session {}, {} (pid {}) to {}, card numbers masked",
        text(&start["session_id"]),
        text(&start["actor"]["exe"]),
        text(&start["actor"]["pid"]),
        text(&start["server"]["path"]),
    ));
    Ok(text(&start["session_id"]))
}

/// Prints how to reach the demo's PostgreSQL with and without pgwarden.
fn keep_running(bin: &Path, control: &Path, cg: &TestCgroup, pg: &PgServer, agent: &Agent) {
    let psql = pg_bin("psql");
    let url = pg.url("127.0.0.1");
    section("PostgreSQL and pgwarden keep running; Ctrl-C stops them and removes everything");
    say("psql as the tagged workload (policy and masking apply):");
    say(&format!(
        "  sh -c 'echo $$ > {}/cgroup.procs; exec {} {url}'",
        cg.path.display(),
        psql.display()
    ));
    say("psql untagged (not intercepted: the real card numbers):");
    say(&format!("  {} {url}", psql.display()));
    say("pgwarden's view:");
    say(&format!(
        "  {} status --control {}",
        bin.display(),
        control.display()
    ));
    say(&format!(
        "  tail -f {}",
        agent.tmp_dir().join("agent.log").display()
    ));
    println!("waiting for Ctrl-C");
}

/// `cargo build --release -p pgwarden`, echoed, and the path of the binary it made.
fn build_release() -> Result<PathBuf> {
    let mut build = cmd::cargo();
    build
        .current_dir(workspace_root())
        .args(["build", "--release", "-p", "pgwarden"])
        .arg("--message-format=json-render-diagnostics");
    let line = cmd::describe(&build);
    println!("+ {line}");
    let out = build
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !out.status.success() {
        bail!("`{line}` failed: {}", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "pgwarden")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("`{line}` named no pgwarden executable"))
}

/// The pinned version of the MCP server, from its package.json.
fn mcp_server_version() -> String {
    let manifest =
        client_dir("mcp").join("node_modules/@modelcontextprotocol/server-postgres/package.json");
    fs::read(&manifest)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .map_or_else(|| "?".to_owned(), |v| text(&v["version"]))
}

/// 32 random bytes from /dev/urandom, hex, in a new file only root can read: the key of the
/// `hash` masking method.
fn write_random_key(path: &Path) -> Result<()> {
    let mut key = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .context("cannot read /dev/urandom")?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(hex.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Prints a section header.
fn section(title: &str) {
    println!("\n==> {title}");
}

/// Something the demo started or made, undone when dropped (normal end, error, panic, Ctrl-C),
/// with a line saying what was done. Declared in start order, they drop in reverse.
struct Cleanup<T> {
    inner: Option<T>,
    undo: Option<Box<dyn FnOnce(T) -> String>>,
}

impl<T> Cleanup<T> {
    fn new(inner: T, undo: impl FnOnce(T) -> String + 'static) -> Self {
        Cleanup {
            inner: Some(inner),
            undo: Some(Box::new(undo)),
        }
    }
}

impl<T> Deref for Cleanup<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.inner.as_ref().expect("present until dropped")
    }
}

impl<T> DerefMut for Cleanup<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.inner.as_mut().expect("present until dropped")
    }
}

impl<T> Drop for Cleanup<T> {
    fn drop(&mut self) {
        if let (Some(inner), Some(undo)) = (self.inner.take(), self.undo.take()) {
            println!("cleanup: {}", undo(inner));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanups_run_in_reverse_order() {
        let log = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        {
            let (a, b) = (log.clone(), log.clone());
            let _first = Cleanup::new(1, move |n| {
                a.borrow_mut().push(n);
                String::new()
            });
            let second = Cleanup::new(2, move |n| {
                b.borrow_mut().push(n);
                String::new()
            });
            assert_eq!(*second, 2);
        }
        assert_eq!(*log.borrow(), [2, 1]);
    }

    #[test]
    fn keys_are_64_hex_digits_for_root_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_random_key(&path).unwrap();
        let key = fs::read_to_string(&path).unwrap();
        assert_eq!(key.len(), 64);
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(write_random_key(&path).is_err(), "an existing key is kept");
    }
}
