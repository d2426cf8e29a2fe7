//! A statement's decision: what a session's statement is (its context in), and the one
//! [`Decision`] out that masking and the audit recorder both take. Pure: no I/O, no clock.
use std::collections::HashMap;
use std::sync::Arc;

use tracing::{info, warn};

use super::analyze::Class;
use super::decide::{INSUFFICIENT_PRIVILEGE, Outcome};
use super::{Decided, PolicySet};
use crate::mask::MaskRules;

/// Where a statement came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatementKind {
    /// A simple Query message (may hold several statements).
    Query,
    /// An extended-protocol Parse.
    Parse,
    /// A fast-path FunctionCall (no SQL text).
    FunctionCall,
}

/// A statement about to be sent to the server.
#[derive(Clone, Copy, Debug)]
pub struct Statement<'a> {
    /// Its origin.
    pub kind: StatementKind,
    /// SQL text (empty for FunctionCall).
    pub sql: &'a str,
    /// Prepared statement name for Parse ("" unnamed).
    pub name: &'a str,
    /// Its shape ([`crate::sqltext::Text::shape`]), when the relay read it already.
    pub shape: Option<&'a str>,
}

/// A refusal: the client gets an ErrorResponse with this SQLSTATE and message, nothing
/// reaches the server, and the session stays usable.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Denied {
    /// The rule that denied, e.g. `class.ddl`.
    pub rule: String,
    /// Why, for the client and the audit record.
    pub reason: String,
    /// SQLSTATE, e.g. 42501.
    pub sqlstate: &'static str,
}

impl Denied {
    /// The message the client sees: `pgwarden: <rule>: <reason>`.
    pub fn message(&self) -> String {
        format!("pgwarden: {}: {}", self.rule, self.reason)
    }
}

/// What is done with a statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send it.
    Allow,
    /// Refuse it.
    Deny(Denied),
    /// Hold it until a person allowed by the rule approves it.
    Hold(Arc<crate::approval::Rule>),
}

impl Verdict {
    /// `allow`, `deny` or `hold`, as metrics count them.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny(_) => "deny",
            Verdict::Hold(_) => "hold",
        }
    }
}

/// What the session knows that bears on a decision besides the statement.
pub struct Context<'a> {
    /// The statement.
    pub statement: Statement<'a>,
    /// Why this session's statement text is ambiguous to pgwarden's parser, when the server
    /// reported a setting that makes it so: every statement is refused.
    pub lexer_unsafe: Option<&'a str>,
    /// The open grant (its id) letting this workload pass an approval rule, by rule id.
    pub grant: &'a dyn Fn(&str) -> Option<u64>,
}

/// One statement's decision: the verdict, what the policy saw, and the policy version's
/// masks. Masking and the audit record take this same value.
#[derive(Clone, Debug)]
pub struct Decision {
    /// What is done.
    pub verdict: Verdict,
    /// What the statement does (`None`: a fast-path call, or text the policy did not read).
    pub facts: Option<Arc<Decided>>,
    /// SHA-256 of the policy file decided under (`None`: the workload has no policy).
    pub policy_hash: Option<Arc<str>>,
    /// The policy set version decided under.
    pub version: u64,
    /// The workload's masking rules in that version.
    pub masks: Option<Arc<MaskRules>>,
    /// The open grant that let a held statement pass.
    pub grant: Option<u64>,
    /// The statement's limit by effect on the rows it changes.
    pub guard: Option<super::decide::WriteGuard>,
    /// The limits on the rows its results send (counted as they are sent).
    pub reads: Vec<super::decide::ReadLimit>,
    /// The approval rule with a `run_as` role the statement runs as once approved or
    /// passing under that rule's grant.
    pub run_as: Option<Arc<crate::approval::Rule>>,
}

impl Decision {
    /// Whether the results of this statement pass through masking.
    pub fn masked(&self) -> bool {
        self.masks.as_ref().is_some_and(|m| m.active())
            && self
                .facts
                .as_ref()
                .is_some_and(|d| d.facts.classes.contains(&Class::Read))
    }

    /// Command tags, e.g. `SELECT`.
    pub fn command(&self) -> String {
        self.facts
            .as_ref()
            .map(|d| d.facts.commands.join(", "))
            .unwrap_or_default()
    }

    /// Tables touched, qualified as written.
    pub fn objects(&self) -> Vec<String> {
        self.facts.as_ref().map_or_else(Vec::new, |d| {
            d.facts
                .tables
                .iter()
                .map(|t| match &t.schema {
                    Some(s) => format!("{s}.{}", t.name),
                    None => t.name.clone(),
                })
                .collect()
        })
    }
}

/// Denial for a workload without a policy (or not in the config at all).
pub fn no_policy(workload: &str, known: bool) -> Denied {
    if known {
        Denied {
            rule: "policy.none".into(),
            reason: format!(
                "workload `{workload}` has no policy in the config: everything is denied"
            ),
            sqlstate: INSUFFICIENT_PRIVILEGE,
        }
    } else {
        Denied {
            rule: "workload.unknown".into(),
            reason: format!(
                "workload `{workload}` is not defined in the config: everything is denied"
            ),
            sqlstate: INSUFFICIENT_PRIVILEGE,
        }
    }
}

