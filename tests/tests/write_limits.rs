//! Writes limited by effect (`writes.max_rows`), end to end: tautologies the syntax check
//! cannot see run on the real server through the real redirect and are undone, which the
//! table itself and PostgreSQL's statement log show; writes within the limit commit; the
//! client's transaction semantics stay PostgreSQL's; simple and extended protocol,
//! pipelining, RETURNING, data-modifying CTEs and COPY FROM.
use std::path::Path;

use pgwarden_e2e::{
    Agent, PgServer, TestCgroup, finish, free_port, in_cgroup, policy_path, psql_session,
    psql_spawn, require_root, run_ok, unique_name, wait_pending,
};
use serde_json::Value;

const SEED: &str = "
CREATE TABLE payments(id bigint primary key, card_number text, cardholder text, amount numeric, merchant text, created_at timestamptz default now());
INSERT INTO payments SELECT i, '4111111111111111', 'holder ' || i, i * 10, 'm', now() FROM generate_series(1, 300) i;
CREATE FUNCTION bump_over(floor bigint) RETURNS bigint LANGUAGE sql AS $$ WITH u AS (UPDATE payments SET amount = amount + 1 WHERE id > floor RETURNING 1) SELECT count(*) FROM u $$;
";

/// The table's content in one value: a refused write must leave it exactly as it was.
const FINGERPRINT: &str = "SELECT count(*) || ' ' || md5(string_agg(id || ':' || coalesce(amount::text, '-') || ':' || coalesce(merchant, '-'), ',' ORDER BY id)) FROM payments";

/// A profile that may COPY into payments, under the same limit.
const LOADER_POLICY: &str = "version: 1
profiles:
  loader:
    classes: [read, write, copy, transaction, session-set]
    tables:
      public.payments: [read, write]
    writes:
      max_rows: 100
  approved-writer:
    classes: [read, write, transaction, session-set]
    tables:
      public.payments: [read, write]
    writes:
      max_rows: 100
    rules:
      - id: writes-need-a-yes
        action: require_approval
        classes: [write]
        approvers: [root]
        timeout_seconds: 30
";

struct World {
    pg: PgServer,
    agent: Agent,
    writer: TestCgroup,
    loader: TestCgroup,
    approved: TestCgroup,
    dir: tempfile::TempDir,
}

fn world() -> World {
    require_root();
    let pg = PgServer::start_configured("log_statement = 'all'\n", None);
    pg.psql_direct(SEED);
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control.sock");
    let loader_policy = dir.path().join("loader.yaml");
    std::fs::write(&loader_policy, LOADER_POLICY).unwrap();
    let writer = TestCgroup::create(&unique_name("pgw-e2e-wlimit"));
    let loader = TestCgroup::create(&unique_name("pgw-e2e-wload"));
    let approved = TestCgroup::create(&unique_name("pgw-e2e-wyes"));
    let listen = free_port();
    let key = dir.path().join("mask.key");
    std::fs::write(&key, b"0123456789abcdef-e2e-test-key").unwrap();
    let config = format!(
        "mask:\n  hash_key_file: {}\nlisten:\n  ipv4: 127.0.0.1:{listen}\n  ipv6: \"[::1]:{listen}\"\ncontrol:\n  socket: {}\nintercept: [\"*:{}\"]\n\
         workloads:\n  - name: payments-writer\n    cgroup: \"{}\"\n    policy: {}\n    profile: writer\n\
         \x20 - name: payments-loader\n    cgroup: \"{}\"\n    policy: {}\n    profile: loader\n\
         \x20 - name: payments-approved\n    cgroup: \"{}\"\n    policy: {}\n    profile: approved-writer\n",
        key.display(),
        control.display(),
        pg.port,
        writer.rel,
        policy_path("pci-dss.yaml").display(),
        loader.rel,
        loader_policy.display(),
        approved.rel,
        loader_policy.display()
    );
    let agent = Agent::start(&config, &control);
    World {
        pg,
        agent,
        writer,
        loader,
        approved,
        dir,
    }
}

