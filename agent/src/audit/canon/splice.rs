//! The per-statement records of a session (`query`, `query.done`, `query.denied`), spliced
//! from bytes serialized once: the session's fields once per session, the statement's once
//! per statement shape, and the few fields that change written around them in canonical key
//! order.
use std::time::SystemTime;

use serde_json::Value;

use super::Prepared;
use super::json::{push_key, push_str, push_u64, push_value};
use crate::audit::record::{Decision, Event, Masked, Outcome, RECORD_VERSION, Statement};
use crate::audit::redact::scrub_pans_cow;
use crate::audit::time::push_time;

/// The fields every statement record of a session carries, serialized once: `session_id`
/// (after `seq`), `v` and `workload` (last). The session's identity (`actor`, `client`,
/// `server`, `db`) is in its `session.start` only.
#[derive(Clone, Debug, Default)]
pub struct SessionFields {
    mid: Vec<u8>,
    tail: Vec<u8>,
}

impl SessionFields {
    /// The session's fields (as [`crate::audit::Record`]'s builder would set them).
    pub fn new(session_id: &str, workload: &str) -> SessionFields {
        let mut mid = Vec::with_capacity(32);
        push_key(&mut mid, "session_id");
        push_str(&mut mid, session_id);
        mid.push(b',');
        let mut tail = Vec::with_capacity(40);
        push_key(&mut tail, "v");
        push_u64(&mut tail, RECORD_VERSION);
        tail.push(b',');
        push_key(&mut tail, "workload");
        push_str(&mut tail, workload);
        SessionFields { mid, tail }
    }
}

/// The canonical JSON of a record's `statement` object (serialize once per statement shape,
/// splice into every record of it).
pub fn statement_json(st: &Statement) -> Box<[u8]> {
    let mut out = Vec::with_capacity(st.text.len() + 64);
    let mut s = st.clone();
    if let std::borrow::Cow::Owned(o) = scrub_pans_cow(&s.text) {
        s.text = o;
    }
    push_value(&mut out, &serde_json::to_value(&s).unwrap_or(Value::Null));
    out.into_boxed_slice()
}

/// The fields of one statement event of a session.
#[derive(Clone, Copy, Debug)]
pub struct StatementFields<'a> {
    /// `query`, `query.done` or `query.denied`.
    pub event: Event,
    /// When it happened.
    pub time: SystemTime,
    /// The session's statement number (`detail.statement_no`).
    pub statement_no: u64,
    /// Policy's decision.
    pub decision: Option<Decision>,
    /// The rule.
    pub rule: Option<&'a str>,
    /// The statement, from [`statement_json`].
    pub statement: Option<&'a [u8]>,
    /// SHA-256 of the policy in force.
    pub policy_hash: Option<&'a str>,
    /// Rows returned or affected.
    pub rows: Option<u64>,
    /// How it ended.
    pub outcome: Option<Outcome>,
    /// SQLSTATE.
    pub sqlstate: Option<&'a str>,
    /// Error message (card numbers are scrubbed here).
    pub error: Option<&'a str>,
    /// Duration in microseconds.
    pub duration_us: Option<u64>,
    /// Masked columns.
    pub masked: &'a [Masked],
    /// `detail.result` of a `query.done`: what the workload saw, from
    /// [`super::result::result_json`] (scrubbed there).
    pub result: Option<&'a [u8]>,
    /// `detail.run_as`: the role an approved statement runs as (its rule's `run_as`).
    pub run_as: Option<&'a str>,
}

impl<'a> StatementFields<'a> {
    /// An event at `time` with nothing else set.
    pub fn new(event: Event, time: SystemTime, statement_no: u64) -> Self {
        Self {
            event,
            time,
            statement_no,
            decision: None,
            rule: None,
            statement: None,
            policy_hash: None,
            rows: None,
            outcome: None,
            sqlstate: None,
            error: None,
            duration_us: None,
            masked: &[],
            result: None,
            run_as: None,
        }
    }
}

