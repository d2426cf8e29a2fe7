//! What the host must have before the kernel programs load: capabilities, kernel version, the
//! Unix hooks' kfuncs and context layout, and the tracepoint record layouts the programs read.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::btf::KernelBtf;

/// Why the kernel side cannot run here.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// What this host lacks, each item in words; shown joined by `; `.
    #[error("{}", .0.join("; "))]
    Missing(Vec<String>),
    /// The running kernel's BTF could not be read, so the Unix programs cannot be checked.
    #[error("{0:#}")]
    NoBtf(anyhow::Error),
}

impl PreflightError {
    /// `Ok` if nothing is `missing`.
    fn check(missing: Vec<String>) -> Result<(), Self> {
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Self::Missing(missing))
        }
    }
}

/// Says what this host lacks for the kernel side, all at once, or nothing.
pub fn preflight() -> Result<(), PreflightError> {
    let mut missing = Vec::new();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let has = |c: u32| cap_eff & (1 << c) != 0;
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("capability CAP_BPF (or CAP_SYS_ADMIN) to load eBPF programs".to_owned());
    }
    if !has(CAP_NET_ADMIN) && !has(CAP_SYS_ADMIN) {
        missing.push("capability CAP_NET_ADMIN to attach cgroup socket programs".to_owned());
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("capability CAP_PERFMON for the cgroup_mkdir tracepoint".to_owned());
    }
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut parts = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (5, 9) {
        missing.push(format!(
            "Linux 5.9 or newer (cgroup getpeername and sock_release hooks, ring buffers); this is {release}"
        ));
    }
    if !Path::new("/sys/fs/bpf").exists()
        && !Path::new("/proc/sys/kernel/bpf_stats_enabled").exists()
    {
        missing.push("a kernel built with CONFIG_BPF_SYSCALL".to_owned());
    }
    PreflightError::check(missing)
}

/// Checks that this kernel can run the Unix socket programs: the `connect_unix` and
/// `getpeername_unix` hooks and their kfuncs (Linux 6.7), and the layout of the kernel context
/// they read. Says everything that is missing at once.
pub(super) fn unix_preflight(btf: &KernelBtf) -> Result<(), PreflightError> {
    let mut missing = Vec::new();
    for f in ["bpf_cast_to_kern_ctx", "bpf_sock_addr_set_sun_path"] {
        if btf.func_id(f).is_none() {
            missing.push(format!("the kfunc {f} (Linux 6.7 or newer)"));
        }
    }
    for (st, member, want) in [
        ("bpf_sock_addr_kern", "uaddr", 8),
        ("bpf_sock_addr_kern", "uaddrlen", 32),
    ] {
        match btf.member_offset(st, member) {
            None => missing.push(format!("struct {st}.{member} in this kernel's BTF")),
            Some(got) if got != want => missing.push(format!(
                "struct {st}.{member} at offset {want} (this kernel has it at {got})"
            )),
            Some(_) => {}
        }
    }
    PreflightError::check(missing)
}

/// [`unix_preflight`] against the running kernel's BTF.
pub(super) fn unix_preflight_here() -> Result<(), PreflightError> {
    let btf = KernelBtf::from_sys_fs().map_err(PreflightError::NoBtf)?;
    unix_preflight(&btf)
}

const TRACEFS_CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Mounts tracefs if it is not, and returns its path.
pub(super) fn tracefs() -> anyhow::Result<PathBuf> {
    for c in TRACEFS_CANDIDATES {
        if Path::new(c).join("events").is_dir() {
            return Ok(PathBuf::from(c));
        }
    }
    let target = TRACEFS_CANDIDATES[0];
    nix::mount::mount(
        Some("tracefs"),
        target,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("tracefs is not mounted and mounting it at {target} failed"))?;
    Ok(PathBuf::from(target))
}

/// Checks that the `cgroup_mkdir` tracepoint record has the layout the kernel program reads.
pub(super) fn check_mkdir_format(tracefs: &Path) -> anyhow::Result<()> {
    check_format(
        tracefs,
        "cgroup_mkdir",
        &[
            ("int root;", 8),
            ("u64 id;", 16),
            ("__data_loc char[] path;", 24),
        ],
    )
}

/// Checks that the `cgroup_attach_task` tracepoint record has the layout the program reads.
pub(super) fn check_attach_format(tracefs: &Path) -> anyhow::Result<()> {
    check_format(
        tracefs,
        "cgroup_attach_task",
        &[("int dst_root;", 8), ("u64 dst_id;", 16), ("int pid;", 24)],
    )
}

/// Checks that a `cgroup:` tracepoint record has `fields` at the offsets the program reads.
fn check_format(tracefs: &Path, event: &str, fields: &[(&str, usize)]) -> anyhow::Result<()> {
    let file = tracefs.join(format!("events/cgroup/{event}/format"));
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    for &(field, offset) in fields {
        let ok = text.lines().any(|l| {
            l.contains(&format!("field:{field}")) && l.contains(&format!("offset:{offset};"))
        });
        if !ok {
            bail!(
                "{}: field `{field}` is not at offset {offset}; this kernel's {event} tracepoint differs",
                file.display()
            );
        }
    }
    Ok(())
}
