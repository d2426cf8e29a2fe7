//! Inline masking (PCI DSS Req 3.4.1): no full card number leaves pgwarden toward a tagged
//! workload. Column rules follow each result column's origin (table OID and column number
//! from RowDescription, resolved by a catalog query per database); the content detector
//! masks PANs in every value, error and notice as a backstop. Rows are rewritten one by one
//! as they pass, and only when something changes.
pub mod method;
pub mod pan;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{BufMut as _, Bytes, BytesMut};

pub use method::{Method, MethodError};
pub use pan::Keep;

use crate::wire::Frame;
use crate::wire::backend::{self, Column};

/// Masking settings of the host.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskConfig {
    /// File holding the key of the `hash` method (any bytes; at least 16). Required when a
    /// policy uses `hash`.
    pub hash_key_file: Option<std::path::PathBuf>,
}

/// A masked column as a policy names it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ColumnRule {
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
    /// Column.
    pub column: String,
    /// Method.
    #[serde(serialize_with = "display")]
    pub method: Method,
}

fn display<S: serde::Serializer>(m: &Method, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(m)
}

impl ColumnRule {
    /// `schema.table.column`.
    pub fn label(&self) -> String {
        format!("{}.{}.{}", self.schema, self.table, self.column)
    }
}

/// A profile's masking rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MaskRules {
    /// Column rules.
    pub columns: Vec<ColumnRule>,
    /// Run the PAN content detector on every value, error and notice.
    pub detect_pans: bool,
    /// Masked columns allowed in predicates, functions and the like (`schema.table.column`).
    pub allow_uses: Vec<String>,
}

impl MaskRules {
    /// Whether anything is masked.
    pub fn active(&self) -> bool {
        self.detect_pans || !self.columns.is_empty()
    }

    /// The catalog query resolving the masked columns to (table OID, column number), or
    /// `None` when there is no column rule.
    pub fn catalog_query(&self) -> Option<String> {
        if self.columns.is_empty() {
            return None;
        }
        let lit = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let tuples: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                format!(
                    "({}, {}, {})",
                    lit(&c.schema),
                    lit(&c.table),
                    lit(&c.column)
                )
            })
            .collect();
        Some(format!(
            "SELECT c.oid::pg_catalog.int8, a.attnum::pg_catalog.int4, n.nspname, c.relname, a.attname \
             FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE a.attnum > 0 AND NOT a.attisdropped AND (n.nspname, c.relname, a.attname) IN (VALUES {}) \
             /* pgwarden: resolving masked columns */",
            tuples.join(", ")
        ))
    }
}

/// Masked columns of one database: (table OID, column number) -> index into the rules.
#[derive(Debug, Default)]
pub struct Resolved {
    by_attr: HashMap<(u32, i16), usize>,
    at: Option<Instant>,
}

impl Resolved {
    /// From the catalog query's rows (text values).
    pub fn from_rows(rules: &MaskRules, rows: &[Vec<Option<String>>]) -> Self {
        let mut by_attr = HashMap::new();
        for r in rows {
            let (Some(Some(oid)), Some(Some(attnum)), Some(Some(s)), Some(Some(t)), Some(Some(c))) =
                (r.first(), r.get(1), r.get(2), r.get(3), r.get(4))
            else {
                continue;
            };
            let (Ok(oid), Ok(attnum)) = (oid.parse::<u32>(), attnum.parse::<i16>()) else {
                continue;
            };
            if let Some(i) = rules
                .columns
                .iter()
                .position(|rule| rule.schema == *s && rule.table == *t && rule.column == *c)
            {
                by_attr.insert((oid, attnum), i);
            }
        }
        Self {
            by_attr,
            at: Some(Instant::now()),
        }
    }
}

/// How long a database's resolution is reused before a new session queries again.
pub const CATALOG_TTL: Duration = Duration::from_secs(60);

/// Resolutions per (server, database, rules), shared by sessions; dropped on DDL and reload.
#[derive(Default)]
pub struct Catalog {
    entries: Mutex<HashMap<String, Arc<Resolved>>>,
}

