//! Just-in-time approval: a statement a policy rule marks `require_approval` is held in its
//! session until a person allowed by the rule approves or denies it, or it times out. An
//! approval may open a grant: the same rule then passes for that workload for a while.
use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::oneshot;

use crate::names::SessionId;

mod config;
mod record;
pub use config::ApprovalsConfig;
pub use record::Recorder;

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
}

/// Who is calling the control socket, from SO_PEERCRED.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Caller {
    /// uid.
    pub uid: u32,
    /// User name, if known.
    pub user: Option<String>,
    /// Group names the user belongs to.
    pub groups: Vec<String>,
}

impl Caller {
    /// The caller with uid `uid`, names looked up in the user database.
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
            uid,
            user: user.map(|u| u.name),
            groups,
        }
    }

    /// Whether the rule lets this caller decide.
    pub fn may_approve(&self, rule: &Rule) -> bool {
        rule.approvers.iter().any(|a| {
            if let Some(uid) = a.strip_prefix("uid:") {
                uid.parse() == Ok(self.uid)
            } else if let Some(g) = a.strip_prefix("group:") {
                self.groups.iter().any(|mine| mine == g)
            } else {
                self.user.as_deref() == Some(a.as_str())
            }
        })
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
    /// Statement text (literals replaced).
    pub statement: String,
    /// Process behind it.
    pub pid: Option<u32>,
    /// Its executable.
    pub exe: Option<String>,
    /// When it was held, seconds since the epoch.
    pub requested: u64,
    /// When it expires, seconds since the epoch.
    pub expires: u64,
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
    #[error(
        "uid {uid} ({user}) may not decide request {id}: the rule `{rule}` accepts {approvers}"
    )]
    NotAuthorized {
        /// Request.
        id: u64,
        /// Caller uid.
        uid: u32,
        /// Caller name.
        user: String,
        /// Rule.
        rule: String,
        /// Its approvers.
        approvers: String,
    },
    /// `--for` beyond what the rule allows.
    #[error("the rule `{0}` allows grants of at most {1}s")]
    GrantTooLong(String, u64),
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
#[derive(Default)]
pub struct Approvals {
    state: Mutex<State>,
    recorder: Recorder,
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
        }
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
    #[allow(clippy::too_many_arguments, reason = "a request's facts")]
    pub fn request(
        &self,
        rule: Rule,
        workload: &str,
        session: SessionId,
        statement: &str,
        pid: Option<u32>,
        exe: Option<String>,
    ) -> (Request, oneshot::Receiver<Resolution>) {
        let (tx, rx) = oneshot::channel();
        let mut st = self.state();
        st.next += 1;
        let t = now();
        let request = Request {
            id: st.next,
            expires: t + rule.timeout.as_secs(),
            rule,
            workload: workload.to_owned(),
            session,
            statement: statement.to_owned(),
            pid,
            exe,
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
            Ok((request, resolution)) => self.recorder.resolved(request, resolution),
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
                uid: caller.uid,
                user: caller.user.clone().unwrap_or_else(|| "?".into()),
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

    /// Closes a grant.
    pub fn revoke(&self, id: u64) -> Option<Grant> {
        self.state().grants.remove(&id)
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
        }
    }

    fn caller(uid: u32, user: &str, groups: &[&str]) -> Caller {
        Caller {
            uid,
            user: Some(user.into()),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    #[test]
    fn approvers_by_name_group_and_uid() {
        assert!(caller(1000, "alice", &[]).may_approve(&rule()));
        assert!(caller(1001, "bob", &["dba"]).may_approve(&rule()));
        assert!(caller(0, "root", &[]).may_approve(&rule()));
        assert!(!caller(1002, "mallory", &["users"]).may_approve(&rule()));
    }

    #[tokio::test]
    async fn approve_deny_grant_withdraw() {
        let a = Approvals::default();
        let (r1, rx1) = a.request(
            rule(),
            "w",
            SessionId(1),
            "SELECT * FROM payments",
            Some(7),
            None,
        );
        let (r2, rx2) = a.request(
            rule(),
            "w",
            SessionId(2),
            "SELECT * FROM payments",
            None,
            None,
        );
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
        assert!(a.revoke(g).is_some());
        assert!(a.grant_for("w", "bulk").is_none());
        let (_, rx3) = a.request(rule(), "w", SessionId(3), "x", None, None);
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
