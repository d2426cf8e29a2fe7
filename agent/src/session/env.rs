//! What a session may use of the agent: its limits, TLS on both hops, the journal, approvals,
//! metrics, the live-session registry, origin lookup and the policy. Sessions see this and nothing else of the daemon, which builds it.
use std::sync::Arc;

use super::origin::Origins;
use super::registry::Registry;
use crate::approval::Approvals;
use crate::audit::Journal;
use crate::config::LimitsConfig;
use crate::metrics::Metrics;
use crate::policy::Engine;
use crate::tls::UpstreamConfig;

/// A session's environment.
pub struct SessionEnv {
    /// Message size limits and the startup timeout.
    pub limits: LimitsConfig,
    /// How the real server is reached.
    pub upstream: UpstreamConfig,
    /// TLS toward servers, unless `sslmode: disable`.
    pub upstream_tls: Option<tokio_rustls::TlsConnector>,
    /// TLS toward clients, when configured.
    pub client_tls: Option<tokio_rustls::TlsAcceptor>,
    /// The audit journal.
    pub journal: Journal,
    /// Statements held for approval, and open grants.
    pub approvals: Arc<Approvals>,
    /// Read budgets of every workload, shared by its sessions.
    pub budgets: Arc<crate::budget::Budgets>,
    /// Prometheus counters.
    pub metrics: Arc<Metrics>,
    /// Live sessions and their cancel keys.
    pub registry: Arc<Registry>,
    /// Where connections come from.
    pub origins: Origins,
    /// The policy (reloadable): each version carries its masking rules and their resolution.
    pub policy: Arc<Engine>,
    /// Workloads pgwarden logs in for (`upstream_auth`).
    pub logins: Arc<crate::login::Logins>,
    /// Key of the `hash` mask method.
    pub hash_key: Arc<Vec<u8>>,
    /// Becomes true when live sessions must close (after SIGTERM and the drain time).
    pub terminating: tokio::sync::watch::Receiver<bool>,
}

impl SessionEnv {
    /// Resolves when the agent closes live sessions.
    pub async fn terminated(&self) {
        let mut rx = self.terminating.clone();
        let _ = rx.wait_for(|t| *t).await;
    }
}
