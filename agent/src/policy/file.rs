//! The policy file: YAML, validated on load, refused with file:line:column.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::analyze::{Access, Class};
use crate::config::{ConfigError, Invalid};
use crate::yaml_path;

/// A policy file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Schema version; 1.
    pub version: u32,
    /// Free text shown by `policy check`.
    #[serde(default)]
    pub description: Option<String>,
    /// `enforce` (default) or `audit-only` (log what would be denied, deny nothing).
    #[serde(default)]
    pub mode: Mode,
    /// What to do with SQL that does not parse: `deny` (default) or `audit-only`.
    #[serde(default)]
    pub unparsed: Mode,
    /// Schemas searched for unqualified table names, in order (default `[public]`).
    #[serde(default = "default_search_path")]
    pub search_path: Vec<String>,
    /// Function rules for every profile.
    #[serde(default)]
    pub functions: FunctionRules,
    /// Named rule sets; config workloads pick one with `profile:`.
    pub profiles: BTreeMap<String, ProfileSpec>,
    /// Expected decisions, run by `pgwarden policy test`.
    #[serde(default)]
    pub tests: Vec<TestCase>,
}

/// Enforcement mode.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Deny what the rules deny.
    #[default]
    #[serde(alias = "deny")]
    Enforce,
    /// Allow, but record what would have been denied.
    AuditOnly,
}

/// Function rules.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionRules {
    /// Denied function names (globs), added to the built-in list.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Names removed from the built-in list (explicit opt-in).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Longest pg_sleep allowed, seconds (default 1).
    #[serde(default = "default_sleep")]
    pub max_sleep_seconds: f64,
}

/// One profile as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    /// Another profile whose rules this one starts from.
    #[serde(default)]
    pub extends: Option<String>,
    /// Allowed statement classes (replaces the parent's when given).
    #[serde(default)]
    pub classes: Option<Vec<Class>>,
    /// Allowed tables (`schema.table`) and how; absent means every table not denied.
    /// Merged over the parent's.
    #[serde(default)]
    pub tables: Option<BTreeMap<String, Vec<Access>>>,
    /// Denied tables, added to the parent's.
    #[serde(default)]
    pub deny_tables: Vec<String>,
    /// Denied columns (`schema.table.column`), added to the parent's.
    #[serde(default)]
    pub deny_columns: Vec<String>,
    /// Allow `SET search_path` (default false: unqualified names resolve against the
    /// policy's `search_path`, so changing it is refused).
    #[serde(default)]
    pub allow_search_path_change: Option<bool>,
    /// Allow fast-path FunctionCall messages (default false).
    #[serde(default)]
    pub allow_fastpath: Option<bool>,
    /// Per-profile mode override.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Per-profile unparsed override.
    #[serde(default)]
    pub unparsed: Option<Mode>,
    /// Masking, merged over the parent's.
    #[serde(default)]
    pub mask: Option<MaskSpec>,
    /// Conditional rules, checked in order after the profile's other rules allowed a
    /// statement; added after the parent's.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// Limits on what a write may change, by effect (replaces the parent's when given).
    #[serde(default)]
    pub writes: Option<WritesSpec>,
    /// Keep the first rows of each result, as sent, with the statement's `query.done` record
    /// (replaces the parent's when given; `null` turns the parent's off). Off by default.
    #[serde(default, deserialize_with = "given")]
    pub record_results: Option<Option<RecordResults>>,
}

/// A key that is present, `null` or not: `Some(None)` for `null`, so a child profile can turn
/// its parent's setting off (absent keys stay `None` through `#[serde(default)]`).
fn given<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// The most rows of a result `record_results` keeps per statement.
pub const MAX_RECORDED_ROWS: u64 = 1000;

/// The most bytes of a result `record_results` keeps per statement (1 MiB).
pub const MAX_RECORDED_BYTES: u64 = 1 << 20;

