//! What the agent watches while it runs: the kernel's cgroup-creation and cgroup-attach
//! events, a periodic rescan of the cgroup tree, and the policy files (reloaded on change).
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tracing::{debug, error, warn};

use super::listen::serve_namespaces;
use super::{Shared, lock};
use crate::redirect;
/// Watches the config file and every policy file (their directories, since editors replace
/// files by renaming) and asks for a reload when one changes.
pub(super) fn watch_policies(
    shared: &Shared,
    tx: tokio::sync::mpsc::Sender<&'static str>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let mut paths: Vec<PathBuf> = shared
        .env
        .policy
        .current()
        .files
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    paths.push(shared.config_path.clone());
    let watched: Vec<PathBuf> = paths
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    let names: Vec<std::ffi::OsString> = watched
        .iter()
        .filter_map(|p| p.file_name().map(ToOwned::to_owned))
        .collect();
    let mut watcher = match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && !ev.kind.is_access()
            && ev
                .paths
                .iter()
                .any(|p| p.file_name().is_some_and(|n| names.contains(&n.to_owned())))
        {
            let _ = tx.try_send("file change");
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            warn!("cannot watch policy files ({e}); reload with SIGHUP");
            return None;
        }
    };
    let mut dirs: Vec<PathBuf> = watched
        .iter()
        .filter_map(|p| p.parent().map(ToOwned::to_owned))
        .collect();
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        if let Err(e) = watcher.watch(&d, notify::RecursiveMode::NonRecursive) {
            warn!(dir = %d.display(), "cannot watch ({e}); reload with SIGHUP");
        }
    }
    Some(watcher)
}

pub(super) async fn rescan_loop(shared: Arc<Shared>) {
    let period = Duration::from_secs(shared.config.cgroups.rescan_seconds);
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        tick.tick().await;
        let s = Arc::clone(&shared);
        match tokio::task::spawn_blocking(move || s.rescan()).await {
            Ok(Ok(())) => debug!("cgroup rescan done"),
            Ok(Err(e)) => error!("cgroup rescan failed: {e:#}"),
            Err(e) => error!("cgroup rescan panicked: {e}"),
        }
        serve_namespaces(&shared).await;
    }
}

/// Reads a kernel ring buffer until it fails: each time it is readable, `item` sees every
/// record waiting, then `after` runs once for the batch (bursts are handled once).
#[expect(
    deprecated,
    reason = "AsyncFd::new is sound here: the RingBuf owns its map fd for as long as the AsyncFd \
              holds it; the replacement, AsyncFd::register, is unsafe and unsafe is forbidden"
)]
async fn read_ring<S, F, A, Fut>(
    what: &str,
    events: RingBuf<MapData>,
    mut state: S,
    mut item: F,
    mut after: A,
) where
    F: FnMut(&mut S, &[u8]),
    A: FnMut(&mut S) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut fd = match AsyncFd::new(events) {
        Ok(fd) => fd,
        Err(e) => {
            error!("cannot poll the {what} ring buffer: {e}; relying on rescans");
            return;
        }
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                error!("{what} ring buffer: {e}; relying on rescans");
                return;
            }
        };
        {
            let ring = guard.get_inner_mut();
            while let Some(record) = ring.next() {
                item(&mut state, &record);
            }
        }
        guard.clear_ready();
        drop(guard);
        after(&mut state).await;
    }
}

/// Processes moved into cgroups: when one lands in a tagged cgroup from a network namespace
/// the agent does not serve yet (a container starting), its listeners are opened now rather
/// than at the next rescan.
pub(super) async fn watch_attaches(shared: Arc<Shared>, events: RingBuf<MapData>) {
    let Ok(own) = crate::netns::own() else {
        return;
    };
    let seen = |new: &mut bool, record: &[u8]| {
        let Some(ev) = redirect::decode_attach_event(record) else {
            return;
        };
        if *new {
            return;
        }
        if let Ok(ns) = crate::netns::of_pid(ev.pid) {
            *new = ns != own && !lock(&shared.namespaces).contains_key(&ns);
        }
    };
    let serve = |new: &mut bool| {
        let serve = std::mem::take(new);
        let shared = Arc::clone(&shared);
        async move {
            if serve {
                serve_namespaces(&shared).await;
            }
        }
    };
    read_ring("cgroup attach", events, false, seen, serve).await;
}

/// Cgroups the kernel saw created: tagged at once (the kernel already tagged re-created unit
/// cgroups it had marked sticky).
pub(super) async fn watch_events(shared: Arc<Shared>, events: RingBuf<MapData>) {
    let created = |(): &mut (), record: &[u8]| {
        let Some((id, path, sticky)) = redirect::decode_event(record) else {
            return;
        };
        if sticky != 0 {
            debug!(cgroup = %path, id = id.0, "kernel tagged a re-created cgroup at mkdir");
        }
        if let Err(e) = shared.created(id, path.clone()) {
            error!(cgroup = %path, "tagging a new cgroup failed: {e:#}");
        }
    };
    read_ring("cgroup event", events, (), created, |(): &mut ()| async {}).await;
}
