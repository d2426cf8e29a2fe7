//! One intercepted connection: startup (TLS, cancel routing, refusals), the connection to the
//! real server, and the protocol-aware relay that the policy, masking and audit layers hook
//! into. The per-connection state machine; errors end this session only.
mod conn;
pub mod env;
pub mod masking;
mod origin;
pub mod recorder;
pub mod registry;
mod relay;
pub mod results;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UnixStream};
use tracing::{info, warn};

pub use conn::Conn;
pub use env::SessionEnv;
pub use origin::Origins;
pub use registry::Registry;

use crate::identity::Identity;
use crate::names::{ClientAddr, ListenAddr, OrigDstAddr, SessionId, SockAddr, WorkloadName};
use crate::netns::Netns;
use crate::tls::SslMode;
use crate::wire::encode::{self, ErrorFields};
use crate::wire::startup::{self, Startup};
use crate::wire::{WireError, backend};
use origin::Origin;

/// The StartupMessage parameters later layers and the audit need.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct DbParams {
    /// `user`.
    pub user: String,
    /// `database` (defaults to the user, as PostgreSQL does).
    pub database: String,
    /// `application_name`.
    pub application_name: Option<String>,
    /// `options` (command-line options for the backend, e.g. `-c key=value`).
    pub options: Option<String>,
}

/// Who and what a session is: fixed once startup is done. Later layers read it.
#[derive(Clone, Debug, Serialize)]
pub struct SessionMeta {
    /// Session id.
    pub id: SessionId,
    /// Workload name.
    pub workload: WorkloadName,
    /// Who (absent in listen-only mode, where the kernel recorded nothing).
    pub identity: Option<Identity>,
    /// The client's address as the interceptor sees it.
    pub client: ClientAddr,
    /// The interceptor address the client landed on.
    pub listen: ListenAddr,
    /// The real server the client asked for.
    pub server: OrigDstAddr,
    /// Startup parameters.
    pub db: DbParams,
    /// Whether the client hop is TLS.
    pub client_tls: bool,
    /// Whether the server hop is TLS.
    pub server_tls: bool,
    /// The client's network namespace when it is not the agent's (identity has its id).
    #[serde(skip)]
    pub netns: Option<Arc<Netns>>,
    /// pgwarden logged in for the workload (`upstream_auth`): as whom, for which asked user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login: Option<crate::login::LoginInfo>,
}

impl SessionMeta {
    /// Where pgwarden's connections for this session go (its own, and cancels): the server
    /// and, for the client's namespaces, its pid and network namespace. A session pgwarden
    /// logged in for goes to the configured server from the agent's own namespaces.
    pub fn upstream(&self) -> (&SockAddr, Option<u32>, Option<&Arc<Netns>>) {
        match &self.login {
            Some(l) => (&l.server, None, None),
            None => (
                &self.server.0,
                self.identity.as_ref().map(|i| i.pid),
                self.netns.as_ref(),
            ),
        }
    }
}

/// A live session, as status shows it.
#[derive(Clone, Debug, Serialize)]
pub struct SessionInfo {
    /// Who and what.
    #[serde(flatten)]
    pub meta: Arc<SessionMeta>,
    /// The local address of pgwarden's own connection to the server.
    pub upstream_local: Option<SocketAddr>,
    /// Start, seconds since the epoch.
    pub started: u64,
}

/// What the startup phase ended with.
enum Opened {
    /// A StartupMessage on this stream; `rest` holds bytes the client sent after it.
    Session {
        conn: Conn,
        params: Startup,
        rest: BytesMut,
    },
    /// A CancelRequest (the connection is done once it is routed).
    Cancel { pid: i32, key: Bytes, raw: Bytes },
}

/// Sends a FATAL error to a client that is still in the startup phase, then closes.
async fn refuse(conn: &mut Conn, code: &str, message: &str) {
    let e = encode::error_response(&ErrorFields {
        severity: "FATAL",
        code,
        message,
        detail: None,
        hint: None,
    });
    let _ = conn.write_all(&e).await;
    let _ = conn.shutdown().await;
}

