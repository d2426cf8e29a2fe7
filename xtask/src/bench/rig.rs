//! What the bench runs against: one PostgreSQL 15 (run as `postgres` from a temp dir), one
//! PgBouncer in session mode, the bench's cgroups, and up to two pgwarden agents started from
//! generated configs; all stopped and removed on drop, on error and on Ctrl-C.

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, sleep};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::{Pid, User, chown};
use pgwarden_e2e::{Journald, TestCgroup, free_port, pg_bin, policy_path, unique_name};
use serde_json::Value;
use tempfile::TempDir;

use super::Plan;
use crate::cmd;

/// How long an agent gets to answer `status` after `run`.
const AGENT_READY: Duration = Duration::from_secs(30);
/// How long an agent gets to exit after SIGTERM before SIGKILL.
const AGENT_STOP: Duration = Duration::from_secs(15);
/// The OS user (and database superuser) PostgreSQL and PgBouncer run as.
const PG_USER: &str = "postgres";

/// Ctrl-C (SIGINT), SIGTERM and SIGHUP, taken by a thread with `sigwait` so the bench can stop
/// what it started. Children do not inherit the block (std clears the mask of what it spawns)
/// and take the terminal's SIGINT themselves, which fails the cell that was running.
pub struct Interrupt {
    fired: Arc<AtomicBool>,
}

impl Interrupt {
    /// Blocks the signals in this thread and every thread started afterwards (call it before
    /// starting any) and starts the thread that takes them.
    pub fn install() -> Result<Interrupt> {
        let mut set = SigSet::empty();
        for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            set.add(signal);
        }
        set.thread_block()
            .context("cannot block SIGINT/SIGTERM/SIGHUP")?;
        let fired = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&fired);
        thread::Builder::new()
            .name("bench-signals".into())
            .spawn(move || {
                while let Ok(signal) = set.wait() {
                    if !flag.swap(true, Ordering::SeqCst) {
                        eprintln!("\nbench: {signal}: stopping after the current step");
                    }
                }
            })
            .context("cannot start the signal thread")?;
        Ok(Interrupt { fired })
    }

    /// Whether a stop signal came.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// Fails once a stop signal came: called between cells.
    pub fn check(&self) -> Result<()> {
        if self.fired() {
            bail!("interrupted");
        }
        Ok(())
    }

    fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.fired)
    }
}

/// The `postgres` user's uid and gid.
fn pg_user() -> Result<(nix::unistd::Uid, nix::unistd::Gid)> {
    let user = User::from_name(PG_USER)
        .context("cannot read the user database")?
        .context("no `postgres` user: install postgresql-15 (`cargo xtask setup`)")?;
    Ok((user.uid, user.gid))
}

/// A directory owned by `postgres`.
fn postgres_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    let (uid, gid) = pg_user()?;
    chown(path, Some(uid), Some(gid)).with_context(|| format!("cannot chown {}", path.display()))
}

