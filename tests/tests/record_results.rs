//! What the workload saw, end to end: under a profile with `record_results: {rows: 3}`, a
//! tagged psql reads 10 payments rows through the real redirect; the statement's `query.done`
//! keeps the first 3 rows exactly as psql printed them (card numbers masked by the policy),
//! the row count, and the SHA-256 of the DataRow messages psql received (recomputed here from
//! psql's own output). A card number the policy does not mask (`notes`) reaches psql, but not
//! the journal: the sample is scrubbed and the digest withheld. No Luhn-valid 13 to 19 digit
//! run is anywhere in the journal; `audit replay` shows the sample as a table; `audit verify`
//! passes; a profile without `record_results` keeps no sample.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pgwarden_e2e::{
    TestCgroup, luhn_valid as luhn, require_root, run_output, unique_name, world_with_config,
};
use serde_json::Value;

const POLICY: &str = "version: 1
profiles:
  audited:
    classes: [read, transaction, session-set]
    tables:
      public.payments: [read]
    mask:
      columns:
        public.payments.card_number: pan
    record_results: {rows: 3, bytes: 8192}
  plain:
    classes: [read, transaction, session-set]
    tables:
      public.payments: [read]
    mask:
      columns:
        public.payments.card_number: pan
";

/// A card number the policy does not mask: it is in `notes`.
const NOTES_PAN: &str = "5500 0000 0000 0004";

fn luhn_complete(body: &str) -> String {
    (0..10)
        .map(|c| format!("{body}{c}"))
        .find(|c| luhn(c.as_bytes()))
        .unwrap()
}

/// The seeded card numbers, by id (1-based): Visa, and an Amex at id 3.
fn pans() -> Vec<String> {
    (1..=10u64)
        .map(|id| {
            if id == 3 {
                luhn_complete("37828224631000")
            } else {
                luhn_complete(&format!("4{:014}", id * 7919))
            }
        })
        .collect()
}