impl Catalog {
    /// A fresh resolution for `key`, if any.
    pub fn get(&self, key: &str) -> Option<Arc<Resolved>> {
        let e = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        e.get(key)
            .filter(|r| r.at.is_some_and(|t| t.elapsed() < CATALOG_TTL))
            .cloned()
    }

    /// Stores a resolution.
    pub fn put(&self, key: String, r: Arc<Resolved>) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, r);
    }

    /// Forgets every resolution (DDL seen, policy reloaded).
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

const TEXT_TYPES: [u32; 6] = [25, 1043, 1042, 19, 705, 114];
const JSONB: u32 = 3802;
/// The OID of `bigint` (`int8`).
pub const INT8: u32 = 20;
/// The OID of `numeric`.
pub const NUMERIC: u32 = 1700;

#[derive(Clone, Debug)]
struct Planned {
    rule: usize,
    binary: bool,
    type_oid: u32,
}

/// Per-session masking state.
pub struct MaskSession {
    rules: Arc<MaskRules>,
    resolved: Arc<Resolved>,
    key: Arc<Vec<u8>>,
    plan: Vec<Option<Planned>>,
    formats: Vec<(bool, u32)>,
    /// A DataRow's value ranges (kept for the next row).
    ranges: Vec<Option<std::ops::Range<usize>>>,
    /// Values masked per column rule (by index) since the last [`MaskSession::take_counts`].
    rule_counts: Vec<u64>,
    /// PANs the content detector masked since then.
    detected: u64,
}

/// One masked column's count, for the audit record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MaskCount {
    /// `schema.table.column`, or `content` for the PAN detector.
    pub column: String,
    /// Method.
    pub method: &'static str,
    /// Values masked.
    pub count: u64,
}

impl MaskSession {
    /// A session under `rules`, with the database's resolution and the hash key.
    pub fn new(rules: Arc<MaskRules>, resolved: Arc<Resolved>, key: Arc<Vec<u8>>) -> Self {
        Self {
            rules,
            resolved,
            key,
            plan: Vec::new(),
            formats: Vec::new(),
            ranges: Vec::new(),
            rule_counts: Vec::new(),
            detected: 0,
        }
    }

    /// A result is about to stream with these columns (formats as sent).
    pub fn result_columns(&mut self, cols: &[Column]) {
        // Into the buffers of the last result: no allocation once they fit.
        self.plan.clear();
        self.plan.extend(cols.iter().map(|c| {
            (c.table_oid != 0 && c.attnum > 0)
                .then(|| self.resolved.by_attr.get(&(c.table_oid, c.attnum)))
                .flatten()
                .map(|&rule| Planned {
                    rule,
                    binary: c.format == 1,
                    type_oid: c.type_oid,
                })
        }));
        self.formats.clear();
        self.formats
            .extend(cols.iter().map(|c| (c.format == 1, c.type_oid)));
    }

    /// Takes the counts since the last call (one statement's worth).
    pub fn take_counts(&mut self) -> Vec<MaskCount> {
        let mut out: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
        for (i, n) in std::mem::take(&mut self.rule_counts)
            .into_iter()
            .enumerate()
        {
            if n > 0 {
                let rule = &self.rules.columns[i];
                *out.entry((rule.label(), rule.method.name())).or_insert(0) += n;
            }
        }
        if self.detected > 0 {
            out.insert(
                ("content".to_owned(), "pan"),
                std::mem::take(&mut self.detected),
            );
        }
        out.into_iter()
            .map(|((column, method), count)| MaskCount {
                column,
                method,
                count,
            })
            .collect()
    }

    fn count_rule(&mut self, rule: usize) {
        if self.rule_counts.len() <= rule {
            self.rule_counts
                .resize(self.rules.columns.len().max(rule + 1), 0);
        }
        self.rule_counts[rule] += 1;
    }