/// `record_results: {rows: 20, bytes: 8192}`: what the workload saw, kept in the journal. The
/// first `rows` rows of each result, as sent (after masking), their JSON in the record taking
/// at most `bytes` bytes, the column names, the number of rows sent and a SHA-256 of them.
#[derive(Clone, Copy, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RecordResults {
    /// Rows kept per statement, 1 to [`MAX_RECORDED_ROWS`] (default 20).
    #[serde(default = "default_recorded_rows")]
    pub rows: u64,
    /// Bytes the kept rows (and their column names) take in the record, 1 to
    /// [`MAX_RECORDED_BYTES`] (default 8192).
    #[serde(default = "default_recorded_bytes")]
    pub bytes: u64,
}

fn default_recorded_rows() -> u64 {
    20
}
fn default_recorded_bytes() -> u64 {
    8192
}

impl RecordResults {
    /// Why these values cannot be used: the key at fault and the message.
    pub fn invalid(&self) -> Option<(&'static str, String)> {
        if !(1..=MAX_RECORDED_ROWS).contains(&self.rows) {
            return Some((
                "rows",
                format!(
                    "record_results.rows is {}: keep 1 to {MAX_RECORDED_ROWS} rows per statement (leave record_results out to keep none)",
                    self.rows
                ),
            ));
        }
        if !(1..=MAX_RECORDED_BYTES).contains(&self.bytes) {
            return Some((
                "bytes",
                format!(
                    "record_results.bytes is {}: keep 1 to {MAX_RECORDED_BYTES} bytes (1 MiB) per statement",
                    self.bytes
                ),
            ));
        }
        None
    }
}

/// A profile's write limits as written.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WritesSpec {
    /// The most rows one statement may insert, update or delete, over all tables, counted by
    /// the server itself (triggers, cascades and data-modifying CTEs included); a statement
    /// that changed more is undone and refused (`write.rows`).
    #[serde(default)]
    pub max_rows: Option<u64>,
}

/// What a conditional rule does when it matches.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Hold the statement until an approver says yes.
    RequireApproval,
    /// Refuse it.
    Deny,
}

/// A conditional rule as written. Every condition given must hold.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Rule id, shown in errors, approvals and audit records.
    pub id: String,
    /// What to do.
    pub action: Action,
    /// Matches statements of any of these classes.
    #[serde(default)]
    pub classes: Vec<Class>,
    /// Matches statements touching any of these tables (`schema.table`).
    #[serde(default)]
    pub tables: Vec<String>,
    /// Matches queries without a LIMIT of at most this many rows.
    #[serde(default)]
    pub without_limit_at_most: Option<u64>,
    /// With `action: deny`: not a refusal up front but a limit by effect: a matching write
    /// that changed more rows than this is undone and refused under this rule's id.
    #[serde(default)]
    pub max_rows: Option<u64>,
    /// A limit by effect on reads: a matching statement's first this-many result rows stream,
    /// then the rest waits for a person (`require_approval`) or is cut off (`deny`).
    #[serde(default)]
    pub rows_over: Option<u64>,
    /// A read budget of the workload, over all its sessions: rows of matching results
    /// actually sent, in a sliding window; past it, the result waits for a person
    /// (`require_approval`) or is cut off (`deny`).
    #[serde(default)]
    pub budget: Option<BudgetSpec>,
    /// For `require_approval`: user names, `uid:N` or `group:NAME`.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// For `require_approval`: seconds a request waits (default 300).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// For `require_approval`: longest grant an approver may open with `--for` (default: no
    /// grants).
    #[serde(default)]
    pub max_grant_seconds: Option<u64>,
    /// For `require_approval`: the role an approved statement (or one passing under the
    /// rule's grant) runs as, set by pgwarden around that statement alone. The workload's own
    /// role must be a member of it (`GRANT payments_admin TO app`, best with NOINHERIT).
    #[serde(default)]
    pub run_as: Option<String>,
    /// Text for the client and the record.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A read budget as written: `{rows: 1000, per: 1h}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// Rows allowed in the window.
    pub rows: u64,
    /// The window, e.g. `1h`, `15m`.
    pub per: String,
}

