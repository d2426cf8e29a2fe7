//! The archiver thread: after each rotation (and at start, and once a minute) it compresses
//! rotated files with zstd and applies the opt-in retention. Off the writer's path: a
//! rotation is a rename, and statements never wait for compression.
//!
//! Compression of `PATH.<a>-<b>`: into `PATH.<a>-<b>.zst.tmp` (with zstd's checksum, the
//! original's mtime), fsynced, renamed to `PATH.<a>-<b>.zst`, the directory fsynced, then the
//! plain file removed. A crash at any point leaves the plain file or a complete `.zst`
//! (readers take the plain one while both exist); the next pass removes a stray `.zst.tmp`
//! and compresses again what is still plain. Files rotated by older versions (`PATH.1` …)
//! are renamed by the seq range they hold first.
//!
//! Retention (`audit.retention`, off by default) deletes the oldest rotated files beyond
//! `max_files`, beyond `max_bytes` in all, or last written more than `max_age` ago; only
//! after an `audit.retention` record naming them, their seq range and their last hash is in
//! the journal (on disk in strict mode). If that record cannot be written, nothing is
//! deleted. Low disk space never deletes anything.
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tracing::{error, info, warn};

use super::files::sync_dir;
use super::queue::{Shared, lock};
use super::recover::scan_rotated;
use super::watch::missing;
use crate::audit::canon::Prepared;
use crate::audit::config::RetentionConfig;
use crate::audit::record::{Event, Record};
use crate::audit::segments::{self, Place, Segment};

/// How often a pass runs without a rotation (for `max_age`, and to retry what failed).
const EVERY: Duration = Duration::from_secs(60);

/// zstd level 1, not zstd's default 3: on the journal's JSON (two 64-hex hashes per record)
/// level 1 packs about 8.5-fold at about 480 MB/s on this class of core and level 3 about
/// 7.4-fold at 200 MB/s, so 3 would cost more than twice the CPU for a larger file. Under a
/// full load compression ran at about 9% of the agent's CPU with level 3.
const LEVEL: i32 = 1;

#[derive(Default)]
struct State {
    wake: bool,
    stop: bool,
}

/// Wakes and stops the archiver thread; what it does.
pub(super) struct Signal {
    state: Mutex<State>,
    cv: Condvar,
    settings: Settings,
    /// Held during a pass (the thread's, or one asked for with [`pass`]).
    passing: Mutex<()>,
}

impl Signal {
    /// The archiver of `settings`.
    pub(super) fn new(settings: Settings) -> Signal {
        Signal {
            state: Mutex::default(),
            cv: Condvar::new(),
            settings,
            passing: Mutex::new(()),
        }
    }

    /// Asks for a pass (after a rotation).
    pub(super) fn wake(&self) {
        lock(&self.state).wake = true;
        self.cv.notify_one();
    }

    /// Asks the thread to stop after the file it is at.
    pub(super) fn stop(&self) {
        lock(&self.state).stop = true;
        self.cv.notify_one();
    }

    fn stopped(&self) -> bool {
        lock(&self.state).stop
    }

