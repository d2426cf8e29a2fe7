//! The data path end to end: a real PostgreSQL, the real eBPF programs attached to the
//! cgroup2 root, cgroups this test creates, and real clients (psql, python sockets) in them.
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use pgwarden_e2e::{
    Agent, PgServer, TestCgroup, free_port, in_cgroup, pg_bin, require_root, run_ok, run_output,
    unique_name,
};
use serde_json::Value;

/// PostgreSQL, an agent intercepting its port, and a directory for the control socket.
struct World {
    pg: PgServer,
    agent: Agent,
    _control_dir: tempfile::TempDir,
}

/// Starts PostgreSQL and an agent whose config has these `workloads:` lines (YAML, indented
/// two spaces), intercepting any address on PostgreSQL's port.
fn world(workloads_yaml: &str) -> World {
    // Every workload here relays under the allow-all policy: this file tests the data path.
    let allow_all = pgwarden_e2e::policy_path("allow-all.yaml");
    let workloads_yaml = workloads_yaml.replace(
        "  - name: ",
        &format!(
            "  - policy: {}\n    profile: allow-all\n    name: ",
            allow_all.display()
        ),
    );
    require_root();
    let pg = PgServer::start();
    let control_dir = tempfile::tempdir().expect("temp dir");
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
        pg,
        agent,
        _control_dir: control_dir,
    }
}

impl World {
    fn counter(&self, name: &str) -> u64 {
        self.agent.status()["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name}"))
    }

    /// psql, run in `cg` (or outside any test cgroup), against PostgreSQL's real address.
    fn psql(&self, cg: Option<&TestCgroup>, host: &str, sql: &str) -> Command {
        let psql = pg_bin("psql");
        let psql = psql.to_str().expect("utf-8 path");
        let mut cmd = match cg {
            Some(cg) => in_cgroup(&cg.path, psql),
            None => Command::new(psql),
        };
        cmd.args(["-X", "-v", "ON_ERROR_STOP=1", "-Atc", sql])
            .arg(self.pg.url(host));
        cmd
    }

    /// Waits for a live session whose actor pid is `pid`.
    fn session_of(&self, pid: u32) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
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
                "no session for pid {pid}; status: {status:#}\nagent log:\n{}",
                self.agent.log()
            );
            sleep(Duration::from_millis(50));
        }
    }
}

/// Runs a client to success and returns its trimmed stdout.
fn ok(cmd: &mut Command) -> String {
    run_ok(cmd).trim().to_owned()
}

fn wait_ok(child: Child) -> String {
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "client failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client")
}

/// python3 in `cg` connects a TCP socket to `host`:`port` (family from the address) and
/// prints what getpeername() says.
fn peername(cg: &TestCgroup, host: &str, port: u16) -> String {
    let script = format!(
        "import socket\nfam = socket.AF_INET6 if ':' in '{host}' else socket.AF_INET\n\
         s = socket.socket(fam, socket.SOCK_STREAM)\ns.connect(('{host}', {port}))\n\
         p = s.getpeername()\nprint(p[0], p[1])\ns.close()\n"
    );
    run_ok(in_cgroup(&cg.path, "python3").args(["-c", &script]))
        .trim()
        .to_owned()
}

