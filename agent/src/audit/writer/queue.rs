//! The queue between appenders and whoever writes: records (with their appender's waiter,
//! when one waits), checkpoints and counts of dropped records, each holding the `seq` it gets.
use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::warn;

use super::commit::Writer;
use super::error::AuditError;
use crate::audit::canon::Prepared;
use crate::audit::config::{AuditMode, JournaldMirror};
use crate::audit::record::Event;

/// Who waits for a record to be written: an appender awaiting its answer (a channel), or one
/// committing inline on its own thread (a slot it reuses: no allocation per record).
pub(super) enum Waiter {
    Channel(oneshot::Sender<Result<u64, AuditError>>),
    Slot(SlotWaiter),
}

impl Waiter {
    /// Answers the appender (one that stopped waiting does not mind).
    pub(super) fn send(self, answer: Result<u64, AuditError>) {
        match self {
            Waiter::Channel(tx) => {
                let _ = tx.send(answer);
            }
            Waiter::Slot(mut s) => s.answer(answer),
        }
    }
}

/// Where a sealed record's buffer goes: back to the inline appender that built it, with its
/// answer (whichever thread sealed it, the builder's next record is built in it), else to
/// the spares of the sealing thread.
pub(super) fn give_back(waiter: Option<&mut Waiter>, rec: Prepared) {
    match waiter {
        Some(Waiter::Slot(s)) => s.spare = Some(rec.into_spare()),
        _ => rec.recycle(),
    }
}

impl From<oneshot::Sender<Result<u64, AuditError>>> for Waiter {
    fn from(tx: oneshot::Sender<Result<u64, AuditError>>) -> Waiter {
        Waiter::Channel(tx)
    }
}

/// Where an inline appender's answer lands, with its record's buffer.
#[derive(Default)]
pub(super) struct Slot(Mutex<Answer>);

#[derive(Default)]
struct Answer {
    result: Option<Result<u64, AuditError>>,
    spare: Option<Vec<u8>>,
}

impl Slot {
    /// The answer, if there is one (taking it). Called by the appender, on its own thread:
    /// the record's buffer becomes one of this thread's spares.
    pub(super) fn take(&self) -> Option<Result<u64, AuditError>> {
        let (result, spare) = {
            let mut a = lock(&self.0);
            (a.result.take()?, a.spare.take())
        };
        if let Some(b) = spare {
            crate::audit::canon::keep_spare(b);
        }
        Some(result)
    }
}

/// The writing side of a [`Slot`]: dropped unanswered (its record discarded), it answers
/// [`AuditError::Closed`], as a dropped channel would.
pub(super) struct SlotWaiter {
    slot: Option<Arc<Slot>>,
    /// The record's buffer once it is sealed, handed over with the answer.
    spare: Option<Vec<u8>>,
}

impl SlotWaiter {
    pub(super) fn new(slot: &Arc<Slot>) -> SlotWaiter {
        SlotWaiter {
            slot: Some(Arc::clone(slot)),
            spare: None,
        }
    }

    fn answer(&mut self, answer: Result<u64, AuditError>) {
        if let Some(s) = self.slot.take() {
            let mut a = lock(&s.0);
            a.result = Some(answer);
            a.spare = self.spare.take();
        }
    }
}

impl Drop for SlotWaiter {
    fn drop(&mut self) {
        self.answer(Err(AuditError::Closed));
    }
}

thread_local! {
    /// Slots of this thread's finished inline appends, for its next ones.
    static SLOTS: RefCell<Vec<Arc<Slot>>> = const { RefCell::new(Vec::new()) };
}

/// Most slots a thread keeps.
const KEEP_SLOTS: usize = 8;

/// A slot for an inline append on this thread (a kept one when there is one).
pub(super) fn take_slot() -> Arc<Slot> {
    SLOTS.with_borrow_mut(Vec::pop).unwrap_or_default()
}

/// Keeps `slot`, whose answer was taken, for this thread's next inline append. Its waiter
/// has answered (a waiter answers once), so nothing writes to it again even if the writer
/// has not dropped its handle yet.
pub(super) fn keep_slot(slot: Arc<Slot>) {
    *lock(&slot.0) = Answer::default();
    SLOTS.with_borrow_mut(|kept| {
        if kept.len() < KEEP_SLOTS {
            kept.push(slot);
        }
    });
}

pub(super) enum Item {
    Record(Prepared, Option<Waiter>),
    Checkpoint,
    Lost(u64),
}

pub(super) struct Queue {
    pub(super) items: VecDeque<Item>,
    /// The `seq` the next queued item will get (async mode hands it out).
    pub(super) next_seq: u64,
    /// Records queued since the last checkpoint was queued.
    pub(super) since_checkpoint: u64,
    pub(super) checkpoint_queued: bool,
    /// Dropped records not yet reported by an `audit.gap`.
    pub(super) lost: u64,
    pub(super) closing: bool,
    /// The writer sleeps until woken (no records for a while): lazy records wake it.
    pub(super) idle: bool,
    /// When the oldest queued item was queued.
    pub(super) oldest: Option<Instant>,
    /// When the last checkpoint was written.
    pub(super) last_checkpoint: Instant,
}

