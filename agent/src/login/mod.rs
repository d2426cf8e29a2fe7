//! pgwarden's own login to PostgreSQL for workloads with `upstream_auth`: the kernel's word on
//! which tagged workload is connecting is the client's credential, and pgwarden answers the
//! server's authentication with the workload's role and secret, so the workload holds none.
//!
//! The decision (may this connection use the secret: which user, which server) is
//! [`Account::admit`]; the exchange with the server is the state machine [`Login`], which
//! turns each Authentication request into the answer to send. SCRAM-SHA-256 and MD5 come from
//! `postgres-protocol` (rust-postgres' client side). The secret is read from its file at each
//! login, so a rotated file applies to the next session with no reload and no cached copy;
//! it lives in memory only for the exchange and is wiped after it.
pub mod binding;
pub mod config;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use serde::Serialize;
use zeroize::{Zeroize as _, Zeroizing};

pub use config::{ChannelBindingMode, Method, Servers, UpstreamAuthConfig, UserPolicy};

use crate::names::SockAddr;

/// Largest secret file read (a password, not a document).
const MAX_SECRET: u64 = 4096;

/// A workload's upstream login, as checked at load.
pub struct Account {
    /// The workload.
    pub workload: String,
    /// The role.
    pub user: String,
    /// The password's file (resolved), if the role logs in with one.
    pub password_file: Option<PathBuf>,
    /// The client certificate and key files (resolved), if it presents one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The workload's local token file (resolved), if its clients must send one.
    pub client_token: Option<PathBuf>,
    /// What happens to the client's user.
    pub user_policy: UserPolicy,
    /// Where the secret may go.
    pub servers: Servers,
    /// How it may be sent.
    pub methods: Vec<Method>,
    /// Whether SCRAM binds itself to pgwarden's TLS connection.
    pub channel_binding: ChannelBindingMode,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("workload", &self.workload)
            .field("user", &self.user)
            .field("password_file", &self.password_file)
            .field("client_cert", &self.client_cert)
            .finish_non_exhaustive()
    }
}

/// Every workload's upstream login.
#[derive(Debug, Default)]
pub struct Logins {
    by_workload: HashMap<String, Arc<Account>>,
}

/// Why a login was refused or failed. Messages never hold the secret.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The client asked for another user under `must_match`.
    #[error("workload `{workload}` logs in as `{role}`; the client asked for `{asked}`")]
    WrongUser {
        /// Workload.
        workload: String,
        /// Configured role.
        role: String,
        /// What the client asked for.
        asked: String,
    },
    /// The connection's destination is not one of the workload's servers.
    #[error(
        "workload `{workload}`'s database credentials are for {allowed}; this connection was \
         going to {server}"
    )]
    Server {
        /// Workload.
        workload: String,
        /// Where the client was going.
        server: String,
        /// The configured servers.
        allowed: String,
    },
    /// The client did not send the workload's local token.
    #[error(
        "password authentication failed: workload `{workload}` asks its clients for its local token"
    )]
    Token {
        /// Workload.
        workload: String,
    },
    /// The session has no kernel identity (listen-only mode), so nothing vouches for it.
    #[error(
        "workload `{workload}` logs in with pgwarden's credentials only for connections the \
         kernel redirected (listen-only sessions have no identity)"
    )]
    NoIdentity {
        /// Workload.
        workload: String,
    },
    /// The secret could not be read.
    #[error("cannot read the credential {}: {reason}", path.display())]
    Secret {
        /// Its file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The server asked for a method this workload may not use.
    #[error(
        "the server asked for {asked} authentication; workload `{workload}`'s secret is sent \
         only with {allowed}"
    )]
    Method {
        /// Workload.
        workload: String,
        /// What the server asked for.
        asked: String,
        /// What is allowed.
        allowed: String,
    },
    /// The server broke the exchange (a bad SCRAM message, a wrong server signature).
    #[error("the server's {step} is not valid: {reason}")]
    Exchange {
        /// Which message.
        step: &'static str,
        /// Why.
        reason: String,
    },
}

impl LoginError {
    /// The SQLSTATE the client gets.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Self::WrongUser { .. }
            | Self::Server { .. }
            | Self::Method { .. }
            | Self::NoIdentity { .. } => "28000",
            Self::Token { .. } => "28P01",
            Self::Secret { .. } | Self::Exchange { .. } => "08004",
        }
    }
}