/// `program` run as `postgres` from `cwd`.
fn as_postgres(program: impl AsRef<std::ffi::OsStr>, cwd: &Path) -> Result<Command> {
    let (uid, gid) = pg_user()?;
    let mut command = Command::new(program);
    command
        .uid(uid.as_raw())
        .gid(gid.as_raw())
        .current_dir(cwd)
        .env("HOME", cwd);
    Ok(command)
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
fn wait_port(port: u16, timeout: Duration, what: &str) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        if Instant::now() >= deadline {
            bail!("{what} does not accept connections on 127.0.0.1:{port} after {timeout:?}");
        }
        sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The PostgreSQL server every side of the bench talks to.
pub struct Postgres {
    pub port: u16,
    /// Holds the data directory, the log and the Unix socket.
    pub dir: PathBuf,
}

impl Postgres {
    /// initdb in `dir` and start, listening on 127.0.0.1 only, with room for `max_connections`.
    fn start(dir: &Path, max_connections: u32) -> Result<Postgres> {
        postgres_dir(dir)?;
        let data = dir.join("data");
        cmd::stdout_of(
            as_postgres(pg_bin("initdb"), dir)?
                .args([
                    "-U",
                    PG_USER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "-D",
                ])
                .arg(&data),
        )?;
        let port = free_port();
        let conf = format!(
            "\n# cargo xtask bench\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             max_connections = {max_connections}\n\
             unix_socket_directories = '{}'\n\
             shared_buffers = 256MB\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n",
            dir.display()
        );
        OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .context("cannot write postgresql.conf")?;
        let server = Postgres {
            port,
            dir: dir.to_path_buf(),
        };
        let mut start = as_postgres(pg_bin("pg_ctl"), dir)?;
        start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("pg.log"))
            .args(["-w", "-t", "60", "start"]);
        if let Err(err) = cmd::stdout_of(&mut start) {
            let log = fs::read_to_string(dir.join("pg.log")).unwrap_or_default();
            bail!("PostgreSQL did not start: {err:#}\n--- pg.log ---\n{log}");
        }
        Ok(server)
    }

    /// psql over the Unix socket (never redirected), `-X -At -v ON_ERROR_STOP=1`.
    pub fn psql(&self) -> Command {
        let mut psql = Command::new(pg_bin("psql"));
        psql.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", PG_USER, "-d", "postgres"]);
        psql
    }

    /// Runs `sql` over the Unix socket; returns the trimmed output.
    pub fn sql(&self, sql: &str) -> Result<String> {
        Ok(cmd::stdout_of(self.psql().args(["-c", sql]))?
            .trim()
            .to_owned())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let stop = as_postgres(pg_bin("pg_ctl"), &self.dir).map(|mut c| {
            c.arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "immediate", "-w", "stop"]);
            c
        });
        match stop.and_then(|mut c| cmd::stdout_of(&mut c)) {
            Ok(_) => {}
            Err(err) => eprintln!("bench: warning: stopping PostgreSQL failed: {err:#}"),
        }
    }
}

/// PgBouncer 1.18 in session mode in front of [`Postgres`], trust auth, run as `postgres` (it
/// refuses to run as root).
pub struct PgBouncer {
    pub port: u16,
    child: Child,
}

impl PgBouncer {
    fn start(dir: &Path, pg: &Postgres, pool_size: u32) -> Result<PgBouncer> {
        postgres_dir(dir)?;
        let port = free_port();
        let ini = dir.join("pgbouncer.ini");
        let users = dir.join("userlist.txt");
        fs::write(&users, format!("\"{PG_USER}\" \"\"\n"))?;
        fs::write(
            &ini,
            format!(
                "; cargo xtask bench\n\
                 [databases]\n\
                 postgres = host=127.0.0.1 port={pg_port} dbname=postgres\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = trust\n\
                 auth_file = {users}\n\
                 pool_mode = session\n\
                 max_client_conn = 2000\n\
                 default_pool_size = {pool_size}\n\
                 logfile = {log}\n\
                 pidfile = {pid}\n",
                pg_port = pg.port,
                users = users.display(),
                log = dir.join("pgbouncer.log").display(),
                pid = dir.join("pgbouncer.pid").display(),
            ),
        )?;
        let bouncer = cmd::find_tool("pgbouncer").context(
            "pgbouncer is not installed: run `cargo xtask setup` (Debian package pgbouncer)",
        )?;
        let child = as_postgres(bouncer, dir)?
            .arg(&ini)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.join("pgbouncer.stderr"))?)
            .spawn()
            .context("cannot start pgbouncer")?;
        let mut bouncer = PgBouncer { port, child };
        if let Err(err) = wait_port(port, Duration::from_secs(10), "PgBouncer") {
            let _ = bouncer.child.try_wait();
            let log = fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
                + &fs::read_to_string(dir.join("pgbouncer.stderr")).unwrap_or_default();
            bail!("{err}\n--- pgbouncer log ---\n{log}");
        }
        Ok(bouncer)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // SIGTERM is PgBouncer's immediate shutdown.
        stop_child(&mut self.child, Duration::from_secs(5));
    }
}

/// SIGTERM, then SIGKILL after `grace`.
fn stop_child(child: &mut Child, grace: Duration) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        sleep(Duration::from_millis(20));
    }
}

/// Which of the two agents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// policies/pci-dss.yaml (derived), masking on, audit as installed: strict (written before
    /// the statement goes), group fsync every 100 ms, journald mirror `events`.
    Policy,
    /// The same policy with the opt-in `fsync: true`: fsynced before the statement goes.
    Tuned,
    /// policies/allow-all.yaml, no audit: the relay's own cost.
    Relay,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Policy => "pci",
            Which::Tuned => "pci-tuned",
            Which::Relay => "relay",
        }
    }
}

