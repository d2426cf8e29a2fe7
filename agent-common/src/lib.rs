//! Types shared by pgwarden's kernel programs (`agent-ebpf`) and its user-space agent: the
//! records in the maps and ring buffers here, the maps themselves in [`maps`], the counters in
//! [`counters`]. Each is defined once, so the two sides cannot drift.
#![no_std]
// `aya::Pod` is an unsafe trait: implementing it is this crate's one use of `unsafe`, and it is
// sound because every type below is `repr(C)`, `Copy`, has no padding (the `IntoBytes` derive
// proves it at compile time), and every bit pattern is valid (the `FromBytes` derive proves it).
#![cfg_attr(not(feature = "user"), forbid(unsafe_code))]

pub mod counters;
pub mod maps;

pub use counters::{COUNTER_NAMES, COUNTER_SLOTS, Counter};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `AF_INET`, as the kernel reports a socket's family.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;

/// Longest cgroup path (relative to the cgroup2 root, with its leading `/`) the kernel side
/// can match exactly. Longer paths are still tagged by the agent, just not re-tagged by the
/// kernel on re-creation (see [`maps::STICKY_PATHS`]).
pub const CGROUP_PATH_LEN: usize = 256;

/// How many cgroup levels the connect hooks walk up looking for a tagged ancestor.
pub const MAX_CGROUP_DEPTH: i32 = 32;

/// The longest `sun_path` of a `sockaddr_un`.
pub const UNIX_PATH_LEN: usize = 108;
/// [`maps::UNIX_INTERCEPT`] value: the key is a directory; its `.s.PGSQL.*` sockets are
/// intercepted.
pub const UNIX_MATCH_DIR: u32 = 1;
/// [`maps::UNIX_INTERCEPT`] value: the key is one socket path.
pub const UNIX_MATCH_SOCKET: u32 = 2;
/// [`maps::UNIX_INTERCEPT`] value: tagged workloads may connect to this socket directly.
pub const UNIX_ALLOW_SOCKET: u32 = 3;
/// `SOCK_STREAM`, as sock_addr programs see a socket's type.
pub const SOCK_STREAM: u32 = 1;
/// The name every PostgreSQL (and PgBouncer) Unix socket has: `.s.PGSQL.<port>`.
pub const PG_SOCKET_PREFIX: &[u8; 9] = b".s.PGSQL.";

/// Configuration written by the agent before it attaches anything.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    /// The interceptor's IPv4 listen address, network byte order as the kernel stores it.
    pub listen_v4: u32,
    /// The interceptor's IPv6 listen address, four network-order words.
    pub listen_v6: [u32; 4],
    /// The interceptor's listen port, host order.
    pub listen_port: u16,
    /// Bit set: [`CONFIG_HAS_V4`], [`CONFIG_HAS_V6`].
    pub flags: u16,
    /// The agent's process id (tgid): its own connects are never redirected.
    pub agent_tgid: u32,
    /// Length of `unix_listen` in bytes (0: no Unix listener).
    pub unix_listen_len: u32,
    /// The interceptor's Unix listener, as `sun_path` bytes (abstract: a leading NUL).
    pub unix_listen: [u8; UNIX_PATH_LEN],
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            listen_v4: 0,
            listen_v6: [0; 4],
            listen_port: 0,
            flags: 0,
            agent_tgid: 0,
            unix_listen_len: 0,
            unix_listen: [0; UNIX_PATH_LEN],
        }
    }
}

/// The interceptor listens on IPv4: redirect IPv4 and IPv4-mapped destinations.
pub const CONFIG_HAS_V4: u16 = 1;
/// The interceptor listens on IPv6: redirect native IPv6 destinations.
pub const CONFIG_HAS_V6: u16 = 2;
/// The interceptor listens on its Unix socket: redirect intercepted Unix connects.
pub const CONFIG_HAS_UNIX: u16 = 4;

/// Key of [`maps::INTERCEPT_DESTS`] (an LPM trie). The prefix covers the port first, then the
/// address in IPv6 form (IPv4 as `::ffff:a.b.c.d`), so `prefix_len` is
/// `16 + 96 + v4_prefix` for IPv4 CIDRs and `16 + v6_prefix` for IPv6 ones.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct DestKey {
    /// Destination port, network byte order.
    pub port: [u8; 2],
    /// Destination address, IPv6 form, network byte order.
    pub addr: [u8; 16],
}

/// Bits of the LPM prefix taken by the port.
pub const DEST_PORT_BITS: u32 = 16;

