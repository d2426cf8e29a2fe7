//! The live sessions: ids, what status shows of each, and the backend keys that route a
//! CancelRequest to the session that owns it.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{SessionInfo, SessionMeta};
use crate::names::{SessionId, SockAddr};
use crate::netns::Netns;

/// A backend's pid and secret key, as BackendKeyData and CancelRequest carry them.
type CancelKey = (i32, Vec<u8>);

/// Where a CancelRequest for a live session goes: the session, its server, its client's pid
/// (a Unix server path is resolved in that client's mount namespace), its network namespace.
#[derive(Clone, Debug)]
pub struct CancelTarget {
    /// The session whose backend it is.
    pub session: SessionId,
    /// Its server.
    pub server: SockAddr,
    /// Its client's process id.
    pub client_pid: Option<u32>,
    /// Its client's network namespace, when not the agent's.
    pub netns: Option<Arc<Netns>>,
}

/// Live sessions and their backend keys.
pub struct Registry {
    sessions: Mutex<BTreeMap<SessionId, SessionInfo>>,
    cancel_keys: Mutex<HashMap<CancelKey, CancelTarget>>,
    base: u64,
    seq: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    /// A registry whose session ids carry `started` (seconds since the epoch) in the high bits,
    /// so ids differ across agent restarts.
    pub fn new(started: u64) -> Self {
        Self {
            sessions: Mutex::default(),
            cancel_keys: Mutex::default(),
            base: (started & 0xff_ffff_ffff) << 24,
            seq: AtomicU64::new(1),
        }
    }

    /// A fresh session id: the agent's start time in the high bits, a counter below.
    pub fn next_id(&self) -> SessionId {
        SessionId(self.base | (self.seq.fetch_add(1, Ordering::Relaxed) & 0xff_ffff))
    }

    /// A session passed startup.
    pub fn started(&self, info: SessionInfo) {
        lock(&self.sessions).insert(info.meta.id, info);
    }

    /// A session ended: forget it and its cancel key.
    pub fn ended(&self, id: SessionId) {
        lock(&self.sessions).remove(&id);
        lock(&self.cancel_keys).retain(|_, t| t.session != id);
    }

    /// The server told session `meta` its backend key.
    pub fn register_cancel(&self, meta: &SessionMeta, pid: i32, key: &[u8]) {
        // A cancel goes where the session's own connection went.
        let (server, client_pid, netns) = meta.upstream();
        lock(&self.cancel_keys).insert(
            (pid, key.to_vec()),
            CancelTarget {
                session: meta.id,
                server: server.clone(),
                client_pid,
                netns: netns.cloned(),
            },
        );
    }

    /// The live session whose backend has this key.
    pub fn cancel_target(&self, pid: i32, key: &[u8]) -> Option<CancelTarget> {
        lock(&self.cancel_keys).get(&(pid, key.to_vec())).cloned()
    }

    /// The live sessions, as status shows them.
    pub fn list(&self) -> Vec<SessionInfo> {
        lock(&self.sessions).values().cloned().collect()
    }

    /// How many sessions are live.
    pub fn len(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
