//! How a session's statements are written to the journal: each statement's description (its
//! text as the journal keeps it, command, objects, the policy hash and whether its results
//! are masked) taken from its [`Decision`], and the `query`, `query.denied` and `query.done`
//! records built from it. Descriptions are cached by normalized text per policy version:
//! repeated queries, and queries differing only in literals, are described once.
//!
//! The records say only what they add (record contract v2): the identity is in the
//! session's `session.start`, referred to by `session_id` (and `workload`); a statement's
//! `policy_hash` appears when it is not the one `session.start` names (after a reload);
//! `query.done` carries the outcome, referring to its `query` by `detail.statement_no`, and
//! under a profile's `record_results` what the workload saw (`detail.result`).
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use super::SessionMeta;
use super::state::InFlight;
use crate::audit::canon::{self, Prepared, SessionFields, StatementFields};
use crate::audit::{Db, Decision as AuditDecision, Event, Journal, Masked, Outcome};
use crate::mask::MaskCount;
use crate::policy::Decision;
use crate::sqltext::Text;

/// Statements whose description a session keeps.
const DESCRIBED: usize = 256;

/// What the journal says of a statement, whoever runs it and whenever.
pub struct Described {
    /// The canonical JSON of the record's `statement` object.
    statement: Box<[u8]>,
    /// The policy's hash, when one decided.
    policy_hash: Option<Arc<str>>,
    /// Whether the results pass through masking.
    masked: bool,
}

/// Statement descriptions of one policy version.
#[derive(Default)]
struct Descriptions {
    version: u64,
    by_text: HashMap<Box<str>, Arc<Described>>,
}

/// A session's statement records.
pub struct Recorder {
    journal: Journal,
    /// The session's own record fields, serialized once.
    fields: SessionFields,
    described: Mutex<Descriptions>,
    /// Whether the journal keeps records (`audit.mode` is not `off`).
    enabled: bool,
    /// The description of every statement when it does not.
    blank: Arc<Described>,
    /// The policy hash `session.start` names.
    start_policy: Option<Arc<str>>,
}

impl Recorder {
    /// The recorder of session `meta`.
    pub fn new(journal: &Journal, meta: &SessionMeta, start_policy: Option<Arc<str>>) -> Self {
        Self {
            start_policy,
            journal: journal.clone(),
            fields: session_fields(meta),
            described: Mutex::default(),
            enabled: journal.enabled(),
            blank: Arc::new(Described {
                statement: Box::new([]),
                policy_hash: None,
                masked: false,
            }),
        }
    }

    /// The policy hash the session started under (for `session.start`).
    pub fn start_policy(&self) -> Option<&str> {
        self.start_policy.as_deref()
    }