/// An accepted connection, TCP or Unix, with what the kernel records are keyed by.
pub struct Accepted {
    /// The stream.
    pub conn: Conn,
    /// The client's address.
    pub peer: SockAddr,
    /// The interceptor address it landed on.
    pub listen: SockAddr,
    /// For a Unix connection: the client socket's cookie (the key of its record), the accepted
    /// socket's own cookie, and the peer's credentials as the kernel saw them at connect
    /// (SO_PEERCRED).
    pub unix: Option<UnixPeer>,
    /// The network namespace of the listener that accepted it (`None`: the agent's own).
    pub netns: Option<Arc<Netns>>,
    /// Its namespace's cookie (part of a TCP record's key).
    pub netns_cookie: u64,
}

/// What identifies the client of an accepted Unix connection.
pub struct UnixPeer {
    /// The client socket's cookie.
    pub client_cookie: u64,
    /// The accepted socket's cookie.
    pub accepted_cookie: u64,
    /// SO_PEERCRED.
    pub cred: Option<tokio::net::unix::UCred>,
}

impl Accepted {
    /// A TCP connection accepted at `listen` from `peer`, by a listener in `netns`.
    pub fn tcp(stream: TcpStream, peer: SocketAddr, netns: Option<Arc<Netns>>) -> Option<Self> {
        use std::os::fd::AsFd as _;
        let listen = stream.local_addr().ok()?;
        let _ = stream.set_nodelay(true);
        let netns_cookie = agent_sys::netns_cookie(stream.as_fd()).ok()?;
        Some(Self {
            conn: Conn::Plain(stream),
            peer: SockAddr::Inet(peer),
            listen: SockAddr::Inet(listen),
            unix: None,
            netns,
            netns_cookie,
        })
    }

    /// A Unix connection accepted on the listener named `listen`, in `netns`.
    pub fn unix(stream: UnixStream, listen: &str, netns: Option<Arc<Netns>>) -> Option<Self> {
        use std::os::fd::AsFd as _;
        let cookie = match &netns {
            Some(ns) => crate::unixdiag::peer_cookie_via(&ns.diag, stream.as_fd()),
            None => crate::unixdiag::peer_cookie(stream.as_fd()),
        };
        let cookie = match cookie {
            Ok(c) => c,
            Err(e) => {
                warn!("cannot find the client socket of an accepted Unix connection: {e}");
                return None;
            }
        };
        let accepted_cookie = agent_sys::socket_cookie(stream.as_fd()).ok()?;
        let cred = stream.peer_cred().ok();
        Some(Self {
            conn: Conn::Unix(stream),
            peer: SockAddr::Unix(String::new()),
            listen: SockAddr::Unix(listen.to_owned()),
            unix: Some(UnixPeer {
                client_cookie: cookie,
                accepted_cookie,
                cred,
            }),
            netns,
            netns_cookie: 0,
        })
    }
}

/// Serves one accepted connection to the end.
pub async fn serve(env: Arc<SessionEnv>, accepted: Accepted) {
    let id = env.registry.next_id();
    let Accepted {
        conn,
        peer,
        listen,
        unix,
        netns,
        netns_cookie,
    } = accepted;
    // The record is taken at once (the kernel's map is bounded), the startup read after.
    let origin = match unix {
        None => match (peer.inet(), listen.inet()) {
            (Some(p), Some(l)) => env.origins.tcp(p, l, netns_cookie).await,
            _ => None,
        },
        Some(peer) => env.origins.unix(id, &peer).await,
    };
    let origin = origin.map(|mut o| {
        if let Some(ns) = &netns
            && let Some(who) = &mut o.identity
        {
            who.netns = Some(ns.id.0);
        }
        o.netns = netns;
        o
    });
    let timeout = Duration::from_secs(env.limits.startup_timeout_seconds);
    let opened = match tokio::time::timeout(timeout, open(&env, conn)).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            warn!(session = %id, client = %peer, "startup failed: {e:#}");
            return;
        }
        Err(_) => {
            warn!(session = %id, client = %peer, "startup timed out after {}s", timeout.as_secs());
            return;
        }
    };
    let Some(origin) = origin else {
        // Fail closed: no record means we do not know who this is or where it was going.
        warn!(
            session = %id,
            client = %peer,
            listen = %listen,
            "refused a connection with no redirect record: it was not redirected by pgwarden's \
             programs (a client pointed at the listen address?) or its record was lost"
        );
        if let Opened::Session { mut conn, .. } = opened {
            refuse(&mut conn, "08004", "pgwarden: this connection was not redirected by pgwarden; connect to the database's own address").await;
        }
        return;
    };
    match opened {
        Opened::Cancel { pid, key, raw } => cancel(&env, id, pid, &key, &raw).await,
        Opened::Session { conn, params, rest } => {
            run(env, id, peer, listen, origin, conn, params, rest).await
        }
    }
}

