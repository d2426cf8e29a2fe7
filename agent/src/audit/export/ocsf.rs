//! OCSF 1.8.0 events of journal records: Datastore Activity (6005) for what a session did,
//! Base Event (0) for the rest; the schema files it follows are vendored in `ocsf-schema/`.
//!
//! A record with a session's client and its database (or a table the statement touches) is a
//! Datastore Activity: the statement's command gives `activity_id` (`SELECT` Query, `INSERT`
//! Create, `UPDATE` Update, `DELETE` Delete, `COPY FROM` Write, `COPY TO` Read, ...;
//! `session.start` Connect, anything else Other with its own `activity_name`), the policy's
//! decision the `security_control` profile's `action`, `disposition` and `policy` (a hold is
//! Delayed, an approval Approved, masked results Allowed with `unmapped.masked`). The agent's
//! own events (`agent.*`, `policy.reload`, `audit.*`), approval calls outside a session and
//! records whose session was never seen are Base Events, activity Other, named by their event.
//!
//! Either way: `metadata.event_code` is the event, `metadata.uid` is `<hostname>:<seq>`,
//! `metadata.correlation_uid` the session; `raw_data_hash` is the record's chain hash (SHA-256
//! over its canonical form, what `pgwarden audit verify` checks), `unmapped.prev_hash` its
//! link, `unmapped.seq` its place; what OCSF has no attribute for is under `unmapped`.
//! Every string comes from the record as stored, so statement texts are normalised and card
//! numbers scrubbed as in the journal.
#[cfg(test)]
mod tests;
#[cfg(test)]
mod validate;

use serde_json::{Map, Value, json};

use super::context::statement_no;
use super::{Gravity, Options};
use crate::audit::record::{Actor, Decision, Endpoint, Event, Outcome, Record};
use crate::audit::time::parse_time;

/// The OCSF release the events follow (and whose files are vendored).
pub const OCSF_VERSION: &str = "1.8.0";

/// An event class and its category.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Class {
    uid: u32,
    name: &'static str,
    category_uid: u32,
    category_name: &'static str,
}

const DATASTORE: Class = Class {
    uid: 6005,
    name: "Datastore Activity",
    category_uid: 6,
    category_name: "Application Activity",
};

const BASE: Class = Class {
    uid: 0,
    name: "Base Event",
    category_uid: 0,
    category_name: "Uncategorized",
};

/// Datastore Activity's `activity_id`s.
const READ: u32 = 1;
const UPDATE: u32 = 2;
const CONNECT: u32 = 3;
const QUERY: u32 = 4;
const WRITE: u32 = 5;
const CREATE: u32 = 6;
const DELETE: u32 = 7;
const OTHER: u32 = 99;

/// The event of `rec` as one JSON line.
pub fn encode(rec: &Record, options: &Options) -> String {
    event(rec, options).to_string()
}

/// The event of `rec` (with its session's identity filled in, see [`super::context`]).
pub fn event(rec: &Record, options: &Options) -> Value {
    let mut e = Map::new();
    let mut profiles = vec!["host", "security_control"];
    let actor = actor(rec, &mut profiles);
    let store = actor.as_ref().and_then(|_| store(rec));
    let class = if store.is_some() { DATASTORE } else { BASE };
    classify(&mut e, class, activity(rec, class));
    e.insert("time".into(), json!(millis(rec)));
    e.insert("timezone_offset".into(), json!(0));
    if let Some(us) = rec.duration_us {
        e.insert("duration".into(), json!(us / 1000));
    }
    outcome(&mut e, rec);
    control(&mut e, rec);
    if let Some(a) = actor {
        e.insert("actor".into(), a);
    }
    if let Some(s) = store {
        e.extend(s);
    }
    if options.hostname != "-" {
        let device = json!({"hostname": options.hostname, "type_id": 0, "type": "Unknown"});
        e.insert("device".into(), device);
    }
    if !rec.hash.is_empty() {
        let hash = json!({"algorithm_id": 3, "algorithm": "SHA-256", "value": rec.hash});
        e.insert("raw_data_hash".into(), hash);
    }
    e.insert("unmapped".into(), unmapped(rec, class).into());
    e.insert("metadata".into(), metadata(rec, options, &profiles));
    Value::Object(e)
}

