//! The free-space floor (`audit.min_free_bytes`): a write that would leave the journal's file
//! system with less free space than that fails as a write to a full disk does (strict mode:
//! the statement is refused, loudly), so that the journal stops before the disk is full and
//! never makes room by deleting. `statvfs` is asked at most once a second, or after 1 MiB
//! written, or on every try while below the floor.
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Look again after this long...
const EVERY: Duration = Duration::from_secs(1);
/// ...or after this many bytes written.
const BYTES: u64 = 1 << 20;

/// What the writer knows of the free space.
pub(super) struct Space {
    floor: u64,
    checked: Option<Instant>,
    free: u64,
    since: u64,
}

impl Space {
    /// A floor of `floor` bytes (0: none).
    pub(super) fn new(floor: u64) -> Space {
        Space {
            floor,
            checked: None,
            free: 0,
            since: 0,
        }
    }

    /// Whether `bytes` more may be written to the journal at `path` (its free space goes to
    /// `free` for status).
    pub(super) fn check(&mut self, path: &Path, bytes: usize, free: &AtomicU64) -> io::Result<()> {
        if self.floor == 0 {
            return Ok(());
        }
        let bytes = bytes as u64;
        if self.checked.is_none_or(|t| t.elapsed() >= EVERY) || self.since + bytes >= BYTES {
            let st = nix::sys::statvfs::statvfs(crate::audit::segments::dir_of(path))
                .map_err(io::Error::from)?;
            self.free = st.blocks_available().saturating_mul(st.fragment_size());
            free.store(self.free, Ordering::Relaxed);
            self.checked = Some(Instant::now());
            self.since = 0;
        }
        let left = self.free.saturating_sub(self.since + bytes);
        if left < self.floor {
            // Asked again on the next try: space freed shows at once.
            self.checked = None;
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "free space on the journal's file system would drop to {left} byte(s), \
                     below audit.min_free_bytes ({})",
                    self.floor
                ),
            ));
        }
        self.since += bytes;
        Ok(())
    }
}
