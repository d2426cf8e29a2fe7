//! Inline masking end to end: seeded Luhn-valid card numbers of several brands, read through
//! the real redirect by psql (text), a raw protocol client (binary results, Execute without
//! Describe, BINARY cursor) and node `pg`; column rules by origin (aliases, star, views'
//! backstop), the content detector on text, JSON, arrays, COPY and error DETAIL, and a scan of
//! every byte sent to the client for the seeded PANs.
use std::path::Path;
use std::process::Command;

use pgwarden_e2e::{
    Agent, PgServer, TestCgroup, free_port, in_cgroup, pg_bin, psql_session, require_root,
    run_output, unique_name,
};
use serde_json::Value;

fn luhn_complete(body: &str) -> String {
    for c in 0..10u32 {
        let candidate = format!("{body}{c}");
        let sum: u32 = candidate
            .bytes()
            .rev()
            .enumerate()
            .map(|(i, b)| {
                let mut v = u32::from(b - b'0');
                if i % 2 == 1 {
                    v *= 2;
                    if v > 9 {
                        v -= 9;
                    }
                }
                v
            })
            .sum();
        if sum.is_multiple_of(10) {
            return candidate;
        }
    }
    unreachable!()
}

/// Card numbers of several brands and lengths (synthetic, Luhn-valid).
fn seeded_pans() -> Vec<String> {
    [
        ("4", 16),
        ("4", 13),
        ("51", 16),
        ("2221", 16),
        ("37", 15),
        ("6011", 16),
        ("3530", 16),
        ("62", 19),
        ("4", 19),
    ]
    .iter()
    .enumerate()
    .map(|(i, (prefix, len))| {
        let fill = len - 1 - prefix.len();
        let digits: String = (0..fill)
            .map(|k| char::from(b'0' + u8::try_from((i * 7 + k * 3) % 10).unwrap()))
            .collect();
        luhn_complete(&format!("{prefix}{digits}"))
    })
    .collect()
}

const POLICY: &str = "version: 1
profiles:
  analyst:
    classes: [read, transaction, session-set, copy]
    tables:
      public.payments: [read]
      public.customers: [read]
      public.v_payments: [read]
      public.notes: [read]
    mask:
      columns:
        public.payments.card_number: pan
        public.customers.email: hash
        public.customers.name: partial(1, 1)
      detect_pans: true
  writer:
    extends: analyst
    classes: [read, write, transaction, session-set]
    tables:
      public.payments: [read, write]
";

struct World {
    pg: PgServer,
    _agent: Agent,
    analyst: TestCgroup,
    writer: TestCgroup,
    pans: Vec<String>,
    dir: tempfile::TempDir,
}

