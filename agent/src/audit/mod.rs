//! The audit journal (PCI DSS Req 10): every session, statement, decision and approval as a
//! hash-chained JSON line, fsynced, rotated, mirrored to journald, tailed and verified.
//!
//! Writing: open a [`Journal`] from its settings, an [`AuditConfig`] (the `audit:` section of
//! the agent's configuration, defined in [`config`]), build records with
//! [`Record::new`] and its builder methods, and `append` them:
//!
//! ```no_run
//! # async fn example(cfg: &pgwarden::audit::AuditConfig) -> Result<(), pgwarden::audit::AuditError> {
//! use pgwarden::audit::{Decision, Event, Journal, Record};
//! let journal = Journal::open(cfg)?;
//! let seq = journal
//!     .append(
//!         Record::new(Event::Query)
//!             .session("00000000000000ab")
//!             .workload("payments-mcp")
//!             .statement(journal.statement("SELECT * FROM payments WHERE id = 7"))
//!             .decision(Decision::Allow)
//!             .rule("read.payments"),
//!     )
//!     .await?; // strict mode: an Err means "refuse the statement"
//! # let _ = seq; Ok(()) }
//! ```
//!
//! The parts: the record format in [`record`]; the canonical bytes `hash` covers and the
//! sealing in [`canon`]; record times in [`time`]; statement text and card-number scrubbing in
//! [`redact`]; the writer (group commit, recovery, rotation, checkpoints) in [`writer`]; the
//! mirror in [`journald`]; the chain checks in [`verify`]; `pgwarden audit
//! tail|replay|verify|write-sample` in [`tail`], [`cmd`] and [`sample`]; records as OCSF
//! events and RFC 5424 syslog messages for a SIEM in [`export`]; the settings in
//! [`config`]. The layer depends on nothing above it: the agent's configuration re-exports
//! [`AuditConfig`], and the CLI hands [`cmd::run`] a reader for `--config`.
pub mod canon;
pub mod cmd;
pub mod config;
pub mod cursor;
pub mod export;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod journald;
pub mod record;
pub mod redact;
pub mod sample;
pub mod segments;
pub mod stream;
pub mod tail;
pub mod targets;
pub mod time;
pub mod verify;
pub mod writer;

pub use config::{AuditConfig, AuditMode, JournaldMirror};
pub use record::{
    Actor, Db, Decision, Endpoint, Event, GENESIS_HASH, Masked, Outcome, RECORD_VERSION, Record,
    Statement,
};
pub use writer::{AuditError, AuditStatus, Journal};
