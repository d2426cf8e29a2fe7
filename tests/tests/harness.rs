//! Smoke test of the e2e harness itself, without the agent: a PostgreSQL server starts and
//! answers, and a test cgroup confines a process and is cleaned up with it.

use std::path::Path;
use std::process::Command;

use pgwarden_e2e::{
    PgServer, TestCgroup, cgroup2_root, in_cgroup, pg_bin, require_root, run_ok, unique_name,
};

#[test]
fn postgres_starts_and_answers_on_both_loopbacks() {
    require_root();
    let pg = PgServer::start();
    assert_eq!(pg.psql_direct("select 1"), "1");
    assert_eq!(
        pg.psql_direct("show max_connections"),
        "300",
        "harness settings not applied"
    );

    for host in ["127.0.0.1", "::1"] {
        let out = run_ok(
            Command::new(pg_bin("psql"))
                .args(["-X", "-Atc", "select inet_server_addr()"])
                .arg(pg.url(host)),
        );
        assert_eq!(out.trim(), host, "psql via {}", pg.url(host));
    }

    let log = pg.log();
    assert!(
        log.contains("connection authorized: user=postgres"),
        "log_connections is off?\n{log}"
    );

    let data = pg.dir.path().join("data");
    drop(pg);
    assert!(!data.exists(), "data dir {} left behind", data.display());
}

#[test]
fn process_runs_inside_the_test_cgroup() {
    require_root();
    let root = cgroup2_root();
    assert!(
        root.join("cgroup.procs").is_file(),
        "{} is not a cgroup2 root",
        root.display()
    );

    let cg = TestCgroup::create(&unique_name("pgwarden-e2e-smoke"));
    let inner = cg.child("inner");
    assert_eq!(inner.path, root.join(&cg.rel).join("inner"));
    assert_eq!(inner.rel, format!("{}/inner", cg.rel));

    let out = run_ok(in_cgroup(&inner.path, "cat").arg("/proc/self/cgroup"));
    let unified = out
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no cgroup2 line in /proc/self/cgroup:\n{out}"));
    assert_eq!(unified, format!("/{}", inner.rel));
}

#[test]
fn removing_a_cgroup_kills_what_is_left_in_it() {
    require_root();
    let cg = TestCgroup::create(&unique_name("pgwarden-e2e-smoke"));
    let inner = cg.child("inner");
    let mut sleeper = in_cgroup(&inner.path, "sleep")
        .arg("1000")
        .spawn()
        .expect("spawn sleep");
    wait_until_in(&inner.path, sleeper.id());

    cg.remove().expect("remove the test cgroup");
    assert!(!cg.path.exists(), "{} still exists", cg.path.display());
    let status = sleeper.wait().expect("wait for sleep");
    assert!(!status.success(), "sleep was not killed: {status}");
    // Dropping both handles now finds nothing to do.
}

/// Waits until `pid` shows up in the group (the shell moves itself in before exec'ing).
fn wait_until_in(cg: &Path, pid: u32) {
    for _ in 0..250 {
        let procs = std::fs::read_to_string(cg.join("cgroup.procs")).expect("read cgroup.procs");
        if procs.lines().any(|line| line.trim() == pid.to_string()) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("process {pid} never joined {}", cg.display());
}