fn world() -> World {
    require_root();
    let pg = PgServer::start();
    let pans = seeded_pans();
    let mut seed = String::from(
        "CREATE TABLE payments(id bigint primary key, card_number text unique, cardholder text, amount numeric, merchant text, created_at timestamptz default now());
         CREATE TABLE customers(id bigint primary key, email text, name text);
         CREATE TABLE notes(id int, body text, doc jsonb, cards text[]);
         CREATE VIEW v_payments AS SELECT id, card_number FROM payments;
         INSERT INTO customers VALUES (1, 'alice@example.com', 'Alice'), (2, 'bob@example.com', 'Bob');\n",
    );
    for (i, p) in pans.iter().enumerate() {
        seed.push_str(&format!(
            "INSERT INTO payments VALUES ({}, '{p}', 'holder', 10, 'm');\n",
            i + 1
        ));
    }
    let grouped: String = pans[0]
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(" ");
    seed.push_str(&format!(
        "INSERT INTO notes VALUES (1, 'paid with {grouped} at noon', '{{\"card\": \"{}\", \"n\": 1}}', ARRAY['{}', 'x']);\n",
        pans[1], pans[2]
    ));
    pg.psql_direct(&seed);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("mask-policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let key = dir.path().join("mask.key");
    std::fs::write(&key, b"e2e-mask-key-0123456789").unwrap();
    let control = dir.path().join("control.sock");
    let analyst = TestCgroup::create(&unique_name("pgw-e2e-analyst"));
    let writer = TestCgroup::create(&unique_name("pgw-e2e-mwriter"));
    let listen = free_port();
    let config = format!(
        "mask:\n  hash_key_file: {}\nlisten:\n  ipv4: 127.0.0.1:{listen}\n  ipv6: null\ncontrol:\n  socket: {}\nintercept: [\"*:{}\"]\n\
         workloads:\n  - name: analyst\n    cgroup: \"{}\"\n    policy: {}\n  - name: writer\n    cgroup: \"{}\"\n    policy: {}\n",
        key.display(),
        control.display(),
        pg.port,
        analyst.rel,
        policy.display(),
        writer.rel,
        policy.display()
    );
    let agent = Agent::start(&config, &control);
    World {
        pg,
        _agent: agent,
        analyst,
        writer,
        pans,
        dir,
    }
}

impl World {
    fn psql(&self, cg: &TestCgroup, statements: &[&str]) -> (String, String) {
        psql_session(&cg.path, &self.pg.url("127.0.0.1"), statements)
    }

    /// Fails if any seeded PAN appears in `bytes`, as digits or grouped by spaces or dashes.
    fn assert_no_pan(&self, what: &str, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        for p in &self.pans {
            let spaced: String = p
                .as_bytes()
                .chunks(4)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
                .join(" ");
            for shape in [p.clone(), spaced.clone(), spaced.replace(' ', "-")] {
                assert!(
                    !text.contains(&shape),
                    "{what}: a full PAN ({shape}) reached the client:\n{text}"
                );
            }
        }
    }

    fn raw(&self, cg: &TestCgroup, script: &Value, dump: &Path) -> Vec<Value> {
        let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/raw/pgraw.py");
        let out = run_output(
            in_cgroup(&cg.path, "python3")
                .env("PGRAW_DUMP", dump)
                .arg(client)
                .args([
                    "127.0.0.1",
                    &self.pg.port.to_string(),
                    "postgres",
                    "postgres",
                    &script.to_string(),
                ]),
        );
        assert!(
            out.status.success(),
            "raw client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn masked_shape(pan: &str) -> String {
    let n = pan.len();
    format!("{}{}{}", &pan[..6], "*".repeat(n - 10), &pan[n - 4..])
}

#[test]
fn column_rules_and_the_detector_mask_every_shape_of_result() {
    let w = world();
    let (out, err) = w.psql(
        &w.analyst,
        &[
            "SELECT card_number FROM payments ORDER BY id",
            "SELECT card_number AS c FROM payments ORDER BY id",
            "SeLeCt CARD_NUMBER fRoM PAYMENTS ORDER BY id",
            "SELECT * FROM payments ORDER BY id",
            "SELECT card_number FROM v_payments ORDER BY id",
            "SELECT body, doc, cards FROM notes",
            "SELECT email, name FROM customers ORDER BY id",
            "BEGIN",
            "DECLARE c BINARY CURSOR FOR SELECT card_number FROM payments",
            "FETCH ALL FROM c",
            "COMMIT",
            "COPY notes TO STDOUT",
            "COPY notes TO STDOUT (FORMAT csv)",
        ],
    );
    assert!(!err.contains("ERROR"), "{err}");
    w.assert_no_pan("psql", out.as_bytes());
    for p in &w.pans {
        // Column rule: 4 selects (plain, alias, mixed case, star), plus the view (detector).
        assert!(
            out.matches(&masked_shape(p)).count() >= 5,
            "{p} not masked as {} in:\n{out}",
            masked_shape(p)
        );
    }
    // email is a stable keyed hash, name is partial.
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains('|') && (l.ends_with("|A***e") || l.ends_with("|B*b")))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    let alice_hash = lines[0].split('|').next().unwrap().to_owned();
    assert_eq!(alice_hash.len(), 16);
    assert!(alice_hash.bytes().all(|b| b.is_ascii_hexdigit()));
    let (again, _) = w.psql(&w.analyst, &["SELECT email FROM customers WHERE id = 1"]);
    assert_eq!(
        again.trim(),
        alice_hash,
        "hash is not stable across sessions"
    );
}

#[test]
fn binary_results_and_execute_without_describe_are_masked() {
    let w = world();
    let dump = w.dir.path().join("received.bin");
    let steps = w.raw(
        &w.analyst,
        &serde_json::json!([
            [
                "extended_binary",
                "SELECT id, card_number FROM payments ORDER BY id"
            ],
            ["extended", "SELECT card_number FROM payments ORDER BY id"],
            ["query", "SELECT * FROM payments ORDER BY id"],
        ]),
        &dump,
    );
    let rows: Vec<&Value> = steps[0]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["type"] == "D")
        .collect();
    assert_eq!(rows.len(), w.pans.len());
    assert_eq!(rows[0]["values"][1], masked_shape(&w.pans[0]));
    let bytes = std::fs::read(&dump).unwrap();
    assert!(!bytes.is_empty());
    w.assert_no_pan("raw client bytes", &bytes);
}

#[test]
fn node_pg_receives_masked_rows() {
    let w = world();
    let node_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/node");
    let script = format!(
        "const {{ Client }} = require('pg');\n(async () => {{\n const c = new Client('{}');\n await c.connect();\n\
         const r = await c.query('SELECT id, card_number FROM payments WHERE id = $1', [1]);\n\
         const j = await c.query('SELECT doc FROM notes');\n\
         console.log(JSON.stringify([r.rows, j.rows]));\n await c.end();\n}})().catch(e => {{ console.error(e); process.exit(1); }});",
        w.pg.url("127.0.0.1")
    );
    let out = run_output(
        in_cgroup(&w.analyst.path, "node")
            .current_dir(&node_dir)
            .args(["-e", &script]),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.assert_no_pan("node pg", &out.stdout);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&masked_shape(&w.pans[0])), "{text}");
    assert!(text.contains(&masked_shape(&w.pans[1])), "{text}");
}

