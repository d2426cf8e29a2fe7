//! The kernel side, seen from the agent: loads the embedded eBPF object, fills its maps,
//! attaches its programs to the cgroup2 root, and answers "where was this connection going?".
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use agent_common::{
    AGENT_CONFIG, AgentConfig, CGROUP_EVENTS, CONFIG_HAS_UNIX, CONFIG_HAS_V4, CONFIG_HAS_V6,
    COUNTER_NAMES, COUNTERS, CgroupEvent, ConnectRecord, INTERCEPT_DESTS, ORIGIN_BY_TUPLE,
    PG_SOCKET_PREFIX, PathBuf as KernelPath, STICKY_PATHS, TAGGED_CGROUPS, TupleKey,
    UNIX_ALLOW_SOCKET, UNIX_INTERCEPT, UNIX_MATCH_DIR, UNIX_MATCH_SOCKET, UNIX_ORIGIN_BY_COOKIE,
    UNIX_PATH_LEN, UNIX_SCRATCH, UnixConnectRecord, UnixPath,
};
use anyhow::{Context as _, anyhow, bail};
use aya::Ebpf;
use aya::maps::lpm_trie::Key;
use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf};
use aya::programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, SockOps, TracePoint};
use serde::Serialize;

use crate::btf::KernelBtf;
use crate::cgroup::CgroupPath;
use crate::dest::Destination;
use crate::names::{CgroupId, WorkloadId};
use crate::tags::TagSink;

/// The compiled kernel programs, built by build.rs and embedded in the binary.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pgwarden"));
/// The Unix socket programs (loaded by [`crate::bpfload`]: they call kfuncs).
static EBPF_UNIX_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pgwarden-unix"));

/// What the agent attached, for status.
#[derive(Clone, Debug, Serialize)]
pub struct AttachPoint {
    /// Program name in the object.
    pub program: String,
    /// Hook.
    pub hook: String,
    /// Where: a cgroup directory or a tracepoint.
    pub target: String,
}

/// Listen addresses and identity the kernel programs need.
pub struct KernelConfig<'a> {
    /// IPv4 listen address.
    pub listen_v4: Option<std::net::SocketAddrV4>,
    /// IPv6 listen address.
    pub listen_v6: Option<std::net::SocketAddrV6>,
    /// Intercepted destinations.
    pub intercept: &'a [Destination],
    /// The agent's pid.
    pub agent_tgid: u32,
    /// bpffs directory where maps and links are pinned.
    pub pin_dir: &'a Path,
    /// The Unix listener's `sun_path` (abstract: leading NUL); `None`: Unix connects to
    /// intercepted sockets are refused rather than redirected.
    pub unix_listen: Option<Vec<u8>>,
    /// Intercepted Unix socket directories and paths.
    pub intercept_unix: &'a [PathBuf],
    /// Unix sockets (or directories of them) tagged workloads may connect to directly.
    pub unix_allow: &'a [PathBuf],
    /// Run without the Unix socket programs when this kernel cannot load them (loudly).
    pub allow_tcp_only: bool,
}

/// Checks that this kernel can run the Unix socket programs: the `connect_unix` and
/// `getpeername_unix` hooks and their kfuncs (Linux 6.7), and the layout of the kernel context
/// they read. Says everything that is missing at once.
fn unix_preflight(btf: &KernelBtf) -> Result<(), String> {
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
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join("; "))
    }
}

