//! Statement text read the way PostgreSQL's lexer reads it (standard_conforming_strings on):
//! one pass yields the normalized text the audit journal stores and the *shape* the policy's
//! verdict cache is keyed by.
//!
//! # Normalization ([`Text::normalized`])
//!
//! - literals become `$n` placeholders, numbered from one past the highest `$n` parameter
//!   already in the statement (as `pg_stat_statements` does), in order of appearance: string
//!   constants `'…'` (with `''`), escape strings `E'…'` (with `\'`), `B'…'`, `X'…'`, `N'…'`,
//!   `U&'…'`, dollar-quoted strings `$$…$$` / `$tag$…$tag$`, and numbers (`42`, `-7`, `1.5e3`,
//!   `.5`, `0x1F`, `1_000`). A `-` directly before a number belongs to it when it cannot be a
//!   binary minus (after an operator, `(`, `,`, the start, or a keyword such as `SELECT`,
//!   `WHERE`, `AND`);
//! - identifiers stay as written, digits included (`t1`, `"Col 2"`, `a$1`), and so do
//!   parameters (`$1`), keywords (`NULL`, `TRUE`) and operators;
//! - comments (`-- …`, nested `/* … */`) and runs of whitespace become one space; the result is
//!   trimmed.
//!
//! Card numbers are not this module's business: the journal scrubs the normalized text
//! (`audit::redact`).
//!
//! # Shape ([`Text::shape`])
//!
//! The statement with each literal replaced by a marker of its kind (string or number), signs
//! kept as operators, everything else as normalized. Two statements with the same shape are the
//! same statement to PostgreSQL but for the values of their literals, so a policy verdict that
//! does not depend on literal values holds for both. The shape is only given when every literal
//! is of a form PostgreSQL, sqlparser and this lexer cannot disagree on: plain `'…'` strings
//! without backslashes, and decimal numbers (`42`, `1.5`, `.5`, `1e3`). Anything else (escape
//! strings, dollar quotes, bit and hex strings, `U&`, `0x1F`, `1_000`, an unterminated string,
//! a control character outside a literal) gives no shape, and the policy parses that text.

use sha2::{Digest as _, Sha256};

/// Marks a string literal in a shape (cannot occur in a shape otherwise: control characters
/// outside literals give no shape).
pub const SHAPE_STRING: char = '\u{1}';
/// Marks a numeric literal in a shape.
pub const SHAPE_NUMBER: char = '\u{2}';

/// Words after which a `-` before a number is a sign, not a binary minus.
const SIGN_KEYWORDS: &[&str] = &[
    "AND", "AS", "BETWEEN", "BY", "CASE", "ELSE", "HAVING", "IN", "IS", "LIKE", "LIMIT", "NOT",
    "OFFSET", "ON", "OR", "RETURN", "SELECT", "SET", "THEN", "VALUES", "WHEN", "WHERE",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Whitespace or a comment.
    Space,
    /// A literal (string, dollar-quoted, number).
    Literal,
    /// `$n`.
    Param(u32),
    /// An identifier or keyword.
    Word,
    /// A quoted identifier.
    Quoted,
    /// One byte of an operator or punctuation.
    Op,
}

#[derive(Clone, Copy, Debug)]
struct Tok {
    kind: Kind,
    start: usize,
    end: usize,
}

fn ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn ident_cont(c: u8) -> bool {
    ident_start(c) || c.is_ascii_digit() || c == b'$'
}

/// End of a quoted run starting at `i` (the opening quote), `''`-style doubling as escape,
/// and backslash escapes when `backslash`. Unterminated: the end of the input.
fn quoted_end(b: &[u8], i: usize, quote: u8, backslash: bool) -> usize {
    let mut j = i + 1;
    while j < b.len() {
        if backslash && b[j] == b'\\' {
            j += 2;
            continue;
        }
        if b[j] == quote {
            if b.get(j + 1) == Some(&quote) {
                j += 2;
                continue;
            }
            return j + 1;
        }
        j += 1;
    }
    b.len()
}

/// The dollar-quote tag starting at `i` (`$$` or `$tag$`), as its length.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if b.get(j) == Some(&b'$') {
        return Some(2);
    }
    if !b.get(j).copied().is_some_and(ident_start) {
        return None;
    }
    while j < b.len() && (ident_start(b[j]) || b[j].is_ascii_digit()) {
        j += 1;
    }
    (b.get(j) == Some(&b'$')).then_some(j + 1 - i)
}

