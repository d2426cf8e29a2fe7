//! Journal records as the lines a SIEM reads: the stored JSON line (`jsonl`), an OCSF 1.8.0
//! event ([`ocsf`]) or an RFC 5424 syslog message ([`rfc5424`]); strings only, no I/O.
//!
//! Records of contract v2 name their session's identity (actor, client, server, database)
//! only in its `session.start`, and a `query.done` names its `query` by
//! `detail.statement_no` only: the [`Exporter`] remembers both ([`context`]) and writes each
//! line with them, so that every line stands on its own. Feed it every record in `seq`
//! order; records before the first one to ship go to [`Exporter::learn`].
//!
//! ```
//! use pgwarden::audit::export::{Exporter, Format, Options};
//! use pgwarden::audit::Record;
//!
//! let line = r#"{"event":"agent.start","prev_hash":"00","seq":1,"time":"2026-11-25T05:00:35.123456Z","hash":"ab"}"#;
//! let rec: Record = serde_json::from_str(line).unwrap();
//! let mut syslog = Exporter::new(Format::Rfc5424, Options::default());
//! assert!(syslog.encode(line, &rec).starts_with("<109>1 2026-11-25T05:00:35.123456Z "));
//! assert_eq!(Exporter::new(Format::Jsonl, Options::default()).encode(line, &rec), line);
//! ```
pub mod context;
pub mod ocsf;
pub mod rfc5424;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use super::record::{Event, Outcome, Record};
use context::Context;

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The stored JSON line, unchanged (what the chain hash covers).
    Jsonl,
    /// An OCSF 1.8.0 event: Datastore Activity (6005), or Base Event (0) for the agent's own
    /// events.
    Ocsf,
    /// An RFC 5424 syslog message: key fields as structured data, the stored line as MSG.
    Rfc5424,
}

/// What the formats say of where they come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// This host's name: RFC 5424 HOSTNAME, OCSF `device.hostname` and `metadata.uid`.
    pub hostname: String,
    /// RFC 5424 APP-NAME.
    pub app_name: String,
    /// The private enterprise number in the RFC 5424 SD-ID `pgwarden@<number>`.
    pub enterprise_id: u32,
    /// OCSF `metadata.product.version`.
    pub product_version: String,
}

/// The RFC 5424 SD-ID's enterprise number by default: 32473, reserved for documentation
/// (RFC 5612); set your own registered number where receivers key on it.
pub const DEFAULT_ENTERPRISE_ID: u32 = 32473;

impl Default for Options {
    /// This host's name (`-` when unknown), `pgwarden`, [`DEFAULT_ENTERPRISE_ID`], this
    /// build's version.
    fn default() -> Self {
        Self {
            hostname: host_name(),
            app_name: "pgwarden".into(),
            enterprise_id: DEFAULT_ENTERPRISE_ID,
            product_version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// The kernel's host name, or `-` when it cannot be read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into())
}

/// Turns records into lines of one format, remembering what later records refer to.
pub struct Exporter {
    format: Format,
    options: Options,
    context: Context,
}

impl Exporter {
    /// An exporter to `format` that has seen no record yet.
    pub fn new(format: Format, options: Options) -> Self {
        Self {
            format,
            options,
            context: Context::default(),
        }
    }

    /// The format it writes.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Learns from `rec` without writing it (records before the first one to ship).
    pub fn learn(&mut self, rec: &Record) {
        if self.format != Format::Jsonl {
            self.context.learn(rec);
        }
    }

    /// The line of `rec`, without a trailing newline; `line` is `rec` as stored in the
    /// journal (returned as is by `jsonl`, the MSG of `rfc5424`). Learns from `rec` too.
    pub fn encode(&mut self, line: &str, rec: &Record) -> String {
        let line = line.trim_end_matches(['\n', '\r']);
        match self.format {
            Format::Jsonl => line.to_owned(),
            Format::Ocsf => ocsf::encode(&self.complete(rec), &self.options),
            Format::Rfc5424 => rfc5424::encode(line, &self.complete(rec), &self.options),
        }
    }

    /// `rec` with what its session said before (see [`Context::fill`]), learnt from.
    fn complete(&mut self, rec: &Record) -> Record {
        let full = self.context.fill(rec);
        self.context.learn(rec);
        full
    }
}

/// How much a record matters to whoever watches the journal; each format says it its way
/// (RFC 5424 severity, OCSF `severity_id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Gravity {
    /// Sessions and statements that went their way.
    Routine,
    /// The agent, its policy, approvals and forwarding changing state.
    Notable,
    /// A refusal, or a forwarding target failing.
    Warning,
    /// Records may be missing from the journal (`audit.gap`, `audit.reopen`,
    /// `audit.retention`).
    Loss,
}

impl Gravity {
    /// The gravity of `rec`.
    pub fn of(rec: &Record) -> Self {
        match rec.event {
            Event::AuditGap | Event::AuditReopen | Event::AuditRetention => Gravity::Loss,
            _ if rec.is_denial() => Gravity::Warning,
            Event::AuditForward if rec.outcome == Some(Outcome::Failure) || rec.error.is_some() => {
                Gravity::Warning
            }
            Event::AgentStart
            | Event::AgentStop
            | Event::PolicyReload
            | Event::AuditForward
            | Event::ApprovalRequested
            | Event::ApprovalGranted
            | Event::ApprovalDenied
            | Event::ApprovalExpired
            | Event::ApprovalWithdrawn
            | Event::ApprovalRevoked => Gravity::Notable,
            _ => Gravity::Routine,
        }
    }
}
