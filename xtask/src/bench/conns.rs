//! Connection-level sections, driven by small Python clients: the agent's RSS with many idle
//! tagged connections, and what pgwarden's connect hooks cost an untagged process.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pgwarden_e2e::in_cgroup;
use serde_json::{Value, json};

use super::pgbench::{finite, median};
use super::rig::{Rig, Which, rss_kib};
use super::{Section, Thousands};
use crate::cmd;

/// Opens N connections to HOST:PORT, completes each startup (protocol 3.0, user and database
/// `postgres`, trust auth: no password exchange), prints `ready N`, holds the sockets until
/// stdin closes, then sends Terminate on each.
const IDLE_CLIENTS_PY: &str = r#"
import resource, socket, struct, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = n + 64 if hard == resource.RLIM_INFINITY else min(hard, n + 64)
if soft < want:
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
params = b"user\0postgres\0database\0postgres\0application_name\0pgwarden-bench-idle\0\0"
body = struct.pack("!i", 196608) + params
startup = struct.pack("!i", len(body) + 4) + body
def exact(s, k):
    data = b""
    while len(data) < k:
        chunk = s.recv(k - len(data))
        if not chunk:
            raise EOFError("connection closed during startup")
        data += chunk
    return data
socks = []
for i in range(n):
    try:
        s = socket.create_connection((host, port), timeout=30)
        s.sendall(startup)
        while True:
            head = exact(s, 5)
            kind, length = head[:1], struct.unpack("!i", head[1:])[0]
            msg = exact(s, length - 4)
            if kind == b"E":
                sys.exit(f"connection {i}: server error {msg!r}")
            if kind == b"R" and struct.unpack("!i", msg[:4])[0] != 0:
                sys.exit(f"connection {i}: the server asks for a password (want trust)")
            if kind == b"Z":
                break
    except Exception as e:
        sys.exit(f"connection {i} of {n}: {e!r}")
    socks.append(s)
print(f"ready {len(socks)}", flush=True)
sys.stdin.read()
for s in socks:
    try:
        s.sendall(b"X\0\0\0\4")
        s.close()
    except OSError:
        pass
"#;

/// Listens on 127.0.0.1:PORT and, for SECONDS, connects to itself, accepts and closes both ends
/// (the client with SO_LINGER 0, so no TIME_WAIT piles up); prints connects per second.
const CONNECT_LOOP_PY: &str = r#"
import socket, struct, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
lst = socket.socket()
lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(("127.0.0.1", port))
lst.listen(128)
linger = struct.pack("ii", 1, 0)
addr = ("127.0.0.1", port)
def batch(k):
    for _ in range(k):
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        c.connect(addr)
        a, _ = lst.accept()
        a.close()
        c.close()
batch(200)
n, start = 0, time.perf_counter()
deadline = start + seconds
while True:
    batch(100)
    n += 100
    now = time.perf_counter()
    if now >= deadline:
        break
print(n / (now - start))
"#;

/// One connect loop of an untagged process; connects per second.
fn connect_loop(rig: &Rig) -> Result<f64> {
    let out = cmd::stdout_of(
        Command::new("python3")
            .args(["-c", CONNECT_LOOP_PY])
            .arg(rig.listener_port.to_string())
            .arg(rig.plan.connect_seconds.to_string()),
    )?;
    out.trim()
        .parse()
        .with_context(|| format!("the connect loop printed {out:?}"))
}

/// Untagged connect overhead: the loop with none of the bench's programs attached, then with
/// the policy agent running (its intercept list holds the loop's port), alternating at least
/// three times (the loops are short and noisy), ending with none again.
pub fn connect_overhead(rig: &mut Rig) -> Result<Box<dyn Section>> {
    rig.stop_agents();
    let mut without = Vec::new();
    let mut with = Vec::new();
    let rounds = rig.plan.rounds.max(3);
    for round in 1..=rounds {
        rig.check_interrupt()?;
        without.push(connect_loop(rig)?);
        rig.agent(Which::Policy)?;
        with.push(connect_loop(rig)?);
        rig.stop_agents();
        println!(
            "  round {round}/{rounds}  no pgwarden programs {:>8} connects/s   pgwarden running {:>8} connects/s",
            Thousands(without[without.len() - 1]).to_string(),
            Thousands(with[with.len() - 1]).to_string(),
        );
    }
    without.push(connect_loop(rig)?);
    println!(
        "  final        no pgwarden programs {:>8} connects/s",
        Thousands(without[without.len() - 1]).to_string()
    );
    Ok(Box::new(ConnectOverhead {
        seconds: rig.plan.connect_seconds,
        without,
        with,
    }))
}

struct ConnectOverhead {
    seconds: f64,
    without: Vec<f64>,
    with: Vec<f64>,
}

impl ConnectOverhead {
    fn ratio(&self) -> f64 {
        median(self.with.clone()) / median(self.without.clone())
    }

    /// Extra time per connect, microseconds.
    fn extra_us(&self) -> f64 {
        1e6 / median(self.with.clone()) - 1e6 / median(self.without.clone())
    }
}