/// What the journal keeps of a session's login (never the secret or its file's content).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LoginInfo {
    /// The role pgwarden logged in as.
    pub user: String,
    /// The user the client asked for.
    pub asked_user: String,
    /// `force` or `must_match`.
    pub user_policy: UserPolicy,
    /// The server pgwarden logs in at (for a Unix socket, the configured path).
    #[serde(skip)]
    pub server: SockAddr,
}

impl Logins {
    /// Builds the logins of `workloads` (name and `upstream_auth`); `Err((workload, key,
    /// message))`.
    pub fn new<'a>(
        workloads: impl IntoIterator<Item = (&'a str, &'a UpstreamAuthConfig)>,
        sslmode: crate::tls::SslMode,
    ) -> Result<Self, (String, &'static str, String)> {
        let mut by_workload = HashMap::new();
        for (name, auth) in workloads {
            let i = name.to_owned();
            let servers = auth.check(sslmode).map_err(|(k, m)| (i.clone(), k, m))?;
            let resolve = |key: &'static str, p: &Option<PathBuf>| {
                p.as_deref()
                    .map(UpstreamAuthConfig::resolve)
                    .transpose()
                    .map_err(|m| (i.clone(), key, m))
            };
            let password_file = resolve("password_file", &auth.password_file)?;
            let client_cert = match (resolve("cert", &auth.cert)?, resolve("key", &auth.key)?) {
                (Some(c), Some(k)) => Some((c, k)),
                _ => None,
            };
            by_workload.insert(
                name.to_owned(),
                Arc::new(Account {
                    workload: name.to_owned(),
                    user: auth.user.clone(),
                    password_file,
                    client_cert,
                    client_token: resolve("client_token_file", &auth.client_token_file)?,
                    user_policy: auth.user_policy,
                    servers,
                    methods: auth.methods.clone(),
                    channel_binding: auth.channel_binding,
                }),
            );
        }
        Ok(Self { by_workload })
    }

    /// The login of `workload`, if it has one.
    pub fn get(&self, workload: &str) -> Option<&Arc<Account>> {
        self.by_workload.get(workload)
    }

    /// Reads every secret and certificate once, so a missing or unreadable file stops the
    /// agent's start rather than its workload's first session.
    pub fn check_secrets(&self, upstream: &crate::tls::UpstreamConfig) -> Result<(), LoginError> {
        for a in self.by_workload.values() {
            a.read_secret()?;
            a.tls(upstream)?;
            a.read_token()?;
        }
        Ok(())
    }
}

