//! The agent's few raw system calls, each behind a safe function: the bpf(2) commands that
//! aya 0.14 does not expose (loading a program with a caller-built instruction stream and an
//! attach type aya does not know, creating and pinning its link), `getsockopt(SO_COOKIE)` and
//! the `SIOCOUTQ` ioctl, and `sched_setscheduler(SCHED_IDLE)` for the journal's compressor;
//! and [`CountingAlloc`], the global allocator of tests that hold a path to no allocation.
//! It is its own crate because the rest of the workspace forbids `unsafe`.
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd as _, OwnedFd};
use std::path::Path;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;

/// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR`.
pub const PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
/// `BPF_CGROUP_UNIX_CONNECT` (Linux 6.7).
pub const ATTACH_CGROUP_UNIX_CONNECT: u32 = 49;
/// `BPF_CGROUP_UNIX_GETPEERNAME` (Linux 6.7).
pub const ATTACH_CGROUP_UNIX_GETPEERNAME: u32 = 52;

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, zero-extended (the kernel requires unused
/// trailing bytes to be zero).
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    rest: [u8; 80],
}

/// The `BPF_LINK_CREATE` part of `union bpf_attr`.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    rest: [u8; 48],
}

/// The `BPF_OBJ_PIN` / `BPF_OBJ_GET` part of `union bpf_attr`.
#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    rest: [u8; 44],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, properly sized repr(C) prefix of `union bpf_attr` for `cmd`;
    // every pointer inside it points to memory that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn owned(rc: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(rc).map_err(|_| io::Error::other("bpf(2) returned no descriptor"))?;
    // SAFETY: a successful bpf(2) command that creates an object returns a new descriptor
    // that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A program the kernel refused, with the verifier's log.
#[derive(Debug)]
pub struct LoadError {
    /// The errno.
    pub error: io::Error,
    /// The verifier log (its tail, when long).
    pub log: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.error)?;
        if !self.log.is_empty() {
            write!(f, "; verifier log:\n{}", self.log)?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

/// Loads a program from raw instructions (8-byte `struct bpf_insn`s, already relocated).
pub fn prog_load(
    prog_type: u32,
    expected_attach_type: u32,
    name: &str,
    insns: &[u64],
    license: &str,
) -> Result<OwnedFd, LoadError> {
    let license = CString::new(license).map_err(|_| LoadError {
        error: io::Error::from(io::ErrorKind::InvalidInput),
        log: String::new(),
    })?;
    let mut prog_name = [0u8; 16];
    for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let mut log = vec![0u8; 1 << 20];
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: u32::try_from(insns.len()).unwrap_or(u32::MAX),
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name,
        prog_ifindex: 0,
        expected_attach_type,
        rest: [0; 80],
    };
    match bpf(BPF_PROG_LOAD, &mut attr).and_then(owned) {
        Ok(fd) => Ok(fd),
        Err(_) => {
            // Again with the verifier's log, for the operator.
            attr.log_level = 1;
            attr.log_size = u32::try_from(log.len()).unwrap_or(u32::MAX);
            attr.log_buf = log.as_mut_ptr() as u64;
            let again = bpf(BPF_PROG_LOAD, &mut attr).and_then(owned);
            match again {
                Ok(fd) => Ok(fd),
                Err(error) => {
                    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                    let text = String::from_utf8_lossy(&log[..end]);
                    let tail: Vec<&str> = text.lines().rev().take(40).collect();
                    let log = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
                    Err(LoadError { error, log })
                }
            }
        }
    }
}

/// Attaches `prog` to the cgroup `target` with a bpf_link (multi-attach, like aya's links).
pub fn link_create(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: u32::try_from(prog.as_raw_fd())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        target_fd: u32::try_from(target.as_raw_fd())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        attach_type,
        flags: 0,
        rest: [0; 48],
    };
    bpf(BPF_LINK_CREATE, &mut attr).and_then(owned)
}

/// Pins a bpf object (a link) at `path` on a bpffs.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: u32::try_from(fd.as_raw_fd())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        file_flags: 0,
        path_fd: 0,
        rest: [0; 44],
    };
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// The socket cookie of `sock` (`SO_COOKIE`): the id the kernel programs key records by.
pub fn socket_cookie(sock: BorrowedFd<'_>) -> io::Result<u64> {
    u64_option(sock, libc::SO_COOKIE)
}

/// Bytes `sock` (a TCP socket) has sent but the peer has not acknowledged, plus those not
/// sent yet (`SIOCOUTQ`): 0 once the peer's kernel has everything written so far. The audit
/// forwarder waits for it before it counts a syslog batch as delivered.
pub fn send_queue_len(sock: BorrowedFd<'_>) -> io::Result<usize> {
    // SIOCOUTQ is TIOCOUTQ: linux/sockios.h.
    const SIOCOUTQ: libc::c_ulong = 0x5411;
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int through the pointer, which points at `n`.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCOUTQ, &raw mut n) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// The cookie of the network namespace `sock` lives in (`SO_NETNS_COOKIE`, Linux 5.14).
pub fn netns_cookie(sock: BorrowedFd<'_>) -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    u64_option(sock, SO_NETNS_COOKIE)
}

