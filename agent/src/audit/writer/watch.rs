//! What was done to the live file behind the writer's back, noticed after every write (one
//! inotify read; when it saw something, an `fstat` of the descriptor: `gate`) and before every
//! batch (a `stat` of the path when inotify saw something or 100 ms have passed, its size
//! otherwise):
//!
//! | found | what the writer does | record |
//! |---|---|---|
//! | the descriptor's file has no name left after a write | creates the live file again at the path (a non-empty stranger is moved to `PATH.displaced-<seconds>s<µs>` first) and writes the batch again into it | `audit.reopen` |
//! | the path is gone, or names another file (the file renamed: the batch after the rename is in it) | creates the live file again at the path, as above | `audit.reopen` |
//! | the file is shorter than what was written | goes on after its last complete record | `audit.gap` |
//! | the file is longer than what was written | puts the next record on a fresh line | `audit.gap` (as a torn write) |
//! | its mode changed | reopens it at its path (keeps the descriptor if that fails) | `audit.reopen` |
//!
//! Each record says why and, under `detail.missing`, the records that are no longer in the
//! journal's files (`first_seq`, `last_seq`, and `last_hash`, the hash of the last of them,
//! which the next record's `prev_hash` links to): `pgwarden audit verify` accepts that gap in
//! the chain, and reports it. Every one is logged as an error and counted (`reopens` in
//! status and metrics). No record is acknowledged while it is only in a file with no name.
use std::io::{self, Seek as _, SeekFrom};
use std::os::unix::fs::MetadataExt as _;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use tracing::error;

use super::commit::Writer;
use super::files::{displaced_name, lock_journal};
#[cfg(doc)]
use super::gate::Gate;
use super::queue::{Shared, lock};
use super::recover::scan_tail;
use crate::audit::canon::Prepared;
use crate::audit::record::{Event, Record};

/// `detail.missing` for the records `first..=last` whose last hash is `last_hash`, or nothing
/// when the range is empty.
pub(super) fn missing(first: u64, last: u64, last_hash: &str) -> Option<Value> {
    (first <= last).then(|| json!({"first_seq": first, "last_seq": last, "last_hash": last_hash}))
}

impl Writer {
    /// Looks at the live file before a batch; the record to write first, when something was
    /// done to it. In full (a `stat` of the path) only when the [`Gate`] says so; else its
    /// size, which shows a truncation or someone else's append.
    pub(super) fn watch(&mut self, s: &Shared) -> io::Result<Option<Prepared>> {
        let (Some(_), Some(file)) = (self.ident, &self.file) else {
            return Ok(None);
        };
        if !self.gate.due() && (&*file).seek(SeekFrom::End(0))? == self.size {
            return Ok(None);
        }
        let found = self.look(s)?;
        self.gate.looked();
        Ok(found)
    }

