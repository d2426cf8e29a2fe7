//! The journal writer: one thread owns the file, appenders hand it records through a queue,
//! and it chains (`seq`, `prev_hash`, `hash`), writes a batch, fsyncs once and then answers
//! every appender of the batch (group commit). Also recovery of the chain on open (sealing a
//! torn tail with `audit.gap`), rotation by size, checkpoints and the journald mirror.
//!
//! Durability: in `strict` mode [`Journal::append`] resolves once the record is fsynced and
//! fails when it cannot be written (the caller refuses the statement). In `async` mode it
//! resolves once the record is queued, with the `seq` it will get; a full queue drops records,
//! counts them, and an `audit.gap` record with `{"lost": N}` follows once there is room.
//! A failed write in `async` mode is retried (the queue absorbs, then drops), so the `seq`s
//! handed out stay exact.
//!
//! Files: `path` is appended to (created 0600, its directory 0700 if created); when a record
//! would take it past `max_bytes` it becomes `path.1` (older ones shift to `.2` …, the oldest
//! beyond `keep_files` is removed) and the chain continues in a fresh `path`. Do not point
//! logrotate at these files: a `copytruncate` would cut the chain.
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::canon::hash_value;
use super::canon::{Prepared, Sealed};
use super::config::{AuditConfig, AuditMode, JournaldMirror};
use super::journald::{self, Journald};
use super::record::{Event, GENESIS_HASH, Record, Statement};

/// Most records written (and fsynced) as one batch.
const MAX_BATCH: usize = 4096;

/// How long records nobody waits for (`query.done`, async mode) may sit in the queue while
/// the writer is busy: they go with the next batch, or after this.
const LAZY_FLUSH: Duration = Duration::from_millis(2);

/// How long without records before the writer sleeps until woken.
const IDLE_AFTER: Duration = Duration::from_secs(1);

/// With `fsync: true`, records nobody waits for (`query.done`, async mode) are written at once
/// but fsynced with the next batch someone waits for, or after this.
const LAZY_SYNC: Duration = Duration::from_millis(100);

/// With `fsync: false`, written records are still fsynced this often (bounding what a power
/// loss can take; an agent crash takes nothing that was written).
const PERIODIC_SYNC: Duration = Duration::from_secs(1);

/// Why a record did not make it to the journal.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AuditError {
    /// The journal could not be opened or recovered.
    #[error("cannot open the audit journal {path}: {source}")]
    Open {
        /// The journal file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The record could not be written durably (strict mode): refuse the statement.
    #[error("cannot write the audit journal {path}: {source}")]
    Write {
        /// The journal file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<io::Error>,
    },
    /// Async mode, queue full: the record is lost; an `audit.gap` will count it.
    #[error("audit queue full: record dropped ({lost} dropped since the journal opened)")]
    Dropped {
        /// Records dropped so far.
        lost: u64,
    },
    /// The record cannot be written as it is.
    #[error("invalid audit record: {0}")]
    Invalid(String),
    /// The journal was closed.
    #[error("the audit journal is closed")]
    Closed,
}

/// What `pgwarden status` shows about the journal.
#[derive(Clone, Debug, Serialize)]
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
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.shut_down(&self.thread);
    }
}

type Waiter = oneshot::Sender<Result<u64, AuditError>>;

/// The answer a waiter got, if it got one (taking it).
fn answered(
    rx: &mut oneshot::Receiver<Result<u64, AuditError>>,
) -> Option<Result<u64, AuditError>> {
    match rx.try_recv() {
        Ok(r) => Some(r),
        Err(oneshot::error::TryRecvError::Closed) => Some(Err(AuditError::Closed)),
        Err(oneshot::error::TryRecvError::Empty) => None,
    }
}

enum Item {
    Record(Box<Prepared>, Option<Waiter>),
    Checkpoint,
    Lost(u64),
}

struct Queue {
    items: VecDeque<Item>,
    /// The `seq` the next queued item will get (async mode hands it out).
    next_seq: u64,
    /// Records queued since the last checkpoint was queued.
    since_checkpoint: u64,
    checkpoint_queued: bool,
    /// Dropped records not yet reported by an `audit.gap`.
    lost: u64,
    closing: bool,
    /// The writer sleeps until woken (no records for a while): lazy records wake it.
    idle: bool,
    /// When the oldest queued item was queued.
    oldest: Option<Instant>,
    /// When the last checkpoint was written.
    last_checkpoint: Instant,
}

struct Shared {
    path: PathBuf,
    mode: AuditMode,
    capacity: usize,
    keep_literals: bool,
    journald: JournaldMirror,
    checkpoint_every: u64,
    queue: Mutex<Queue>,
    wake: Condvar,
    last_seq: AtomicU64,
    records_written: AtomicU64,
    write_errors: AtomicU64,
    journald_errors: AtomicU64,
    dropped: AtomicU64,
    last_hash: Mutex<String>,
    last_error: Mutex<Option<String>>,
    /// `audit.checkpoint` at least this often.
    checkpoint_interval: Option<Duration>,
    /// The file and the chain. Whoever holds it writes: the writer thread, or (strict mode
    /// without per-statement fsync) an appender committing inline. Taken before `queue`.
    writer: Mutex<Writer>,
    /// Appenders commit their records themselves (strict, `fsync: false`): no thread hand-off
    /// on a statement's path.
    inline: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Queues one item, keeping the seq reservation and the count checkpoints in step.
    fn push(&self, q: &mut Queue, item: Item) -> u64 {
        let seq = q.next_seq;
        q.next_seq += 1;
        let counts = matches!(item, Item::Record(..));
        if q.items.is_empty() {
            q.oldest = Some(Instant::now());
        }
        q.items.push_back(item);
        if counts && self.checkpoint_every > 0 {
            q.since_checkpoint += 1;
            if q.since_checkpoint >= self.checkpoint_every && !q.checkpoint_queued {
                q.next_seq += 1;
                q.items.push_back(Item::Checkpoint);
                q.checkpoint_queued = true;
                q.since_checkpoint = 0;
            }
        }
        seq
    }