    /// Waits for a wake, a stop or [`EVERY`]; false when stopped.
    fn wait(&self) -> bool {
        let mut st = lock(&self.state);
        if !st.wake && !st.stop {
            st = self
                .cv
                .wait_timeout(st, EVERY)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        st.wake = false;
        !st.stop
    }
}

/// What the archiver does.
pub(super) struct Settings {
    pub(super) compress: bool,
    pub(super) retention: RetentionConfig,
    /// The cursor files of the `audit.forward` targets: retention deletes no record a
    /// target has not delivered yet (a missing or unreadable cursor holds everything).
    pub(super) forward_cursors: Vec<std::path::PathBuf>,
}

/// Runs passes until stopped.
pub(super) fn run(s: &Arc<Shared>, signal: &Signal) {
    loop {
        pass(s, signal);
        if !signal.wait() {
            return;
        }
    }
}

/// One pass: old names, leftovers, compression, retention.
pub(super) fn pass(s: &Shared, signal: &Signal) {
    let _one = lock(&signal.passing);
    let settings = &signal.settings;
    let path = &s.path;
    rename_legacy(path);
    for seg in segments::rotated(path) {
        if signal.stopped() {
            return;
        }
        let Place::Range {
            first,
            last,
            compressed: false,
        } = seg.place
        else {
            continue;
        };
        let to = segments::range_name(path, first, last, true);
        if !settings.compress {
            continue;
        }
        match compress_idle(&seg.path, &to) {
            Ok(()) => {
                s.files.archived.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                s.files.archive_errors.fetch_add(1, Ordering::Relaxed);
                error!(
                    "audit journal: cannot compress {}: {e}; it stays as it is (tried again \
                     later)",
                    seg.path.display()
                );
            }
        }
    }
    remove_strays(path);
    if settings.retention.limited() && !signal.stopped() {
        retain(s, &settings.retention, &settings.forward_cursors);
    }
}

/// The last seq retention may delete: every forwarding target's cursor (`u64::MAX` when
/// there is no target), and the cursor that holds it back.
fn forwarded_through(cursors: &[std::path::PathBuf]) -> (u64, Option<&std::path::Path>) {
    let mut through = (u64::MAX, None);
    for c in cursors {
        let seq = match super::super::cursor::load(c) {
            Ok(Some(cur)) => cur.seq,
            Ok(None) | Err(_) => 0,
        };
        if seq < through.0 {
            through = (seq, Some(c.as_path()));
        }
    }
    through
}

/// `PATH.n` (older versions' names) renamed by the seq range each holds.
fn rename_legacy(path: &Path) {
    for seg in segments::rotated(path) {
        let Place::Legacy(_) = seg.place else {
            continue;
        };
        let range = segments::read(&seg.path).ok().and_then(|d| seq_range(&d));
        let Some((first, last)) = range else {
            warn!(
                "audit journal: {} holds no record; left as it is",
                seg.path.display()
            );
            continue;
        };
        let to = segments::range_name(path, first, last, false);
        if let Err(e) = std::fs::rename(&seg.path, &to).and_then(|()| sync_dir(path)) {
            error!("audit journal: cannot rename {}: {e}", seg.path.display());
        } else {
            info!(
                "audit journal: {} renamed {} by the range it holds",
                seg.path.display(),
                to.display()
            );
        }
    }
}

/// The first and last seq among `data`'s lines.
fn seq_range(data: &[u8]) -> Option<(u64, u64)> {
    let seq = |l: &[u8]| {
        serde_json::from_slice::<Value>(l)
            .ok()?
            .get("seq")?
            .as_u64()
    };
    let first = data.split(|&c| c == b'\n').find_map(seq)?;
    let last = data.split(|&c| c == b'\n').rev().find_map(seq)?;
    Some((first, last))
}

/// A `.zst.tmp` left by a crash goes.
fn remove_strays(path: &Path) {
    let Some(name) = path.file_name() else {
        return;
    };
    let dir = segments::dir_of(path);
    let prefix = format!("{}.", name.to_string_lossy());
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let n = e.file_name();
        let Some(n) = n.to_str() else { continue };
        if n.starts_with(&prefix) && n.ends_with(".zst.tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// [`compress`] on a thread of its own under `SCHED_IDLE`: compression can wait, statements
/// cannot (under a full load it costs the sessions nothing and catches up once the host has
/// idle time; measured, it was about 3 µs of every statement's CPU at 8,000 statements/s).
/// The archiver holds nothing the writer needs meanwhile.
fn compress_idle(from: &Path, to: &Path) -> io::Result<()> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("pgwarden-zstd".into())
            .spawn_scoped(scope, || {
                if let Err(e) = agent_sys::idle_thread() {
                    warn!("audit journal: compressing at normal priority (SCHED_IDLE: {e})");
                }
                compress(from, to)
            })?
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the compressing thread panicked")))
    })
}

/// `from` compressed into `to` (see the module doc), then `from` removed.
fn compress(from: &Path, to: &Path) -> io::Result<()> {
    let mut tmp = to.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let input = File::open(from)?;
    let mtime = input.metadata()?.modified()?;
    let out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    let mut enc = zstd::stream::write::Encoder::new(out, LEVEL)?;
    enc.include_checksum(true)?;
    io::copy(&mut BufReader::with_capacity(1 << 20, input), &mut enc)?;
    let out = enc.finish()?;
    out.set_modified(mtime)?;
    out.sync_all()?;
    drop(out);
    std::fs::rename(&tmp, to)?;
    sync_dir(to)?;
    std::fs::remove_file(from)?;
    sync_dir(from)
}

/// A rotated file with what retention looks at.
struct Kept {
    seg: Segment,
    first: u64,
    last: u64,
    bytes: u64,
    mtime: SystemTime,
}

