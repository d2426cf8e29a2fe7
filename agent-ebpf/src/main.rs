//! pgwarden's kernel programs, attached to the cgroup2 root by the agent.
//! They redirect tagged workloads' PostgreSQL connects to the interceptor and leave records
//! that tell the interceptor where each connection was going and who made it.
//!
//! Fail-closed choices, hook by hook:
//! - `connect4`/`connect6`: a tagged caller whose record cannot be stored, or whose address
//!   family the interceptor does not listen on, gets EPERM; it never goes direct.
//! - `sock_ops`: a record that cannot be re-keyed by 4-tuple is counted; the interceptor then
//!   finds no record for the accepted socket and closes it: refused, never relayed unaudited.
//! - `getpeername4/6`: cosmetic. Without a record the kernel's answer stands (fail open).
//! - `sock_release`: cleanup only.
//! - `cgroup_mkdir`: a path that cannot be read is not sticky-tagged by the kernel; the agent
//!   still sees the event (or its periodic rescan) and tags it from user space.
#![no_std]
#![no_main]

mod shared;

use agent_common::{
    AF_INET, AF_INET6, AttachEvent, CGROUP_PATH_LEN, CONFIG_HAS_V4, CONFIG_HAS_V6, CgroupEvent,
    ConnectRecord, Counter, DEST_PORT_BITS, DestKey, PathBuf, TupleKey, maps, v4_mapped,
};
use aya_ebpf::{
    EbpfContext,
    bindings::BPF_SOCK_OPS_TCP_CONNECT_CB,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel_str_bytes,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    },
    macros::{cgroup_sock, cgroup_sock_addr, map, sock_ops, tracepoint},
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{SockAddrContext, SockContext, SockOpsContext, TracePointContext},
};
use shared::{
    AGENT_CONFIG, TAGGED_CGROUPS, count, hash, lpm_trie, lru_hash, per_cpu_array, ring_buf,
    tagged_workload,
};

const IPPROTO_TCP: u32 = 6;
/// Return value of cgroup sock_addr programs that lets the call proceed.
const PROCEED: i32 = 1;
/// Return value that fails the call with EPERM.
const REFUSE: i32 = 0;

/// [`maps::INTERCEPT_DESTS`].
#[map]
static INTERCEPT_DESTS: LpmTrie<DestKey, u32> = lpm_trie(maps::INTERCEPT_DESTS);

/// [`maps::ORIGIN_BY_COOKIE`].
#[map]
static ORIGIN_BY_COOKIE: LruHashMap<u64, ConnectRecord> = lru_hash(maps::ORIGIN_BY_COOKIE);

/// [`maps::ORIGIN_BY_TUPLE`].
#[map]
static ORIGIN_BY_TUPLE: LruHashMap<TupleKey, ConnectRecord> = lru_hash(maps::ORIGIN_BY_TUPLE);

/// [`maps::STICKY_PATHS`].
#[map]
static STICKY_PATHS: HashMap<PathBuf, u32> = hash(maps::STICKY_PATHS);

/// [`maps::ATTACH_EVENTS`].
#[map]
static ATTACH_EVENTS: RingBuf = ring_buf(maps::ATTACH_EVENTS);

/// [`maps::CGROUP_EVENTS`].
#[map]
static CGROUP_EVENTS: RingBuf = ring_buf(maps::CGROUP_EVENTS);

/// [`maps::PATH_SCRATCH`].
#[map]
static PATH_SCRATCH: PerCpuArray<CgroupEvent> = per_cpu_array(maps::PATH_SCRATCH);

#[inline(always)]
fn intercepted(addr: [u8; 16], port_be: u16) -> bool {
    let key = Key::new(
        DEST_PORT_BITS + 128,
        DestKey {
            port: port_be.to_ne_bytes(),
            addr,
        },
    );
    INTERCEPT_DESTS.get(&key).is_some()
}

/// Reads four consecutive context words one by one. The verifier forbids loads through a
/// context pointer the program has offset itself, which is what a whole-array copy compiles to.
macro_rules! ctx_words {
    ($field:expr) => {{
        // SAFETY: each read is a single aligned u32 load of a readable context field.
        unsafe {
            [
                core::ptr::read_volatile(core::ptr::addr_of!($field[0])),
                core::ptr::read_volatile(core::ptr::addr_of!($field[1])),
                core::ptr::read_volatile(core::ptr::addr_of!($field[2])),
                core::ptr::read_volatile(core::ptr::addr_of!($field[3])),
            ]
        }
    }};
}

