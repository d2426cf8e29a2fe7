//! Where an accepted connection comes from: the kernel's record of its connect (the server it
//! asked for, the workload, the caller), completed into a workload name and an identity. No
//! record means pgwarden does not know who this is: the session is refused (fail closed).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::{debug, warn};

use super::UnixPeer;
use crate::config::ListenOnlyConfig;
use crate::identity::{self, Identity};
use crate::names::{CgroupId, OrigDstAddr, SessionId, SockAddr, WorkloadId, WorkloadName};
use crate::netns::Netns;
use crate::redirect::Redirect;
use crate::tags::Tagger;

/// Where a session comes from, once the kernel's record is found.
pub(super) struct Origin {
    pub server: OrigDstAddr,
    pub workload: WorkloadName,
    pub identity: Option<Identity>,
    /// The client's network namespace, when it is not the agent's: upstream connects start
    /// from there, so an address means what it meant to the client.
    pub netns: Option<Arc<Netns>>,
}

/// What origins are looked up in.
pub struct Origins {
    /// The kernel side; `None` in listen-only mode.
    pub redirect: Option<Arc<Mutex<Redirect>>>,
    /// Workload names and known cgroup paths. Lock order: `tagger` before `redirect`.
    pub tagger: Arc<Mutex<Tagger>>,
    /// Where cgroup2 is mounted.
    pub cgroup_root: PathBuf,
    /// Listen-only mode's server and workload.
    pub listen_only: ListenOnlyConfig,
}

impl Origins {
    /// The origin of an accepted TCP connection.
    pub(super) async fn tcp(
        &self,
        peer: SocketAddr,
        listen: SocketAddr,
        netns_cookie: u64,
    ) -> Option<Origin> {
        let Some(redirect) = &self.redirect else {
            return self.listen_only().await;
        };
        let record = redirect
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take_origin(peer, listen, netns_cookie)?;
        let server = identity::orig_dst(&record);
        self.complete(record.workload, identity::Caller::from(&record), server)
            .await
    }

    /// Listen-only mode: every connection goes to the configured server as its workload.
    async fn listen_only(&self) -> Option<Origin> {
        let target = self.listen_only.upstream.as_deref()?;
        let server = tokio::net::lookup_host(target)
            .await
            .ok()?
            .next()
            .map(|a| OrigDstAddr(SockAddr::Inet(a)))?;
        Some(Origin {
            server,
            workload: WorkloadName(self.listen_only.workload.clone()),
            identity: None,
            netns: None,
        })
    }

    /// The origin of an accepted Unix connection, from the record `connect_unix` stored under
    /// the client socket's cookie (found through sock_diag). SO_PEERCRED must name the same
    /// process.
    pub(super) async fn unix(&self, id: SessionId, peer: &UnixPeer) -> Option<Origin> {
        let record = {
            let mut redirect = self
                .redirect
                .as_ref()?
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let record = redirect.unix_origin(peer.client_cookie)?;
            redirect.note_unix_peer(peer.accepted_cookie, &record);
            record
        };
        let caller = identity::Caller::from(&record);
        if let Some(cred) = peer.cred
            && (cred.pid().and_then(|p| u32::try_from(p).ok()) != Some(caller.tgid)
                || cred.uid() != caller.uid)
        {
            warn!(
                session = %id,
                record_pid = caller.tgid,
                peer_pid = ?cred.pid(),
                "a Unix connection's SO_PEERCRED differs from its connect() record: refused"
            );
            return None;
        }
        self.complete(record.workload, caller, identity::orig_unix(&record))
            .await
    }

    /// Completes a kernel record into an origin: the workload's name and the caller's identity.
    async fn complete(
        &self,
        workload_id: u32,
        record: identity::Caller,
        server: OrigDstAddr,
    ) -> Option<Origin> {
        let (workload, known_path) = {
            let tagger = self.tagger.lock().unwrap_or_else(PoisonError::into_inner);
            let workload = tagger
                .registry
                .name(WorkloadId(workload_id))
                .cloned()
                .unwrap_or_else(|| WorkloadName(format!("unknown-{workload_id}")));
            (
                workload,
                tagger.path_of(CgroupId(record.cgroup_id)).cloned(),
            )
        };
        let root = self.cgroup_root.clone();
        let identity = tokio::task::spawn_blocking(move || {
            identity::resolve(&record, workload, known_path, &root)
        })
        .await
        .ok()?;
        debug!(pid = identity.pid, "origin found");
        Some(Origin {
            server,
            workload: identity.workload.clone(),
            identity: Some(identity),
            netns: None,
        })
    }
}