    /// Queues a record, or drops it (async mode, queue full). Without a waiter the writer is
    /// only woken when it sleeps idle; a busy writer takes the record with its next batch.
    fn enqueue(&self, rec: Prepared, waiter: Option<Waiter>) -> Result<u64, AuditError> {
        let wake = waiter.is_some();
        self.enqueue_as(rec, waiter, wake)
    }

    /// [`Shared::enqueue`], waking the writer thread when `wake` or when it sleeps idle.
    fn enqueue_as(
        &self,
        rec: Prepared,
        waiter: Option<Waiter>,
        wake: bool,
    ) -> Result<u64, AuditError> {
        if rec.event == Event::Unknown {
            return Err(AuditError::Invalid("unknown event".into()));
        }
        if self.mode == AuditMode::Off {
            return Ok(0);
        }
        let mut q = lock(&self.queue);
        if q.closing {
            return Err(AuditError::Closed);
        }
        if self.mode == AuditMode::Async && q.items.len() >= self.capacity {
            q.lost += 1;
            let lost = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if lost == 1 || lost.is_power_of_two() {
                warn!(
                    path = %self.path.display(),
                    "audit queue full ({} records): {lost} record(s) dropped so far",
                    self.capacity
                );
            }
            return Err(AuditError::Dropped { lost });
        }
        if q.lost > 0 {
            let lost = std::mem::take(&mut q.lost);
            self.push(&mut q, Item::Lost(lost));
        }
        let wake = wake || q.idle;
        let seq = self.push(&mut q, Item::Record(Box::new(rec), waiter));
        drop(q);
        if wake {
            self.wake.notify_one();
        }
        Ok(seq)
    }

    /// Queues a checkpoint when one is due by time.
    fn queue_due_checkpoint(&self, q: &mut Queue) {
        if let Some(i) = self.checkpoint_interval
            && q.last_checkpoint.elapsed() >= i
            && !q.checkpoint_queued
            && !q.closing
        {
            q.checkpoint_queued = true;
            q.since_checkpoint = 0;
            q.next_seq += 1;
            q.oldest.get_or_insert_with(Instant::now);
            q.items.push_back(Item::Checkpoint);
        }
    }

    /// Commits what is queued (up to a batch) with the writer held: the writer thread does,
    /// and inline appenders do. On failure, strict appenders hear it and the rest goes back to
    /// the front of the queue, in order.
    fn commit_round(&self, w: &mut Writer, closing: bool, thread: bool) -> Round {
        let batch: Vec<Item> = {
            let mut q = lock(&self.queue);
            self.queue_due_checkpoint(&mut q);
            let n = q.items.len().min(MAX_BATCH);
            let batch = q.items.drain(..n).collect();
            if q.items.is_empty() {
                q.oldest = None;
            }
            batch
        };
        if batch.is_empty() {
            return Round::Empty;
        }
        w.last_batch = Instant::now();
        // Someone waits (strict mode), or an fsync is due: this batch is fsynced, and with it
        // everything written before. Only the writer thread does the due ones: an inline
        // appender must not stall its sessions on the disk.
        let sync = closing
            || (thread && w.sync_due_in().is_some_and(|d| d.is_zero()))
            || (w.fsync && batch.iter().any(|i| matches!(i, Item::Record(_, Some(_)))));
        match w.commit_items(self, batch, sync) {
            Ok(n) => {
                w.after_commit(self, n);
                Round::Done
            }
            Err((n, rest, e)) => {
                w.after_commit(self, n);
                w.failed(self, &e);
                let back = match self.mode {
                    AuditMode::Strict => {
                        let err = AuditError::Write {
                            path: w.path.clone(),
                            source: Arc::new(e),
                        };
                        // Appenders hear it (and refuse their statements); records nobody
                        // waits for (a gap sealing a tear, `query.done`) are tried again.
                        let mut own = Vec::new();
                        for item in rest {
                            match item {
                                Item::Record(_, Some(w)) => {
                                    let _ = w.send(Err(err.clone()));
                                }
                                Item::Record(r, None) => own.push(Item::Record(r, None)),
                                Item::Lost(n) => own.push(Item::Lost(n)),
                                Item::Checkpoint => {
                                    lock(&self.queue).checkpoint_queued = false;
                                }
                            }
                        }
                        own
                    }
                    // Kept, in order; the queue absorbs meanwhile, then drops.
                    AuditMode::Async | AuditMode::Off => rest,
                };
                let mut q = lock(&self.queue);
                for item in back.into_iter().rev() {
                    q.items.push_front(item);
                }
                if !q.items.is_empty() {
                    q.oldest.get_or_insert_with(Instant::now);
                }
                Round::Failed
            }
        }
    }

