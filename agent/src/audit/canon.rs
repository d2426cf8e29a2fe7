//! Records as canonical bytes, built where they happen and sealed by the writer.
//!
//! A [`Prepared`] record is its canonical form ([`super::record`]'s module doc) without
//! `prev_hash`, `seq` and `hash`, plus the two byte offsets where the writer puts `prev_hash`
//! and `seq` when it chains the record ([`Prepared::seal`]). Every record has an `event`
//! (sorting before `prev_hash`) and a `time` (sorting after `seq`), so both offsets always fall
//! between two entries.
//!
//! Two ways in: [`Prepared::from_record`] for any [`Record`] (through `serde_json::Value`: for
//! the rare events), and [`statement_record`] for the per-statement events of a session
//! (`query`, `query.done`, `query.denied`), which splices the session's fields serialized
//! once ([`SessionFields`]) and the statement's serialized once per statement shape
//! ([`statement_json`]) around the few fields that change. A test holds the two to the same
//! bytes.
//!
//! The stored line is the sealed canonical form with `,"hash":"…"` before its closing brace:
//! verification recomputes the canonical form from the parsed line, so the position of `hash`
//! does not matter to it.
use std::time::SystemTime;

use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::record::{Actor, Db, Decision, Endpoint, Event, Masked, Outcome, Record, Statement};
use super::redact::scrub_pans_cow;
use super::time::push_time;

/// Writes `s` as a JSON string with `serde_json`'s escaping (the canonical form's).
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &c) in bytes.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(c >> 4)]);
            out.push(HEX[usize::from(c & 0xf)]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn push_key(out: &mut Vec<u8>, key: &str) {
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

/// The canonical form of any JSON value.
pub fn push_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => push_str(out, s),
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_value(out, x);
            }
            out.push(b']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_str(out, k);
                out.push(b':');
                push_value(out, &m[k]);
            }
            out.push(b'}');
        }
    }
}

/// A record ready to be chained: canonical bytes without `prev_hash`, `seq` and `hash`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    /// What happened.
    pub event: Event,
    /// Whether it reports a refusal (journald priority 4).
    pub denial: bool,
    bytes: Vec<u8>,
    at_prev: usize,
    at_seq: usize,
}

/// A record once chained: its line (with `hash` and the newline), `seq` and `hash`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// The stored line, newline included.
    pub line: Vec<u8>,
    /// Its place in the chain.
    pub seq: u64,
    /// Its hash (lowercase hex).
    pub hash: String,
}

impl Prepared {
    /// Any record: card numbers scrubbed from its free-text fields, then serialized.
    pub fn from_record(rec: &Record) -> Prepared {
        let mut r = rec.clone();
        r.scrub_pans();
        let Ok(Value::Object(mut map)) = serde_json::to_value(&r) else {
            // A Record always serializes to an object (string keys, no failing serializer).
            unreachable!("a record serializes to a JSON object")
        };
        for k in ["seq", "prev_hash", "hash"] {
            map.remove(k);
        }
        Self::from_map(r.event, r.is_denial(), &map)
    }

    fn from_map(event: Event, denial: bool, map: &Map<String, Value>) -> Prepared {
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort();
        let mut bytes = Vec::with_capacity(512);
        let (mut at_prev, mut at_seq) = (None, None);
        bytes.push(b'{');
        for (i, k) in keys.into_iter().enumerate() {
            if i > 0 {
                bytes.push(b',');
            }
            if at_prev.is_none() && k.as_str() > "prev_hash" {
                at_prev = Some(bytes.len());
            }
            if at_seq.is_none() && k.as_str() > "seq" {
                at_seq = Some(bytes.len());
            }
            push_str(&mut bytes, k);
            bytes.push(b':');
            push_value(&mut bytes, &map[k]);
        }
        bytes.push(b'}');
        // `time` (after `seq`) is never absent from a record, so neither offset is.
        let end = bytes.len() - 1;
        Prepared {
            event,
            denial,
            bytes,
            at_prev: at_prev.unwrap_or(end),
            at_seq: at_seq.unwrap_or(end),
        }
    }

    /// Chains the record: `prev_hash` and `seq` put in place, the SHA-256 of that canonical
    /// form computed, and the line written with `hash` last.
    pub fn seal(&self, seq: u64, prev_hash: &str) -> Sealed {
        let b = &self.bytes;
        let mut line = Vec::with_capacity(b.len() + prev_hash.len() + 120);
        line.extend_from_slice(&b[..self.at_prev]);
        push_key(&mut line, "prev_hash");
        push_str(&mut line, prev_hash);
        line.push(b',');
        line.extend_from_slice(&b[self.at_prev..self.at_seq]);
        push_key(&mut line, "seq");
        push_u64(&mut line, seq);
        line.push(b',');
        line.extend_from_slice(&b[self.at_seq..]);
        let hash = hex::encode(Sha256::digest(&line));
        line.pop();
        line.extend_from_slice(b",\"hash\":\"");
        line.extend_from_slice(hash.as_bytes());
        line.extend_from_slice(b"\"}\n");
        Sealed { line, seq, hash }
    }

