//! Unix-socket interception end to end: a real PostgreSQL listening on a socket directory the
//! agent's `intercept_unix:` names, the real eBPF programs (`cgroup/connect_unix`,
//! `cgroup/getpeername_unix`, `lsm/unix_stream_connect`), cgroups this test creates and real
//! clients (psql, psycopg 3, node `pg`, raw python sockets) in them.
//!
//! Ground truth for "never direct" is PostgreSQL's own statement log: every server here runs
//! with `log_statement = 'all'`, every attempt sends a unique marker (`SELECT '<marker>'`), and
//! a marker that shows up in `pg.log` reached the server. Each refusal is paired with an
//! untagged control over the very same name, which must reach the server: that proves the
//! name works and the log would have shown the marker.
use std::fs;
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use pgwarden_e2e::{
    Agent, PgServer, TestCgroup, agent_config, allow_all_workload, client_dir, in_cgroup, pg_bin,
    python_venv, require_root, run_ok, run_output, unique_name,
};
use serde_json::Value;

/// postgresql.conf lines every server of this file gets: the statement log is the ground truth.
const LOG_ALL: &str = "log_statement = 'all'";

/// How long to wait for a session or an audit record to show up.
const WAIT: Duration = Duration::from_secs(10);

/// A raw PostgreSQL client (stdlib only): `python3 -c PROBE ADDR MARKER`. ADDR is a socket path
/// (relative ones resolve against the working directory) or `@name` for the abstract namespace.
/// Prints `connect-failed <ERRNO>` and exits 3 when connect() fails; otherwise prints
/// `peer <getpeername()>`, logs in as postgres (trust), runs `SELECT '<MARKER>'` and prints
/// `result <value>`.
const PROBE: &str = r#"
import errno, socket, struct, sys
addr, marker = sys.argv[1], sys.argv[2]
if addr.startswith('@'):
    addr = '\0' + addr[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(addr)
except OSError as e:
    print('connect-failed', errno.errorcode.get(e.errno, e.errno), flush=True)
    sys.exit(3)
def cstr(x):
    return x.encode() + b'\0'
body = struct.pack('!i', 196608) + cstr('user') + cstr('postgres') + cstr('database') + cstr('postgres') + b'\0'
s.sendall(struct.pack('!i', len(body) + 4) + body)
buf = b''
def read():
    global buf
    while len(buf) < 5 or len(buf) < 1 + struct.unpack('!i', buf[1:5])[0]:
        c = s.recv(65536)
        if not c:
            raise SystemExit('server closed the connection')
        buf += c
    n = struct.unpack('!i', buf[1:5])[0]
    t, b, buf = buf[:1], buf[5:1 + n], buf[1 + n:]
    return t, b
def until_ready():
    rows = []
    while True:
        t, b = read()
        if t == b'Z':
            return rows
        if t == b'E':
            raise SystemExit('server error: ' + b.decode(errors='replace'))
        if t == b'R' and struct.unpack('!i', b[:4])[0] != 0:
            raise SystemExit('the server asked for a password')
        if t == b'D':
            n = struct.unpack('!i', b[2:6])[0]
            rows.append(b[6:6 + n].decode())
until_ready()
# Asked once the startup is answered: pgwarden files the name for getpeername when it accepts
# the connection, which a client cannot see happen before its first reply.
print('peer', s.getpeername(), flush=True)
q = "SELECT '" + marker + "'"
s.sendall(b'Q' + struct.pack('!i', len(q) + 5) + cstr(q))
print('result', ' '.join(until_ready()), flush=True)
s.sendall(b'X' + struct.pack('!i', 4))
s.close()
"#;

/// PostgreSQL, an agent intercepting its socket directory for the workload of `cg`, and a
/// scratch directory (control socket, policies, links). Fields drop in order: the agent stops
/// before PostgreSQL, and the cgroup goes after both.
struct Rig {
    agent: Agent,
    pg: PgServer,
    cg: TestCgroup,
    dir: tempfile::TempDir,
}

/// `intercept_unix:` naming `pg`'s socket directory.
fn intercept_dir(pg: &PgServer) -> String {
    format!("intercept_unix:\n  - {}\n", pg.socket_dir().display())
}

/// A fresh control socket path in `dir`.
fn control_in(dir: &Path) -> PathBuf {
    dir.join(format!("{}.sock", unique_name("control")))
}

/// Starts an agent for `pg` with these workloads, intercepting `pg`'s socket directory, with
/// `extra` top-level YAML.
fn start_agent(pg: &PgServer, dir: &Path, workloads: &str, extra: &str) -> Agent {
    let control = control_in(dir);
    let config = agent_config(
        pg.port,
        &control,
        workloads,
        &format!("{}{extra}", intercept_dir(pg)),
    );
    Agent::start(&config, &control)
}

impl Rig {
    /// A statement-logging PostgreSQL and an agent whose workload `workload` is a fresh cgroup
    /// under the allow-all policy.
    fn allow_all(prefix: &str, workload: &str) -> Rig {
        require_root();
        let pg = PgServer::start_configured(LOG_ALL, None);
        Rig::with(pg, prefix, |cg, _| allow_all_workload(workload, cg), "")
    }

    /// An agent for `pg` whose workloads YAML `workloads(cg, scratch dir)` gives.
    fn with(
        pg: PgServer,
        prefix: &str,
        workloads: impl FnOnce(&TestCgroup, &Path) -> String,
        extra: &str,
    ) -> Rig {
        require_root();
        let cg = TestCgroup::create(&unique_name(prefix));
        let dir = tempfile::tempdir().expect("temp dir");
        let yaml = workloads(&cg, dir.path());
        let agent = start_agent(&pg, dir.path(), &yaml, extra);
        Rig { agent, pg, cg, dir }
    }

    /// The agent log and the tail of PostgreSQL's, for failure messages.
    fn ctx(&self) -> String {
        context(&self.agent, &self.pg)
    }
}

/// The agent log and the last lines of PostgreSQL's, for failure messages.
fn context(agent: &Agent, pg: &PgServer) -> String {
    let log = pg.log();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
    format!(
        "--- agent log ---\n{}\n--- end of agent log ---\n--- pg.log (last 40 lines) ---\n{tail}",
        agent.log()
    )
}

/// The agent's counters (`status --json`).
fn counters(agent: &Agent) -> Value {
    agent.status()["counters"].clone()
}

/// Counter `name` of a [`counters`] snapshot.
#[track_caller]
fn get(counters: &Value, name: &str, agent: &Agent) -> u64 {
    counters[name].as_u64().unwrap_or_else(|| {
        panic!(
            "no counter {name:?} in `pgwarden status --json` counters: {counters:#}\n\
             --- agent log ---\n{}",
            agent.log()
        )
    })
}

/// `after[name] - before[name]`.
#[track_caller]
fn delta(before: &Value, after: &Value, name: &str, agent: &Agent) -> i64 {
    let (b, a) = (get(before, name, agent), get(after, name, agent));
    i64::try_from(a).unwrap() - i64::try_from(b).unwrap()
}

/// A unique marker; the log is searched for it quoted (`'<marker>'`), so `x-1` never matches
/// `x-10`.
fn marker(tag: &str) -> String {
    unique_name(&format!("unix-marker-{tag}"))
}

/// Whether `marker` reached PostgreSQL (its statement was logged).
fn logged(pg: &PgServer, marker: &str) -> bool {
    pg.log().contains(&format!("'{marker}'"))
}

/// Connections PostgreSQL accepted over Unix sockets so far (log_connections is on).
fn local_connections(pg: &PgServer) -> usize {
    pg.log()
        .matches("connection received: host=[local]")
        .count()
}

/// psql to socket directory (or `@abstract` name) `host` and `port`, in `cg` (or untagged with
/// `None`), running `sql`; never prompting for a password (a prompt would connect again), no
/// passfile, a 5 s connect timeout.
fn psql_unix(cg: Option<&TestCgroup>, host: &str, port: u16, sql: &str) -> Command {
    let psql = pg_bin("psql");
    let mut cmd = match cg {
        Some(cg) => in_cgroup(&cg.path, &psql.to_string_lossy()),
        None => Command::new(psql),
    };
    cmd.args(["-X", "-w", "-v", "ON_ERROR_STOP=1", "-At", "-h", host, "-p"])
        .arg(port.to_string())
        .args(["-U", "postgres", "-d", "postgres", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "5")
        .env("PGPASSFILE", "/nonexistent/pgwarden-e2e-pgpass")
        .env_remove("PGPASSWORD")
        .env_remove("PGHOST")
        .env_remove("PGPORT");
    cmd
}

/// The raw [`PROBE`] client for `addr`, in `cg` (or untagged), from `cwd` when given.
fn probe(cg: Option<&TestCgroup>, addr: &str, cwd: Option<&Path>, marker: &str) -> Command {
    let mut cmd = match cg {
        Some(cg) => in_cgroup(&cg.path, "python3"),
        None => Command::new("python3"),
    };
    cmd.args(["-c", PROBE, addr, marker]);
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    cmd
}

fn text(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits up to 10 s for a live session of client pid `pid`.
#[track_caller]
fn session_of(agent: &Agent, pid: u32) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = agent.status();
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
            "no live session for pid {pid}; status: {status:#}\n--- agent log ---\n{}",
            agent.log()
        );
        sleep(Duration::from_millis(50));
    }
}