/// A running `pgwarden run --config <dir>/<name>.yaml`, logging to `<dir>/<name>.log`.
pub struct Agent {
    bin: PathBuf,
    config: PathBuf,
    control: PathBuf,
    log: PathBuf,
    child: Child,
    /// Run `pgwarden detach` after stopping (the agent pinned its programs).
    detach: bool,
}

impl Agent {
    /// Starts the agent and waits until `status` answers. `Ok(Err(log))` when it exits during
    /// startup (a refused config), with what it printed. The config goes to `<dir>/etc`, the
    /// control socket to `<dir>/run`, the log to `<dir>/log`: the agent watches its config's
    /// directory, and files written during the run must not wake that watcher.
    fn start(
        bin: &Path,
        dir: &Path,
        name: &str,
        yaml: &str,
        detach: bool,
    ) -> Result<Result<Agent, String>> {
        let config = dir.join("etc").join(format!("{name}.yaml"));
        let control = dir.join("run").join(format!("{name}.sock"));
        let log = dir.join("log").join(format!("{name}.log"));
        fs::write(&config, yaml).with_context(|| format!("cannot write {}", config.display()))?;
        let out = File::create(&log)?;
        let child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&config)
            // The agent's own default log level: the bench measures it as shipped.
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut agent = Agent {
            bin: bin.to_path_buf(),
            config,
            control,
            log,
            child,
            detach,
        };
        let deadline = Instant::now() + AGENT_READY;
        loop {
            if let Some(status) = agent.child.try_wait()? {
                let log = agent.log_text();
                // A refused config pins nothing; anything else is removed without a word.
                if agent.detach {
                    let _ = Command::new(bin)
                        .args(["detach", "--config"])
                        .arg(&agent.config)
                        .output();
                    agent.detach = false;
                }
                return Ok(Err(format!(
                    "pgwarden exited during startup ({status}):\n{log}"
                )));
            }
            if agent.status().is_ok() {
                return Ok(Ok(agent));
            }
            if Instant::now() >= deadline {
                bail!(
                    "pgwarden ({name}) not ready after {AGENT_READY:?}\n--- log ---\n{}",
                    agent.log_text()
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// `pgwarden status --json`.
    pub fn status(&self) -> Result<Value> {
        let out = cmd::stdout_of(
            Command::new(&self.bin)
                .args(["status", "--json", "--control"])
                .arg(&self.control),
        )?;
        serde_json::from_str(&out).context("`pgwarden status --json` printed no JSON")
    }

    /// The kernel counter `name` (`redirected`, ...).
    pub fn counter(&self, name: &str) -> Result<u64> {
        let status = self.status()?;
        status["counters"][name]
            .as_u64()
            .with_context(|| format!("no counter {name:?} in `pgwarden status --json`"))
    }

    /// Live sessions the agent lists.
    pub fn sessions(&self) -> Result<usize> {
        Ok(self.status()?["sessions"].as_array().map_or(0, Vec::len))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Fails (with the log) when the agent died.
    pub fn alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "pgwarden exited ({status})\n--- log ---\n{}",
                self.log_text()
            );
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        stop_child(&mut self.child, AGENT_STOP);
        if !self.detach {
            return;
        }
        // Pinned programs outlive the agent by design; the bench leaves nothing attached.
        let detach = Command::new(&self.bin)
            .args(["detach", "--config"])
            .arg(&self.config)
            .output();
        match detach {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "bench: warning: `pgwarden detach --config {}` failed: {}",
                self.config.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(err) => eprintln!("bench: warning: cannot run pgwarden detach: {err}"),
        }
    }
}

/// The bench's cgroups, one per tagged role, under `pgwarden-bench-<pid>-<n>`.
pub struct Cgroups {
    /// pgbench under the derived pci-dss `reader` profile.
    pub reader: TestCgroup,
    /// The masking scans with the column rule (profile `bench-mask`).
    pub mask: TestCgroup,
    /// The masking scans with only the detector (profile `bench-detector`).
    pub detector: TestCgroup,
    /// pgbench under allow-all (the relay agent).
    pub relay: TestCgroup,
    /// pgbench under the tuned agent.
    pub tuned: TestCgroup,
    /// pgbench under the journal section's agents (one binary at a time).
    pub journal: TestCgroup,
    _parent: TestCgroup,
}

/// Everything a section needs. Fields drop in order: agents first, the temp dir last.
pub struct Rig {
    policy_agent: Option<Agent>,
    tuned_agent: Option<Agent>,
    relay_agent: Option<Agent>,
    pub bouncer: PgBouncer,
    pub cgroups: Cgroups,
    pub pg: Postgres,
    pub dir: TempDir,
    pub plan: Plan,
    pub bin: PathBuf,
    /// The journald the policy agent mirrors its journal to (started by the bench when none
    /// ran), or why there is none.
    pub journald: Result<Journald, String>,
    /// The audit journal of the policy agent.
    pub audit_path: PathBuf,
    /// A port nothing listens on but the connect loop; the policy agent intercepts it.
    pub listener_port: u16,
    /// Where `SELECT` results of pgbench logs and scripts go.
    pub work: PathBuf,
    /// Other pgwarden processes on the machine when the bench started.
    pub others: Vec<u32>,
    /// /proc/loadavg when the bench started.
    load_start: String,
    /// The agents started so far (the notes speak of these only).
    ran: Vec<Which>,
    interrupt: Arc<AtomicBool>,
}

impl Rig {
    /// PostgreSQL with the pgbench and payments tables, PgBouncer, the cgroups, the derived
    /// policy and the hash key. Agents start when a section asks for them.
    pub fn up(plan: Plan, bin: PathBuf, interrupt: &Interrupt) -> Result<Rig> {
        let load_start = load_average();
        let others = other_agents();
        if !others.is_empty() {
            println!(
                "bench: WARNING: {} other pgwarden process(es) run on this machine (pids {others:?}); \
                 they share the CPUs and their programs see every connect",
                others.len()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-bench-")
            .tempdir_in("/tmp")
            .context("cannot create a temp dir under /tmp")?;
        // PostgreSQL and PgBouncer (user postgres) live in subdirectories.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let work = dir.path().join("work");
        for sub in ["work", "etc", "run", "log"] {
            fs::create_dir_all(dir.path().join(sub))?;
        }

        println!(
            "bench: starting PostgreSQL 15 (max_connections {})",
            plan.idle_conns + 100
        );
        let pg = Postgres::start(&dir.path().join("pg"), plan.idle_conns + 100)?;
        println!("bench: pgbench -i -s {} (scale {})", plan.scale, plan.scale);
        cmd::stdout_of(
            Command::new(pg_bin("pgbench"))
                .args(["-i", "-q", "-s", &plan.scale.to_string(), "-h"])
                .arg(&pg.dir)
                .args(["-p", &pg.port.to_string(), "-U", PG_USER, "postgres"]),
        )?;
        // Only the masking scans read it; a million rows take a while to make.
        if plan.sections.contains(&"masking") {
            let started = Instant::now();
            super::scan::create_payments(&pg, plan.payments_rows)?;
            println!(
                "bench: payments table, {} rows with Luhn-valid PANs, in {:.1}s",
                super::Thousands(plan.payments_rows as f64),
                started.elapsed().as_secs_f64()
            );
        }
        let bouncer = PgBouncer::start(&dir.path().join("pgbouncer"), &pg, plan.max_clients() + 4)?;
        println!(
            "bench: PgBouncer (session mode) on 127.0.0.1:{}",
            bouncer.port
        );

        let parent = TestCgroup::create(&unique_name("pgwarden-bench"));
        let cgroups = Cgroups {
            reader: parent.child("reader"),
            mask: parent.child("mask"),
            detector: parent.child("detector"),
            relay: parent.child("relay"),
            tuned: parent.child("tuned"),
            journal: parent.child("journal"),
            _parent: parent,
        };

        let source = fs::read_to_string(policy_path("pci-dss.yaml"))
            .context("cannot read policies/pci-dss.yaml")?;
        let policy = derive_policy(&source)?;
        fs::write(dir.path().join("etc").join("bench-policy.yaml"), policy)?;
        let mut key = [0u8; 32];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key))
            .context("cannot read /dev/urandom")?;
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.path().join("etc").join("hash.key"))
            .and_then(|mut f| f.write_all(&key))
            .context("cannot write the hash key")?;

        // The policy agent mirrors its journal to journald, as an installed agent does; on a
        // machine whose PID 1 is not systemd the bench starts one, so the mirror's cost is in
        // the numbers.
        let journald = Journald::try_ensure();
        match &journald {
            Ok(j) if j.started_here() => {
                println!("bench: started systemd-journald for the audit mirror");
            }
            Ok(_) => println!("bench: the audit mirror goes to the running journald"),
            Err(e) => {
                println!("bench: WARNING: no journald ({e}): the audit mirror is not measured")
            }
        }
        let rig = Rig {
            policy_agent: None,
            tuned_agent: None,
            relay_agent: None,
            bouncer,
            cgroups,
            audit_path: dir.path().join("log").join("audit.jsonl"),
            listener_port: free_port(),
            pg,
            work,
            dir,
            plan,
            bin,
            journald,
            others,
            load_start,
            ran: Vec::new(),
            interrupt: interrupt.flag(),
        };
        rig.check_policy()?;
        Ok(rig)
    }

    /// Fails once Ctrl-C came.
    pub fn check_interrupt(&self) -> Result<()> {
        if self.interrupt.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(())
    }

    pub fn policy_file(&self) -> PathBuf {
        self.dir.path().join("etc").join("bench-policy.yaml")
    }

    /// `pgwarden policy explain` says the derived policy allows what the bench runs.
    fn check_policy(&self) -> Result<()> {
        let cases = [
            ("reader", super::pgbench::SELECT_ONLY_SQL),
            ("reader", "SELECT count(*) FROM pgbench_branches"),
            ("bench-mask", super::scan::COLUMN_SQL),
            ("bench-detector", super::scan::DETECTOR_SQL),
        ];
        for (profile, sql) in cases {
            let out = cmd::stdout_of(
                Command::new(&self.bin)
                    .args(["policy", "explain", "--policy"])
                    .arg(self.policy_file())
                    .args(["--workload", profile, "--sql", sql, "--json"]),
            )
            .with_context(|| format!("the derived policy {}", self.policy_file().display()))?;
            let verdict: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
            let outcome = &verdict["outcome"];
            if !outcome.is_object() || !outcome["denied"].is_null() || !outcome["hold"].is_null() {
                bail!(
                    "the derived bench policy does not allow `{sql}` for profile `{profile}`:\n{out}"
                );
            }
        }
        Ok(())
    }

    /// What every agent's config starts with: its listener, control socket, own pin
    /// directory, a short drain, and PostgreSQL's Unix socket intercepted.
    fn config_header(&self, name: &str) -> String {
        let listen = free_port();
        let d = self.dir.path();
        let mut yaml = format!(
            "# cargo xtask bench: agent `{name}`\n\
             listen:\n  ipv4: 127.0.0.1:{listen}\n  ipv6: \"[::1]:{listen}\"\n\
             control:\n  socket: {}\n",
            d.join("run").join(format!("{name}.sock")).display(),
        );
        // Its own pins, never the default /sys/fs/bpf/pgwarden of an installed agent.
        let pin = d
            .file_name()
            .map_or_else(|| "pgwarden-bench".into(), |n| n.to_string_lossy());
        yaml += &format!("bpf:\n  pin_dir: /sys/fs/bpf/{pin}-{name}\n");
        yaml += "shutdown:\n  drain_seconds: 1\n";
        // PostgreSQL's Unix socket is intercepted too (the Unix pgbench pair).
        yaml += &format!("intercept_unix:\n  - {}\n", self.pg.dir.display());
        yaml
    }

    /// `workloads:` entry `name` for cgroup `cg`.
    fn workload(name: &str, cg: &TestCgroup, policy: &Path, profile: &str) -> String {
        format!(
            "  - name: {name}\n    cgroup: \"{}\"\n    policy: {}\n    profile: {profile}\n",
            cg.rel,
            policy.display()
        )
    }

    /// The config of a journal-section agent `name`: the pci-dss agent's (derived policy,
    /// profile `reader`, masking) for the journal cgroup, `audit: {mode: strict, fsync: true}`
    /// as installed but with journald off (the mirror does not change the file) and rotation
    /// at 1 GiB (the journal stays one file), writing `audit_path`; `state_dir` only when
    /// given (binaries before it refuse the key).
    pub fn journal_config(
        &self,
        name: &str,
        audit_path: &Path,
        state_dir: Option<&Path>,
    ) -> String {
        let mut yaml = self.config_header(name);
        yaml += &format!("intercept:\n  - \"*:{}\"\n", self.pg.port);
        yaml += "workloads:\n";
        yaml += &Self::workload(
            "bench-journal",
            &self.cgroups.journal,
            &self.policy_file(),
            "reader",
        );
        yaml += &format!(
            "mask:\n  hash_key_file: {}\n",
            self.dir.path().join("etc").join("hash.key").display()
        );
        yaml += &format!(
            "audit:\n  mode: strict\n  fsync: true\n  journald: off\n  max_bytes: {}\n  path: {}\n",
            1u64 << 30,
            audit_path.display()
        );
        if let Some(dir) = state_dir {
            yaml += &format!("  state_dir: {}\n", dir.display());
        }
        yaml
    }

    /// Starts the agent `name` of binary `bin` from `yaml` (detached on drop). `Ok(Err(log))`
    /// when it refuses the config.
    pub fn start_agent_from(
        &self,
        bin: &Path,
        name: &str,
        yaml: &str,
    ) -> Result<Result<Agent, String>> {
        Agent::start(bin, self.dir.path(), name, yaml, true)
    }

    /// The agent's config.
    fn config(&self, which: Which) -> String {
        let d = self.dir.path();
        let mut yaml = self.config_header(which.name());
        let workload = Self::workload;
        match which {
            Which::Policy => {
                let policy = self.policy_file();
                yaml += &format!(
                    "intercept:\n  - \"*:{}\"\n  - \"*:{}\"\n",
                    self.pg.port, self.listener_port
                );
                yaml += "workloads:\n";
                yaml += &workload("bench-reader", &self.cgroups.reader, &policy, "reader");
                yaml += &workload("bench-mask", &self.cgroups.mask, &policy, "bench-mask");
                yaml += &workload(
                    "bench-detector",
                    &self.cgroups.detector,
                    &policy,
                    "bench-detector",
                );
                yaml += &format!(
                    "mask:\n  hash_key_file: {}\n",
                    d.join("etc").join("hash.key").display()
                );
                // The installed defaults: strict (written before the statement goes), group
                // fsync every 100 ms, events mirrored to journald.
                yaml += &format!(
                    "audit:\n  mode: strict\n  path: {}\n",
                    self.audit_path.display()
                );
            }
            Which::Tuned => {
                yaml += &format!("intercept:\n  - \"*:{}\"\n", self.pg.port);
                yaml += "workloads:\n";
                yaml += &workload(
                    "bench-tuned",
                    &self.cgroups.tuned,
                    &self.policy_file(),
                    "reader",
                );
                yaml += &format!(
                    "mask:\n  hash_key_file: {}\n",
                    d.join("etc").join("hash.key").display()
                );
                yaml += &format!(
                    "audit:\n  mode: strict\n  fsync: true\n  journald: events\n  path: {}\n",
                    self.tuned_audit_path().display()
                );
            }
            Which::Relay => {
                yaml += &format!("intercept:\n  - \"*:{}\"\n", self.pg.port);
                // The relay's own cost: no journal.
                yaml += "audit:\n  mode: off\n";
                yaml += "workloads:\n";
                yaml += &workload(
                    "bench-relay",
                    &self.cgroups.relay,
                    &policy_path("allow-all.yaml"),
                    "allow-all",
                );
            }
        }
        yaml
    }

    /// The agent `which`, started if it is not running. The policy agent's first start probes
    /// whether `run` accepts the `audit:` key.
    pub fn agent(&mut self, which: Which) -> Result<&mut Agent> {
        let running = match which {
            Which::Policy => self.policy_agent.is_some(),
            Which::Tuned => self.tuned_agent.is_some(),
            Which::Relay => self.relay_agent.is_some(),
        };
        if !running {
            let agent = self.start_agent(which)?;
            if !self.ran.contains(&which) {
                self.ran.push(which);
            }
            match which {
                Which::Policy => self.policy_agent = Some(agent),
                Which::Tuned => self.tuned_agent = Some(agent),
                Which::Relay => self.relay_agent = Some(agent),
            }
        }
        let agent = match which {
            Which::Policy => self.policy_agent.as_mut(),
            Which::Tuned => self.tuned_agent.as_mut(),
            Which::Relay => self.relay_agent.as_mut(),
        }
        .context("agent just started")?;
        agent.alive()?;
        Ok(agent)
    }

    /// Starts `which`.
    fn start_agent(&mut self, which: Which) -> Result<Agent> {
        let dir = self.dir.path().to_path_buf();
        let yaml = self.config(which);
        match Agent::start(&self.bin, &dir, which.name(), &yaml, true)? {
            Ok(agent) => {
                println!(
                    "bench: pgwarden agent `{}` running (pid {})",
                    which.name(),
                    agent.pid()
                );
                Ok(agent)
            }
            Err(log) => bail!("{log}"),
        }
    }

    /// Stops the agents and detaches their programs.
    pub fn stop_agents(&mut self) {
        self.policy_agent = None;
        self.tuned_agent = None;
        self.relay_agent = None;
    }

    /// The tuned agent's journal.
    fn tuned_audit_path(&self) -> PathBuf {
        self.dir.path().join("log").join("tuned-audit.jsonl")
    }

    /// Lines of the policy agent's audit journal so far.
    pub fn audit_records(&self) -> u64 {
        lines_in(&self.audit_path)
    }

    /// Whether the policy agent ran with the audit journal and wrote to it.
    pub fn audit_included(&self) -> bool {
        self.audit_records() > 0
    }

    /// The journald's process, when the bench started it (its CPU is part of the audit's cost).
    pub fn journald_pid(&self) -> Option<u32> {
        self.journald.as_ref().ok().and_then(Journald::pid)
    }

    /// The run's notes about the audit journal and other agents, for the report.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        let records = self.audit_records();
        let journald = match &self.journald {
            Ok(j) if j.started_here() => {
                "mirrored to a systemd-journald the bench started".to_owned()
            }
            Ok(_) => "mirrored to the machine's journald".to_owned(),
            Err(e) => format!("**not mirrored to journald** ({e})"),
        };
        // A partial run without the pci-dss agent has nothing to say about its journal.
        let policy_ran = self.ran.contains(&Which::Policy);
        if policy_ran && records == 0 {
            notes.push(format!(
                "**AUDIT NOT INCLUDED**: the pci-dss agent wrote nothing to {}.",
                self.audit_path.display()
            ));
        } else if policy_ran {
            notes.push(format!(
                "Audit included: the pci-dss agent ran with the installed `audit:` defaults \
                 (each statement's record written before the statement is forwarded, group \
                 fsync every 100 ms, events {journald}) and wrote {records} journal lines."
            ));
        }
        if self.ran.contains(&Which::Tuned) {
            notes.push(format!(
                "The fsync-per-statement pci-dss agent ran with `audit: {{mode: strict, fsync: \
             true, journald: events}}`: each statement's record is fsynced (group commit) before \
             the statement is forwarded; it wrote {} journal lines.",
                lines_in(&self.tuned_audit_path())
            ));
        }
        if self.ran.contains(&Which::Relay) {
            notes.push(
            "The allow-all agent ran with `audit: {mode: off}`: the cost of the redirect and the \
             protocol-aware relay alone (statements are still parsed and checked)."
                .to_owned(),
        );
        }
        let mut others = self.others.clone();
        let ours: Vec<u32> = [&self.policy_agent, &self.tuned_agent, &self.relay_agent]
            .into_iter()
            .flatten()
            .map(Agent::pid)
            .collect();
        others.extend(other_agents().into_iter().filter(|p| !ours.contains(p)));
        others.sort_unstable();
        others.dedup();
        if !others.is_empty() {
            notes.push(format!(
                "**Other pgwarden processes ran on this machine during the bench** (pids {others:?}): \
                 they shared the CPUs and their connect programs; treat the numbers with care."
            ));
        }
        notes.push(format!(
            "Load average (1, 5, 15 min) when the bench started: {}; at the end: {}.",
            self.load_start,
            load_average()
        ));
        notes
    }

