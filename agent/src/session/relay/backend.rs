//! The server-to-client direction: results pass through the session's masks, pgwarden's own
//! refusals take the place of the server's complaints about their markers, the replies to
//! pgwarden's own queries are kept from the client, and finished statements get their
//! `query.done` records.
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing::warn;

use super::handshake::{error_message, text_row};
use super::{Ctx, READ_CHUNK, ReadHalf, WriteHalf, guard, lock, reads};
use crate::session::SessionError;
use crate::session::conn::write_batch;
use crate::session::state::{Finished, InFlight, ResultStart, tag_rows};
use crate::wire::backend::{self, Column};
use crate::wire::{Frame, Side, WireError, next_frame};

pub(super) async fn run(
    ctx: &Ctx<'_>,
    mut r: ReadHalf,
    mut buf: BytesMut,
    server_w: &tokio::sync::Mutex<WriteHalf>,
) -> Result<(), SessionError> {
    let mut out: Vec<Bytes> = Vec::with_capacity(64);
    let mut cut: Option<Cut> = None;
    let mut columns = LastColumns::default();
    loop {
        loop {
            let frame = match next_frame(&mut buf, &ctx.limits, Side::Backend) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(super::server_error(ctx, e).await),
            };
            let tag = frame.tag;
            if let Some(c) = &mut cut
                && !matches!(tag, b'A' | b'S' | b'N' | b'K')
                && ctx.state().own_front().is_none()
            {
                // The rest of a result that was cut off: kept from the client, its end
                // replaced by pgwarden's error.
                if !matches!(tag, b'D' | b'd') {
                    let mut scratch = Vec::new();
                    match on_frame(ctx, frame, &mut scratch, &mut columns) {
                        Ok(()) | Err(Stop::Wait(..)) => {}
                        Err(Stop::Wire(e)) => return Err(super::server_error(ctx, e).await),
                        Err(Stop::Masks(e)) => return Err(SessionError::Masks(e)),
                    }
                    if matches!(tag, b'C' | b's' | b'E' | b'I')
                        && let Some(e) = c.error.take()
                    {
                        out.push(e);
                    }
                    if tag == b'Z' {
                        if let Some(e) = c.error.take() {
                            out.push(e);
                        }
                        out.append(&mut scratch);
                        cut = None;
                    } else if !c.simple && c.error.is_none() {
                        cut = None;
                    }
                }
                continue;
            }
            // Replies to pgwarden's own messages around a guarded write (asynchronous
            // messages excepted: they are the client's).
            let guarding = guard::guarding(ctx);
            let own = guarding.then(|| ctx.state().own_front()).flatten();
            if let Some(own) = own
                && !matches!(tag, b'A' | b'S' | b'K')
            {
                guard::own_reply(ctx, own, &frame, &mut out);
                continue;
            }
            let mark = out.len();
            match on_frame(ctx, frame, &mut out, &mut columns) {
                Ok(()) if guarding => guard::client_output(ctx, &mut out, mark, tag),
                Ok(()) => {}
                Err(Stop::Wait(i, row)) => {
                    // A read limit: what was sent so far goes out; the row waits.
                    let mut w = ctx.client_w.lock().await;
                    write_batch(&mut *w, &mut out).await?;
                    drop(w);
                    let simple = ctx.state().front_inflight().is_none_or(|f| f.query);
                    match reads::wait(ctx, i).await {
                        reads::Ruling::Go => {
                            sent(ctx, &row);
                            out.push(row);
                        }
                        reads::Ruling::Cut(error) => {
                            cut = Some(Cut {
                                error: Some(error),
                                simple,
                            });
                        }
                    }
                }
                Err(Stop::Wire(e)) => return Err(super::server_error(ctx, e).await),
                Err(Stop::Masks(e)) => {
                    // What was already read goes out; nothing after the failed change does.
                    let mut w = ctx.client_w.lock().await;
                    write_batch(&mut *w, &mut out).await?;
                    drop(w);
                    warn!(session = %ctx.meta.id, workload = %ctx.meta.workload, "ending session: the reloaded masking rules cannot be applied: {e}");
                    ctx.fatal(
                        "42501",
                        &format!("pgwarden: {e}; the session ends (the reloaded masking rules cannot be applied)"),
                    )
                    .await;
                    return Err(SessionError::Masks(e));
                }
            }
        }
        {
            let mut w = ctx.client_w.lock().await;
            write_batch(&mut *w, &mut out).await?;
        }
        if guard::guarding(ctx) {
            // What a verdict sends the server goes before anything more of the client's: the
            // barrier lifts only once it is written.
            let mut w = server_w.lock().await;
            let mut to_server = guard::take_to_server(ctx);
            write_batch(&mut *w, &mut to_server).await?;
            drop(w);
            guard::settle(ctx);
        }
        ctx.progress.notify_waiters();
        buf.reserve(READ_CHUNK);
        if r.read_buf(&mut buf).await? == 0 {
            let mut w = ctx.client_w.lock().await;
            let _ = w.shutdown().await;
            return Ok(());
        }
    }
}

