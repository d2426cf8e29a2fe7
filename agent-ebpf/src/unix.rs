//! pgwarden's Unix socket programs: `cgroup/connect_unix` redirects a tagged process's connect
//! to a PostgreSQL socket to the interceptor's Unix listener, `cgroup/getpeername_unix` answers
//! the original path. A separate object from `pgwarden` because both call kfuncs
//! (`bpf_cast_to_kern_ctx`, `bpf_sock_addr_set_sun_path`), which the agent's own loader resolves.
//!
//! Fail-closed choices:
//! - `connect_unix`: this hook sees the name a client passed, not the socket the name leads
//!   to (a symlink, a hard link, a bind mount or a relative path can name PostgreSQL's socket),
//!   so a tagged workload's *stream* connects are default-deny: an intercepted name is
//!   redirected, an allowed socket (`unix_allow`) passes, every other name gets EPERM. So does
//!   an intercepted one whose record cannot be stored, or with no Unix listener configured.
//!   Datagram sockets pass (they cannot reach a PostgreSQL listener). One LPM lookup, no loops:
//!   the verifier's cost stays flat.
//! - `getpeername_unix`: cosmetic. Without a record the kernel's answer stands.
#![no_std]
#![no_main]

mod shared;

use agent_common::{
    CONFIG_HAS_UNIX, Counter, SOCK_STREAM, UNIX_ALLOW_SOCKET, UNIX_MATCH_DIR, UNIX_MATCH_SOCKET,
    UNIX_PATH_LEN, UnixPath,
};
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::generated::{bpf_get_socket_cookie, bpf_probe_read_kernel},
    maps::lpm_trie::Key,
};
use core::ffi::c_void;
use shared::{
    AGENT_CONFIG, UNIX_INTERCEPT, UNIX_ORIGIN_BY_COOKIE, UNIX_SCRATCH, caller_is_agent, count,
    fill_caller, tagged_workload,
};

/// Return value of cgroup sock_addr programs that lets the call proceed.
const PROCEED: i32 = 1;
/// Return value that fails the call with EPERM.
const REFUSE: i32 = 0;

/// Offsets in the kernel's `struct bpf_sock_addr_kern` (include/linux/filter.h, 6.7+):
/// `struct sock *sk; struct sockaddr *uaddr; u64 tmp_reg; void *t_ctx; u32 uaddrlen;`.
/// The agent checks them against the running kernel's BTF before loading this object.
const KERN_UADDR_OFFSET: usize = 8;
const KERN_UADDRLEN_OFFSET: usize = 32;
/// Offset of `sun_path` in `struct sockaddr_un`.
const SUN_PATH_OFFSET: usize = 2;

unsafe extern "C" {
    /// kfunc: the kernel context behind a program's context pointer.
    fn bpf_cast_to_kern_ctx(ctx: *mut c_void) -> *mut c_void;
    /// kfunc (6.7+): replaces a Unix sock_addr's `sun_path` and length.
    fn bpf_sock_addr_set_sun_path(
        sa_kern: *mut c_void,
        sun_path: *const u8,
        sun_path__sz: u32,
    ) -> i32;
}

/// A name length clamped to `sun_path`, in a form the verifier tracks (a clamp, not the
/// `len - 1 > 107` that `len == 0 || len > 108` compiles to), so the kfunc's memory/size pair
/// is provably in bounds.
#[inline(always)]
fn bounded_len(len: u32) -> usize {
    // SAFETY: a plain read of a local, kept opaque to the optimiser.
    let len = unsafe { core::ptr::read_volatile(&len) } as usize;
    if len > UNIX_PATH_LEN {
        UNIX_PATH_LEN
    } else {
        len
    }
}

/// Unix connect(): redirect tagged connects to intercepted PostgreSQL sockets.
#[unsafe(no_mangle)]
#[unsafe(link_section = "cgroup/connect_unix")]
pub fn connect_unix(ctx: *mut bpf_sock_addr) -> i32 {
    try_connect_unix(ctx)
}

