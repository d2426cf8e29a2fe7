//! The writer thread: commits what appenders queue (group commit), fsyncs what was written
//! when it is due, writes checkpoints, and retries a failing journal with back-off.
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use tracing::error;

use super::commit::Round;
use super::queue::{Item, Shared, lock};
use crate::audit::config::AuditMode;

/// How long records nobody waits for (`query.done`, async mode) may sit in the queue while
/// the writer is busy: they go with the next batch, or after this.
const LAZY_FLUSH: Duration = Duration::from_millis(2);

/// How long without records before the writer sleeps until woken.
const IDLE_AFTER: Duration = Duration::from_secs(1);

/// Runs until the journal closes and its queue is written (or given up on).
pub(super) fn run(s: &Shared) {
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
        if let Some(h) = &mut w.head
            && let Err(e) = h.sync(closing)
        {
            error!("audit journal: cannot fsync the chain's head: {e}");
        }
        match s.commit_round(&mut w, closing) {
            Round::Done => {
                backoff = Duration::from_millis(50);
                sync_due(s, w, closing);
            }
            Round::Empty => {
                sync_due(s, w, closing);
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

/// An fsync that is due (or closing): written records go to disk without holding the writer
/// (inline appenders keep writing meanwhile; what they write waits for the next one).
fn sync_due(s: &Shared, w: std::sync::MutexGuard<'_, super::commit::Writer>, closing: bool) {
    if w.unsynced.is_none() || !(closing || w.sync_due_in().is_some_and(|d| d.is_zero())) {
        return;
    }
    let file = w.file.as_ref().and_then(|f| f.try_clone().ok());
    let size = w.size;
    drop(w);
    if let Some(f) = file {
        let synced = f.sync_data();
        let mut w = lock(&s.writer);
        match synced {
            Ok(()) if w.size == size => w.unsynced = None,
            Ok(()) => w.unsynced = Some(Instant::now()),
            Err(e) => w.failed(s, &e),
        }
    }
}
