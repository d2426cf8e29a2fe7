//! The metrics endpoint's HTTP/1 server (hyper): `GET /metrics` and `GET /` answer a scrape,
//! any other path is 404; one request per connection, and a client too slow to send its
//! request or take the answer is cut off.
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ACCEPT, ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use super::{Format, Metrics};
use crate::status::Status;

/// What reads the agent's state for a scrape (the daemon supplies it; run on a blocking
/// thread, as it takes the agent's locks).
pub type Snapshot = Arc<dyn Fn() -> Status + Send + Sync>;

/// How long a client may take.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timeouts {
    /// To send its request head.
    pub head: Duration,
    /// For the whole exchange, answer included.
    pub exchange: Duration,
}

const TIMEOUTS: Timeouts = Timeouts {
    head: Duration::from_secs(5),
    exchange: Duration::from_secs(30),
};

/// Serves `GET /metrics` on `listener` until the agent stops.
pub async fn serve(metrics: Arc<Metrics>, snapshot: Snapshot, listener: TcpListener) {
    if let Ok(a) = listener.local_addr() {
        info!(listen = %a, "metrics endpoint ready");
    }
    serve_with(metrics, snapshot, listener, TIMEOUTS).await;
}

pub(super) async fn serve_with(
    metrics: Arc<Metrics>,
    snapshot: Snapshot,
    listener: TcpListener,
    timeouts: Timeouts,
) {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, most likely: let some close before trying again.
                warn!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        let snapshot = Arc::clone(&snapshot);
        tokio::spawn(async move {
            let service =
                service_fn(move |req| answer(Arc::clone(&metrics), Arc::clone(&snapshot), req));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeouts.head)
                .keep_alive(false)
                .serve_connection(TokioIo::new(sock), service);
            match tokio::time::timeout(timeouts.exchange, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, "metrics client: {e}"),
                Err(_) => debug!(%peer, "metrics client too slow: closed"),
            }
        });
    }
}

async fn answer(
    metrics: Arc<Metrics>,
    snapshot: Snapshot,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if !matches!(req.uri().path(), "/metrics" | "/") {
        return Ok(plain(StatusCode::NOT_FOUND, "not found\n"));
    }
    if req.method() != Method::GET {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return Ok(r);
    }
    let format = Format::from_accept(req.headers().get(ACCEPT).and_then(|v| v.to_str().ok()));
    let rendered = tokio::task::spawn_blocking(move || metrics.render(&snapshot(), format)).await;
    Ok(match rendered {
        Ok(Ok(body)) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            );
            r
        }
        Ok(Err(e)) => {
            warn!("metrics: encoding a scrape: {e}");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n")
        }
        Err(e) => {
            warn!("metrics: reading the agent's state: {e}");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
        }
    })
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