    /// The canonical bytes without the chain fields (tests, sizes).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The fields every record of a session carries, serialized once: `actor`, `client`, `db`
/// (before `decision`), `server`, `session_id` (after `seq`), `workload` (last).
#[derive(Clone, Debug, Default)]
pub struct SessionFields {
    head: Vec<u8>,
    mid: Vec<u8>,
    tail: Vec<u8>,
}

fn entry(out: &mut Vec<u8>, key: &str, v: &Value) {
    push_key(out, key);
    push_value(out, v);
    out.push(b',');
}

impl SessionFields {
    /// The session's fields (as [`Record`]'s builder would set them; `db`'s strings scrubbed
    /// of card numbers as the journal scrubs them).
    pub fn new(
        session_id: &str,
        workload: &str,
        actor: Option<&Actor>,
        client: Endpoint,
        server: Endpoint,
        db: &Db,
    ) -> SessionFields {
        let mut head = Vec::with_capacity(256);
        if let Some(a) = actor {
            entry(&mut head, "actor", &to(a));
        }
        entry(&mut head, "client", &to(&client));
        let scrub = |s: &Option<String>| s.as_deref().map(|s| scrub_pans_cow(s).into_owned());
        let db = Db {
            user: scrub(&db.user),
            database: scrub(&db.database),
            application_name: scrub(&db.application_name),
        };
        entry(&mut head, "db", &to(&db));
        let mut mid = Vec::with_capacity(96);
        entry(&mut mid, "server", &to(&server));
        push_key(&mut mid, "session_id");
        push_str(&mut mid, session_id);
        mid.push(b',');
        let mut tail = Vec::with_capacity(32);
        push_key(&mut tail, "workload");
        push_str(&mut tail, workload);
        SessionFields { head, mid, tail }
    }
}

fn to<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
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
        }
    }
}

fn lower(o: Outcome) -> &'static str {
    match o {
        Outcome::Success => "success",
        Outcome::Failure => "failure",
    }
}

