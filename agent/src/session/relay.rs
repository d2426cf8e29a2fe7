//! The relay after startup: the client-to-server and server-to-client directions, each
//! reading whole frames, consulting the hooks where a frame matters, and writing batches of
//! untouched frames without copying. Backpressure: a direction reads only after its last
//! batch was written, and buffers hold at most one message over the last read.
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing::warn;

use super::conn::{Conn, ReadHalf, WriteHalf, write_batch};
use super::state::ProtoState;
use super::{SessionError, SessionMeta, strip_channel_binding};
use crate::daemon::Shared;
use crate::hooks::{SessionHooks, Statement, StatementKind, Verdict};
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
}

impl Ctx<'_> {
    fn state(&self) -> std::sync::MutexGuard<'_, ProtoState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn hooks(&self) -> std::sync::MutexGuard<'_, Box<dyn SessionHooks>> {
        self.hooks.lock().unwrap_or_else(PoisonError::into_inner)
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
    let (client_r, client_w) = client.split();
    let (server_r, mut server_w) = upstream.split();
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
    };
    let front = frontend(&ctx, client_r, server_w, rest);
    let back = backend(&ctx, server_r);
    tokio::pin!(front, back);
    let result = tokio::select! {
        r = &mut front => match r {
            // The client is done sending: the server finishes and closes.
            Ok(()) => back.await,
            Err(e) => Err(e),
        },
        r = &mut back => r,
    };
    ctx.hooks().session_end();
    result
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
    loop {
        loop {
            let frame = match next_frame(&mut buf, &ctx.limits, Side::Frontend) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(client_error(ctx, e).await),
            };
            match on_frontend(ctx, frame, &mut out) {
                Ok(true) => {}
                Ok(false) => {
                    // Terminate: pass it on and stop reading.
                    write_batch(&mut w, &mut out).await?;
                    let _ = w.shutdown().await;
                    return Ok(());
                }
                Err(e) => return Err(client_error(ctx, e).await),
            }
        }
        write_batch(&mut w, &mut out).await?;
        buf.reserve(READ_CHUNK.min(ctx.limits.frontend_large));
        if r.read_buf(&mut buf).await? == 0 {
            let _ = w.shutdown().await;
            return Ok(());
        }
    }
}

async fn client_error(ctx: &Ctx<'_>, e: WireError) -> SessionError {
    let (code, message) = wire_message(&e);
    warn!(session = %ctx.meta.id, workload = %ctx.meta.workload, "ending session: client sent a bad message: {e}");
    ctx.fatal(code, &message).await;
    SessionError::Client(e)
}

/// Handles one client frame; `Ok(false)` on Terminate.
fn on_frontend(ctx: &Ctx<'_>, frame: Frame, out: &mut Vec<Bytes>) -> Result<bool, WireError> {
    match frame.tag {
        b'Q' | b'P' | b'F' => {
            let msg = frontend::decode(&frame)?;
            let (kind, sql, name) = match msg {
                FrontendMsg::Query(sql) => (StatementKind::Query, sql, ""),
                FrontendMsg::Parse { name, sql } => (StatementKind::Parse, sql, name),
                _ => (StatementKind::FunctionCall, "", ""),
            };
            let verdict = ctx.hooks().statement(&Statement { kind, sql, name });
            let mut st = ctx.state();
            match verdict {
                Verdict::Allow => {
                    if kind == StatementKind::Parse {
                        st.parsed(name, sql);
                    }
                    out.push(frame.bytes.clone());
                }
                Verdict::Deny(d) => {
                    let message = d.message();
                    let error = encode::error_response(&ErrorFields {
                        severity: "ERROR",
                        code: d.sqlstate,
                        message: &message,
                        detail: None,
                        hint: None,
                    });
                    let token = st.deny(error);
                    if kind == StatementKind::Parse {
                        st.closed(b'S', name);
                        out.push(encode::parse(name, &token));
                    } else {
                        out.push(encode::query(&token));
                    }
                }
            }
            if kind != StatementKind::Parse {
                st.segment_sent();
            }
        }
        b'B' => {
            if let FrontendMsg::Bind {
                portal,
                statement,
                result_formats,
            } = frontend::decode(&frame)?
            {
                ctx.state().bound(portal, statement, result_formats);
            }
            out.push(frame.bytes);
        }
        b'C' => {
            if let FrontendMsg::Close { kind, name } = frontend::decode(&frame)? {
                ctx.state().closed(kind, name);
            }
            out.push(frame.bytes);
        }
        b'D' | b'E' => {
            // Validated here so a malformed one ends the session at pgwarden, not the server.
            frontend::decode(&frame)?;
            out.push(frame.bytes);
        }
        b'S' => {
            ctx.state().segment_sent();
            out.push(frame.bytes);
        }
        b'X' => {
            out.push(frame.bytes);
            return Ok(false);
        }
        _ => out.push(frame.bytes),
    }
    Ok(true)
}

async fn backend(ctx: &Ctx<'_>, mut r: ReadHalf) -> Result<(), SessionError> {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out: Vec<Bytes> = Vec::with_capacity(64);
    let mut started = false;
    loop {
        loop {
            let frame = match next_frame(&mut buf, &ctx.limits, Side::Backend) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(server_error(ctx, e).await),
            };
            if let Err(e) = on_backend(ctx, frame, &mut out, &mut started) {
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

fn on_backend(
    ctx: &Ctx<'_>,
    frame: Frame,
    out: &mut Vec<Bytes>,
    started: &mut bool,
) -> Result<(), WireError> {
    match frame.tag {
        b'D' => out.push(ctx.hooks().data_row(&frame).unwrap_or(frame.bytes)),
        b'd' => out.push(ctx.hooks().copy_data(&frame).unwrap_or(frame.bytes)),
        b'T' => {
            let cols = backend::row_description(&frame)?;
            ctx.hooks().row_description(&cols);
            ctx.state().row_description = Some(cols.into());
            out.push(frame.bytes);
        }
        b'C' => {
            ctx.hooks()
                .command_complete(backend::command_complete(&frame)?);
            out.push(frame.bytes);
        }
        b'Z' => {
            let status = backend::ready_for_query(&frame)?;
            ctx.state().ready(status);
            if !*started {
                *started = true;
                ctx.hooks().session_start();
            }
            out.push(frame.bytes);
        }
        b'E' | b'N' => {
            let fields = backend::error_fields(&frame)?;
            let replaced = if frame.tag == b'E' {
                let message = fields
                    .iter()
                    .find(|(c, _)| *c == b'M')
                    .map_or("", |(_, m)| *m);
                let mut st = ctx.state();
                if st.has_markers() {
                    st.replace_error(message)
                } else {
                    None
                }
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
        b'R' if ctx.strip_plus => out.push(strip_channel_binding(&frame).unwrap_or(frame.bytes)),
        _ => out.push(frame.bytes),
    }
    Ok(())
}
