//! Prometheus metrics (`metrics.listen` in the config): sessions, statements by decision and
//! workload, masked values, approvals, audit queue and errors, statement latency, and the
//! kernel programs' redirect counters. Text exposition format on `GET /metrics`.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tracing::{info, warn};

/// The agent's state at a scrape, as the daemon reads it.
pub struct Scrape {
    /// Live sessions.
    pub sessions: usize,
    /// Statements waiting for approval.
    pub approvals_pending: usize,
    /// Open grants.
    pub grants_open: usize,
    /// The journal's counters: (name, help, value).
    pub audit: Vec<(&'static str, &'static str, u64)>,
    /// The kernel programs' counters, when loaded.
    pub redirect: Option<Vec<(&'static str, u64)>>,
}

/// What renders the exposition text on each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Upper bounds of the statement latency histogram, seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0, 10.0,
];

/// Counters the sessions update.
#[derive(Default)]
pub struct Metrics {
    /// Workload -> decision -> count (looked up by `&str`: no allocation per statement).
    statements: Mutex<BTreeMap<String, BTreeMap<&'static str, u64>>>,
    masked: Mutex<BTreeMap<String, u64>>,
    latency: [AtomicU64; BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
    latency_count: AtomicU64,
}

impl Metrics {
    /// A statement decision (`allow`, `deny`, `hold`, `mask`).
    pub fn statement(&self, workload: &str, decision: &'static str) {
        let mut m = self
            .statements
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(by) = m.get_mut(workload) {
            *by.entry(decision).or_insert(0) += 1;
        } else {
            m.insert(workload.to_owned(), BTreeMap::from([(decision, 1)]));
        }
    }

    /// Values masked for a workload.
    pub fn masked(&self, workload: &str, n: u64) {
        if n > 0 {
            let mut m = self.masked.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(c) = m.get_mut(workload) {
                *c += n;
            } else {
                m.insert(workload.to_owned(), n);
            }
        }
    }

    /// A statement's time from sending to ReadyForQuery.
    pub fn latency(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.latency_count.fetch_add(1, Ordering::Relaxed);
    }
}

/// The exposition text.
pub fn render(m: &Metrics, scrape: &Scrape) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP pgwarden_sessions Live intercepted sessions.\n# TYPE pgwarden_sessions gauge"
    );
    let _ = writeln!(out, "pgwarden_sessions {}", scrape.sessions);
    let _ = writeln!(
        out,
        "# HELP pgwarden_statements_total Statements by workload and decision.\n# TYPE pgwarden_statements_total counter"
    );
    for (w, by) in m
        .statements
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
    {
        for (d, n) in by {
            let _ = writeln!(
                out,
                "pgwarden_statements_total{{workload=\"{}\",decision=\"{d}\"}} {n}",
                escape(w)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP pgwarden_masked_values_total Values masked, by workload.\n# TYPE pgwarden_masked_values_total counter"
    );
    for (w, n) in m
        .masked
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
    {
        let _ = writeln!(
            out,
            "pgwarden_masked_values_total{{workload=\"{}\"}} {n}",
            escape(w)
        );
    }
    let _ = writeln!(
        out,
        "# HELP pgwarden_approvals_pending Statements waiting for approval.\n# TYPE pgwarden_approvals_pending gauge"
    );
    let _ = writeln!(
        out,
        "pgwarden_approvals_pending {}",
        scrape.approvals_pending
    );
    let _ = writeln!(
        out,
        "# HELP pgwarden_grants_open Open approval grants.\n# TYPE pgwarden_grants_open gauge"
    );
    let _ = writeln!(out, "pgwarden_grants_open {}", scrape.grants_open);
    {
        for (name, help, value) in &scrape.audit {
            let _ = writeln!(
                out,
                "# HELP pgwarden_audit_{name} {help}\n# TYPE pgwarden_audit_{name} gauge\npgwarden_audit_{name} {value}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP pgwarden_statement_seconds Time from a statement sent to the server to its ReadyForQuery.\n# TYPE pgwarden_statement_seconds histogram"
    );
    let mut cumulative = 0;
    for (i, b) in BUCKETS.iter().enumerate() {
        cumulative += m.latency[i].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "pgwarden_statement_seconds_bucket{{le=\"{b}\"}} {cumulative}"
        );
    }
    cumulative += m.latency[BUCKETS.len()].load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "pgwarden_statement_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
    );
    let sum = f64::from(
        u32::try_from(m.latency_sum_us.load(Ordering::Relaxed) / 1000).unwrap_or(u32::MAX),
    ) / 1000.0;
    let _ = writeln!(out, "pgwarden_statement_seconds_sum {sum}");
    let _ = writeln!(
        out,
        "pgwarden_statement_seconds_count {}",
        m.latency_count.load(Ordering::Relaxed)
    );
    if let Some(counters) = &scrape.redirect {
        let _ = writeln!(
            out,
            "# HELP pgwarden_redirect_total The kernel programs' counters.\n# TYPE pgwarden_redirect_total counter"
        );
        for (name, v) in counters {
            let _ = writeln!(out, "pgwarden_redirect_total{{event=\"{name}\"}} {v}");
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `GET /metrics` on `listener` until the agent stops.
pub async fn serve(render: Render, listener: TcpListener) {
    if let Ok(a) = listener.local_addr() {
        info!(listen = %a, "metrics endpoint ready");
    }
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let render = Arc::clone(&render);
        tokio::spawn(async move {
            let mut req = [0u8; 1024];
            let n = match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut req)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let head = String::from_utf8_lossy(&req[..n]);
            let (status, body) = if head.starts_with("GET /metrics ") || head.starts_with("GET / ")
            {
                ("200 OK", render())
            } else {
                ("404 Not Found", "not found\n".to_owned())
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = sock.write_all(reply.as_bytes()).await {
                warn!("metrics: {e}");
            }
        });
    }
}
