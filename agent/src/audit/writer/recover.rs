//! Recovery on open: where the chain resumes (`seq`, `prev_hash`), read from the tail of the
//! current file or, when it holds no complete record, of the newest rotated file that does;
//! what is torn after it, for the `audit.gap` that seals it; and, when the head kept in the
//! state directory is ahead of every file (the directory was emptied, the newest files were
//! deleted), the records that are missing, for the `audit.reopen` that says so.
use std::fs::File;
use std::io::{self, BufRead as _, BufReader, Read as _, Seek as _, SeekFrom};
use std::path::Path;

use serde_json::Value;
use tracing::warn;

use crate::audit::canon::hash_value;
use crate::audit::record::GENESIS_HASH;
use crate::audit::segments;

/// Where the chain resumes.
pub(super) struct Recovered {
    pub(super) next_seq: u64,
    pub(super) prev_hash: String,
    pub(super) torn: Option<Torn>,
    /// The first seq in the live file, when it holds a record.
    pub(super) file_first: Option<u64>,
    /// The journal's files end before the head kept in the state directory: the last seq
    /// they hold (0: none).
    pub(super) behind_head: Option<u64>,
}

/// Bytes at the end of the chain that are not a complete record.
pub(super) struct Torn {
    pub(super) bytes: u64,
    pub(super) after_seq: Option<u64>,
    /// The rotated file the tear is in, when it is not the current one.
    pub(super) file: Option<String>,
    pub(super) reason: &'static str,
    /// The current file does not end with a newline.
    pub(super) needs_newline: bool,
}

/// The tail of one file: its last complete record and what follows it.
pub(super) struct Tail {
    pub(super) last: Option<(u64, String)>,
    pub(super) torn_bytes: u64,
    pub(super) ends_with_newline: bool,
    pub(super) len: u64,
}

/// Where the chain of `path` resumes: its files' tail, or the `head` kept in the state
/// directory when that is ahead of them.
pub(super) fn recover(path: &Path, head: Option<(u64, String)>) -> io::Result<Recovered> {
    let mut r = recover_files(path)?;
    r.file_first = first_seq(path)?;
    if let Some((seq, hash)) = head {
        let last = r.next_seq - 1;
        if seq > last {
            warn!(
                "audit journal {}: its files end at seq {last}, the head kept in the state                  directory is seq {seq}: records {}..={seq} are missing; the chain goes on                  from the head",
                path.display(),
                last + 1
            );
            r.behind_head = Some(last);
            r.next_seq = seq + 1;
            r.prev_hash = hash;
        } else if seq == last && hash != r.prev_hash {
            warn!(
                "audit journal {}: the head kept in the state directory (seq {seq}) has                  another hash than the journal's; the journal's is used",
                path.display()
            );
        }
    }
    Ok(r)
}

/// The first seq in `path` (its first lines that are records), if any.
fn first_seq(path: &Path) -> io::Result<Option<u64>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // Not a regular file (`/dev/full` in tests): nothing to read, and maybe no end to it.
    if !f.metadata()?.is_file() {
        return Ok(None);
    }
    let mut r = BufReader::new(f.take(1 << 20));
    let mut line = Vec::new();
    for _ in 0..64 {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line.last() == Some(&b'\n')
            && let Ok(v) = serde_json::from_slice::<Value>(&line)
            && let Some(seq) = v.get("seq").and_then(Value::as_u64)
        {
            return Ok(Some(seq));
        }
    }
    Ok(None)
}

