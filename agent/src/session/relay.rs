//! The relay after startup: the client-to-server and server-to-client directions, each
//! reading whole frames, consulting the hooks where a frame matters, and writing batches of
//! untouched frames without copying. Backpressure: a direction reads only after its last
//! batch was written, and buffers hold at most one message over the last read.
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing::{info, warn};

use super::conn::{Conn, ReadHalf, WriteHalf, write_batch};
use super::state::{InFlight, Pending, ProtoState, ResultStart, tag_rows};
use super::{SessionError, SessionMeta, strip_channel_binding};
use crate::audit::{Db, Decision, Event, Journal, Outcome as AuditOutcome, Record};
use crate::daemon::Shared;
use crate::hooks::{SessionHooks, Statement, StatementKind, Verdict};
use crate::wire::backend::Column;
use crate::wire::encode::{self, ErrorFields};
use crate::wire::frontend::{self, FrontendMsg};
use crate::wire::{Frame, Limits, Side, WireError, backend, next_frame};

/// How much to read at once.
const READ_CHUNK: usize = 64 * 1024;

struct Ctx<'a> {
    shared: &'a Shared,
    meta: &'a Arc<SessionMeta>,
    hooks: Mutex<Box<dyn SessionHooks>>,
    state: Mutex<ProtoState>,
    limits: Limits,
    client_w: tokio::sync::Mutex<WriteHalf>,
    strip_plus: bool,
    journal: &'a Journal,
    /// Audit text and policy facts per statement text: executions of a prepared statement,
    /// and repeated queries, are normalized once.
    described: Mutex<
        std::collections::HashMap<Arc<str>, (crate::audit::Statement, crate::hooks::DecisionInfo)>,
    >,
}

/// Statements whose audit description a session keeps.
const DESCRIBED: usize = 256;

/// An audit record waiting to be committed before the batch it belongs to is sent.
struct AuditItem {
    record: Record,
    /// The forwarded frame this record covers, and how to refuse it if the journal fails.
    frame: Option<(usize, RefuseAs)>,
}

#[derive(Clone, Copy)]
enum RefuseAs {
    Query,
    Execute,
}

