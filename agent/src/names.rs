//! Newtypes for values that are easy to confuse: the redirect rewrites destinations, so an
//! address's role shows in its type, and ids never mix with each other.
use std::fmt;
use std::net::SocketAddr;

use serde::Serialize;

/// The address of the client (the tagged workload's socket) as the interceptor sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ClientAddr(pub SocketAddr);

/// Where the client's connect() was going before the redirect: the real server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct OrigDstAddr(pub SocketAddr);

/// The interceptor's own address on the accepted connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ListenAddr(pub SocketAddr);

/// A cgroup2 cgroup id: the inode number of its directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct CgroupId(pub u64);

/// A workload's name, as the config and the cgroup xattr give it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct WorkloadName(pub String);

impl fmt::Display for WorkloadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Kernel-side workload number (>= 1) stored in the tag maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct WorkloadId(pub u32);

/// One intercepted connection, unique per agent run and across restarts in practice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