/// What a redirected connect() asked for, and who asked. Written by `connect4`/`connect6`.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct ConnectRecord {
    /// Original destination address in IPv6 form (IPv4 as `::ffff:a.b.c.d`), network order.
    pub orig_addr: [u8; 16],
    /// Original destination port, host order.
    pub orig_port: u16,
    /// Family of the client's socket ([`AF_INET`] or [`AF_INET6`]).
    pub family: u16,
    /// Workload id of the tag that matched (see [`maps::TAGGED_CGROUPS`]).
    pub workload: u32,
    /// cgroup id of the calling process's cgroup2 cgroup.
    pub cgroup_id: u64,
    /// Process id (tgid) of the caller.
    pub tgid: u32,
    /// Thread id of the caller.
    pub pid: u32,
    /// Real uid of the caller.
    pub uid: u32,
    /// Real gid of the caller.
    pub gid: u32,
    /// Command name of the calling thread, NUL-padded.
    pub comm: [u8; 16],
}

/// A NUL-padded Unix socket path (`sun_path`): the key of [`maps::UNIX_INTERCEPT`].
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixPath {
    /// The bytes; an abstract name starts with NUL.
    pub bytes: [u8; UNIX_PATH_LEN],
}

impl UnixPath {
    /// A NUL-padded key from `path`; `None` if it is longer than `sun_path`.
    pub fn from_bytes(path: &[u8]) -> Option<Self> {
        if path.len() > UNIX_PATH_LEN {
            return None;
        }
        let mut key = Self {
            bytes: [0; UNIX_PATH_LEN],
        };
        key.bytes[..path.len()].copy_from_slice(path);
        Some(key)
    }
}

/// What a redirected Unix connect() asked for, and who asked. Written by `connect_unix`.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixConnectRecord {
    /// The `sun_path` the client connected to (abstract: leading NUL), NUL-padded.
    pub path: [u8; UNIX_PATH_LEN],
    /// Length of `path` in bytes.
    pub path_len: u32,
    /// cgroup id of the calling process's cgroup2 cgroup.
    pub cgroup_id: u64,
    /// Workload id of the tag that matched (see [`maps::TAGGED_CGROUPS`]).
    pub workload: u32,
    /// Process id (tgid) of the caller.
    pub tgid: u32,
    /// Thread id of the caller.
    pub pid: u32,
    /// Real uid of the caller.
    pub uid: u32,
    /// Real gid of the caller.
    pub gid: u32,
    /// Command name of the calling thread, NUL-padded.
    pub comm: [u8; 16],
    /// Always zero (explicit padding to the `u64` alignment: the record is 160 bytes, as it
    /// was when this padding was implicit).
    pub pad: u32,
}

/// Per-CPU scratch space of the Unix programs (too big for the 512-byte stack).
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixScratch {
    /// The record being built (its `path` holds the name being examined).
    pub record: UnixConnectRecord,
}

/// Key of [`maps::ORIGIN_BY_TUPLE`]: the connection as both ends see it, addresses in IPv6 form.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq, Hash,
)]
pub struct TupleKey {
    /// Client (connecting) address, IPv6 form, network order.
    pub client_addr: [u8; 16],
    /// Interceptor (listening) address, IPv6 form, network order.
    pub server_addr: [u8; 16],
    /// Client port, host order.
    pub client_port: u16,
    /// Interceptor port, host order.
    pub server_port: u16,
    /// Always zero (explicit padding, so the key hashes the same on both sides).
    pub pad: u32,
    /// The connection's network namespace cookie: the same loopback 4-tuple can exist in two
    /// containers' namespaces at once.
    pub netns: u64,
}

/// One cgroup2 directory creation, as seen by the `cgroup_mkdir` tracepoint.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupEvent {
    /// The new cgroup's id.
    pub id: u64,
    /// Workload id the kernel tagged it with from [`maps::STICKY_PATHS`], 0 if none.
    pub sticky_workload: u32,
    /// Length of `path` in bytes.
    pub path_len: u32,
    /// Path relative to the cgroup2 root, with leading `/`, NUL-padded.
    pub path: PathBuf,
}

/// A process moved into a cgroup2 cgroup (`cgroup:cgroup_attach_task`).
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct AttachEvent {
    /// The destination cgroup's id.
    pub cgroup_id: u64,
    /// The process moved (its tgid, or a thread id when a single thread moves).
    pub pid: u32,
    /// Always zero (explicit padding).
    pub pad: u32,
}

/// A NUL-padded cgroup path: the key of [`maps::STICKY_PATHS`].
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathBuf {
    /// The bytes.
    pub bytes: [u8; CGROUP_PATH_LEN],
}

impl PathBuf {
    /// The empty path (all NUL).
    pub const fn zeroed() -> Self {
        Self {
            bytes: [0; CGROUP_PATH_LEN],
        }
    }

    /// A NUL-padded key from `path`; `None` if it does not fit (a trailing NUL is kept).
    pub fn from_path(path: &[u8]) -> Option<Self> {
        if path.len() >= CGROUP_PATH_LEN {
            return None;
        }
        let mut key = Self::zeroed();
        key.bytes[..path.len()].copy_from_slice(path);
        Some(key)
    }
}

