//! What the workload saw, for profiles with `record_results`: a statement's result rows as
//! they are sent to the client (after masking), the first of them kept as a sample within
//! the profile's row and byte caps, all of them counted and hashed, for the `detail.result`
//! of its `query.done` record (the format, scrubbing and digest are
//! [`crate::audit::canon::result`]'s).
//!
//! Only statements of such profiles carry a [`ResultCapture`] (`InFlight::results`): for the
//! others the relay pays one branch per row and nothing else.
use std::fmt;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use crate::audit::canon::result::{self as sample, ResultParts, SetParts};
use crate::policy::RecordResults;
use crate::wire::backend::{Column, data_row_values};

/// One result set of the sample.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Set {
    /// `[…]` of the column names.
    columns: Vec<u8>,
    /// The rows sampled, each `[…]`, comma-separated (the brackets around are added last).
    rows: Vec<u8>,
    /// Rows the set sent.
    total: u64,
    copy: bool,
}

/// A statement's result as it is sent: sample, count and digest.
#[derive(Clone)]
pub struct ResultCapture {
    rows_cap: u64,
    bytes_cap: usize,
    /// The columns of the result set streaming now (formats as sent).
    columns: Arc<[Column]>,
    /// A result set was announced and has sent no row yet: its first row begins it.
    fresh: bool,
    /// The sets sampled; the rows go to the last one while `current` says so.
    sets: Vec<Set>,
    current: bool,
    /// Result sets that sent rows (sampled or not).
    seen: u64,
    /// The last set sent CopyData.
    copying: bool,
    sampled: u64,
    /// JSON bytes the sample takes (column names and rows).
    used: usize,
    /// No more rows are sampled (a cap was reached).
    full: bool,
    /// The byte cap left something out.
    truncated: bool,
    total: u64,
    unmasked: u64,
    digest: Sha256,
    /// One row's encoding, reused.
    scratch: Vec<u8>,
}

impl fmt::Debug for ResultCapture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResultCapture")
            .field("sets", &self.sets.len())
            .field("sampled", &self.sampled)
            .field("total", &self.total)
            .field("truncated", &self.truncated)
            .field("unmasked", &self.unmasked)
            .finish_non_exhaustive()
    }
}

impl PartialEq for ResultCapture {
    fn eq(&self, o: &Self) -> bool {
        self.sets == o.sets
            && self.total == o.total
            && self.truncated == o.truncated
            && self.unmasked == o.unmasked
            && self.digest.clone().finalize() == o.digest.clone().finalize()
    }
}

impl Eq for ResultCapture {}

impl ResultCapture {
    /// A capture under `limits` (validated when the policy was loaded).
    pub fn new(limits: RecordResults) -> Self {
        Self {
            rows_cap: limits.rows,
            bytes_cap: usize::try_from(limits.bytes).unwrap_or(usize::MAX),
            columns: Arc::from(Vec::new()),
            fresh: true,
            sets: Vec::new(),
            current: false,
            seen: 0,
            copying: false,
            sampled: 0,
            used: 0,
            full: false,
            truncated: false,
            total: 0,
            unmasked: 0,
            digest: Sha256::new(),
            scratch: Vec::new(),
        }
    }

    /// A result set is about to stream with these columns.
    pub fn columns(&mut self, cols: Arc<[Column]>) {
        self.columns = cols;
        self.fresh = true;
        self.copying = false;
    }

    /// A result set sends its first row: sampled from here, room permitting.
    fn begin(&mut self, copy: bool) {
        self.fresh = false;
        self.copying = copy;
        self.seen += 1;
        self.current = false;
        if self.full {
            return;
        }
        let mut columns = Vec::with_capacity(16 * self.columns.len() + 2);
        columns.push(b'[');
        if !copy {
            for (i, c) in self.columns.iter().enumerate() {
                if i > 0 {
                    columns.push(b',');
                }
                sample::push_name(&mut columns, &c.name);
            }
        }
        columns.push(b']');
        if self.used + columns.len() > self.bytes_cap {
            self.full = true;
            self.truncated = true;
            return;
        }
        self.used += columns.len();
        self.sets.push(Set {
            columns,
            rows: Vec::new(),
            total: 0,
            copy,
        });
        self.current = true;
    }

    /// Counts and hashes one message sent (a DataRow or CopyData, whole).
    fn sent(&mut self, message: &[u8]) {
        self.digest.update(message);
        self.total += 1;
        if self.current
            && let Some(s) = self.sets.last_mut()
        {
            s.total += 1;
        }
    }

