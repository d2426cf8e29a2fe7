//! The writer end to end on real files: chaining across restarts, group commit, rotation,
//! recovery of a torn tail, async overflow, checkpoints, write failures.
use std::io::Write as _;

use serde_json::{Value, json};

use super::*;
use crate::audit::fixtures::{config as cfg, lines, lines_lossy};
use crate::audit::sample::record as sample_record;
use crate::audit::verify::{self, Tamper};

/// The files of the chain, oldest first.
fn chain_files(c: &AuditConfig) -> Vec<PathBuf> {
    crate::audit::tail::chain_paths(&c.path)
}

#[test]
fn the_chain_links_and_continues_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let j = Journal::open(&c).unwrap();
    for i in 0..5 {
        assert_eq!(
            j.append_blocking(sample_record(i, "w", false)).unwrap(),
            i + 1
        );
    }
    let st = j.status();
    assert_eq!(st.last_seq, 5);
    assert_eq!(st.records_written, 5);
    j.close();
    assert!(matches!(
        j.append_blocking(Record::new(Event::AgentStop)),
        Err(AuditError::Closed)
    ));
    drop(j);
    let j = Journal::open(&c).unwrap();
    assert_eq!(
        j.append_blocking(Record::new(Event::AgentStart)).unwrap(),
        6
    );
    drop(j);
    let recs = lines(&c.path);
    assert_eq!(recs.len(), 6);
    assert_eq!(recs[0]["prev_hash"], GENESIS_HASH);
    for w in recs.windows(2) {
        assert_eq!(w[1]["prev_hash"], w[0]["hash"]);
        assert_eq!(
            w[1]["seq"].as_u64().unwrap(),
            w[0]["seq"].as_u64().unwrap() + 1
        );
    }
    for r in &recs {
        assert_eq!(
            crate::audit::canon::hash_value(r),
            r["hash"].as_str().unwrap()
        );
    }
    let text = std::fs::read_to_string(&c.path).unwrap();
    assert!(!text.contains("4111111111111111") && !text.contains("4111 1111 1111 1111"));
    let report = verify::verify(&[&c.path]);
    assert!(report.ok(), "{report}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&c.path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn one_writer_per_journal() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let j = Journal::open(&c).unwrap();
    let e = Journal::open(&c).err().expect("a second writer is refused");
    assert!(e.to_string().contains("another process is writing"), "{e}");
    j.close();
    drop(j);
    Journal::open(&c).expect("free again once the first is closed");
}

#[test]
fn the_parent_directory_is_created_0700() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.path = dir.path().join("log/pgwarden/audit.jsonl");
    let j = Journal::open(&c).unwrap();
    j.append_blocking(Record::new(Event::AgentStart)).unwrap();
    let mode = std::fs::metadata(dir.path().join("log/pgwarden"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appenders_are_group_committed_in_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let j = Journal::open(&c).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16u64 {
        let j = j.clone();
        tasks.spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..50 {
                seqs.push(
                    j.append(sample_record(t * 100 + i, "w", false))
                        .await
                        .unwrap(),
                );
            }
            seqs
        });
    }
    let mut all: Vec<u64> = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let seqs = r.unwrap();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "per-task order kept");
        all.extend(seqs);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=800).collect::<Vec<_>>());
    drop(j);
    let report = verify::verify(&[&c.path]);
    assert!(report.ok(), "{report}");
    assert_eq!(report.records, 800);
}

/// Strict without per-statement fsync: appenders write the chain themselves, interleaved
/// with records nobody waits for, and nothing is lost or out of order.
#[test]
fn inline_appenders_and_lazy_records_share_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let c = AuditConfig {
        fsync: false,
        max_bytes: 64 * 1024,
        ..cfg(dir.path())
    };
    let j = Journal::open(&c).unwrap();
    assert!(j.inner.shared.inline);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                let mut seqs = Vec::new();
                for i in 0..150 {
                    seqs.push(
                        j.append_blocking(sample_record(t * 1000 + i, "w", false))
                            .unwrap(),
                    );
                    j.submit(sample_record(t * 1000 + i + 500, "w", false));
                }
                seqs
            })
        })
        .collect();
    for t in threads {
        let seqs = t.join().unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "per-thread order kept"
        );
    }
    j.close();
    let files = chain_files(&c);
    assert!(files.len() > 1, "it rotated");
    let report = verify::verify(&files.iter().collect::<Vec<_>>());
    assert!(report.ok(), "{report}");
    assert_eq!(report.records, 1200);
}

