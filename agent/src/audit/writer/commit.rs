//! Group commit: whoever holds the [`Writer`] (the writer thread, or an appender committing
//! inline) takes a batch off the queue, chains it (`seq`, `prev_hash`, `hash`), writes it with
//! one fsync and answers every appender of the batch; a failed batch goes back to the front of
//! the queue, or fails its strict appenders.
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{error, info};

use super::archive::Signal;
use super::error::AuditError;
use super::gate::Gate;
use super::head::Head;
use super::queue::{Item, Shared, Slot, SlotWaiter, Waiter, give_back, keep_slot, lock, take_slot};
use super::space::Space;
use crate::audit::canon::{Hash, Prepared};
use crate::audit::config::AuditMode;
use crate::audit::journald::{self, Journald};
use crate::audit::record::{Event, Record};
use smallvec::SmallVec;

/// Most records written (and fsynced) as one batch.
const MAX_BATCH: usize = 4096;

/// With `fsync: true`, records nobody waits for (`query.done`, async mode) are written at once
/// but fsynced with the next batch someone waits for, or after this.
const LAZY_SYNC: Duration = Duration::from_millis(100);

impl Shared {
    /// Commits what is queued (up to a batch) with the writer held: the writer thread does,
    /// and inline appenders do. On failure, strict appenders hear it and the rest goes back to
    /// the front of the queue, in order.
    pub(super) fn commit_round(&self, w: &mut Writer, closing: bool) -> Round {
        let mut batch = std::mem::take(&mut w.batch);
        {
            let mut q = lock(&self.queue);
            self.queue_due_checkpoint(&mut q);
            let n = q.items.len().min(MAX_BATCH);
            batch.extend(q.items.drain(..n));
            if q.items.is_empty() {
                q.oldest = None;
            }
        }
        if batch.is_empty() {
            w.batch = batch;
            return Round::Empty;
        }
        w.last_batch = Instant::now();
        // Someone waits for the disk (`fsync: true`), or the journal closes: this batch is
        // fsynced, and with it everything written before. A due group fsync is not done here:
        // the writer thread does it after the round, without holding the writer, so that
        // inline appenders do not stall on the disk.
        let sync =
            closing || (w.fsync && batch.iter().any(|i| matches!(i, Item::Record(_, Some(_)))));
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
                                    w.send(Err(err.clone()));
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
    pub(super) fn append_inline(
        &self,
        recs: impl IntoIterator<Item = Prepared>,
    ) -> Result<u64, AuditError> {
        let mut waits: SmallVec<[Arc<Slot>; 2]> = SmallVec::new();
        for rec in recs {
            let slot = take_slot();
            self.enqueue_as(rec, Some(Waiter::Slot(SlotWaiter::new(&slot))), false)?;
            waits.push(slot);
        }
        let mut last = 0;
        for slot in waits {
            let answer = loop {
                if let Some(r) = slot.take() {
                    break r;
                }
                // Not yet written: commit what is queued. The writer thread may be at it: then
                // holding the writer means it is done, and the answer is there.
                let mut w = lock(&self.writer);
                if let Some(r) = slot.take() {
                    break r;
                }
                self.commit_round(&mut w, false);
            };
            keep_slot(slot);
            last = answer?;
        }
        Ok(last)
    }
}

/// Where the chain stands.
#[derive(Clone, Default)]
pub(super) struct Chain {
    pub(super) next_seq: u64,
    pub(super) prev_hash: String,
    /// First seq and number of records since the last checkpoint.
    pub(super) cp_first: Option<u64>,
    pub(super) cp_count: u64,
}

impl Chain {
    /// `self` becomes a copy of `other`, in the buffer it has (a derived `clone_from` would
    /// allocate a new hash string).
    fn copy_from(&mut self, other: &Chain) {
        // Destructured: a new field cannot be forgotten here.
        let Chain {
            next_seq,
            prev_hash,
            cp_first,
            cp_count,
        } = other;
        self.next_seq = *next_seq;
        self.prev_hash.clone_from(prev_hash);
        self.cp_first = *cp_first;
        self.cp_count = *cp_count;
    }

