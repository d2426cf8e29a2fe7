//! The client-to-server direction: every statement (Query, Parse, FunctionCall) is decided
//! before anything of it reaches the server, its record is committed before its batch is
//! sent, and a refused one is replaced in place by a statement the server rejects (so the
//! client sees pgwarden's error where PostgreSQL would have put one).
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing::warn;

use super::hold::{self, Held, HeldKind};
use super::{AuditItem, Ctx, READ_CHUNK, ReadHalf, RefuseAs, Resolving, WriteHalf, guard, lock};
use crate::policy::{Context, Decision, Statement, StatementKind, Verdict};
use crate::session::SessionError;
use crate::session::conn::write_batch;
use crate::session::recorder::Described;
use crate::session::state::{Pending, ReadWatch};
use crate::sqltext::{Reader, Text};
use crate::wire::encode;
use crate::wire::frontend::{self, FrontendMsg};
use crate::wire::{Frame, Side, WireError, next_frame};

/// What the frontend direction does after a message.
pub(super) enum Step {
    Continue,
    Terminate,
    Hold(Held),
    /// A simple Query that writes under a row limit: sent once the server answered
    /// everything before it (so the transaction it runs in is known).
    Guard(Guarded),
    /// A simple Query passing under an open grant of a rule with `run_as`: run as that role.
    Elevate(Held),
}

/// A simple Query that writes under a row limit, decided and described.
pub(super) struct Guarded {
    frame: Frame,
    desc: Arc<Described>,
    limit: crate::policy::WriteGuard,
    /// Its read limits (a RETURNING result is counted too).
    reads: Vec<crate::policy::ReadLimit>,
    sql: Arc<str>,
}

/// Sends what is ready: the batch's records committed, then the batch.
pub(super) async fn send(
    ctx: &Ctx<'_>,
    w: &tokio::sync::Mutex<WriteHalf>,
    out: &mut Vec<Bytes>,
    audits: &mut Vec<AuditItem>,
) -> std::io::Result<()> {
    commit(ctx, out, audits).await;
    if out.is_empty() {
        return Ok(());
    }
    write_batch(&mut *w.lock().await, out).await
}

pub(super) async fn run(
    ctx: &Ctx<'_>,
    mut r: ReadHalf,
    w: &tokio::sync::Mutex<WriteHalf>,
    mut buf: BytesMut,
) -> Result<(), SessionError> {
    let mut out: Vec<Bytes> = Vec::with_capacity(16);
    let mut audits: Vec<AuditItem> = Vec::new();
    // Statement text is read into the same buffers, statement after statement.
    let mut reader = Reader::default();
    loop {
        loop {
            let frame = match next_frame(&mut buf, &ctx.limits, Side::Frontend) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(super::client_error(ctx, e).await),
            };
            // While a guarded write's rows are counted nothing more reaches the server but
            // its COPY data: the verdict (and the undo) goes first.
            if !matches!(frame.tag, b'd' | b'c' | b'f') && guard::open(ctx) {
                send(ctx, w, &mut out, &mut audits).await?;
                ctx.until(|c| !guard::open(c)).await;
            }
            match on_frame(ctx, frame, &mut out, &mut audits, &mut reader) {
                Ok(Step::Continue) => {}
                Ok(Step::Terminate) => {
                    // Terminate: pass it on and stop reading.
                    send(ctx, w, &mut out, &mut audits).await?;
                    let _ = w.lock().await.shutdown().await;
                    return Ok(());
                }
                Ok(Step::Hold(held)) => {
                    // Everything before the held message goes first; what follows waits.
                    send(ctx, w, &mut out, &mut audits).await?;
                    let Some(resolution) = hold::wait(ctx, &held, &mut r, &mut buf).await? else {
                        let _ = w.lock().await.shutdown().await;
                        return Ok(());
                    };
                    let refusal = hold::refusal(&held, &resolution);
                    release(ctx, w, held, refusal, &mut out, &mut audits).await?;
                }
                Ok(Step::Elevate(held)) => {
                    release(ctx, w, held, None, &mut out, &mut audits).await?;
                }
                Ok(Step::Guard(g)) => {
                    send(ctx, w, &mut out, &mut audits).await?;
                    ctx.until(|c| c.state().quiet()).await;
                    guarded_query(ctx, g, &mut out, &mut audits);
                }
                Err(e) => return Err(super::client_error(ctx, e).await),
            }
        }
        send(ctx, w, &mut out, &mut audits).await?;
        buf.reserve(READ_CHUNK.min(ctx.limits.frontend_large));
        if r.read_buf(&mut buf).await? == 0 {
            let _ = w.lock().await.shutdown().await;
            return Ok(());
        }
    }
}