impl World {
    /// Runs the statements, each as its own Query message, in one psql session in `cg`;
    /// returns (stdout, stderr). Errors do not stop the session.
    fn session(&self, cg: &TestCgroup, statements: &[&str]) -> (String, String) {
        psql_session(&cg.path, &self.pg.url("127.0.0.1"), statements)
    }

    fn direct(&self, sql: &str) -> String {
        self.pg.psql_direct(sql).trim().to_owned()
    }

    fn fingerprint(&self) -> String {
        self.direct(FINGERPRINT)
    }

    /// How often the server's statement log shows `sql` run.
    fn ran(&self, sql: &str) -> usize {
        self.pg
            .log()
            .matches(&format!("statement: {sql}\n"))
            .count()
    }
}

/// WHERE clauses (and shapes) true for every row that the syntax check (`dml.unscoped`)
/// cannot see: it recognises constant-true shapes only.
const TAUTOLOGIES: &[&str] = &[
    "UPDATE payments SET amount = amount WHERE id > 0",
    "DELETE FROM payments WHERE id IS NOT NULL",
    "DELETE FROM payments WHERE id <> -1",
    "DELETE FROM payments WHERE id BETWEEN 1 AND 1000000",
    "DELETE FROM payments WHERE id IN (SELECT id FROM payments)",
    "DELETE FROM payments WHERE NOT (id < 0)",
    "UPDATE payments SET amount = 0 WHERE id % 1 = 0",
    "UPDATE payments SET amount = amount WHERE id > 0 OR id < 0",
    "DELETE FROM payments WHERE id::text ~ '^[0-9]+$'",
    "UPDATE payments SET merchant = 'x' WHERE amount >= 0 OR amount < 0 OR amount IS NULL",
    "DELETE FROM payments WHERE created_at < now() + interval '1 day'",
    "WITH d AS (DELETE FROM payments WHERE id > 0 RETURNING 1) SELECT count(*) FROM d",
    "INSERT INTO payments (id, merchant) SELECT id + 1000, merchant FROM payments",
    "UPDATE payments SET amount = 1 WHERE id = 1; DELETE FROM payments WHERE id > 1",
];