fn number_end(b: &[u8], i: usize) -> usize {
    let mut j = i;
    if b[j] == b'0' && matches!(b.get(j + 1), Some(b'x' | b'X' | b'o' | b'O' | b'b' | b'B')) {
        j += 2;
        while j < b.len() && (b[j].is_ascii_hexdigit() || b[j] == b'_') {
            j += 1;
        }
        return j;
    }
    let digits = |mut j: usize| {
        while j < b.len() && (b[j].is_ascii_digit() || (b[j] == b'_' && j > i)) {
            j += 1;
        }
        j
    };
    j = digits(j);
    if b.get(j) == Some(&b'.') && b.get(j + 1) != Some(&b'.') {
        j = digits(j + 1);
    }
    if matches!(b.get(j), Some(b'e' | b'E')) {
        let mut k = j + 1;
        if matches!(b.get(k), Some(b'+' | b'-')) {
            k += 1;
        }
        if b.get(k).is_some_and(u8::is_ascii_digit) {
            j = digits(k);
        }
    }
    j
}

/// The tokens of `sql`, into `toks` (emptied first).
fn lex_into(sql: &str, toks: &mut Vec<Tok>) {
    toks.clear();
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        let (kind, end) = if c.is_ascii_whitespace() || c == 0x0b {
            let mut j = i + 1;
            while j < b.len() && (b[j].is_ascii_whitespace() || b[j] == 0x0b) {
                j += 1;
            }
            (Kind::Space, j)
        } else if c == b'-' && next == Some(b'-') {
            let j = b[i..]
                .iter()
                .position(|&x| x == b'\n')
                .map_or(b.len(), |p| i + p + 1);
            (Kind::Space, j)
        } else if c == b'/' && next == Some(b'*') {
            let (mut j, mut depth) = (i + 2, 1);
            while j < b.len() && depth > 0 {
                if b[j] == b'/' && b.get(j + 1) == Some(&b'*') {
                    depth += 1;
                    j += 2;
                } else if b[j] == b'*' && b.get(j + 1) == Some(&b'/') {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            (Kind::Space, j)
        } else if c == b'\'' {
            (Kind::Literal, quoted_end(b, i, b'\'', false))
        } else if matches!(c, b'e' | b'E') && next == Some(b'\'') {
            (Kind::Literal, quoted_end(b, i + 1, b'\'', true))
        } else if matches!(c, b'b' | b'B' | b'x' | b'X' | b'n' | b'N') && next == Some(b'\'') {
            (Kind::Literal, quoted_end(b, i + 1, b'\'', false))
        } else if matches!(c, b'u' | b'U') && next == Some(b'&') && b.get(i + 2) == Some(&b'\'') {
            (Kind::Literal, quoted_end(b, i + 2, b'\'', false))
        } else if matches!(c, b'u' | b'U') && next == Some(b'&') && b.get(i + 2) == Some(&b'"') {
            (Kind::Quoted, quoted_end(b, i + 2, b'"', false))
        } else if c == b'"' {
            (Kind::Quoted, quoted_end(b, i, b'"', false))
        } else if c == b'$' && next.is_some_and(|n| n.is_ascii_digit()) {
            let mut j = i + 1;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            let n = sql[i + 1..j].parse().unwrap_or(u32::MAX);
            (Kind::Param(n), j)
        } else if c == b'$' {
            match dollar_tag(b, i) {
                Some(len) => {
                    let tag = &b[i..i + len];
                    let body = i + len;
                    let end = b[body..]
                        .windows(len)
                        .position(|w| w == tag)
                        .map_or(b.len(), |p| body + p + len);
                    (Kind::Literal, end)
                }
                None => (Kind::Op, i + 1),
            }
        } else if c.is_ascii_digit() || (c == b'.' && next.is_some_and(|n| n.is_ascii_digit())) {
            (Kind::Literal, number_end(b, i))
        } else if ident_start(c) {
            let mut j = i + 1;
            while j < b.len() && ident_cont(b[j]) {
                j += 1;
            }
            (Kind::Word, j)
        } else {
            (Kind::Op, i + 1)
        };
        toks.push(Tok {
            kind,
            start: i,
            end: end.max(i + 1),
        });
        i = end.max(i + 1);
    }
}

/// A statement's text, read once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Text {
    /// Literals as `$n` placeholders, comments dropped, whitespace collapsed.
    pub normalized: String,
    /// The verdict cache's key, when every literal is of an unambiguous form (module doc).
    pub shape: Option<String>,
}

