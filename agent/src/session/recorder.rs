//! How a session's statements are written to the journal: each statement's description (its
//! text as the journal keeps it, command, objects, the policy hash and whether its results
//! are masked) taken from its [`Decision`], and the `query`, `query.denied` and `query.done`
//! records built from it. Descriptions are cached by normalized text per policy version:
//! repeated queries, and queries differing only in literals, are described once.
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
}

impl Recorder {
    /// The recorder of session `meta`.
    pub fn new(journal: &Journal, meta: &SessionMeta) -> Self {
        Self {
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
        let mut f = StatementFields::new(Event::Query, SystemTime::now(), n);
        f.decision = Some(if desc.masked {
            AuditDecision::Mask
        } else {
            AuditDecision::Allow
        });
        f.statement = Some(&desc.statement);
        f.policy_hash = desc.policy_hash.as_deref();
        f.rule = rule;
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
        f.policy_hash = desc.policy_hash.as_deref();
        f.rule = Some(rule);
        f.outcome = Some(Outcome::Failure);
        f.sqlstate = Some(code);
        f.error = Some(message);
        canon::statement_record(&self.fields, &f)
    }

    /// The `query.done` record of a statement the server finished.
    pub fn done(&self, f: &InFlight, elapsed: Duration, masked: Vec<MaskCount>) -> Prepared {
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

/// The fields every record of the session carries.
fn session_fields(m: &SessionMeta) -> SessionFields {
    let actor = m.identity.as_ref().map(crate::audit::Actor::from);
    let workload = m
        .identity
        .as_ref()
        .map_or_else(|| m.workload.to_string(), |who| who.workload.to_string());
    SessionFields::new(
        &m.id.to_string(),
        &workload,
        actor.as_ref(),
        m.client.clone().into(),
        m.server.clone().into(),
        &db(m),
    )
}

/// The session's database fields.
pub fn db(m: &SessionMeta) -> Db {
    Db {
        user: Some(m.db.user.clone()),
        database: Some(m.db.database.clone()),
        application_name: m.db.application_name.clone(),
    }
}
