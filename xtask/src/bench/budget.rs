//! Where each proxy's CPU goes per transaction: PgBouncer, pgwarden's relay alone and pgwarden
//! as installed each run one pgbench cell under `perf record -g`; every sample is put in one
//! part (sockets, the journal's writes, policy, masking, the runtime, ...) by its stack, and
//! each part's share of the samples times the process's measured CPU per transaction is its
//! cost in microseconds.
//!
//! Kernel samples are placed by the system call they sit under (the kernel's frame pointers
//! give whole stacks); user samples by their own function only (the release build keeps no
//! frame pointers, so their callers are not known), which is why "malloc and copies" is a
//! part of its own rather than charged to whoever called.
//!
//! Heap allocations are counted, not sampled: uprobes on glibc's allocation entry points (which
//! Rust's `System` allocator and PgBouncer both call) counted by `perf stat` over one more run
//! per side, divided by its transactions. A uprobe makes each call slow, so that run's
//! throughput means nothing; its count per transaction is exact.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::Section;
use super::pgbench::{Observe, QueryMode, Side, run_pgbench};
use super::rig::Rig;
use crate::cmd;

/// The parts, in the order the table shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    Sockets,
    Wait,
    JournalWrite,
    JournalPages,
    JournalWatch,
    KernelOther,
    Wire,
    Policy,
    Audit,
    Masking,
    Relay,
    Runtime,
    Alloc,
    Compression,
    UserOther,
}

impl Part {
    const ALL: [Part; 15] = [
        Part::Sockets,
        Part::Wait,
        Part::JournalWrite,
        Part::JournalPages,
        Part::JournalWatch,
        Part::KernelOther,
        Part::Wire,
        Part::Policy,
        Part::Audit,
        Part::Masking,
        Part::Relay,
        Part::Runtime,
        Part::Alloc,
        Part::Compression,
        Part::UserOther,
    ];

    fn label(self) -> &'static str {
        match self {
            Part::Sockets => "kernel: sockets (send/recv, loopback TCP, wake-ups of the peer)",
            Part::Wait => "kernel: event loop (epoll_wait, being scheduled)",
            Part::JournalWrite => "kernel: journal file writes and fsyncs",
            Part::JournalPages => {
                "kernel: journal file writes: zeroing each new page-cache page (its first touch)"
            }
            Part::JournalWatch => "kernel: journal watch (inotify read, lseek, stat)",
            Part::KernelOther => "kernel: other (futex, faults, timers)",
            Part::Wire => "user: wire frames and statement text",
            Part::Policy => "user: policy (parse, decide, caches)",
            Part::Audit => "user: audit records (JSON, SHA-256 chain, time)",
            Part::Masking => "user: masking and result scans",
            Part::Relay => "user: session relay (state machine, buffers)",
            Part::Runtime => "user: async runtime (tokio, mio, syscall stubs)",
            Part::Alloc => "user: malloc, free, memcpy",
            Part::Compression => "user: zstd (rotated journal files)",
            Part::UserOther => "user: other (PgBouncer's own code, libevent, std)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Part::Sockets => "sockets",
            Part::Wait => "event_loop",
            Part::JournalWrite => "journal_write",
            Part::JournalPages => "journal_pages",
            Part::JournalWatch => "journal_watch",
            Part::KernelOther => "kernel_other",
            Part::Wire => "wire",
            Part::Policy => "policy",
            Part::Audit => "audit",
            Part::Masking => "masking",
            Part::Relay => "relay",
            Part::Runtime => "runtime",
            Part::Alloc => "alloc",
            Part::Compression => "compression",
            Part::UserOther => "user_other",
        }
    }
}

/// One frame of a sample's stack: its symbol and whether it is the kernel's.
#[derive(Debug)]
struct Frame<'a> {
    sym: &'a str,
    kernel: bool,
}

