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

use tracing::{info, warn};

use super::record::Event;

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

    /// Sends one journal line; failures are counted and logged here.
    pub fn send(&mut self, line: &[u8], seq: u64, priority: u8) {
        if self
            .absent_since
            .is_some_and(|since| since.elapsed() < RETRY)
        {
            return;
        }
        let payload = encode(line, priority);
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
                        seq, self.errors
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

/// The journald fields of a journal line, in order: `MESSAGE`, `PRIORITY`,
/// `SYSLOG_IDENTIFIER`, then `PGWARDEN_*` in the line's key order. `None` when the line is not
/// a JSON object (the writer only hands over lines it wrote).
pub fn fields(line: &[u8], priority: u8) -> Option<Vec<(String, Vec<u8>)>> {
    let mut flat = Flat::default();
    let mut p = Reader { b: line, i: 0 };
    p.ws();
    if p.peek() != Some(b'{') {
        return None;
    }
    p.value(&mut flat, "PGWARDEN", 0)?;
    let mut out = Vec::with_capacity(flat.fields.len() + 3);
    out.push(("MESSAGE".to_owned(), summary(&flat).into_bytes()));
    out.push(("PRIORITY".to_owned(), vec![b'0' + priority.min(7)]));
    out.push(("SYSLOG_IDENTIFIER".to_owned(), b"pgwarden".to_vec()));
    out.extend(flat.fields);
    Some(out)
}

/// The flattened leaves of a line, and its raw `detail` object for the summary.
#[derive(Default)]
struct Flat {
    fields: Vec<(String, Vec<u8>)>,
    detail: Option<String>,
}

impl Flat {
    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// The one-line `MESSAGE` (as [`Record::summary`] writes it).
fn summary(f: &Flat) -> String {
    let mut s = format!(
        "{} #{}",
        f.get("PGWARDEN_EVENT").unwrap_or("?"),
        f.get("PGWARDEN_SEQ").unwrap_or("?")
    );
    for (name, label) in [
        ("PGWARDEN_WORKLOAD", "workload"),
        ("PGWARDEN_DECISION", "decision"),
        ("PGWARDEN_RULE", "rule"),
        ("PGWARDEN_ACTOR_PID", "pid"),
        ("PGWARDEN_ACTOR_EXE", "exe"),
        ("PGWARDEN_ROWS", "rows"),
        ("PGWARDEN_SQLSTATE", "sqlstate"),
    ] {
        if let Some(v) = f.get(name) {
            s.push_str(&format!(" {label}={v}"));
        }
    }
    if let Some(t) = f.get("PGWARDEN_STATEMENT_TEXT") {
        s.push_str(": ");
        s.push_str(&super::record::one_line(t, 200));
    } else if let Some(e) = f.get("PGWARDEN_ERROR") {
        s.push_str(": ");
        s.push_str(&super::record::one_line(e, 200));
    } else if let Some(d) = &f.detail {
        s.push(' ');
        s.push_str(&super::record::one_line(d, 200));
    }
    s
}

/// A reader of the JSON the journal writes (objects, arrays, strings, numbers, literals),
/// flattening objects into `PARENT_KEY` names and keeping arrays as their JSON text.
struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.peek() == Some(c)).then(|| self.i += 1)
    }

    /// Reads a value: leaves go to `out` under `name`; objects recurse (depth-limited).
    fn value(&mut self, out: &mut Flat, name: &str, depth: usize) -> Option<()> {
        self.ws();
        match self.peek()? {
            b'{' => {
                if depth > 32 {
                    return None;
                }
                let start = self.i;
                self.i += 1;
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                } else {
                    loop {
                        self.ws();
                        let key = self.string()?;
                        self.eat(b':')?;
                        let child =
                            format!("{name}_{}", field_name(&String::from_utf8_lossy(&key)));
                        self.value(out, &child, depth + 1)?;
                        self.ws();
                        match self.peek()? {
                            b',' => self.i += 1,
                            b'}' => {
                                self.i += 1;
                                break;
                            }
                            _ => return None,
                        }
                    }
                }
                if name == "PGWARDEN_DETAIL" {
                    out.detail = Some(String::from_utf8_lossy(&self.b[start..self.i]).into_owned());
                }
            }
            b'[' => {
                let start = self.i;
                self.skip()?;
                out.fields
                    .push((name.to_owned(), self.b[start..self.i].to_vec()));
            }
            b'"' => {
                let s = self.string()?;
                out.fields.push((name.to_owned(), s));
            }
            b'n' => {
                self.word(b"null")?;
            }
            _ => {
                let start = self.i;
                while self
                    .peek()
                    .is_some_and(|c| !matches!(c, b',' | b'}' | b']') && !c.is_ascii_whitespace())
                {
                    self.i += 1;
                }
                if start == self.i {
                    return None;
                }
                out.fields
                    .push((name.to_owned(), self.b[start..self.i].to_vec()));
            }
        }
        Some(())
    }

    fn word(&mut self, w: &[u8]) -> Option<()> {
        self.b[self.i..].starts_with(w).then(|| self.i += w.len())
    }

    /// Skips any value (arrays, for their raw text).
    fn skip(&mut self) -> Option<()> {
        self.ws();
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            open @ (b'[' | b'{') => {
                let close = if open == b'[' { b']' } else { b'}' };
                self.i += 1;
                loop {
                    self.ws();
                    if self.peek()? == close {
                        self.i += 1;
                        return Some(());
                    }
                    self.skip()?;
                    self.ws();
                    match self.peek()? {
                        b',' | b':' => self.i += 1,
                        c if c == close => {}
                        _ => return None,
                    }
                }
            }
            _ => {
                while self.peek().is_some_and(|c| {
                    !matches!(c, b',' | b'}' | b']' | b':') && !c.is_ascii_whitespace()
                }) {
                    self.i += 1;
                }
                Some(())
            }
        }
    }

    /// A JSON string, unescaped, as bytes.
    fn string(&mut self) -> Option<Vec<u8>> {
        if self.peek()? != b'"' {
            return None;
        }
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let c = self.peek()?;
            self.i += 1;
            match c {
                b'"' => return Some(out),
                b'\\' => {
                    let e = self.peek()?;
                    self.i += 1;
                    match e {
                        b'"' | b'\\' | b'/' => out.push(e),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let mut cp = self.hex4()?;
                            if (0xd800..0xdc00).contains(&cp) && self.word(b"\\u").is_some() {
                                let lo = self.hex4()?;
                                cp = 0x10000
                                    + ((cp - 0xd800) << 10)
                                    + (lo.wrapping_sub(0xdc00) & 0x3ff);
                            }
                            let ch = char::from_u32(cp).unwrap_or('\u{fffd}');
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return None,
                    }
                }
                _ => out.push(c),
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let h = self.b.get(self.i..self.i + 4)?;
        self.i += 4;
        u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
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

/// journald's native datagram for a journal line, truncated as the module doc says when too
/// large.
pub fn encode(line: &[u8], priority: u8) -> Vec<u8> {
    let Some(fields) = fields(line, priority) else {
        return Vec::new();
    };
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

fn encode_fields(fields: &[(String, Vec<u8>)], max_value: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    for (name, value) in fields {
        // Names: journald accepts at most 64 characters.
        let name = &name[..name.len().min(64)];
        let mut end = value.len().min(max_value);
        while end < value.len() && end > 0 && (value[end] & 0xc0) == 0x80 {
            end -= 1;
        }
        let value = &value[..end];
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

/// journald priority of an event: 4 (warning) for refusals and gaps, 6 (info) otherwise.
pub fn priority(event: Event, denial: bool) -> u8 {
    if denial || event == Event::AuditGap {
        4
    } else {
        6
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::canon::Prepared;
    use crate::audit::record::{Actor, Decision, GENESIS_HASH, Record, Statement};

    fn line(r: &Record, seq: u64) -> Vec<u8> {
        Prepared::from_record(r).seal(seq, GENESIS_HASH).line
    }

    fn get<'a>(f: &'a [(String, Vec<u8>)], n: &str) -> Option<&'a str> {
        f.iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| std::str::from_utf8(v).unwrap())
    }

    #[test]
    fn fields_are_flattened_upper_snake() {
        let r = Record::new(Event::QueryDenied)
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
        let f = fields(&line(&r, 42), priority(r.event, r.is_denial())).unwrap();
        assert_eq!(get(&f, "SYSLOG_IDENTIFIER"), Some("pgwarden"));
        assert_eq!(get(&f, "PRIORITY"), Some("4"));
        assert_eq!(get(&f, "PGWARDEN_SEQ"), Some("42"));
        assert_eq!(get(&f, "PGWARDEN_EVENT"), Some("query.denied"));
        assert_eq!(get(&f, "PGWARDEN_ACTOR_PID"), Some("7"));
        assert_eq!(get(&f, "PGWARDEN_STATEMENT_TEXT"), Some("DROP TABLE t"));
        assert_eq!(
            get(&f, "PGWARDEN_STATEMENT_OBJECTS"),
            Some("[\"public.t\"]")
        );
        assert_eq!(get(&f, "PGWARDEN_DETAIL_TORN_BYTES"), Some("3"));
        assert_eq!(get(&f, "PGWARDEN_HASH").map(str::len), Some(64));
        assert_eq!(get(&f, "PGWARDEN_PREV_HASH"), Some(GENESIS_HASH));
        let mut seq_r = r.clone();
        seq_r.seq = 42;
        assert_eq!(get(&f, "MESSAGE").unwrap(), seq_r.summary());
        let ok = Record::new(Event::Query).decision(Decision::Allow);
        let f = fields(&line(&ok, 1), priority(ok.event, ok.is_denial())).unwrap();
        assert_eq!(get(&f, "PRIORITY"), Some("6"));
    }

    #[test]
    fn escapes_and_summaries_read_back() {
        let r = Record::new(Event::AgentStart)
            .error("quote \" backslash \\ tab\t uni \u{1} é ☃")
            .detail(
                "nested",
                serde_json::json!({"a": [1, {"b": null}], "c": true}),
            );
        let f = fields(&line(&r, 3), 6).unwrap();
        assert_eq!(
            get(&f, "PGWARDEN_ERROR"),
            Some("quote \" backslash \\ tab\t uni \u{1} é ☃")
        );
        assert_eq!(
            get(&f, "PGWARDEN_DETAIL_NESTED_A"),
            Some("[1,{\"b\":null}]")
        );
        assert_eq!(get(&f, "PGWARDEN_DETAIL_NESTED_C"), Some("true"));
        let mut with_seq = r.clone();
        with_seq.seq = 3;
        assert_eq!(get(&f, "MESSAGE").unwrap(), with_seq.summary());
        let d = Record::new(Event::AuditGap).detail("lost", 5);
        let f = fields(&line(&d, 9), priority(d.event, d.is_denial())).unwrap();
        assert_eq!(get(&f, "PRIORITY"), Some("4"));
        let mut with_seq = d.clone();
        with_seq.seq = 9;
        assert_eq!(get(&f, "MESSAGE").unwrap(), with_seq.summary());
        assert!(fields(b"not json", 6).is_none());
    }

    #[test]
    fn newlines_use_the_length_prefixed_form() {
        let mut r = Record::new(Event::Query).statement(Statement::from_sql("SELECT 1", true));
        r.statement.as_mut().unwrap().text = "SELECT\n1".into();
        let bytes = encode(&line(&r, 1), 6);
        let needle = b"PGWARDEN_STATEMENT_TEXT\n\x08\0\0\0\0\0\0\0SELECT\n1\n";
        assert!(bytes.windows(needle.len()).any(|w| w == needle));
        assert!(bytes.starts_with(b"MESSAGE="));
    }

    #[test]
    fn huge_records_are_truncated_and_flagged() {
        let mut r = Record::new(Event::Query);
        r.detail
            .insert("big".into(), serde_json::Value::String("x".repeat(400_000)));
        let bytes = encode(&line(&r, 1), 6);
        assert!(bytes.len() <= MAX_DATAGRAM);
        assert!(bytes.ends_with(b"PGWARDEN_TRUNCATED=1\n"));
    }

    #[test]
    fn an_absent_socket_is_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journald::new(&dir.path().join("nope.sock"));
        let l = line(&Record::new(Event::AgentStart), 1);
        for _ in 0..5 {
            j.send(&l, 1, 6);
        }
        assert_eq!((j.errors(), j.sent()), (1, 0));
    }

    #[test]
    fn datagrams_reach_a_listening_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let mut j = Journald::new(&path);
        j.send(&line(&Record::new(Event::AgentStart), 9), 9, 6);
        let mut buf = vec![0u8; 65536];
        let n = server.recv(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.contains("PGWARDEN_SEQ=9\n"), "{text}");
        assert_eq!((j.errors(), j.sent()), (0, 1));
    }
}
