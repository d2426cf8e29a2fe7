//! Column masking methods: what a masked value becomes.
use std::fmt;

use hmac::{Hmac, Mac as _};

use super::pan::{Keep, mask_pans, mask_pans_in_place};

/// How a masked column's values are rewritten.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// Card number: first six and last four digits visible (or last four), other digits `*`,
    /// length and separators kept. A value that is not a recognisable PAN has all its digits
    /// but the visible ones masked anyway.
    Pan(Keep),
    /// Keep `first` leading and `last` trailing characters, `*` for the rest.
    Partial(usize, usize),
    /// A fixed text.
    Redact,
    /// SQL NULL.
    Null,
    /// Keyed HMAC-SHA-256, hex, truncated: stable, so masked values still join and group.
    Hash,
}

impl Method {
    /// The name audit records use.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pan(_) => "pan",
            Self::Partial(..) => "partial",
            Self::Redact => "redact",
            Self::Null => "null",
            Self::Hash => "hash",
        }
    }

    /// Parses `pan`, `pan(last4)`, `partial(2, 4)`, `redact`, `null`, `hash`.
    pub fn parse(s: &str) -> Result<Self, MethodError> {
        let s = s.trim();
        let (name, args) = match s.split_once('(') {
            Some((n, rest)) => (
                n.trim(),
                Some(
                    rest.strip_suffix(')')
                        .ok_or_else(|| MethodError::Unclosed(s.to_owned()))?,
                ),
            ),
            None => (s, None),
        };
        match (name, args) {
            ("pan", None) => Ok(Self::Pan(Keep::First6Last4)),
            ("pan", Some("last4")) => Ok(Self::Pan(Keep::Last4)),
            ("pan", Some("first6-last4" | "first6,last4")) => Ok(Self::Pan(Keep::First6Last4)),
            ("partial", Some(a)) => {
                let nums: Vec<usize> = a
                    .split(',')
                    .map(|x| x.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| MethodError::PartialArgs(s.to_owned()))?;
                match nums[..] {
                    [f, l] => Ok(Self::Partial(f, l)),
                    _ => Err(MethodError::PartialArgs(s.to_owned())),
                }
            }
            ("redact", None) => Ok(Self::Redact),
            ("null", None) => Ok(Self::Null),
            ("hash", None) => Ok(Self::Hash),
            _ => Err(MethodError::Unknown(s.to_owned())),
        }
    }
}

/// A mask method as written that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MethodError {
    /// `name(args` without its `)`.
    #[error("`{0}`: missing `)`")]
    Unclosed(String),
    /// `partial` without exactly two numbers.
    #[error("`{0}`: partial(first, last) takes two numbers")]
    PartialArgs(String),
    /// No such method.
    #[error(
        "unknown mask method `{0}` (pan, pan(last4), partial(first, last), redact, null, hash)"
    )]
    Unknown(String),
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pan(Keep::First6Last4) => f.write_str("pan"),
            Self::Pan(Keep::Last4) => f.write_str("pan(last4)"),
            Self::Partial(a, b) => write!(f, "partial({a}, {b})"),
            Self::Redact => f.write_str("redact"),
            Self::Null => f.write_str("null"),
            Self::Hash => f.write_str("hash"),
        }
    }
}

/// What the redact method writes.
pub const REDACTED: &str = "[REDACTED]";
/// Hex characters kept of a hash.
pub const HASH_HEX_CHARS: usize = 16;

/// Applies `method` to a textual value; `None` means SQL NULL.
pub fn apply(method: &Method, value: &[u8], key: &[u8]) -> Option<Vec<u8>> {
    match method {
        Method::Pan(keep) => Some(match mask_pans(value, *keep) {
            Some((v, _)) => v,
            None => mask_all_digits(value, *keep),
        }),
        Method::Partial(first, last) => {
            let text = String::from_utf8_lossy(value);
            let n = text.chars().count();
            Some(
                text.chars()
                    .enumerate()
                    .map(|(i, c)| if i < *first || i + last >= n { c } else { '*' })
                    .collect::<String>()
                    .into_bytes(),
            )
        }
        Method::Redact => Some(REDACTED.as_bytes().to_vec()),
        Method::Null => None,
        Method::Hash => {
            let mut mac = <Hmac<sha2::Sha256>>::new_from_slice(key).ok()?;
            mac.update(value);
            let mut hex = hex::encode(mac.finalize().into_bytes());
            hex.truncate(HASH_HEX_CHARS);
            Some(hex.into_bytes())
        }
    }
}

