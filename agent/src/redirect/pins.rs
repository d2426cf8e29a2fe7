//! The agent's bpffs directory: mounting bpffs, pinning links so a restart leaves no moment
//! without the programs, and removing every pin (the only way to stop interception).
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// Makes sure a bpffs is mounted at `/sys/fs/bpf` (systemd does it; a bare host may not).
pub(super) fn ensure_bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounted = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        f.nth(4) == Some("/sys/fs/bpf")
            && l.split(" - ").nth(1).is_some_and(|t| t.starts_with("bpf "))
    });
    if !mounted {
        nix::mount::mount(Some("bpf"), "/sys/fs/bpf", Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .context("no bpffs at /sys/fs/bpf and mounting one failed (pins keep redirection in place across restarts)")?;
    }
    Ok(())
}

/// Pins `link` at `path`, replacing a link pinned there by a previous run. The new link is
/// attached before the old one goes: there is no moment without the program.
pub(super) fn replace_pin(
    link: aya::programs::links::FdLink,
    path: &Path,
) -> anyhow::Result<aya::programs::links::PinnedLink> {
    let old = unpin_old(path)?;
    let pinned = link
        .pin(path)
        .with_context(|| format!("pinning {}", path.display()))?;
    drop(old);
    Ok(pinned)
}

/// As [`replace_pin`], for a link the agent created itself (the Unix programs).
pub(super) fn replace_pin_fd(link: std::os::fd::OwnedFd, path: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsFd as _;
    let old = unpin_old(path)?;
    agent_sys::obj_pin(link.as_fd(), path)
        .with_context(|| format!("pinning {}", path.display()))?;
    drop(old);
    Ok(())
}

/// Takes the link a previous run pinned at `path` out of bpffs, still attached until dropped.
fn unpin_old(path: &Path) -> anyhow::Result<Option<aya::programs::links::FdLink>> {
    let old = if path.exists() {
        match aya::programs::links::PinnedLink::from_pin(path) {
            Ok(old) => Some(
                old.unpin()
                    .with_context(|| format!("unpinning {}", path.display()))?,
            ),
            Err(_) => {
                std::fs::remove_file(path)
                    .with_context(|| format!("removing stale pin {}", path.display()))?;
                None
            }
        }
    } else {
        None
    };
    Ok(old)
}

/// Removes every pin under `pin_dir`: the programs detach and the maps go. The only way to
/// stop interception.
pub fn detach(pin_dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e).with_context(|| format!("reading {}", pin_dir.display())),
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    // Links first, so no program runs against a map that is going away.
    paths.sort_by_key(|p| {
        !p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("link_"))
    });
    for p in paths {
        std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        removed.push(p.display().to_string());
    }
    std::fs::remove_dir(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))?;
    Ok(removed)
}
