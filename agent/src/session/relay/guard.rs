//! Writes limited by effect: a statement that writes under a row limit (`writes.max_rows`, or
//! a rule's `max_rows`) runs where it can be undone, the server itself counts the rows it
//! changed, and pgwarden undoes and refuses it when they are more than the limit.
//!
//! The count is PostgreSQL's own: `pg_stat_xact_user_tables` (rows inserted, updated and
//! deleted in the current transaction, over every user table) read just before and just after
//! the statement, in the same connection. It sees what no syntax check can: a WHERE clause
//! true for every row, triggers, cascades, data-modifying CTEs, MERGE, COPY FROM.
//!
//! Where it runs:
//! - a simple Query outside a transaction: pgwarden sends `BEGIN` first and ends the
//!   transaction itself (`COMMIT` within the limit, `ROLLBACK` over it); the client sees
//!   the ReadyForQuery of that end, so its autocommit semantics stay;
//! - a simple Query inside the client's transaction, or an Execute (its implicit or explicit
//!   transaction ends only at a Sync pgwarden holds back): over the limit, pgwarden sends a
//!   statement that fails, so the transaction or batch fails exactly as it would after an
//!   error of the server's (the client rolls back; COMMIT becomes ROLLBACK; the rest of the
//!   batch is skipped up to Sync).
//!
//! While the verdict is open nothing else of the client's reaches the server (COPY data
//! excepted), and the statement's results are held (at most [`HELD_LIMIT`] bytes), so a
//! refused write shows the client only pgwarden's error.
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tracing::warn;

use super::{Ctx, lock};
use crate::policy::WriteGuard;
use crate::session::state::{InFlight, Own, Pending};
use crate::wire::{Frame, backend as wire_backend, encode};

/// The rows changed in the current transaction so far, counted by the server. Qualified so
/// that nothing the workload creates can stand in for it.
/// NULL when the session does not count at all (`track_counts` off, which a superuser may set
/// by SET, startup options or a role's default): then nothing can be counted, and the write
/// is refused.
pub(super) const ROWS_SQL: &str = "SELECT CASE WHEN pg_catalog.current_setting('track_counts')::pg_catalog.bool THEN COALESCE(pg_catalog.sum(n_tup_ins OPERATOR(pg_catalog.+) n_tup_upd OPERATOR(pg_catalog.+) n_tup_del), 0)::pg_catalog.int8 END FROM pg_catalog.pg_stat_xact_user_tables /* pgwarden: rows changed */";

/// The statement that fails (a syntax error whatever the database holds), to fail the
/// client's transaction or batch after a refused write.
const ABORT_SQL: &str = "pgwarden_refused_write";

/// The most result bytes held while a write's verdict is open; a statement whose results
/// exceed it is refused (its rows cannot be shown before they are counted).
pub(super) const HELD_LIMIT: usize = 4 << 20;

/// A write under a row limit, from its start to its verdict.
pub(super) struct Guard {
    limit: WriteGuard,
    simple: bool,
    /// pgwarden began the transaction (a simple Query outside one) and ends it.
    began: bool,
    before: Option<u64>,
    after: Option<u64>,
    /// The statement's own results are arriving (held until the verdict).
    holding: bool,
    held: Vec<Bytes>,
    held_bytes: usize,
    over_held: bool,
    /// Statements finished while held: recorded once the verdict is known.
    finished: Vec<InFlight>,
    /// The server rejected the statement itself.
    client_error: bool,
    /// The server rejected one of pgwarden's own messages around it.
    own_error: Option<String>,
    /// The verdict is in.
    decided: bool,
    /// The verdict is in; the transaction's end (or the abort) is on its way.
    ending: bool,
    /// What must go to the server once the verdict is in (before anything else of the
    /// client's): the transaction's end or the abort.
    pub to_server: Vec<Bytes>,
    /// For a COPY FROM: the after-count, sent once the client's copy data ends.
    pub deferred: Option<Bytes>,
}

/// Names of pgwarden's own prepared statement and portals for the `n`th guarded Execute.
fn names(n: u64) -> (String, String, String) {
    (
        format!("pgwarden_rows_{n}"),
        format!("pgwarden_rows_{n}_before"),
        format!("pgwarden_rows_{n}_after"),
    )
}

impl Guard {
    fn new(limit: WriteGuard, simple: bool, began: bool) -> Self {
        Self {
            limit,
            simple,
            began,
            before: None,
            after: None,
            holding: false,
            held: Vec::new(),
            held_bytes: 0,
            over_held: false,
            finished: Vec::new(),
            client_error: false,
            own_error: None,
            decided: false,
            ending: false,
            to_server: Vec::new(),
            deferred: None,
        }
    }