/// Sends a held (or granted) message on, or its refusal: an approved Query of a rule with
/// `run_as` runs as that role; an approved write under a row limit goes once the server is
/// quiet (its transaction must be known).
async fn release(
    ctx: &Ctx<'_>,
    w: &tokio::sync::Mutex<WriteHalf>,
    held: Held,
    refusal: Option<hold::Refusal>,
    out: &mut Vec<Bytes>,
    audits: &mut Vec<AuditItem>,
) -> Result<(), SessionError> {
    if refusal.is_none() {
        if let (Some(role), HeldKind::Query) = (held.rule.run_as.clone(), &held.kind) {
            return super::elevate::run(ctx, w, held, &role, out, audits).await;
        }
        if held.guard.is_some() {
            ctx.until(|c| c.state().quiet()).await;
        }
    }
    hold::release(ctx, held, refusal, out, audits);
    Ok(())
}

/// Sends a guarded simple Query, now that the server is quiet: in pgwarden's transaction
/// when the client has none open, between the counts of rows changed.
fn guarded_query(ctx: &Ctx<'_>, g: Guarded, out: &mut Vec<Bytes>, audits: &mut Vec<AuditItem>) {
    let Guarded {
        frame,
        desc,
        limit,
        reads,
        sql,
    } = g;
    guard::arm_query(ctx, limit, out, |out| {
        let n = ctx.state().next_statement();
        if ctx.recorder.enabled() {
            audits.push(AuditItem {
                record: ctx.recorder.allowed(&desc, n, None),
                frame: Some((out.len(), RefuseAs::Query)),
            });
        }
        out.push(frame.bytes);
        let mut st = ctx.state();
        st.segment_sent();
        st.expect(Pending::Query);
        st.in_flight(n, true);
        if !reads.is_empty() {
            st.watch_last(ReadWatch::new(reads, sql));
        }
    });
}

/// Commits the batch's audit records before the batch is sent. In strict mode they are on
/// disk first; when the journal cannot be written, every statement of the batch is refused
/// in place (SQLSTATE 58030) and nothing reaches the server.
async fn commit(ctx: &Ctx<'_>, out: &mut [Bytes], items: &mut Vec<AuditItem>) {
    if items.is_empty() {
        return;
    }
    let journal = ctx.recorder.journal();
    if !journal.is_strict() {
        // Async mode: queued, never waited for (a full queue is counted in an audit.gap).
        for i in items.drain(..) {
            journal.submit_prepared(i.record);
        }
        return;
    }
    // Strict: on disk before the batch goes; several share one group commit.
    // Where each record's statement sits in the batch, kept inline (one allocation fewer per
    // batch); the records go to the journal.
    let frames: smallvec::SmallVec<[Option<(usize, RefuseAs)>; 8]> =
        items.iter().map(|i| i.frame).collect();
    // Handed over as they are drained: no Vec of them on the way.
    if let Err(e) = journal.append_all(items.drain(..).map(|i| i.record)).await {
        warn!(session = %ctx.meta.id, workload = %ctx.meta.workload, "refusing statements: the audit journal cannot be written: {e}");
        let message =
            format!("pgwarden: the audit journal cannot be written ({e}); statement refused");
        let mut st = ctx.state();
        for (index, how) in frames.into_iter().flatten() {
            let token = st.deny(super::error_bytes("58030", &message));
            out[index] = match how {
                RefuseAs::Query => encode::query(&token),
                RefuseAs::Execute => encode::parse("pgwarden_refused", &token),
            };
        }
    }
}

