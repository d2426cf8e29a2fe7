use std::net::SocketAddr;

use super::*;
use crate::audit::export::tests::{export, find, journal, options};
use crate::audit::export::{Exporter, Format};
use crate::audit::record::{Actor, Db, Decision, Event, Statement};

fn escaped(v: &str) -> String {
    let mut s = String::new();
    escape_value(&mut s, v);
    s
}

#[test]
fn values_escape_quote_backslash_and_bracket_and_lose_newlines() {
    assert_eq!(escaped(r#"a"b\c]d"#), r#"a\"b\\c\]d"#);
    assert_eq!(escaped("one\ntwo\r\nthree\tfour"), "one two  three four");
    assert_eq!(escaped("ünïcødé [ok]"), r"ünïcødé [ok\]");
}

#[test]
fn param_names_are_what_the_rfc_allows() {
    for ok in ["seq", "prev_hash", "a.b-c", &"x".repeat(32)] {
        assert!(is_param_name(ok), "{ok}");
    }
    for bad in ["", "a b", "a=b", "a]", "a\"", "é", &"x".repeat(33)] {
        assert!(!is_param_name(bad), "{bad}");
    }
}

#[test]
fn pri_is_log_audit_and_severity() {
    let j = journal();
    let pri_of = |e, nth| pri(&find(&j, e, nth).1);
    assert_eq!(pri_of(Event::Query, 0), 110, "allowed: info");
    assert_eq!(pri_of(Event::QueryDone, 0), 110);
    assert_eq!(pri_of(Event::QueryDenied, 0), 108, "refused: warning");
    assert_eq!(pri_of(Event::ApprovalGranted, 0), 109, "approval: notice");
    assert_eq!(pri_of(Event::ApprovalDenied, 0), 108);
    assert_eq!(pri_of(Event::AgentStart, 0), 109);
    assert_eq!(pri_of(Event::PolicyReload, 0), 109);
    assert_eq!(pri_of(Event::AuditGap, 0), 108, "records lost: warning");
    assert_eq!(
        pri_of(Event::AuditForward, 0),
        108,
        "a failing target: warning"
    );
    let recovered = Record::new(Event::AuditForward).detail("state", "ok");
    assert_eq!(pri(&recovered), 109);
}

#[test]
fn golden_line() {
    let start = Record::new(Event::SessionStart)
        .session("00000000000000ab")
        .workload("payments-mcp")
        .actor(Actor {
            pid: Some(4242),
            uid: Some(1001),
            user: Some("mcp".into()),
            exe: Some("/usr/bin/python3".into()),
            ..Actor::default()
        })
        .client(SocketAddr::from(([127, 0, 0, 1], 40000)))
        .server(SocketAddr::from(([10, 0, 0, 5], 5432)))
        .db(Db {
            user: Some("app".into()),
            database: Some("payments".into()),
            application_name: None,
        });
    let mut denied = Record::new(Event::QueryDenied)
        .session("00000000000000ab")
        .workload("payments-mcp")
        .statement(
            Statement::from_sql("DELETE FROM \"a]b\" WHERE x = 'y'", false)
                .command("DELETE")
                .objects(["a]b"]),
        )
        .decision(Decision::Deny)
        .rule("class.write")
        .sqlstate("42501")
        .error("pgwarden: \"class.write\"\nwrites are not allowed")
        .detail("statement_no", 7);
    denied.seq = 42;
    denied.time = "2026-11-25T05:00:35.123456Z".into();
    denied.prev_hash = "ab".repeat(32);
    denied.hash = "cd".repeat(32);
    let line = r#"{"event":"query.denied","seq":42}"#;
    let mut x = Exporter::new(Format::Rfc5424, options());
    x.learn(&start);
    let got = x.encode(line, &denied);
    let want = concat!(
        r#"<108>1 2026-11-25T05:00:35.123456Z db-proxy-1 pgwarden - query.denied [pgwarden@32473"#,
        r#" seq="42""#,
        r#" hash="cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd""#,
        r#" prev_hash="abababababababababababababababababababababababababababababababab""#,
        r#" session="00000000000000ab" workload="payments-mcp" decision="deny" rule="class.write""#,
        r#" command="DELETE" fingerprint=""#,
    );
    assert!(got.starts_with(want), "{got}");
    let rest = concat!(
        r#"" objects="a\]b" statement_no="7" statement="DELETE FROM \"a\]b\" WHERE x = $1""#,
        r#" sqlstate="42501" error="pgwarden: \"class.write\" writes are not allowed""#,
        r#" pid="4242" exe="/usr/bin/python3" uid="1001" user="mcp""#,
        r#" client="127.0.0.1:40000" server="10.0.0.5:5432" db_user="app" database="payments"]"#,
        r#" {"event":"query.denied","seq":42}"#,
    );
    let fingerprint = &denied.statement.as_ref().unwrap().fingerprint;
    assert_eq!(got, format!("{want}{fingerprint}{rest}"));
}

#[test]
fn msg_is_the_stored_line_and_never_breaks_it() {
    let j = journal();
    for ((line, _), out) in j.iter().zip(export(Format::Rfc5424, &j)) {
        assert!(out.ends_with(&format!("] {line}")), "{out}");
        assert!(!out.contains(['\n', '\r']));
    }
    let rec = &j[0].1;
    let mut x = Exporter::new(Format::Rfc5424, options());
    let out = x.encode("{\"a\":1,\n\"b\":2}\n", rec);
    assert!(out.ends_with("] {\"a\":1, \"b\":2}"), "{out}");
}

#[test]
fn a_non_ascii_line_starts_with_the_bom() {
    let rec = &journal()[0].1;
    let out = encode("{\"x\":\"é\"}", rec, &options());
    assert!(out.ends_with("] \u{feff}{\"x\":\"é\"}"), "{out}");
    assert!(!encode("{}", rec, &options()).contains('\u{feff}'));
}

#[test]
fn header_fields_are_printable_ascii_or_nil() {
    let rec = &journal()[0].1;
    let mut o = options();
    o.hostname = "db proxy".into();
    o.app_name = String::new();
    let out = encode("{}", rec, &o);
    assert!(
        out.starts_with("<109>1 2026-") && out.contains(" db_proxy - - agent.start ["),
        "{out}"
    );
    let mut late = rec.clone();
    late.time = "yesterday".into();
    assert!(encode("{}", &late, &options()).starts_with("<109>1 - db-proxy-1 "));
}

#[test]
fn a_statement_record_names_its_session_and_detail_only_once() {
    let j = journal();
    let out = export(Format::Rfc5424, &j);
    let at = j
        .iter()
        .position(|(_, r)| r.event == Event::ApprovalGranted)
        .unwrap();
    let sd = out[at].split("] {").next().unwrap();
    for want in [
        r#" pid="4242""#,
        r#" client="127.0.0.1:40000""#,
        r#" approver="alice""#,
        r#" approver_auth="oidc""#,
        r#" request="17""#,
    ] {
        assert_eq!(sd.matches(want).count(), 1, "{want} in {sd}");
    }
    assert!(!sd.contains(" grant="), "null detail is not a parameter");
}