impl Ctx<'_> {
    fn state(&self) -> std::sync::MutexGuard<'_, ProtoState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn hooks(&self) -> std::sync::MutexGuard<'_, Box<dyn SessionHooks>> {
        self.hooks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A record about this session.
    fn record(&self, event: Event) -> Record {
        let m = self.meta;
        let mut r = Record::new(event)
            .session(m.id)
            .workload(&m.workload)
            .client(m.client)
            .server(m.server)
            .db(Db {
                user: Some(m.db.user.clone()),
                database: Some(m.db.database.clone()),
                application_name: m.db.application_name.clone(),
            });
        if let Some(who) = &m.identity {
            r = r.identity(who);
        }
        r
    }

    /// Remembers how the policy described `sql` (call right after it decided on it).
    fn describe(&self, sql: &str) {
        let info = self.hooks().last_decision().unwrap_or_default();
        let mut d = self
            .described
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !d.contains_key(sql) {
            if d.len() >= DESCRIBED {
                d.clear();
            }
            let statement = self
                .journal
                .statement(sql)
                .command(info.command.clone())
                .objects(info.objects.clone());
            d.insert(Arc::from(sql), (statement, info));
        }
    }

    /// A record about a statement, with what the policy saw in it.
    fn statement_record(&self, event: Event, sql: &str, decision: Decision, n: u64) -> Record {
        let cached = self
            .described
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(sql)
            .cloned();
        // Not described (evicted): the text alone; the policy hash and masking of the profile.
        let (statement, info) = cached.unwrap_or_else(|| {
            let last = self.hooks().last_decision().unwrap_or_default();
            let info = crate::hooks::DecisionInfo {
                command: String::new(),
                objects: Vec::new(),
                ..last
            };
            (self.journal.statement(sql), info)
        });
        let decision = if decision == Decision::Allow && info.masked {
            Decision::Mask
        } else {
            decision
        };
        let mut r = self
            .record(event)
            .statement(statement)
            .decision(decision)
            .detail("statement_no", n);
        if !info.policy_hash.is_empty() {
            r = r.policy_hash(info.policy_hash);
        }
        r
    }

    fn denied_record(&self, sql: &str, rule: &str, code: &str, message: &str, n: u64) -> Record {
        self.statement_record(Event::QueryDenied, sql, Decision::Deny, n)
            .rule(rule)
            .outcome(AuditOutcome::Failure)
            .sqlstate(code)
            .error(message)
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
    shared: &Shared,
    meta: &Arc<SessionMeta>,
    client: Conn,
    upstream: Conn,
    startup: Bytes,
    rest: BytesMut,
) -> Result<(), SessionError> {
    let strip_plus = client.is_tls() || upstream.is_tls();
    let (mut client_r, client_w) = client.split();
    let (mut server_r, mut server_w) = upstream.split();
    server_w.write_all(&startup).await?;
    server_w.flush().await?;
    let ctx = Ctx {
        shared,
        meta,
        hooks: Mutex::new(shared.hooks.open(meta)),
        state: Mutex::new(ProtoState::new(&meta.id.to_string())),
        limits: shared.config.limits.wire(),
        client_w: tokio::sync::Mutex::new(client_w),
        strip_plus,
        journal: &shared.audit,
        described: Mutex::new(std::collections::HashMap::new()),
    };
    let mut client_buf = rest;
    let mut server_buf = BytesMut::with_capacity(READ_CHUNK);
    if !handshake(
        &ctx,
        &mut client_r,
        &mut client_buf,
        &mut server_r,
        &mut server_buf,
        &mut server_w,
    )
    .await?
    {
        return Ok(());
    }
    let started = std::time::Instant::now();
    if let Err(e) = ctx.journal.append(ctx.record(Event::SessionStart)).await {
        // Strict mode: no access without its record.
        warn!(session = %meta.id, "session refused: the audit journal cannot be written: {e}");
        ctx.fatal(
            "58030",
            &format!("pgwarden: the audit journal cannot be written ({e}); session refused"),
        )
        .await;
        return Ok(());
    }
    let front = frontend(&ctx, client_r, server_w, client_buf);
    let back = backend(&ctx, server_r, server_buf);
    tokio::pin!(front, back);
    let result = tokio::select! {
        r = &mut front => match r {
            // The client is done sending: the server finishes and closes.
            Ok(()) => back.await,
            Err(e) => Err(e),
        },
        r = &mut back => r,
        () = shared.terminated() => {
            ctx.fatal("57P01", "terminating connection due to administrator command (pgwarden is stopping)").await;
            Ok(())
        }
    };
    ctx.hooks().session_end();
    let mut end = ctx.record(Event::SessionEnd).duration(started.elapsed());
    end = match &result {
        Ok(()) => end.outcome(AuditOutcome::Success),
        Err(e) => end.outcome(AuditOutcome::Failure).error(e.to_string()),
    };
    let _ = ctx.journal.append(end).await;
    result
}

/// Commits the batch's audit records before the batch is sent. In strict mode they are on
/// disk first; when the journal cannot be written, every statement of the batch is refused
/// in place (SQLSTATE 58030) and nothing reaches the server.
async fn commit(ctx: &Ctx<'_>, out: &mut [Bytes], items: &mut Vec<AuditItem>) {
    if items.is_empty() {
        return;
    }
    if !ctx.journal.is_strict() {
        // Async mode: queued, never waited for (a full queue is counted in an audit.gap).
        for i in items.drain(..) {
            ctx.journal.submit(i.record);
        }
        return;
    }
    // Strict: one record (the common case) is awaited in place; several together, so they
    // share one group commit.
    let results: Vec<Result<u64, String>> = if items.len() == 1 {
        vec![
            ctx.journal
                .append(items[0].record.clone())
                .await
                .map_err(|e| e.to_string()),
        ]
    } else {
        let handles: Vec<_> = items
            .iter()
            .map(|i| {
                let j = ctx.journal.clone();
                let r = i.record.clone();
                tokio::spawn(async move { j.append(r).await })
            })
            .collect();
        let mut v = Vec::with_capacity(handles.len());
        for h in handles {
            v.push(match h.await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            });
        }
        v
    };
    let failure = results.into_iter().find_map(Result::err);
    if let Some(e) = failure {
        warn!(session = %ctx.meta.id, workload = %ctx.meta.workload, "refusing statements: the audit journal cannot be written: {e}");
        let message =
            format!("pgwarden: the audit journal cannot be written ({e}); statement refused");
        let mut st = ctx.state();
        for item in items.iter() {
            if let Some((index, how)) = item.frame {
                let token = st.deny(error_bytes("58030", &message));
                out[index] = match how {
                    RefuseAs::Query => encode::query(&token),
                    RefuseAs::Execute => encode::parse("pgwarden_refused", &token),
                };
            }
        }
    }
    items.clear();
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

/// Authentication, relayed message by message (the server asks, the client answers), then
/// the layers' setup query, then the server's ReadyForQuery to the client. `Ok(false)` when
/// the session ended during it (failed authentication, a client that left).
async fn handshake(
    ctx: &Ctx<'_>,
    client_r: &mut ReadHalf,
    client_buf: &mut BytesMut,
    server_r: &mut ReadHalf,
    server_buf: &mut BytesMut,
    server_w: &mut WriteHalf,
) -> Result<bool, SessionError> {
    let mut out = Vec::with_capacity(8);
    loop {
        let frame = match read_frame(server_r, server_buf, &ctx.limits, Side::Backend).await {
            Ok(Some(f)) => f,
            Ok(None) => {
                let mut w = ctx.client_w.lock().await;
                write_batch(&mut *w, &mut out).await?;
                let _ = w.shutdown().await;
                return Ok(false);
            }
            Err(SessionError::Server(e)) => return Err(server_error(ctx, e).await),
            Err(e) => return Err(e),
        };
        match frame.tag {
            b'R' => {
                let (code, _) = backend::authentication(&frame).map_err(SessionError::Server)?;
                out.push(if ctx.strip_plus {
                    strip_channel_binding(&frame).unwrap_or(frame.bytes)
                } else {
                    frame.bytes
                });
                // 0 ok and 12 SASLFinal need no answer; every other request does.
                if code != 0 && code != 12 {
                    let mut w = ctx.client_w.lock().await;
                    write_batch(&mut *w, &mut out).await?;
                    drop(w);
                    let answer =
                        match read_frame(client_r, client_buf, &ctx.limits, Side::Frontend).await {
                            Ok(Some(a)) => a,
                            Ok(None) => return Ok(false),
                            Err(SessionError::Client(e)) => return Err(client_error(ctx, e).await),
                            Err(e) => return Err(e),
                        };
                    server_w.write_all(&answer.bytes).await?;
                    server_w.flush().await?;
                }
            }
            b'K' => {
                let (pid, key) = backend::backend_key(&frame).map_err(SessionError::Server)?;
                ctx.shared
                    .register_cancel(ctx.meta.id, pid, key, ctx.meta.server.0);
                out.push(frame.bytes);
            }
            b'E' => {
                // Authentication failed: the client hears it, the server closes.
                out.push(crate::mask::error_fields(&frame).unwrap_or(frame.bytes));
                let mut w = ctx.client_w.lock().await;
                write_batch(&mut *w, &mut out).await?;
                let _ = w.shutdown().await;
                return Ok(false);
            }
            b'Z' => {
                let status = backend::ready_for_query(&frame).map_err(SessionError::Server)?;
                let setup = ctx.hooks().setup_query();
                if let Some(sql) = setup {
                    let (rows, error) =
                        setup_query(ctx, &sql, server_r, server_buf, server_w).await?;
                    let accepted = ctx.hooks().setup_result(rows, error);
                    if let Err(e) = accepted {
                        warn!(session = %ctx.meta.id, workload = %ctx.meta.workload, "session refused: {e}");
                        ctx.fatal("42501", &format!("pgwarden: {e}")).await;
                        return Ok(false);
                    }
                }
                ctx.state().ready(status);
                ctx.hooks().session_start();
                out.push(frame.bytes);
                let mut w = ctx.client_w.lock().await;
                write_batch(&mut *w, &mut out).await?;
                return Ok(true);
            }
            _ => out.push(frame.bytes),
        }
    }
}

/// Runs pgwarden's own query on the session before the client gets it; the client sees
/// none of its messages.
async fn setup_query(
    ctx: &Ctx<'_>,
    sql: &str,
    server_r: &mut ReadHalf,
    server_buf: &mut BytesMut,
    server_w: &mut WriteHalf,
) -> Result<(Vec<Vec<Option<String>>>, Option<String>), SessionError> {
    server_w.write_all(&encode::query(sql)).await?;
    server_w.flush().await?;
    let mut rows = Vec::new();
    let mut error = None;
    loop {
        let Some(frame) = read_frame(server_r, server_buf, &ctx.limits, Side::Backend).await?
        else {
            return Err(SessionError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        };
        match frame.tag {
            b'D' => {
                let ranges = backend::data_row(&frame).map_err(SessionError::Server)?;
                let body = frame.body();
                rows.push(
                    ranges
                        .into_iter()
                        .map(|r| r.map(|r| String::from_utf8_lossy(&body[r]).into_owned()))
                        .collect(),
                );
            }
            b'E' => {
                let fields = backend::error_fields(&frame).map_err(SessionError::Server)?;
                error = Some(
                    fields
                        .iter()
                        .find(|(c, _)| *c == b'M')
                        .map_or("error", |(_, m)| *m)
                        .to_owned(),
                );
            }
            b'Z' => return Ok((rows, error)),
            _ => {}
        }
    }
}

fn wire_message(e: &WireError) -> (&'static str, String) {
    match e {
        WireError::TooLong { .. } => ("54000", format!("pgwarden: {e}")),
        _ => ("08P01", format!("pgwarden: protocol violation: {e}")),
    }
}

async fn frontend(
    ctx: &Ctx<'_>,
    mut r: ReadHalf,
    mut w: WriteHalf,
    mut buf: BytesMut,
) -> Result<(), SessionError> {
    let mut out: Vec<Bytes> = Vec::with_capacity(16);
    let mut audits: Vec<AuditItem> = Vec::new();
    loop {
        loop {
            let frame = match next_frame(&mut buf, &ctx.limits, Side::Frontend) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(client_error(ctx, e).await),
            };
            match on_frontend(ctx, frame, &mut out, &mut audits) {
                Ok(Step::Continue) => {}
                Ok(Step::Terminate) => {
                    // Terminate: pass it on and stop reading.
                    commit(ctx, &mut out, &mut audits).await;
                    write_batch(&mut w, &mut out).await?;
                    let _ = w.shutdown().await;
                    return Ok(());
                }
                Ok(Step::Hold(held)) => {
                    // Everything before the held message goes first; what follows waits.
                    commit(ctx, &mut out, &mut audits).await;
                    write_batch(&mut w, &mut out).await?;
                    let Some(resolution) = hold(ctx, &held, &mut r, &mut buf).await? else {
                        let _ = w.shutdown().await;
                        return Ok(());
                    };
                    release(ctx, held, &resolution, &mut out, &mut audits);
                }
                Err(e) => return Err(client_error(ctx, e).await),
            }
        }
        commit(ctx, &mut out, &mut audits).await;
        write_batch(&mut w, &mut out).await?;
        buf.reserve(READ_CHUNK.min(ctx.limits.frontend_large));
        if r.read_buf(&mut buf).await? == 0 {
            let _ = w.shutdown().await;
            return Ok(());
        }
    }
}

/// What the frontend direction does after a message.
enum Step {
    Continue,
    Terminate,
    Hold(Held),
}

/// A message held for approval.
struct Held {
    frame: Frame,
    /// How it is recorded once released: a Query, or an Execute of `portal`.
    kind: HeldKind,
    rule: Arc<crate::approval::Rule>,
    sql: String,
}

enum HeldKind {
    Query,
    Execute(String),
}

/// Waits for the decision on a held message. Bytes the client sends meanwhile are kept in
/// `buf` (up to the statement limit); `None` when the client left (the request is withdrawn).
async fn hold(
    ctx: &Ctx<'_>,
    held: &Held,
    r: &mut ReadHalf,
    buf: &mut BytesMut,
) -> Result<Option<crate::approval::Resolution>, SessionError> {
    use crate::approval::Resolution;
    let approvals = &ctx.shared.approvals;
    let who = ctx.meta.identity.as_ref();
    let text = crate::mask::pan::mask_pans(held.sql.as_bytes(), crate::mask::Keep::First6Last4)
        .map_or_else(
            || held.sql.clone(),
            |(m, _)| String::from_utf8_lossy(&m).into_owned(),
        );
    let (request, rx) = approvals.request(
        (*held.rule).clone(),
        &ctx.meta.workload.0,
        ctx.meta.id,
        &text,
        who.map(|w| w.pid),
        who.and_then(|w| w.exe.clone()),
    );
    info!(session = %ctx.meta.id, workload = %ctx.meta.workload, request = request.id, rule = %held.rule.id, "statement held for approval");
    ctx.shared.approval_event(&request, None);
    let timeout = tokio::time::sleep(held.rule.timeout);
    tokio::pin!(rx, timeout);
    loop {
        tokio::select! {
            decided = &mut rx => {
                let resolution = decided.unwrap_or(Resolution::Withdrawn { reason: "the agent dropped the request".into() });
                return Ok(Some(resolution));
            }
            () = &mut timeout => {
                let resolution = Resolution::Expired;
                if let Some(req) = approvals.end(request.id, resolution.clone()) {
                    ctx.shared.approval_event(&req, Some(&resolution));
                }
                return Ok(Some(resolution));
            }
            read = r.read_buf(buf), if buf.len() < ctx.limits.frontend_large => {
                if read? == 0 {
                    let resolution = Resolution::Withdrawn { reason: "the client disconnected".into() };
                    if let Some(req) = approvals.end(request.id, resolution.clone()) {
                        ctx.shared.approval_event(&req, Some(&resolution));
                    }
                    return Ok(None);
                }
            }
        }
    }
}

/// Sends a held message on, or pgwarden's refusal in its place, with its audit record.
fn release(
    ctx: &Ctx<'_>,
    held: Held,
    resolution: &crate::approval::Resolution,
    out: &mut Vec<Bytes>,
    audits: &mut Vec<AuditItem>,
) {
    use crate::approval::Resolution;
    let refusal = match resolution {
        Resolution::Approved { .. } => None,
        Resolution::Denied { by, comment } => Some((
            "42501",
            "approval.denied",
            format!(
                "pgwarden: approval.denied: {}: denied by {}{}",
                held.rule.id,
                by.user.clone().unwrap_or_else(|| format!("uid {}", by.uid)),
                comment
                    .as_ref()
                    .map_or(String::new(), |c| format!(" ({c})"))
            ),
        )),
        Resolution::Expired => Some((
            "42501",
            "approval.expired",
            format!(
                "pgwarden: approval.expired: {}: no decision within {}s",
                held.rule.id,
                held.rule.timeout.as_secs()
            ),
        )),
        Resolution::Withdrawn { reason } => Some((
            "57014",
            "approval.withdrawn",
            format!(
                "canceling statement due to user request (pgwarden: approval request withdrawn: {reason})"
            ),
        )),
    };
    let n = ctx.state().next_statement();
    let record = match &refusal {
        None => ctx
            .statement_record(Event::Query, &held.sql, Decision::Allow, n)
            .rule(held.rule.id.clone()),
        Some((code, rule, message)) => ctx.denied_record(&held.sql, rule, code, message, n),
    };
    let mut st = ctx.state();
    match (held.kind, refusal) {
        (HeldKind::Query, None) => {
            audits.push(AuditItem {
                record,
                frame: Some((out.len(), RefuseAs::Query)),
            });
            out.push(held.frame.bytes);
            st.segment_sent();
            st.expect(Pending::Query);
            st.in_flight(n, true);
        }
        (HeldKind::Query, Some((code, _, message))) => {
            audits.push(AuditItem {
                record,
                frame: None,
            });
            let token = st.deny(error_bytes(code, &message));
            out.push(encode::query(&token));
            st.segment_sent();
            st.expect(Pending::Query);
        }
        (HeldKind::Execute(portal), None) => {
            audits.push(AuditItem {
                record,
                frame: Some((out.len(), RefuseAs::Execute)),
            });
            out.push(held.frame.bytes);
            st.expect(Pending::Execute(portal));
            st.in_flight(n, false);
        }
        (HeldKind::Execute(_), Some((code, _, message))) => {
            audits.push(AuditItem {
                record,
                frame: None,
            });
            // A Parse the server rejects: it reports the error and skips to Sync, as it would
            // for a failing Execute.
            let token = st.deny(error_bytes(code, &message));
            out.push(encode::parse("pgwarden_refused", &token));
            st.expect(Pending::Parse);
        }
    }
}

fn error_bytes(code: &str, message: &str) -> Bytes {
    encode::error_response(&ErrorFields {
        severity: "ERROR",
        code,
        message,
        detail: None,
        hint: None,
    })
}

async fn client_error(ctx: &Ctx<'_>, e: WireError) -> SessionError {
    let (code, message) = wire_message(&e);
    warn!(session = %ctx.meta.id, workload = %ctx.meta.workload, "ending session: client sent a bad message: {e}");
    ctx.fatal(code, &message).await;
    SessionError::Client(e)
}

/// Handles one client frame, noting the audit records the batch must commit first.
fn on_frontend(
    ctx: &Ctx<'_>,
    frame: Frame,
    out: &mut Vec<Bytes>,
    audits: &mut Vec<AuditItem>,
) -> Result<Step, WireError> {
    match frame.tag {
        b'Q' | b'P' | b'F' => {
            let msg = frontend::decode(&frame)?;
            let (kind, sql, name, oid) = match msg {
                FrontendMsg::Query(sql) => (StatementKind::Query, sql, "", 0),
                FrontendMsg::Parse { name, sql } => (StatementKind::Parse, sql, name, 0),
                FrontendMsg::FunctionCall { oid } => (StatementKind::FunctionCall, "", "", oid),
                _ => (StatementKind::FunctionCall, "", "", 0),
            };
            let mut verdict = ctx.hooks().statement(&Statement { kind, sql, name });
            if kind != StatementKind::FunctionCall {
                ctx.describe(sql);
            }
            if let Verdict::Hold(rule) = &verdict
                && let Some(grant) = ctx
                    .shared
                    .approvals
                    .grant_for(&ctx.meta.workload.0, &rule.id)
            {
                info!(session = %ctx.meta.id, rule = %rule.id, grant = grant.id, "statement passes under an open grant");
                verdict = Verdict::Allow;
            }
            let text = if kind == StatementKind::FunctionCall {
                format!("<fast-path function call, oid {oid}>")
            } else {
                sql.to_owned()
            };
            let decision = match &verdict {
                Verdict::Allow => "allow",
                Verdict::Deny(_) => "deny",
                Verdict::Hold(_) => "hold",
            };
            ctx.shared.metrics.statement(&ctx.meta.workload.0, decision);
            if let Verdict::Hold(rule) = &verdict
                && kind == StatementKind::Query
            {
                return Ok(Step::Hold(Held {
                    frame,
                    kind: HeldKind::Query,
                    rule: Arc::clone(rule),
                    sql: text,
                }));
            }
            let n = ctx.state().next_statement();
            match &verdict {
                Verdict::Deny(d) => {
                    audits.push(AuditItem {
                        record: ctx.denied_record(&text, &d.rule, d.sqlstate, &d.message(), n),
                        frame: None,
                    });
                }
                // A Parse is recorded when its portals run.
                _ if kind == StatementKind::Parse => {}
                _ => {
                    let record = ctx.statement_record(Event::Query, &text, Decision::Allow, n);
                    audits.push(AuditItem {
                        record,
                        frame: Some((out.len(), RefuseAs::Query)),
                    });
                }
            }
            let denied = matches!(verdict, Verdict::Deny(_));
            let mut st = ctx.state();
            match verdict {
                Verdict::Allow => {
                    if kind == StatementKind::Parse {
                        st.parsed(name, sql);
                    }
                    out.push(frame.bytes.clone());
                }
                Verdict::Hold(rule) => {
                    // Extended protocol: the statement is prepared now and held when a portal
                    // of it is executed.
                    st.parsed(name, sql);
                    st.hold_statement(name, rule);
                    out.push(frame.bytes.clone());
                }
                Verdict::Deny(d) => {
                    let token = st.deny(error_bytes(d.sqlstate, &d.message()));
                    if kind == StatementKind::Parse {
                        st.closed(b'S', name);
                        out.push(encode::parse(name, &token));
                    } else {
                        out.push(encode::query(&token));
                    }
                }
            }
            match kind {
                StatementKind::Parse => st.expect(Pending::Parse),
                StatementKind::Query => {
                    st.segment_sent();
                    st.expect(Pending::Query);
                    if !denied {
                        st.in_flight(n, true);
                    }
                }
                StatementKind::FunctionCall => {
                    st.segment_sent();
                    st.expect(Pending::FunctionCall);
                }
            }
        }
        b'B' => {
            if let FrontendMsg::Bind {
                portal,
                statement,
                result_formats,
            } = frontend::decode(&frame)?
            {
                let mut st = ctx.state();
                st.bound(portal, statement, result_formats);
                st.expect(Pending::Bind);
            }
            out.push(frame.bytes);
        }
        b'C' => {
            if let FrontendMsg::Close { kind, name } = frontend::decode(&frame)? {
                let mut st = ctx.state();
                st.closed(kind, name);
                st.expect(Pending::Close);
            }
            out.push(frame.bytes);
        }
        b'D' => {
            if let FrontendMsg::Describe { kind, name } = frontend::decode(&frame)? {
                let p = if kind == b'S' {
                    Pending::DescribeStatement(name.to_owned())
                } else {
                    Pending::DescribePortal(name.to_owned())
                };
                ctx.state().expect(p);
            }
            out.push(frame.bytes);
        }
        b'E' => {
            if let FrontendMsg::Execute { portal, .. } = frontend::decode(&frame)? {
                let portal = portal.to_owned();
                let (held, sql) = {
                    let st = ctx.state();
                    let sql = st
                        .portal(&portal)
                        .and_then(|p| st.statement(&p.statement))
                        .map(|s| s.to_string())
                        .unwrap_or_default();
                    (st.held_portal(&portal), sql)
                };
                if let Some((rule, held_sql)) = held
                    && ctx
                        .shared
                        .approvals
                        .grant_for(&ctx.meta.workload.0, &rule.id)
                        .is_none()
                {
                    return Ok(Step::Hold(Held {
                        frame,
                        kind: HeldKind::Execute(portal),
                        rule,
                        sql: held_sql,
                    }));
                }
                let n = ctx.state().next_statement();
                // The decision was made at Parse; this records the access itself.
                let record = ctx.statement_record(Event::Query, &sql, Decision::Allow, n);
                audits.push(AuditItem {
                    record,
                    frame: Some((out.len(), RefuseAs::Execute)),
                });
                let mut st = ctx.state();
                st.expect(Pending::Execute(portal));
                st.in_flight(n, false);
            }
            out.push(frame.bytes);
        }
        b'S' => {
            let mut st = ctx.state();
            st.segment_sent();
            st.expect(Pending::Sync);
            out.push(frame.bytes);
        }
        b'X' => {
            out.push(frame.bytes);
            return Ok(Step::Terminate);
        }
        _ => out.push(frame.bytes),
    }
    Ok(Step::Continue)
}

async fn backend(ctx: &Ctx<'_>, mut r: ReadHalf, mut buf: BytesMut) -> Result<(), SessionError> {
    let mut out: Vec<Bytes> = Vec::with_capacity(64);
    loop {
        loop {
            let frame = match next_frame(&mut buf, &ctx.limits, Side::Backend) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(server_error(ctx, e).await),
            };
            if let Err(e) = on_backend(ctx, frame, &mut out) {
                return Err(server_error(ctx, e).await);
            }
        }
        {
            let mut w = ctx.client_w.lock().await;
            write_batch(&mut *w, &mut out).await?;
        }
        buf.reserve(READ_CHUNK);
        if r.read_buf(&mut buf).await? == 0 {
            let mut w = ctx.client_w.lock().await;
            let _ = w.shutdown().await;
            return Ok(());
        }
    }
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

fn on_backend(ctx: &Ctx<'_>, frame: Frame, out: &mut Vec<Bytes>) -> Result<(), WireError> {
    match frame.tag {
        b'D' => {
            if let ResultStart::Columns(cols) = ctx.state().data_row() {
                ctx.hooks().result_columns(&cols);
            }
            out.push(ctx.hooks().data_row(&frame).unwrap_or(frame.bytes));
        }
        b'd' => out.push(ctx.hooks().copy_data(&frame).unwrap_or(frame.bytes)),
        b'T' => {
            let cols: Arc<[Column]> = backend::row_description(&frame)?.into();
            if let ResultStart::Columns(cols) = ctx.state().row_description(cols) {
                ctx.hooks().result_columns(&cols);
            }
            out.push(frame.bytes);
        }
        b'C' => {
            let tag = backend::command_complete(&frame)?;
            let done = {
                let mut st = ctx.state();
                let done = st.finish(b'C', None, tag_rows(tag));
                st.reply(b'C');
                done
            };
            ctx.hooks().command_complete(tag);
            finished(ctx, done);
            out.push(frame.bytes);
        }
        b'Z' => {
            let status = backend::ready_for_query(&frame)?;
            let done = {
                let mut st = ctx.state();
                let done = st.finish(b'Z', None, 0);
                st.reply(b'Z');
                st.ready(status);
                done
            };
            finished(ctx, done);
            out.push(frame.bytes);
        }
        b'E' | b'N' => {
            let fields = backend::error_fields(&frame)?;
            let replaced = if frame.tag == b'E' {
                let field = |k: u8| fields.iter().find(|(c, _)| *c == k).map_or("", |(_, m)| *m);
                let (code, message) = (field(b'C'), field(b'M'));
                let mut st = ctx.state();
                let ours = if st.has_markers() {
                    st.replace_error(message)
                } else {
                    None
                };
                // A denial's record was written when it was decided; the server's own errors
                // finish the statements they belong to.
                let done = if ours.is_some() {
                    Vec::new()
                } else {
                    st.finish(b'E', Some((code, message)), 0)
                };
                st.reply(b'E');
                drop(st);
                finished(ctx, done);
                ours
            } else {
                None
            };
            match replaced {
                Some(ours) => out.push(ours),
                None => out.push(ctx.hooks().error(&frame).unwrap_or(frame.bytes)),
            }
        }
        b'K' => {
            let (pid, key) = backend::backend_key(&frame)?;
            ctx.shared
                .register_cancel(ctx.meta.id, pid, key, ctx.meta.server.0);
            out.push(frame.bytes);
        }
        b'1' | b'2' | b'3' | b'n' | b'I' | b's' => {
            let done = {
                let mut st = ctx.state();
                let done = if matches!(frame.tag, b'I' | b's') {
                    st.finish(frame.tag, None, 0)
                } else {
                    Vec::new()
                };
                st.reply(frame.tag);
                done
            };
            finished(ctx, done);
            out.push(frame.bytes);
        }
        _ => out.push(frame.bytes),
    }
    Ok(())
}

/// `query.done` records for statements the server finished: rows, outcome, duration and
/// what was masked. Written without holding up the result stream.
fn finished(ctx: &Ctx<'_>, done: Vec<InFlight>) {
    for f in done {
        let elapsed = f.started.elapsed();
        ctx.shared.metrics.latency(elapsed);
        let mut r = ctx
            .record(Event::QueryDone)
            .detail("statement_no", f.seq)
            .rows(f.rows)
            .duration(elapsed);
        r = match &f.error {
            None => r.outcome(AuditOutcome::Success),
            Some((code, message)) => r
                .outcome(AuditOutcome::Failure)
                .sqlstate(code.clone())
                .error(message.clone()),
        };
        let masked = ctx.hooks().take_masked();
        let total: u64 = masked.iter().map(|m| m.count).sum();
        ctx.shared.metrics.masked(&ctx.meta.workload.0, total);
        for m in masked {
            r = r.masked(m.column, m.method, m.count);
        }
        ctx.journal.submit(r);
    }
}