/// At the start of a batch, moves the session to the current policy version: decisions and
/// masks of the batch follow it together. When the masks change, pgwarden's catalog query
/// goes first, and the backend direction swaps the masks at its reply, before any result
/// of what follows.
///
/// In a failed transaction (the server's last ReadyForQuery said `E`) the catalog query would
/// fail, and nothing but transaction control runs there anyway: the session stays on its
/// version, decisions and masks together, until the transaction ends. The version's
/// `record_results` goes with it (what its statements keep of their results).
fn follow_policy(ctx: &Ctx<'_>, out: &mut Vec<Bytes>) {
    let latest = ctx.env.policy.current();
    let profile = latest
        .workloads
        .get(&ctx.meta.workload.0)
        .map(|c| &c.profile);
    {
        let mut st = ctx.state();
        if st.txn_status == b'E' {
            return;
        }
        // What the statements of this batch keep of their results, by the same version.
        st.record_results(
            profile
                .and_then(|p| p.record_results)
                .filter(|_| ctx.recorder.enabled()),
        );
    }
    let rules = profile.map(|p| Arc::clone(&p.mask));
    *lock(&ctx.pin) = Arc::clone(&latest);
    let change = ctx.masking().follow(&latest, rules);
    if let Some(change) = change {
        out.push(encode::query(&change.query));
        // Queued before the server can answer: its reply is read only after this batch goes.
        lock(&ctx.changes).push_back(Resolving {
            change,
            rows: Vec::new(),
            error: None,
        });
        let mut st = ctx.state();
        st.segment_sent();
        st.expect(Pending::Resolve);
    }
}

