//! Statement policy end to end: the bypass cases of ../shared/policy-bypass-cases.md through
//! the real redirect, with real psql and a raw protocol client in tagged cgroups, checked on
//! the client (ErrorResponse 42501 naming the rule, session still usable) and on the server
//! (nothing reached it). Plus hot reload under load.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgwarden_e2e::{
    Agent, PgServer, TestCgroup, free_port, in_cgroup, pg_bin, policy_path, psql_session,
    require_root, run_output, unique_name, wait_for,
};
use serde_json::Value;

const SEED: &str = "
CREATE TABLE payments(id bigint primary key, card_number text, cardholder text, amount numeric, merchant text, created_at timestamptz default now());
CREATE TABLE customers(id bigint primary key, email text, name text);
CREATE TABLE secrets(id int, token text);
INSERT INTO payments SELECT i, '4111111111111111', 'holder ' || i, i * 10, 'm', now() FROM generate_series(1, 20) i;
INSERT INTO customers VALUES (1, 'a@example.com', 'A'), (2, 'b@example.com', 'B');
INSERT INTO secrets VALUES (1, 'hunter2');
";

struct World {
    pg: PgServer,
    agent: Agent,
    reader: TestCgroup,
    writer: TestCgroup,
    _dir: tempfile::TempDir,
}

fn world(policy: &Path) -> World {
    require_root();
    let pg = PgServer::start();
    pg.psql_direct(SEED);
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control.sock");
    let reader = TestCgroup::create(&unique_name("pgw-e2e-reader"));
    let writer = TestCgroup::create(&unique_name("pgw-e2e-writer"));
    let listen = free_port();
    let key = dir.path().join("mask.key");
    std::fs::write(&key, b"0123456789abcdef-e2e-test-key").unwrap();
    let config = format!(
        "mask:\n  hash_key_file: {}\nlisten:\n  ipv4: 127.0.0.1:{listen}\n  ipv6: \"[::1]:{listen}\"\ncontrol:\n  socket: {}\nintercept: [\"*:{}\"]\n\
         workloads:\n  - name: payments-reader\n    cgroup: \"{}\"\n    policy: {}\n    profile: reader\n\
         \x20 - name: payments-writer\n    cgroup: \"{}\"\n    policy: {}\n    profile: writer\n",
        key.display(),
        control.display(),
        pg.port,
        reader.rel,
        policy.display(),
        writer.rel,
        policy.display()
    );
    let agent = Agent::start(&config, &control);
    World {
        pg,
        agent,
        reader,
        writer,
        _dir: dir,
    }
}

impl World {
    /// Runs the statements, each as its own Query message, in ONE psql session in `cg`;
    /// returns (stdout, stderr). Errors do not stop the session.
    fn session(&self, cg: &TestCgroup, statements: &[&str]) -> (String, String) {
        psql_session(&cg.path, &self.pg.url("127.0.0.1"), statements)
    }

    fn direct(&self, sql: &str) -> String {
        self.pg.psql_direct(sql).trim().to_owned()
    }
}

