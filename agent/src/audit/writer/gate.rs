//! The cheap question around [`super::watch`]: may anything have been done to the live file
//! since the writer last looked? inotify on the file (renamed, unlinked, linked over, its
//! mode changed) and on its directory (moved or removed) answers with one non-blocking read
//! that finds nothing, made once per batch, right after its write: inotify queues what it saw
//! until it is read, so that one read covers the time since the last batch and the write
//! itself. A file that lost its name gets the batch written again into a new one (no record
//! is acknowledged while only in a file with no name); anything else noticed makes the next
//! batch look in full first (a renamed file, which still has a name, keeps the batch that
//! followed the rename). Truncation and foreign appends show in the file's size (one `lseek`
//! before each batch, in `watch`). Only when something was noticed, or every [`FULL_EVERY`]
//! (an ancestor directory renamed is seen no other way), does the writer `stat` the path.
//!
//! Why not `stat` before every batch, as it did: besides the call itself, a `stat` that reads a
//! file's times makes ext4 (multigrain timestamps, Linux 6.13) give the next write a fresh
//! fine-grained mtime, dirtying the inode on every write; measured here, a 800-byte append went
//! from 2.0 µs to 5.6 µs with a `stat` before each, and the journal's write is on the path of
//! every statement. Why not read inotify before the write too, as it did: it is a system call
//! per statement that the read after the write makes redundant (the bench counts them).
//! inotify is the kernel's own notice, queued by the very system call that renames or
//! unlinks. Without inotify (its limits reached) the writer looks with `stat` every time.
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tracing::warn;

/// A full look at the path at least this often, whatever inotify says.
pub(super) const FULL_EVERY: Duration = Duration::from_millis(100);

/// inotify on the live file and its directory, and when the writer last looked in full.
pub(super) struct Gate {
    inotify: Option<Inotify>,
    /// Something was noticed and not yet looked at in full.
    pending: bool,
    looked: Option<Instant>,
}

impl Gate {
    /// A gate that always says "look" (until [`Gate::arm`]).
    pub(super) fn new() -> Gate {
        Gate {
            inotify: None,
            pending: true,
            looked: None,
        }
    }

    /// Watches the live file at `path` (just opened) and its directory, in place of whatever
    /// was watched before. On failure the writer looks in full before every batch.
    pub(super) fn arm(&mut self, path: &Path) {
        self.inotify = None;
        self.pending = true;
        let file =
            AddWatchFlags::IN_ATTRIB | AddWatchFlags::IN_MOVE_SELF | AddWatchFlags::IN_DELETE_SELF;
        let dir = AddWatchFlags::IN_MOVE_SELF | AddWatchFlags::IN_DELETE_SELF;
        let armed = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).and_then(|i| {
            i.add_watch(path, file)?;
            i.add_watch(crate::audit::segments::dir_of(path), dir)?;
            Ok(i)
        });
        match armed {
            Ok(i) => self.inotify = Some(i),
            Err(e) => warn!(
                "audit journal {}: no inotify ({e}); the file is stat-ed before every write",
                path.display()
            ),
        }
    }

    /// Whether inotify reported something since the last full look (reads what it queued).
    pub(super) fn noticed(&mut self) -> bool {
        let Some(i) = &self.inotify else {
            return true;
        };
        if !self.pending {
            match i.read_events() {
                Ok(events) => self.pending = !events.is_empty(),
                Err(Errno::EAGAIN) => {}
                // A gate that cannot tell says "look".
                Err(_) => self.pending = true,
            }
        }
        self.pending
    }

    /// Whether the writer must look at the path in full now: something was noticed after an
    /// earlier write and not yet looked at, or [`FULL_EVERY`] passed. Reads nothing from
    /// inotify (that is [`Gate::noticed`], after each write).
    pub(super) fn due(&self) -> bool {
        self.pending || self.looked.is_none_or(|t| t.elapsed() >= FULL_EVERY)
    }

    /// The writer looked in full and found the file as it left it (or dealt with it).
    pub(super) fn looked(&mut self) {
        if self.inotify.is_some() {
            self.pending = false;
        }
        self.looked = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// A gate armed on `dir/j.jsonl` (created) and looked through once.
    fn armed(dir: &Path) -> (Gate, std::path::PathBuf) {
        let path = dir.join("j.jsonl");
        std::fs::write(&path, b"").unwrap();
        let mut g = Gate::new();
        assert!(g.due(), "a new gate asks for a look");
        g.arm(&path);
        assert!(g.due(), "so does a freshly armed one");
        g.looked();
        assert!(!g.due(), "a quiet file needs no look");
        (g, path)
    }

    #[test]
    fn what_is_done_to_the_file_or_its_directory_asks_for_a_look() {
        type Act = fn(&Path, &Path);
        let cases: [(&str, Act); 6] = [
            ("renamed", |p, d| {
                std::fs::rename(p, d.join("moved")).unwrap()
            }),
            ("unlinked", |p, _| std::fs::remove_file(p).unwrap()),
            ("replaced by a rename over it", |p, d| {
                std::fs::write(d.join("other"), b"x").unwrap();
                std::fs::rename(d.join("other"), p).unwrap();
            }),
            ("chmod", |p, _| {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
            }),
            ("hard-linked", |p, d| {
                std::fs::hard_link(p, d.join("link")).unwrap()
            }),
            ("its directory renamed", |_, d| {
                std::fs::rename(d, d.with_extension("moved")).unwrap();
            }),
        ];
        for (what, act) in cases {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("journal");
            std::fs::create_dir(&dir).unwrap();
            let (mut g, path) = armed(&dir);
            act(&path, &dir);
            assert!(!g.due(), "{what}: not read before a write");
            assert!(g.noticed(), "{what}: inotify noticed it");
            assert!(g.due(), "{what}: and it stays due until looked at");
            g.looked();
            assert!(!g.due(), "{what}: looked at");
        }
    }

    #[test]
    fn appends_do_not_ask_but_time_does() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut g, path) = armed(tmp.path());
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        for _ in 0..100 {
            std::io::Write::write_all(&mut f, b"{}\n").unwrap();
        }
        assert!(
            !g.noticed() && !g.due(),
            "the writer's own appends are not news"
        );
        std::thread::sleep(FULL_EVERY);
        assert!(
            g.due(),
            "a full look is due after FULL_EVERY whatever happened"
        );
    }
}