/// Handles one client frame, noting the audit records the batch must commit first.
fn on_frame(
    ctx: &Ctx<'_>,
    frame: Frame,
    out: &mut Vec<Bytes>,
    audits: &mut Vec<AuditItem>,
    reader: &mut Reader,
) -> Result<Step, WireError> {
    let starts_batch = matches!(frame.tag, b'Q' | b'P' | b'F' | b'B' | b'D' | b'E' | b'C');
    if starts_batch && !ctx.state().batch_open() {
        follow_policy(ctx, out);
    }
    match frame.tag {
        b'Q' | b'P' | b'F' => return statement(ctx, frame, out, audits, reader),
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
                    lock(&ctx.prepared).remove(name);
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
            let portal = match frontend::decode(&frame)? {
                FrontendMsg::Execute { portal, .. } => Some(portal.to_owned()),
                _ => None,
            };
            if let Some(portal) = portal {
                return Ok(execute(ctx, frame, portal, out, audits));
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
        b'c' | b'f' => {
            out.push(frame.bytes);
            // The end of a guarded COPY FROM's data: now its rows can be counted.
            if let Some(after) = lock(&ctx.guard).as_mut().and_then(|g| g.deferred.take()) {
                out.push(after);
            }
        }
        _ => out.push(frame.bytes),
    }
    Ok(Step::Continue)
}

/// A Query, Parse or FunctionCall: decided, described from the decision, recorded, then
/// sent, held or refused.
fn statement(
    ctx: &Ctx<'_>,
    frame: Frame,
    out: &mut Vec<Bytes>,
    audits: &mut Vec<AuditItem>,
    reader: &mut Reader,
) -> Result<Step, WireError> {
    let (kind, sql, name, oid) = match frontend::decode(&frame)? {
        FrontendMsg::Query(sql) => (StatementKind::Query, sql, "", 0),
        FrontendMsg::Parse { name, sql } => (StatementKind::Parse, sql, name, 0),
        FrontendMsg::FunctionCall { oid } => (StatementKind::FunctionCall, "", "", oid),
        _ => (StatementKind::FunctionCall, "", "", 0),
    };
    // Read once: the policy's cache key and the journal's normalized text.
    let text = (kind != StatementKind::FunctionCall).then(|| reader.read(sql));
    let mut decision = decide(ctx, kind, sql, name, text);
    if decision.guard.is_some() && kind == StatementKind::Query && ctx.state().batch_open() {
        // Its transaction cannot be known or bracketed inside an unfinished batch.
        decision.verdict = Verdict::Deny(crate::policy::Denied {
            rule: decision.guard.as_ref().map_or_else(String::new, |g| g.rule.clone()),
            reason: "a write with a row limit cannot be sent as a simple Query inside an unfinished extended-protocol batch (send Sync first)".into(),
            sqlstate: "42501",
        });
    }
    if let Some(rule) = &decision.run_as
        && let Some(role) = &rule.run_as
        && !matches!(decision.verdict, Verdict::Deny(_))
        && (kind != StatementKind::Query || ctx.state().batch_open())
    {
        // pgwarden sets the role around one simple Query, and nothing of its own may enter
        // an unfinished batch.
        decision.verdict = Verdict::Deny(crate::policy::Denied {
            rule: rule.id.clone(),
            reason: format!(
                "this rule runs statements as `{role}`, which pgwarden does for a simple Query outside an extended-protocol batch only (send it as a simple Query)"
            ),
            sqlstate: "0A000",
        });
    }
    let desc = describe(ctx, sql, oid, text, &decision);
    ctx.env
        .metrics
        .statement(&ctx.meta.workload.0, decision.verdict.name());
    if let Verdict::Hold(rule) = &decision.verdict
        && kind == StatementKind::Query
    {
        return Ok(Step::Hold(held_query(
            rule,
            sql.to_owned(),
            desc,
            frame,
            &decision,
        )));
    }
    if let (Verdict::Allow, Some(rule)) = (&decision.verdict, &decision.run_as) {
        // Passing under a grant of a rule with `run_as`: released as that rule's approval.
        return Ok(Step::Elevate(held_query(
            rule,
            sql.to_owned(),
            desc,
            frame,
            &decision,
        )));
    }
    if let (Verdict::Allow, Some(limit), StatementKind::Query) =
        (&decision.verdict, &decision.guard, kind)
    {
        let sql = Arc::from(sql);
        return Ok(Step::Guard(Guarded {
            frame,
            desc,
            limit: limit.clone(),
            reads: decision.reads.clone(),
            sql,
        }));
    }
    let n = ctx.state().next_statement();
    match &decision.verdict {
        Verdict::Deny(d) => audits.push(AuditItem {
            record: ctx
                .recorder
                .denied(&desc, &d.rule, d.sqlstate, &d.message(), n),
            frame: None,
        }),
        // A Parse is recorded when its portals run.
        _ if kind == StatementKind::Parse || !ctx.recorder.enabled() => {}
        _ => audits.push(AuditItem {
            record: ctx.recorder.allowed(&desc, n, None),
            frame: Some((out.len(), RefuseAs::Query)),
        }),
    }
    let denied = matches!(decision.verdict, Verdict::Deny(_));
    if kind == StatementKind::Parse {
        let mut prepared = lock(&ctx.prepared);
        if denied {
            prepared.remove(name);
        } else {
            prepared.insert(name.to_owned(), Arc::clone(&desc));
        }
    }
    let reads = decision.reads;
    let mut st = ctx.state();
    match decision.verdict {
        Verdict::Allow => {
            if kind == StatementKind::Parse {
                st.parsed(name, sql);
                if let Some(limit) = decision.guard {
                    st.guard_statement(name, limit);
                }
                if !reads.is_empty() {
                    st.limit_statement_reads(name, reads.clone());
                }
            }
            out.push(frame.bytes.clone());
        }
        Verdict::Hold(rule) => {
            // Extended protocol: the statement is prepared now and held when a portal of it
            // is executed.
            st.parsed(name, sql);
            st.hold_statement(name, rule);
            if let Some(limit) = decision.guard {
                st.guard_statement(name, limit);
            }
            if !reads.is_empty() {
                st.limit_statement_reads(name, reads.clone());
            }
            out.push(frame.bytes.clone());
        }
        Verdict::Deny(d) => {
            let token = st.deny(super::error_bytes(d.sqlstate, &d.message()));
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
                if !reads.is_empty() {
                    st.watch_last(ReadWatch::new(reads, Arc::from(sql)));
                }
            }
        }
        StatementKind::FunctionCall => {
            st.segment_sent();
            st.expect(Pending::FunctionCall);
        }
    }
    Ok(Step::Continue)
}