/// The part a sample belongs to; `stack[0]` is where it was taken.
fn classify(stack: &[Frame<'_>]) -> Part {
    let Some(leaf) = stack.first() else {
        return Part::UserOther;
    };
    if leaf.kernel {
        let kernel = || stack.iter().filter(|f| f.kernel);
        if let Some(call) = kernel().find_map(|f| syscall_of(f.sym)) {
            let has = |prefix: &str| kernel().any(|f| f.sym.starts_with(prefix));
            return syscall_part(call, &has);
        }
        // Not under a system call: network receive processing in an interrupt, or the rest.
        if stack
            .iter()
            .any(|f| f.sym == "handle_softirqs" || f.sym == "net_rx_action")
        {
            return Part::Sockets;
        }
        return Part::KernelOther;
    }
    user_part(leaf.sym)
}

/// The system call a kernel frame is the entry of. Frame-pointer stacks often lack the
/// `__x64_sys_*` wrapper (it tail-calls its body), leaving `do_writev`, `ksys_write`, ...
fn syscall_of(sym: &str) -> Option<&str> {
    if let Some(name) = sym
        .strip_prefix("__x64_sys_")
        .or_else(|| sym.strip_prefix("__do_sys_"))
    {
        return Some(name);
    }
    Some(match sym {
        "do_writev" => "writev",
        "do_readv" => "readv",
        "ksys_write" => "write",
        "ksys_read" => "read",
        "ksys_pwrite64" => "pwrite64",
        "ksys_lseek" => "lseek",
        "do_epoll_wait" => "epoll_wait",
        "do_futex" => "futex",
        "do_fsync" => "fsync",
        "__sys_sendto" => "sendto",
        "__sys_recvfrom" => "recvfrom",
        "__sys_sendmsg" => "sendmsg",
        "__sys_recvmsg" => "recvmsg",
        _ => return None,
    })
}

/// The part of system call `name`; `has(prefix)`: whether a kernel frame of the sample starts
/// so (`read`/`write` go to a socket, the journal file or inotify).
fn syscall_part(name: &str, has: &dyn Fn(&str) -> bool) -> Part {
    match name {
        "read" | "write" | "readv" | "writev" if has("sock_") => Part::Sockets,
        "read" if has("inotify_") => Part::JournalWatch,
        // An append that starts a page: the kernel zeroes the new page-cache page. In a VM
        // whose host takes freed guest memory back (virtio-balloon free page reporting), that
        // is the first touch of host memory, and it costs a host fault: shown on its own.
        "write" | "pwrite64" if has("zero_user_segments") || has("folio_zero") => {
            Part::JournalPages
        }
        "sendto" | "recvfrom" | "writev" | "readv" | "sendmsg" | "recvmsg" | "sendmmsg"
        | "shutdown" | "accept4" | "connect" => Part::Sockets,
        "epoll_wait" | "epoll_pwait" | "epoll_pwait2" | "epoll_ctl" => Part::Wait,
        "write" | "pwrite64" | "fdatasync" | "fsync" | "ftruncate" => Part::JournalWrite,
        "lseek" | "statx" | "newfstatat" | "newfstat" | "statfs" => Part::JournalWatch,
        _ => Part::KernelOther,
    }
}

fn user_part(sym: &str) -> Part {
    const PARTS: &[(&[&str], Part)] = &[
        (
            &[
                "pgwarden::audit::",
                "pgwarden::session::recorder",
                "sha2::",
                "hex::",
                "itoa::",
                "jiff::",
                "ryu::",
                "serde_json::",
            ],
            Part::Audit,
        ),
        (
            &[
                "pgwarden::mask::",
                "pgwarden::session::masking",
                "pgwarden::session::results",
            ],
            Part::Masking,
        ),
        (&["pgwarden::policy::", "sqlparser::"], Part::Policy),
        (&["pgwarden::sqltext::", "pgwarden::wire::"], Part::Wire),
        (&["pgwarden::", "bytes::"], Part::Relay),
        (
            &[
                "tokio::",
                "mio::",
                "__GI___pthread",
                "__vdso_clock_gettime",
                "clock_gettime",
            ],
            Part::Runtime,
        ),
        (
            &[
                "__memmove",
                "__memcpy",
                "__memset",
                "_int_malloc",
                "_int_free",
            ],
            Part::Alloc,
        ),
        (&["ZSTD_", "HUF_", "FSE_"], Part::Compression),
    ];
    // libc's entry points, by exact name (`free` must not take `freeaddrinfo`).
    const RUNTIME: &[&str] = &[
        "epoll_wait",
        "__send",
        "__libc_recv",
        "__GI___writev",
        "__GI___libc_write",
        "__libc_write",
        "read",
        "syscall",
    ];
    const ALLOC: &[&str] = &[
        "malloc",
        "cfree",
        "free",
        "realloc",
        "_int_realloc",
        "__libc_malloc",
        "__libc_free",
        "malloc_consolidate",
        "memcpy",
        "memmove",
    ];
    if RUNTIME.contains(&sym) {
        return Part::Runtime;
    }
    if ALLOC.contains(&sym) {
        return Part::Alloc;
    }
    let sym = sym.trim_start_matches('<');
    for (prefixes, part) in PARTS {
        if prefixes.iter().any(|p| sym.starts_with(p)) {
            return *part;
        }
    }
    Part::UserOther
}

/// Samples per part from `perf script` output (`-F comm,ip,sym,dso`, with callchains).
fn tally(script: &str) -> BTreeMap<Part, u64> {
    let mut counts = BTreeMap::new();
    let mut stack: Vec<Frame<'_>> = Vec::new();
    let mut in_sample = false;
    let flush = |stack: &mut Vec<Frame<'_>>, counts: &mut BTreeMap<Part, u64>| {
        if !stack.is_empty() {
            *counts.entry(classify(stack)).or_insert(0) += 1;
            stack.clear();
        }
    };
    for line in script.lines() {
        if line.trim().is_empty() {
            flush(&mut stack, &mut counts);
            in_sample = false;
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            // A sample's header (the command); its frames follow.
            flush(&mut stack, &mut counts);
            in_sample = true;
            continue;
        }
        if !in_sample {
            continue;
        }
        // "\t<ip> <symbol> (<dso>)"
        let frame = line.trim();
        let Some((_ip, rest)) = frame.split_once(' ') else {
            continue;
        };
        let (sym, dso) = match rest.rfind(" (") {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let sym = sym.split("+0x").next().unwrap_or(sym);
        stack.push(Frame {
            sym,
            kernel: dso.contains("kernel.kallsyms") || dso.contains("[kernel"),
        });
    }
    flush(&mut stack, &mut counts);
    counts
}

/// The system calls counted one by one (all of them are counted together as well): the
/// socket, file, polling and locking calls a proxy makes per transaction.
const SYSCALLS: [&str; 16] = [
    "read",
    "recvfrom",
    "recvmsg",
    "readv",
    "write",
    "writev",
    "sendto",
    "sendmsg",
    "pwrite64",
    "fdatasync",
    "lseek",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "futex",
    "io_uring_enter",
];
/// Every system call entered.
const ALL_SYSCALLS: &str = "raw_syscalls:sys_enter";

/// The perf events of the counting run: the allocation uprobes, every system call, and
/// [`SYSCALLS`] one by one.
fn counted_events(allocs: &[String]) -> Vec<String> {
    allocs
        .iter()
        .cloned()
        .chain(std::iter::once(ALL_SYSCALLS.to_owned()))
        .chain(SYSCALLS.iter().map(|c| format!("syscalls:sys_enter_{c}")))
        .collect()
}

/// Per transaction, from one counting run's `counts`: heap allocations, all system calls,
/// and each of [`SYSCALLS`].
fn per_txn(counts: &BTreeMap<String, u64>, allocs: &[String], txns: u64) -> Counted {
    #[allow(clippy::cast_precision_loss, reason = "event counts")]
    let per = |n: u64| n as f64 / txns as f64;
    let of = |event: &str| counts.get(event).copied().unwrap_or(0);
    Counted {
        allocs: per(allocs.iter().map(|e| of(e)).sum()),
        syscalls: per(of(ALL_SYSCALLS)),
        by_call: SYSCALLS
            .iter()
            .map(|c| (*c, per(of(&format!("syscalls:sys_enter_{c}")))))
            .collect(),
    }
}

/// What the counting run of one side found, per transaction.
#[derive(Debug, Default)]
struct Counted {
    allocs: f64,
    syscalls: f64,
    by_call: BTreeMap<&'static str, f64>,
}

/// glibc's allocation entry points; `free` is not counted (it follows one of these).
const ALLOC_FNS: [&str; 4] = ["malloc", "calloc", "realloc", "posix_memalign"];
/// The perf probe group the bench's uprobes live in.
const PROBE_GROUP: &str = "pgwarden_bench";

/// uprobes on `libc`'s allocation entry points, removed again on drop.
struct AllocProbes {
    events: Vec<String>,
}

impl AllocProbes {
    fn add(libc: &Path) -> Result<Self> {
        // Leftovers of an interrupted run would make `perf probe -a` refuse.
        Self::remove();
        let mut probe = Command::new("perf");
        probe.args(["probe", "-q", "-x"]).arg(libc);
        for f in ALLOC_FNS {
            probe.arg("-a").arg(format!("{PROBE_GROUP}:{f}={f}"));
        }
        cmd::run(&mut probe).context(
            "cannot put uprobes on libc's malloc (the budget counts heap allocations with them; \
             perf refuses a second probe where one is already: `perf probe -l` lists them)",
        )?;
        Ok(Self {
            events: ALLOC_FNS
                .iter()
                .map(|f| format!("{PROBE_GROUP}:{f}"))
                .collect(),
        })
    }

    fn remove() {
        let _ = Command::new("perf")
            .args(["probe", "-q", "-d", &format!("{PROBE_GROUP}:*")])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Drop for AllocProbes {
    fn drop(&mut self) {
        Self::remove();
    }
}

/// The libc process `pid` has mapped.
fn libc_of(pid: u32) -> Result<PathBuf> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            Path::new(p)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libc.so"))
        })
        .map(PathBuf::from)
        .with_context(|| format!("process {pid} maps no libc.so"))
}