    /// `hash` when a statement record must name it: not the one `session.start` names.
    fn policy_of<'a>(&self, hash: Option<&'a Arc<str>>) -> Option<&'a str> {
        hash.filter(|h| Some(*h) != self.start_policy.as_ref())
            .map(|h| &**h)
    }

    /// Whether statements are recorded.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// How the journal describes `sql` (read as `text`) under `decision`.
    pub fn describe(&self, sql: &str, text: &Text, decision: &Decision) -> Arc<Described> {
        if !self.enabled {
            return Arc::clone(&self.blank);
        }
        {
            let mut d = self
                .described
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if d.version != decision.version {
                d.version = decision.version;
                d.by_text.clear();
            }
            if let Some(found) = d.by_text.get(text.normalized.as_str()) {
                return Arc::clone(found);
            }
        }
        let statement = self
            .journal
            .statement_of(sql, text)
            .command(decision.command())
            .objects(decision.objects());
        let described = Arc::new(Described {
            statement: canon::statement_json(&statement),
            policy_hash: decision.policy_hash.clone(),
            masked: decision.masked(),
        });
        let mut d = self
            .described
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if d.by_text.len() >= DESCRIBED {
            d.by_text.clear();
        }
        d.by_text
            .insert(text.normalized.as_str().into(), Arc::clone(&described));
        described
    }

    /// How the journal describes a statement known by its text alone (a fast-path call, a
    /// statement the policy refused unread), with `decision`'s own hash and masking.
    pub fn describe_text(&self, sql: &str, decision: &Decision) -> Arc<Described> {
        if !self.enabled {
            return Arc::clone(&self.blank);
        }
        Arc::new(Described {
            statement: canon::statement_json(&self.journal.statement(sql)),
            policy_hash: decision.policy_hash.clone(),
            masked: decision.masked(),
        })
    }

    /// A description of text whose decision is gone (a prepared statement's, after its
    /// description was dropped): the text alone.
    pub fn describe_unknown(&self, sql: &str) -> Arc<Described> {
        if !self.enabled {
            return Arc::clone(&self.blank);
        }
        Arc::new(Described {
            statement: canon::statement_json(&self.journal.statement(sql)),
            policy_hash: None,
            masked: false,
        })
    }

    /// The `query` record of an allowed statement (`rule`: the approval rule it passed).
    pub fn allowed(&self, desc: &Described, n: u64, rule: Option<&str>) -> Prepared {
        self.allowed_as(desc, n, rule, None)
    }

    /// [`Recorder::allowed`] of a statement that runs as `run_as` (its rule's role).
    pub fn allowed_as(
        &self,
        desc: &Described,
        n: u64,
        rule: Option<&str>,
        run_as: Option<&str>,
    ) -> Prepared {
        let mut f = StatementFields::new(Event::Query, SystemTime::now(), n);
        f.decision = Some(if desc.masked {
            AuditDecision::Mask
        } else {
            AuditDecision::Allow
        });
        f.statement = Some(&desc.statement);
        f.policy_hash = self.policy_of(desc.policy_hash.as_ref());
        f.rule = rule;
        f.run_as = run_as;
        canon::statement_record(&self.fields, &f)
    }

    /// The `query.denied` record of a refused statement.
    pub fn denied(
        &self,
        desc: &Described,
        rule: &str,
        code: &str,
        message: &str,
        n: u64,
    ) -> Prepared {
        let mut f = StatementFields::new(Event::QueryDenied, SystemTime::now(), n);
        f.decision = Some(AuditDecision::Deny);
        f.statement = Some(&desc.statement);
        f.policy_hash = self.policy_of(desc.policy_hash.as_ref());
        f.rule = Some(rule);
        f.outcome = Some(Outcome::Failure);
        f.sqlstate = Some(code);
        f.error = Some(message);
        canon::statement_record(&self.fields, &f)
    }

    /// The `query.done` record of a statement the server finished; `result` is what the
    /// workload saw (`detail.result`, under `record_results`).
    pub fn done(
        &self,
        f: &InFlight,
        elapsed: Duration,
        masked: Vec<MaskCount>,
        result: Option<&[u8]>,
    ) -> Prepared {
        let masked: Vec<Masked> = masked
            .into_iter()
            .map(|m| Masked {
                column: m.column,
                method: m.method.to_owned(),
                count: m.count,
            })
            .collect();
        let mut fields = StatementFields::new(Event::QueryDone, SystemTime::now(), f.seq);
        fields.rows = Some(f.rows);
        fields.duration_us = Some(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
        fields.masked = &masked;
        fields.result = result;
        if let Some(rule) = &f.undone_by {
            // A write that ran over its row limit: undone, and refused by this rule.
            fields.decision = Some(AuditDecision::Deny);
            fields.rule = Some(rule);
        }
        match &f.error {
            None => fields.outcome = Some(Outcome::Success),
            Some((code, message)) => {
                fields.outcome = Some(Outcome::Failure);
                fields.sqlstate = Some(code);
                fields.error = Some(message);
            }
        }
        canon::statement_record(&self.fields, &fields)
    }
}

/// The fields every statement record of the session carries.
fn session_fields(m: &SessionMeta) -> SessionFields {
    let workload = m
        .identity
        .as_ref()
        .map_or_else(|| m.workload.to_string(), |who| who.workload.to_string());
    SessionFields::new(&m.id.to_string(), &workload)
}

/// The session's database fields.
pub fn db(m: &SessionMeta) -> Db {
    Db {
        user: Some(m.db.user.clone()),
        database: Some(m.db.database.clone()),
        application_name: m.db.application_name.clone(),
    }
}