    /// Why the write is refused after it ran, if it is: `None` lets it stand.
    fn refusal(&self) -> Option<(Option<u64>, String)> {
        if self.client_error {
            return None;
        }
        let max = self.limit.max_rows;
        if self.over_held {
            return Some((
                None,
                format!(
                    "its results exceed {} MiB, more than pgwarden holds while it counts the rows the statement changed; it was undone",
                    HELD_LIMIT >> 20
                ),
            ));
        }
        if let Some(e) = &self.own_error {
            return Some((
                None,
                format!("the rows the statement changed could not be counted ({e}); it was undone"),
            ));
        }
        match (self.before, self.after) {
            (Some(b), Some(a)) => {
                let n = a.saturating_sub(b);
                (n > max).then(|| {
                    let why = self.limit.reason.as_deref().map_or(String::new(), |r| format!(" ({r})"));
                    (
                        Some(n),
                        format!(
                            "the statement changed {n} rows, more than the {max} allowed{why}; it was undone"
                        ),
                    )
                })
            }
            _ => Some((
                None,
                "the rows the statement changed could not be counted; it was undone".into(),
            )),
        }
    }
}

/// Arms the guard of a simple Query about to be sent: the transaction it runs in (begun by
/// pgwarden outside one), the counts around it, and the barrier. `push` adds the client's
/// own frame (with its audit record and expectations) in its place. `None`: no guard is
/// possible here (a failed transaction: the server refuses the statement anyway).
pub(super) fn arm_query(
    ctx: &Ctx<'_>,
    limit: WriteGuard,
    out: &mut Vec<Bytes>,
    push: impl FnOnce(&mut Vec<Bytes>),
) -> bool {
    let status = ctx.state().txn_status;
    if status == b'E' {
        push(out);
        return false;
    }
    let began = status == b'I';
    {
        let mut st = ctx.state();
        ctx.guarding.store(true, Ordering::SeqCst);
        if began {
            out.push(encode::query("BEGIN"));
            st.segment_sent();
            st.expect(Pending::Own(Own::Begin));
        }
        // Counted before even in a transaction pgwarden just began: the server's
        // per-transaction counts also hold earlier transactions' until the backend flushes
        // them (at most once a second, when idle outside a transaction), so a fresh
        // transaction need not start at 0.
        out.push(encode::query(ROWS_SQL));
        st.segment_sent();
        st.expect(Pending::Own(Own::Rows {
            after: false,
            simple: true,
        }));
    }
    push(out);
    let mut guard = Guard::new(limit, true, began);
    {
        let mut st = ctx.state();
        let after = encode::query(ROWS_SQL);
        if guard.limit.copy_in {
            guard.deferred = Some(after);
        } else {
            out.push(after);
        }
        st.segment_sent();
        st.expect(Pending::Own(Own::Rows {
            after: true,
            simple: true,
        }));
    }
    *lock(&ctx.guard) = Some(guard);
    true
}

/// Arms the guard of an Execute about to be sent: pgwarden's own count statement before and
/// after it, and a Flush so the verdict does not wait for the client's Sync (held back until
/// then). `push` adds the client's Execute.
pub(super) fn arm_execute(
    ctx: &Ctx<'_>,
    limit: WriteGuard,
    out: &mut Vec<Bytes>,
    push: impl FnOnce(&mut Vec<Bytes>),
) {
    let n = ctx
        .own_seq
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (stmt, before, after) = names(n);
    {
        let mut st = ctx.state();
        ctx.guarding.store(true, Ordering::SeqCst);
        out.push(encode::parse(&stmt, ROWS_SQL));
        st.expect(Pending::Own(Own::Parse));
        out.push(encode::bind(&before, &stmt));
        st.expect(Pending::Own(Own::Bind));
        out.push(encode::execute(&before));
        st.expect(Pending::Own(Own::Rows {
            after: false,
            simple: false,
        }));
    }
    push(out);
    let mut st = ctx.state();
    out.push(encode::bind(&after, &stmt));
    st.expect(Pending::Own(Own::Bind));
    out.push(encode::execute(&after));
    st.expect(Pending::Own(Own::Rows {
        after: true,
        simple: false,
    }));
    for (kind, name) in [(b'P', &before), (b'P', &after), (b'S', &stmt)] {
        out.push(encode::close(kind, name));
        st.expect(Pending::Own(Own::Close));
    }
    out.push(encode::flush());
    drop(st);
    *lock(&ctx.guard) = Some(Guard::new(limit, false, false));
}

/// Whether a guard's verdict is still open (the frontend sends nothing but COPY data then).
pub(super) fn open(ctx: &Ctx<'_>) -> bool {
    // An open guard implies `guarding`: most frames pay only the atomic load.
    guarding(ctx) && lock(&ctx.guard).is_some()
}

