//! Typed access to the kernel programs' maps, each taken by its agent-common definition (so
//! its name, key and value types come from the one contract): filling the configuration maps
//! at load, and the lookups, tags and counters the agent needs afterwards.
use std::net::{IpAddr, SocketAddr};

use agent_common::maps::{self, MapDef};
use agent_common::{
    AgentConfig, CONFIG_HAS_UNIX, CONFIG_HAS_V4, CONFIG_HAS_V6, COUNTER_NAMES, ConnectRecord,
    DestKey, PathBuf as KernelPath, TupleKey, UNIX_PATH_LEN, UnixConnectRecord, UnixPath,
};
use anyhow::{Context as _, anyhow, bail};
use aya::maps::lpm_trie::Key;
use aya::maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, RingBuf};
use aya::{Ebpf, Pod};

use super::events::Events;
use super::{KernelConfig, Redirect};
use crate::cgroup::CgroupPath;
use crate::names::{CgroupId, WorkloadId};
use crate::tags::TagSink;

/// Takes the map named `name` out of `ebpf` as the handle `T` (aya checks its type and sizes).
fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &str,
) -> anyhow::Result<T> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
    T::try_from(map).with_context(|| format!("map {name}"))
}

/// A hash map (plain or LRU) as `def` defines it.
fn hash<K: Pod, V: Pod>(
    ebpf: &mut Ebpf,
    def: MapDef<K, V>,
) -> anyhow::Result<HashMap<MapData, K, V>> {
    take(ebpf, def.name)
}

/// An LPM trie as `def` defines it.
fn lpm_trie<K: Pod, V: Pod>(
    ebpf: &mut Ebpf,
    def: MapDef<K, V>,
) -> anyhow::Result<LpmTrie<MapData, K, V>> {
    take(ebpf, def.name)
}

/// An array as `def` defines it.
fn array<V: Pod>(ebpf: &mut Ebpf, def: MapDef<u32, V>) -> anyhow::Result<Array<MapData, V>> {
    take(ebpf, def.name)
}

/// A per-CPU array as `def` defines it.
fn per_cpu_array<V: Pod>(
    ebpf: &mut Ebpf,
    def: MapDef<u32, V>,
) -> anyhow::Result<PerCpuArray<MapData, V>> {
    take(ebpf, def.name)
}

/// A ring buffer as `def` defines it.
fn ring_buf<V>(ebpf: &mut Ebpf, def: MapDef<(), V>) -> anyhow::Result<RingBuf<MapData>> {
    take(ebpf, def.name)
}

/// The maps the agent keeps open after load.
pub(super) struct Maps {
    // Taken out of the object and kept open: programs are loaded after `load` returns and
    // their map references are these fds.
    _config: Array<MapData, AgentConfig>,
    _dests: LpmTrie<MapData, DestKey, u32>,
    _unix_rules: LpmTrie<MapData, UnixPath, u32>,
    tagged: HashMap<MapData, u64, u32>,
    sticky: HashMap<MapData, KernelPath, u32>,
    origins: HashMap<MapData, TupleKey, ConnectRecord>,
    counters: PerCpuArray<MapData, u64>,
    unix_origins: HashMap<MapData, u64, UnixConnectRecord>,
}

/// The TCP part of the programs' configuration: the interceptor's listen addresses and port,
/// and the agent's own pid.
pub(super) fn tcp_config(cfg: &KernelConfig<'_>) -> anyhow::Result<AgentConfig> {
    let mut flags = 0;
    let mut listen_v4 = 0;
    let mut listen_v6 = [0u32; 4];
    let mut port = 0;
    if let Some(v4) = cfg.listen_v4 {
        flags |= CONFIG_HAS_V4;
        listen_v4 = u32::from_ne_bytes(v4.ip().octets());
        port = v4.port();
    }
    if let Some(v6) = cfg.listen_v6 {
        flags |= CONFIG_HAS_V6;
        // Four network-order words: the address's bytes as they are.
        listen_v6 = zerocopy::transmute!(v6.ip().octets());
        if port != 0 && port != v6.port() {
            bail!(
                "listen.ipv4 and listen.ipv6 must use the same port ({port} vs {})",
                v6.port()
            );
        }
        port = v6.port();
    }
    Ok(AgentConfig {
        listen_v4,
        listen_v6,
        listen_port: port,
        flags,
        agent_tgid: cfg.agent_tgid,
        ..AgentConfig::default()
    })
}