/// A profile's masking as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskSpec {
    /// `schema.table.column: method` (pan, pan(last4), partial(first, last), redact, null,
    /// hash).
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Mask PANs found anywhere in results, errors and notices.
    #[serde(default)]
    pub detect_pans: Option<bool>,
    /// Masked columns that may be used beyond a bare projection (predicates, functions...).
    #[serde(default)]
    pub allow_uses: Vec<String>,
}

/// One expected decision.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// Profile.
    pub profile: String,
    /// SQL text.
    pub sql: String,
    /// `allow` or `deny`.
    pub expect: Expect,
    /// The rule expected to deny.
    #[serde(default)]
    pub rule: Option<String>,
}

/// An expected outcome.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
    /// Held for approval (`rule` names the approval rule).
    Hold,
}

impl Default for FunctionRules {
    fn default() -> Self {
        Self {
            deny: Vec::new(),
            allow: Vec::new(),
            max_sleep_seconds: default_sleep(),
        }
    }
}

fn default_search_path() -> Vec<String> {
    vec!["public".into()]
}
fn default_sleep() -> f64 {
    1.0
}

/// Reads a policy file and returns it with the SHA-256 of its bytes.
pub fn load(path: &Path) -> Result<(PolicyFile, String), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        at: None,
        message: e.to_string(),
    })?;
    let file: PolicyFile =
        serde_yaml_ng::from_str(&text).map_err(|e| ConfigError::yaml(path, &e))?;
    file.validate()
        .map_err(|invalid| ConfigError::at_path(path, &text, invalid))?;
    use sha2::Digest as _;
    let hash = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    Ok((file, hash))
}