#[test]
fn tautologies_run_and_are_undone_outside_and_inside_transactions() {
    let w = world();
    let before = w.fingerprint();
    assert!(before.starts_with("300 "), "seed: {before}");
    for sql in TAUTOLOGIES {
        // The policy's syntax check lets it through: only its effect can stop it.
        let explain = run_ok(std::process::Command::new(w.agent.bin()).args([
            "policy",
            "explain",
            "--policy",
            policy_path("pci-dss.yaml").to_str().unwrap(),
            "--workload",
            "writer",
            "--sql",
            sql,
        ]));
        assert!(
            explain.starts_with("decision: allow") && explain.contains("at most 100 rows"),
            "{sql}: {explain}"
        );
        let (out, err) = w.session(&w.writer, &[sql, "SELECT 'still usable'"]);
        assert!(
            err.contains("42501") && err.contains("write.rows") && err.contains("undone"),
            "{sql}: stderr {err}"
        );
        assert!(out.contains("still usable"), "{sql}: stdout {out}");
        assert!(
            !out.contains("300"),
            "{sql}: no result of the undone write: {out}"
        );
        assert_eq!(w.fingerprint(), before, "{sql} changed the table");
        // It really ran on the server, in pgwarden's transaction, and was rolled back.
        assert!(
            w.ran(sql) >= 1,
            "{sql} never reached the server:\n{}",
            w.pg.log()
        );
    }
    assert!(w.ran("ROLLBACK") >= TAUTOLOGIES.len(), "{}", w.pg.log());

    // The server's per-transaction counts still hold a rolled-back transaction's rows until
    // the backend flushes them (within a second, when idle): a small write right after an
    // undone one is counted from where its own transaction starts, not from 0.
    let (out, err) = w.session(
        &w.writer,
        &[
            "UPDATE payments SET amount = amount WHERE id > 0",
            "UPDATE payments SET amount = amount WHERE id = 1",
        ],
    );
    assert_eq!(err.matches("undone").count(), 1, "{err}");
    assert_eq!(out.trim(), "UPDATE 1", "{err}");
    assert_eq!(w.fingerprint(), before);

    // A superuser session that turns the server's counting off cannot write uncounted: the
    // count comes back empty, and the write is refused and undone.
    let (_, err) = w.session(
        &w.writer,
        &[
            "SET track_counts = off",
            "DELETE FROM payments WHERE id > 0",
        ],
    );
    assert!(
        err.contains("write.rows") && err.contains("track_counts is off"),
        "{err}"
    );
    assert_eq!(w.fingerprint(), before, "an uncounted write stood");

    // A write the statement's text does not show: a function that updates rows, called from
    // a SELECT. Counted all the same; over the limit it is undone, within it it stands.
    let (out, err) = w.session(&w.writer, &["SELECT bump_over(0)"]);
    assert!(
        err.contains("write.rows") && err.contains("300 rows"),
        "{out}{err}"
    );
    assert_eq!(w.fingerprint(), before, "the function's writes stood");
    // The same function in a cursor runs at FETCH, not at DECLARE: FETCH is counted.
    let (out, err) = w.session(
        &w.writer,
        &[
            "BEGIN",
            "DECLARE c CURSOR FOR SELECT bump_over(0)",
            "FETCH ALL FROM c",
            "COMMIT",
        ],
    );
    assert!(
        err.contains("write.rows") && err.contains("300 rows"),
        "{out}{err}"
    );
    assert_eq!(w.fingerprint(), before, "the cursor's writes stood");
    let (out, err) = w.session(&w.writer, &["SELECT bump_over(295)"]);
    assert!(err.is_empty(), "{err}");
    assert_eq!(out.trim(), "5");
    assert_eq!(
        w.direct("SELECT string_agg(amount::text, ',' ORDER BY id) FROM payments WHERE id > 295"),
        "2961,2971,2981,2991,3001"
    );

    // Within the limit: committed, with its RETURNING rows.
    let (out, err) = w.session(
        &w.writer,
        &[
            "UPDATE payments SET amount = 7 WHERE id <= 5",
            "DELETE FROM payments WHERE id = 300 RETURNING id",
        ],
    );
    assert!(err.is_empty(), "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["UPDATE 5", "300", "DELETE 1"],
        "tags and the RETURNING row"
    );
    assert_eq!(
        w.direct("SELECT count(*) FILTER (WHERE amount = 7), count(*) FROM payments"),
        "5|299"
    );

    // Inside the client's transaction: the refusal fails it as an error would, and nothing of
    // the transaction commits; a savepoint before it recovers as PostgreSQL's would.
    let before = w.fingerprint();
    let (_, err) = w.session(
        &w.writer,
        &[
            "BEGIN",
            "UPDATE payments SET amount = 8 WHERE id = 6",
            "UPDATE payments SET amount = 0 WHERE id > 0",
            "SELECT 1",
            "COMMIT",
        ],
    );
    assert!(err.contains("write.rows"), "{err}");
    assert!(err.contains("25P02"), "the transaction failed: {err}");
    assert_eq!(
        w.fingerprint(),
        before,
        "the failed transaction committed something"
    );
    let (out, err) = w.session(
        &w.writer,
        &[
            "BEGIN",
            "SAVEPOINT s",
            "DELETE FROM payments WHERE id > 0",
            "ROLLBACK TO SAVEPOINT s",
            "UPDATE payments SET amount = 9 WHERE id = 7",
            "COMMIT",
            "SELECT amount FROM payments WHERE id = 7 LIMIT 1",
        ],
    );
    assert!(err.contains("write.rows"), "{err}");
    assert!(out.lines().any(|l| l == "9"), "{out}\n{err}");
    assert_eq!(
        w.direct("SELECT count(*), (SELECT amount FROM payments WHERE id = 7) FROM payments"),
        "299|9"
    );

    // The audit record of a refusal: the rule, the server's count, the outcome.
    let undone: Vec<Value> = w
        .agent
        .audit_lines()
        .into_iter()
        .filter(|r| r["event"] == "query.done" && r["rule"] == "write.rows")
        .collect();
    assert!(undone.len() > TAUTOLOGIES.len(), "{undone:?}");
    let first = &undone[0];
    assert_eq!(first["decision"], "deny", "{first}");
    assert_eq!(first["outcome"], "failure", "{first}");
    assert_eq!(first["rows"], 300, "the server's count: {first}");
    assert_eq!(first["sqlstate"], "42501", "{first}");
}

