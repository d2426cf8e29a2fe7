//! The kernel contract's maps: each one's name (also its bpffs pin name), type, key, value and
//! capacity, defined once for the eBPF programs (which build their map statics from these) and
//! the agent (which opens, pins and checks them by these).
//!
//! A [`MapDef`] carries its key and value types, so a map static built from it with the eBPF
//! crate's constructors, or a typed map handle taken with the agent's, cannot disagree with it
//! on types. The agent's test `redirect::tests::the_objects_maps_are_the_contract` checks the
//! compiled objects against [`ALL`] and [`UNIX_PROGRAMS`] (names, types, sizes, capacities,
//! flags, and that no map is undeclared).
use core::marker::PhantomData;

use crate::{
    AgentConfig, AttachEvent, CgroupEvent, ConnectRecord, DestKey, PathBuf, TupleKey,
    UnixConnectRecord, UnixPath, UnixScratch, counters::COUNTER_SLOTS,
};

/// An eBPF map type, numbered as `enum bpf_map_type` in the kernel's UAPI.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    /// `BPF_MAP_TYPE_HASH`.
    Hash = 1,
    /// `BPF_MAP_TYPE_ARRAY`.
    Array = 2,
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`.
    PerCpuArray = 6,
    /// `BPF_MAP_TYPE_LRU_HASH`.
    LruHash = 9,
    /// `BPF_MAP_TYPE_LPM_TRIE`.
    LpmTrie = 11,
    /// `BPF_MAP_TYPE_RINGBUF`.
    RingBuf = 27,
}

/// `BPF_F_NO_PREALLOC`: the kernel requires it of LPM tries.
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// One map of the contract. `K` and `V` are its key and value types as the programs and the
/// agent name them; for an LPM trie the kernel's key is `K` behind a `u32` prefix length, for a
/// ring buffer `V` is the record type the programs output (and there is no key or value).
pub struct MapDef<K, V> {
    /// The map's name in the object, and its pin name in the agent's bpffs directory (so no `.`
    /// and no `/`).
    pub name: &'static str,
    /// Its type.
    pub kind: MapKind,
    /// Its capacity (`max_entries`); for a ring buffer, its size in bytes.
    pub max_entries: u32,
    /// Its `map_flags`.
    pub flags: u32,
    types: PhantomData<fn() -> (K, V)>,
}

// Manual impls: derives would require `K: Clone` and `V: Clone` for no reason.
impl<K, V> Clone for MapDef<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for MapDef<K, V> {}

impl<K, V> MapDef<K, V> {
    const fn new(name: &'static str, kind: MapKind, max_entries: u32, flags: u32) -> Self {
        Self {
            name,
            kind,
            max_entries,
            flags,
            types: PhantomData,
        }
    }

    /// The key size the kernel sees (every key of the contract is a few hundred bytes at most).
    pub const fn key_size(&self) -> u32 {
        match self.kind {
            MapKind::RingBuf => 0,
            // aya's `lpm_trie::Key<K>`: `repr(C, packed)` { prefix_len: u32, data: K }.
            MapKind::LpmTrie => (size_of::<u32>() + size_of::<K>()) as u32,
            _ => size_of::<K>() as u32,
        }
    }

    /// The value size the kernel sees.
    pub const fn value_size(&self) -> u32 {
        match self.kind {
            MapKind::RingBuf => 0,
            _ => size_of::<V>() as u32,
        }
    }

    /// The definition without its types, as [`ALL`] lists it.
    pub const fn spec(&self) -> MapSpec {
        MapSpec {
            name: self.name,
            kind: self.kind,
            key_size: self.key_size(),
            value_size: self.value_size(),
            max_entries: self.max_entries,
            flags: self.flags,
        }
    }
}

/// A [`MapDef`] without its types: what the kernel is told about a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    /// As [`MapDef::name`].
    pub name: &'static str,
    /// As [`MapDef::kind`].
    pub kind: MapKind,
    /// As [`MapDef::key_size`].
    pub key_size: u32,
    /// As [`MapDef::value_size`].
    pub value_size: u32,
    /// As [`MapDef::max_entries`].
    pub max_entries: u32,
    /// As [`MapDef::flags`].
    pub flags: u32,
}

/// Single entry (key `0u32`): the [`AgentConfig`], written by the agent before it attaches.
pub const AGENT_CONFIG: MapDef<u32, AgentConfig> =
    MapDef::new("AGENT_CONFIG", MapKind::Array, 1, 0);

/// cgroup id (the cgroup2 directory's inode number, host order) -> workload id (host order,
/// `>= 1`). A cgroup is tagged when it or an ancestor is in it.
pub const TAGGED_CGROUPS: MapDef<u64, u32> =
    MapDef::new("TAGGED_CGROUPS", MapKind::Hash, 65_536, 0);

/// Intercepted destinations: [`DestKey`] prefix (port, then IPv6-form address; network order;
/// see [`DestKey`] for the prefix length) -> 1 (unused).
pub const INTERCEPT_DESTS: MapDef<DestKey, u32> = MapDef::new(
    "INTERCEPT_DESTS",
    MapKind::LpmTrie,
    1_024,
    BPF_F_NO_PREALLOC,
);

/// Socket cookie (host order) of a redirected client socket -> what its connect() asked for
/// and who asked. Lives until `sock_release`.
pub const ORIGIN_BY_COOKIE: MapDef<u64, ConnectRecord> =
    MapDef::new("ORIGIN_BY_COOKIE", MapKind::LruHash, 65_536, 0);

/// The redirected connection's 4-tuple as the interceptor sees it after accept() -> its
/// record. The agent removes it on accept.
pub const ORIGIN_BY_TUPLE: MapDef<TupleKey, ConnectRecord> =
    MapDef::new("ORIGIN_BY_TUPLE", MapKind::LruHash, 65_536, 0);

/// NUL-padded cgroup path -> workload id (host order). When a cgroup is created at a path in
/// this map (a unit restarting), the kernel tags it at mkdir time, before any process can be
/// moved in: no window in which it goes direct.
pub const STICKY_PATHS: MapDef<PathBuf, u32> = MapDef::new("STICKY_PATHS", MapKind::Hash, 4_096, 0);

/// Ring buffer of [`CgroupEvent`]s (native order): every cgroup2 mkdir, for the agent to
/// classify.
pub const CGROUP_EVENTS: MapDef<(), CgroupEvent> =
    MapDef::new("CGROUP_EVENTS", MapKind::RingBuf, 256 * 1024, 0);

/// Ring buffer of [`AttachEvent`]s (native order): every process moved into a cgroup2 cgroup,
/// so the agent can open listeners in a new container's network namespace at once.
pub const ATTACH_EVENTS: MapDef<(), AttachEvent> =
    MapDef::new("ATTACH_EVENTS", MapKind::RingBuf, 64 * 1024, 0);

/// Per-CPU counters (native order), indexed by [`crate::Counter`]; the agent sums the CPUs.
pub const COUNTERS: MapDef<u32, u64> =
    MapDef::new("COUNTERS", MapKind::PerCpuArray, COUNTER_SLOTS, 0);

/// Per-CPU scratch space (key 0) for the [`CgroupEvent`] the mkdir tracepoint builds (too big
/// for the 512-byte stack).
pub const PATH_SCRATCH: MapDef<u32, CgroupEvent> =
    MapDef::new("PATH_SCRATCH", MapKind::PerCpuArray, 1, 0);

/// Unix socket names with a rule, matched by byte prefix against the NUL-padded name a client
/// connects to: `DIR/.s.PGSQL.` -> [`crate::UNIX_MATCH_DIR`] (PostgreSQL sockets in that
/// directory are redirected), `SOCKET\0` -> [`crate::UNIX_MATCH_SOCKET`] (redirected) or
/// [`crate::UNIX_ALLOW_SOCKET`] (tagged workloads may connect to it directly). Tagged stream
/// connects to any other name are refused.
pub const UNIX_INTERCEPT: MapDef<UnixPath, u32> =
    MapDef::new("UNIX_INTERCEPT", MapKind::LpmTrie, 1_024, BPF_F_NO_PREALLOC);

/// Socket cookie (host order) of a tagged client's redirected Unix socket -> where its
/// connect() was going and who asked. The agent finds it from the accepted socket's peer
/// (sock_diag) and files it under the accepted socket's cookie too; `getpeername_unix` reads
/// it. LRU-bounded (no release hook runs for Unix sockets).
pub const UNIX_ORIGIN_BY_COOKIE: MapDef<u64, UnixConnectRecord> =
    MapDef::new("UNIX_ORIGIN_BY_COOKIE", MapKind::LruHash, 65_536, 0);

/// Per-CPU scratch space (key 0) of the Unix programs.
pub const UNIX_SCRATCH: MapDef<u32, UnixScratch> =
    MapDef::new("UNIX_SCRATCH", MapKind::PerCpuArray, 1, 0);

/// Every map of the `pgwarden` object, which declares them all (those the Unix programs use
/// too): the agent creates and pins each one from there, so a restarted agent finds the same
/// state and the programs left attached by the previous run keep working on it.
pub const ALL: [MapSpec; 13] = [
    AGENT_CONFIG.spec(),
    TAGGED_CGROUPS.spec(),
    INTERCEPT_DESTS.spec(),
    ORIGIN_BY_COOKIE.spec(),
    ORIGIN_BY_TUPLE.spec(),
    STICKY_PATHS.spec(),
    CGROUP_EVENTS.spec(),
    COUNTERS.spec(),
    PATH_SCRATCH.spec(),
    UNIX_INTERCEPT.spec(),
    UNIX_ORIGIN_BY_COOKIE.spec(),
    UNIX_SCRATCH.spec(),
    ATTACH_EVENTS.spec(),
];

/// The maps the `pgwarden-unix` object names; the agent hands it the pinned maps' fds.
pub const UNIX_PROGRAMS: [MapSpec; 6] = [
    AGENT_CONFIG.spec(),
    TAGGED_CGROUPS.spec(),
    COUNTERS.spec(),
    UNIX_INTERCEPT.spec(),
    UNIX_ORIGIN_BY_COOKIE.spec(),
    UNIX_SCRATCH.spec(),
];

#[cfg(test)]
mod tests {
    use super::{ALL, UNIX_PROGRAMS};

    #[test]
    fn names_are_unique_pin_names() {
        for (i, m) in ALL.iter().enumerate() {
            assert!(!m.name.is_empty() && !m.name.contains(['.', '/']), "{m:?}");
            assert!(ALL[..i].iter().all(|o| o.name != m.name), "{m:?} twice");
        }
        // The Unix object shares the main object's maps: same definitions, by the same names.
        for m in UNIX_PROGRAMS {
            assert!(ALL.contains(&m), "{m:?} is not in ALL");
        }
    }
}