#[test]
fn tagged_psql_is_redirected_with_its_identity_and_untagged_goes_direct() {
    let cg = TestCgroup::create(&unique_name("pgw-e2e-tagged"));
    let w = world(&format!("  - name: e2e-app\n    cgroup: \"{}\"\n", cg.rel));

    // Tagged: psql in the cgroup, pointed at PostgreSQL's real address.
    let before = w.counter("redirected");
    let child = spawn(&mut w.psql(
        Some(&cg),
        "127.0.0.1",
        "select inet_client_port(), inet_server_port(), pg_sleep(1)",
    ));
    let pid = child.id();
    let session = w.session_of(pid);
    let out = wait_ok(child);
    assert_eq!(session["workload"], "e2e-app");
    let who = &session["identity"];
    assert_eq!(who["cgroup"], format!("/{}", cg.rel));
    assert_eq!(who["uid"], 0);
    assert_eq!(who["user"], "root");
    assert_eq!(who["comm"], "psql");
    assert_eq!(
        PathBuf::from(who["exe"].as_str().unwrap()),
        pg_bin("psql").canonicalize().unwrap()
    );
    assert_eq!(session["server"], format!("127.0.0.1:{}", w.pg.port));
    // Server side: the backend's client port is pgwarden's upstream socket.
    let mut cols = out.split('|');
    let client_port: u16 = cols.next().unwrap().parse().unwrap();
    let server_port: u16 = cols.next().unwrap().parse().unwrap();
    let upstream_local: std::net::SocketAddr =
        session["upstream_local"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        client_port,
        upstream_local.port(),
        "the backend's peer is not pgwarden's upstream socket"
    );
    assert_eq!(server_port, w.pg.port);
    assert!(w.counter("redirected") > before);

    // The client's getpeername() shows the address it asked for, not the interceptor's.
    assert_eq!(
        peername(&cg, "127.0.0.1", w.pg.port),
        format!("127.0.0.1 {}", w.pg.port)
    );

    // Untagged: the same psql outside the cgroup goes direct: not counted, no session, and
    // the backend's peer is psql's own socket.
    let before = w.counter("redirected");
    let out = ok(&mut w.psql(
        None,
        "127.0.0.1",
        "select count(*) from pg_stat_activity where client_port = inet_client_port()",
    ));
    assert_eq!(out, "1");
    assert_eq!(
        w.counter("redirected"),
        before,
        "an untagged connect was redirected"
    );
    assert!(w.agent.status()["sessions"].as_array().unwrap().is_empty());
}

