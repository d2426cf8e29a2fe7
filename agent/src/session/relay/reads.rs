//! Reads limited by effect: a statement's result rows are counted as they are sent to the
//! client, against the statement's limits (`rows_over`: rows of one result; `budget`: rows of
//! the workload's results in a window, over all its sessions). At a limit the result stops
//! where it is (the backend direction reads no more of the server's output, so TCP holds the
//! server back) and waits for a person, or is cut off (`action: deny`). A yes lets the rest
//! stream; a no or a timeout ends the result with pgwarden's error and cancels the query on
//! the server.
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{BufMut as _, Bytes, BytesMut};
use tokio::io::AsyncWriteExt as _;
use tracing::{info, warn};

use super::{Ctx, lock};
use crate::session::state::ProtoState;

/// Rows taken from a budget at a time (given back when the statement ends unsent).
const BUDGET_BLOCK: u64 = 32;

/// What to do with the next result row.
pub(super) enum RowStep {
    /// Send it.
    Send,
    /// Limit `i` of the streaming statement is reached: the row waits.
    Wait(usize),
}

/// Counts the next result row of the streaming statement against its limits (the caller
/// holds the session state, so a row costs no lock of its own).
pub(super) fn row(ctx: &Ctx<'_>, st: &mut ProtoState) -> RowStep {
    let Some(w) = st.watch_front() else {
        return RowStep::Send;
    };
    let workload = &ctx.meta.workload.0;
    let granted = |id: &str| ctx.env.approvals.grant_for(workload, id).is_some();
    for i in 0..w.limits.len() {
        if w.passed[i] {
            continue;
        }
        if let Some(n) = w.limits[i].rows_over
            && w.sent >= n
        {
            if granted(&w.limits[i].rule.id) {
                w.passed[i] = true;
                continue;
            }
            return RowStep::Wait(i);
        }
    }
    for i in 0..w.limits.len() {
        let Some(budget) = w.limits[i].budget else {
            continue;
        };
        if w.passed[i] || w.reserved[i] > 0 {
            continue;
        }
        let got = ctx.env.budgets.take(
            workload,
            &w.limits[i].rule.id,
            budget,
            BUDGET_BLOCK,
            Instant::now(),
        );
        if got == 0 {
            if granted(&w.limits[i].rule.id) {
                w.passed[i] = true;
                continue;
            }
            return RowStep::Wait(i);
        }
        w.reserved[i] = got;
    }
    for i in 0..w.limits.len() {
        if !w.passed[i] && w.limits[i].budget.is_some() {
            w.reserved[i] -= 1;
        }
    }
    w.sent += 1;
    RowStep::Send
}

/// Gives back to the budgets what a finished statement took and did not send.
pub(super) fn settle(ctx: &Ctx<'_>, watch: &crate::session::state::ReadWatch) {
    for (l, n) in watch.limits.iter().zip(&watch.reserved) {
        if *n > 0 {
            ctx.env
                .budgets
                .give_back(&ctx.meta.workload.0, &l.rule.id, *n);
        }
    }
}

/// How a wait at a limit ended.
pub(super) enum Ruling {
    /// The rest of the result streams.
    Go,
    /// The result ends with this error.
    Cut(Bytes),
}

