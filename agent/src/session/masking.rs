//! A session's masking, following its policy version. The rules and where their columns are
//! (the column-origin resolution) belong to a policy version; when a reload changes the rules
//! of an open session's workload, or DDL may have moved its columns, the session resolves them
//! again in its own connection, in order: the catalog query goes to the server at the start
//! of the next batch, and its result replaces the masks before any later result is read. A
//! resolution that fails ends the session (fail closed: no result is shown under stale rules).
use std::sync::Arc;

use bytes::Bytes;

use crate::mask::{self, MaskCount, MaskRules, MaskSession, Resolved};
use crate::names::SockAddr;
use crate::policy::PolicySet;
use crate::wire::Frame;
use crate::wire::backend::Column;

/// Why the masked columns cannot be found.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve the masked columns in database {database}: {reason}")]
pub struct ResolveError {
    database: String,
    reason: String,
}

/// A change of masks the session must make, in order with the server's replies.
pub struct Change {
    /// The rules to apply.
    rules: Option<Arc<MaskRules>>,
    /// Their resolution when already known (`None`: from the query's rows).
    resolved: Option<Arc<Resolved>>,
    /// The version they belong to (its catalog keeps the resolution).
    set: Arc<PolicySet>,
    /// What to send the server so its reply marks the point of the change: the catalog
    /// query, or an empty query when nothing needs resolving.
    pub query: String,
}

/// The masks a session applies.
pub struct Masking {
    server: SockAddr,
    database: String,
    key: Arc<Vec<u8>>,
    rules: Option<Arc<MaskRules>>,
    /// The rules last asked for (applied, or on their way in a [`Change`]).
    wanted: Option<Arc<MaskRules>>,
    /// The policy version the rules are of, or are being changed to (0: none yet).
    version: u64,
    mask: Option<MaskSession>,
    /// DDL ran since the columns were resolved: they may have moved.
    stale: bool,
}

/// Where a resolution of `rules`' masked columns is cached: the server, the database and the
/// catalog query itself (the resolution is a function of exactly these). Keyed by content, not
/// by the rules' address: an address is reused once a reload frees the old rules.
pub fn catalog_key(server: &SockAddr, database: &str, rules: &MaskRules) -> Option<String> {
    Some(format!("{server}|{database}|{}", rules.catalog_query()?))
}

impl Masking {
    /// Nothing masked yet; [`Masking::follow`] brings in the first version's rules.
    pub fn new(server: SockAddr, database: String, key: Arc<Vec<u8>>) -> Self {
        Self {
            server,
            database,
            key,
            rules: None,
            wanted: None,
            version: 0,
            mask: None,
            stale: false,
        }
    }

    /// What must change for the session to mask as `rules` of `set` say. `None`: nothing (same
    /// version, or rules of the same content and no DDL since).
    pub fn follow(
        &mut self,
        set: &Arc<PolicySet>,
        rules: Option<Arc<MaskRules>>,
    ) -> Option<Change> {
        if set.version == self.version && !self.stale {
            return None;
        }
        let rules = rules.filter(|r| r.active());
        self.version = set.version;
        if !self.stale && self.wanted == rules {
            return None;
        }
        self.stale = false;
        self.wanted.clone_from(&rules);
        let cached = match &rules {
            None => Some(Arc::new(Resolved::default())),
            Some(r) if r.columns.is_empty() => Some(Arc::new(Resolved::default())),
            Some(r) => {
                catalog_key(&self.server, &self.database, r).and_then(|k| set.catalog.get(&k))
            }
        };
        let query = match (&cached, &rules) {
            (None, Some(r)) => r.catalog_query().unwrap_or_default(),
            _ => String::new(),
        };
        Some(Change {
            rules,
            resolved: cached,
            set: Arc::clone(set),
            query,
        })
    }

    /// Applies `change` once the server answered its query (`rows`, or `error`).
    pub fn apply(
        &mut self,
        change: Change,
        rows: &[Vec<Option<String>>],
        error: Option<String>,
    ) -> Result<(), ResolveError> {
        let resolved = match (change.resolved, &change.rules) {
            (Some(r), _) => r,
            (None, Some(rules)) => {
                if let Some(reason) = error {
                    return Err(ResolveError {
                        database: self.database.clone(),
                        reason,
                    });
                }
                let r = Arc::new(Resolved::from_rows(rules, rows));
                if let Some(k) = catalog_key(&self.server, &self.database, rules) {
                    change.set.catalog.put(k, Arc::clone(&r));
                }
                r
            }
            (None, None) => Arc::new(Resolved::default()),
        };
        self.mask = change
            .rules
            .clone()
            .map(|r| MaskSession::new(r, resolved, Arc::clone(&self.key)));
        self.rules = change.rules;
        Ok(())
    }

    /// A command completed: DDL can move masked columns (a table re-created gets a new OID).
    pub fn command_complete(&mut self, tag: &str, set: &PolicySet) {
        if ["CREATE", "ALTER", "DROP"]
            .iter()
            .any(|k| tag.starts_with(k))
        {
            set.catalog.clear();
            if self.wanted.as_ref().is_some_and(|r| !r.columns.is_empty()) {
                self.stale = true;
            }
        }
    }

    /// A result is about to stream with these columns.
    pub fn result_columns(&mut self, cols: &[Column]) {
        if let Some(m) = &mut self.mask {
            m.result_columns(cols);
        }
    }

    /// A result row; `Some` replaces it.
    pub fn data_row(&mut self, row: &Frame) -> Option<Bytes> {
        self.mask.as_mut()?.data_row(row)
    }

    /// COPY data from the server; `Some` replaces it.
    pub fn copy_data(&mut self, data: &Frame) -> Option<Bytes> {
        self.mask.as_mut()?.copy_data(data)
    }

    /// An error or notice from the server; `Some` replaces it.
    pub fn error(&self, frame: &Frame) -> Option<Bytes> {
        if self.rules.is_some() {
            mask::error_fields(frame)
        } else {
            None
        }
    }

    /// A NotificationResponse, ParameterStatus or FunctionCallResponse; `Some` replaces it.
    /// Whatever masks the workload has, no card number reaches it in these either.
    pub fn message(&self, frame: &Frame) -> Option<Bytes> {
        if self.rules.is_some() {
            mask::message_text(frame)
        } else {
            None
        }
    }

    /// Values masked since the last call.
    pub fn take_counts(&mut self) -> Vec<MaskCount> {
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
