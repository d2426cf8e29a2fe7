//! The cgroup2 tree: finding its mount, naming cgroups by path, systemd units from paths,
//! glob matching, the `user.pgwarden.workload` xattr, and walking the tree.
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use crate::names::CgroupId;

/// The xattr that tags a cgroup directory with a workload name.
pub const TAG_XATTR: &str = "user.pgwarden.workload";

/// Errors of this layer.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup2 mount in the mount table.
    #[error(
        "no cgroup2 hierarchy is mounted (looked in /proc/self/mountinfo); pgwarden attaches its \
         programs to the cgroup2 root: mount one with `mount -t cgroup2 none /sys/fs/cgroup`"
    )]
    NoCgroup2,
    /// The path is not a cgroup under the cgroup2 root.
    #[error("{0}: not a cgroup directory under the cgroup2 root {1}")]
    NotACgroup(String, String),
    /// An I/O error on a path.
    #[error("{0}: {1}")]
    Io(String, io::Error),
}

/// Finds the cgroup2 mount point in a mountinfo text (see proc(5)).
pub fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = pre.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(char::from(v));
            i += 4;
            continue;
        }
        out.push(char::from(bytes[i]));
        i += 1;
    }
    out
}

/// The cgroup2 root of this machine.
pub fn cgroup2_root() -> Result<PathBuf, CgroupError> {
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| CgroupError::Io("/proc/self/mountinfo".into(), e))?;
    cgroup2_mount_in(&text).ok_or(CgroupError::NoCgroup2)
}

/// A cgroup path relative to the cgroup2 root, always with a leading `/` (the root is `/`),
/// as the kernel's tracepoints and `/proc/PID/cgroup` print it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct CgroupPath(pub String);

impl CgroupPath {
    /// From a user's argument: absolute under `root`, or relative to `root` with or without
    /// a leading `/`.
    pub fn from_arg(root: &Path, arg: &str) -> Result<Self, CgroupError> {
        let p = Path::new(arg);
        let rel = match p.strip_prefix(root) {
            Ok(rel) => rel.to_string_lossy().into_owned(),
            Err(_) => arg.trim_start_matches('/').to_owned(),
        };
        let rel = rel.trim_end_matches('/');
        if rel.split('/').any(|c| c == ".." || c == ".") {
            return Err(CgroupError::NotACgroup(
                arg.to_owned(),
                root.display().to_string(),
            ));
        }
        Ok(Self(format!("/{rel}")))
    }

    /// The directory of this cgroup under `root`.
    pub fn dir(&self, root: &Path) -> PathBuf {
        root.join(self.0.trim_start_matches('/'))
    }

    /// The path without its leading `/`, as globs in the config are written.
    pub fn relative(&self) -> &str {
        self.0.trim_start_matches('/')
    }

    /// The last component, `""` for the root.
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or("")
    }
}

impl std::fmt::Display for CgroupPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

const UNIT_SUFFIXES: [&str; 2] = [".service", ".scope"];

/// Whether a cgroup directory name is a systemd unit that holds processes.
pub fn is_unit_name(name: &str) -> bool {
    UNIT_SUFFIXES
        .iter()
        .any(|s| name.len() > s.len() && name.ends_with(s))
}

/// The systemd unit owning a cgroup: its deepest `.service`/`.scope` component, else its
/// deepest `.slice` component.
pub fn systemd_unit(path: &CgroupPath) -> Option<&str> {
    let comps = || path.0.split('/').rev();
    comps()
        .find(|c| is_unit_name(c))
        .or_else(|| comps().find(|c| c.len() > 6 && c.ends_with(".slice")))
}

/// A glob of the config or a policy, compiled once (by `globset`, to an automaton: matching
/// is linear in the text, whatever the pattern). `*` matches within one path component, `?`
/// one character other than `/`, and `**` as a whole component (`a/**/b`, `**/b`, `a/**`)
/// zero or more components; elsewhere `**` is `*`. Everything else is literal (`[`, `{` and
/// `\` too).
#[derive(Clone, Debug)]
pub struct Glob {
    text: String,
    matcher: globset::GlobMatcher,
}

/// A glob that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("glob `{text}`: {source}")]
pub struct GlobError {
    text: String,
    source: globset::Error,
}

impl Glob {
    /// Compiles `pattern`.
    pub fn new(pattern: &str) -> Result<Self, GlobError> {
        // globset gives `[...]` and `{a,b}` a meaning; ours are literal, so quote them as
        // one-character classes.
        let mut quoted = String::with_capacity(pattern.len());
        for c in pattern.chars() {
            match c {
                '[' | ']' | '{' | '}' => {
                    quoted.push('[');
                    quoted.push(c);
                    quoted.push(']');
                }
                c => quoted.push(c),
            }
        }
        let matcher = globset::GlobBuilder::new(&quoted)
            .literal_separator(true)
            .backslash_escape(false)
            .build()
            .map_err(|source| GlobError {
                text: pattern.to_owned(),
                source,
            })?
            .compile_matcher();
        Ok(Self {
            text: pattern.to_owned(),
            matcher,
        })
    }

