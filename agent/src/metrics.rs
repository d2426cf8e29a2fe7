//! Prometheus metrics (`metrics.listen` in the config): sessions, statements by decision and
//! workload, masked values, approvals, audit queue and errors, statement latency, and the
//! kernel programs' redirect counters, in a `prometheus-client` registry served on `GET /metrics`.
//!
//! The sessions count statements, masked values and latency here as they go; everything else
//! is read from the agent's [`Status`] snapshot at each scrape, so `/metrics` and
//! `pgwarden status` cannot disagree.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::status::{Audit, Status};

mod serve;

pub use serve::{Snapshot, serve};

/// The Prometheus endpoint (off unless `listen` is given).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of `GET /metrics`, e.g. `127.0.0.1:9187`.
    pub listen: Option<std::net::SocketAddr>,
}

/// Upper bounds of the statement latency histogram, seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0, 10.0,
];

/// Where the snapshot has one of the journal's gauges.
type AuditField = fn(&Audit) -> u64;

/// The journal's gauges: `pgwarden_audit_<name>`, help, and where the snapshot has it.
const AUDIT: [(&str, &str, AuditField); 11] = [
    (
        "last_seq",
        "Sequence number of the last record written",
        |a| a.last_seq,
    ),
    ("queue_depth", "Records waiting to be written", |a| {
        a.queue_depth
    }),
    ("records_written", "Records written since start", |a| {
        a.records_written
    }),
    ("write_errors", "Failed writes since start", |a| {
        a.write_errors
    }),
    (
        "journald_errors",
        "Failed journald sends since start",
        |a| a.journald_errors,
    ),
    ("dropped", "Records dropped by a full async queue", |a| {
        a.dropped
    }),
    (
        "reopens",
        "Times the live journal file was found unlinked, renamed, replaced, truncated or changed",
        |a| a.reopens,
    ),
    ("rotations", "Rotations since start", |a| a.rotations),
    ("archived", "Rotated files compressed since start", |a| {
        a.archived
    }),
    (
        "retention_deleted_files",
        "Rotated files deleted by the configured retention",
        |a| a.retention_files,
    ),
    (
        "free_bytes",
        "Free bytes on the journal's file system when last looked at",
        |a| a.free_bytes,
    ),
];

/// The exposition format of a scrape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4: what a client that asks for nothing in particular gets.
    Prometheus,
    /// OpenMetrics 1.0 text, for a scraper that asks for it (`Accept`): counter families
    /// are named without `_total` in `# TYPE`, samples keep it, and the body ends in `# EOF`.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for.
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::Prometheus,
        }
    }

    /// Its `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatementLabels {
    workload: String,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoginLabels {
    workload: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkloadLabels {
    workload: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

type U64Gauge = Gauge<u64, AtomicU64>;

/// Where the snapshot has one of a forwarding target's gauges.
type ForwardField = fn(&crate::status::Forward) -> u64;

/// The forwarding targets' gauges: `pgwarden_audit_forward_<name>{target}`.
const FORWARD: [(&str, &str, ForwardField); 4] = [
    (
        "lag",
        "Records written but not yet acknowledged by the collector",
        |f| f.lag,
    ),
    (
        "delivered_seq",
        "Last seq the collector acknowledged",
        |f| f.delivered_seq,
    ),
    (
        "failing",
        "1 while the collector does not take records",
        |f| u64::from(f.state == "failing"),
    ),
    ("failures", "Failed delivery attempts since start", |f| {
        f.failures
    }),
];

/// The gauges set from the snapshot at each scrape.
#[derive(Default)]
struct Gauges {
    sessions: U64Gauge,
    approvals_pending: U64Gauge,
    grants_open: U64Gauge,
    audit: [U64Gauge; AUDIT.len()],
    forward: [Family<TargetLabels, U64Gauge>; FORWARD.len()],
}

impl Gauges {
    fn set(&self, s: &Status) {
        let n = |len: usize| u64::try_from(len).unwrap_or(u64::MAX);
        self.sessions.set(n(s.sessions.len()));
        self.approvals_pending.set(n(s.approvals.pending.len()));
        self.grants_open.set(n(s.approvals.grants.len()));
        for (g, (_, _, read)) in self.audit.iter().zip(AUDIT) {
            g.set(read(&s.audit));
        }
        for (family, (_, _, read)) in self.forward.iter().zip(FORWARD) {
            for f in &s.audit.forward {
                family
                    .get_or_create(&TargetLabels {
                        target: f.name.clone(),
                    })
                    .set(read(f));
            }
        }
    }
}

/// The kernel programs' counters as the last snapshot had them: `pgwarden_redirect_total`,
/// absent when no programs are loaded. A collector, because they are counted in the kernel
/// and only read here.
#[derive(Debug, Default)]
struct KernelCounters(Mutex<BTreeMap<String, u64>>);

impl Collector for KernelCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counters = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if counters.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "pgwarden_redirect",
            "The kernel programs' counters.",
            None,
            MetricType::Counter,
        )?;
        for (event, v) in counters.iter() {
            ConstCounter::new(*v).encode(family.encode_family(&[("event", event.as_str())])?)?;
        }
        Ok(())
    }
}