/// The [`UNIX_INTERCEPT`] rules for the configured paths, as (prefix bytes, rule): a path whose
/// last component is a PostgreSQL socket name (or that is a socket) is one socket (`PATH\0`),
/// anything else a directory whose PostgreSQL sockets are intercepted (`DIR/.s.PGSQL.`).
/// `unix_allow` entries are single sockets (`PATH\0`); an intercept rule wins over an allow
/// rule for the same name. Each path is also entered in its canonical form (`/var/run` is a
/// symlink to `/run` on Debian), since the program compares the name the client used.
pub fn unix_rules(intercept: &[PathBuf], allow: &[PathBuf]) -> Vec<(Vec<u8>, u32)> {
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::fs::FileTypeExt as _;
    let mut out: Vec<(Vec<u8>, u32)> = Vec::new();
    let mut push = |bytes: Vec<u8>, rule: u32| {
        if bytes.len() > UNIX_PATH_LEN {
            return;
        }
        match out.iter_mut().find(|(b, _)| *b == bytes) {
            Some(existing) => existing.1 = rule,
            None => out.push((bytes, rule)),
        }
    };
    let forms = |p: &PathBuf, socket: bool| -> Vec<Vec<u8>> {
        let canonical = if socket {
            p.parent()
                .and_then(|d| std::fs::canonicalize(d).ok())
                .zip(p.file_name())
                .map(|(d, n)| d.join(n))
        } else {
            std::fs::canonicalize(p).ok()
        };
        let mut v: Vec<Vec<u8>> = Vec::new();
        for form in std::iter::once(p.clone()).chain(canonical) {
            let mut bytes = form.as_os_str().as_bytes().to_vec();
            while bytes.len() > 1 && bytes.last() == Some(&b'/') {
                bytes.pop();
            }
            if !v.contains(&bytes) {
                v.push(bytes);
            }
        }
        v
    };
    for p in allow {
        for mut b in forms(p, true) {
            b.push(0);
            push(b, UNIX_ALLOW_SOCKET);
        }
    }
    for p in intercept {
        let socket = p
            .file_name()
            .is_some_and(|n| n.as_bytes().starts_with(PG_SOCKET_PREFIX))
            || std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket());
        for mut b in forms(p, socket) {
            if socket {
                b.push(0);
                push(b, UNIX_MATCH_SOCKET);
            } else {
                if b.last() != Some(&b'/') {
                    b.push(b'/');
                }
                b.extend_from_slice(PG_SOCKET_PREFIX);
                push(b, UNIX_MATCH_DIR);
            }
        }
    }
    out
}

/// The kernel's event streams for the agent.
pub struct Events {
    /// A [`CgroupEvent`] per cgroup2 mkdir.
    pub mkdir: RingBuf<MapData>,
    /// An [`agent_common::AttachEvent`] per process moved into a cgroup2 cgroup.
    pub attach: RingBuf<MapData>,
}

/// The loaded programs and their maps.
pub struct Redirect {
    ebpf: Ebpf,
    // Maps taken out of `ebpf` stay open here: programs are loaded after `load` returns and
    // their map references are these fds.
    _config: Array<MapData, AgentConfig>,
    _dests: LpmTrie<MapData, agent_common::DestKey, u32>,
    _unix_rules: LpmTrie<MapData, UnixPath, u32>,
    tagged: HashMap<MapData, u64, u32>,
    sticky: HashMap<MapData, KernelPath, u32>,
    origins: HashMap<MapData, TupleKey, ConnectRecord>,
    counters: PerCpuArray<MapData, u64>,
    unix_origins: HashMap<MapData, u64, UnixConnectRecord>,
    attached: Vec<AttachPoint>,
    pin_dir: PathBuf,
    /// Whether the maps were adopted from a previous run's pins.
    pub adopted: bool,
    /// Why the Unix socket programs are not loaded (`--tcp-only` on a kernel without them).
    pub unix_disabled: Option<String>,
}

/// Every map of the object: all are pinned, so a restarted agent finds the same state and
/// the programs left attached by the previous run keep working on it.
const PINNED_MAPS: [&str; 13] = [
    AGENT_CONFIG,
    TAGGED_CGROUPS,
    INTERCEPT_DESTS,
    agent_common::ORIGIN_BY_COOKIE,
    ORIGIN_BY_TUPLE,
    STICKY_PATHS,
    CGROUP_EVENTS,
    COUNTERS,
    agent_common::PATH_SCRATCH,
    UNIX_INTERCEPT,
    UNIX_ORIGIN_BY_COOKIE,
    UNIX_SCRATCH,
    agent_common::ATTACH_EVENTS,
];

