//! What the exporter remembers so that each line stands alone: per session, its
//! `session.start` identity and its statements in flight by `detail.statement_no`; bounded.
use std::collections::{BTreeMap, HashMap};

use crate::audit::record::{Actor, Db, Decision, Endpoint, Event, Record, Statement};

/// Sessions remembered at most; past it, the one that started first is forgotten.
pub const MAX_SESSIONS: usize = 65_536;
/// Statements in flight remembered per session at most; past it, the oldest is forgotten.
pub const MAX_STATEMENTS_PER_SESSION: usize = 256;
/// Statements in flight remembered across sessions at most; past it, the oldest session
/// (but the one speaking) is forgotten.
pub const MAX_STATEMENTS: usize = 16_384;

/// Who is behind a session, from its `session.start`.
#[derive(Clone, Debug, Default)]
struct Identity {
    actor: Option<Actor>,
    client: Option<Endpoint>,
    server: Option<Endpoint>,
    db: Option<Db>,
    policy_hash: Option<String>,
}

/// What a `query` said of its statement, for its `query.done`.
#[derive(Clone, Debug)]
struct Said {
    statement: Statement,
    decision: Option<Decision>,
    rule: Option<String>,
}

/// One session's memory.
#[derive(Debug, Default)]
struct Session {
    /// Its place in [`Context::order`].
    age: u64,
    identity: Option<Identity>,
    /// By statement number.
    statements: BTreeMap<u64, Said>,
}

/// The memory of the records seen.
#[derive(Debug, Default)]
pub struct Context {
    sessions: HashMap<String, Session>,
    /// Session ids by age, oldest first.
    order: BTreeMap<u64, String>,
    next_age: u64,
    /// Statements remembered, all sessions.
    statements: usize,
}

/// The statement number a statement record refers to (`detail.statement_no`).
pub fn statement_no(rec: &Record) -> Option<u64> {
    rec.detail.get("statement_no")?.as_u64()
}

impl Context {
    /// Learns from `rec`: a session's identity at its start, a statement at its `query`;
    /// forgets a statement at its `query.done` and a session at its end.
    pub fn learn(&mut self, rec: &Record) {
        let Some(id) = rec.session_id.as_deref() else {
            return;
        };
        match rec.event {
            Event::SessionStart => {
                self.forget(id);
                self.session(id).identity = Some(Identity {
                    actor: rec.actor.clone(),
                    client: rec.client.clone(),
                    server: rec.server.clone(),
                    db: rec.db.clone(),
                    policy_hash: rec.policy_hash.clone(),
                });
            }
            Event::SessionEnd => self.forget(id),
            Event::Query => {
                if let (Some(statement), Some(no)) = (&rec.statement, statement_no(rec)) {
                    let said = Said {
                        statement: statement.clone(),
                        decision: rec.decision,
                        rule: rec.rule.clone(),
                    };
                    self.said(id, no, said);
                }
            }
            Event::QueryDone => {
                if let (Some(s), Some(no)) = (self.sessions.get_mut(id), statement_no(rec))
                    && s.statements.remove(&no).is_some()
                {
                    self.statements -= 1;
                }
            }
            _ => {}
        }
    }

    /// `rec` with what it leaves to its session's earlier records: the identity of its
    /// `session.start` (and its policy hash), and for a `query.done` its statement, decision
    /// (unless a hold) and rule. What `rec` says itself is kept.
    pub fn fill(&self, rec: &Record) -> Record {
        let mut r = rec.clone();
        let Some(s) = rec.session_id.as_ref().and_then(|id| self.sessions.get(id)) else {
            return r;
        };
        if let Some(i) = &s.identity {
            r.actor = r.actor.or_else(|| i.actor.clone());
            r.client = r.client.or_else(|| i.client.clone());
            r.server = r.server.or_else(|| i.server.clone());
            r.db = r.db.or_else(|| i.db.clone());
            r.policy_hash = r.policy_hash.or_else(|| i.policy_hash.clone());
        }
        if r.statement.is_none()
            && let Some(said) = statement_no(rec).and_then(|no| s.statements.get(&no))
        {
            r.statement = Some(said.statement.clone());
            // A held statement that is done ran once approved: its hold is not its decision.
            r.decision = r
                .decision
                .or(said.decision.filter(|d| *d != Decision::Hold));
            r.rule = r.rule.or_else(|| said.rule.clone());
        }
        r
    }

    /// The memory of session `id`, made (the youngest) when there is none.
    fn session(&mut self, id: &str) -> &mut Session {
        if !self.sessions.contains_key(id) {
            while self.sessions.len() >= MAX_SESSIONS && self.evict_oldest(None) {}
            let age = self.next_age;
            self.next_age += 1;
            self.order.insert(age, id.to_owned());
            self.sessions.insert(
                id.to_owned(),
                Session {
                    age,
                    ..Session::default()
                },
            );
        }
        // Present: inserted above if it was not.
        self.sessions.entry(id.to_owned()).or_default()
    }