/// `class_uid`, `category_uid`, `activity_id`, `type_uid` and their names.
fn classify(e: &mut Map<String, Value>, class: Class, (id, name): (u32, String)) {
    let caption = if id == OTHER { "Other" } else { name.as_str() };
    let type_uid = u64::from(class.uid) * 100 + u64::from(id);
    e.insert("class_uid".into(), json!(class.uid));
    e.insert("class_name".into(), json!(class.name));
    e.insert("category_uid".into(), json!(class.category_uid));
    e.insert("category_name".into(), json!(class.category_name));
    e.insert("type_uid".into(), json!(type_uid));
    e.insert(
        "type_name".into(),
        json!(format!("{}: {caption}", class.name)),
    );
    e.insert("activity_id".into(), json!(id));
    e.insert("activity_name".into(), json!(name));
}

/// `activity_id` and `activity_name` of `rec` in `class`.
fn activity(rec: &Record, class: Class) -> (u32, String) {
    let event = || (OTHER, rec.event.as_str().to_owned());
    if class == BASE {
        return event();
    }
    match rec.event {
        Event::SessionStart => (CONNECT, "Connect".into()),
        Event::SessionEnd => (OTHER, "Disconnect".into()),
        _ => match rec.statement.as_ref().and_then(|s| s.command.as_deref()) {
            Some(command) => match of_command(command) {
                OTHER => (OTHER, command.to_owned()),
                id => (id, caption(id).to_owned()),
            },
            None => event(),
        },
    }
}

/// The activity of a statement's command tag(s) (`SELECT, UPDATE`): the one that changes
/// most of those it names.
fn of_command(command: &str) -> u32 {
    let ids: Vec<u32> = command
        .split([',', ';'])
        .map(|tag| match tag.trim() {
            "SELECT" => QUERY,
            "COPY TO" | "FETCH/CLOSE" | "SHOW/RESET" => READ,
            "INSERT" | "SELECT INTO" | "CREATE" => CREATE,
            "UPDATE" | "ALTER" | "RENAME" | "COMMENT" | "GRANT/ROLE" | "REFRESH" => UPDATE,
            "COPY FROM" | "MERGE" => WRITE,
            "DELETE" | "DROP" | "DROP ROLE" | "TRUNCATE" => DELETE,
            _ => OTHER,
        })
        .collect();
    [DELETE, UPDATE, WRITE, CREATE, QUERY, READ]
        .into_iter()
        .find(|id| ids.contains(id))
        .unwrap_or(OTHER)
}

fn caption(activity: u32) -> &'static str {
    match activity {
        READ => "Read",
        UPDATE => "Update",
        CONNECT => "Connect",
        QUERY => "Query",
        WRITE => "Write",
        CREATE => "Create",
        DELETE => "Delete",
        _ => "Other",
    }
}

/// Epoch milliseconds of the record's time (0 when it is unreadable).
fn millis(rec: &Record) -> i64 {
    parse_time(&rec.time).map_or(0, |us| us.div_euclid(1000))
}

/// `severity_id`, `status_id`, `status_code` (SQLSTATE), `status_detail`, `message`.
fn outcome(e: &mut Map<String, Value>, rec: &Record) {
    let (id, name) = match Gravity::of(rec) {
        Gravity::Routine | Gravity::Notable => (1, "Informational"),
        Gravity::Warning => (3, "Medium"),
        Gravity::Loss => (4, "High"),
    };
    e.insert("severity_id".into(), json!(id));
    e.insert("severity".into(), json!(name));
    let status = match rec.outcome {
        Some(Outcome::Success) => Some((1, "Success")),
        Some(Outcome::Failure) => Some((2, "Failure")),
        None if rec.is_denial() => Some((2, "Failure")),
        None => None,
    };
    if let Some((id, name)) = status {
        e.insert("status_id".into(), json!(id));
        e.insert("status".into(), json!(name));
    }
    if let Some(c) = &rec.sqlstate {
        e.insert("status_code".into(), json!(c));
    }
    if let Some(m) = &rec.error {
        e.insert("status_detail".into(), json!(m));
    }
    e.insert("message".into(), json!(rec.summary()));
}

