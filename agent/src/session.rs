//! One intercepted connection: who it is, where it was going, and the relay between the
//! client and the real server. The per-connection state machine later layers plug into.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tracing::{info, warn};

use crate::daemon::Shared;
use crate::identity::{self, Identity};
use crate::names::{
    CgroupId, ClientAddr, ListenAddr, OrigDstAddr, SessionId, WorkloadId, WorkloadName,
};

/// A live session, as status shows it.
#[derive(Clone, Debug, Serialize)]
pub struct SessionInfo {
    /// Session id.
    pub id: SessionId,
    /// Who (absent in listen-only mode, where the kernel recorded nothing).
    pub identity: Option<Identity>,
    /// Workload name.
    pub workload: WorkloadName,
    /// The client's address as the interceptor sees it.
    pub client: ClientAddr,
    /// The interceptor address the client landed on.
    pub listen: ListenAddr,
    /// The real server the client asked for.
    pub server: OrigDstAddr,
    /// The local address of pgwarden's own connection to the server.
    pub upstream_local: Option<SocketAddr>,
    /// Start, seconds since the epoch.
    pub started: u64,
}

/// Where a session comes from, once the kernel's record is found.
struct Origin {
    server: OrigDstAddr,
    workload: WorkloadName,
    identity: Option<Identity>,
}

/// Removes the session from the registry when it ends, however it ends.
struct Registered<'a> {
    shared: &'a Shared,
    id: SessionId,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.id);
    }
}

/// Serves one accepted connection to the end. Errors end this session only.
pub async fn serve(shared: Arc<Shared>, mut client: TcpStream, peer: SocketAddr) {
    let id = shared.next_session_id();
    let listen = match client.local_addr() {
        Ok(a) => a,
        Err(e) => {
            warn!(session = %id, "accepted socket has no local address: {e}");
            return;
        }
    };
    let Some(origin) = origin(&shared, peer, listen).await else {
        // Fail closed: no record means we do not know who this is or where it was going.
        warn!(
            session = %id,
            client = %peer,
            "refused a connection with no redirect record: it was not redirected by pgwarden's \
             programs (a client pointed at the listen address?) or its record was lost"
        );
        let _ = client.shutdown().await;
        return;
    };
    let _ = client.set_nodelay(true);
    let mut upstream = match TcpStream::connect(origin.server.0).await {
        Ok(s) => s,
        Err(e) => {
            warn!(session = %id, server = %origin.server.0, "cannot reach the server: {e}");
            let _ = client.shutdown().await;
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let info = SessionInfo {
        id,
        identity: origin.identity,
        workload: origin.workload,
        client: ClientAddr(peer),
        listen: ListenAddr(listen),
        server: origin.server,
        upstream_local: upstream.local_addr().ok(),
        started: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    log_start(&info);
    shared
        .sessions
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(id, info.clone());
    let _registered = Registered {
        shared: &shared,
        id,
    };
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => info!(session = %id, bytes_up = up, bytes_down = down, "session end"),
        Err(e) => info!(session = %id, "session end: {e}"),
    }
}

fn log_start(info: &SessionInfo) {
    match &info.identity {
        Some(who) => info!(
            session = %info.id,
            workload = %info.workload,
            pid = who.pid,
            uid = who.uid,
            exe = who.exe.as_deref().unwrap_or("?"),
            cgroup = %who.cgroup.as_ref().map_or_else(|| format!("id:{}", who.cgroup_id.0), ToString::to_string),
            client = %info.client.0,
            server = %info.server.0,
            "session start"
        ),
        None => {
            info!(session = %info.id, workload = %info.workload, client = %info.client.0, server = %info.server.0, "session start (listen-only)")
        }
    }
}

async fn origin(shared: &Shared, peer: SocketAddr, listen: SocketAddr) -> Option<Origin> {
    let Some(redirect) = &shared.redirect else {
        let server = shared.listen_only_upstream().await?;
        return Some(Origin {
            server,
            workload: shared.listen_only_workload(),
            identity: None,
        });
    };
    let record = redirect
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take_origin(peer, listen)?;
    let (workload, known_path) = {
        let tagger = shared
            .tagger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let workload = tagger
            .registry
            .name(WorkloadId(record.workload))
            .cloned()
            .unwrap_or_else(|| WorkloadName(format!("unknown-{}", record.workload)));
        (
            workload,
            tagger.path_of(CgroupId(record.cgroup_id)).cloned(),
        )
    };
    let root = shared.cgroup_root.clone();
    let identity = tokio::task::spawn_blocking(move || {
        identity::resolve(&record, workload, known_path, &root)
    })
    .await
    .ok()?;
    Some(Origin {
        server: identity::orig_dst(&record),
        workload: identity.workload.clone(),
        identity: Some(identity),
    })
}