fn lower(o: Outcome) -> &'static str {
    match o {
        Outcome::Success => "success",
        Outcome::Failure => "failure",
    }
}

/// A session's statement event, spliced from its parts in canonical key order: `decision`,
/// `detail`, `duration_us`, `error`, `event`, `masked`, `outcome`, `policy_hash`,
/// (`prev_hash`), `rows`, `rule`, (`seq`), `session_id`, `sqlstate`, `statement`, `time`,
/// `v`, `workload`.
pub fn statement_record(s: &SessionFields, f: &StatementFields<'_>) -> Prepared {
    let mut b = super::buffer(
        s.mid.len()
            + s.tail.len()
            + f.statement.map_or(0, <[u8]>::len)
            + f.result.map_or(0, <[u8]>::len)
            + 256,
    );
    b.push(b'{');
    if let Some(d) = f.decision {
        push_key(&mut b, "decision");
        push_str(&mut b, d.as_str());
        b.push(b',');
    }
    push_key(&mut b, "detail");
    b.push(b'{');
    if let Some(r) = f.result {
        push_key(&mut b, "result");
        b.extend_from_slice(r);
        b.push(b',');
    }
    if let Some(r) = f.run_as {
        push_key(&mut b, "run_as");
        push_str(&mut b, r);
        b.push(b',');
    }
    b.extend_from_slice(b"\"statement_no\":");
    push_u64(&mut b, f.statement_no);
    b.extend_from_slice(b"},");
    if let Some(d) = f.duration_us {
        push_key(&mut b, "duration_us");
        push_u64(&mut b, d);
        b.push(b',');
    }
    if let Some(e) = f.error {
        push_key(&mut b, "error");
        push_str(&mut b, &scrub_pans_cow(e));
        b.push(b',');
    }
    push_key(&mut b, "event");
    push_str(&mut b, f.event.as_str());
    b.push(b',');
    if !f.masked.is_empty() {
        push_key(&mut b, "masked");
        b.push(b'[');
        for (i, m) in f.masked.iter().enumerate() {
            if i > 0 {
                b.push(b',');
            }
            b.extend_from_slice(b"{\"column\":");
            push_str(&mut b, &m.column);
            b.extend_from_slice(b",\"count\":");
            push_u64(&mut b, m.count);
            b.extend_from_slice(b",\"method\":");
            push_str(&mut b, &m.method);
            b.push(b'}');
        }
        b.extend_from_slice(b"],");
    }
    if let Some(o) = f.outcome {
        push_key(&mut b, "outcome");
        push_str(&mut b, lower(o));
        b.push(b',');
    }
    if let Some(h) = f.policy_hash {
        push_key(&mut b, "policy_hash");
        push_str(&mut b, h);
        b.push(b',');
    }
    let at_prev = b.len();
    if let Some(r) = f.rows {
        push_key(&mut b, "rows");
        push_u64(&mut b, r);
        b.push(b',');
    }
    if let Some(r) = f.rule {
        push_key(&mut b, "rule");
        push_str(&mut b, r);
        b.push(b',');
    }
    let at_seq = b.len();
    b.extend_from_slice(&s.mid);
    if let Some(c) = f.sqlstate {
        push_key(&mut b, "sqlstate");
        push_str(&mut b, c);
        b.push(b',');
    }
    if let Some(st) = f.statement {
        push_key(&mut b, "statement");
        b.extend_from_slice(st);
        b.push(b',');
    }
    push_key(&mut b, "time");
    push_time(&mut b, f.time);
    b.push(b',');
    b.extend_from_slice(&s.tail);
    b.push(b'}');
    Prepared {
        event: f.event,
        denial: f.decision == Some(Decision::Deny) || f.event == Event::QueryDenied,
        bytes: b,
        at_prev,
        at_seq,
    }
}
