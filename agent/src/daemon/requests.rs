//! The answers to control-socket requests (status, tags, approvals, grants): the control
//! module speaks the protocol, the daemon answers from its state.
use serde_json::{Value, json};
use tracing::info;

use super::Shared;
use crate::control::Request;

pub(super) fn handle(shared: &Shared, req: Request, uid: u32) -> anyhow::Result<Value> {
    match req {
        Request::Status => Ok(status(shared)),
        Request::Tag { path, workload } => {
            let p = shared.tag(&path, &workload)?;
            info!(cgroup = %p, workload, "tagged");
            Ok(json!({ "path": p, "workload": workload }))
        }
        Request::Untag { path } => {
            let p = shared.untag(&path)?;
            info!(cgroup = %p, "untagged");
            Ok(json!({ "path": p }))
        }
        Request::ApprovalsList => Ok(
            json!({ "pending": shared.env.approvals.pending(), "grants": shared.env.approvals.grants() }),
        ),
        Request::ApprovalsDecide {
            id,
            approve,
            grant_seconds,
            comment,
        } => {
            let caller = crate::approval::Caller::from_uid(uid);
            let grant = grant_seconds.map(std::time::Duration::from_secs);
            // The decision, or its refusal, is recorded by the approvals themselves.
            let (request, resolution) = shared
                .env
                .approvals
                .decide(id, &caller, approve, grant, comment)?;
            Ok(json!({ "request": request, "resolution": resolution }))
        }
        Request::GrantsRevoke { id } => {
            let g = shared
                .env
                .approvals
                .revoke(id)
                .ok_or_else(|| anyhow::anyhow!("no open grant {id}"))?;
            info!(grant = id, workload = %g.workload, rule = %g.rule, "grant revoked");
            Ok(json!({ "revoked": g }))
        }
    }
}

fn status(shared: &Shared) -> Value {
    let (tagged, sticky, workloads) = {
        let t = shared
            .tagger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tagged: Vec<Value> = t
            .tagged()
            .map(|(id, tag)| json!({ "id": id.0, "path": tag.path, "workload": tag.workload, "source": tag.source }))
            .collect();
        let sticky: Vec<Value> = t.sticky().map(|p| json!(p)).collect();
        let workloads: Vec<Value> = shared
            .config
            .workloads
            .iter()
            .map(|w| json!({ "name": w.name, "systemd_unit": w.systemd_unit, "cgroup": w.cgroup }))
            .collect();
        (tagged, sticky, workloads)
    };
    let (attached, counters, unix) = match &shared.redirect {
        Some(r) => {
            let r = r.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let counters: serde_json::Map<String, Value> = r
                .counters()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), json!(v)))
                .collect();
            let unix = match &r.unix_disabled {
                Some(why) => json!({
                    "state": "off (--tcp-only): tagged workloads can reach Unix sockets directly",
                    "missing": why,
                }),
                None => json!({
                    "state": if shared.listen_unix.is_some() { "redirect" } else { "refuse (listen.unix: null)" },
                    "listen": shared.listen_unix,
                    "intercept": shared.config.intercept_unix,
                    "allow": shared.config.unix_allow,
                }),
            };
            (json!(r.attached()), Value::Object(counters), unix)
        }
        None => (
            json!([]),
            json!({}),
            json!({ "state": "off (listen-only)" }),
        ),
    };
    let sessions: Vec<Value> = shared
        .env
        .registry
        .list()
        .iter()
        .map(|s| json!(s))
        .collect();
    json!({
        "agent": {
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "started": shared.started,
            "mode": if shared.redirect.is_some() { "redirect" } else { "listen-only" },
        },
        "cgroup2_root": shared.cgroup_root,
        "listen": shared.listen,
        "intercept": shared.config.intercept.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "unix": unix,
        "namespaces": shared.namespaces.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values().map(|n| json!(n)).collect::<Vec<_>>(),
        "attached": attached,
        "counters": counters,
        "workloads": workloads,
        "tagged": tagged,
        "sticky_paths": sticky,
        "sessions": sessions,
                "approvals": { "pending": shared.env.approvals.pending(), "grants": shared.env.approvals.grants() },
        "audit": shared.env.journal.status(),
        "policy": {
            "version": shared.env.policy.current().version,
            "files": shared.env.policy.current().files.iter().map(|(p, h)| json!({ "path": p, "sha256": h })).collect::<Vec<_>>(),
        },
    })
}
