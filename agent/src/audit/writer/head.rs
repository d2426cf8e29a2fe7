//! The chain's head kept outside the journal's directory: after every batch the last `seq`
//! and `hash` written are stored in `STATE_DIR/audit-<id>.head` (`<id>`: the first 16 hex
//! digits of the SHA-256 of the journal's path, so that journals at different paths keep
//! different heads). If the journal's directory is emptied, or its newest files go, the next
//! start still continues the chain from there and says so in an `audit.reopen` record.
//!
//! The line has a fixed width and is written in place with one `pwrite`: the page cache has
//! it at once (it survives the agent being killed). It is written at most once a millisecond
//! by whoever commits (a batch within that only marks it pending), and the writer thread,
//! which wakes every 2 ms while records flow, writes what is pending; it is fsynced once a
//! second. A head older than the journal's tail (a kill within that millisecond, a power loss
//! before the fsync) is ignored: the journal's own tail wins.
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tracing::warn;

/// `seq` (20 digits, right-aligned), a space, the 64-hex hash, a newline.
const WIDTH: usize = 20 + 1 + 64 + 1;

/// The head file of the journal at `journal` in `state_dir`.
pub(super) fn head_path(state_dir: &Path, journal: &Path) -> PathBuf {
    let abs = std::path::absolute(journal).unwrap_or_else(|_| journal.to_owned());
    let id = hex::encode(&Sha256::digest(abs.as_os_str().as_encoded_bytes())[..8]);
    state_dir.join(format!("audit-{id}.head"))
}

/// The open head file.
pub(super) struct Head {
    file: File,
    line: [u8; WIDTH],
    /// Stored since the last fsync.
    dirty: bool,
    synced: std::time::Instant,
    /// A head not written yet (a commit within [`STORE_EVERY`] of the last write).
    /// The seq noted and not yet stored; its hash is in `pending_hash` (a buffer kept).
    pending: Option<u64>,
    pending_hash: String,
    stored: std::time::Instant,
}

/// How often a changed head is fsynced.
const SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How often it is written at most by a commit.
const STORE_EVERY: std::time::Duration = std::time::Duration::from_millis(1);

impl Head {
    /// Opens (creating it and the state directory, 0700) the head file at `path`.
    pub(super) fn open(path: &Path) -> io::Result<Head> {
        if let Some(dir) = path.parent().filter(|d| !d.exists()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        Ok(Head {
            file,
            line: [b' '; WIDTH],
            dirty: false,
            synced: std::time::Instant::now(),
            pending: None,
            pending_hash: String::new(),
            stored: std::time::Instant::now(),
        })
    }

    /// The head stored in `path`, if one is there and reads back.
    pub(super) fn load(path: &Path) -> Option<(u64, String)> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!("audit head {}: {e}; not used", path.display());
                return None;
            }
        };
        let mut parts = text.split_whitespace();
        let parsed = (|| {
            let seq: u64 = parts.next()?.parse().ok()?;
            let hash = parts.next()?;
            (hash.len() == 64 && hash.bytes().all(|c| c.is_ascii_hexdigit()))
                .then(|| (seq, hash.to_owned()))
        })();
        if parsed.is_none() && !text.is_empty() {
            warn!("audit head {}: unreadable; not used", path.display());
        }
        parsed
    }

    /// Notes `seq` and `hash` as the head: written now, or left pending when the last write
    /// is younger than [`STORE_EVERY`] (see the module doc).
    pub(super) fn note(&mut self, seq: u64, hash: &str) -> io::Result<()> {
        if self.stored.elapsed() < STORE_EVERY {
            self.pending = Some(seq);
            self.pending_hash.clear();
            self.pending_hash.push_str(hash);
            return Ok(());
        }
        self.pending = None;
        self.store(seq, hash)
    }

    /// Writes what [`Head::note`] left pending.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        match self.pending.take() {
            Some(seq) => {
                let hash = std::mem::take(&mut self.pending_hash);
                let stored = self.store(seq, &hash);
                self.pending_hash = hash;
                stored
            }
            None => Ok(()),
        }
    }

    /// Stores `seq` and `hash` as the head (in the page cache; see the module doc).
    pub(super) fn store(&mut self, seq: u64, hash: &str) -> io::Result<()> {
        self.stored = std::time::Instant::now();
        let mut digits = itoa::Buffer::new();
        let d = digits.format(seq).as_bytes();
        self.line[..20].fill(b' ');
        self.line[20 - d.len()..20].copy_from_slice(d);
        self.line[20] = b' ';
        let h = hash.as_bytes();
        if h.len() != 64 {
            return Err(io::Error::other("a record hash is 64 hex digits"));
        }
        self.line[21..85].copy_from_slice(h);
        self.line[WIDTH - 1] = b'\n';
        self.dirty = true;
        self.file.write_all_at(&self.line, 0)
    }

    /// fsyncs the head when it changed and the last fsync is [`SYNC_EVERY`] old (`now`: at
    /// once, when closing).
    pub(super) fn sync(&mut self, now: bool) -> io::Result<()> {
        self.flush()?;
        if self.dirty && (now || self.synced.elapsed() >= SYNC_EVERY) {
            self.dirty = false;
            self.synced = std::time::Instant::now();
            self.file.sync_data()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_reads_back_and_rewrites_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let p = head_path(dir.path(), Path::new("/var/log/pgwarden/audit.jsonl"));
        assert_ne!(p, head_path(dir.path(), Path::new("/other/audit.jsonl")));
        assert_eq!(Head::load(&p), None);
        let mut h = Head::open(&p).unwrap();
        let hash = "ab".repeat(32);
        h.store(123_456, &hash).unwrap();
        assert_eq!(Head::load(&p), Some((123_456, hash.clone())));
        h.store(7, &"cd".repeat(32)).unwrap();
        assert_eq!(Head::load(&p), Some((7, "cd".repeat(32))));
        assert_eq!(std::fs::metadata(&p).unwrap().len(), WIDTH as u64);
        // Notes are written at once or left for a flush; after it, the last one is there.
        h.note(8, &"ef".repeat(32)).unwrap();
        h.note(9, &"01".repeat(32)).unwrap();
        h.flush().unwrap();
        assert_eq!(Head::load(&p), Some((9, "01".repeat(32))));
        std::fs::write(&p, b"garbage").unwrap();
        assert_eq!(Head::load(&p), None);
    }
}
