//! What the workload saw: `detail.result` of a `query.done` record (the profile's
//! `record_results`), written as canonical JSON piece by piece, every string of it through the
//! journal's card-number scrubber ([`crate::audit::redact`]), and read back for `replay`.
//!
//! # The object
//!
//! ```json
//! {"columns":["id","card_number"],"rows":[["1","411111******1111"],["2",null]],
//!  "sha256":"…","total_rows":10,"truncated":false}
//! ```
//!
//! - `columns`: the result's column names (RowDescription), `rows`: its first rows as sent to
//!   the workload (after masking), each an array of values: text-format values as JSON
//!   strings, NULL as `null`, a binary-format value as `{"format":"binary","hex":"…"}`, a
//!   text-format value that is not UTF-8 as `{"format":"text","hex":"…"}`. A binary `bigint`
//!   or `numeric` holding a card number is `{"format":"binary","withheld":"card number"}`.
//!   COPY TO STDOUT: `"copy":true`, no columns, each CopyData's data one value of one row.
//! - Card numbers: whatever the policy masked, every string here (values, hex, column
//!   names) is scrubbed as all free text of the journal is (first six and last four digits
//!   kept), and so are the raw bytes of a value before they are written as hex.
//! - `total_rows`: every DataRow (and CopyData) sent for the statement. `truncated`: the
//!   byte cap left rows, or result sets, out of the sample (the row cap does not count).
//! - `sha256`: lowercase hex SHA-256 over the statement's DataRow and CopyData messages as
//!   sent to the workload, each whole (type byte, 4-byte length, body), concatenated in the
//!   order sent. A capture of the client's side of the connection recomputes it. It is left
//!   out when a value sent held a card number the policy did not mask, since a hash over a
//!   card number and its masked neighbours could be reversed by trying the hidden digits:
//!   `unmasked_pans` then counts such values.
//! - A simple Query of several statements returning rows has `sets` instead of `columns`,
//!   `rows` (and `copy`): one `{"columns","rows","total_rows"}` per result set, in order.
//!   `total_rows`, `sha256`, `truncated` and `unmasked_pans` stay statement-wide.
use serde::Deserialize;
use serde_json::Value;

use super::json::{push_key, push_str, push_u64};
use crate::audit::redact::{scrub_pans_bytes, scrub_pans_cow};

/// A string of the sample, scrubbed; true when the scrubber masked something.
fn push_scrubbed(out: &mut Vec<u8>, s: &str) -> bool {
    let scrubbed = scrub_pans_cow(s);
    push_str(out, &scrubbed);
    matches!(scrubbed, std::borrow::Cow::Owned(_))
}

/// `{"format":…,"hex":…}` of raw bytes, card numbers scrubbed in the bytes and in the hex (a
/// packed-BCD card number reads as itself in hex); true when something was masked.
fn push_hex(out: &mut Vec<u8>, format: &str, value: &[u8]) -> bool {
    let raw = scrub_pans_bytes(value);
    out.extend_from_slice(b"{\"format\":");
    push_str(out, format);
    out.extend_from_slice(b",\"hex\":");
    let hit = push_scrubbed(out, &hex::encode(&raw));
    out.push(b'}');
    hit || matches!(raw, std::borrow::Cow::Owned(_))
}

/// A column name.
pub fn push_name(out: &mut Vec<u8>, name: &str) {
    push_scrubbed(out, name);
}

/// SQL NULL.
pub fn push_null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"null");
}

/// A text-format value (or a CopyData's data): a string, or its hex when it is not UTF-8.
/// True when a card number in it was masked here (the policy let it through).
pub fn push_text(out: &mut Vec<u8>, value: &[u8]) -> bool {
    match std::str::from_utf8(value) {
        Ok(s) => push_scrubbed(out, s),
        Err(_) => push_hex(out, "text", value),
    }
}

/// A binary-format value of type `type_oid`, as hex; a `bigint` or `numeric` whose number
/// is a card number is withheld. True when a card number in it was masked or withheld.
pub fn push_binary(out: &mut Vec<u8>, value: &[u8], type_oid: u32) -> bool {
    use crate::mask::{INT8, NUMERIC, binary_number_digits};
    if (type_oid == INT8 || type_oid == NUMERIC)
        && binary_number_digits(value, type_oid)
            .is_some_and(|d| matches!(scrub_pans_cow(&d), std::borrow::Cow::Owned(_)))
    {
        out.extend_from_slice(b"{\"format\":\"binary\",\"withheld\":\"card number\"}");
        return true;
    }
    push_hex(out, "binary", value)
}

/// One result set of the sample: its columns and rows as JSON arrays, brackets included.
#[derive(Clone, Copy, Debug)]
pub struct SetParts<'a> {
    /// `[…]` of [`push_name`]s (`[]` for COPY).
    pub columns: &'a [u8],
    /// `[…]` of rows, each `[…]` of values.
    pub rows: &'a [u8],
    /// Rows the set sent.
    pub total_rows: u64,
    /// COPY TO STDOUT data.
    pub copy: bool,
}

