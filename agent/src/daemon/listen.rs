//! The listeners: TCP and the abstract Unix socket in the agent's network namespace, and the
//! same inside each foreign network namespace a tagged workload runs in.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use super::{NsServed, Shared, lock};
use crate::session;
/// Binds the Unix listener: `@name` in the abstract namespace (no file, reachable from any
/// mount namespace of this network namespace), else a path (a stale socket file is replaced;
/// mode 0666, since tagged workloads of any uid land here and the record decides).
pub(super) fn bind_unix(name: &str) -> anyhow::Result<tokio::net::UnixListener> {
    tokio::net::UnixListener::from_std(bind_unix_std(name)?)
        .context("registering the Unix listener")
}

/// [`bind_unix`] without the runtime (a namespace's helper thread has none): non-blocking.
pub(super) fn bind_unix_std(name: &str) -> anyhow::Result<std::os::unix::net::UnixListener> {
    use std::os::linux::net::SocketAddrExt as _;
    let std_listener = if let Some(abstract_name) = name.strip_prefix('@') {
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .with_context(|| format!("listen.unix {name}"))?;
        std::os::unix::net::UnixListener::bind_addr(&addr)
            .with_context(|| format!("binding the Unix listener {name} (another agent there?)"))?
    } else {
        use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
        if std::fs::symlink_metadata(name).is_ok_and(|m| m.file_type().is_socket()) {
            std::fs::remove_file(name).with_context(|| format!("removing the stale {name}"))?;
        }
        let l = std::os::unix::net::UnixListener::bind(name)
            .with_context(|| format!("binding the Unix listener {name}"))?;
        std::fs::set_permissions(name, std::fs::Permissions::from_mode(0o666))
            .with_context(|| format!("chmod {name}"))?;
        l
    };
    std_listener.set_nonblocking(true)?;
    Ok(std_listener)
}