impl PolicyFile {
    /// Semantic checks, each error pointing at the node it is about.
    fn validate(&self) -> Result<(), Invalid> {
        if self.version != 1 {
            return Err(Invalid::value(
                yaml_path!["version"],
                format!(
                    "unsupported policy version {} (this pgwarden reads 1)",
                    self.version
                ),
            ));
        }
        for (list, patterns) in [
            ("deny", &self.functions.deny),
            ("allow", &self.functions.allow),
        ] {
            for (i, g) in patterns.iter().enumerate() {
                if let Err(e) = crate::cgroup::Glob::new(g) {
                    return Err(Invalid::value(
                        yaml_path!["functions", list, i],
                        e.to_string(),
                    ));
                }
            }
        }
        for (name, p) in &self.profiles {
            let at = |steps: crate::config::locate::Path| {
                let mut path = yaml_path!["profiles", name.as_str()];
                path.extend(steps);
                path
            };
            if let Some(parent) = &p.extends
                && !self.profiles.contains_key(parent)
            {
                return Err(Invalid::value(
                    at(yaml_path!["extends"]),
                    format!("profile `{name}` extends unknown profile `{parent}`"),
                ));
            }
            for t in p.tables.iter().flat_map(|t| t.keys()) {
                if t.split('.').count() != 2 {
                    return Err(Invalid::key(
                        at(yaml_path!["tables", t.as_str()]),
                        format!("table `{t}`: write it as schema.table"),
                    ));
                }
            }
            for (i, t) in p.deny_tables.iter().enumerate() {
                if t.split('.').count() != 2 {
                    return Err(Invalid::value(
                        at(yaml_path!["deny_tables", i]),
                        format!("table `{t}`: write it as schema.table"),
                    ));
                }
            }
            for (c, m) in p.mask.iter().flat_map(|m| &m.columns) {
                let column = || at(yaml_path!["mask", "columns", c.as_str()]);
                if c.split('.').count() != 3 {
                    return Err(Invalid::key(
                        column(),
                        format!("masked column `{c}`: write it as schema.table.column"),
                    ));
                }
                if let Err(e) = crate::mask::Method::parse(m) {
                    return Err(Invalid::value(column(), e.to_string()));
                }
            }
            for (i, r) in p.rules.iter().enumerate() {
                if r.action == Action::RequireApproval && r.approvers.is_empty() {
                    return Err(Invalid::value(
                        at(yaml_path!["rules", i, "id"]),
                        format!("rule `{}` requires approval but names no approvers", r.id),
                    ));
                }
                let effects = [
                    r.max_rows.is_some(),
                    r.rows_over.is_some(),
                    r.budget.is_some(),
                ];
                if effects.iter().filter(|e| **e).count() > 1 {
                    return Err(Invalid::value(
                        at(yaml_path!["rules", i, "id"]),
                        format!(
                            "rule `{}`: max_rows, rows_over and budget are separate limits; give each its own rule",
                            r.id
                        ),
                    ));
                }
                if let Some(b) = &r.budget
                    && let Err(e) = humantime::parse_duration(&b.per)
                {
                    return Err(Invalid::value(
                        at(yaml_path!["rules", i, "budget", "per"]),
                        format!("rule `{}`: budget.per `{}`: {e}", r.id, b.per),
                    ));
                }
                if let Some(role) = &r.run_as {
                    let why = if r.action != Action::RequireApproval {
                        Some(
                            "run_as goes with `action: require_approval` (a person approves each elevation)",
                        )
                    } else if effects.iter().any(|e| *e) {
                        Some(
                            "run_as applies to a held statement; it cannot go with max_rows, rows_over or budget",
                        )
                    } else if role.is_empty() || role.len() > 63 || role.contains('\0') {
                        Some("run_as must be a role name of 1 to 63 bytes")
                    } else {
                        None
                    };
                    if let Some(why) = why {
                        return Err(Invalid::value(
                            at(yaml_path!["rules", i, "run_as"]),
                            format!("rule `{}`: {why}", r.id),
                        ));
                    }
                }
                if r.max_rows.is_some() && r.action != Action::Deny {
                    return Err(Invalid::value(
                        at(yaml_path!["rules", i, "max_rows"]),
                        format!(
                            "rule `{}`: max_rows limits writes by effect and goes with `action: deny`",
                            r.id
                        ),
                    ));
                }
                for (j, t) in r.tables.iter().enumerate() {
                    if t.split('.').count() != 2 {
                        return Err(Invalid::value(
                            at(yaml_path!["rules", i, "tables", j]),
                            format!("rule `{}`: table `{t}`: write it as schema.table", r.id),
                        ));
                    }
                }
            }
            if let Some(Some(r)) = &p.record_results
                && let Some((key, message)) = r.invalid()
            {
                return Err(Invalid::value(
                    at(yaml_path!["record_results", key]),
                    message,
                ));
            }
            for (i, c) in p.deny_columns.iter().enumerate() {
                if c.split('.').count() != 3 {
                    return Err(Invalid::value(
                        at(yaml_path!["deny_columns", i]),
                        format!("column `{c}`: write it as schema.table.column"),
                    ));
                }
            }
        }
        for (i, t) in self.tests.iter().enumerate() {
            if !self.profiles.contains_key(&t.profile) {
                return Err(Invalid::value(
                    yaml_path!["tests", i, "profile"],
                    format!("test names unknown profile `{}`", t.profile),
                ));
            }
        }
        // Cycles in `extends`.
        for name in self.profiles.keys() {
            let mut seen = vec![name.as_str()];
            let mut cur = name.as_str();
            while let Some(parent) = self.profiles.get(cur).and_then(|p| p.extends.as_deref()) {
                if seen.contains(&parent) {
                    return Err(Invalid::value(
                        yaml_path!["profiles", name.as_str(), "extends"],
                        format!("profile `{name}`: `extends` forms a cycle"),
                    ));
                }
                seen.push(parent);
                cur = parent;
            }
        }
        Ok(())
    }
}