/// A record nobody waits for, with no appender after it to take it along, still reaches
/// the file while the journal stays open: the writer takes it once it has waited.
#[test]
fn a_lazy_record_left_alone_is_written_without_a_close() {
    let dir = tempfile::tempdir().unwrap();
    let c = AuditConfig {
        fsync: false,
        ..cfg(dir.path())
    };
    let j = Journal::open(&c).unwrap();
    assert!(j.inner.shared.inline);
    j.append_blocking(sample_record(1, "w", false)).unwrap();
    let before = std::fs::read_to_string(&c.path).unwrap().lines().count();
    j.submit(sample_record(2, "w", false));
    // Well within LAZY_FLUSH's 2 ms, and well before the periodic fsync (1 s) would
    // take it anyway.
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut lines = before;
    while lines == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        lines = std::fs::read_to_string(&c.path).unwrap().lines().count();
    }
    assert_eq!(
        lines,
        before + 1,
        "the lazy record was written while the journal is open"
    );
    j.close();
}

#[test]
fn retention_keeps_what_a_forwarding_target_has_not_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = AuditConfig {
        max_bytes: 4096,
        ..cfg(dir.path())
    };
    c.retention.max_files = 1;
    c.forward =
        serde_yaml_ng::from_str("- {name: siem, http: {url: 'http://127.0.0.1:9/'}}").unwrap();
    let cursor = crate::audit::cursor::path(&c.state_dir, "siem");
    crate::audit::cursor::save(
        &cursor,
        &crate::audit::cursor::Cursor {
            seq: 12,
            hash: String::new(),
        },
    )
    .unwrap();
    let j = Journal::open(&c).unwrap();
    for i in 0..60 {
        j.append_blocking(sample_record(i, "w", false)).unwrap();
    }
    j.archive();
    // Only files wholly at or before the cursor went; everything after seq 12 is kept, past
    // max_files.
    let rotated = crate::audit::segments::rotated(&c.path);
    assert!(rotated.len() > 1, "{rotated:?}");
    let first_kept = chain_files(&c)
        .iter()
        .flat_map(|p| lines(p))
        .map(|r| r["seq"].as_u64().unwrap())
        .min()
        .unwrap();
    assert!(
        first_kept <= 13,
        "records after the cursor were deleted: first kept {first_kept}"
    );
    // Delivered through 50: retention catches up.
    crate::audit::cursor::save(
        &cursor,
        &crate::audit::cursor::Cursor {
            seq: 50,
            hash: String::new(),
        },
    )
    .unwrap();
    j.append_blocking(sample_record(60, "w", false)).unwrap();
    j.archive();
    let first_now = chain_files(&c)
        .iter()
        .flat_map(|p| lines(p))
        .map(|r| r["seq"].as_u64().unwrap())
        .min()
        .unwrap();
    assert!(
        first_now > first_kept && first_now <= 51,
        "{first_kept} -> {first_now}"
    );
    j.close();
}

#[test]
fn retention_deletes_the_oldest_files_only_after_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = AuditConfig {
        max_bytes: 4096,
        ..cfg(dir.path())
    };
    c.retention.max_files = 3;
    let j = Journal::open(&c).unwrap();
    for i in 0..60 {
        j.append_blocking(sample_record(i, "w", false)).unwrap();
    }
    j.archive();
    let st = j.status();
    drop(j);
    let rotated = crate::audit::segments::rotated(&c.path);
    assert_eq!(
        rotated.len(),
        3,
        "max_files bounds the rotated files: {rotated:?}"
    );
    for r in &rotated {
        assert!(crate::audit::segments::is_compressed(&r.path), "{r:?}");
    }
    assert!(st.retention_files > 0 && st.retention_records > 0, "{st:?}");
    // The chain runs through the kept files and the live one without a break, and starts
    // where an audit.retention says the deleted ones ended.
    let files = chain_files(&c);
    let all: Vec<Value> = files.iter().flat_map(|p| lines(p)).collect();
    for w in all.windows(2) {
        assert_eq!(w[1]["prev_hash"], w[0]["hash"]);
    }
    let first = all[0]["seq"].as_u64().unwrap();
    assert!(first > 1);
    let retention: Vec<&Value> = all
        .iter()
        .filter(|r| r["event"] == "audit.retention")
        .collect();
    assert!(
        retention.iter().any(|r| {
            r["detail"]["missing"]["last_seq"].as_u64() == Some(first - 1)
                && r["detail"]["missing"]["last_hash"] == all[0]["prev_hash"]
        }),
        "{retention:#?}"
    );
    // Given in any order, verify sorts them by first seq and accepts the recorded start.
    let mut shuffled = files.clone();
    shuffled.reverse();
    let report = verify::verify(&shuffled);
    assert!(report.ok(), "{report}");
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.message.contains("audit.retention")),
        "{report}"
    );
    // Without the record that says so, the same start is a deletion...
    let kept: Vec<&PathBuf> = files.iter().skip(1).collect();
    let report = verify::verify(&kept);
    assert_eq!(
        report.failure.as_ref().map(|f| f.kind),
        Some(Tamper::Deleted),
        "{report}"
    );
    // ...unless the files are known to be part of a chain.
    assert!(verify::verify_with(&kept, true).ok());
}