/// The security control's part (`action`, `disposition`, `is_alert`, `policy`).
fn control(e: &mut Map<String, Value>, rec: &Record) {
    if let Some(rule) = &rec.rule {
        let mut p = json!({"name": rule, "is_applied": true});
        if let Some(h) = &rec.policy_hash {
            p["version"] = json!(h);
        }
        e.insert("policy".into(), p);
    }
    let Some((action, disposition)) = disposition(rec) else {
        return;
    };
    e.insert("action_id".into(), json!(action.0));
    e.insert("action".into(), json!(action.1));
    e.insert("disposition_id".into(), json!(disposition.0));
    e.insert("disposition".into(), json!(disposition.1));
    e.insert("is_alert".into(), json!(rec.is_denial()));
}

type Caption = (u32, &'static str);

/// `action_id` and `disposition_id` of what policy or an approver decided.
fn disposition(rec: &Record) -> Option<(Caption, Caption)> {
    let refused_call = rec
        .rule
        .as_deref()
        .is_some_and(|r| r.starts_with("approval."));
    Some(match (rec.event, rec.decision) {
        (Event::ApprovalGranted, _) => ((1, "Allowed"), (8, "Approved")),
        (Event::ApprovalDenied, _) if refused_call => ((2, "Denied"), (26, "Unauthorized")),
        (Event::ApprovalDenied, _) => ((2, "Denied"), (25, "Rejected")),
        (Event::ApprovalRevoked, _) => ((2, "Denied"), (24, "Access Revoked")),
        (_, Some(Decision::Deny)) => ((2, "Denied"), (2, "Blocked")),
        (_, Some(Decision::Hold)) => ((99, "Held"), (14, "Delayed")),
        (_, Some(Decision::Allow | Decision::Mask)) => ((1, "Allowed"), (1, "Allowed")),
        (_, None) => return None,
    })
}

/// `actor`: the workload as `app_name`, the process, the database user; `None` when none
/// is known.
fn actor(rec: &Record, profiles: &mut Vec<&'static str>) -> Option<Value> {
    let mut a = Map::new();
    if let Some(w) = &rec.workload {
        a.insert("app_name".into(), json!(w));
    }
    if let Some(p) = rec.actor.as_ref().and_then(|x| process(x, profiles)) {
        a.insert("process".into(), p);
    }
    if let Some(u) = rec.db.as_ref().and_then(|d| d.user.as_ref()) {
        a.insert("user".into(), json!({ "name": u }));
    }
    (!a.is_empty()).then_some(Value::Object(a))
}

/// `actor.process` (OCSF wants its pid; without one the actor stays under `unmapped`).
fn process(a: &Actor, profiles: &mut Vec<&'static str>) -> Option<Value> {
    let mut p = json!({ "pid": a.pid? });
    if let Some(c) = &a.comm {
        p["name"] = json!(c);
    }
    if let Some(exe) = &a.exe {
        let name = exe.rsplit('/').next().unwrap_or(exe);
        p["file"] = json!({"name": name, "path": exe, "type_id": 1, "type": "Regular File"});
    }
    let mut user = Map::new();
    if let Some(uid) = a.uid {
        user.insert("uid".into(), json!(uid.to_string()));
    }
    if let Some(n) = &a.user {
        user.insert("name".into(), json!(n));
    }
    if !user.is_empty() {
        p["user"] = Value::Object(user);
    }
    if let Some(c) = &a.container {
        p["container"] = json!({ "uid": c });
        profiles.push("container");
    }
    Some(p)
}

/// Where a Datastore Activity happened: `src_endpoint`, `dst_endpoint`, `database`,
/// `table`, `query_info`; `None` without a client, or without a database or a table.
fn store(rec: &Record) -> Option<Map<String, Value>> {
    let mut s = Map::new();
    s.insert("src_endpoint".into(), endpoint(rec.client.as_ref()?)?);
    if let Some(name) = rec.db.as_ref().and_then(|d| d.database.as_ref()) {
        let db = json!({"name": name, "type_id": 1, "type": "Relational"});
        s.insert("database".into(), db);
    }
    let statement = rec.statement.as_ref();
    if let Some(t) = statement.and_then(|st| st.objects.first()) {
        s.insert("table".into(), json!({ "name": t }));
    }
    if !s.contains_key("database") && !s.contains_key("table") {
        return None;
    }
    if let Some(mut dst) = rec.server.as_ref().and_then(endpoint) {
        dst["svc_name"] = json!("postgresql");
        s.insert("dst_endpoint".into(), dst);
    }
    if let Some(st) = statement {
        // OCSF wants a name or a uid: the statement's place in its session when the record
        // gives it (`query`, `query.done`, `query.denied`), else its fingerprint.
        let uid = match (&rec.session_id, statement_no(rec)) {
            (Some(id), Some(no)) => format!("{id}:{no}"),
            _ => st.fingerprint.clone(),
        };
        s.insert(
            "query_info".into(),
            json!({"query_string": st.text, "uid": uid}),
        );
    }
    Some(s)
}

/// A network endpoint: address and port, or a Unix socket by name (`unix:/run/...`).
fn endpoint(at: &Endpoint) -> Option<Value> {
    match (at.ip, &at.path) {
        (Some(ip), _) => {
            let mut v = json!({ "ip": ip.to_string() });
            if let Some(port) = at.port {
                v["port"] = json!(port);
            }
            Some(v)
        }
        (None, Some(_)) => Some(json!({ "name": at.to_string() })),
        (None, None) => None,
    }
}

/// `metadata`: product, OCSF version, ids, times, profiles.
fn metadata(rec: &Record, options: &Options, profiles: &[&str]) -> Value {
    let product = json!({
        "name": "pgwarden",
        "vendor_name": "pgwarden",
        "version": options.product_version,
    });
    let mut m = json!({
        "version": OCSF_VERSION,
        "product": product,
        "profiles": profiles,
        "uid": format!("{}:{}", options.hostname, rec.seq),
        "event_code": rec.event.as_str(),
        "log_name": "pgwarden-audit",
        "log_version": rec.v.unwrap_or(1).to_string(),
        "original_time": rec.time,
        "logged_time": millis(rec),
    });
    // `sequence` is an OCSF integer_t (32 bits); `unmapped.seq` always has it.
    if let Ok(seq) = i32::try_from(rec.seq) {
        m["sequence"] = json!(seq);
    }
    if let Some(s) = &rec.session_id {
        m["correlation_uid"] = json!(s);
    }
    m
}

/// What OCSF has no attribute for (in `class`).
fn unmapped(rec: &Record, class: Class) -> Map<String, Value> {
    let mut u = Map::new();
    let mut put = |k: &str, v: Value| {
        if !v.is_null() {
            u.insert(k.into(), v);
        }
    };
    put("seq", json!(rec.seq));
    put("prev_hash", json!(rec.prev_hash));
    put("decision", json!(rec.decision));
    put("rows", json!(rec.rows));
    put("duration_us", json!(rec.duration_us));
    if !rec.masked.is_empty() {
        put("masked", json!(rec.masked));
    }
    if rec.rule.is_none() {
        put("policy_hash", json!(rec.policy_hash));
    }
    if let Some(st) = &rec.statement {
        put("fingerprint", json!(st.fingerprint));
        put("command", json!(st.command));
        if !st.objects.is_empty() {
            put("objects", json!(st.objects));
        }
    }
    put("actor", actor_rest(rec.actor.as_ref()));
    let mut detail = rec.detail.clone();
    detail.remove("statement_no");
    if !detail.is_empty() {
        put("detail", Value::Object(detail));
    }
    if class == BASE {
        put("session_id", json!(rec.session_id));
        put("statement", json!(rec.statement));
        put("client", json!(rec.client));
        put("server", json!(rec.server));
        put("db", json!(rec.db));
    } else {
        let app = rec.db.as_ref().and_then(|d| d.application_name.as_ref());
        put("application_name", json!(app));
    }
    u
}

/// What `actor.process` does not say of the actor: all of it without a pid, else its
/// cgroup, unit and network namespace.
fn actor_rest(actor: Option<&Actor>) -> Value {
    let Some(a) = actor else {
        return Value::Null;
    };
    if a.pid.is_none() {
        return json!(a);
    }
    let rest = Actor {
        cgroup: a.cgroup.clone(),
        unit: a.unit.clone(),
        netns: a.netns,
        ..Actor::default()
    };
    if rest == Actor::default() {
        Value::Null
    } else {
        json!(rest)
    }
}
