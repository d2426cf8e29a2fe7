//! Newtypes for values that are easy to confuse: the redirect rewrites destinations, so an
//! address's role shows in its type, and ids never mix with each other.
use std::fmt;
use std::net::SocketAddr;

use serde::Serialize;

/// A socket address of either family pgwarden intercepts: TCP (IPv4/IPv6) or a Unix socket
/// name (a path, or an abstract name shown with a leading `@`; empty for an unnamed socket).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SockAddr {
    /// An IP address and port.
    Inet(SocketAddr),
    /// A Unix socket name.
    Unix(String),
}

impl SockAddr {
    /// The IP address and port, for TCP.
    pub fn inet(&self) -> Option<SocketAddr> {
        match self {
            Self::Inet(a) => Some(*a),
            Self::Unix(_) => None,
        }
    }

    /// The Unix socket name, for a Unix socket.
    pub fn unix(&self) -> Option<&str> {
        match self {
            Self::Inet(_) => None,
            Self::Unix(p) => Some(p),
        }
    }

    /// A Unix name from `sun_path` bytes (an abstract name's leading NUL becomes `@`; a
    /// pathname ends at its first NUL, as the kernel reads it).
    pub fn from_sun_path(bytes: &[u8]) -> Self {
        match bytes.split_first() {
            Some((0, rest)) => Self::Unix(format!("@{}", String::from_utf8_lossy(rest))),
            _ => {
                let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                Self::Unix(String::from_utf8_lossy(&bytes[..end]).into_owned())
            }
        }
    }

    /// The `sun_path` bytes of a Unix name (`@` becomes the abstract namespace's NUL).
    pub fn sun_path(name: &str) -> Vec<u8> {
        match name.strip_prefix('@') {
            Some(rest) => {
                let mut v = vec![0];
                v.extend_from_slice(rest.as_bytes());
                v
            }
            None => name.as_bytes().to_vec(),
        }
    }
}

impl From<SocketAddr> for SockAddr {
    fn from(a: SocketAddr) -> Self {
        Self::Inet(a)
    }
}

impl fmt::Display for SockAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inet(a) => a.fmt(f),
            Self::Unix(p) if p.is_empty() => f.write_str("unix"),
            Self::Unix(p) => f.write_str(p),
        }
    }
}

impl Serialize for SockAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The address of the client (the tagged workload's socket) as the interceptor sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ClientAddr(pub SockAddr);

/// Where the client's connect() was going before the redirect: the real server.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct OrigDstAddr(pub SockAddr);

/// The interceptor's own address on the accepted connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ListenAddr(pub SockAddr);

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