/// Writes four context words one by one (see [`ctx_words`]).
macro_rules! set_ctx_words {
    ($field:expr, $words:expr) => {{
        let w: [u32; 4] = $words;
        // SAFETY: each write is a single aligned u32 store to a writable context field.
        unsafe {
            core::ptr::write_volatile(core::ptr::addr_of_mut!($field[0]), w[0]);
            core::ptr::write_volatile(core::ptr::addr_of_mut!($field[1]), w[1]);
            core::ptr::write_volatile(core::ptr::addr_of_mut!($field[2]), w[2]);
            core::ptr::write_volatile(core::ptr::addr_of_mut!($field[3]), w[3]);
        }
    }};
}

fn words_to_bytes(words: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

fn bytes_to_words(b: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

fn is_v4_mapped(b: &[u8; 16]) -> bool {
    b[0] == 0
        && b[1] == 0
        && b[2] == 0
        && b[3] == 0
        && b[4] == 0
        && b[5] == 0
        && b[6] == 0
        && b[7] == 0
        && b[8] == 0
        && b[9] == 0
        && b[10] == 0xff
        && b[11] == 0xff
}

/// What a connect hook decided for a TCP connect.
enum Redirect {
    /// Not ours: leave it alone.
    Pass,
    /// Tagged and intercepted: store `record` and rewrite to the interceptor.
    To(ConnectRecord),
}

/// Decision shared by both connect hooks. `addr` is the destination in IPv6 form.
#[inline(always)]
fn decide(ctx: &SockAddrContext, addr: [u8; 16], port_be: u16, family: u16) -> Redirect {
    // SAFETY: the context pointer is valid for the program's run.
    let protocol = unsafe { (*ctx.sock_addr).protocol };
    if protocol != IPPROTO_TCP {
        return Redirect::Pass;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if let Some(cfg) = AGENT_CONFIG.get(0)
        && cfg.agent_tgid == tgid
    {
        // The agent's own upstream connects, even if an operator tagged its cgroup.
        return Redirect::Pass;
    }
    if !intercepted(addr, port_be) {
        return Redirect::Pass;
    }
    let (cgroup_id, workload) = tagged_workload();
    if workload == 0 {
        return Redirect::Pass;
    }
    let uid_gid = bpf_get_current_uid_gid();
    Redirect::To(ConnectRecord {
        orig_addr: addr,
        orig_port: u16::from_be(port_be),
        family,
        workload,
        cgroup_id,
        tgid,
        pid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    })
}

#[inline(always)]
fn store(ctx: &SockAddrContext, record: &ConnectRecord) -> bool {
    // SAFETY: valid context for bpf_get_socket_cookie in sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if ORIGIN_BY_COOKIE.insert(cookie, record, 0).is_err() {
        count(Counter::RefusedNoRecord);
        return false;
    }
    true
}

/// IPv4 connect(): redirect tagged TCP connects to intercepted destinations.
/// Fail closed: a tagged connect that cannot be recorded is refused (EPERM).
#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: valid context pointer.
    let (ip4, port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    let addr = v4_mapped(ip4.to_ne_bytes());
    let Redirect::To(record) = decide(&ctx, addr, port as u16, AF_INET) else {
        return PROCEED;
    };
    let Some(cfg) = AGENT_CONFIG.get(0) else {
        count(Counter::RefusedNoListener);
        return REFUSE;
    };
    if cfg.flags & CONFIG_HAS_V4 == 0 {
        count(Counter::RefusedNoListener);
        return REFUSE;
    }
    if !store(&ctx, &record) {
        return REFUSE;
    }
    // SAFETY: writable fields of the sock_addr context in connect4.
    unsafe {
        (*sa).user_ip4 = cfg.listen_v4;
        (*sa).user_port = u32::from(cfg.listen_port.to_be());
    }
    count(Counter::Redirected);
    PROCEED
}

/// IPv6 connect(), IPv4-mapped destinations included: as `connect4`.
#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: valid context pointer.
    let ip6 = ctx_words!((*sa).user_ip6);
    // SAFETY: valid context pointer.
    let port = unsafe { (*sa).user_port };
    let addr = words_to_bytes(ip6);
    let Redirect::To(record) = decide(&ctx, addr, port as u16, AF_INET6) else {
        return PROCEED;
    };
    let Some(cfg) = AGENT_CONFIG.get(0) else {
        count(Counter::RefusedNoListener);
        return REFUSE;
    };
    let mapped = is_v4_mapped(&addr);
    let needed = if mapped { CONFIG_HAS_V4 } else { CONFIG_HAS_V6 };
    if cfg.flags & needed == 0 {
        count(Counter::RefusedNoListener);
        return REFUSE;
    }
    if !store(&ctx, &record) {
        return REFUSE;
    }
    let target = if mapped {
        bytes_to_words(v4_mapped(cfg.listen_v4.to_ne_bytes()))
    } else {
        cfg.listen_v6
    };
    set_ctx_words!((*sa).user_ip6, target);
    // SAFETY: writable field of the sock_addr context in connect6.
    unsafe { (*sa).user_port = u32::from(cfg.listen_port.to_be()) };
    count(Counter::Redirected);
    PROCEED
}

/// Re-keys a redirected socket's record by its 4-tuple once the kernel has chosen the local
/// port (TCP_CONNECT_CB runs before the SYN is sent, so the record is in place before the
/// interceptor can accept the connection).
#[sock_ops]
pub fn sock_ops(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_TCP_CONNECT_CB {
        return 1;
    }
    // SAFETY: valid sock_ops context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the record is copied out at once.
    let Some(record) = (unsafe { ORIGIN_BY_COOKIE.get(cookie) }).copied() else {
        return 1;
    };
    let (client_addr, server_addr) = if ctx.family() == u32::from(AF_INET) {
        (
            v4_mapped(ctx.local_ip4().to_ne_bytes()),
            v4_mapped(ctx.remote_ip4().to_ne_bytes()),
        )
    } else {
        let ops = ctx.ops;
        (
            words_to_bytes(ctx_words!((*ops).local_ip6)),
            words_to_bytes(ctx_words!((*ops).remote_ip6)),
        )
    };
    let key = TupleKey {
        client_addr,
        server_addr,
        client_port: ctx.local_port() as u16,
        // The kernel loads the network-order port into the upper half on little endian.
        server_port: u16::from_be((ctx.remote_port() >> 16) as u16),
        pad: 0,
        // SAFETY: valid sock_ops context.
        netns: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
    };
    if ORIGIN_BY_TUPLE.insert(key, record, 0).is_err() {
        count(Counter::RekeyFailed);
    }
    1
}

/// Drops a socket's record when the socket goes away.
#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    // SAFETY: valid cgroup sock context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = ORIGIN_BY_COOKIE.remove(cookie);
    PROCEED
}

