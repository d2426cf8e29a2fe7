//! What is done to the live file behind the writer's back, on real files: each case leaves a
//! record saying so, the chain verifies with the missing records accounted for, and nothing
//! acknowledged is only in a file with no name.
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

use serde_json::Value;

use crate::audit::fixtures::{config as cfg, lines_lossy};
use crate::audit::sample::record as sample_record;
use crate::audit::verify;
use crate::audit::{AuditConfig, AuditMode, Event, Journal, Record};

fn append(j: &Journal, from: u64, n: u64) {
    for i in from..from + n {
        j.append_blocking(sample_record(i, "w", false)).unwrap();
    }
}

fn chain(c: &AuditConfig) -> Vec<PathBuf> {
    crate::audit::segments::chain_paths(&c.path)
}

fn all(c: &AuditConfig) -> Vec<Value> {
    chain(c).iter().flat_map(|p| lines_lossy(p)).collect()
}

fn events<'a>(recs: &'a [Value], event: &str) -> Vec<&'a Value> {
    recs.iter().filter(|r| r["event"] == event).collect()
}

/// The configurations the cases run under: fsync per batch through the writer thread, and
/// inline appenders without fsync.
fn configs(dir: &std::path::Path) -> Vec<AuditConfig> {
    vec![
        cfg(dir),
        AuditConfig {
            fsync: false,
            ..cfg(dir)
        },
    ]
}

#[test]
fn an_unlinked_live_file_is_created_again_and_the_loss_recorded() {
    for (k, base) in configs(tempfile::tempdir().unwrap().path())
        .into_iter()
        .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        let c = AuditConfig {
            path: dir.path().join("audit.jsonl"),
            state_dir: dir.path().join("state"),
            ..base
        };
        let j = Journal::open(&c).unwrap();
        append(&j, 0, 5);
        std::fs::remove_file(&c.path).unwrap();
        append(&j, 5, 5);
        let st = j.status();
        drop(j);
        assert_eq!(st.reopens, 1, "case {k}: {st:?}");
        assert!(st.last_reopen.unwrap().contains("UNLINKED"));
        let recs = all(&c);
        let reopen = events(&recs, "audit.reopen");
        assert_eq!(reopen.len(), 1, "case {k}: {recs:#?}");
        let d = &reopen[0]["detail"];
        assert_eq!(d["reason"], "unlinked");
        assert_eq!(d["missing"]["first_seq"], 1);
        assert_eq!(d["missing"]["last_seq"], 5);
        // The five records after it are all there.
        let later: Vec<u64> = recs
            .iter()
            .filter(|r| r["event"] != "audit.reopen")
            .map(|r| r["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(later.len(), 5, "case {k}: {recs:#?}");
        let report = verify::verify(&chain(&c));
        assert!(report.ok(), "case {k}: {report}");
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.message.contains("records 1..=5") && w.message.contains("audit.reopen")),
            "case {k}: {report}"
        );
    }
}

#[test]
fn a_renamed_live_file_keeps_its_records_and_a_fresh_one_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let j = Journal::open(&c).unwrap();
    append(&j, 0, 4);
    let moved = dir.path().join("moved.jsonl");
    std::fs::rename(&c.path, &moved).unwrap();
    append(&j, 4, 3);
    drop(j);
    let recs = lines_lossy(&c.path);
    assert_eq!(recs[0]["event"], "audit.reopen", "{recs:#?}");
    assert_eq!(recs[0]["detail"]["reason"], "renamed");
    // The rename is noticed after the write that follows it (or by the 100 ms look before
    // it): the moved file keeps that batch, it has a name, and the reopen counts it missing.
    let in_moved = lines_lossy(&moved);
    assert!(matches!(in_moved.len(), 4 | 5), "{in_moved:#?}");
    assert_eq!(recs[0]["seq"], in_moved.len() as u64 + 1);
    assert_eq!(recs[0]["detail"]["missing"]["last_seq"], in_moved.len());
    assert_eq!(in_moved.len() + recs.len(), 8);
    // The moved file still has its records: with it, the chain is whole.
    let report = verify::verify(&[&moved, &c.path]);
    assert!(report.ok(), "{report}");
    assert_eq!(report.records, 8);
    // Without it, the reopen record accounts for them.
    assert!(verify::verify(&[&c.path]).ok());
}

#[test]
fn a_file_put_in_its_place_is_moved_aside_not_written_into() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let j = Journal::open(&c).unwrap();
    append(&j, 0, 3);
    std::fs::remove_file(&c.path).unwrap();
    std::fs::write(&c.path, b"someone else's bytes\n").unwrap();
    append(&j, 3, 2);
    drop(j);
    let recs = lines_lossy(&c.path);
    assert_eq!(recs.len(), 3, "{recs:#?}");
    // Noticed after the write that followed (the batch written again, then the reopen), or
    // by the 100 ms look before it (the reopen first).
    let reopen = events(&recs, "audit.reopen");
    assert_eq!(reopen.len(), 1, "{recs:#?}");
    let d = &reopen[0]["detail"];
    assert_eq!(d["reason"], "unlinked and replaced");
    let aside = PathBuf::from(
        d["displaced_to"]
            .as_str()
            .unwrap_or_else(|| panic!("{recs:#?}")),
    );
    let listing: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let kept = std::fs::read(&aside)
        .unwrap_or_else(|e| panic!("{}: {e}; the directory holds {listing:?}", aside.display()));
    assert_eq!(kept, b"someone else's bytes\n");
    assert!(verify::verify(&chain(&c)).ok());
}