/// Adds the interceptor's Unix listener (`sun_path` bytes) to the configuration.
pub(super) fn add_unix_listener(config: &mut AgentConfig, name: &[u8]) -> anyhow::Result<()> {
    let key = UnixPath::from_bytes(name)
        .ok_or_else(|| anyhow!("listen.unix is longer than {UNIX_PATH_LEN} bytes"))?;
    config.unix_listen = key.bytes;
    config.unix_listen_len = u32::try_from(name.len())?;
    config.flags |= CONFIG_HAS_UNIX;
    Ok(())
}

impl Maps {
    /// Takes the maps out of `ebpf`, writes `agent_config` and the configured Unix rules and
    /// destinations (new ones first, then the previous run's stale ones go: never a moment
    /// where a configured one is not in force), and hands out the event streams.
    pub(super) fn take(
        ebpf: &mut Ebpf,
        cfg: &KernelConfig<'_>,
        agent_config: AgentConfig,
    ) -> anyhow::Result<(Self, Events)> {
        let mut config = array(ebpf, maps::AGENT_CONFIG)?;
        config.set(0, agent_config, 0)?;
        let mut unix_rules = lpm_trie(ebpf, maps::UNIX_INTERCEPT)?;
        let mut wanted = Vec::new();
        for (bytes, rule) in super::unix_rules(cfg.intercept_unix, cfg.unix_allow) {
            let Some(data) = UnixPath::from_bytes(&bytes) else {
                continue;
            };
            let bits = u32::try_from(bytes.len() * 8)?;
            unix_rules
                .insert(&Key::new(bits, data), rule, 0)
                .with_context(|| {
                    format!(
                        "intercept_unix/unix_allow {}",
                        String::from_utf8_lossy(&bytes)
                    )
                })?;
            wanted.push((bits, data));
        }
        remove_stale(&mut unix_rules, &wanted);
        let mut dests = lpm_trie(ebpf, maps::INTERCEPT_DESTS)?;
        let mut wanted = Vec::new();
        for d in cfg.intercept {
            for net in &d.nets {
                let (len, data) = net.lpm_key();
                dests
                    .insert(&Key::new(len, data), 1, 0)
                    .with_context(|| format!("intercept {d}"))?;
                wanted.push((len, data));
            }
        }
        remove_stale(&mut dests, &wanted);
        let events = Events {
            mkdir: ring_buf(ebpf, maps::CGROUP_EVENTS)?,
            attach: ring_buf(ebpf, maps::ATTACH_EVENTS)?,
        };
        let this = Self {
            tagged: hash(ebpf, maps::TAGGED_CGROUPS)?,
            sticky: hash(ebpf, maps::STICKY_PATHS)?,
            origins: hash(ebpf, maps::ORIGIN_BY_TUPLE)?,
            counters: per_cpu_array(ebpf, maps::COUNTERS)?,
            unix_origins: hash(ebpf, maps::UNIX_ORIGIN_BY_COOKIE)?,
            _config: config,
            _dests: dests,
            _unix_rules: unix_rules,
        };
        Ok((this, events))
    }
}

/// Removes the keys of `trie` that are not `wanted` (the previous run's rules).
fn remove_stale<K: Pod + PartialEq>(trie: &mut LpmTrie<MapData, K, u32>, wanted: &[(u32, K)]) {
    let stale: Vec<Key<K>> = trie
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !wanted.contains(&(k.prefix_len(), k.data())))
        .collect();
    for k in stale {
        let _ = trie.remove(&k);
    }
}

impl Redirect {
    /// The record of a redirected Unix connection, by the client socket's cookie. It stays in
    /// the map (getpeername on the client reads it) until the LRU evicts it; a stream socket
    /// connects once, so no other connection can carry the same cookie.
    pub fn unix_origin(&self, client_cookie: u64) -> Option<UnixConnectRecord> {
        self.maps.unix_origins.get(&client_cookie, 0).ok()
    }

