//! The audit forwarder: every record of the journal to each `audit.forward` target, read back
//! from the journal's files (never queued in memory) from the target's persistent cursor,
//! so a collector's outage or the agent's restart loses nothing and memory stays bounded by
//! one batch. Delivery is at least once: a batch is sent again until the collector takes it,
//! and seq is the key to deduplicate on.
//!
//! Each target runs on its own thread with its own small runtime, apart from the sessions':
//! a slow collector costs the relay nothing. A target that stops taking records, and takes
//! them again, is recorded in the journal (`audit.forward`), as are records that no file
//! holds any more when the target reaches them (retention ran first).
pub mod http;
pub mod syslog;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use crate::audit::cursor;
use crate::audit::export::{Exporter, Format, Options};
use crate::audit::stream::{Next, Stream};
use crate::audit::targets::{ForwardTarget, Start};
use crate::audit::{Event, Journal, Outcome, Record};

/// Bytes of encoded records per batch at most (besides `batch` records).
const BATCH_BYTES: usize = 1 << 20;

/// How often a target that is in step looks for new records.
const POLL: Duration = Duration::from_millis(100);

/// Longest wait between two attempts at a failing target.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why a batch was not delivered, or a target cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The target's settings or files (CA, key, token) are unusable.
    #[error("{0}")]
    Setup(String),
    /// Connecting, sending or the acknowledgement failed.
    #[error("{0}")]
    Transport(String),
}

/// One encoded record of a batch.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its seq.
    pub seq: u64,
    /// Its chain hash.
    pub hash: String,
    /// Its time, microseconds since the epoch.
    pub time_us: i64,
    /// The record in the target's format.
    pub body: String,
}

impl Entry {
    #[cfg(test)]
    pub(crate) fn test(seq: u64, body: &str) -> Self {
        Self {
            seq,
            hash: String::new(),
            time_us: 1_764_000_000_000_000,
            body: body.to_owned(),
        }
    }
}

/// Records sent together.
#[derive(Debug, Default)]
pub struct Batch {
    /// In seq order.
    pub entries: Vec<Entry>,
    /// Bytes of their bodies.
    pub bytes: usize,
}

impl Batch {
    /// First seq in it.
    pub fn first(&self) -> u64 {
        self.entries.first().map_or(0, |e| e.seq)
    }

    /// Last seq in it.
    pub fn last(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.seq)
    }

    fn push(&mut self, e: Entry) {
        self.bytes += e.body.len();
        self.entries.push(e);
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

/// A target's sender.
enum Sender {
    Syslog(syslog::Syslog),
    Http(http::Http),
}

impl Sender {
    fn new(t: &ForwardTarget, host: &str) -> Result<Self, SendError> {
        match (&t.syslog, &t.http) {
            (Some(s), _) => Ok(Sender::Syslog(syslog::Syslog::new(s, t.timeout)?)),
            (None, Some(h)) => Ok(Sender::Http(http::Http::new(
                h,
                t.format(),
                host,
                t.timeout,
            )?)),
            (None, None) => Err(SendError::Setup("neither syslog nor http".into())),
        }
    }

    async fn send(&mut self, b: &Batch) -> Result<(), SendError> {
        match self {
            Sender::Syslog(s) => s.send(b).await,
            Sender::Http(h) => h.send(b).await,
        }
    }
}

/// What `status` and metrics show of one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetStatus {
    /// Its name.
    pub name: String,
    /// `syslog` or `http`.
    pub kind: &'static str,
    /// Address or URL.
    pub destination: String,
    /// Format sent.
    pub format: Format,
    /// Last seq the collector acknowledged (or reported missing).
    pub delivered_seq: u64,
    /// Whether its last attempt failed.
    pub failing: bool,
    /// Why it last failed, while it is failing.
    pub last_error: Option<String>,
    /// Records acknowledged since the agent started.
    pub sent: u64,
    /// Failed attempts since the agent started.
    pub failures: u64,
    /// Records it reached that no file held any more.
    pub missing: u64,
}

/// A target's live state, shared with `status`.
struct Shared {
    name: String,
    kind: &'static str,
    destination: String,
    format: Format,
    delivered: AtomicU64,
    sent: AtomicU64,
    failures: AtomicU64,
    missing: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Shared {
    fn status(&self) -> TargetStatus {
        let last_error = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        TargetStatus {
            name: self.name.clone(),
            kind: self.kind,
            destination: self.destination.clone(),
            format: self.format,
            delivered_seq: self.delivered.load(Ordering::Relaxed),
            failing: last_error.is_some(),
            last_error,
            sent: self.sent.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            missing: self.missing.load(Ordering::Relaxed),
        }
    }

    fn set_error(&self, e: Option<String>) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = e;
    }
}

/// Running: forward. Draining: forward what is written, then stop. Stopped: stop now.
const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const STOPPED: u8 = 2;

/// The forwarding threads.
pub struct Forwarders {
    targets: Vec<Arc<Shared>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    state: Arc<AtomicU8>,
}