/// Waits up to 10 s for the `session.start` record of client pid `pid` in the agent's journal.
#[track_caller]
fn session_start_of(agent: &Agent, pid: u32) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let records = agent.audit_lines();
        if let Some(r) = records.iter().find(|r| {
            r["event"] == "session.start" && r["actor"]["pid"].as_u64() == Some(u64::from(pid))
        }) {
            return r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no session.start record for pid {pid} in the journal:\n{records:#?}\n\
             --- agent log ---\n{}",
            agent.log()
        );
        sleep(Duration::from_millis(50));
    }
}

/// Runs `cmd` with piped output, returning its pid and output.
fn spawn_wait(cmd: &mut Command) -> (u32, Output) {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let pid = child.id();
    (pid, child.wait_with_output().expect("wait client"))
}

/// Whether an error text says the connect was refused with EPERM.
fn says_eperm(text: &str) -> bool {
    text.contains("Operation not permitted") || text.contains("EPERM")
}

/// The PostgreSQL socket name seen from the workload's side: `.s.PGSQL.<port>`.
fn sock_name(pg: &PgServer) -> String {
    format!(".s.PGSQL.{}", pg.port)
}

/// A bind mount undone on drop.
struct BindMount(PathBuf);

impl BindMount {
    fn new(src: &Path, dst: &Path) -> BindMount {
        fs::create_dir_all(dst).expect("mount point");
        let out = run_output(Command::new("mount").arg("--bind").arg(src).arg(dst));
        assert!(
            out.status.success(),
            "mount --bind {} {}: {}",
            src.display(),
            dst.display(),
            text(&out)
        );
        BindMount(dst.to_path_buf())
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A file removed on drop.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[test]
fn tagged_psql_over_the_socket_is_relayed_with_its_identity_and_untagged_goes_direct() {
    let r = Rig::allow_all("pgw-e2e-unix", "e2e-unix");
    let dir = r.pg.socket_dir().to_string_lossy().into_owned();
    let sock = r.pg.socket_path().to_string_lossy().into_owned();

    // Tagged: psql in the cgroup, pointed at the real socket directory.
    let m = marker("tagged");
    let before = counters(&r.agent);
    let child = psql_unix(
        Some(&r.cg),
        &dir,
        r.pg.port,
        &format!("SELECT '{m}', pg_sleep(1)"),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn psql");
    let pid = child.id();
    let session = session_of(&r.agent, pid);
    let out = child.wait_with_output().expect("wait psql");
    assert!(
        out.status.success(),
        "tagged psql over the Unix socket failed\n{}\n{}",
        text(&out),
        r.ctx()
    );
    assert_eq!(stdout(&out), format!("{m}|"), "tagged psql output");
    let after = counters(&r.agent);
    assert_eq!(
        delta(&before, &after, "unix_redirected", &r.agent),
        1,
        "the tagged psql's Unix connect was not counted as redirected exactly once \
         ({before} -> {after})\n{}",
        r.ctx()
    );
    assert!(
        logged(&r.pg, &m),
        "the relayed statement never reached PostgreSQL\n{}",
        r.ctx()
    );
    assert_eq!(
        session["server"],
        sock,
        "live session's server is not the original socket path: {session:#}\n{}",
        r.ctx()
    );
    assert_eq!(session["workload"], "e2e-unix", "{session:#}");
    let who = &session["identity"];
    assert_eq!(who["cgroup"], format!("/{}", r.cg.rel), "{session:#}");
    assert_eq!(who["comm"], "psql", "{session:#}");
    assert_eq!(who["uid"], 0, "{session:#}");
    assert_eq!(
        who["exe"].as_str().map(PathBuf::from),
        Some(pg_bin("psql").canonicalize().unwrap()),
        "{session:#}"
    );

    // The journal's session.start names the socket and the real client.
    let rec = session_start_of(&r.agent, pid);
    assert_eq!(
        rec["server"]["path"],
        sock,
        "session.start server of a Unix session: {rec:#}\n{}",
        r.ctx()
    );
    assert_eq!(rec["workload"], "e2e-unix", "{rec:#}");
    assert_eq!(rec["actor"]["cgroup"], format!("/{}", r.cg.rel), "{rec:#}");
    // And `pgwarden audit tail` shows the socket the session went to.
    let session = rec["session_id"].as_str().unwrap().to_owned();
    let tail = run_ok(
        Command::new(r.agent.bin())
            .args(["audit", "tail", "--all", "--session", &session, "--file"])
            .arg(r.agent.tmp_dir().join("audit.jsonl")),
    );
    let start_line = tail
        .lines()
        .find(|l| l.contains("session.start"))
        .unwrap_or_else(|| panic!("no session.start in `audit tail`:\n{tail}"));
    assert!(
        start_line.contains(&format!("unix:{sock}")) && start_line.contains(&format!("pid={pid}")),
        "`audit tail` does not show the socket and the client: {start_line}"
    );
    assert_eq!(
        rec["actor"]["exe"],
        pg_bin("psql").canonicalize().unwrap().display().to_string(),
        "{rec:#}"
    );

    // The libpq URL form reaches the same socket and is intercepted too.
    let m = marker("url");
    let before = counters(&r.agent);
    let psql = pg_bin("psql");
    let out = run_output(
        in_cgroup(&r.cg.path, &psql.to_string_lossy())
            .args(["-X", "-w", "-At", "-c", &format!("SELECT '{m}'")])
            .arg(format!(
                "postgresql:///postgres?host={dir}&port={}&user=postgres",
                r.pg.port
            ))
            .env("PGCONNECT_TIMEOUT", "5"),
    );
    assert!(
        out.status.success(),
        "psql with a libpq URL naming the socket directory failed\n{}\n{}",
        text(&out),
        r.ctx()
    );
    assert_eq!(stdout(&out), m);
    let after = counters(&r.agent);
    assert_eq!(
        delta(&before, &after, "unix_redirected", &r.agent),
        1,
        "the URL-form connect was not redirected\n{}",
        r.ctx()
    );
    let deadline = Instant::now() + WAIT;
    while !r.agent.status()["sessions"]
        .as_array()
        .is_some_and(Vec::is_empty)
    {
        assert!(
            Instant::now() < deadline,
            "sessions still open after their clients finished: {:#}\n{}",
            r.agent.status(),
            r.ctx()
        );
        sleep(Duration::from_millis(50));
    }

    // Untagged: the same psql outside the cgroup, over the same socket, goes direct: it works,
    // nothing is counted, no session appears.
    let m = marker("untagged");
    let before = counters(&r.agent);
    let child = psql_unix(None, &dir, r.pg.port, &format!("SELECT '{m}', pg_sleep(1)"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn psql");
    let untagged_pid = child.id();
    // A fixed wait on purpose: the status is sampled while the untagged client is connected
    // (its statement sleeps 1 s) to show that no session appears.
    sleep(Duration::from_millis(400));
    let status = r.agent.status();
    let out = child.wait_with_output().expect("wait psql");
    assert!(
        out.status.success(),
        "untagged psql over the socket failed\n{}\n{}",
        text(&out),
        r.ctx()
    );
    assert_eq!(stdout(&out), format!("{m}|"));
    assert!(logged(&r.pg, &m), "untagged statement not in pg.log");
    let after = counters(&r.agent);
    for name in [
        "unix_redirected",
        "unix_refused",
        "unix_refused_direct",
        "unix_peer_rewritten",
    ] {
        assert_eq!(
            delta(&before, &after, name, &r.agent),
            0,
            "an untagged Unix connect moved counter {name} ({before} -> {after})\n{}",
            r.ctx()
        );
    }
    let sessions = status["sessions"].as_array().cloned().unwrap_or_default();
    assert!(
        sessions.is_empty(),
        "an untagged psql (pid {untagged_pid}) has a session: {sessions:#?}\n{}",
        r.ctx()
    );
    assert!(
        !r.agent
            .audit_lines()
            .iter()
            .any(|rec| rec["actor"]["pid"].as_u64() == Some(u64::from(untagged_pid))),
        "the journal has a record of the untagged psql\n{}",
        r.ctx()
    );
}

/// One other name for PostgreSQL's socket.
struct Bypass {
    what: &'static str,
    /// For the raw probe: a path (relative to `cwd` when set) or `@abstract`.
    addr: String,
    cwd: Option<PathBuf>,
    /// For psql: `-h` (a directory or `@abstract`), when psql can express the name.
    psql_host: Option<String>,
}

#[test]
fn every_other_name_for_the_postgres_socket_is_refused_to_tagged_processes() {
    require_root();
    let abstract_dir = unique_name("pgw-e2e-abs");
    let pg = PgServer::start_configured(
        &format!("{LOG_ALL}\nunix_socket_directories = '{{socket_dir}},@{abstract_dir}'"),
        None,
    );
    let r = Rig::with(
        pg,
        "pgw-e2e-bypass",
        |cg, _| allow_all_workload("e2e-bypass", cg),
        "",
    );
    let name = sock_name(&r.pg);
    let dir = r.pg.socket_dir().to_path_buf();
    let dir_s = dir.to_string_lossy().into_owned();
    let sock = r.pg.socket_path();
    let scratch = r.dir.path();

    // The other names.
    let linkdir = scratch.join("linkdir");
    std::os::unix::fs::symlink(&dir, &linkdir).expect("symlink the socket dir");
    let sym_in_dir = scratch.join("symdir");
    fs::create_dir(&sym_in_dir).unwrap();
    std::os::unix::fs::symlink(&sock, sym_in_dir.join(&name)).expect("symlink the socket");
    let sym_file = scratch.join("pg-symlink.sock");
    std::os::unix::fs::symlink(&sock, &sym_file).expect("symlink the socket");
    let hard_other = scratch.join("pg-hardlink.sock");
    fs::hard_link(&sock, &hard_other).expect("hard link the socket");
    let hard_dir = scratch.join("harddir");
    fs::create_dir(&hard_dir).unwrap();
    fs::hard_link(&sock, hard_dir.join(&name)).expect("hard link the socket");
    let mnt = scratch.join("mnt");
    let _mount = BindMount::new(&dir, &mnt);
    let base = dir.file_name().unwrap().to_string_lossy().into_owned();

    let p = |path: &Path| path.to_string_lossy().into_owned();
    let variants = vec![
        Bypass {
            what: "a symlink to the socket directory",
            addr: p(&linkdir.join(&name)),
            cwd: None,
            psql_host: Some(p(&linkdir)),
        },
        Bypass {
            what: "a symlink with the socket's own name in another directory",
            addr: p(&sym_in_dir.join(&name)),
            cwd: None,
            psql_host: Some(p(&sym_in_dir)),
        },
        Bypass {
            what: "a symlink to the socket file under another name",
            addr: p(&sym_file),
            cwd: None,
            psql_host: None,
        },
        Bypass {
            what: "a hard link to the socket under another name",
            addr: p(&hard_other),
            cwd: None,
            psql_host: None,
        },
        Bypass {
            what: "a hard link with the socket's own name in another directory",
            addr: p(&hard_dir.join(&name)),
            cwd: None,
            psql_host: Some(p(&hard_dir)),
        },
        Bypass {
            what: "a bind mount of the socket directory",
            addr: p(&mnt.join(&name)),
            cwd: None,
            psql_host: Some(p(&mnt)),
        },
        Bypass {
            what: "a relative path from inside the socket directory",
            addr: name.clone(),
            cwd: Some(dir.clone()),
            psql_host: None,
        },
        Bypass {
            what: "a relative ./ path from inside the socket directory",
            addr: format!("./{name}"),
            cwd: Some(dir.clone()),
            psql_host: None,
        },
        Bypass {
            what: "a relative path from the parent directory",
            addr: format!("{base}/{name}"),
            cwd: Some(dir.parent().unwrap().to_path_buf()),
            psql_host: None,
        },
        Bypass {
            what: "a path with // before the name",
            addr: format!("{dir_s}//{name}"),
            cwd: None,
            psql_host: Some(format!("{dir_s}/")),
        },
        Bypass {
            what: "a path with /./ before the name",
            addr: format!("{dir_s}/./{name}"),
            cwd: None,
            psql_host: Some(format!("{dir_s}/.")),
        },
        Bypass {
            what: "a path starting with //",
            addr: format!("/{dir_s}/{name}"),
            cwd: None,
            psql_host: Some(format!("/{dir_s}")),
        },
        Bypass {
            what: "a path through ..",
            addr: format!("{dir_s}/../{base}/{name}"),
            cwd: None,
            psql_host: Some(format!("{dir_s}/../{base}")),
        },
        Bypass {
            what: "PostgreSQL's abstract-namespace socket",
            addr: format!("@{abstract_dir}/{name}"),
            cwd: None,
            psql_host: Some(format!("@{abstract_dir}")),
        },
    ];

    let mut failures = Vec::new();
    let mut attempts = 0;
    for v in &variants {
        let mut clients = vec!["raw python socket"];
        if v.psql_host.is_some() {
            clients.push("psql");
        }
        // This client over this name, in `cg` (or untagged), sending `marker`.
        let command = |client: &str, cg: Option<&TestCgroup>, marker: &str| -> Command {
            match (client, &v.psql_host) {
                ("psql", Some(host)) => {
                    psql_unix(cg, host, r.pg.port, &format!("SELECT '{marker}'"))
                }
                _ => probe(cg, &v.addr, v.cwd.as_deref(), marker),
            }
        };
        for client in clients {
            let label = format!("{} ({client}, {:?})", v.what, v.addr);
            // Control: untagged, the name reaches PostgreSQL and the log shows the marker.
            let m = marker("control");
            let out = run_output(&mut command(client, None, &m));
            if !out.status.success() || !stdout(&out).contains(&m) || !logged(&r.pg, &m) {
                failures.push(format!(
                    "{label}: the untagged control did not reach PostgreSQL (test setup?)\n{}",
                    text(&out)
                ));
                continue;
            }

            // Tagged: refused at connect(), never direct, never relayed.
            attempts += 1;
            let m = marker("bypass");
            let conns = local_connections(&r.pg);
            let before = counters(&r.agent);
            let out = run_output(&mut command(client, Some(&r.cg), &m));
            let after = counters(&r.agent);
            if out.status.success() {
                failures.push(format!(
                    "{label}: the tagged client SUCCEEDED\n{}",
                    text(&out)
                ));
            } else if !says_eperm(&format!("{}{}", stdout(&out), stderr(&out))) {
                failures.push(format!(
                    "{label}: the tagged client failed, but not with EPERM at connect\n{}",
                    text(&out)
                ));
            }
            if logged(&r.pg, &m) {
                failures.push(format!(
                    "{label}: the tagged client's marker REACHED PostgreSQL\n{}",
                    text(&out)
                ));
            }
            let now = local_connections(&r.pg);
            if now != conns {
                failures.push(format!(
                    "{label}: PostgreSQL accepted {} Unix connection(s) during the tagged attempt",
                    now - conns
                ));
            }
            let refused = delta(&before, &after, "unix_refused_direct", &r.agent);
            if refused != 1 {
                failures.push(format!(
                    "{label}: unix_refused_direct moved by {refused}, expected 1 \
                     ({before} -> {after})"
                ));
            }
            let redirected = delta(&before, &after, "unix_redirected", &r.agent);
            if redirected != 0 {
                failures.push(format!(
                    "{label}: unix_redirected moved by {redirected}, expected 0"
                ));
            }
        }
    }
    // And the real name still works for the tagged workload (the refusals were about names).
    let m = marker("real");
    let out = run_output(&mut probe(Some(&r.cg), &p(&sock), None, &m));
    if !out.status.success() || !logged(&r.pg, &m) {
        failures.push(format!(
            "the real socket path from the tagged cgroup did not work after the attempts\n{}",
            text(&out)
        ));
    }
    assert!(
        failures.is_empty(),
        "{} failed check(s) across {attempts} tagged bypass attempts:\n\n{}\n\n{}",
        failures.len(),
        failures.join("\n\n"),
        r.ctx()
    );
}

#[test]
fn getpeername_shows_the_socket_path_the_client_asked_for() {
    let r = Rig::allow_all("pgw-e2e-upeer", "e2e-upeer");
    let sock = r.pg.socket_path().to_string_lossy().into_owned();
    let m = marker("peer");
    let before = counters(&r.agent);
    let (pid, out) = spawn_wait(&mut probe(Some(&r.cg), &sock, None, &m));
    let after = counters(&r.agent);
    assert!(
        out.status.success(),
        "the tagged raw client failed\n{}\n{}",
        text(&out),
        r.ctx()
    );
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(
        lines.first().map(String::as_str),
        Some(format!("peer {sock}").as_str()),
        "getpeername() of a redirected Unix socket is not the path connected to\n{}\n{}",
        text(&out),
        r.ctx()
    );
    assert_eq!(
        lines.get(1).map(String::as_str),
        Some(format!("result {m}").as_str()),
        "the raw client's query did not come back\n{}",
        text(&out)
    );
    assert!(
        logged(&r.pg, &m),
        "the raw client's statement did not reach PostgreSQL\n{}",
        r.ctx()
    );
    assert_eq!(
        delta(&before, &after, "unix_redirected", &r.agent),
        1,
        "the raw client's connect was not redirected ({before} -> {after})\n{}",
        r.ctx()
    );
    assert!(
        delta(&before, &after, "unix_peer_rewritten", &r.agent) >= 1,
        "unix_peer_rewritten did not move ({before} -> {after})\n{}",
        r.ctx()
    );
    let rec = session_start_of(&r.agent, pid);
    assert_eq!(rec["server"]["path"], sock, "{rec:#}");
    let deadline = Instant::now() + WAIT;
    while !r.agent.status()["sessions"]
        .as_array()
        .is_some_and(Vec::is_empty)
    {
        assert!(
            Instant::now() < deadline,
            "the raw client's session did not end after it closed\n{}",
            r.ctx()
        );
        sleep(Duration::from_millis(50));
    }
}

#[test]
fn scram_over_the_unix_hop_accepts_the_right_password_and_refuses_a_wrong_one() {
    require_root();
    const PASSWORD: &str = "unix-s3cret";
    // Unix connections need SCRAM; TCP from loopback stays trust for the harness.
    let pg = PgServer::start_configured(
        &format!("{LOG_ALL}\npassword_encryption = 'scram-sha-256'"),
        Some(
            "local all all scram-sha-256\n\
             host all all 127.0.0.1/32 trust\n\
             host all all ::1/128 trust\n",
        ),
    );
    pg.psql_direct(&format!("ALTER USER postgres PASSWORD '{PASSWORD}'"));
    let r = Rig::with(
        pg,
        "pgw-e2e-uscram",
        |cg, _| allow_all_workload("e2e-uscram", cg),
        "",
    );
    let dir = r.pg.socket_dir().to_string_lossy().into_owned();

    // Control: untagged, without a password, PostgreSQL asks for one (local is not trust).
    let out = run_output(&mut psql_unix(None, &dir, r.pg.port, "SELECT 1"));
    assert!(
        !out.status.success() && stderr(&out).contains("no password supplied"),
        "untagged psql without a password was not asked for one: local is not SCRAM?\n{}",
        text(&out)
    );

    // Tagged, right password.
    let m = marker("scram-ok");
    let before = counters(&r.agent);
    let scram_logins = r.pg.log().matches("method=scram-sha-256").count();
    let out = run_output(
        psql_unix(Some(&r.cg), &dir, r.pg.port, &format!("SELECT '{m}'"))
            .env("PGPASSWORD", PASSWORD),
    );
    let after = counters(&r.agent);
    assert!(
        out.status.success(),
        "tagged psql with the right password over the Unix socket failed\n{}\n{}",
        text(&out),
        r.ctx()
    );
    assert_eq!(stdout(&out), m);
    assert_eq!(
        delta(&before, &after, "unix_redirected", &r.agent),
        1,
        "the SCRAM login was not redirected ({before} -> {after})\n{}",
        r.ctx()
    );
    assert!(
        r.pg.log().matches("method=scram-sha-256").count() > scram_logins,
        "PostgreSQL logged no SCRAM authentication for the relayed login\n{}",
        r.ctx()
    );
    assert!(logged(&r.pg, &m));

    // Tagged, wrong password: PostgreSQL's refusal comes back through pgwarden.
    let m = marker("scram-bad");
    let before = counters(&r.agent);
    let out = run_output(
        psql_unix(Some(&r.cg), &dir, r.pg.port, &format!("SELECT '{m}'"))
            .env("PGPASSWORD", "wrong-password"),
    );
    let after = counters(&r.agent);
    assert!(
        !out.status.success()
            && stderr(&out).contains("password authentication failed for user \"postgres\""),
        "tagged psql with a wrong password did not fail with PostgreSQL's authentication \
         error\n{}\n{}",
        text(&out),
        r.ctx()
    );
    assert!(!logged(&r.pg, &m), "a statement ran with a wrong password");
    assert_eq!(
        delta(&before, &after, "unix_redirected", &r.agent),
        1,
        "the failed login was not redirected: the refusal did not come through pgwarden\n{}",
        r.ctx()
    );
}

/// Luhn-valid synthetic card numbers of three brands, and their `pan`-masked forms.
const PANS: [(&str, &str); 3] = [
    ("4111111111111111", "411111******1111"),
    ("5555555555554444", "555555******4444"),
    ("378282246310005", "378282*****0005"),
];

const MASK_POLICY: &str = "version: 1
profiles:
  analyst:
    classes: [read, transaction, session-set]
    tables:
      public.payments: [read]
    mask:
      columns:
        public.payments.card_number: pan
";

/// Asserts that no full card number is in `out` and every masked one is.
#[track_caller]
fn assert_masked(client: &str, out: &Output, r: &Rig) {
    let all = format!("{}{}", stdout(out), stderr(out));
    for (pan, masked) in PANS {
        assert!(
            !all.contains(pan),
            "{client}: a full card number ({pan}) reached the client over the Unix socket\n{}\n{}",
            text(out),
            r.ctx()
        );
        assert!(
            all.contains(masked),
            "{client}: {pan} not shown masked as {masked}\n{}\n{}",
            text(out),
            r.ctx()
        );
    }
}

/// Checks one client run: it succeeded, was redirected exactly once, has a session.start
/// naming the socket with its pid, and saw only masked card numbers.
#[track_caller]
fn check_client(client: &str, r: &Rig, before: &Value, pid: u32, out: &Output) {
    assert!(
        out.status.success(),
        "{client} over the Unix socket failed\n{}\n{}",
        text(out),
        r.ctx()
    );
    let after = counters(&r.agent);
    assert_eq!(
        delta(before, &after, "unix_redirected", &r.agent),
        1,
        "{client}: its connect was not redirected exactly once ({before} -> {after})\n{}",
        r.ctx()
    );
    let rec = session_start_of(&r.agent, pid);
    assert_eq!(
        rec["server"]["path"],
        r.pg.socket_path().to_string_lossy().into_owned(),
        "{client}: {rec:#}"
    );
    assert_eq!(rec["workload"], "analyst", "{client}: {rec:#}");
    assert_eq!(
        rec["actor"]["cgroup"],
        format!("/{}", r.cg.rel),
        "{client}: {rec:#}"
    );
    assert_masked(client, out, r);
}

#[test]
fn psql_psycopg_and_node_over_the_socket_are_intercepted_and_masked() {
    require_root();
    let pg = PgServer::start_configured(LOG_ALL, None);
    let mut seed = String::from(
        "CREATE TABLE payments(id bigint primary key, card_number text, amount numeric);\n",
    );
    for (i, (pan, _)) in PANS.iter().enumerate() {
        seed.push_str(&format!(
            "INSERT INTO payments VALUES ({}, '{pan}', 10);\n",
            i + 1
        ));
    }
    pg.psql_direct(&seed);
    let r = Rig::with(
        pg,
        "pgw-e2e-umask",
        |cg, dir| {
            let policy = dir.join("mask-policy.yaml");
            fs::write(&policy, MASK_POLICY).unwrap();
            format!(
                "  - name: analyst\n    cgroup: \"{}\"\n    policy: {}\n    profile: analyst\n",
                cg.rel,
                policy.display()
            )
        },
        "",
    );
    let dir = r.pg.socket_dir().to_string_lossy().into_owned();
    let port = r.pg.port;
    const SELECT: &str = "SELECT id, card_number FROM payments ORDER BY id";

    // Control: untagged psql over the same socket sees the real numbers.
    let out = run_output(&mut psql_unix(None, &dir, port, SELECT));
    assert!(
        out.status.success() && stdout(&out).contains(PANS[0].0),
        "untagged psql over the socket does not see the seeded card numbers\n{}",
        text(&out)
    );

    // psql (libpq URL form).
    let before = counters(&r.agent);
    let psql = pg_bin("psql");
    let (pid, out) = spawn_wait(
        in_cgroup(&r.cg.path, &psql.to_string_lossy())
            .args(["-X", "-w", "-At", "-v", "ON_ERROR_STOP=1", "-c", SELECT])
            .arg(format!(
                "postgresql:///postgres?host={dir}&port={port}&user=postgres"
            ))
            .env("PGCONNECT_TIMEOUT", "5"),
    );
    check_client("psql", &r, &before, pid, &out);

    // psycopg 3, text and binary results.
    let python = python_venv().join("bin").join("python");
    assert!(
        python.is_file(),
        "{} is missing: run `cargo xtask setup`",
        python.display()
    );
    let script = "import sys, psycopg\n\
        with psycopg.connect(host=sys.argv[1], port=int(sys.argv[2]), user='postgres', \
        dbname='postgres', connect_timeout=5) as conn:\n\
        \x20   cur = conn.cursor()\n\
        \x20   cur.execute('SELECT id, card_number FROM payments ORDER BY id')\n\
        \x20   print(cur.fetchall())\n\
        \x20   cur = conn.cursor(binary=True)\n\
        \x20   cur.execute('SELECT id, card_number FROM payments WHERE id = ANY(%s) ORDER BY id', ([1, 2, 3],))\n\
        \x20   print(cur.fetchall())\n";
    let before = counters(&r.agent);
    let (pid, out) = spawn_wait(in_cgroup(&r.cg.path, &python.to_string_lossy()).args([
        "-c",
        script,
        &dir,
        &port.to_string(),
    ]));
    check_client("psycopg", &r, &before, pid, &out);

    // node `pg`, with a parameterized (extended protocol) query too.
    let node_dir = client_dir("node");
    assert!(
        node_dir.join("node_modules/pg/package.json").is_file(),
        "node `pg` is not installed in {}: run `cargo xtask setup`",
        node_dir.display()
    );
    let script = format!(
        "const {{ Client }} = require('pg');\n(async () => {{\n\
         const c = new Client({{ host: {}, port: {port}, user: 'postgres', database: 'postgres' }});\n\
         await c.connect();\n\
         const r = await c.query('SELECT id, card_number FROM payments ORDER BY id');\n\
         const p = await c.query('SELECT card_number FROM payments WHERE id >= $1 ORDER BY id', [1]);\n\
         console.log(JSON.stringify([r.rows, p.rows]));\n await c.end();\n\
         }})().catch(e => {{ console.error(e); process.exit(1); }});",
        serde_json::to_string(&dir).unwrap()
    );
    let before = counters(&r.agent);
    let (pid, out) = spawn_wait(
        in_cgroup(&r.cg.path, "node")
            .current_dir(&node_dir)
            .args(["-e", &script]),
    );
    check_client("node pg", &r, &before, pid, &out);
}

#[test]
fn a_killed_agent_fails_closed_on_the_socket_and_its_successor_adopts_the_pins() {
    require_root();
    let pg = PgServer::start_configured(LOG_ALL, None);
    let cg = TestCgroup::create(&unique_name("pgw-e2e-ukill"));
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control.sock");
    let pin_dir = Path::new("/sys/fs/bpf").join(unique_name("pgwarden-e2e-ukill"));
    let yaml = agent_config(
        pg.port,
        &control,
        &allow_all_workload("e2e-ukill", &cg),
        &format!(
            "{}bpf:\n  pin_dir: {}\n",
            intercept_dir(&pg),
            pin_dir.display()
        ),
    );
    let sock_dir = pg.socket_dir().to_string_lossy().into_owned();
    let agent = Agent::start(&yaml, &control);

    let m = marker("before-kill");
    let before = counters(&agent);
    let out = run_output(&mut psql_unix(
        Some(&cg),
        &sock_dir,
        pg.port,
        &format!("SELECT '{m}'"),
    ));
    assert!(
        out.status.success() && logged(&pg, &m),
        "tagged psql over the socket failed before the crash\n{}\n{}",
        text(&out),
        context(&agent, &pg)
    );
    assert_eq!(
        delta(&before, &counters(&agent), "unix_redirected", &agent),
        1,
        "not redirected before the crash\n{}",
        context(&agent, &pg)
    );
    let first_log = agent.log();

    // Crash.
    agent.kill9();
    // A margin for PostgreSQL to end the backends of the dead agent's relayed connections
    // before they are counted (nothing marks that moment).
    sleep(Duration::from_millis(300));
    let conns = local_connections(&pg);
    let mut down_markers = Vec::new();
    for client in ["psql", "raw"] {
        let m = marker("while-down");
        let out = if client == "psql" {
            run_output(&mut psql_unix(
                Some(&cg),
                &sock_dir,
                pg.port,
                &format!("SELECT '{m}'"),
            ))
        } else {
            run_output(&mut probe(
                Some(&cg),
                &pg.socket_path().to_string_lossy(),
                None,
                &m,
            ))
        };
        let said = format!("{}{}", stdout(&out), stderr(&out));
        assert!(
            !out.status.success(),
            "{client}: a tagged client got through the Unix socket while pgwarden was down\n{}\n\
             --- the dead agent's log ---\n{first_log}",
            text(&out)
        );
        assert!(
            said.contains("Connection refused")
                || said.contains("ECONNREFUSED")
                || says_eperm(&said),
            "{client}: while pgwarden was down the tagged client failed, but not with \
             'connection refused' (or EPERM)\n{}",
            text(&out)
        );
        down_markers.push(m);
    }
    assert!(
        pin_dir.exists(),
        "the programs did not stay pinned in {}",
        pin_dir.display()
    );
    for m in &down_markers {
        assert!(
            !logged(&pg, m),
            "a tagged client's statement reached PostgreSQL while pgwarden was down\n\
             --- pg.log ---\n{}",
            pg.log()
        );
    }
    assert_eq!(
        local_connections(&pg),
        conns,
        "PostgreSQL accepted a Unix connection while pgwarden was down\n--- pg.log ---\n{}",
        pg.log()
    );

    // Untagged clients are never affected.
    let m = marker("untagged-while-down");
    let out = run_output(&mut psql_unix(
        None,
        &sock_dir,
        pg.port,
        &format!("SELECT '{m}'"),
    ));
    assert!(
        out.status.success() && logged(&pg, &m),
        "untagged psql over the socket failed while pgwarden was down\n{}",
        text(&out)
    );

    // Restart with the same config: it adopts the pins and tagged clients get through again.
    let agent = Agent::start(&yaml, &control);
    assert!(
        agent
            .log()
            .contains("adopting the previous run's pinned programs"),
        "the successor did not adopt the pins\n{}",
        agent.log()
    );
    let m = marker("after-restart");
    let before = counters(&agent);
    let (pid, out) = spawn_wait(&mut psql_unix(
        Some(&cg),
        &sock_dir,
        pg.port,
        &format!("SELECT '{m}'"),
    ));
    assert!(
        out.status.success() && stdout(&out) == m,
        "tagged psql over the socket failed after the successor started\n{}\n{}",
        text(&out),
        context(&agent, &pg)
    );
    assert!(logged(&pg, &m));
    assert_eq!(
        delta(&before, &counters(&agent), "unix_redirected", &agent),
        1,
        "the connect after the restart was not redirected\n{}",
        context(&agent, &pg)
    );
    let rec = session_start_of(&agent, pid);
    assert_eq!(
        rec["server"]["path"],
        pg.socket_path().to_string_lossy().into_owned(),
        "{rec:#}"
    );
    drop(agent);
    assert!(!pin_dir.exists(), "detach left pins behind");
}

#[test]
fn a_filesystem_listener_and_an_exact_socket_path_work_and_a_null_listener_fails_closed() {
    require_root();
    let pg = PgServer::start_configured(LOG_ALL, None);
    let cg = TestCgroup::create(&unique_name("pgw-e2e-ulisten"));
    let dir = tempfile::tempdir().unwrap();
    let sock_dir = pg.socket_dir().to_string_lossy().into_owned();
    let sock = pg.socket_path().to_string_lossy().into_owned();
    let workloads = allow_all_workload("e2e-ulisten", &cg);

    // A listener at a filesystem path, and intercept_unix naming the exact socket.
    let listener = dir.path().join("pgwarden-unix.sock");
    let control = control_in(dir.path());
    let yaml = agent_config(
        pg.port,
        &control,
        &workloads,
        &format!("intercept_unix:\n  - {sock}\n"),
    )
    .replacen(
        "listen:\n",
        &format!("listen:\n  unix: {}\n", listener.display()),
        1,
    );
    let agent = Agent::start(&yaml, &control);
    assert!(
        fs::metadata(&listener).is_ok_and(|m| m.file_type().is_socket()),
        "the agent did not create its Unix listener at {}\n{}",
        listener.display(),
        agent.log()
    );
    let m = marker("fs-listener");
    let before = counters(&agent);
    let child = psql_unix(
        Some(&cg),
        &sock_dir,
        pg.port,
        &format!("SELECT '{m}', pg_sleep(1)"),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let session = session_of(&agent, child.id());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && logged(&pg, &m),
        "tagged psql through a filesystem-path listener (exact socket in intercept_unix) \
         failed\n{}\n{}",
        text(&out),
        context(&agent, &pg)
    );
    assert_eq!(session["server"], sock, "{session:#}");
    assert_eq!(
        delta(&before, &counters(&agent), "unix_redirected", &agent),
        1,
        "{}",
        context(&agent, &pg)
    );
    drop(agent);

    // listen.unix: null: no Unix interception, and tagged Unix connects fail closed.
    let control = control_in(dir.path());
    let yaml = agent_config(pg.port, &control, &workloads, &intercept_dir(&pg)).replacen(
        "listen:\n",
        "listen:\n  unix: null\n",
        1,
    );
    let agent = Agent::start(&yaml, &control);
    let m = marker("null-listener");
    let before = counters(&agent);
    let conns = local_connections(&pg);
    let out = run_output(&mut psql_unix(
        Some(&cg),
        &sock_dir,
        pg.port,
        &format!("SELECT '{m}'"),
    ));
    let after = counters(&agent);
    assert!(
        !out.status.success(),
        "with listen.unix: null a tagged psql over the socket SUCCEEDED (direct?)\n{}\n{}",
        text(&out),
        context(&agent, &pg)
    );
    assert!(
        !logged(&pg, &m) && local_connections(&pg) == conns,
        "with listen.unix: null a tagged client reached PostgreSQL\n{}",
        context(&agent, &pg)
    );
    assert_eq!(
        delta(&before, &after, "unix_redirected", &agent),
        0,
        "{}",
        context(&agent, &pg)
    );
    let refused = delta(&before, &after, "unix_refused", &agent)
        + delta(&before, &after, "unix_refused_direct", &agent);
    assert_eq!(
        refused,
        1,
        "with listen.unix: null the refusal was not counted (unix_refused + \
         unix_refused_direct: {before} -> {after})\n{}",
        context(&agent, &pg)
    );
    let m = marker("null-untagged");
    let out = run_output(&mut psql_unix(
        None,
        &sock_dir,
        pg.port,
        &format!("SELECT '{m}'"),
    ));
    assert!(
        out.status.success() && logged(&pg, &m),
        "untagged psql failed with listen.unix: null\n{}",
        text(&out)
    );
}

#[test]
fn the_default_intercept_list_covers_tmp_and_leaves_other_directories_refused() {
    require_root();
    let pg = PgServer::start_configured(LOG_ALL, None);
    let cg = TestCgroup::create(&unique_name("pgw-e2e-udefault"));
    let dir = tempfile::tempdir().unwrap();
    // PostgreSQL's socket also under /tmp/.s.PGSQL.<port> (a hard link: the same socket).
    let in_tmp = Path::new("/tmp").join(sock_name(&pg));
    assert!(
        !in_tmp.exists(),
        "{} already exists; cannot run this test",
        in_tmp.display()
    );
    fs::hard_link(pg.socket_path(), &in_tmp).expect("hard link the socket into /tmp");
    let _cleanup = RemoveOnDrop(in_tmp.clone());
    let control = control_in(dir.path());
    // No intercept_unix: the default list (/var/run/postgresql, /run/postgresql, /tmp).
    let yaml = agent_config(
        pg.port,
        &control,
        &allow_all_workload("e2e-udefault", &cg),
        "",
    );
    let agent = Agent::start(&yaml, &control);

    let m = marker("default-tmp");
    let before = counters(&agent);
    let child = psql_unix(
        Some(&cg),
        "/tmp",
        pg.port,
        &format!("SELECT '{m}', pg_sleep(1)"),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let session = session_of(&agent, child.id());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && logged(&pg, &m),
        "tagged psql -h /tmp (default intercept list) failed\n{}\n{}",
        text(&out),
        context(&agent, &pg)
    );
    assert_eq!(
        session["server"],
        in_tmp.to_string_lossy().into_owned(),
        "{session:#}"
    );
    assert_eq!(
        delta(&before, &counters(&agent), "unix_redirected", &agent),
        1,
        "{}",
        context(&agent, &pg)
    );

    // The server's own directory is not in the default list: a tagged connect there reaches
    // a PostgreSQL socket by a name pgwarden does not intercept, and is refused.
    let m = marker("default-other");
    let before = counters(&agent);
    let out = run_output(&mut psql_unix(
        Some(&cg),
        &pg.socket_dir().to_string_lossy(),
        pg.port,
        &format!("SELECT '{m}'"),
    ));
    let after = counters(&agent);
    assert!(
        !out.status.success() && says_eperm(&stderr(&out)),
        "a tagged psql to a non-intercepted PostgreSQL socket directory was not refused with \
         EPERM\n{}\n{}",
        text(&out),
        context(&agent, &pg)
    );
    assert!(!logged(&pg, &m), "the refused statement reached PostgreSQL");
    assert_eq!(
        delta(&before, &after, "unix_refused_direct", &agent),
        1,
        "{}",
        context(&agent, &pg)
    );
}