    /// Whether `text` matches.
    pub fn is_match(&self, text: &str) -> bool {
        self.matcher.is_match(text)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// The cgroup id of a cgroup2 directory: its inode number.
pub fn cgroup_id(dir: &Path) -> Result<CgroupId, CgroupError> {
    fs::metadata(dir)
        .map(|m| CgroupId(m.ino()))
        .map_err(|e| CgroupError::Io(dir.display().to_string(), e))
}

/// The workload named by a directory's tag xattr, if any.
pub fn read_tag(dir: &Path) -> Option<String> {
    let value = xattr::get(dir, TAG_XATTR).ok()??;
    let name = String::from_utf8(value).ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// Sets the tag xattr on a cgroup directory.
pub fn write_tag(dir: &Path, workload: &str) -> Result<(), CgroupError> {
    xattr::set(dir, TAG_XATTR, workload.as_bytes())
        .map_err(|e| CgroupError::Io(dir.display().to_string(), e))
}

/// Removes the tag xattr; absent is fine.
pub fn clear_tag(dir: &Path) -> Result<(), CgroupError> {
    match xattr::remove(dir, TAG_XATTR) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(nix::libc::ENODATA) => Ok(()),
        Err(e) => Err(CgroupError::Io(dir.display().to_string(), e)),
    }
}

/// One cgroup found by [`walk`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// Its path.
    pub path: CgroupPath,
    /// Its id.
    pub id: CgroupId,
    /// Its tag xattr.
    pub tag: Option<String>,
}

/// Every cgroup under `root` (the root included). Cgroups that vanish while walking are
/// skipped.
pub fn walk(root: &Path) -> Vec<Found> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let Ok(meta) = fs::metadata(&dir) else {
            continue;
        };
        out.push(Found {
            path: CgroupPath(if rel.is_empty() {
                "/".into()
            } else {
                rel.clone()
            }),
            id: CgroupId(meta.ino()),
            tag: read_tag(&dir),
        });
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                stack.push((entry.path(), format!("{rel}/{name}")));
            }
        }
    }
    out
}

/// The cgroup2 path of a process, from `/proc/PID/cgroup` (the `0::` line).
pub fn cgroup_of_pid(pid: u32) -> Option<CgroupPath> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| CgroupPath(p.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_mountinfo() {
        let text = "\
30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_mount_in(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount_in("30 24 0:26 / /x rw - tmpfs tmpfs rw\n"),
            None
        );
        let escaped = "41 31 0:38 / /mnt/cg\\0402 rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount_in(escaped), Some(PathBuf::from("/mnt/cg 2")));
    }

    #[test]
    fn paths_from_arguments() {
        let root = Path::new("/sys/fs/cgroup/unified");
        let p =
            CgroupPath::from_arg(root, "/sys/fs/cgroup/unified/system.slice/a.service").unwrap();
        assert_eq!(p.0, "/system.slice/a.service");
        assert_eq!(
            CgroupPath::from_arg(root, "system.slice/").unwrap().0,
            "/system.slice"
        );
        assert_eq!(CgroupPath::from_arg(root, "/x/y").unwrap().0, "/x/y");
        assert!(CgroupPath::from_arg(root, "x/../y").is_err());
        assert_eq!(
            p.dir(root),
            PathBuf::from("/sys/fs/cgroup/unified/system.slice/a.service")
        );
        assert_eq!(p.name(), "a.service");
    }

    #[test]
    fn units_from_paths() {
        let unit = |p: &str| systemd_unit(&CgroupPath(p.into())).map(str::to_owned);
        assert_eq!(
            unit("/system.slice/mcp-payments.service").as_deref(),
            Some("mcp-payments.service")
        );
        assert_eq!(
            unit("/system.slice/foo.service/payload").as_deref(),
            Some("foo.service")
        );
        assert_eq!(
            unit("/user.slice/user-1000.slice/user@1000.service/app.slice/app-x.scope").as_deref(),
            Some("app-x.scope")
        );
        assert_eq!(unit("/machine.slice").as_deref(), Some("machine.slice"));
        assert_eq!(unit("/pgwarden-e2e/app"), None);
    }

    #[test]
    fn globs() {
        let cases = [
            ("mcp-*.service", "mcp-payments.service", true),
            ("mcp-*.service", "mcp-.service", true),
            ("mcp-*.service", "other.service", false),
            ("a/*/c", "a/b/c", true),
            ("a/*/c", "a/b/x/c", false),
            ("a/**/c", "a/b/x/c", true),
            ("a/**/c", "a/c", true),
            ("a/**", "a/b/c", true),
            ("**/c", "a/b/c", true),
            ("a?c", "abc", true),
            ("a?c", "a/c", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("*", "", true),
            ("pg_ls_*", "pg_ls_dir", true),
            // Literal, not classes, alternatives or escapes.
            ("a[bc]", "a[bc]", true),
            ("a[bc]", "ab", false),
            ("{a,b}", "{a,b}", true),
            ("{a,b}", "a", false),
            ("dev-x\\x2dy.scope", "dev-x\\x2dy.scope", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(Glob::new(p).unwrap().is_match(t), want, "{p} vs {t}");
            assert_eq!(Glob::new(p).unwrap().is_match(t), want, "{p} vs {t}");
        }
    }

    #[test]
    fn globs_match_in_linear_time() {
        // The backtracking matcher this replaced took exponential time here (it tried every
        // way of splitting the text among the stars).
        let pattern = "a*a*a*a*a*a*a*a*a*b";
        let text = "a".repeat(200);
        let started = std::time::Instant::now();
        assert!(!Glob::new(pattern).unwrap().is_match(&text));
        assert!(Glob::new(pattern).unwrap().is_match(&format!("{text}b")));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
