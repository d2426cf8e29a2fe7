//! The relay after startup: the client-to-server and server-to-client directions, each
//! reading whole frames and writing batches of untouched frames without copying.
//!
//! One statement's path, in order: the client's frame is read ([`frontend`]), decided by the
//! policy into one [`crate::policy::Decision`], described and recorded from that decision
//! ([`crate::session::recorder`]), committed to the journal before the batch goes, and sent
//! (or replaced by pgwarden's refusal); its results come back through the masks of the same
//! policy version ([`backend`], [`crate::session::masking`]) and finish in `query.done`.
//! Backpressure: a direction reads only after its last batch was written, and buffers hold
//! at most one message over the last read.
mod backend;
mod elevate;
mod frontend;
mod guard;
mod handshake;
mod hold;
mod reads;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing::warn;

use super::conn::{Conn, ReadHalf, WriteHalf};
use super::env::SessionEnv;
use super::masking::{Change, Masking};
use super::recorder::{self, Described, Recorder};
use super::state::ProtoState;
use super::{SessionError, SessionMeta};
use crate::audit::canon::Prepared;
use crate::audit::{Event, Outcome as AuditOutcome, Record};
use crate::policy::{PolicySet, SessionPolicy};
use crate::wire::encode::{self, ErrorFields};
use crate::wire::{Frame, Limits, Side, WireError, backend as wire_backend, next_frame};

/// How much to read at once.
const READ_CHUNK: usize = 64 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A mask change on its way: the server's reply to its query, collected until ReadyForQuery.
struct Resolving {
    change: Change,
    rows: Vec<Vec<Option<String>>>,
    error: Option<String>,
}

struct Ctx<'a> {
    env: &'a SessionEnv,
    meta: &'a Arc<SessionMeta>,
    state: Mutex<ProtoState>,
    /// The policy version this batch is decided and masked under (moves at batch starts).
    pin: Mutex<Arc<PolicySet>>,
    policy: Mutex<SessionPolicy>,
    masking: Mutex<Masking>,
    /// Mask changes sent to the server, applied in order as their replies arrive.
    changes: Mutex<VecDeque<Resolving>>,
    recorder: Recorder,
    limits: Limits,
    client_w: tokio::sync::Mutex<WriteHalf>,
    strip_plus: bool,
    /// The description of each prepared statement, by name, for the records of its Executes.
    prepared: Mutex<HashMap<String, Arc<Described>>>,
    /// The server reported a setting under which PostgreSQL reads statement text differently
    /// from pgwarden's parser (`standard_conforming_strings` off, an ASCII-unsafe client
    /// encoding): every statement is refused from then on.
    lexer_unsafe: Mutex<Option<String>>,
    /// The write whose rows are being counted, while its verdict is open.
    guard: Mutex<Option<guard::Guard>>,
    /// A guard is open or pgwarden's own messages around one are unanswered: only then does
    /// the backend direction look for them (set with the messages, under the state lock;
    /// cleared by the backend once neither holds), so other replies pay one atomic load.
    guarding: std::sync::atomic::AtomicBool,
    /// The server's refusal of pgwarden's own `SET ROLE` / `RESET ROLE` (see [`elevate`]).
    role_error: Mutex<Option<String>>,
    /// Numbers pgwarden's own prepared statements.
    own_seq: std::sync::atomic::AtomicU64,
    /// Woken when the server's replies moved on (a verdict, a quiet connection), or the
    /// client stopped sending.
    progress: tokio::sync::Notify,
    /// The server's BackendKeyData (to cancel a query whose result was cut off).
    backend_key: Mutex<Option<(i32, Bytes)>>,
    /// The client has stopped sending (it left, or sent Terminate).
    client_done: std::sync::atomic::AtomicBool,
}

/// An audit record waiting to be committed before the batch it belongs to is sent.
struct AuditItem {
    record: Prepared,
    /// The forwarded frame this record covers, and how to refuse it if the journal fails.
    frame: Option<(usize, RefuseAs)>,
}

#[derive(Clone, Copy)]
enum RefuseAs {
    Query,
    Execute,
}

