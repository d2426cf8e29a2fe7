//! The points where policy, masking and audit plug into a session, without touching framing:
//! the startup check, then per session: start, each statement (decided before anything
//! reaches the server), row descriptions, data rows, copy data, command completion, errors
//! and the end.
use std::sync::Arc;

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
    /// Its shape ([`crate::sqltext::Text::shape`]), when the relay read it already.
    pub shape: Option<&'a str>,
}

/// A refusal: the client gets an ErrorResponse with this SQLSTATE and message, nothing
/// reaches the server, and the session stays usable.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Denied {
    /// The rule that denied, e.g. `class.ddl`.
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
    /// Hold it until a person allowed by the rule approves it.
    Hold(std::sync::Arc<crate::approval::Rule>),
}

/// What the policy saw in the last statement it decided, for the audit record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecisionInfo {
    /// Command tags, e.g. `SELECT`.
    pub command: String,
    /// Tables touched, qualified.
    pub objects: Vec<String>,
    /// SHA-256 of the policy file decided under.
    pub policy_hash: String,
    /// Whether results of this statement pass through masking.
    pub masked: bool,
}

/// The layers, agent-wide.
pub trait Hooks: Send + Sync {
    /// Checks a session's startup (its `options`) before the server is contacted.
    fn startup(&self, _meta: &SessionMeta) -> Verdict {
        Verdict::Allow
    }
    /// The per-session part of the layers.
    fn open(&self, meta: &Arc<SessionMeta>) -> Box<dyn SessionHooks>;
    /// The policies were reloaded.
    fn policy_reloaded(&self) {}
}

/// The layers, for one session. Every method has a do-nothing default.
pub trait SessionHooks: Send {
    /// The session passed startup and authentication.
    fn session_start(&mut self) {}
    /// A statement is about to be sent.
    fn statement(&mut self, _st: &Statement<'_>) -> Verdict {
        Verdict::Allow
    }
    /// SQL to run on the server after authentication, before the client gets the session
    /// (e.g. resolving masked columns); its results go to [`SessionHooks::setup_result`].
    fn setup_query(&mut self) -> Option<String> {
        None
    }
    /// The setup query's rows (text values), or the server's error. `Err` ends the session
    /// (fail closed).
    fn setup_result(
        &mut self,
        _rows: Vec<Vec<Option<String>>>,
        _error: Option<String>,
    ) -> Result<(), String> {
        Ok(())
    }
    /// A result is about to stream with these columns, formats as they will be sent.
    fn result_columns(&mut self, _cols: &[Column]) {}
    /// A result row; `Some` replaces it.
    fn data_row(&mut self, _row: &Frame) -> Option<Bytes> {
        None
    }
    /// COPY data from the server; `Some` replaces it.
    fn copy_data(&mut self, _data: &Frame) -> Option<Bytes> {
        None
    }
    /// A command completed with `tag`.
    fn command_complete(&mut self, _tag: &str) {}
    /// The server reported an error or notice; `Some` replaces it.
    fn error(&mut self, _frame: &Frame) -> Option<Bytes> {
        None
    }
    /// The session ended.
    fn session_end(&mut self) {}
    /// The last statement's decision details.
    fn last_decision(&self) -> Option<DecisionInfo> {
        None
    }
    /// The version of the rules the last statement was decided under (changes on reload):
    /// what a session caches about its statements' decisions is stale when it changes.
    fn policy_version(&self) -> u64 {
        0
    }
    /// Values masked since the last call: (column, method, count).
    fn take_masked(&mut self) -> Vec<crate::mask::MaskCount> {
        Vec::new()
    }
}

/// No layer plugged in: relay everything (listen-only development and tests of framing).
pub struct Relay;

struct RelaySession;

impl SessionHooks for RelaySession {}

impl Hooks for Relay {
    fn open(&self, _meta: &Arc<SessionMeta>) -> Box<dyn SessionHooks> {
        Box::new(RelaySession)
    }
}