#[test]
fn a_truncated_live_file_goes_on_after_its_last_record() {
    for cut in [0usize, 1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let j = Journal::open(&c).unwrap();
        append(&j, 0, 6);
        let body = std::fs::read(&c.path).unwrap();
        let keep = match cut {
            0 => 0,
            // After three whole records.
            1 => {
                body.iter()
                    .enumerate()
                    .filter(|(_, b)| **b == b'\n')
                    .nth(2)
                    .unwrap()
                    .0
                    + 1
            }
            // In the middle of the fourth.
            _ => {
                body.iter()
                    .enumerate()
                    .filter(|(_, b)| **b == b'\n')
                    .nth(2)
                    .unwrap()
                    .0
                    + 20
            }
        };
        std::fs::OpenOptions::new()
            .write(true)
            .open(&c.path)
            .unwrap()
            .set_len(keep as u64)
            .unwrap();
        append(&j, 6, 2);
        drop(j);
        let recs = lines_lossy(&c.path);
        let gap = events(&recs, "audit.gap");
        assert_eq!(gap.len(), 1, "cut {cut}: {recs:#?}");
        let d = &gap[0]["detail"];
        assert_eq!(d["reason"], "truncated");
        let first_missing = if cut == 0 { 1 } else { 4 };
        assert_eq!(d["missing"]["first_seq"], first_missing, "cut {cut}");
        assert_eq!(d["missing"]["last_seq"], 6);
        let report = verify::verify(&chain(&c));
        assert!(report.ok(), "cut {cut}: {report}");
        assert_eq!(report.last_seq, Some(9), "cut {cut}: {report}");
    }
}

#[test]
fn a_changed_mode_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let j = Journal::open(&c).unwrap();
    append(&j, 0, 2);
    std::fs::set_permissions(&c.path, std::fs::Permissions::from_mode(0o400)).unwrap();
    append(&j, 2, 2);
    drop(j);
    let recs = lines_lossy(&c.path);
    let reopen = events(&recs, "audit.reopen");
    assert_eq!(reopen.len(), 1, "{recs:#?}");
    assert_eq!(reopen[0]["detail"]["reason"], "mode changed");
    assert_eq!(reopen[0]["detail"]["mode"], "0400");
    assert_eq!(recs.len(), 5);
    assert!(verify::verify(&[&c.path]).ok());
}

#[test]
fn seq_goes_on_when_the_journal_directory_was_emptied() {
    let dir = tempfile::tempdir().unwrap();
    let c = AuditConfig {
        path: dir.path().join("log/audit.jsonl"),
        max_bytes: 4096,
        ..cfg(dir.path())
    };
    let j = Journal::open(&c).unwrap();
    append(&j, 0, 30);
    drop(j);
    let last = all(&c).last().unwrap()["seq"].as_u64().unwrap();
    std::fs::remove_dir_all(dir.path().join("log")).unwrap();
    let j = Journal::open(&c).unwrap();
    let seq = j.append_blocking(Record::new(Event::AgentStart)).unwrap();
    drop(j);
    assert_eq!(
        seq,
        last + 2,
        "after the audit.reopen that says what is missing"
    );
    let recs = all(&c);
    assert_eq!(recs[0]["event"], "audit.reopen");
    assert_eq!(recs[0]["detail"]["missing"]["first_seq"], 1);
    assert_eq!(recs[0]["detail"]["missing"]["last_seq"], last);
    let report = verify::verify(&chain(&c));
    assert!(report.ok(), "{report}");
    assert_eq!(report.first_seq, Some(last + 1));
}

#[test]
fn below_the_free_space_floor_appends_fail_and_nothing_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let c = AuditConfig {
        mode: AuditMode::Strict,
        max_bytes: 4096,
        ..cfg(dir.path())
    };
    let j = Journal::open(&c).unwrap();
    append(&j, 0, 40);
    drop(j);
    let before = all(&c).len();
    assert!(chain(&c).len() > 2);
    let c = AuditConfig {
        min_free_bytes: u64::MAX / 2,
        retention: crate::audit::config::RetentionConfig {
            max_files: 1,
            ..Default::default()
        },
        ..c
    };
    let j = Journal::open(&c).unwrap();
    let e = j
        .append_blocking(Record::new(Event::AgentStart))
        .unwrap_err();
    assert!(e.to_string().contains("audit.min_free_bytes"), "{e}");
    assert!(j.status().free_bytes > 0);
    // Retention wants to delete (max_files: 1) but cannot write its record first.
    j.archive();
    assert_eq!(j.status().retention_files, 0);
    drop(j);
    assert_eq!(all(&c).len(), before, "nothing deleted");
}

#[test]
fn a_displaced_name_never_reads_as_a_card_number() {
    // 4111111111111111 is a valid PAN: split as a displaced name splits its digits, the
    // journal's scrubber must leave it alone, so the record names the real file.
    let name = "/var/log/pgwarden/audit.jsonl.displaced-4111111111s111111";
    assert_eq!(crate::audit::redact::scrub_pans_cow(name), name);
    let made = super::super::files::displaced_name(std::path::Path::new("/x/audit.jsonl"));
    let made = made.to_string_lossy();
    assert_eq!(crate::audit::redact::scrub_pans_cow(&made), made);
}
