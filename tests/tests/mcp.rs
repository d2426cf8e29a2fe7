//! The demo's scenario end to end: the unchanged MCP server for PostgreSQL
//! (`@modelcontextprotocol/server-postgres`, a node process) runs in a cgroup tagged as
//! `payments-mcp` by demo/pgwarden-demo.yaml, pointed at PostgreSQL's real address, and is
//! driven over MCP stdio. Its tool results carry masked card numbers only (every byte of its
//! stdout is scanned for the seeded PANs), pgwarden's denials come back as MCP errors naming the
//! rule, nothing denied reaches PostgreSQL, and pgwarden knows the node process behind the
//! connection (pid, executable, cgroup).
use std::fs;

use pgwarden_e2e::{
    Agent, DEMO_WORKLOAD, DemoConfig, McpServer, PgServer, Reply, TestCgroup, demo_seed_sql,
    mcp_server, policy_path, require_root, unique_name,
};
use serde_json::{Value, json};

fn luhn_valid(pan: &str) -> bool {
    let sum: u32 = pan
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                if d > 4 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// PCI DSS 3.4.1's shape: the first six and the last four digits, stars between.
fn masked(pan: &str) -> String {
    let n = pan.len();
    format!("{}{}{}", &pan[..6], "*".repeat(n - 10), &pan[n - 4..])
}

/// Fails if any of `pans` appears in `bytes`, as digits or grouped by fours with spaces or
/// dashes.
fn assert_no_pan(what: &str, pans: &[String], bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    for pan in pans {
        let grouped: Vec<&str> = pan
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        for shape in [pan.clone(), grouped.join(" "), grouped.join("-")] {
            assert!(
                !text.contains(&shape),
                "{what}: a full card number ({shape}) reached the MCP client:\n{text}"
            );
        }
    }
}

fn rows(reply: Reply, what: &str) -> Vec<Value> {
    match reply {
        Ok(Value::Array(rows)) => rows,
        other => panic!("{what}: expected rows, got {other:?}"),
    }
}

/// The error text of a denied query, with the SQLSTATE-less message the MCP server forwards.
fn denial(reply: Reply, what: &str) -> String {
    match reply {
        Err(e) => e.message,
        Ok(rows) => panic!("{what}: expected a denial, got rows {rows}"),
    }
}

#[test]
fn mcp_server_reads_masked_rows_and_meets_pgwardens_denials() {
    require_root();
    let pg = PgServer::start();
    pg.psql_direct(&demo_seed_sql());
    let pans: Vec<String> = pg
        .psql_direct("SELECT card_number FROM payments ORDER BY id")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(pans.len(), 300, "the seed's payments");
    assert!(
        pans.iter().all(|p| luhn_valid(p)),
        "seeded PANs are Luhn-valid"
    );

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("mask.key");
    fs::write(&key, b"mcp-e2e-mask-key-0123456789abcdef").unwrap();
    let control = dir.path().join("control.sock");
    let cg = TestCgroup::create(&unique_name("pgw-e2e-mcp"));
    let config = DemoConfig {
        pg_port: pg.port,
        control: &control,
        cgroup: &cg.rel,
        policy: &policy_path("pci-dss.yaml"),
        hash_key_file: &key,
        audit_file: &dir.path().join("audit.jsonl"),
        pg_socket_dir: pg.dir.path(),
    }
    .render();
    let agent = Agent::start(&config, &control);

    // The real address: no proxy address anywhere on the MCP server's side.
    let url = pg.url("127.0.0.1");
    let mut mcp = McpServer::spawn(mcp_server(&cg.path, &url)).unwrap();
    let init = mcp.initialize("pgwarden-e2e").unwrap();
    assert_eq!(
        init["serverInfo"]["name"], "example-servers/postgres",
        "{init}"
    );

    let tools = mcp.call("tools/list", json!({})).unwrap().unwrap();
    assert!(
        tools["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "query"),
        "{tools}"
    );

    // resources/list queries information_schema through pgwarden: allowed.
    let resources = mcp.call("resources/list", json!({})).unwrap().unwrap();
    let mut uris: Vec<&str> = resources["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["uri"].as_str())
        .collect();
    uris.sort_unstable();
    let base = format!("postgres://postgres@127.0.0.1:{}", pg.port);
    assert_eq!(
        uris,
        [
            format!("{base}/customers/schema"),
            format!("{base}/payments/schema"),
            format!("{base}/secrets/schema"),
        ],
        "{resources}"
    );

    let tables = rows(
        mcp.query(
            "SELECT table_name FROM information_schema.tables \
             WHERE table_schema = 'public' ORDER BY table_name",
        )
        .unwrap(),
        "list tables",
    );
    assert_eq!(
        tables,
        [
            json!({ "table_name": "customers" }),
            json!({ "table_name": "payments" }),
            json!({ "table_name": "secrets" }),
        ]
    );

    // The pool keeps its connection open between calls (10 s idle): pgwarden lists the session
    // with the node process's real identity, going to PostgreSQL's real address.
    let status = agent.status();
    let sessions: Vec<&Value> = status["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["identity"]["pid"].as_u64() == Some(u64::from(mcp.pid())))
        .collect();
    assert!(
        !sessions.is_empty(),
        "no session of the MCP server (pid {}): {status:#}\n--- agent log ---\n{}",
        mcp.pid(),
        agent.log()
    );
    let node = fs::canonicalize(which("node")).unwrap();
    for s in &sessions {
        assert_eq!(s["workload"], DEMO_WORKLOAD, "{s:#}");
        assert_eq!(s["identity"]["workload"], DEMO_WORKLOAD, "{s:#}");
        assert_eq!(s["identity"]["exe"], node.to_str().unwrap(), "{s:#}");
        assert_eq!(s["identity"]["cgroup"], format!("/{}", cg.rel), "{s:#}");
        assert_eq!(s["identity"]["comm"], "node", "{s:#}");
        assert_eq!(s["server"], format!("127.0.0.1:{}", pg.port), "{s:#}");
    }
    let log = agent.log();
    let who = format!("workload={DEMO_WORKLOAD} pid={} ", mcp.pid());
    // tracing quotes a string field's value.
    let exe = format!("exe={:?}", node.display().to_string());
    let cgroup = format!("cgroup=/{} ", cg.rel);
    assert!(
        log.lines().any(|l| l.contains("session start")
            && l.contains(&who)
            && l.contains(&exe)
            && l.contains(&cgroup)),
        "no `session start ... {who}... {exe} {cgroup}` line in the agent log:\n{log}"
    );

    // Masked reads: every card number comes back as BIN + last four.
    let payments = rows(
        mcp.query("SELECT id, card_number, cardholder, amount FROM payments ORDER BY id LIMIT 50")
            .unwrap(),
        "read payments",
    );
    assert_eq!(payments.len(), 50);
    for (row, pan) in payments.iter().zip(&pans) {
        assert_eq!(row["card_number"], masked(pan), "{row}");
    }
    let star = rows(
        mcp.query("SELECT * FROM payments ORDER BY id LIMIT 100")
            .unwrap(),
        "SELECT * from payments",
    );
    assert_eq!(star.len(), 100);
    assert!(
        star.iter()
            .zip(&pans)
            .all(|(row, pan)| row["card_number"] == masked(pan)),
        "{star:?}"
    );
    let customers = rows(
        mcp.query("SELECT id, email, name FROM customers ORDER BY id LIMIT 3")
            .unwrap(),
        "read customers",
    );
    let email = customers[0]["email"].as_str().unwrap();
    assert!(
        email.len() == 16 && email.bytes().all(|b| b.is_ascii_hexdigit()),
        "customers.email is a keyed hash: {email}"
    );

    // Denials come back as MCP errors naming pgwarden's rule.
    let secrets = denial(mcp.query("SELECT * FROM secrets").unwrap(), "read secrets");
    assert!(secrets.starts_with("pgwarden: table.denied:"), "{secrets}");
    // The MCP server wraps every query in a READ ONLY transaction; pgwarden's policy answers
    // the DROP before PostgreSQL sees it.
    let drop = denial(mcp.query("DROP TABLE payments").unwrap(), "drop payments");
    assert!(drop.starts_with("pgwarden: class.ddl:"), "{drop}");
    let inference = denial(
        mcp.query("SELECT id FROM payments WHERE card_number LIKE '4%' LIMIT 5")
            .unwrap(),
        "masked column in a predicate",
    );
    assert!(
        inference.starts_with("pgwarden: mask.inference:"),
        "{inference}"
    );
    // The session is still usable after the denials.
    let count = rows(
        mcp.query("SELECT count(*) AS n FROM payments").unwrap(),
        "count after the denials",
    );
    assert_eq!(count, [json!({ "n": "300" })]);

    mcp.stop().unwrap();
    let out = mcp.stdout_bytes();
    assert!(
        String::from_utf8_lossy(&out).contains(&masked(&pans[0])),
        "the scan below would prove nothing"
    );
    assert_no_pan("MCP server stdout", &pans, &out);
    assert_no_pan("MCP server stderr", &pans, mcp.stderr_text().as_bytes());

    // Nothing denied reached PostgreSQL.
    assert_eq!(pg.psql_direct("SELECT count(*) FROM payments"), "300");
    let pg_log = pg.log();
    assert!(!pg_log.contains("DROP TABLE"), "{pg_log}");
}

fn which(program: &str) -> std::path::PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
}

#[test]
fn the_seeded_shape_helpers_agree() {
    assert!(luhn_valid("4111111111111111"));
    assert!(!luhn_valid("4111111111111112"));
    assert_eq!(masked("4111111111111111"), "411111******1111");
}