/// The process of `side`.
fn side_pid(rig: &mut Rig, side: Side) -> Result<u32> {
    match (side, side.agent()) {
        (Side::PgBouncer, _) => Ok(rig.bouncer.pid()),
        (_, Some(which)) => Ok(rig.agent(which)?.pid()),
        (_, None) => bail!("{} has no proxy process", side.label()),
    }
}

/// One side's budget in one cell.
struct Column {
    side: Side,
    cpu_us: f64,
    samples: u64,
    /// Heap allocations and system calls per transaction (counted in a run of its own).
    counted: Counted,
    /// Microseconds per transaction by part.
    parts: BTreeMap<Part, f64>,
}

struct Cell {
    mode: QueryMode,
    clients: u32,
    columns: Vec<Column>,
}

struct Budget {
    seconds: u32,
    cells: Vec<Cell>,
    /// Whether this machine's virtio balloon reports free pages to its host (`None`: no
    /// balloon, or its features unreadable).
    free_page_reporting: Option<bool>,
}

/// Whether a virtio balloon of this machine has negotiated free page reporting
/// (`VIRTIO_BALLOON_F_REPORTING`, feature bit 5): its host then takes back guest memory that
/// stays free for a while, and the guest's next first touch of such a page is a host fault.
fn free_page_reporting() -> Option<bool> {
    const BALLOON: &str = "0x0005";
    const REPORTING_BIT: usize = 5;
    let devices = std::fs::read_dir("/sys/bus/virtio/devices").ok()?;
    devices.flatten().find_map(|d| {
        let id = std::fs::read_to_string(d.path().join("device")).ok()?;
        if id.trim() != BALLOON {
            return None;
        }
        let features = std::fs::read_to_string(d.path().join("features")).ok()?;
        Some(features.as_bytes().get(REPORTING_BIT) == Some(&b'1'))
    })
}