#[test]
fn a_restarted_unit_stays_intercepted_and_a_tagged_parent_covers_children() {
    let base = TestCgroup::create(&unique_name("pgw-e2e-units"));
    let unit = base.child("pgw-e2e-app.service");
    // `adhoc` has no matcher: `pgwarden tag` assigns it below.
    let w = world("  - name: e2e-unit\n    systemd_unit: \"pgw-e2e-*.service\"\n  - name: adhoc\n");
    let status = w.agent.status();
    let tagged = status["tagged"].as_array().unwrap();
    assert!(
        tagged
            .iter()
            .any(|t| t["path"] == format!("/{}", unit.rel) && t["workload"] == "e2e-unit"),
        "{status:#}"
    );

    let before = w.counter("redirected");
    assert_eq!(ok(&mut w.psql(Some(&unit), "127.0.0.1", "select 1")), "1");
    assert_eq!(w.counter("redirected"), before + 1);

    // Restart: the cgroup goes away and comes back at the same path with a new id. The kernel
    // tags it at mkdir (sticky path), so the very first connect is intercepted.
    let sticky_before = w.counter("sticky_tagged");
    unit.remove().unwrap();
    let unit = base.child("pgw-e2e-app.service");
    assert_eq!(ok(&mut w.psql(Some(&unit), "127.0.0.1", "select 2")), "2");
    assert_eq!(
        w.counter("redirected"),
        before + 2,
        "the restarted unit's connect went direct"
    );
    assert_eq!(w.counter("sticky_tagged"), sticky_before + 1);

    // A brand-new unit matching the glob is tagged from its mkdir event.
    let other = base.child("pgw-e2e-other.service");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !w.agent.status()["tagged"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["path"] == format!("/{}", other.rel))
    {
        assert!(Instant::now() < deadline, "new unit never tagged");
        sleep(Duration::from_millis(20));
    }
    assert_eq!(ok(&mut w.psql(Some(&other), "127.0.0.1", "select 3")), "3");
    assert_eq!(w.counter("redirected"), before + 3);

    // A parent tagged with `pgwarden tag` covers a child created afterwards.
    let slice = base.child("adhoc.slice");
    let out = w
        .agent
        .cli(&["tag", slice.path.to_str().unwrap(), "--workload", "adhoc"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let child_cg = slice.child("job-1");
    let child = spawn(&mut w.psql(Some(&child_cg), "127.0.0.1", "select pg_sleep(1)"));
    let session = w.session_of(child.id());
    wait_ok(child);
    assert_eq!(session["workload"], "adhoc");
    assert_eq!(session["identity"]["cgroup"], format!("/{}", child_cg.rel));

    // Untag: new connections go direct.
    let out = w.agent.cli(&["untag", &slice.rel]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = w.counter("redirected");
    assert_eq!(
        ok(&mut w.psql(Some(&child_cg), "127.0.0.1", "select 4")),
        "4"
    );
    assert_eq!(
        w.counter("redirected"),
        before,
        "untagged cgroup still redirected"
    );
}

#[test]
fn ipv6_and_ipv4_mapped_destinations_are_redirected() {
    let cg = TestCgroup::create(&unique_name("pgw-e2e-v6"));
    let w = world(&format!("  - name: e2e-v6\n    cgroup: \"{}\"\n", cg.rel));
    let port = w.pg.port;

    let child = spawn(&mut w.psql(Some(&cg), "::1", "select inet_server_addr(), pg_sleep(1)"));
    let session = w.session_of(child.id());
    let out = wait_ok(child);
    assert_eq!(session["server"], format!("[::1]:{port}"));
    assert!(out.starts_with("::1"), "{out}");
    assert_eq!(peername(&cg, "::1", port), format!("::1 {port}"));

    // An AF_INET6 socket connecting to an IPv4-mapped address.
    let child = spawn(&mut w.psql(
        Some(&cg),
        "::ffff:127.0.0.1",
        "select inet_server_addr(), pg_sleep(1)",
    ));
    let session = w.session_of(child.id());
    let out = wait_ok(child);
    assert_eq!(session["server"], format!("127.0.0.1:{port}"));
    assert!(out.starts_with("127.0.0.1"), "{out}");
    assert_eq!(
        peername(&cg, "::ffff:127.0.0.1", port),
        format!("::ffff:127.0.0.1 {port}")
    );
}

#[test]
fn two_hundred_concurrent_tagged_connections_are_all_relayed() {
    let cg = TestCgroup::create(&unique_name("pgw-e2e-many"));
    let w = world(&format!("  - name: e2e-many\n    cgroup: \"{}\"\n", cg.rel));
    let before = w.counter("redirected");
    let psql = pg_bin("psql");
    // 200 psql processes at once, each holding its connection for a second, each answering
    // its own number.
    let script = format!(
        "for i in $(seq 1 200); do {} -X -Atc \"select $i, count(*) > 0 from pg_sleep(1)\" '{}' > \"$0/out.$i\" 2>&1 & done; wait",
        psql.display(),
        w.pg.url("127.0.0.1")
    );
    let dir = tempfile::tempdir().unwrap();
    let out =
        run_output(in_cgroup(&cg.path, "sh").args(["-c", &script, dir.path().to_str().unwrap()]));
    assert!(out.status.success(), "{out:?}");
    for i in 1..=200 {
        let got = std::fs::read_to_string(dir.path().join(format!("out.{i}"))).unwrap();
        assert_eq!(
            got.trim(),
            format!("{i}|t"),
            "connection {i}; agent log:\n{}\nserver log:\n{}",
            w.agent.log(),
            w.pg.log()
        );
    }
    assert_eq!(w.counter("redirected"), before + 200);
}

#[test]
fn the_agents_own_upstream_is_never_redirected_and_unrecorded_connections_are_refused() {
    let cg = TestCgroup::create(&unique_name("pgw-e2e-self"));
    let agent_cg = TestCgroup::create(&unique_name("pgw-e2e-agent"));
    let w = world(&format!(
        "  - name: e2e-self\n    cgroup: [\"{}\", \"{}\"]\n",
        cg.rel, agent_cg.rel
    ));
    // Move the agent into a tagged cgroup: its own connects to PostgreSQL must still go direct.
    std::fs::write(
        agent_cg.path.join("cgroup.procs"),
        w.agent.pid().to_string(),
    )
    .unwrap();
    assert_eq!(ok(&mut w.psql(Some(&cg), "127.0.0.1", "select 42")), "42");

    // A client that connects to the listen address itself has no record: refused.
    let listen = w.agent.status()["listen"][0].as_str().unwrap().to_owned();
    let port = listen.rsplit(':').next().unwrap();
    let out = run_output(Command::new(pg_bin("psql")).args([
        "-X",
        "-Atc",
        "select 1",
        "-h",
        "127.0.0.1",
        "-p",
        port,
        "-U",
        "postgres",
    ]));
    assert!(
        !out.status.success(),
        "a connection without a redirect record was relayed"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !w.agent.log().contains("no redirect record") {
        assert!(
            Instant::now() < deadline,
            "no log line for the refused connection:\n{}",
            w.agent.log()
        );
        sleep(Duration::from_millis(50));
    }
    // Move the agent back out before the cgroup is removed (removal kills its processes).
    std::fs::write(
        pgwarden_e2e::cgroup2_root().join("cgroup.procs"),
        w.agent.pid().to_string(),
    )
    .unwrap();
}
