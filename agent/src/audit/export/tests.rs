//! A realistic journal as the writer seals it (session over TCP and over a Unix socket,
//! allow, mask, deny, hold and approval, a failed statement, the agent's own events), shared
//! by the format tests, and the exporter's own tests.
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::{Exporter, Format, Options};
use crate::audit::canon::Prepared;
use crate::audit::record::{
    Actor, Db, Decision, Endpoint, Event, GENESIS_HASH, Outcome, Record, Statement,
};

/// Options that do not depend on the host.
pub(super) fn options() -> Options {
    Options {
        hostname: "db-proxy-1".into(),
        app_name: "pgwarden".into(),
        enterprise_id: 32473,
        product_version: "0.1.0".into(),
    }
}

pub(super) const SESSION: &str = "5a00000000000001";
pub(super) const UNIX_SESSION: &str = "5a00000000000002";
const POLICY: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn at(i: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(1_795_000_835_123_456 + i * 1_250)
}

fn in_session(event: Event, id: &str) -> Record {
    Record::new(event).session(id).workload("payments-mcp")
}

fn statement(sql: &str, command: &str) -> Statement {
    Statement::from_sql(sql, false)
        .command(command)
        .objects(["public.payments"])
}

fn query(no: u64, sql: &str, command: &str, decision: Decision, rule: &str) -> Record {
    in_session(Event::Query, SESSION)
        .statement(statement(sql, command))
        .decision(decision)
        .rule(rule)
        .detail("statement_no", no)
}

fn done(no: u64, rows: u64) -> Record {
    in_session(Event::QueryDone, SESSION)
        .rows(rows)
        .outcome(Outcome::Success)
        .duration(Duration::from_micros(1_480 + no))
        .detail("statement_no", no)
}

fn session_start() -> Record {
    in_session(Event::SessionStart, SESSION)
        .actor(Actor {
            cgroup: Some("system.slice/payments-mcp.service".into()),
            unit: Some("payments-mcp.service".into()),
            pid: Some(4242),
            uid: Some(1001),
            user: Some("mcp".into()),
            exe: Some("/usr/bin/python3.12".into()),
            comm: Some("python3".into()),
            netns: None,
            container: None,
        })
        .policy_hash(POLICY)
        .client(SocketAddr::from(([127, 0, 0, 1], 40_000)))
        .server(SocketAddr::from(([10, 0, 0, 5], 5432)))
        .db(Db {
            user: Some("app".into()),
            database: Some("payments".into()),
            application_name: Some("mcp".into()),
        })
}

fn approval(event: Event, decision: Decision) -> Record {
    in_session(event, SESSION)
        .decision(decision)
        .rule("approve.delete")
        .statement(Statement::from_sql(
            "DELETE FROM payments WHERE id = 9",
            false,
        ))
        .detail("request", 17)
        .detail("pid", 4242)
}

fn unix_session() -> [Record; 3] {
    let start = in_session(Event::SessionStart, UNIX_SESSION)
        .actor(Actor {
            cgroup: Some("kubepods/pod1/3f2a9c".into()),
            pid: Some(5151),
            uid: Some(0),
            user: Some("root".into()),
            exe: Some("/usr/local/bin/node".into()),
            comm: Some("node".into()),
            netns: Some(4_026_532_281),
            container: Some("3f2a9c0d1e2b".into()),
            ..Actor::default()
        })
        .client(Endpoint {
            ip: None,
            port: None,
            path: Some(String::new()),
        })
        .server(Endpoint {
            ip: None,
            port: None,
            path: Some("/run/postgresql/.s.PGSQL.5432".into()),
        })
        .db(Db {
            user: Some("report".into()),
            database: Some("payments".into()),
            application_name: None,
        });
    let copy = in_session(Event::Query, UNIX_SESSION)
        .statement(statement("COPY payments TO STDOUT", "COPY TO"))
        .decision(Decision::Allow)
        .rule("read.payments")
        .detail("statement_no", 1);
    let begin = in_session(Event::Query, UNIX_SESSION)
        .statement(Statement::from_sql("BEGIN", false).command("BEGIN"))
        .decision(Decision::Allow)
        .rule("tx")
        .detail("statement_no", 2);
    [start, copy, begin]
}