#[test]
fn inference_copy_and_error_detail() {
    let w = world();
    for (sql, rule) in [
        (
            "SELECT id FROM payments WHERE card_number LIKE '4%'",
            "mask.inference",
        ),
        (
            "SELECT substring(card_number, 1, 12) FROM payments",
            "mask.inference",
        ),
        (
            "SELECT encode(convert_to(card_number, 'UTF8'), 'base64') FROM payments",
            "mask.inference",
        ),
        (
            "SELECT reverse(card_number) FROM payments",
            "mask.inference",
        ),
        ("SELECT row_to_json(p) FROM payments p", "mask.inference"),
        ("SELECT p FROM payments p", "mask.inference"),
        (
            "COPY (SELECT card_number FROM payments) TO STDOUT",
            "mask.copy",
        ),
        ("COPY payments TO STDOUT", "mask.copy"),
        ("COPY notes TO STDOUT (FORMAT binary)", "mask.copy"),
    ] {
        let (out, err) = w.psql(&w.analyst, &[sql, "SELECT 'alive'"]);
        assert!(err.contains(&format!("pgwarden: {rule}:")), "{sql}: {err}");
        assert_eq!(out.trim(), "alive", "{sql}");
    }
    // PostgreSQL echoes the duplicate key in DETAIL: masked.
    let (out, err) = w.psql(
        &w.writer,
        &[&format!(
            "INSERT INTO payments (id, card_number) VALUES (99, '{}')",
            w.pans[3]
        )],
    );
    assert!(err.contains("23505"), "{err}");
    assert!(err.contains(&masked_shape(&w.pans[3])), "{err}");
    w.assert_no_pan("error detail", format!("{out}{err}").as_bytes());
    // Untagged, the same query shows the real numbers: masking is only for tagged workloads.
    let direct = Command::new(pg_bin("psql"))
        .args([
            "-X",
            "-Atc",
            "SELECT card_number FROM payments WHERE id = 1",
        ])
        .arg(w.pg.url("127.0.0.1"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&direct.stdout).trim(), w.pans[0]);
}

