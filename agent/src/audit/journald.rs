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
    encoder: Encoder,
    datagram: Vec<u8>,
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
            encoder: Encoder::default(),
            datagram: Vec::with_capacity(2048),
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
        let mut payload = std::mem::take(&mut self.datagram);
        let sent = if self.encoder.encode(line, priority, &mut payload) {
            self.send_bytes(&payload)
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the journal line is not a JSON object",
            ))
        };
        self.datagram = payload;
        match sent {
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

/// The leaves the one-line `MESSAGE` is made of, in the order it shows them.
#[derive(Clone, Copy)]
enum Part {
    Event,
    Seq,
    Workload,
    Decision,
    Rule,
    Pid,
    Exe,
    Rows,
    Sqlstate,
    Text,
    Error,
}

const PARTS: usize = 11;

/// The labelled parts of the summary, after `<event> #<seq>`.
const LABELLED: [(Part, &str); 7] = [
    (Part::Workload, "workload"),
    (Part::Decision, "decision"),
    (Part::Rule, "rule"),
    (Part::Pid, "pid"),
    (Part::Exe, "exe"),
    (Part::Rows, "rows"),
    (Part::Sqlstate, "sqlstate"),
];

fn part(name: &[u8]) -> Option<Part> {
    Some(match name {
        b"PGWARDEN_EVENT" => Part::Event,
        b"PGWARDEN_SEQ" => Part::Seq,
        b"PGWARDEN_WORKLOAD" => Part::Workload,
        b"PGWARDEN_DECISION" => Part::Decision,
        b"PGWARDEN_RULE" => Part::Rule,
        b"PGWARDEN_ACTOR_PID" => Part::Pid,
        b"PGWARDEN_ACTOR_EXE" => Part::Exe,
        b"PGWARDEN_ROWS" => Part::Rows,
        b"PGWARDEN_SQLSTATE" => Part::Sqlstate,
        b"PGWARDEN_STATEMENT_TEXT" => Part::Text,
        b"PGWARDEN_ERROR" => Part::Error,
        _ => return None,
    })
}

/// Turns journal lines into datagrams in one pass over each line, with buffers kept from one
/// record to the next: `MESSAGE` (as [`super::record::Record::summary`] writes it),
/// `PRIORITY`, `SYSLOG_IDENTIFIER`, then `PGWARDEN_*` in the line's key order.
#[derive(Default)]
pub struct Encoder {
    /// The field name being read (`PGWARDEN_ACTOR_PID`): one segment per nesting level.
    name: Vec<u8>,
    /// An object key, unescaped.
    key: Vec<u8>,
    /// The `PGWARDEN_*` fields, encoded.
    fields: Vec<u8>,
    /// Where the summary's values are in `fields`.
    spans: [Option<(usize, usize)>; PARTS],
    /// The raw `detail` object, in the line.
    detail: Option<(usize, usize)>,
    message: Vec<u8>,
    max_value: usize,
}

impl Encoder {
    /// Encodes `line` into `out` (cleared). False, and `out` empty, when `line` is not a
    /// JSON object (the writer only hands over lines it wrote).
    pub fn encode(&mut self, line: &[u8], priority: u8, out: &mut Vec<u8>) -> bool {
        out.clear();
        if !self.flatten(line, usize::MAX) {
            return false;
        }
        self.assemble(line, priority, false, out);
        if out.len() > MAX_DATAGRAM {
            self.flatten(line, TRUNCATED_VALUE);
            self.assemble(line, priority, true, out);
            if out.len() > MAX_DATAGRAM {
                out.truncate(MAX_DATAGRAM);
                // Never end in the middle of a field: drop the partial one.
                if let Some(p) = out.iter().rposition(|&c| c == b'\n') {
                    out.truncate(p + 1);
                }
            }
        }
        true
    }

    fn flatten(&mut self, line: &[u8], max_value: usize) -> bool {
        self.fields.clear();
        self.spans = [None; PARTS];
        self.detail = None;
        self.max_value = max_value;
        self.name.clear();
        self.name.extend_from_slice(b"PGWARDEN");
        let mut r = Reader { b: line, i: 0 };
        r.ws();
        r.peek() == Some(b'{') && self.value(&mut r, 0).is_some()
    }

    fn assemble(&mut self, line: &[u8], priority: u8, truncated: bool, out: &mut Vec<u8>) {
        out.clear();
        self.summary(line);
        put(out, b"MESSAGE", &self.message);
        put(out, b"PRIORITY", &[b'0' + priority.min(7)]);
        put(out, b"SYSLOG_IDENTIFIER", b"pgwarden");
        if truncated {
            put(out, b"PGWARDEN_TRUNCATED", b"1");
        }
        out.extend_from_slice(&self.fields);
    }

    fn get(&self, p: Part) -> Option<&str> {
        let (a, b) = self.spans[p as usize]?;
        std::str::from_utf8(&self.fields[a..b]).ok()
    }

    /// The one-line `MESSAGE`, into `self.message`.
    fn summary(&mut self, line: &[u8]) {
        let mut m = std::mem::take(&mut self.message);
        m.clear();
        m.extend_from_slice(self.get(Part::Event).unwrap_or("?").as_bytes());
        m.extend_from_slice(b" #");
        m.extend_from_slice(self.get(Part::Seq).unwrap_or("?").as_bytes());
        for (p, label) in LABELLED {
            if let Some(v) = self.get(p) {
                m.push(b' ');
                m.extend_from_slice(label.as_bytes());
                m.push(b'=');
                m.extend_from_slice(v.as_bytes());
            }
        }
        let (sep, tail) = if let Some(t) = self.get(Part::Text) {
            (": ", Some(super::record::one_line(t, 200)))
        } else if let Some(e) = self.get(Part::Error) {
            (": ", Some(super::record::one_line(e, 200)))
        } else if let Some((a, b)) = self.detail {
            (
                " ",
                Some(super::record::one_line(
                    &String::from_utf8_lossy(&line[a..b]),
                    200,
                )),
            )
        } else {
            ("", None)
        };
        if let Some(t) = tail {
            m.extend_from_slice(sep.as_bytes());
            m.extend_from_slice(t.as_bytes());
        }
        self.message = m;
    }

    /// Reads a value: leaves become fields named `self.name`; objects recurse
    /// (depth-limited); arrays are kept as their JSON text; `null` is left out.
    fn value(&mut self, r: &mut Reader<'_>, depth: usize) -> Option<()> {
        r.ws();
        match r.peek()? {
            b'{' => {
                if depth > 32 {
                    return None;
                }
                let start = r.i;
                r.i += 1;
                r.ws();
                if r.peek() == Some(b'}') {
                    r.i += 1;
                } else {
                    loop {
                        r.ws();
                        self.key.clear();
                        r.string_into(&mut self.key)?;
                        r.eat(b':')?;
                        let len = self.name.len();
                        self.name.push(b'_');
                        // A journald field name part: ASCII letters and digits upper-cased,
                        // any other character `_`.
                        for c in String::from_utf8_lossy(&self.key).chars() {
                            self.name.push(if c.is_ascii_alphanumeric() {
                                c.to_ascii_uppercase() as u8
                            } else {
                                b'_'
                            });
                        }
                        let read = self.value(r, depth + 1);
                        self.name.truncate(len);
                        read?;
                        r.ws();
                        match r.peek()? {
                            b',' => r.i += 1,
                            b'}' => {
                                r.i += 1;
                                break;
                            }
                            _ => return None,
                        }
                    }
                }
                if self.name == b"PGWARDEN_DETAIL" {
                    self.detail = Some((start, r.i));
                }
            }
            b'[' => {
                let start = r.i;
                r.skip()?;
                let at = self.begin_leaf();
                self.fields.extend_from_slice(&r.b[start..r.i]);
                self.end_leaf(at);
            }
            b'"' => {
                let at = self.begin_leaf();
                r.string_into(&mut self.fields)?;
                self.end_leaf(at);
            }
            b'n' => r.word(b"null")?,
            _ => {
                let start = r.i;
                while r
                    .peek()
                    .is_some_and(|c| !matches!(c, b',' | b'}' | b']') && !c.is_ascii_whitespace())
                {
                    r.i += 1;
                }
                if start == r.i {
                    return None;
                }
                let at = self.begin_leaf();
                self.fields.extend_from_slice(&r.b[start..r.i]);
                self.end_leaf(at);
            }
        }
        Some(())
    }

    /// Writes the field name (journald takes at most 64 characters) and `=`; the value
    /// follows from the returned offset.
    fn begin_leaf(&mut self) -> usize {
        let n = self.name.len().min(64);
        self.fields.extend_from_slice(&self.name[..n]);
        self.fields.push(b'=');
        self.fields.len()
    }

    /// Ends the value begun at `at`: cut to `max_value` (on a character boundary), switched
    /// to the length-prefixed form when it holds a newline, noted when the summary shows it.
    fn end_leaf(&mut self, at: usize) {
        let mut end = self.fields.len();
        if end - at > self.max_value {
            end = at + self.max_value;
            while end > at && (self.fields[end] & 0xc0) == 0x80 {
                end -= 1;
            }
            self.fields.truncate(end);
        }
        let mut span = (at, end);
        if self.fields[at..end].contains(&b'\n') {
            self.fields[at - 1] = b'\n';
            let len = ((end - at) as u64).to_le_bytes();
            self.fields.splice(at..at, len);
            span = (at + 8, end + 8);
        }
        self.fields.push(b'\n');
        if let Some(p) = part(&self.name)
            && self.spans[p as usize].is_none()
        {
            self.spans[p as usize] = Some(span);
        }
    }
}

/// One field in the native format: `NAME=value\n`, or `NAME\n<u64 LE length>value\n` when
/// the value holds a newline.
fn put(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    if value.contains(&b'\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// A reader of the JSON the journal writes (objects, arrays, strings, numbers, literals).
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

    fn word(&mut self, w: &[u8]) -> Option<()> {
        self.b[self.i..].starts_with(w).then(|| self.i += w.len())
    }

    /// Skips any value (arrays, for their raw text).
    fn skip(&mut self) -> Option<()> {
        self.ws();
        match self.peek()? {
            b'"' => self.string_into(&mut Vec::new()),
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

    /// A JSON string, unescaped, appended to `out`.
    fn string_into(&mut self, out: &mut Vec<u8>) -> Option<()> {
        if self.peek()? != b'"' {
            return None;
        }
        self.i += 1;
        loop {
            // The plain run up to the next quote or backslash, in one copy.
            let rest = &self.b[self.i..];
            let run = rest.iter().position(|&c| c == b'"' || c == b'\\')?;
            out.extend_from_slice(&rest[..run]);
            self.i += run + 1;
            if rest[run] == b'"' {
                return Some(());
            }
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
                        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo.wrapping_sub(0xdc00) & 0x3ff);
                    }
                    let ch = char::from_u32(cp).unwrap_or('\u{fffd}');
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                _ => return None,
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let h = self.b.get(self.i..self.i + 4)?;
        self.i += 4;
        u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
    }
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

    /// The datagram for a line (empty when it is not a JSON object).
    fn encode(line: &[u8], priority: u8) -> Vec<u8> {
        let mut out = Vec::new();
        Encoder::default().encode(line, priority, &mut out);
        out
    }

    fn line(r: &Record, seq: u64) -> Vec<u8> {
        Prepared::from_record(r).seal(seq, GENESIS_HASH).line
    }

    /// The fields of a datagram, as journald reads them.
    fn fields(line: &[u8], priority: u8) -> Option<Vec<(String, Vec<u8>)>> {
        let d = encode(line, priority);
        if d.is_empty() {
            return None;
        }
        let mut out = Vec::new();
        let mut i = 0;
        while i < d.len() {
            let end = i + d[i..]
                .iter()
                .position(|&c| c == b'=' || c == b'\n')
                .unwrap();
            let name = String::from_utf8(d[i..end].to_vec()).unwrap();
            let (value, next) = if d[end] == b'=' {
                let stop = end + 1 + d[end + 1..].iter().position(|&c| c == b'\n').unwrap();
                (d[end + 1..stop].to_vec(), stop + 1)
            } else {
                let len = u64::from_le_bytes(d[end + 1..end + 9].try_into().unwrap()) as usize;
                let v = d[end + 9..end + 9 + len].to_vec();
                assert_eq!(d[end + 9 + len], b'\n');
                (v, end + 10 + len)
            };
            out.push((name, value));
            i = next;
        }
        Some(out)
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
        let f = fields(&line(&r, 1), 6).unwrap();
        assert_eq!(get(&f, "PGWARDEN_TRUNCATED"), Some("1"));
        assert_eq!(
            get(&f, "PGWARDEN_DETAIL_BIG").map(str::len),
            Some(TRUNCATED_VALUE)
        );
        assert_eq!(get(&f, "PGWARDEN_SEQ"), Some("1"));
    }

    #[test]
    fn a_line_that_is_not_json_is_counted_not_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        server.set_nonblocking(true).unwrap();
        let mut j = Journald::new(&path);
        j.send(b"not json", 1, 6);
        assert_eq!((j.errors(), j.sent()), (1, 0));
        assert!(server.recv(&mut [0u8; 64]).is_err());
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