    /// Masks one DataRow; `None` when nothing changes. The new row is written in one pass:
    /// untouched values are copied from the old one, masked ones from their masks.
    pub fn data_row(&mut self, frame: &Frame) -> Option<Bytes> {
        if self.plan.iter().all(Option::is_none) && !self.rules.detect_pans {
            return None;
        }
        // The value ranges go into the session's buffer: no allocation per row.
        let mut ranges = std::mem::take(&mut self.ranges);
        let masked = backend::data_row_into(frame, &mut ranges)
            .ok()
            .and_then(|()| self.masked_row(frame, &ranges));
        self.ranges = ranges;
        masked
    }

    /// [`MaskSession::data_row`] of a row whose value ranges are read.
    fn masked_row(
        &mut self,
        frame: &Frame,
        ranges: &[Option<std::ops::Range<usize>>],
    ) -> Option<Bytes> {
        if let Some(done) = self.data_row_in_place(frame, ranges) {
            return done;
        }
        let body = frame.body();
        let mut out: Option<BytesMut> = None;
        for (i, r) in ranges.iter().enumerate() {
            let Some(r) = r else {
                if let Some(b) = &mut out {
                    b.put_i32(-1);
                }
                continue;
            };
            let value = &body[r.clone()];
            let replaced = if let Some(Some(p)) = self.plan.get(i) {
                let (rule, binary, type_oid) = (p.rule, p.binary, p.type_oid);
                let v = self.apply_rule(&self.rules.columns[rule].method, value, binary, type_oid);
                if v.as_deref() != Some(value) {
                    self.count_rule(rule);
                }
                Some(v)
            } else if self.rules.detect_pans {
                let (binary, type_oid) = self.formats.get(i).copied().unwrap_or((false, 0));
                self.detect(value, binary, type_oid)
            } else {
                None
            };
            match replaced.filter(|v| v.as_deref() != Some(value)) {
                Some(v) => {
                    let b = out.get_or_insert_with(|| {
                        // The row so far, as it was.
                        let mut b = BytesMut::with_capacity(frame.bytes.len() + 16);
                        b.put_u8(b'D');
                        b.put_i32(0);
                        b.put_i16(i16::try_from(ranges.len()).unwrap_or(i16::MAX));
                        for earlier in &ranges[..i] {
                            match earlier {
                                Some(e) => {
                                    b.put_i32(i32::try_from(e.len()).unwrap_or(i32::MAX));
                                    b.put_slice(&body[e.clone()]);
                                }
                                None => b.put_i32(-1),
                            }
                        }
                        b
                    });
                    match v {
                        Some(v) => {
                            b.put_i32(i32::try_from(v.len()).unwrap_or(i32::MAX));
                            b.put_slice(&v);
                        }
                        None => b.put_i32(-1),
                    }
                }
                None => {
                    if let Some(b) = &mut out {
                        b.put_i32(i32::try_from(value.len()).unwrap_or(i32::MAX));
                        b.put_slice(value);
                    }
                }
            }
        }
        let mut b = out?;
        let len = i32::try_from(b.len() - 1).unwrap_or(i32::MAX);
        b[1..5].copy_from_slice(&len.to_be_bytes());
        Some(b.freeze())
    }

