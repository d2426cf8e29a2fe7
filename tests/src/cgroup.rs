//! cgroup v2 groups for tests: find the cgroup2 mount, create and remove groups (killing what is
//! left in them), and start a process inside a group so pgwarden's cgroup hooks see it.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long [`TestCgroup::remove`] waits for killed processes to leave.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where cgroup2 is mounted, read from /proc/self/mountinfo (on this project's machines
/// /sys/fs/cgroup/unified, a hybrid layout; elsewhere often /sys/fs/cgroup).
///
/// # Panics
///
/// When there is no cgroup2 mount.
pub fn cgroup2_root() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let info =
            fs::read_to_string("/proc/self/mountinfo").expect("cannot read /proc/self/mountinfo");
        cgroup2_mount(&info).expect(
            "no cgroup2 filesystem in /proc/self/mountinfo: pgwarden needs cgroup v2 \
             (mount -t cgroup2 none /sys/fs/cgroup/unified)",
        )
    })
    .clone()
}

/// The mount point of the first cgroup2 line of a mountinfo text. Fields: `id parent major:minor
/// root mount-point options [optional...] - fstype source super-options`.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        mount
            .split_whitespace()
            .nth(4)
            .map(unescape_octal)
            .map(PathBuf::from)
    })
}

/// Undoes mountinfo's escaping of space, tab, newline and backslash as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(byte) = bytes.get(i + 1..i + 4).and_then(octal_byte)
        {
            out.push(byte);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Three octal digits as a byte.
fn octal_byte(digits: &[u8]) -> Option<u8> {
    digits
        .iter()
        .try_fold(0u16, |acc, &d| {
            matches!(d, b'0'..=b'7').then(|| acc * 8 + u16::from(d - b'0'))
        })
        .and_then(|value| u8::try_from(value).ok())
}

/// A name unique to this process and call: `prefix-<pid>-<counter>`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A cgroup v2 group the test created; removed (with every process still in it) on drop.
pub struct TestCgroup {
    /// Absolute path of the group's directory.
    pub path: PathBuf,
    /// Path relative to the cgroup2 root, without a leading slash: what /proc/PID/cgroup shows
    /// after `0::/`.
    pub rel: String,
}

impl TestCgroup {
    /// Creates the group `rel` (relative to the cgroup2 root; parents too, like `mkdir -p`).
    ///
    /// # Panics
    ///
    /// When `rel` is empty or climbs out of the root, or the directory cannot be created.
    #[track_caller]
    pub fn create(rel: &str) -> TestCgroup {
        let rel = rel.trim_matches('/').to_owned();
        assert!(
            !rel.is_empty()
                && rel
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != ".."),
            "bad cgroup name {rel:?}: want a relative path like `pgwarden-e2e-1/child`"
        );
        let path = cgroup2_root().join(&rel);
        fs::create_dir_all(&path)
            .unwrap_or_else(|err| panic!("cannot create cgroup {}: {err}", path.display()));
        TestCgroup { path, rel }
    }

    /// Creates the child group `name` under this one.
    ///
    /// # Panics
    ///
    /// As [`TestCgroup::create`].
    #[track_caller]
    pub fn child(&self, name: &str) -> TestCgroup {
        TestCgroup::create(&format!("{}/{}", self.rel, name.trim_matches('/')))
    }

    /// Kills every process in the group and its descendants, waits up to 5 s for them to leave,
    /// then removes the descendants depth-first and the group itself. A group that is already
    /// gone is fine.
    ///
    /// # Errors
    ///
    /// When processes do not leave in time or a directory cannot be removed.
    pub fn remove(&self) -> Result<()> {
        if !self.path.exists() {
            return Ok(());
        }
        kill_all(&self.path)?;
        wait_drained(&self.path)?;
        remove_tree(&self.path)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(err) = self.remove() {
            eprintln!(
                "warning: cannot remove cgroup {}: {err:#}",
                self.path.display()
            );
        }
    }
}

/// `cgroup.kill` (Linux 5.14+) kills the whole subtree; older kernels get SIGKILL per process.
fn kill_all(cg: &Path) -> Result<()> {
    let kill_file = cg.join("cgroup.kill");
    if kill_file.exists() {
        return fs::write(&kill_file, "1")
            .with_context(|| format!("cannot write {}", kill_file.display()));
    }
    for pid in procs_in_tree(cg)? {
        let _ = kill(pid, Signal::SIGKILL);
    }
    Ok(())
}

fn wait_drained(cg: &Path) -> Result<()> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let left = procs_in_tree(cg)?;
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "processes {left:?} still in {} after {DRAIN_TIMEOUT:?}",
                cg.display()
            );
        }
        sleep(Duration::from_millis(20));
    }
}

/// Processes in `cg` and every descendant group.
fn procs_in_tree(cg: &Path) -> Result<Vec<Pid>> {
    let mut pids = Vec::new();
    let procs = cg.join("cgroup.procs");
    match fs::read_to_string(&procs) {
        Ok(text) => pids.extend(
            text.lines()
                .filter_map(|line| line.trim().parse().ok())
                .map(Pid::from_raw),
        ),
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(pids),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", procs.display())),
    }
    for child in child_groups(cg)? {
        pids.extend(procs_in_tree(&child)?);
    }
    Ok(pids)
}

fn child_groups(cg: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(cg) {
        Ok(entries) => entries,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("cannot list {}", cg.display())),
    };
    let mut children = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", cg.display()))?;
        if entry.file_type()?.is_dir() {
            children.push(entry.path());
        }
    }
    Ok(children)
}

/// rmdir of a cgroup directory removes its interface files with it; children must go first.
fn remove_tree(cg: &Path) -> Result<()> {
    for child in child_groups(cg)? {
        remove_tree(&child)?;
    }
    match fs::remove_dir(cg) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("cannot remove cgroup {}", cg.display())),
    }
}

/// A command that moves itself into cgroup `cg` and then execs `program`; add arguments with
/// `.arg()`. It runs `sh -c 'echo 0 > "$0/cgroup.procs" && exec "$@"' <cg> <program> ...`, so the
/// program (and everything it starts) lives in `cg` from its first instruction.
pub fn in_cgroup(cg: &Path, program: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"echo 0 > "$0/cgroup.procs" && exec "$@""#)
        .arg(cg)
        .arg(program);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 31 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
35 25 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
41 35 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
42 35 0:39 / /sys/fs/cgroup/memory rw,relatime shared:11 - cgroup cgroup rw,memory
";

    #[test]
    fn finds_the_cgroup2_mount_in_a_hybrid_layout() {
        assert_eq!(
            cgroup2_mount(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn no_cgroup2_mount() {
        let v1_only: String = HYBRID
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(cgroup2_mount(&v1_only), None);
    }

    #[test]
    fn optional_fields_and_escapes() {
        let line = "50 1 0:40 / /mnt/my\\040cg rw master:3 shared:4 - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount(line), Some(PathBuf::from("/mnt/my cg")));
        assert_eq!(unescape_octal(r"a\134b\011"), "a\\b\t");
        assert_eq!(unescape_octal(r"tail\04"), r"tail\04");
    }

    #[test]
    fn unique_names_differ() {
        let (a, b) = (unique_name("x"), unique_name("x"));
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("x-{}-", std::process::id())));
    }
}
