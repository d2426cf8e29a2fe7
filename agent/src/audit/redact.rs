//! Statement text for the journal: literals replaced by placeholders, a fingerprint that is
//! equal for statements differing only in literals, and card numbers scrubbed from any text.
//!
//! # Normalization ([`normalize`])
//!
//! [`crate::sqltext`]'s normalized text (literals as `$n` placeholders, comments dropped,
//! whitespace collapsed), then through [`scrub_pans`] (a card number in an identifier or a
//! comment must not survive either).
//!
//! The fingerprint is the first 16 hex digits of the SHA-256 of that text.
//!
//! # Card numbers ([`scrub_pans`])
//!
//! Any run of 13 to 19 digits, optionally grouped by single spaces or dashes, that passes the
//! Luhn check keeps its first six and last four digits; the digits between become `*` and the
//! separators stay, so the length is unchanged. Unlike the masking layer, no issuer range is
//! required: the journal errs on the side of hiding. A candidate starts and ends on a group
//! boundary of its run (`ref 12 4111 1111 1111 1111` is found); a run of more than 19 digits
//! without separators is not a card number.
use std::borrow::Cow;

/// Statement text longer than this (bytes) is cut, with a marker saying how much was left out.
pub const MAX_TEXT_BYTES: usize = 32 * 1024;

/// Literals replaced by `$n` placeholders, comments dropped, whitespace collapsed, card
/// numbers scrubbed; and the fingerprint of that text (see the module doc).
pub fn normalize(sql: &str) -> (String, String) {
    normalized(crate::sqltext::Text::of(sql).normalized)
}

/// [`normalize`] of text [`crate::sqltext::Text`] already read.
pub fn normalized(text: String) -> (String, String) {
    let text = match scrub_pans_cow(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(o) => o,
    };
    let fingerprint = fingerprint(&text);
    (text, fingerprint)
}

pub use crate::sqltext::fingerprint;

/// The text and fingerprint a record stores for `sql`: the normalized text (default) or, with
/// `keep_literals`, the original text with card numbers scrubbed; either capped at
/// [`MAX_TEXT_BYTES`]. The fingerprint is always that of the normalized text.
pub fn statement_text(sql: &str, keep_literals: bool) -> (String, String) {
    statement_text_of(sql, crate::sqltext::Text::of(sql).normalized, keep_literals)
}

/// [`statement_text`] given `sql`'s normalized text.
pub fn statement_text_of(
    sql: &str,
    normalized_text: String,
    keep_literals: bool,
) -> (String, String) {
    let (normalized, fp) = normalized(normalized_text);
    let mut text = if keep_literals {
        scrub_pans(sql)
    } else {
        normalized
    };
    if text.len() > MAX_TEXT_BYTES {
        let mut cut = MAX_TEXT_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let left = text.len() - cut;
        text.truncate(cut);
        text.push_str(&format!("…[{left} more bytes]"));
    }
    (text, fp)
}

/// Whether `digits` (ASCII digits) pass the Luhn check: the masking layer's check, so the
/// journal and the results agree on what a card number is.
pub use crate::mask::pan::luhn;

/// `text` with every card number masked to first six, `*`s, last four (see the module doc).
pub fn scrub_pans(text: &str) -> String {
    scrub_pans_cow(text).into_owned()
}

/// [`scrub_pans`] without allocating when there is nothing to scrub (the common case).
pub fn scrub_pans_cow(text: &str) -> Cow<'_, str> {
    match scrub_bytes(text.as_bytes()) {
        // Only ASCII digits were replaced by an ASCII byte: still UTF-8.
        Some(o) => Cow::Owned(
            String::from_utf8(o)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        ),
        None => Cow::Borrowed(text),
    }
}

/// [`scrub_pans_cow`] over bytes that need not be text (a binary value, text in another
/// encoding): the same card numbers, found among ASCII digits, masked the same way.
pub fn scrub_pans_bytes(bytes: &[u8]) -> Cow<'_, [u8]> {
    match scrub_bytes(bytes) {
        Some(o) => Cow::Owned(o),
        None => Cow::Borrowed(bytes),
    }
}