/// Reads the startup phase: answers SSLRequest (TLS when configured) and GSSENCRequest, and
/// returns the StartupMessage or CancelRequest.
async fn open(env: &SessionEnv, mut conn: Conn) -> anyhow::Result<Opened> {
    let limits = env.limits.wire();
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let msg = loop {
            match startup::next_startup(&mut buf, limits.startup) {
                Ok(Some(m)) => break m,
                Ok(None) => {}
                Err(e) => {
                    refuse(
                        &mut conn,
                        "08P01",
                        &format!("pgwarden: invalid startup packet: {e}"),
                    )
                    .await;
                    bail!("invalid startup packet: {e}");
                }
            }
            if conn.read_buf(&mut buf).await? == 0 {
                bail!("client closed the connection during startup");
            }
        };
        match msg {
            Startup::Ssl => {
                // Bytes after SSLRequest and before the handshake would be read as plaintext
                // inside the TLS session (CVE-2021-23214): refuse.
                if !buf.is_empty() {
                    refuse(
                        &mut conn,
                        "08P01",
                        "pgwarden: unexpected data after SSLRequest",
                    )
                    .await;
                    bail!("data after SSLRequest");
                }
                let tcp = match conn {
                    Conn::Plain(tcp) => tcp,
                    Conn::Unix(mut unix) => {
                        // TLS does not apply on a Unix socket (PostgreSQL answers N too).
                        unix.write_all(b"N").await?;
                        conn = Conn::Unix(unix);
                        continue;
                    }
                    _ => bail!("second SSLRequest inside TLS"),
                };
                match &env.client_tls {
                    Some(acceptor) => {
                        let mut tcp = tcp;
                        tcp.write_all(b"S").await?;
                        let tls = acceptor.accept(tcp).await.context("client TLS handshake")?;
                        conn = Conn::ServerTls(Box::new(tls));
                    }
                    None => {
                        let mut tcp = tcp;
                        tcp.write_all(b"N").await?;
                        conn = Conn::Plain(tcp);
                    }
                }
            }
            Startup::GssEnc => conn.write_all(b"N").await?,
            Startup::Cancel { pid, key, raw } => return Ok(Opened::Cancel { pid, key, raw }),
            params @ Startup::Params { .. } => {
                return Ok(Opened::Session {
                    conn,
                    params,
                    rest: buf,
                });
            }
        }
    }
}