    /// Files `record` under the cookie of the interceptor's accepted socket too: the kernel
    /// runs `getpeername_unix` on the *peer* of the socket asked (ours), so that is where the
    /// program finds the name to answer the client with.
    pub fn note_unix_peer(&mut self, accepted_cookie: u64, record: &UnixConnectRecord) {
        if let Err(e) = self.maps.unix_origins.insert(accepted_cookie, *record, 0) {
            tracing::debug!("cannot file the Unix record for getpeername: {e}");
        }
    }

    /// Takes the record of an accepted connection: where it was going, and who made it.
    pub fn take_origin(
        &mut self,
        client: SocketAddr,
        server: SocketAddr,
        netns: u64,
    ) -> Option<ConnectRecord> {
        let origins = &mut self.maps.origins;
        let key = tuple_key(client, server, netns);
        let Ok(record) = origins.get(&key, 0) else {
            if tracing::enabled!(tracing::Level::DEBUG) {
                let stored: Vec<_> = origins.keys().filter_map(Result::ok).take(8).collect();
                tracing::debug!(?key, ?stored, "no record for this 4-tuple");
            }
            return None;
        };
        let _ = origins.remove(&key);
        Some(record)
    }

    /// The cgroup ids tagged in the kernel map (after a restart: the previous run's).
    pub fn tagged_ids(&self) -> Vec<CgroupId> {
        self.maps
            .tagged
            .keys()
            .filter_map(Result::ok)
            .map(CgroupId)
            .collect()
    }

    /// The sticky paths in the kernel map.
    pub fn sticky_paths(&self) -> Vec<CgroupPath> {
        self.maps
            .sticky
            .keys()
            .filter_map(Result::ok)
            .filter_map(|k| {
                let end = k
                    .bytes
                    .iter()
                    .position(|&b| b == 0)
                    .unwrap_or(k.bytes.len());
                std::str::from_utf8(&k.bytes[..end])
                    .ok()
                    .map(|s| CgroupPath(s.to_owned()))
            })
            .collect()
    }

    /// The kernel programs' counters, summed over CPUs, by their agent-common names.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        COUNTER_NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let sum = u32::try_from(i)
                    .ok()
                    .and_then(|i| self.maps.counters.get(&i, 0).ok())
                    .map_or(0, |v| v.iter().sum());
                (*name, sum)
            })
            .collect()
    }
}

impl TagSink for Redirect {
    fn tag(&mut self, id: CgroupId, workload: WorkloadId) -> anyhow::Result<()> {
        self.maps
            .tagged
            .insert(id.0, workload.0, 0)
            .with_context(|| format!("tagging cgroup {}", id.0))
    }

    fn untag(&mut self, id: CgroupId) -> anyhow::Result<()> {
        match self.maps.tagged.remove(&id.0) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("untagging cgroup {}", id.0)),
        }
    }

    fn stick(&mut self, path: &CgroupPath, workload: WorkloadId) -> anyhow::Result<()> {
        // Paths too long for the kernel key are tagged from user space only.
        if let Some(key) = KernelPath::from_path(path.0.as_bytes()) {
            self.maps
                .sticky
                .insert(key, workload.0, 0)
                .with_context(|| format!("sticky path {path}"))?;
        }
        Ok(())
    }

    fn unstick(&mut self, path: &CgroupPath) -> anyhow::Result<()> {
        if let Some(key) = KernelPath::from_path(path.0.as_bytes()) {
            match self.maps.sticky.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(e).with_context(|| format!("sticky path {path}")),
            }
        }
        Ok(())
    }
}

/// An address in the kernel's IPv6 form (IPv4 mapped).
pub fn v6_form(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => agent_common::v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The kernel's key for a connection between `client` and the interceptor at `server`.
pub fn tuple_key(client: SocketAddr, server: SocketAddr, netns: u64) -> TupleKey {
    TupleKey {
        client_addr: v6_form(client.ip()),
        server_addr: v6_form(server.ip()),
        client_port: client.port(),
        server_port: server.port(),
        pad: 0,
        netns,
    }
}
