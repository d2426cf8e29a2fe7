//! One audit record: the JSON-lines contract (field names, omitted empties) and the builder
//! callers use; its parts are in [`fields`]. The canonical form its SHA-256 `hash` is computed
//! over is [`super::canon::json`]'s; its time format is [`super::time`]'s.
pub mod fields;
#[cfg(test)]
mod tests;

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use fields::{Actor, Db, Decision, Endpoint, Event, Masked, Outcome, Statement};

use super::canon::hash_value;
use super::time::format_time;
use crate::identity::Identity;

/// The record contract's version, in every record's `v`: 2 since the session's identity is
/// in its `session.start` only (records without `v` are version 1). The hash covers every
/// field either way, so journals of both verify alike. What a reader may ignore keeps the
/// version: a `detail` key such as `query.done`'s `result` (what the workload saw, under a
/// profile's `record_results`; [`super::canon::result`]).
pub const RECORD_VERSION: u64 = 2;

/// `prev_hash` of the first record ever written to a journal.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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
    /// The record contract's version ([`RECORD_VERSION`]; absent: 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<u64>,
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
            v: Some(RECORD_VERSION),
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
    /// every record before hashing, whatever the caller did. In `detail.result` (what the
    /// workload saw) every string is scrubbed but the digest: a value shaped like a hash is
    /// data there, and may hide a card number.
    pub fn scrub_pans(&mut self) {
        fn scrub(s: &mut String) {
            if let std::borrow::Cow::Owned(o) = crate::audit::redact::scrub_pans_cow(s) {
                *s = o;
            }
        }
        fn scrub_value(v: &mut Value, hashes: bool) {
            match v {
                // A chain hash (`last_hash` of a gap, a checkpoint's anchor) is not free text:
                // about one SHA-256 in a hundred has a Luhn-valid run of 13+ digits, and
                // masking it would break the link it records.
                Value::String(s) if hashes && is_hash(s) => {}
                Value::String(s) => scrub(s),
                Value::Array(a) => a.iter_mut().for_each(|x| scrub_value(x, hashes)),
                Value::Object(o) => o.values_mut().for_each(|x| scrub_value(x, hashes)),
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
        for (k, v) in &mut self.detail {
            match (k.as_str(), v) {
                ("result", Value::Object(result)) => {
                    for (_, v) in result.iter_mut().filter(|(k, _)| *k != "sha256") {
                        scrub_value(v, false);
                    }
                }
                (_, v) => scrub_value(v, true),
            }
        }
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

/// Whether `s` has the shape of a chain hash: 64 lowercase hex digits.
fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
