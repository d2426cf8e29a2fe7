//! Verification of a journal: every line is a record, every `hash` recomputes, every
//! `prev_hash` is the previous record's `hash`, `seq` goes up by exactly one, across the
//! current file and its rotated siblings. The first failure is reported with its `seq` and a
//! classification; sealed tears and lost-record gaps are warnings.
//!
//! Classification of the first failure, and the `seq` reported:
//!
//! | kind | what was found | seq |
//! |---|---|---|
//! | [`Tamper::Modified`] | a hash does not recompute, a line in the middle is not a record, or the chain link to a record is wrong while `seq` is continuous | the record (the expected seq for an unreadable line) |
//! | [`Tamper::Deleted`] | `seq` jumps forward, the missing ones appear nowhere, and `prev_hash` does not link | the first missing seq |
//! | [`Tamper::Reordered`] | `seq` jumps forward and the missing ones appear later, or `seq` goes backward | the seq expected where the order first breaks |
//! | [`Tamper::Truncated`] | the last line is not a complete record and no `audit.gap` seals it | the seq the torn line would have had |
//!
//! A tear is sealed when an `audit.gap` record with `detail.after_seq` equal to the last
//! record before the tear follows it (the writer does this on open). The chain's first
//! record must have `prev_hash` of 64 zeros when its `seq` is 1. Records may be missing where
//! a record says so: `detail.missing` (`first_seq`, `last_seq`, `last_hash`) of an
//! `audit.retention` (deleted by the configured retention), `audit.reopen` (the live file
//! was deleted, moved or replaced, the directory emptied) or `audit.gap` (the file was cut):
//! a chain that starts after seq 1, or jumps, where such a record accounts for the missing
//! ones and the next record links to the `last_hash` it names, is reported as a warning.
//! Anything else missing is a failure (`--partial` accepts a chain that starts later, for
//! checking some of the files). Without a key, a chain proves order and completeness
//! relative to a `hash` kept elsewhere (journald's `PGWARDEN_HASH`, `audit.checkpoint`s
//! shipped off-host, `pgwarden status`): someone able to rewrite the whole file can recompute
//! it, so compare [`Report::last_hash`] with such an anchor.
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::canon::hash_value;
use super::record::GENESIS_HASH;

/// What kind of damage the first failure is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tamper {
    /// A record's content or link was changed.
    Modified,
    /// Records are missing.
    Deleted,
    /// Records are out of order or duplicated.
    Reordered,
    /// The chain ends in the middle of a record.
    Truncated,
    /// A file could not be read.
    Unreadable,
}

impl fmt::Display for Tamper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tamper::Modified => "modified",
            Tamper::Deleted => "deleted",
            Tamper::Reordered => "reordered",
            Tamper::Truncated => "truncated",
            Tamper::Unreadable => "unreadable",
        })
    }
}

/// The first failure.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    /// Classification.
    pub kind: Tamper,
    /// The first bad seq (see the module doc).
    pub seq: u64,
    /// File and 1-based line where it shows.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Something an auditor should see that is not a failure.
#[derive(Clone, Debug, Serialize)]
pub struct Warning {
    /// The record concerned, when there is one.
    pub seq: Option<u64>,
    /// File.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// What was found.
    pub message: String,
}

/// One file's part of the chain.
#[derive(Clone, Debug, Serialize)]
pub struct FileSummary {
    /// The file.
    pub path: PathBuf,
    /// Lines (records and torn lines).
    pub lines: usize,
    /// First and last seq found in it.
    pub first_seq: Option<u64>,
    /// Last seq.
    pub last_seq: Option<u64>,
}

/// The result of [`verify`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// The files, in chain order.
    pub files: Vec<FileSummary>,
    /// Records checked (up to the first failure).
    pub records: u64,
    /// First seq of the chain.
    pub first_seq: Option<u64>,
    /// Last good seq.
    pub last_seq: Option<u64>,
    /// Hash of the last good record: compare it with an anchor kept elsewhere.
    pub last_hash: Option<String>,
    /// The first failure, if any.
    pub failure: Option<Failure>,
    /// Sealed tears, lost records, a chain starting after seq 1.
    pub warnings: Vec<Warning>,
}