impl Text {
    /// Reads `sql`.
    pub fn of(sql: &str) -> Text {
        let mut reader = Reader::default();
        reader.read(sql);
        reader.text
    }
}

/// A [`Reader`] drops its buffers rather than keep more tokens than this (a statement of
/// tens of kilobytes) for the next statement.
const KEEP_TOKENS: usize = 16 << 10;

/// Reads statements one after another into the same buffers: once they have grown to a
/// session's statements, reading one allocates nothing. A session keeps one.
#[derive(Debug, Default)]
pub struct Reader {
    toks: Vec<Tok>,
    text: Text,
    /// The shape's buffer while the last statement had none.
    spare: String,
}

impl Reader {
    /// Reads `sql`; what it read stays until the next call.
    pub fn read(&mut self, sql: &str) -> &Text {
        if self.toks.capacity() > KEEP_TOKENS {
            // The last statement was huge: its buffers are not kept for the session's life.
            *self = Reader::default();
        }
        let Reader { toks, text, spare } = self;
        lex_into(sql, toks);
        let toks = &*toks;
        let mut next = toks
            .iter()
            .filter_map(|t| match t.kind {
                Kind::Param(n) => Some(n),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let out = &mut text.normalized;
        out.clear();
        out.reserve(sql.len() + 8);
        let mut buf = text.shape.take().unwrap_or_else(|| std::mem::take(spare));
        buf.clear();
        buf.reserve(sql.len());
        let mut shape = Some(buf);
        let mut prev_sig: Option<Tok> = None;
        let mut pending_space = false;
        let mut i = 0;
        while i < toks.len() {
            let t = toks[i];
            if t.kind == Kind::Space {
                pending_space = !out.is_empty();
                i += 1;
                continue;
            }
            // A sign glued to a number where a binary minus cannot be.
            let signed = t.kind == Kind::Op
                && &sql[t.start..t.end] == "-"
                && toks.get(i + 1).is_some_and(|n| {
                    n.kind == Kind::Literal && starts_number(&sql[n.start..n.end])
                })
                && prev_sig.is_none_or(|p| sign_context(&sql[p.start..p.end], p.kind));
            if pending_space {
                out.push(' ');
                if let Some(s) = &mut shape {
                    s.push(' ');
                }
                pending_space = false;
            }
            let tok = if signed {
                if let Some(s) = &mut shape {
                    s.push('-');
                }
                i += 1;
                toks[i]
            } else {
                t
            };
            let text = &sql[tok.start..tok.end];
            if tok.kind == Kind::Literal {
                next = next.saturating_add(1);
                out.push('$');
                out.push_str(itoa::Buffer::new().format(next));
                if let Some(s) = &mut shape {
                    if plain_string(text) {
                        s.push(SHAPE_STRING);
                    } else if plain_number(text)
                        && !toks.get(i + 1).is_some_and(|n| {
                            n.start == tok.end && matches!(n.kind, Kind::Word | Kind::Quoted)
                        })
                    {
                        // (`1e`, `12abc`: PostgreSQL 15 rejects trailing junk, sqlparser
                        // reads an alias; no shape for either.)
                        s.push(SHAPE_NUMBER);
                    } else {
                        *spare = shape.take().unwrap_or_default();
                    }
                }
            } else {
                out.push_str(text);
                if let Some(s) = &mut shape {
                    if tok.kind == Kind::Op && text.bytes().any(|c| c < 0x20 || c == 0x7f) {
                        *spare = shape.take().unwrap_or_default();
                    } else {
                        s.push_str(text);
                    }
                }
            }
            prev_sig = Some(tok);
            i += 1;
        }
        text.shape = shape;
        &*text
    }
}

/// `'…'` with `''` as the only escape, terminated, no backslash.
fn plain_string(lit: &str) -> bool {
    let b = lit.as_bytes();
    if b.first() != Some(&b'\'') {
        return false;
    }
    let mut i = 1;
    while i < b.len() {
        match b[i] {
            b'\\' => return false,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i == b.len() - 1,
            _ => i += 1,
        }
    }
    false
}

/// `42`, `1.5`, `1.`, `.5`, `1e3`, `1.5E-2`: digits only, no `_`, no base prefix.
fn plain_number(lit: &str) -> bool {
    let b = lit.as_bytes();
    let digits = |mut i: usize| {
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        (i, i - s)
    };
    let (mut i, int) = digits(0);
    let mut frac = 0;
    if b.get(i) == Some(&b'.') {
        (i, frac) = digits(i + 1);
    }
    if int + frac == 0 {
        return false;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let (k, exp) = digits(j);
        if exp == 0 {
            return false;
        }
        i = k;
    }
    i == b.len()
}

fn starts_number(lit: &str) -> bool {
    lit.bytes()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || c == b'.')
}

fn sign_context(prev: &str, kind: Kind) -> bool {
    match kind {
        Kind::Op => !matches!(prev, ")" | "]"),
        Kind::Word => SIGN_KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(prev)),
        _ => false,
    }
}

