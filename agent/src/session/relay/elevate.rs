//! Statements that run as their approval rule's `run_as` role: approved by a person (or
//! passing under that rule's open grant), the one statement runs with the rights of a role
//! the workload's own role is a member of, and the session is back on its own role after it.
//!
//! The sequence, on the session's own connection (simple Query only: the policy refuses a
//! `run_as` statement as Parse, inside an open extended batch, or when it is more than one
//! read or write statement calling only read-only built-ins):
//! 1. once the server has answered everything: pgwarden's `SET ROLE "r"`, its reply kept from
//!    the client. If the server refuses it (the workload's role is not a member, a failed
//!    transaction), the statement is refused in place and never reaches the server;
//! 2. the statement, released as any approved one (its record carries `detail.run_as`, and
//!    it runs under the same limits by effect);
//! 3. once it has finished (a guarded write's verdict in, the server quiet): `RESET ROLE`.
//!    In a failed transaction the reset fails, and the SET, made inside that transaction, is
//!    undone by whatever ends the failure (ROLLBACK, or ROLLBACK TO a savepoint, all of which
//!    are older than the SET). A reset failing anywhere else (a cancel arriving at that
//!    moment) ends the session: it never goes on under the elevated role.
//!
//! The workload cannot do this itself: SET ROLE, SET SESSION AUTHORIZATION and `set_config`
//! of either are refused by the policy (`role.change`), and while the statement runs nothing
//! of the client's reaches the server.
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tracing::{info, warn};

use super::frontend::send;
use super::hold::{self, Held};
use super::{AuditItem, Ctx, WriteHalf, guard, lock};
use crate::session::SessionError;
use crate::session::conn::write_batch;
use crate::session::state::{Own, Pending};
use crate::wire::encode;

/// `SET ROLE` of `role`, quoted as an identifier (the name is matched exactly as written).
fn set_role(role: &str) -> String {
    format!("SET ROLE \"{}\"", role.replace('"', "\"\""))
}

/// Runs the approved (or granted) simple Query `held` as `role`.
pub(super) async fn run(
    ctx: &Ctx<'_>,
    w: &tokio::sync::Mutex<WriteHalf>,
    held: Held,
    role: &str,
    out: &mut Vec<Bytes>,
    audits: &mut Vec<AuditItem>,
) -> Result<(), SessionError> {
    send(ctx, w, out, audits).await?;
    ctx.until(|c| c.state().quiet()).await;
    if let Some(e) = own(ctx, w, &set_role(role)).await? {
        warn!(session = %ctx.meta.id, workload = %ctx.meta.workload, rule = %held.rule.id, "statement refused: the server refused its run_as role `{role}`: {e}");
        let message = format!(
            "pgwarden: run_as.failed: {}: the statement would run as `{role}`, and the server refused that role ({e}); it did not run",
            held.rule.id
        );
        hold::release(
            ctx,
            held,
            Some(("42501", "run_as.failed", message)),
            out,
            audits,
        );
        return Ok(());
    }
    info!(session = %ctx.meta.id, workload = %ctx.meta.workload, rule = %held.rule.id, "statement runs as `{role}`");
    ctx.env.metrics.statement(&ctx.meta.workload.0, "run_as");
    hold::release(ctx, held, None, out, audits);
    send(ctx, w, out, audits).await?;
    ctx.until(|c| !guard::open(c) && c.state().quiet()).await;
    if let Some(e) = own(ctx, w, "RESET ROLE").await? {
        if ctx.state().txn_status == b'E' {
            // Undone with the failed transaction it was set in.
            return Ok(());
        }
        warn!(session = %ctx.meta.id, workload = %ctx.meta.workload, "ending session: RESET ROLE after a statement run as `{role}` failed: {e}");
        ctx.fatal(
            "42501",
            &format!("pgwarden: the session's role could not be reset after a statement run as `{role}` ({e}); the session ends"),
        )
        .await;
        return Err(SessionError::RoleReset(e));
    }
    Ok(())
}

/// Sends one of pgwarden's own role statements and waits for its answer: the server's
/// error, if it refused it.
async fn own(
    ctx: &Ctx<'_>,
    w: &tokio::sync::Mutex<WriteHalf>,
    sql: &str,
) -> Result<Option<String>, SessionError> {
    *lock(&ctx.role_error) = None;
    {
        let mut st = ctx.state();
        ctx.guarding.store(true, Ordering::SeqCst);
        st.segment_sent();
        st.expect(Pending::Own(Own::Role));
    }
    let mut batch = vec![encode::query(sql)];
    write_batch(&mut *w.lock().await, &mut batch).await?;
    ctx.until(|c| c.state().quiet()).await;
    Ok(lock(&ctx.role_error).take())
}

#[cfg(test)]
mod tests {
    #[test]
    fn role_names_are_quoted_identifiers() {
        assert_eq!(
            super::set_role("payments_admin"),
            "SET ROLE \"payments_admin\""
        );
        assert_eq!(
            super::set_role("a\"; RESET ROLE; --"),
            "SET ROLE \"a\"\"; RESET ROLE; --\""
        );
    }
}
