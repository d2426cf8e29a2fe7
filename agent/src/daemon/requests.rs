//! The answers to control-socket requests (status, tags, approvals, grants): the control
//! module speaks the protocol, the daemon answers from its state.
use serde_json::json;
use tracing::info;

use super::{Shared, snapshot};
use crate::control::{Answer, Request};

pub(super) fn handle(shared: &Shared, req: Request, uid: u32) -> anyhow::Result<Answer> {
    match req {
        Request::Status => Ok(Answer::Status(Box::new(snapshot::status(shared)))),
        Request::Tag { path, workload } => {
            let p = shared.tag(&path, &workload)?;
            info!(cgroup = %p, workload, "tagged");
            Ok(Answer::Json(json!({ "path": p, "workload": workload })))
        }
        Request::Untag { path } => {
            let p = shared.untag(&path)?;
            info!(cgroup = %p, "untagged");
            Ok(Answer::Json(json!({ "path": p })))
        }
        Request::ApprovalsList => Ok(Answer::Approvals(snapshot::approvals(
            &shared.env.approvals,
        ))),
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
            Ok(Answer::Json(
                json!({ "request": request, "resolution": resolution }),
            ))
        }
        Request::GrantsRevoke { id } => {
            let caller = crate::approval::Caller::from_uid(uid);
            let g = shared.env.approvals.revoke(id, &caller)?;
            info!(grant = id, workload = %g.workload, rule = %g.rule, "grant revoked");
            Ok(Answer::Json(json!({ "revoked": g })))
        }
    }
}