/// getpeername() on a redirected IPv4 socket answers the original destination.
#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    // SAFETY: valid context for bpf_get_socket_cookie.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out at once.
    if let Some(record) = unsafe { ORIGIN_BY_COOKIE.get(cookie) } {
        let a = record.orig_addr;
        // SAFETY: writable fields in getpeername4.
        unsafe {
            (*ctx.sock_addr).user_ip4 = u32::from_ne_bytes([a[12], a[13], a[14], a[15]]);
            (*ctx.sock_addr).user_port = u32::from(record.orig_port.to_be());
        }
        count(Counter::PeerRewritten);
    }
    PROCEED
}

/// getpeername() on a redirected IPv6 socket answers the original destination.
#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    // SAFETY: valid context for bpf_get_socket_cookie.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out at once.
    if let Some(record) = unsafe { ORIGIN_BY_COOKIE.get(cookie) } {
        let words = bytes_to_words(record.orig_addr);
        set_ctx_words!((*ctx.sock_addr).user_ip6, words);
        // SAFETY: writable field in getpeername6.
        unsafe { (*ctx.sock_addr).user_port = u32::from(record.orig_port.to_be()) };
        count(Counter::PeerRewritten);
    }
    PROCEED
}

// Offsets in the `cgroup:cgroup_mkdir` tracepoint record; the agent checks them against
// tracefs's format file before it attaches this program.
const MKDIR_ROOT_OFFSET: usize = 8;
const MKDIR_ID_OFFSET: usize = 16;
const MKDIR_PATH_OFFSET: usize = 24;