/// The sides whose CPU is broken down.
const SIDES: [Side; 3] = [Side::PgBouncer, Side::PgwardenRelay, Side::PgwardenPci];

/// Runs the cells under `perf` and breaks each proxy's CPU down.
pub fn budget(rig: &mut Rig) -> Result<Box<dyn Section>> {
    cmd::find_tool("perf").context(
        "perf not found: `cargo xtask setup` installs Debian's linux-perf, which the budget needs",
    )?;
    let plan = rig.plan.clone();
    let cells: Vec<(QueryMode, u32)> = if plan.smoke {
        vec![(QueryMode::Simple, 1)]
    } else {
        vec![
            (QueryMode::Simple, plan.max_clients()),
            (QueryMode::Extended, 1),
        ]
    };
    let dir = rig.work.join("perf");
    std::fs::create_dir_all(&dir)?;
    let libc = libc_of(side_pid(rig, Side::PgwardenPci)?)?;
    for side in SIDES {
        let theirs = libc_of(side_pid(rig, side)?)?;
        if theirs != libc {
            bail!(
                "{} maps {} and pgwarden {}: one set of uprobes cannot count both",
                side.label(),
                theirs.display(),
                libc.display()
            );
        }
    }
    let probes = AllocProbes::add(&libc)?;
    let events = counted_events(&probes.events);
    let mut out = Vec::new();
    for (mode, clients) in cells {
        let mut columns = Vec::new();
        for side in SIDES {
            rig.check_interrupt()?;
            let data = dir.join(format!("{}-{clients}-{}.data", mode.arg(), side.key()));
            let run = run_pgbench(rig, mode, clients, side, 1, Observe::Record(&data))?;
            let Some(cpu_us) = run.proxy_cpu_us else {
                bail!("no CPU time for {}", side.label());
            };
            let script = cmd::stdout_of(
                Command::new("perf")
                    .args(["script", "-F", "comm,ip,sym,dso", "-i"])
                    .arg(&data),
            )
            .with_context(|| format!("perf script -i {}", data.display()))?;
            let counts = tally(&script);
            let samples: u64 = counts.values().sum();
            if samples == 0 {
                bail!("perf recorded no sample of {}", side.label());
            }
            #[allow(clippy::cast_precision_loss, reason = "sample counts")]
            let parts = counts
                .iter()
                .map(|(p, n)| (*p, cpu_us * *n as f64 / samples as f64))
                .collect();
            let _ = std::fs::remove_file(&data);
            rig.check_interrupt()?;
            let run = run_pgbench(rig, mode, clients, side, 2, Observe::Count(&events))?;
            if run.transactions == 0 {
                bail!("the counting run of {} ran no transaction", side.label());
            }
            let counted = per_txn(&run.counts, &probes.events, run.transactions);
            println!(
                "  budget   {:<8} c={clients:<3} {:<38} {cpu_us:.1} µs/txn, {samples} samples, \
                 {:.1} allocations/txn, {:.2} system calls/txn",
                mode.arg(),
                side.label(),
                counted.allocs,
                counted.syscalls,
            );
            columns.push(Column {
                side,
                cpu_us,
                samples,
                counted,
                parts,
            });
        }
        out.push(Cell {
            mode,
            clients,
            columns,
        });
    }
    Ok(Box::new(Budget {
        seconds: plan.seconds,
        cells: out,
        free_page_reporting: free_page_reporting(),
    }))
}

