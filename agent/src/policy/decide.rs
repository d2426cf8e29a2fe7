//! Decisions: a compiled profile and a statement's facts in, a typed verdict out. Pure
//! functions, tested table-driven against ../shared/policy-bypass-cases.md.
use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Serialize;

use super::analyze::{Access, Class, Facts, TableRef};
use super::decision::Denied;
use super::file::{Mode, PolicyFile};
use crate::cgroup::Glob;

/// SQLSTATE insufficient_privilege: what every denial carries.
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// Functions denied unless a policy's `functions.allow` lists them: file and program access,
/// other sessions, configuration, large objects, remote connections, and functions that run
/// SQL given as text (which would escape the parse-tree check).
pub const DEFAULT_DENIED_FUNCTIONS: &[&str] = &[
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_*",
    "pg_stat_file",
    "pg_file_*",
    "lo_*",
    "dblink*",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "set_config",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_sleep_for",
    "pg_sleep_until",
    "query_to_xml*",
    "cursor_to_xml*",
    "table_to_xml*",
    "schema_to_xml*",
    "database_to_xml*",
    "ts_stat",
    "ts_rewrite",
    "pg_logical_*",
    "pg_replication_*",
    "pg_create_*",
    "pg_drop_replication_slot",
    "pg_switch_wal",
    "pg_backup_*",
];

/// Catalog relations that hold secrets or other sessions' statement text.
pub const SECRET_CATALOG: &[(&str, &str)] = &[
    ("pg_catalog", "pg_authid"),
    ("pg_catalog", "pg_shadow"),
    ("pg_catalog", "pg_user_mapping"),
    ("pg_catalog", "pg_user_mappings"),
    ("pg_catalog", "pg_statistic"),
    ("pg_catalog", "pg_largeobject"),
    ("pg_catalog", "pg_subscription"),
    ("pg_catalog", "pg_stat_activity"),
    ("pg_catalog", "pg_stat_statements"),
    ("information_schema", "user_mapping_options"),
];

const CATALOG_SCHEMAS: [&str; 2] = ["pg_catalog", "information_schema"];

/// A profile ready to decide.
#[derive(Clone, Debug, Serialize)]
pub struct Profile {
    /// The profile's name.
    pub name: String,
    /// SHA-256 of the policy file.
    pub policy_hash: String,
    classes: BTreeSet<Class>,
    tables: Option<BTreeMap<(String, String), BTreeSet<Access>>>,
    deny_tables: HashSet<(String, String)>,
    deny_columns: Vec<(String, String, String)>,
    #[serde(serialize_with = "glob_texts")]
    functions_deny: Vec<Glob>,
    max_sleep: f64,
    search_path: Vec<String>,
    allow_search_path_change: bool,
    allow_fastpath: bool,
    /// Masking rules.
    pub mask: std::sync::Arc<crate::mask::MaskRules>,
    /// Conditional rules, in order.
    pub conditional: Vec<Conditional>,
    /// `writes.max_rows`: the most rows one write may change.
    pub write_limit: Option<u64>,
    /// `record_results`: the first rows of each result kept with its `query.done` record.
    pub record_results: Option<super::file::RecordResults>,
    /// Enforcement mode.
    pub mode: Mode,
    /// Handling of SQL that does not parse.
    pub unparsed: Mode,
}

fn glob_texts<S: serde::Serializer>(globs: &[Glob], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(globs.iter().map(Glob::as_str))
}

fn split2(s: &str) -> (String, String) {
    let (a, b) = s.split_once('.').unwrap_or(("public", s));
    (a.to_owned(), b.to_owned())
}