    /// The chain resuming at `next_seq` after `prev_hash`.
    pub(super) fn new(next_seq: u64, prev_hash: String) -> Chain {
        Chain {
            next_seq,
            prev_hash,
            cp_first: None,
            cp_count: 0,
        }
    }
}

/// What a commit round found.
pub(super) enum Round {
    /// Nothing was queued.
    Empty,
    /// A batch was written.
    Done,
    /// A batch failed (its appenders heard it; the rest waits for a retry).
    Failed,
}

/// The file and the chain: whoever holds it (under [`Shared::writer`]) writes.
/// The largest batch buffer kept for the next batch.
const KEEP_LINES: usize = 1 << 20;
/// The most records a round's kept buffers hold room for (a batch is at most [`MAX_BATCH`]).
const KEEP_RECORDS: usize = MAX_BATCH;

pub(super) struct Writer {
    /// Held while the journal is open: one writer per chain.
    pub(super) _lock: Option<nix::fcntl::Flock<File>>,
    pub(super) path: PathBuf,
    /// `None` after a rotation that could not create the new file.
    pub(super) file: Option<File>,
    /// Bytes in the current file, as far as we wrote them.
    pub(super) size: u64,
    pub(super) max_bytes: u64,
    pub(super) fsync: bool,
    /// With `fsync: false`, written records are fsynced this often (bounding what a power loss
    /// can take; an agent crash takes nothing that was written).
    pub(super) fsync_interval: Duration,
    pub(super) chain: Chain,
    /// When the last batch was taken (the thread stays awake for lazy records while busy).
    pub(super) last_batch: Instant,
    /// When the oldest write not yet fsynced happened.
    pub(super) unsynced: Option<Instant>,
    pub(super) journald: Option<Journald>,
    /// A failed write could not be cut back: the file may hold a torn line past `size`.
    pub(super) suspect: bool,
    pub(super) failing_since: Option<Instant>,
    pub(super) failures_logged: u64,
    /// The live file's device and inode (`None`: not a regular file, not watched).
    pub(super) ident: Option<(u64, u64)>,
    /// Its mode when opened (permission bits).
    pub(super) mode: u32,
    /// The first seq written to the live file (`None`: none yet).
    pub(super) file_first: Option<u64>,
    /// The chain's head kept in the state directory.
    pub(super) head: Option<Head>,
    /// The free-space floor.
    pub(super) space: Space,
    /// Wakes the archiver after a rotation.
    pub(super) archiver: Option<Arc<Signal>>,
    /// Whether the live file needs a full look (inotify).
    pub(super) gate: Gate,
    /// The bytes of a batch being written (its buffer kept for the next batch).
    pub(super) lines: Vec<u8>,
    /// The buffers of a commit round, kept for the next: the items taken off the queue, the
    /// records written and the records of the chunk being written (all empty between
    /// rounds).
    pub(super) batch: Vec<Item>,
    pub(super) committed: Vec<Committed>,
    pub(super) chunk: Vec<(Committed, Prepared, Kind)>,
    /// Two chain positions' buffers for a round's bookkeeping.
    pub(super) spare_chains: [Chain; 2],
}

impl Writer {
    /// Publishes the committed records' results: waiters answered, status updated, lines
    /// mirrored to journald.
    pub(super) fn after_commit(&mut self, s: &Shared, mut committed: Vec<Committed>) {
        if committed.is_empty() {
            self.keep_committed(committed);
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
        let (last_seq, last_hash) = {
            let last = &committed[committed.len() - 1];
            (last.seq, last.hash)
        };
        if let Some(h) = &mut self.head
            && let Err(e) = h.note(last_seq, last_hash.as_str())
        {
            error!("audit journal: cannot store the chain's head: {e}");
        }
        s.last_seq.store(last_seq, Ordering::Relaxed);
        {
            let mut h = lock(&s.last_hash);
            h.clear();
            h.push_str(last_hash.as_str());
        }
        s.records_written
            .fetch_add(committed.len() as u64, Ordering::Relaxed);
        // Appenders first: journald is not on their path.
        for c in &mut committed {
            if let Some(w) = c.waiter.take() {
                w.send(Ok(c.seq));
            }
        }
        if let Some(j) = &mut self.journald {
            for c in &committed {
                if let Some(line) = &c.mirror {
                    j.send(line, c.seq, journald::priority(c.event, c.denial));
                }
            }
            s.journald_errors.store(j.errors(), Ordering::Relaxed);
        }
        self.keep_committed(committed);
    }

    /// Keeps the buffer of a round's committed records for the next round, emptied (unless a
    /// burst grew it past an ordinary batch).
    fn keep_committed(&mut self, mut committed: Vec<Committed>) {
        committed.clear();
        if committed.capacity() <= KEEP_RECORDS {
            self.committed = committed;
        }
    }

    pub(super) fn failed(&mut self, s: &Shared, e: &io::Error) {
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
    pub(super) fn commit_items(
        &mut self,
        s: &Shared,
        items: Vec<Item>,
        sync: bool,
    ) -> Result<Vec<Committed>, (Vec<Committed>, Vec<Item>, io::Error)> {
        let mut items = VecDeque::from(items);
        match self.watch(s) {
            // Strict mode: first, before what is written into the new file.
            Ok(Some(note)) if s.mode == AuditMode::Strict => {
                lock(&s.queue).next_seq += 1;
                items.push_front(Item::Record(note, None));
            }
            Ok(Some(note)) => s.queue_note(note),
            Ok(None) => {}
            Err(e) => return Err((Vec::new(), items.into(), e)),
        }
        if self.suspect
            && let Err(e) = self.reconcile(s)
        {
            return Err((Vec::new(), items.into(), e));
        }
        let mut committed = std::mem::take(&mut self.committed);
        committed.clear();
        let mut chunk = std::mem::take(&mut self.chunk);
        chunk.clear();
        let mut buf = std::mem::take(&mut self.lines);
        buf.clear();
        buf.reserve(items.len() * 768);
        // The chain where the chunk being written starts, and before the current item (their
        // hash buffers kept from round to round).
        let mut chunk_chain = std::mem::take(&mut self.spare_chains[0]);
        chunk_chain.copy_from(&self.chain);
        let mut before = std::mem::take(&mut self.spare_chains[1]);
        // Items not written, in order, waiters attached again.
        let unwritten = |chunk: Vec<(Committed, Prepared, Kind)>, items: VecDeque<Item>| {
            chunk
                .into_iter()
                .map(|(c, p, k)| k.item(p, c.waiter))
                .chain(items)
                .collect::<Vec<Item>>()
        };
        while let Some(item) = items.pop_front() {
            before.copy_from(&self.chain);
            let (prepared, waiter, kind) = self.finalize(item);
            // Sealed straight into the batch: the line is the tail of `buf` from `start`.
            let start = buf.len();
            let seq = self.chain.next_seq;
            let hash = prepared.seal_into(seq, &self.chain.prev_hash, &mut buf);
            self.chain.prev_hash.clear();
            self.chain.prev_hash.push_str(hash.as_str());
            self.chain.next_seq += 1;
            let line_len = (buf.len() - start) as u64;
            let pending = self.size + start as u64;
            let c = Committed {
                event: prepared.event,
                denial: prepared.denial,
                seq,
                hash,
                mirror: (self.journald.is_some() && s.journald.mirrors(prepared.event))
                    .then(|| buf[start..].to_vec()),
                waiter,
            };
            if pending > 0 && pending + line_len > self.max_bytes {
                // The file is complete and on disk before it is renamed.
                if let Err(e) = self.flush(s, &buf[..start], true, &chunk_chain) {
                    self.chain = chunk_chain;
                    chunk.push((c, prepared, kind));
                    return Err((committed, unwritten(chunk, items), e));
                }
                committed.extend(chunk.drain(..).map(|(mut c, p, _)| {
                    give_back(c.waiter.as_mut(), p);
                    c
                }));
                // The new line goes to the next file: it becomes the start of the buffer.
                buf.drain(..start);
                if let Err(e) = self.rotate(s, before.next_seq - 1) {
                    error!(
                        "audit journal {}: rotation failed: {e}; still appending to it",
                        self.path.display()
                    );
                }
                chunk_chain.copy_from(&before);
            }
            chunk.push((c, prepared, kind));
        }
        if let Err(e) = self.flush(s, &buf, sync, &chunk_chain) {
            self.chain = chunk_chain;
            return Err((committed, unwritten(chunk, VecDeque::new()), e));
        }
        committed.extend(chunk.drain(..).map(|(mut c, p, _)| {
            give_back(c.waiter.as_mut(), p);
            c
        }));
        // Kept unless a burst grew them past what an ordinary batch needs.
        if buf.capacity() <= KEEP_LINES {
            self.lines = buf;
        }
        if chunk.capacity() <= KEEP_RECORDS {
            self.chunk = chunk;
        }
        self.spare_chains = [chunk_chain, before];
        let items = Vec::from(items);
        if items.capacity() <= KEEP_RECORDS {
            self.batch = items;
        }
        Ok(committed)
    }

    /// Turns an item into the record it stands for, with its waiter and what kind of item
    /// it was (so that it can be queued again if the write fails), and keeps the checkpoint
    /// count. Finalizing again (a retry) gives the same result: the seal is made anew.
    fn finalize(&mut self, item: Item) -> (Prepared, Option<Waiter>, Kind) {
        let seq = self.chain.next_seq;
        let (rec, waiter, kind) = match item {
            Item::Record(rec, waiter) => (rec, waiter, Kind::Record),
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

    /// Writes and fsyncs `buf` (records chained from `start`) at the end of the live file; on
    /// failure, cuts the file back. Below the free-space floor nothing is written. If the file
    /// lost its name (noticed right after the write), the live file is created again and
    /// `buf` written there too, an `audit.reopen` queued after it.
    fn flush(&mut self, s: &Shared, buf: &[u8], sync: bool, start: &Chain) -> io::Result<()> {
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
            self.open_live()?;
        }
        if self.ident.is_some() {
            self.space
                .check(&self.path, buf.len(), &s.files.free_bytes)?;
        }
        self.write_synced(buf, sync)?;
        if let Some((reason, stranger)) = self.orphaned()? {
            let note = self.reopen(
                s,
                reason,
                stranger,
                Some((start.next_seq, &start.prev_hash)),
            )?;
            self.write_synced(buf, sync)?;
            s.queue_note(note);
        }
        if self.file_first.is_none() {
            self.file_first = Some(start.next_seq);
        }
        Ok(())
    }

    /// Writes `buf` (and fsyncs it when `sync`), cutting the file back on failure.
    fn write_synced(&mut self, buf: &[u8], sync: bool) -> io::Result<()> {
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
    pub(super) fn sync_due_in(&self) -> Option<Duration> {
        let after = if self.fsync {
            LAZY_SYNC
        } else {
            self.fsync_interval
        };
        self.unsynced
            .map(|since| after.saturating_sub(since.elapsed()))
    }

    /// Writes raw bytes (the newline that seals a torn line).
    pub(super) fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
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
            s.push(&mut q, Item::Record(Prepared::from_record(&gap), None));
        }
        self.suspect = false;
        Ok(())
    }
}

/// What a finalized record was queued as.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Record,
    Checkpoint,
    Lost(u64),
}

/// A record written in a batch, waiting for the batch's fsync to be answered.
pub(super) struct Committed {
    pub(super) event: Event,
    pub(super) denial: bool,
    pub(super) seq: u64,
    pub(super) hash: Hash,
    /// Its line, for the journald mirror (only when it is mirrored).
    pub(super) mirror: Option<Vec<u8>>,
    pub(super) waiter: Option<Waiter>,
}

impl Kind {
    /// The queue item again, for a retry or to fail its waiter.
    fn item(self, rec: Prepared, waiter: Option<Waiter>) -> Item {
        match self {
            Kind::Record => Item::Record(rec, waiter),
            Kind::Checkpoint => Item::Checkpoint,
            Kind::Lost(n) => Item::Lost(n),
        }
    }
}
