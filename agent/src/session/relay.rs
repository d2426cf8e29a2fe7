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
use crate::audit::canon::{self, Prepared, SessionFields, StatementFields};
use crate::audit::{Db, Decision, Event, Journal, Masked, Outcome as AuditOutcome, Record};
use crate::daemon::Shared;
use crate::hooks::{SessionHooks, Statement, StatementKind, Verdict};
use crate::sqltext::Text;
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
    /// The session's own record fields, serialized once.
    fields: SessionFields,
    /// How statements are described in the journal, by normalized text: repeated queries and
    /// queries differing only in literals are described (and serialized) once.
    described: Mutex<Descriptions>,
    /// The description of each prepared statement, by name, for the records of its Executes.
    prepared: Mutex<std::collections::HashMap<String, Arc<Described>>>,
    /// Whether the journal keeps records (`audit.mode` is not `off`).
    audit: bool,
    /// The server reported a setting under which PostgreSQL reads statement text differently
    /// from pgwarden's parser (`standard_conforming_strings` off, an ASCII-unsafe client
    /// encoding): every statement is refused from then on.
    lexer_unsafe: Mutex<Option<String>>,
    /// The description of every statement when it does not.
    blank: Arc<Described>,
}

/// Statement descriptions of one policy version.
#[derive(Default)]
struct Descriptions {
    version: u64,
    by_text: std::collections::HashMap<Box<str>, Arc<Described>>,
}

/// What the journal says of a statement, whoever runs it and whenever.
struct Described {
    /// The canonical JSON of the record's `statement` object.
    statement: Box<[u8]>,
    /// The policy's hash, when one decided.
    policy_hash: Option<String>,
    /// Whether the results pass through masking.
    masked: bool,
}