/// Why forwarding cannot start: the agent does not start either (a configured target that
/// silently received nothing would be worse).
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// A target's settings or files.
    #[error("audit.forward `{0}`: {1}")]
    Target(String, #[source] SendError),
    /// A cursor that cannot be read.
    #[error("audit.forward `{0}`: cursor")]
    Cursor(String, #[source] std::io::Error),
    /// The thread could not be started.
    #[error("audit.forward `{0}`: starting its thread")]
    Thread(String, #[source] std::io::Error),
}

/// Everything a target's thread needs.
struct Task {
    target: ForwardTarget,
    sender: Sender,
    journal: Journal,
    path: PathBuf,
    cursor_path: PathBuf,
    after: u64,
    options: Options,
    shared: Arc<Shared>,
    state: Arc<AtomicU8>,
}

impl Forwarders {
    /// Starts one thread per target of `targets`, reading the journal at `path`; cursors live
    /// in `state_dir`.
    ///
    /// # Errors
    /// A target whose TLS files or token cannot be read, a cursor that cannot be read.
    pub fn start(
        targets: &[ForwardTarget],
        journal: &Journal,
        state_dir: &std::path::Path,
    ) -> Result<Self, ForwardError> {
        let state = Arc::new(AtomicU8::new(RUNNING));
        let mut tasks = Vec::new();
        let base = Options::default();
        for t in targets {
            let sender = Sender::new(t, &base.hostname)
                .map_err(|e| ForwardError::Target(t.name.clone(), e))?;
            let cursor_path = cursor::path(state_dir, &t.name);
            let saved =
                cursor::load(&cursor_path).map_err(|e| ForwardError::Cursor(t.name.clone(), e))?;
            let head = journal.status().last_seq;
            let after = match (&saved, t.start) {
                (Some(c), _) => c.seq,
                (None, Start::Oldest) => 0,
                (None, Start::Now) => head,
            };
            let mut options = base.clone();
            if let Some(n) = t.enterprise_id {
                options.enterprise_id = n;
            }
            let shared = Arc::new(Shared {
                name: t.name.clone(),
                kind: t.kind(),
                destination: t.destination(),
                format: t.format(),
                delivered: AtomicU64::new(after),
                sent: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                missing: AtomicU64::new(0),
                last_error: Mutex::new(None),
            });
            if saved.is_none() {
                // From now on retention keeps what this target has not delivered.
                cursor::save(
                    &cursor_path,
                    &cursor::Cursor {
                        seq: after,
                        hash: String::new(),
                    },
                )
                .map_err(|e| ForwardError::Cursor(t.name.clone(), e))?;
            }
            if saved.is_some() && after > head {
                warn!(target = %t.name, cursor = after, head, "audit.forward: the cursor is past the journal's last record");
            }
            tasks.push(Task {
                target: t.clone(),
                sender,
                journal: journal.clone(),
                path: journal.path().to_owned(),
                cursor_path,
                after,
                options,
                shared,
                state: Arc::clone(&state),
            });
        }
        let mut out = Self {
            targets: tasks.iter().map(|t| Arc::clone(&t.shared)).collect(),
            threads: Vec::new(),
            state,
        };
        for task in tasks {
            let name = task.target.name.clone();
            let h = std::thread::Builder::new()
                .name(format!("forward-{name}"))
                .spawn(move || task.run())
                .map_err(|e| ForwardError::Thread(name, e))?;
            out.threads.push(h);
        }
        Ok(out)
    }

    /// Each target's state.
    pub fn status(&self) -> Vec<TargetStatus> {
        self.targets.iter().map(|t| t.status()).collect()
    }

    /// Delivers what the journal holds for up to `grace` (the agent's last records, say),
    /// then stops every thread.
    pub fn stop(self, grace: Duration) {
        self.state.store(DRAINING, Ordering::Relaxed);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && self.threads.iter().any(|h| !h.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.state.store(STOPPED, Ordering::Relaxed);
        for h in self.threads {
            let _ = h.join();
        }
    }
}

impl Task {
    fn run(self) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                warn!(target = %self.target.name, "audit.forward: no runtime: {e}");
                return;
            }
        };
        rt.block_on(self.forward());
    }

    fn state(&self) -> u8 {
        self.state.load(Ordering::Relaxed)
    }

    async fn forward(mut self) {
        info!(target = %self.target.name, destination = %self.shared.destination, after = self.after, "audit.forward: started");
        let mut stream = Stream::with_context(&self.path, self.after);
        let mut exporter = Exporter::new(self.target.format(), self.options.clone());
        let mut batch = Batch::default();
        let mut failing: Option<Failing> = None;
        loop {
            if self.state() == STOPPED {
                return;
            }
            let mut missing = None;
            let mut read_error = None;
            while batch.entries.len() < self.target.batch && batch.bytes < BATCH_BYTES {
                match stream.read() {
                    Ok(Next::Record(i)) => {
                        let body = exporter.encode(&i.line, &i.record);
                        batch.push(Entry {
                            seq: i.record.seq,
                            time_us: crate::audit::time::parse_time(&i.record.time).unwrap_or(0),
                            hash: i.record.hash,
                            body,
                        });
                    }
                    Ok(Next::Context(i)) => exporter.learn(&i.record),
                    Ok(Next::Missing { first, last }) => {
                        missing = Some((first, last));
                        break;
                    }
                    Ok(Next::Pending) => break,
                    Err(e) => {
                        read_error = Some(e);
                        break;
                    }
                }
            }
            let idle = batch.is_empty() && missing.is_none();
            if !batch.is_empty() {
                if !self.deliver(&batch, &mut failing).await {
                    return;
                }
                let last = batch.entries.last().map(|e| (e.seq, e.hash.clone()));
                if let Some((seq, hash)) = last {
                    self.advance(seq, hash);
                }
                self.shared
                    .sent
                    .fetch_add(batch.entries.len() as u64, Ordering::Relaxed);
                batch.clear();
            }
            if let Some((first, last)) = missing {
                self.missing(first, last).await;
            }
            if let Some(e) = read_error {
                warn!(target = %self.target.name, "audit.forward: reading the journal: {e}");
                self.pause(Duration::from_secs(1)).await;
                continue;
            }
            if idle {
                if self.state() == DRAINING {
                    return;
                }
                tokio::time::sleep(POLL).await;
            }
        }
    }

    /// Sends `batch` until it is taken; false when told to stop first.
    async fn deliver(&mut self, batch: &Batch, failing: &mut Option<Failing>) -> bool {
        let mut attempt: u32 = 0;
        loop {
            match self.sender.send(batch).await {
                Ok(()) => {
                    if let Some(f) = failing.take() {
                        self.recovered(&f, batch).await;
                    }
                    return true;
                }
                Err(e) => {
                    self.shared.failures.fetch_add(1, Ordering::Relaxed);
                    let text = e.to_string();
                    self.shared.set_error(Some(text.clone()));
                    match failing {
                        None => {
                            self.failed(&text, batch).await;
                            *failing = Some(Failing {
                                since: Instant::now(),
                                at: SystemTime::now(),
                                attempts: 1,
                            });
                        }
                        Some(f) => f.attempts += 1,
                    }
                    attempt = attempt.saturating_add(1);
                    let wait = Duration::from_millis(250)
                        .saturating_mul(2u32.saturating_pow(attempt.min(8)))
                        .min(MAX_BACKOFF);
                    if !self.pause(wait).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Sleeps `d`, waking early to stop; false when told to stop (a draining agent does not
    /// wait out a failing collector).
    async fn pause(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if self.state() != RUNNING {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50).min(d)).await;
        }
        true
    }

    fn advance(&self, seq: u64, hash: String) {
        self.shared.delivered.store(seq, Ordering::Relaxed);
        if let Err(e) = cursor::save(&self.cursor_path, &cursor::Cursor { seq, hash }) {
            // Delivery goes on; after a restart the records since the last saved cursor are
            // sent again, which at-least-once allows.
            warn!(target = %self.target.name, "audit.forward: saving the cursor: {e}");
        }
    }

    fn record(&self) -> Record {
        Record::new(Event::AuditForward)
            .detail("target", self.target.name.clone())
            .detail("kind", self.target.kind())
            .detail("destination", self.shared.destination.clone())
    }

    async fn failed(&self, error: &str, batch: &Batch) {
        warn!(target = %self.target.name, first = batch.first(), "audit.forward: the collector does not take records: {error}");
        let rec = self
            .record()
            .outcome(Outcome::Failure)
            .error(error.to_owned())
            .detail("state", "failing")
            .detail("pending_from", batch.first());
        self.append(rec).await;
    }

    async fn recovered(&self, f: &Failing, batch: &Batch) {
        self.shared.set_error(None);
        let ms = u64::try_from(f.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        info!(target = %self.target.name, failed_for_ms = ms, attempts = f.attempts, "audit.forward: the collector takes records again");
        let rec = self
            .record()
            .outcome(Outcome::Success)
            .detail("state", "recovered")
            .detail("failing_since", crate::audit::time::format_time(f.at))
            .detail("failed_for_ms", ms)
            .detail("attempts", f.attempts)
            .detail("resent_from", batch.first());
        self.append(rec).await;
    }

    async fn missing(&self, first: u64, last: u64) {
        self.shared
            .missing
            .fetch_add(last - first + 1, Ordering::Relaxed);
        warn!(target = %self.target.name, first, last, "audit.forward: records no journal file holds any more were not forwarded");
        let rec = self
            .record()
            .outcome(Outcome::Failure)
            .detail("state", "missing")
            .detail("missing", serde_json::json!({"first_seq": first, "last_seq": last}))
            .error(format!(
                "records {first}..={last} are in none of the journal's files (deleted by retention, or cut from a damaged file) and were not forwarded"
            ));
        self.append(rec).await;
        self.advance(last, String::new());
    }

    async fn append(&self, rec: Record) {
        if let Err(e) = self.journal.append(rec).await {
            warn!(target = %self.target.name, "audit.forward: recording the event: {e}");
        }
    }
}

/// A target's outage.
struct Failing {
    since: Instant,
    at: SystemTime,
    attempts: u64,
}
