//! `approvals.http`: approvers decide held statements from a browser or a script on another
//! machine. A JSON API and one page (HTML, JS, CSS embedded in the binary; no build step) on
//! hyper's HTTP/1 server, HTTPS by rustls when a certificate is configured:
//!
//! | method and path | what |
//! |---|---|
//! | `GET /` | the page |
//! | `GET /api/v1/auth` | how to sign in (`token`, and `header` behind an SSO proxy); no token needed |
//! | `GET /api/v1/whoami` | the authenticated approver |
//! | `GET /api/v1/approvals[?wait=V]` | pending requests and open grants; with `wait`, answers once the state's version is no longer `V` (or after 25 s): the page's live updates |
//! | `POST /api/v1/approvals/{id}/approve` | `{"for": "15m", "comment": "..."}` |
//! | `POST /api/v1/approvals/{id}/deny` | `{"comment": "..."}` |
//! | `DELETE /api/v1/grants/{id}` | close a grant |
//!
//! Every API call carries `Authorization: Bearer <token>` of an approver
//! ([`super::approvers`]) or an OIDC ID token ([`oidc`]), or comes from a configured SSO proxy's address with its user
//! header. A missing or unknown token is 401, an approver the rule does not name is 403; both
//! are audited with the caller's address, as is every decision. State-changing calls must be
//! JSON and same-origin (a page elsewhere cannot ride an SSO proxy's cookie).
//!
//! Five routes are matched by hand on the path's segments: a router crate would add a tower
//! stack to the one the metrics endpoint already uses.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use super::approvers::Directory;
use super::{Approvals, Auth, Caller, DecideError, HttpConfig, TrustedHeader};

mod limit;
mod oidc;
mod peer;
mod view;
pub use oidc::OidcConfig;
pub use view::page_url;

/// What the API asks the agent about the processes on this host (the daemon answers from its
/// tags and the namespaces it serves).
pub trait Workloads: Send + Sync {
    /// The workload process `pid` belongs to, if it is tagged.
    fn workload_of(&self, pid: u32) -> Option<String>;
    /// A process in each foreign network namespace the agent serves (tagged containers).
    fn namespace_pids(&self) -> Vec<u32>;
}

type Response = hyper::Response<Full<Bytes>>;

/// Longest request body (a comment and a duration).
const MAX_BODY: usize = 16 * 1024;
/// Longest comment kept for the record.
const MAX_COMMENT: usize = 1000;
/// How long a long poll waits for a change.
const LONG_POLL: Duration = Duration::from_secs(25);
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 128;

const PAGE: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/app.css");

/// What answers the API.
struct Api {
    approvals: Arc<Approvals>,
    directory: Directory,
    trusted: Option<TrustedHeader>,
    oidc: Option<OidcConfig>,
    base_url: String,
    workloads: Arc<dyn Workloads>,
    /// Refusals recorded one by one per peer and minute; the rest summarised.
    limiter: limit::Limiter,
}

/// Binds `approvals.http.listen` (an error here stops the agent from starting) and serves it
/// until the agent stops.
pub async fn start(
    cfg: &HttpConfig,
    state_dir: &std::path::Path,
    approvals: Arc<Approvals>,
    workloads: Arc<dyn Workloads>,
) -> anyhow::Result<()> {
    let tls = match (&cfg.cert, &cfg.key) {
        (Some(cert), Some(key)) => Some(
            crate::tls::acceptor(&crate::tls::ClientTlsConfig {
                cert: cert.clone(),
                key: key.clone(),
            })
            .context("approvals.http TLS")?,
        ),
        _ => None,
    };
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding approvals.http.listen {}", cfg.listen))?;
    let api = Arc::new(Api {
        approvals,
        directory: Directory::new(cfg.approvers_file(state_dir)),
        trusted: cfg.trusted_header.clone(),
        oidc: cfg.oidc.clone(),
        base_url: cfg.base_url(),
        workloads,
        limiter: limit::Limiter::default(),
    });
    info!(listen = %cfg.listen, tls = tls.is_some(), approvers = %api.directory.path().display(), page = %api.base_url, "approvals HTTP API ready");
    if tls.is_none() && !cfg.listen.ip().is_loopback() {
        warn!(listen = %cfg.listen, "approvals.http listens beyond loopback without TLS: tokens cross the network in clear; set cert and key");
    }
    tokio::spawn(summarise_refusals(Arc::clone(&api)));
    tokio::spawn(accept_loop(listener, tls, api));
    Ok(())
}

