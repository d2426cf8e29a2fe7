//! Records as canonical bytes, built where they happen and sealed by the writer.
//!
//! A [`Prepared`] record is its canonical form ([`json`]'s module doc) without
//! `prev_hash`, `seq` and `hash`, plus the two byte offsets where the writer puts `prev_hash`
//! and `seq` when it chains the record ([`Prepared::seal`]). Every record has an `event`
//! (sorting before `prev_hash`) and a `time` (sorting after `seq`), so both offsets always fall
//! between two entries.
//!
//! Two ways in: [`Prepared::from_record`] for any [`Record`] (through `serde_json::Value`: for
//! the rare events), and [`statement_record`] for the per-statement events of a session
//! (`query`, `query.done`, `query.denied`), which splices the session's fields serialized
//! once ([`SessionFields`]) and the statement's serialized once per statement shape
//! ([`statement_json`]) around the few fields that change ([`splice`]). A test holds the two
//! to the same bytes. A `query.done` may carry what the workload saw under `detail.result`
//! ([`result`]: the sample of its rows, scrubbed, and their digest).
//!
//! The stored line is the sealed canonical form with `,"hash":"…"` before its closing brace:
//! verification recomputes the canonical form from the parsed line, so the position of `hash`
//! does not matter to it.
pub mod json;
pub mod result;
pub mod splice;
#[cfg(test)]
mod tests;

use std::cell::RefCell;

use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

pub use json::{canonical_json, hash_value, push_str, push_value};
use json::{push_key, push_u64};
pub use splice::{SessionFields, StatementFields, statement_json, statement_record};

use super::record::{Event, Record};

/// A record ready to be chained: canonical bytes without `prev_hash`, `seq` and `hash`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    /// What happened.
    pub event: Event,
    /// Whether it reports a refusal (journald priority 4).
    pub denial: bool,
    bytes: Vec<u8>,
    at_prev: usize,
    at_seq: usize,
}

/// A record once chained: its line (with `hash` and the newline), `seq` and `hash`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// The stored line, newline included.
    pub line: Vec<u8>,
    /// Its place in the chain.
    pub seq: u64,
    /// Its hash (lowercase hex).
    pub hash: String,
}

impl Prepared {
    /// Any record: card numbers scrubbed from its free-text fields, then serialized.
    pub fn from_record(rec: &Record) -> Prepared {
        let mut r = rec.clone();
        r.scrub_pans();
        let Ok(Value::Object(mut map)) = serde_json::to_value(&r) else {
            // A Record always serializes to an object (string keys, no failing serializer).
            unreachable!("a record serializes to a JSON object")
        };
        for k in ["seq", "prev_hash", "hash"] {
            map.remove(k);
        }
        Self::from_map(r.event, r.is_denial(), &map)
    }

    fn from_map(event: Event, denial: bool, map: &Map<String, Value>) -> Prepared {
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort();
        let mut bytes = Vec::with_capacity(512);
        let (mut at_prev, mut at_seq) = (None, None);
        bytes.push(b'{');
        for (i, k) in keys.into_iter().enumerate() {
            if i > 0 {
                bytes.push(b',');
            }
            if at_prev.is_none() && k.as_str() > "prev_hash" {
                at_prev = Some(bytes.len());
            }
            if at_seq.is_none() && k.as_str() > "seq" {
                at_seq = Some(bytes.len());
            }
            push_str(&mut bytes, k);
            bytes.push(b':');
            push_value(&mut bytes, &map[k]);
        }
        bytes.push(b'}');
        // `time` (after `seq`) is never absent from a record, so neither offset is.
        let end = bytes.len() - 1;
        Prepared {
            event,
            denial,
            bytes,
            at_prev: at_prev.unwrap_or(end),
            at_seq: at_seq.unwrap_or(end),
        }
    }

    /// Chains the record: `prev_hash` and `seq` put in place, the SHA-256 of that canonical
    /// form computed, and the line written with `hash` last.
    pub fn seal(&self, seq: u64, prev_hash: &str) -> Sealed {
        let mut line = Vec::with_capacity(self.bytes.len() + prev_hash.len() + 120);
        let hash = self.seal_into(seq, prev_hash, &mut line);
        Sealed {
            line,
            seq,
            hash: hash.as_str().to_owned(),
        }
    }

    /// [`Prepared::seal`] into the end of `out` (the writer's batch buffer: no allocation per
    /// record); the record's hash.
    pub fn seal_into(&self, seq: u64, prev_hash: &str, out: &mut Vec<u8>) -> Hash {
        let b = &self.bytes;
        let start = out.len();
        out.reserve(b.len() + prev_hash.len() + 120);
        out.extend_from_slice(&b[..self.at_prev]);
        push_key(out, "prev_hash");
        push_str(out, prev_hash);
        out.push(b',');
        out.extend_from_slice(&b[self.at_prev..self.at_seq]);
        push_key(out, "seq");
        push_u64(out, seq);
        out.push(b',');
        out.extend_from_slice(&b[self.at_seq..]);
        let hash = Hash::of(&out[start..]);
        out.pop();
        out.extend_from_slice(b",\"hash\":\"");
        out.extend_from_slice(hash.as_str().as_bytes());
        out.extend_from_slice(b"\"}\n");
        hash
    }

    /// Gives the record's buffer to this thread's spares, once it is sealed: the next record
    /// this thread builds ([`statement_record`]) is built in it. The journal does this for records
    /// nobody waits for; an inline appender's record comes back to the appender's thread with
    /// its answer, whoever sealed it ([`Prepared::into_spare`]), so a session's records need
    /// no allocation.
    pub fn recycle(self) {
        keep_spare(self.bytes);
    }

    /// The record's buffer, once it is sealed, for the thread that built it to keep
    /// ([`keep_spare`]): a record another thread sealed goes back to its builder this way.
    pub fn into_spare(self) -> Vec<u8> {
        self.bytes
    }

    /// The canonical bytes without the chain fields (tests, sizes).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

thread_local! {
    /// Buffers of records this thread sealed, for the records it builds next.
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Most spare buffers a thread keeps, and the largest one kept (a record with a big statement
/// or result sample is not kept around).
const KEEP_BUFFERS: usize = 16;
const KEEP_BUFFER_BYTES: usize = 8192;

/// Keeps `b` (a sealed record's buffer) among this thread's spares, for the records it builds
/// next.
pub fn keep_spare(b: Vec<u8>) {
    if b.capacity() <= KEEP_BUFFER_BYTES {
        SPARE.with_borrow_mut(|spare| {
            if spare.len() < KEEP_BUFFERS {
                spare.push(b);
            }
        });
    }
}

/// An empty buffer with room for `len` bytes: a spare one of this thread when there is one.
fn buffer(len: usize) -> Vec<u8> {
    let mut b = SPARE.with_borrow_mut(Vec::pop).unwrap_or_default();
    b.clear();
    b.reserve(len);
    b
}

/// A SHA-256 as 64 lowercase hex digits, kept inline (sealing a record allocates nothing for
/// its hash).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Hash([u8; 64]);

impl Hash {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Hash {
        let mut out = [0u8; 64];
        // 32 bytes always fit 64 hex digits.
        let _ = hex::encode_to_slice(Sha256::digest(bytes), &mut out);
        Hash(out)
    }

    /// The hex digits.
    pub fn as_str(&self) -> &str {
        // Hex digits are ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lowercase hex SHA-256 of `bytes`. `hex::encode` builds its string a `char` at a time, which
/// showed in the profile of every sealed record; this encodes into a buffer at once.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Hash::of(bytes).as_str().to_owned()
}