impl Report {
    /// No failure.
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for file in &self.files {
            writeln!(
                f,
                "file {}: {} line(s), seq {}..{}",
                file.path.display(),
                file.lines,
                file.first_seq.map_or("-".into(), |s| s.to_string()),
                file.last_seq.map_or("-".into(), |s| s.to_string()),
            )?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {}:{}: {}", w.file.display(), w.line, w.message)?;
        }
        match &self.failure {
            Some(x) => write!(
                f,
                "FAILED: {} at seq {} ({}:{}): {}",
                x.kind,
                x.seq,
                x.file.display(),
                x.line,
                x.message
            ),
            None => write!(
                f,
                "OK: {} record(s), seq {}..{}, last hash {}",
                self.records,
                self.first_seq.map_or("-".into(), |s| s.to_string()),
                self.last_seq.map_or("-".into(), |s| s.to_string()),
                self.last_hash.as_deref().unwrap_or("-")
            ),
        }
    }
}

/// One line of a file.
struct Entry {
    file: usize,
    line: usize,
    bytes: usize,
    rec: Option<Parsed>,
}

struct Parsed {
    seq: u64,
    prev_hash: String,
    hash: String,
    computed: String,
    event: String,
    detail: Value,
}

fn parse(line: &[u8]) -> Option<Parsed> {
    let v: Value = serde_json::from_slice(line).ok()?;
    Some(Parsed {
        seq: v.get("seq")?.as_u64()?,
        prev_hash: v.get("prev_hash")?.as_str()?.to_owned(),
        hash: v.get("hash")?.as_str()?.to_owned(),
        computed: hash_value(&v),
        event: v.get("event")?.as_str()?.to_owned(),
        detail: v.get("detail").cloned().unwrap_or(Value::Null),
    })
}

/// The configured journal and its rotated files, oldest first (the order does not matter to
/// [`verify`]).
pub fn default_paths(path: &Path) -> Vec<PathBuf> {
    super::segments::chain_paths(path)
}

/// A record saying that records `first..=last`, the last with hash `last_hash`, are not in
/// the journal's files (`detail.missing` of `audit.retention`, `audit.reopen`, `audit.gap`).
struct Missing {
    first: u64,
    last_hash: String,
    /// The record that says so.
    seq: u64,
    event: String,
    reason: String,
}

impl Missing {
    fn of(r: &Parsed) -> Option<(u64, Missing)> {
        let m = r.detail.get("missing")?;
        let first = m.get("first_seq")?.as_u64()?;
        let last = m.get("last_seq")?.as_u64()?;
        let reason = r
            .detail
            .get("reason")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| r.detail.get("limits").map(|l| format!("retention: {l}")))
            .unwrap_or_else(|| "no reason given".into());
        Some((
            last + 1,
            Missing {
                first,
                last_hash: m.get("last_hash")?.as_str()?.to_owned(),
                seq: r.seq,
                event: r.event.clone(),
                reason,
            },
        ))
    }

    fn say(&self, from: u64, upto: u64) -> String {
        format!(
            "records {from}..={upto} are not in these files, as {} seq {} records ({})",
            self.event, self.seq, self.reason
        )
    }
}

/// A run of lines that are not records, after the record `after` (seq, hash).
struct Tear {
    first: usize,
    bytes: usize,
    after: Option<u64>,
}

/// Checks the chain formed by `paths` (in any order: files are ordered by their first seq;
/// files without a record go last). The chain must start at seq 1 or where a record says the
/// earlier ones went (retention, a journal emptied behind the agent's back).
pub fn verify<P: AsRef<Path>>(paths: &[P]) -> Report {
    verify_with(paths, false)
}

