//! Statement policy: parsed-SQL enforcement per workload (PCI DSS Req 7), explainable and
//! hot-reloadable. `analyze` reads SQL, `decide` rules on it, `file` loads policies; this
//! module keeps the compiled set, caches verdicts, and plugs into sessions.
pub mod analyze;
pub mod decide;
pub mod file;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tracing::{info, warn};

use self::analyze::Facts;
use self::decide::{INSUFFICIENT_PRIVILEGE, Outcome, Profile};
use crate::config::{Config, ConfigError};
use crate::hooks::{Denied, Hooks, SessionHooks, Statement, StatementKind, Verdict};
use crate::session::SessionMeta;

/// Verdicts kept per profile, per cache, before that cache starts over.
const CACHE_ENTRIES: usize = 10_000;

/// Statement texts longer than this are decided every time rather than kept as a cache key.
const CACHE_TEXT_BYTES: usize = 16 * 1024;

/// A statement's facts and the profile's outcome, cached by statement text.
#[derive(Debug)]
pub struct Decided {
    /// What the statement does.
    pub facts: Facts,
    /// What the profile decided.
    pub outcome: Outcome,
}

/// Which cache answered (for `pgwarden policy bench` and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheHit {
    /// The same text was decided before.
    Text,
    /// A text of the same shape (differing only in literals the verdict does not depend on).
    Shape,
    /// Parsed and decided now.
    Miss,
}

/// A profile with its verdict caches: by exact text, and by shape ([`crate::sqltext`]) for
/// verdicts that do not depend on literal values, so `WHERE id = 7` and `WHERE id = 8` are
/// parsed once between them.
pub struct Compiled {
    /// The rules.
    pub profile: Profile,
    /// Where they come from.
    pub policy_file: PathBuf,
    by_text: Mutex<HashMap<Box<str>, Arc<Decided>>>,
    by_shape: Mutex<HashMap<Box<str>, Arc<Decided>>>,
}

fn bounded_insert(cache: &Mutex<HashMap<Box<str>, Arc<Decided>>>, key: &str, d: &Arc<Decided>) {
    if key.len() > CACHE_TEXT_BYTES {
        return;
    }
    let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
    if cache.len() >= CACHE_ENTRIES {
        cache.clear();
    }
    cache.insert(key.into(), Arc::clone(d));
}

impl Compiled {
    /// A compiled profile outside an engine (`pgwarden policy bench`).
    pub fn for_bench(profile: Profile, policy_file: PathBuf) -> Self {
        Self::new(profile, policy_file)
    }

    fn new(profile: Profile, policy_file: PathBuf) -> Self {
        Self {
            profile,
            policy_file,
            by_text: Mutex::new(HashMap::new()),
            by_shape: Mutex::new(HashMap::new()),
        }
    }

    /// Decides on `sql`, parsing it only the first time this profile sees it (or its shape).
    /// A text seen before is looked up without being read again.
    pub fn decide(&self, sql: &str) -> Arc<Decided> {
        if let Some(d) = self
            .by_text
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(sql)
        {
            return Arc::clone(d);
        }
        let shape = crate::sqltext::Text::of(sql).shape;
        self.decide_shaped(sql, shape.as_deref()).0
    }

    /// [`Compiled::decide`] for a text whose shape the caller read already; says which cache
    /// answered.
    pub fn decide_shaped(&self, sql: &str, shape: Option<&str>) -> (Arc<Decided>, CacheHit) {
        let lookup = |cache: &Mutex<HashMap<Box<str>, Arc<Decided>>>, key: &str| {
            cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(key)
                .map(Arc::clone)
        };
        if let Some(d) = lookup(&self.by_text, sql) {
            return (d, CacheHit::Text);
        }
        if let Some(shape) = shape
            && let Some(d) = lookup(&self.by_shape, shape)
        {
            return (d, CacheHit::Shape);
        }
        let facts = analyze::analyze(sql);
        let outcome = self.profile.decide(&facts);
        let decided = Arc::new(Decided { facts, outcome });
        // By text always (the same text again is one lookup); by shape too when the verdict
        // holds for any literals.
        bounded_insert(&self.by_text, sql, &decided);
        if let Some(shape) = shape
            && !decided.facts.literal_sensitive
        {
            bounded_insert(&self.by_shape, shape, &decided);
        }
        (decided, CacheHit::Miss)
    }
}

/// Every workload's compiled profile, one consistent version.
pub struct PolicySet {
    /// Increases with each reload.
    pub version: u64,
    /// Workload name -> profile.
    pub workloads: HashMap<String, Arc<Compiled>>,
    /// Policy files and their SHA-256, for audit and status.
    pub files: Vec<(PathBuf, String)>,
    /// Workload names the config defines (with or without a policy).
    pub defined: std::collections::HashSet<String>,
}