impl Section for ConnectOverhead {
    fn key(&self) -> &'static str {
        "untagged_connect"
    }

    fn markdown(&self) -> String {
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| Thousands(*x).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "## Untagged connect overhead\n\n\
             An untagged Python process connects to a listening socket on 127.0.0.1 whose port \
             the agent intercepts, accepts and closes, for {:.0} s per run: every connect passes \
             pgwarden's connect4 program (tagged? intercepted?) and goes where it was going. \
             \"No programs\" runs have no pgwarden program of the bench attached (the agent \
             stopped and `pgwarden detach` run: a stopped agent leaves them attached, costing \
             what a running one does). Runs alternate; medians.\n\n\
             | | connects/s (median) | runs |\n|---|---:|---|\n\
             | no pgwarden programs | {} | {} |\n\
             | pgwarden running | {} | {} |\n\n\
             Ratio {:.3}; {:+.2} µs per connect, against {:.1} µs per connect + accept + close \
             of this Python loop without programs. Compare the difference with the spread of \
             the runs before reading anything into it.\n",
            self.seconds,
            Thousands(median(self.without.clone())),
            list(&self.without),
            Thousands(median(self.with.clone())),
            list(&self.with),
            self.ratio(),
            self.extra_us(),
            1e6 / median(self.without.clone()),
        )
    }

    fn json(&self) -> Value {
        json!({
            "seconds": self.seconds,
            "without_connects_per_s": self.without,
            "with_connects_per_s": self.with,
            "ratio": finite(self.ratio()),
            "extra_us_per_connect": finite(self.extra_us()),
        })
    }
}

/// The agent's RSS, median of five samples 100 ms apart.
fn settled_rss(pid: u32) -> Result<u64> {
    let mut samples = Vec::new();
    for _ in 0..5 {
        samples.push(rss_kib(pid)?);
        sleep(Duration::from_millis(100));
    }
    samples.sort_unstable();
    Ok(samples[samples.len() / 2])
}

/// Agent memory: RSS idle, then with N idle tagged connections (through the redirect, startup
/// completed) held open.
pub fn idle_memory(rig: &mut Rig) -> Result<Box<dyn Section>> {
    let n = rig.plan.idle_conns;
    let agent = rig.agent(Which::Policy)?;
    let pid = agent.pid();
    let redirected_before = agent.counter("redirected")?;
    sleep(Duration::from_millis(500));
    let idle = settled_rss(pid)?;
    let mut child = in_cgroup(&rig.cgroups.reader.path, "python3")
        .args(["-c", IDLE_CLIENTS_PY, "127.0.0.1"])
        .arg(rig.pg.port.to_string())
        .arg(n.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start the idle-connection client")?;
    let mut line = String::new();
    let stdout = child.stdout.take().context("client stdout")?;
    BufReader::new(stdout).read_line(&mut line)?;
    if line.trim() != format!("ready {n}") {
        let _ = child.kill();
        let out = child.wait_with_output()?;
        bail!(
            "the idle-connection client did not open {n} connections: {:?} {}\n--- agent log (tail) ---\n{}",
            line.trim(),
            String::from_utf8_lossy(&out.stderr).trim(),
            super::pgbench::tail(&rig.agent(Which::Policy)?.log_text(), 20)
        );
    }
    sleep(Duration::from_secs(1));
    let held = settled_rss(pid)?;
    let agent = rig.agent(Which::Policy)?;
    let sessions = agent.sessions()?;
    let redirected = agent.counter("redirected")? - redirected_before;
    let backends = rig.pg.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgwarden-bench-idle'",
    )?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"done\n");
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "the idle-connection client failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if redirected < u64::from(n) {
        bail!("only {redirected} of {n} idle connections went through the redirect");
    }
    let section = IdleMemory {
        conns: n,
        idle_kib: idle,
        held_kib: held,
        sessions,
        backends: backends.parse().unwrap_or(0),
    };
    println!(
        "  {n} idle tagged connections: agent RSS {} KiB idle, {} KiB with them ({:.1} KiB each); \
         agent lists {sessions} sessions, PostgreSQL {} backends",
        Thousands(idle as f64),
        Thousands(held as f64),
        section.per_conn_kib(),
        section.backends
    );
    Ok(Box::new(section))
}

struct IdleMemory {
    conns: u32,
    idle_kib: u64,
    held_kib: u64,
    sessions: usize,
    backends: u64,
}

impl IdleMemory {
    #[allow(clippy::cast_precision_loss, reason = "KiB")]
    fn per_conn_kib(&self) -> f64 {
        (self.held_kib as f64 - self.idle_kib as f64) / f64::from(self.conns)
    }
}

impl Section for IdleMemory {
    fn key(&self) -> &'static str {
        "memory"
    }

    fn markdown(&self) -> String {
        format!(
            "## Agent memory with idle connections\n\n\
             A Python client in the `reader` cgroup opens {} connections to PostgreSQL's real \
             address (redirected to the pci-dss agent), completes each startup and holds them. \
             VmRSS of the agent (median of 5 samples) before and while they are held; the agent \
             listed {} live sessions, PostgreSQL {} backends for them.\n\n\
             | agent RSS idle | with {} idle connections | per connection |\n|---:|---:|---:|\n\
             | {} KiB | {} KiB | {:.1} KiB |\n",
            self.conns,
            self.sessions,
            self.backends,
            self.conns,
            Thousands(self.idle_kib as f64),
            Thousands(self.held_kib as f64),
            self.per_conn_kib(),
        )
    }

    fn json(&self) -> Value {
        json!({
            "connections": self.conns,
            "agent_rss_kib_idle": self.idle_kib,
            "agent_rss_kib_held": self.held_kib,
            "per_connection_kib": finite(self.per_conn_kib()),
            "agent_sessions": self.sessions,
            "postgres_backends": self.backends,
        })
    }
}