/// A simple Query of `rule`'s, to be held or run as its role, with its limits by effect.
fn held_query(
    rule: &Arc<crate::approval::Rule>,
    sql: String,
    desc: Arc<Described>,
    frame: Frame,
    decision: &Decision,
) -> Held {
    Held {
        kind: HeldKind::Query,
        rule: Arc::clone(rule),
        sql,
        desc,
        frame,
        guard: decision.guard.clone(),
        reads: decision.reads.clone(),
    }
}

/// The policy's decision on a statement, under the batch's policy version.
fn decide(
    ctx: &Ctx<'_>,
    kind: StatementKind,
    sql: &str,
    name: &str,
    text: Option<&Text>,
) -> Decision {
    let pin = Arc::clone(&lock(&ctx.pin));
    let lexer = lock(&ctx.lexer_unsafe).clone();
    let workload = &ctx.meta.workload.0;
    let grant = |rule: &str| ctx.env.approvals.grant_for(workload, rule).map(|g| g.id);
    let context = Context {
        statement: Statement {
            kind,
            sql,
            name,
            shape: text.and_then(|t| t.shape.as_deref()),
        },
        lexer_unsafe: lexer.as_deref(),
        grant: &grant,
    };
    lock(&ctx.policy).decide(&pin, &context)
}

/// How the journal describes a statement under its decision.
fn describe(
    ctx: &Ctx<'_>,
    sql: &str,
    oid: u32,
    text: Option<&Text>,
    decision: &Decision,
) -> Arc<Described> {
    match text {
        // The policy read it: cached by normalized text.
        Some(t) if decision.facts.is_some() => ctx.recorder.describe(sql, t, decision),
        // Refused unread (a lexer-unsafe session, a workload without policy): the text alone.
        Some(_) => ctx.recorder.describe_text(sql, decision),
        None => ctx
            .recorder
            .describe_text(&format!("<fast-path function call, oid {oid}>"), decision),
    }
}

/// An Execute: the decision was made at Parse; this records the access itself, or holds it
/// when the statement needs approval and no grant is open.
fn execute(
    ctx: &Ctx<'_>,
    frame: Frame,
    portal: String,
    out: &mut Vec<Bytes>,
    audits: &mut Vec<AuditItem>,
) -> Step {
    let held = ctx.state().held_portal(&portal);
    let desc = portal_description(ctx, &portal);
    if let Some((rule, held_sql)) = held
        && ctx
            .env
            .approvals
            .grant_for(&ctx.meta.workload.0, &rule.id)
            .is_none()
    {
        return Step::Hold(Held {
            frame,
            kind: HeldKind::Execute(portal),
            rule,
            sql: held_sql,
            desc,
            guard: None,
            reads: Vec::new(),
        });
    }
    let limit = {
        let st = ctx.state();
        // A batch the server skips already runs nothing: there is nothing to count.
        st.guarded_portal(&portal).filter(|_| !st.skipping())
    };
    let send = |out: &mut Vec<Bytes>| {
        let n = ctx.state().next_statement();
        if ctx.recorder.enabled() {
            audits.push(AuditItem {
                record: ctx.recorder.allowed(&desc, n, None),
                frame: Some((out.len(), RefuseAs::Execute)),
            });
        }
        let mut st = ctx.state();
        let watch = st.portal_reads(&portal);
        st.expect(Pending::Execute(portal));
        st.in_flight(n, false);
        if let Some(w) = watch {
            st.watch_last(w);
        }
        out.push(frame.bytes);
    };
    match limit {
        Some(limit) => guard::arm_execute(ctx, limit, out, send),
        None => send(out),
    }
    Step::Continue
}

/// The description of the statement behind `portal`.
fn portal_description(ctx: &Ctx<'_>, portal: &str) -> Arc<Described> {
    let (name, sql) = {
        let st = ctx.state();
        let Some(p) = st.portal(portal) else {
            return ctx.recorder.describe_unknown("");
        };
        let name = p.statement.clone();
        let sql = st.statement(&name).cloned();
        (name, sql)
    };
    let found = lock(&ctx.prepared).get(&name).cloned();
    found.unwrap_or_else(|| ctx.recorder.describe_unknown(sql.as_deref().unwrap_or("")))
}