    /// Remembers statement `no` of session `id`.
    fn said(&mut self, id: &str, no: u64, said: Said) {
        while self.statements >= MAX_STATEMENTS && self.evict_oldest(Some(id)) {}
        let s = self.session(id);
        let dropped = if s.statements.len() >= MAX_STATEMENTS_PER_SESSION {
            usize::from(s.statements.pop_first().is_some())
        } else {
            0
        };
        let added = usize::from(s.statements.insert(no, said).is_none());
        self.statements = self.statements + added - dropped;
    }

    /// Forgets session `id`.
    fn forget(&mut self, id: &str) {
        if let Some(s) = self.sessions.remove(id) {
            self.order.remove(&s.age);
            self.statements -= s.statements.len();
        }
    }

    /// Forgets the oldest session but `keep`; whether there was one.
    fn evict_oldest(&mut self, keep: Option<&str>) -> bool {
        let Some(id) = self
            .order
            .values()
            .find(|id| Some(id.as_str()) != keep)
            .cloned()
        else {
            return false;
        };
        self.forget(&id);
        true
    }

    /// Sessions and statements remembered (tests).
    #[cfg(test)]
    fn sizes(&self) -> (usize, usize) {
        (self.sessions.len(), self.statements)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::Outcome;

    fn start(id: &str) -> Record {
        Record::new(Event::SessionStart)
            .session(id)
            .workload("w")
            .actor(Actor {
                pid: Some(7),
                ..Actor::default()
            })
            .client(std::net::SocketAddr::from(([10, 0, 0, 1], 4000)))
    }

    fn query(id: &str, no: u64) -> Record {
        Record::new(Event::Query)
            .session(id)
            .statement(Statement::from_sql(&format!("SELECT {no}"), false).command("SELECT"))
            .decision(Decision::Mask)
            .rule("r")
            .detail("statement_no", no)
    }

    fn done(id: &str, no: u64) -> Record {
        Record::new(Event::QueryDone)
            .session(id)
            .outcome(Outcome::Success)
            .detail("statement_no", no)
    }

    #[test]
    fn fills_identity_and_the_statement_of_a_done() {
        let mut c = Context::default();
        c.learn(&start("s1"));
        c.learn(&query("s1", 3));
        let d = c.fill(&done("s1", 3));
        assert_eq!(d.actor.unwrap().pid, Some(7));
        assert!(d.client.is_some());
        assert_eq!(d.statement.unwrap().text, "SELECT $1");
        assert_eq!(
            (d.decision, d.rule.as_deref()),
            (Some(Decision::Mask), Some("r"))
        );
        c.learn(&done("s1", 3));
        assert_eq!(c.sizes(), (1, 0), "a done statement is forgotten");
        assert!(c.fill(&done("s1", 3)).statement.is_none());
    }

    #[test]
    fn a_done_held_statement_is_not_held() {
        let mut c = Context::default();
        let mut held = query("s1", 1);
        held.decision = Some(Decision::Hold);
        c.learn(&held);
        let d = c.fill(&done("s1", 1));
        assert_eq!((d.decision, d.rule.as_deref()), (None, Some("r")));
    }

    #[test]
    fn a_record_keeps_what_it_says() {
        let mut c = Context::default();
        c.learn(&start("s1"));
        let own = Actor {
            pid: Some(9),
            ..Actor::default()
        };
        let r = c.fill(&done("s1", 1).actor(own.clone()));
        assert_eq!(r.actor, Some(own));
        assert!(c.fill(&done("other", 1)).actor.is_none());
    }

    #[test]
    fn session_end_forgets_everything_of_it() {
        let mut c = Context::default();
        c.learn(&start("s1"));
        c.learn(&query("s1", 1));
        c.learn(&Record::new(Event::SessionEnd).session("s1"));
        assert_eq!(c.sizes(), (0, 0));
        assert!(c.fill(&done("s1", 1)).actor.is_none());
    }

    #[test]
    fn statements_per_session_are_bounded_oldest_out() {
        let mut c = Context::default();
        c.learn(&start("s1"));
        for no in 1..=(MAX_STATEMENTS_PER_SESSION as u64 + 10) {
            c.learn(&query("s1", no));
        }
        assert_eq!(c.sizes(), (1, MAX_STATEMENTS_PER_SESSION));
        assert!(c.fill(&done("s1", 1)).statement.is_none());
        assert!(c.fill(&done("s1", 11)).statement.is_some());
    }

    #[test]
    fn sessions_are_bounded_oldest_out() {
        let mut c = Context::default();
        for i in 0..=MAX_SESSIONS {
            c.learn(&start(&format!("s{i}")));
        }
        assert_eq!(c.sizes().0, MAX_SESSIONS);
        assert!(c.fill(&done("s0", 1)).actor.is_none());
        assert!(c.fill(&done("s1", 1)).actor.is_some());
    }

    #[test]
    fn statements_overall_are_bounded_by_forgetting_old_sessions() {
        let mut c = Context::default();
        let per = MAX_STATEMENTS_PER_SESSION as u64;
        let sessions = MAX_STATEMENTS as u64 / per + 1;
        for s in 0..sessions {
            for no in 0..per {
                c.learn(&query(&format!("s{s}"), no));
            }
        }
        assert_eq!(
            c.sizes(),
            (MAX_STATEMENTS / MAX_STATEMENTS_PER_SESSION, MAX_STATEMENTS)
        );
        assert!(c.fill(&done("s0", 0)).statement.is_none());
    }
}
