//! What approvals leave behind: an audit record for every request and how it ended (and for
//! every refused decision), and the webhook announcing a held statement. [`super::Approvals`]
//! writes them itself as its state changes, so no caller can hold or end a request without
//! its record.
use std::time::Duration;

use tracing::{error, info, warn};

use super::{Caller, DecideError, Request, Resolution};
use crate::audit::{Decision, Event, Journal, Outcome, Record};

/// Where approval records and announcements go.
#[derive(Clone, Default)]
pub struct Recorder {
    /// The journal (`None` in unit tests of the approval state alone).
    journal: Option<Journal>,
    /// `approvals.webhook`, and the time per attempt.
    webhook: Option<(String, Duration)>,
}

impl Recorder {
    /// Records into `journal`, announcing held statements to `webhook`.
    pub fn new(journal: Journal, webhook: Option<(String, Duration)>) -> Self {
        Self {
            journal: Some(journal),
            webhook,
        }
    }

    /// Appends without waiting (approval events hold nothing up).
    fn spawn(&self, rec: Record) {
        let Some(j) = self.journal.clone() else {
            return;
        };
        tokio::spawn(async move {
            if let Err(e) = j.append(rec).await {
                error!("audit: {e}");
            }
        });
    }

    /// A statement was held: its record, and the webhook.
    pub(super) fn requested(&self, request: &Request) {
        info!(request = request.id, rule = %request.rule.id, workload = %request.workload, session = %request.session, "approval requested");
        self.spawn(self.record(request, Event::ApprovalRequested, Decision::Hold));
        self.notify_webhook(request);
    }

    /// A request ended: approved, denied, expired or withdrawn.
    pub(super) fn resolved(&self, request: &Request, resolution: &Resolution) {
        info!(request = request.id, rule = %request.rule.id, workload = %request.workload, session = %request.session, resolution = ?resolution, "approval resolved");
        let (event, decision) = match resolution {
            Resolution::Approved { .. } => (Event::ApprovalGranted, Decision::Allow),
            Resolution::Denied { .. } => (Event::ApprovalDenied, Decision::Deny),
            Resolution::Expired => (Event::ApprovalExpired, Decision::Deny),
            Resolution::Withdrawn { .. } => (Event::ApprovalWithdrawn, Decision::Deny),
        };
        let mut rec = self.record(request, event, decision);
        match resolution {
            Resolution::Approved { by, comment, grant } => {
                rec = rec
                    .detail("approver_uid", by.uid)
                    .detail("approver", by.user.clone())
                    .detail("comment", comment.clone())
                    .detail("grant", *grant);
            }
            Resolution::Denied { by, comment } => {
                rec = rec
                    .detail("approver_uid", by.uid)
                    .detail("approver", by.user.clone())
                    .detail("comment", comment.clone());
            }
            Resolution::Withdrawn { reason } => rec = rec.detail("reason", reason.clone()),
            Resolution::Expired => {}
        }
        self.spawn(rec);
    }

    /// A decision was refused (unauthorized caller, unknown request).
    pub(super) fn refused(&self, id: u64, caller: &Caller, e: &DecideError) {
        warn!(request = id, uid = caller.uid, user = ?caller.user, "approval decision refused: {e}");
        self.spawn(
            Record::new(Event::ApprovalDenied)
                .decision(Decision::Deny)
                .rule("approval.unauthorized")
                .outcome(Outcome::Failure)
                .error(e.to_string())
                .detail("request", id)
                .detail("caller_uid", caller.uid)
                .detail("caller_user", caller.user.clone()),
        );
    }

    fn record(&self, request: &Request, event: Event, decision: Decision) -> Record {
        let mut rec = Record::new(event)
            .session(request.session)
            .workload(&request.workload)
            .decision(decision)
            .rule(request.rule.id.clone())
            .detail("request", request.id);
        if let Some(j) = &self.journal {
            rec = rec.statement(j.statement(&request.statement));
        }
        if let Some(pid) = request.pid {
            rec = rec.detail("pid", pid);
        }
        rec
    }

    /// Announces a held statement to the webhook; a failure is logged and audited, and the
    /// request still waits.
    fn notify_webhook(&self, request: &Request) {
        let (Some((url, timeout)), Some(journal)) = (self.webhook.clone(), self.journal.clone())
        else {
            return;
        };
        let body = serde_json::to_vec(
            &serde_json::json!({ "event": "approval.requested", "request": request }),
        )
        .unwrap_or_default();
        let (id, rule, workload, session) = (
            request.id,
            request.rule.id.clone(),
            request.workload.clone(),
            request.session,
        );
        tokio::spawn(async move {
            let result = match crate::webhook::Url::parse(&url) {
                Ok(u) => crate::webhook::send(&u, body, timeout).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result.map_err(|e| e.chain()) {
                warn!(request = id, webhook = %url, "approval webhook failed after {} attempts: {e}; the request still waits", crate::webhook::ATTEMPTS);
                let rec = Record::new(Event::ApprovalRequested)
                    .session(session)
                    .workload(&workload)
                    .decision(Decision::Hold)
                    .rule(rule)
                    .outcome(Outcome::Failure)
                    .error(format!("webhook {url}: {e}"))
                    .detail("request", id)
                    .detail("webhook_attempts", crate::webhook::ATTEMPTS);
                let _ = journal.append(rec).await;
            }
        });
    }
}