/// Records, once a peer's minute is over, how many of its refusals had no record of their own.
async fn summarise_refusals(api: Arc<Api>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        for s in api.limiter.roll(std::time::Instant::now()) {
            api.approvals.recorder().refusals_suppressed(
                s.peer.map(|p| p.to_string()),
                s.kind,
                s.count,
                limit::WINDOW,
            );
        }
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, api: Arc<Api>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (sock, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("approvals.http: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(local) = sock.local_addr() else {
            continue;
        };
        let ends = Ends { peer, local };
        let (api, tls) = (Arc::clone(&api), tls.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(sock)).await
                    {
                        Ok(Ok(s)) => serve_connection(api, ends, s).await,
                        Ok(Err(e)) => debug!(%peer, "approvals.http TLS handshake: {e}"),
                        Err(_) => debug!(%peer, "approvals.http TLS handshake too slow"),
                    }
                }
                None => serve_connection(api, ends, sock).await,
            }
        });
    }
}

/// A connection's two addresses.
#[derive(Clone, Copy, Debug)]
struct Ends {
    peer: SocketAddr,
    local: SocketAddr,
}

async fn serve_connection<S>(api: Arc<Api>, ends: Ends, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = ends.peer;
    let service = service_fn(move |req| {
        let api = Arc::clone(&api);
        async move { Ok::<_, Infallible>(api.answer(ends, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), service);
    // A keep-alive connection is closed after a few long polls; the page reconnects.
    match tokio::time::timeout(Duration::from_secs(120), conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(%peer, "approvals.http client: {e}"),
        Err(_) => debug!(%peer, "approvals.http connection closed after 120 s"),
    }
}

/// Why a call was refused, as the API answers it.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Decision {
    #[serde(rename = "for")]
    grant_for: Option<String>,
    comment: Option<String>,
}

impl Api {
    async fn answer(&self, ends: Ends, req: hyper::Request<Incoming>) -> Response {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (&method, segments.as_slice()) {
            (&Method::GET, [""] | ["index.html"]) => asset(PAGE, "text/html; charset=utf-8"),
            (&Method::GET, ["app.js"]) => asset(SCRIPT, "text/javascript; charset=utf-8"),
            (&Method::GET, ["app.css"]) => asset(STYLE, "text/css; charset=utf-8"),
            (_, ["api", "v1", rest @ ..]) => {
                let route = rest.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
                match self.api(ends, req, &route).await {
                    Ok(r) => r,
                    Err(r) => json_response(r.status, &json!({ "error": r.message })),
                }
            }
            (&Method::GET, _) => {
                json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"}))
            }
            _ => json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "method not allowed"}),
            ),
        }
    }

    async fn api(
        &self,
        ends: Ends,
        req: hyper::Request<Incoming>,
        route: &[String],
    ) -> Result<Response, Refusal> {
        let peer = ends.peer;
        let method = req.method().clone();
        let route: Vec<&str> = route.iter().map(String::as_str).collect();
        if method == Method::GET && route == ["auth"] {
            let mut methods = vec!["token"];
            if self.trusted.is_some() {
                methods.push("header");
            }
            return Ok(json_response(
                StatusCode::OK,
                &json!({ "methods": methods }),
            ));
        }
        self.not_a_workload(ends, req.uri().path()).await?;
        let caller = self.authenticate(peer, &method, req.uri().path(), req.headers())?;
        match (&method, route.as_slice()) {
            (&Method::GET, ["whoami"]) => Ok(json_response(
                StatusCode::OK,
                &json!({ "approver": view::approver(&caller) }),
            )),
            (&Method::GET, ["approvals"]) => {
                let wait = req.uri().query().and_then(|q| {
                    q.split('&')
                        .find_map(|kv| kv.strip_prefix("wait="))
                        .and_then(|v| v.parse::<u64>().ok())
                });
                Ok(self.list(&caller, wait).await)
            }
            (&Method::POST, ["approvals", id, verb @ ("approve" | "deny")]) => {
                let id = parse_id(id)?;
                let approve = *verb == "approve";
                same_origin(req.headers(), true)?;
                let d: Decision = body_json(req).await?;
                let grant = match (approve, d.grant_for.as_deref().map(str::trim)) {
                    (true, Some(f)) if !f.is_empty() => {
                        Some(super::parse_duration(f).ok_or_else(|| {
                            Refusal::new(
                                StatusCode::BAD_REQUEST,
                                format!("for `{f}`: use e.g. 90s, 15m, 2h"),
                            )
                        })?)
                    }
                    (false, Some(f)) if !f.is_empty() => {
                        return Err(Refusal::new(
                            StatusCode::BAD_REQUEST,
                            "a denial opens no grant: drop `for`",
                        ));
                    }
                    _ => None,
                };
                let comment = d
                    .comment
                    .map(|c| c.chars().take(MAX_COMMENT).collect::<String>())
                    .filter(|c| !c.trim().is_empty());
                let approvals = Arc::clone(&self.approvals);
                let (request, resolution) = tokio::task::spawn_blocking(move || {
                    approvals.decide(id, &caller, approve, grant, comment)
                })
                .await
                .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(decide_refusal)?;
                Ok(json_response(
                    StatusCode::OK,
                    &json!({ "request": request.id, "resolution": resolution }),
                ))
            }
            (&Method::DELETE, ["grants", id]) => {
                let id = parse_id(id)?;
                same_origin(req.headers(), false)?;
                let g = self.approvals.revoke(id, &caller).map_err(decide_refusal)?;
                info!(grant = id, workload = %g.workload, rule = %g.rule, by = %caller.name(), "grant revoked over HTTP");
                Ok(json_response(
                    StatusCode::OK,
                    &json!({ "revoked": view::grant(&g) }),
                ))
            }
            (_, ["whoami" | "approvals"])
            | (_, ["approvals", _, "approve" | "deny"])
            | (_, ["grants", _]) => Err(Refusal::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
            )),
            _ => Err(Refusal::new(StatusCode::NOT_FOUND, "no such API")),
        }
    }

    async fn list(&self, caller: &Caller, wait: Option<u64>) -> Response {
        let mut changes = self.approvals.changes();
        if let Some(seen) = wait
            && *changes.borrow_and_update() == seen
        {
            let _ = tokio::time::timeout(LONG_POLL, changes.changed()).await;
        }
        let version = *changes.borrow();
        json_response(
            StatusCode::OK,
            &view::approvals(&self.approvals, caller, version, &self.base_url),
        )
    }

    /// Refuses a caller on this host that is a tagged workload (in the agent's network
    /// namespace or a tagged container's), or a local caller that cannot be told from one
    /// (fail closed); audited.
    async fn not_a_workload(&self, ends: Ends, path: &str) -> Result<(), Refusal> {
        let Ends { peer, local } = ends;
        let namespaces = self.workloads.namespace_pids();
        let pid = tokio::task::spawn_blocking(move || peer::pid_of(peer, local, &namespaces))
            .await
            .ok()
            .flatten();
        let why = match pid {
            Some(pid) => match self.workloads.workload_of(pid) {
                None => return Ok(()),
                Some(w) => format!(
                    "pid {pid} is in workload {w}: a tagged workload may not use the approvals API"
                ),
            },
            None if !peer::is_local(peer, local) => return Ok(()),
            None => "the local process on the other end cannot be found: refused, as it might be a tagged workload".to_owned(),
        };
        if self.limiter.admit(
            peer.ip(),
            "approval.workload_caller",
            std::time::Instant::now(),
        ) {
            self.approvals
                .recorder()
                .workload_caller(&peer.to_string(), pid, path, &why);
        }
        Err(Refusal::new(StatusCode::FORBIDDEN, why))
    }

    /// Who is calling: a bearer token, else a trusted proxy's header. A refusal is audited.
    fn authenticate(
        &self,
        peer: SocketAddr,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Caller, Refusal> {
        let remote = peer.to_string();
        let refuse = |why: &str| {
            if self.limiter.admit(
                peer.ip(),
                "approval.unauthenticated",
                std::time::Instant::now(),
            ) {
                self.approvals
                    .recorder()
                    .unauthenticated(&remote, method.as_str(), path, why);
            }
            Refusal::new(StatusCode::UNAUTHORIZED, why)
        };
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| refuse("the Authorization header is not `Bearer <token>`"))?;
            if let Some(o) = &self.oidc
                && oidc::looks_like_jwt(token)
            {
                return match oidc::verify(o, token) {
                    Ok((name, groups)) => Ok(Caller::approver(&name, groups, Auth::Oidc, remote)),
                    Err(why) => Err(refuse(&why)),
                };
            }
            return match self.directory.lookup(token) {
                Ok(Some(a)) => Ok(Caller::approver(&a.name, a.groups, Auth::Token, remote)),
                Ok(None) => Err(refuse("unknown token")),
                Err(e) => {
                    warn!(
                        "approvals.http: the approvers file cannot be read, nobody is let in: {e}"
                    );
                    Err(refuse("the approvers file cannot be read"))
                }
            };
        }
        if let Some(t) = &self.trusted
            && t.from.contains(&peer.ip())
            && let Some(user) = headers.get(t.user.as_str()).and_then(|v| v.to_str().ok())
        {
            let user = user.trim();
            if !super::approvers::valid_name(user) {
                return Err(refuse(
                    "the proxy's user header is not a valid approver name",
                ));
            }
            let groups = t
                .groups
                .as_ref()
                .and_then(|g| headers.get(g.as_str()))
                .and_then(|v| v.to_str().ok())
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| super::approvers::valid_name(g))
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            return Ok(Caller::approver(user, groups, Auth::Header, remote));
        }
        Err(refuse("no token: send Authorization: Bearer <token>"))
    }
}

