//! Who is behind an intercepted connection: the kernel's record of the connect() call,
//! completed from /proc and the cgroup tree into a workload identity.
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;

use agent_common::{ConnectRecord, UnixConnectRecord};
use serde::Serialize;

use crate::cgroup::{self, CgroupPath};
use crate::names::{CgroupId, OrigDstAddr, SockAddr, WorkloadName};

/// The identity facts of one intercepted connection (PCI DSS Req 8: an identity behind every
/// access). Later layers (policy, audit) read it from the session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// Workload name.
    pub workload: WorkloadName,
    /// cgroup path relative to the cgroup2 root.
    pub cgroup: Option<CgroupPath>,
    /// cgroup id.
    pub cgroup_id: CgroupId,
    /// systemd unit owning the cgroup.
    pub unit: Option<String>,
    /// Process id (tgid) that called connect().
    pub pid: u32,
    /// Thread id that called connect().
    pub tid: u32,
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// User name of `uid`.
    pub user: Option<String>,
    /// Executable path, when the process is still there and still the same.
    pub exe: Option<String>,
    /// Thread command name at connect().
    pub comm: String,
    /// The network namespace (nsfs inode) the client connected from, when not the agent's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
    /// The container id its cgroup names (Docker, containerd, CRI-O, Podman).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// Who called connect(), as either kernel record (TCP or Unix) has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// cgroup id of the caller's cgroup2 cgroup.
    pub cgroup_id: u64,
    /// Process id.
    pub tgid: u32,
    /// Thread id.
    pub pid: u32,
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// Thread command name, NUL-padded.
    pub comm: [u8; 16],
}

impl From<&ConnectRecord> for Caller {
    fn from(r: &ConnectRecord) -> Self {
        Self {
            cgroup_id: r.cgroup_id,
            tgid: r.tgid,
            pid: r.pid,
            uid: r.uid,
            gid: r.gid,
            comm: r.comm,
        }
    }
}

impl From<&UnixConnectRecord> for Caller {
    fn from(r: &UnixConnectRecord) -> Self {
        Self {
            cgroup_id: r.cgroup_id,
            tgid: r.tgid,
            pid: r.pid,
            uid: r.uid,
            gid: r.gid,
            comm: r.comm,
        }
    }
}

/// The original destination in a record.
pub fn orig_dst(record: &ConnectRecord) -> OrigDstAddr {
    let v6 = Ipv6Addr::from(record.orig_addr);
    let ip = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
    OrigDstAddr(SockAddr::Inet(SocketAddr::new(ip, record.orig_port)))
}

/// The original socket name in a Unix record.
pub fn orig_unix(record: &UnixConnectRecord) -> OrigDstAddr {
    let len = (record.path_len as usize).min(record.path.len());
    OrigDstAddr(SockAddr::from_sun_path(&record.path[..len]))
}

/// The command name in a record.
pub fn comm(record: &Caller) -> String {
    let end = record
        .comm
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(record.comm.len());
    String::from_utf8_lossy(&record.comm[..end]).into_owned()
}

/// Completes a record into an identity. `known_path` is the agent's own index entry for the
/// record's cgroup id; /proc fills what it lacks. A pid that no longer runs the same thread
/// name (it exited, maybe reused) gets no executable rather than a wrong one.
pub fn resolve(
    record: &Caller,
    workload: WorkloadName,
    known_path: Option<CgroupPath>,
    cgroup_root: &Path,
) -> Identity {
    let comm = comm(record);
    let same_thread =
        std::fs::read_to_string(format!("/proc/{}/task/{}/comm", record.tgid, record.pid))
            .is_ok_and(|c| c.trim_end_matches('\n') == comm);
    let cgroup = known_path.or_else(|| {
        let path = cgroup::cgroup_of_pid(record.tgid)?;
        // Trust /proc only if that path still is the cgroup the kernel recorded.
        (cgroup::cgroup_id(&path.dir(cgroup_root)).ok()? == CgroupId(record.cgroup_id))
            .then_some(path)
    });
    let exe = same_thread
        .then(|| std::fs::read_link(format!("/proc/{}/exe", record.tgid)).ok())
        .flatten()
        .map(|p| p.to_string_lossy().into_owned());
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(record.uid))
        .ok()
        .flatten()
        .map(|u| u.name);
    Identity {
        workload,
        unit: cgroup
            .as_ref()
            .and_then(|p| cgroup::systemd_unit(p).map(str::to_owned)),
        container: cgroup
            .as_ref()
            .and_then(|p| crate::netns::container_id(&p.0)),
        netns: None,
        cgroup,
        cgroup_id: CgroupId(record.cgroup_id),
        pid: record.tgid,
        tid: record.pid,
        uid: record.uid,
        gid: record.gid,
        user,
        exe,
        comm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_this_process() {
        let me = std::process::id();
        let mut comm = [0u8; 16];
        let name = std::fs::read_to_string(format!("/proc/{me}/comm")).unwrap();
        let name = name.trim_end();
        comm[..name.len()].copy_from_slice(name.as_bytes());
        let record = ConnectRecord {
            orig_addr: agent_common::v4_mapped([127, 0, 0, 1]),
            orig_port: 5432,
            family: agent_common::AF_INET,
            workload: 1,
            cgroup_id: 0,
            tgid: me,
            pid: me,
            uid: nix::unistd::getuid().as_raw(),
            gid: 0,
            comm,
        };
        assert_eq!(
            orig_dst(&record).0,
            SockAddr::Inet("127.0.0.1:5432".parse::<SocketAddr>().unwrap())
        );
        let id = resolve(
            &Caller::from(&record),
            WorkloadName("w".into()),
            None,
            Path::new("/nonexistent"),
        );
        assert_eq!(id.pid, me);
        assert_eq!(id.comm, name);
        assert_eq!(
            id.exe.as_deref(),
            std::env::current_exe()
                .ok()
                .and_then(|p| p.to_str().map(str::to_owned))
                .as_deref()
        );
        // cgroup id 0 never matches a real directory: not guessed.
        assert!(id.cgroup.is_none());
    }

    #[test]
    fn v6_destinations_stay_v6() {
        let record = ConnectRecord {
            orig_addr: Ipv6Addr::LOCALHOST.octets(),
            orig_port: 5433,
            ..Default::default()
        };
        assert_eq!(
            orig_dst(&record).0,
            SockAddr::Inet("[::1]:5433".parse::<SocketAddr>().unwrap())
        );
    }

    #[test]
    fn unix_names_keep_their_namespace() {
        let mut record = UnixConnectRecord {
            path: [0; agent_common::UNIX_PATH_LEN],
            path_len: 0,
            cgroup_id: 0,
            workload: 1,
            tgid: 1,
            pid: 1,
            uid: 0,
            gid: 0,
            comm: [0; 16],
            pad: 0,
        };
        let p = b"/run/postgresql/.s.PGSQL.5432";
        record.path[..p.len()].copy_from_slice(p);
        record.path_len = p.len() as u32;
        assert_eq!(
            orig_unix(&record).0,
            SockAddr::Unix("/run/postgresql/.s.PGSQL.5432".into())
        );
        let a = b"\0pg/.s.PGSQL.5432";
        record.path = [0; agent_common::UNIX_PATH_LEN];
        record.path[..a.len()].copy_from_slice(a);
        record.path_len = a.len() as u32;
        let name = orig_unix(&record).0;
        assert_eq!(name, SockAddr::Unix("@pg/.s.PGSQL.5432".into()));
        assert_eq!(SockAddr::sun_path("@pg/.s.PGSQL.5432"), a.to_vec());
    }
}
