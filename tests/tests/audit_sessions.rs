//! The audit journal fed by real sessions: every allowed, denied and masked statement of a
//! psql session in a tagged cgroup has exactly one record with the client process's real
//! identity; masked counts are recorded; no card number reaches the journal; the chain
//! verifies. Strict mode on a full disk refuses statements before they reach PostgreSQL.
use std::path::Path;
use std::process::{Command, Stdio};

use pgwarden_e2e::{
    Agent, PgServer, TestCgroup, free_port, in_cgroup, pg_bin, policy_path, require_root,
    unique_name,
};
use serde_json::Value;

const PAN: &str = "4111111111111111";

fn records(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn bin() -> String {
    std::env::var("PGWARDEN_BIN").unwrap_or_else(|_| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/debug/pgwarden")
            .display()
            .to_string()
    })
}

#[test]
fn every_statement_has_one_record_with_the_real_identity() {
    require_root();
    let pg = PgServer::start();
    pg.psql_direct(&format!(
        "CREATE TABLE payments(id bigint primary key, card_number text, cardholder text, amount numeric, merchant text, created_at timestamptz);
         CREATE TABLE customers(id bigint primary key, email text, name text);
         INSERT INTO payments SELECT i, '{PAN}', 'h', i, 'm', now() FROM generate_series(1, 5) i;"
    ));
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("audit.jsonl");
    let key = dir.path().join("k");
    std::fs::write(&key, b"0123456789abcdef0123").unwrap();
    let control = dir.path().join("c.sock");
    let cg = TestCgroup::create(&unique_name("pgw-e2e-audit"));
    let config = format!(
        "mask:\n  hash_key_file: {}\naudit:\n  path: {}\n  mode: strict\n  state_dir: {}\nlisten:\n  ipv4: 127.0.0.1:{}\n  ipv6: null\ncontrol:\n  socket: {}\n\
         intercept: [\"*:{}\"]\nworkloads:\n  - name: payments-mcp\n    cgroup: \"{}\"\n    policy: {}\n    profile: reader\n",
        key.display(),
        journal.display(),
        dir.path().join("state").display(),
        free_port(),
        control.display(),
        pg.port,
        cg.rel,
        policy_path("pci-dss.yaml").display()
    );
    let agent = Agent::start(&config, &control);
    let child = in_cgroup(&cg.path, pg_bin("psql").to_str().unwrap())
        .args([
            "-X",
            "-At",
            "-c",
            "SELECT count(*) FROM payments",
            "-c",
            "DROP TABLE payments",
            "-c",
            "SELECT card_number FROM payments WHERE id < 4 LIMIT 10",
        ])
        .arg(pg.url("127.0.0.1"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("pgwarden: class.ddl"));
    drop(agent); // SIGTERM: agent.stop, journal closed.

    let recs = records(&journal);
    let of = |event: &str| {
        recs.iter()
            .filter(|r| r["event"] == event)
            .cloned()
            .collect::<Vec<_>>()
    };
    // The identity is in the session's session.start; its statements refer to it by id
    // (record contract v2) and carry only what they add.
    let starts: Vec<Value> = of("session.start")
        .into_iter()
        .filter(|r| r["actor"]["pid"].as_u64() == Some(u64::from(pid)))
        .collect();
    assert_eq!(starts.len(), 1, "{recs:#?}");
    let start = &starts[0];
    assert_eq!(start["workload"], "payments-mcp");
    assert_eq!(start["actor"]["cgroup"], format!("/{}", cg.rel));
    assert_eq!(
        start["actor"]["exe"],
        pg_bin("psql").canonicalize().unwrap().display().to_string()
    );
    assert_eq!(start["actor"]["uid"], 0);
    assert_eq!(start["db"]["user"], "postgres");
    assert_eq!(start["v"], 2);
    assert!(
        start["policy_hash"].as_str().is_some_and(|h| h.len() == 64),
        "{start}"
    );
    let session = start["session_id"].clone();
    let mine = |r: &&Value| r["session_id"] == session;
    let queries: Vec<Value> = of("query").into_iter().filter(|r| mine(&r)).collect();
    assert_eq!(queries.len(), 2, "{recs:#?}");
    assert_eq!(queries[0]["statement"]["command"], "SELECT");
    assert!(
        queries[0]["statement"]["objects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == "payments")
    );
    assert_eq!(queries[1]["decision"], "mask");
    let denied: Vec<Value> = of("query.denied")
        .into_iter()
        .filter(|r| mine(&r))
        .collect();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["rule"], "class.ddl");
    assert_eq!(denied[0]["sqlstate"], "42501");
    for r in queries.iter().chain(&denied) {
        assert_eq!(r["workload"], "payments-mcp");
        assert_eq!(r["v"], 2);
        for repeated in ["actor", "client", "server", "db", "policy_hash"] {
            assert!(
                r[repeated].is_null(),
                "{repeated} is in session.start only: {r}"
            );
        }
    }
    let done: Vec<Value> = of("query.done").into_iter().filter(|r| mine(&r)).collect();
    assert_eq!(done.len(), 2);
    let masked = &done[1]["masked"];
    assert!(
        masked
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["column"] == "public.payments.card_number"
                && m["method"] == "pan"
                && m["count"] == 3),
        "{masked}"
    );
    assert_eq!(done[1]["rows"], 3);
    assert_eq!(of("session.start").iter().filter(|r| mine(r)).count(), 1);
    assert_eq!(of("session.end").iter().filter(|r| mine(r)).count(), 1);
    assert_eq!(of("agent.start").len(), 1);
    assert_eq!(of("agent.stop").len(), 1);
    let text = std::fs::read_to_string(&journal).unwrap();
    assert!(!text.contains(PAN), "a card number reached the journal");
    let verify = Command::new(bin())
        .args(["audit", "verify"])
        .arg(&journal)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn strict_mode_refuses_statements_when_the_journal_cannot_be_written() {
    require_root();
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    // A tiny filesystem for the journal, filled once the agent runs.
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    assert!(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(&small)
            .status()
            .unwrap()
            .success()
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let journal = small.join("audit.jsonl");
    let control = dir.path().join("c.sock");
    let cg = TestCgroup::create(&unique_name("pgw-e2e-full"));
    let config = format!(
        "audit:\n  path: {}\n  mode: strict\n  journald: false\n  min_free_bytes: 0\n  state_dir: {}\nlisten:\n  ipv4: 127.0.0.1:{}\n  ipv6: null\ncontrol:\n  socket: {}\n\
         intercept: [\"*:{}\"]\nworkloads:\n  - name: w\n    cgroup: \"{}\"\n    policy: {}\n    profile: allow-all\n",
        journal.display(),
        dir.path().join("state").display(),
        free_port(),
        control.display(),
        pg.port,
        cg.rel,
        policy_path("allow-all.yaml").display()
    );
    let agent = Agent::start(&config, &control);
    // A session opens while the journal still has room; then the disk fills up.
    // Records keep landing while the journal's last page has room; the first one that does
    // not fit refuses its statement, and every one after it.
    let mut script = "CREATE TABLE before_full(a int);\n\\! dd if=/dev/zero of=FILL bs=4k count=1000 2>/dev/null\n"
        .replace("FILL", &small.join("fill").display().to_string());
    for i in 0..20 {
        script.push_str(&format!("CREATE TABLE after_full_{i}(a int);\n"));
    }
    let script_file = dir.path().join("s.sql");
    std::fs::write(&script_file, script).unwrap();
    let out = in_cgroup(&cg.path, pg_bin("psql").to_str().unwrap())
        .args([
            "-X",
            "-At",
            "-v",
            "VERBOSITY=verbose",
            "-f",
            script_file.to_str().unwrap(),
        ])
        .arg(pg.url("127.0.0.1"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("58030") && err.contains("audit journal cannot be written"),
        "{err}"
    );
    // Nothing refused reached PostgreSQL: the tables that exist are exactly those created
    // before the first refusal.
    assert_eq!(
        pg.psql_direct("SELECT count(*) FROM pg_tables WHERE tablename = 'before_full'")
            .trim(),
        "1"
    );
    let refused = err.matches("58030").count();
    assert!(refused >= 1);
    let created: usize = pg
        .psql_direct("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'after_full_%'")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(created + refused, 20, "stderr: {err}");
    for i in created..20 {
        assert_eq!(
            pg.psql_direct(&format!(
                "SELECT count(*) FROM pg_tables WHERE tablename = 'after_full_{i}'"
            ))
            .trim(),
            "0"
        );
    }
    assert!(
        agent.log().contains("cannot be written"),
        "the operator was not told:\n{}",
        agent.log()
    );
}