/// Compiles profile `name` of a loaded file (validated by `file::load`).
pub fn compile(file: &PolicyFile, hash: &str, name: &str) -> Option<Profile> {
    let mut chain = Vec::new();
    let mut cur = Some(name);
    while let Some(n) = cur {
        let spec = file.profiles.get(n)?;
        chain.push(spec);
        cur = spec.extends.as_deref();
    }
    let mut p = Profile {
        name: name.to_owned(),
        policy_hash: hash.to_owned(),
        classes: BTreeSet::new(),
        tables: None,
        deny_tables: HashSet::new(),
        deny_columns: Vec::new(),
        functions_deny: DEFAULT_DENIED_FUNCTIONS
            .iter()
            .map(|s| (*s).to_owned())
            .filter(|f| !file.functions.allow.contains(f))
            .chain(file.functions.deny.iter().cloned())
            // Validated when the file was loaded (`file::load`); the built-in list compiles.
            .filter_map(|g| Glob::new(&g).ok())
            .collect(),
        max_sleep: file.functions.max_sleep_seconds,
        search_path: file.search_path.clone(),
        allow_search_path_change: false,
        allow_fastpath: false,
        mode: file.mode,
        unparsed: file.unparsed,
        mask: std::sync::Arc::default(),
        conditional: Vec::new(),
        write_limit: None,
        record_results: None,
    };
    let mut mask = crate::mask::MaskRules::default();
    // Parents first, children override.
    for spec in chain.into_iter().rev() {
        if let Some(c) = &spec.classes {
            p.classes = c.iter().copied().collect();
        }
        if let Some(t) = &spec.tables {
            let tables = p.tables.get_or_insert_with(BTreeMap::new);
            for (k, v) in t {
                tables.insert(split2(k), v.iter().copied().collect());
            }
        }
        p.deny_tables
            .extend(spec.deny_tables.iter().map(|t| split2(t)));
        for c in &spec.deny_columns {
            let mut it = c.splitn(3, '.');
            if let (Some(s), Some(t), Some(col)) = (it.next(), it.next(), it.next()) {
                p.deny_columns.push((s.into(), t.into(), col.into()));
            }
        }
        p.allow_search_path_change = spec
            .allow_search_path_change
            .unwrap_or(p.allow_search_path_change);
        p.allow_fastpath = spec.allow_fastpath.unwrap_or(p.allow_fastpath);
        p.mode = spec.mode.unwrap_or(p.mode);
        p.unparsed = spec.unparsed.unwrap_or(p.unparsed);
        if let Some(w) = spec.writes {
            p.write_limit = w.max_rows;
        }
        if let Some(r) = spec.record_results {
            p.record_results = r;
        }
        for r in &spec.rules {
            p.conditional.push(Conditional {
                action: r.action,
                classes: r.classes.iter().copied().collect(),
                tables: r.tables.iter().map(|t| split2(t)).collect(),
                without_limit_at_most: r.without_limit_at_most,
                max_rows: r.max_rows,
                rows_over: r.rows_over,
                budget: r.budget.as_ref().map(|b| Budget {
                    rows: b.rows,
                    // Validated when the file was loaded.
                    per: humantime::parse_duration(&b.per)
                        .unwrap_or(std::time::Duration::from_secs(3600)),
                }),
                reason: r.reason.clone(),
                approval: std::sync::Arc::new(crate::approval::Rule {
                    id: r.id.clone(),
                    approvers: r.approvers.clone(),
                    timeout: std::time::Duration::from_secs(r.timeout_seconds.unwrap_or(300)),
                    max_grant: r.max_grant_seconds.map(std::time::Duration::from_secs),
                    reason: r.reason.clone(),
                    run_as: r.run_as.clone(),
                }),
            });
        }
        if let Some(m) = &spec.mask {
            for (k, method) in &m.columns {
                let mut it = k.splitn(3, '.');
                let (Some(s), Some(t), Some(c)) = (it.next(), it.next(), it.next()) else {
                    continue;
                };
                let method = crate::mask::Method::parse(method).ok()?;
                mask.columns
                    .retain(|r| !(r.schema == s && r.table == t && r.column == c));
                mask.columns.push(crate::mask::ColumnRule {
                    schema: s.into(),
                    table: t.into(),
                    column: c.into(),
                    method,
                });
            }
            mask.detect_pans = m.detect_pans.unwrap_or(mask.detect_pans);
            mask.allow_uses.extend(m.allow_uses.iter().cloned());
        }
    }
    p.mask = std::sync::Arc::new(mask);
    Some(p)
}

fn deny(rule: &str, reason: impl Into<String>) -> Denied {
    Denied {
        rule: rule.to_owned(),
        reason: reason.into(),
        sqlstate: INSUFFICIENT_PRIVILEGE,
    }
}

/// A conditional rule, compiled.
#[derive(Clone, Debug, Serialize)]
pub struct Conditional {
    /// What it does.
    #[serde(skip)]
    pub action: super::file::Action,
    classes: BTreeSet<Class>,
    tables: Vec<(String, String)>,
    without_limit_at_most: Option<u64>,
    /// A limit by effect instead of a refusal (`action: deny` with `max_rows`).
    max_rows: Option<u64>,
    /// A limit by effect on the rows a result sends.
    rows_over: Option<u64>,
    /// A workload's read budget.
    budget: Option<Budget>,
    reason: Option<String>,
    /// The approval rule (id, approvers, timeout, grants).
    pub approval: std::sync::Arc<crate::approval::Rule>,
}

