//! The kernel's event streams (ring buffers) and the decoding of their records, through the
//! shared structs' `FromBytes` layouts rather than byte offsets.
use agent_common::AttachEvent;
use agent_common::maps::MapDef;
use aya::maps::{MapData, RingBuf};
use zerocopy::FromBytes;

use crate::cgroup::CgroupPath;
use crate::names::CgroupId;

/// The kernel's event streams for the agent.
pub struct Events {
    /// An [`agent_common::CgroupEvent`] per cgroup2 mkdir ([`agent_common::maps::CGROUP_EVENTS`]).
    pub mkdir: RingBuf<MapData>,
    /// An [`AttachEvent`] per process moved into a cgroup2 cgroup
    /// ([`agent_common::maps::ATTACH_EVENTS`]).
    pub attach: RingBuf<MapData>,
}

/// Reads one record of the ring buffer `def` from its bytes (native order, as the kernel wrote
/// them); `None` if there are too few.
fn read_record<V: FromBytes>(_def: MapDef<(), V>, bytes: &[u8]) -> Option<V> {
    V::read_from_prefix(bytes).ok().map(|(record, _)| record)
}

/// Decodes one [`agent_common::CgroupEvent`] ring-buffer item into (id, path, sticky workload).
pub fn decode_event(bytes: &[u8]) -> Option<(CgroupId, CgroupPath, u32)> {
    let event = read_record(agent_common::maps::CGROUP_EVENTS, bytes)?;
    let len = usize::try_from(event.path_len).ok()?;
    let path = event.path.bytes.get(..len)?;
    let path = std::str::from_utf8(path).ok()?.trim_end_matches('\0');
    Some((
        CgroupId(event.id),
        CgroupPath(path.to_owned()),
        event.sticky_workload,
    ))
}

/// Decodes one [`AttachEvent`] ring-buffer item.
pub fn decode_attach_event(bytes: &[u8]) -> Option<AttachEvent> {
    read_record(agent_common::maps::ATTACH_EVENTS, bytes)
}
