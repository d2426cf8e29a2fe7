use serde_json::{Value, json};

use super::validate::Schema;
use super::*;
use crate::audit::export::tests::{SESSION, export, find, journal, options};
use crate::audit::export::{Exporter, Format};

/// The OCSF events of the sample journal, with their records.
fn events() -> Vec<(Record, Value)> {
    let j = journal();
    let out = export(Format::Ocsf, &j);
    j.into_iter()
        .zip(out)
        .map(|((_, r), line)| (r, serde_json::from_str(&line).unwrap()))
        .collect()
}

/// The event of the `nth` record of `event`.
fn of(event: Event, nth: usize) -> Value {
    let j = journal();
    let (_, rec) = find(&j, event, nth);
    let mut x = Exporter::new(Format::Ocsf, options());
    for (line, r) in &j {
        let out = x.encode(line, r);
        if r.seq == rec.seq {
            return serde_json::from_str(&out).unwrap();
        }
    }
    unreachable!()
}

#[test]
fn the_vendored_schema_is_the_one_named() {
    assert_eq!(Schema::vendored().version(), OCSF_VERSION);
}

#[test]
fn every_event_of_the_sample_journal_is_valid() {
    let schema = Schema::vendored();
    for (rec, e) in events() {
        let errors = schema.check(&e);
        assert!(
            errors.is_empty(),
            "{} #{}: {errors:#?}\n{e:#}",
            rec.event,
            rec.seq
        );
    }
}

#[test]
fn session_records_are_datastore_activity_the_agents_base_events() {
    for (rec, e) in events() {
        let class = e["class_uid"].as_u64().unwrap();
        let datastore =
            rec.session_id.is_some() && rec.session_id.as_deref() != Some("5a000000000000ff");
        assert_eq!(
            class,
            if datastore { 6005 } else { 0 },
            "{} {e:#}",
            rec.event
        );
        let activity = e["activity_id"].as_u64().unwrap();
        assert_eq!(e["type_uid"], json!(class * 100 + activity));
        assert_eq!(e["metadata"]["event_code"], json!(rec.event.as_str()));
    }
}

#[test]
fn activities_follow_the_command() {
    let activity = |event, nth| {
        let e = of(event, nth);
        (
            e["activity_id"].as_u64().unwrap(),
            e["activity_name"].as_str().unwrap().to_owned(),
        )
    };
    assert_eq!(activity(Event::SessionStart, 0), (3, "Connect".into()));
    assert_eq!(activity(Event::Query, 0), (4, "Query".into()));
    assert_eq!(activity(Event::QueryDenied, 0), (2, "Update".into()));
    assert_eq!(activity(Event::Query, 2), (7, "Delete".into()));
    assert_eq!(activity(Event::Query, 3), (1, "Read".into()), "COPY TO");
    assert_eq!(activity(Event::Query, 4), (99, "BEGIN".into()));
    assert_eq!(activity(Event::SessionEnd, 0), (99, "Disconnect".into()));
    assert_eq!(
        activity(Event::ApprovalGranted, 0),
        (99, "approval.granted".into())
    );
    assert_eq!(of_command("SELECT, DELETE"), DELETE);
    assert_eq!(of_command("INSERT"), CREATE);
    assert_eq!(of_command("COPY FROM"), WRITE);
}

#[test]
fn decisions_are_dispositions() {
    let d = |event, nth| {
        let e = of(event, nth);
        (
            e["action_id"].clone(),
            e["disposition_id"].clone(),
            e["is_alert"].clone(),
        )
    };
    assert_eq!(d(Event::Query, 0), (json!(1), json!(1), json!(false)));
    assert_eq!(d(Event::QueryDenied, 0), (json!(2), json!(2), json!(true)));
    assert_eq!(
        d(Event::Query, 2),
        (json!(99), json!(14), json!(false)),
        "hold: delayed"
    );
    assert_eq!(d(Event::ApprovalRequested, 0).1, json!(14));
    assert_eq!(d(Event::ApprovalGranted, 0).1, json!(8));
    assert_eq!(
        d(Event::ApprovalDenied, 0).1,
        json!(26),
        "an unauthenticated call"
    );
    let masked = of(Event::QueryDone, 1);
    assert_eq!(masked["disposition"], "Allowed");
    assert_eq!(
        masked["unmapped"]["masked"],
        json!([{"column": "card_number", "method": "pan", "count": 1}])
    );
    assert_eq!(masked["unmapped"]["decision"], "mask");
}

