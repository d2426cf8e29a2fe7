//! The journald mirror: every written record also goes to journald over its native protocol
//! (one datagram to `/run/systemd/journal/socket`), so `journalctl -t pgwarden` shows it and
//! a copy of each `hash` lives outside the journal file.
//!
//! Fields: `MESSAGE` (a one-line summary), `PRIORITY` (4 for denials and `audit.gap`, 6
//! otherwise), `SYSLOG_IDENTIFIER=pgwarden`, and `PGWARDEN_<FIELD>` for each record field,
//! nested objects flattened (`PGWARDEN_ACTOR_PID`, `PGWARDEN_DETAIL_LOST`), arrays as JSON
//! text. Values holding a newline use the protocol's length-prefixed form.
//!
//! A record whose datagram would pass [`MAX_DATAGRAM`] is sent truncated: every value is cut
//! to [`TRUNCATED_VALUE`] bytes and `PGWARDEN_TRUNCATED=1` is added (the file has it whole;
//! `PGWARDEN_HASH` finds it). An absent socket is counted and logged once, then retried
//! quietly every [`RETRY`]; other send failures (journald busy: the socket is non-blocking)
//! are counted each time and logged with back-off. Nothing is dropped silently.
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tracing::{info, warn};

use super::record::{Event, Record};

/// Largest datagram sent (the kernel's default socket buffer allows about 208 KiB).
pub const MAX_DATAGRAM: usize = 192 * 1024;
/// Bytes kept of each value in a truncated record.
pub const TRUNCATED_VALUE: usize = 2048;
/// How often an absent journald is looked for again.
pub const RETRY: Duration = Duration::from_secs(30);

/// A connection-less sender to journald.
pub struct Journald {
    path: PathBuf,
    socket: Option<UnixDatagram>,
    absent_since: Option<Instant>,
    errors: u64,
    sent: u64,
}

impl Journald {
    /// A sender to the native socket at `path` (nothing is opened until the first send).
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            socket: None,
            absent_since: None,
            errors: 0,
            sent: 0,
        }
    }

    /// Records journald did not get (an absent socket counts once per absence).
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Records sent.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Sends one record; failures are counted and logged here.
    pub fn send(&mut self, rec: &Record) {
        if self
            .absent_since
            .is_some_and(|since| since.elapsed() < RETRY)
        {
            return;
        }
        let payload = encode(rec);
        match self.send_bytes(&payload) {
            Ok(()) => {
                self.sent += 1;
                if self.absent_since.take().is_some() {
                    info!("journald reachable at {}", self.path.display());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                if self.absent_since.is_none() {
                    self.errors += 1;
                    warn!(
                        "journald socket {} is not there ({e}): audit records are not mirrored \
                         to journald until it is (retrying every {}s)",
                        self.path.display(),
                        RETRY.as_secs()
                    );
                }
                self.absent_since = Some(Instant::now());
            }
            Err(e) => {
                self.errors += 1;
                if self.errors == 1 || self.errors.is_power_of_two() {
                    warn!(
                        "journald did not take audit record seq {}: {e} ({} failed so far)",
                        rec.seq, self.errors
                    );
                }
            }
        }
    }

    fn send_bytes(&mut self, payload: &[u8]) -> io::Result<()> {
        if self.socket.is_none() {
            let s = UnixDatagram::unbound()?;
            s.set_nonblocking(true)?;
            self.socket = Some(s);
        }
        let Some(s) = &self.socket else {
            return Err(io::Error::other("no socket"));
        };
        s.send_to(payload, &self.path).map(|_| ())
    }
}

/// The journald fields of a record, in order: `MESSAGE`, `PRIORITY`, `SYSLOG_IDENTIFIER`,
/// then `PGWARDEN_*`.
pub fn fields(rec: &Record) -> Vec<(String, String)> {
    let priority = if rec.is_denial() || rec.event == Event::AuditGap {
        "4"
    } else {
        "6"
    };
    let mut out = vec![
        ("MESSAGE".to_owned(), rec.summary()),
        ("PRIORITY".to_owned(), priority.to_owned()),
        ("SYSLOG_IDENTIFIER".to_owned(), "pgwarden".to_owned()),
    ];
    if let Ok(Value::Object(m)) = serde_json::to_value(rec) {
        for (k, v) in &m {
            flatten(&mut out, &format!("PGWARDEN_{}", field_name(k)), v);
        }
    }
    out
}

fn flatten(out: &mut Vec<(String, String)>, name: &str, v: &Value) {
    match v {
        Value::Null => {}
        Value::Object(m) => {
            for (k, v) in m {
                flatten(out, &format!("{name}_{}", field_name(k)), v);
            }
        }
        Value::String(s) => out.push((name.to_owned(), s.clone())),
        other => out.push((name.to_owned(), other.to_string())),
    }
}

