//! The journal's files: the lock that makes one writer per chain, opening for append
//! (0600, the directory 0700), and rotation to `PATH.1`, `PATH.2`, ….
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use tracing::info;

use super::commit::Writer;

/// Creates the journal's directory (0700) when it does not exist.
pub(super) fn create_dir(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    Ok(())
}

/// Takes the journal's lock, `PATH.lock` (0600), so that a second writer (another agent, a
/// test aid) cannot interleave its own `seq`s into the chain. Journals that are not regular
/// files (e.g. `/dev/full` in tests) are not locked.
pub(super) fn lock_journal(path: &Path) -> io::Result<Option<nix::fcntl::Flock<File>>> {
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        return Ok(None);
    }
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(PathBuf::from(&name))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "another process is writing this journal (it holds {})",
                PathBuf::from(name).display()
            ),
        )),
        Err((_, e)) => Err(io::Error::from(e)),
    }
}

pub(super) fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// `path.n`.
pub fn rotated_name(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The rotated siblings of `path` that exist, as (n, path) sorted by n (1 = newest).
pub fn rotated_files(path: &Path) -> Vec<(usize, PathBuf)> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e
                .file_name()
                .to_str()?
                .strip_prefix(&prefix)?
                .parse()
                .ok()?;
            (n > 0).then(|| (n, rotated_name(path, n)))
        })
        .collect();
    out.sort();
    out
}

impl Writer {
    /// `path` -> `path.1`, `path.1` -> `path.2`, …; the oldest beyond `keep_files` goes.
    pub(super) fn rotate(&mut self) -> io::Result<()> {
        let keep = self.keep_files;
        let existing = rotated_files(&self.path);
        // Those that would end up beyond `keep_files` after the shift go first.
        for (n, p) in &existing {
            if keep > 0 && *n >= keep {
                std::fs::remove_file(p)?;
            }
        }
        for (n, p) in existing.iter().rev() {
            if keep == 0 || *n < keep {
                std::fs::rename(p, rotated_name(&self.path, n + 1))?;
            }
        }
        self.file = None;
        std::fs::rename(&self.path, rotated_name(&self.path, 1))?;
        let file = open_append(&self.path)?;
        self.size = 0;
        self.file = Some(file);
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        info!(
            "audit journal rotated: {} -> {}",
            self.path.display(),
            rotated_name(&self.path, 1).display()
        );
        Ok(())
    }
}