/// The maps the Unix socket programs name (all of them pinned, see [`PINNED_MAPS`]).
const UNIX_PROGRAM_MAPS: [&str; 6] = [
    AGENT_CONFIG,
    TAGGED_CGROUPS,
    COUNTERS,
    UNIX_INTERCEPT,
    UNIX_ORIGIN_BY_COOKIE,
    UNIX_SCRATCH,
];

/// Makes sure a bpffs is mounted at `/sys/fs/bpf` (systemd does it; a bare host may not).
fn ensure_bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounted = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        f.nth(4) == Some("/sys/fs/bpf")
            && l.split(" - ").nth(1).is_some_and(|t| t.starts_with("bpf "))
    });
    if !mounted {
        nix::mount::mount(Some("bpf"), "/sys/fs/bpf", Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .context("no bpffs at /sys/fs/bpf and mounting one failed (pins keep redirection in place across restarts)")?;
    }
    Ok(())
}

/// Pins `link` at `path`, replacing a link pinned there by a previous run. The new link is
/// attached before the old one goes: there is no moment without the program.
fn replace_pin(
    link: aya::programs::links::FdLink,
    path: &Path,
) -> anyhow::Result<aya::programs::links::PinnedLink> {
    let old = unpin_old(path)?;
    let pinned = link
        .pin(path)
        .with_context(|| format!("pinning {}", path.display()))?;
    drop(old);
    Ok(pinned)
}

/// As [`replace_pin`], for a link the agent created itself (the Unix programs).
fn replace_pin_fd(link: std::os::fd::OwnedFd, path: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsFd as _;
    let old = unpin_old(path)?;
    agent_sys::obj_pin(link.as_fd(), path)
        .with_context(|| format!("pinning {}", path.display()))?;
    drop(old);
    Ok(())
}

/// Takes the link a previous run pinned at `path` out of bpffs, still attached until dropped.
fn unpin_old(path: &Path) -> anyhow::Result<Option<aya::programs::links::FdLink>> {
    let old = if path.exists() {
        match aya::programs::links::PinnedLink::from_pin(path) {
            Ok(old) => Some(
                old.unpin()
                    .with_context(|| format!("unpinning {}", path.display()))?,
            ),
            Err(_) => {
                std::fs::remove_file(path)
                    .with_context(|| format!("removing stale pin {}", path.display()))?;
                None
            }
        }
    } else {
        None
    };
    Ok(old)
}

/// Removes every pin under `pin_dir`: the programs detach and the maps go. The only way to
/// stop interception.
pub fn detach(pin_dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e).with_context(|| format!("reading {}", pin_dir.display())),
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    // Links first, so no program runs against a map that is going away.
    paths.sort_by_key(|p| {
        !p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("link_"))
    });
    for p in paths {
        std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        removed.push(p.display().to_string());
    }
    std::fs::remove_dir(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))?;
    Ok(removed)
}

const TRACEFS_CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Says what this host lacks for the kernel side, all at once, or nothing.
pub fn preflight() -> Result<(), String> {
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
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join("; "))
    }
}

/// Mounts tracefs if it is not, and returns its path.
fn tracefs() -> anyhow::Result<PathBuf> {
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
fn check_mkdir_format(tracefs: &Path) -> anyhow::Result<()> {
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

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &str,
) -> anyhow::Result<T> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
    T::try_from(map).with_context(|| format!("map {name}"))
}

