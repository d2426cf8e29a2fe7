//! The parts of a record: what happened ([`Event`]), who ([`Actor`]), where from and to
//! ([`Endpoint`], [`Db`]), what was said ([`Statement`]) and what came of it ([`Decision`],
//! [`Outcome`], [`Masked`]); each with its JSON names, as stored.
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::audit::redact;
use crate::identity::Identity;
use crate::names::{ClientAddr, OrigDstAddr, SockAddr};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Event {
    /// The agent started.
    #[serde(rename = "agent.start")]
    AgentStart,
    /// The agent stopped.
    #[serde(rename = "agent.stop")]
    AgentStop,
    /// A client connection was intercepted.
    #[serde(rename = "session.start")]
    SessionStart,
    /// An intercepted connection ended.
    #[serde(rename = "session.end")]
    SessionEnd,
    /// A statement was received and decided.
    #[serde(rename = "query")]
    Query,
    /// A statement completed (rows, outcome, duration).
    #[serde(rename = "query.done")]
    QueryDone,
    /// A statement was refused before reaching the server.
    #[serde(rename = "query.denied")]
    QueryDenied,
    /// A statement is held until someone approves it.
    #[serde(rename = "approval.requested")]
    ApprovalRequested,
    /// A held statement was approved.
    #[serde(rename = "approval.granted")]
    ApprovalGranted,
    /// A held statement was refused by an approver.
    #[serde(rename = "approval.denied")]
    ApprovalDenied,
    /// A held statement waited too long.
    #[serde(rename = "approval.expired")]
    ApprovalExpired,
    /// The client went away while its statement was held.
    #[serde(rename = "approval.withdrawn")]
    ApprovalWithdrawn,
    /// An open grant was closed before its time.
    #[serde(rename = "approval.revoked")]
    ApprovalRevoked,
    /// The policy was reloaded.
    #[serde(rename = "policy.reload")]
    PolicyReload,
    /// Records were lost (async overflow) or a torn write was sealed; `detail` says which.
    #[serde(rename = "audit.gap")]
    AuditGap,
    /// Periodic marker: how many records since the previous one.
    #[serde(rename = "audit.checkpoint")]
    AuditCheckpoint,
    /// The live file was unlinked, renamed, replaced or had its mode changed behind the
    /// writer's back, and was reopened (or created) at its path; `detail` says what happened
    /// and, under `missing`, which records are not in the journal's files since.
    #[serde(rename = "audit.reopen")]
    AuditReopen,
    /// Rotated files are about to be deleted by the configured retention; `detail` names them
    /// and, under `missing`, their seq range and the last hash.
    #[serde(rename = "audit.retention")]
    AuditRetention,
    /// A forwarding target (`audit.forward`) stopped accepting records or accepted them again;
    /// `detail` names the target, its state, the error and the seqs still to deliver.
    #[serde(rename = "audit.forward")]
    AuditForward,
    /// An event this version does not know (read side only; never written).
    #[serde(other, skip_serializing)]
    Unknown,
}

impl Event {
    /// Every event this version writes, in the contract's order.
    pub const ALL: [Event; 19] = [
        Event::AgentStart,
        Event::AgentStop,
        Event::SessionStart,
        Event::SessionEnd,
        Event::Query,
        Event::QueryDone,
        Event::QueryDenied,
        Event::ApprovalRequested,
        Event::ApprovalGranted,
        Event::ApprovalDenied,
        Event::ApprovalExpired,
        Event::ApprovalWithdrawn,
        Event::ApprovalRevoked,
        Event::PolicyReload,
        Event::AuditGap,
        Event::AuditCheckpoint,
        Event::AuditReopen,
        Event::AuditRetention,
        Event::AuditForward,
    ];