/// A policy path from the config, relative to the config file's directory.
pub fn resolve_path(config_file: &Path, policy: &Path) -> PathBuf {
    if policy.is_absolute() {
        policy.to_owned()
    } else {
        config_file.parent().unwrap_or(Path::new(".")).join(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.yaml");
        std::fs::write(&p, text).unwrap();
        load(&p).unwrap_err().to_string()
    }

    #[test]
    fn errors_point_at_their_node_not_at_a_comment() {
        for (text, at, message) in [
            (
                "# extends: nope is what we test\nversion: 1\nprofiles:\n  r:\n    extends: nope\n",
                "p.yaml:5:14: ",
                "profile `r` extends unknown profile `nope`",
            ),
            (
                "version: 1\nprofiles:\n  a: {extends: b}\n  b:\n    extends: a\n",
                "p.yaml:3:16: ",
                "profile `a`: `extends` forms a cycle",
            ),
            (
                "# payments: [read]\nversion: 1\nprofiles:\n  r:\n    tables:\n      public.x: [read]\n      payments: [read]\n",
                "p.yaml:7:7: ",
                "table `payments`: write it as schema.table",
            ),
            (
                "version: 1\nprofiles:\n  r:\n    deny_tables: [public.a, b]\n",
                "p.yaml:4:29: ",
                "table `b`: write it as schema.table",
            ),
            (
                "version: 1\nprofiles:\n  r:\n    mask:\n      columns:\n        public.t.c: sparkle\n",
                "p.yaml:6:21: ",
                "sparkle",
            ),
            (
                "version: 1\nprofiles:\n  r:\n    rules:\n      - {id: ok, action: deny}\n      - id: bulk # id: bulk\n        action: require_approval\n",
                "p.yaml:6:13: ",
                "rule `bulk` requires approval but names no approvers",
            ),
            (
                // The statement text of the test also appears in a comment before it.
                "version: 1\nprofiles:\n  r: {}\n# sql: SELECT 1\ntests:\n  - {profile: r, sql: SELECT 1, expect: allow}\n  - profile: q\n    sql: SELECT 1\n    expect: allow\n",
                "p.yaml:7:14: ",
                "test names unknown profile `q`",
            ),
            (
                "# version: 1\nversion: 2\nprofiles: {}\n",
                "p.yaml:2:10: ",
                "unsupported policy version 2",
            ),
            (
                "version: 1\nprofiles:\n  r:\n    record_results: {rows: 0}\n",
                "p.yaml:4:28: ",
                "record_results.rows is 0: keep 1 to 1000 rows per statement",
            ),
            (
                "version: 1\nprofiles:\n  r:\n    record_results:\n      rows: 5000\n",
                "p.yaml:5:13: ",
                "record_results.rows is 5000: keep 1 to 1000 rows",
            ),
            (
                "version: 1\nprofiles:\n  r:\n    record_results: {rows: 20, bytes: 2000000}\n",
                "p.yaml:4:39: ",
                "record_results.bytes is 2000000: keep 1 to 1048576 bytes (1 MiB)",
            ),
            (
                "version: 1\nprofiles:\n  r:\n    record_results: {rows: 20, cells: 3}\n",
                "p.yaml:",
                "unknown field `cells`",
            ),
        ] {
            let e = error_of(text);
            assert!(e.contains(at), "{text:?} gave {e}");
            assert!(e.contains(message), "{text:?} gave {e}");
        }
    }

    #[test]
    fn record_results_defaults_inherits_and_turns_off() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.yaml");
        std::fs::write(
            &p,
            "version: 1\nprofiles:\n  base: {}\n  audited:\n    record_results: {rows: 3}\n  child:\n    extends: audited\n  quiet:\n    extends: audited\n    record_results: null\n  full:\n    record_results: {rows: 1000, bytes: 1048576}\n",
        )
        .unwrap();
        let (f, hash) = load(&p).unwrap();
        let of = |name: &str| {
            crate::policy::decide::compile(&f, &hash, name)
                .unwrap()
                .record_results
        };
        assert_eq!(of("base"), None, "off unless a profile asks");
        let three = Some(RecordResults {
            rows: 3,
            bytes: 8192,
        });
        assert_eq!(of("audited"), three, "bytes defaults to 8192");
        assert_eq!(of("child"), three, "inherited");
        assert_eq!(of("quiet"), None, "null turns the parent's off");
        assert_eq!(
            of("full"),
            Some(RecordResults {
                rows: MAX_RECORDED_ROWS,
                bytes: MAX_RECORDED_BYTES
            }),
            "the maxima are allowed"
        );
    }
}