fn parse_id(id: &str) -> Result<u64, Refusal> {
    id.parse()
        .map_err(|_| Refusal::new(StatusCode::NOT_FOUND, format!("`{id}` is not an id")))
}

fn decide_refusal(e: DecideError) -> Refusal {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::FORBIDDEN);
    Refusal::new(status, e.to_string())
}

/// State-changing calls: JSON bodies (a cross-site form cannot send one without a CORS
/// preflight this server never answers) and, when the browser names an origin, this one.
fn same_origin(headers: &HeaderMap, needs_json: bool) -> Result<(), Refusal> {
    if needs_json {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|m| m.trim() == "application/json")
            });
        if !json {
            return Err(Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send Content-Type: application/json",
            ));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let ok = origin
            .split_once("://")
            .is_some_and(|(_, rest)| !host.is_empty() && rest == host);
        if !ok {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!("cross-origin request from {origin} refused"),
            ));
        }
    }
    Ok(())
}

async fn body_json<T: for<'de> Deserialize<'de>>(
    req: hyper::Request<Incoming>,
) -> Result<T, Refusal> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e}")))?
        .to_bytes();
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        Bytes::from_static(b"{}")
    } else {
        body
    };
    serde_json::from_slice(&body)
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("request body: {e}")))
}

fn security_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = hyper::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    security_headers(r.headers_mut());
    r
}

fn json_response(status: StatusCode, value: &impl Serialize) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"pgwarden approvals\""),
        );
    }
    security_headers(r.headers_mut());
    r
}

#[cfg(test)]
mod tests;
