//! The journal's files, in chain order: the files rotated out of the live file, named by the
//! seq range they hold (`audit.jsonl.000000000001-000000004242`, `.zst` once compressed), then
//! the live file itself. Journals written before files were named by range (`audit.jsonl.1`
//! newest … `audit.jsonl.N` oldest) are read too, oldest first, before the named ones.
//!
//! Names sort by seq when compared as numbers (the 12-digit padding only makes them line up
//! in `ls`). A range file and its compressed twin can both exist for a moment (the archiver
//! writes `.zst.tmp`, renames it into place, then removes the plain file): readers take the
//! plain one.
use std::fs::File;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

/// Where a file sits in the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Place {
    /// A file rotated before files were named by range: `PATH.n`, 1 the newest.
    Legacy(usize),
    /// A rotated file holding `first..=last` (`first > last`: a file that held no record).
    Range {
        /// First seq in it.
        first: u64,
        /// Last seq in it.
        last: u64,
        /// zstd-compressed (`.zst`).
        compressed: bool,
    },
    /// The live file, `PATH`.
    Live,
}

/// One file of the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The file.
    pub path: PathBuf,
    /// What its name says.
    pub place: Place,
}

impl Segment {
    /// A rotated file (not the live one).
    pub fn rotated(&self) -> bool {
        self.place != Place::Live
    }
}

/// The name of the rotated file holding `first..=last`.
pub fn range_name(path: &Path, first: u64, last: u64, compressed: bool) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{first:012}-{last:012}"));
    if compressed {
        s.push(".zst");
    }
    PathBuf::from(s)
}

/// `PATH.n`, the name of a rotated file before files were named by range.
pub fn legacy_name(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// What a sibling's suffix (after `NAME.`) says it is.
fn place_of(suffix: &str) -> Option<Place> {
    if let Ok(n) = suffix.parse::<usize>() {
        return (n > 0).then_some(Place::Legacy(n));
    }
    let (range, compressed) = match suffix.strip_suffix(".zst") {
        Some(r) => (r, true),
        None => (suffix, false),
    };
    let (a, b) = range.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(a) || !digits(b) {
        return None;
    }
    Some(Place::Range {
        first: a.parse().ok()?,
        last: b.parse().ok()?,
        compressed,
    })
}

/// The directory `path` is in (`.` for a bare name).
pub(crate) fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// The rotated files of the journal at `path`, oldest first: legacy ones (highest number
/// first), then by range; a range present plain and compressed is listed once, plain.
pub fn rotated(path: &Path) -> Vec<Segment> {
    let Some(name) = path.file_name() else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut found: Vec<Segment> = std::fs::read_dir(dir_of(path))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let file = e.file_name();
            let place = place_of(file.to_str()?.strip_prefix(&prefix)?)?;
            Some(Segment {
                path: e.path(),
                place,
            })
        })
        .collect();
    found.sort_by_key(|s| match s.place {
        // Legacy files are older than any named by range; among them, higher is older.
        Place::Legacy(n) => (0, u64::MAX - n as u64, 0, false),
        Place::Range {
            first,
            last,
            compressed,
        } => (1, first, last, compressed),
        Place::Live => (2, 0, 0, false),
    });
    found.dedup_by(|later, earlier| match (earlier.place, later.place) {
        (
            Place::Range {
                first: a,
                last: b,
                compressed: false,
            },
            Place::Range {
                first: c,
                last: d,
                compressed: true,
            },
        ) => a == c && b == d,
        _ => false,
    });
    found
}

/// The whole chain of the journal at `path`, oldest first: its rotated files, then the live
/// file if it exists.
pub fn chain(path: &Path) -> Vec<Segment> {
    let mut v = rotated(path);
    if path.exists() {
        v.push(Segment {
            path: path.to_owned(),
            place: Place::Live,
        });
    }
    v
}

/// The paths of [`chain`].
pub fn chain_paths(path: &Path) -> Vec<PathBuf> {
    chain(path).into_iter().map(|s| s.path).collect()
}

/// Whether `path` names a compressed file.
pub fn is_compressed(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "zst")
}

/// The bytes of a journal file, decompressed when it is `.zst`.
///
/// A plain rotated file that is gone is read from its compressed twin: the archiver may have
/// just replaced it.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    if !is_compressed(path) {
        return match std::fs::read(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut twin = path.as_os_str().to_owned();
                twin.push(".zst");
                let twin = PathBuf::from(twin);
                if twin.exists() { read(&twin) } else { Err(e) }
            }
            other => other,
        };
    }
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(File::open(path)?)?
        .read_to_end(&mut out)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_sort_by_seq() {
        let p = Path::new("/x/audit.jsonl");
        let n = range_name(p, 1, 4242, true);
        assert_eq!(
            n,
            PathBuf::from("/x/audit.jsonl.000000000001-000000004242.zst")
        );
        assert_eq!(
            place_of("000000000001-000000004242.zst"),
            Some(Place::Range {
                first: 1,
                last: 4242,
                compressed: true
            })
        );
        assert_eq!(place_of("3"), Some(Place::Legacy(3)));
        for bad in [
            "0",
            "lock",
            "zst.tmp",
            "1-2.zst.tmp",
            "-5",
            "1-",
            "displaced-17",
        ] {
            assert_eq!(place_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_chain_is_ordered_and_a_plain_file_wins_over_its_twin() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        for name in [
            "audit.jsonl",
            "audit.jsonl.1",
            "audit.jsonl.2",
            "audit.jsonl.000000000100-000000000199.zst",
            "audit.jsonl.000000000100-000000000199",
            // Wider than the padding: still sorted as numbers.
            "audit.jsonl.1000000000000-1000000000005.zst",
            "audit.jsonl.000000000200-000000000299.zst",
            "audit.jsonl.000000000300-000000000399.zst.tmp",
            "audit.jsonl.lock",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let names: Vec<String> = chain(&p)
            .iter()
            .map(|s| s.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "audit.jsonl.2",
                "audit.jsonl.1",
                "audit.jsonl.000000000100-000000000199",
                "audit.jsonl.000000000200-000000000299.zst",
                "audit.jsonl.1000000000000-1000000000005.zst",
                "audit.jsonl",
            ]
        );
    }

    #[test]
    fn compressed_files_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl.000000000001-000000000002.zst");
        let body = b"{\"seq\":1}\n{\"seq\":2}\n".repeat(100);
        std::fs::write(&p, zstd::encode_all(&body[..], 3).unwrap()).unwrap();
        assert_eq!(read(&p).unwrap(), body);
        let plain = dir.path().join("a.jsonl");
        std::fs::write(&plain, &body).unwrap();
        assert_eq!(read(&plain).unwrap(), body);
    }
}