/// Connects to the real server (TCP, negotiating TLS per `upstream.sslmode`, or its Unix
/// socket) for the client `pid` (a Unix path is resolved in the client's mount namespace).
pub async fn connect_upstream(
    env: &SessionEnv,
    server: &SockAddr,
    pid: Option<u32>,
    netns: Option<&Netns>,
    client_cert: Option<&tokio_rustls::TlsConnector>,
) -> anyhow::Result<Conn> {
    let timeout = Duration::from_secs(env.upstream.connect_timeout_seconds);
    let server = match server {
        SockAddr::Inet(a) => *a,
        SockAddr::Unix(path) => {
            if client_cert.is_some() {
                bail!("a client certificate cannot be presented on a Unix socket ({path})");
            }
            let target = unix_target(path, pid)?;
            let unix = tokio::time::timeout(timeout, UnixStream::connect(&target))
                .await
                .map_err(|_| anyhow!("connecting to {path} timed out"))?
                .with_context(|| format!("connecting to {target}"))?;
            check_postgres_listener(&unix, path)?;
            return Ok(Conn::Unix(unix));
        }
    };
    let connect = async {
        match netns {
            None => TcpStream::connect(server).await,
            Some(ns) => {
                let socket = ns.tcp_socket(server)?;
                socket.connect(server).await
            }
        }
    };
    let mut tcp = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| anyhow!("connecting to {server} timed out"))?
        .with_context(|| match netns {
            None => format!("connecting to {server}"),
            Some(ns) => format!("connecting to {server} from network namespace {}", ns.id.0),
        })?;
    let _ = tcp.set_nodelay(true);
    let Some(connector) = client_cert.or(env.upstream_tls.as_ref()) else {
        return Ok(Conn::Plain(tcp));
    };
    let mut req = Vec::with_capacity(8);
    req.extend_from_slice(&8i32.to_be_bytes());
    req.extend_from_slice(&startup::SSL_REQUEST.to_be_bytes());
    tcp.write_all(&req).await?;
    match tcp.read_u8().await? {
        b'S' => {
            let name = crate::tls::server_name(&env.upstream, server.ip())?;
            let tls = connector
                .connect(name, tcp)
                .await
                .with_context(|| format!("TLS handshake with {server}"))?;
            Ok(Conn::ClientTls(Box::new(tls)))
        }
        b'N' if env.upstream.sslmode == SslMode::Prefer && client_cert.is_none() => {
            Ok(Conn::Plain(tcp))
        }
        b'N' => {
            bail!("the server at {server} does not accept TLS and upstream.sslmode requires it")
        }
        other => bail!("the server at {server} answered SSLRequest with 0x{other:02x}"),
    }
}

/// Routes a CancelRequest to the server of the session that owns the key. Only keys of live
/// pgwarden sessions are forwarded; PostgreSQL itself answers nothing either way.
async fn cancel(env: &SessionEnv, id: SessionId, pid: i32, key: &[u8], raw: &[u8]) {
    let Some(target) = env.registry.cancel_target(pid, key) else {
        warn!(session = %id, backend = pid, "cancel request for a backend of no live session: dropped");
        return;
    };
    // A statement held for approval is withdrawn: it never reached the server.
    for request in env
        .approvals
        .withdraw_session(target.session, "cancelled by the client")
    {
        info!(session = %target.session, request = request.id, "approval request withdrawn by the client's cancel");
    }
    let server = target.server;
    match connect_upstream(
        env,
        &server,
        target.client_pid,
        target.netns.as_deref(),
        None,
    )
    .await
    {
        Ok(mut up) => {
            let _ = up.write_all(raw).await;
            let _ = up.flush().await;
            let mut sink = [0u8; 64];
            let _ = tokio::time::timeout(Duration::from_secs(5), up.read(&mut sink)).await;
            info!(session = %id, backend = pid, server = %server, "cancel request forwarded");
        }
        Err(e) => warn!(session = %id, backend = pid, "cannot forward cancel request: {e:#}"),
    }
}

fn db_params(params: &Startup) -> DbParams {
    let user = params.param("user").unwrap_or_default().to_owned();
    DbParams {
        database: params
            .param("database")
            .map_or_else(|| user.clone(), str::to_owned),
        user,
        application_name: params.param("application_name").map(str::to_owned),
        options: params.param("options").map(str::to_owned),
    }
}