/// Whether replies may belong to pgwarden's own messages (see `Ctx::guarding`).
pub(super) fn guarding(ctx: &Ctx<'_>) -> bool {
    ctx.guarding.load(Ordering::SeqCst)
}

/// At the end of a batch of replies: stops looking for pgwarden's own replies once no guard
/// is open and none is unanswered (lock order: guard, then state).
pub(super) fn settle(ctx: &Ctx<'_>) {
    let g = lock(&ctx.guard);
    if g.is_none() && !ctx.state().has_own() {
        ctx.guarding.store(false, Ordering::SeqCst);
    }
}

/// The count a row-count reply carries, or why there is none.
fn count(frame: &Frame) -> Result<u64, String> {
    let row = super::handshake::text_row(frame).map_err(|e| e.to_string())?;
    match row.first() {
        Some(Some(v)) => v
            .parse()
            .map_err(|_| format!("the count {v:?} is not a number")),
        Some(None) => {
            Err("the server does not count rows in this session (track_counts is off)".into())
        }
        None => Err("the count came back empty".into()),
    }
}

/// A reply to one of pgwarden's own messages around a guarded write. Nothing of it reaches
/// the client except the ReadyForQuery that ends the client's statement, and a failed
/// COMMIT's error.
pub(super) fn own_reply(ctx: &Ctx<'_>, own: Own, frame: &Frame, out: &mut Vec<Bytes>) {
    let mut g = lock(&ctx.guard);
    match frame.tag {
        b'D' => {
            if let (Own::Rows { after, .. }, Some(g)) = (own, g.as_mut()) {
                match count(frame) {
                    Ok(n) if after => g.after = Some(n),
                    Ok(n) => g.before = Some(n),
                    Err(why) => {
                        g.own_error.get_or_insert(why);
                    }
                }
            }
        }
        b'E' => {
            let message = super::handshake::error_message(frame).unwrap_or_default();
            ctx.state().reply(b'E');
            match (own, g.as_mut()) {
                // The failure pgwarden asked for.
                (Own::Abort { .. }, _) => {}
                // SET ROLE or RESET ROLE refused: the elevation's own concern.
                (Own::Role, _) => *lock(&ctx.role_error) = Some(message),
                // COMMIT failed (a deferred constraint, a serialization failure): the
                // client's statement did not commit, and the client hears the server's reason.
                (Own::End, guard) => {
                    if let Some(guard) = guard {
                        for f in &mut guard.finished {
                            f.error = Some(("40000".into(), format!("COMMIT failed: {message}")));
                        }
                    }
                    out.push(
                        ctx.masking()
                            .error(frame)
                            .unwrap_or_else(|| frame.bytes.clone()),
                    );
                }
                (_, Some(g)) if !g.decided => {
                    warn!(session = %ctx.meta.id, "pgwarden's own row count around a write failed: {message}");
                    g.own_error.get_or_insert(message);
                }
                _ => {}
            }
            // An extended-protocol failure skips everything up to Sync, the verdict too.
            if let Some(guard) = g.as_mut()
                && !guard.simple
                && !guard.decided
                && !ctx.state().own_pending()
            {
                verdict(ctx, guard, out);
            }
        }
        b'C' => {
            ctx.state().reply(b'C');
            if let (
                Own::Rows {
                    after,
                    simple: false,
                },
                Some(guard),
            ) = (own, g.as_mut())
            {
                if after {
                    verdict(ctx, guard, out);
                } else {
                    guard.holding = true;
                }
            }
        }
        b'Z' => {
            let status = wire_backend::ready_for_query(frame).unwrap_or(b'I');
            {
                let mut st = ctx.state();
                st.reply(b'Z');
                st.ready(status);
            }
            match (own, g.as_mut()) {
                (Own::Begin | Own::Rows { after: false, .. }, Some(guard)) => guard.holding = true,
                (Own::Rows { after: true, .. }, Some(guard)) => verdict(ctx, guard, out),
                (Own::End | Own::Abort { .. }, guard) => {
                    // The end of the client's statement: its ReadyForQuery.
                    if let Some(guard) = guard {
                        super::backend::record_finished(ctx, std::mem::take(&mut guard.finished));
                    }
                    out.push(frame.bytes.clone());
                    *g = None;
                    ctx.progress.notify_waiters();
                }
                _ => {}
            }
        }
        b'1' | b'2' | b'3' => ctx.state().reply(frame.tag),
        // RowDescription of a count, notices of pgwarden's own statements.
        _ => {}
    }
}