    /// The name as stored, e.g. `query.denied`.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::AgentStart => "agent.start",
            Event::AgentStop => "agent.stop",
            Event::SessionStart => "session.start",
            Event::SessionEnd => "session.end",
            Event::Query => "query",
            Event::QueryDone => "query.done",
            Event::QueryDenied => "query.denied",
            Event::ApprovalRequested => "approval.requested",
            Event::ApprovalGranted => "approval.granted",
            Event::ApprovalDenied => "approval.denied",
            Event::ApprovalExpired => "approval.expired",
            Event::ApprovalWithdrawn => "approval.withdrawn",
            Event::ApprovalRevoked => "approval.revoked",
            Event::PolicyReload => "policy.reload",
            Event::AuditGap => "audit.gap",
            Event::AuditCheckpoint => "audit.checkpoint",
            Event::AuditReopen => "audit.reopen",
            Event::AuditRetention => "audit.retention",
            Event::AuditForward => "audit.forward",
            Event::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The process behind a connection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// cgroup path relative to the cgroup2 root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// systemd unit owning the cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Real uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// User name of `uid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Executable path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// Thread command name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// The network namespace (nsfs inode) of a client outside the agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
    /// The container id its cgroup names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

impl From<&Identity> for Actor {
    fn from(id: &Identity) -> Self {
        Self {
            cgroup: id.cgroup.as_ref().map(ToString::to_string),
            unit: id.unit.clone(),
            pid: Some(id.pid),
            uid: Some(id.uid),
            user: id.user.clone(),
            exe: id.exe.clone(),
            comm: (!id.comm.is_empty()).then(|| id.comm.clone()),
            netns: id.netns,
            container: id.container.clone(),
        }
    }
}

/// An address and port, or a Unix socket's name (`path`; abstract names start with `@`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// Port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Unix socket name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Self {
        // IPv4-mapped IPv6 addresses are stored as the IPv4 address they are.
        let ip = match a.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        Self {
            ip: Some(ip),
            port: Some(a.port()),
            path: None,
        }
    }
}

impl From<&SockAddr> for Endpoint {
    fn from(a: &SockAddr) -> Self {
        match a {
            SockAddr::Inet(a) => (*a).into(),
            SockAddr::Unix(p) => Self {
                ip: None,
                port: None,
                path: Some(p.clone()),
            },
        }
    }
}

impl From<ClientAddr> for Endpoint {
    fn from(a: ClientAddr) -> Self {
        (&a.0).into()
    }
}

impl From<OrigDstAddr> for Endpoint {
    fn from(a: OrigDstAddr) -> Self {
        (&a.0).into()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.path, self.ip, self.port) {
            (Some(p), _, _) if p.is_empty() => f.write_str("unix"),
            (Some(p), _, _) => write!(f, "unix:{p}"),
            (None, Some(ip), Some(port)) => SocketAddr::new(ip, port).fmt(f),
            (None, Some(ip), None) => ip.fmt(f),
            _ => f.write_str("?"),
        }
    }
}

/// Startup parameters of the session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Db {
    /// Database user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// `application_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_name: Option<String>,
}

/// A statement as the journal keeps it: never raw literals unless configured, never a PAN.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// Statement text: literals replaced by `$n` placeholders (the default), or the original
    /// text with card numbers scrubbed (`keep_literals: true`). See [`redact`].
    pub text: String,
    /// First 16 hex digits of the SHA-256 of the normalized text: equal for statements that
    /// differ only in literals, whitespace and comments.
    pub fingerprint: String,
    /// Command tag(s), e.g. `SELECT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Objects the statement touches, e.g. `public.payments`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<String>,
}

impl Statement {
    /// From SQL text: normalized (placeholders) unless `keep_literals`, PANs scrubbed either
    /// way, fingerprinted, and capped at [`redact::MAX_TEXT_BYTES`].
    pub fn from_sql(sql: &str, keep_literals: bool) -> Self {
        let (text, fingerprint) = redact::statement_text(sql, keep_literals);
        Self {
            text,
            fingerprint,
            command: None,
            objects: Vec::new(),
        }
    }

    /// [`Statement::from_sql`] of a text [`crate::sqltext::Text`] has read already.
    pub fn from_text(sql: &str, text: &crate::sqltext::Text, keep_literals: bool) -> Self {
        let (text, fingerprint) =
            redact::statement_text_of(sql, text.normalized.clone(), keep_literals);
        Self {
            text,
            fingerprint,
            command: None,
            objects: Vec::new(),
        }
    }

    /// Sets the command tag.
    #[must_use]
    pub fn command(mut self, command: impl Into<String>) -> Self {
        self.command = Some(command.into());
        self
    }

    /// Sets the objects touched.
    #[must_use]
    pub fn objects<I: IntoIterator<Item = S>, S: Into<String>>(mut self, objects: I) -> Self {
        self.objects = objects.into_iter().map(Into::into).collect();
        self
    }
}

/// What policy decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Sent to the server unchanged.
    Allow,
    /// Refused.
    Deny,
    /// Sent, with results masked.
    Mask,
    /// Held for approval.
    Hold,
}

impl Decision {
    /// The name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Mask => "mask",
            Decision::Hold => "hold",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a statement ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Completed.
    Success,
    /// Failed (see `sqlstate`, `error`).
    Failure,
}

/// One masked column of a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Masked {
    /// Column name.
    pub column: String,
    /// Masking method, e.g. `pan`, `hash`, `redact`.
    pub method: String,
    /// How many values were masked.
    pub count: u64,
}