/// The agent's metrics: counters the sessions update, and the registry a scrape encodes.
pub struct Metrics {
    registry: Registry,
    statements: Family<StatementLabels, Counter>,
    /// Workload -> (decision, its counter in `statements`): looked up by `&str`, so counting
    /// a statement allocates nothing once its workload and decision were seen.
    statement_counters: RwLock<HashMap<String, Vec<(&'static str, Counter)>>>,
    masked: Family<WorkloadLabels, Counter>,
    /// Workload -> its counter in `masked`, as `statement_counters`.
    masked_counters: RwLock<HashMap<String, Counter>>,
    latency: Histogram,
    /// pgwarden's own logins (`upstream_auth`), by workload and result (once per session:
    /// a map lookup on the connection's setup is cheap enough).
    logins: Family<LoginLabels, Counter>,
    gauges: Gauges,
    kernel: Arc<KernelCounters>,
    /// Held from setting the gauges to the end of encoding: each scrape shows one snapshot.
    scraping: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        let statements = Family::<StatementLabels, Counter>::default();
        let masked = Family::<WorkloadLabels, Counter>::default();
        let latency = Histogram::new(BUCKETS);
        let logins = Family::<LoginLabels, Counter>::default();
        let gauges = Gauges::default();
        let kernel = Arc::new(KernelCounters::default());
        // Help texts without the final full stop: the registry adds it.
        let mut r = Registry::default();
        r.register(
            "pgwarden_sessions",
            "Live intercepted sessions",
            gauges.sessions.clone(),
        );
        r.register(
            "pgwarden_statements",
            "Statements by workload and decision",
            statements.clone(),
        );
        r.register(
            "pgwarden_masked_values",
            "Values masked, by workload",
            masked.clone(),
        );
        r.register(
            "pgwarden_upstream_logins",
            "pgwarden's own logins for workloads with upstream_auth, by result (ok, refused: \
             before the server was asked; failed: the server or the exchange refused it)",
            logins.clone(),
        );
        r.register(
            "pgwarden_approvals_pending",
            "Statements waiting for approval",
            gauges.approvals_pending.clone(),
        );
        r.register(
            "pgwarden_grants_open",
            "Open approval grants",
            gauges.grants_open.clone(),
        );
        for (g, (name, help, _)) in gauges.audit.iter().zip(AUDIT) {
            r.register(format!("pgwarden_audit_{name}"), help, g.clone());
        }
        for (g, (name, help, _)) in gauges.forward.iter().zip(FORWARD) {
            r.register(format!("pgwarden_audit_forward_{name}"), help, g.clone());
        }
        r.register_with_unit(
            "pgwarden_statement",
            "Time from a statement sent to the server to its ReadyForQuery",
            Unit::Seconds,
            latency.clone(),
        );
        r.register_collector(Box::new(Arc::clone(&kernel)));
        Self {
            registry: r,
            statements,
            statement_counters: RwLock::default(),
            masked,
            masked_counters: RwLock::default(),
            latency,
            logins,
            gauges,
            kernel,
            scraping: Mutex::new(()),
        }
    }
}

impl Metrics {
    /// A statement decision (`allow`, `deny`, `hold`, `mask`).
    pub fn statement(&self, workload: &str, decision: &'static str) {
        {
            let known = self
                .statement_counters
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some((_, c)) = known
                .get(workload)
                .and_then(|by| by.iter().find(|(d, _)| *d == decision))
            {
                c.inc();
                return;
            }
        }
        let c = self.statements.get_or_create_owned(&StatementLabels {
            workload: workload.to_owned(),
            decision,
        });
        c.inc();
        let mut known = self
            .statement_counters
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let by = known.entry(workload.to_owned()).or_default();
        if !by.iter().any(|(d, _)| *d == decision) {
            by.push((decision, c));
        }
    }

    /// One of pgwarden's own logins: `ok`, `refused` (not attempted: wrong user or server,
    /// unreadable secret) or `failed` (the server or the exchange refused it).
    pub fn login(&self, workload: &str, result: &'static str) {
        self.logins
            .get_or_create(&LoginLabels {
                workload: workload.to_owned(),
                result,
            })
            .inc();
    }

    /// Values masked for a workload.
    pub fn masked(&self, workload: &str, n: u64) {
        if n == 0 {
            return;
        }
        if let Some(c) = self
            .masked_counters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(workload)
        {
            c.inc_by(n);
            return;
        }
        let c = self.masked.get_or_create_owned(&WorkloadLabels {
            workload: workload.to_owned(),
        });
        c.inc_by(n);
        self.masked_counters
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(workload.to_owned())
            .or_insert(c);
    }

    /// A statement's time from sending to ReadyForQuery.
    pub fn latency(&self, d: Duration) {
        self.latency.observe(d.as_secs_f64());
    }

    /// The exposition text for a scrape, its gauges read from `status`.
    pub fn render(&self, status: &Status, format: Format) -> Result<String, std::fmt::Error> {
        let _one = self.scraping.lock().unwrap_or_else(PoisonError::into_inner);
        self.gauges.set(status);
        status
            .counters
            .clone_into(&mut self.kernel.0.lock().unwrap_or_else(PoisonError::into_inner));
        let mut out = String::new();
        match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
