//! What the API shows of requests, grants and approvers: the normalised statement only (no
//! literals leave the host), the process behind it, and whether the caller may decide.
use serde_json::{Value, json};

use crate::approval::{Approvals, Caller, Grant, Request};

/// The caller, as `whoami` and the list show them.
pub(super) fn approver(c: &Caller) -> Value {
    json!({ "name": c.name(), "groups": c.groups, "auth": c.auth.as_str() })
}

/// The list: pending requests, open grants, the server's clock and the state's version.
pub(super) fn approvals(a: &Approvals, caller: &Caller, version: u64, base: &str) -> Value {
    let pending: Vec<Value> = a
        .pending()
        .iter()
        .map(|r| request(r, caller, base))
        .collect();
    let grants: Vec<Value> = a.grants().iter().map(grant).collect();
    json!({
        "now": super::super::now(),
        "version": version,
        "approver": approver(caller),
        "pending": pending,
        "grants": grants,
    })
}

fn request(r: &Request, caller: &Caller, base: &str) -> Value {
    json!({
        "id": r.id,
        "url": page_url(base, r.id),
        "workload": r.workload,
        "session": r.session.to_string(),
        "statement": r.normalized,
        "reason": r.reason,
        "rule": {
            "id": r.rule.id,
            "approvers": r.rule.approvers,
            "timeout_seconds": r.rule.timeout.as_secs(),
            "max_grant_seconds": r.rule.max_grant.map(|d| d.as_secs()),
        },
        "identity": {
            "pid": r.pid,
            "exe": r.exe,
            "uid": r.uid,
            "user": r.process_user,
            "unit": r.unit,
            "cgroup": r.cgroup,
        },
        "requested": r.requested,
        "expires": r.expires,
        "may_decide": caller.may_approve(&r.rule),
    })
}

/// A grant.
pub(super) fn grant(g: &Grant) -> Value {
    json!({
        "id": g.id,
        "workload": g.workload,
        "rule": g.rule,
        "until": g.until,
        "by": g.by.name(),
        "by_auth": g.by.auth.as_str(),
        "comment": g.comment,
    })
}

/// The page's link to one request (the webhook's `url`).
pub fn page_url(base: &str, id: u64) -> String {
    format!("{}/#request-{id}", base.trim_end_matches('/'))
}