/// A journald field name part: ASCII letters and digits upper-cased, anything else `_`.
fn field_name(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// journald's native datagram for `rec`, truncated as the module doc says when too large.
pub fn encode(rec: &Record) -> Vec<u8> {
    let fields = fields(rec);
    let full = encode_fields(&fields, usize::MAX);
    if full.len() <= MAX_DATAGRAM {
        return full;
    }
    let mut cut = encode_fields(&fields, TRUNCATED_VALUE);
    cut.extend_from_slice(b"PGWARDEN_TRUNCATED=1\n");
    cut.truncate(MAX_DATAGRAM);
    // Never end in the middle of a field: drop the partial one.
    if let Some(p) = cut.iter().rposition(|&c| c == b'\n') {
        cut.truncate(p + 1);
    }
    cut
}

fn encode_fields(fields: &[(String, String)], max_value: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    for (name, value) in fields {
        // Names: journald accepts at most 64 characters.
        let name = &name[..name.len().min(64)];
        let mut end = value.len().min(max_value);
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        let value = &value.as_bytes()[..end];
        out.extend_from_slice(name.as_bytes());
        if value.contains(&b'\n') {
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
            out.extend_from_slice(value);
        } else {
            out.push(b'=');
            out.extend_from_slice(value);
        }
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::{Actor, Decision, Statement};

    #[test]
    fn fields_are_flattened_upper_snake() {
        let mut r = Record::new(Event::QueryDenied)
            .workload("payments-mcp")
            .actor(Actor {
                pid: Some(7),
                exe: Some("/usr/bin/python3".into()),
                ..Actor::default()
            })
            .statement(Statement::from_sql("DROP TABLE t", false).objects(["public.t"]))
            .decision(Decision::Deny)
            .rule("class.ddl")
            .detail("torn-bytes", 3);
        r.seq = 42;
        let f = fields(&r);
        let get = |n: &str| f.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("SYSLOG_IDENTIFIER"), Some("pgwarden"));
        assert_eq!(get("PRIORITY"), Some("4"));
        assert_eq!(get("PGWARDEN_SEQ"), Some("42"));
        assert_eq!(get("PGWARDEN_EVENT"), Some("query.denied"));
        assert_eq!(get("PGWARDEN_ACTOR_PID"), Some("7"));
        assert_eq!(get("PGWARDEN_STATEMENT_TEXT"), Some("DROP TABLE t"));
        assert_eq!(get("PGWARDEN_STATEMENT_OBJECTS"), Some("[\"public.t\"]"));
        assert_eq!(get("PGWARDEN_DETAIL_TORN_BYTES"), Some("3"));
        assert!(get("MESSAGE").unwrap().starts_with("query.denied #42"));
        let ok = Record::new(Event::Query).decision(Decision::Allow);
        assert_eq!(
            fields(&ok).iter().find(|(k, _)| k == "PRIORITY").unwrap().1,
            "6"
        );
    }

    #[test]
    fn newlines_use_the_length_prefixed_form() {
        let r = Record::new(Event::Query).statement(Statement::from_sql("SELECT 1", true));
        let mut r = r;
        r.statement.as_mut().unwrap().text = "SELECT\n1".into();
        let bytes = encode(&r);
        let needle = b"PGWARDEN_STATEMENT_TEXT\n\x08\0\0\0\0\0\0\0SELECT\n1\n";
        assert!(bytes.windows(needle.len()).any(|w| w == needle));
        assert!(bytes.starts_with(b"MESSAGE="));
    }

    #[test]
    fn huge_records_are_truncated_and_flagged() {
        let mut r = Record::new(Event::Query);
        r.detail
            .insert("big".into(), Value::String("x".repeat(400_000)));
        let bytes = encode(&r);
        assert!(bytes.len() <= MAX_DATAGRAM);
        assert!(bytes.ends_with(b"PGWARDEN_TRUNCATED=1\n"));
    }

    #[test]
    fn an_absent_socket_is_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journald::new(&dir.path().join("nope.sock"));
        for _ in 0..5 {
            j.send(&Record::new(Event::AgentStart));
        }
        assert_eq!((j.errors(), j.sent()), (1, 0));
    }

    #[test]
    fn datagrams_reach_a_listening_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let mut j = Journald::new(&path);
        let mut r = Record::new(Event::AgentStart);
        r.seq = 9;
        j.send(&r);
        let mut buf = vec![0u8; 65536];
        let n = server.recv(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.contains("PGWARDEN_SEQ=9\n"), "{text}");
        assert_eq!((j.errors(), j.sent()), (0, 1));
    }
}
