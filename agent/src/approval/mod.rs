//! Just-in-time approval: a statement a policy rule marks `require_approval` is held in its
//! session until a person allowed by the rule approves or denies it, or it times out. An
//! approval may open a grant: the same rule then passes for that workload for a while.
//!
//! Approvers reach the same state from the control socket (`pgwarden approvals ...`, known by
//! SO_PEERCRED) and from the HTTP API and page ([`http`], known by a bearer token of
//! [`approvers`] or a trusted SSO proxy's header).
use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::oneshot;

use crate::names::SessionId;

pub mod approvers;
mod config;
pub mod http;
mod record;
pub use config::{ApprovalsConfig, HttpConfig, TrustedHeader, WebhookFormat};
pub use record::{Recorder, Webhook};

/// An approval rule of a profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// Rule id, e.g. `bulk-payments-read`.
    pub id: String,
    /// Who may approve: user names, `uid:N`, `group:NAME`.
    pub approvers: Vec<String>,
    /// How long a request waits before it expires.
    pub timeout: Duration,
    /// Longest grant an approver may open with `--for` (none: grants are not allowed).
    pub max_grant: Option<Duration>,
    /// The rule's `reason`, shown to approvers.
    pub reason: Option<String>,
    /// The role an approved (or granted) statement runs as: pgwarden sets it around that one
    /// statement (`SET ROLE`, then `RESET ROLE`), which the workload itself may not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
}

/// How an approver proved who they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Auth {
    /// A local user on the control socket (SO_PEERCRED).
    #[default]
    Peercred,
    /// A bearer token of a named approver (`pgwarden approvers add`), over HTTP.
    Token,
    /// The user header of a trusted SSO proxy in front of the HTTP listener.
    Header,
    /// An OIDC ID token, verified against the configured issuer's keys.
    Oidc,
}

impl Auth {
    /// The name records and the API use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Peercred => "peercred",
            Self::Token => "token",
            Self::Header => "header",
            Self::Oidc => "oidc",
        }
    }
}

/// Who is deciding: a local user on the control socket, or a named approver over HTTP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Caller {
    /// uid, for a local user (SO_PEERCRED).
    pub uid: Option<u32>,
    /// The local user's name, or the HTTP approver's.
    pub user: Option<String>,
    /// Group names: the local user's Unix groups, or the approver's.
    pub groups: Vec<String>,
    /// How they authenticated.
    pub auth: Auth,
    /// The HTTP peer address, for an approver over HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
}

impl Caller {
    /// The local user with uid `uid`, names looked up in the user database.
    pub fn from_uid(uid: u32) -> Self {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten();
        let groups = user
            .as_ref()
            .and_then(|u| {
                let name = std::ffi::CString::new(u.name.clone()).ok()?;
                nix::unistd::getgrouplist(&name, u.gid).ok()
            })
            .unwrap_or_default()
            .into_iter()
            .filter_map(|g| {
                nix::unistd::Group::from_gid(g)
                    .ok()
                    .flatten()
                    .map(|g| g.name)
            })
            .collect();
        Self {
            uid: Some(uid),
            user: user.map(|u| u.name),
            groups,
            auth: Auth::Peercred,
            remote: None,
        }
    }

    /// A named approver over HTTP.
    pub fn approver(name: &str, groups: Vec<String>, auth: Auth, remote: String) -> Self {
        Self {
            uid: None,
            user: Some(name.to_owned()),
            groups,
            auth,
            remote: Some(remote),
        }
    }

    /// The name error messages and records show: the user, else `uid N`.
    pub fn name(&self) -> String {
        match (&self.user, self.uid) {
            (Some(u), _) => u.clone(),
            (None, Some(uid)) => format!("uid {uid}"),
            (None, None) => "?".into(),
        }
    }

    /// Whether the rule lets this caller decide. `uid:N` and a bare name are local users
    /// (the control socket); `user:NAME` is a named HTTP approver; `group:G` is either's
    /// group. A token approver called `root` is not the local root.
    pub fn may_approve(&self, rule: &Rule) -> bool {
        rule.approvers.iter().any(|a| self.is(a))
    }

    /// Root on the control socket.
    fn is_local_root(&self) -> bool {
        self.auth == Auth::Peercred && self.uid == Some(0)
    }