/// Applies `method` to a textual value in place when it keeps the value's length (`pan`
/// always; `partial` on ASCII text): `Some(changed)`; `None` when the method must re-encode
/// (the caller falls back to [`apply`]).
pub fn apply_in_place(method: &Method, buf: &mut [u8]) -> Option<bool> {
    match method {
        Method::Pan(keep) => Some(if mask_pans_in_place(buf, *keep) > 0 {
            true
        } else {
            mask_all_digits_in_place(buf, *keep)
        }),
        Method::Partial(first, last) if buf.is_ascii() => {
            let n = buf.len();
            let mut changed = false;
            for (i, b) in buf.iter_mut().enumerate() {
                if i >= *first && i + last < n && *b != b'*' {
                    *b = b'*';
                    changed = true;
                }
            }
            Some(changed)
        }
        Method::Partial(..) | Method::Redact | Method::Null | Method::Hash => None,
    }
}

/// [`mask_all_digits`] in place; whether a digit was masked.
fn mask_all_digits_in_place(buf: &mut [u8], keep: Keep) -> bool {
    let total = buf.iter().filter(|b| b.is_ascii_digit()).count();
    let head = if keep == Keep::First6Last4 && total >= 13 {
        6
    } else {
        0
    };
    let tail = if total >= 8 { 4 } else { 0 };
    let mut seen = 0;
    let mut changed = false;
    for b in buf.iter_mut().filter(|b| b.is_ascii_digit()) {
        seen += 1;
        if seen > head && seen <= total - tail {
            *b = b'*';
            changed = true;
        }
    }
    changed
}

/// For `pan` on a value that is not a recognisable card number: every digit but the visible
/// ones becomes `*` (fail closed: a malformed or unusual PAN is still hidden).
fn mask_all_digits(value: &[u8], keep: Keep) -> Vec<u8> {
    let total = value.iter().filter(|b| b.is_ascii_digit()).count();
    let head = if keep == Keep::First6Last4 && total >= 13 {
        6
    } else {
        0
    };
    let tail = if total >= 8 { 4 } else { 0 };
    let mut seen = 0;
    value
        .iter()
        .map(|&b| {
            if b.is_ascii_digit() {
                seen += 1;
                if seen <= head || seen > total - tail {
                    b
                } else {
                    b'*'
                }
            } else {
                b
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods() {
        let k = b"key";
        assert_eq!(
            apply(&Method::parse("pan").unwrap(), b"4111 1111 1111 1111", k).unwrap(),
            b"4111 11** **** 1111"
        );
        assert_eq!(
            apply(
                &Method::parse("pan(last4)").unwrap(),
                b"4111111111111111",
                k
            )
            .unwrap(),
            b"************1111"
        );
        // Not a valid PAN: still masked.
        assert_eq!(
            apply(&Method::Pan(Keep::First6Last4), b"1234567890123456", k).unwrap(),
            b"123456******3456"
        );
        assert_eq!(
            apply(
                &Method::parse("partial(2, 3)").unwrap(),
                b"alice@example.com",
                k
            )
            .unwrap(),
            b"al************com"
        );
        assert_eq!(
            apply(&Method::Redact, b"x", k).unwrap(),
            REDACTED.as_bytes()
        );
        assert_eq!(apply(&Method::Null, b"x", k), None);
        let h1 = apply(&Method::Hash, b"a@example.com", k).unwrap();
        assert_eq!(h1.len(), HASH_HEX_CHARS);
        assert_eq!(
            h1,
            apply(&Method::Hash, b"a@example.com", k).unwrap(),
            "stable"
        );
        assert_ne!(
            h1,
            apply(&Method::Hash, b"a@example.com", b"other key").unwrap(),
            "keyed"
        );
        // In place, the same bytes (and `None` where the length changes).
        for (m, v) in [
            ("pan", &b"4111 1111 1111 1111"[..]),
            ("pan(last4)", b"4111111111111111"),
            ("pan", b"1234567890123456"),
            ("pan", b"12345"),
            ("partial(2, 3)", b"alice@example.com"),
            ("partial(2, 3)", b"abc"),
        ] {
            let m = Method::parse(m).unwrap();
            let mut buf = v.to_vec();
            let changed = apply_in_place(&m, &mut buf).unwrap();
            let want = apply(&m, v, k).unwrap();
            assert_eq!(buf, want, "{m} {v:?}");
            assert_eq!(changed, want != v, "{m} {v:?}");
        }
        assert_eq!(apply_in_place(&Method::Redact, &mut b"x".to_vec()), None);
        assert_eq!(apply_in_place(&Method::Hash, &mut b"x".to_vec()), None);
        assert_eq!(
            apply_in_place(
                &Method::parse("partial(1, 1)").unwrap(),
                &mut "zürich".as_bytes().to_vec()
            ),
            None
        );
        assert_eq!(
            Method::parse("partial(1)").unwrap_err().to_string(),
            "`partial(1)`: partial(first, last) takes two numbers"
        );
        assert!(matches!(
            Method::parse("scramble"),
            Err(MethodError::Unknown(_))
        ));
        assert_eq!(
            Method::parse("pan(last4").unwrap_err(),
            MethodError::Unclosed("pan(last4".into())
        );
    }
}