/// Removes the session from the registry when it ends, however it ends.
struct Registered<'a> {
    registry: &'a Registry,
    id: SessionId,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry.ended(self.id);
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "the one place a session is assembled"
)]
async fn run(
    env: Arc<SessionEnv>,
    id: SessionId,
    peer: SockAddr,
    listen: SockAddr,
    origin: Origin,
    mut conn: Conn,
    params: Startup,
    mut rest: BytesMut,
) {
    let db = db_params(&params);
    if params
        .param("replication")
        .is_some_and(|v| v != "false" && v != "0" && v != "off" && v != "no")
    {
        warn!(session = %id, workload = %origin.workload, "replication connection refused");
        refuse(
            &mut conn,
            "42501",
            "pgwarden: replication connections are not allowed through pgwarden",
        )
        .await;
        return;
    }
    if let Err(d) = crate::policy::startup(
        &env.policy.current(),
        &origin.workload.0,
        db.options.as_deref(),
    ) {
        warn!(session = %id, workload = %origin.workload, rule = %d.rule, "startup refused: {}", d.reason);
        refuse(&mut conn, d.sqlstate, &d.message()).await;
        return;
    }
    let mut db = db;
    let mut startup_raw = match &params {
        Startup::Params { raw, .. } => raw.clone(),
        _ => return,
    };
    let mut login = None;
    let mut login_info = None;
    if let Some(account) = env.logins.get(&origin.workload.0) {
        // The kernel's identity is the client's credential: a listen-only session has none
        // (anyone who can reach the listen address could be it), so it gets no login.
        let admitted = if origin.identity.is_none() {
            Err(crate::login::LoginError::NoIdentity {
                workload: origin.workload.0.clone(),
            })
        } else {
            // The server first (before anything is asked or read), then the client's token,
            // then the secret.
            match account.admit(&db.user, &origin.server.0) {
                Ok(info) => match ask_token(&env, account, &mut conn, &mut rest).await {
                    Ok(()) => open_login(&env, account, info),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            }
        };
        match admitted {
            Ok((info, l)) => {
                startup_raw = login_startup(&params, &info.user, &db.database);
                db.user.clone_from(&info.user);
                login_info = Some(info);
                login = Some(l);
            }
            Err(e) => {
                warn!(session = %id, workload = %origin.workload, server = %origin.server.0, "login refused: {e}");
                env.metrics.login(&origin.workload.0, "refused");
                let message = format!("pgwarden: {e}");
                audit_refusal(&env, id, &origin, &peer, &db, e.sqlstate(), &message).await;
                refuse(&mut conn, e.sqlstate(), &message).await;
                return;
            }
        }
    }
    // pgwarden's own login goes out from its own namespaces to the configured server: in the
    // client's, the names of the configured servers could be sockets or addresses the
    // workload serves itself.
    let (server, client_pid, upstream_netns) = match &login_info {
        Some(info) => (info.server.clone(), None, None),
        None => (
            origin.server.0.clone(),
            origin.identity.as_ref().map(|i| i.pid),
            origin.netns.as_deref(),
        ),
    };
    let client_cert = login.as_ref().and_then(|l| l.tls.clone());
    let upstream = match connect_upstream(
        &env,
        &server,
        client_pid,
        upstream_netns,
        client_cert.as_ref(),
    )
    .await
    {
        Ok(u) => u,
        Err(e) => {
            warn!(session = %id, server = %origin.server.0, "cannot reach the server: {e:#}");
            refuse(
                &mut conn,
                "08006",
                &format!(
                    "pgwarden: cannot reach the server {}: {e:#}",
                    origin.server.0
                ),
            )
            .await;
            return;
        }
    };
    if let Some(l) = login.as_mut()
        && upstream.is_tls()
    {
        l.over_tls(upstream.server_certificate());
    }
    let upstream_local = match &upstream {
        Conn::Plain(s) => s.local_addr().ok(),
        Conn::ClientTls(s) => s.get_ref().0.local_addr().ok(),
        Conn::ServerTls(_) | Conn::Unix(_) => None,
    };
    let meta = Arc::new(SessionMeta {
        id,
        workload: origin.workload,
        identity: origin.identity,
        client: ClientAddr(peer),
        listen: ListenAddr(listen),
        server: origin.server,
        db,
        client_tls: conn.is_tls(),
        server_tls: upstream.is_tls(),
        netns: origin.netns.clone(),
        login: login_info,
    });
    log_start(&meta);
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    env.registry.started(SessionInfo {
        meta: Arc::clone(&meta),
        upstream_local,
        started,
    });
    let _registered = Registered {
        registry: &env.registry,
        id,
    };
    let outcome = relay::run(&env, &meta, conn, upstream, startup_raw, rest, login).await;
    match outcome {
        Ok(()) => info!(session = %id, "session end"),
        Err(e) => warn!(session = %id, "session end: {e:#}"),
    }
}

/// Reads the secret of a connection admitted to its workload's login.
fn open_login(
    env: &SessionEnv,
    account: &Arc<crate::login::Account>,
    info: crate::login::LoginInfo,
) -> Result<(crate::login::LoginInfo, crate::login::Login), crate::login::LoginError> {
    let secret = account.read_secret()?;
    let tls = account.tls(&env.upstream)?;
    Ok((
        info,
        crate::login::Login::new(Arc::clone(account), secret, tls),
    ))
}

/// Asks the client for the workload's local token, when it has one, and checks it.
async fn ask_token(
    env: &SessionEnv,
    account: &crate::login::Account,
    conn: &mut Conn,
    rest: &mut BytesMut,
) -> Result<(), crate::login::LoginError> {
    let token = account.read_token()?;
    let Some(token) = token else {
        return Ok(());
    };
    let refused = || crate::login::LoginError::Token {
        workload: account.workload.clone(),
    };
    // AuthenticationCleartextPassword: the hop is local (loopback, a Unix socket, or TLS
    // pgwarden terminates), and the token opens nothing beyond this host's pgwarden.
    let ask = crate::wire::encode::frame(b'R', |b| bytes::BufMut::put_i32(b, 3)).bytes;
    if conn.write_all(&ask).await.is_err() || conn.flush().await.is_err() {
        return Err(refused());
    }
    let limits = env.limits.wire();
    let frame = loop {
        match crate::wire::next_frame(rest, &limits, crate::wire::Side::Frontend) {
            Ok(Some(f)) => break f,
            Ok(None) => {}
            Err(_) => return Err(refused()),
        }
        match conn.read_buf(rest).await {
            Ok(n) if n > 0 => {}
            _ => return Err(refused()),
        }
    };
    let sent = zeroize::Zeroizing::new(frame.body().to_vec());
    if frame.tag == b'p' && crate::login::Account::token_matches(&token, &sent) {
        Ok(())
    } else {
        Err(refused())
    }
}

/// The client's StartupMessage with `user` as the role and `database` stated (PostgreSQL's
/// default, the user's name, would otherwise follow the new user).
fn login_startup(params: &Startup, user: &str, database: &str) -> Bytes {
    let Startup::Params {
        version, params, ..
    } = params
    else {
        return Bytes::new();
    };
    let mut out: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "user" && k != "database")
        .cloned()
        .collect();
    out.insert(0, ("database".to_owned(), database.to_owned()));
    out.insert(0, ("user".to_owned(), user.to_owned()));
    startup::encode_params(*version, &out)
}