/// Statements whose audit description a session keeps.
const DESCRIBED: usize = 256;

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
            .client(m.client.clone())
            .server(m.server.clone())
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

    /// How the journal describes `sql` (read as `text`), as the policy just decided on it:
    /// cached by normalized text for the current policy version.
    fn describe(&self, sql: &str, text: &Text) -> Arc<Described> {
        if !self.audit {
            return Arc::clone(&self.blank);
        }
        let version = self.hooks().policy_version();
        {
            let mut d = self
                .described
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if d.version != version {
                d.version = version;
                d.by_text.clear();
            }
            if let Some(found) = d.by_text.get(text.normalized.as_str()) {
                return Arc::clone(found);
            }
        }
        let info = self.hooks().last_decision().unwrap_or_default();
        let statement = self
            .journal
            .statement_of(sql, text)
            .command(info.command.clone())
            .objects(info.objects.clone());
        let described = Arc::new(Described {
            statement: canon::statement_json(&statement),
            policy_hash: (!info.policy_hash.is_empty()).then_some(info.policy_hash),
            masked: info.masked,
        });
        let mut d = self
            .described
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if d.by_text.len() >= DESCRIBED {
            d.by_text.clear();
        }
        d.by_text
            .insert(text.normalized.as_str().into(), Arc::clone(&described));
        described
    }

    /// A description of a text the policy did not just decide on (a fast-path call, a
    /// prepared statement whose description is gone): the text alone.
    fn describe_text(&self, sql: &str) -> Arc<Described> {
        let info = self.hooks().last_decision().unwrap_or_default();
        Arc::new(Described {
            statement: canon::statement_json(&self.journal.statement(sql)),
            policy_hash: (!info.policy_hash.is_empty()).then_some(info.policy_hash),
            masked: info.masked,
        })
    }

    /// The description of the statement behind `portal`.
    fn portal_description(&self, portal: &str) -> Option<Arc<Described>> {
        let (name, sql) = {
            let st = self.state();
            let name = st.portal(portal)?.statement.clone();
            let sql = st.statement(&name).map(|s| s.to_string());
            (name, sql)
        };
        let found = self
            .prepared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&name)
            .cloned();
        found.or_else(|| sql.map(|sql| self.describe_text(&sql)))
    }

    /// A record about a statement, with what the policy saw in it.
    fn statement_record(
        &self,
        event: Event,
        desc: &Described,
        decision: Decision,
        n: u64,
        rule: Option<&str>,
    ) -> Prepared {
        let decision = if decision == Decision::Allow && desc.masked {
            Decision::Mask
        } else {
            decision
        };
        let mut f = StatementFields::new(event, std::time::SystemTime::now(), n);
        f.decision = Some(decision);
        f.statement = Some(&desc.statement);
        f.policy_hash = desc.policy_hash.as_deref();
        f.rule = rule;
        canon::statement_record(&self.fields, &f)
    }

    fn denied_record(
        &self,
        desc: &Described,
        rule: &str,
        code: &str,
        message: &str,
        n: u64,
    ) -> Prepared {
        let mut f = StatementFields::new(Event::QueryDenied, std::time::SystemTime::now(), n);
        f.decision = Some(Decision::Deny);
        f.statement = Some(&desc.statement);
        f.policy_hash = desc.policy_hash.as_deref();
        f.rule = Some(rule);
        f.outcome = Some(AuditOutcome::Failure);
        f.sqlstate = Some(code);
        f.error = Some(message);
        canon::statement_record(&self.fields, &f)
    }

    /// Notes a ParameterStatus from the server; `Some(reason)` when it makes the session's
    /// statement text ambiguous to pgwarden's parser.
    fn parameter_status(&self, frame: &Frame) -> Result<Option<String>, WireError> {
        let (name, value) = backend::parameter_status(frame)?;
        if crate::policy::analyze::lexer_safe(name, value) {
            return Ok(None);
        }
        let why = format!("the server reports {name} = {value}");
        warn!(session = %self.meta.id, workload = %self.meta.workload, "{why}: PostgreSQL would read statement text differently from pgwarden's parser; refusing this session's statements");
        *self
            .lexer_unsafe
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(why.clone());
        Ok(Some(why))
    }

    /// Why this session's statements are refused, if the server reported a setting that
    /// makes their text ambiguous.
    fn lexer_refusal(&self) -> Option<crate::hooks::Denied> {
        let why = self
            .lexer_unsafe
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()?;
        Some(crate::hooks::Denied {
            rule: "setting.lexer".into(),
            reason: format!(
                "{why}: PostgreSQL would read statement text differently from pgwarden's parser (standard_conforming_strings must be on; client encodings whose characters can end in a backslash are refused)"
            ),
            sqlstate: "42501",
        })
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

/// The fields every record of the session carries (as [`Ctx::record`] sets them).
fn session_fields(m: &SessionMeta) -> SessionFields {
    let actor = m.identity.as_ref().map(crate::audit::Actor::from);
    let workload = m
        .identity
        .as_ref()
        .map_or_else(|| m.workload.to_string(), |who| who.workload.to_string());
    SessionFields::new(
        &m.id.to_string(),
        &workload,
        actor.as_ref(),
        m.client.clone().into(),
        m.server.clone().into(),
        &Db {
            user: Some(m.db.user.clone()),
            database: Some(m.db.database.clone()),
            application_name: m.db.application_name.clone(),
        },
    )
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
        fields: session_fields(meta),
        described: Mutex::new(Descriptions::default()),
        prepared: Mutex::new(std::collections::HashMap::new()),
        audit: shared.audit.enabled(),
        lexer_unsafe: Mutex::new(None),
        blank: Arc::new(Described {
            statement: Box::new([]),
            policy_hash: None,
            masked: false,
        }),
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
            ctx.journal.submit_prepared(i.record);
        }
        return;
    }
    // Strict: on disk before the batch goes; several share one group commit.
    let (records, frames): (Vec<Prepared>, Vec<Option<(usize, RefuseAs)>>) =
        items.drain(..).map(|i| (i.record, i.frame)).unzip();
    if let Err(e) = ctx.journal.append_all(records).await {
        warn!(session = %ctx.meta.id, workload = %ctx.meta.workload, "refusing statements: the audit journal cannot be written: {e}");
        let message =
            format!("pgwarden: the audit journal cannot be written ({e}); statement refused");
        let mut st = ctx.state();
        for (index, how) in frames.into_iter().flatten() {
            let token = st.deny(error_bytes("58030", &message));
            out[index] = match how {
                RefuseAs::Query => encode::query(&token),
                RefuseAs::Execute => encode::parse("pgwarden_refused", &token),
            };
        }
    }
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
                ctx.shared.register_cancel(ctx.meta, pid, key);
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
            b'S' => {
                if let Some(why) = ctx.parameter_status(&frame).map_err(SessionError::Server)? {
                    ctx.fatal(
                        "42501",
                        &format!(
                            "pgwarden: setting.lexer: {why}: PostgreSQL would read statement text differently from pgwarden's parser; session refused"
                        ),
                    )
                    .await;
                    return Ok(false);
                }
                out.push(frame.bytes);
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
    /// How the journal describes it.
    desc: Arc<Described>,
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
        None => ctx.statement_record(
            Event::Query,
            &held.desc,
            Decision::Allow,
            n,
            Some(&held.rule.id),
        ),
        Some((code, rule, message)) => ctx.denied_record(&held.desc, rule, code, message, n),
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
            // Read once: the policy's cache key and the journal's normalized text.
            let text = (kind != StatementKind::FunctionCall).then(|| Text::of(sql));
            let refused = ctx.lexer_refusal();
            let lexer_refused = refused.is_some();
            let mut verdict = match refused {
                Some(d) => Verdict::Deny(d),
                None => ctx.hooks().statement(&Statement {
                    kind,
                    sql,
                    name,
                    shape: text.as_ref().and_then(|t| t.shape.as_deref()),
                }),
            };
            let desc = match &text {
                // The policy did not look at it: the text alone.
                Some(_) if lexer_refused => ctx.describe_text(sql),
                Some(t) => ctx.describe(sql, t),
                None => ctx.describe_text(&format!("<fast-path function call, oid {oid}>")),
            };
            if let Verdict::Hold(rule) = &verdict
                && let Some(grant) = ctx
                    .shared
                    .approvals
                    .grant_for(&ctx.meta.workload.0, &rule.id)
            {
                info!(session = %ctx.meta.id, rule = %rule.id, grant = grant.id, "statement passes under an open grant");
                verdict = Verdict::Allow;
            }
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
                    kind: HeldKind::Query,
                    rule: Arc::clone(rule),
                    sql: sql.to_owned(),
                    desc,
                    frame,
                }));
            }
            let n = ctx.state().next_statement();
            match &verdict {
                Verdict::Deny(d) => {
                    audits.push(AuditItem {
                        record: ctx.denied_record(&desc, &d.rule, d.sqlstate, &d.message(), n),
                        frame: None,
                    });
                }
                // A Parse is recorded when its portals run.
                _ if kind == StatementKind::Parse || !ctx.audit => {}
                _ => {
                    let record =
                        ctx.statement_record(Event::Query, &desc, Decision::Allow, n, None);
                    audits.push(AuditItem {
                        record,
                        frame: Some((out.len(), RefuseAs::Query)),
                    });
                }
            }
            let denied = matches!(verdict, Verdict::Deny(_));
            if kind == StatementKind::Parse {
                let mut prepared = ctx.prepared.lock().unwrap_or_else(PoisonError::into_inner);
                if denied {
                    prepared.remove(name);
                } else {
                    prepared.insert(name.to_owned(), Arc::clone(&desc));
                }
            }
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
                if kind == b'S' {
                    ctx.prepared
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(name);
                }
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
                let held = ctx.state().held_portal(&portal);
                let desc = ctx
                    .portal_description(&portal)
                    .unwrap_or_else(|| ctx.describe_text(""));
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
                        desc,
                    }));
                }
                let n = ctx.state().next_statement();
                // The decision was made at Parse; this records the access itself.
                if ctx.audit {
                    let record =
                        ctx.statement_record(Event::Query, &desc, Decision::Allow, n, None);
                    audits.push(AuditItem {
                        record,
                        frame: Some((out.len(), RefuseAs::Execute)),
                    });
                }
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
            ctx.shared.register_cancel(ctx.meta, pid, key);
            out.push(frame.bytes);
        }
        b'S' => {
            // A setting that changes how PostgreSQL reads text: later statements are refused
            // (the policy denies the SETs it sees; this catches any other way, e.g. a role's
            // default applied by ALTER ROLE ... SET).
            ctx.parameter_status(&frame)?;
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
        if !ctx.audit {
            let total: u64 = ctx.hooks().take_masked().iter().map(|m| m.count).sum();
            ctx.shared.metrics.masked(&ctx.meta.workload.0, total);
            continue;
        }
        let masked: Vec<Masked> = ctx
            .hooks()
            .take_masked()
            .into_iter()
            .map(|m| Masked {
                column: m.column,
                method: m.method.to_owned(),
                count: m.count,
            })
            .collect();
        let total: u64 = masked.iter().map(|m| m.count).sum();
        ctx.shared.metrics.masked(&ctx.meta.workload.0, total);
        let mut fields =
            StatementFields::new(Event::QueryDone, std::time::SystemTime::now(), f.seq);
        fields.rows = Some(f.rows);
        fields.duration_us = Some(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
        fields.masked = &masked;
        match &f.error {
            None => fields.outcome = Some(AuditOutcome::Success),
            Some((code, message)) => {
                fields.outcome = Some(AuditOutcome::Failure);
                fields.sqlstate = Some(code);
                fields.error = Some(message);
            }
        }
        ctx.journal
            .submit_prepared(canon::statement_record(&ctx.fields, &fields));
    }
}