    /// Keeps the row in `scratch` when it fits; past the byte cap sampling stops.
    fn keep_scratch(&mut self) {
        let Some(set) = self.sets.last_mut().filter(|_| self.current) else {
            return;
        };
        let comma = usize::from(!set.rows.is_empty());
        if self.used + comma + self.scratch.len() > self.bytes_cap {
            self.full = true;
            self.truncated = true;
            return;
        }
        if comma == 1 {
            set.rows.push(b',');
        }
        set.rows.extend_from_slice(&self.scratch);
        self.used += comma + self.scratch.len();
        self.sampled += 1;
        if self.sampled >= self.rows_cap {
            self.full = true;
        }
    }

    /// A DataRow sent to the client (`message`: the whole message, as sent).
    pub fn data_row(&mut self, message: &[u8]) {
        if self.fresh || self.copying {
            self.begin(false);
        }
        self.sent(message);
        let values = data_row_values(message.get(5..).unwrap_or_default());
        let format = |cols: &[Column], i: usize| {
            cols.get(i)
                .map_or((false, 0), |c| (c.format == 1, c.type_oid))
        };
        if self.full || !self.current {
            // Not sampled: only whether the policy let a card number through.
            for (i, v) in values.enumerate() {
                let (binary, type_oid) = format(&self.columns, i);
                if v.is_some_and(|v| crate::mask::holds_pan(v, binary, type_oid)) {
                    self.unmasked += 1;
                }
            }
            return;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.push(b'[');
        for (i, v) in values.enumerate() {
            if i > 0 {
                scratch.push(b',');
            }
            let Some(v) = v else {
                sample::push_null(&mut scratch);
                continue;
            };
            let (binary, type_oid) = format(&self.columns, i);
            let scrubbed = if binary {
                sample::push_binary(&mut scratch, v, type_oid)
            } else {
                sample::push_text(&mut scratch, v)
            };
            if scrubbed || crate::mask::holds_pan(v, binary, type_oid) {
                self.unmasked += 1;
            }
        }
        scratch.push(b']');
        self.scratch = scratch;
        self.keep_scratch();
    }

    /// A CopyData of COPY TO STDOUT sent to the client (the whole message): one row of one
    /// value.
    pub fn copy_data(&mut self, message: &[u8]) {
        if self.fresh || !self.copying {
            self.begin(true);
        }
        self.sent(message);
        let data = message.get(5..).unwrap_or_default();
        if self.full || !self.current {
            if crate::mask::holds_pan(data, false, 0) {
                self.unmasked += 1;
            }
            return;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.push(b'[');
        if sample::push_text(&mut scratch, data) || crate::mask::holds_pan(data, false, 0) {
            self.unmasked += 1;
        }
        scratch.push(b']');
        self.scratch = scratch;
        self.keep_scratch();
    }

    /// Nothing of what was captured reached the client after all (a write undone and
    /// refused, whose results were held): the capture starts over, empty.
    pub fn unsent(&mut self) {
        let limits = RecordResults {
            rows: self.rows_cap,
            bytes: u64::try_from(self.bytes_cap).unwrap_or(u64::MAX),
        };
        let columns = Arc::clone(&self.columns);
        *self = Self::new(limits);
        self.columns = columns;
    }

    /// The canonical JSON of `detail.result`; `None` when no row was sent.
    pub fn finish(&self) -> Option<Box<[u8]>> {
        if self.total == 0 {
            return None;
        }
        let rows: Vec<Vec<u8>> = self
            .sets
            .iter()
            .map(|s| {
                let mut r = Vec::with_capacity(s.rows.len() + 2);
                r.push(b'[');
                r.extend_from_slice(&s.rows);
                r.push(b']');
                r
            })
            .collect();
        let sets: Vec<SetParts<'_>> = self
            .sets
            .iter()
            .zip(&rows)
            .map(|(s, r)| SetParts {
                columns: &s.columns,
                rows: r,
                total_rows: s.total,
                copy: s.copy,
            })
            .collect();
        let digest = (self.unmasked == 0).then(|| hex::encode(self.digest.clone().finalize()));
        Some(sample::result_json(&ResultParts {
            sets: &sets,
            several: self.seen > 1,
            total_rows: self.total,
            sha256: digest.as_deref(),
            truncated: self.truncated,
            unmasked_pans: self.unmasked,
        }))
    }
}

#[cfg(test)]
mod tests;
