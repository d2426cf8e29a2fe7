//! The kernel side, seen from the agent: loads the embedded eBPF objects, fills their maps,
//! attaches their programs to the cgroup2 root, and answers "where was this connection going?".
//! Load and attach live here; map access, event decoding, Unix rules, pins and the host checks
//! each have a module, and every map is taken by its definition in `agent_common::maps`.
use std::fs::File;
use std::path::{Path, PathBuf};

use agent_common::maps as kernel_maps;
use anyhow::{Context as _, anyhow, bail};
use aya::Ebpf;
use aya::maps::MapData;
use aya::programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, SockOps, TracePoint};
use serde::Serialize;

use crate::btf::KernelBtf;
use crate::dest::Destination;

mod events;
mod maps;
mod pins;
mod preflight;
#[cfg(test)]
mod tests;
mod unix_rules;

pub use events::{Events, decode_attach_event, decode_event};
pub use maps::{tuple_key, v6_form};
pub use pins::detach;
pub use preflight::{PreflightError, preflight};
pub use unix_rules::unix_rules;

use maps::Maps;
use pins::{ensure_bpffs, replace_pin, replace_pin_fd};
use preflight::{check_attach_format, check_mkdir_format, tracefs, unix_preflight_here};

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

/// The loaded programs and their maps.
pub struct Redirect {
    ebpf: Ebpf,
    maps: Maps,
    attached: Vec<AttachPoint>,
    pin_dir: PathBuf,
    /// Whether the maps were adopted from a previous run's pins.
    pub adopted: bool,
    /// Why the Unix socket programs are not loaded (`--tcp-only` on a kernel without them).
    pub unix_disabled: Option<String>,
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
        let adopted = pin_dir.join(kernel_maps::TAGGED_CGROUPS.name).exists();
        {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&pin_dir)
                .with_context(|| format!("creating the pin directory {}", pin_dir.display()))?;
        }
        // Every map of the object is pinned, so a restarted agent finds the same state and the
        // programs left attached by the previous run keep working on it.
        let mut loader = aya::EbpfLoader::new();
        let paths: Vec<(&str, PathBuf)> = kernel_maps::ALL
            .iter()
            .map(|m| (m.name, pin_dir.join(m.name)))
            .collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT).with_context(|| {
            format!(
                "loading the embedded eBPF object (maps pinned in {}; if a different pgwarden version left them, run `pgwarden detach`)",
                pin_dir.display()
            )
        })?;
        let mut agent_config = maps::tcp_config(cfg)?;
        // The Unix programs need a kernel that has them; without, only `--tcp-only` runs.
        let unix = match unix_preflight_here() {
            Ok(()) => Ok(()),
            Err(missing) if cfg.allow_tcp_only => {
                tracing::error!(
                    "Unix socket interception is OFF (--tcp-only): this kernel lacks {missing}. \
                     Tagged workloads can reach PostgreSQL's Unix socket directly, unaudited"
                );
                Err(missing.to_string())
            }
            Err(missing) => bail!(
                "cannot intercept Unix socket connects: missing {missing}. Tagged workloads \
                 could reach PostgreSQL's Unix socket around pgwarden; refusing to start \
                 (`pgwarden run --tcp-only` runs without, loudly)"
            ),
        };
        if unix.is_ok()
            && let Some(name) = &cfg.unix_listen
        {
            maps::add_unix_listener(&mut agent_config, name)?;
        }
        let (maps, events) = Maps::take(&mut ebpf, cfg, agent_config)?;
        let mut this = Self {
            ebpf,
            maps,
            attached: Vec::new(),
            pin_dir,
            adopted,
            unix_disabled: unix.err(),
        };
        let tracefs = tracefs()?;
        check_mkdir_format(&tracefs)?;
        this.attach_tracepoint("cgroup_mkdir")?;
        check_attach_format(&tracefs)?;
        this.attach_tracepoint("cgroup_attach_task")?;
        Ok((this, events))
    }

    /// Loads the program `name` and attaches it to the tracepoint `cgroup:name`, pinned.
    fn attach_tracepoint(&mut self, name: &str) -> anyhow::Result<()> {
        let tp: &mut TracePoint = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing"))?
            .try_into()?;
        tp.load().with_context(|| format!("loading {name}"))?;
        let id = tp
            .attach("cgroup", name)
            .with_context(|| format!("attaching tracepoint cgroup:{name}"))?;
        let link: aya::programs::links::FdLink =
            tp.take_link(id)?.try_into().context("tracepoint link")?;
        replace_pin(link, &self.pin_dir.join(format!("link_{name}")))?;
        self.attached.push(AttachPoint {
            program: name.into(),
            hook: "tracepoint".into(),
            target: format!("cgroup:{name}"),
        });
        Ok(())
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
        let maps: Vec<(&str, MapData)> = kernel_maps::UNIX_PROGRAMS
            .iter()
            .map(|m| {
                MapData::from_pin(self.pin_dir.join(m.name))
                    .map(|d| (m.name, d))
                    .with_context(|| format!("opening the pinned map {}", m.name))
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

    fn program(&mut self, name: &str) -> anyhow::Result<&mut aya::programs::Program> {
        self.ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))
    }

    /// Where the pins are.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// What is attached.
    pub fn attached(&self) -> &[AttachPoint] {
        &self.attached
    }
}
