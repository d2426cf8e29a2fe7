//! Network namespaces of tagged workloads (containers, pods). The connect hooks rewrite a tagged
//! connect to the interceptor's loopback address and port (and its abstract Unix name), which
//! inside a container's namespace is the container's own loopback: so the agent opens the same
//! listeners inside every namespace a tagged process lives in (a helper thread enters the
//! namespace with setns, binds, and ends; the sockets stay in the namespace), and connects
//! upstream from inside it too, so an address means what it meant to the client. The model is
//! Istio ambient's in-pod redirection (ztunnel opens its sockets inside each pod's namespace).
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use nix::sched::{CloneFlags, setns};

/// A network namespace, by the inode of its nsfs file (`/proc/PID/ns/net`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct NetnsId(pub u64);

/// The namespace of process `pid`.
pub fn of_pid(pid: u32) -> io::Result<NetnsId> {
    Ok(NetnsId(
        std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino(),
    ))
}

/// The agent's own namespace.
pub fn own() -> io::Result<NetnsId> {
    Ok(NetnsId(std::fs::metadata("/proc/self/ns/net")?.ino()))
}

/// An open handle on a namespace (keeps it addressable while the agent serves it).
#[derive(Debug)]
pub struct Netns {
    /// Its id.
    pub id: NetnsId,
    /// `/proc/PID/ns/net` of a process that was in it, opened.
    file: File,
    /// A process of a tagged workload seen in it.
    pub pid: u32,
    /// A sock_diag netlink socket bound in it (Unix sockets are looked up per namespace).
    pub diag: OwnedFd,
}

impl Netns {
    /// Opens the namespace process `pid` is in, and checks it is still `id`.
    pub fn open(id: NetnsId, pid: u32) -> io::Result<Netns> {
        let file = File::open(format!("/proc/{pid}/ns/net"))?;
        if file.metadata()?.ino() != id.0 {
            return Err(io::Error::other(format!(
                "process {pid} left network namespace {}",
                id.0
            )));
        }
        let diag = run_in(&file, id, crate::unixdiag::socket)?;
        Ok(Netns {
            id,
            file,
            pid,
            diag,
        })
    }

    /// Runs `f` on a fresh thread that has entered this namespace; whatever sockets `f`
    /// creates live in it.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        run_in(&self.file, self.id, f)
    }

    /// A non-blocking, unconnected TCP socket for `dest`'s family, created in this namespace.
    pub fn tcp_socket(&self, dest: SocketAddr) -> io::Result<tokio::net::TcpSocket> {
        let std = self.run(|| {
            let s = if dest.is_ipv4() {
                std::net::TcpStream::from(new_socket(nix::sys::socket::AddressFamily::Inet)?)
            } else {
                std::net::TcpStream::from(new_socket(nix::sys::socket::AddressFamily::Inet6)?)
            };
            Ok(s)
        })?;
        Ok(tokio::net::TcpSocket::from_std_stream(std))
    }
}

/// Runs `f` on a fresh thread that has entered the namespace `file` (a thread's namespace is
/// its own, so the runtime's threads never move, and the helper ends with its work).
fn run_in<T: Send>(
    file: &File,
    id: NetnsId,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                io::Error::other(format!(
                    "entering network namespace {} (needs CAP_SYS_ADMIN): {e}",
                    id.0
                ))
            })?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace helper thread panicked")))
    })
}

fn new_socket(family: nix::sys::socket::AddressFamily) -> io::Result<OwnedFd> {
    use nix::sys::socket::{SockFlag, SockType, socket};
    Ok(socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?)
}

/// Every process in `cgroup` and the cgroups below it.
pub fn procs_under(cgroup: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![cgroup.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    out
}

/// The foreign namespaces `pids` live in (not `own`), each with one of its processes.
pub fn foreign(pids: impl IntoIterator<Item = u32>, own: NetnsId) -> BTreeMap<NetnsId, u32> {
    let mut out = BTreeMap::new();
    for pid in pids {
        if let Ok(ns) = of_pid(pid)
            && ns != own
        {
            out.entry(ns).or_insert(pid);
        }
    }
    out
}

/// The container a cgroup path belongs to, as the common runtimes name their cgroups:
/// `docker-<id>.scope` or `/docker/<id>` (Docker), `cri-containerd-<id>.scope` and
/// `crio-<id>.scope` (Kubernetes), `libpod-<id>.scope` (Podman). The id is 64 hex digits.
pub fn container_id(cgroup: &str) -> Option<String> {
    let is_id = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let mut found = None;
    let parts: Vec<&str> = cgroup.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let bare = part.strip_suffix(".scope").unwrap_or(part);
        let id = ["docker-", "cri-containerd-", "crio-", "libpod-"]
            .iter()
            .find_map(|p| bare.strip_prefix(p))
            .filter(|id| is_id(id))
            .or_else(|| (i > 0 && parts[i - 1] == "docker" && is_id(bare)).then_some(bare));
        if let Some(id) = id {
            found = Some(id.to_owned());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_of_the_common_runtimes() {
        let id = "3f2a".repeat(16);
        for path in [
            format!("/system.slice/docker-{id}.scope"),
            format!("/docker/{id}"),
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-{id}.scope"
            ),
            format!("/machine.slice/libpod-{id}.scope/container"),
            format!("/kubepods/burstable/pod5/crio-{id}.scope"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(id.as_str()), "{path}");
        }
        assert_eq!(container_id("/system.slice/mcp-payments.service"), None);
        assert_eq!(container_id("/docker/not-an-id"), None);
        assert_eq!(container_id("/docker-abc.scope"), None);
    }

    #[test]
    fn this_process_is_in_its_own_namespace() {
        let me = std::process::id();
        assert_eq!(of_pid(me).unwrap(), own().unwrap());
        assert!(foreign([me], own().unwrap()).is_empty());
    }
}
