//! Reads limited by effect, end to end with the shipped pci-dss `reader` profile: rows are
//! counted as they are sent. Point lookups and pages pass; a result over 100 payments rows
//! streams its first 100 and waits for a person mid-stream (approved: the rest arrives;
//! denied: an error, and the query is cancelled on the server, as its log shows); a budget
//! of 1,000 payments rows per hour holds however the reads are split across pages and
//! sessions.
use std::process::Child;
use std::time::{Duration, Instant};

use pgwarden_e2e::{
    Agent, PgServer, TestCgroup, finish, free_port, pending_approvals, policy_path, psql_spawn,
    require_root, unique_name, wait_pending,
};
use serde_json::Value;

struct World {
    pg: PgServer,
    agent: Agent,
    reader: TestCgroup,
    pager: TestCgroup,
    _dir: tempfile::TempDir,
}

fn world() -> World {
    world_with(None)
}

/// As [`world`], with `policy` (a profile named `reader`) instead of the shipped one.
fn world_with(policy: Option<&str>) -> World {
    require_root();
    let pg = PgServer::start_configured("log_statement = 'all'\n", None);
    pg.seed_payments(1500);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("mask.key");
    std::fs::write(&key, b"read-limits-test-key-0123456789").unwrap();
    let control = dir.path().join("control.sock");
    let reader = TestCgroup::create(&unique_name("pgw-e2e-rlimit"));
    let pager = TestCgroup::create(&unique_name("pgw-e2e-pager"));
    let listen = free_port();
    let policy = match policy {
        None => policy_path("pci-dss.yaml"),
        Some(text) => {
            let p = dir.path().join("policy.yaml");
            std::fs::write(&p, text).unwrap();
            p
        }
    };
    let config = format!(
        "mask:\n  hash_key_file: {}\nlisten:\n  ipv4: 127.0.0.1:{listen}\n  ipv6: null\ncontrol:\n  socket: {}\nintercept: [\"*:{}\"]\n\
         workloads:\n  - name: payments-reader\n    cgroup: \"{}\"\n    policy: {}\n    profile: reader\n\
         \x20 - name: payments-pager\n    cgroup: \"{}\"\n    policy: {}\n    profile: reader\n",
        key.display(),
        control.display(),
        pg.port,
        reader.rel,
        policy.display(),
        pager.rel,
        policy.display()
    );
    let agent = Agent::start(&config, &control);
    World {
        pg,
        agent,
        reader,
        pager,
        _dir: dir,
    }
}

impl World {
    fn psql(&self, cg: &TestCgroup, statements: &[&str]) -> Child {
        psql_spawn(&cg.path, &self.pg.url("127.0.0.1"), statements)
    }

    fn pending(&self) -> Vec<Value> {
        pending_approvals(&self.agent)
    }

    /// Waits for one pending request; returns it.
    fn wait_pending(&self) -> Value {
        wait_pending(&self.agent, 1).remove(0)
    }