    /// Appends committed by the appender itself (strict, `fsync: false`): queued behind
    /// what waits, then everything queued is written, in order. The first failure, if any.
    fn append_inline(&self, recs: Vec<Prepared>) -> Result<u64, AuditError> {
        let mut waits = Vec::with_capacity(recs.len());
        for rec in recs {
            let (tx, rx) = oneshot::channel();
            self.enqueue_as(rec, Some(tx), false)?;
            waits.push(rx);
        }
        let mut last = 0;
        for mut rx in waits {
            let answer = loop {
                if let Some(r) = answered(&mut rx) {
                    break r;
                }
                // Not yet written: commit what is queued. The writer thread may be at it: then
                // holding the writer means it is done, and the answer is there.
                let mut w = lock(&self.writer);
                if let Some(r) = answered(&mut rx) {
                    break r;
                }
                self.commit_round(&mut w, false, false);
            };
            last = answer?;
        }
        Ok(last)
    }

    fn shut_down(&self, thread: &Mutex<Option<JoinHandle<()>>>) {
        lock(&self.queue).closing = true;
        self.wake.notify_all();
        if let Some(t) = lock(thread).take() {
            // The writer thread never panics on purpose; if it did, there is nothing to add.
            let _ = t.join();
        }
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
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(open_err)?;
        }
        let journal_lock = lock_journal(&path).map_err(open_err)?;
        let recovered = recover(&path).map_err(open_err)?;
        let file = open_append(&path).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        if meta.is_file() && meta.mode() & 0o077 != 0 {
            warn!(
                "audit journal {} is readable by others (mode {:o}); it should be 0600",
                path.display(),
                meta.mode() & 0o777
            );
        }
        let mut writer = Writer {
            _lock: journal_lock,
            path: path.clone(),
            file: Some(file),
            size: meta.len(),
            max_bytes: cfg.max_bytes,
            keep_files: cfg.keep_files,
            fsync: cfg.fsync,
            chain: Chain {
                next_seq: recovered.next_seq,
                prev_hash: recovered.prev_hash.clone(),
                cp_first: None,
                cp_count: 0,
            },
            last_batch: Instant::now(),
            unsynced: None,
            journald: cfg
                .journald
                .on()
                .then(|| Journald::new(&cfg.journald_socket)),
            suspect: false,
            failing_since: None,
            failures_logged: 0,
        };
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
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                next_seq: recovered.next_seq,
                since_checkpoint: 0,
                checkpoint_queued: false,
                lost: 0,
                closing: false,
                idle: false,
                oldest: None,
                last_checkpoint: Instant::now(),
            }),
            wake: Condvar::new(),
            last_seq: AtomicU64::new(recovered.next_seq - 1),
            records_written: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            journald_errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            last_hash: Mutex::new(recovered.prev_hash),
            last_error: Mutex::new(None),
            checkpoint_interval: (cfg.checkpoint_seconds > 0)
                .then(|| Duration::from_secs(cfg.checkpoint_seconds)),
            writer: Mutex::new(writer),
            inline: cfg.mode == AuditMode::Strict && !cfg.fsync,
        });
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
            let entries = vec![Item::Record(Box::new(Prepared::from_record(&gap)), None)];
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
                .spawn(move || run(&shared))
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
                    queue: Mutex::new(Queue {
                        items: VecDeque::new(),
                        next_seq: 1,
                        since_checkpoint: 0,
                        checkpoint_queued: false,
                        lost: 0,
                        closing: false,
                        idle: true,
                        oldest: None,
                        last_checkpoint: Instant::now(),
                    }),
                    wake: Condvar::new(),
                    last_seq: AtomicU64::new(0),
                    records_written: AtomicU64::new(0),
                    write_errors: AtomicU64::new(0),
                    journald_errors: AtomicU64::new(0),
                    dropped: AtomicU64::new(0),
                    last_hash: Mutex::new(String::new()),
                    last_error: Mutex::new(None),
                    checkpoint_interval: None,
                    // Never written to: nothing is queued in this mode.
                    writer: Mutex::new(Writer {
                        _lock: None,
                        path: cfg.path.clone(),
                        file: None,
                        size: 0,
                        max_bytes: cfg.max_bytes,
                        keep_files: cfg.keep_files,
                        fsync: false,
                        chain: Chain {
                            next_seq: 1,
                            prev_hash: GENESIS_HASH.into(),
                            cp_first: None,
                            cp_count: 0,
                        },
                        last_batch: Instant::now(),
                        unsynced: None,
                        journald: None,
                        suspect: false,
                        failing_since: None,
                        failures_logged: 0,
                    }),
                    inline: false,
                }),
                thread: Mutex::new(None),
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
            return shared.append_inline(vec![rec]);
        }
        let (tx, rx) = oneshot::channel();
        shared.enqueue(rec, Some(tx))?;
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
            return shared.append_inline(vec![rec]);
        }
        let (tx, rx) = oneshot::channel();
        shared.enqueue(rec, Some(tx))?;
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
    pub async fn append_all(&self, recs: Vec<Prepared>) -> Result<(), AuditError> {
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
        let mut waits = Vec::with_capacity(recs.len());
        let mut first_err = None;
        for r in recs {
            let (tx, rx) = oneshot::channel();
            match shared.enqueue(r, Some(tx)) {
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
        }
    }

    /// Stops accepting records, writes what is queued, and stops the writer thread. Blocks
    /// until then (call it from `spawn_blocking` in async code). Later appends fail with
    /// [`AuditError::Closed`].
    pub fn close(&self) {
        self.inner.shared.shut_down(&self.inner.thread);
    }
}

