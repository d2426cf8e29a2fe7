//! Reading the journal from a seq on, one record at a time, across rotation, compression and
//! a moved live file, with memory bounded by one line: what `audit export` and the forwarders
//! read, so a collector that lags by a million records costs no more RAM than one in step.
//!
//! Position is by seq, never by file offset: a record is handed out once however the files
//! move, and records the files no longer hold (deleted by retention, cut from a torn file)
//! are reported as [`Next::Missing`] with their seq range rather than skipped in silence.
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use super::record::Record;
use super::segments::{self, Place, Segment};

/// One record as stored and as parsed.
#[derive(Clone, Debug)]
pub struct Item {
    /// The line exactly as in the journal (what its `hash` covers), without the newline.
    pub line: String,
    /// The parsed record.
    pub record: Record,
}

/// What [`Stream::read`] found.
#[derive(Debug)]
pub enum Next {
    /// The next record (`seq` is one more than the last one handed out, unless a
    /// [`Next::Missing`] came just before).
    Record(Item),
    /// A record at or before the starting seq, read because it shares the first file with
    /// the records asked for (only with [`Stream::with_context`]): callers learn sessions
    /// from these without sending them.
    Context(Item),
    /// Records `first..=last` are in none of the journal's files any more.
    Missing {
        /// First seq missing.
        first: u64,
        /// Last seq missing.
        last: u64,
    },
    /// Nothing more for now (the live file's end, or no journal yet).
    Pending,
}

/// The file being read.
struct Source {
    reader: Box<dyn BufRead + Send>,
    /// Where the file sits in the chain when it was opened.
    place: Place,
    /// The live file's identity (device, inode) while it is still the live file.
    live: Option<(u64, u64)>,
}

/// A reader of the journal at `path` handing out records after a seq.
pub struct Stream {
    path: PathBuf,
    /// The last seq handed out or reported missing.
    after: u64,
    /// Hand out the first file's records up to `after` as [`Next::Context`].
    context: bool,
    src: Option<Source>,
    /// An unfinished last line of the live file.
    partial: Vec<u8>,
    /// A record read past a gap, handed out after the gap's [`Next::Missing`].
    stashed: Option<Item>,
    /// The last legacy file (`PATH.n`, no seq range in its name) opened: those are read
    /// once, oldest (highest `n`) first, and are older than anything named by range.
    last_legacy: Option<usize>,
}

impl Stream {
    /// Records of the journal at `path` after seq `after` (0: from the first).
    pub fn new(path: &Path, after: u64) -> Self {
        Self {
            path: path.to_owned(),
            after,
            context: false,
            src: None,
            partial: Vec::new(),
            stashed: None,
            last_legacy: None,
        }
    }

    /// Like [`Stream::new`], and the records before `after` in the first file read are
    /// handed out as [`Next::Context`].
    pub fn with_context(path: &Path, after: u64) -> Self {
        Self {
            context: true,
            ..Self::new(path, after)
        }
    }

    /// The last seq handed out or reported missing.
    pub fn after(&self) -> u64 {
        self.after
    }

    /// The next record, gap, or [`Next::Pending`].
    ///
    /// # Errors
    /// A file of the journal that exists but cannot be read (permissions, a corrupt
    /// compressed file).
    pub fn read(&mut self) -> io::Result<Next> {
        if let Some(item) = self.stashed.take() {
            self.after = item.record.seq;
            return Ok(Next::Record(item));
        }
        loop {
            if self.src.is_none() {
                self.src = self.open_next()?;
                if self.src.is_none() {
                    return Ok(Next::Pending);
                }
            }
            match self.read_line()? {
                Some(line) => {
                    let Ok(record) = serde_json::from_str::<Record>(&line) else {
                        // Not a record (a torn line sealed by recovery, stray bytes): the
                        // chain's verification speaks for it, a reader has nothing to hand.
                        continue;
                    };
                    let seq = record.seq;
                    let item = Item { line, record };
                    if seq <= self.after {
                        if self.context {
                            return Ok(Next::Context(item));
                        }
                        continue;
                    }
                    self.context = false;
                    if seq > self.after + 1 {
                        let first = self.after + 1;
                        self.after = seq - 1;
                        self.stashed = Some(item);
                        return Ok(Next::Missing {
                            first,
                            last: seq - 1,
                        });
                    }
                    self.after = seq;
                    return Ok(Next::Record(item));
                }
                None => {
                    if let Some(next) = self.at_end()? {
                        return Ok(next);
                    }
                }
            }
        }
    }

    /// At the end of the current file: `Some` to return, `None` to read on.
    fn at_end(&mut self) -> io::Result<Option<Next>> {
        let Some(src) = &mut self.src else {
            return Ok(None);
        };
        if let Some(id) = src.live {
            let now = fs::metadata(&self.path).ok().map(|m| (m.dev(), m.ino()));
            if now == Some(id) {
                return Ok(Some(Next::Pending));
            }
            // Rotated or moved away: what was written to it before is read to its end
            // through the handle, then the chain is looked at again.
            src.live = None;
            return Ok(None);
        }
        // A rotated file read to its end (a torn last line of it is not a record).
        self.partial.clear();
        let place = src.place;
        self.src = None;
        if let Place::Range { last, .. } = place
            && last > self.after
        {
            // The file's name promises records its content does not hold.
            let first = self.after + 1;
            self.after = last;
            return Ok(Some(Next::Missing { first, last }));
        }
        Ok(None)
    }

    /// The next complete line of the current file; `None` at its end (an unfinished last
    /// line of the live file is kept for the next call).
    fn read_line(&mut self) -> io::Result<Option<String>> {
        let Some(src) = &mut self.src else {
            return Ok(None);
        };
        let n = src.reader.read_until(b'\n', &mut self.partial)?;
        if n == 0 || self.partial.last() != Some(&b'\n') {
            return Ok(None);
        }
        self.partial.pop();
        let line = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial.clear();
        Ok(Some(line))
    }

    /// Opens the first file that can hold `after + 1`; `None` when there is no journal.
    fn open_next(&mut self) -> io::Result<Option<Source>> {
        self.partial.clear();
        // A file renamed or compressed between listing and opening: list again.
        for _ in 0..8 {
            let Some(seg) = self.pick() else {
                return Ok(None);
            };
            match open(&seg) {
                Ok(src) => {
                    if let Place::Legacy(n) = seg.place {
                        self.last_legacy = Some(n);
                    }
                    return Ok(Some(src));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("{}: {e}", seg.path.display()),
                    ));
                }
            }
        }
        Ok(None)
    }

    /// The segment to read next for `after + 1`.
    fn pick(&self) -> Option<Segment> {
        let want = self.after + 1;
        segments::chain(&self.path)
            .into_iter()
            .find(|s| match s.place {
                Place::Legacy(n) => self.last_legacy.is_none_or(|done| n < done),
                Place::Range { last, .. } => last >= want,
                Place::Live => true,
            })
    }
}

/// Opens one file of the chain for reading line by line.
fn open(seg: &Segment) -> io::Result<Source> {
    let file = File::open(&seg.path)?;
    let live = match seg.place {
        Place::Live => {
            let m = file.metadata()?;
            Some((m.dev(), m.ino()))
        }
        _ => None,
    };
    let reader: Box<dyn BufRead + Send> = if segments::is_compressed(&seg.path) {
        Box::new(BufReader::new(zstd::stream::read::Decoder::new(file)?))
    } else {
        Box::new(BufReader::with_capacity(64 * 1024, file))
    };
    Ok(Source {
        reader,
        place: seg.place,
        live,
    })
}

#[cfg(test)]
mod tests;