/// Records a connection refused before it reached the server, as a failed `session.start`.
async fn audit_refusal(
    env: &SessionEnv,
    id: SessionId,
    origin: &Origin,
    peer: &SockAddr,
    db: &DbParams,
    code: &str,
    message: &str,
) {
    use crate::audit::{Event, Outcome, Record};
    let mut r = Record::new(Event::SessionStart)
        .session(id)
        .workload(&origin.workload)
        .client(ClientAddr(peer.clone()))
        .server(origin.server.clone())
        .db(crate::audit::record::Db {
            user: Some(db.user.clone()),
            database: Some(db.database.clone()),
            application_name: db.application_name.clone(),
        })
        .outcome(Outcome::Failure)
        .sqlstate(code)
        .error(message);
    if let Some(who) = &origin.identity {
        r = r.identity(who);
    }
    if let Err(e) = env.journal.append(r).await {
        warn!(session = %id, "the refusal could not be recorded: {e}");
    }
}

fn log_start(meta: &SessionMeta) {
    match &meta.identity {
        Some(who) => info!(
            session = %meta.id,
            workload = %meta.workload,
            pid = who.pid,
            uid = who.uid,
            exe = who.exe.as_deref().unwrap_or("?"),
            cgroup = %who.cgroup.as_ref().map_or_else(|| format!("id:{}", who.cgroup_id.0), ToString::to_string),
            client = %meta.client.0,
            server = %meta.server.0,
            user = %meta.db.user,
            database = %meta.db.database,
            tls = meta.client_tls,
            "session start"
        ),
        None => {
            info!(session = %meta.id, workload = %meta.workload, client = %meta.client.0, server = %meta.server.0, "session start (listen-only)")
        }
    }
}

