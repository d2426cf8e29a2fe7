//! The agent's YAML configuration: its schema and defaults here, each layer's own section
//! is that layer's (`audit:`, `approvals:`, `mask:`, `metrics:`, `tls:`/`upstream:`),
//! re-exported here; loading and the checks whose errors name file:line:column in [`load`].
use std::net::{SocketAddrV4, SocketAddrV6};
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::dest::Destination;

mod load;
pub mod locate;

pub use crate::approval::ApprovalsConfig;
pub use crate::audit::{AuditConfig, AuditMode, JournaldMirror};
pub use crate::mask::MaskConfig;
pub use crate::metrics::MetricsConfig;
pub use crate::tls::{ClientTlsConfig, SslMode, UpstreamConfig};
pub use load::{ConfigError, Invalid, valid_workload_name};

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the interceptor listens.
    #[serde(default)]
    pub listen: ListenConfig,
    /// The control socket the CLI talks to.
    #[serde(default)]
    pub control: ControlConfig,
    /// Destinations whose connects are redirected; default any address, port 5432.
    #[serde(default = "default_intercept")]
    pub intercept: Vec<Destination>,
    /// Unix sockets whose connects are redirected: directories (every `.s.PGSQL.*` socket in
    /// them) or socket paths. Default: the directories a local PostgreSQL uses.
    #[serde(default = "default_intercept_unix")]
    pub intercept_unix: Vec<PathBuf>,
    /// Unix sockets (or directories of them) tagged workloads may still connect to directly;
    /// every other Unix stream connect of a tagged workload is refused. Never a PostgreSQL
    /// socket. Default: the system's own services (journald, nscd, D-Bus, resolved, userdb).
    #[serde(default = "default_unix_allow")]
    pub unix_allow: Vec<PathBuf>,
    /// Workloads and how their cgroups are recognised.
    #[serde(default)]
    pub workloads: Vec<WorkloadConfig>,
    /// cgroup tree watching.
    #[serde(default)]
    pub cgroups: CgroupsConfig,
    /// Listen-only mode (`run --no-redirect`): where to relay clients that connect to the
    /// listen address directly.
    #[serde(default)]
    pub listen_only: ListenOnlyConfig,
    /// TLS toward clients: when given, clients asking for TLS get it (`sslmode=require` works).
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
    /// How pgwarden connects to the real server.
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// Protocol limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Masking settings that are secrets or host facts, not policy.
    #[serde(default)]
    pub mask: MaskConfig,
    /// The audit journal (PCI DSS Req 10).
    #[serde(default)]
    pub audit: AuditConfig,
    /// Where the kernel side keeps its state between runs.
    #[serde(default)]
    pub bpf: BpfConfig,
    /// Shutdown behaviour.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Just-in-time approval notifications.
    #[serde(default)]
    pub approvals: ApprovalsConfig,
    /// The agent's threads.
    #[serde(default)]
    pub runtime: RuntimeConfig,
}

/// How many threads serve sessions.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Threads that run sessions (relay, policy, masking; the audit writer has its own).
    /// 0 (default): one per four CPUs, at least one: pgwarden runs beside the database and
    /// leaves it the rest. One thread runs every session on one event loop, as PgBouncer
    /// does, without hand-offs between threads (measured the fastest on small hosts).
    #[serde(default)]
    pub workers: usize,
}

impl RuntimeConfig {
    /// The number of session threads this host gets.
    pub fn threads(&self) -> usize {
        if self.workers > 0 {
            return self.workers;
        }
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        (cpus / 4).max(1)
    }
}

/// The kernel side's pins.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BpfConfig {
    /// bpffs directory for pinned maps and links. Redirection stays in place while the agent
    /// is down (tagged workloads' connects are refused, never direct); `pgwarden detach`
    /// removes it.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
}

impl Default for BpfConfig {
    fn default() -> Self {
        Self {
            pin_dir: default_pin_dir(),
        }
    }
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/pgwarden")
}

/// What SIGTERM does.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Seconds running statements get to finish before sessions are closed with 57P01.
    #[serde(default = "default_drain")]
    pub drain_seconds: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_seconds: default_drain(),
        }
    }
}

fn default_drain() -> u64 {
    10
}

/// The interceptor's listen addresses. Loopback by default: redirected connects land here.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// IPv4 listen address (receives IPv4 and IPv4-mapped connects); `null` disables it.
    #[serde(default = "default_listen_v4")]
    pub ipv4: Option<SocketAddrV4>,
    /// IPv6 listen address (receives native IPv6 connects); `null` disables it.
    #[serde(default = "default_listen_v6")]
    pub ipv6: Option<SocketAddrV6>,
    /// The Unix listener redirected Unix connects land on: `@name` for the abstract namespace
    /// (reachable from any mount namespace), else a path. Default (`auto`):
    /// `@pgwarden/<ipv4 port>`. `null` disables Unix interception.
    #[serde(default = "default_listen_unix")]
    pub unix: Option<String>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            ipv4: default_listen_v4(),
            ipv6: default_listen_v6(),
            unix: default_listen_unix(),
        }
    }
}