/// Deletes the oldest rotated files beyond the limits, each batch after its record.
fn retain(s: &Shared, limits: &RetentionConfig, cursors: &[std::path::PathBuf]) {
    let mut kept: Vec<Kept> = segments::rotated(&s.path)
        .into_iter()
        .filter_map(|seg| {
            let Place::Range { first, last, .. } = seg.place else {
                return None;
            };
            let meta = std::fs::metadata(&seg.path).ok()?;
            Some(Kept {
                first,
                last,
                bytes: meta.len(),
                mtime: meta.modified().ok()?,
                seg,
            })
        })
        .collect();
    let now = SystemTime::now();
    let mut total: u64 = kept.iter().map(|k| k.bytes).sum();
    let mut victims = Vec::new();
    let mut why = Vec::new();
    while let Some(k) = kept.first() {
        let over_files = limits.max_files > 0 && kept.len() > limits.max_files;
        let over_bytes = limits.max_bytes > 0 && total > limits.max_bytes;
        let too_old = limits
            .max_age
            .is_some_and(|a| now.duration_since(k.mtime).is_ok_and(|age| age > a));
        if !(over_files || over_bytes || too_old) {
            break;
        }
        for (hit, name) in [
            (over_files, "max_files"),
            (over_bytes, "max_bytes"),
            (too_old, "max_age"),
        ] {
            if hit && !why.contains(&name) {
                why.push(name);
            }
        }
        total -= k.bytes;
        victims.push(kept.remove(0));
    }
    let (through, holder) = forwarded_through(cursors);
    if let Some(held) = victims.iter().position(|v| v.last > through) {
        warn!(
            "audit retention: {} rotated file(s) from seq {} are kept past the limits until              the forwarding target of {} has delivered them (it is at seq {through})",
            victims.len() - held,
            victims[held].first,
            holder.map_or_else(String::new, |p| p.display().to_string()),
        );
        victims.truncate(held);
    }
    let (Some(oldest), Some(newest)) = (victims.first(), victims.last()) else {
        return;
    };
    let last_hash = match scan_rotated(&newest.seg.path) {
        Ok(Some(t)) => t.last.filter(|l| l.0 == newest.last).map(|l| l.1),
        Ok(None) => None,
        Err(e) => {
            error!(
                "audit retention: cannot read {}: {e}; nothing deleted",
                newest.seg.path.display()
            );
            return;
        }
    };
    let Some(last_hash) = last_hash else {
        error!(
            "audit retention: {} does not end with seq {} as its name says; nothing deleted \
             (run `pgwarden audit verify`)",
            newest.seg.path.display(),
            newest.last
        );
        return;
    };
    let (first, last) = (oldest.first, newest.last);
    let names: Vec<String> = victims
        .iter()
        .map(|v| {
            v.seg
                .path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        })
        .collect();
    let mut rec = Record::new(Event::AuditRetention)
        .detail("files", &names)
        .detail("limits", &why)
        .detail("bytes", victims.iter().map(|v| v.bytes).sum::<u64>());
    if let Some(m) = missing(first, last, &last_hash) {
        rec = rec.detail("missing", m);
    }
    let seq = match s.append_wait(Prepared::from_record(&rec)) {
        Ok(seq) => seq,
        Err(e) => {
            error!(
                "audit retention: the audit.retention record could not be written ({e}); \
                 nothing deleted"
            );
            return;
        }
    };
    let mut deleted = 0;
    for v in &victims {
        match std::fs::remove_file(&v.seg.path) {
            Ok(()) => deleted += 1,
            Err(e) => error!(
                "audit retention: cannot delete {}: {e}",
                v.seg.path.display()
            ),
        }
    }
    let _ = sync_dir(&s.path);
    s.files
        .retention_files
        .fetch_add(deleted, Ordering::Relaxed);
    s.files
        .retention_records
        .fetch_add(last.saturating_sub(first) + 1, Ordering::Relaxed);
    warn!(
        "audit retention ({}): deleted {deleted} file(s) holding seq {first}..={last}, last \
         hash {last_hash} (recorded by audit.retention seq {seq}): {}",
        why.join(", "),
        names.join(", ")
    );
    *lock(&s.files.last_retention) = Some(format!(
        "seq {first}..={last} deleted (audit.retention seq {seq})"
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_range_reads_the_first_and_last_record() {
        let data = b"junk\n{\"seq\":5}\n{\"seq\":6}\n{\"seq\":9}\ntorn{";
        assert_eq!(seq_range(data), Some((5, 9)));
        assert_eq!(seq_range(b"nothing\n"), None);
    }
}
