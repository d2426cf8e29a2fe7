//! Statements held for just-in-time approval: the request (its text with card numbers
//! masked), the wait (the client's further bytes kept, a client that leaves withdraws it),
//! and the release: the statement sent on, or pgwarden's refusal in its place.
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt as _;
use tracing::info;

use super::{AuditItem, Ctx, ReadHalf, RefuseAs};
use crate::session::SessionError;
use crate::session::recorder::Described;
use crate::session::state::{Pending, ReadWatch};
use crate::wire::{Frame, encode};

/// A message held for approval.
pub(super) struct Held {
    pub frame: Frame,
    /// How it is recorded once released: a Query, or an Execute of `portal`.
    pub kind: HeldKind,
    pub rule: Arc<crate::approval::Rule>,
    pub sql: String,
    /// How the journal describes it.
    pub desc: Arc<Described>,
    /// A Query's row limit on what it writes (an Execute's is its statement's).
    pub guard: Option<crate::policy::WriteGuard>,
    /// A Query's read limits (an Execute's are its statement's).
    pub reads: Vec<crate::policy::ReadLimit>,
}

pub(super) enum HeldKind {
    Query,
    Execute(String),
}

/// Waits for the decision on a held message. Bytes the client sends meanwhile are kept in
/// `buf` (up to the statement limit); `None` when the client left (the request is withdrawn).
pub(super) async fn wait(
    ctx: &Ctx<'_>,
    held: &Held,
    r: &mut ReadHalf,
    buf: &mut BytesMut,
) -> Result<Option<crate::approval::Resolution>, SessionError> {
    use crate::approval::Resolution;
    let approvals = &ctx.env.approvals;
    let who = ctx.meta.identity.as_ref();
    let text = crate::mask::pan::mask_pans(held.sql.as_bytes(), crate::mask::Keep::First6Last4)
        .map_or_else(
            || held.sql.clone(),
            |(m, _)| String::from_utf8_lossy(&m).into_owned(),
        );
    let (request, rx) = approvals.request(crate::approval::Hold {
        rule: (*held.rule).clone(),
        workload: &ctx.meta.workload.0,
        session: ctx.meta.id,
        statement: text,
        sql: &held.sql,
        reason: held.rule.reason.clone(),
        who,
    });
    info!(session = %ctx.meta.id, workload = %ctx.meta.workload, request = request.id, rule = %held.rule.id, "statement held for approval");
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
                approvals.end(request.id, resolution.clone());
                return Ok(Some(resolution));
            }
            read = r.read_buf(buf), if buf.len() < ctx.limits.frontend_large => {
                if read? == 0 {
                    let resolution = Resolution::Withdrawn { reason: "the client disconnected".into() };
                    approvals.end(request.id, resolution.clone());
                    return Ok(None);
                }
            }
        }
    }
}

/// Why a held message is refused: SQLSTATE, the record's rule, the client's message.
pub(super) type Refusal = (&'static str, &'static str, String);

/// The refusal a resolution means (`None`: approved).
pub(super) fn refusal(held: &Held, resolution: &crate::approval::Resolution) -> Option<Refusal> {
    use crate::approval::Resolution;
    match resolution {
        Resolution::Approved { .. } => None,
        Resolution::Denied { by, comment } => Some((
            "42501",
            "approval.denied",
            format!(
                "pgwarden: approval.denied: {}: denied by {}{}",
                held.rule.id,
                by.name(),
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
    }
}

/// Sends a held message on (`refusal` none: approved, or passing under a grant), or
/// pgwarden's refusal in its place, with its audit record.
pub(super) fn release(
    ctx: &Ctx<'_>,
    held: Held,
    refusal: Option<Refusal>,
    out: &mut Vec<Bytes>,
    audits: &mut Vec<AuditItem>,
) {
    let n = ctx.state().next_statement();
    let record = match &refusal {
        // A held Query of a rule with `run_as` is released only while pgwarden set the role.
        None => ctx.recorder.allowed_as(
            &held.desc,
            n,
            Some(&held.rule.id),
            held.rule.run_as.as_deref(),
        ),
        Some((code, rule, message)) => ctx.recorder.denied(&held.desc, rule, code, message, n),
    };
    // Approved, it runs under the same limits by effect as any statement.
    let watch = |st: &mut crate::session::state::ProtoState, sql: &str| {
        if !held.reads.is_empty() {
            st.watch_last(ReadWatch::new(held.reads.clone(), Arc::from(sql)));
        }
    };
    if refusal.is_none() {
        match &held.kind {
            HeldKind::Query if held.guard.is_some() => {
                let limit = held.guard.clone().unwrap_or_else(|| unreachable!());
                super::guard::arm_query(ctx, limit, out, |out| {
                    audits.push(AuditItem {
                        record,
                        frame: Some((out.len(), RefuseAs::Query)),
                    });
                    out.push(held.frame.bytes.clone());
                    let mut st = ctx.state();
                    st.segment_sent();
                    st.expect(Pending::Query);
                    st.in_flight(n, true);
                    watch(&mut st, &held.sql);
                });
                return;
            }
            HeldKind::Execute(portal) => {
                let (limit, reads) = {
                    let st = ctx.state();
                    (st.guarded_portal(portal), st.portal_reads(portal))
                };
                let push = |out: &mut Vec<Bytes>| {
                    audits.push(AuditItem {
                        record,
                        frame: Some((out.len(), RefuseAs::Execute)),
                    });
                    out.push(held.frame.bytes.clone());
                    let mut st = ctx.state();
                    st.expect(Pending::Execute(portal.clone()));
                    st.in_flight(n, false);
                    if let Some(w) = reads {
                        st.watch_last(w);
                    }
                };
                match limit {
                    Some(limit) => super::guard::arm_execute(ctx, limit, out, push),
                    None => push(out),
                }
                return;
            }
            HeldKind::Query => {}
        }
    }
    let mut st = ctx.state();
    match (held.kind, refusal) {
        (HeldKind::Query, None) => {
            audits.push(AuditItem {
                record,
                frame: Some((out.len(), RefuseAs::Query)),
            });
            out.push(held.frame.bytes.clone());
            st.segment_sent();
            st.expect(Pending::Query);
            st.in_flight(n, true);
            watch(&mut st, &held.sql);
        }
        (HeldKind::Query, Some((code, _, message))) => {
            audits.push(AuditItem {
                record,
                frame: None,
            });
            let token = st.deny(super::error_bytes(code, &message));
            out.push(encode::query(&token));
            st.segment_sent();
            st.expect(Pending::Query);
        }
        // Sent above.
        (HeldKind::Execute(_), None) => {}
        (HeldKind::Execute(_), Some((code, _, message))) => {
            audits.push(AuditItem {
                record,
                frame: None,
            });
            // A Parse the server rejects: it reports the error and skips to Sync, as it would
            // for a failing Execute.
            let token = st.deny(super::error_bytes(code, &message));
            out.push(encode::parse("pgwarden_refused", &token));
            st.expect(Pending::Parse);
        }
    }
}