/// What a profile decides: the rule that denies, and whether it is enforced.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Outcome {
    /// The denial, if a rule denies.
    pub denied: Option<Denied>,
    /// False when the profile is in audit-only mode (or `unparsed: audit-only` applied): the
    /// statement goes through and the denial is only recorded.
    pub enforced: bool,
    /// The approval rule holding the statement, when one applies (and nothing denies).
    pub hold: Option<std::sync::Arc<crate::approval::Rule>>,
    /// The limit on the rows the statement may change, when it writes under one: it runs
    /// where it can be undone, and is undone and refused when it changed more.
    pub guard: Option<WriteGuard>,
    /// The limits on the rows the statement's results may send.
    pub reads: Vec<ReadLimit>,
}

/// A write's limit by effect: the rule and the most rows it lets one statement change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WriteGuard {
    /// `write.rows` (the profile's `writes.max_rows`) or the id of a rule with `max_rows`.
    pub rule: String,
    /// The most rows allowed.
    pub max_rows: u64,
    /// Why, for the client.
    pub reason: Option<String>,
    /// Hold the statement's results until the count (it writes itself); else only its end
    /// waits (a read that calls functions that might write).
    pub hold_results: bool,
    /// A COPY FROM: the count after it waits for the end of the client's data.
    pub copy_in: bool,
}

pub use crate::budget::Budget;

/// A read's limit by effect: counted on the rows actually sent to the workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReadLimit {
    /// The rule: its id, approvers and timeout.
    pub rule: std::sync::Arc<crate::approval::Rule>,
    /// Cut off (else wait for a person).
    pub deny: bool,
    /// Rows that stream before the rest waits.
    pub rows_over: Option<u64>,
    /// The workload's budget under this rule.
    pub budget: Option<Budget>,
    /// Why, for the client.
    pub reason: Option<String>,
}

/// Built-in functions that change no rows, called unqualified or as `pg_catalog.name` (an
/// unqualified name resolves to pg_catalog first). Any other function may write, so a
/// statement calling it is counted under the profile's write limit.
const READ_ONLY_BUILTINS: &[&str] = &[
    "abs",
    "age",
    "array_agg",
    "array_length",
    "array_position",
    "array_to_string",
    "avg",
    "bool_and",
    "bool_or",
    "btrim",
    "cardinality",
    "ceil",
    "ceiling",
    "char_length",
    "clock_timestamp",
    "coalesce",
    "concat",
    "concat_ws",
    "count",
    "cume_dist",
    "current_setting",
    "date_part",
    "date_trunc",
    "decode",
    "dense_rank",
    "encode",
    "every",
    "exp",
    "extract",
    "first_value",
    "floor",
    "format",
    "gen_random_uuid",
    "generate_series",
    "greatest",
    "initcap",
    "json_agg",
    "json_build_array",
    "json_build_object",
    "jsonb_agg",
    "jsonb_array_elements",
    "jsonb_array_length",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_each",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "jsonb_object_agg",
    "jsonb_typeof",
    "json_each",
    "lag",
    "last_value",
    "lead",
    "least",
    "left",
    "length",
    "ln",
    "log",
    "lower",
    "lpad",
    "ltrim",
    "max",
    "md5",
    "min",
    "mod",
    "now",
    "ntile",
    "nullif",
    "octet_length",
    "percent_rank",
    "pg_sleep",
    "pg_typeof",
    "position",
    "power",
    "quote_ident",
    "quote_literal",
    "random",
    "rank",
    "regexp_match",
    "regexp_matches",
    "regexp_replace",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "row_number",
    "row_to_json",
    "rpad",
    "rtrim",
    "sha256",
    "split_part",
    "sqrt",
    "starts_with",
    "statement_timestamp",
    "stddev",
    "string_agg",
    "strpos",
    "substr",
    "substring",
    "sum",
    "timeofday",
    "to_char",
    "to_date",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "transaction_timestamp",
    "translate",
    "trim",
    "trunc",
    "unnest",
    "upper",
    "variance",
    "version",
];

fn read_only_builtin(f: &super::analyze::FuncRef) -> bool {
    f.schema.as_deref().is_none_or(|s| s == "pg_catalog")
        && READ_ONLY_BUILTINS.contains(&f.name.as_str())
}

