//! The journal's files: the lock that makes one writer per chain, opening the live file for
//! append (0600, the directory 0700), and rotation to `PATH.<first seq>-<last seq>`.
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use tracing::info;

use super::commit::Writer;
use super::queue::Shared;
use crate::audit::segments::range_name;

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

/// Where a file found at the journal's path that is not ours is moved, so that the chain
/// never continues into someone else's bytes: `PATH.displaced-<unix seconds>s<micros>`. The
/// `s` keeps the digits from reading as a card number, which the journal would mask in the
/// record that names the file.
pub(super) fn displaced_name(path: &Path) -> PathBuf {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut s = path.as_os_str().to_owned();
    s.push(format!(
        ".displaced-{}s{:06}",
        now.as_secs(),
        now.subsec_micros()
    ));
    PathBuf::from(s)
}

/// fsyncs the directory of `path`, so that a rename or a new file in it survives a crash.
pub(super) fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(crate::audit::segments::dir_of(path))?.sync_all()
}

impl Writer {
    /// The live file, complete and on disk, becomes `PATH.<first>-<last>` (`last`: the last
    /// seq written to it), and a fresh live file is opened. Nothing is deleted here: the
    /// archiver compresses the rotated file and applies the opt-in retention.
    pub(super) fn rotate(&mut self, s: &Shared, last: u64) -> io::Result<()> {
        let first = self.file_first.unwrap_or(last + 1);
        let to = range_name(&self.path, first, last, false);
        std::fs::rename(&self.path, &to)?;
        self.file = None;
        self.ident = None;
        self.file_first = None;
        // The rename holds from here on even if opening the new file fails: the next batch
        // opens it (`flush`).
        sync_dir(&self.path)?;
        self.open_live()?;
        s.files.rotations.fetch_add(1, Ordering::Relaxed);
        info!(
            "audit journal rotated: {} -> {} (seq {first}..{last})",
            self.path.display(),
            to.display()
        );
        if let Some(a) = &self.archiver {
            a.wake();
        }
        Ok(())
    }

    /// Opens (creating it, and its directory) the live file for appending, and takes note of
    /// what it is: its identity and mode, for [`Writer::watch`]; its size.
    pub(super) fn open_live(&mut self) -> io::Result<()> {
        create_dir(&self.path)?;
        let file = open_append(&self.path)?;
        let meta = file.metadata()?;
        self.size = meta.len();
        self.ident = meta.is_file().then(|| (meta.dev(), meta.ino()));
        self.mode = meta.mode() & 0o7777;
        self.file = Some(file);
        if self.ident.is_some() {
            self.gate.arm(&self.path);
        }
        if self.size == 0 {
            self.file_first = None;
        }
        sync_dir(&self.path)
    }
}
