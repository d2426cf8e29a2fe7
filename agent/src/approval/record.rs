//! What approvals leave behind: an audit record for every request and how it ended (and for
//! every refused decision), and the webhook announcing a held statement. [`super::Approvals`]
//! writes them itself as its state changes, so no caller can hold or end a request without
//! its record.
use std::time::Duration;

use tracing::{error, info, warn};

use super::{Caller, DecideError, Grant, Request, Resolution, WebhookFormat};
use crate::audit::{Decision, Event, Journal, Outcome, Record};

/// Where held statements are announced.
#[derive(Clone, Debug)]
pub struct Webhook {
    /// `approvals.webhook`.
    pub url: String,
    /// Time per attempt.
    pub timeout: Duration,
    /// The body's shape.
    pub format: WebhookFormat,
}

/// Where approval records and announcements go.
#[derive(Clone, Default)]
pub struct Recorder {
    /// The journal (`None` in unit tests of the approval state alone).
    journal: Option<Journal>,
    /// `approvals.webhook`.
    webhook: Option<Webhook>,
    /// The approval page's address (`approvals.http`), for the webhook's links.
    page: Option<String>,
}

/// The approver's facts on a record: name, uid (local users), how they authenticated, and
/// the HTTP peer.
fn approver(rec: Record, prefix: &str, by: &Caller) -> Record {
    let mut rec = rec
        .detail(format!("{prefix}_uid"), by.uid)
        .detail(prefix, by.user.clone())
        .detail(format!("{prefix}_auth"), by.auth.as_str());
    if !by.groups.is_empty() && by.auth != super::Auth::Peercred {
        rec = rec.detail(format!("{prefix}_groups"), by.groups.clone());
    }
    if let Some(r) = &by.remote {
        rec = rec.detail(format!("{prefix}_remote"), r.clone());
    }
    rec
}

impl Recorder {
    /// Records into `journal`, announcing held statements to `webhook` with links to `page`.
    pub fn new(journal: Journal, webhook: Option<Webhook>, page: Option<String>) -> Self {
        Self {
            journal: Some(journal),
            webhook,
            page,
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
                rec = approver(rec, "approver", by)
                    .detail("comment", comment.clone())
                    .detail("grant", *grant);
            }
            Resolution::Denied { by, comment } => {
                rec = approver(rec, "approver", by).detail("comment", comment.clone());
            }
            Resolution::Withdrawn { reason } => rec = rec.detail("reason", reason.clone()),
            Resolution::Expired => {}
        }
        self.spawn(rec);
    }

    /// A decision or revocation was refused (unauthorized caller, unknown request or grant).
    pub(super) fn refused(&self, id: u64, caller: &Caller, e: &DecideError) {
        warn!(id, uid = ?caller.uid, user = ?caller.user, auth = caller.auth.as_str(), remote = ?caller.remote, "approval decision refused: {e}");
        let what = match e {
            DecideError::NoGrant(_) | DecideError::MayNotRevoke { .. } => "grant",
            _ => "request",
        };
        self.spawn(approver(
            Record::new(Event::ApprovalDenied)
                .decision(Decision::Deny)
                .rule("approval.unauthorized")
                .outcome(Outcome::Failure)
                .error(e.to_string())
                .detail(what, id),
            "caller",
            caller,
        ));
    }

    /// An HTTP call without a valid token (401): from where, what, and why it failed.
    pub(super) fn unauthenticated(&self, remote: &str, method: &str, path: &str, why: &str) {
        warn!(
            remote,
            method, path, "approvals.http: unauthenticated call refused: {why}"
        );
        self.spawn(
            Record::new(Event::ApprovalDenied)
                .decision(Decision::Deny)
                .rule("approval.unauthenticated")
                .outcome(Outcome::Failure)
                .error(why.to_owned())
                .detail("caller_remote", remote.to_owned())
                .detail("method", method.to_owned())
                .detail("path", path.to_owned()),
        );
    }

    /// An HTTP call from a tagged workload on this host, or from a local process that could
    /// not be identified (403).
    pub(super) fn workload_caller(&self, remote: &str, pid: Option<u32>, path: &str, why: &str) {
        warn!(remote, ?pid, path, "approvals.http: call refused: {why}");
        self.spawn(
            Record::new(Event::ApprovalDenied)
                .decision(Decision::Deny)
                .rule("approval.workload_caller")
                .outcome(Outcome::Failure)
                .error(why.to_owned())
                .detail("caller_remote", remote.to_owned())
                .detail("caller_pid", pid)
                .detail("path", path.to_owned()),
        );
    }

    /// Refused HTTP calls of a peer past the per-minute number recorded one by one: how many.
    pub(super) fn refusals_suppressed(
        &self,
        peer: Option<String>,
        kind: &str,
        count: u64,
        window: Duration,
    ) {
        warn!(peer = ?peer, kind, count, "approvals.http: refused calls past the per-minute record limit");
        self.spawn(
            Record::new(Event::ApprovalDenied)
                .decision(Decision::Deny)
                .rule("approval.refusals_suppressed")
                .outcome(Outcome::Failure)
                .error(format!(
                    "{count} more refused calls within {}s had no record of their own",
                    window.as_secs()
                ))
                .detail("caller_remote", peer)
                .detail("of", kind.to_owned())
                .detail("suppressed", count),
        );
    }

    /// A grant was closed before its time.
    pub(super) fn revoked(&self, g: &Grant, by: &Caller) {
        info!(grant = g.id, rule = %g.rule, workload = %g.workload, by = %by.name(), "grant revoked");
        self.spawn(approver(
            Record::new(Event::ApprovalRevoked)
                .workload(&g.workload)
                .rule(g.rule.clone())
                .detail("grant", g.id)
                .detail("until", g.until),
            "revoker",
            by,
        ));
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
        let (Some(hook), Some(journal)) = (self.webhook.clone(), self.journal.clone()) else {
            return;
        };
        let url = self
            .page
            .as_deref()
            .map(|base| super::http::page_url(base, request.id));
        let body = serde_json::to_vec(&webhook_body(hook.format, request, url.as_deref()))
            .unwrap_or_default();
        let (id, rule, workload, session) = (
            request.id,
            request.rule.id.clone(),
            request.workload.clone(),
            request.session,
        );
        tokio::spawn(async move {
            let result = match crate::webhook::Url::parse(&hook.url) {
                Ok(u) => crate::webhook::send(&u, body, hook.timeout).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result.map_err(|e| e.chain()) {
                warn!(request = id, webhook = %hook.url, "approval webhook failed after {} attempts: {e}; the request still waits", crate::webhook::ATTEMPTS);
                let rec = Record::new(Event::ApprovalRequested)
                    .session(session)
                    .workload(&workload)
                    .decision(Decision::Hold)
                    .rule(rule)
                    .outcome(Outcome::Failure)
                    .error(format!("webhook {}: {e}", hook.url))
                    .detail("request", id)
                    .detail("webhook_attempts", crate::webhook::ATTEMPTS);
                let _ = journal.append(rec).await;
            }
        });
    }
}

