//! Statement policy: parsed-SQL enforcement per workload (PCI DSS Req 7), explainable and
//! hot-reloadable. `analyze` reads SQL, `decide` rules on it, `file` loads policies; this
//! module keeps the compiled set, caches verdicts, and plugs into sessions.
pub mod analyze;
pub mod decide;
pub mod decision;
pub mod file;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use self::analyze::Facts;
pub use self::decide::{Budget, ReadLimit, WRITE_ROWS, WriteGuard};
use self::decide::{Outcome, Profile};
pub use self::decision::{
    Context, Decision, Denied, SessionPolicy, Statement, StatementKind, Verdict, lexer_refusal,
    no_policy,
};
pub use self::file::RecordResults;
use crate::config::{Config, ConfigError};
use crate::mask::Catalog;

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
    /// The policy file's SHA-256, shared by every decision under it.
    pub hash: Arc<str>,
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
            hash: Arc::from(profile.policy_hash.as_str()),
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

/// Every workload's compiled profile, one consistent version, with where its masked columns
/// were found: a reload replaces rules and resolutions together.
pub struct PolicySet {
    /// Increases with each reload.
    pub version: u64,
    /// Workload name -> profile.
    pub workloads: HashMap<String, Arc<Compiled>>,
    /// Policy files and their SHA-256, for audit and status.
    pub files: Vec<(PathBuf, String)>,
    /// Workload names the config defines (with or without a policy).
    pub defined: std::collections::HashSet<String>,
    /// Masked columns resolved per server and database under these rules.
    pub catalog: Catalog,
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
            catalog: Catalog::default(),
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

/// Checks a session's startup `options` (`-c name=value`) as the SETs they amount to, before
/// the server is contacted.
pub fn startup(set: &PolicySet, workload: &str, options: Option<&str>) -> Result<(), Denied> {
    let Some(options) = options else {
        return Ok(());
    };
    let Some(compiled) = set.workloads.get(workload) else {
        return Err(no_policy(workload, set.defined.contains(workload)));
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
            return Err(denied);
        }
    }
    Ok(())
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
