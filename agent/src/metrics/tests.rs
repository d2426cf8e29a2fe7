//! The exposition (every name the README lists and the e2e suite scrapes) and the HTTP server.
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::serve::{Timeouts, serve_with};
use super::{Format, Metrics};
use crate::status::{self, Status};

fn snapshot() -> Status {
    let mut s = Status::default();
    s.sessions.push(status::Session::default());
    s.approvals.grants.push(status::Grant {
        id: 1,
        workload: "svc".into(),
        rule: "r".into(),
        approvers: vec![],
        until: 0,
        by: status::Caller {
            uid: Some(0),
            user: None,
            groups: vec![],
            auth: "peercred".into(),
            remote: None,
        },
        comment: None,
    });
    s.audit.last_seq = 12;
    s.audit.queue_depth = 2;
    s.audit.forward.push(status::Forward {
        name: "siem".into(),
        delivered_seq: 7,
        lag: 5,
        state: "failing".into(),
        failures: 3,
        ..status::Forward::default()
    });
    s.counters = [("redirected".to_owned(), 1), ("unix_refused".to_owned(), 4)].into();
    s
}

fn metrics() -> Metrics {
    let m = Metrics::default();
    m.statement("svc", "allow");
    m.statement("svc", "allow");
    m.statement("svc", "deny");
    m.statement("other", "hold");
    m.masked("svc", 3);
    m.masked("svc", 0);
    m.latency(Duration::from_micros(1500));
    m.latency(Duration::from_micros(20));
    m.login("svc", "ok");
    m.login("svc", "ok");
    m.login("svc", "failed");
    m
}

#[test]
fn every_metric_keeps_its_name() {
    let text = metrics().render(&snapshot(), Format::Prometheus).unwrap();
    for line in [
        "# TYPE pgwarden_sessions gauge",
        "pgwarden_sessions 1",
        "# TYPE pgwarden_statements_total counter",
        "pgwarden_statements_total{workload=\"svc\",decision=\"allow\"} 2",
        "pgwarden_statements_total{workload=\"svc\",decision=\"deny\"} 1",
        "pgwarden_statements_total{workload=\"other\",decision=\"hold\"} 1",
        "pgwarden_masked_values_total{workload=\"svc\"} 3",
        "pgwarden_approvals_pending 0",
        "pgwarden_grants_open 1",
        "pgwarden_upstream_logins_total{workload=\"svc\",result=\"ok\"} 2",
        "pgwarden_upstream_logins_total{workload=\"svc\",result=\"failed\"} 1",
        "pgwarden_audit_last_seq 12",
        "pgwarden_audit_queue_depth 2",
        "pgwarden_audit_records_written 0",
        "pgwarden_audit_write_errors 0",
        "pgwarden_audit_journald_errors 0",
        "pgwarden_audit_dropped 0",
        "pgwarden_audit_forward_lag{target=\"siem\"} 5",
        "pgwarden_audit_forward_delivered_seq{target=\"siem\"} 7",
        "pgwarden_audit_forward_failing{target=\"siem\"} 1",
        "pgwarden_audit_forward_failures{target=\"siem\"} 3",
        "# TYPE pgwarden_statement_seconds histogram",
        "pgwarden_statement_seconds_bucket{le=\"0.0001\"} 1",
        "pgwarden_statement_seconds_bucket{le=\"0.0025\"} 2",
        "pgwarden_statement_seconds_bucket{le=\"+Inf\"} 2",
        "pgwarden_statement_seconds_count 2",
        "# TYPE pgwarden_redirect_total counter",
        "pgwarden_redirect_total{event=\"redirected\"} 1",
        "pgwarden_redirect_total{event=\"unix_refused\"} 4",
        "# HELP pgwarden_sessions Live intercepted sessions.",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} missing from\n{text}"
        );
    }
}

#[test]
fn latency_sum_keeps_microseconds() {
    let m = Metrics::default();
    m.latency(Duration::from_micros(1500));
    let text = m.render(&Status::default(), Format::Prometheus).unwrap();
    // The hand-written exposition kept whole milliseconds: 0.001.
    assert!(
        text.lines()
            .any(|l| l == "pgwarden_statement_seconds_sum 0.0015"),
        "{text}"
    );
}

#[test]
fn no_kernel_counters_without_programs() {
    let text = metrics()
        .render(&Status::default(), Format::Prometheus)
        .unwrap();
    assert!(!text.contains("pgwarden_redirect"), "{text}");
}

#[test]
fn label_values_are_escaped() {
    let m = Metrics::default();
    m.statement("a\"b\\c", "allow");
    let text = m.render(&Status::default(), Format::Prometheus).unwrap();
    assert!(
        text.contains(r#"pgwarden_statements_total{workload="a\"b\\c",decision="allow"} 1"#),
        "{text}"
    );
}

#[test]
fn openmetrics_when_asked() {
    assert_eq!(Format::from_accept(None), Format::Prometheus);
    assert_eq!(Format::from_accept(Some("text/plain")), Format::Prometheus);
    let f = Format::from_accept(Some(
        "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4",
    ));
    assert_eq!(f, Format::OpenMetrics);
    let text = metrics().render(&snapshot(), f).unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains("# TYPE pgwarden_statements counter\n"),
        "{text}"
    );
    assert!(
        text.contains("# UNIT pgwarden_statement_seconds seconds\n"),
        "{text}"
    );
    assert!(
        text.contains("pgwarden_redirect_total{event=\"redirected\"} 1\n"),
        "{text}"
    );
}

/// A server on a loopback port with short timeouts; its address.
async fn server(timeouts: Timeouts) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(serve_with(
        Arc::new(metrics()),
        Arc::new(snapshot),
        l,
        timeouts,
    ));
    addr
}

const SHORT: Timeouts = Timeouts {
    head: Duration::from_millis(300),
    exchange: Duration::from_secs(5),
};

/// Sends `parts` with a pause between them and reads the answer to the end.
async fn exchange(addr: std::net::SocketAddr, parts: &[&str]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    for p in parts {
        s.write_all(p.as_bytes()).await.unwrap();
        s.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("the server closes the connection after its answer")
        .unwrap();
    out
}

#[tokio::test]
async fn a_request_split_across_writes_is_answered() {
    let addr = server(SHORT).await;
    // The one-read server this replaced answered this with 404.
    let out = exchange(addr, &["GET /metr", "ics HTTP/1.1\r\nHost: x\r\n", "\r\n"]).await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{out}"
    );
    assert!(out.contains("\r\npgwarden_sessions 1\n") || out.contains("\npgwarden_sessions 1\n"));
}

#[tokio::test]
async fn root_answers_and_other_paths_are_not_found() {
    let addr = server(SHORT).await;
    let out = exchange(addr, &["GET / HTTP/1.1\r\nHost: x\r\n\r\n"]).await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    let out = exchange(addr, &["GET /other HTTP/1.1\r\nHost: x\r\n\r\n"]).await;
    assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"), "{out}");
    let out = exchange(
        addr,
        &["POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"],
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{out}"
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_is_cut_off() {
    let addr = server(SHORT).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    let mut out = Vec::new();
    // Closed (hyper may say 408 first) well before the test's own limit.
    tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out))
        .await
        .expect("the server hangs up on a slow client")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 408"), "{out}");
}