#[test]
fn by_default_nothing_is_deleted_and_rotated_files_are_compressed() {
    let dir = tempfile::tempdir().unwrap();
    let c = AuditConfig {
        max_bytes: 4096,
        ..cfg(dir.path())
    };
    let j = Journal::open(&c).unwrap();
    for i in 0..60 {
        j.append_blocking(sample_record(i, "w", false)).unwrap();
    }
    j.archive();
    drop(j);
    let rotated = crate::audit::segments::rotated(&c.path);
    assert!(rotated.len() >= 5, "{rotated:?}");
    let mut next = 1;
    for r in &rotated {
        let crate::audit::segments::Place::Range {
            first,
            last,
            compressed,
        } = r.place
        else {
            panic!("{r:?}")
        };
        assert!(compressed, "{r:?}");
        assert_eq!(first, next, "the names say the ranges, back to back");
        let recs = lines(&r.path);
        assert_eq!(recs[0]["seq"].as_u64(), Some(first));
        assert_eq!(recs.last().unwrap()["seq"].as_u64(), Some(last));
        next = last + 1;
    }
    let report = verify::verify(&chain_files(&c));
    assert!(report.ok(), "{report}");
    assert_eq!((report.first_seq, report.last_seq), (Some(1), Some(60)));
    assert!(report.warnings.is_empty(), "{report}");
}

#[test]
fn files_rotated_by_older_versions_are_renamed_by_range() {
    let dir = tempfile::tempdir().unwrap();
    let c = AuditConfig {
        max_bytes: 4096,
        compress: false,
        ..cfg(dir.path())
    };
    let j = Journal::open(&c).unwrap();
    for i in 0..30 {
        j.append_blocking(sample_record(i, "w", false)).unwrap();
    }
    drop(j);
    // As an older version named them: PATH.1 the newest.
    let mut rotated = crate::audit::segments::rotated(&c.path);
    rotated.reverse();
    for (n, r) in rotated.iter().enumerate() {
        std::fs::rename(&r.path, crate::audit::segments::legacy_name(&c.path, n + 1)).unwrap();
    }
    assert!(verify::verify(&chain_files(&c)).ok(), "old names verify");
    let j = Journal::open(&c).unwrap();
    j.archive();
    j.append_blocking(Record::new(Event::AgentStart)).unwrap();
    drop(j);
    let after = crate::audit::segments::rotated(&c.path);
    assert_eq!(after.len(), rotated.len());
    assert!(
        after
            .iter()
            .all(|r| matches!(r.place, crate::audit::segments::Place::Range { .. })),
        "{after:?}"
    );
    let report = verify::verify(&chain_files(&c));
    assert!(report.ok(), "{report}");
    assert_eq!(report.records, 31);
}

#[test]
fn an_empty_current_file_continues_from_the_newest_rotated_one() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let j = Journal::open(&c).unwrap();
    for i in 0..3 {
        j.append_blocking(sample_record(i, "w", false)).unwrap();
    }
    drop(j);
    std::fs::rename(
        &c.path,
        crate::audit::segments::range_name(&c.path, 1, 3, false),
    )
    .unwrap();
    std::fs::File::create(&c.path).unwrap();
    let j = Journal::open(&c).unwrap();
    assert_eq!(
        j.append_blocking(Record::new(Event::AgentStart)).unwrap(),
        4
    );
    drop(j);
    let report = verify::verify(&chain_files(&c));
    assert!(report.ok(), "{report}");
    assert_eq!(report.records, 4);
}

