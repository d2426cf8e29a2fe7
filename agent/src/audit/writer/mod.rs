//! The journal writer: one thread owns the file, appenders hand it records through a queue,
//! and it chains (`seq`, `prev_hash`, `hash`), writes a batch, fsyncs once and then answers
//! every appender of the batch (group commit). Also recovery of the chain on open (sealing a
//! torn tail with `audit.gap`), rotation by size, checkpoints and the journald mirror.
//!
//! Durability: in `strict` mode [`Journal::append`] resolves once the record is written (with
//! `fsync: true`, once it is fsynced; else the writer thread fsyncs every `fsync_interval`) and
//! fails when it cannot be written (the caller refuses the statement). In `async` mode it
//! resolves once the record is queued, with the `seq` it will get; a full queue drops records,
//! counts them, and an `audit.gap` record with `{"lost": N}` follows once there is room.
//! A failed write in `async` mode is retried (the queue absorbs, then drops), so the `seq`s
//! handed out stay exact.
//!
//! Files: `path` is appended to (created 0600, its directory 0700 if created); when a record
//! would take it past `max_bytes` it is renamed `path.<first seq>-<last seq>` and the chain
//! continues in a fresh `path`; the archiver compresses rotated files and applies the opt-in
//! retention (nothing is deleted by default). What is done to the live file behind the
//! writer's back is noticed and recorded (`watch`). Do not point logrotate at these files.
//!
//! This file is the public side ([`Journal`], [`AuditStatus`]); the parts, one role each:
//! `error` ([`AuditError`]), `queue` (what appenders hand over), `commit` (group commit: chain,
//! write, fsync, answer), `thread` (the writer thread), `files` (lock, open, rotation),
//! `watch` (the live file checked around each write), `gate` (inotify: whether it needs a
//! full look), `space` (the free-space floor), `head` (the chain's head in the state
//! directory), `recover` (where the chain resumes on open) and `archive` (compression and
//! retention, on their own thread).
mod archive;
mod commit;
mod error;
mod files;
mod gate;
mod head;
mod queue;
mod recover;
mod space;
#[cfg(test)]
mod tests;
mod thread;
mod watch;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use archive::Signal;
use commit::{Chain, Writer};
pub use error::AuditError;
use head::Head;
use queue::{FileCounters, Item, Queue, Shared, lock};
use space::Space;

use super::canon::Prepared;
use super::config::{AuditConfig, AuditMode, JournaldMirror};
use super::journald::Journald;
use super::record::{Event, GENESIS_HASH, Record, Statement};

/// What `pgwarden status` shows about the journal.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditStatus {
    /// The journal file.
    pub path: PathBuf,
    /// Durability mode.
    pub mode: AuditMode,
    /// `seq` of the last record written (0: none yet).
    pub last_seq: u64,
    /// `hash` of the last record written: an anchor to keep elsewhere.
    pub last_hash: String,
    /// Records waiting to be written.
    pub queue_depth: usize,
    /// Records written since the journal was opened.
    pub records_written: u64,
    /// Failed writes (each failed batch counts once).
    pub write_errors: u64,
    /// Which records are mirrored to journald.
    pub journald: JournaldMirror,
    /// Records journald did not get (an absent socket counts once).
    pub journald_errors: u64,
    /// Records dropped because the async queue was full.
    pub dropped: u64,
    /// The last write error, if the journal has not written successfully since.
    pub last_error: Option<String>,
    /// Times the live file was found unlinked, renamed, replaced, truncated or with another
    /// mode (each wrote an `audit.reopen` or `audit.gap`).
    pub reopens: u64,
    /// What was last found done to it.
    pub last_reopen: Option<String>,
    /// Rotations since the journal was opened.
    pub rotations: u64,
    /// Rotated files compressed since the journal was opened.
    pub archived: u64,
    /// Compressions that failed (the file stays plain, tried again).
    pub archive_errors: u64,
    /// Rotated files deleted by the configured retention (each after an `audit.retention`).
    pub retention_files: u64,
    /// Records in them.
    pub retention_records: u64,
    /// The last deletion.
    pub last_retention: Option<String>,
    /// Free bytes on the journal's file system when last looked at (0: not looked at).
    pub free_bytes: u64,
}

/// The audit journal. Cheap to clone; the last clone dropped (or [`Journal::close`]) drains
/// the queue and stops the writer thread.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The archiver: stopped before the writer (it may still append an `audit.retention`).
    archiver: Mutex<Option<(Arc<Signal>, JoinHandle<()>)>>,
}

impl Handle {
    fn close(&self) {
        if let Some((signal, t)) = lock(&self.archiver).take() {
            signal.stop();
            // The archiver never panics on purpose; if it did, there is nothing to add.
            let _ = t.join();
        }
        self.shared.shut_down(&self.thread);
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.close();
    }
}