/// A result cut off at a read limit: the server's rest of it is dropped.
struct Cut {
    /// pgwarden's error, sent where the result would have ended.
    error: Option<Bytes>,
    /// A simple Query (dropped until its ReadyForQuery), else an Execute.
    simple: bool,
}

/// Why the backend direction stops (or pauses).
enum Stop {
    Wire(WireError),
    Masks(crate::session::masking::ResolveError),
    /// A read limit of the streaming statement (by index) is reached at this row.
    Wait(usize, Bytes),
}

impl From<WireError> for Stop {
    fn from(e: WireError) -> Self {
        Stop::Wire(e)
    }
}

/// The longest RowDescription kept (about a hundred columns).
const KEEP_DESCRIPTION: usize = 8 << 10;

/// The last RowDescription (a copy: holding the frame would pin the read buffer) and its
/// columns. A session that runs the same query again gets the same columns, decoded once.
#[derive(Default)]
struct LastColumns {
    bytes: Vec<u8>,
    columns: Option<Arc<[Column]>>,
}

impl LastColumns {
    fn of(&mut self, frame: &Frame) -> Result<Arc<[Column]>, WireError> {
        if let Some(c) = &self.columns
            && self.bytes[..] == frame.bytes[..]
        {
            return Ok(Arc::clone(c));
        }
        let columns: Arc<[Column]> = backend::row_description(frame)?.into();
        if frame.bytes.len() <= KEEP_DESCRIPTION {
            self.bytes.clear();
            self.bytes.extend_from_slice(&frame.bytes);
            self.columns = Some(Arc::clone(&columns));
        } else {
            *self = LastColumns::default();
        }
        Ok(columns)
    }
}