/// The records, unsealed, in journal order.
fn records() -> Vec<Record> {
    let mut v = vec![
        Record::new(Event::AgentStart)
            .outcome(Outcome::Success)
            .detail("pid", 812)
            .detail("version", "0.1.0")
            .detail("listen", ["127.0.0.1:6432"])
            .detail("mode", "redirect"),
        session_start(),
        query(
            1,
            "SELECT id, amount FROM payments WHERE id = 7",
            "SELECT",
            Decision::Allow,
            "read.payments",
        ),
        done(1, 1),
        query(
            2,
            "SELECT card_number FROM payments WHERE id = 7",
            "SELECT",
            Decision::Mask,
            "mask.pan",
        ),
        done(2, 1).masked("card_number", "pan", 1),
        in_session(Event::QueryDenied, SESSION)
            .statement(statement(
                "UPDATE payments SET card_number = '4111111111111111' WHERE id = 1",
                "UPDATE",
            ))
            .decision(Decision::Deny)
            .rule("class.write")
            .sqlstate("42501")
            .error("pgwarden: class.write: writes are not allowed")
            .detail("statement_no", 3),
        query(
            4,
            "DELETE FROM payments WHERE id = 9",
            "DELETE",
            Decision::Hold,
            "approve.delete",
        ),
        approval(Event::ApprovalRequested, Decision::Hold),
        approval(Event::ApprovalGranted, Decision::Allow)
            .detail("approver", "alice")
            .detail("approver_auth", "oidc")
            .detail("approver_remote", "192.0.2.10:51234")
            .detail("comment", "refund for card 4111 1111 1111 1111, OPS-1")
            .detail("grant", json!(null)),
        in_session(Event::QueryDone, SESSION)
            .rows(0)
            .outcome(Outcome::Failure)
            .sqlstate("23503")
            .error("update or delete on table \"payments\" violates foreign key constraint")
            .duration(Duration::from_micros(2_210))
            .detail("statement_no", 4),
        in_session(Event::SessionEnd, SESSION).duration(Duration::from_millis(20)),
    ];
    v.extend(unix_session());
    v.extend([
        Record::new(Event::AuditForward)
            .outcome(Outcome::Failure)
            .error("syslog tcp siem.example:6514: connection refused")
            .detail("target", "siem")
            .detail("state", "failing")
            .detail("pending_from_seq", 12),
        Record::new(Event::AuditGap)
            .detail("lost", 12)
            .detail("reason", "async queue full"),
        Record::new(Event::ApprovalDenied)
            .decision(Decision::Deny)
            .rule("approval.unauthenticated")
            .outcome(Outcome::Failure)
            .error("no bearer token")
            .detail("caller_remote", "203.0.113.5:40112")
            .detail("method", "POST")
            .detail("path", "/api/requests/17/approve"),
        Record::new(Event::PolicyReload)
            .outcome(Outcome::Success)
            .policy_hash(POLICY)
            .detail("version", 2)
            .detail("trigger", "inotify")
            .detail(
                "files",
                ["/etc/pgwarden/policies/payments.yaml@9f86d081884c"],
            ),
        // Of a session this journal does not show the start of.
        Record::new(Event::QueryDone)
            .session("5a000000000000ff")
            .workload("batch")
            .rows(3)
            .outcome(Outcome::Success)
            .detail("statement_no", 8),
    ]);
    v
}

/// The journal: each record sealed as the writer seals it, with its stored line (without
/// the newline) and the record read back from it.
pub(super) fn journal() -> Vec<(String, Record)> {
    let mut prev = GENESIS_HASH.to_owned();
    records()
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let seq = i as u64 + 1;
            let sealed = Prepared::from_record(&r.time(at(seq))).seal(seq, &prev);
            prev = sealed.hash;
            let line = String::from_utf8(sealed.line).unwrap();
            let line = line.trim_end().to_owned();
            let rec = serde_json::from_str(&line).unwrap();
            (line, rec)
        })
        .collect()
}