/// The scrubbed copy of `b`, `None` when nothing in it is a card number.
fn scrub_bytes(b: &[u8]) -> Option<Vec<u8>> {
    if b.iter().filter(|c| c.is_ascii_digit()).take(13).count() < 13 {
        return None;
    }
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    let mut pos: Vec<usize> = Vec::new();
    let mut groups: Vec<usize> = Vec::new();
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // The run: digits, with single separators between digits.
        pos.clear();
        groups.clear();
        groups.push(0);
        let mut j = i;
        while j < b.len() {
            if b[j].is_ascii_digit() {
                pos.push(j);
                j += 1;
            } else if matches!(b[j], b' ' | b'-') && b.get(j + 1).is_some_and(u8::is_ascii_digit) {
                groups.push(pos.len());
                j += 1;
            } else {
                break;
            }
        }
        // Candidates start and end on group boundaries; the longest at each start wins.
        let ends: Vec<usize> = groups[1..].iter().copied().chain([pos.len()]).collect();
        let mut covered = 0;
        for &s in &groups {
            if s < covered {
                continue;
            }
            for &e in ends.iter().rev() {
                if e <= s || !(13..=19).contains(&(e - s)) {
                    continue;
                }
                let digits: Vec<u8> = pos[s..e].iter().map(|&p| b[p]).collect();
                if luhn(&digits) {
                    let buf = out.get_or_insert_with(|| b.to_vec());
                    for &p in &pos[s + 6..e - 4] {
                        buf[p] = b'*';
                    }
                    covered = e;
                    break;
                }
            }
        }
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn norm(sql: &str) -> String {
        normalize(sql).0
    }

    #[test]
    fn literals_become_placeholders() {
        let cases: &[(&str, &str)] = &[
            ("SELECT 1", "SELECT $1"),
            (
                "select * from t1 where a = 'x' and b = 42",
                "select * from t1 where a = $1 and b = $2",
            ),
            ("SELECT 'it''s' || 'a -- not comment'", "SELECT $1 || $2"),
            ("SELECT E'it\\'s \\\\', e'x'", "SELECT $1, $2"),
            (
                "SELECT $$ body ' with \"quotes\" $$, $fn$ $$ nested $fn$",
                "SELECT $1, $2",
            ),
            (
                "SELECT B'101', X'ff', N'nat', U&'d\\0061t'",
                "SELECT $1, $2, $3, $4",
            ),
            (
                "SELECT 1.5e3, .5, 0x1F, 1_000, 3e-2",
                "SELECT $1, $2, $3, $4, $5",
            ),
            (
                "SELECT -5, x - 5, f(-1.5), y=-2",
                "SELECT $1, x - $2, f($3), y=$4",
            ),
            ("SELECT a-1, (b)-2, c[1]-3", "SELECT a-$1, (b)-$2, c[$3]-$4"),
            (
                "WHERE x = -7 AND y IN (-1, 2)",
                "WHERE x = $1 AND y IN ($2, $3)",
            ),
            // Identifiers keep their digits, quoted identifiers stay verbatim.
            (
                "SELECT t1.c2, \"Col 3\", a$1, _x9 FROM s1.t1",
                "SELECT t1.c2, \"Col 3\", a$1, _x9 FROM s1.t1",
            ),
            ("SELECT \"it\"\"s 7\" FROM t", "SELECT \"it\"\"s 7\" FROM t"),
            // Parameters stay; literals number after the highest one.
            ("SELECT $1, $2, 'x', 5", "SELECT $1, $2, $3, $4"),
            ("SELECT 'x', $7", "SELECT $8, $7"),
            // Comments and whitespace.
            (
                "  SELECT /* a /* nested */ comment */ 1 -- trailing 4111111111111111\n  FROM\t\tt  ",
                "SELECT $1 FROM t",
            ),
            ("SELECT/**/1", "SELECT $1"),
            (
                "SELECT '2024-01-01'::date, interval '1 day'",
                "SELECT $1::date, interval $2",
            ),
            ("SELECT 'unterminated", "SELECT $1"),
            (
                "SELECT 'é', \"naïve\" FROM café",
                "SELECT $1, \"naïve\" FROM café",
            ),
            (
                "SELECT x::int4 FROM t WHERE y <> 3",
                "SELECT x::int4 FROM t WHERE y <> $1",
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(&norm(sql), want, "{sql}");
        }
    }

    #[test]
    fn fingerprint_ignores_literals_whitespace_and_comments() {
        let a = normalize("SELECT * FROM payments WHERE id = 1");
        let b = normalize("select * from payments where id = 2");
        let c = normalize("SELECT *\n  FROM payments -- hi\n WHERE id = 99999");
        assert_ne!(a.1, b.1, "case is kept");
        assert_eq!(a.1, c.1);
        assert_eq!(a.1.len(), 16);
        assert!(a.1.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a.1, fingerprint("SELECT * FROM payments WHERE id = $1"));
    }

    #[test]
    fn normalized_text_never_holds_a_pan() {
        for sql in [
            "INSERT INTO p VALUES ('4111111111111111')",
            "INSERT INTO p VALUES (4111111111111111)",
            "SELECT 1 AS \"4111111111111111\"",
            "SELECT 1 /* 4111 1111 1111 1111 */",
            "SELECT $$5500-0000-0000-0004$$",
        ] {
            let (text, _) = normalize(sql);
            assert!(
                !text.contains("1111111111") && !text.contains("0000-0000"),
                "{sql} -> {text}"
            );
        }
        assert_eq!(
            norm("SELECT 1 AS \"4111111111111111\""),
            "SELECT $1 AS \"411111******1111\""
        );
    }

    #[test]
    fn keep_literals_scrubs_pans_and_caps_length() {
        let (text, fp) = statement_text("INSERT INTO p VALUES ('4111 1111 1111 1111', 'ok')", true);
        assert_eq!(text, "INSERT INTO p VALUES ('4111 11** **** 1111', 'ok')");
        assert_eq!(fp, normalize("INSERT INTO p VALUES ('x', 'y')").1);
        let long = format!("SELECT '{}'", "a".repeat(MAX_TEXT_BYTES * 2));
        let (text, _) = statement_text(&long, true);
        assert!(text.len() < MAX_TEXT_BYTES + 64);
        assert!(
            text.ends_with("more bytes]"),
            "{}",
            &text[text.len() - 40..]
        );
        let (text, _) = statement_text(&long, false);
        assert_eq!(text, "SELECT $1");
    }

    #[test]
    fn scrub_known_shapes() {
        let cases: &[(&str, &str)] = &[
            ("4111111111111111", "411111******1111"),
            ("card 4111-1111-1111-1111 ok", "card 4111-11**-****-1111 ok"),
            ("5500 0000 0000 0004", "5500 00** **** 0004"),
            (
                "{378282246310005,6011111111111117}",
                "{378282*****0005,601111******1117}",
            ),
            // Any Luhn-valid run, issuer or not.
            ("9999999999999995", "999999******9995"),
            // Found after a leading group, and followed by more groups.
            ("ref 12 4111 1111 1111 1111", "ref 12 4111 11** **** 1111"),
            ("4111 1111 1111 1111 2024", "4111 11** **** 1111 2024"),
            // Glued to letters still counts.
            ("t4111111111111111x", "t411111******1111x"),
        ];
        for (input, want) in cases {
            assert_eq!(&scrub_pans(input), want, "{input}");
        }
        for keep in [
            "order 1234567890123",
            "4111111111111112",
            "12345678901234567890123",
            "2026-11-25 05:00:35.123456+00",
            "+1 555 123 4567",
            "t1 t22 id 7",
            "4111  1111 1111 1111", // double space: not one grouping
        ] {
            assert!(matches!(scrub_pans_cow(keep), Cow::Borrowed(_)), "{keep}");
        }
    }

    #[test]
    fn bytes_are_scrubbed_as_text_is() {
        // Not UTF-8 around the digits: the same card number masked the same way.
        let raw = b"\xff\xfe4111 1111 1111 1111\x00\x80";
        let out = scrub_pans_bytes(raw);
        assert_eq!(&out[..], b"\xff\xfe4111 11** **** 1111\x00\x80");
        assert!(matches!(
            scrub_pans_bytes(b"\x00\x01 12345"),
            Cow::Borrowed(_)
        ));
        for text in [
            "4111111111111111",
            "no digits",
            "ref 12 4111 1111 1111 1111",
        ] {
            assert_eq!(
                scrub_pans_bytes(text.as_bytes()).as_ref(),
                scrub_pans(text).as_bytes()
            );
        }
    }

    fn with_check_digit(body: &[u8]) -> Vec<u8> {
        (b'0'..=b'9')
            .map(|c| {
                let mut d = body.to_vec();
                d.push(c);
                d
            })
            .find(|d| luhn(d))
            .unwrap_or_default()
    }

    fn pan() -> impl Strategy<Value = Vec<u8>> {
        (13usize..=19).prop_flat_map(|len| {
            proptest::collection::vec(0u8..10, len - 1).prop_map(|body| {
                with_check_digit(&body.iter().map(|d| b'0' + d).collect::<Vec<_>>())
            })
        })
    }

    fn shaped(digits: &[u8], sep: u8, every: usize) -> String {
        let mut s = String::new();
        for (i, d) in digits.iter().enumerate() {
            if sep != 0 && i > 0 && i % every == 0 {
                s.push(char::from(sep));
            }
            s.push(char::from(*d));
        }
        s
    }

    proptest! {
        /// Generated Luhn-valid numbers of every length 13..=19, in any grouping, inside any
        /// text: always scrubbed to first six + stars + last four, length unchanged.
        #[test]
        fn generated_pans_never_survive(
            digits in pan(),
            sep in prop_oneof![Just(0u8), Just(b' '), Just(b'-')],
            every in 3usize..=6,
            before in "[a-zA-Z '(=,]{0,8}",
            after in "[a-zA-Z ')=,;]{0,8}",
        ) {
            prop_assert_eq!(digits.len() >= 13, true);
            let text = format!("{before}{}{after}", shaped(&digits, sep, every));
            let out = scrub_pans(&text);
            prop_assert_eq!(out.len(), text.len());
            let kept: Vec<u8> = out.bytes().filter(u8::is_ascii_digit).collect();
            let n = digits.len();
            let mut want = digits[..6].to_vec();
            want.extend_from_slice(&digits[n - 4..]);
            prop_assert_eq!(kept, want);
            prop_assert_eq!(out.bytes().filter(|&c| c == b'*').count(), n - 10);
            // And through normalization, as a string or a number literal.
            let (sql_text, _) = normalize(&format!("INSERT INTO t VALUES ('{text}', {})", shaped(&digits, 0, 1)));
            let plain = String::from_utf8(digits.clone()).unwrap();
            prop_assert!(!sql_text.contains(&plain));
        }
    }
}