impl Ctx<'_> {
    fn state(&self) -> MutexGuard<'_, ProtoState> {
        lock(&self.state)
    }

    /// Waits until `ready` holds; the backend direction wakes it as replies arrive.
    async fn until(&self, ready: impl Fn(&Self) -> bool) {
        loop {
            let woken = self.progress.notified();
            if ready(self) {
                return;
            }
            woken.await;
        }
    }

    fn masking(&self) -> MutexGuard<'_, Masking> {
        lock(&self.masking)
    }

    /// A record about this session.
    /// A record of the session: its id and workload (the identity is in `session.start`).
    fn record(&self, event: Event) -> Record {
        Record::new(event)
            .session(self.meta.id)
            .workload(&self.meta.workload)
    }

    /// The `session.start` record: who (the process behind the connection), from where, to
    /// which server and database, under which policy. The session's later records refer to
    /// it by session id.
    fn start_record(&self) -> Record {
        let m = self.meta;
        let mut r = self
            .record(Event::SessionStart)
            .client(m.client.clone())
            .server(m.server.clone())
            .db(recorder::db(m));
        if let Some(who) = &m.identity {
            r = r.identity(who);
        }
        if let Some(h) = self.recorder.start_policy() {
            r = r.policy_hash(h);
        }
        r
    }

    /// The workload's masking rules in `set`.
    fn mask_rules(&self, set: &PolicySet) -> Option<Arc<crate::mask::MaskRules>> {
        set.workloads
            .get(&self.meta.workload.0)
            .map(|c| Arc::clone(&c.profile.mask))
    }

    /// Notes a ParameterStatus from the server; `Some(reason)` when it makes the session's
    /// statement text ambiguous to pgwarden's parser.
    fn parameter_status(&self, frame: &Frame) -> Result<Option<String>, WireError> {
        let (name, value) = wire_backend::parameter_status(frame)?;
        if crate::policy::analyze::lexer_safe(name, value) {
            return Ok(None);
        }
        let why = format!("the server reports {name} = {value}");
        warn!(session = %self.meta.id, workload = %self.meta.workload, "{why}: PostgreSQL would read statement text differently from pgwarden's parser; refusing this session's statements");
        *lock(&self.lexer_unsafe) = Some(why.clone());
        Ok(Some(why))
    }

    /// Tells the client why the session ends, best effort.
    async fn fatal(&self, code: &str, message: &str) {
        let e = encode::error_response(&ErrorFields {
            severity: "FATAL",
            code,
            message,
            detail: None,
            hint: None,
        });
        let mut w = self.client_w.lock().await;
        let _ = w.write_all(&e).await;
        let _ = w.flush().await;
        let _ = w.shutdown().await;
    }
}

