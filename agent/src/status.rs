//! The agent's state as `pgwarden status` shows it: one typed snapshot that the daemon builds,
//! the control socket carries, the CLI prints and the metrics endpoint renders its gauges from.
//!
//! Plain data only, importing nothing of the crate: the layers that own the state (sessions,
//! approvals, tags, the journal, the kernel side) are mirrored here field for field, and the
//! daemon converts. The JSON is a contract (the e2e suite and the README read it): the field
//! names, nesting and optional-field rules are those the agent has always sent, and
//! `tests::golden_round_trip` holds them.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything `pgwarden status` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The agent process.
    pub agent: Agent,
    /// Where cgroup2 is mounted.
    pub cgroup2_root: PathBuf,
    /// Bound TCP listen addresses.
    pub listen: Vec<SocketAddr>,
    /// Intercepted TCP destinations, as the config writes them.
    pub intercept: Vec<String>,
    /// Unix socket interception.
    pub unix: Unix,
    /// Listeners opened in tagged workloads' own network namespaces.
    pub namespaces: Vec<Namespace>,
    /// Attached kernel programs (none in listen-only mode).
    pub attached: Vec<AttachPoint>,
    /// The kernel programs' counters by name (empty in listen-only mode).
    pub counters: BTreeMap<String, u64>,
    /// The config's workloads.
    pub workloads: Vec<Workload>,
    /// Tagged cgroups.
    pub tagged: Vec<Tagged>,
    /// cgroup paths tagged ahead of their creation (the kernel's sticky map).
    pub sticky_paths: Vec<String>,
    /// Live sessions.
    pub sessions: Vec<Session>,
    /// Statements waiting for approval and open grants.
    pub approvals: Approvals,
    /// Read budgets in use: rows sent in the window, per workload and rule.
    #[serde(default)]
    pub budgets: Vec<crate::budget::Use>,
    /// The audit journal.
    pub audit: Audit,
    /// The running policy.
    pub policy: Policy,
}

/// The agent process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    /// Process id.
    pub pid: u32,
    /// pgwarden's version.
    pub version: String,
    /// Start, seconds since the epoch.
    pub started: u64,
    /// Whether connects are redirected by the kernel programs.
    pub mode: Mode,
}

/// How clients reach the agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The kernel programs redirect tagged workloads' connects.
    #[default]
    Redirect,
    /// No eBPF: clients connect to the listen address themselves.
    ListenOnly,
}

impl Mode {
    /// The name status prints: `redirect`, `listen-only`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Redirect => "redirect",
            Self::ListenOnly => "listen-only",
        }
    }
}

/// Unix socket interception.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unix {
    /// In words: `redirect`, `refuse (listen.unix: null)`, `off (--tcp-only): ...`,
    /// `off (listen-only)`.
    pub state: String,
    /// What the kernel lacks, when `--tcp-only` turned interception off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
    /// The rules in force, when the Unix socket programs are loaded.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<UnixRules>,
}

/// The Unix socket rules the kernel programs apply.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixRules {
    /// The agent's Unix listener (`@...`: abstract), when bound.
    pub listen: Option<String>,
    /// Socket directories or paths whose connects are intercepted.
    pub intercept: Vec<PathBuf>,
    /// Sockets a tagged workload may still reach directly.
    pub allow: Vec<PathBuf>,
}

/// The listeners of one foreign network namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    /// The namespace (nsfs inode).
    pub netns: u64,
    /// A tagged process seen in it.
    pub pid: u32,
    /// What is bound in it.
    pub listen: Vec<String>,
}

/// An attached kernel program.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachPoint {
    /// Program name in the object.
    pub program: String,
    /// Hook.
    pub hook: String,
    /// Where: a cgroup directory or a tracepoint.
    pub target: String,
}

/// A workload of the config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// Its name.
    pub name: String,
    /// systemd unit globs.
    pub systemd_unit: Vec<String>,
    /// cgroup path globs.
    pub cgroup: Vec<String>,
}