/// Opens listeners in every foreign network namespace a tagged process is in, and closes those
/// of namespaces no tagged process is in any more (their live sessions carry on). A tagged
/// connect from a namespace without its listener is refused: fail closed.
pub(super) async fn serve_namespaces(shared: &Arc<Shared>) {
    let Some(_) = &shared.redirect else {
        return;
    };
    // One pass at a time (start, rescans and attach events all call this): two passes would
    // both see a new namespace unserved and race to bind in it.
    let _one = shared.serving_namespaces.lock().await;
    let dirs: Vec<PathBuf> = lock(&shared.tagger)
        .tagged()
        .map(|(_, tag)| tag.path.dir(&shared.cgroup_root))
        .collect();
    let found = tokio::task::spawn_blocking(move || {
        let own = crate::netns::own().ok()?;
        let pids = dirs.iter().flat_map(|d| crate::netns::procs_under(d));
        Some(crate::netns::foreign(pids, own))
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_default();
    let gone: Vec<crate::netns::NetnsId> = lock(&shared.namespaces)
        .keys()
        .filter(|id| !found.contains_key(id))
        .copied()
        .collect();
    for id in gone {
        if let Some(served) = lock(&shared.namespaces).remove(&id) {
            served.stop.send_replace(true);
            info!(
                netns = id.0,
                "no tagged process left in the network namespace: its listeners are closed"
            );
        }
    }
    for (id, pid) in found {
        if lock(&shared.namespaces).contains_key(&id) {
            continue;
        }
        let config = (shared.config.listen.ipv4, shared.config.listen.ipv6);
        let unix = shared.listen_unix.clone().filter(|_| {
            shared
                .redirect
                .as_ref()
                .is_some_and(|r| lock(r).unix_disabled.is_none())
        });
        let opened = tokio::task::spawn_blocking(move || open_in_namespace(id, pid, config, unix))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r);
        let (ns, tcp, unix) = match opened {
            Ok(o) => o,
            Err(e) => {
                warn!(
                    netns = id.0,
                    pid,
                    "cannot serve a tagged workload's network namespace: {e}; its tagged connects are refused"
                );
                continue;
            }
        };
        let ns = Arc::new(ns);
        let (stop, _) = tokio::sync::watch::channel(false);
        let mut listen = Vec::new();
        for l in tcp {
            match TcpListener::from_std(l) {
                Ok(l) => {
                    if let Ok(a) = l.local_addr() {
                        listen.push(a.to_string());
                    }
                    tokio::spawn(accept_loop_in(
                        Arc::clone(shared),
                        l,
                        Some(Arc::clone(&ns)),
                        stop.subscribe(),
                    ));
                }
                Err(e) => warn!(netns = id.0, "registering a namespace listener: {e}"),
            }
        }
        if let Some((l, name)) = unix {
            match tokio::net::UnixListener::from_std(l) {
                Ok(l) => {
                    listen.push(name.clone());
                    tokio::spawn(accept_unix_loop_in(
                        Arc::clone(shared),
                        l,
                        name,
                        Some(Arc::clone(&ns)),
                        stop.subscribe(),
                    ));
                }
                Err(e) => warn!(netns = id.0, "registering a namespace listener: {e}"),
            }
        }
        info!(netns = id.0, pid, listen = ?listen, "serving a tagged workload's network namespace");
        lock(&shared.namespaces).insert(id, NsServed { ns, listen, stop });
    }
}

pub(super) type NsListeners = (
    crate::netns::Netns,
    Vec<std::net::TcpListener>,
    Option<(std::os::unix::net::UnixListener, String)>,
);

/// Binds the agent's listen addresses (and its abstract Unix name) inside namespace `id`.
/// A family the namespace cannot bind (no ::1, loopback down) is logged and left out: its
/// tagged connects are then refused.
pub(super) fn open_in_namespace(
    id: crate::netns::NetnsId,
    pid: u32,
    (v4, v6): (
        Option<std::net::SocketAddrV4>,
        Option<std::net::SocketAddrV6>,
    ),
    unix: Option<String>,
) -> std::io::Result<NsListeners> {
    let ns = crate::netns::Netns::open(id, pid)?;
    let (tcp, unix) = ns.run(|| {
        let mut tcp = Vec::new();
        for addr in [v4.map(SocketAddr::V4), v6.map(SocketAddr::V6)]
            .into_iter()
            .flatten()
        {
            match std::net::TcpListener::bind(addr) {
                Ok(l) => {
                    l.set_nonblocking(true)?;
                    tcp.push(l);
                }
                Err(e) => warn!(netns = id.0, %addr, "cannot listen in the namespace: {e}"),
            }
        }
        // Only an abstract name is per network namespace; a path listener is one file, and
        // the agent's own listener already serves every namespace that can see it.
        let unix = match unix.filter(|n| n.starts_with('@')) {
            Some(name) => Some((
                bind_unix_std(&name).map_err(|e| std::io::Error::other(format!("{e:#}")))?,
                name,
            )),
            None => None,
        };
        Ok((tcp, unix))
    })?;
    if tcp.is_empty() && unix.is_none() {
        return Err(std::io::Error::other("nothing could be bound"));
    }
    Ok((ns, tcp, unix))
}

pub(super) async fn accept_unix_loop(
    shared: Arc<Shared>,
    listener: tokio::net::UnixListener,
    name: String,
) {
    let (_keep, stop) = tokio::sync::watch::channel(false);
    accept_unix_loop_in(shared, listener, name, None, stop).await;
}

pub(super) async fn accept_unix_loop_in(
    shared: Arc<Shared>,
    listener: tokio::net::UnixListener,
    name: String,
    netns: Option<Arc<crate::netns::Netns>>,
    mut closed: tokio::sync::watch::Receiver<bool>,
) {
    let mut stopping = shared.stopping.subscribe();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopping.wait_for(|s| *s) => return,
            _ = closed.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((sock, _)) => match session::Accepted::unix(sock, &name, netns.clone()) {
                Some(a) => {
                    tokio::spawn(session::serve(Arc::clone(&shared.env), a));
                }
                None => warn!("an accepted Unix connection has no socket cookie: closed"),
            },
            Err(e) => {
                error!("accept on {name} failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

pub(super) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let (_keep, stop) = tokio::sync::watch::channel(false);
    accept_loop_in(shared, listener, None, stop).await;
}

pub(super) async fn accept_loop_in(
    shared: Arc<Shared>,
    listener: TcpListener,
    netns: Option<Arc<crate::netns::Netns>>,
    mut closed: tokio::sync::watch::Receiver<bool>,
) {
    let mut stopping = shared.stopping.subscribe();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopping.wait_for(|s| *s) => return,
            _ = closed.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((sock, peer)) => {
                if let Some(a) = session::Accepted::tcp(sock, peer, netns.clone()) {
                    tokio::spawn(session::serve(Arc::clone(&shared.env), a));
                }
            }
            Err(e) => {
                // EMFILE and friends: back off rather than spin; other sessions carry on.
                error!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