/// Where the chain stands.
#[derive(Clone)]
struct Chain {
    next_seq: u64,
    prev_hash: String,
    /// First seq and number of records since the last checkpoint.
    cp_first: Option<u64>,
    cp_count: u64,
}

/// What a commit round found.
enum Round {
    /// Nothing was queued.
    Empty,
    /// A batch was written.
    Done,
    /// A batch failed (its appenders heard it; the rest waits for a retry).
    Failed,
}

/// The file and the chain: whoever holds it (under [`Shared::writer`]) writes.
struct Writer {
    /// Held while the journal is open: one writer per chain.
    _lock: Option<nix::fcntl::Flock<File>>,
    path: PathBuf,
    /// `None` after a rotation that could not create the new file.
    file: Option<File>,
    /// Bytes in the current file, as far as we wrote them.
    size: u64,
    max_bytes: u64,
    keep_files: usize,
    fsync: bool,
    chain: Chain,
    /// When the last batch was taken (the thread stays awake for lazy records while busy).
    last_batch: Instant,
    /// When the oldest write not yet fsynced happened.
    unsynced: Option<Instant>,
    journald: Option<Journald>,
    /// A failed write could not be cut back: the file may hold a torn line past `size`.
    suspect: bool,
    failing_since: Option<Instant>,
    failures_logged: u64,
}

/// The writer thread: commits what appenders queue (group commit), fsyncs what was written
/// when it is due, writes checkpoints, and retries a failing journal with back-off.
fn run(s: &Shared) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let closing = {
            // What the timing depends on, read without holding the writer while waiting.
            let (busy, sync_due) = {
                let w = lock(&s.writer);
                (w.last_batch.elapsed() < IDLE_AFTER, w.sync_due_in())
            };
            let mut q = lock(&s.queue);
            s.queue_due_checkpoint(&mut q);
            // Appenders that commit inline take what is queued with their own records: what
            // waits here only needs the writer once it has waited `LAZY_FLUSH` for one.
            let young = match q.oldest {
                Some(t) if s.inline && !q.items.is_empty() => LAZY_FLUSH.checked_sub(t.elapsed()),
                _ => None,
            };
            if (q.items.is_empty() || young.is_some())
                && !q.closing
                && sync_due.is_none_or(|d| !d.is_zero())
            {
                // Busy lately: look again soon (records nobody waits for do not wake us).
                // Quiet: sleep until woken, or until an fsync or a checkpoint is due.
                q.idle = !busy && young.is_none();
                let wait = if let Some(left) = young {
                    left.max(Duration::from_micros(100))
                } else if busy {
                    LAZY_FLUSH
                } else if let Some(due) = sync_due {
                    due
                } else {
                    s.checkpoint_interval
                        .map_or(Duration::from_secs(3600), |i| {
                            i.saturating_sub(q.last_checkpoint.elapsed())
                        })
                        .max(Duration::from_millis(10))
                };
                q = s
                    .wake
                    .wait_timeout(q, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                // What an inline appender left young is its business a while longer.
                if s.inline
                    && !q.closing
                    && q.oldest.is_some_and(|t| t.elapsed() < LAZY_FLUSH)
                    && sync_due.is_none_or(|d| !d.is_zero())
                {
                    q.idle = false;
                    continue;
                }
            }
            q.idle = false;
            q.closing
        };
        let mut w = lock(&s.writer);
        match s.commit_round(&mut w, closing, true) {
            Round::Done => backoff = Duration::from_millis(50),
            Round::Empty => {
                // Woken for an fsync that is due (or closing): written records go to disk,
                // without holding the writer (inline appenders keep writing meanwhile).
                if w.unsynced.is_some() && (closing || w.sync_due_in().is_some_and(|d| d.is_zero()))
                {
                    let file = w.file.as_ref().and_then(|f| f.try_clone().ok());
                    let size = w.size;
                    drop(w);
                    if let Some(f) = file {
                        let synced = f.sync_data();
                        let mut w = lock(&s.writer);
                        match synced {
                            // What was written since waits for the next round.
                            Ok(()) if w.size == size => w.unsynced = None,
                            Ok(()) => w.unsynced = Some(Instant::now()),
                            Err(e) => w.failed(s, &e),
                        }
                    }
                }
                if closing && lock(&s.queue).items.is_empty() {
                    return;
                }
            }
            Round::Failed => {
                let failing_for = w.failing_since.map(|t| t.elapsed());
                drop(w);
                if closing && failing_for.is_some_and(|t| t > Duration::from_secs(5)) {
                    error!(
                        "audit journal {}: giving up on {} record(s) at shutdown",
                        s.path.display(),
                        lock(&s.queue).items.len()
                    );
                    return;
                }
                // Strict appenders are waiting behind this: retry sooner.
                let cap = match s.mode {
                    AuditMode::Strict => Duration::from_millis(200),
                    AuditMode::Async | AuditMode::Off => Duration::from_secs(2),
                };
                std::thread::sleep(backoff.min(cap));
                backoff = (backoff * 2).min(cap);
                continue;
            }
        }
        // Room again after drops: say how many were lost.
        let mut q = lock(&s.queue);
        if q.lost > 0 && q.items.len() < s.capacity {
            let lost = std::mem::take(&mut q.lost);
            s.push(&mut q, Item::Lost(lost));
        }
    }
}