/// Where the chain of `path`'s files resumes (its tail, else its rotated files'), and what is
/// torn at its end.
fn recover_files(path: &Path) -> io::Result<Recovered> {
    let current = scan_tail(path)?;
    let (cur_torn, cur_nl) = current.as_ref().map_or((0, true), |t| {
        (t.torn_bytes, t.ends_with_newline || t.len == 0)
    });
    if let Some(Tail {
        last: Some((seq, hash)),
        ..
    }) = &current
    {
        return Ok(Recovered {
            next_seq: seq + 1,
            prev_hash: hash.clone(),
            file_first: None,
            behind_head: None,
            torn: (cur_torn > 0).then_some(Torn {
                bytes: cur_torn,
                after_seq: Some(*seq),
                file: None,
                reason: if cur_nl {
                    "last line is not a record"
                } else {
                    "last line has no newline"
                },
                needs_newline: !cur_nl,
            }),
        });
    }
    // The current file is missing, empty or holds no complete record: the chain continues
    // from the newest rotated file that has one.
    let mut torn_rotated = 0;
    let mut torn_file = None;
    for seg in segments::rotated(path).into_iter().rev() {
        let rotated = seg.path;
        let Some(t) = scan_rotated(&rotated)? else {
            continue;
        };
        torn_rotated += t.torn_bytes;
        if t.torn_bytes > 0 {
            torn_file = rotated
                .file_name()
                .map(|f| f.to_string_lossy().into_owned());
        }
        if let Some((seq, hash)) = t.last {
            let bytes = torn_rotated + cur_torn;
            return Ok(Recovered {
                next_seq: seq + 1,
                prev_hash: hash,
                file_first: None,
                behind_head: None,
                torn: (bytes > 0).then_some(Torn {
                    bytes,
                    after_seq: Some(seq),
                    file: if cur_torn > 0 { None } else { torn_file },
                    reason: "tail of the chain is not a record",
                    needs_newline: !cur_nl,
                }),
            });
        }
    }
    let bytes = torn_rotated + cur_torn;
    Ok(Recovered {
        next_seq: 1,
        prev_hash: GENESIS_HASH.into(),
        file_first: None,
        behind_head: None,
        torn: (bytes > 0).then_some(Torn {
            bytes,
            after_seq: None,
            file: None,
            reason: "no complete record found",
            needs_newline: !cur_nl,
        }),
    })
}

/// [`scan_tail`] of a rotated file, decompressing it when it is `.zst`.
pub(super) fn scan_rotated(path: &Path) -> io::Result<Option<Tail>> {
    if !segments::is_compressed(path) {
        return scan_tail(path);
    }
    let data = match segments::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Some(tail_of(&data)))
}

/// [`scan_tail`] of a whole file's bytes.
fn tail_of(data: &[u8]) -> Tail {
    let len = data.len() as u64;
    let ends_with_newline = data.last().is_none_or(|&c| c == b'\n');
    let mut line_end = data.iter().rposition(|&c| c == b'\n').map_or(0, |p| p + 1);
    while line_end > 0 {
        let line_start = data[..line_end - 1]
            .iter()
            .rposition(|&c| c == b'\n')
            .map_or(0, |p| p + 1);
        if let Some(last) = parse_head(&data[line_start..line_end - 1]) {
            return Tail {
                last: Some(last),
                torn_bytes: len - line_end as u64,
                ends_with_newline,
                len,
            };
        }
        line_end = line_start;
    }
    Tail {
        last: None,
        torn_bytes: len,
        ends_with_newline,
        len,
    }
}

/// The last complete record of `path` (reading backwards from the end), or `None` when the
/// file does not exist.
pub(super) fn scan_tail(path: &Path) -> io::Result<Option<Tail>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let mut window: u64 = 64 * 1024;
    loop {
        let start = len.saturating_sub(window);
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::with_capacity((len - start) as usize);
        (&mut f).take(len - start).read_to_end(&mut buf)?;
        let ends_with_newline = buf.last().is_none_or(|&c| c == b'\n');
        // Complete lines, from the end; at start > 0 the first segment may be partial.
        let mut line_end = buf.iter().rposition(|&c| c == b'\n').map_or(0, |p| p + 1);
        let mut need_more = start > 0 && line_end == 0;
        while !need_more && line_end > 0 {
            let line_start = match buf[..line_end - 1].iter().rposition(|&c| c == b'\n') {
                Some(p) => p + 1,
                None if start == 0 => 0,
                None => {
                    need_more = true;
                    break;
                }
            };
            if let Some(last) = parse_head(&buf[line_start..line_end - 1]) {
                return Ok(Some(Tail {
                    last: Some(last),
                    torn_bytes: len - (start + line_end as u64),
                    ends_with_newline,
                    len,
                }));
            }
            line_end = line_start;
        }
        if !need_more {
            return Ok(Some(Tail {
                last: None,
                torn_bytes: len,
                ends_with_newline,
                len,
            }));
        }
        window = window.saturating_mul(4);
    }
}

/// `seq` and `hash` of a journal line, if it is a record.
fn parse_head(line: &[u8]) -> Option<(u64, String)> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let seq = v.get("seq")?.as_u64()?;
    let hash = v.get("hash")?.as_str()?.to_owned();
    if hash_value(&v) != hash {
        warn!(
            "audit journal: the last record (seq {seq}) does not verify; chaining on anyway \
             (run `pgwarden audit verify`)"
        );
    }
    Some((seq, hash))
}