impl Journal {
    /// Opens (creating it if needed) the journal of `cfg`, recovers the chain from its tail
    /// (or from the newest rotated file), seals a torn tail with an `audit.gap` record, and
    /// starts the writer thread.
    pub fn open(cfg: &AuditConfig) -> Result<Journal, AuditError> {
        if cfg.mode == AuditMode::Off {
            return Ok(Self::off(cfg));
        }
        let path = cfg.path.clone();
        let open_err = |e: io::Error| AuditError::Open {
            path: path.clone(),
            source: Arc::new(e),
        };
        files::create_dir(&path).map_err(open_err)?;
        let journal_lock = files::lock_journal(&path).map_err(open_err)?;
        let head_path = head::head_path(&cfg.state_dir, &path);
        let recovered = recover::recover(&path, Head::load(&head_path)).map_err(open_err)?;
        let head = Head::open(&head_path).map_err(|e| AuditError::Open {
            path: head_path.clone(),
            source: Arc::new(e),
        })?;
        let signal = Arc::new(Signal::new(archive::Settings {
            compress: cfg.compress,
            retention: cfg.retention(),
            forward_cursors: cfg
                .forward
                .iter()
                .map(|t| super::cursor::path(&cfg.state_dir, &t.name))
                .collect(),
        }));
        let mut writer = Writer {
            _lock: journal_lock,
            path: path.clone(),
            file: None,
            size: 0,
            max_bytes: cfg.max_bytes,
            fsync: cfg.fsync,
            fsync_interval: cfg.fsync_interval,
            chain: Chain::new(recovered.next_seq, recovered.prev_hash.clone()),
            last_batch: Instant::now(),
            unsynced: None,
            journald: cfg
                .journald
                .on()
                .then(|| Journald::new(&cfg.journald_socket)),
            suspect: false,
            failing_since: None,
            failures_logged: 0,
            ident: None,
            mode: 0,
            file_first: None,
            head: Some(head),
            space: Space::new(cfg.min_free_bytes),
            archiver: Some(Arc::clone(&signal)),
            gate: gate::Gate::new(),
            lines: Vec::new(),
            batch: Vec::new(),
            committed: Vec::new(),
            chunk: Vec::new(),
            spare_chains: Default::default(),
        };
        writer.open_live().map_err(open_err)?;
        writer.file_first = recovered.file_first;
        if writer.ident.is_some() && writer.mode & 0o077 != 0 {
            warn!(
                "audit journal {} is readable by others (mode {:o}); it should be 0600",
                path.display(),
                writer.mode
            );
        }
        let torn = recovered.torn;
        if let Some(torn) = &torn
            && torn.needs_newline
        {
            writer.write_raw(b"\n").map_err(open_err)?;
        }
        let shared = Arc::new(Shared {
            path: path.clone(),
            mode: cfg.mode,
            capacity: cfg.queue.max(1),
            keep_literals: cfg.keep_literals,
            journald: cfg.journald,
            checkpoint_every: cfg.checkpoint_every,
            queue: Mutex::new(Queue::new(recovered.next_seq, false)),
            wake: Condvar::new(),
            last_seq: AtomicU64::new(recovered.next_seq - 1),
            records_written: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            journald_errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            last_hash: Mutex::new(recovered.prev_hash.clone()),
            last_error: Mutex::new(None),
            files: FileCounters::default(),
            checkpoint_interval: (cfg.checkpoint_seconds > 0)
                .then(|| Duration::from_secs(cfg.checkpoint_seconds)),
            writer: Mutex::new(writer),
            inline: cfg.mode == AuditMode::Strict && !cfg.fsync,
        });
        // What recovery found is written before anything else: the tear sealed, the records
        // missing from the files (the head in the state directory is ahead of them).
        let mut notes = Vec::new();
        if let Some(torn) = torn {
            warn!(
                "audit journal {}: {} torn byte(s) after seq {} ({}); sealing with audit.gap",
                path.display(),
                torn.bytes,
                torn.after_seq.map_or("none".into(), |s| s.to_string()),
                torn.reason
            );
            let mut gap = Record::new(Event::AuditGap)
                .detail("torn_bytes", torn.bytes)
                .detail("after_seq", torn.after_seq)
                .detail("reason", torn.reason);
            if let Some(f) = torn.file {
                gap = gap.detail("file", f);
            }
            notes.push(gap);
        }
        if let Some(files_end) = recovered.behind_head {
            let last = recovered.next_seq - 1;
            let say = format!(
                "AUDIT JOURNAL {}: its files end at seq {files_end} but the chain's head is seq \
                 {last}: records {}..={last} are not in the journal's files (deleted or moved \
                 while the agent was not running?); the chain goes on from the head",
                path.display(),
                files_end + 1
            );
            error!("{say}");
            shared.files.reopens.fetch_add(1, Ordering::Relaxed);
            *lock(&shared.files.last_reopen) = Some(say);
            let mut rec = Record::new(Event::AuditReopen)
                .detail("reason", "files behind the head at start")
                .detail("files_last_seq", files_end)
                .detail("last_seq", last)
                .detail("last_hash", &recovered.prev_hash);
            if let Some(m) = watch::missing(files_end + 1, last, &recovered.prev_hash) {
                rec = rec.detail("missing", m);
            }
            notes.push(rec);
        }
        if !notes.is_empty() {
            let entries = notes
                .iter()
                .map(|r| Item::Record(Prepared::from_record(r), None))
                .collect();
            let mut w = lock(&shared.writer);
            let n = w
                .commit_items(&shared, entries, true)
                .map_err(|(_, _, e)| open_err(e))?;
            w.after_commit(&shared, n);
            lock(&shared.queue).next_seq = w.chain.next_seq;
        }
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("pgwarden-audit".into())
                .spawn(move || thread::run(&shared))
                .map_err(open_err)?
        };
        let archiver = {
            let shared = Arc::clone(&shared);
            let signal = Arc::clone(&signal);
            std::thread::Builder::new()
                .name("pgwarden-archive".into())
                .spawn(move || archive::run(&shared, &signal))
                .map_err(open_err)?
        };
        info!(
            path = %path.display(),
            mode = ?cfg.mode,
            next_seq = lock(&shared.queue).next_seq,
            "audit journal open"
        );
        Ok(Journal {
            inner: Arc::new(Handle {
                shared,
                thread: Mutex::new(Some(thread)),
                archiver: Mutex::new(Some((signal, archiver))),
            }),
        })
    }

    /// A journal that records nothing (`mode: off`).
    fn off(cfg: &AuditConfig) -> Journal {
        error!(
            "AUDIT JOURNAL OFF (audit.mode: off): no session, statement or decision is recorded; \
             this does not meet PCI DSS Req 10 and is meant for measuring the relay only"
        );
        Journal {
            inner: Arc::new(Handle {
                shared: Arc::new(Shared {
                    path: cfg.path.clone(),
                    mode: AuditMode::Off,
                    capacity: 1,
                    keep_literals: cfg.keep_literals,
                    journald: JournaldMirror::Off,
                    checkpoint_every: 0,
                    queue: Mutex::new(Queue::new(1, true)),
                    wake: Condvar::new(),
                    last_seq: AtomicU64::new(0),
                    records_written: AtomicU64::new(0),
                    write_errors: AtomicU64::new(0),
                    journald_errors: AtomicU64::new(0),
                    dropped: AtomicU64::new(0),
                    last_hash: Mutex::new(String::new()),
                    last_error: Mutex::new(None),
                    files: FileCounters::default(),
                    checkpoint_interval: None,
                    // Never written to: nothing is queued in this mode.
                    writer: Mutex::new(Writer {
                        _lock: None,
                        path: cfg.path.clone(),
                        file: None,
                        size: 0,
                        max_bytes: cfg.max_bytes,
                        fsync: false,
                        fsync_interval: cfg.fsync_interval,
                        chain: Chain::new(1, GENESIS_HASH.into()),
                        last_batch: Instant::now(),
                        unsynced: None,
                        journald: None,
                        suspect: false,
                        failing_since: None,
                        failures_logged: 0,
                        ident: None,
                        mode: 0,
                        file_first: None,
                        head: None,
                        space: Space::new(0),
                        archiver: None,
                        gate: gate::Gate::new(),
                        lines: Vec::new(),
                        batch: Vec::new(),
                        committed: Vec::new(),
                        chunk: Vec::new(),
                        spare_chains: Default::default(),
                    }),
                    inline: false,
                }),
                thread: Mutex::new(None),
                archiver: Mutex::new(None),
            }),
        }
    }

    /// Whether records are kept at all (`mode` is not `off`).
    pub fn enabled(&self) -> bool {
        self.inner.shared.mode != AuditMode::Off
    }

    /// Appends a record. Strict mode: resolves with its `seq` once it is on disk, or fails
    /// (refuse the statement). Async mode: resolves at once with the `seq` it will get, or
    /// [`AuditError::Dropped`] when the queue is full (do not refuse for that: it is counted,
    /// and reported by an `audit.gap`).
    pub async fn append(&self, rec: Record) -> Result<u64, AuditError> {
        self.append_prepared(Prepared::from_record(&rec)).await
    }

    /// [`Journal::append`] of a record serialized by the caller ([`super::canon`]).
    pub async fn append_prepared(&self, rec: Prepared) -> Result<u64, AuditError> {
        let shared = &self.inner.shared;
        if shared.mode != AuditMode::Strict {
            return shared.enqueue(rec, None);
        }
        if shared.inline {
            return shared.append_inline(std::iter::once(rec));
        }
        let (tx, rx) = oneshot::channel();
        shared.enqueue(rec, Some(tx.into()))?;
        rx.await.unwrap_or(Err(AuditError::Closed))
    }

    /// [`Journal::append`] for synchronous code. Must not be called from inside an async
    /// task (it blocks the thread until the write is done, in strict mode).
    pub fn append_blocking(&self, rec: Record) -> Result<u64, AuditError> {
        let rec = Prepared::from_record(&rec);
        let shared = &self.inner.shared;
        if shared.mode != AuditMode::Strict {
            return shared.enqueue(rec, None);
        }
        if shared.inline {
            return shared.append_inline(std::iter::once(rec));
        }
        let (tx, rx) = oneshot::channel();
        shared.enqueue(rec, Some(tx.into()))?;
        rx.blocking_recv().unwrap_or(Err(AuditError::Closed))
    }

    /// Queues a record without waiting: in async mode that is all `append` does; in strict
    /// mode the write still happens, but nobody waits for it (for records that hold nothing
    /// up, like `query.done`). Errors are counted in the journal's status either way.
    pub fn submit(&self, rec: Record) {
        self.submit_prepared(Prepared::from_record(&rec));
    }

    /// [`Journal::submit`] of a record serialized by the caller.
    pub fn submit_prepared(&self, rec: Prepared) {
        let _ = self.inner.shared.enqueue(rec, None);
    }

    /// Whether appends wait for the disk.
    pub fn is_strict(&self) -> bool {
        self.inner.shared.mode == AuditMode::Strict
    }

    /// The statement part of a record for `sql`, following the journal's `keep_literals`.
    pub fn statement(&self, sql: &str) -> Statement {
        Statement::from_sql(sql, self.inner.shared.keep_literals)
    }

    /// [`Journal::statement`] of a text the caller has read already.
    pub fn statement_of(&self, sql: &str, text: &crate::sqltext::Text) -> Statement {
        Statement::from_text(sql, text, self.inner.shared.keep_literals)
    }

    /// Appends several records and waits for all of them (they share a group commit in
    /// strict mode); the first failure, if any.
    pub async fn append_all(
        &self,
        recs: impl IntoIterator<Item = Prepared>,
    ) -> Result<(), AuditError> {
        let shared = &self.inner.shared;
        if shared.mode != AuditMode::Strict {
            for r in recs {
                let _ = shared.enqueue(r, None);
            }
            return Ok(());
        }
        if shared.inline {
            return shared.append_inline(recs).map(|_| ());
        }
        let mut waits = Vec::new();
        let mut first_err = None;
        for r in recs {
            let (tx, rx) = oneshot::channel();
            match shared.enqueue(r, Some(tx.into())) {
                Ok(_) => waits.push(rx),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        for rx in waits {
            if let Err(e) = rx.await.unwrap_or(Err(AuditError::Closed)) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.inner.shared.path
    }

    /// Counters and positions for status.
    pub fn status(&self) -> AuditStatus {
        let s = &self.inner.shared;
        AuditStatus {
            path: s.path.clone(),
            mode: s.mode,
            last_seq: s.last_seq.load(Ordering::Relaxed),
            last_hash: lock(&s.last_hash).clone(),
            queue_depth: lock(&s.queue).items.len(),
            records_written: s.records_written.load(Ordering::Relaxed),
            write_errors: s.write_errors.load(Ordering::Relaxed),
            journald: s.journald,
            journald_errors: s.journald_errors.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            last_error: lock(&s.last_error).clone(),
            reopens: s.files.reopens.load(Ordering::Relaxed),
            last_reopen: lock(&s.files.last_reopen).clone(),
            rotations: s.files.rotations.load(Ordering::Relaxed),
            archived: s.files.archived.load(Ordering::Relaxed),
            archive_errors: s.files.archive_errors.load(Ordering::Relaxed),
            retention_files: s.files.retention_files.load(Ordering::Relaxed),
            retention_records: s.files.retention_records.load(Ordering::Relaxed),
            last_retention: lock(&s.files.last_retention).clone(),
            free_bytes: s.files.free_bytes.load(Ordering::Relaxed),
        }
    }

    /// Compresses the rotated files and applies the retention now, on this thread (the
    /// archiver thread does so after each rotation anyway): for tests and tools that look
    /// at the files next.
    pub fn archive(&self) {
        let signal = lock(&self.inner.archiver)
            .as_ref()
            .map(|a| Arc::clone(&a.0));
        if let Some(signal) = signal {
            archive::pass(&self.inner.shared, &signal);
        }
    }

    /// Stops accepting records, writes what is queued, and stops the writer thread. Blocks
    /// until then (call it from `spawn_blocking` in async code). Later appends fail with
    /// [`AuditError::Closed`].
    pub fn close(&self) {
        self.inner.close();
    }
}