/// A reload that masks another column masks it in sessions already open (issue 17, defect b):
/// one psql connection reads `cardholder` in the clear, the policy file gains a rule for it,
/// and the same connection's next read is masked. PostgreSQL's table still holds the value.
#[test]
fn a_reload_masks_a_new_column_in_open_sessions() {
    let w = world();
    let policy = w.dir.path().join("mask-policy.yaml");
    let reloaded = POLICY.replace(
        "        public.customers.name: partial(1, 1)\n",
        "        public.customers.name: partial(1, 1)\n        public.payments.cardholder: redact\n",
    );
    assert_ne!(reloaded, POLICY);
    let staged = w.dir.path().join("reloaded.yaml");
    std::fs::write(&staged, &reloaded).unwrap();
    let log = w._agent.log_path();
    // psql's `\!` runs in the middle of the session: swap the policy, then wait until the
    // agent says it reloaded (polling its log, at most 10 s).
    let swap = format!(
        "cp {} {} && for i in $(seq 200); do grep -q 'policy reloaded' {} && exit 0; sleep 0.05; done; exit 1",
        staged.display(),
        policy.display(),
        log.display()
    );
    let script = w.dir.path().join("reload.sql");
    std::fs::write(
        &script,
        format!(
            "SELECT 'before', cardholder, pg_backend_pid() FROM payments WHERE id = 1;\n\\! {swap}\n\
             SELECT 'after', cardholder, pg_backend_pid() FROM payments WHERE id = 1;\n\
             SELECT 'again', cardholder, pg_backend_pid() FROM payments WHERE id = 2;\n"
        ),
    )
    .unwrap();
    let out = run_output(
        in_cgroup(&w.analyst.path, pg_bin("psql").to_str().unwrap())
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-f"])
            .arg(&script)
            .arg(w.pg.url("127.0.0.1")),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the session failed: {}\n{stdout}\nagent:\n{}",
        String::from_utf8_lossy(&out.stderr),
        w._agent.log()
    );
    let rows: Vec<Vec<&str>> = stdout.lines().map(|l| l.split('|').collect()).collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    // One connection throughout: the same backend answered all three.
    assert!(
        rows.iter().all(|r| r[2] == rows[0][2]),
        "not one session: {stdout}"
    );
    assert_eq!(rows[0][..2], ["before", "holder"], "{stdout}");
    for r in &rows[1..] {
        assert_ne!(
            r[1], "holder",
            "the open session still shows the newly masked column: {stdout}"
        );
    }
    assert!(w._agent.log().contains("policy reloaded"));
    // Ground truth: the table is unchanged; only what the workload sees is masked.
    assert_eq!(
        w.pg.psql_direct("SELECT cardholder FROM payments WHERE id = 1")
            .trim(),
        "holder"
    );
}

/// Messages that carry no result columns still carry text a workload can fill with card
/// numbers: a NOTIFY payload (here its own, as another session's or a trigger's would be),
/// a ParameterStatus the server echoes (application_name). Every byte the client receives is
/// checked. A parenthesised masked column is the column itself: allowed, and masked.
#[test]
fn notifications_parameter_status_and_parenthesised_columns_are_masked() {
    let w = world();
    let dump = w.dir.path().join("received-async.bin");
    let pan = &w.pans[4];
    let steps = w.raw(
        &w.analyst,
        &serde_json::json!([
            ["query", "LISTEN cards"],
            ["query", format!("NOTIFY cards, 'card {pan} declined'")],
            ["query", format!("SET application_name = '{pan}'")],
            ["query", "SELECT (card_number) FROM payments ORDER BY id"],
            [
                "query",
                "SELECT ((card_number)) AS c FROM payments ORDER BY id"
            ],
            ["query", "SELECT (card_number || '') FROM payments"],
        ]),
        &dump,
    );
    let types = |i: usize| -> Vec<String> {
        steps[i]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["type"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(
        types(1).contains(&"A".to_owned()),
        "the notification arrived: {:?}",
        steps[1]
    );
    assert!(
        types(2).contains(&"S".to_owned()),
        "application_name echoed: {:?}",
        steps[2]
    );
    for i in [3, 4] {
        let rows: Vec<&Value> = steps[i]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["type"] == "D")
            .collect();
        assert_eq!(rows.len(), w.pans.len(), "step {i}: {:?}", steps[i]);
        assert_eq!(rows[0]["values"][0], masked_shape(&w.pans[0]), "step {i}");
    }
    let refused = &steps[5][0];
    assert_eq!(refused["type"], "E", "{refused}");
    assert!(
        refused["M"].as_str().unwrap().contains("mask.inference"),
        "an expression in parentheses is still an expression: {refused}"
    );
    let bytes = std::fs::read(&dump).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains(&masked_shape(pan)),
        "the masked payload reached the client"
    );
    w.assert_no_pan("asynchronous messages", &bytes);
}