/// Every cgroup2 mkdir: tag the new cgroup at once if its path is sticky (a tagged unit being
/// restarted), and tell the agent about it so it can apply its full matching rules.
#[tracepoint(category = "cgroup", name = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: TracePointContext) -> u32 {
    let _ = try_cgroup_mkdir(&ctx);
    0
}

fn try_cgroup_mkdir(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: reads within the tracepoint record, whose layout the agent verified.
    let root: i32 = unsafe { ctx.read_at(MKDIR_ROOT_OFFSET) }.map_err(i64::from)?;
    if root != 0 {
        // A cgroup v1 hierarchy: its ids are another namespace; not ours.
        return Ok(());
    }
    // SAFETY: as above.
    let id: u64 = unsafe { ctx.read_at(MKDIR_ID_OFFSET) }.map_err(i64::from)?;
    // SAFETY: as above.
    let loc: u32 = unsafe { ctx.read_at(MKDIR_PATH_OFFSET) }.map_err(i64::from)?;
    let offset = (loc & 0xffff) as usize;
    let event = PATH_SCRATCH.get_ptr_mut(0).ok_or(-1i64)?;
    // SAFETY: per-CPU scratch value, exclusively ours while this program runs on this CPU.
    let event = unsafe { &mut *event };
    event.path = PathBuf::zeroed();
    event.id = id;
    event.sticky_workload = 0;
    // SAFETY: the string lies inside the tracepoint record at the offset its data_loc gives.
    let src = unsafe { (ctx.as_ptr() as *const u8).add(offset) };
    // Keep one trailing NUL so the key equals the agent's NUL-padded form.
    // SAFETY: src is a kernel pointer into the record; the helper bounds the copy.
    let len = unsafe {
        bpf_probe_read_kernel_str_bytes(src, &mut event.path.bytes[..CGROUP_PATH_LEN - 1])
    }
    .map(|s| s.len())
    .unwrap_or(0);
    event.path_len = len as u32;
    if len > 0 {
        // SAFETY: copied out at once.
        if let Some(w) = unsafe { STICKY_PATHS.get(event.path) } {
            let w = *w;
            event.sticky_workload = w;
            if TAGGED_CGROUPS.insert(id, w, 0).is_ok() {
                count(Counter::StickyTagged);
            }
        }
    }
    if CGROUP_EVENTS.output::<CgroupEvent>(&*event, 0).is_err() {
        count(Counter::EventsDropped);
    }
    Ok(())
}

// Offsets in the `cgroup:cgroup_attach_task` tracepoint record; checked by the agent too.
const ATTACH_ROOT_OFFSET: usize = 8;
const ATTACH_ID_OFFSET: usize = 16;
const ATTACH_PID_OFFSET: usize = 24;

/// Every move of a process into a cgroup2 cgroup: tells the agent, which opens listeners in the
/// process's network namespace if its cgroup is tagged and the namespace is new (a container
/// starting). Cosmetic for safety: without it the agent's rescan finds the namespace, and until
/// then the namespace's tagged connects are refused.
#[tracepoint(category = "cgroup", name = "cgroup_attach_task")]
pub fn cgroup_attach_task(ctx: TracePointContext) -> u32 {
    // SAFETY: reads within the tracepoint record, whose layout the agent verified.
    let root: i32 = unsafe { ctx.read_at(ATTACH_ROOT_OFFSET) }.unwrap_or(-1);
    if root != 0 {
        return 0;
    }
    // SAFETY: as above.
    let cgroup_id: u64 = unsafe { ctx.read_at(ATTACH_ID_OFFSET) }.unwrap_or(0);
    // SAFETY: as above.
    let pid: i32 = unsafe { ctx.read_at(ATTACH_PID_OFFSET) }.unwrap_or(0);
    let event = AttachEvent {
        cgroup_id,
        pid: pid as u32,
        pad: 0,
    };
    if ATTACH_EVENTS.output::<AttachEvent>(&event, 0).is_err() {
        count(Counter::EventsDropped);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
