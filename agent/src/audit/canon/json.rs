//! The canonical JSON the chain hashes: the crate's one JSON string escaper ([`push_str`]) and
//! its one writer of the canonical form ([`push_value`], [`hash_value`]).
//!
//! Hand-written on purpose: the canonical form is the hash contract. Every journal ever
//! written verifies only while these bytes stay exactly what they are, so they are spelled out
//! here rather than left to a serializer whose output is not promised byte for byte (and whose
//! maps sort their keys only with the right feature); the per-statement records
//! ([`super::splice`]) are written piecewise with these same functions, without building a
//! `serde_json::Value`. Tests hold the escaping to `serde_json`'s and the whole form to a
//! golden record (`record::tests::golden_record_hash`).
//!
//! # The form
//!
//! `hash` is the lowercase hex SHA-256 of the record serialized to a `serde_json::Value`,
//! with the top-level `hash` key removed, then written as:
//!
//! - objects: `{` keys sorted by their UTF-8 bytes (recursively, at every depth), each as
//!   `"key":value`, separated by `,`, `}`;
//! - arrays: `[` elements in order, separated by `,`, `]`;
//! - strings: as `serde_json` writes them: `"` and `\` escaped, control characters as
//!   `\b \f \n \r \t` or `\u00xx` (lowercase hex), everything else (including non-ASCII and `/`)
//!   verbatim UTF-8;
//! - numbers: integers in decimal, floats in `serde_json`'s shortest round-trip form;
//! - `true`, `false`, `null`; no whitespace anywhere.
//!
//! Fields that are `None` or empty are not serialized, so they are not in the canonical form
//! either. The stored line keeps its own key order; verification recomputes the canonical form
//! from the parsed line, so key order on disk does not matter.
use serde_json::{Map, Value};

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

/// An integer, in decimal.
pub(super) fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `"key":` for one of the record's own keys (ASCII letters and `_`: nothing to escape).
pub(super) fn push_key(out: &mut Vec<u8>, key: &str) {
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
        Value::Object(m) => push_object(out, m, None),
    }
}

/// An object, its keys sorted by their UTF-8 bytes, without the key `skip`.
fn push_object(out: &mut Vec<u8>, m: &Map<String, Value>, skip: Option<&str>) {
    let mut keys: Vec<&String> = m.keys().filter(|k| Some(k.as_str()) != skip).collect();
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

/// Lowercase hex SHA-256 of the canonical form of `record` without its top-level `hash` key.
pub fn hash_value(record: &Value) -> String {
    let mut out = Vec::with_capacity(1024);
    match record {
        Value::Object(map) => push_object(&mut out, map, Some("hash")),
        other => push_value(&mut out, other),
    }
    super::sha256_hex(&out)
}

/// The canonical form of `v` (see the module doc).
pub fn canonical_json(v: &Value) -> String {
    let mut out = Vec::new();
    push_value(&mut out, v);
    // Written from `str`s and ASCII only: always UTF-8.
    String::from_utf8(out).unwrap_or_default()
}