/// Relays a session whose startup packet is `startup` until either side ends it.
pub async fn run(
    env: &SessionEnv,
    meta: &Arc<SessionMeta>,
    client: Conn,
    upstream: Conn,
    startup: Bytes,
    rest: BytesMut,
    mut login: Option<crate::login::Login>,
) -> Result<(), SessionError> {
    let strip_plus = client.is_tls() || upstream.is_tls();
    let (mut client_r, client_w) = client.split();
    let (mut server_r, mut server_w) = upstream.split();
    server_w.write_all(&startup).await?;
    server_w.flush().await?;
    let pin = env.policy.current();
    let start_policy = pin
        .workloads
        .get(&meta.workload.0)
        .map(|c| Arc::clone(&c.hash));
    let ctx = Ctx {
        env,
        meta,
        state: Mutex::new(ProtoState::new(&meta.id.to_string())),
        pin: Mutex::new(pin),
        policy: Mutex::new(SessionPolicy::new(&meta.workload.0, &meta.id.to_string())),
        masking: Mutex::new(Masking::new(
            meta.server.0.clone(),
            meta.db.database.clone(),
            Arc::clone(&env.hash_key),
        )),
        changes: Mutex::default(),
        recorder: Recorder::new(&env.journal, meta, start_policy),
        limits: env.limits.wire(),
        client_w: tokio::sync::Mutex::new(client_w),
        strip_plus,
        prepared: Mutex::default(),
        lexer_unsafe: Mutex::new(None),
        guard: Mutex::new(None),
        guarding: std::sync::atomic::AtomicBool::new(false),
        role_error: Mutex::new(None),
        own_seq: std::sync::atomic::AtomicU64::new(1),
        progress: tokio::sync::Notify::new(),
        backend_key: Mutex::new(None),
        client_done: std::sync::atomic::AtomicBool::new(false),
    };
    let mut client_buf = rest;
    let mut server_buf = BytesMut::with_capacity(READ_CHUNK);
    if !handshake::run(
        &ctx,
        &mut client_r,
        &mut client_buf,
        &mut server_r,
        &mut server_buf,
        &mut server_w,
        &mut login,
    )
    .await?
    {
        return Ok(());
    }
    let login_method = login.as_ref().map(crate::login::Login::method_name);
    // The secret is wiped now: the session never needs it again.
    drop(login);
    let started = std::time::Instant::now();
    let mut start = ctx.start_record();
    if let (Some(info), Some(method)) = (&meta.login, login_method) {
        start = start.detail("login", login_detail(info, method));
    }
    if let Err(e) = env.journal.append(start).await {
        // Strict mode: no access without its record.
        warn!(session = %meta.id, "session refused: the audit journal cannot be written: {e}");
        ctx.fatal(
            "58030",
            &format!("pgwarden: the audit journal cannot be written ({e}); session refused"),
        )
        .await;
        return Ok(());
    }
    let server_w = tokio::sync::Mutex::new(server_w);
    let front = async {
        let r = frontend::run(&ctx, client_r, &server_w, client_buf).await;
        ctx.client_done
            .store(true, std::sync::atomic::Ordering::Release);
        ctx.progress.notify_waiters();
        r
    };
    let back = backend::run(&ctx, server_r, server_buf, &server_w);
    tokio::pin!(front, back);
    let result = tokio::select! {
        r = &mut front => match r {
            // The client is done sending: the server finishes and closes.
            Ok(()) => back.await,
            Err(e) => Err(e),
        },
        r = &mut back => r,
        () = env.terminated() => {
            ctx.fatal("57P01", "terminating connection due to administrator command (pgwarden is stopping)").await;
            Ok(())
        }
    };
    let mut end = ctx.record(Event::SessionEnd).duration(started.elapsed());
    end = match &result {
        Ok(()) => end.outcome(AuditOutcome::Success),
        Err(e) => end.outcome(AuditOutcome::Failure).error(e.to_string()),
    };
    let _ = env.journal.append(end).await;
    result
}

/// `detail.login` of a session pgwarden logged in for: the role, what the client asked for,
/// and the method the server asked for (`trust` when it asked for none).
fn login_detail(info: &crate::login::LoginInfo, method: &str) -> serde_json::Value {
    serde_json::json!({
        "user": info.user,
        "asked_user": info.asked_user,
        "user_policy": info.user_policy,
        "method": method,
    })
}

/// Reads one frame from `r` into `buf`; `Ok(None)` at end of stream.
async fn read_frame(
    r: &mut ReadHalf,
    buf: &mut BytesMut,
    limits: &Limits,
    side: Side,
) -> Result<Option<Frame>, SessionError> {
    loop {
        match next_frame(buf, limits, side) {
            Ok(Some(f)) => return Ok(Some(f)),
            Ok(None) => {}
            Err(e) => {
                return Err(if side == Side::Frontend {
                    SessionError::Client(e)
                } else {
                    SessionError::Server(e)
                });
            }
        }
        buf.reserve(READ_CHUNK);
        if r.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// An ErrorResponse of pgwarden's own.
fn error_bytes(code: &str, message: &str) -> Bytes {
    encode::error_response(&ErrorFields {
        severity: "ERROR",
        code,
        message,
        detail: None,
        hint: None,
    })
}

fn wire_message(e: &WireError) -> (&'static str, String) {
    match e {
        WireError::TooLong { .. } => ("54000", format!("pgwarden: {e}")),
        _ => ("08P01", format!("pgwarden: protocol violation: {e}")),
    }
}

async fn client_error(ctx: &Ctx<'_>, e: WireError) -> SessionError {
    let (code, message) = wire_message(&e);
    warn!(session = %ctx.meta.id, workload = %ctx.meta.workload, "ending session: client sent a bad message: {e}");
    ctx.fatal(code, &message).await;
    SessionError::Client(e)
}

async fn server_error(ctx: &Ctx<'_>, e: WireError) -> SessionError {
    warn!(session = %ctx.meta.id, server = %ctx.meta.server.0, "ending session: the server sent a bad message: {e}");
    ctx.fatal(
        "08P01",
        &format!("pgwarden: the server sent a bad message: {e}"),
    )
    .await;
    SessionError::Server(e)
}