#[test]
fn extended_protocol_and_pipelining_are_limited_too() {
    let w = world();
    let bin = env!("CARGO_BIN_EXE_pg-guard-client");
    assert!(Path::new(bin).is_file(), "{bin} is missing");
    let out = run_ok(in_cgroup(&w.writer.path, bin).arg(w.pg.url("127.0.0.1")));
    assert_eq!(out.trim(), "OK");
    // What stood: ids 1-2 = 14 (RETURNING), 3 = 11, 4 = 12, 5 = 13; id 6 was in the failed
    // transaction; every row is still there.
    assert_eq!(
        w.direct("SELECT string_agg(amount::text, ',' ORDER BY id) FROM payments WHERE id <= 6"),
        "14,14,11,12,13,60"
    );
    assert_eq!(w.direct("SELECT count(*) FROM payments"), "300");
}

#[test]
fn copy_from_over_the_limit_is_undone() {
    let w = world();
    let csv = |n: u32, base: u32| -> String {
        (0..n)
            .map(|i| format!("{},copied\n", base + i))
            .collect::<String>()
    };
    let big = w.dir.path().join("big.csv");
    let small = w.dir.path().join("small.csv");
    std::fs::write(&big, csv(150, 5000)).unwrap();
    std::fs::write(&small, csv(50, 6000)).unwrap();
    let before = w.fingerprint();
    let copy = |path: &Path| {
        format!(
            "\\copy payments (id, merchant) FROM '{}' WITH (FORMAT csv)",
            path.display()
        )
    };
    let (_, err) = w.session(&w.loader, &[&copy(&big), "SELECT 1"]);
    assert!(
        err.contains("write.rows") && err.contains("150 rows"),
        "{err}"
    );
    assert_eq!(w.fingerprint(), before, "the refused COPY left rows");
    let (out, err) = w.session(&w.loader, &[&copy(&small)]);
    assert!(err.is_empty() && out.contains("COPY 50"), "{out}\n{err}");
    assert_eq!(
        w.direct("SELECT count(*) FROM payments WHERE merchant = 'copied'"),
        "50"
    );
}

/// A person's yes to a held write does not lift its row limit: approved, it runs, is counted,
/// and is undone over the limit.
#[test]
fn an_approved_write_is_still_limited_by_effect() {
    let w = world();
    let before = w.fingerprint();
    let child = psql_spawn(
        &w.approved.path,
        &w.pg.url("127.0.0.1"),
        &["DELETE FROM payments WHERE id > 0", "SELECT 'alive'"],
    );
    let id = wait_pending(&w.agent, 1)[0]["id"].as_u64().unwrap();
    let out = w.agent.cli(&["approvals", "approve", &id.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (stdout, stderr) = finish(child);
    assert!(
        stderr.contains("write.rows") && stderr.contains("300 rows"),
        "{stderr}"
    );
    assert_eq!(stdout.trim(), "alive");
    assert_eq!(
        w.fingerprint(),
        before,
        "the approved DELETE of every row stood"
    );
    assert!(
        w.ran("DELETE FROM payments WHERE id > 0") >= 1,
        "it ran after the yes"
    );
}
