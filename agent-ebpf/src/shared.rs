//! Maps and helpers used by both kernel objects: `pgwarden` (loaded by aya) and
//! `pgwarden-unix` (the Unix socket programs, loaded by the agent's own loader because they
//! call kfuncs and use attach types aya 0.14 does not know). Both objects declare the same maps
//! under the same names; aya creates and pins each map once and the agent hands its fd to the
//! Unix programs.
#![allow(dead_code, reason = "each object uses part of what both share")]

use agent_common::{
    AgentConfig, COUNTER_SLOTS, Counter, MAX_CGROUP_DEPTH, UnixConnectRecord, UnixPath, UnixScratch,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id},
    },
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};

/// Index 0: [`AgentConfig`], written by the agent before attaching.
#[map]
pub static AGENT_CONFIG: Array<AgentConfig> = Array::with_max_entries(1, 0);

/// cgroup id (host order) -> workload id (host order, >= 1).
#[map]
pub static TAGGED_CGROUPS: HashMap<u64, u32> = HashMap::with_max_entries(65_536, 0);

/// Per-CPU counters indexed by [`Counter`].
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Prefix of a NUL-padded Unix socket name -> `UNIX_MATCH_*` (redirect) or `UNIX_ALLOW_SOCKET`.
#[map]
pub static UNIX_INTERCEPT: LpmTrie<UnixPath, u32> =
    LpmTrie::with_max_entries(1_024, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Socket cookie (host order) of a redirected client Unix socket -> its record.
#[map]
pub static UNIX_ORIGIN_BY_COOKIE: LruHashMap<u64, UnixConnectRecord> =
    LruHashMap::with_max_entries(65_536, 0);

/// Per-CPU scratch space for the Unix programs (a record and a key exceed the stack).
#[map]
pub static UNIX_SCRATCH: PerCpuArray<UnixScratch> = PerCpuArray::with_max_entries(1, 0);

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