impl ListenConfig {
    /// The Unix listener's name (`@...` abstract), with `auto` resolved; `None`: disabled.
    pub fn unix_name(&self) -> Option<String> {
        let name = self.unix.as_deref()?;
        if name != "auto" {
            return Some(name.to_owned());
        }
        let port = self
            .ipv4
            .map(|a| a.port())
            .or_else(|| self.ipv6.map(|a| a.port()))
            .unwrap_or(0);
        Some(format!("@pgwarden/{port}"))
    }
}

fn default_listen_unix() -> Option<String> {
    Some("auto".to_owned())
}

fn default_unix_allow() -> Vec<PathBuf> {
    [
        "/run/systemd/journal/stdout",
        "/run/systemd/resolve/io.systemd.Resolve",
        "/run/systemd/userdb",
        "/run/dbus/system_bus_socket",
        "/var/run/dbus/system_bus_socket",
        "/run/nscd/socket",
        "/var/run/nscd/socket",
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect()
}

fn default_intercept_unix() -> Vec<PathBuf> {
    ["/var/run/postgresql", "/run/postgresql", "/tmp"]
        .into_iter()
        .map(PathBuf::from)
        .collect()
}

/// The control socket.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Path of the Unix socket (mode 0600, root only).
    #[serde(default = "default_control_socket")]
    pub socket: PathBuf,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            socket: default_control_socket(),
        }
    }
}

/// One workload: a name and the cgroups that belong to it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadConfig {
    /// The workload's name, as audit records and `pgwarden tag --workload` name it.
    pub name: String,
    /// systemd unit globs (`mcp-*.service`): the unit's cgroup and its descendants.
    #[serde(default, deserialize_with = "one_or_many")]
    pub systemd_unit: Vec<String>,
    /// cgroup path globs relative to the cgroup2 root (`*` within a component, `**` across).
    #[serde(default, deserialize_with = "one_or_many")]
    pub cgroup: Vec<String>,
    /// Policy file (relative paths are relative to this config file). Without one, every
    /// statement of the workload is denied.
    #[serde(default)]
    pub policy: Option<PathBuf>,
    /// Profile of the policy file to apply (default: the workload's name).
    #[serde(default)]
    pub profile: Option<String>,
    /// pgwarden logs in to PostgreSQL for this workload with this role and secret; the
    /// workload needs no database password (absent: authentication is relayed as it comes).
    #[serde(default)]
    pub upstream_auth: Option<crate::login::UpstreamAuthConfig>,
}

/// cgroup tree watching.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CgroupsConfig {
    /// Seconds between full rescans of the tree (catches xattrs set behind the agent's back).
    #[serde(default = "default_rescan")]
    pub rescan_seconds: u64,
}

impl Default for CgroupsConfig {
    fn default() -> Self {
        Self {
            rescan_seconds: default_rescan(),
        }
    }
}

fn default_listen_v4() -> Option<SocketAddrV4> {
    Some(SocketAddrV4::new([127, 0, 0, 1].into(), 15432))
}
fn default_listen_v6() -> Option<SocketAddrV6> {
    Some(SocketAddrV6::new(
        std::net::Ipv6Addr::LOCALHOST,
        15432,
        0,
        0,
    ))
}
fn default_control_socket() -> PathBuf {
    PathBuf::from("/run/pgwarden/control.sock")
}
fn default_intercept() -> Vec<Destination> {
    vec![Destination::default_postgres()]
}
fn default_rescan() -> u64 {
    10
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl<'de> Deserialize<'de> for Destination {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Destination::parse(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests;

/// Maximum message sizes; a message over its limit ends the session with an error.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Any message not listed below, bytes.
    #[serde(default = "default_message_bytes")]
    pub message_bytes: usize,
    /// Client messages carrying statements or data (Query, Parse, Bind, CopyData,
    /// FunctionCall), bytes.
    #[serde(default = "default_statement_bytes")]
    pub statement_bytes: usize,
    /// Server messages carrying data (DataRow, CopyData, FunctionCallResponse), bytes.
    #[serde(default = "default_result_bytes")]
    pub result_bytes: usize,
    /// Seconds a client has to finish its startup (TLS handshake and StartupMessage).
    #[serde(default = "default_startup_timeout")]
    pub startup_timeout_seconds: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            message_bytes: default_message_bytes(),
            statement_bytes: default_statement_bytes(),
            result_bytes: default_result_bytes(),
            startup_timeout_seconds: default_startup_timeout(),
        }
    }
}

impl LimitsConfig {
    /// The wire layer's limits.
    pub fn wire(&self) -> crate::wire::Limits {
        crate::wire::Limits {
            default: self.message_bytes,
            frontend_large: self.statement_bytes,
            backend_large: self.result_bytes,
            startup: 10_000,
        }
    }
}

fn default_message_bytes() -> usize {
    1 << 20
}

fn default_statement_bytes() -> usize {
    64 << 20
}

fn default_result_bytes() -> usize {
    1 << 30
}

fn default_startup_timeout() -> u64 {
    30
}

/// Listen-only (development) mode.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenOnlyConfig {
    /// The PostgreSQL server to relay to, `host:port`.
    pub upstream: Option<String>,
    /// Workload name given to listen-only sessions.
    #[serde(default = "default_listen_only_workload")]
    pub workload: String,
}

impl Default for ListenOnlyConfig {
    fn default() -> Self {
        Self {
            upstream: None,
            workload: default_listen_only_workload(),
        }
    }
}

fn default_listen_only_workload() -> String {
    "listen-only".into()
}
