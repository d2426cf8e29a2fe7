//! The audit journal keeps every record, whatever happens to its files, with PostgreSQL's own
//! statement log (`log_statement = 'all'`) as ground truth:
//!
//! - a rotation storm (4 KiB files, thousands of rotations under concurrent pgbench clients)
//!   with the agent killed with SIGKILL in the middle of it: every statement PostgreSQL ran has
//!   its `query` record, every seq from 1 is there, rotated files are compressed (read back by
//!   Debian's `zstd`, not pgwarden) and the chain verifies;
//! - the live file unlinked, renamed, truncated and chmod-ed while a tagged client loops: each
//!   is recorded, and every statement PostgreSQL ran has its record, in the journal's files or
//!   in what the test kept of the file it took away, or inside a range a record says is
//!   missing; nothing acknowledged is only in a file with no name;
//! - the journal's directory emptied between two runs: seq and the chain go on from the head
//!   kept in the state directory, and an `audit.reopen` says what is missing;
//! - the free-space floor: below it, statements are refused (and reach no server); above it
//!   again, they pass; nothing is deleted.
use std::collections::{BTreeSet, HashSet};
use std::io::{Read as _, Seek as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use pgwarden_e2e::{
    Agent, PgServer, TestCgroup, agent_config, allow_all_workload, in_cgroup, journal_bytes,
    journal_files, pg_bin, require_root, run_ok, run_output, unique_name, wait_for,
};
use serde_json::Value;

const LOG_ALL: &str = "log_statement = 'all'";

fn parse(bytes: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn records_of(files: &[PathBuf]) -> Vec<Value> {
    files
        .iter()
        .flat_map(|f| parse(&journal_bytes(f)))
        .collect()
}

/// `pgwarden audit verify` of the configured journal; its output.
fn verify(agent_bin: &Path, config: &Path) -> String {
    let out = run_output(
        Command::new(agent_bin)
            .args(["audit", "verify", "--config"])
            .arg(config),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "audit verify failed:\n{text}");
    text
}

/// The seqs declared missing by records (`detail.missing`).
fn declared_missing(recs: &[Value]) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for r in recs {
        let m = &r["detail"]["missing"];
        if let (Some(a), Some(b)) = (m["first_seq"].as_u64(), m["last_seq"].as_u64()) {
            out.extend(a..=b);
        }
    }
    out
}

fn pgbench_url(pg: &PgServer) -> String {
    pg.url("127.0.0.1")
}

/// A rotation storm, a SIGKILL in the middle of it, a restart, more load: nothing is lost.
#[test]
fn a_rotation_storm_and_a_kill_lose_no_record() {
    require_root();
    let pg = PgServer::start_configured(LOG_ALL, None);
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("log/audit.jsonl");
    let cg = TestCgroup::create(&unique_name("pgw-e2e-storm"));
    let control = dir.path().join("control.sock");
    let extra = format!(
        "audit:\n  path: {}\n  state_dir: {}\n  max_bytes: 4096\n  journald: false\n\
         bpf:\n  pin_dir: {}\n",
        journal.display(),
        dir.path().join("state").display(),
        Path::new("/sys/fs/bpf")
            .join(unique_name("pgwarden-e2e-storm"))
            .display()
    );
    let yaml = agent_config(pg.port, &control, &allow_all_workload("storm", &cg), &extra);
    let config = dir.path().join("pgwarden.yaml");
    std::fs::write(&config, &yaml).unwrap();
    run_ok(
        Command::new(pg_bin("pgbench"))
            .args(["-i", "-s", "1", "-q"])
            .arg(pgbench_url(&pg)),
    );
    let agent = Agent::start(&yaml, &control);
    let bin = agent.bin().to_owned();
    let pgbench = pg_bin("pgbench");
    // Concurrent clients for several seconds; the agent is killed in the middle.
    let load = |seconds: &str| {
        in_cgroup(&cg.path, &pgbench.to_string_lossy())
            .args(["-n", "-S", "-c", "4", "-j", "2", "-T", seconds])
            .arg(pgbench_url(&pg))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Killed once the storm is under way: after 300 rotations (however fast this machine
    // rotates), not after a fixed time.
    let first = load("40");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let rotations_before_kill = loop {
        let r = agent.status()["audit"]["rotations"].as_u64().unwrap();
        if r >= 300 || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    agent.kill9();
    let _ = first.wait_with_output();
    let agent = Agent::start(&yaml, &control);
    let out = load("5").wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "pgbench after the restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A clean stop: the last records fsynced, the archiver stopped.
    drop(agent);

    let files = journal_files(&journal);
    let compressed = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "zst"))
        .count();
    assert!(
        rotations_before_kill >= 300 && files.len() as u64 > rotations_before_kill + 50,
        "a storm: {rotations_before_kill} rotations before the kill, {} files",
        files.len()
    );
    assert!(
        compressed * 2 > files.len(),
        "{compressed} of {} compressed",
        files.len()
    );
    let recs = records_of(&files);
    // Every seq from 1, once.
    let seqs: Vec<u64> = recs.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), seqs.len(), "no seq twice");
    assert_eq!(sorted.first(), Some(&1));
    assert_eq!(
        sorted.last().copied(),
        Some(sorted.len() as u64),
        "every seq from 1 to the last is in the files"
    );
    // Ground truth: every SELECT PostgreSQL ran for pgbench has its query record.
    let ran = pg
        .log()
        .lines()
        .filter(|l| l.contains("statement: SELECT abalance FROM pgbench_accounts WHERE aid ="))
        .count();
    let recorded = recs
        .iter()
        .filter(|r| {
            r["event"] == "query"
                && r["statement"]["text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("SELECT abalance FROM pgbench_accounts"))
        })
        .count();
    assert!(ran > 1000, "the load ran: {ran} statements");
    assert!(
        recorded >= ran,
        "{ran} statements ran, {recorded} query records"
    );
    let out = verify(&bin, &config);
    assert!(out.contains("OK: "), "{out}");
}

/// The writer alone, as fast as it goes: eight concurrent appenders, 4 KiB files (thousands of
/// rotations), the process killed with SIGKILL in the middle, then a restart: every seq from
/// 1 is in the files, the chain verifies, and a `.zst.tmp` a kill left behind is cleaned up.
#[test]
fn a_writer_rotation_storm_killed_midway_loses_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let state = dir.path().join("state");
    let bin = std::env::var_os("PGWARDEN_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/pgwarden"),
        PathBuf::from,
    );
    let write = |count: &str, start: &str| {
        let mut c = Command::new(&bin);
        c.args(["audit", "write-sample", "--file"])
            .arg(&file)
            .arg("--state-dir")
            .arg(&state)
            .args([
                "--count",
                count,
                "--start",
                start,
                "--appenders",
                "8",
                "--max-bytes",
                "4096",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    let mut storm = write("400000", "0").spawn().unwrap();
    // Killed once it has rotated a few hundred times (and is still going).
    wait_for("rotations", Duration::from_secs(60), || {
        let n = journal_files(&file).len();
        if n > 300 { Ok(n) } else { Err(n) }
    });
    storm.kill().unwrap();
    let _ = storm.wait();
    run_ok(&mut write("20000", "400000"));
    let files = journal_files(&file);
    assert!(files.len() > 1000, "{} files", files.len());
    let recs = records_of(&files);
    let mut seqs: Vec<u64> = recs.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    let n = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "no seq twice");
    assert_eq!(seqs, (1..=n as u64).collect::<Vec<_>>(), "every seq from 1");
    let leftovers: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".zst.tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let out = run_output(
        Command::new(&bin)
            .args(["audit", "verify"])
            .arg(&file)
            .args(
                files
                    .iter()
                    .filter(|f| **f != file)
                    .map(|f| f.as_os_str().to_owned()),
            ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Waits until the journal's last seq is at least 20 past `from`; that seq.
fn wait_queries(agent: &Agent, from: u64) -> u64 {
    wait_for("statements to be recorded", Duration::from_secs(20), || {
        let now = agent.status()["audit"]["last_seq"].as_u64().unwrap_or(0);
        if now >= from + 20 { Ok(now) } else { Err(now) }
    })
}

/// The markers (`m_<n>`) of the statements in `text`.
fn markers(text: &str) -> HashSet<u64> {
    let mut out = HashSet::new();
    for part in text.split("AS m_").skip(1) {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(n) = digits.parse() {
            out.insert(n);
        }
    }
    out
}

/// The live file taken away four ways while a tagged client loops.
#[test]
fn what_is_done_to_the_live_file_is_recorded_and_loses_nothing_unsaid() {
    require_root();
    let pg = PgServer::start_configured(LOG_ALL, None);
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("audit.jsonl");
    let cg = TestCgroup::create(&unique_name("pgw-e2e-live"));
    let control = dir.path().join("control.sock");
    let extra = format!(
        "audit:\n  path: {}\n  state_dir: {}\n  journald: false\n",
        journal.display(),
        dir.path().join("state").display()
    );
    let yaml = agent_config(pg.port, &control, &allow_all_workload("live", &cg), &extra);
    let config = dir.path().join("pgwarden.yaml");
    std::fs::write(&config, &yaml).unwrap();
    let agent = Agent::start(&yaml, &control);
    let bin = agent.bin().to_owned();
    // One session looping over numbered statements.
    let script: String = (0..4000)
        .map(|i| format!("SELECT pg_sleep(0.002) AS m_{i};\n"))
        .collect();
    let script_file = dir.path().join("loop.sql");
    std::fs::write(&script_file, script).unwrap();
    let client = in_cgroup(&cg.path, &pg_bin("psql").to_string_lossy())
        .args(["-X", "-q", "-At", "-f"])
        .arg(&script_file)
        .arg(pg.url("127.0.0.1"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // What the test keeps of what it takes away.
    let mut kept: Vec<Vec<u8>> = Vec::new();
    let mut seq = wait_queries(&agent, 0);
    // 1. Unlinked, with nothing left to read it by but the test's descriptor.
    let mut held = std::fs::File::open(&journal).unwrap();
    std::fs::remove_file(&journal).unwrap();
    seq = wait_queries(&agent, seq);
    let mut orphan = Vec::new();
    held.rewind().unwrap();
    held.read_to_end(&mut orphan).unwrap();
    drop(held);
    // 2. Renamed.
    let moved = dir.path().join("moved-away.jsonl");
    std::fs::rename(&journal, &moved).unwrap();
    seq = wait_queries(&agent, seq);
    // 3. Truncated (a copy first; what lands between the copy and the cut is lost to the
    //    test too, and must be inside the range the record names).
    kept.push(std::fs::read(&journal).unwrap());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap()
        .set_len(0)
        .unwrap();
    seq = wait_queries(&agent, seq);
    // 4. Made read-only.
    std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o400)).unwrap();
    wait_queries(&agent, seq);
    let status = agent.status();
    let out = client.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(agent);

    let named = journal_files(&journal);
    let named_recs = records_of(&named);
    let orphan_recs = parse(&orphan);
    let mut all = named_recs.clone();
    all.extend(orphan_recs.clone());
    all.extend(parse(&std::fs::read(&moved).unwrap()));
    for k in &kept {
        all.extend(parse(k));
    }
    // Each record sits where it was written: the unlink's in the file later renamed, the
    // rename's in the file later truncated (the test's copy), and so on.
    let reasons: Vec<String> = all
        .iter()
        .filter(|r| r["event"] == "audit.reopen" || r["event"] == "audit.gap")
        .map(|r| r["detail"]["reason"].as_str().unwrap_or("").to_owned())
        .collect();
    // The unlink is seen right after the batch that follows it, which is written again.
    let is_unlink = |r: &str| r == "unlinked";
    assert!(
        reasons.iter().any(|r| is_unlink(r)),
        "no unlinked record: {reasons:?}"
    );
    for want in ["renamed", "truncated", "mode changed"] {
        assert!(
            reasons.iter().any(|r| r == want),
            "no {want} record: {reasons:?}"
        );
    }
    assert!(
        status["audit"]["reopens"].as_u64() >= Some(4),
        "status counts them: {:#}",
        status["audit"]
    );
    // Nothing acknowledged only in the unlinked file: what it holds past the range its
    // audit.reopen names is in the files that have a name (the live one, the moved one, the
    // truncated one as copied).
    let mut with_a_name = named_recs.clone();
    with_a_name.extend(parse(&std::fs::read(&moved).unwrap()));
    for k in &kept {
        with_a_name.extend(parse(k));
    }
    let named_seqs: HashSet<u64> = with_a_name
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .collect();
    let unlinked = all
        .iter()
        .find(|r| r["detail"]["reason"].as_str().is_some_and(is_unlink))
        .unwrap();
    let last_missing = unlinked["detail"]["missing"]["last_seq"].as_u64().unwrap();
    for r in &orphan_recs {
        let s = r["seq"].as_u64().unwrap();
        assert!(
            s <= last_missing || named_seqs.contains(&s),
            "seq {s} was written only into the unlinked file; its record: {r}\nthe unlink's \
             record: {unlinked}\nthe gap and reopen records: {:#?}",
            all.iter()
                .filter(|r| r["event"] == "audit.reopen" || r["event"] == "audit.gap")
                .collect::<Vec<_>>()
        );
    }
    // Ground truth: every statement PostgreSQL ran has its query record somewhere the test
    // can read, or sits in a range a record says is missing, beyond what the test kept.
    let have_seqs: HashSet<u64> = all.iter().filter_map(|r| r["seq"].as_u64()).collect();
    let unseen_missing = declared_missing(&all)
        .into_iter()
        .filter(|s| !have_seqs.contains(s))
        .count();
    let recorded: HashSet<u64> = all
        .iter()
        .filter(|r| r["event"] == "query")
        .flat_map(|r| markers(r["statement"]["text"].as_str().unwrap_or("")))
        .collect();
    let ran = markers(&pg.log());
    assert!(ran.len() >= 100, "the client ran {} statements", ran.len());
    let without: Vec<u64> = ran.difference(&recorded).copied().collect();
    assert!(
        without.len() <= unseen_missing,
        "{} statements ran without a record the test can find, but only {unseen_missing} \
         missing records are declared: {without:?}",
        without.len()
    );
    let out = verify(&bin, &config);
    assert!(out.contains("are not in these files"), "{out}");
}

/// The journal's directory emptied while the agent is down: the chain goes on.
#[test]
fn seq_and_the_chain_go_on_after_the_journal_directory_is_emptied() {
    require_root();
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("log/audit.jsonl");
    let cg = TestCgroup::create(&unique_name("pgw-e2e-head"));
    let control = dir.path().join("control.sock");
    let extra = format!(
        "audit:\n  path: {}\n  state_dir: {}\n  journald: false\n",
        journal.display(),
        dir.path().join("state").display()
    );
    let yaml = agent_config(pg.port, &control, &allow_all_workload("head", &cg), &extra);
    let config = dir.path().join("pgwarden.yaml");
    std::fs::write(&config, &yaml).unwrap();
    let psql = |sql: &str| {
        run_ok(
            in_cgroup(&cg.path, &pg_bin("psql").to_string_lossy())
                .args(["-X", "-At", "-c", sql])
                .arg(pg.url("127.0.0.1")),
        )
    };
    let agent = Agent::start(&yaml, &control);
    psql("SELECT 1");
    drop(agent);
    let before = records_of(&journal_files(&journal));
    let last = before.last().unwrap()["seq"].as_u64().unwrap();
    std::fs::remove_dir_all(dir.path().join("log")).unwrap();
    let agent = Agent::start(&yaml, &control);
    psql("SELECT 2");
    let bin = agent.bin().to_owned();
    drop(agent);
    let after = records_of(&journal_files(&journal));
    assert_eq!(after[0]["event"], "audit.reopen", "{:#}", after[0]);
    assert_eq!(after[0]["seq"].as_u64(), Some(last + 1));
    assert_eq!(
        after[0]["detail"]["missing"]["last_seq"].as_u64(),
        Some(last)
    );
    assert_eq!(
        after[0]["prev_hash"],
        before.last().unwrap()["hash"],
        "the chain links across the emptied directory"
    );
    let out = verify(&bin, &config);
    assert!(
        out.contains(&format!("chain starts at seq {}", last + 1)),
        "{out}"
    );
}

/// Below the free-space floor statements are refused and reach no server; nothing is
/// deleted to make room.
#[test]
fn below_the_free_space_floor_statements_are_refused() {
    require_root();
    let pg = PgServer::start_configured(LOG_ALL, None);
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
            .arg(&small),
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let journal = small.join("audit.jsonl");
    let cg = TestCgroup::create(&unique_name("pgw-e2e-floor"));
    let control = dir.path().join("control.sock");
    let extra = format!(
        "audit:\n  path: {}\n  state_dir: {}\n  journald: false\n  min_free_bytes: 8388608\n  \
         max_bytes: 65536\n",
        journal.display(),
        dir.path().join("state").display()
    );
    let yaml = agent_config(pg.port, &control, &allow_all_workload("floor", &cg), &extra);
    let agent = Agent::start(&yaml, &control);
    let psql = |sql: &str| {
        run_output(
            in_cgroup(&cg.path, &pg_bin("psql").to_string_lossy())
                .args(["-X", "-At", "-c", sql])
                .arg(pg.url("127.0.0.1")),
        )
    };
    assert!(psql("SELECT 1 AS floor_before").status.success());
    let fill = small.join("fill");
    run_ok(
        Command::new("dd")
            .args(["if=/dev/zero", "bs=1M", "count=9"])
            .arg(format!("of={}", fill.display())),
    );
    let files_before = journal_files(&journal);
    // The writer looks at the free space at least once a second: the first refusal comes
    // within that.
    let mut attempt = 0;
    let refused = wait_for("a refusal below the floor", Duration::from_secs(10), || {
        attempt += 1;
        let marker = format!("floor_below_{attempt}");
        let out = psql(&format!("SELECT 1 AS {marker}"));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            Err("passed".to_owned())
        } else {
            Ok((marker, err))
        }
    });
    assert!(
        refused.1.contains("min_free_bytes"),
        "below the floor: {}",
        refused.1
    );
    assert!(
        !pg.log()
            .contains(&format!("statement: SELECT 1 AS {}", refused.0)),
        "a refused statement reached PostgreSQL"
    );
    assert_eq!(
        journal_files(&journal),
        files_before,
        "nothing deleted to make room"
    );
    assert!(
        agent.log().contains("min_free_bytes"),
        "the operator is told"
    );
    std::fs::remove_file(&fill).unwrap();
    let out = psql("SELECT 1 AS floor_again");
    assert!(
        out.status.success(),
        "above the floor again: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(agent);
}