    /// [`MaskSession::data_row`] when every change it can make keeps each value's length
    /// (the `pan` and ASCII `partial` methods, the detector on text): the row is copied once,
    /// only if something changes, and masked where it lies, without re-encoding. `None`: a
    /// value must change length (or become NULL); the caller rebuilds the row.
    fn data_row_in_place(
        &mut self,
        frame: &Frame,
        ranges: &[Option<std::ops::Range<usize>>],
    ) -> Option<Option<Bytes>> {
        let body = frame.body();
        let same_length = ranges.iter().enumerate().all(|(i, r)| {
            let Some(r) = r else { return true };
            match self.plan.get(i) {
                Some(Some(p)) => {
                    let text = !p.binary || TEXT_TYPES.contains(&p.type_oid);
                    let method = &self.rules.columns[p.rule].method;
                    text && match method {
                        Method::Pan(_) => true,
                        Method::Partial(..) => body[r.clone()].is_ascii(),
                        Method::Redact | Method::Null | Method::Hash => false,
                    }
                }
                _ => {
                    let (binary, type_oid) = self.formats.get(i).copied().unwrap_or((false, 0));
                    !(self.rules.detect_pans && binary && (type_oid == INT8 || type_oid == NUMERIC))
                }
            }
        });
        if !same_length {
            return None;
        }
        let mut row: Option<BytesMut> = None;
        let mut changed = false;
        for (i, r) in ranges.iter().enumerate() {
            let Some(r) = r else { continue };
            if let Some(Some(p)) = self.plan.get(i) {
                let rule = p.rule;
                let b = row.get_or_insert_with(|| BytesMut::from(&frame.bytes[..]));
                let value = &mut b[5 + r.start..5 + r.end];
                if method::apply_in_place(&self.rules.columns[rule].method, value) == Some(true) {
                    self.count_rule(rule);
                    changed = true;
                }
            } else if self.rules.detect_pans {
                let found = match &mut row {
                    Some(b) => {
                        pan::mask_pans_in_place(&mut b[5 + r.start..5 + r.end], Keep::First6Last4)
                    }
                    None => match pan::first_pan(&body[r.clone()]) {
                        Some(at) => {
                            let b = row.insert(BytesMut::from(&frame.bytes[..]));
                            pan::mask_pans_in_place_from(
                                &mut b[5 + r.start..5 + r.end],
                                at,
                                Keep::First6Last4,
                            )
                        }
                        None => 0,
                    },
                };
                self.detected += found as u64;
                changed |= found > 0;
            }
        }
        // A masked column whose value had nothing to hide (no digit): the copy goes.
        Some(row.filter(|_| changed).map(BytesMut::freeze))
    }

    fn apply_rule(
        &self,
        method: &Method,
        value: &[u8],
        binary: bool,
        type_oid: u32,
    ) -> Option<Vec<u8>> {
        if !binary || TEXT_TYPES.contains(&type_oid) {
            return method::apply(method, value, &self.key);
        }
        if type_oid == JSONB && value.first() == Some(&1) {
            let masked = method::apply(method, &value[1..], &self.key)?;
            return Some([&[1u8][..], &masked].concat());
        }
        // A binary value of another type cannot be masked in its own format: NULL.
        None
    }

    /// The content detector on one value: `Some(new)` when it found a PAN.
    fn detect(&mut self, value: &[u8], binary: bool, type_oid: u32) -> Option<Option<Vec<u8>>> {
        if binary && (type_oid == INT8 || type_oid == NUMERIC) {
            // Numbers in binary carry no ASCII digits: decode, and hide a PAN as NULL.
            let digits = binary_number_digits(value, type_oid)?;
            if pan::mask_pans(digits.as_bytes(), Keep::First6Last4).is_some() {
                self.detected += 1;
                return Some(None);
            }
            return None;
        }
        // Same-length masking of ASCII digits keeps text and binary encodings (arrays,
        // records, jsonb) well formed.
        let (masked, n) = pan::mask_pans(value, Keep::First6Last4)?;
        self.detected += n as u64;
        Some(Some(masked))
    }

    /// Masks PANs in COPY data (text and csv; binary COPY is refused by policy).
    pub fn copy_data(&mut self, frame: &Frame) -> Option<Bytes> {
        if !self.rules.detect_pans {
            return None;
        }
        let (masked, n) = pan::mask_pans(frame.body(), Keep::First6Last4)?;
        self.detected += n as u64;
        let mut b = BytesMut::with_capacity(frame.bytes.len());
        b.put_slice(&frame.bytes[..5]);
        b.put_slice(&masked);
        Some(b.freeze())
    }
}

/// Masks PANs in the fields of an ErrorResponse or NoticeResponse (PostgreSQL echoes key
/// values in DETAIL). `None` when nothing changes.
pub fn error_fields(frame: &Frame) -> Option<Bytes> {
    text_after(frame, 0)
}

/// Masks PANs in the text of a message from the server that carries no result columns:
/// NotificationResponse (channel and payload, after the sender's process id),
/// ParameterStatus (name and value), FunctionCallResponse (the result, after its length).
/// The detector masks in place, so lengths and framing stay. `None` when nothing changes.
pub fn message_text(frame: &Frame) -> Option<Bytes> {
    let skip = match frame.tag {
        b'A' | b'V' => 4,
        _ => 0,
    };
    text_after(frame, skip)
}