impl Redirect {
    /// Loads the programs and fills the configuration maps; attaches the mkdir tracepoint.
    /// Nothing is redirected until [`Redirect::attach`].
    pub fn load(cfg: &KernelConfig<'_>) -> anyhow::Result<(Self, Events)> {
        if let Err(missing) = preflight() {
            bail!("cannot load pgwarden's eBPF programs: missing {missing}");
        }
        ensure_bpffs()?;
        let pin_dir = cfg.pin_dir.to_path_buf();
        let adopted = pin_dir.join(TAGGED_CGROUPS).exists();
        {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&pin_dir)
                .with_context(|| format!("creating the pin directory {}", pin_dir.display()))?;
        }
        let mut loader = aya::EbpfLoader::new();
        let paths: Vec<(&str, PathBuf)> =
            PINNED_MAPS.iter().map(|m| (*m, pin_dir.join(m))).collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT).with_context(|| {
            format!(
                "loading the embedded eBPF object (maps pinned in {}; if a different pgwarden version left them, run `pgwarden detach`)",
                pin_dir.display()
            )
        })?;
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
            let o = v6.ip().octets();
            for (i, w) in listen_v6.iter_mut().enumerate() {
                *w = u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]);
            }
            if port != 0 && port != v6.port() {
                bail!(
                    "listen.ipv4 and listen.ipv6 must use the same port ({port} vs {})",
                    v6.port()
                );
            }
            port = v6.port();
        }
        // The Unix programs need a kernel that has them; without, only `--tcp-only` runs.
        let unix = KernelBtf::from_sys_fs()
            .map_err(|e| format!("{e:#}"))
            .and_then(|btf| unix_preflight(&btf));
        let unix = match unix {
            Ok(()) => Ok(()),
            Err(missing) if cfg.allow_tcp_only => {
                tracing::error!(
                    "Unix socket interception is OFF (--tcp-only): this kernel lacks {missing}. \
                     Tagged workloads can reach PostgreSQL's Unix socket directly, unaudited"
                );
                Err(missing)
            }
            Err(missing) => bail!(
                "cannot intercept Unix socket connects: missing {missing}. Tagged workloads \
                 could reach PostgreSQL's Unix socket around pgwarden; refusing to start \
                 (`pgwarden run --tcp-only` runs without, loudly)"
            ),
        };
        let mut agent_config = AgentConfig {
            listen_v4,
            listen_v6,
            listen_port: port,
            flags,
            agent_tgid: cfg.agent_tgid,
            ..AgentConfig::default()
        };
        if unix.is_ok()
            && let Some(name) = &cfg.unix_listen
        {
            let key = UnixPath::from_bytes(name)
                .ok_or_else(|| anyhow!("listen.unix is longer than {UNIX_PATH_LEN} bytes"))?;
            agent_config.unix_listen = key.bytes;
            agent_config.unix_listen_len = u32::try_from(name.len())?;
            agent_config.flags |= CONFIG_HAS_UNIX;
        }
        let mut config: Array<_, AgentConfig> = take(&mut ebpf, AGENT_CONFIG)?;
        config.set(0, agent_config, 0)?;
        let mut unix_rules_map: LpmTrie<_, UnixPath, u32> = take(&mut ebpf, UNIX_INTERCEPT)?;
        // New rules first, then the previous run's stale ones (as for `intercept`).
        let mut wanted = Vec::new();
        for (bytes, rule) in unix_rules(cfg.intercept_unix, cfg.unix_allow) {
            let Some(data) = UnixPath::from_bytes(&bytes) else {
                continue;
            };
            let bits = u32::try_from(bytes.len() * 8)?;
            unix_rules_map
                .insert(&Key::new(bits, data), rule, 0)
                .with_context(|| {
                    format!(
                        "intercept_unix/unix_allow {}",
                        String::from_utf8_lossy(&bytes)
                    )
                })?;
            wanted.push((bits, data));
        }
        let stale: Vec<Key<UnixPath>> = unix_rules_map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(&(k.prefix_len(), k.data())))
            .collect();
        for k in stale {
            let _ = unix_rules_map.remove(&k);
        }
        let mut dests: LpmTrie<_, agent_common::DestKey, u32> = take(&mut ebpf, INTERCEPT_DESTS)?;
        // New destinations first, then the previous run's stale ones: never a moment where a
        // configured destination is not intercepted.
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
        let stale: Vec<Key<agent_common::DestKey>> = dests
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(&(k.prefix_len(), k.data())))
            .collect();
        for k in stale {
            let _ = dests.remove(&k);
        }
        let events: RingBuf<MapData> = take(&mut ebpf, CGROUP_EVENTS)?;
        let attach_events: RingBuf<MapData> = take(&mut ebpf, agent_common::ATTACH_EVENTS)?;
        let mut this = Self {
            tagged: take(&mut ebpf, TAGGED_CGROUPS)?,
            sticky: take(&mut ebpf, STICKY_PATHS)?,
            origins: take(&mut ebpf, ORIGIN_BY_TUPLE)?,
            counters: take(&mut ebpf, COUNTERS)?,
            unix_origins: take(&mut ebpf, UNIX_ORIGIN_BY_COOKIE)?,
            _config: config,
            _dests: dests,
            _unix_rules: unix_rules_map,
            ebpf,
            attached: Vec::new(),
            pin_dir,
            adopted,
            unix_disabled: unix.err(),
        };
        let tracefs = tracefs()?;
        check_mkdir_format(&tracefs)?;
        let tp: &mut TracePoint = this
            .ebpf
            .program_mut("cgroup_mkdir")
            .ok_or_else(|| anyhow!("program cgroup_mkdir missing"))?
            .try_into()?;
        tp.load().context("loading cgroup_mkdir")?;
        let id = tp
            .attach("cgroup", "cgroup_mkdir")
            .context("attaching tracepoint cgroup:cgroup_mkdir")?;
        let link: aya::programs::links::FdLink =
            tp.take_link(id)?.try_into().context("tracepoint link")?;
        replace_pin(link, &this.pin_dir.join("link_cgroup_mkdir"))?;
        this.attached.push(AttachPoint {
            program: "cgroup_mkdir".into(),
            hook: "tracepoint".into(),
            target: "cgroup:cgroup_mkdir".into(),
        });
        check_format(
            &tracefs,
            "cgroup_attach_task",
            &[("int dst_root;", 8), ("u64 dst_id;", 16), ("int pid;", 24)],
        )?;
        let tp: &mut TracePoint = this
            .ebpf
            .program_mut("cgroup_attach_task")
            .ok_or_else(|| anyhow!("program cgroup_attach_task missing"))?
            .try_into()?;
        tp.load().context("loading cgroup_attach_task")?;
        let id = tp
            .attach("cgroup", "cgroup_attach_task")
            .context("attaching tracepoint cgroup:cgroup_attach_task")?;
        let link: aya::programs::links::FdLink =
            tp.take_link(id)?.try_into().context("tracepoint link")?;
        replace_pin(link, &this.pin_dir.join("link_cgroup_attach_task"))?;
        this.attached.push(AttachPoint {
            program: "cgroup_attach_task".into(),
            hook: "tracepoint".into(),
            target: "cgroup:cgroup_attach_task".into(),
        });
        Ok((
            this,
            Events {
                mkdir: events,
                attach: attach_events,
            },
        ))
    }

    /// Attaches the socket programs to the cgroup2 root: from here on, tagged workloads'
    /// connects are redirected.
    pub fn attach(&mut self, cgroup_root: &Path) -> anyhow::Result<()> {
        let target = cgroup_root.display().to_string();
        let open = || File::open(cgroup_root).with_context(|| format!("opening {target}"));
        // sock_ops and sock_release first: once connect4/6 redirect, re-keying must be live.
        {
            let p: &mut SockOps = self.program("sock_ops")?.try_into()?;
            p.load().context("loading sock_ops")?;
            let id = p
                .attach(open()?, CgroupAttachMode::Single)
                .context("attaching sock_ops")?;
            let link: aya::programs::links::FdLink =
                p.take_link(id)?.try_into().context("sock_ops link")?;
            replace_pin(link, &self.pin_dir.join("link_sock_ops"))?;
            self.attached.push(AttachPoint {
                program: "sock_ops".into(),
                hook: "sock_ops".into(),
                target: target.clone(),
            });
        }
        {
            let p: &mut CgroupSock = self.program("sock_release")?.try_into()?;
            p.load().context("loading sock_release")?;
            let id = p
                .attach(open()?, CgroupAttachMode::Single)
                .context("attaching sock_release")?;
            let link: aya::programs::links::FdLink =
                p.take_link(id)?.try_into().context("sock_release link")?;
            replace_pin(link, &self.pin_dir.join("link_sock_release"))?;
            self.attached.push(AttachPoint {
                program: "sock_release".into(),
                hook: "cgroup/sock_release".into(),
                target: target.clone(),
            });
        }
        if self.unix_disabled.is_none() {
            self.attach_unix(cgroup_root)?;
        }
        for name in ["getpeername4", "getpeername6", "connect4", "connect6"] {
            let p: &mut CgroupSockAddr = self.program(name)?.try_into()?;
            p.load().with_context(|| format!("loading {name}"))?;
            let id = p
                .attach(open()?, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name}"))?;
            let link: aya::programs::links::FdLink = p
                .take_link(id)?
                .try_into()
                .with_context(|| format!("{name} link"))?;
            replace_pin(link, &self.pin_dir.join(format!("link_{name}")))?;
            self.attached.push(AttachPoint {
                program: name.into(),
                hook: format!("cgroup/{name}"),
                target: target.clone(),
            });
        }
        Ok(())
    }

    /// Attaches the Unix socket programs: getpeername first, then the redirect itself.
    fn attach_unix(&mut self, cgroup_root: &Path) -> anyhow::Result<()> {
        use std::os::fd::AsFd as _;
        let target = cgroup_root.display().to_string();
        let btf = KernelBtf::from_sys_fs()?;
        let maps: Vec<(&str, MapData)> = UNIX_PROGRAM_MAPS
            .iter()
            .map(|m| {
                MapData::from_pin(self.pin_dir.join(m))
                    .map(|d| (*m, d))
                    .with_context(|| format!("opening the pinned map {m}"))
            })
            .collect::<anyhow::Result<_>>()?;
        let fds: std::collections::HashMap<&str, std::os::fd::BorrowedFd<'_>> =
            maps.iter().map(|(n, d)| (*n, d.fd().as_fd())).collect();
        let root = File::open(cgroup_root).with_context(|| format!("opening {target}"))?;
        for (name, attach_type) in [
            (
                "getpeername_unix",
                agent_sys::ATTACH_CGROUP_UNIX_GETPEERNAME,
            ),
            ("connect_unix", agent_sys::ATTACH_CGROUP_UNIX_CONNECT),
        ] {
            let section = format!("cgroup/{name}");
            let prog = crate::bpfload::load_sock_addr(
                EBPF_UNIX_OBJECT,
                &section,
                attach_type,
                &fds,
                &btf,
            )?;
            let link = agent_sys::link_create(prog.as_fd(), root.as_fd(), attach_type)
                .with_context(|| format!("attaching {section}"))?;
            replace_pin_fd(link, &self.pin_dir.join(format!("link_{name}")))?;
            self.attached.push(AttachPoint {
                program: name.into(),
                hook: section,
                target: target.clone(),
            });
        }
        Ok(())
    }

    /// The record of a redirected Unix connection, by the client socket's cookie. It stays in
    /// the map (getpeername on the client reads it) until the LRU evicts it; a stream socket
    /// connects once, so no other connection can carry the same cookie.
    pub fn unix_origin(&self, client_cookie: u64) -> Option<UnixConnectRecord> {
        self.unix_origins.get(&client_cookie, 0).ok()
    }

    /// Files `record` under the cookie of the interceptor's accepted socket too: the kernel
    /// runs `getpeername_unix` on the *peer* of the socket asked (ours), so that is where the
    /// program finds the name to answer the client with.
    pub fn note_unix_peer(&mut self, accepted_cookie: u64, record: &UnixConnectRecord) {
        if let Err(e) = self.unix_origins.insert(accepted_cookie, *record, 0) {
            tracing::debug!("cannot file the Unix record for getpeername: {e}");
        }
    }

    fn program(&mut self, name: &str) -> anyhow::Result<&mut aya::programs::Program> {
        self.ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))
    }

    /// Takes the record of an accepted connection: where it was going, and who made it.
    pub fn take_origin(
        &mut self,
        client: SocketAddr,
        server: SocketAddr,
        netns: u64,
    ) -> Option<ConnectRecord> {
        let key = tuple_key(client, server, netns);
        let Ok(record) = self.origins.get(&key, 0) else {
            if tracing::enabled!(tracing::Level::DEBUG) {
                let stored: Vec<_> = self.origins.keys().filter_map(Result::ok).take(8).collect();
                tracing::debug!(?key, ?stored, "no record for this 4-tuple");
            }
            return None;
        };
        let _ = self.origins.remove(&key);
        Some(record)
    }

    /// The cgroup ids tagged in the kernel map (after a restart: the previous run's).
    pub fn tagged_ids(&self) -> Vec<CgroupId> {
        self.tagged
            .keys()
            .filter_map(Result::ok)
            .map(CgroupId)
            .collect()
    }

    /// The sticky paths in the kernel map.
    pub fn sticky_paths(&self) -> Vec<CgroupPath> {
        self.sticky
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

    /// Where the pins are.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// What is attached.
    pub fn attached(&self) -> &[AttachPoint] {
        &self.attached
    }

    /// The kernel programs' counters, summed over CPUs.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        COUNTER_NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let sum = u32::try_from(i)
                    .ok()
                    .and_then(|i| self.counters.get(&i, 0).ok())
                    .map_or(0, |v| v.iter().sum());
                (*name, sum)
            })
            .collect()
    }
}

