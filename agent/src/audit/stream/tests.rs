use std::io::Write as _;

use super::*;
use crate::audit::segments::range_name;

fn line(seq: u64) -> String {
    format!(
        r#"{{"seq":{seq},"time":"2026-12-02T10:00:00.000000Z","event":"query","prev_hash":"p","hash":"h{seq}"}}"#
    )
}

fn lines(seqs: std::ops::RangeInclusive<u64>) -> String {
    seqs.map(|s| line(s) + "\n").collect()
}

/// Everything `s` hands out until it is pending: seqs, and gaps as negative pairs.
fn drain(s: &mut Stream) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        match s.read().unwrap() {
            Next::Record(i) => out.push(i.record.seq.to_string()),
            Next::Context(i) => out.push(format!("c{}", i.record.seq)),
            Next::Missing { first, last } => out.push(format!("missing {first}-{last}")),
            Next::Pending => return out,
        }
    }
}

fn seqs(r: std::ops::RangeInclusive<u64>) -> Vec<String> {
    r.map(|s| s.to_string()).collect()
}

#[test]
fn reads_rotated_compressed_and_live_files_in_seq_order_from_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.jsonl");
    std::fs::write(range_name(&p, 1, 3, false), lines(1..=3)).unwrap();
    std::fs::write(
        range_name(&p, 4, 6, true),
        zstd::encode_all(lines(4..=6).as_bytes(), 3).unwrap(),
    )
    .unwrap();
    std::fs::write(&p, lines(7..=8)).unwrap();
    assert_eq!(drain(&mut Stream::new(&p, 0)), seqs(1..=8));
    assert_eq!(drain(&mut Stream::new(&p, 5)), seqs(6..=8));
    assert_eq!(drain(&mut Stream::new(&p, 8)), Vec::<String>::new());
    // With context: the first file's earlier records come first, marked.
    assert_eq!(
        drain(&mut Stream::with_context(&p, 5)),
        ["c4", "c5", "6", "7", "8"]
    );
}

#[test]
fn follows_appends_an_unfinished_line_and_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.jsonl");
    let mut s = Stream::new(&p, 0);
    assert!(drain(&mut s).is_empty(), "no journal yet: pending");
    std::fs::write(&p, lines(1..=2)).unwrap();
    assert_eq!(drain(&mut s), seqs(1..=2));
    // Half a line: not handed out until its newline is written.
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    let third = line(3);
    f.write_all(&third.as_bytes()[..20]).unwrap();
    assert!(drain(&mut s).is_empty());
    f.write_all(&third.as_bytes()[20..]).unwrap();
    f.write_all(b"\n").unwrap();
    f.write_all(lines(4..=4).as_bytes()).unwrap();
    // Rotation: the old file gets one more record after the reader's last look, then is
    // renamed; the new live file starts at 6.
    f.write_all(lines(5..=5).as_bytes()).unwrap();
    assert_eq!(drain(&mut s), seqs(3..=5));
    f.write_all(lines(6..=6).as_bytes()).unwrap();
    drop(f);
    std::fs::rename(&p, range_name(&p, 1, 6, false)).unwrap();
    std::fs::write(&p, lines(7..=9)).unwrap();
    assert_eq!(drain(&mut s), seqs(6..=9));
    // Compressed behind the reader's back: nothing is read twice.
    let rotated = range_name(&p, 1, 6, false);
    std::fs::write(
        range_name(&p, 1, 6, true),
        zstd::encode_all(&std::fs::read(&rotated).unwrap()[..], 3).unwrap(),
    )
    .unwrap();
    std::fs::remove_file(rotated).unwrap();
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.after(), 9);
}

#[test]
fn records_no_file_holds_are_reported_missing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.jsonl");
    // 1..=10 deleted by retention; a rotated file whose name promises 11..=20 holds 11..=15.
    std::fs::write(range_name(&p, 11, 20, false), lines(11..=15)).unwrap();
    std::fs::write(&p, lines(21..=22)).unwrap();
    let mut s = Stream::new(&p, 0);
    let mut want = vec!["missing 1-10".to_owned()];
    want.extend(seqs(11..=15));
    want.push("missing 16-20".to_owned());
    want.extend(seqs(21..=22));
    assert_eq!(drain(&mut s), want);
}

#[test]
fn a_moved_live_file_is_read_to_its_end_then_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.jsonl");
    std::fs::write(&p, lines(1..=2)).unwrap();
    let mut s = Stream::new(&p, 0);
    assert_eq!(drain(&mut s), seqs(1..=2));
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(lines(3..=3).as_bytes()).unwrap();
    // Moved out of the journal's directory: the reader still has it open.
    std::fs::rename(&p, dir.path().join("elsewhere")).unwrap();
    std::fs::write(&p, lines(4..=4)).unwrap();
    assert_eq!(drain(&mut s), seqs(3..=4));
}

#[test]
fn legacy_files_are_read_once_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.jsonl");
    std::fs::write(dir.path().join("audit.jsonl.2"), lines(1..=2)).unwrap();
    std::fs::write(dir.path().join("audit.jsonl.1"), lines(3..=4)).unwrap();
    std::fs::write(&p, lines(5..=5)).unwrap();
    let mut s = Stream::new(&p, 0);
    assert_eq!(drain(&mut s), seqs(1..=5));
    assert_eq!(drain(&mut Stream::new(&p, 3)), seqs(4..=5));
}