/// Whether the last component of `path` (its first `len` bytes) is a PostgreSQL socket name.
/// Written for the verifier: fixed bounds, no slices of variable length, no `Option` payloads
/// (an undefined payload register is an uninitialised read to the verifier).
#[inline(always)]
pub fn is_pg_socket_name(path: &[u8; UNIX_PATH_LEN], len: usize) -> bool {
    has_pg_prefix(path, name_start(path, len), len)
}

/// Where the last component of the first `len` bytes of `path` starts: one past the last `/`,
/// or 0 when there is none.
#[inline(always)]
pub fn name_start(path: &[u8; UNIX_PATH_LEN], len: usize) -> usize {
    let mut start = 0;
    let mut i = 0;
    while i < UNIX_PATH_LEN {
        if i < len && path[i] == b'/' {
            start = i + 1;
        }
        i += 1;
    }
    start
}

/// Whether `path[start..len]` starts with [`PG_SOCKET_PREFIX`].
#[inline(always)]
pub fn has_pg_prefix(path: &[u8; UNIX_PATH_LEN], start: usize, len: usize) -> bool {
    let n = PG_SOCKET_PREFIX.len();
    if start > UNIX_PATH_LEN - n || start + n > len {
        return false;
    }
    let mut k = 0;
    while k < n {
        if path[start + k] != PG_SOCKET_PREFIX[k] {
            return false;
        }
        k += 1;
    }
    true
}

/// Maps an IPv4 address (network order bytes) into IPv6 form.
pub const fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

#[cfg(feature = "user")]
mod user {
    use super::{
        AgentConfig, AttachEvent, CgroupEvent, ConnectRecord, DestKey, PathBuf, TupleKey,
        UnixConnectRecord, UnixPath, UnixScratch,
    };

    // SAFETY: all are repr(C) plain-old-data; any bit pattern is a valid value.
    unsafe impl aya::Pod for AgentConfig {}
    unsafe impl aya::Pod for DestKey {}
    unsafe impl aya::Pod for ConnectRecord {}
    unsafe impl aya::Pod for TupleKey {}
    unsafe impl aya::Pod for CgroupEvent {}
    unsafe impl aya::Pod for AttachEvent {}
    unsafe impl aya::Pod for PathBuf {}
    unsafe impl aya::Pod for UnixPath {}
    unsafe impl aya::Pod for UnixConnectRecord {}
    unsafe impl aya::Pod for UnixScratch {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::String;

    fn name(s: &[u8]) -> ([u8; UNIX_PATH_LEN], usize) {
        let k = UnixPath::from_bytes(s).unwrap();
        (k.bytes, s.len())
    }

    /// The records' sizes as the kernel programs and the pins of a running agent have them: a
    /// change here is a change of the kernel contract (a restarted agent cannot adopt the
    /// previous run's maps), so it must be deliberate.
    #[test]
    fn record_sizes_are_the_contract() {
        use core::mem::size_of;
        assert_eq!(size_of::<AgentConfig>(), 140);
        assert_eq!(size_of::<DestKey>(), 18);
        assert_eq!(size_of::<ConnectRecord>(), 64);
        assert_eq!(size_of::<UnixPath>(), 108);
        assert_eq!(size_of::<UnixConnectRecord>(), 160);
        assert_eq!(size_of::<UnixScratch>(), 160);
        assert_eq!(size_of::<TupleKey>(), 48);
        assert_eq!(size_of::<CgroupEvent>(), 272);
        assert_eq!(size_of::<AttachEvent>(), 16);
        assert_eq!(size_of::<PathBuf>(), CGROUP_PATH_LEN);
    }

    #[test]
    fn recognises_postgres_socket_names() {
        for yes in [
            &b"/var/run/postgresql/.s.PGSQL.5432"[..],
            b"/tmp/.s.PGSQL.1",
            b".s.PGSQL.5432",
            b"\0pg/.s.PGSQL.5432",
            b"//x//.s.PGSQL.6432",
        ] {
            let (p, l) = name(yes);
            assert!(is_pg_socket_name(&p, l), "{}", String::from_utf8_lossy(yes));
        }
        for no in [
            &b"/tmp/.s.PGSQL"[..],
            b"/tmp/.s.PGSQL.5432/x",
            b"/run/pgwarden.sock",
            b"\0pgwarden/15432",
            b"",
        ] {
            let (p, l) = name(no);
            assert!(!is_pg_socket_name(&p, l), "{}", String::from_utf8_lossy(no));
        }
        // A length shorter than the bytes hides the name.
        let (p, _) = name(b"/tmp/.s.PGSQL.5432");
        assert!(!is_pg_socket_name(&p, 8));
        // The longest path still fits.
        let mut long = [b'a'; UNIX_PATH_LEN];
        long[UNIX_PATH_LEN - 10] = b'/';
        long[UNIX_PATH_LEN - 9..].copy_from_slice(PG_SOCKET_PREFIX);
        assert!(is_pg_socket_name(&long, UNIX_PATH_LEN));
        assert_eq!(name_start(&long, UNIX_PATH_LEN), UNIX_PATH_LEN - 9);
        assert_eq!(name_start(&long, 5), 0);
    }
}