/// Where to connect for the Unix socket `path` a client with process id `pid` asked for: the
/// path itself when the client shares the agent's mount namespace, else the same path seen
/// through the client's root (`/proc/PID/root/...`), so a container's socket name means what
/// it meant to the container.
fn unix_target(path: &str, pid: Option<u32>) -> anyhow::Result<String> {
    if path.starts_with('@') {
        bail!("abstract-namespace upstream sockets are not supported ({path})");
    }
    let Some(pid) = pid else {
        return Ok(path.to_owned());
    };
    let mine = std::fs::read_link("/proc/self/ns/mnt").ok();
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    if theirs.is_none() || mine == theirs {
        return Ok(path.to_owned());
    }
    let through = format!("/proc/{pid}/root{path}");
    if through.len() >= agent_common::UNIX_PATH_LEN {
        bail!(
            "the client (pid {pid}) is in another mount namespace and {through} is too long for a socket name"
        );
    }
    Ok(through)
}

/// pgwarden connects as itself (root) wherever a client's name led: a symlink planted at an
/// intercepted name must not make it talk to another service's socket. The listener's own
/// bound name (what getpeername answers) must be a PostgreSQL socket's.
fn check_postgres_listener(unix: &UnixStream, asked: &str) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let peer = unix
        .peer_addr()
        .context("getpeername on the upstream socket")?;
    let name = peer
        .as_pathname()
        .and_then(|p| p.file_name())
        .map(|n| n.as_bytes());
    if name.is_some_and(|n| n.starts_with(agent_common::PG_SOCKET_PREFIX)) {
        return Ok(());
    }
    bail!(
        "{asked} leads to a socket bound as {:?}, not a PostgreSQL socket (.s.PGSQL.PORT): refused",
        peer.as_pathname()
    )
}

/// Why a relay ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The client broke the protocol.
    #[error("client: {0}")]
    Client(WireError),
    /// The server broke the protocol.
    #[error("server: {0}")]
    Server(WireError),
    /// A socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Reloaded masking rules could not be applied to the session.
    #[error(transparent)]
    Masks(#[from] masking::ResolveError),
    /// The role a statement ran as (its rule's `run_as`) could not be reset after it.
    #[error("the role could not be reset after a statement run as another: {0}")]
    RoleReset(String),
}

/// The SASL offer without channel-binding mechanisms (when TLS is terminated on a hop, the
/// client's and the server's TLS channels differ, so SCRAM-SHA-256-PLUS cannot succeed).
pub fn strip_channel_binding(frame: &crate::wire::Frame) -> Option<Bytes> {
    let (code, data) = backend::authentication(frame).ok()?;
    if code != backend::AUTH_SASL {
        return None;
    }
    let mechs = backend::sasl_mechanisms(data).ok()?;
    if !mechs.iter().any(|m| m.ends_with("-PLUS")) {
        return None;
    }
    let kept: Vec<&str> = mechs
        .into_iter()
        .filter(|m| !m.ends_with("-PLUS"))
        .collect();
    Some(encode::auth_sasl(&kept))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Frame, Limits, Side, next_frame};

    #[test]
    fn strips_plus_mechanisms_only() {
        let offer = encode::auth_sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
        let frame = next_frame(
            &mut BytesMut::from(&offer[..]),
            &Limits::default(),
            Side::Backend,
        )
        .unwrap()
        .unwrap();
        let stripped = strip_channel_binding(&frame).unwrap();
        let f2: Frame = next_frame(
            &mut BytesMut::from(&stripped[..]),
            &Limits::default(),
            Side::Backend,
        )
        .unwrap()
        .unwrap();
        let (_, data) = backend::authentication(&f2).unwrap();
        assert_eq!(backend::sasl_mechanisms(data).unwrap(), ["SCRAM-SHA-256"]);
        assert!(strip_channel_binding(&f2).is_none());
    }
}