impl Writer {
    /// Publishes the committed records' results: waiters answered, status updated, lines
    /// mirrored to journald.
    fn after_commit(&mut self, s: &Shared, committed: Vec<Committed>) {
        if committed.is_empty() {
            return;
        }
        if let Some(t) = self.failing_since.take() {
            info!(
                "audit journal {} writable again after {:.1}s",
                self.path.display(),
                t.elapsed().as_secs_f64()
            );
            self.failures_logged = 0;
            *lock(&s.last_error) = None;
        }
        if committed.iter().any(|c| c.event == Event::AuditCheckpoint) {
            let mut q = lock(&s.queue);
            q.last_checkpoint = Instant::now();
            q.checkpoint_queued = false;
        }
        let last = &committed[committed.len() - 1].sealed;
        s.last_seq.store(last.seq, Ordering::Relaxed);
        lock(&s.last_hash).clone_from(&last.hash);
        s.records_written
            .fetch_add(committed.len() as u64, Ordering::Relaxed);
        let mut sent = Vec::with_capacity(committed.len());
        for c in committed {
            if let Some(w) = c.waiter {
                let _ = w.send(Ok(c.sealed.seq));
            }
            if s.journald.mirrors(c.event) {
                sent.push((c.sealed, journald::priority(c.event, c.denial)));
            }
        }
        if let Some(j) = &mut self.journald {
            for (sealed, priority) in &sent {
                j.send(&sealed.line, sealed.seq, *priority);
            }
            s.journald_errors.store(j.errors(), Ordering::Relaxed);
        }
    }

    fn failed(&mut self, s: &Shared, e: &io::Error) {
        s.write_errors.fetch_add(1, Ordering::Relaxed);
        *lock(&s.last_error) = Some(e.to_string());
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        self.failures_logged += 1;
        let n = self.failures_logged;
        if n == 1 || n.is_power_of_two() {
            error!(
                "AUDIT JOURNAL {} CANNOT BE WRITTEN: {e} ({n} failed batch(es) in {:.1}s; {})",
                self.path.display(),
                since.elapsed().as_secs_f64(),
                match s.mode {
                    AuditMode::Strict => "statements are refused until it can",
                    AuditMode::Async | AuditMode::Off => "records are queued, then dropped",
                }
            );
        }
    }

