//! RFC 5424 syslog messages of journal records, without transport framing: the key fields
//! as structured data `[pgwarden@<enterprise_id> ...]`, the stored JSON line as MSG.
//!
//! `<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID [SD] MSG`: facility 13 (log audit), severity
//! 4 (warning) for refusals and possible record loss, 5 (notice) for the agent's, policy's,
//! approvals' and forwarding's events, 6 (info) otherwise; TIMESTAMP the record's time (UTC,
//! microseconds); PROCID `-`; MSGID the event (`query.denied`). The SD parameters name the
//! record's chain position (`seq`, `hash`, `prev_hash`), its session with the identity of
//! its `session.start` (`pid`, `exe`, `user`, `client`, `server`, `db_user`, `database`...),
//! the statement (for a `query.done`, the one of its `query`), the decision and outcome, and
//! `detail`'s scalar entries; values are escaped as §6.3.3 says (`"`, `\`, `]`), control
//! characters (newlines) become spaces, long texts are cut at [`MAX_TEXT`] characters.
//! MSG is the line exactly as stored, so the receiver can verify `hash`; as JSON escapes
//! every newline, a message is always one line. An ASCII line is sent as is (MSG-ANY);
//! one with other characters is UTF-8 and starts with the BOM, as §6.4 requires.
#[cfg(test)]
mod tests;

use std::fmt::Write as _;

use serde_json::Value;

use super::context::statement_no;
use super::{Gravity, Options};
use crate::audit::record::{Outcome, Record, one_line};
use crate::audit::time::{format_micros, parse_time};

/// Facility 13: log audit.
pub const FACILITY: u8 = 13;
/// Characters at most of a statement or an error in the structured data.
pub const MAX_TEXT: usize = 1024;
const BOM: char = '\u{feff}';

/// The syslog message of `rec` (filled from its session), whose stored line is `line`.
pub fn encode(line: &str, rec: &Record, options: &Options) -> String {
    let mut out = String::with_capacity(line.len() + 768);
    let _ = write!(
        out,
        "<{}>1 {} {} {} - {} ",
        pri(rec),
        timestamp(rec),
        header(&options.hostname, 255),
        header(&options.app_name, 48),
        header(rec.event.as_str(), 32),
    );
    structured_data(&mut out, rec, options.enterprise_id);
    out.push(' ');
    if !line.is_ascii() {
        out.push(BOM);
    }
    out.extend(
        line.chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c }),
    );
    out
}

/// Severity: 4 warning, 5 notice, 6 informational (see the module doc).
pub fn severity(rec: &Record) -> u8 {
    match Gravity::of(rec) {
        Gravity::Routine => 6,
        Gravity::Notable => 5,
        Gravity::Warning | Gravity::Loss => 4,
    }
}

/// PRI: facility × 8 + severity.
pub fn pri(rec: &Record) -> u8 {
    FACILITY * 8 + severity(rec)
}

/// The record's time as RFC 3339 UTC with microseconds, or `-` when it is unreadable.
fn timestamp(rec: &Record) -> String {
    parse_time(&rec.time).map_or_else(|| "-".into(), format_micros)
}

/// A header field: printable US-ASCII (others become `_`), at most `max`, `-` when empty.
fn header(s: &str, max: usize) -> String {
    let v: String = s
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(max)
        .collect();
    if v.is_empty() { "-".into() } else { v }
}

/// Whether `name` is a PARAM-NAME: 1 to 32 printable US-ASCII but `=`, space, `]`, `"`.
pub fn is_param_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'=' | b']' | b'"'))
}

/// A PARAM-VALUE as §6.3.3 wants it: `"`, `\` and `]` escaped by a backslash; control
/// characters, which it leaves as they are but would break the line, become spaces.
pub fn escape_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '"' | '\\' | ']' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
}

/// `[pgwarden@<id> name="value" ...]`.
fn structured_data(out: &mut String, rec: &Record, enterprise_id: u32) {
    let _ = write!(out, "[pgwarden@{enterprise_id}");
    for (name, value) in params(rec) {
        out.push(' ');
        out.push_str(&name);
        out.push_str("=\"");
        escape_value(out, &value);
        out.push('"');
    }
    out.push(']');
}

/// The SD parameters of `rec`, in a fixed order, those it has.
fn params(rec: &Record) -> Vec<(String, String)> {
    let mut p = Params::default();
    p.put("seq", Some(rec.seq));
    p.put("hash", Some(&rec.hash).filter(|h| !h.is_empty()));
    p.put("prev_hash", Some(&rec.prev_hash).filter(|h| !h.is_empty()));
    p.put("session", rec.session_id.as_ref());
    p.put("workload", rec.workload.as_ref());
    p.put("decision", rec.decision);
    p.put("rule", rec.rule.as_ref());
    statement_params(&mut p, rec);
    identity_params(&mut p, rec);
    p.put("policy_hash", rec.policy_hash.as_ref());
    for (k, v) in &rec.detail {
        if k != "statement_no" && is_param_name(k) && !p.has(k) {
            p.put(k, scalar(v));
        }
    }
    p.0
}

/// The statement and how it went.
fn statement_params(p: &mut Params, rec: &Record) {
    if let Some(st) = &rec.statement {
        p.put("command", st.command.as_ref());
        p.put("fingerprint", Some(&st.fingerprint));
        p.put(
            "objects",
            Some(st.objects.join(",")).filter(|o| !o.is_empty()),
        );
    }
    p.put("statement_no", statement_no(rec));
    let text = rec
        .statement
        .as_ref()
        .map(|st| one_line(&st.text, MAX_TEXT));
    p.put("statement", text);
    p.put("rows", rec.rows);
    p.put("outcome", rec.outcome.map(outcome));
    p.put("sqlstate", rec.sqlstate.as_ref());
    p.put("duration_us", rec.duration_us);
    let masked: Vec<String> = rec
        .masked
        .iter()
        .map(|m| format!("{}:{}:{}", m.column, m.method, m.count))
        .collect();
    p.put("masked", Some(masked.join(",")).filter(|m| !m.is_empty()));
    p.put("error", rec.error.as_ref().map(|e| one_line(e, MAX_TEXT)));
}

/// Who: the process, the addresses, the startup parameters.
fn identity_params(p: &mut Params, rec: &Record) {
    if let Some(a) = &rec.actor {
        p.put("pid", a.pid);
        p.put("exe", a.exe.as_ref());
        p.put("comm", a.comm.as_ref());
        p.put("uid", a.uid);
        p.put("user", a.user.as_ref());
        p.put("unit", a.unit.as_ref());
        p.put("cgroup", a.cgroup.as_ref());
        p.put("container", a.container.as_ref());
        p.put("netns", a.netns);
    }
    p.put("client", rec.client.as_ref());
    p.put("server", rec.server.as_ref());
    if let Some(db) = &rec.db {
        p.put("db_user", db.user.as_ref());
        p.put("database", db.database.as_ref());
        p.put("application_name", db.application_name.as_ref());
    }
}

fn outcome(o: Outcome) -> &'static str {
    match o {
        Outcome::Success => "success",
        Outcome::Failure => "failure",
    }
}

/// A `detail` value as a parameter: strings, numbers and booleans (the rest is in MSG).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(one_line(s, MAX_TEXT)),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Parameters collected in order.
#[derive(Default)]
struct Params(Vec<(String, String)>);

impl Params {
    fn put(&mut self, name: &str, value: Option<impl std::fmt::Display>) {
        if let Some(v) = value {
            self.0.push((name.to_owned(), v.to_string()));
        }
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }
}