#[test]
fn bypass_cases_are_denied_and_the_session_stays_usable() {
    let w = world(&policy_path("pci-dss.yaml"));
    let reader_cases: &[(&str, &str)] = &[
        ("DROP TABLE payments", "class.ddl"),
        ("drop table \"payments\"", "class.ddl"),
        ("/* hi */ DROP/**/TABLE public.payments", "class.ddl"),
        ("SELECT 1; DROP TABLE payments", "class.ddl"),
        ("TRUNCATE payments", "class.ddl"),
        (
            "COPY payments TO PROGRAM 'cat > /tmp/pgwarden-e2e-x'",
            "copy.program",
        ),
        ("SELECT pg_read_file('/etc/passwd')", "function.denied"),
        (
            "SELECT pg_catalog.pg_terminate_backend(1)",
            "function.denied",
        ),
        ("SET ROLE postgres", "role.change"),
        (
            "SELECT set_config('role', 'postgres', false)",
            "function.denied",
        ),
        (
            "DO $$ BEGIN EXECUTE 'DROP TABLE payments'; END $$",
            "unparsed",
        ),
        ("SELECT * FROM secrets", "table.denied"),
        ("SELECT * FROM public.\"secrets\"", "table.denied"),
        (
            "WITH x AS (SELECT * FROM secrets) SELECT * FROM x",
            "table.denied",
        ),
        ("SELECT * FROM pg_catalog.pg_authid", "catalog.secret"),
        ("GRANT ALL ON payments TO public", "class.dcl"),
        (
            "CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",
            "class.ddl",
        ),
        ("this is not sql", "unparsed"),
    ];
    for (sql, rule) in reader_cases {
        let (out, err) = w.session(&w.reader, &[sql, "SELECT 'alive'"]);
        assert!(
            err.contains(&format!("ERROR:  42501: pgwarden: {rule}:")),
            "{sql}: stderr {err}"
        );
        // The session goes on: the next statement runs. Nothing of the denied message ran
        // (case 4: the `SELECT 1` before the DROP is refused with it).
        assert_eq!(out.trim(), "alive", "{sql}: stdout {out}");
    }
    // Case 36: a read-only transaction is allowed.
    let (out, err) = w.session(
        &w.reader,
        &[
            "BEGIN TRANSACTION READ ONLY",
            "SELECT count(*) FROM payments",
            "ROLLBACK",
        ],
    );
    assert!(err.is_empty() || !err.contains("ERROR"), "{err}");
    assert!(out.contains("20"), "{out}");

    // A denied statement inside a transaction aborts it, as a PostgreSQL error would.
    let (out, err) = w.session(
        &w.writer,
        &[
            "BEGIN",
            "UPDATE payments SET amount = 0 WHERE id = 1",
            "DELETE FROM payments",
            "COMMIT",
            "SELECT amount FROM payments WHERE id = 1 LIMIT 1",
        ],
    );
    assert!(err.contains("pgwarden: dml.unscoped"), "{err}");
    assert!(
        out.contains("ROLLBACK") || out.trim().ends_with("10"),
        "{out}"
    );
    assert_eq!(
        w.direct("SELECT amount FROM payments WHERE id = 1"),
        "10",
        "the aborted transaction committed"
    );

    let writer_cases: &[(&[&str], &str)] = &[
        (&["DELETE FROM payments"], "dml.unscoped"),
        (&["DELETE FROM payments WHERE true"], "dml.unscoped"),
        (&["DELETE FROM payments WHERE 1 = 1"], "dml.unscoped"),
        (
            &["UPDATE payments SET amount = 0 WHERE id > 0 OR true"],
            "dml.unscoped",
        ),
        (
            &["WITH d AS (DELETE FROM payments RETURNING *) SELECT count(*) FROM d"],
            "dml.unscoped",
        ),
        (&["EXPLAIN ANALYZE DELETE FROM payments"], "dml.unscoped"),
        (
            &["PREPARE p AS DELETE FROM payments", "EXECUTE p"],
            "dml.unscoped",
        ),
    ];
    for (statements, rule) in writer_cases {
        let mut all: Vec<&str> = statements.to_vec();
        all.push("SELECT 'alive'");
        let (out, err) = w.session(&w.writer, &all);
        assert_eq!(
            err.matches(&format!("pgwarden: {rule}:")).count(),
            statements.len(),
            "{statements:?}: {err}"
        );
        assert_eq!(out.trim(), "alive", "{statements:?}: {out}");
    }
    // Case 12: a scoped delete is allowed.
    let (_, err) = w.session(&w.writer, &["DELETE FROM payments WHERE id = 7"]);
    assert!(!err.contains("ERROR"), "{err}");

    // Server side: nothing denied reached PostgreSQL.
    assert_eq!(w.direct("SELECT count(*) FROM payments"), "19");
    assert_eq!(w.direct("SELECT count(*) FROM secrets"), "1");
    assert_eq!(
        w.direct("SELECT count(*) FROM pg_proc WHERE proname = 'f'"),
        "0"
    );
    assert_eq!(
        w.direct("SELECT has_table_privilege('public', 'payments', 'SELECT')"),
        "f"
    );
    assert!(!Path::new("/tmp/pgwarden-e2e-x").exists());
    // The server's log holds no denied statement text: only pgwarden's markers.
    let log = w.pg.log();
    assert!(
        !log.contains("DROP TABLE payments"),
        "a denied statement reached the server"
    );
    assert!(
        !log.contains("pg_read_file"),
        "a denied statement reached the server"
    );
    let _ = &w.agent;
}