    /// Chains, writes and fsyncs `items`, rotating as needed. On success, every record with
    /// its waiter; on failure, those committed before the failing chunk, the items not
    /// written (with their waiters, to fail or retry), and the error. The chain is rolled back
    /// to the last committed record.
    #[allow(
        clippy::type_complexity,
        reason = "a private result shape used in two places"
    )]
    fn commit_items(
        &mut self,
        s: &Shared,
        items: Vec<Item>,
        sync: bool,
    ) -> Result<Vec<Committed>, (Vec<Committed>, Vec<Item>, io::Error)> {
        if self.suspect
            && let Err(e) = self.reconcile(s)
        {
            return Err((Vec::new(), items, e));
        }
        let mut committed: Vec<Committed> = Vec::with_capacity(items.len());
        let mut chunk: Vec<(Committed, Prepared, Kind)> = Vec::new();
        let mut buf: Vec<u8> = Vec::with_capacity(items.len() * 768);
        let mut chunk_chain = self.chain.clone();
        let mut items = VecDeque::from(items);
        // Items not written, in order, waiters attached again.
        let unwritten = |chunk: Vec<(Committed, Prepared, Kind)>, items: VecDeque<Item>| {
            chunk
                .into_iter()
                .map(|(c, p, k)| k.item(p, c.waiter))
                .chain(items)
                .collect::<Vec<Item>>()
        };
        while let Some(item) = items.pop_front() {
            let before = self.chain.clone();
            let (prepared, waiter, kind) = self.finalize(item);
            let sealed = prepared.seal(self.chain.next_seq, &self.chain.prev_hash);
            self.chain.prev_hash.clone_from(&sealed.hash);
            self.chain.next_seq += 1;
            let line_len = sealed.line.len() as u64;
            let pending = self.size + buf.len() as u64;
            let c = Committed {
                event: prepared.event,
                denial: prepared.denial,
                sealed,
                waiter,
            };
            if pending > 0 && pending + line_len > self.max_bytes {
                // The file is complete and on disk before it is renamed.
                if let Err(e) = self.flush(&buf, true) {
                    self.chain = chunk_chain;
                    chunk.push((c, prepared, kind));
                    return Err((committed, unwritten(chunk, items), e));
                }
                committed.extend(chunk.drain(..).map(|(c, _, _)| c));
                buf.clear();
                if let Err(e) = self.rotate() {
                    error!(
                        "audit journal {}: rotation failed: {e}; still appending to it",
                        self.path.display()
                    );
                }
                chunk_chain = before;
            }
            buf.extend_from_slice(&c.sealed.line);
            chunk.push((c, prepared, kind));
        }
        if let Err(e) = self.flush(&buf, sync) {
            self.chain = chunk_chain;
            return Err((committed, unwritten(chunk, VecDeque::new()), e));
        }
        committed.extend(chunk.into_iter().map(|(c, _, _)| c));
        Ok(committed)
    }

    /// Turns an item into the record it stands for, with its waiter and what kind of item
    /// it was (so that it can be queued again if the write fails), and keeps the checkpoint
    /// count. Finalizing again (a retry) gives the same result: the seal is made anew.
    fn finalize(&mut self, item: Item) -> (Prepared, Option<Waiter>, Kind) {
        let seq = self.chain.next_seq;
        let (rec, waiter, kind) = match item {
            Item::Record(rec, waiter) => (*rec, waiter, Kind::Record),
            Item::Checkpoint => {
                let mut r =
                    Record::new(Event::AuditCheckpoint).detail("records", self.chain.cp_count);
                if let Some(first) = self.chain.cp_first {
                    r = r.detail("first_seq", first).detail("last_seq", seq - 1);
                }
                (Prepared::from_record(&r), None, Kind::Checkpoint)
            }
            Item::Lost(n) => (
                Prepared::from_record(
                    &Record::new(Event::AuditGap)
                        .detail("lost", n)
                        .detail("reason", "async queue full"),
                ),
                None,
                Kind::Lost(n),
            ),
        };
        match rec.event {
            Event::AuditCheckpoint => {
                self.chain.cp_first = None;
                self.chain.cp_count = 0;
            }
            _ => {
                self.chain.cp_first.get_or_insert(seq);
                self.chain.cp_count += 1;
            }
        }
        (rec, waiter, kind)
    }

    /// Writes and fsyncs `buf` at the end of the current file; on failure, cuts the file back.
    fn flush(&mut self, buf: &[u8], sync: bool) -> io::Result<()> {
        if buf.is_empty() {
            if sync
                && self.unsynced.is_some()
                && let Some(file) = &self.file
            {
                file.sync_data()?;
                self.unsynced = None;
            }
            return Ok(());
        }
        if self.file.is_none() {
            let file = open_append(&self.path)?;
            self.size = file.metadata()?.len();
            self.file = Some(file);
        }
        let Some(file) = &mut self.file else {
            return Err(io::Error::other("no journal file"));
        };
        let result = file
            .write_all(buf)
            .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
        match result {
            Ok(()) => {
                self.size += buf.len() as u64;
                if sync {
                    self.unsynced = None;
                } else {
                    self.unsynced.get_or_insert_with(Instant::now);
                }
                Ok(())
            }
            Err(e) => {
                // Nothing of this batch was acknowledged: cut back what may have landed.
                if file.set_len(self.size).is_err() {
                    self.suspect = true;
                }
                Err(e)
            }
        }
    }

    /// How long until written records must be fsynced (zero: now); `None` when everything
    /// written is on disk.
    fn sync_due_in(&self) -> Option<Duration> {
        let after = if self.fsync { LAZY_SYNC } else { PERIODIC_SYNC };
        self.unsynced
            .map(|since| after.saturating_sub(since.elapsed()))
    }

    /// Writes raw bytes (the newline that seals a torn line).
    fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(file) = &mut self.file else {
            return Err(io::Error::other("no journal file"));
        };
        file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// After a failed write that could not be cut back: if the file holds bytes past what we
    /// wrote, put the next record on a fresh line and queue an `audit.gap` that names them.
    fn reconcile(&mut self, s: &Shared) -> io::Result<()> {
        let Some(file) = &mut self.file else {
            return Ok(());
        };
        let len = file.metadata()?.len();
        if len > self.size {
            let mut last = [0u8];
            let mut f = File::open(&self.path)?;
            f.seek(SeekFrom::Start(len - 1))?;
            f.read_exact(&mut last)?;
            let torn = len - self.size;
            self.size = len;
            if last[0] != b'\n' {
                self.write_raw(b"\n")?;
            }
            let gap = Record::new(Event::AuditGap)
                .detail("torn_bytes", torn)
                .detail("after_seq", self.chain.next_seq.checked_sub(1))
                .detail("reason", "failed write could not be cut back");
            let mut q = lock(&s.queue);
            s.push(
                &mut q,
                Item::Record(Box::new(Prepared::from_record(&gap)), None),
            );
        }
        self.suspect = false;
        Ok(())
    }

    /// `path` -> `path.1`, `path.1` -> `path.2`, …; the oldest beyond `keep_files` goes.
    fn rotate(&mut self) -> io::Result<()> {
        let keep = self.keep_files;
        let existing = rotated_files(&self.path);
        // Those that would end up beyond `keep_files` after the shift go first.
        for (n, p) in &existing {
            if keep > 0 && *n >= keep {
                std::fs::remove_file(p)?;
            }
        }
        for (n, p) in existing.iter().rev() {
            if keep == 0 || *n < keep {
                std::fs::rename(p, rotated_name(&self.path, n + 1))?;
            }
        }
        self.file = None;
        std::fs::rename(&self.path, rotated_name(&self.path, 1))?;
        let file = open_append(&self.path)?;
        self.size = 0;
        self.file = Some(file);
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        info!(
            "audit journal rotated: {} -> {}",
            self.path.display(),
            rotated_name(&self.path, 1).display()
        );
        Ok(())
    }
}

/// What a finalized record was queued as.
#[derive(Clone, Copy)]
enum Kind {
    Record,
    Checkpoint,
    Lost(u64),
}

/// A record written in a batch, waiting for the batch's fsync to be answered.
struct Committed {
    event: Event,
    denial: bool,
    sealed: Sealed,
    waiter: Option<Waiter>,
}

impl Kind {
    /// The queue item again, for a retry or to fail its waiter.
    fn item(self, rec: Prepared, waiter: Option<Waiter>) -> Item {
        match self {
            Kind::Record => Item::Record(Box::new(rec), waiter),
            Kind::Checkpoint => Item::Checkpoint,
            Kind::Lost(n) => Item::Lost(n),
        }
    }
}