/// Whether a statement may run as a rule's `run_as` role: exactly one read or write statement
/// (not a cursor, not PREPARE/EXECUTE), calling no function but the read-only built-ins.
/// Anything else could run code the policy never read (a function body, a cursor fetched
/// later, another statement) with the elevated role's rights.
fn elevatable(f: &Facts) -> Result<(), &'static str> {
    let only = f
        .classes
        .iter()
        .all(|c| matches!(c, Class::Read | Class::Write));
    if f.commands.len() != 1 || f.classes.is_empty() || !only {
        return Err("only a single read or write statement can run so (send it alone)");
    }
    let cursor = f
        .commands
        .iter()
        .any(|c| matches!(c.as_str(), "DECLARE" | "FETCH/CLOSE"));
    if cursor || !f.prepares.is_empty() || !f.executes.is_empty() {
        return Err("a cursor or prepared statement cannot run so");
    }
    if f.functions.iter().any(|func| !read_only_builtin(func)) {
        return Err("a statement calling functions (other than read-only built-ins) cannot run so");
    }
    if f.role_change || f.search_path_change {
        return Err("a statement that changes the role or search_path cannot run so");
    }
    Ok(())
}

/// The rule id of the profile's own write limit.
pub const WRITE_ROWS: &str = "write.rows";

impl Outcome {
    /// Allowed.
    pub const ALLOW: Self = Self {
        denied: None,
        enforced: true,
        hold: None,
        guard: None,
        reads: Vec::new(),
    };

    /// Whether the statement must be refused.
    pub fn refuses(&self) -> bool {
        self.enforced && self.denied.is_some()
    }
}

impl Profile {
    /// The schemas an unqualified name may resolve to, most likely first.
    fn candidates<'a>(&'a self, t: &'a TableRef) -> Vec<&'a str> {
        match &t.schema {
            Some(s) => vec![s.as_str()],
            None if t.name.starts_with("pg_") => std::iter::once("pg_catalog")
                .chain(self.search_path.iter().map(String::as_str))
                .collect(),
            None => self.search_path.iter().map(String::as_str).collect(),
        }
    }

    /// Decides on a statement's facts.
    pub fn decide(&self, facts: &Facts) -> Outcome {
        if let Some(e) = &facts.parse_error {
            return Outcome {
                denied: Some(deny(
                    "unparsed",
                    format!("the statement could not be parsed ({e})"),
                )),
                enforced: self.unparsed == Mode::Enforce && self.mode == Mode::Enforce,
                hold: None,
                guard: None,
                reads: Vec::new(),
            };
        }
        let enforced = self.mode == Mode::Enforce;
        if let Some(d) = self.rules(facts) {
            return Outcome {
                denied: Some(d),
                enforced,
                hold: None,
                guard: None,
                reads: Vec::new(),
            };
        }
        let guard = if enforced { self.guard(facts) } else { None };
        let reads = if enforced {
            self.reads(facts)
        } else {
            Vec::new()
        };
        if let Some(g) = &guard
            && facts.classes.contains(&Class::Transaction)
        {
            return Outcome {
                denied: Some(deny(
                    &g.rule,
                    "a write with a row limit cannot share a Query message with BEGIN, COMMIT, ROLLBACK or SAVEPOINT (it runs in a transaction pgwarden can undo); send them as separate statements",
                )),
                enforced,
                hold: None,
                guard: None,
                reads: Vec::new(),
            };
        }
        for c in &self.conditional {
            if c.max_rows.is_some() || c.rows_over.is_some() || c.budget.is_some() {
                continue;
            }
            if self.matches(c, facts) {
                let id = &c.approval.id;
                return match c.action {
                    super::file::Action::Deny => Outcome {
                        denied: Some(deny(
                            id,
                            c.reason
                                .clone()
                                .unwrap_or_else(|| "denied by this policy's rule".into()),
                        )),
                        enforced,
                        hold: None,
                        guard: None,
                        reads: Vec::new(),
                    },
                    // A statement that would run as another role: only one whose every
                    // effect the policy read.
                    super::file::Action::RequireApproval
                        if enforced
                            && let Some(role) = &c.approval.run_as
                            && let Err(why) = elevatable(facts) =>
                    {
                        Outcome {
                            denied: Some(deny(
                                id,
                                format!("this rule runs statements as `{role}`, and {why}"),
                            )),
                            enforced,
                            hold: None,
                            guard: None,
                            reads: Vec::new(),
                        }
                    }
                    // Audit-only profiles record, they do not hold.
                    super::file::Action::RequireApproval if enforced => Outcome {
                        denied: None,
                        enforced,
                        hold: Some(std::sync::Arc::clone(&c.approval)),
                        guard,
                        reads,
                    },
                    super::file::Action::RequireApproval => Outcome::ALLOW,
                };
            }
        }
        Outcome {
            denied: None,
            enforced,
            hold: None,
            guard,
            reads,
        }
    }