/// Waits at limit `i` of the streaming statement for a person (or cuts the result off at
/// once under `action: deny`). A cut result's query is cancelled on the server.
pub(super) async fn wait(ctx: &Ctx<'_>, i: usize) -> Ruling {
    use crate::approval::Resolution;
    let Some((limit, sql, sent)) = ctx
        .state()
        .watch_front()
        .map(|w| (w.limits[i].clone(), w.sql.clone(), w.sent))
    else {
        return Ruling::Go;
    };
    let why = match (limit.rows_over, limit.budget) {
        (Some(n), _) => format!("the result reached {n} rows"),
        (_, Some(b)) => format!(
            "the workload's budget of {} rows per {} is used up",
            b.rows,
            humantime::format_duration(b.per)
        ),
        _ => "a read limit was reached".to_owned(),
    };
    let why = limit
        .reason
        .as_ref()
        .map_or(why.clone(), |r| format!("{why} ({r})"));
    let id = &limit.rule.id;
    // The record names the outcome as a refused held statement's does (`approval.denied`,
    // `approval.expired`, ...; the rule's own id under `action: deny`).
    let cut = |ctx: &Ctx<'_>, outcome: &str, code: &str, message: String| {
        warn!(session = %ctx.meta.id, workload = %ctx.meta.workload, rule = %id, sent, "result cut off: {message}");
        if let Some(f) = ctx.state().front_inflight() {
            f.undone_by = Some(outcome.to_owned());
            f.error = Some((code.to_owned(), message.clone()));
        }
        Ruling::Cut(super::error_bytes(code, &message))
    };
    if limit.deny {
        let r = cut(
            ctx,
            id,
            "42501",
            format!("pgwarden: {id}: {why}; the rest of the result is not sent"),
        );
        cancel(ctx).await;
        return r;
    }
    let who = ctx.meta.identity.as_ref();
    let text = crate::mask::pan::mask_pans(sql.as_bytes(), crate::mask::Keep::First6Last4)
        .map_or_else(
            || sql.to_string(),
            |(m, _)| String::from_utf8_lossy(&m).into_owned(),
        );
    let approvals = &ctx.env.approvals;
    let (request, rx) = approvals.request(crate::approval::Hold {
        rule: (*limit.rule).clone(),
        workload: &ctx.meta.workload.0,
        session: ctx.meta.id,
        statement: format!("{text} /* {sent} rows sent; {why} */"),
        sql: &sql,
        reason: Some(format!("{sent} rows sent; {why}")),
        who,
    });
    info!(session = %ctx.meta.id, workload = %ctx.meta.workload, request = request.id, rule = %id, sent, "result held for approval: {why}");
    let timeout = tokio::time::sleep(limit.rule.timeout);
    tokio::pin!(rx, timeout);
    let resolution = loop {
        let woken = ctx.progress.notified();
        if ctx.client_done.load(Ordering::Acquire) {
            let r = Resolution::Withdrawn {
                reason: "the client disconnected".into(),
            };
            approvals.end(request.id, r.clone());
            break r;
        }
        tokio::select! {
            decided = &mut rx => break decided.unwrap_or(Resolution::Withdrawn { reason: "the agent dropped the request".into() }),
            () = &mut timeout => {
                approvals.end(request.id, Resolution::Expired);
                break Resolution::Expired;
            }
            () = woken => {}
        }
    };
    let ruling = match resolution {
        Resolution::Approved { .. } => {
            if let Some(w) = ctx.state().watch_front() {
                w.passed[i] = true;
            }
            return Ruling::Go;
        }
        Resolution::Denied { by, comment } => cut(
            ctx,
            "approval.denied",
            "42501",
            format!(
                "pgwarden: approval.denied: {id}: denied by {}{}",
                by.name(),
                comment.map_or(String::new(), |c| format!(" ({c})"))
            ),
        ),
        Resolution::Expired => cut(
            ctx,
            "approval.expired",
            "42501",
            format!(
                "pgwarden: approval.expired: {id}: no decision within {}s",
                limit.rule.timeout.as_secs()
            ),
        ),
        Resolution::Withdrawn { reason } => cut(
            ctx,
            "approval.withdrawn",
            "57014",
            format!(
                "canceling statement due to user request (pgwarden: approval request withdrawn: {reason})"
            ),
        ),
    };
    cancel(ctx).await;
    ruling
}

/// Cancels the running query on the server, as a client's CancelRequest would (best effort:
/// a query that already finished is not affected; its remaining output is dropped).
async fn cancel(ctx: &Ctx<'_>) {
    let Some((pid, key)) = lock(&ctx.backend_key).clone() else {
        return;
    };
    let mut raw = BytesMut::with_capacity(16);
    raw.put_i32(i32::try_from(12 + key.len()).unwrap_or(16));
    raw.put_u32(crate::wire::startup::CANCEL_REQUEST);
    raw.put_i32(pid);
    raw.put_slice(&key);
    let (server, client_pid, netns) = ctx.meta.upstream();
    match crate::session::connect_upstream(
        ctx.env,
        server,
        client_pid,
        netns.map(AsRef::as_ref),
        None,
    )
    .await
    {
        Ok(mut up) => {
            let _ = up.write_all(&raw).await;
            let _ = up.flush().await;
            let _ = up.shutdown().await;
            info!(session = %ctx.meta.id, backend = pid, "query cancelled on the server after its result was cut off");
        }
        Err(e) => warn!(session = %ctx.meta.id, "cannot cancel the query on the server: {e:#}"),
    }
}
