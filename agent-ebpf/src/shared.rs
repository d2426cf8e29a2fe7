//! Maps and helpers used by both kernel objects: `pgwarden` (loaded by aya) and
//! `pgwarden-unix` (the Unix socket programs, loaded by the agent's own loader because they
//! call kfuncs and use attach types aya 0.14 does not know). Both objects declare the same maps
//! under the same names; aya creates and pins each map once and the agent hands its fd to the
//! Unix programs.
#![allow(dead_code, reason = "each object uses part of what both share")]

use agent_common::{
    AgentConfig, Counter, MAX_CGROUP_DEPTH, UnixConnectRecord, UnixPath, UnixScratch,
    maps::{self, MapDef, MapKind},
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id},
    },
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};

// Map statics from agent-common's definitions (`agent_common::maps`, where each map's key and
// value are documented): a static's key and value types must be its definition's (a mismatch
// does not compile), and its type, capacity and flags are the definition's. Its name must be the
// definition's too: `#[map]` takes it from the static's identifier (the symbol needs a literal,
// so it cannot come from the definition); the agent's test
// `redirect::tests::the_objects_maps_are_the_contract` checks every map of both objects against
// agent-common, names included.

/// An `Array` as `def` defines it.
pub const fn array<V>(def: MapDef<u32, V>) -> Array<V> {
    assert!(matches!(def.kind, MapKind::Array));
    Array::with_max_entries(def.max_entries, def.flags)
}

/// A `HashMap` as `def` defines it.
pub const fn hash<K, V>(def: MapDef<K, V>) -> HashMap<K, V> {
    assert!(matches!(def.kind, MapKind::Hash));
    HashMap::with_max_entries(def.max_entries, def.flags)
}

/// An `LruHashMap` as `def` defines it.
pub const fn lru_hash<K, V>(def: MapDef<K, V>) -> LruHashMap<K, V> {
    assert!(matches!(def.kind, MapKind::LruHash));
    LruHashMap::with_max_entries(def.max_entries, def.flags)
}

/// An `LpmTrie` as `def` defines it.
pub const fn lpm_trie<K, V>(def: MapDef<K, V>) -> LpmTrie<K, V> {
    assert!(matches!(def.kind, MapKind::LpmTrie));
    LpmTrie::with_max_entries(def.max_entries, def.flags)
}

/// A `PerCpuArray` as `def` defines it.
pub const fn per_cpu_array<V>(def: MapDef<u32, V>) -> PerCpuArray<V> {
    assert!(matches!(def.kind, MapKind::PerCpuArray));
    PerCpuArray::with_max_entries(def.max_entries, def.flags)
}

/// A `RingBuf` as `def` defines it; `V` is the record type the programs output into it.
pub const fn ring_buf<V>(def: MapDef<(), V>) -> RingBuf {
    assert!(matches!(def.kind, MapKind::RingBuf));
    RingBuf::with_byte_size(def.max_entries, def.flags)
}

/// [`maps::AGENT_CONFIG`].
#[map]
pub static AGENT_CONFIG: Array<AgentConfig> = array(maps::AGENT_CONFIG);

/// [`maps::TAGGED_CGROUPS`].
#[map]
pub static TAGGED_CGROUPS: HashMap<u64, u32> = hash(maps::TAGGED_CGROUPS);

/// [`maps::COUNTERS`].
#[map]
pub static COUNTERS: PerCpuArray<u64> = per_cpu_array(maps::COUNTERS);

/// [`maps::UNIX_INTERCEPT`].
#[map]
pub static UNIX_INTERCEPT: LpmTrie<UnixPath, u32> = lpm_trie(maps::UNIX_INTERCEPT);

/// [`maps::UNIX_ORIGIN_BY_COOKIE`].
#[map]
pub static UNIX_ORIGIN_BY_COOKIE: LruHashMap<u64, UnixConnectRecord> =
    lru_hash(maps::UNIX_ORIGIN_BY_COOKIE);

/// [`maps::UNIX_SCRATCH`].
#[map]
pub static UNIX_SCRATCH: PerCpuArray<UnixScratch> = per_cpu_array(maps::UNIX_SCRATCH);

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot of this map; no other writer on this CPU while we run.
        unsafe { *slot += 1 };
    }
}

/// The workload of the nearest tagged cgroup among the caller's cgroup and its ancestors,
/// 0 if none is tagged.
#[inline(always)]
pub fn tagged_workload() -> (u64, u32) {
    // SAFETY: helpers without pointer arguments.
    let own = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: map lookup; the value is copied out at once.
    if let Some(w) = unsafe { TAGGED_CGROUPS.get(own) } {
        return (own, *w);
    }
    let mut found = 0;
    let mut level = 0;
    while level < MAX_CGROUP_DEPTH {
        // SAFETY: as above.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 || id == own {
            break;
        }
        // SAFETY: as above. Deeper matches override shallower ones: the nearest tag wins.
        if let Some(w) = unsafe { TAGGED_CGROUPS.get(id) } {
            found = *w;
        }
        level += 1;
    }
    (own, found)
}

/// Whether the calling process is the agent itself (its own connects are never touched).
#[inline(always)]
pub fn caller_is_agent(cfg: &AgentConfig) -> bool {
    (bpf_get_current_pid_tgid() >> 32) as u32 == cfg.agent_tgid
}

/// Fills the caller's part of a Unix record (everything but the path).
#[inline(always)]
pub fn fill_caller(record: &mut UnixConnectRecord, cgroup_id: u64, workload: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    record.cgroup_id = cgroup_id;
    record.workload = workload;
    record.tgid = (pid_tgid >> 32) as u32;
    record.pid = pid_tgid as u32;
    record.uid = uid_gid as u32;
    record.gid = (uid_gid >> 32) as u32;
    record.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}