    fn is(&self, approver: &str) -> bool {
        let local = self.auth == Auth::Peercred;
        if let Some(uid) = approver.strip_prefix("uid:") {
            local && self.uid.is_some() && uid.parse().ok() == self.uid
        } else if let Some(g) = approver.strip_prefix("group:") {
            self.groups.iter().any(|mine| mine == g)
        } else if let Some(name) = approver.strip_prefix("user:") {
            !local && self.user.as_deref() == Some(name)
        } else {
            local && self.user.as_deref() == Some(approver)
        }
    }
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Resolution {
    /// Approved; `grant` is the id of the grant it opened, if any.
    Approved {
        /// Approver.
        by: Caller,
        /// Their comment.
        comment: Option<String>,
        /// The grant opened with `--for`.
        grant: Option<u64>,
    },
    /// Denied.
    Denied {
        /// Who denied.
        by: Caller,
        /// Their comment.
        comment: Option<String>,
    },
    /// Nobody decided in time.
    Expired,
    /// The client cancelled or left, or the agent is stopping.
    Withdrawn {
        /// Why.
        reason: String,
    },
}

/// A held statement, as `approvals list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Request {
    /// Request id.
    pub id: u64,
    /// The rule that holds it.
    pub rule: Rule,
    /// Workload.
    pub workload: String,
    /// Session.
    pub session: SessionId,
    /// Statement text (card numbers masked), as the control socket shows it.
    pub statement: String,
    /// The statement normalised (literals replaced), as the HTTP API and page show it.
    pub normalized: String,
    /// Why it waits (the rule's reason, the rows sent so far).
    pub reason: Option<String>,
    /// Process behind it.
    pub pid: Option<u32>,
    /// Its executable.
    pub exe: Option<String>,
    /// The process's uid.
    pub uid: Option<u32>,
    /// Its user name.
    pub process_user: Option<String>,
    /// The systemd unit owning its cgroup.
    pub unit: Option<String>,
    /// Its cgroup, relative to the cgroup2 root.
    pub cgroup: Option<String>,
    /// When it was held, seconds since the epoch.
    pub requested: u64,
    /// When it expires, seconds since the epoch.
    pub expires: u64,
}

/// What a session holds a statement with.
pub struct Hold<'a> {
    /// The rule that holds it.
    pub rule: Rule,
    /// Workload.
    pub workload: &'a str,
    /// Session.
    pub session: SessionId,
    /// The statement as the control socket shows it (card numbers masked).
    pub statement: String,
    /// The SQL to normalise for the HTTP API and page.
    pub sql: &'a str,
    /// Why it waits.
    pub reason: Option<String>,
    /// The process behind the session, when the kernel recorded it.
    pub who: Option<&'a crate::identity::Identity>,
}

/// An open grant.
#[derive(Clone, Debug, Serialize)]
pub struct Grant {
    /// Grant id.
    pub id: u64,
    /// Workload it covers.
    pub workload: String,
    /// Rule it passes.
    pub rule: String,
    /// The rule's approvers: who may revoke it over HTTP.
    pub approvers: Vec<String>,
    /// Until, seconds since the epoch.
    pub until: u64,
    /// Who opened it.
    pub by: Caller,
    /// Their comment.
    pub comment: Option<String>,
}

/// Why a decision was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecideError {
    /// No pending request with that id.
    #[error("no pending approval request {0}")]
    NotFound(u64),
    /// The caller is not an approver of the request's rule.
    #[error("{caller} may not decide request {id}: the rule `{rule}` accepts {approvers}")]
    NotAuthorized {
        /// Request.
        id: u64,
        /// Caller, as `Caller::name` and its authentication show it.
        caller: String,
        /// Rule.
        rule: String,
        /// Its approvers.
        approvers: String,
    },
    /// `--for` beyond what the rule allows.
    #[error("the rule `{0}` allows grants of at most {1}s")]
    GrantTooLong(String, u64),
    /// No open grant with that id.
    #[error("no open grant {0}")]
    NoGrant(u64),
    /// The caller may not revoke the grant (not an approver of its rule).
    #[error("{caller} may not revoke grant {id}: the rule `{rule}` accepts {approvers}")]
    MayNotRevoke {
        /// Grant.
        id: u64,
        /// Caller.
        caller: String,
        /// Rule.
        rule: String,
        /// Its approvers.
        approvers: String,
    },
}

impl DecideError {
    /// The HTTP status the API answers this with.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::NotFound(_) | Self::NoGrant(_) => 404,
            Self::NotAuthorized { .. } | Self::MayNotRevoke { .. } => 403,
            Self::GrantTooLong(..) => 422,
        }
    }
}

struct Waiting {
    request: Request,
    reply: oneshot::Sender<Resolution>,
}

#[derive(Default)]
struct State {
    next: u64,
    pending: BTreeMap<u64, Waiting>,
    grants: BTreeMap<u64, Grant>,
}