/// Masks PANs in a frame's body from byte `skip` on (binary fields before it are kept).
fn text_after(frame: &Frame, skip: usize) -> Option<Bytes> {
    let body = frame.body();
    let (masked, _) = pan::mask_pans(body.get(skip..)?, Keep::First6Last4)?;
    let mut b = BytesMut::with_capacity(frame.bytes.len());
    b.put_slice(&frame.bytes[..5 + skip]);
    b.put_slice(&masked);
    Some(b.freeze())
}

/// Whether one value, as sent (text or binary format, of type `type_oid`), holds a card number
/// by the content detector's rules: a PAN among its ASCII digits, or a binary `bigint` or
/// `numeric` whose number is one. Reads only.
pub fn holds_pan(value: &[u8], binary: bool, type_oid: u32) -> bool {
    if binary && (type_oid == INT8 || type_oid == NUMERIC) {
        return binary_number_digits(value, type_oid)
            .is_some_and(|d| pan::first_pan(d.as_bytes()).is_some());
    }
    pan::first_pan(value).is_some()
}

/// The decimal digits of a binary `bigint` (`type_oid` [`INT8`]) or else `numeric` (the
/// integer part, without sign); `None` for a value that does not decode.
pub fn binary_number_digits(value: &[u8], type_oid: u32) -> Option<String> {
    if type_oid == INT8 {
        let v = i64::from_be_bytes(value.try_into().ok()?);
        return Some(v.unsigned_abs().to_string());
    }
    // numeric: ndigits, weight, sign, dscale, then base-10000 digits.
    if value.len() < 8 {
        return None;
    }
    let ndigits = usize::from(u16::from_be_bytes([value[0], value[1]]));
    let weight = i16::from_be_bytes([value[2], value[3]]);
    if value.len() < 8 + ndigits * 2 || weight < 0 {
        return None;
    }
    let mut s = String::new();
    for d in 0..=usize::try_from(weight).ok()? {
        let digit = if d < ndigits {
            u16::from_be_bytes([value[8 + d * 2], value[9 + d * 2]])
        } else {
            0
        };
        if s.is_empty() {
            s.push_str(&digit.to_string());
        } else {
            s.push_str(&format!("{digit:04}"));
        }
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encode;

    fn row(values: &[Option<&[u8]>]) -> Frame {
        encode::frame(b'D', |b| {
            b.put_i16(i16::try_from(values.len()).unwrap());
            for v in values {
                match v {
                    Some(v) => {
                        b.put_i32(i32::try_from(v.len()).unwrap());
                        b.put_slice(v);
                    }
                    None => b.put_i32(-1),
                }
            }
        })
    }

    fn values(bytes: &Bytes) -> Vec<Option<Vec<u8>>> {
        let f = Frame {
            tag: b'D',
            bytes: bytes.clone(),
        };
        backend::data_row(&f)
            .unwrap()
            .into_iter()
            .map(|r| r.map(|r| f.body()[r].to_vec()))
            .collect()
    }

    fn col(name: &str, table_oid: u32, attnum: i16, type_oid: u32, format: i16) -> Column {
        Column {
            name: name.into(),
            table_oid,
            attnum,
            type_oid,
            format,
        }
    }

    #[test]
    fn column_rules_follow_origin_and_detector_backs_them_up() {
        let rules = Arc::new(MaskRules {
            columns: vec![
                ColumnRule {
                    schema: "public".into(),
                    table: "payments".into(),
                    column: "card_number".into(),
                    method: Method::Pan(Keep::First6Last4),
                },
                ColumnRule {
                    schema: "public".into(),
                    table: "customers".into(),
                    column: "email".into(),
                    method: Method::Hash,
                },
            ],
            detect_pans: true,
            allow_uses: vec![],
        });
        let resolved = Arc::new(Resolved::from_rows(
            &rules,
            &[vec![
                Some("16384".into()),
                Some("2".into()),
                Some("public".into()),
                Some("payments".into()),
                Some("card_number".into()),
            ]],
        ));
        let mut s = MaskSession::new(rules, resolved, Arc::new(b"k".to_vec()));
        // `SELECT id, card_number AS c, note FROM payments`: origin keeps the alias masked;
        // the detector catches a PAN in an unrelated column.
        s.result_columns(&[
            col("id", 16384, 1, 20, 0),
            col("c", 16384, 2, 25, 0),
            col("note", 0, 0, 25, 0),
        ]);
        let out = s
            .data_row(&row(&[
                Some(b"1"),
                Some(b"4111111111111111"),
                Some(b"paid with 5500000000000004"),
            ]))
            .unwrap();
        assert_eq!(
            values(&out),
            vec![
                Some(b"1".to_vec()),
                Some(b"411111******1111".to_vec()),
                Some(b"paid with 550000******0004".to_vec())
            ]
        );
        // Nothing to mask: the frame passes unchanged (no allocation of a new row).
        assert!(s.data_row(&row(&[Some(b"2"), Some(b"x"), None])).is_none());
        // Binary result of a text column: same bytes, masked.
        s.result_columns(&[col("card_number", 16384, 2, 25, 1)]);
        assert_eq!(
            values(&s.data_row(&row(&[Some(b"4111111111111111")])).unwrap())[0].as_deref(),
            Some(&b"411111******1111"[..])
        );
        // Binary bigint holding a PAN, origin lost: NULL.
        s.result_columns(&[col("n", 0, 0, 20, 1)]);
        let v = 4_111_111_111_111_111_i64.to_be_bytes();
        assert_eq!(values(&s.data_row(&row(&[Some(&v)])).unwrap())[0], None);
        let counts = s.take_counts();
        assert!(
            counts.contains(&MaskCount {
                column: "public.payments.card_number".into(),
                method: "pan",
                count: 2
            }),
            "{counts:?}"
        );
        assert!(counts.iter().any(|c| c.column == "content" && c.count == 2));
    }

    #[test]
    fn errors_and_notices_are_scrubbed() {
        let e = encode::error_response(&encode::ErrorFields {
            severity: "ERROR",
            code: "23505",
            message: "duplicate key value violates unique constraint",
            detail: Some("Key (card_number)=(4111111111111111) already exists."),
            hint: None,
        });
        let masked = error_fields(&Frame {
            tag: b'E',
            bytes: e,
        })
        .unwrap();
        let f = Frame {
            tag: b'E',
            bytes: masked,
        };
        let fields = backend::error_fields(&f).unwrap();
        assert!(fields.contains(&(b'D', "Key (card_number)=(411111******1111) already exists.")));
    }

    #[test]
    fn notifications_keep_their_sender_and_lose_their_pans() {
        // Process id 0x31323334 is "1234" in ASCII: it must stay a process id, not digits.
        let n = encode::frame(b'A', |b| {
            b.put_u32(0x3132_3334);
            encode::cstr(b, "cards");
            encode::cstr(b, "4111111111111111 declined");
        });
        let masked = message_text(&n).unwrap();
        assert_eq!(masked.len(), n.bytes.len(), "in place: framing stays");
        assert_eq!(&masked[5..9], b"1234");
        assert_eq!(&masked[9..], b"cards\x00411111******1111 declined\x00");
        let s = encode::frame(b'S', |b| {
            encode::cstr(b, "application_name");
            encode::cstr(b, "4111111111111111");
        });
        assert!(message_text(&s).unwrap().ends_with(b"411111******1111\0"));
        let clean = encode::frame(b'S', |b| {
            encode::cstr(b, "TimeZone");
            encode::cstr(b, "UTC");
        });
        assert_eq!(message_text(&clean), None);
    }

    #[test]
    fn catalog_query_quotes_names() {
        let rules = MaskRules {
            columns: vec![ColumnRule {
                schema: "pub'lic".into(),
                table: "t".into(),
                column: "c".into(),
                method: Method::Null,
            }],
            ..MaskRules::default()
        };
        assert!(
            rules
                .catalog_query()
                .unwrap()
                .contains("('pub''lic', 't', 'c')")
        );
        assert!(MaskRules::default().catalog_query().is_none());
    }
}
