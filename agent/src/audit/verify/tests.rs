//! The chain checks on hand-made journals: deletions, rehashed edits, duplicates, tears.
use super::*;
use crate::audit::record::{Event, Record};

/// Lines of a valid chain seq first..first+n, chained from `prev`.
fn chain(first: u64, n: u64, prev: &str) -> Vec<String> {
    let mut prev = prev.to_owned();
    (first..first + n)
        .map(|seq| {
            let mut r = Record::new(Event::Query).detail("i", seq);
            r.seq = seq;
            r.prev_hash = prev.clone();
            r.hash = r.compute_hash();
            prev = r.hash.clone();
            serde_json::to_string(&r).unwrap()
        })
        .collect()
}

fn hash_of(line: &str) -> String {
    serde_json::from_str::<Value>(line).unwrap()["hash"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn write(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

fn failure(paths: &[PathBuf]) -> (Tamper, u64) {
    let r = verify(paths);
    let f = r.failure.unwrap_or_else(|| panic!("not detected"));
    (f.kind, f.seq)
}

#[test]
fn a_missing_rotated_file_is_a_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let a = chain(1, 5, GENESIS_HASH);
    let b = chain(6, 5, &hash_of(&a[4]));
    let c = chain(11, 5, &hash_of(&b[4]));
    let pa = write(dir.path(), "j.2", &a);
    let pb = write(dir.path(), "j.1", &b);
    let pc = write(dir.path(), "j", &c);
    // Any order.
    let r = verify(&[&pc, &pa, &pb]);
    assert!(r.ok(), "{r}");
    assert_eq!(
        (r.records, r.first_seq, r.last_seq),
        (15, Some(1), Some(15))
    );
    assert_eq!(r.files[0].path, pa);
    assert_eq!(failure(&[pa, pc]), (Tamper::Deleted, 6));
}

#[test]
fn a_rehashed_edit_is_caught_by_the_next_link() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = chain(1, 6, GENESIS_HASH);
    let mut v: Value = serde_json::from_str(&lines[2]).unwrap();
    v["detail"]["i"] = 99.into();
    v["hash"] = hash_value(&v).into();
    lines[2] = v.to_string();
    assert_eq!(
        failure(&[write(dir.path(), "j", &lines)]),
        (Tamper::Modified, 3)
    );
}

#[test]
fn duplicates_and_bad_genesis() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = chain(1, 6, GENESIS_HASH);
    lines.push(lines[2].clone());
    assert_eq!(
        failure(&[write(dir.path(), "j", &lines)]),
        (Tamper::Reordered, 3)
    );
    let lines = chain(1, 3, &"1".repeat(64));
    assert_eq!(
        failure(&[write(dir.path(), "j", &lines)]),
        (Tamper::Modified, 1)
    );
}

#[test]
fn tears_sealed_across_files_or_later_are_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let a = chain(1, 3, GENESIS_HASH);
    // A tear at the end of the rotated file, sealed at the start of the next.
    let mut a_torn = a.clone();
    a_torn.push("{\"seq\":4,\"ti".into());
    let mut gap = Record::new(Event::AuditGap)
        .detail("torn_bytes", 11)
        .detail("after_seq", 3);
    gap.seq = 4;
    gap.prev_hash = hash_of(&a[2]);
    gap.hash = gap.compute_hash();
    let gap_line = serde_json::to_string(&gap).unwrap();
    let mut b = vec![gap_line.clone()];
    b.extend(chain(5, 2, &gap.hash));
    let r = verify(&[
        write(dir.path(), "j.1", &a_torn),
        write(dir.path(), "j", &b),
    ]);
    assert!(r.ok(), "{r}");
    assert!(r.warnings[0].message.contains("sealed"), "{r}");

    // Garbage between two linked records (a failed write the writer went on after),
    // accounted for by a later gap naming it: a warning; without that gap: modified.
    let mut lines = chain(1, 3, GENESIS_HASH);
    let rest = chain(4, 1, &hash_of(&lines[2]));
    lines.push("garbage".into());
    lines.extend(rest.clone());
    let mut later = Record::new(Event::AuditGap)
        .detail("torn_bytes", 7)
        .detail("after_seq", 3);
    later.seq = 5;
    later.prev_hash = hash_of(&rest[0]);
    later.hash = later.compute_hash();
    let unsealed = lines.clone();
    lines.push(serde_json::to_string(&later).unwrap());
    assert!(verify(&[write(dir.path(), "k", &lines)]).ok());
    assert_eq!(
        failure(&[write(dir.path(), "k", &unsealed)]),
        (Tamper::Modified, 4)
    );
}