    /// The read limits of every matching rule with `rows_over` or `budget`.
    fn reads(&self, f: &Facts) -> Vec<ReadLimit> {
        self.conditional
            .iter()
            .filter(|c| (c.rows_over.is_some() || c.budget.is_some()) && self.matches(c, f))
            .map(|c| ReadLimit {
                rule: std::sync::Arc::clone(&c.approval),
                deny: c.action == super::file::Action::Deny,
                rows_over: c.rows_over,
                budget: c.budget,
                reason: c.reason.clone(),
            })
            .collect()
    }

    /// The tightest row limit on a statement that changes rows (INSERT, UPDATE, DELETE,
    /// MERGE, data-modifying CTEs, COPY FROM): the profile's `writes.max_rows` and every
    /// matching rule with `max_rows`.
    ///
    /// A statement that calls a function pgwarden does not know as a read-only built-in is
    /// counted too (a function can write rows the statement's text does not show); its
    /// results stream, and only its end waits for the count.
    fn guard(&self, f: &Facts) -> Option<WriteGuard> {
        let copy_in = f.classes.contains(&Class::Copy) && !f.copy_to;
        let writes = f.classes.contains(&Class::Write) || copy_in;
        // Functions the text calls; CALL; and FETCH, which runs a cursor's query (and the
        // functions in it) after its DECLARE.
        let calls = f.functions.iter().any(|func| !read_only_builtin(func))
            || f.classes.contains(&Class::FunctionCall)
            || f.commands.iter().any(|c| c == "FETCH/CLOSE");
        if !writes && !calls {
            return None;
        }
        let mut best = self.write_limit.map(|n| WriteGuard {
            rule: WRITE_ROWS.to_owned(),
            max_rows: n,
            reason: None,
            hold_results: writes,
            copy_in,
        });
        for c in &self.conditional {
            let Some(n) = c.max_rows else { continue };
            if self.matches(c, f) && best.as_ref().is_none_or(|b| n < b.max_rows) {
                best = Some(WriteGuard {
                    rule: c.approval.id.clone(),
                    max_rows: n,
                    reason: c.reason.clone(),
                    hold_results: writes,
                    copy_in,
                });
            }
        }
        best
    }

    fn matches(&self, c: &Conditional, f: &Facts) -> bool {
        (c.classes.is_empty() || c.classes.iter().any(|k| f.classes.contains(k)))
            && (c.tables.is_empty()
                || f.tables.iter().any(|t| {
                    c.tables
                        .iter()
                        .any(|(s, n)| *n == t.name && self.candidates(t).contains(&s.as_str()))
                }))
            && c.without_limit_at_most
                .is_none_or(|max| f.has_query && f.limit.is_none_or(|l| l > max))
    }

    /// A fast-path FunctionCall message.
    pub fn decide_fastpath(&self) -> Outcome {
        let denied = if self.allow_fastpath && self.classes.contains(&Class::FunctionCall) {
            None
        } else {
            Some(deny(
                "fastpath",
                "fast-path function calls are not allowed (the function cannot be checked)",
            ))
        };
        Outcome {
            denied,
            enforced: self.mode == Mode::Enforce,
            hold: None,
            guard: None,
            reads: Vec::new(),
        }
    }

    /// Masked columns may only be selected as they are: any other use could reconstruct,
    /// encode or search the hidden digits. COPY cannot follow column origins.
    fn mask_rules(&self, f: &Facts) -> Option<Denied> {
        if !self.mask.active() {
            return None;
        }
        if f.copy_to && f.copy_binary {
            return Some(deny("mask.copy", "binary COPY cannot be masked"));
        }
        for rule in &self.mask.columns {
            let touches = f.tables.iter().any(|t| {
                t.name == rule.table && self.candidates(t).contains(&rule.schema.as_str())
            });
            if !touches {
                continue;
            }
            let label = rule.label();
            if f.copy_to {
                return Some(deny(
                    "mask.copy",
                    format!(
                        "COPY of {}.{}, which has masked columns, is not allowed",
                        rule.schema, rule.table
                    ),
                ));
            }
            if self.mask.allow_uses.contains(&label) {
                continue;
            }
            if f.column_uses.contains(&(rule.column.clone(), false)) {
                return Some(deny(
                    "mask.inference",
                    format!(
                        "{label} is masked: it may only be selected as it is, not used in expressions, conditions, joins, sorting or grouping"
                    ),
                ));
            }
            if f.row_refs {
                return Some(deny(
                    "mask.inference",
                    format!(
                        "whole-row references to {}.{} would bypass the mask of {label}",
                        rule.schema, rule.table
                    ),
                ));
            }
        }
        None
    }

