//! The `audit:` section: where the journal goes, how durable an append is, and what is
//! mirrored to journald.
use std::path::PathBuf;

use serde::Deserialize;

/// How durable an audit append is before `append` returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditMode {
    /// The record is on disk (fsynced) before the statement proceeds; a journal that cannot be
    /// written makes `append` fail, and the statement is refused.
    #[default]
    Strict,
    /// The record is queued; a full queue drops records and counts them in an `audit.gap`.
    Async,
    /// No journal at all: nothing is recorded (PCI DSS Req 10 is not met). For measuring the
    /// relay alone; the agent says so loudly when it starts.
    Off,
}

/// Which journal records go to journald too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JournaldMirror {
    /// Every record.
    #[default]
    All,
    /// Every record but `query` and `query.done` (journald spends tens of microseconds of CPU
    /// on each entry: at thousands of statements per second, ship the file instead). Denials,
    /// approvals, sessions, reloads, gaps and checkpoints (whose hashes anchor the chain) still
    /// go.
    Events,
    /// None.
    Off,
}

impl JournaldMirror {
    /// Whether anything is mirrored.
    pub fn on(self) -> bool {
        self != Self::Off
    }

    /// Whether records of `event` are mirrored.
    pub fn mirrors(self, event: crate::audit::Event) -> bool {
        use crate::audit::Event;
        match self {
            Self::All => true,
            Self::Events => !matches!(event, Event::Query | Event::QueryDone),
            Self::Off => false,
        }
    }
}

impl<'de> Deserialize<'de> for JournaldMirror {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(Self::All),
            Raw::Bool(false) => Ok(Self::Off),
            Raw::Name(n) => match n.as_str() {
                "all" => Ok(Self::All),
                "events" => Ok(Self::Events),
                "off" => Ok(Self::Off),
                other => Err(serde::de::Error::custom(format!(
                    "audit.journald: unknown value `{other}` (all, events, off; or true/false)"
                ))),
            },
        }
    }
}

/// The audit journal: hash-chained JSON lines, rotated by size, mirrored to journald.
/// Every key is optional (`#[serde(default)]` takes the missing ones from `Default`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// The journal file; rotated files are `PATH.1` (newest) to `PATH.<keep_files>`.
    pub path: PathBuf,
    /// `strict` (default), `async`, or `off`.
    pub mode: AuditMode,
    /// Records the `async` queue holds before it drops.
    pub queue: usize,
    /// Size at which the file is rotated, bytes.
    pub max_bytes: u64,
    /// Rotated files kept (0: never delete any).
    pub keep_files: usize,
    /// fsync after each batch (turning it off trades durability for speed).
    pub fsync: bool,
    /// Which records are mirrored to journald: `all` (default; also `true`), `events`
    /// (everything but the per-statement `query` and `query.done`), `off` (also `false`).
    pub journald: JournaldMirror,
    /// journald's native socket.
    pub journald_socket: PathBuf,
    /// An `audit.checkpoint` record after this many records (0: never by count).
    pub checkpoint_every: u64,
    /// An `audit.checkpoint` record at least this often, seconds (0: never by time).
    pub checkpoint_seconds: u64,
    /// Keep statement literals (card numbers still scrubbed); default: `$n` placeholders.
    pub keep_literals: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/log/pgwarden/audit.jsonl"),
            mode: AuditMode::Strict,
            queue: 10_000,
            max_bytes: 64 << 20,
            keep_files: 10,
            fsync: true,
            journald: JournaldMirror::All,
            journald_socket: PathBuf::from("/run/systemd/journal/socket"),
            checkpoint_every: 1000,
            checkpoint_seconds: 300,
            keep_literals: false,
        }
    }
}
