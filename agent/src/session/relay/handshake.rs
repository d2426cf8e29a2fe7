//! Authentication, relayed message by message (the server asks, the client answers), then the
//! resolution of the session's masked columns, then the server's ReadyForQuery to the client.
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt as _;
use tracing::warn;

use super::{Ctx, ReadHalf, WriteHalf, lock, read_frame};
use crate::login::Login;
use crate::session::conn::write_batch;
use crate::session::{SessionError, strip_channel_binding};
use crate::wire::{Side, backend, encode};

/// `Ok(false)` when the session ended during it (failed authentication, a client that left, a
/// refusal).
pub(super) async fn run(
    ctx: &Ctx<'_>,
    client_r: &mut ReadHalf,
    client_buf: &mut BytesMut,
    server_r: &mut ReadHalf,
    server_buf: &mut BytesMut,
    server_w: &mut WriteHalf,
    login: &mut Option<Login>,
) -> Result<bool, SessionError> {
    let mut out = Vec::with_capacity(8);
    let mut authenticated = false;
    loop {
        let frame = match read_frame(server_r, server_buf, &ctx.limits, Side::Backend).await {
            Ok(Some(f)) => f,
            Ok(None) => {
                let mut w = ctx.client_w.lock().await;
                write_batch(&mut *w, &mut out).await?;
                let _ = w.shutdown().await;
                return Ok(false);
            }
            Err(SessionError::Server(e)) => return Err(super::server_error(ctx, e).await),
            Err(e) => return Err(e),
        };
        match frame.tag {
            b'R' if login.is_some() => {
                let (code, data) = backend::authentication(&frame).map_err(SessionError::Server)?;
                let Some(l) = login.as_mut() else {
                    continue;
                };
                match l.answer(code, data) {
                    Ok(Some(answer)) => {
                        server_w.write_all(&answer).await?;
                        server_w.flush().await?;
                    }
                    // The client hears AuthenticationOk, and none of the exchange before it.
                    Ok(None) if code == 0 => {
                        authenticated = true;
                        ctx.env.metrics.login(&ctx.meta.workload.0, "ok");
                        out.push(frame.bytes);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        login_failed(ctx, e.sqlstate(), &format!("pgwarden: {e}")).await;
                        return Ok(false);
                    }
                }
            }
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
                            Err(SessionError::Client(e)) => {
                                return Err(super::client_error(ctx, e).await);
                            }
                            Err(e) => return Err(e),
                        };
                    server_w.write_all(&answer.bytes).await?;
                    server_w.flush().await?;
                }
            }
            b'K' => {
                let (pid, key) = backend::backend_key(&frame).map_err(SessionError::Server)?;
                ctx.env.registry.register_cancel(ctx.meta, pid, key);
                *super::lock(&ctx.backend_key) = Some((pid, Bytes::copy_from_slice(key)));
                out.push(frame.bytes);
            }
            b'E' if login.is_some() && !authenticated => {
                // The server refused pgwarden's login: the client hears the server's reason.
                let fields = backend::error_fields(&frame).map_err(SessionError::Server)?;
                let field = |c: u8| fields.iter().find(|(k, _)| *k == c).map(|(_, v)| *v);
                let code = field(b'C').unwrap_or("28000").to_owned();
                let role = ctx.meta.login.as_ref().map_or("?", |i| i.user.as_str());
                let message = format!(
                    "pgwarden: logging in as `{role}` for workload `{}` failed: {}",
                    ctx.meta.workload,
                    field(b'M').unwrap_or("the server refused")
                );
                login_failed(ctx, &code, &message).await;
                return Ok(false);
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
                if !resolve_masks(ctx, server_r, server_buf, server_w).await? {
                    return Ok(false);
                }
                ctx.state().ready(status);
                out.push(frame.bytes);
                let mut w = ctx.client_w.lock().await;
                write_batch(&mut *w, &mut out).await?;
                return Ok(true);
            }
            _ => out.push(frame.bytes),
        }
    }
}

/// pgwarden's login failed: a log line, a failed `session.start` record, and the client told.
async fn login_failed(ctx: &Ctx<'_>, code: &str, message: &str) {
    warn!(session = %ctx.meta.id, workload = %ctx.meta.workload, server = %ctx.meta.server.0, "{message}");
    ctx.env.metrics.login(&ctx.meta.workload.0, "failed");
    let mut record = ctx.start_record();
    if let Some(info) = &ctx.meta.login {
        record = record.detail("login", info);
    }
    let record = record
        .outcome(crate::audit::Outcome::Failure)
        .sqlstate(code)
        .error(message);
    if let Err(e) = ctx.env.journal.append(record).await {
        warn!(session = %ctx.meta.id, "the failed login could not be recorded: {e}");
    }
    ctx.fatal(code, message).await;
}

/// Brings in the masks of the session's policy version, querying the catalog when their
/// columns are not resolved yet. `Ok(false)`: they cannot be, and the session is refused
/// (fail closed: without knowing where masked columns are, nothing is served).
async fn resolve_masks(
    ctx: &Ctx<'_>,
    server_r: &mut ReadHalf,
    server_buf: &mut BytesMut,
    server_w: &mut WriteHalf,
) -> Result<bool, SessionError> {
    let pin = std::sync::Arc::clone(&lock(&ctx.pin));
    let change = ctx.masking().follow(&pin, ctx.mask_rules(&pin));
    let Some(change) = change else {
        return Ok(true);
    };
    let (rows, error) = if change.query.is_empty() {
        (Vec::new(), None)
    } else {
        setup_query(ctx, &change.query, server_r, server_buf, server_w).await?
    };
    let applied = ctx.masking().apply(change, &rows, error);
    if let Err(e) = applied {
        warn!(session = %ctx.meta.id, workload = %ctx.meta.workload, "session refused: {e}");
        ctx.fatal("42501", &format!("pgwarden: {e}")).await;
        return Ok(false);
    }
    Ok(true)
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
            b'D' => rows.push(text_row(&frame).map_err(SessionError::Server)?),
            b'E' => error = Some(error_message(&frame).map_err(SessionError::Server)?),
            b'Z' => return Ok((rows, error)),
            _ => {}
        }
    }
}

/// A DataRow's values as text.
pub(super) fn text_row(
    frame: &crate::wire::Frame,
) -> Result<Vec<Option<String>>, crate::wire::WireError> {
    let ranges = backend::data_row(frame)?;
    let body = frame.body();
    Ok(ranges
        .into_iter()
        .map(|r| r.map(|r| String::from_utf8_lossy(&body[r]).into_owned()))
        .collect())
}

/// An ErrorResponse's primary message.
pub(super) fn error_message(frame: &crate::wire::Frame) -> Result<String, crate::wire::WireError> {
    let fields = backend::error_fields(frame)?;
    Ok(fields
        .iter()
        .find(|(c, _)| *c == b'M')
        .map_or("error", |(_, m)| *m)
        .to_owned())
}