/// The verdict on a guarded write once its after-count (or failure) is in: the results
/// released, or pgwarden's refusal in their place and the write undone.
fn verdict(ctx: &Ctx<'_>, g: &mut Guard, out: &mut Vec<Bytes>) {
    if g.decided {
        return;
    }
    g.decided = true;
    g.holding = false;
    let refusal = g.refusal();
    let mut held = std::mem::take(&mut g.held);
    if let Some((rows, reason)) = &refusal {
        let message = format!("pgwarden: {}: {reason}", g.limit.rule);
        warn!(session = %ctx.meta.id, workload = %ctx.meta.workload, rule = %g.limit.rule, "write undone and refused: {reason}");
        out.push(super::error_bytes("42501", &message));
        ctx.env.metrics.statement(&ctx.meta.workload.0, "undone");
        for f in &mut g.finished {
            f.error = Some(("42501".into(), message.clone()));
            f.undone_by = Some(g.limit.rule.clone());
            // Its rows were held, and the client gets the refusal instead (a read guarded
            // for the functions it calls streamed its rows: those were seen).
            if g.limit.hold_results
                && let Some(r) = &mut f.results
            {
                r.unsent();
            }
            if let Some(n) = rows {
                f.rows = *n;
            }
        }
    } else {
        // A statement pgwarden began the transaction of ends with that transaction's
        // ReadyForQuery, not its own (which says "in a transaction").
        if g.began && held.last().is_some_and(|b| b.first() == Some(&b'Z')) {
            held.pop();
        }
        out.append(&mut held);
    }
    let mut st = ctx.state();
    match (g.simple, g.began, refusal.is_some()) {
        (true, true, refused) => {
            let end = if refused || g.client_error {
                "ROLLBACK"
            } else {
                "COMMIT"
            };
            g.to_server.push(encode::query(end));
            st.segment_sent();
            st.expect(Pending::Own(Own::End));
            g.ending = true;
        }
        (true, false, true) => {
            g.to_server.push(encode::query(ABORT_SQL));
            st.segment_sent();
            st.expect(Pending::Own(Own::Abort { simple: true }));
            g.ending = true;
        }
        (false, _, true) => {
            g.to_server
                .push(encode::parse("pgwarden_refused", ABORT_SQL));
            st.expect(Pending::Own(Own::Abort { simple: false }));
            g.ending = true;
        }
        // The client's transaction goes on: its own ReadyForQuery was in what was held.
        _ => {}
    }
    drop(st);
    if !(g.simple && g.ending) {
        super::backend::record_finished(ctx, std::mem::take(&mut g.finished));
    }
}

/// After a frame of the client's own statement went through the backend direction: while the
/// verdict is open it is held (CopyInResponse excepted: the client must send its data); an
/// extended-protocol failure that skipped pgwarden's own messages gives the verdict.
pub(super) fn client_output(ctx: &Ctx<'_>, out: &mut Vec<Bytes>, mark: usize, tag: u8) {
    let mut g = lock(&ctx.guard);
    let Some(guard) = g.as_mut() else {
        return;
    };
    // A read guarded for the functions it calls streams its rows; only its end waits.
    let held = guard.limit.hold_results || matches!(tag, b'C' | b's' | b'I' | b'Z');
    if guard.holding && tag != b'G' && held {
        for b in out.drain(mark..) {
            guard.held_bytes += b.len();
            if guard.held_bytes > HELD_LIMIT {
                guard.over_held = true;
                guard.held.clear();
            } else if !guard.over_held {
                guard.held.push(b);
            }
        }
        if tag == b'E' {
            guard.client_error = true;
        }
    }
    if !guard.simple && !guard.decided && !ctx.state().own_pending() {
        // The server skipped the rest of the batch (an error in or before the write).
        guard.client_error = true;
        verdict(ctx, guard, out);
    }
}

/// Keeps a statement finished while its write's verdict is open, for the record that says
/// how it ended; `Some` gives it back when no verdict is open.
pub(super) fn keep_finished(ctx: &Ctx<'_>, f: InFlight) -> Option<InFlight> {
    match lock(&ctx.guard).as_mut() {
        Some(g) if g.holding || g.ending => {
            g.finished.push(f);
            None
        }
        _ => Some(f),
    }
}

/// What the backend direction must send the server after a batch of replies; the barrier
/// lifts with it when nothing more of pgwarden's is awaited first.
pub(super) fn take_to_server(ctx: &Ctx<'_>) -> Vec<Bytes> {
    let mut g = lock(&ctx.guard);
    let Some(guard) = g.as_mut().filter(|g| g.decided) else {
        return Vec::new();
    };
    let bytes = std::mem::take(&mut guard.to_server);
    // An extended-protocol abort needs no answer before the client goes on (the server
    // skips to the client's Sync); a verdict that let the write stand lifts the barrier too.
    // A transaction pgwarden ends, or a simple abort, lifts it at its ReadyForQuery.
    if !(guard.simple && guard.ending) {
        *g = None;
    }
    bytes
}