fn raw(w: &World, cg: &TestCgroup, script: &Value, options: Option<&str>) -> (Vec<Value>, String) {
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/raw/pgraw.py");
    let mut cmd = in_cgroup(&cg.path, "python3");
    cmd.arg(client).args([
        "127.0.0.1",
        &w.pg.port.to_string(),
        "postgres",
        "postgres",
        &script.to_string(),
    ]);
    if let Some(o) = options {
        cmd.env("PGOPTIONS", o);
    }
    let out = run_output(&mut cmd);
    let steps = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (steps, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn error_of(step: &Value) -> Option<(String, String)> {
    step.as_array()?.iter().find(|m| m["type"] == "E").map(|m| {
        (
            m["C"].as_str().unwrap_or("").to_owned(),
            m["M"].as_str().unwrap_or("").to_owned(),
        )
    })
}

#[test]
fn extended_protocol_fastpath_and_startup_options() {
    let w = world(&policy_path("pci-dss.yaml"));
    let script = serde_json::json!([
        ["extended", "DROP TABLE payments"],
        ["query", "SELECT 1"],
        ["extended", "SELECT count(*) FROM payments WHERE id < 5"],
        ["fastpath", 1598],
        ["query", "SELECT 2"],
    ]);
    let (steps, err) = raw(&w, &w.reader, &script, None);
    assert_eq!(steps.len(), 5, "{steps:?} {err}");
    // Case 29: denied at Parse; PostgreSQL's discard-until-Sync, then ReadyForQuery.
    let (code, message) = error_of(&steps[0]).expect("an error for the denied Parse");
    assert_eq!(code, "42501");
    assert!(message.starts_with("pgwarden: class.ddl:"), "{message}");
    assert_eq!(
        steps[0]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["type"] == "E")
            .count(),
        1
    );
    assert_eq!(steps[0].as_array().unwrap().last().unwrap()["type"], "Z");
    assert_eq!(steps[1][0]["type"], "T");
    assert_eq!(steps[1][1]["values"][0], "1");
    let rows: Vec<&Value> = steps[2]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["type"] == "D")
        .collect();
    assert_eq!(rows[0]["values"][0], "4");
    // Case 30: fast-path FunctionCall.
    let (code, message) = error_of(&steps[3]).expect("an error for FunctionCall");
    assert_eq!(code, "42501");
    assert!(message.starts_with("pgwarden: fastpath:"), "{message}");
    assert_eq!(steps[4][1]["values"][0], "2");
    assert_eq!(w.direct("SELECT count(*) FROM payments"), "20");

    // Case 31: StartupMessage options carrying -c role=postgres.
    let out = run_output(
        in_cgroup(&w.reader.path, pg_bin("psql").to_str().unwrap())
            .env("PGOPTIONS", "-c role=postgres")
            .args(["-X", "-Atc", "SELECT current_user"])
            .arg(w.pg.url("127.0.0.1")),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pgwarden: role.change"), "{err}");
}

#[test]
fn policy_reload_under_load_loses_no_session() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("pci.yaml");
    // 1,500 one-row counts of payments would use up the shipped read budget (1,000 payments
    // rows an hour); this test is about reloads, so its copy allows more.
    let original = std::fs::read_to_string(policy_path("pci-dss.yaml"))
        .unwrap()
        .replace(
            "budget: { rows: 1000, per: 1h }",
            "budget: { rows: 100000, per: 1h }",
        );
    assert!(original.contains("rows: 100000"));
    std::fs::write(&policy, &original).unwrap();
    let w = world(&policy);
    let (out, _) = w.session(&w.reader, &["SELECT count(*) FROM customers"]);
    assert_eq!(out.trim(), "2");

    // 50 sessions, each running 30 statements over about 3 seconds.
    let script = dir.path().join("load.sql");
    std::fs::write(
        &script,
        "SELECT count(*) FROM payments;\nSELECT pg_sleep(0.1);\n".repeat(30),
    )
    .unwrap();
    let mut clients = Vec::new();
    for _ in 0..50 {
        let child = in_cgroup(&w.reader.path, pg_bin("psql").to_str().unwrap())
            .args([
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-f",
                script.to_str().unwrap(),
            ])
            .arg(w.pg.url("127.0.0.1"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        clients.push(child);
    }
    // Every client's session is open (or has been): the reload below happens under load.
    let mut seen = std::collections::HashSet::new();
    wait_for(
        "a session for each of the 50 clients",
        Duration::from_secs(20),
        || {
            let status = w.agent.status();
            seen.extend(
                status["sessions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s["identity"]["pid"].as_u64()),
            );
            let missing = clients
                .iter()
                .filter(|c| !seen.contains(&u64::from(c.id())))
                .count();
            if missing == 0 {
                Ok(())
            } else {
                Err(format!(
                    "{missing} clients without a session yet; {} sessions open now",
                    status["sessions"].as_array().map_or(0, Vec::len)
                ))
            }
        },
    );
    // Deny customers: the file watcher reloads.
    let changed = original.replace(
        "deny_tables: [public.secrets]",
        "deny_tables: [public.secrets, public.customers]",
    );
    assert_ne!(changed, original);
    std::fs::write(&policy, &changed).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !w.agent.log().contains("policy reloaded") {
        assert!(Instant::now() < deadline, "no reload:\n{}", w.agent.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // A broken edit is refused and the running policy stays.
    std::fs::write(&policy, "version: 1\nprofiles: [\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !w.agent.log().contains("policy reload refused") {
        assert!(
            Instant::now() < deadline,
            "broken policy not reported:\n{}",
            w.agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for c in clients {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a session was lost: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| *l == "20")
                .count(),
            30
        );
    }
    let (_, err) = w.session(&w.reader, &["SELECT count(*) FROM customers"]);
    assert!(
        err.contains("pgwarden: table.denied"),
        "the reloaded policy is not in force: {err}"
    );

    // SIGHUP reloads too: restore the original and signal.
    std::fs::write(&policy, &original).unwrap();
    let _ = Command::new("kill")
        .args(["-HUP", &w.agent.pid().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (out, _) = w.session(&w.reader, &["SELECT count(*) FROM customers"]);
        if out.trim() == "2" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reload back to the original never took effect"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Settings under which PostgreSQL splits a text differently from pgwarden's parser would let
/// a statement hide behind a string literal: `standard_conforming_strings = off` makes `\'`
/// end nothing, and client encodings such as SJIS swallow a backslash into a multibyte
/// character. First shown to work straight against the server; then refused through
/// pgwarden, however the setting arrives (SET, startup options, the startup packet's
/// `client_encoding`, a role's default).
#[test]
fn settings_that_change_how_postgresql_reads_text_are_refused() {
    let w = world(&policy_path("pci-dss.yaml"));
    w.direct("CREATE TABLE victim(id int); CREATE TABLE victim2(id int)");
    let attack = |table: &str| format!("SELECT 'x\\'' ; DROP TABLE {table}; --'");
    // The threat, untagged and straight to the server: with the setting off, the DROP runs,
    // although a reader with the setting on sees one SELECT of one string.
    let direct = run_output(
        Command::new(pg_bin("psql"))
            .args(["-X", "-At", "-h", "127.0.0.1", "-p"])
            .arg(w.pg.port.to_string())
            .args(["-U", "postgres", "-d", "postgres"])
            .args(["-c", "SET standard_conforming_strings = off"])
            .args(["-c", &attack("victim2")]),
    );
    assert_eq!(
        w.direct("SELECT count(*) FROM pg_class WHERE relname = 'victim2'"),
        "0",
        "the attack did not work directly, so this test would prove nothing: {}",
        String::from_utf8_lossy(&direct.stderr)
    );

    // Through pgwarden: the SETs are refused, the session goes on, the attack text is a
    // plain SELECT of a string.
    for sql in [
        "SET standard_conforming_strings = off",
        "SET SESSION standard_conforming_strings TO 'off'",
        "SET client_encoding TO 'SJIS'",
        "SET client_encoding = sjis",
        "SET NAMES 'GBK'",
    ] {
        let (out, err) = w.session(&w.reader, &[sql, &attack("victim"), "SELECT 'alive'"]);
        assert!(
            err.contains("ERROR:  42501: pgwarden: setting.lexer:"),
            "{sql}: {err}"
        );
        assert!(out.trim_end().ends_with("alive"), "{sql}: {out}");
    }
    let (out, err) = w.session(
        &w.reader,
        &["SET client_encoding = 'UTF8'", "SHOW client_encoding"],
    );
    assert!(!err.contains("ERROR"), "{err}");
    assert!(out.trim_end().ends_with("UTF8"), "{out}");

    // Startup: `-c` options (the policy's check), the startup packet's client_encoding and a
    // role's default (the server's ParameterStatus, checked by the relay) end the session
    // before any statement.
    let psql_as = |user: &str, env: (&str, &str)| {
        let mut cmd = in_cgroup(&w.reader.path, pg_bin("psql").to_str().unwrap());
        cmd.args(["-X", "-At", "-h", "127.0.0.1", "-p"])
            .arg(w.pg.port.to_string())
            .args(["-U", user, "-d", "postgres", "-c", &attack("victim")])
            .env(env.0, env.1);
        let out = run_output(&mut cmd);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = psql_as(
        "postgres",
        ("PGOPTIONS", "-c standard_conforming_strings=off"),
    );
    assert!(err.contains("pgwarden: setting.lexer:"), "{err}");
    let err = psql_as("postgres", ("PGCLIENTENCODING", "SJIS"));
    assert!(
        err.contains("pgwarden: setting.lexer: the server reports client_encoding = SJIS"),
        "{err}"
    );
    w.direct("CREATE ROLE lexer_role LOGIN SUPERUSER; ALTER ROLE lexer_role SET standard_conforming_strings = off");
    let err = psql_as("lexer_role", ("PGAPPNAME", "lexer-test"));
    assert!(
        err.contains(
            "pgwarden: setting.lexer: the server reports standard_conforming_strings = off"
        ),
        "{err}"
    );

    assert_eq!(
        w.direct("SELECT count(*) FROM pg_class WHERE relname = 'victim'"),
        "1",
        "a statement hidden in a string reached the server"
    );
    let journal = w.agent.audit_lines();
    assert!(
        journal
            .iter()
            .any(|r| r["event"] == "query.denied" && r["rule"] == "setting.lexer"),
        "the refusals are in the journal"
    );
}