    /// The full look: the path `stat`-ed and compared with the open descriptor.
    fn look(&mut self, s: &Shared) -> io::Result<Option<Prepared>> {
        let (Some((dev, ino)), Some(file)) = (self.ident, &self.file) else {
            return Ok(None);
        };
        let at_path = match std::fs::metadata(&self.path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        match at_path {
            Some(m) if (m.dev(), m.ino()) == (dev, ino) => {
                if m.len() < self.size {
                    return self.truncated(s, m.len()).map(Some);
                }
                if m.len() > self.size {
                    // Bytes someone else appended: sealed as a torn write (`reconcile`).
                    self.suspect = true;
                    return Ok(None);
                }
                if m.mode() & 0o7777 != self.mode {
                    return Ok(Some(self.mode_changed(s, m.mode() & 0o7777)));
                }
                Ok(None)
            }
            other => {
                let named = file.metadata()?.nlink() > 0;
                let reason = match (&other, named) {
                    (None, true) => "renamed",
                    (None, false) => "unlinked",
                    (Some(_), true) => "renamed and replaced",
                    (Some(_), false) => "unlinked and replaced",
                };
                self.reopen(s, reason, other.is_some_and(|m| m.len() > 0), None)
                    .map(Some)
            }
        }
    }

    /// After a write: when the file it went to has no name left, why (`unlinked`, or
    /// `unlinked and replaced`) and whether a non-empty stranger now holds the path. Asked of
    /// the file only when inotify noticed something; what else it noticed is looked at in
    /// full before the next batch.
    pub(super) fn orphaned(&mut self) -> io::Result<Option<(&'static str, bool)>> {
        if !self.gate.noticed() {
            return Ok(None);
        }
        match (&self.file, self.ident) {
            (Some(f), Some(_)) if f.metadata()?.nlink() == 0 => {
                Ok(Some(match std::fs::metadata(&self.path) {
                    Ok(m) => ("unlinked and replaced", m.len() > 0),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => ("unlinked", false),
                    Err(e) => return Err(e),
                }))
            }
            _ => Ok(None),
        }
    }

    /// Creates the live file again at its path (moving a non-empty stranger aside) and
    /// returns the `audit.reopen` record. `rewrite`: the first seq of the records just
    /// written to the lost file, and the hash before them, when the caller writes them again
    /// into the new one.
    pub(super) fn reopen(
        &mut self,
        s: &Shared,
        reason: &str,
        stranger: bool,
        rewrite: Option<(u64, &str)>,
    ) -> io::Result<Prepared> {
        let (last, last_hash) = match rewrite {
            Some((from, hash)) => (from - 1, hash.to_owned()),
            None => (self.chain.next_seq - 1, self.chain.prev_hash.clone()),
        };
        let first = self.file_first.unwrap_or(last + 1);
        let displaced = if stranger {
            let to = displaced_name(&self.path);
            std::fs::rename(&self.path, &to)?;
            Some(to)
        } else {
            None
        };
        self.file = None;
        self.ident = None;
        self.open_live()?;
        // The lock's file may have gone with the directory: take it again where it is now.
        let mut lock_file = self.path.as_os_str().to_owned();
        lock_file.push(".lock");
        if !std::path::Path::new(&lock_file).exists() {
            self._lock = lock_journal(&self.path)?;
        }
        let mut rec = Record::new(Event::AuditReopen)
            .detail("reason", reason)
            .detail("file_first_seq", first)
            .detail("last_seq", last)
            .detail("last_hash", &last_hash);
        if let Some(m) = missing(first, last, &last_hash) {
            rec = rec.detail("missing", m);
        }
        if let Some(d) = &displaced {
            rec = rec.detail("displaced_to", d.display().to_string());
        }
        if let Some((from, _)) = rewrite {
            rec = rec.detail("written_again_from_seq", from);
        }
        let say = format!(
            "AUDIT JOURNAL {} WAS {}: created it again; {}{}",
            self.path.display(),
            reason.to_uppercase(),
            if first <= last {
                format!("records {first}..={last} are not in the journal's files any more")
            } else {
                "no record was lost".to_owned()
            },
            displaced.map_or(String::new(), |d| format!(
                "; the file found there was moved to {}",
                d.display()
            )),
        );
        self.noted(s, say);
        Ok(Prepared::from_record(&rec))
    }

    /// The file was cut to `len` bytes: the chain goes on after its last complete record.
    fn truncated(&mut self, s: &Shared, len: u64) -> io::Result<Prepared> {
        let last = self.chain.next_seq - 1;
        let last_hash = self.chain.prev_hash.clone();
        let tail = scan_tail(&self.path)?;
        let kept = tail.as_ref().and_then(|t| t.last.as_ref().map(|l| l.0));
        let torn = tail.as_ref().map_or(0, |t| t.torn_bytes);
        let (size_before, first_before) = (self.size, self.file_first);
        self.size = len;
        if tail
            .as_ref()
            .is_some_and(|t| !t.ends_with_newline && t.len > 0)
        {
            self.write_raw(b"\n")?;
        }
        let first = kept.map_or_else(|| first_before.unwrap_or(last + 1), |k| k + 1);
        if kept.is_none() {
            self.file_first = None;
        }
        let mut rec = Record::new(Event::AuditGap)
            .detail("reason", "truncated")
            .detail("bytes_before", size_before)
            .detail("bytes_after", len);
        if torn > 0 {
            rec = rec.detail("torn_bytes", torn).detail(
                "after_seq",
                kept.or_else(|| first_before.and_then(|f| f.checked_sub(1))),
            );
        }
        if let Some(m) = missing(first, last, &last_hash) {
            rec = rec.detail("missing", m);
        }
        self.noted(
            s,
            format!(
                "AUDIT JOURNAL {} WAS TRUNCATED to {len} byte(s): {}",
                self.path.display(),
                if first <= last {
                    format!("records {first}..={last} are gone")
                } else {
                    "no record was lost".to_owned()
                }
            ),
        );
        Ok(Prepared::from_record(&rec))
    }

    /// The file's mode changed: reopened at its path, or the descriptor kept.
    fn mode_changed(&mut self, s: &Shared, mode: u32) -> Prepared {
        let was = self.mode;
        self.mode = mode;
        let reopened = match super::files::open_append(&self.path) {
            Ok(f) => {
                self.file = Some(f);
                true
            }
            Err(_) => false,
        };
        self.noted(
            s,
            format!(
                "AUDIT JOURNAL {}: its mode was changed from {was:04o} to {mode:04o}; {}",
                self.path.display(),
                if reopened {
                    "reopened it"
                } else {
                    "it cannot be opened any more: writing on through the open descriptor"
                }
            ),
        );
        Prepared::from_record(
            &Record::new(Event::AuditReopen)
                .detail("reason", "mode changed")
                .detail("mode_before", format!("{was:04o}"))
                .detail("mode", format!("{mode:04o}"))
                .detail("reopened", reopened)
                .detail("last_seq", self.chain.next_seq - 1),
        )
    }

    /// Logs, counts and keeps for status what was done to the file.
    fn noted(&mut self, s: &Shared, say: String) {
        error!("{say}");
        s.files.reopens.fetch_add(1, Ordering::Relaxed);
        *lock(&s.files.last_reopen) = Some(say);
    }
}

#[cfg(test)]
mod tests;
