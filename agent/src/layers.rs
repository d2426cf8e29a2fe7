//! The layers every session passes through, composed: policy decides each statement, masking
//! rewrites what comes back (and resolves its columns before the client gets the session).
//! Audit and approval plug in here too.
use std::sync::Arc;

use bytes::Bytes;

use crate::hooks::{Hooks, SessionHooks, Statement, Verdict};
use crate::mask::{self, Catalog, MaskRules, MaskSession, Resolved};
use crate::policy::PolicyHooks;
use crate::session::SessionMeta;
use crate::wire::Frame;
use crate::wire::backend::Column;

/// The agent-wide layers.
pub struct Layers {
    /// Statement policy.
    pub policy: PolicyHooks,
    /// Resolved masked columns per database.
    pub catalog: Arc<Catalog>,
    /// Key of the `hash` mask method.
    pub hash_key: Arc<Vec<u8>>,
}

impl Hooks for Layers {
    fn startup(&self, meta: &SessionMeta) -> Verdict {
        self.policy.startup(meta)
    }

    fn policy_reloaded(&self) {
        // New rules may name other columns: resolve afresh.
        self.catalog.clear();
    }

    fn open(&self, meta: &Arc<SessionMeta>) -> Box<dyn SessionHooks> {
        let rules = self
            .policy
            .engine
            .current()
            .workloads
            .get(&meta.workload.0)
            .map(|c| Arc::clone(&c.profile.mask));
        let mut session = LayersSession {
            policy: self.policy.open(meta),
            meta: Arc::clone(meta),
            catalog: Arc::clone(&self.catalog),
            key: Arc::clone(&self.hash_key),
            rules,
            mask: None,
        };
        if let Some(rules) = session.rules.clone()
            && rules.active()
            && rules.columns.is_empty()
        {
            // The content detector alone needs no catalog.
            session.mask = Some(MaskSession::new(
                rules,
                Arc::new(Resolved::default()),
                Arc::clone(&session.key),
            ));
        }
        Box::new(session)
    }
}

struct LayersSession {
    policy: Box<dyn SessionHooks>,
    meta: Arc<SessionMeta>,
    catalog: Arc<Catalog>,
    key: Arc<Vec<u8>>,
    rules: Option<Arc<MaskRules>>,
    mask: Option<MaskSession>,
}

impl LayersSession {
    fn catalog_key(&self, rules: &MaskRules) -> Option<String> {
        catalog_key(&self.meta.server.0, &self.meta.db.database, rules)
    }
}

/// Where a resolution of `rules`' masked columns is cached: the server, the database and the
/// catalog query itself (the resolution is a function of exactly these). Keyed by content, not
/// by the rules' address: an address is reused once a reload frees the old rules, and the
/// stale resolution would then mask the wrong columns.
fn catalog_key(
    server: &crate::names::SockAddr,
    database: &str,
    rules: &MaskRules,
) -> Option<String> {
    Some(format!("{server}|{database}|{}", rules.catalog_query()?))
}

impl SessionHooks for LayersSession {
    fn setup_query(&mut self) -> Option<String> {
        let rules = self.rules.clone().filter(|r| !r.columns.is_empty())?;
        if let Some(resolved) = self.catalog_key(&rules).and_then(|k| self.catalog.get(&k)) {
            self.mask = Some(MaskSession::new(rules, resolved, Arc::clone(&self.key)));
            return None;
        }
        rules.catalog_query()
    }

    fn setup_result(
        &mut self,
        rows: Vec<Vec<Option<String>>>,
        error: Option<String>,
    ) -> Result<(), String> {
        let Some(rules) = self.rules.clone() else {
            return Ok(());
        };
        if let Some(e) = error {
            // Fail closed: without knowing where masked columns are, nothing is served.
            return Err(format!(
                "cannot resolve the masked columns in database {}: {e}",
                self.meta.db.database
            ));
        }
        let resolved = Arc::new(Resolved::from_rows(&rules, &rows));
        if let Some(key) = self.catalog_key(&rules) {
            self.catalog.put(key, Arc::clone(&resolved));
        }
        self.mask = Some(MaskSession::new(rules, resolved, Arc::clone(&self.key)));
        Ok(())
    }