/// A tagged cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tagged {
    /// cgroup id.
    pub id: u64,
    /// Path relative to the cgroup2 root.
    pub path: String,
    /// Workload name.
    pub workload: String,
    /// Why it is tagged.
    pub source: TagSource,
}

/// Why a cgroup is tagged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "pattern", rename_all = "snake_case")]
pub enum TagSource {
    /// The `user.pgwarden.workload` xattr on the directory.
    Xattr,
    /// A `systemd_unit` glob of the config.
    SystemdUnit(String),
    /// A `cgroup` glob of the config.
    Cgroup(String),
}

/// A live session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Session id.
    pub id: String,
    /// Workload name.
    pub workload: String,
    /// Who (absent in listen-only mode, where the kernel recorded nothing).
    pub identity: Option<Identity>,
    /// The client's address as the interceptor sees it.
    pub client: String,
    /// The interceptor address the client landed on.
    pub listen: String,
    /// The real server the client asked for.
    pub server: String,
    /// Startup parameters.
    pub db: Db,
    /// Whether the client hop is TLS.
    pub client_tls: bool,
    /// Whether the server hop is TLS.
    pub server_tls: bool,
    /// The local address of pgwarden's own connection to the server.
    pub upstream_local: Option<SocketAddr>,
    /// Start, seconds since the epoch.
    pub started: u64,
}

/// Who is behind a session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Workload name.
    pub workload: String,
    /// cgroup path relative to the cgroup2 root.
    pub cgroup: Option<String>,
    /// cgroup id.
    pub cgroup_id: u64,
    /// systemd unit owning the cgroup.
    pub unit: Option<String>,
    /// Process id (tgid) that called connect().
    pub pid: u32,
    /// Thread id that called connect().
    pub tid: u32,
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// User name of `uid`.
    pub user: Option<String>,
    /// Executable path.
    pub exe: Option<String>,
    /// Thread command name at connect().
    pub comm: String,
    /// The client's network namespace, when not the agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
    /// The container id its cgroup names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// A session's startup parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Db {
    /// `user`.
    pub user: String,
    /// `database`.
    pub database: String,
    /// `application_name`.
    pub application_name: Option<String>,
    /// `options`.
    pub options: Option<String>,
}

/// Statements waiting for approval and open grants (also the `approvals list` reply).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approvals {
    /// Held statements.
    pub pending: Vec<Pending>,
    /// Open grants.
    pub grants: Vec<Grant>,
}

/// A statement held for approval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Request id.
    pub id: u64,
    /// The rule that holds it.
    pub rule: ApprovalRule,
    /// Workload.
    pub workload: String,
    /// Session id.
    pub session: String,
    /// Statement text (card numbers masked).
    pub statement: String,
    /// The statement normalised (literals replaced).
    #[serde(default)]
    pub normalized: String,
    /// Why it waits.
    #[serde(default)]
    pub reason: Option<String>,
    /// Process behind it.
    pub pid: Option<u32>,
    /// Its executable.
    pub exe: Option<String>,
    /// The process's uid.
    #[serde(default)]
    pub uid: Option<u32>,
    /// Its user name.
    #[serde(default)]
    pub process_user: Option<String>,
    /// The systemd unit owning its cgroup.
    #[serde(default)]
    pub unit: Option<String>,
    /// Its cgroup.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// When it was held, seconds since the epoch.
    pub requested: u64,
    /// When it expires, seconds since the epoch.
    pub expires: u64,
}

/// An approval rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRule {
    /// Rule id.
    pub id: String,
    /// Who may approve.
    pub approvers: Vec<String>,
    /// How long a request waits before it expires.
    pub timeout: Duration,
    /// Longest grant an approver may open.
    pub max_grant: Option<Duration>,
    /// The rule's reason.
    #[serde(default)]
    pub reason: Option<String>,
    /// The role an approved statement runs as (the rule's `run_as`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
}