/// The sample of one statement's result.
#[derive(Clone, Copy, Debug)]
pub struct ResultParts<'a> {
    /// The result sets sampled, in order.
    pub sets: &'a [SetParts<'a>],
    /// Whether the statement sent more than one result set (then `sets` is written even when
    /// only one was sampled).
    pub several: bool,
    /// Rows sent, over all sets.
    pub total_rows: u64,
    /// The digest (module doc); `None` when withheld.
    pub sha256: Option<&'a str>,
    /// The byte cap left something out.
    pub truncated: bool,
    /// Values sent holding a card number the policy did not mask.
    pub unmasked_pans: u64,
}

/// Writes `columns`, `copy` and `rows` of one set (keys in canonical order), then a comma.
fn push_set_body(b: &mut Vec<u8>, s: &SetParts<'_>) {
    push_key(b, "columns");
    b.extend_from_slice(s.columns);
    b.push(b',');
    if s.copy {
        push_key(b, "copy");
        b.extend_from_slice(b"true,");
    }
    push_key(b, "rows");
    b.extend_from_slice(s.rows);
    b.push(b',');
}

/// The canonical JSON of `detail.result`.
pub fn result_json(p: &ResultParts<'_>) -> Box<[u8]> {
    let size: usize = p
        .sets
        .iter()
        .map(|s| s.columns.len() + s.rows.len() + 48)
        .sum();
    let mut b = Vec::with_capacity(size + 160);
    b.push(b'{');
    if p.several {
        push_key(&mut b, "sets");
        b.push(b'[');
        for (i, s) in p.sets.iter().enumerate() {
            if i > 0 {
                b.push(b',');
            }
            b.push(b'{');
            push_set_body(&mut b, s);
            push_key(&mut b, "total_rows");
            push_u64(&mut b, s.total_rows);
            b.push(b'}');
        }
        b.extend_from_slice(b"],");
    } else {
        let empty = SetParts {
            columns: b"[]",
            rows: b"[]",
            total_rows: 0,
            copy: false,
        };
        push_set_body(&mut b, p.sets.first().unwrap_or(&empty));
    }
    // Canonical order: `columns`, `copy`, `rows` | `sets`, then `sha256`, `total_rows`,
    // `truncated`, `unmasked_pans`.
    if let Some(h) = p.sha256 {
        push_key(&mut b, "sha256");
        push_str(&mut b, h);
        b.push(b',');
    }
    push_key(&mut b, "total_rows");
    push_u64(&mut b, p.total_rows);
    b.push(b',');
    push_key(&mut b, "truncated");
    b.extend_from_slice(if p.truncated { b"true" } else { b"false" });
    if p.unmasked_pans > 0 {
        b.push(b',');
        push_key(&mut b, "unmasked_pans");
        push_u64(&mut b, p.unmasked_pans);
    }
    b.push(b'}');
    b.into_boxed_slice()
}

/// `detail.result` as read back (`pgwarden audit replay`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Sample {
    /// The columns of a single result set.
    #[serde(default)]
    pub columns: Vec<String>,
    /// COPY data.
    #[serde(default)]
    pub copy: bool,
    /// The rows sampled of a single result set.
    #[serde(default)]
    pub rows: Vec<Vec<Value>>,
    /// The result sets of a Query that sent several.
    #[serde(default)]
    pub sets: Vec<SampleSet>,
    /// The digest, when not withheld.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Rows sent.
    #[serde(default)]
    pub total_rows: u64,
    /// The byte cap left something out.
    #[serde(default)]
    pub truncated: bool,
    /// Values sent that held a card number the policy did not mask.
    #[serde(default)]
    pub unmasked_pans: u64,
}

/// One result set of a [`Sample`].
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct SampleSet {
    /// Column names.
    #[serde(default)]
    pub columns: Vec<String>,
    /// COPY data.
    #[serde(default)]
    pub copy: bool,
    /// The rows sampled.
    #[serde(default)]
    pub rows: Vec<Vec<Value>>,
    /// Rows the set sent.
    #[serde(default)]
    pub total_rows: u64,
}

impl Sample {
    /// The sample of a record's `detail`, if it has one.
    pub fn of(detail: &serde_json::Map<String, Value>) -> Option<Sample> {
        serde_json::from_value(detail.get("result")?.clone()).ok()
    }

    /// Its result sets: `sets`, or the single one (with the statement's row count).
    pub fn result_sets(&self) -> Vec<SampleSet> {
        if self.sets.is_empty() {
            vec![SampleSet {
                columns: self.columns.clone(),
                copy: self.copy,
                rows: self.rows.clone(),
                total_rows: self.total_rows,
            }]
        } else {
            self.sets.clone()
        }
    }
}