/// Takes the journal's lock, `PATH.lock` (0600), so that a second writer (another agent, a
/// test aid) cannot interleave its own `seq`s into the chain. Journals that are not regular
/// files (e.g. `/dev/full` in tests) are not locked.
fn lock_journal(path: &Path) -> io::Result<Option<nix::fcntl::Flock<File>>> {
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        return Ok(None);
    }
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(PathBuf::from(&name))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "another process is writing this journal (it holds {})",
                PathBuf::from(name).display()
            ),
        )),
        Err((_, e)) => Err(io::Error::from(e)),
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// `path.n`.
pub fn rotated_name(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The rotated siblings of `path` that exist, as (n, path) sorted by n (1 = newest).
pub fn rotated_files(path: &Path) -> Vec<(usize, PathBuf)> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e
                .file_name()
                .to_str()?
                .strip_prefix(&prefix)?
                .parse()
                .ok()?;
            (n > 0).then(|| (n, rotated_name(path, n)))
        })
        .collect();
    out.sort();
    out
}

/// Where the chain resumes.
struct Recovered {
    next_seq: u64,
    prev_hash: String,
    torn: Option<Torn>,
}

/// Bytes at the end of the chain that are not a complete record.
struct Torn {
    bytes: u64,
    after_seq: Option<u64>,
    /// The rotated file the tear is in, when it is not the current one.
    file: Option<String>,
    reason: &'static str,
    /// The current file does not end with a newline.
    needs_newline: bool,
}

/// The tail of one file: its last complete record and what follows it.
struct Tail {
    last: Option<(u64, String)>,
    torn_bytes: u64,
    ends_with_newline: bool,
    len: u64,
}

fn recover(path: &Path) -> io::Result<Recovered> {
    let current = scan_tail(path)?;
    let (cur_torn, cur_nl) = current.as_ref().map_or((0, true), |t| {
        (t.torn_bytes, t.ends_with_newline || t.len == 0)
    });
    if let Some(Tail {
        last: Some((seq, hash)),
        ..
    }) = &current
    {
        return Ok(Recovered {
            next_seq: seq + 1,
            prev_hash: hash.clone(),
            torn: (cur_torn > 0).then_some(Torn {
                bytes: cur_torn,
                after_seq: Some(*seq),
                file: None,
                reason: if cur_nl {
                    "last line is not a record"
                } else {
                    "last line has no newline"
                },
                needs_newline: !cur_nl,
            }),
        });
    }
    // The current file is missing, empty or holds no complete record: the chain continues
    // from the newest rotated file that has one.
    let mut torn_rotated = 0;
    let mut torn_file = None;
    for (_, rotated) in rotated_files(path) {
        let Some(t) = scan_tail(&rotated)? else {
            continue;
        };
        torn_rotated += t.torn_bytes;
        if t.torn_bytes > 0 {
            torn_file = rotated
                .file_name()
                .map(|f| f.to_string_lossy().into_owned());
        }
        if let Some((seq, hash)) = t.last {
            let bytes = torn_rotated + cur_torn;
            return Ok(Recovered {
                next_seq: seq + 1,
                prev_hash: hash,
                torn: (bytes > 0).then_some(Torn {
                    bytes,
                    after_seq: Some(seq),
                    file: if cur_torn > 0 { None } else { torn_file },
                    reason: "tail of the chain is not a record",
                    needs_newline: !cur_nl,
                }),
            });
        }
    }
    let bytes = torn_rotated + cur_torn;
    Ok(Recovered {
        next_seq: 1,
        prev_hash: GENESIS_HASH.into(),
        torn: (bytes > 0).then_some(Torn {
            bytes,
            after_seq: None,
            file: None,
            reason: "no complete record found",
            needs_newline: !cur_nl,
        }),
    })
}

/// The last complete record of `path` (reading backwards from the end), or `None` when the
/// file does not exist.
fn scan_tail(path: &Path) -> io::Result<Option<Tail>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let mut window: u64 = 64 * 1024;
    loop {
        let start = len.saturating_sub(window);
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::with_capacity((len - start) as usize);
        (&mut f).take(len - start).read_to_end(&mut buf)?;
        let ends_with_newline = buf.last().is_none_or(|&c| c == b'\n');
        // Complete lines, from the end; at start > 0 the first segment may be partial.
        let mut line_end = buf.iter().rposition(|&c| c == b'\n').map_or(0, |p| p + 1);
        let mut need_more = start > 0 && line_end == 0;
        while !need_more && line_end > 0 {
            let line_start = match buf[..line_end - 1].iter().rposition(|&c| c == b'\n') {
                Some(p) => p + 1,
                None if start == 0 => 0,
                None => {
                    need_more = true;
                    break;
                }
            };
            if let Some(last) = parse_head(&buf[line_start..line_end - 1]) {
                return Ok(Some(Tail {
                    last: Some(last),
                    torn_bytes: len - (start + line_end as u64),
                    ends_with_newline,
                    len,
                }));
            }
            line_end = line_start;
        }
        if !need_more {
            return Ok(Some(Tail {
                last: None,
                torn_bytes: len,
                ends_with_newline,
                len,
            }));
        }
        window = window.saturating_mul(4);
    }
}

/// `seq` and `hash` of a journal line, if it is a record.
fn parse_head(line: &[u8]) -> Option<(u64, String)> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let seq = v.get("seq")?.as_u64()?;
    let hash = v.get("hash")?.as_str()?.to_owned();
    if hash_value(&v) != hash {
        warn!(
            "audit journal: the last record (seq {seq}) does not verify; chaining on anyway \
             (run `pgwarden audit verify`)"
        );
    }
    Some((seq, hash))
}