    fn session_start(&mut self) {
        self.policy.session_start();
    }

    fn statement(&mut self, st: &Statement<'_>) -> Verdict {
        self.policy.statement(st)
    }

    fn result_columns(&mut self, cols: &[Column]) {
        if let Some(m) = &mut self.mask {
            m.result_columns(cols);
        }
    }

    fn data_row(&mut self, row: &Frame) -> Option<Bytes> {
        self.mask.as_mut()?.data_row(row)
    }

    fn copy_data(&mut self, data: &Frame) -> Option<Bytes> {
        self.mask.as_mut()?.copy_data(data)
    }

    fn command_complete(&mut self, tag: &str) {
        // DDL can move masked columns (a table re-created gets a new OID).
        if ["CREATE", "ALTER", "DROP"]
            .iter()
            .any(|k| tag.starts_with(k))
        {
            self.catalog.clear();
        }
        self.policy.command_complete(tag);
    }

    fn error(&mut self, frame: &Frame) -> Option<Bytes> {
        if self.rules.as_ref().is_some_and(|r| r.active()) {
            mask::error_fields(frame)
        } else {
            None
        }
    }

    fn session_end(&mut self) {
        self.policy.session_end();
    }

    fn last_decision(&self) -> Option<crate::hooks::DecisionInfo> {
        self.policy.last_decision()
    }

    fn policy_version(&self) -> u64 {
        self.policy.policy_version()
    }

    fn take_masked(&mut self) -> Vec<mask::MaskCount> {
        self.mask
            .as_mut()
            .map(MaskSession::take_counts)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::ColumnRule;
    use crate::names::SockAddr;

    fn rules(columns: &[&str]) -> MaskRules {
        MaskRules {
            columns: columns
                .iter()
                .map(|c| {
                    let mut p = c.split('.');
                    ColumnRule {
                        schema: p.next().unwrap().into(),
                        table: p.next().unwrap().into(),
                        column: p.next().unwrap().into(),
                        method: crate::mask::Method::Redact,
                    }
                })
                .collect(),
            detect_pans: false,
            allow_uses: Vec::new(),
        }
    }

    #[test]
    fn the_catalog_is_keyed_by_what_the_rules_mask_not_where_they_live() {
        let server = SockAddr::Unix("/run/postgresql/.s.PGSQL.5432".into());
        let a = Arc::new(rules(&["public.payments.card_number"]));
        let b = Arc::new(rules(&["public.payments.card_number"]));
        let other = Arc::new(rules(&["public.customers.email"]));
        // Same content in two allocations: one resolution serves both.
        assert_ne!(Arc::as_ptr(&a), Arc::as_ptr(&b));
        assert_eq!(
            catalog_key(&server, "db", &a),
            catalog_key(&server, "db", &b)
        );
        // Other columns, another database or server: never the same entry.
        assert_ne!(
            catalog_key(&server, "db", &a),
            catalog_key(&server, "db", &other)
        );
        assert_ne!(
            catalog_key(&server, "db", &a),
            catalog_key(&server, "db2", &a)
        );
        let tcp = SockAddr::Inet("127.0.0.1:5432".parse().unwrap());
        assert_ne!(catalog_key(&server, "db", &a), catalog_key(&tcp, "db", &a));
        // A freed rule set's address reused by other rules cannot find the old resolution.
        let addr = Arc::as_ptr(&a) as usize;
        drop(a);
        let reused = Arc::new(rules(&["public.customers.email"]));
        if Arc::as_ptr(&reused) as usize == addr {
            assert_ne!(
                catalog_key(&server, "db", &reused),
                catalog_key(&server, "db", &b)
            );
        }
        assert_eq!(catalog_key(&server, "db", &rules(&[])), None);
    }
}
