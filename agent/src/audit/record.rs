//! One audit record: the JSON-lines contract (field names, omitted empties) and the builder
//! callers use. The canonical form its SHA-256 `hash` is computed over is
//! [`super::canon::json`]'s; its time format is [`super::time`]'s.
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use super::canon::hash_value;
use super::time::format_time;
use crate::identity::Identity;
use crate::names::{ClientAddr, OrigDstAddr, SockAddr};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `prev_hash` of the first record ever written to a journal.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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
    /// The policy was reloaded.
    #[serde(rename = "policy.reload")]
    PolicyReload,
    /// Records were lost (async overflow) or a torn write was sealed; `detail` says which.
    #[serde(rename = "audit.gap")]
    AuditGap,
    /// Periodic marker: how many records since the previous one.
    #[serde(rename = "audit.checkpoint")]
    AuditCheckpoint,
    /// An event this version does not know (read side only; never written).
    #[serde(other, skip_serializing)]
    Unknown,
}

impl Event {
    /// Every event this version writes, in the contract's order.
    pub const ALL: [Event; 15] = [
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
        Event::PolicyReload,
        Event::AuditGap,
        Event::AuditCheckpoint,
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
            Event::PolicyReload => "policy.reload",
            Event::AuditGap => "audit.gap",
            Event::AuditCheckpoint => "audit.checkpoint",
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
    /// text with card numbers scrubbed (`keep_literals: true`). See [`super::redact`].
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
    /// way, fingerprinted, and capped at [`super::redact::MAX_TEXT_BYTES`].
    pub fn from_sql(sql: &str, keep_literals: bool) -> Self {
        let (text, fingerprint) = super::redact::statement_text(sql, keep_literals);
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
            super::redact::statement_text_of(sql, text.normalized.clone(), keep_literals);
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

/// One line of the journal. Build it with [`Record::new`] and the builder methods; the
/// journal fills `seq`, `prev_hash` and `hash` when it writes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the host's chain: +1 per record, across restarts and rotated files.
    pub seq: u64,
    /// When the event happened, RFC 3339 UTC with microseconds.
    pub time: String,
    /// What happened.
    pub event: Event,
    /// Session id (16 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Workload name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// The process behind the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    /// The client's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Endpoint>,
    /// The real server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<Endpoint>,
    /// Startup parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db: Option<Db>,
    /// The statement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<Statement>,
    /// Policy's decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// The rule that decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Columns masked in the result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked: Vec<Masked>,
    /// Rows returned or affected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// How the statement ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// SQLSTATE of a failure or denial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
    /// Error message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Duration in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_us: Option<u64>,
    /// SHA-256 of the policy in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_hash: Option<String>,
    /// Extras, free JSON.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub detail: Map<String, Value>,
    /// `hash` of the previous record ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// SHA-256 over the canonical form of this record without `hash` (see the module doc).
    pub hash: String,
}

impl Record {
    /// A record of `event`, timed now.
    pub fn new(event: Event) -> Self {
        Self {
            seq: 0,
            time: format_time(SystemTime::now()),
            event,
            session_id: None,
            workload: None,
            actor: None,
            client: None,
            server: None,
            db: None,
            statement: None,
            decision: None,
            rule: None,
            masked: Vec::new(),
            rows: None,
            outcome: None,
            sqlstate: None,
            error: None,
            duration_us: None,
            policy_hash: None,
            detail: Map::new(),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    /// Sets the event time (default: when [`Record::new`] ran).
    #[must_use]
    pub fn time(mut self, at: SystemTime) -> Self {
        self.time = format_time(at);
        self
    }

    /// Sets the session id (anything displayable; `SessionId` shows 16 hex digits).
    #[must_use]
    pub fn session(mut self, id: impl fmt::Display) -> Self {
        self.session_id = Some(id.to_string());
        self
    }

    /// Sets the workload name.
    #[must_use]
    pub fn workload(mut self, name: impl fmt::Display) -> Self {
        self.workload = Some(name.to_string());
        self
    }

    /// Sets the actor.
    #[must_use]
    pub fn actor(mut self, actor: Actor) -> Self {
        self.actor = Some(actor);
        self
    }

    /// Sets the actor and the workload from a resolved identity.
    #[must_use]
    pub fn identity(self, id: &Identity) -> Self {
        self.workload(&id.workload).actor(id.into())
    }

    /// Sets the client address.
    #[must_use]
    pub fn client(mut self, addr: impl Into<Endpoint>) -> Self {
        self.client = Some(addr.into());
        self
    }

    /// Sets the real server's address.
    #[must_use]
    pub fn server(mut self, addr: impl Into<Endpoint>) -> Self {
        self.server = Some(addr.into());
        self
    }

    /// Sets the startup parameters.
    #[must_use]
    pub fn db(mut self, db: Db) -> Self {
        self.db = Some(db);
        self
    }

    /// Sets the statement.
    #[must_use]
    pub fn statement(mut self, statement: Statement) -> Self {
        self.statement = Some(statement);
        self
    }

    /// Sets the decision.
    #[must_use]
    pub fn decision(mut self, decision: Decision) -> Self {
        self.decision = Some(decision);
        self
    }

    /// Sets the rule.
    #[must_use]
    pub fn rule(mut self, rule: impl Into<String>) -> Self {
        self.rule = Some(rule.into());
        self
    }

    /// Adds a masked column.
    #[must_use]
    pub fn masked(
        mut self,
        column: impl Into<String>,
        method: impl Into<String>,
        count: u64,
    ) -> Self {
        self.masked.push(Masked {
            column: column.into(),
            method: method.into(),
            count,
        });
        self
    }

    /// Sets the row count.
    #[must_use]
    pub fn rows(mut self, rows: u64) -> Self {
        self.rows = Some(rows);
        self
    }

    /// Sets the outcome.
    #[must_use]
    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = Some(outcome);
        self
    }

    /// Sets the SQLSTATE.
    #[must_use]
    pub fn sqlstate(mut self, code: impl Into<String>) -> Self {
        self.sqlstate = Some(code.into());
        self
    }

    /// Sets the error message (card numbers in it are scrubbed when written).
    #[must_use]
    pub fn error(mut self, message: impl Into<String>) -> Self {
        self.error = Some(message.into());
        self
    }

    /// Sets the duration.
    #[must_use]
    pub fn duration(mut self, d: Duration) -> Self {
        self.duration_us = Some(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        self
    }

    /// Sets the policy hash.
    #[must_use]
    pub fn policy_hash(mut self, hash: impl Into<String>) -> Self {
        self.policy_hash = Some(hash.into());
        self
    }

    /// Adds one `detail` entry (anything serializable; unserializable values become `null`).
    #[must_use]
    pub fn detail(mut self, key: impl Into<String>, value: impl Serialize) -> Self {
        self.detail.insert(
            key.into(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
        self
    }

    /// Replaces card numbers in every free-text field (statement text, error, startup
    /// parameters, string values of `detail`) by their masked form. The journal calls it on
    /// every record before hashing, whatever the caller did.
    pub fn scrub_pans(&mut self) {
        fn scrub(s: &mut String) {
            if let std::borrow::Cow::Owned(o) = super::redact::scrub_pans_cow(s) {
                *s = o;
            }
        }
        fn scrub_value(v: &mut Value) {
            match v {
                Value::String(s) => scrub(s),
                Value::Array(a) => a.iter_mut().for_each(scrub_value),
                Value::Object(o) => o.values_mut().for_each(scrub_value),
                _ => {}
            }
        }
        if let Some(st) = &mut self.statement {
            scrub(&mut st.text);
        }
        if let Some(e) = &mut self.error {
            scrub(e);
        }
        if let Some(db) = &mut self.db {
            for s in [&mut db.user, &mut db.database, &mut db.application_name]
                .into_iter()
                .flatten()
            {
                scrub(s);
            }
        }
        self.detail.values_mut().for_each(scrub_value);
    }

    /// The hash this record must carry: SHA-256 of its canonical form without `hash`.
    pub fn compute_hash(&self) -> String {
        match serde_json::to_value(self) {
            Ok(v) => hash_value(&v),
            // A Record always serializes (string keys, no custom serializer that fails).
            Err(_) => String::new(),
        }
    }

    /// One line for humans: event, who, decision, rule, statement (single line).
    pub fn summary(&self) -> String {
        let mut s = format!("{} #{}", self.event, self.seq);
        if let Some(w) = &self.workload {
            s.push_str(&format!(" workload={w}"));
        }
        if let Some(d) = self.decision {
            s.push_str(&format!(" decision={d}"));
        }
        if let Some(r) = &self.rule {
            s.push_str(&format!(" rule={r}"));
        }
        if let Some(a) = &self.actor {
            if let Some(pid) = a.pid {
                s.push_str(&format!(" pid={pid}"));
            }
            if let Some(exe) = &a.exe {
                s.push_str(&format!(" exe={exe}"));
            }
        }
        if let Some(r) = self.rows {
            s.push_str(&format!(" rows={r}"));
        }
        if let Some(c) = &self.sqlstate {
            s.push_str(&format!(" sqlstate={c}"));
        }
        if let Some(st) = &self.statement {
            s.push_str(": ");
            s.push_str(&one_line(&st.text, 200));
        } else if let Some(e) = &self.error {
            s.push_str(": ");
            s.push_str(&one_line(e, 200));
        } else if !self.detail.is_empty() {
            s.push(' ');
            s.push_str(&one_line(
                &Value::Object(self.detail.clone()).to_string(),
                200,
            ));
        }
        s
    }

    /// Whether this record reports a refusal (journald priority 4).
    pub fn is_denial(&self) -> bool {
        self.decision == Some(Decision::Deny)
            || matches!(self.event, Event::QueryDenied | Event::ApprovalDenied)
    }
}

/// `text` on one line (runs of whitespace become one space), at most `max` characters,
/// with `…` when cut.
pub fn one_line(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max + 4));
    let mut n = 0;
    for word in text.split_whitespace() {
        if n > 0 {
            out.push(' ');
            n += 1;
        }
        for c in word.chars() {
            if n >= max {
                out.push('…');
                return out;
            }
            out.push(c);
            n += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::canon::canonical_json;
    use serde_json::json;
    use sha2::{Digest as _, Sha256};
    use std::time::UNIX_EPOCH;

    #[test]
    fn canonical_form_sorts_keys_recursively_without_whitespace() {
        let v =
            json!({"b": 1, "a": {"d": [3, {"z": null, "y": true}], "c": "x\ny\"é"}, "hash": "zz"});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":"x\ny\"é","d":[3,{"y":true,"z":null}]},"b":1,"hash":"zz"}"#
        );
        // hash_value leaves out the top-level hash only.
        let without = json!({"b": 1, "a": {"d": [3, {"z": null, "y": true}], "c": "x\ny\"é"}});
        let expect = hex::encode(Sha256::digest(canonical_json(&without).as_bytes()));
        assert_eq!(hash_value(&v), expect);
    }

    /// Golden: the exact canonical bytes and hash of a fixed record. If this changes, every
    /// existing journal stops verifying: change the contract deliberately or not at all.
    #[test]
    fn golden_record_hash() {
        let mut r = Record::new(Event::Query)
            .time(UNIX_EPOCH + Duration::from_micros(1_795_582_835_123_456))
            .session("00000000000000ab")
            .workload("payments-mcp")
            .actor(Actor {
                pid: Some(42),
                exe: Some("/usr/bin/python3".into()),
                ..Actor::default()
            })
            .client("127.0.0.1:40000".parse::<SocketAddr>().unwrap())
            .statement(Statement::from_sql("SELECT * FROM t WHERE id = 7", false).command("SELECT"))
            .decision(Decision::Allow)
            .rule("read.payments")
            .detail("n", 1);
        r.seq = 7;
        r.prev_hash = GENESIS_HASH.into();
        let v = serde_json::to_value(&r).unwrap();
        let mut m = v.as_object().unwrap().clone();
        m.remove("hash");
        assert_eq!(
            canonical_json(&Value::Object(m)),
            concat!(
                r#"{"actor":{"exe":"/usr/bin/python3","pid":42},"client":{"ip":"127.0.0.1","port":40000},"#,
                r#""decision":"allow","detail":{"n":1},"event":"query","#,
                r#""prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","#,
                r#""rule":"read.payments","seq":7,"session_id":"00000000000000ab","#,
                r#""statement":{"command":"SELECT","fingerprint":"#,
                r#""6f440f43f9aa279c","text":"SELECT * FROM t WHERE id = $1"},"#,
                r#""time":"2026-11-25T05:00:35.123456Z","workload":"payments-mcp"}"#
            )
        );
        r.hash = r.compute_hash();
        assert_eq!(r.hash.len(), 64);
        // The hash does not depend on itself, nor on key order on disk.
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.starts_with(r#"{"seq":7,"time":"#), "{line}");
        let back: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(hash_value(&back), r.hash);
        let parsed: Record = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed, r);
    }

    #[test]
    fn empty_fields_are_omitted() {
        let r = Record::new(Event::AgentStart);
        let v = serde_json::to_value(&r).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = vec!["seq", "time", "event", "prev_hash", "hash"];
        want.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, want);
    }

    #[test]
    fn events_round_trip_by_name() {
        for e in Event::ALL {
            let s = serde_json::to_string(&e).unwrap();
            assert_eq!(s, format!("\"{}\"", e.as_str()));
            assert_eq!(serde_json::from_str::<Event>(&s).unwrap(), e);
        }
        assert_eq!(
            serde_json::from_str::<Event>("\"future.thing\"").unwrap(),
            Event::Unknown
        );
    }

    #[test]
    fn scrubbing_reaches_every_free_text_field() {
        let mut r = Record::new(Event::QueryDone)
            .error("duplicate key (card)=(4111111111111111)")
            .db(Db {
                application_name: Some("app 5500-0000-0000-0004".into()),
                ..Db::default()
            })
            .detail("note", json!({"deep": ["378282246310005"]}));
        r.scrub_pans();
        let text = serde_json::to_string(&r).unwrap();
        for pan in ["4111111111111111", "5500-0000-0000-0004", "378282246310005"] {
            assert!(!text.contains(pan), "{text}");
        }
        assert!(text.contains("411111******1111"), "{text}");
        assert!(text.contains("5500-00**-****-0004"), "{text}");
    }

    #[test]
    fn ipv4_mapped_addresses_are_stored_as_ipv4() {
        let e = Endpoint::from("[::ffff:10.0.0.1]:5432".parse::<SocketAddr>().unwrap());
        assert_eq!(e.to_string(), "10.0.0.1:5432");
    }
}