#[test]
fn a_denial_says_why() {
    let e = of(Event::QueryDenied, 0);
    assert_eq!(e["status_id"], 2);
    assert_eq!(e["status_code"], "42501");
    assert_eq!(
        e["status_detail"],
        "pgwarden: class.write: writes are not allowed"
    );
    assert_eq!(e["severity_id"], 3);
    assert_eq!(e["policy"]["name"], "class.write");
    assert_eq!(
        e["query_info"]["query_string"],
        "UPDATE payments SET card_number = $1 WHERE id = $2"
    );
    assert_eq!(e["query_info"]["uid"], format!("{SESSION}:3"));
}

#[test]
fn a_failed_statement_has_its_text_identity_and_error() {
    let e = of(Event::QueryDone, 2);
    assert_eq!(
        (e["status_id"].clone(), e["status_code"].clone()),
        (json!(2), json!("23503"))
    );
    assert_eq!(
        e["query_info"]["query_string"],
        "DELETE FROM payments WHERE id = $1"
    );
    assert_eq!(e["actor"]["process"]["pid"], 4242);
    assert_eq!(e["actor"]["process"]["file"]["path"], "/usr/bin/python3.12");
    assert_eq!(
        e["actor"]["process"]["user"],
        json!({"uid": "1001", "name": "mcp"})
    );
    assert_eq!(e["actor"]["user"]["name"], "app");
    assert_eq!(e["actor"]["app_name"], "payments-mcp");
    assert_eq!(e["src_endpoint"], json!({"ip": "127.0.0.1", "port": 40000}));
    assert_eq!(
        e["dst_endpoint"],
        json!({"ip": "10.0.0.5", "port": 5432, "svc_name": "postgresql"})
    );
    assert_eq!(e["database"]["name"], "payments");
    assert_eq!(e["table"]["name"], "public.payments");
    assert_eq!(e["duration"], 2);
    assert!(
        e.get("disposition_id").is_none(),
        "it ran once approved: not held"
    );
    assert_eq!(e["unmapped"]["actor"]["unit"], "payments-mcp.service");
}

#[test]
fn a_unix_socket_session_and_its_container() {
    let e = of(Event::SessionStart, 1);
    assert_eq!(e["src_endpoint"], json!({"name": "unix"}));
    assert_eq!(
        e["dst_endpoint"]["name"],
        "unix:/run/postgresql/.s.PGSQL.5432"
    );
    assert_eq!(e["actor"]["process"]["container"]["uid"], "3f2a9c0d1e2b");
    assert!(
        e["metadata"]["profiles"]
            .as_array()
            .unwrap()
            .contains(&json!("container"))
    );
    assert_eq!(e["unmapped"]["actor"]["netns"], 4_026_532_281_u64);
}

#[test]
fn metadata_names_the_record() {
    let j = journal();
    let (_, rec) = find(&j, Event::Query, 0);
    let e = of(Event::Query, 0);
    let m = &e["metadata"];
    assert_eq!(m["uid"], format!("db-proxy-1:{}", rec.seq));
    assert_eq!(m["sequence"], rec.seq);
    assert_eq!(m["correlation_uid"], SESSION);
    assert_eq!(m["original_time"], json!(rec.time));
    assert_eq!(
        m["product"],
        json!({"name": "pgwarden", "vendor_name": "pgwarden", "version": "0.1.0"})
    );
    assert_eq!(e["time"], parse_time(&rec.time).unwrap() / 1000);
    assert_eq!(
        e["raw_data_hash"],
        json!({"algorithm_id": 3, "algorithm": "SHA-256", "value": rec.hash})
    );
    assert_eq!(e["unmapped"]["prev_hash"], json!(rec.prev_hash));
    assert_eq!(e["device"]["hostname"], "db-proxy-1");
}

#[test]
fn the_agents_events_keep_their_detail() {
    let gap = of(Event::AuditGap, 0);
    assert_eq!(
        (gap["class_uid"].clone(), gap["severity_id"].clone()),
        (json!(0), json!(4))
    );
    assert_eq!(
        gap["unmapped"]["detail"],
        json!({"lost": 12, "reason": "async queue full"})
    );
    let fwd = of(Event::AuditForward, 0);
    assert_eq!(
        (fwd["severity_id"].clone(), fwd["status_id"].clone()),
        (json!(3), json!(2))
    );
    assert_eq!(fwd["unmapped"]["detail"]["state"], "failing");
    let start = of(Event::AgentStart, 0);
    assert_eq!(start["activity_name"], "agent.start");
    assert_eq!(start["status_id"], 1);
}