/// The `nth` record of `event` in `journal` (from 0).
pub(super) fn find(journal: &[(String, Record)], event: Event, nth: usize) -> (String, Record) {
    journal
        .iter()
        .filter(|(_, r)| r.event == event)
        .nth(nth)
        .cloned()
        .unwrap()
}

/// Every line of `journal` in `format`.
pub(super) fn export(format: Format, journal: &[(String, Record)]) -> Vec<String> {
    let mut x = Exporter::new(format, options());
    journal.iter().map(|(l, r)| x.encode(l, r)).collect()
}

#[test]
fn jsonl_is_the_stored_line() {
    let j = journal();
    let out = export(Format::Jsonl, &j);
    for ((line, _), o) in j.iter().zip(&out) {
        assert_eq!(o, line);
    }
    let mut x = Exporter::new(Format::Jsonl, options());
    assert_eq!(x.encode(&format!("{}\n", j[0].0), &j[0].1), j[0].0);
}

#[test]
fn a_done_statement_carries_its_query_and_session() {
    let j = journal();
    for format in [Format::Ocsf, Format::Rfc5424] {
        let out = export(format, &j);
        let at = j
            .iter()
            .position(|(_, r)| r.event == Event::QueryDone)
            .unwrap();
        let line = &out[at];
        for what in [
            "SELECT id, amount FROM payments WHERE id = $1",
            "4242",
            "python3.12",
            "10.0.0.5",
        ] {
            assert!(line.contains(what), "{format:?} lacks {what}: {line}");
        }
    }
}

#[test]
fn learn_warms_up_as_encode_does() {
    let j = journal();
    let at = j
        .iter()
        .position(|(_, r)| r.event == Event::QueryDone)
        .unwrap();
    let all = export(Format::Rfc5424, &j);
    let mut x = Exporter::new(Format::Rfc5424, options());
    for (_, r) in &j[..at] {
        x.learn(r);
    }
    assert_eq!(x.encode(&j[at].0, &j[at].1), all[at]);
    let mut cold = Exporter::new(Format::Rfc5424, options());
    assert_ne!(cold.encode(&j[at].0, &j[at].1), all[at]);
}

#[test]
fn no_full_card_number_in_any_format() {
    let j = journal();
    for format in [Format::Jsonl, Format::Ocsf, Format::Rfc5424] {
        for line in export(format, &j) {
            assert!(!line.contains("4111111111111111"), "{line}");
            assert!(!line.contains("4111 1111 1111 1111"), "{line}");
        }
    }
}

#[test]
fn formats_parse_from_their_names() {
    use clap::ValueEnum as _;
    for (name, f) in [
        ("jsonl", Format::Jsonl),
        ("ocsf", Format::Ocsf),
        ("rfc5424", Format::Rfc5424),
    ] {
        assert_eq!(Format::from_str(name, false), Ok(f));
        assert_eq!(serde_json::to_value(f).unwrap(), json!(name));
    }
}

#[test]
fn default_options_name_this_host() {
    let o = Options::default();
    assert!(!o.hostname.is_empty() && !o.hostname.contains(char::is_whitespace));
    assert_eq!((o.app_name.as_str(), o.enterprise_id), ("pgwarden", 32473));
}

#[test]
#[ignore = "prints the README's samples: add -- --ignored --nocapture"]
fn readme_samples() {
    let j = journal();
    for format in [Format::Ocsf, Format::Rfc5424] {
        for (rec, line) in j.iter().map(|(_, r)| r).zip(export(format, &j)) {
            if matches!(rec.event, Event::QueryDenied | Event::QueryDone) {
                println!("{format:?} {} #{}\n{line}\n", rec.event, rec.seq);
            }
        }
    }
}
