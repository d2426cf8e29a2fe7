//! Running as a host service: fail closed across a crash (kill -9), a graceful SIGTERM that
//! closes sessions with 57P01, the documented capability set, and the systemd unit.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgwarden_e2e::{
    Agent, PgServer, TestCgroup, free_port, in_cgroup, pg_bin, policy_path, require_root,
    run_output, unique_name,
};

fn config(pg: &PgServer, cg: &TestCgroup, control: &Path, pin_dir: &Path) -> String {
    let listen = free_port();
    format!(
        "listen:\n  ipv4: 127.0.0.1:{listen}\n  ipv6: null\ncontrol:\n  socket: {}\nintercept: [\"*:{}\"]\n\
         bpf:\n  pin_dir: {}\nworkloads:\n  - name: svc\n    cgroup: \"{}\"\n    policy: {}\n    profile: allow-all\n",
        control.display(),
        pg.port,
        pin_dir.display(),
        cg.rel,
        policy_path("allow-all.yaml").display()
    )
}

/// Connections PostgreSQL has accepted so far (log_connections is on).
fn connections(pg: &PgServer) -> usize {
    pg.log().matches("connection received").count()
}

#[test]
fn a_crashed_agent_fails_closed_and_its_successor_adopts_the_pins() {
    require_root();
    let pg = PgServer::start();
    let cg = TestCgroup::create(&unique_name("pgw-e2e-svc"));
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control.sock");
    let pin_dir = Path::new("/sys/fs/bpf").join(unique_name("pgwarden-e2e-svc"));
    let journal = dir.path().join("audit.jsonl");
    let yaml = format!(
        "{}audit:\n  path: {}\n",
        config(&pg, &cg, &control, &pin_dir),
        journal.display()
    );
    let agent = Agent::start(&yaml, &control);

    // A tagged client that keeps connecting, once every 100 ms, for the whole test.
    let psql = pg_bin("psql");
    let script = format!(
        "end=$(( $(date +%s) + 12 )); while [ $(date +%s) -lt $end ]; do \
         if {} -X -Atc 'select 1' '{}' >/dev/null 2>&1; then echo ok; else echo refused; fi; sleep 0.1; done",
        psql.display(),
        pg.url("127.0.0.1")
    );
    let looper = in_cgroup(&cg.path, "sh")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Fixed waits on purpose below: the client runs for a while with the agent up, then the
    // count of connections is taken once the dead agent's have ended, and again after a window
    // in which nothing may reach PostgreSQL.
    std::thread::sleep(Duration::from_secs(2));

    // Crash.
    agent.kill9();
    std::thread::sleep(Duration::from_millis(300));
    let before = connections(&pg);
    std::thread::sleep(Duration::from_secs(3));
    let after = connections(&pg);
    assert_eq!(
        before, after,
        "a tagged client reached PostgreSQL while pgwarden was down"
    );
    assert!(
        pin_dir.join("link_connect4").exists(),
        "the programs did not stay pinned"
    );

    // Restart with the same config: it adopts the pins and the client gets through again.
    let agent = Agent::start(&yaml, &control);
    assert!(
        agent
            .log()
            .contains("adopting the previous run's pinned programs"),
        "{}",
        agent.log()
    );
    let out = looper.wait_with_output().unwrap();
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let first_refused = lines
        .iter()
        .position(|l| l == "refused")
        .expect("no connection was refused while the agent was down");
    assert!(lines[..first_refused].iter().all(|l| l == "ok"));
    assert_eq!(
        lines.last().map(String::as_str),
        Some("ok"),
        "connections did not resume after the restart: {lines:?}"
    );
    assert!(connections(&pg) > after);
    // Untagged clients were never affected.
    let direct = run_output(
        Command::new(&psql)
            .args(["-X", "-Atc", "select 1"])
            .arg(pg.url("127.0.0.1")),
    );
    assert!(direct.status.success());
    drop(agent);
    assert!(!pin_dir.exists(), "detach left pins behind");
    // The journal shows both starts and the stop, and verifies: a crash leaves at most a torn
    // last line, which the next start seals.
    let text = std::fs::read_to_string(&journal).unwrap();
    assert_eq!(
        text.matches("\"event\":\"agent.start\"").count(),
        2,
        "{text}"
    );
    assert_eq!(text.matches("\"event\":\"agent.stop\"").count(), 1);
    let bin = std::env::var("PGWARDEN_BIN").unwrap_or_else(|_| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/debug/pgwarden")
            .display()
            .to_string()
    });
    let verify = run_output(Command::new(bin).args(["audit", "verify"]).arg(&journal));
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn sigterm_drains_then_closes_sessions_with_57p01() {
    require_root();
    let pg = PgServer::start();
    let cg = TestCgroup::create(&unique_name("pgw-e2e-term"));
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control.sock");
    let pin_dir = Path::new("/sys/fs/bpf").join(unique_name("pgwarden-e2e-term"));
    let yaml = format!(
        "{}shutdown:\n  drain_seconds: 1\n",
        config(&pg, &cg, &control, &pin_dir)
    );
    let agent = Agent::start(&yaml, &control);
    let child = in_cgroup(&cg.path, pg_bin("psql").to_str().unwrap())
        .args(["-X", "-Atc", "select pg_sleep(20)"])
        .arg(pg.url("127.0.0.1"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.status()["sessions"].as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(agent.pid()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("terminating connection due to administrator command"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !agent.log().contains("pgwarden stopped") {
        assert!(Instant::now() < deadline, "{}", agent.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_agent_works_with_only_the_documented_capabilities() {
    require_root();
    let pg = PgServer::start();
    let cg = TestCgroup::create(&unique_name("pgw-e2e-caps"));
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control.sock");
    let pin_dir = Path::new("/sys/fs/bpf").join(unique_name("pgwarden-e2e-caps"));
    let yaml = config(&pg, &cg, &control, &pin_dir);
    // systemd mounts these before starting the unit; an agent without CAP_SYS_ADMIN cannot.
    for (fs, at) in [("bpf", "/sys/fs/bpf"), ("tracefs", "/sys/kernel/tracing")] {
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split_whitespace().nth(4) == Some(at));
        if !mounted {
            assert!(
                Command::new("mount")
                    .args(["-t", fs, fs, at])
                    .status()
                    .unwrap()
                    .success()
            );
        }
    }
    // The unit's set: the agent runs under setpriv exactly as systemd would start it.
    let wrapper = dir.path().join("pgwarden-restricted");
    let bin = std::env::var("PGWARDEN_BIN").unwrap_or_else(|_| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/debug/pgwarden")
            .display()
            .to_string()
    });
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec setpriv --bounding-set -all,+bpf,+net_admin,+perfmon,+sys_ptrace --inh-caps -all -- {bin} \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let agent = Agent::start_bin(wrapper, &yaml, &control, &[]);
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap_or_default();
    let _ = status;
    let child = in_cgroup(&cg.path, pg_bin("psql").to_str().unwrap())
        .args(["-X", "-Atc", "select 'capped', pg_sleep(1)"])
        .arg(pg.url("127.0.0.1"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    let session = loop {
        let s = agent.status();
        if let Some(x) = s["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["identity"]["pid"] == pid)
        {
            break x.clone();
        }
        assert!(Instant::now() < deadline, "{}", agent.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("capped"));
    assert_eq!(
        session["identity"]["exe"]
            .as_str()
            .map(|e| e.ends_with("/psql")),
        Some(true),
        "{session}"
    );
    // And it really runs without the rest: CapEff of the agent.
    let agent_pid = std::fs::read_to_string(format!(
        "/proc/{}/task/{}/children",
        agent.pid(),
        agent.pid()
    ))
    .unwrap_or_default();
    let real_pid: u32 = agent_pid
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(agent.pid());
    let status = std::fs::read_to_string(format!("/proc/{real_pid}/status")).unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
        .unwrap();
    // CAP_NET_ADMIN(12) | CAP_SYS_PTRACE(19) | CAP_PERFMON(38) | CAP_BPF(39)
    assert_eq!(
        u64::from_str_radix(cap_eff, 16).unwrap(),
        (1 << 12) | (1 << 19) | (1 << 38) | (1 << 39),
        "CapEff {cap_eff}"
    );
}

#[test]
fn the_unit_installs_and_verifies() {
    require_root();
    let root = tempfile::tempdir().unwrap();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = run_output(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["run", "--quiet", "-p", "xtask", "--", "install", "--root"])
            .arg(root.path())
            .current_dir(&workspace),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = root.path().join("etc/systemd/system/pgwarden.service");
    for f in [
        unit.clone(),
        root.path().join("etc/pgwarden/pgwarden.yaml"),
        root.path().join("etc/pgwarden/policies/pci-dss.yaml"),
        root.path().join("usr/local/bin/pgwarden"),
    ] {
        assert!(f.exists(), "{} not installed", f.display());
    }
    let verify = run_output(Command::new("systemd-analyze").arg("verify").arg(&unit));
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let text = std::fs::read_to_string(&unit).unwrap();
    for needle in [
        "Type=notify",
        "CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_SYS_PTRACE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "SystemCallFilter=@system-service bpf perf_event_open",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LogRateLimitIntervalSec=0",
        "UMask=0077",
    ] {
        assert!(text.contains(needle), "unit lacks {needle}");
    }
    // The installed config and policies load.
    let check = run_output(
        Command::new(root.path().join("usr/local/bin/pgwarden"))
            .args(["policy", "check"])
            .arg(root.path().join("etc/pgwarden/policies/pci-dss.yaml")),
    );
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let _ = std::time::Instant::now();
}

#[test]
fn status_and_metrics_describe_a_live_session() {
    require_root();
    let pg = PgServer::start();
    let cg = TestCgroup::create(&unique_name("pgw-e2e-metrics"));
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control.sock");
    let pin_dir = Path::new("/sys/fs/bpf").join(unique_name("pgwarden-e2e-metrics"));
    let metrics_port = free_port();
    let yaml = format!(
        "{}metrics:\n  listen: 127.0.0.1:{metrics_port}\n",
        config(&pg, &cg, &control, &pin_dir)
    );
    let agent = Agent::start(&yaml, &control);
    let child = in_cgroup(&cg.path, pg_bin("psql").to_str().unwrap())
        .args([
            "-X",
            "-At",
            "-c",
            "select 1",
            "-c",
            "delete from pg_class",
            "-c",
            "select pg_sleep(2)",
        ])
        .arg(pg.url("127.0.0.1"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let s = agent.status();
        if s["sessions"].as_array().is_some_and(|a| !a.is_empty()) {
            break s;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    };
    // Health: programs, pins, listener, policy hash, audit state.
    let programs: Vec<&str> = status["attached"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["program"].as_str())
        .collect();
    for p in [
        "connect4",
        "connect6",
        "sock_ops",
        "getpeername4",
        "cgroup_mkdir",
    ] {
        assert!(programs.contains(&p), "{p} not attached: {status:#}");
    }
    assert!(pin_dir.join("link_connect4").exists());
    assert_eq!(
        status["policy"]["files"][0]["sha256"]
            .as_str()
            .map(str::len),
        Some(64)
    );
    assert!(
        status["audit"]["last_seq"].as_u64().unwrap() >= 2,
        "{status:#}"
    );
    assert_eq!(status["audit"]["write_errors"], 0);
    let session = &status["sessions"][0];
    assert_eq!(session["identity"]["pid"], child.id());
    assert_eq!(session["workload"], "svc");

    // The metrics endpoint, while the session runs.
    let body = {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    };
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains("pgwarden_sessions 1"), "{body}");
    assert!(
        body.contains("pgwarden_statements_total{workload=\"svc\",decision=\"allow\"}"),
        "{body}"
    );
    assert!(
        body.contains("pgwarden_statements_total{workload=\"svc\",decision=\"deny\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("pgwarden_redirect_total{event=\"redirected\"} 1"),
        "{body}"
    );
    assert!(body.contains("pgwarden_audit_write_errors 0"), "{body}");
    assert!(body.contains("pgwarden_statement_seconds_count"), "{body}");
    let _ = child.wait_with_output();
}