impl TagSink for Redirect {
    fn tag(&mut self, id: CgroupId, workload: WorkloadId) -> anyhow::Result<()> {
        self.tagged
            .insert(id.0, workload.0, 0)
            .with_context(|| format!("tagging cgroup {}", id.0))
    }

    fn untag(&mut self, id: CgroupId) -> anyhow::Result<()> {
        match self.tagged.remove(&id.0) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("untagging cgroup {}", id.0)),
        }
    }

    fn stick(&mut self, path: &CgroupPath, workload: WorkloadId) -> anyhow::Result<()> {
        // Paths too long for the kernel key are tagged from user space only.
        if let Some(key) = KernelPath::from_path(path.0.as_bytes()) {
            self.sticky
                .insert(key, workload.0, 0)
                .with_context(|| format!("sticky path {path}"))?;
        }
        Ok(())
    }

    fn unstick(&mut self, path: &CgroupPath) -> anyhow::Result<()> {
        if let Some(key) = KernelPath::from_path(path.0.as_bytes()) {
            match self.sticky.remove(&key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
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

/// Decodes one ring-buffer item into (id, path, sticky workload).
pub fn decode_event(bytes: &[u8]) -> Option<(CgroupId, CgroupPath, u32)> {
    if bytes.len() < std::mem::size_of::<CgroupEvent>() {
        return None;
    }
    let id = u64::from_ne_bytes(bytes[0..8].try_into().ok()?);
    let sticky = u32::from_ne_bytes(bytes[8..12].try_into().ok()?);
    let len = usize::try_from(u32::from_ne_bytes(bytes[12..16].try_into().ok()?)).ok()?;
    let path = bytes.get(16..16 + len)?;
    let path = std::str::from_utf8(path).ok()?.trim_end_matches('\0');
    Some((CgroupId(id), CgroupPath(path.to_owned()), sticky))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuple_keys_normalise_v4_to_mapped() {
        let k = tuple_key(
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:15432".parse().unwrap(),
            7,
        );
        assert_eq!(&k.client_addr[10..], &[0xff, 0xff, 127, 0, 0, 1]);
        assert_eq!(k.client_port, 40000);
        assert_eq!(k.server_port, 15432);
        let k6 = tuple_key(
            "[::ffff:127.0.0.1]:40000".parse().unwrap(),
            "[::ffff:127.0.0.1]:15432".parse().unwrap(),
            7,
        );
        assert_eq!(k, k6);
    }

    #[test]
    fn unix_rules_are_prefixes_and_intercept_wins() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let rules = unix_rules(
            &[link.clone(), PathBuf::from("/srv/pg/.s.PGSQL.6432")],
            &[
                PathBuf::from("/run/x.sock"),
                PathBuf::from("/srv/pg/.s.PGSQL.6432"),
            ],
        );
        let has = |bytes: &[u8], rule: u32| rules.iter().any(|(b, r)| b == bytes && *r == rule);
        let dir_rule = |p: &Path| {
            let mut b = p.as_os_str().as_encoded_bytes().to_vec();
            b.extend_from_slice(b"/.s.PGSQL.");
            b
        };
        // The directory as configured and as it really is.
        assert!(has(&dir_rule(&link), UNIX_MATCH_DIR), "{rules:?}");
        assert!(has(
            &dir_rule(&std::fs::canonicalize(&real).unwrap()),
            UNIX_MATCH_DIR
        ));
        assert!(has(b"/run/x.sock\0", UNIX_ALLOW_SOCKET));
        // The same socket allowed and intercepted: intercepted.
        assert!(has(b"/srv/pg/.s.PGSQL.6432\0", UNIX_MATCH_SOCKET));
        assert!(!has(b"/srv/pg/.s.PGSQL.6432\0", UNIX_ALLOW_SOCKET));
        // A trailing slash is the same directory.
        let again = unix_rules(&[PathBuf::from("/var/lib/x/")], &[]);
        assert_eq!(again[0].0, b"/var/lib/x/.s.PGSQL.".to_vec());
        // The root directory.
        let root = unix_rules(&[PathBuf::from("/")], &[]);
        assert_eq!(root[0].0, b"/.s.PGSQL.".to_vec());
    }

    #[test]
    fn the_unix_programs_relocate_against_this_kernel() {
        let btf = KernelBtf::from_sys_fs().expect("this test needs /sys/kernel/btf/vmlinux");
        if unix_preflight(&btf).is_err() {
            panic!(
                "this kernel lacks the Unix socket hooks (Linux 6.7+): {unix_preflight:?}",
                unix_preflight = unix_preflight(&btf)
            );
        }
        let null = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::AsFd::as_fd(&null);
        let maps: std::collections::HashMap<&str, std::os::fd::BorrowedFd<'_>> =
            UNIX_PROGRAM_MAPS.iter().map(|m| (*m, fd)).collect();
        for section in ["cgroup/connect_unix", "cgroup/getpeername_unix"] {
            let prog = crate::bpfload::relocate(EBPF_UNIX_OBJECT, section, &maps, &btf).unwrap();
            assert!(!prog.insns.is_empty());
            // Every call is resolved: to a helper (src 0), a kfunc (2) or a local function (1)
            // whose target lies inside the program.
            for (i, insn) in prog.insns.iter().enumerate() {
                let b = insn.to_le_bytes();
                if b[0] != 0x85 {
                    continue;
                }
                let imm = i32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                match b[1] >> 4 {
                    0 => assert!(imm > 0, "{section}: helper call {imm} at {i}"),
                    1 => {
                        let target = i as i64 + 1 + i64::from(imm);
                        assert!(
                            (0..prog.insns.len() as i64).contains(&target),
                            "{section}: call at {i} to {target}"
                        );
                    }
                    2 => assert!(
                        btf.func_id("bpf_sock_addr_set_sun_path") == Some(imm as u32)
                            || btf.func_id("bpf_cast_to_kern_ctx") == Some(imm as u32)
                    ),
                    other => panic!("{section}: call with src {other} at {i}"),
                }
            }
        }
        // A map the program names but the caller does not provide is an error, not a guess.
        let none = std::collections::HashMap::new();
        assert!(
            crate::bpfload::relocate(EBPF_UNIX_OBJECT, "cgroup/connect_unix", &none, &btf).is_err()
        );
    }

    #[test]
    fn decodes_events() {
        let mut bytes = vec![0u8; std::mem::size_of::<CgroupEvent>()];
        bytes[0..8].copy_from_slice(&42u64.to_ne_bytes());
        bytes[8..12].copy_from_slice(&3u32.to_ne_bytes());
        bytes[12..16].copy_from_slice(&6u32.to_ne_bytes());
        bytes[16..22].copy_from_slice(b"/a/b.c");
        let (id, path, sticky) = decode_event(&bytes).unwrap();
        assert_eq!((id, path.0.as_str(), sticky), (CgroupId(42), "/a/b.c", 3));
        assert!(decode_event(&bytes[..10]).is_none());
    }
}