/// The agent's approval requests and grants. Every request, resolution and refused decision
/// is recorded (and a request announced) by its [`Recorder`] as the state changes.
pub struct Approvals {
    state: Mutex<State>,
    recorder: Recorder,
    /// Bumped on every change of the pending requests or grants (the page's long poll).
    changes: tokio::sync::watch::Sender<u64>,
}

impl Default for Approvals {
    fn default() -> Self {
        Self::new(Recorder::default())
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Approvals {
    /// Approvals that record through `recorder`.
    pub fn new(recorder: Recorder) -> Self {
        Self {
            state: Mutex::default(),
            recorder,
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The recorder (the HTTP API records its refusals through it).
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// Follows changes: the value is bumped whenever a request or grant comes or goes.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The open grant letting `workload` pass `rule`, if any.
    pub fn grant_for(&self, workload: &str, rule: &str) -> Option<Grant> {
        let mut st = self.state();
        let t = now();
        st.grants.retain(|_, g| g.until > t);
        st.grants
            .values()
            .find(|g| g.workload == workload && g.rule == rule)
            .cloned()
    }

    /// Holds a statement: returns the request (with its id) and where the decision arrives.
    pub fn request(&self, hold: Hold<'_>) -> (Request, oneshot::Receiver<Resolution>) {
        let (tx, rx) = oneshot::channel();
        let normalized = crate::audit::redact::statement_text(hold.sql, false).0;
        let who = hold.who;
        let mut st = self.state();
        st.next += 1;
        let t = now();
        let request = Request {
            id: st.next,
            expires: t + hold.rule.timeout.as_secs(),
            rule: hold.rule,
            workload: hold.workload.to_owned(),
            session: hold.session,
            statement: hold.statement,
            normalized,
            reason: hold.reason,
            pid: who.map(|w| w.pid),
            exe: who.and_then(|w| w.exe.clone()),
            uid: who.map(|w| w.uid),
            process_user: who.and_then(|w| w.user.clone()),
            unit: who.and_then(|w| w.unit.clone()),
            cgroup: who.and_then(|w| w.cgroup.as_ref().map(|c| c.0.clone())),
            requested: t,
        };
        st.pending.insert(
            request.id,
            Waiting {
                request: request.clone(),
                reply: tx,
            },
        );
        drop(st);
        self.changed();
        self.recorder.requested(&request);
        (request, rx)
    }

    /// A person decides. Approving with `grant_for` opens a grant for the workload. The
    /// decision, or its refusal, is recorded.
    pub fn decide(
        &self,
        id: u64,
        caller: &Caller,
        approve: bool,
        grant_for: Option<Duration>,
        comment: Option<String>,
    ) -> Result<(Request, Resolution), DecideError> {
        let decided = self.decide_unrecorded(id, caller, approve, grant_for, comment);
        match &decided {
            Ok((request, resolution)) => {
                self.changed();
                self.recorder.resolved(request, resolution);
            }
            Err(e) => self.recorder.refused(id, caller, e),
        }
        decided
    }

    fn decide_unrecorded(
        &self,
        id: u64,
        caller: &Caller,
        approve: bool,
        grant_for: Option<Duration>,
        comment: Option<String>,
    ) -> Result<(Request, Resolution), DecideError> {
        let mut st = self.state();
        let waiting = st.pending.get(&id).ok_or(DecideError::NotFound(id))?;
        let rule = &waiting.request.rule;
        if !caller.may_approve(rule) {
            return Err(DecideError::NotAuthorized {
                id,
                caller: describe(caller),
                rule: rule.id.clone(),
                approvers: rule.approvers.join(", "),
            });
        }
        if approve && let Some(d) = grant_for {
            let max = rule.max_grant.map_or(0, |m| m.as_secs());
            if d.as_secs() > max {
                return Err(DecideError::GrantTooLong(rule.id.clone(), max));
            }
        }
        let Some(w) = st.pending.remove(&id) else {
            return Err(DecideError::NotFound(id));
        };
        let resolution = if approve {
            let grant = grant_for.map(|d| {
                st.next += 1;
                let g = Grant {
                    id: st.next,
                    workload: w.request.workload.clone(),
                    rule: w.request.rule.id.clone(),
                    approvers: w.request.rule.approvers.clone(),
                    until: now() + d.as_secs(),
                    by: caller.clone(),
                    comment: comment.clone(),
                };
                st.grants.insert(g.id, g);
                st.next
            });
            Resolution::Approved {
                by: caller.clone(),
                comment,
                grant,
            }
        } else {
            Resolution::Denied {
                by: caller.clone(),
                comment,
            }
        };
        let _ = w.reply.send(resolution.clone());
        Ok((w.request, resolution))
    }

    /// Ends a request without a decision (timeout, client gone, agent stopping), recorded.
    pub fn end(&self, id: u64, resolution: Resolution) -> Option<Request> {
        let w = self.state().pending.remove(&id)?;
        let request = w.request.clone();
        self.changed();
        self.recorder.resolved(&request, &resolution);
        let _ = w.reply.send(resolution);
        Some(request)
    }

    /// Withdraws every request of a session (its client cancelled); returns them.
    pub fn withdraw_session(&self, session: SessionId, reason: &str) -> Vec<Request> {
        let ids: Vec<u64> = self
            .state()
            .pending
            .values()
            .filter(|w| w.request.session == session)
            .map(|w| w.request.id)
            .collect();
        ids.into_iter()
            .filter_map(|id| {
                self.end(
                    id,
                    Resolution::Withdrawn {
                        reason: reason.to_owned(),
                    },
                )
            })
            .collect()
    }

    /// Withdraws everything (the agent is stopping); returns what was withdrawn.
    pub fn withdraw_all(&self, reason: &str) -> Vec<Request> {
        let ids: Vec<u64> = self.state().pending.keys().copied().collect();
        ids.into_iter()
            .filter_map(|id| {
                self.end(
                    id,
                    Resolution::Withdrawn {
                        reason: reason.to_owned(),
                    },
                )
            })
            .collect()
    }

    /// Pending requests.
    pub fn pending(&self) -> Vec<Request> {
        self.state()
            .pending
            .values()
            .map(|w| w.request.clone())
            .collect()
    }

    /// Open grants.
    pub fn grants(&self) -> Vec<Grant> {
        let mut st = self.state();
        let t = now();
        st.grants.retain(|_, g| g.until > t);
        st.grants.values().cloned().collect()
    }

    /// Closes a grant: root on the control socket, or an approver of the grant's rule. The
    /// revocation, or its refusal, is recorded.
    pub fn revoke(&self, id: u64, caller: &Caller) -> Result<Grant, DecideError> {
        let revoked = {
            let mut st = self.state();
            match st.grants.get(&id) {
                None => Err(DecideError::NoGrant(id)),
                Some(g) if !caller.is_local_root() && !g.approvers.iter().any(|a| caller.is(a)) => {
                    Err(DecideError::MayNotRevoke {
                        id,
                        caller: describe(caller),
                        rule: g.rule.clone(),
                        approvers: g.approvers.join(", "),
                    })
                }
                Some(_) => st.grants.remove(&id).ok_or(DecideError::NoGrant(id)),
            }
        };
        match &revoked {
            Ok(g) => {
                self.changed();
                self.recorder.revoked(g, caller);
            }
            Err(e) => self.recorder.refused(id, caller, e),
        }
        revoked
    }
}

/// A caller as error messages name them: `uid 1002 (mallory)`, `approver bob (token)`.
fn describe(caller: &Caller) -> String {
    match (caller.auth, caller.uid) {
        (Auth::Peercred, Some(uid)) => {
            format!("uid {uid} ({})", caller.user.as_deref().unwrap_or("?"))
        }
        (auth, _) => format!("approver {} ({})", caller.name(), auth.as_str()),
    }
}

/// Parses `90s`, `15m`, `2h`, `1d`, `1h30m` (humantime's units) or plain seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok().map(Duration::from_secs);
    }
    humantime::parse_duration(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> Rule {
        Rule {
            id: "bulk".into(),
            approvers: vec!["alice".into(), "group:dba".into(), "uid:0".into()],
            timeout: Duration::from_secs(60),
            max_grant: Some(Duration::from_secs(600)),
            reason: None,
            run_as: None,
        }
    }

    fn caller(uid: u32, user: &str, groups: &[&str]) -> Caller {
        Caller {
            uid: Some(uid),
            user: Some(user.into()),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            auth: Auth::Peercred,
            remote: None,
        }
    }

    fn web(name: &str, groups: &[&str]) -> Caller {
        Caller::approver(
            name,
            groups.iter().map(|g| (*g).to_owned()).collect(),
            Auth::Token,
            "192.0.2.7:50000".into(),
        )
    }

    fn hold(session: u64, sql: &str) -> Hold<'_> {
        Hold {
            rule: rule(),
            workload: "w",
            session: SessionId(session),
            statement: sql.to_owned(),
            sql,
            reason: None,
            who: None,
        }
    }

    #[test]
    fn approvers_by_name_group_and_uid() {
        assert!(caller(1000, "alice", &[]).may_approve(&rule()));
        assert!(caller(1001, "bob", &["dba"]).may_approve(&rule()));
        assert!(caller(0, "root", &[]).may_approve(&rule()));
        assert!(!caller(1002, "mallory", &["users"]).may_approve(&rule()));
    }

    #[test]
    fn http_approvers_by_user_and_group_never_as_local_users() {
        let mut r = rule();
        r.approvers = vec!["root".into(), "uid:0".into(), "user:carol".into()];
        // A token approver named like a local user, or claiming uid 0, is neither.
        assert!(!web("root", &[]).may_approve(&r));
        let mut forged = web("mallory", &[]);
        forged.uid = Some(0);
        assert!(!forged.may_approve(&r));
        assert!(web("carol", &[]).may_approve(&r));
        // ... and a local user named carol is not the approver carol.
        assert!(!caller(1003, "carol", &[]).may_approve(&r));
        r.approvers.push("group:dba".into());
        assert!(web("dave", &["dba"]).may_approve(&r));
        assert!(!web("erin", &["users"]).may_approve(&r));
    }

    #[test]
    fn held_statements_are_normalised_for_the_page() {
        let a = Approvals::default();
        let (r, _rx) = a.request(hold(
            1,
            "SELECT * FROM payments WHERE card_number = '4111111111111111'",
        ));
        assert!(!r.normalized.contains("4111"), "{}", r.normalized);
        assert!(r.normalized.contains("payments"), "{}", r.normalized);
    }

    #[tokio::test]
    async fn changes_are_announced() {
        let a = Approvals::default();
        let mut seen = a.changes();
        let before = *seen.borrow_and_update();
        let (r, _rx) = a.request(hold(1, "SELECT 1"));
        assert!(seen.has_changed().unwrap());
        assert!(*seen.borrow_and_update() > before);
        a.decide(r.id, &caller(0, "root", &[]), true, None, None)
            .unwrap();
        assert!(seen.has_changed().unwrap());
    }

    #[tokio::test]
    async fn approve_deny_grant_withdraw() {
        let a = Approvals::default();
        let (r1, rx1) = a.request(hold(1, "SELECT * FROM payments"));
        let (r2, rx2) = a.request(hold(2, "SELECT * FROM payments"));
        assert_eq!(a.pending().len(), 2);
        // Out of order: the second first.
        let mallory = caller(1002, "mallory", &[]);
        assert!(matches!(
            a.decide(r2.id, &mallory, true, None, None),
            Err(DecideError::NotAuthorized { .. })
        ));
        let alice = caller(1000, "alice", &[]);
        assert!(matches!(
            a.decide(r2.id, &alice, true, Some(Duration::from_secs(3600)), None),
            Err(DecideError::GrantTooLong(..))
        ));
        let (_, res) = a
            .decide(
                r2.id,
                &alice,
                true,
                Some(Duration::from_secs(300)),
                Some("ok".into()),
            )
            .unwrap();
        assert!(matches!(
            rx2.await.unwrap(),
            Resolution::Approved { grant: Some(_), .. }
        ));
        assert!(matches!(res, Resolution::Approved { .. }));
        assert!(a.grant_for("w", "bulk").is_some());
        assert!(a.grant_for("other", "bulk").is_none());
        a.decide(r1.id, &alice, false, None, Some("no".into()))
            .unwrap();
        assert!(matches!(rx1.await.unwrap(), Resolution::Denied { .. }));
        assert!(matches!(
            a.decide(r1.id, &alice, true, None, None),
            Err(DecideError::NotFound(_))
        ));
        let g = a.grants()[0].id;
        // Only root or an approver of the grant's rule may close it.
        assert!(matches!(
            a.revoke(g, &web("mallory", &[])),
            Err(DecideError::MayNotRevoke { .. })
        ));
        assert!(a.revoke(g, &web("dave", &["dba"])).is_ok());
        assert!(matches!(a.revoke(g, &alice), Err(DecideError::NoGrant(_))));
        assert!(a.grant_for("w", "bulk").is_none());
        let (_, rx3) = a.request(hold(3, "x"));
        assert_eq!(
            a.withdraw_session(SessionId(3), "client cancelled").len(),
            1
        );
        assert!(matches!(rx3.await.unwrap(), Resolution::Withdrawn { .. }));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration(" 90s "), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("15x"), None);
        assert_eq!(parse_duration(""), None);
    }
}
