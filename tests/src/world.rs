//! The world most end-to-end tests start from: a PostgreSQL server and a pgwarden agent that
//! intercepts its port for the workloads a test names, plus the checks tests make against both.

use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::agent::Agent;
use crate::cgroup::{TestCgroup, in_cgroup, unique_name};
use crate::net::free_port;
use crate::pg::{PgServer, pg_bin};
use crate::process::require_root;

/// How long [`World::session_of`] and [`World::wait_no_sessions`] wait.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// PostgreSQL, an agent intercepting any address on PostgreSQL's port, and the directory that
/// holds the agent's control socket. Fields drop in order: the agent stops before PostgreSQL.
pub struct World {
    pub agent: Agent,
    pub pg: PgServer,
    _control_dir: TempDir,
}

/// Starts PostgreSQL and an agent whose config has these `workloads:` entries (YAML list items
/// indented two spaces, e.g. `"  - name: app\n    cgroup: \"x\"\n"`), intercepting `*:PORT` where
/// PORT is PostgreSQL's, listening on free loopback ports, rescanning cgroups every 2 s.
///
/// # Panics
///
/// When not root, or PostgreSQL or the agent cannot start.
#[track_caller]
pub fn world_with_workload(workloads_yaml: &str) -> World {
    require_root();
    let pg = PgServer::start();
    let control_dir = tempfile::tempdir().expect("cannot create a temp dir");
    let control = control_dir.path().join("control.sock");
    let listen = free_port();
    let config = format!(
        "listen:\n  ipv4: 127.0.0.1:{listen}\n  ipv6: \"[::1]:{listen}\"\ncontrol:\n  socket: {}\n\
         intercept:\n  - \"*:{}\"\ncgroups:\n  rescan_seconds: 2\nworkloads:\n{workloads_yaml}",
        control.display(),
        pg.port
    );
    let agent = Agent::start(&config, &control);
    World {
        agent,
        pg,
        _control_dir: control_dir,
    }
}

/// A fresh cgroup named `prefix-<pid>-<n>` and a world whose workload `workload` is exactly that
/// cgroup, under the repository's allow-all policy (a workload without a policy is denied
/// everything): for tests of the data path rather than of policy. Bind the result as
/// `let (cg, w) = ...` so the world stops before the cgroup goes.
///
/// # Panics
///
/// As [`world_with_workload`], or when the cgroup cannot be created.
#[track_caller]
pub fn tagged_world(prefix: &str, workload: &str) -> (TestCgroup, World) {
    require_root();
    let cg = TestCgroup::create(&unique_name(prefix));
    let world = world_with_workload(&format!(
        "  - name: {workload}\n    cgroup: \"{}\"\n    policy: {}\n    profile: allow-all\n",
        cg.rel,
        crate::policy_path("allow-all.yaml").display()
    ));
    (cg, world)
}

/// An agent config as [`world_with_workload`] writes it, for PostgreSQL on `pg_port`, with its
/// control socket at `control`, a free listen port, these `workloads:` entries, and
/// `extra_yaml` (more top-level keys: `limits:`, `tls:`, `upstream:`, ...) appended.
pub fn agent_config(
    pg_port: u16,
    control: &std::path::Path,
    workloads_yaml: &str,
    extra_yaml: &str,
) -> String {
    let listen = free_port();
    format!(
        "listen:\n  ipv4: 127.0.0.1:{listen}\n  ipv6: \"[::1]:{listen}\"\ncontrol:\n  socket: {}\n\
         intercept:\n  - \"*:{pg_port}\"\ncgroups:\n  rescan_seconds: 2\nworkloads:\n{workloads_yaml}\
         {extra_yaml}",
        control.display(),
    )
}

/// A `workloads:` entry naming `workload` for exactly `cg`, under the repository's allow-all
/// policy (as [`tagged_world`] makes).
pub fn allow_all_workload(workload: &str, cg: &TestCgroup) -> String {
    format!(
        "  - name: {workload}\n    cgroup: \"{}\"\n    policy: {}\n    profile: allow-all\n",
        cg.rel,
        crate::policy_path("allow-all.yaml").display()
    )
}