fn on_frame(
    ctx: &Ctx<'_>,
    frame: Frame,
    out: &mut Vec<Bytes>,
    last: &mut LastColumns,
) -> Result<(), Stop> {
    if matches!(frame.tag, b'T' | b'D' | b'C' | b'I' | b'E' | b'Z') && ctx.state().resolving() {
        return own_reply(ctx, &frame);
    }
    match frame.tag {
        b'D' => {
            // One look at the session state: the result's columns, the row's count against
            // the statement's read limits, and whether its record keeps what it sends.
            let (start, step, capturing) = {
                let mut st = ctx.state();
                (st.data_row(), reads::row(ctx, &mut st), st.capturing())
            };
            if let ResultStart::Columns(cols) = start {
                ctx.masking().result_columns(&cols);
            }
            let row = ctx.masking().data_row(&frame).unwrap_or(frame.bytes);
            if let reads::RowStep::Wait(i) = step {
                return Err(Stop::Wait(i, row));
            }
            if capturing {
                ctx.state().result_sent(b'D', &row);
            }
            out.push(row);
        }
        b'd' => {
            // COPY TO STDOUT: each CopyData is a row, counted like a DataRow.
            let data = ctx.masking().copy_data(&frame).unwrap_or(frame.bytes);
            let (step, capturing) = {
                let mut st = ctx.state();
                (reads::row(ctx, &mut st), st.capturing())
            };
            if let reads::RowStep::Wait(i) = step {
                return Err(Stop::Wait(i, data));
            }
            if capturing {
                ctx.state().result_sent(b'd', &data);
            }
            out.push(data);
        }
        b'T' => {
            let cols = last.of(&frame)?;
            if let ResultStart::Columns(cols) = ctx.state().row_description(cols) {
                ctx.masking().result_columns(&cols);
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
            let pin = Arc::clone(&lock(&ctx.pin));
            ctx.masking().command_complete(tag, &pin);
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
                    Finished::new()
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
                None => out.push(ctx.masking().error(&frame).unwrap_or(frame.bytes)),
            }
        }
        b'K' => {
            let (pid, key) = backend::backend_key(&frame)?;
            ctx.env.registry.register_cancel(ctx.meta, pid, key);
            *lock(&ctx.backend_key) = Some((pid, Bytes::copy_from_slice(key)));
            out.push(frame.bytes);
        }
        b'S' => {
            // A setting that changes how PostgreSQL reads text: later statements are refused
            // (the policy denies the SETs it sees; this catches any other way, e.g. a role's
            // default applied by ALTER ROLE ... SET).
            ctx.parameter_status(&frame)?;
            out.push(ctx.masking().message(&frame).unwrap_or(frame.bytes));
        }
        // NOTIFY payloads (another session's, or a trigger's) go to a LISTENing workload.
        b'A' => out.push(ctx.masking().message(&frame).unwrap_or(frame.bytes)),
        b'V' => {
            // A fast-path call's result (fast path is denied unless a profile allows it).
            out.push(ctx.masking().message(&frame).unwrap_or(frame.bytes));
        }
        b'1' | b'2' | b'3' | b'n' | b'I' | b's' => {
            let done = {
                let mut st = ctx.state();
                let done = if matches!(frame.tag, b'I' | b's') {
                    st.finish(frame.tag, None, 0)
                } else {
                    Finished::new()
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

/// A row that waited at a read limit goes to the client after all: its statement's record
/// keeps it, when it keeps what the result sends.
fn sent(ctx: &Ctx<'_>, row: &Bytes) {
    let mut st = ctx.state();
    if st.capturing() {
        st.result_sent(row[0], row);
    }
}

/// A reply to pgwarden's own catalog query: kept from the client; at its ReadyForQuery the
/// masks change, before any later result is read.
fn own_reply(ctx: &Ctx<'_>, frame: &Frame) -> Result<(), Stop> {
    // Lock order: `state` before `changes`; neither is held while the other is taken here.
    match frame.tag {
        b'D' => {
            let row = text_row(frame)?;
            if let Some(c) = lock(&ctx.changes).front_mut() {
                c.rows.push(row);
            }
        }
        b'E' => {
            let message = error_message(frame)?;
            if let Some(c) = lock(&ctx.changes).front_mut() {
                c.error = Some(message);
            }
        }
        b'Z' => {
            let status = backend::ready_for_query(frame)?;
            {
                let mut st = ctx.state();
                st.reply(b'Z');
                st.ready(status);
            }
            let change = lock(&ctx.changes).pop_front();
            if let Some(c) = change {
                ctx.masking()
                    .apply(c.change, &c.rows, c.error)
                    .map_err(Stop::Masks)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `query.done` records for statements the server finished (kept back while a guarded
/// write's verdict is open: it decides how they ended).
fn finished(ctx: &Ctx<'_>, done: Finished) {
    for f in &done {
        if let Some(w) = &f.reads {
            reads::settle(ctx, w);
        }
    }
    let done: Finished = done
        .into_iter()
        .filter_map(|f| guard::keep_finished(ctx, f))
        .collect();
    record_finished(ctx, done);
}

/// `query.done` records: rows, outcome, duration, what was masked, and what the workload saw
/// (under `record_results`). Written without holding up the result stream.
pub(super) fn record_finished(ctx: &Ctx<'_>, done: impl IntoIterator<Item = InFlight>) {
    for f in done {
        let elapsed = f.started.elapsed();
        ctx.env.metrics.latency(elapsed);
        let masked = ctx.masking().take_counts();
        let total: u64 = masked.iter().map(|m| m.count).sum();
        ctx.env.metrics.masked(&ctx.meta.workload.0, total);
        if ctx.recorder.enabled() {
            let result = f.results.as_ref().and_then(|r| r.finish());
            ctx.recorder.journal().submit_prepared(ctx.recorder.done(
                &f,
                elapsed,
                masked,
                result.as_deref(),
            ));
        }
    }
}