impl PolicySet {
    /// Compiles the policies the config's workloads name. All or nothing.
    pub fn build(config: &Config, config_path: &Path, version: u64) -> Result<Self, ConfigError> {
        let mut loaded: HashMap<PathBuf, (file::PolicyFile, String)> = HashMap::new();
        let mut workloads = HashMap::new();
        for w in &config.workloads {
            let Some(policy) = &w.policy else { continue };
            let path = file::resolve_path(config_path, policy);
            if !loaded.contains_key(&path) {
                let f = file::load(&path)?;
                loaded.insert(path.clone(), f);
            }
            let (f, hash) = &loaded[&path];
            let profile_name = w.profile.clone().unwrap_or_else(|| w.name.clone());
            let profile = decide::compile(f, hash, &profile_name).ok_or_else(|| ConfigError {
                file: path.clone(),
                at: None,
                message: format!(
                    "workload `{}` uses profile `{profile_name}`, which this policy does not define (it has: {})",
                    w.name,
                    f.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            })?;
            workloads.insert(
                w.name.clone(),
                Arc::new(Compiled::new(profile, path.clone())),
            );
        }
        let mut files: Vec<(PathBuf, String)> =
            loaded.into_iter().map(|(p, (_, h))| (p, h)).collect();
        files.sort();
        let defined = config.workloads.iter().map(|w| w.name.clone()).collect();
        Ok(Self {
            version,
            workloads,
            files,
            defined,
        })
    }
}

/// The policy layer: the current set, swapped whole on reload.
pub struct Engine {
    current: RwLock<Arc<PolicySet>>,
    versions: AtomicU64,
    config_path: PathBuf,
}

impl Engine {
    /// The engine for a loaded config.
    pub fn new(config: &Config, config_path: &Path) -> Result<Self, ConfigError> {
        let set = PolicySet::build(config, config_path, 1)?;
        Ok(Self {
            current: RwLock::new(Arc::new(set)),
            versions: AtomicU64::new(1),
            config_path: config_path.to_owned(),
        })
    }