#[inline(always)]
fn try_connect_unix(ctx: *mut bpf_sock_addr) -> i32 {
    let Some(cfg) = AGENT_CONFIG.get(0) else {
        return PROCEED;
    };
    if caller_is_agent(cfg) {
        return PROCEED;
    }
    let (cgroup_id, workload) = tagged_workload();
    if workload == 0 {
        return PROCEED;
    }
    // SAFETY: valid context pointer; `type` is readable in every sock_addr program.
    if unsafe { (*ctx).type_ } != SOCK_STREAM {
        return PROCEED;
    }
    let Some(scratch) = UNIX_SCRATCH.get_ptr_mut(0) else {
        count(Counter::UnixRefused);
        return REFUSE;
    };
    // SAFETY: per-CPU scratch value, exclusively ours while this program runs on this CPU.
    let scratch = unsafe { &mut *scratch };
    // SAFETY: kfunc on this program's own context.
    let kern = unsafe { bpf_cast_to_kern_ctx(ctx.cast()) } as *const u8;
    // SAFETY: fields of the trusted kernel context at offsets the agent verified.
    let (uaddr, uaddrlen) = unsafe {
        (
            core::ptr::read_volatile(kern.add(KERN_UADDR_OFFSET).cast::<*const u8>()),
            core::ptr::read_volatile(kern.add(KERN_UADDRLEN_OFFSET).cast::<u32>()),
        )
    };
    let len = bounded_len(uaddrlen.saturating_sub(SUN_PATH_OFFSET as u32));
    if len == 0 {
        // No name: the kernel fails the connect itself (EINVAL).
        return PROCEED;
    }
    let path = &mut scratch.record.path;
    *path = [0; UNIX_PATH_LEN];
    // SAFETY: the kernel's copy of the caller's sockaddr (a sockaddr_storage of 128 bytes, so
    // `len` <= 108 bytes from offset 2 lie inside it) into the 108-byte record field.
    let read = unsafe {
        bpf_probe_read_kernel(
            path.as_mut_ptr().cast(),
            len as u32,
            uaddr.wrapping_add(SUN_PATH_OFFSET).cast(),
        )
    };
    if read != 0 {
        count(Counter::UnixRefused);
        return REFUSE;
    }
    // The longest rule that is a prefix of the NUL-padded name.
    let key = Key::new((UNIX_PATH_LEN * 8) as u32, UnixPath { bytes: *path });
    let rule = UNIX_INTERCEPT.get(&key).copied().unwrap_or(0);
    let redirect = rule == UNIX_MATCH_SOCKET || rule == UNIX_MATCH_DIR;
    if !redirect {
        if rule == UNIX_ALLOW_SOCKET {
            count(Counter::UnixAllowed);
            return PROCEED;
        }
        count(Counter::UnixRefusedDirect);
        return REFUSE;
    }
    let listen_len = bounded_len(cfg.unix_listen_len);
    if cfg.flags & CONFIG_HAS_UNIX == 0 || listen_len == 0 {
        count(Counter::UnixRefused);
        return REFUSE;
    }
    scratch.record.path_len = len as u32;
    fill_caller(&mut scratch.record, cgroup_id, workload);
    // SAFETY: valid context for bpf_get_socket_cookie in sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.cast()) };
    if UNIX_ORIGIN_BY_COOKIE
        .insert(cookie, scratch.record, 0)
        .is_err()
    {
        count(Counter::UnixRefused);
        return REFUSE;
    }
    // SAFETY: kfunc on the kernel context; the name is a map value of UNIX_PATH_LEN bytes and
    // `listen_len` was checked against it.
    let rc = unsafe {
        bpf_sock_addr_set_sun_path(
            kern as *mut c_void,
            cfg.unix_listen.as_ptr(),
            listen_len as u32,
        )
    };
    if rc != 0 {
        count(Counter::UnixRefused);
        return REFUSE;
    }
    count(Counter::UnixRedirected);
    PROCEED
}

/// getpeername() on a redirected Unix socket answers the path the client connected to.
#[unsafe(no_mangle)]
#[unsafe(link_section = "cgroup/getpeername_unix")]
pub fn getpeername_unix(ctx: *mut bpf_sock_addr) -> i32 {
    // SAFETY: valid context for bpf_get_socket_cookie.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.cast()) };
    // SAFETY: the value stays valid for this program's run (no deletion races with it: the
    // LRU only evicts on insert from another CPU, and the kfunc copies at once).
    let Some(record) = (unsafe { UNIX_ORIGIN_BY_COOKIE.get(cookie) }) else {
        return PROCEED;
    };
    let len = bounded_len(record.path_len);
    if len == 0 {
        return PROCEED;
    }
    // SAFETY: kfunc on this program's own context.
    let kern = unsafe { bpf_cast_to_kern_ctx(ctx.cast()) };
    // SAFETY: kfunc; the name is a map value of UNIX_PATH_LEN bytes, `len` checked against it.
    if unsafe { bpf_sock_addr_set_sun_path(kern, record.path.as_ptr(), len as u32) } == 0 {
        count(Counter::UnixPeerRewritten);
    }
    PROCEED
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
