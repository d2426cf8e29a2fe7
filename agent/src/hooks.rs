//! The points where policy, masking and audit plug into a session, without touching framing:
//! session start/end, each statement (decided before anything reaches the server), row
//! descriptions, data rows, copy data, command completion and errors.
use bytes::Bytes;

use crate::session::SessionMeta;
use crate::wire::Frame;
use crate::wire::backend::Column;

/// Where a statement came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatementKind {
    /// A simple Query message (may hold several statements).
    Query,
    /// An extended-protocol Parse.
    Parse,
    /// A fast-path FunctionCall (no SQL text).
    FunctionCall,
}

/// A statement about to be sent to the server.
#[derive(Clone, Copy, Debug)]
pub struct Statement<'a> {
    /// Its origin.
    pub kind: StatementKind,
    /// SQL text (empty for FunctionCall).
    pub sql: &'a str,
    /// Prepared statement name for Parse ("" unnamed).
    pub name: &'a str,
}

/// A refusal: the client gets an ErrorResponse with this SQLSTATE and message, nothing
/// reaches the server, and the session stays usable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    /// The rule that denied, e.g. `ddl`.
    pub rule: String,
    /// Why, for the client and the audit record.
    pub reason: String,
    /// SQLSTATE, e.g. 42501.
    pub sqlstate: &'static str,
}

impl Denied {
    /// The message the client sees: `pgwarden: <rule>: <reason>`.
    pub fn message(&self) -> String {
        format!("pgwarden: {}: {}", self.rule, self.reason)
    }
}

/// What a statement hook decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send it.
    Allow,
    /// Refuse it.
    Deny(Denied),
}

/// The extension points. Every method has a do-nothing default.
pub trait Hooks: Send + Sync {
    /// The session passed startup and authentication.
    fn session_start(&self, _s: &SessionMeta) {}
    /// A statement is about to be sent.
    fn statement(&self, _s: &SessionMeta, _st: &Statement<'_>) -> Verdict {
        Verdict::Allow
    }
    /// The server described a result's columns.
    fn row_description(&self, _s: &SessionMeta, _cols: &[Column]) {}
    /// A result row; `Some` replaces it.
    fn data_row(&self, _s: &SessionMeta, _row: &Frame) -> Option<Bytes> {
        None
    }
    /// COPY data from the server; `Some` replaces it.
    fn copy_data(&self, _s: &SessionMeta, _data: &Frame) -> Option<Bytes> {
        None
    }
    /// A command completed with `tag`.
    fn command_complete(&self, _s: &SessionMeta, _tag: &str) {}
    /// The server reported an error or notice; `Some` replaces it.
    fn error(&self, _s: &SessionMeta, _frame: &Frame) -> Option<Bytes> {
        None
    }
    /// The session ended.
    fn session_end(&self, _s: &SessionMeta) {}
}

/// No layer plugged in: relay everything.
pub struct Relay;

impl Hooks for Relay {}