fn u64_option(sock: BorrowedFd<'_>, option: libc::c_int) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, which is that large.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            std::ptr::from_mut(&mut cookie).cast::<libc::c_void>(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Puts the calling thread under `SCHED_IDLE`: it runs only when no other thread of the
/// host wants the CPU (for work that can wait, like compressing rotated journal files).
/// Lowering one's own policy needs no privilege.
pub fn idle_thread() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the call's duration; pid 0 is this thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &raw const param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives `SIGPIPE` its default action back (Rust's runtime ignores it), so that a command
/// whose output goes to a closed pipe (`pgwarden policy explain ... | head`) ends quietly as
/// Unix tools do, instead of panicking in `println!`. For the CLI's one-shot commands only:
/// the daemon keeps it ignored and sees `EPIPE` on its sockets.
pub fn default_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_DFL installs no handler and touches no
    // memory; it is called before the runtime starts any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// A global allocator that counts the allocations (`alloc`, `alloc_zeroed`, `realloc`) a
/// thread makes inside [`CountingAlloc::count`], and passes every call on to
/// [`std::alloc::System`]. For test binaries: `#[global_allocator] static A: CountingAlloc =
/// CountingAlloc;`. Per thread, so other threads (the test harness, a writer thread) do not
/// count.
pub struct CountingAlloc;

thread_local! {
    static COUNTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl CountingAlloc {
    /// Runs `f` and returns what it returned and the allocations this thread made meanwhile
    /// (0 unless `CountingAlloc` is the global allocator).
    pub fn count<R>(f: impl FnOnce() -> R) -> (R, u64) {
        let before = ALLOCATIONS.with(std::cell::Cell::get);
        COUNTING.with(|c| c.set(true));
        let r = f();
        COUNTING.with(|c| c.set(false));
        (r, ALLOCATIONS.with(std::cell::Cell::get) - before)
    }

    fn note() {
        // `try_with`: the thread-locals may be gone while a thread exits.
        if COUNTING.try_with(std::cell::Cell::get).unwrap_or(false) {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    }
}

// SAFETY: every call is passed on to `System` with the caller's arguments unchanged; the
// counters are thread-local `Cell`s with const initializers, which neither allocate nor call
// back into the allocator.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        Self::note();
        // SAFETY: the caller upholds `alloc`'s contract; passed on unchanged.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        Self::note();
        // SAFETY: as for `alloc`.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        Self::note();
        // SAFETY: the caller upholds `realloc`'s contract (`ptr` came from this allocator,
        // which is `System`'s); passed on unchanged.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from `System` (see above); passed on unchanged.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd as _;

    #[test]
    fn attr_layouts_match_the_kernel() {
        // offsetof(union bpf_attr, expected_attach_type) for BPF_PROG_LOAD is 68.
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(std::mem::offset_of!(LinkCreateAttr, attach_type), 8);
        assert_eq!(std::mem::offset_of!(ObjAttr, bpf_fd), 8);
    }

    #[test]
    fn a_closed_pipe_ends_the_process_by_sigpipe() {
        use std::io::Write as _;
        use std::os::unix::process::ExitStatusExt as _;
        // In a child, so the test process keeps Rust's default.
        if std::env::var_os("AGENT_SYS_SIGPIPE_CHILD").is_some() {
            default_sigpipe();
            let (reader, mut writer) = std::io::pipe().unwrap();
            drop(reader);
            // Ignored SIGPIPE: the write fails instead of ending the process.
            let _ = writer.write_all(b"x");
            std::process::exit(3);
        }
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tests::a_closed_pipe_ends_the_process_by_sigpipe",
            ])
            .env("AGENT_SYS_SIGPIPE_CHILD", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.signal(), Some(libc::SIGPIPE), "{status:?}");
    }

    #[test]
    fn a_thread_goes_idle_and_others_do_not() {
        std::thread::spawn(|| {
            idle_thread().unwrap();
            // SAFETY: no argument; pid 0 is this thread.
            assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_IDLE);
        })
        .join()
        .unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
    }

    #[test]
    fn sockets_have_distinct_cookies() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let ca = socket_cookie(a.as_fd()).unwrap();
        let cb = socket_cookie(b.as_fd()).unwrap();
        assert_ne!(ca, 0);
        assert_ne!(ca, cb);
        assert_eq!(ca, socket_cookie(a.as_fd()).unwrap());
        // Both ends live in this namespace.
        let n = netns_cookie(a.as_fd()).unwrap();
        assert_ne!(n, 0);
        assert_eq!(n, netns_cookie(b.as_fd()).unwrap());
    }
}