#[test]
fn a_torn_tail_is_sealed_by_a_gap_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let j = Journal::open(&c).unwrap();
    for i in 0..4 {
        j.append_blocking(sample_record(i, "w", false)).unwrap();
    }
    drop(j);
    // A crash in the middle of writing seq 5.
    let torn = br#"{"seq":5,"time":"2026-11-25T05:00:35.1"#;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&c.path)
        .unwrap()
        .write_all(torn)
        .unwrap();
    let j = Journal::open(&c).unwrap();
    assert_eq!(
        j.append_blocking(Record::new(Event::AgentStart)).unwrap(),
        6
    );
    drop(j);
    let text = std::fs::read_to_string(&c.path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 7);
    assert_eq!(lines[4].as_bytes(), torn, "the torn line is left in place");
    let gap: Value = serde_json::from_str(lines[5]).unwrap();
    assert_eq!(gap["event"], "audit.gap");
    assert_eq!(gap["seq"], 5);
    assert_eq!(gap["detail"]["torn_bytes"], torn.len());
    assert_eq!(gap["detail"]["after_seq"], 4);
    let report = verify::verify(&[&c.path]);
    assert!(report.ok(), "{report}");
    assert!(
        report.warnings.iter().any(|w| w.message.contains("sealed")),
        "{report}"
    );

    // An invalid last line that does end with a newline is a tear too.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&c.path)
        .unwrap()
        .write_all(b"{not json\n")
        .unwrap();
    let j = Journal::open(&c).unwrap();
    assert_eq!(j.status().last_seq, 7);
    drop(j);
    let gap = lines_lossy(&c.path).pop().unwrap();
    assert_eq!(gap["detail"]["torn_bytes"], 10);
    let report = verify::verify(&[&c.path]);
    assert!(report.ok(), "{report}");
}

#[test]
fn async_overflow_is_counted_and_reported_by_one_gap() {
    let dir = tempfile::tempdir().unwrap();
    let c = AuditConfig {
        mode: AuditMode::Async,
        queue: 5,
        ..cfg(dir.path())
    };
    let j = Journal::open(&c).unwrap();
    let (mut accepted, mut dropped) = (Vec::new(), 0u64);
    {
        // The writer takes at most one batch, then waits: the queue holds 5, the rest drop.
        let _stalled = lock(&j.inner.shared.writer);
        for i in 0..20 {
            match j.append_blocking(sample_record(i, "w", false)) {
                Ok(seq) => accepted.push(seq),
                Err(AuditError::Dropped { lost }) => {
                    dropped += 1;
                    assert_eq!(lost, dropped);
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    assert!(dropped >= 10, "dropped {dropped}");
    assert_eq!(j.status().dropped, dropped);
    // Space comes back: one gap counts them; then the next append.
    while j.status().queue_depth > 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let seq = j.append_blocking(Record::new(Event::AgentStop)).unwrap();
    j.close();
    let recs = lines(&c.path);
    let gaps: Vec<&Value> = recs.iter().filter(|r| r["event"] == "audit.gap").collect();
    // Gaps account for every dropped record. Usually one gap says it all; when the writer
    // got a batch out between two overflows there are two, and their counts add up.
    assert!(!gaps.is_empty() && gaps.len() <= 2, "{recs:?}");
    let lost: u64 = gaps
        .iter()
        .map(|g| g["detail"]["lost"].as_u64().unwrap())
        .sum();
    assert_eq!(lost, dropped, "{recs:?}");
    assert_eq!(recs.last().unwrap()["seq"], seq);
    assert_eq!(recs.last().unwrap()["event"], "agent.stop");
    // The seqs handed out at enqueue are exactly those on disk.
    for seq in accepted {
        let r = &recs[usize::try_from(seq).unwrap() - 1];
        assert_eq!(r["seq"], seq);
        assert_ne!(r["event"], "audit.gap");
    }
    let report = verify::verify(&[&c.path]);
    assert!(report.ok(), "{report}");
    // Verify reports every gap, with its count.
    for g in &gaps {
        let lost = g["detail"]["lost"].as_u64().unwrap();
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.message.contains(&format!("{lost} record(s) lost"))),
            "{report}"
        );
    }
}

#[test]
fn checkpoints_by_count() {
    let dir = tempfile::tempdir().unwrap();
    let c = AuditConfig {
        checkpoint_every: 10,
        ..cfg(dir.path())
    };
    let j = Journal::open(&c).unwrap();
    for i in 0..25 {
        j.append_blocking(sample_record(i, "w", false)).unwrap();
    }
    drop(j);
    let recs = lines(&c.path);
    let cps: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "audit.checkpoint")
        .collect();
    assert_eq!(cps.len(), 2, "{cps:?}");
    assert_eq!(cps[0]["seq"], 11);
    assert_eq!(
        cps[0]["detail"],
        json!({"records": 10, "first_seq": 1, "last_seq": 10})
    );
    assert_eq!(cps[1]["seq"], 22);
    assert_eq!(
        cps[1]["detail"],
        json!({"records": 10, "first_seq": 12, "last_seq": 21})
    );
    assert!(verify::verify(&[&c.path]).ok());
}

#[test]
fn checkpoints_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let c = AuditConfig {
        checkpoint_seconds: 1,
        ..cfg(dir.path())
    };
    let j = Journal::open(&c).unwrap();
    for i in 0..3 {
        j.append_blocking(sample_record(i, "w", false)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1500));
    drop(j);
    let recs = lines(&c.path);
    let cp = recs
        .iter()
        .find(|r| r["event"] == "audit.checkpoint")
        .expect("a checkpoint after a second");
    assert_eq!(
        cp["detail"],
        json!({"records": 3, "first_seq": 1, "last_seq": 3})
    );
}

