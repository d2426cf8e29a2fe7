//! What a session remembers about the protocol conversation: prepared statements, portals and
//! their result formats, the current row description, the transaction status, and where
//! pgwarden's own answers (denials) go in the stream of the server's replies. Pure logic.
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use crate::wire::backend::Column;

/// A bound portal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Portal {
    /// The statement it was bound from.
    pub statement: String,
    /// Result format codes from Bind.
    pub result_formats: Vec<i16>,
}

/// A denial waiting for its place in the server's replies. The statement was replaced by a
/// marker the server rejects as a syntax error naming `token`; that error is swapped for
/// `error`, so the client sees pgwarden's refusal exactly where PostgreSQL would have put an
/// error, with PostgreSQL's own transaction and discard-until-Sync behaviour.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Marker {
    token: String,
    segment: u64,
    error: Bytes,
}

/// Per-session protocol state.
#[derive(Debug)]
pub struct ProtoState {
    statements: HashMap<String, Arc<str>>,
    portals: HashMap<String, Portal>,
    /// Result columns of the statement or portal last described by the server.
    pub row_description: Option<Arc<[Column]>>,
    /// Transaction status from the last ReadyForQuery.
    pub txn_status: u8,
    markers: VecDeque<Marker>,
    /// Messages sent that each end in one ReadyForQuery (Query, Sync, FunctionCall), plus the
    /// one after authentication.
    segments_sent: u64,
    ready_seen: u64,
    marker_seq: u64,
    marker_prefix: String,
}

impl ProtoState {
    /// Fresh state; `marker_prefix` makes marker tokens unique to the session.
    pub fn new(marker_prefix: &str) -> Self {
        Self {
            statements: HashMap::new(),
            portals: HashMap::new(),
            row_description: None,
            txn_status: b'I',
            markers: VecDeque::new(),
            segments_sent: 1,
            ready_seen: 0,
            marker_seq: 0,
            marker_prefix: marker_prefix.to_owned(),
        }
    }

    /// A Parse was sent: `name` now holds `sql` (the unnamed one is replaced).
    pub fn parsed(&mut self, name: &str, sql: &str) {
        self.statements.insert(name.to_owned(), Arc::from(sql));
    }

    /// The text of a prepared statement.
    pub fn statement(&self, name: &str) -> Option<&Arc<str>> {
        self.statements.get(name)
    }

    /// A Bind was sent.
    pub fn bound(&mut self, portal: &str, statement: &str, result_formats: Vec<i16>) {
        self.portals.insert(
            portal.to_owned(),
            Portal {
                statement: statement.to_owned(),
                result_formats,
            },
        );
    }

    /// A portal.
    pub fn portal(&self, name: &str) -> Option<&Portal> {
        self.portals.get(name)
    }

    /// A Close was sent.
    pub fn closed(&mut self, kind: u8, name: &str) {
        if kind == b'S' {
            self.statements.remove(name);
        } else {
            self.portals.remove(name);
        }
    }

    /// A message that ends in one ReadyForQuery was sent.
    pub fn segment_sent(&mut self) {
        self.segments_sent += 1;
    }

    /// A denial: returns the marker SQL to send in the statement's place, and remembers the
    /// error to show instead of the server's complaint about it.
    pub fn deny(&mut self, error: Bytes) -> String {
        self.marker_seq += 1;
        let token = format!("pgwarden_denied_{}_{}", self.marker_prefix, self.marker_seq);
        self.markers.push_back(Marker {
            token: token.clone(),
            segment: self.segments_sent,
            error,
        });
        token
    }

    /// The server sent ReadyForQuery with `status`.
    pub fn ready(&mut self, status: u8) {
        let index = self.ready_seen;
        self.ready_seen += 1;
        self.txn_status = status;
        // Markers of finished segments whose error never came (an earlier error in the same
        // pipeline made the server skip them, as it would have skipped the real statement).
        while self.markers.front().is_some_and(|m| m.segment <= index) {
            self.markers.pop_front();
        }
        if status == b'I' {
            // Portals do not survive their transaction.
            self.portals.retain(|name, _| name.is_empty());
        }
    }

    /// The server reported an error with primary message `message`: pgwarden's own error
    /// when it is about a marker.
    pub fn replace_error(&mut self, message: &str) -> Option<Bytes> {
        if self.markers.is_empty() {
            return None;
        }
        let pos = self
            .markers
            .iter()
            .position(|m| message.contains(m.token.as_str()))?;
        self.markers.remove(pos).map(|m| m.error)
    }

    /// Whether denials are waiting for their place.
    pub fn has_markers(&self) -> bool {
        !self.markers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_find_their_place_or_lapse() {
        let mut s = ProtoState::new("s1");
        s.ready(b'I'); // after authentication
        // Query 1 denied.
        let token = s.deny(Bytes::from_static(b"E1"));
        s.segment_sent();
        assert!(token.starts_with("pgwarden_denied_s1_"));
        assert_eq!(s.replace_error("syntax error at or near \"x\""), None);
        assert_eq!(
            s.replace_error(&format!("syntax error at or near \"{token}\"")),
            Some(Bytes::from_static(b"E1"))
        );
        s.ready(b'I');
        assert!(!s.has_markers());

        // Pipeline: Parse denied after a statement that fails; the server skips the marker.
        let _ = s.deny(Bytes::from_static(b"E2"));
        s.segment_sent(); // Sync
        s.segment_sent(); // the next Query
        assert_eq!(s.replace_error("division by zero"), None);
        s.ready(b'I');
        assert!(
            !s.has_markers(),
            "the lapsed marker is dropped at its segment's ReadyForQuery"
        );
    }

    #[test]
    fn tracks_statements_and_portals() {
        let mut s = ProtoState::new("x");
        s.parsed("a", "select 1");
        s.bound("", "a", vec![1]);
        s.bound("p", "a", vec![0]);
        assert_eq!(&**s.statement("a").unwrap(), "select 1");
        assert_eq!(s.portal("").unwrap().result_formats, vec![1]);
        s.ready(b'T');
        assert!(s.portal("p").is_some());
        s.ready(b'I');
        assert!(s.portal("p").is_none());
        s.closed(b'S', "a");
        assert!(s.statement("a").is_none());
    }
}
