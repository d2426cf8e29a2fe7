//! A forwarding target's delivery cursor, `<state_dir>/forward/<name>.cursor`: the seq (and
//! hash) of the last record its collector acknowledged. Written to a temporary file renamed
//! over the old one, so a crash leaves the old cursor or the new one, never half of one:
//! after a crash the records since the old cursor are sent again (at least once; seq is the
//! key a collector deduplicates on). Retention reads the cursors too: it deletes nothing a
//! target has not delivered.
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a cursor file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Last seq delivered (or reported missing).
    pub seq: u64,
    /// Its record's hash ("" after a gap).
    #[serde(default)]
    pub hash: String,
}

/// The cursor file of target `name`.
pub fn path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("forward").join(format!("{name}.cursor"))
}

/// The cursor at `path`; `None` when there is none yet.
///
/// # Errors
/// A cursor that cannot be read or parsed: the forwarder refuses to guess where it was.
pub fn load(path: &Path) -> io::Result<Option<Cursor>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

/// Stores `cursor` at `path` (creating its directory, mode 0700).
///
/// # Errors
/// The directory or file cannot be written.
pub fn save(path: &Path, cursor: &Cursor) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let body = serde_json::to_vec(cursor).map_err(io::Error::other)?;
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_a_broken_cursor_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "siem");
        assert_eq!(load(&p).unwrap(), None);
        let c = Cursor {
            seq: 42,
            hash: "ab".repeat(32),
        };
        save(&p, &c).unwrap();
        assert_eq!(load(&p).unwrap(), Some(c));
        std::fs::write(&p, b"{\"seq\":").unwrap();
        assert!(load(&p).is_err());
    }
}