    /// The current set.
    pub fn current(&self) -> Arc<PolicySet> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Re-reads every policy file; on any error the running set stays and the error is
    /// returned. Live sessions use the new set from their next statement.
    pub fn reload(&self, config: &Config) -> Result<Arc<PolicySet>, ConfigError> {
        let version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
        let set = Arc::new(PolicySet::build(config, &self.config_path, version)?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&set);
        Ok(set)
    }
}

fn no_policy(workload: &str, known: bool) -> Denied {
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

/// The policy layer as session hooks.
pub struct PolicyHooks {
    /// The engine.
    pub engine: Arc<Engine>,
}

/// `-c name=value` and `--name=value` settings in a StartupMessage's `options`.
pub fn startup_settings(options: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut words = options.split_whitespace();
    while let Some(w) = words.next() {
        let setting = if w == "-c" {
            words.next()
        } else if let Some(s) = w.strip_prefix("-c") {
            Some(s)
        } else {
            w.strip_prefix("--")
        };
        if let Some((k, v)) = setting.and_then(|s| s.split_once('=')) {
            out.push((k.replace('-', "_"), v.to_owned()));
        }
    }
    out
}

impl Hooks for PolicyHooks {
    fn startup(&self, meta: &SessionMeta) -> Verdict {
        let Some(options) = &meta.db.options else {
            return Verdict::Allow;
        };
        let set = self.engine.current();
        let Some(compiled) = set.workloads.get(&meta.workload.0) else {
            return Verdict::Deny(no_policy(
                &meta.workload.0,
                set.defined.contains(&meta.workload.0),
            ));
        };
        for (k, v) in startup_settings(options) {
            let sql = format!("SET {k} = '{}'", v.replace('\'', "''"));
            let d = compiled.decide(&sql);
            if d.outcome.refuses() {
                let mut denied = d
                    .outcome
                    .denied
                    .clone()
                    .unwrap_or_else(|| no_policy("", false));
                denied.reason = format!("startup option -c {k}={v}: {}", denied.reason);
                return Verdict::Deny(denied);
            }
        }
        Verdict::Allow
    }

    fn open(&self, meta: &Arc<SessionMeta>) -> Box<dyn SessionHooks> {
        Box::new(PolicySession {
            engine: Arc::clone(&self.engine),
            meta: Arc::clone(meta),
            last: None,
            prepared: HashMap::new(),
            version: 0,
        })
    }
}

struct PolicySession {
    engine: Arc<Engine>,
    meta: Arc<SessionMeta>,
    /// The last statement's facts, the policy hash it was decided under, and whether the
    /// profile masks.
    last: Option<(Arc<Decided>, String, bool)>,
    /// Outcome of each PREPARE by name, so EXECUTE inherits it.
    prepared: HashMap<String, Outcome>,
    /// The policy set version of the last decision.
    version: u64,
}

impl PolicySession {
    fn outcome(&mut self, st: &Statement<'_>) -> Outcome {
        let set = self.engine.current();
        self.version = set.version;
        let Some(compiled) = set.workloads.get(&self.meta.workload.0) else {
            let defined = set.defined.contains(&self.meta.workload.0);
            return Outcome {
                denied: Some(no_policy(&self.meta.workload.0, defined)),
                enforced: true,
                hold: None,
            };
        };
        if st.kind == StatementKind::FunctionCall {
            return compiled.profile.decide_fastpath();
        }
        let decided = compiled.decide_shaped(st.sql, st.shape).0;
        self.last = Some((
            Arc::clone(&decided),
            compiled.profile.policy_hash.clone(),
            compiled.profile.mask.active(),
        ));
        let mut outcome = decided.outcome.clone();
        // EXECUTE inherits the outcome of its PREPARE (a denial, or a hold).
        if outcome.denied.is_none()
            && let Some(o) = decided.facts.executes.iter().find_map(|n| {
                self.prepared
                    .get(n)
                    .filter(|o| o.denied.is_some() || o.hold.is_some())
            })
        {
            outcome = o.clone();
        }
        for name in &decided.facts.prepares {
            self.prepared.insert(name.clone(), outcome.clone());
        }
        // PREPARE itself runs nothing: the hold applies when EXECUTE runs it.
        if !decided.facts.prepares.is_empty() && decided.facts.executes.is_empty() {
            outcome.hold = None;
        }
        outcome
    }
}

impl SessionHooks for PolicySession {
    fn policy_version(&self) -> u64 {
        self.version
    }

    fn last_decision(&self) -> Option<crate::hooks::DecisionInfo> {
        let (d, hash, masks) = self.last.as_ref()?;
        Some(crate::hooks::DecisionInfo {
            command: d.facts.commands.join(", "),
            objects: d
                .facts
                .tables
                .iter()
                .map(|t| match &t.schema {
                    Some(s) => format!("{s}.{}", t.name),
                    None => t.name.clone(),
                })
                .collect(),
            policy_hash: hash.clone(),
            masked: *masks && d.facts.classes.contains(&analyze::Class::Read),
        })
    }

    fn statement(&mut self, st: &Statement<'_>) -> Verdict {
        let outcome = self.outcome(st);
        match outcome.denied {
            Some(d) if outcome.enforced => {
                info!(session = %self.meta.id, workload = %self.meta.workload, rule = %d.rule, "statement denied: {}", d.reason);
                Verdict::Deny(d)
            }
            Some(d) => {
                warn!(session = %self.meta.id, workload = %self.meta.workload, rule = %d.rule, "audit-only: would deny: {}", d.reason);
                Verdict::Allow
            }
            None => match outcome.hold {
                Some(rule) => Verdict::Hold(rule),
                None => Verdict::Allow,
            },
        }
    }
}

#[cfg(test)]
mod tests;

/// One expected-decision case's result.
#[derive(Debug, serde::Serialize)]
pub struct CaseResult {
    /// Profile.
    pub profile: String,
    /// SQL.
    pub sql: String,
    /// What the file expects.
    pub expected: String,
    /// What the profile decided: `allow` or `deny <rule>`.
    pub got: String,
    /// Whether they agree.
    pub pass: bool,
}

/// Runs the `tests:` of a policy file.
pub fn run_tests(path: &Path) -> Result<Vec<CaseResult>, ConfigError> {
    let (f, hash) = file::load(path)?;
    let mut out = Vec::new();
    for t in &f.tests {
        let Some(profile) = decide::compile(&f, &hash, &t.profile) else {
            continue;
        };
        let outcome = profile.decide(&analyze::analyze(&t.sql));
        let got = match (&outcome.denied, &outcome.hold) {
            (Some(d), _) => format!("deny {}", d.rule),
            (None, Some(h)) => format!("hold {}", h.id),
            (None, None) => "allow".to_owned(),
        };
        let pass = match t.expect {
            file::Expect::Allow => outcome.denied.is_none() && outcome.hold.is_none(),
            file::Expect::Hold => {
                outcome.denied.is_none()
                    && outcome
                        .hold
                        .as_ref()
                        .is_some_and(|h| t.rule.as_ref().is_none_or(|r| *r == h.id))
            }
            file::Expect::Deny => outcome
                .denied
                .as_ref()
                .is_some_and(|d| t.rule.as_ref().is_none_or(|r| *r == d.rule)),
        };
        let expected = match (t.expect, &t.rule) {
            (file::Expect::Allow, _) => "allow".to_owned(),
            (file::Expect::Hold, Some(r)) => format!("hold {r}"),
            (file::Expect::Hold, None) => "hold".to_owned(),
            (file::Expect::Deny, Some(r)) => format!("deny {r}"),
            (file::Expect::Deny, None) => "deny".to_owned(),
        };
        out.push(CaseResult {
            profile: t.profile.clone(),
            sql: t.sql.clone(),
            expected,
            got,
            pass,
        });
    }
    Ok(out)
}