    fn rules(&self, f: &Facts) -> Option<Denied> {
        if f.role_change {
            return Some(deny(
                "role.change",
                "changing the role or session authorization is not allowed",
            ));
        }
        if let Some(setting) = &f.lexer_setting {
            return Some(deny(
                "setting.lexer",
                format!(
                    "SET {setting} is not allowed: PostgreSQL would then read statement text differently from pgwarden's parser (standard_conforming_strings must stay on; client encodings whose characters can end in a backslash are refused)"
                ),
            ));
        }
        if f.copy_program {
            return Some(deny(
                "copy.program",
                "COPY to or from a program is not allowed",
            ));
        }
        if f.copy_file {
            return Some(deny(
                "copy.file",
                "COPY to or from a server file is not allowed",
            ));
        }
        if let Some(c) = f.classes.iter().find(|c| !self.classes.contains(c)) {
            let command = f.commands.join("; ");
            return Some(deny(
                &format!("class.{}", c.name()),
                format!(
                    "{} statements are not allowed for this workload ({command})",
                    c.name()
                ),
            ));
        }
        for t in &f.tables {
            let cands = self.candidates(t);
            for s in &cands {
                if SECRET_CATALOG.contains(&(*s, t.name.as_str())) {
                    return Some(deny(
                        "catalog.secret",
                        format!("{s}.{} holds secrets", t.name),
                    ));
                }
                if self
                    .deny_tables
                    .contains(&((*s).to_owned(), t.name.clone()))
                {
                    return Some(deny(
                        "table.denied",
                        format!("table {s}.{} is denied", t.name),
                    ));
                }
            }
            let resolved = cands.first().copied().unwrap_or("public");
            if CATALOG_SCHEMAS.contains(&resolved) {
                if t.access == Access::Write {
                    return Some(deny(
                        "table.not-allowed",
                        format!("writing to {resolved}.{} is not allowed", t.name),
                    ));
                }
                continue;
            }
            if let Some(allowed) = &self.tables {
                let ok = allowed
                    .get(&(resolved.to_owned(), t.name.clone()))
                    .is_some_and(|a| a.contains(&t.access));
                if !ok {
                    let how = if t.access == Access::Write {
                        "writing to"
                    } else {
                        "reading"
                    };
                    return Some(deny(
                        "table.not-allowed",
                        format!(
                            "{how} {resolved}.{} is not allowed for this workload",
                            t.name
                        ),
                    ));
                }
            }
        }
        for func in &f.functions {
            let bare = func.name.as_str();
            if self.functions_deny.iter().any(|g| g.is_match(bare)) {
                return Some(deny(
                    "function.denied",
                    format!("function {bare} is not allowed"),
                ));
            }
            if bare == "pg_sleep"
                && (func.first_dynamic || func.first_number.is_some_and(|s| s > self.max_sleep))
            {
                return Some(deny(
                    "function.sleep",
                    format!("pg_sleep over {}s is not allowed", self.max_sleep),
                ));
            }
        }
        for (s, t, c) in &self.deny_columns {
            let touches = f
                .tables
                .iter()
                .any(|tr| tr.name == *t && self.candidates(tr).contains(&s.as_str()));
            if touches && (f.columns.contains(c) || f.wildcard || f.row_refs) {
                return Some(deny(
                    "column.denied",
                    format!("column {s}.{t}.{c} is not allowed"),
                ));
            }
        }
        if let Some(d) = self.mask_rules(f) {
            return Some(d);
        }
        if let Some(cmd) = f.unscoped.first() {
            return Some(deny(
                "dml.unscoped",
                format!("{cmd} without a WHERE clause that limits rows is not allowed"),
            ));
        }
        if f.search_path_change && !self.allow_search_path_change {
            return Some(deny(
                "search-path.change",
                "changing search_path is not allowed (table rules resolve names against the policy's search_path)",
            ));
        }
        None
    }
}