/// A session's statement event, spliced from its parts in canonical key order: `actor`,
/// `client`, `db`, `decision`, `detail`, `duration_us`, `error`, `event`, `masked`, `outcome`,
/// `policy_hash`, (`prev_hash`), `rows`, `rule`, (`seq`), `server`, `session_id`, `sqlstate`,
/// `statement`, `time`, `workload`.
pub fn statement_record(s: &SessionFields, f: &StatementFields<'_>) -> Prepared {
    let mut b = Vec::with_capacity(
        s.head.len() + s.mid.len() + s.tail.len() + f.statement.map_or(0, <[u8]>::len) + 256,
    );
    b.push(b'{');
    b.extend_from_slice(&s.head);
    if let Some(d) = f.decision {
        push_key(&mut b, "decision");
        push_str(&mut b, d.as_str());
        b.push(b',');
    }
    push_key(&mut b, "detail");
    b.extend_from_slice(b"{\"statement_no\":");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::{GENESIS_HASH, hash_value};
    use proptest::prelude::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn actor() -> Actor {
        Actor {
            cgroup: Some("/ai.slice/mcp-payments.service".into()),
            unit: Some("mcp-payments.service".into()),
            pid: Some(4242),
            uid: Some(1000),
            user: Some("mcp \"agent\"".into()),
            exe: Some("/usr/bin/node".into()),
            comm: Some("node\tjs".into()),
            netns: None,
            container: None,
        }
    }

    fn db() -> Db {
        Db {
            user: Some("app".into()),
            database: Some("pay-4111111111111111".into()),
            application_name: None,
        }
    }

    fn endpoints() -> (Endpoint, Endpoint) {
        (
            std::net::SocketAddr::from(([127, 0, 0, 1], 40000)).into(),
            "[::ffff:10.0.0.5]:5432"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
    }

    /// What `Record`'s builder makes of the same fields.
    fn as_record(sid: &str, f: &StatementFields<'_>, statement: Option<&Statement>) -> Record {
        let (client, server) = endpoints();
        let mut r = Record::new(f.event)
            .time(f.time)
            .session(sid)
            .workload("payments-mcp")
            .actor(actor())
            .client(client)
            .server(server)
            .db(db())
            .detail("statement_no", f.statement_no);
        if let Some(st) = statement {
            r = r.statement(st.clone());
        }
        if let Some(d) = f.decision {
            r = r.decision(d);
        }
        if let Some(x) = f.rule {
            r = r.rule(x);
        }
        if let Some(x) = f.policy_hash {
            r = r.policy_hash(x);
        }
        if let Some(x) = f.rows {
            r = r.rows(x);
        }
        if let Some(x) = f.outcome {
            r = r.outcome(x);
        }
        if let Some(x) = f.sqlstate {
            r = r.sqlstate(x);
        }
        if let Some(x) = f.error {
            r = r.error(x);
        }
        if let Some(x) = f.duration_us {
            r = r.duration(Duration::from_micros(x));
        }
        for m in f.masked {
            r = r.masked(m.column.clone(), m.method.clone(), m.count);
        }
        r
    }

    proptest! {
        /// The spliced statement records are byte for byte what the generic path makes of
        /// the same record, and their seal verifies as the verifier checks it.
        #[test]
        fn spliced_records_equal_the_generic_form(
            event in prop_oneof![Just(Event::Query), Just(Event::QueryDone), Just(Event::QueryDenied)],
            micros in 0i64..4_102_444_800_000_000,
            n in any::<u64>(),
            decision in proptest::option::of(prop_oneof![Just(Decision::Allow), Just(Decision::Deny), Just(Decision::Mask)]),
            rule in proptest::option::of("[a-z.\\-]{1,12}"),
            text in "[ -~\\n\\t\"\\\\é\u{1}]{0,40}",
            rows in proptest::option::of(any::<u64>()),
            outcome in proptest::option::of(prop_oneof![Just(Outcome::Success), Just(Outcome::Failure)]),
            error in proptest::option::of("[ -~\\n]{0,30}"),
            duration in proptest::option::of(any::<u64>()),
            masked in proptest::collection::vec(("[a-z_.]{1,20}", "[a-z()0-9,]{1,10}", any::<u64>()), 0..3),
            with_statement in any::<bool>(),
            seq in 1u64..u64::MAX,
        ) {
            let time = UNIX_EPOCH + Duration::from_micros(micros.unsigned_abs());
            let (client, server) = endpoints();
            let session = SessionFields::new("006b0677d5000001", "payments-mcp", Some(&actor()), client, server, &db());
            let st = Statement::from_sql(&format!("SELECT {text} FROM payments WHERE id = 4111111111111111"), false)
                .command("SELECT")
                .objects(["public.payments"]);
            let st_json = statement_json(&st);
            let masked: Vec<Masked> = masked.into_iter().map(|(c, m, k)| Masked { column: c, method: m, count: k }).collect();
            let mut f = StatementFields::new(event, time, n);
            f.decision = decision;
            f.rule = rule.as_deref();
            f.statement = with_statement.then_some(&st_json[..]);
            f.policy_hash = Some("c25f3f44522cfbe19bc0bcac407d3ea1e76f1312f9b8d77fbbcfb0f16b23c421");
            f.rows = rows;
            f.outcome = outcome;
            f.error = error.as_deref();
            f.duration_us = duration;
            f.masked = &masked;
            let fast = statement_record(&session, &f);
            let generic = Prepared::from_record(&as_record("006b0677d5000001", &f, with_statement.then_some(&st)));
            prop_assert_eq!(String::from_utf8_lossy(fast.bytes()), String::from_utf8_lossy(generic.bytes()));
            prop_assert_eq!(&fast, &generic);
            let sealed = fast.seal(seq, GENESIS_HASH);
            let v: Value = serde_json::from_slice(&sealed.line).unwrap();
            prop_assert_eq!(hash_value(&v), sealed.hash.clone());
            prop_assert_eq!(v["seq"].as_u64(), Some(seq));
            prop_assert_eq!(v["hash"].as_str(), Some(sealed.hash.as_str()));
            prop_assert!(!String::from_utf8_lossy(&sealed.line).contains("4111111111111111"));
        }
    }

    #[test]
    fn records_of_every_shape_seal_to_what_verify_recomputes() {
        let mut r = Record::new(Event::AgentStart).detail("version", "0.1.0");
        for rec in [
            r.clone(),
            Record::new(Event::AuditGap).detail("lost", 3),
            Record::new(Event::SessionEnd)
                .session("ab")
                .duration(Duration::from_millis(3)),
        ] {
            let p = Prepared::from_record(&rec);
            let s = p.seal(7, GENESIS_HASH);
            let v: Value = serde_json::from_slice(&s.line).unwrap();
            assert_eq!(hash_value(&v), s.hash);
            assert!(s.line.ends_with(b"\"}\n"));
        }
        r.seq = 99;
        let p = Prepared::from_record(&r);
        assert!(!String::from_utf8_lossy(p.bytes()).contains("\"seq\""));
    }

    #[test]
    fn strings_escape_as_serde_json_does() {
        for s in [
            "plain",
            "q\"b\\s",
            "nl\n cr\r tab\t bs\u{8} ff\u{c}",
            "\u{1}\u{1f}\u{7f}",
            "é ☃ /",
        ] {
            let mut out = Vec::new();
            push_str(&mut out, s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
    }
}