    /// Stops everything (drop does the same; this makes the order visible).
    pub fn down(self) {
        drop(self);
    }
}

/// Lines of a journal and its rotated files (`PATH.1`, `PATH.2`, ...); 0 when missing.
fn lines_in(path: &Path) -> u64 {
    let count = |p: &Path| fs::read(p).map_or(0, |b| bytecount(&b));
    let rotated = (1..)
        .map(|n| PathBuf::from(format!("{}.{n}", path.display())))
        .take_while(|p| p.exists());
    count(path) + rotated.map(|p| count(&p)).sum::<u64>()
}

fn bytecount(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&c| c == b'\n').count() as u64
}

/// The first three fields of /proc/loadavg.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".into(),
        |l| l.split_whitespace().take(3).collect::<Vec<_>>().join(", "),
    )
}

/// pgwarden processes other than ours, by /proc/PID/comm.
fn other_agents() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "pgwarden")
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Resident set size of `pid` in KiB (VmRSS of /proc/PID/status).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// CPU time (user + system) `pid` has used, in seconds (/proc/PID/stat, USER_HZ = 100).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // Fields after the parenthesised comm: state is field 3, utime 14 and stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("bad /proc/{pid}/stat"))
    };
    #[allow(clippy::cast_precision_loss, reason = "clock ticks fit an f64")]
    Ok((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// Tables pgbench's `-S` script and its startup touch, added to the `reader` profile.
const PGBENCH_TABLES: &[&str] = &[
    "public.pgbench_accounts",
    "public.pgbench_branches",
    "public.pgbench_tellers",
    "public.pgbench_history",
];

/// The bench policy: policies/pci-dss.yaml with the pgbench tables added to `reader`'s tables
/// (its masks, `detect_pans` and rules untouched), and two profiles for the masking scans that
/// have no approval rule (the bulk-read rule would hold a 1M-row scan for a person's yes):
/// `bench-mask` (reader's column rule and the detector) and `bench-detector` (the detector
/// only). Line-based, so it fails loudly when the file's shape changes.
pub fn derive_policy(source: &str) -> Result<String> {
    let lines: Vec<&str> = source.lines().collect();
    let profiles = lines
        .iter()
        .position(|l| l.trim_end() == "profiles:")
        .context("policies/pci-dss.yaml has no top-level `profiles:`")?;
    let reader = (profiles + 1..lines.len())
        .find(|&i| lines[i].trim_end() == "  reader:")
        .context("policies/pci-dss.yaml has no profile `reader`")?;
    let end = (reader + 1..lines.len())
        .find(|&i| {
            let l = lines[i];
            !l.trim().is_empty() && !l.trim_start().starts_with('#') && indent(l) <= 2
        })
        .unwrap_or(lines.len());
    let tables = (reader + 1..end)
        .find(|&i| lines[i].trim_end() == "    tables:")
        .context("profile `reader` of policies/pci-dss.yaml has no `tables:` block")?;
    let mut out = vec![
        "# Derived by `cargo xtask bench` from policies/pci-dss.yaml: pgbench's tables added to"
            .to_owned(),
        "# `reader`, and two profiles for the masking scans (no approval rule).".to_owned(),
    ];
    for (i, line) in lines.iter().enumerate() {
        out.push((*line).to_owned());
        if i == profiles {
            out.push(
                "  bench-mask:\n    classes: [read]\n    tables:\n      public.payments: [read]\n    \
                 mask:\n      columns:\n        public.payments.card_number: pan\n      \
                 detect_pans: true\n  bench-detector:\n    classes: [read]\n    tables:\n      \
                 public.payments: [read]\n    mask:\n      detect_pans: true"
                    .to_owned(),
            );
        }
        if i == tables {
            out.extend(PGBENCH_TABLES.iter().map(|t| format!("      {t}: [read]")));
        }
    }
    let mut text = out.join("\n");
    text.push('\n');
    Ok(text)
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_policy_adds_tables_to_reader_and_two_profiles() {
        let source = fs::read_to_string(policy_path("pci-dss.yaml")).unwrap();
        let derived = derive_policy(&source).unwrap();
        let reader = derived.find("\n  reader:\n").unwrap();
        let writer = derived.find("\n  writer:\n").unwrap();
        let reader_block = &derived[reader..writer];
        for table in PGBENCH_TABLES {
            assert!(
                reader_block.contains(&format!("      {table}: [read]")),
                "{reader_block}"
            );
        }
        // Reader keeps its masks, detector and approval rule.
        assert!(reader_block.contains("public.payments.card_number: pan"));
        assert!(reader_block.contains("detect_pans: true"));
        assert!(reader_block.contains("bulk-payments-read"));
        let profiles = derived.find("\nprofiles:\n").unwrap();
        let mask = derived.find("\n  bench-mask:\n").unwrap();
        let detector = derived.find("\n  bench-detector:\n").unwrap();
        assert!(profiles < mask && mask < detector && detector < reader);
        assert!(!derived[detector..reader].contains("columns:"));
    }

    #[test]
    fn derive_policy_fails_loudly_on_another_shape() {
        assert!(derive_policy("version: 1\n").is_err());
        assert!(derive_policy("profiles:\n  writer:\n    classes: [read]\n").is_err());
        assert!(
            derive_policy("profiles:\n  reader:\n    classes: [read]\n  writer:\n    tables:\n")
                .is_err()
        );
    }

    #[test]
    fn own_process_stats() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_seconds(me).unwrap() >= 0.0);
    }
}