/// Every Luhn-valid run of 13 to 19 digits (single spaces or dashes allowed between digits),
/// after blanking what is a hash or an id: whole tokens of 16 or 64 lowercase hex digits.
fn luhn_runs(text: &str) -> Vec<String> {
    let mut b = text.as_bytes().to_vec();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_alphanumeric() {
            i += 1;
        }
        let token = &b[start..i];
        if matches!(token.len(), 16 | 64)
            && token.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        {
            b[start..i].fill(b'x');
        }
    }
    let mut found = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let mut digits = Vec::new();
        let start = i;
        while i < b.len()
            && (b[i].is_ascii_digit()
                || (matches!(b[i], b' ' | b'-')
                    && b.get(i + 1).is_some_and(u8::is_ascii_digit)
                    && i > start))
        {
            if b[i].is_ascii_digit() {
                digits.push(b[i]);
            }
            i += 1;
        }
        for len in 13..=19.min(digits.len()) {
            for w in digits.windows(len) {
                if luhn(w) {
                    found.push(String::from_utf8(w.to_vec()).unwrap());
                }
            }
        }
    }
    found
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits until the journal holds `n` `query.done` records of `workload`; returns them.
fn wait_done(journal: &Path, workload: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let done: Vec<Value> = records(journal)
            .into_iter()
            .filter(|r| r["event"] == "query.done" && r["workload"] == workload)
            .collect();
        if done.len() >= n {
            return done;
        }
        assert!(
            Instant::now() < deadline,
            "{n} query.done records of {workload} never came: {done:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// psql's unaligned rows (`-At`), split at `|`.
fn rows_of(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .map(|l| l.split('|').map(str::to_owned).collect())
        .collect()
}

/// The DataRow messages of text values, as the server (through pgwarden) sent them to psql.
fn data_rows(rows: &[Vec<String>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in rows {
        let mut body = Vec::new();
        body.extend_from_slice(&i16::try_from(r.len()).unwrap().to_be_bytes());
        for v in r {
            body.extend_from_slice(&i32::try_from(v.len()).unwrap().to_be_bytes());
            body.extend_from_slice(v.as_bytes());
        }
        out.push(b'D');
        out.extend_from_slice(&i32::try_from(body.len() + 4).unwrap().to_be_bytes());
        out.extend_from_slice(&body);
    }
    out
}

/// SHA-256 of `bytes`, by coreutils' `sha256sum` (not pgwarden's code).
fn sha256sum(dir: &Path, bytes: &[u8]) -> String {
    let f = dir.join("rows.bin");
    std::fs::write(&f, bytes).unwrap();
    let out = run_output(Command::new("sha256sum").arg(&f));
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn pgwarden(bin: &Path, args: &[&str]) -> (bool, String) {
    let out = run_output(Command::new(bin).args(args));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_journal_keeps_what_the_workload_saw_masked() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let audited = TestCgroup::create(&unique_name("pgw-e2e-rres"));
    let plain = TestCgroup::create(&unique_name("pgw-e2e-rplain"));
    let workloads = format!(
        "  - name: audited\n    cgroup: \"{}\"\n    policy: {}\n    profile: audited\n\
         \x20 - name: plain\n    cgroup: \"{}\"\n    policy: {}\n    profile: plain\n",
        audited.rel,
        policy.display(),
        plain.rel,
        policy.display()
    );
    let key = dir.path().join("mask.key");
    std::fs::write(&key, b"record-results-key-0123456789").unwrap();
    let w = world_with_config(
        &workloads,
        &format!("mask:\n  hash_key_file: {}\n", key.display()),
    );
    w.pg.seed_payments(10);
    let pans = pans();
    let mut seed = String::from("ALTER TABLE payments ADD COLUMN notes text;\n");
    for (i, p) in pans.iter().enumerate() {
        let id = i + 1;
        let notes = if id == 2 {
            format!("paid with {NOTES_PAN}")
        } else {
            format!("order {id}")
        };
        seed.push_str(&format!(
            "UPDATE payments SET card_number = '{p}', notes = '{notes}' WHERE id = {id};\n"
        ));
    }
    w.pg.psql_direct(&seed);
    let journal: PathBuf = w.agent.tmp_dir().join("audit.jsonl");

    // The workload's reads in one session, as psql printed them: the ground truth.
    let read = |cg: &TestCgroup, statements: &[&str]| {
        let mut cmd = w.psql_cmd(Some(cg), "127.0.0.1");
        for s in statements {
            cmd.args(["-c", s]);
        }
        let out = run_output(&mut cmd);
        assert!(
            out.status.success(),
            "{statements:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        rows_of(&String::from_utf8_lossy(&out.stdout))
    };
    let mut cards = read(
        &audited,
        &[
            "SELECT id, card_number FROM payments ORDER BY id",
            "SELECT id, notes FROM payments WHERE id <= 3 ORDER BY id",
        ],
    );
    assert_eq!(cards.len(), 13, "{cards:?}");
    let notes = cards.split_off(10);
    for (r, p) in cards.iter().zip(&pans) {
        assert!(r[1].contains('*') && !r[1].contains(p.as_str()), "{r:?}");
    }
    assert_eq!(notes[1][1], format!("paid with {NOTES_PAN}"), "not masked");

    let done = wait_done(&journal, "audited", 2);
    let result = |d: &Value| d["detail"]["result"].clone();

    // The first read: 3 rows exactly as psql got them, all 10 counted, their digest.
    let first = done
        .iter()
        .find(|d| result(d)["columns"] == serde_json::json!(["id", "card_number"]))
        .unwrap_or_else(|| panic!("{done:#?}"));
    eprintln!("--- the query.done record ---\n{first}");
    let r = result(first);
    let sample: Vec<Vec<String>> = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        })
        .collect();
    assert_eq!(sample, cards[..3], "{r}");
    assert_eq!(r["total_rows"], 10, "{r}");
    assert_eq!(first["rows"], 10, "{first}");
    assert_eq!(r["truncated"], false, "{r}");
    let digest = r["sha256"].as_str().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(
        digest,
        sha256sum(dir.path(), &data_rows(&cards)),
        "the digest of the DataRows psql received"
    );

    // The second: the card number in `notes` reached psql, the journal has it masked, and
    // no digest that trying the hidden digits could reverse.
    let second = done
        .iter()
        .find(|d| result(d)["columns"] == serde_json::json!(["id", "notes"]))
        .unwrap_or_else(|| panic!("{done:#?}"));
    let r = result(second);
    assert_eq!(r["rows"][1][1], "paid with 5500 00** **** 0004", "{r}");
    assert_eq!(r["rows"][0][1], notes[0][1], "{r}");
    assert_eq!(r["unmasked_pans"], 1, "{r}");
    assert!(r.get("sha256").is_none(), "{r}");

    // No card number anywhere in the journal, in any form.
    let text = std::fs::read_to_string(&journal).unwrap();
    for p in &pans {
        assert!(!text.contains(p.as_str()), "{p} in the journal");
    }
    assert!(!text.contains(NOTES_PAN) && !text.contains("5500000000000004"));
    let runs = luhn_runs(&text);
    assert!(runs.is_empty(), "Luhn-valid runs in the journal: {runs:?}");

    // A profile without record_results keeps no sample.
    let plain_rows = read(
        &plain,
        &["SELECT id, card_number FROM payments ORDER BY id"],
    );
    assert_eq!(plain_rows, cards, "the same masking");
    let plain_done = wait_done(&journal, "plain", 1);
    assert!(
        plain_done
            .iter()
            .all(|d| d["detail"].get("result").is_none()),
        "{plain_done:#?}"
    );

    // Replay shows the sample as a table with the masked values psql printed.
    let session = first["session_id"].as_str().unwrap();
    let (ok, replay) = pgwarden(
        w.agent.bin(),
        &[
            "audit",
            "replay",
            session,
            "--file",
            journal.to_str().unwrap(),
        ],
    );
    assert!(ok, "{replay}");
    eprintln!("--- pgwarden audit replay {session} ---\n{replay}");
    let lines: Vec<&str> = replay.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.split('|').map(str::trim).eq(["id", "card_number"]))
        .unwrap_or_else(|| panic!("no table in:\n{replay}"));
    for (k, want) in cards[..3].iter().enumerate() {
        let cells: Vec<&str> = lines[header + 2 + k].split('|').map(str::trim).collect();
        assert_eq!(cells, [want[0].as_str(), want[1].as_str()], "{replay}");
    }
    assert_eq!(
        lines[header + 5].trim(),
        format!("… 7 more rows (total 10, sha256 {digest})"),
        "{replay}"
    );
    assert!(replay.contains("paid with 5500 00** **** 0004"), "{replay}");
    assert!(!replay.contains(NOTES_PAN), "{replay}");

    // The chain, samples included, verifies.
    let (ok, verify) = pgwarden(
        w.agent.bin(),
        &["audit", "verify", journal.to_str().unwrap()],
    );
    assert!(ok && verify.contains("OK:"), "{verify}");
}