/// An open grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Grant id.
    pub id: u64,
    /// Workload it covers.
    pub workload: String,
    /// Rule it passes.
    pub rule: String,
    /// The rule's approvers (who may revoke it).
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Until, seconds since the epoch.
    pub until: u64,
    /// Who opened it.
    pub by: Caller,
    /// Their comment.
    pub comment: Option<String>,
}

/// Who decided: a local user (SO_PEERCRED) or an approver over HTTP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// uid, for a local user.
    pub uid: Option<u32>,
    /// User or approver name, if known.
    pub user: Option<String>,
    /// Group names.
    pub groups: Vec<String>,
    /// How they authenticated: `peercred`, `token` or `header`.
    #[serde(default)]
    pub auth: String,
    /// The HTTP peer, for an approver over HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
}

/// The audit journal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    /// The journal file.
    pub path: PathBuf,
    /// Durability mode.
    pub mode: AuditMode,
    /// `seq` of the last record written (0: none yet).
    pub last_seq: u64,
    /// `hash` of the last record written.
    pub last_hash: String,
    /// Records waiting to be written.
    pub queue_depth: u64,
    /// Records written since the journal was opened.
    pub records_written: u64,
    /// Failed writes.
    pub write_errors: u64,
    /// Which records are mirrored to journald.
    pub journald: JournaldMirror,
    /// Records journald did not get.
    pub journald_errors: u64,
    /// Records dropped because the async queue was full.
    pub dropped: u64,
    /// The last write error, if the journal has not written successfully since.
    pub last_error: Option<String>,
    /// Times the live file was found unlinked, renamed, replaced, truncated or with another
    /// mode (each recorded by an `audit.reopen` or `audit.gap`).
    #[serde(default)]
    pub reopens: u64,
    /// What was last found done to it.
    #[serde(default)]
    pub last_reopen: Option<String>,
    /// Rotations since the agent started.
    #[serde(default)]
    pub rotations: u64,
    /// Rotated files compressed since the agent started.
    #[serde(default)]
    pub archived: u64,
    /// Compressions that failed.
    #[serde(default)]
    pub archive_errors: u64,
    /// Rotated files deleted by the configured retention.
    #[serde(default)]
    pub retention_files: u64,
    /// Records in them.
    #[serde(default)]
    pub retention_records: u64,
    /// The last deletion.
    #[serde(default)]
    pub last_retention: Option<String>,
    /// Free bytes on the journal's file system when last looked at.
    #[serde(default)]
    pub free_bytes: u64,
    /// The collectors records are forwarded to (`audit.forward`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward: Vec<Forward>,
}

/// One `audit.forward` target.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    /// Its name.
    pub name: String,
    /// `syslog` or `http`.
    pub kind: String,
    /// Address or URL.
    pub destination: String,
    /// `rfc5424`, `ocsf` or `jsonl`.
    pub format: String,
    /// Last seq the collector acknowledged.
    pub delivered_seq: u64,
    /// Records written but not acknowledged yet (`last_seq` − `delivered_seq`).
    pub lag: u64,
    /// `ok` or `failing`.
    pub state: String,
    /// Why it fails, while it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Records acknowledged since the agent started.
    pub sent: u64,
    /// Failed attempts since the agent started.
    pub failures: u64,
    /// Records it reached that no journal file held any more.
    pub missing: u64,
}

/// How durable an audit append is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditMode {
    /// On disk before the statement proceeds.
    #[default]
    Strict,
    /// Queued.
    Async,
    /// No journal.
    Off,
}

/// Which journal records go to journald too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JournaldMirror {
    /// Every record.
    #[default]
    All,
    /// Every record but `query` and `query.done`.
    Events,
    /// None.
    Off,
}

/// The running policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Bumped on every reload.
    pub version: u64,
    /// The policy files and their hashes.
    pub files: Vec<PolicyFile>,
}

/// A loaded policy file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyFile {
    /// Its path.
    pub path: PathBuf,
    /// Its SHA-256, hex.
    pub sha256: String,
}

#[cfg(test)]
mod tests;