/// [`verify`]; `partial`: the files are part of a chain, so a chain starting later than seq
/// 1 with nothing to say why is a warning, not a failure.
pub fn verify_with<P: AsRef<Path>>(paths: &[P], partial: bool) -> Report {
    let paths: Vec<PathBuf> = paths.iter().map(|p| p.as_ref().to_owned()).collect();
    let mut report = Report::default();
    // Read and parse everything.
    let mut files: Vec<(PathBuf, Vec<Entry>)> = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let data = match super::segments::read(p) {
            Ok(d) => d,
            Err(e) => {
                report.failure = Some(Failure {
                    kind: Tamper::Unreadable,
                    seq: 0,
                    file: p.clone(),
                    line: 0,
                    message: e.to_string(),
                });
                return report;
            }
        };
        let mut entries = Vec::new();
        let mut start = 0;
        let mut line = 0;
        while start < data.len() {
            line += 1;
            let end = data[start..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(data.len(), |p| start + p);
            entries.push(Entry {
                file: i,
                line,
                bytes: end - start,
                rec: parse(&data[start..end]),
            });
            start = end + 1;
        }
        files.push((p.clone(), entries));
    }
    files.sort_by_key(|(_, e)| {
        e.iter()
            .find_map(|x| x.rec.as_ref().map(|r| r.seq))
            .unwrap_or(u64::MAX)
    });
    for (p, e) in &files {
        let mut seqs = e.iter().filter_map(|x| x.rec.as_ref().map(|r| r.seq));
        report.files.push(FileSummary {
            path: p.clone(),
            lines: e.len(),
            first_seq: seqs.clone().next(),
            last_seq: seqs.next_back(),
        });
    }
    let names = paths;
    let entries: Vec<Entry> = files.into_iter().flat_map(|(_, e)| e).collect();
    // Where each seq appears (first time), for telling reordering from deletion; and what
    // records say is missing, by the seq that follows the missing ones.
    let mut position: HashMap<u64, usize> = HashMap::new();
    let mut missing: HashMap<u64, Missing> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let Some(r) = &e.rec {
            position.entry(r.seq).or_insert(i);
            if r.computed == r.hash
                && let Some((next, m)) = Missing::of(r)
            {
                missing.insert(next, m);
            }
        }
    }
    // The record that accounts for the records before `r` not being here, if one does.
    let accounted = |r: &Parsed, from: u64| {
        missing
            .get(&r.seq)
            .filter(|m| m.first <= from && m.last_hash == r.prev_hash)
    };
    let fail = |report: &mut Report, kind, seq, e: &Entry, message: String| {
        report.failure = Some(Failure {
            kind,
            seq,
            file: names[e.file].clone(),
            line: e.line,
            message,
        });
    };
    let mut prev: Option<(u64, String)> = None;
    let mut tear: Option<Tear> = None;
    // Tears the chain went on across (a failed write the writer could not cut back): they
    // must be sealed by a later audit.gap naming them.
    let mut open_tears: Vec<Tear> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let Some(r) = &e.rec else {
            match &mut tear {
                Some(t) => t.bytes += e.bytes + 1,
                None => {
                    tear = Some(Tear {
                        first: i,
                        bytes: e.bytes,
                        after: prev.as_ref().map(|p| p.0),
                    });
                }
            }
            continue;
        };
        let expected = prev.as_ref().map(|p| p.0 + 1);
        if r.computed != r.hash {
            let seq = expected.unwrap_or(r.seq);
            let also = if r.seq == seq {
                String::new()
            } else {
                format!(" (the line says seq {})", r.seq)
            };
            fail(
                &mut report,
                Tamper::Modified,
                seq,
                e,
                format!("hash does not match the record's content{also}"),
            );
            return report;
        }
        let is_gap = r.event == "audit.gap";
        if let Some(t) = tear.take() {
            let seals = is_gap
                && r.detail.get("torn_bytes").is_some()
                && r.detail.get("after_seq").and_then(Value::as_u64) == t.after;
            let te = &entries[t.first];
            if seals {
                report.warnings.push(Warning {
                    seq: Some(r.seq),
                    file: names[te.file].clone(),
                    line: te.line,
                    message: format!(
                        "torn write of {} byte(s) after seq {} sealed by audit.gap seq {} ({})",
                        t.bytes,
                        t.after.map_or("-".into(), |s| s.to_string()),
                        r.seq,
                        r.detail
                            .get("reason")
                            .and_then(Value::as_str)
                            .unwrap_or("no reason given")
                    ),
                });
            } else if expected == Some(r.seq) && prev.as_ref().is_some_and(|p| p.1 == r.prev_hash) {
                // The chain goes on across it: a later audit.gap must name it.
                open_tears.push(t);
            } else {
                let seq = expected.unwrap_or(r.seq);
                fail(
                    &mut report,
                    Tamper::Modified,
                    seq,
                    te,
                    format!(
                        "line is not a valid record ({} byte(s)), where seq {seq} was expected",
                        te.bytes
                    ),
                );
                return report;
            }
        }
        match &prev {
            None => {
                if r.seq == 1 && r.prev_hash != GENESIS_HASH {
                    fail(
                        &mut report,
                        Tamper::Modified,
                        1,
                        e,
                        "seq 1 must have prev_hash of 64 zeros".into(),
                    );
                    return report;
                }
                if r.seq > 1 {
                    let message = if let Some(m) =
                        missing.get(&r.seq).filter(|m| m.last_hash == r.prev_hash)
                    {
                        format!(
                            "chain starts at seq {}: {}",
                            r.seq,
                            m.say(m.first, r.seq - 1)
                        )
                    } else if partial {
                        format!(
                            "chain starts at seq {} (earlier records are in files not given); \
                             its link to them is not checked",
                            r.seq
                        )
                    } else {
                        fail(
                            &mut report,
                            Tamper::Deleted,
                            1,
                            e,
                            format!(
                                "chain starts at seq {}: seq 1..={} are missing and no \
                                 audit.retention or audit.reopen accounts for them (--partial \
                                 checks part of a chain)",
                                r.seq,
                                r.seq - 1
                            ),
                        );
                        return report;
                    };
                    report.warnings.push(Warning {
                        seq: Some(r.seq),
                        file: names[e.file].clone(),
                        line: e.line,
                        message,
                    });
                }
            }
            Some((pseq, phash)) => {
                let want = pseq + 1;
                if r.seq == want {
                    if &r.prev_hash != phash {
                        fail(
                            &mut report,
                            Tamper::Modified,
                            *pseq,
                            e,
                            format!(
                                "prev_hash of seq {} is not the hash of seq {pseq}: seq {pseq} \
                                 (or this link) was rewritten",
                                r.seq
                            ),
                        );
                        return report;
                    }
                } else if r.seq > want
                    && let Some(m) = accounted(r, want)
                {
                    report.warnings.push(Warning {
                        seq: Some(r.seq),
                        file: names[e.file].clone(),
                        line: e.line,
                        message: m.say(want, r.seq - 1),
                    });
                } else if r.seq > want {
                    let later = (want..r.seq).find_map(|s| position.get(&s).filter(|&&p| p > i));
                    if let Some(&p) = later {
                        let pe = &entries[p];
                        fail(
                            &mut report,
                            Tamper::Reordered,
                            want,
                            e,
                            format!(
                                "seq {} found where seq {want} was expected; seq {} comes \
                                 later ({}:{})",
                                r.seq,
                                entries[p].rec.as_ref().map_or(want, |x| x.seq),
                                names[pe.file].display(),
                                pe.line
                            ),
                        );
                    } else if &r.prev_hash != phash {
                        let n = r.seq - want;
                        fail(
                            &mut report,
                            Tamper::Deleted,
                            want,
                            e,
                            format!(
                                "{n} record(s) missing: seq {want}..={} (seq {} does not link \
                                 to seq {pseq})",
                                r.seq - 1,
                                r.seq
                            ),
                        );
                    } else {
                        fail(
                            &mut report,
                            Tamper::Modified,
                            r.seq,
                            e,
                            format!(
                                "seq jumps from {pseq} to {} though the hashes link: the seq \
                                 was rewritten",
                                r.seq
                            ),
                        );
                    }
                    return report;
                } else {
                    fail(
                        &mut report,
                        Tamper::Reordered,
                        r.seq,
                        e,
                        format!(
                            "seq goes backward: {} after {pseq} (a moved or duplicated record)",
                            r.seq
                        ),
                    );
                    return report;
                }
            }
        }
        if is_gap {
            if let Some(after) = r.detail.get("after_seq").and_then(Value::as_u64) {
                open_tears.retain(|t| t.after != Some(after));
            }
            if let Some(lost) = r.detail.get("lost").and_then(Value::as_u64) {
                report.warnings.push(Warning {
                    seq: Some(r.seq),
                    file: names[e.file].clone(),
                    line: e.line,
                    message: format!(
                        "audit.gap seq {}: {lost} record(s) lost ({})",
                        r.seq,
                        r.detail
                            .get("reason")
                            .and_then(Value::as_str)
                            .unwrap_or("no reason given")
                    ),
                });
            }
        }
        report.records += 1;
        report.first_seq.get_or_insert(r.seq);
        report.last_seq = Some(r.seq);
        report.last_hash = Some(r.hash.clone());
        prev = Some((r.seq, r.hash.clone()));
    }
    if let Some(t) = tear {
        let e = &entries[t.first];
        let seq = t.after.map_or(1, |s| s + 1);
        fail(
            &mut report,
            Tamper::Truncated,
            seq,
            e,
            format!(
                "the last {} byte(s) are not a complete record and no audit.gap seals them \
                 (cut, or a write torn by a crash: the agent seals it when it next starts)",
                t.bytes
            ),
        );
        return report;
    }
    if let Some(t) = open_tears.first() {
        let e = &entries[t.first];
        let seq = t.after.map_or(1, |s| s + 1);
        fail(
            &mut report,
            Tamper::Modified,
            seq,
            e,
            format!(
                "line is not a valid record ({} byte(s)) and no audit.gap accounts for it",
                t.bytes
            ),
        );
    }
    report
}

#[cfg(test)]
mod tests;