#[test]
fn strict_mode_fails_when_the_journal_cannot_be_written() {
    // Under /proc nothing can be created, not even by root.
    let c = AuditConfig {
        path: PathBuf::from("/proc/pgwarden-audit-test/audit.jsonl"),
        journald: JournaldMirror::Off,
        ..AuditConfig::default()
    };
    let e = Journal::open(&c).err().expect("open must fail");
    assert!(matches!(e, AuditError::Open { .. }), "{e}");
    // /dev/full takes the open and refuses every write with ENOSPC.
    if Path::new("/dev/full").exists() {
        let c = AuditConfig {
            path: PathBuf::from("/dev/full"),
            journald: JournaldMirror::Off,
            checkpoint_seconds: 0,
            ..AuditConfig::default()
        };
        let j = Journal::open(&c).unwrap();
        let e = j
            .append_blocking(Record::new(Event::AgentStart))
            .unwrap_err();
        assert!(matches!(e, AuditError::Write { .. }), "{e}");
        assert!(e.to_string().contains("No space left"), "{e}");
        let st = j.status();
        assert!(st.write_errors >= 1);
        assert!(st.last_error.is_some());
        assert_eq!(st.last_seq, 0);
    }
}

#[test]
fn verify_classifies_the_four_tamper_cases() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let j = Journal::open(&c).unwrap();
    for i in 0..10 {
        j.append_blocking(sample_record(i, "w", false)).unwrap();
    }
    drop(j);
    let good = std::fs::read_to_string(&c.path).unwrap();
    let lines: Vec<&str> = good.lines().collect();
    let check = |text: String, kind: Tamper, seq: u64| {
        std::fs::write(&c.path, text).unwrap();
        let r = verify::verify(&[&c.path]);
        let f = r
            .failure
            .as_ref()
            .unwrap_or_else(|| panic!("not detected: {r}"));
        assert_eq!((f.kind, f.seq), (kind, seq), "{r}");
    };
    // Edit one byte of seq 4 (inside its statement text).
    let edited = good.replacen("WHERE id = $1", "WHERE id = $2", 1);
    assert_ne!(edited, good);
    let which = lines
        .iter()
        .position(|l| l.contains("WHERE id = $1"))
        .unwrap() as u64
        + 1;
    check(edited, Tamper::Modified, which);
    // Break the JSON of seq 3.
    let mut v: Vec<String> = lines.iter().map(|s| (*s).to_owned()).collect();
    v[2].replace_range(0..1, "[");
    check(v.join("\n") + "\n", Tamper::Modified, 3);
    // Delete seq 6.
    let mut v = lines.clone();
    v.remove(5);
    check(v.join("\n") + "\n", Tamper::Deleted, 6);
    // Swap seq 3 and 4.
    let mut v = lines.clone();
    v.swap(2, 3);
    check(v.join("\n") + "\n", Tamper::Reordered, 3);
    // Cut the tail in the middle of seq 10.
    check(good[..good.len() - 30].to_owned(), Tamper::Truncated, 10);
    // And intact it verifies.
    std::fs::write(&c.path, &good).unwrap();
    assert!(verify::verify(&[&c.path]).ok());
}