/// A valid event to break.
fn valid() -> Value {
    of(Event::QueryDenied, 0)
}

fn rejects(what: &str, e: &Value, says: &str) {
    let errors = Schema::vendored().check(e);
    assert!(
        errors.iter().any(|x| x.contains(says)),
        "{what}: expected «{says}» in {errors:#?}"
    );
}

#[test]
fn the_validator_accepts_the_valid_one() {
    assert_eq!(Schema::vendored().check(&valid()), Vec::<String>::new());
}

#[test]
fn the_validator_rejects_what_the_schema_does_not_define() {
    let mut e = valid();
    e["query"] = json!("SELECT 1");
    rejects(
        "top-level",
        &e,
        "query: not an attribute of datastore_activity",
    );
    let mut e = valid();
    e["actor"]["process"]["cgroup"] = json!("x");
    rejects(
        "nested",
        &e,
        "actor.process.cgroup: not an attribute of process",
    );
    let mut e = valid();
    e["src_endpoint"]["path"] = json!("/run/x");
    rejects(
        "nested endpoint",
        &e,
        "src_endpoint.path: not an attribute of network_endpoint",
    );
}

#[test]
fn the_validator_wants_what_is_required() {
    let mut e = valid();
    e["metadata"].as_object_mut().unwrap().remove("product");
    rejects(
        "metadata.product",
        &e,
        "metadata.product: required by metadata",
    );
    let mut e = valid();
    e.as_object_mut().unwrap().remove("src_endpoint");
    rejects(
        "src_endpoint",
        &e,
        ".src_endpoint: required by datastore_activity",
    );
    let mut e = valid();
    e["query_info"]
        .as_object_mut()
        .unwrap()
        .remove("query_string");
    rejects(
        "query_string",
        &e,
        "query_info.query_string: required by query_info",
    );
    let mut e = valid();
    for k in ["database", "table"] {
        e.as_object_mut().unwrap().remove(k);
    }
    rejects("constraint", &e, "wants at least one of");
    let mut e = valid();
    e["actor"]["process"] = json!({"name": "python3"});
    rejects("process constraint", &e, "process wants at least one of");
}

#[test]
fn the_validator_checks_enums_and_siblings() {
    let mut e = valid();
    e["disposition_id"] = json!(77);
    rejects("enum", &e, "disposition_id: 77 is not in its enum");
    let mut e = valid();
    e["disposition"] = json!("Allowed");
    rejects("sibling", &e, "its disposition says");
    let mut e = valid();
    e["type_uid"] = json!(600_504);
    rejects(
        "type_uid",
        &e,
        "type_uid: 600504 is \"Datastore Activity: Query\", its type_name says",
    );
    let mut e = valid();
    e["activity_id"] = json!(42);
    rejects("activity", &e, "activity_id: 42 is not in its enum");
    let mut e = valid();
    e["class_uid"] = json!(6006);
    rejects("class", &e, "no such class");
}

#[test]
fn the_validator_checks_types() {
    let mut e = valid();
    e["time"] = json!("2026-11-25T05:00:35Z");
    rejects(
        "timestamp",
        &e,
        "time: \"2026-11-25T05:00:35Z\" is not a long_t",
    );
    let mut e = valid();
    e["src_endpoint"]["port"] = json!(70_000);
    rejects("port", &e, "out of the range of port_t");
    let mut e = valid();
    e["metadata"]["sequence"] = json!(1_u64 << 40);
    rejects("integer", &e, "is not a integer_t");
    let mut e = valid();
    e["metadata"]["profiles"] = json!("host");
    rejects("array", &e, "metadata.profiles: not an array");
    let mut e = valid();
    e["unmapped"] = json!([1]);
    rejects("object", &e, "unmapped: not an object");
}

#[test]
fn the_validator_wants_profiles_declared() {
    let mut e = valid();
    e["metadata"]["profiles"] = json!(["host"]);
    rejects(
        "security_control",
        &e,
        "disposition_id: of profile \"security_control\"",
    );
    let mut e = of(Event::SessionStart, 1);
    e["metadata"]["profiles"] = json!(["host", "security_control"]);
    rejects(
        "container",
        &e,
        "actor.process.container: of profile \"container\"",
    );
    let mut e = valid();
    e["metadata"]["profiles"] = json!(["host", "security_control", "nonesuch"]);
    rejects("unknown profile", &e, "no profile nonesuch");
}