/// A few sample records of a realistic session, for the hidden `audit write-sample` test
/// aid: `session.start`, `query` (allow), `query.done`, `query.denied` (a card number in a
/// literal), `session.end`, repeated; record `i` belongs to session `i / 5`.
pub fn sample_record(i: u64, workload: &str, keep_literals: bool) -> Record {
    let session = format!("{:016x}", 0x5a00_0000_0000_0000 + i / 5);
    let base = Record::new(Event::SessionStart)
        .session(&session)
        .workload(workload)
        .actor(super::Actor {
            cgroup: Some(format!("pgwarden-test/{workload}")),
            unit: None,
            pid: Some(4242),
            uid: Some(0),
            user: Some("root".into()),
            exe: Some("/usr/bin/python3".into()),
            comm: Some("python3".into()),
            netns: None,
            container: None,
        });
    match i % 5 {
        0 => Record {
            event: Event::SessionStart,
            ..base
        }
        .client(std::net::SocketAddr::from(([127, 0, 0, 1], 40000)))
        .server(std::net::SocketAddr::from(([127, 0, 0, 1], 5432)))
        .db(super::Db {
            user: Some("app".into()),
            database: Some("payments".into()),
            application_name: Some("mcp".into()),
        }),
        1 => Record {
            event: Event::Query,
            ..base
        }
        .statement(
            Statement::from_sql(
                &format!("SELECT id, amount FROM payments WHERE id = {i}"),
                keep_literals,
            )
            .command("SELECT")
            .objects(["public.payments"]),
        )
        .decision(super::Decision::Allow)
        .rule("read.payments")
        .policy_hash("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        2 => Record {
            event: Event::QueryDone,
            ..base
        }
        .rows(i % 7)
        .outcome(super::Outcome::Success)
        .duration(Duration::from_micros(1500 + i)),
        3 => Record {
            event: Event::QueryDenied,
            ..base
        }
        .statement(
            Statement::from_sql(
                "UPDATE payments SET card_number = '4111111111111111' WHERE id = 1",
                keep_literals,
            )
            .command("UPDATE")
            .objects(["public.payments"]),
        )
        .decision(super::Decision::Deny)
        .rule("class.write")
        .sqlstate("42501")
        .error("pgwarden: class.write: writes are not allowed")
        .detail("card", "4111 1111 1111 1111"),
        _ => Record {
            event: Event::SessionEnd,
            ..base
        }
        .duration(Duration::from_millis(20)),
    }
    .detail("sample", json!(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::verify::{self, Tamper};

    fn cfg(dir: &Path) -> AuditConfig {
        AuditConfig {
            path: dir.join("audit.jsonl"),
            journald: JournaldMirror::Off,
            checkpoint_every: 0,
            checkpoint_seconds: 0,
            ..AuditConfig::default()
        }
    }

    /// The records of a file, skipping lines that are not JSON.
    fn lines_lossy(p: &Path) -> Vec<Value> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn lines(p: &Path) -> Vec<Value> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The files of the chain, oldest first.
    fn chain_files(c: &AuditConfig) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = rotated_files(&c.path)
            .into_iter()
            .rev()
            .map(|x| x.1)
            .collect();
        v.push(c.path.clone());
        v
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
            assert_eq!(hash_value(r), r["hash"].as_str().unwrap());
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
            keep_files: 0,
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
    fn rotation_keeps_the_chain_and_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let c = AuditConfig {
            max_bytes: 4096,
            keep_files: 3,
            ..cfg(dir.path())
        };
        let j = Journal::open(&c).unwrap();
        for i in 0..60 {
            j.append_blocking(sample_record(i, "w", false)).unwrap();
        }
        drop(j);
        let rotated = rotated_files(&c.path);
        assert_eq!(
            rotated.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![1, 2, 3],
            "keep_files bounds the rotated files"
        );
        for (_, p) in &rotated {
            assert!(std::fs::metadata(p).unwrap().len() <= 4096);
        }
        // The chain runs through .3, .2, .1 and the current file without a break.
        let files = chain_files(&c);
        let all: Vec<Value> = files.iter().flat_map(|p| lines(p)).collect();
        for w in all.windows(2) {
            assert_eq!(w[1]["prev_hash"], w[0]["hash"]);
        }
        assert_eq!(all.last().unwrap()["seq"], 60);
        // Given in any order, verify sorts them by first seq; the oldest start is a warning.
        let mut shuffled = files.clone();
        shuffled.reverse();
        let report = verify::verify(&shuffled);
        assert!(report.ok(), "{report}");
        assert!(report.first_seq.unwrap() > 1);
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.message.contains("chain starts at seq")),
            "{report}"
        );
    }

    #[test]
    fn keep_files_zero_keeps_every_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = AuditConfig {
            max_bytes: 4096,
            keep_files: 0,
            ..cfg(dir.path())
        };
        let j = Journal::open(&c).unwrap();
        for i in 0..60 {
            j.append_blocking(sample_record(i, "w", false)).unwrap();
        }
        drop(j);
        let rotated = rotated_files(&c.path);
        assert!(rotated.len() >= 5, "{rotated:?}");
        assert_eq!(rotated.last().unwrap().0, rotated.len());
        let report = verify::verify(&chain_files(&c));
        assert!(report.ok(), "{report}");
        assert_eq!((report.first_seq, report.last_seq), (Some(1), Some(60)));
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
        std::fs::rename(&c.path, rotated_name(&c.path, 1)).unwrap();
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
}