/// A secret in memory: wiped when dropped, never printed.
pub struct Secret(Zeroizing<Vec<u8>>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Account {
    /// Whether a connection asking for `asked_user` at `server` may use this login: the
    /// server must be one of the configured ones (checked before the secret is read), and
    /// under `must_match` the user must be the role. Returns what the journal keeps.
    pub fn admit(&self, asked_user: &str, server: &SockAddr) -> Result<LoginInfo, LoginError> {
        let Some(connect) = self.serves(server) else {
            let mut allowed: Vec<String> =
                self.servers.tcp.iter().map(|d| d.text.clone()).collect();
            allowed.extend(self.servers.unix.iter().cloned());
            return Err(LoginError::Server {
                workload: self.workload.clone(),
                server: server.to_string(),
                allowed: allowed.join(", "),
            });
        };
        if self.password_file.is_none() && matches!(server, SockAddr::Unix(_)) {
            return Err(LoginError::Server {
                workload: self.workload.clone(),
                server: format!(
                    "{server}, a Unix socket, where the role's certificate cannot be presented \
                     (no TLS)"
                ),
                allowed: "TCP servers".to_owned(),
            });
        }
        if self.user_policy == UserPolicy::MustMatch && asked_user != self.user {
            return Err(LoginError::WrongUser {
                workload: self.workload.clone(),
                role: self.user.clone(),
                asked: asked_user.to_owned(),
            });
        }
        Ok(LoginInfo {
            user: self.user.clone(),
            asked_user: asked_user.to_owned(),
            user_policy: self.user_policy,
            server: connect,
        })
    }

    /// Where to log in, when `server` is one the secret is for: the address itself, or for a
    /// Unix socket the configured path it names (the same string, or the same socket in the
    /// agent's mount namespace once symlinks are resolved, e.g. `/var/run` and `/run`).
    /// pgwarden then connects to the configured path, never to the name the client gave,
    /// which the workload could repoint between this check and the connect.
    pub fn serves(&self, server: &SockAddr) -> Option<SockAddr> {
        match server {
            SockAddr::Inet(a) => self
                .servers
                .tcp
                .iter()
                .any(|d| d.covers(*a))
                .then(|| server.clone()),
            SockAddr::Unix(p) => {
                if let Some(u) = self.servers.unix.iter().find(|u| *u == p) {
                    return Some(SockAddr::Unix(u.clone()));
                }
                let asked = canonical_socket(p)?;
                self.servers
                    .unix
                    .iter()
                    .find(|u| canonical_socket(u).is_some_and(|c| c == asked))
                    .map(|u| SockAddr::Unix(u.clone()))
            }
        }
    }

    /// The TLS connector presenting the client certificate, read from its files now (so a
    /// renewed certificate applies to the next login), when the role logs in with one.
    pub fn tls(
        &self,
        upstream: &crate::tls::UpstreamConfig,
    ) -> Result<Option<tokio_rustls::TlsConnector>, LoginError> {
        let Some((cert, key)) = &self.client_cert else {
            return Ok(None);
        };
        crate::tls::client_cert_connector(upstream, cert, key)
            .map(Some)
            .map_err(|e| LoginError::Secret {
                path: cert.clone(),
                reason: format!("{e:#}"),
            })
    }

    /// Reads the password, when the role has one: the file's content without one trailing
    /// newline; empty, oversize or non-UTF-8 content is refused.
    pub fn read_secret(&self) -> Result<Option<Secret>, LoginError> {
        self.password_file
            .as_deref()
            .map(read_secret_file)
            .transpose()
    }

    /// Reads the workload's local token, when its clients must send one.
    pub fn read_token(&self) -> Result<Option<Secret>, LoginError> {
        self.client_token
            .as_deref()
            .map(read_secret_file)
            .transpose()
    }

    /// Whether `sent` (a PasswordMessage's body) is the workload's token. Digests are
    /// compared, so the time taken says nothing about the token.
    pub fn token_matches(token: &Secret, sent: &[u8]) -> bool {
        use sha2::Digest as _;
        let sent = sent.strip_suffix(b"\0").unwrap_or(sent);
        sha2::Sha256::digest(sent) == sha2::Sha256::digest(&token.0[..])
    }
}

/// Reads a secret file: its content without one trailing newline; empty, oversize or
/// non-UTF-8 content is refused.
fn read_secret_file(path: &std::path::Path) -> Result<Secret, LoginError> {
    use std::io::Read as _;
    let fail = |reason: String| LoginError::Secret {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut buf = Zeroizing::new(Vec::with_capacity(128));
    file.take(MAX_SECRET + 1)
        .read_to_end(&mut buf)
        .map_err(|e| fail(e.to_string()))?;
    if buf.len() as u64 > MAX_SECRET {
        return Err(fail(format!("longer than {MAX_SECRET} bytes")));
    }
    for end in [&b"\r\n"[..], b"\n"] {
        if buf.ends_with(end) {
            let keep = buf.len() - end.len();
            buf[keep..].zeroize();
            buf.truncate(keep);
            break;
        }
    }
    if buf.is_empty() {
        return Err(fail("empty".to_owned()));
    }
    if std::str::from_utf8(&buf).is_err() || buf.contains(&0) {
        return Err(fail("not a UTF-8 password without NUL bytes".to_owned()));
    }
    Ok(Secret(buf))
}

/// A socket path with its directory's symlinks resolved (the socket itself is not followed).
fn canonical_socket(path: &str) -> Option<PathBuf> {
    let p = std::path::Path::new(path);
    Some(
        std::fs::canonicalize(p.parent()?)
            .ok()?
            .join(p.file_name()?),
    )
}

/// Where the exchange is.
enum Phase {
    /// No request answered yet.
    Start,
    /// SCRAM under way.
    Scram(Box<ScramSha256>),
    /// SCRAM's server signature was verified.
    ScramDone,
    /// A password (clear or MD5) was sent.
    Sent,
}

/// One session's login: answers the server's Authentication requests with the secret.
pub struct Login {
    account: Arc<Account>,
    secret: Option<Secret>,
    phase: Phase,
    method: Option<Method>,
    /// The connector presenting the role's certificate, for the connection to the server.
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// The TLS hop to the server: its certificate's `tls-server-end-point` hash when it has
    /// one ([`binding::server_end_point`]).
    hop: Hop,
    /// SCRAM was bound to the TLS connection (SCRAM-SHA-256-PLUS).
    bound: bool,
}

/// What pgwarden knows of its connection to the server, for channel binding.
enum Hop {
    /// Plain TCP or a Unix socket.
    Plain,
    /// TLS; the certificate's end-point hash, if its algorithm has one.
    Tls(Option<Vec<u8>>),
}

/// An answer to send to the server; wiped when dropped (it may hold the password).
pub type Answer = Zeroizing<Vec<u8>>;

impl Login {
    /// A login for `account` with its password and certificate connector.
    pub fn new(
        account: Arc<Account>,
        secret: Option<Secret>,
        tls: Option<tokio_rustls::TlsConnector>,
    ) -> Self {
        Self {
            account,
            secret,
            phase: Phase::Start,
            method: None,
            tls,
            hop: Hop::Plain,
            bound: false,
        }
    }

    /// The connection to the server is TLS, with this server certificate (DER).
    pub fn over_tls(&mut self, server_cert: Option<&[u8]>) {
        self.hop = Hop::Tls(server_cert.and_then(binding::server_end_point));
    }

    /// How the server authenticated the role: the method it asked for, else `cert` when the
    /// role's certificate was presented, else `trust`.
    pub fn method_name(&self) -> &'static str {
        match self.method {
            Some(Method::ScramSha256) if self.bound => "scram-sha-256-plus",
            Some(m) => m.as_str(),
            None if self.tls.is_some() => "cert",
            None => "trust",
        }
    }

    /// The password, for a request that needs it.
    fn password(&self, asked: &str) -> Result<&[u8], LoginError> {
        self.secret
            .as_ref()
            .map(|s| &s.0[..])
            .ok_or_else(|| LoginError::Method {
                workload: self.account.workload.clone(),
                asked: asked.to_owned(),
                allowed: "its certificate (no password_file)".to_owned(),
            })
    }

    /// The answer to the server's Authentication request `code` with `data`: `Ok(Some)` to
    /// send, `Ok(None)` when none is due (AuthenticationOk, a verified SASLFinal).
    pub fn answer(&mut self, code: i32, data: &[u8]) -> Result<Option<Answer>, LoginError> {
        match code {
            0 => {
                if matches!(self.phase, Phase::Scram(_)) {
                    return Err(LoginError::Exchange {
                        step: "AuthenticationOk",
                        reason: "it came before SCRAM's final message proved the server knows \
                                 the role's secret"
                            .to_owned(),
                    });
                }
                Ok(None)
            }
            3 => {
                self.allow(Method::Password, "password")?;
                let mut buf = BytesMut::with_capacity(64);
                let _ = frontend::password_message(self.password("password")?, &mut buf);
                self.phase = Phase::Sent;
                Ok(Some(wiped(buf)))
            }
            5 => {
                self.allow(Method::Md5, "md5")?;
                let salt: [u8; 4] = data
                    .get(..4)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(|| exchange("AuthenticationMD5Password", "no salt"))?;
                let hash = Zeroizing::new(postgres_protocol::authentication::md5_hash(
                    self.account.user.as_bytes(),
                    self.password("md5")?,
                    salt,
                ));
                let mut buf = BytesMut::with_capacity(64);
                let _ = frontend::password_message(hash.as_bytes(), &mut buf);
                self.phase = Phase::Sent;
                Ok(Some(wiped(buf)))
            }
            10 => {
                let offered = crate::wire::backend::sasl_mechanisms(data)
                    .map_err(|e| exchange("AuthenticationSASL", &e.to_string()))?;
                if !offered.contains(&sasl::SCRAM_SHA_256) {
                    return Err(self.refused(&offered.join(" or ")));
                }
                self.allow(Method::ScramSha256, sasl::SCRAM_SHA_256)?;
                let (mechanism, binding) = self.binding(&offered)?;
                let scram = ScramSha256::new(self.password(sasl::SCRAM_SHA_256)?, binding);
                let mut buf = BytesMut::with_capacity(128);
                let _ = frontend::sasl_initial_response(mechanism, scram.message(), &mut buf);
                self.phase = Phase::Scram(Box::new(scram));
                Ok(Some(wiped(buf)))
            }
            11 => {
                let Phase::Scram(scram) = &mut self.phase else {
                    return Err(exchange(
                        "AuthenticationSASLContinue",
                        "no SASL exchange under way",
                    ));
                };
                scram
                    .update(data)
                    .map_err(|e| exchange("AuthenticationSASLContinue", &e.to_string()))?;
                let mut buf = BytesMut::with_capacity(128);
                let _ = frontend::sasl_response(scram.message(), &mut buf);
                Ok(Some(wiped(buf)))
            }
            12 => {
                let Phase::Scram(scram) = &mut self.phase else {
                    return Err(exchange(
                        "AuthenticationSASLFinal",
                        "no SASL exchange under way",
                    ));
                };
                scram
                    .finish(data)
                    .map_err(|e| exchange("AuthenticationSASLFinal", &e.to_string()))?;
                self.phase = Phase::ScramDone;
                Ok(None)
            }
            2 => Err(self.refused("Kerberos V5")),
            7 | 8 => Err(self.refused("GSSAPI")),
            9 => Err(self.refused("SSPI")),
            other => Err(self.refused(&format!("an unknown ({other})"))),
        }
    }

    /// The SCRAM mechanism and channel binding for the server's offer: bound to the TLS hop
    /// when the server offers SCRAM-SHA-256-PLUS; over TLS without the offer, "y" (pgwarden
    /// could bind: a server that can too rejects it, so a stripped offer is caught); "n"
    /// otherwise.
    fn binding(&mut self, offered: &[&str]) -> Result<(&'static str, ChannelBinding), LoginError> {
        let mode = self.account.channel_binding;
        let plus = offered.contains(&sasl::SCRAM_SHA_256_PLUS);
        let hash = match &self.hop {
            Hop::Tls(Some(hash)) if mode != ChannelBindingMode::Disable => Some(hash),
            _ => None,
        };
        match hash {
            Some(hash) if plus => {
                self.bound = true;
                Ok((
                    sasl::SCRAM_SHA_256_PLUS,
                    ChannelBinding::tls_server_end_point(hash.clone()),
                ))
            }
            _ if mode == ChannelBindingMode::Require => Err(LoginError::Exchange {
                step: "AuthenticationSASL",
                reason: format!(
                    "channel_binding is require, and {}",
                    match self.hop {
                        Hop::Plain => "the connection to the server is not TLS",
                        Hop::Tls(None) => "the server's certificate has no single hash to bind to",
                        Hop::Tls(Some(_)) => "the server did not offer SCRAM-SHA-256-PLUS",
                    }
                ),
            }),
            Some(_) => Ok((sasl::SCRAM_SHA_256, ChannelBinding::unrequested())),
            None => Ok((sasl::SCRAM_SHA_256, ChannelBinding::unsupported())),
        }
    }

    fn allow(&mut self, method: Method, asked: &str) -> Result<(), LoginError> {
        if !matches!(self.phase, Phase::Start) {
            return Err(exchange(
                "authentication request",
                "a second request after the secret was sent",
            ));
        }
        if !self.account.methods.contains(&method) {
            return Err(self.refused(asked));
        }
        self.method = Some(method);
        Ok(())
    }

    fn refused(&self, asked: &str) -> LoginError {
        LoginError::Method {
            workload: self.account.workload.clone(),
            asked: asked.to_owned(),
            allowed: (self.account.methods.iter().map(|m| m.as_str()))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

fn exchange(step: &'static str, reason: &str) -> LoginError {
    LoginError::Exchange {
        step,
        reason: reason.to_owned(),
    }
}

/// Moves a message into a buffer that is wiped when dropped, wiping the original.
fn wiped(mut buf: BytesMut) -> Answer {
    let out = Zeroizing::new(buf.to_vec());
    buf.as_mut().zeroize();
    out
}

#[cfg(test)]
mod tests;