/// The webhook's body. The statement is the normalised one (no literals leave the host).
pub(super) fn webhook_body(
    format: WebhookFormat,
    request: &Request,
    url: Option<&str>,
) -> serde_json::Value {
    use serde_json::json;
    match format {
        WebhookFormat::Json => {
            json!({ "event": "approval.requested", "request": webhook_request(request), "url": url })
        }
        WebhookFormat::Slack => {
            let who = match (&request.unit, request.pid) {
                (Some(u), Some(pid)) => format!("{u}, pid {pid}"),
                (None, Some(pid)) => format!("pid {pid}"),
                (Some(u), None) => u.clone(),
                (None, None) => "unknown process".into(),
            };
            let mut text = format!(
                "pgwarden: a statement of *{}* ({}) waits for approval under rule `{}`",
                slack_escape(&request.workload),
                slack_escape(&who),
                slack_escape(&request.rule.id)
            );
            if let Some(r) = &request.reason {
                text.push_str(&format!(": {}", slack_escape(r)));
            }
            let statement = slack_escape(&request.normalized).replace("```", "` ` `");
            let mut blocks = vec![
                json!({"type": "section", "text": {"type": "mrkdwn", "text": text.clone()}}),
                json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("```{statement}```")}}),
            ];
            if let Some(u) = url {
                text.push_str(&format!(" <{u}|review request {}>", request.id));
                blocks.push(json!({"type": "actions", "elements": [
                    {"type": "button", "text": {"type": "plain_text", "text": "Review"}, "url": u}
                ]}));
            }
            json!({ "text": text, "blocks": blocks })
        }
    }
}

/// The request as the webhook sends it: the normalised statement in place of the one with
/// literals (a chat room is off the host).
fn webhook_request(request: &Request) -> serde_json::Value {
    let mut v = serde_json::to_value(request).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("statement".into(), request.normalized.clone().into());
        o.remove("normalized");
    }
    v
}

/// Slack's three control characters.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_body_links_the_page_and_shows_no_literals() {
        let a = super::super::Approvals::default();
        let (r, _rx) = a.request(super::super::Hold {
            rule: super::super::Rule {
                id: "bulk".into(),
                approvers: vec!["root".into()],
                timeout: Duration::from_secs(60),
                max_grant: None,
                reason: None,
                run_as: None,
            },
            workload: "payments-mcp",
            session: crate::names::SessionId(1),
            statement: "SELECT * FROM payments WHERE merchant = '<secret>'".into(),
            sql: "SELECT * FROM payments WHERE merchant = '<secret>'",
            reason: Some("a result of more than 100 rows".into()),
            who: None,
        });
        let url = super::super::http::page_url("https://pgw.example:9188/", r.id);
        assert_eq!(url, format!("https://pgw.example:9188/#request-{}", r.id));
        let slack = webhook_body(WebhookFormat::Slack, &r, Some(&url)).to_string();
        assert!(slack.contains(&url), "{slack}");
        assert!(slack.contains("\"text\""), "{slack}");
        assert!(slack.contains("more than 100 rows"), "{slack}");
        assert!(!slack.contains("secret"), "{slack}");
        let plain = webhook_body(WebhookFormat::Json, &r, Some(&url));
        assert_eq!(plain["url"], url.as_str());
        assert_eq!(plain["event"], "approval.requested");
        assert!(!plain.to_string().contains("secret"), "{plain}");
    }
}
