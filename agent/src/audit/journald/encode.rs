//! The native journal protocol, written from a stored journal line: `NAME=value\n` fields (or
//! `NAME\n<u64 LE length>value\n` for values holding a newline), read off the line by a small
//! JSON reader of what the writer writes.
use super::{MAX_DATAGRAM, TRUNCATED_VALUE};
use crate::audit::record::one_line;

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
/// record to the next: `MESSAGE` (as [`crate::audit::Record::summary`] writes it),
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
            (": ", Some(one_line(t, 200)))
        } else if let Some(e) = self.get(Part::Error) {
            (": ", Some(one_line(e, 200)))
        } else if let Some((a, b)) = self.detail {
            (
                " ",
                Some(one_line(&String::from_utf8_lossy(&line[a..b]), 200)),
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