/// As [`world_with_workload`], with `extra_yaml` (top-level keys such as `limits:`) added to
/// the agent's config.
///
/// # Panics
///
/// As [`world_with_workload`].
#[track_caller]
pub fn world_with_config(workloads_yaml: &str, extra_yaml: &str) -> World {
    require_root();
    let pg = PgServer::start();
    let control_dir = tempfile::tempdir().expect("cannot create a temp dir");
    let control = control_dir.path().join("control.sock");
    let config = agent_config(pg.port, &control, workloads_yaml, extra_yaml);
    let agent = Agent::start(&config, &control);
    World {
        agent,
        pg,
        _control_dir: control_dir,
    }
}

impl World {
    /// The agent's kernel counter `name` (`redirected`, `sticky_tagged`, ...).
    ///
    /// # Panics
    ///
    /// When `status --json` has no such counter.
    #[track_caller]
    pub fn counter(&self, name: &str) -> u64 {
        let status = self.agent.status();
        status["counters"][name].as_u64().unwrap_or_else(|| {
            panic!("no counter {name:?} in `pgwarden status --json`: {status:#}")
        })
    }

    /// Connects the kernel redirected to the interceptor so far.
    #[track_caller]
    pub fn redirected(&self) -> u64 {
        self.counter("redirected")
    }

    /// Asserts that exactly `n` connects were redirected since the counter read `before`: the
    /// proof that `what` went through pgwarden rather than straight to PostgreSQL.
    ///
    /// # Panics
    ///
    /// When the count differs; the message carries the agent log.
    #[track_caller]
    pub fn assert_redirected(&self, before: u64, n: u64, what: &str) {
        let now = self.redirected();
        assert_eq!(
            now - before,
            n,
            "{what}: expected {n} redirected connect(s), the counter went {before} -> {now}\n\
             --- agent log ---\n{}",
            self.agent.log()
        );
    }

    /// Waits up to 10 s for a live session whose client pid is `pid` and returns it.
    ///
    /// # Panics
    ///
    /// When none shows up; the message carries the last status and the agent log.
    #[track_caller]
    pub fn session_of(&self, pid: u32) -> Value {
        let deadline = Instant::now() + SESSION_TIMEOUT;
        loop {
            let status = self.agent.status();
            if let Some(s) = status["sessions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["identity"]["pid"].as_u64() == Some(u64::from(pid)))
            {
                return s.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no session for pid {pid}; status: {status:#}\n--- agent log ---\n{}",
                self.agent.log()
            );
            sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to 10 s until the agent lists no live session (every relayed connection has
    /// been torn down on both sides).
    ///
    /// # Panics
    ///
    /// When sessions remain; the message lists them and carries the agent log.
    #[track_caller]
    pub fn wait_no_sessions(&self) {
        let deadline = Instant::now() + SESSION_TIMEOUT;
        loop {
            let status = self.agent.status();
            let sessions = status["sessions"].as_array().cloned().unwrap_or_default();
            if sessions.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sessions still open {SESSION_TIMEOUT:?} after their clients finished: \
                 {sessions:#?}\n--- agent log ---\n{}",
                self.agent.log()
            );
            sleep(Duration::from_millis(50));
        }
    }

    /// psql (PostgreSQL 15's) with `-X -v ON_ERROR_STOP=1 -At -d URL` for `host` and
    /// PostgreSQL's port, run in `cg` (or outside any test cgroup with `None`); add `-c` and
    /// other arguments.
    pub fn psql_cmd(&self, cg: Option<&TestCgroup>, host: &str) -> Command {
        let psql = pg_bin("psql");
        let mut cmd = match cg {
            Some(cg) => in_cgroup(&cg.path, &psql.to_string_lossy()),
            None => Command::new(psql),
        };
        cmd.args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-d"])
            .arg(self.pg.url(host));
        cmd
    }

    /// [`World::psql_cmd`] running `sql` with `-c`.
    pub fn psql(&self, cg: Option<&TestCgroup>, host: &str, sql: &str) -> Command {
        let mut cmd = self.psql_cmd(cg, host);
        cmd.args(["-c", sql]);
        cmd
    }
}
