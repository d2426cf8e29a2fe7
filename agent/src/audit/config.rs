//! The audit journal's settings, the `audit:` section of the agent's configuration: where the
//! journal is, how durable an append is, rotation, compression, retention, the free-space
//! floor, where the chain's head is kept, checkpoints, the journald mirror and the collectors
//! records are forwarded to.
//!
//! The audit layer owns them so that it depends on nothing above it; the configuration file's
//! schema (`config.rs`) re-exports them.
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use super::record::Event;

/// How durable an audit append is before `append` returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditMode {
    /// The record is in the journal (written to the file, and fsynced too with `fsync: true`)
    /// before the statement proceeds; a journal that cannot be written makes `append` fail,
    /// and the statement is refused.
    #[default]
    Strict,
    /// The record is queued; a full queue drops records and counts them in an `audit.gap`.
    Async,
    /// No journal at all: nothing is recorded (PCI DSS Req 10 is not met). For measuring the
    /// relay alone; the agent says so loudly when it starts.
    Off,
}

/// Which journal records go to journald too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JournaldMirror {
    /// Every record.
    All,
    /// Every record but `query` and `query.done` (journald spends tens of microseconds of CPU
    /// on each entry: at thousands of statements per second, ship the file instead). Denials,
    /// approvals, sessions, reloads, gaps and checkpoints (whose hashes anchor the chain) still
    /// go. The default.
    #[default]
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
    pub fn mirrors(self, event: Event) -> bool {
        match self {
            Self::All => true,
            Self::Events => !matches!(event, Event::Query | Event::QueryDone),
            Self::Off => false,
        }
    }
}

impl<'de> Deserialize<'de> for JournaldMirror {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
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
                other => Err(de::Error::custom(format!(
                    "audit.journald: unknown value `{other}` (all, events, off; or true/false)"
                ))),
            },
        }
    }
}

/// Opt-in deletion of rotated files. Empty (the default): pgwarden never deletes a record.
/// Each deletion first writes an `audit.retention` record (the files, their seq range, the
/// last hash) and logs it; `pgwarden audit verify` then accepts a chain that starts there.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Rotated files kept at most (0: no limit).
    pub max_files: usize,
    /// Bytes of rotated files (as stored, compressed) kept at most (0: no limit).
    pub max_bytes: u64,
    /// Rotated files whose last write is older than this are deleted (`400d`, `13w`; none:
    /// no limit). PCI DSS 10.5.1 asks for 12 months, three of them at hand.
    #[serde(deserialize_with = "duration_opt")]
    pub max_age: Option<Duration>,
}

impl RetentionConfig {
    /// Whether any limit is set.
    pub fn limited(&self) -> bool {
        self.max_files > 0 || self.max_bytes > 0 || self.max_age.is_some()
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    let parsed = humantime::parse_duration(&text)
        .map_err(|e| de::Error::custom(format!("`{text}`: {e} (e.g. 100ms, 1s)")))?;
    if parsed.is_zero() || parsed > Duration::from_secs(60) {
        return Err(de::Error::custom(format!(
            "`{text}`: the group fsync interval must be more than 0 and at most 60s"
        )));
    }
    Ok(parsed)
}

fn duration_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    humantime::parse_duration(&text)
        .map(Some)
        .map_err(|e| de::Error::custom(format!("`{text}`: {e} (e.g. 400d, 13w, 90d12h)")))
}

/// The audit journal: hash-chained JSON lines, rotated by size into zstd-compressed files
/// named by their seq range, mirrored to journald. Every key is optional
/// (`#[serde(default)]` takes the missing ones from `Default`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// The live journal file; rotated files are `PATH.<first seq>-<last seq>` (`.zst` once
    /// compressed), next to it.
    pub path: PathBuf,
    /// `strict` (default), `async`, or `off`.
    pub mode: AuditMode,
    /// Records the `async` queue holds before it drops.
    pub queue: usize,
    /// Size at which the live file is rotated, bytes.
    pub max_bytes: u64,
    /// Compress rotated files with zstd (default: true).
    pub compress: bool,
    /// Opt-in deletion of rotated files (default: none, ever).
    pub retention: RetentionConfig,
    /// Deprecated: `retention.max_files` (kept so that older configurations load).
    pub keep_files: Option<usize>,
    /// Free bytes the journal's file system must keep: below it, appends fail as on a full
    /// disk (strict mode: statements are refused). Nothing is deleted to make room.
    pub min_free_bytes: u64,
    /// Where the chain's head (last seq and hash) is kept, outside the journal's directory,
    /// so that seq and the chain go on even if the journal's directory is emptied.
    pub state_dir: PathBuf,
    /// fsync each batch before its statements are forwarded (`true`: survives a power loss,
    /// at the cost of the disk's flush per batch). Default `false`: each record is written to
    /// the file (the page cache) before its statement is forwarded, which survives an agent
    /// crash, and fsynced within `fsync_interval` (a kernel crash or power loss can take that
    /// much).
    pub fsync: bool,
    /// With `fsync: false`, how often written records are fsynced (group fsync), e.g. `100ms`.
    #[serde(deserialize_with = "duration")]
    pub fsync_interval: Duration,
    /// Which records are mirrored to journald: `events` (default: everything but the
    /// per-statement `query` and `query.done`), `all` (also `true`), `off` (also `false`).
    pub journald: JournaldMirror,
    /// journald's native socket.
    pub journald_socket: PathBuf,
    /// An `audit.checkpoint` record after this many records (0: never by count).
    pub checkpoint_every: u64,
    /// An `audit.checkpoint` record at least this often, seconds (0: never by time).
    pub checkpoint_seconds: u64,
    /// Keep statement literals (card numbers still scrubbed); default: `$n` placeholders.
    pub keep_literals: bool,
    /// Collectors every record is forwarded to, each from its own persistent cursor
    /// (default: none; see [`super::targets`]).
    pub forward: Vec<super::targets::ForwardTarget>,
}

impl AuditConfig {
    /// Rotated files kept at most (`retention.max_files`, or the deprecated `keep_files`).
    pub fn max_files(&self) -> usize {
        match (self.retention.max_files, self.keep_files) {
            (0, Some(n)) => n,
            (n, _) => n,
        }
    }

    /// The retention limits in force (the deprecated `keep_files` folded in).
    pub fn retention(&self) -> RetentionConfig {
        RetentionConfig {
            max_files: self.max_files(),
            ..self.retention.clone()
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/log/pgwarden/audit.jsonl"),
            mode: AuditMode::Strict,
            queue: 10_000,
            max_bytes: 64 << 20,
            compress: true,
            retention: RetentionConfig::default(),
            keep_files: None,
            min_free_bytes: 256 << 20,
            state_dir: PathBuf::from("/var/lib/pgwarden"),
            fsync: false,
            fsync_interval: Duration::from_millis(100),
            journald: JournaldMirror::Events,
            journald_socket: PathBuf::from("/run/systemd/journal/socket"),
            checkpoint_every: 1000,
            checkpoint_seconds: 300,
            keep_literals: false,
            forward: Vec::new(),
        }
    }
}