/// The refusal of every statement of a session whose server reported a setting under which
/// PostgreSQL reads statement text differently from pgwarden's parser.
pub fn lexer_refusal(why: &str) -> Denied {
    Denied {
        rule: "setting.lexer".into(),
        reason: format!(
            "{why}: PostgreSQL would read statement text differently from pgwarden's parser (standard_conforming_strings must be on; client encodings whose characters can end in a backslash are refused)"
        ),
        sqlstate: INSUFFICIENT_PRIVILEGE,
    }
}

/// What one session's decisions remember: the outcome of each PREPARE by name, so EXECUTE
/// inherits it.
pub struct SessionPolicy {
    workload: String,
    session: String,
    prepared: HashMap<String, Outcome>,
    /// The read limits of every cursor DECLAREd in the session: a FETCH, whose text names no
    /// table, is counted under them (several cursors: under all of theirs).
    cursor_reads: Vec<super::decide::ReadLimit>,
}

impl SessionPolicy {
    /// A session of `workload` (`session` names it in log lines).
    pub fn new(workload: &str, session: &str) -> Self {
        Self {
            workload: workload.to_owned(),
            session: session.to_owned(),
            prepared: HashMap::new(),
            cursor_reads: Vec::new(),
        }
    }

    /// Decides `ctx`'s statement under `set`.
    pub fn decide(&mut self, set: &PolicySet, ctx: &Context<'_>) -> Decision {
        let compiled = set.workloads.get(&self.workload);
        let mut decision = Decision {
            verdict: Verdict::Allow,
            facts: None,
            policy_hash: compiled.map(|c| Arc::clone(&c.hash)),
            version: set.version,
            masks: compiled.map(|c| Arc::clone(&c.profile.mask)),
            grant: None,
            guard: None,
            reads: Vec::new(),
            run_as: None,
        };
        if let Some(why) = ctx.lexer_unsafe {
            decision.verdict = Verdict::Deny(lexer_refusal(why));
            return decision;
        }
        let Some(compiled) = compiled else {
            let known = set.defined.contains(&self.workload);
            decision.verdict = Verdict::Deny(no_policy(&self.workload, known));
            return decision;
        };
        let st = &ctx.statement;
        let outcome = if st.kind == StatementKind::FunctionCall {
            compiled.profile.decide_fastpath()
        } else {
            let decided = compiled.decide_shaped(st.sql, st.shape).0;
            let outcome = self.inherit(&decided);
            decision.facts = Some(decided);
            outcome
        };
        decision.guard.clone_from(&outcome.guard);
        decision.reads.clone_from(&outcome.reads);
        decision.verdict = self.verdict(outcome);
        if let Verdict::Hold(rule) = &decision.verdict
            && rule.run_as.is_some()
        {
            decision.run_as = Some(Arc::clone(rule));
        }
        if let Verdict::Hold(rule) = &decision.verdict
            && let Some(grant) = (ctx.grant)(&rule.id)
        {
            info!(session = %self.session, rule = %rule.id, grant, "statement passes under an open grant");
            decision.grant = Some(grant);
            decision.verdict = Verdict::Allow;
        }
        decision
    }

    /// The outcome of a parsed statement, with what PREPARE and EXECUTE carry between them.
    fn inherit(&mut self, decided: &Decided) -> Outcome {
        let mut outcome = decided.outcome.clone();
        // EXECUTE inherits the outcome of its PREPARE (a denial, or a hold).
        if outcome.denied.is_none()
            && let Some(o) = decided.facts.executes.iter().find_map(|n| {
                self.prepared.get(n).filter(|o| {
                    o.denied.is_some()
                        || o.hold.is_some()
                        || o.guard.is_some()
                        || !o.reads.is_empty()
                })
            })
        {
            outcome = o.clone();
        }
        for name in &decided.facts.prepares {
            self.prepared.insert(name.clone(), outcome.clone());
        }
        let commands = &decided.facts.commands;
        if commands.iter().any(|c| c == "DECLARE") {
            for r in &outcome.reads {
                if !self.cursor_reads.iter().any(|c| c.rule.id == r.rule.id) {
                    self.cursor_reads.push(r.clone());
                }
            }
        }
        if commands.iter().any(|c| c == "FETCH/CLOSE") {
            for r in &self.cursor_reads {
                if !outcome.reads.iter().any(|o| o.rule.id == r.rule.id) {
                    outcome.reads.push(r.clone());
                }
            }
        }
        // PREPARE itself runs nothing: the hold and the row limit apply when EXECUTE runs it.
        if !decided.facts.prepares.is_empty() && decided.facts.executes.is_empty() {
            outcome.hold = None;
            outcome.guard = None;
            outcome.reads.clear();
        }
        outcome
    }

    fn verdict(&self, outcome: Outcome) -> Verdict {
        match outcome.denied {
            Some(d) if outcome.enforced => {
                info!(session = %self.session, workload = %self.workload, rule = %d.rule, "statement denied: {}", d.reason);
                Verdict::Deny(d)
            }
            Some(d) => {
                warn!(session = %self.session, workload = %self.workload, rule = %d.rule, "audit-only: would deny: {}", d.reason);
                Verdict::Allow
            }
            None => outcome.hold.map_or(Verdict::Allow, Verdict::Hold),
        }
    }
}
