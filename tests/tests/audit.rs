//! The audit journal through the `pgwarden audit` CLI: journals written by the real writer
//! (the hidden `audit write-sample` test aid), then `verify` (intact, and the four kinds of
//! tampering), `tail` (filters, `-f` across rotation), `replay`; a torn tail sealed on the next
//! start; strict mode refusing an unwritable journal; and the journald mirror read back with
//! `journalctl` from a real systemd-journald (started by the test when none runs).
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

fn bin() -> PathBuf {
    std::env::var_os("PGWARDEN_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/pgwarden"),
        PathBuf::from,
    )
}

fn pgwarden(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run pgwarden")
}

fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[track_caller]
fn ok(args: &[&str]) -> String {
    let out = pgwarden(args);
    assert!(out.status.success(), "pgwarden {args:?}\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
fn fails(args: &[&str]) -> Output {
    let out = pgwarden(args);
    assert!(
        !out.status.success(),
        "pgwarden {args:?} should fail\n{}",
        text(&out)
    );
    out
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// A journal of `count` sample records (sessions of five) written through the real writer.
fn sample(dir: &Path, count: u64, extra: &[&str]) -> PathBuf {
    let file = dir.join("audit.jsonl");
    let n = count.to_string();
    let state = dir.join("state");
    let mut args = vec![
        "audit",
        "write-sample",
        "--file",
        p(&file),
        "--state-dir",
        p(&state),
        "--count",
        &n,
    ];
    args.extend_from_slice(extra);
    ok(&args);
    file
}

fn records(file: &Path) -> Vec<Value> {
    String::from_utf8(pgwarden_e2e::journal_bytes(file))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The rotated files next to `file` (`audit.jsonl.<first>-<last>[.zst]`).
fn rotated(file: &Path) -> Vec<PathBuf> {
    pgwarden_e2e::journal_files(file)
        .into_iter()
        .filter(|p| p != file)
        .collect()
}

#[test]
fn verify_tail_and_replay_a_rotated_journal() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let config = dir.path().join("pgwarden.yaml");
    std::fs::write(
        &config,
        format!(
            "audit:\n  path: {}\n  state_dir: {}\n  max_bytes: 4096\n  journald: false\n  checkpoint_every: 0\n",
            file.display(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    ok(&[
        "audit",
        "write-sample",
        "--config",
        p(&config),
        "--count",
        "25",
    ]);
    // A restart: the chain goes on.
    ok(&[
        "audit",
        "write-sample",
        "--config",
        p(&config),
        "--count",
        "5",
        "--start",
        "25",
    ]);
    assert!(rotated(&file).len() > 1, "4096-byte files rotate");

    // verify with no paths: the configured file and its rotated siblings.
    let out = ok(&["audit", "verify", "--config", p(&config)]);
    assert!(out.contains("OK: 30 record(s), seq 1..30"), "{out}");
    let json: Value =
        serde_json::from_str(&ok(&["audit", "verify", "--config", p(&config), "--json"])).unwrap();
    assert_eq!(json["records"], 30);
    assert!(json["failure"].is_null());

    // Never a card number on disk, literals replaced by placeholders; rotated files are
    // compressed (read back by Debian's zstd).
    assert!(
        rotated(&file)
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "zst")),
        "{:?}",
        rotated(&file)
    );
    for p in rotated(&file).iter().chain([&file]) {
        let body = String::from_utf8(pgwarden_e2e::journal_bytes(p)).unwrap();
        assert!(!body.contains("4111111111111111") && !body.contains("4111 1111 1111 1111"));
    }

    // tail --json --all: the stored lines of the whole chain, in order.
    let all = ok(&["audit", "tail", "--config", p(&config), "--all", "--json"]);
    let seqs: Vec<u64> = all
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
    // Default: the last 10.
    let last = ok(&["audit", "tail", "--file", p(&file), "--json"]);
    assert_eq!(last.lines().count(), 10);
    assert!(last.lines().last().unwrap().contains("\"seq\":30,"));

    // Filters, readable lines (no colour: stdout is not a terminal).
    let denied = ok(&[
        "audit",
        "tail",
        "--config",
        p(&config),
        "--all",
        "--decision",
        "deny",
    ]);
    assert_eq!(denied.lines().count(), 6, "{denied}");
    for line in denied.lines() {
        assert!(
            line.contains("query.denied") && line.contains("class.write"),
            "{line}"
        );
        assert!(line.contains("pid=4242 /usr/bin/python3"), "{line}");
        assert!(
            line.contains("UPDATE payments SET card_number = $1 WHERE id = $2"),
            "{line}"
        );
        assert!(!line.contains('\x1b'), "{line}");
    }
    let session = "5a00000000000002";
    let one = ok(&[
        "audit",
        "tail",
        "--config",
        p(&config),
        "--all",
        "--json",
        "--session",
        session,
    ]);
    assert_eq!(one.lines().count(), 5, "{one}");
    let none = ok(&[
        "audit",
        "tail",
        "--config",
        p(&config),
        "--all",
        "--workload",
        "nobody",
    ]);
    assert!(none.is_empty(), "{none}");
    let since = ok(&[
        "audit",
        "tail",
        "--config",
        p(&config),
        "--since",
        "1h",
        "--json",
    ]);
    assert_eq!(since.lines().count(), 30, "--since shows all it matches");

    // replay: the session in order, offsets from its start.
    let replay = ok(&["audit", "replay", session, "--config", p(&config)]);
    let order: Vec<usize> = [
        "session.start",
        "query ",
        "query.done",
        "query.denied",
        "session.end",
    ]
    .iter()
    .map(|e| replay.find(e).unwrap_or_else(|| panic!("{e} in\n{replay}")))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{replay}");
    assert!(replay.contains("+0.000000s"), "{replay}");
    assert!(replay.contains("rows="), "{replay}");
    assert!(replay.contains("1 allowed, 1 denied, 0 held"), "{replay}");
    let out = fails(&[
        "audit",
        "replay",
        "ffffffffffffffff",
        "--config",
        p(&config),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no record of session"));
}

#[test]
fn verify_classifies_tampering_with_the_first_bad_seq() {
    let dir = tempfile::tempdir().unwrap();
    let file = sample(dir.path(), 12, &[]);
    let good = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = good.lines().collect();
    assert_eq!(lines.len(), 12);
    let check = |body: String, kind: &str, seq: u64| {
        std::fs::write(&file, body).unwrap();
        let out = fails(&["audit", "verify", p(&file)]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let want = format!("FAILED: {kind} at seq {seq} ");
        assert!(stdout.contains(&want), "want `{want}`\n{}", text(&out));
        let json: Value =
            serde_json::from_slice(&pgwarden(&["audit", "verify", "--json", p(&file)]).stdout)
                .unwrap();
        assert_eq!(json["failure"]["kind"], kind);
        assert_eq!(json["failure"]["seq"], seq);
    };
    // Edit one byte of seq 8 (its row count, 0 -> 9).
    let mut v: Vec<String> = lines.iter().map(|s| (*s).to_owned()).collect();
    assert!(v[7].contains("\"rows\":0,"), "{}", v[7]);
    v[7] = v[7].replacen("\"rows\":0,", "\"rows\":9,", 1);
    check(v.join("\n") + "\n", "modified", 8);
    // Delete seq 5.
    let mut v = lines.clone();
    v.remove(4);
    check(v.join("\n") + "\n", "deleted", 5);
    // Swap seq 9 and 10.
    let mut v = lines.clone();
    v.swap(8, 9);
    check(v.join("\n") + "\n", "reordered", 9);
    // Cut the tail in the middle of seq 12.
    check(good[..good.len() - 40].to_owned(), "truncated", 12);
    // Intact again: OK.
    std::fs::write(&file, &good).unwrap();
    ok(&["audit", "verify", p(&file)]);
}

#[test]
fn a_torn_tail_is_sealed_by_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = sample(dir.path(), 6, &[]);
    let torn = br#"{"seq":7,"time":"2026-11-25T05:00:35.123456Z","event":"que"#;
    let mut body = std::fs::read(&file).unwrap();
    body.extend_from_slice(torn);
    std::fs::write(&file, &body).unwrap();
    let out = fails(&["audit", "verify", p(&file)]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("FAILED: truncated at seq 7 "),
        "{}",
        text(&out)
    );
    // The next start leaves the torn bytes in place and seals them.
    sample(dir.path(), 2, &["--start", "6"]);
    let after = std::fs::read(&file).unwrap();
    assert!(after.starts_with(&body), "the torn line stays");
    let recs = records(&file);
    let gap = recs.iter().find(|r| r["event"] == "audit.gap").unwrap();
    assert_eq!(gap["seq"], 7);
    assert_eq!(gap["detail"]["after_seq"], 6);
    assert_eq!(gap["detail"]["torn_bytes"], torn.len());
    assert_eq!(recs.last().unwrap()["seq"], 9);
    let out = ok(&["audit", "verify", p(&file)]);
    assert!(out.contains("sealed by audit.gap seq 7"), "{out}");
    assert!(out.contains("OK: 9 record(s)"), "{out}");
}

#[test]
fn strict_mode_refuses_an_unwritable_journal() {
    // Nothing can be created under /proc, not even by root.
    let out = fails(&[
        "audit",
        "write-sample",
        "--file",
        "/proc/pgwarden-e2e/audit.jsonl",
        "--count",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open the audit journal /proc/pgwarden-e2e/audit.jsonl"),
        "{err}"
    );
    // /dev/full opens, and refuses every write with ENOSPC: append fails, loudly.
    let out = fails(&[
        "audit",
        "write-sample",
        "--file",
        "/dev/full",
        "--count",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot write the audit journal /dev/full"),
        "{err}"
    );
    assert!(err.contains("No space left on device"), "{err}");
    assert!(
        err.contains("AUDIT JOURNAL /dev/full CANNOT BE WRITTEN"),
        "{err}"
    );
}

/// Kills a child process of ours when dropped.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn tail_follows_appends_and_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let file = sample(dir.path(), 3, &[]);
    let mut child = Command::new(bin())
        .args([
            "audit",
            "tail",
            "-f",
            "--json",
            "-n",
            "1",
            "--file",
            p(&file),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pgwarden audit tail -f");
    let stdout = child.stdout.take().unwrap();
    let _reap = Reap(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let seq_of = |l: &str| {
        serde_json::from_str::<Value>(l).unwrap()["seq"]
            .as_u64()
            .unwrap()
    };
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the last record");
    assert_eq!(seq_of(&first), 3);
    // A fixed margin, not a wait for something: `tail -f` shows nothing when it starts
    // following, and the appends below must come after it has.
    std::thread::sleep(Duration::from_millis(300));
    // Appends with rotations in between (4096-byte files), by another process.
    sample(dir.path(), 40, &["--start", "3", "--max-bytes", "4096"]);
    assert!(rotated(&file).len() >= 2, "it rotated");
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.last() != Some(&43) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(seq_of(&l)),
            Err(_) => panic!("tail -f stopped at {seen:?}"),
        }
    }
    assert_eq!(
        seen,
        (4..=43).collect::<Vec<_>>(),
        "every record once, in order"
    );
}

#[test]
fn records_are_mirrored_to_journald() {
    pgwarden_e2e::require_root();
    let _journald = pgwarden_e2e::Journald::ensure();
    let dir = tempfile::tempdir().unwrap();
    let workload = pgwarden_e2e::unique_name("audit-jd");
    let file = sample(dir.path(), 5, &["--journald", "--workload", &workload]);
    let hashes: Vec<String> = records(&file)
        .iter()
        .map(|r| r["hash"].as_str().unwrap().to_owned())
        .collect();
    let field = format!("PGWARDEN_WORKLOAD={workload}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let entries: Vec<Value> = loop {
        let out = Command::new("journalctl")
            .args(["-t", "pgwarden", "-o", "json", "--no-pager", &field])
            .output()
            .expect("run journalctl");
        let entries: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if entries.len() >= 5 || Instant::now() > deadline {
            break entries;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let seqs: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["PGWARDEN_SEQ"].as_str())
        .collect();
    assert_eq!(seqs, ["1", "2", "3", "4", "5"], "{entries:#?}");
    let got: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["PGWARDEN_HASH"].as_str())
        .collect();
    assert_eq!(got, hashes, "journald holds each record's hash");
    let denied = &entries[3];
    assert_eq!(denied["PGWARDEN_EVENT"], "query.denied");
    assert_eq!(denied["PRIORITY"], "4");
    // The identity is in the session's session.start, which the denial refers to.
    assert_eq!(entries[0]["PGWARDEN_EVENT"], "session.start");
    assert_eq!(entries[0]["PGWARDEN_ACTOR_PID"], "4242");
    assert_eq!(
        denied["PGWARDEN_SESSION_ID"],
        entries[0]["PGWARDEN_SESSION_ID"]
    );
    assert!(denied["PGWARDEN_SESSION_ID"].is_string(), "{denied}");
    assert_eq!(denied["SYSLOG_IDENTIFIER"], "pgwarden");
    assert!(
        denied["MESSAGE"]
            .as_str()
            .unwrap()
            .starts_with("query.denied #4 "),
        "{denied}"
    );
    assert_eq!(entries[1]["PRIORITY"], "6");
}