impl Section for Budget {
    fn key(&self) -> &'static str {
        "budget"
    }

    fn markdown(&self) -> String {
        let mut md = format!(
            "## Where the proxy's CPU goes\n\n\
             One more `pgbench -S` run of {} s per side in the cells below, each proxy process \
             sampled by `perf record -g` (2,000 Hz). Every sample is put in one part: kernel \
             samples by the system call they sit under, user samples by their own function \
             (the release build has no frame pointers, so their callers are unknown and \
             `malloc`/`memcpy` stand on their own). A part's µs per transaction is its share of \
             the samples times the process's CPU per transaction in that run. Sampling costs the \
             run a little; compare the parts, not the totals, with the table above.\n\n\
             Heap allocations are counted, not sampled: uprobes on glibc's `malloc`, `calloc`, \
             `realloc` and `posix_memalign` (Rust's `System` allocator and PgBouncer both call \
             them), counted by `perf stat` over one more run per side and divided by its \
             transactions (the uprobes slow that run; its count per transaction is exact). \
             System calls are counted in the same run, with the kernel's `raw_syscalls` and \
             `syscalls` tracepoints, for every thread of the process.\n",
            self.seconds
        );
        md.push_str(match self.free_page_reporting {
            Some(true) => {
                "\nThis machine is a VM whose virtio balloon reports free pages to its host: \
                 memory the guest leaves free for about 2 s goes back to the host, and the \
                 guest's next touch of such a page is a host fault. The journal's appends put \
                 new pages into the page cache all the time, and the kernel's zeroing of each \
                 one (`zero_user_segments` under the file write) is where that fault is paid: \
                 it has a row of its own. On a host that keeps its memory, the row is small; \
                 PgBouncer writes no file and pays none of it.\n"
            }
            Some(false) => {
                "\nThis machine's virtio balloon does not report free pages: new page-cache \
                 pages cost what zeroing them costs.\n"
            }
            None => "",
        });
        for cell in &self.cells {
            let _ = write!(
                md,
                "\n### -M {} -c {}\n\n| part |",
                cell.mode.arg(),
                cell.clients
            );
            for c in &cell.columns {
                let _ = write!(md, " {} µs/txn |", c.side.label());
            }
            md.push_str("\n|---|");
            for _ in &cell.columns {
                md.push_str("---:|");
            }
            md.push('\n');
            for part in Part::ALL {
                if cell
                    .columns
                    .iter()
                    .all(|c| c.parts.get(&part).is_none_or(|v| *v < 0.05))
                {
                    continue;
                }
                let _ = write!(md, "| {} |", part.label());
                for c in &cell.columns {
                    let _ = write!(md, " {:.1} |", c.parts.get(&part).copied().unwrap_or(0.0));
                }
                md.push('\n');
            }
            md.push_str("| **total** (samples) |");
            for c in &cell.columns {
                let _ = write!(md, " **{:.1}** ({}) |", c.cpu_us, c.samples);
            }
            md.push_str("\n| heap allocations per transaction (counted) |");
            for c in &cell.columns {
                let _ = write!(md, " {:.1} |", c.counted.allocs);
            }
            md.push_str("\n| **system calls per transaction** (counted) |");
            for c in &cell.columns {
                let _ = write!(md, " **{:.2}** |", c.counted.syscalls);
            }
            md.push('\n');
            for call in SYSCALLS {
                let of = |c: &Column| c.counted.by_call.get(call).copied().unwrap_or(0.0);
                if cell.columns.iter().all(|c| of(c) < 0.005) {
                    continue;
                }
                let _ = write!(md, "| `{call}` |");
                for c in &cell.columns {
                    let _ = write!(md, " {:.2} |", of(c));
                }
                md.push('\n');
            }
        }
        md
    }

    fn json(&self) -> Value {
        json!(
            {"free_page_reporting": self.free_page_reporting,
             "cells": self.cells
                .iter()
                .map(|cell| json!({
                    "mode": cell.mode.arg(),
                    "clients": cell.clients,
                    "sides": cell.columns.iter().map(|c| json!({
                        "side": c.side.key(),
                        "cpu_us_per_txn": c.cpu_us,
                        "samples": c.samples,
                        "heap_allocations_per_txn": c.counted.allocs,
                        "syscalls_per_txn": c.counted.syscalls,
                        "syscalls_by_call_per_txn": c.counted.by_call,
                        "parts_us_per_txn": c.parts.iter()
                            .map(|(p, v)| (p.key().to_owned(), json!(v)))
                            .collect::<serde_json::Map<_, _>>(),
                    })).collect::<Vec<_>>(),
                }))
                .collect::<Vec<_>>()}
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "pgwarden 
\tffffffff8206e560 tcp_sendmsg_locked+0x10 ([kernel.kallsyms])
\tffffffff81e7e64d sock_write_iter ([kernel.kallsyms])
\tffffffff816d7ec5 do_writev ([kernel.kallsyms])
\tffffffff816d7ec6 __x64_sys_writev ([kernel.kallsyms])
\tffffffff8224d141 do_syscall_64 ([kernel.kallsyms])
\t          10f36 __GI___writev (/usr/lib/x86_64-linux-gnu/libc.so.6)

pgwarden 
\tffffffff815a2e7e generic_perform_write ([kernel.kallsyms])
\tffffffff816d96af ksys_write ([kernel.kallsyms])
\tffffffff816d96b0 __x64_sys_write ([kernel.kallsyms])
\t           f838f __GI___libc_write (/usr/lib/x86_64-linux-gnu/libc.so.6)

pgwarden 
\t          5a1b2 pgwarden::audit::canon::Prepared::seal (/work/target/release/pgwarden)

pgwarden 
\t          5a1b2 <pgwarden::mask::MaskSession as core::ops::Drop>::drop (/x/pgwarden)

pgwarden 
\t          1234 malloc (/usr/lib/x86_64-linux-gnu/libc.so.6)

pgwarden 
\tffffffff82089244 tcp_v4_rcv ([kernel.kallsyms])
\tffffffff82089245 net_rx_action ([kernel.kallsyms])
\tffffffff82089246 handle_softirqs ([kernel.kallsyms])

pgwarden 
\tffffffff82089244 finish_task_switch.isra.0 ([kernel.kallsyms])
\tffffffff82089245 __x64_sys_epoll_wait ([kernel.kallsyms])
";

    #[test]
    fn counts_become_per_transaction_figures() {
        let allocs = vec!["g:malloc".to_owned(), "g:calloc".to_owned()];
        let events = counted_events(&allocs);
        assert!(events.contains(&"raw_syscalls:sys_enter".to_owned()));
        assert!(events.contains(&"syscalls:sys_enter_writev".to_owned()));
        let counts: BTreeMap<String, u64> = [
            ("g:malloc", 300),
            ("g:calloc", 100),
            ("raw_syscalls:sys_enter", 450),
            ("syscalls:sys_enter_writev", 100),
            ("syscalls:sys_enter_recvfrom", 200),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let c = per_txn(&counts, &allocs, 100);
        assert!((c.allocs - 4.0).abs() < 1e-9, "{c:?}");
        assert!((c.syscalls - 4.5).abs() < 1e-9, "{c:?}");
        assert!((c.by_call["writev"] - 1.0).abs() < 1e-9, "{c:?}");
        assert!((c.by_call["recvfrom"] - 2.0).abs() < 1e-9, "{c:?}");
        assert!(c.by_call["futex"].abs() < 1e-9, "{c:?}");
    }

    #[test]
    fn samples_go_to_their_parts() {
        let t = tally(SCRIPT);
        let want: BTreeMap<Part, u64> = [
            (Part::Sockets, 2),
            (Part::JournalWrite, 1),
            (Part::Audit, 1),
            (Part::Masking, 1),
            (Part::Alloc, 1),
            (Part::Wait, 1),
        ]
        .into_iter()
        .collect();
        assert_eq!(t, want);
    }

    #[test]
    fn system_calls_are_found_without_their_wrapper() {
        // As frame-pointer stacks show them: the `__x64_sys_*` frame tail-called away.
        let script = "pgwarden \n\
\tffffffff8206e560 tcp_sendmsg ([kernel.kallsyms])\n\
\tffffffff81e7e64d sock_write_iter ([kernel.kallsyms])\n\
\tffffffff816d7ec5 do_writev ([kernel.kallsyms])\n\
\tffffffff8224d141 do_syscall_64 ([kernel.kallsyms])\n\
\n\
pgwarden \n\
\tffffffff815a2e7e __pi_memset ([kernel.kallsyms])\n\
\tffffffff815a2e7f ext4_da_write_begin ([kernel.kallsyms])\n\
\tffffffff816d96af ksys_write ([kernel.kallsyms])\n\
\tffffffff8224d141 do_syscall_64 ([kernel.kallsyms])\n\
\n\
pgwarden \n\
\tffffffff8224280b __pi_memset ([kernel.kallsyms])\n\
\tffffffff817e3984 zero_user_segments ([kernel.kallsyms])\n\
\tffffffff817e9bca ext4_block_write_begin ([kernel.kallsyms])\n\
\tffffffff815a2e7f ext4_da_write_begin ([kernel.kallsyms])\n\
\tffffffff816d96af ksys_write ([kernel.kallsyms])\n\
\n\
pgwarden \n\
\tffffffff815a2e70 inotify_read ([kernel.kallsyms])\n\
\tffffffff816d96a0 ksys_read ([kernel.kallsyms])\n\
\n\
pgwarden \n\
\tffffffff815a2e71 tcp_recvmsg ([kernel.kallsyms])\n\
\tffffffff815a2e72 sock_read_iter ([kernel.kallsyms])\n\
\tffffffff816d96a1 ksys_read ([kernel.kallsyms])\n\
\n\
pgwarden \n\
\tffffffff815a2e73 schedule_hrtimeout_range ([kernel.kallsyms])\n\
\tffffffff816d96a2 do_epoll_wait ([kernel.kallsyms])\n\
\n\
pgwarden \n\
\tffffffff815a2e74 futex_wait ([kernel.kallsyms])\n\
\tffffffff816d96a3 do_futex ([kernel.kallsyms])\n";
        let want: BTreeMap<Part, u64> = [
            (Part::Sockets, 2),
            (Part::JournalWrite, 1),
            (Part::JournalPages, 1),
            (Part::JournalWatch, 1),
            (Part::Wait, 1),
            (Part::KernelOther, 1),
        ]
        .into_iter()
        .collect();
        assert_eq!(tally(script), want);
    }

    #[test]
    fn unknown_code_is_other_not_dropped() {
        let t = tally("pgbouncer \n\t 1 sbuf_process_pending (/usr/sbin/pgbouncer)\n");
        assert_eq!(t.get(&Part::UserOther), Some(&1));
        assert_eq!(user_part("freeaddrinfo"), Part::UserOther);
        assert_eq!(user_part("free"), Part::Alloc);
        assert_eq!(user_part("readdir"), Part::UserOther);
        assert_eq!(
            classify(&[Frame {
                sym: "__x64_sys_futex",
                kernel: true
            }]),
            Part::KernelOther
        );
    }
}