/// First 16 hex digits of the SHA-256 of `normalized`.
pub fn fingerprint(normalized: &str) -> String {
    let mut h = hex::encode(Sha256::digest(normalized.as_bytes()));
    h.truncate(16);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(sql: &str) -> Option<String> {
        Text::of(sql)
            .shape
            .map(|s| s.replace(SHAPE_STRING, "'?'").replace(SHAPE_NUMBER, "0?"))
    }

    #[test]
    fn a_reader_reads_each_statement_as_if_it_were_the_first() {
        // Shaped, unshaped (the shape's buffer is kept aside), shaped again, longer, shorter.
        let statements = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 12345",
            "SELECT E'\\x' , $$dollar$$ FROM t",
            "SELECT 1",
            "select * from t where a = 'x''y' and b = 1.5e3 -- trailing comment",
            "",
            "SELECT 0x1F",
            "UPDATE t SET a = -5 WHERE b = 'q'",
        ];
        let mut reader = Reader::default();
        for sql in statements.iter().chain(statements.iter().rev()) {
            assert_eq!(reader.read(sql), &Text::of(sql), "{sql}");
        }
    }

    #[test]
    fn shapes_keep_structure_and_mark_literal_kinds() {
        let cases: &[(&str, &str)] = &[
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
                "SELECT abalance FROM pgbench_accounts WHERE aid = 0?;",
            ),
            (
                "select * from t where a = 'x''y' and b = 1.5e3",
                "select * from t where a = '?' and b = 0?",
            ),
            // A sign stays an operator: `-5` and `5` differ in shape.
            ("SELECT -5, x - 5", "SELECT -0?, x - 0?"),
            ("SELECT $1, 'a'", "SELECT $1, '?'"),
            ("SELECT /* c */ .5 -- x\n FROM t", "SELECT 0? FROM t"),
            ("SELECT 1.", "SELECT 0?"),
        ];
        for (sql, want) in cases {
            assert_eq!(shape(sql).as_deref(), Some(*want), "{sql}");
        }
        // Same statement but for its literals: same shape; anything else differs.
        assert_eq!(
            shape("SELECT a FROM t WHERE b = 1"),
            shape("SELECT a FROM t WHERE b = 99")
        );
        assert_eq!(shape("SELECT 'a'"), shape("SELECT 'it''s'"));
        assert_ne!(
            shape("SELECT 'a'"),
            shape("SELECT 1"),
            "string and number differ"
        );
        assert_ne!(
            shape("SELECT $1"),
            shape("SELECT 1"),
            "a parameter is not a literal"
        );
        assert_ne!(shape("SELECT a-1"), shape("SELECT a - 1"));
    }

    #[test]
    fn ambiguous_literals_give_no_shape() {
        for sql in [
            "SELECT E'a\\'b'",
            "SELECT 'a\\'",
            "SELECT $$x$$",
            "SELECT $f$x$f$",
            "SELECT B'101'",
            "SELECT X'ff'",
            "SELECT N'x'",
            "SELECT U&'d\\0061t'",
            "SELECT 0x1F",
            "SELECT 1_000",
            "SELECT 'unterminated",
            "SELECT 'ends in a doubled quote''",
            "SELECT 1e",
            "SELECT \u{1}",
        ] {
            assert_eq!(Text::of(sql).shape, None, "{sql}");
        }
    }

    #[test]
    fn normalized_text_matches_the_journals() {
        let t = Text::of("SELECT 'x', $7, -3 FROM t WHERE a = 1 -- c");
        assert_eq!(t.normalized, "SELECT $8, $7, $9 FROM t WHERE a = $10");
    }
}