/// What happened to the journal's files, for status and metrics.
#[derive(Default)]
pub(super) struct FileCounters {
    /// Times the live file was found unlinked, renamed, replaced, truncated or changed.
    pub(super) reopens: AtomicU64,
    /// What was last found done to it.
    pub(super) last_reopen: Mutex<Option<String>>,
    /// Rotations since the journal was opened.
    pub(super) rotations: AtomicU64,
    /// Rotated files compressed, and compressions that failed.
    pub(super) archived: AtomicU64,
    pub(super) archive_errors: AtomicU64,
    /// Rotated files and records deleted by retention, and the last deletion.
    pub(super) retention_files: AtomicU64,
    pub(super) retention_records: AtomicU64,
    pub(super) last_retention: Mutex<Option<String>>,
    /// Free bytes on the journal's file system when last looked at (0: not looked at).
    pub(super) free_bytes: AtomicU64,
}

pub(super) struct Shared {
    pub(super) path: PathBuf,
    pub(super) mode: AuditMode,
    pub(super) capacity: usize,
    pub(super) keep_literals: bool,
    pub(super) journald: JournaldMirror,
    pub(super) checkpoint_every: u64,
    pub(super) queue: Mutex<Queue>,
    pub(super) wake: Condvar,
    pub(super) last_seq: AtomicU64,
    pub(super) records_written: AtomicU64,
    pub(super) write_errors: AtomicU64,
    pub(super) journald_errors: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) last_hash: Mutex<String>,
    pub(super) last_error: Mutex<Option<String>>,
    /// What happened to the journal's files (status and metrics).
    pub(super) files: FileCounters,
    /// `audit.checkpoint` at least this often.
    pub(super) checkpoint_interval: Option<Duration>,
    /// The file and the chain. Whoever holds it writes: the writer thread, or (strict mode
    /// without per-statement fsync) an appender committing inline. Taken before `queue`.
    pub(super) writer: Mutex<Writer>,
    /// Appenders commit their records themselves (strict, `fsync: false`): no thread hand-off
    /// on a statement's path.
    pub(super) inline: bool,
}

impl Queue {
    /// An empty queue whose first item gets `next_seq`; `idle`: the writer sleeps until woken.
    pub(super) fn new(next_seq: u64, idle: bool) -> Queue {
        Queue {
            items: VecDeque::new(),
            next_seq,
            since_checkpoint: 0,
            checkpoint_queued: false,
            lost: 0,
            closing: false,
            idle,
            oldest: None,
            last_checkpoint: Instant::now(),
        }
    }
}

/// Locks `m`; a lock poisoned by a panic is taken as it is, so the journal keeps going.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Queues one item, keeping the seq reservation and the count checkpoints in step.
    pub(super) fn push(&self, q: &mut Queue, item: Item) -> u64 {
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
    pub(super) fn enqueue(&self, rec: Prepared, waiter: Option<Waiter>) -> Result<u64, AuditError> {
        let wake = waiter.is_some();
        self.enqueue_as(rec, waiter, wake)
    }

    /// [`Shared::enqueue`], waking the writer thread when `wake` or when it sleeps idle.
    pub(super) fn enqueue_as(
        &self,
        rec: Prepared,
        waiter: Option<Waiter>,
        wake: bool,
    ) -> Result<u64, AuditError> {
        if rec.event == Event::Unknown {
            return Err(AuditError::UnknownEvent);
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
        let seq = self.push(&mut q, Item::Record(rec, waiter));
        drop(q);
        if wake {
            self.wake.notify_one();
        }
        Ok(seq)
    }

    /// Queues a checkpoint when one is due by time.
    pub(super) fn queue_due_checkpoint(&self, q: &mut Queue) {
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

    /// Queues a record the writer makes itself (what was done to the live file): in strict
    /// mode as the very next record; in async mode behind what is queued, so that the `seq`s
    /// handed out stay exact.
    pub(super) fn queue_note(&self, note: Prepared) {
        let mut q = lock(&self.queue);
        let item = Item::Record(note, None);
        if self.mode == AuditMode::Strict {
            q.next_seq += 1;
            q.items.push_front(item);
            q.oldest.get_or_insert_with(Instant::now);
        } else {
            self.push(&mut q, item);
        }
        drop(q);
        self.wake.notify_one();
    }

    /// Appends a record and waits until it is written (on disk when `fsync` is on), whatever
    /// the mode: for records that must be in the journal before something is done (the
    /// archiver's `audit.retention` before a deletion). For synchronous code only.
    pub(super) fn append_wait(&self, rec: Prepared) -> Result<u64, AuditError> {
        if self.mode == AuditMode::Off {
            return Err(AuditError::Closed);
        }
        if self.inline {
            return self.append_inline(std::iter::once(rec));
        }
        let (tx, rx) = oneshot::channel();
        self.enqueue(rec, Some(tx.into()))?;
        rx.blocking_recv().unwrap_or(Err(AuditError::Closed))
    }

    pub(super) fn shut_down(&self, thread: &Mutex<Option<JoinHandle<()>>>) {
        lock(&self.queue).closing = true;
        self.wake.notify_all();
        if let Some(t) = lock(thread).take() {
            // The writer thread never panics on purpose; if it did, there is nothing to add.
            let _ = t.join();
        }
    }
}