    fn decide(&self, verb: &str, request: &Value) {
        let id = request["id"].as_u64().unwrap().to_string();
        let out = self.agent.cli(&["approvals", verb, &id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn a_big_result_waits_mid_stream_and_point_lookups_pass() {
    let w = world();
    // A point lookup and a page of 100 pass without anyone asked (the old LIMIT rule held the
    // first and let pages read the table).
    let (out, err) = finish(w.psql(
        &w.reader,
        &[
            "SELECT id FROM payments WHERE id = 7",
            "SELECT count(*) FROM (SELECT id FROM payments ORDER BY id LIMIT 100) s",
        ],
    ));
    assert!(err.is_empty(), "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["7", "100"]);
    assert!(w.pending().is_empty());

    // Over 100 rows: held after the 100th; approved, the rest arrives.
    let child = w.psql(
        &w.reader,
        &[
            "SELECT id FROM payments WHERE id <= 300 ORDER BY id",
            "SELECT 'after'",
        ],
    );
    let request = w.wait_pending();
    assert_eq!(request["rule"]["id"], "bulk-payments-read", "{request}");
    assert!(
        request["statement"]
            .as_str()
            .unwrap()
            .contains("100 rows sent"),
        "{request}"
    );
    w.decide("approve", &request);
    let (out, err) = finish(child);
    assert!(err.is_empty(), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 301, "{out}");
    assert_eq!(lines[299], "300");

    // Denied mid-stream: an error, and the query still running on the server is cancelled
    // (its result is far larger than what the sockets hold, so the server waits on the
    // client when pgwarden stops reading).
    let big = "SELECT a.id, b.id FROM payments a, payments b WHERE a.id <= 600";
    let child = w.psql(&w.reader, &[big, "SELECT 'alive'"]);
    let request = w.wait_pending();
    w.decide("deny", &request);
    let (out, err) = finish(child);
    assert!(
        err.contains("42501: pgwarden: approval.denied: bulk-payments-read: denied by root"),
        "{err}"
    );
    assert_eq!(out.trim(), "alive");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = w.pg.log();
        if log.contains("ERROR:  canceling statement due to user request") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server never cancelled:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The record of the cut result: the outcome, with the rows sent before the cut.
    let recs = w.agent.audit_lines();
    let cut = recs
        .iter()
        .find(|r| r["event"] == "query.done" && r["rule"] == "approval.denied")
        .unwrap_or_else(|| panic!("{recs:#?}"));
    assert_eq!(cut["decision"], "deny", "{cut}");
    assert_eq!(cut["sqlstate"], "42501", "{cut}");
}

#[test]
fn pagination_across_sessions_cannot_escape_the_budget() {
    let w = world();
    let page = |k: u32| {
        format!(
            "SELECT id FROM payments ORDER BY id LIMIT 100 OFFSET {}",
            k * 100
        )
    };
    // Two sessions of one workload read 1,000 payments rows in pages: all pass.
    let first: Vec<String> = (0..6).map(page).collect();
    let second: Vec<String> = (6..10).map(page).collect();
    let (a, err_a) = finish(w.psql(&w.pager, &refs(&first)));
    let (b, err_b) = finish(w.psql(&w.pager, &refs(&second)));
    assert!(err_a.is_empty() && err_b.is_empty(), "{err_a}{err_b}");
    assert_eq!(a.lines().count() + b.lines().count(), 1000);
    assert!(w.pending().is_empty());
    // The next page, from a third session, waits at its first row.
    let child = w.psql(&w.pager, &[&page(10), "SELECT 'alive'"]);
    let request = w.wait_pending();
    assert_eq!(request["rule"]["id"], "payments-read-budget", "{request}");
    assert!(
        request["statement"]
            .as_str()
            .unwrap()
            .contains("0 rows sent"),
        "{request}"
    );
    w.decide("deny", &request);
    let (out, err) = finish(child);
    assert!(
        err.contains("approval.denied: payments-read-budget"),
        "{err}"
    );
    assert_eq!(out.trim(), "alive", "not a row of the page arrived");
    // A cursor is no way around it: its FETCHes count under its DECLARE's limits.
    let child = w.psql(
        &w.pager,
        &[
            "BEGIN",
            "DECLARE c CURSOR FOR SELECT id FROM payments ORDER BY id",
            "FETCH 50 FROM c",
            "COMMIT",
        ],
    );
    let request = w.wait_pending();
    assert_eq!(request["rule"]["id"], "payments-read-budget", "{request}");
    w.decide("deny", &request);
    let (out, err) = finish(child);
    assert!(
        err.contains("approval.denied: payments-read-budget"),
        "{err}"
    );
    assert!(
        !out.lines().any(|l| l == "1"),
        "a row of the cursor arrived: {out}"
    );
    // Another workload has a budget of its own.
    let (out, err) = finish(w.psql(&w.reader, &[&page(0)]));
    assert!(err.is_empty(), "{err}");
    assert_eq!(out.lines().count(), 100);
}

/// COPY TO STDOUT sends rows as CopyData: they count like result rows.
#[test]
fn copy_out_rows_count_too() {
    let w = world_with(Some(
        "version: 1
profiles:
  reader:
    classes: [read, copy]
    tables:
      public.payments: [read]
    rules:
      - id: export-cap
        action: deny
        tables: [public.payments]
        rows_over: 100
        reason: exports stop at 100 rows
",
    ));
    let (out, err) = finish(w.psql(
        &w.reader,
        &[
            "COPY (SELECT id FROM payments ORDER BY id) TO STDOUT",
            "SELECT 'alive'",
        ],
    ));
    assert!(
        err.contains(
            "42501: pgwarden: export-cap: the result reached 100 rows (exports stop at 100 rows)"
        ),
        "{err}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.last(), Some(&"alive"), "{out}");
    assert!(
        lines.len() <= 101,
        "at most 100 rows of the export arrived: {}",
        lines.len()
    );
    assert!(!lines.contains(&"101"), "row 101 arrived");
}
