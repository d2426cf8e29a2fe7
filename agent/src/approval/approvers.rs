//! Named approvers for the HTTP API: `pgwarden approvers add NAME [--group G]...` makes a
//! token, prints it once and keeps only its SHA-256 in the approvers file (JSON, mode 0600,
//! written whole and renamed into place under an exclusive lock). The agent reads the file
//! again whenever it changed, so a removed approver is locked out at their next request.
//!
//! A token is `pgw_` and 64 hex digits: 256 bits from the kernel's random source. A fast hash
//! is enough for a secret that cannot be guessed (unlike a password, it needs no stretching).
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The approvers file under the agent's state directory.
pub fn default_file(state_dir: &Path) -> PathBuf {
    state_dir.join("approvers.json")
}

/// One approver, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approver {
    /// Name, matched by `user:NAME` in a rule's approvers.
    pub name: String,
    /// Groups, matched by `group:G`.
    #[serde(default)]
    pub groups: Vec<String>,
    /// SHA-256 of the token, lowercase hex.
    pub token_sha256: String,
    /// When the token was made (RFC 3339).
    pub created: String,
}

/// The file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    approvers: Vec<Approver>,
}

/// Whether `name` can name an approver or a group: letters, digits and `._@-`, 1 to 64.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Equal, in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn read(path: &Path) -> anyhow::Result<File> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not an approvers file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(File::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Runs `change` on the file's content under an exclusive lock and writes the result back
/// (a new file renamed into place, mode 0600).
fn update<T>(
    path: &Path,
    change: impl FnOnce(&mut File) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let lock_path = path.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("locking {}", lock_path.display()))?;
    let mut file = read(path)?;
    let out = change(&mut file)?;
    let tmp = path.with_extension("json.new");
    let mut text = serde_json::to_vec_pretty(&file)?;
    text.push(b'\n');
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&text)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(out)
}

/// Adds an approver; returns their token (shown once, never stored).
pub fn add(path: &Path, name: &str, groups: &[String]) -> anyhow::Result<String> {
    anyhow::ensure!(
        valid_name(name),
        "approver name `{name}`: use letters, digits and `._@-` (1 to 64)"
    );
    for g in groups {
        anyhow::ensure!(
            valid_name(g),
            "group `{g}`: use letters, digits and `._@-` (1 to 64)"
        );
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("the kernel's random source: {e}"))?;
    let token = format!("pgw_{}", hex::encode(secret));
    let approver = Approver {
        name: name.to_owned(),
        groups: groups.to_vec(),
        token_sha256: token_hash(&token),
        created: jiff::Timestamp::now()
            .round(jiff::Unit::Second)?
            .to_string(),
    };
    update(path, |f| {
        anyhow::ensure!(
            !f.approvers.iter().any(|a| a.name == name),
            "approver `{name}` exists: `pgwarden approvers remove {name}` first to give them a new token"
        );
        f.approvers.push(approver);
        Ok(())
    })?;
    Ok(token)
}

/// Removes an approver; whether there was one.
pub fn remove(path: &Path, name: &str) -> anyhow::Result<bool> {
    update(path, |f| {
        let before = f.approvers.len();
        f.approvers.retain(|a| a.name != name);
        Ok(f.approvers.len() != before)
    })
}

/// The approvers in the file.
pub fn list(path: &Path) -> anyhow::Result<Vec<Approver>> {
    Ok(read(path)?.approvers)
}

/// The agent's view of the approvers file, read again when it changes.
pub struct Directory {
    path: PathBuf,
    cached: Mutex<Option<(Stamp, Read)>>,
}

/// The file as last read: its approvers, or why it could not be read.
type Read = Result<Vec<Approver>, String>;

/// What tells the file changed: inode, size, modification time.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp(u64, u64, i64, i64);

impl Directory {
    /// The approvers in `path`.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            cached: Mutex::new(None),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The approver whose token this is. `Err` when the file cannot be read: then nobody is
    /// let in (fail closed) and the caller says why.
    pub fn lookup(&self, token: &str) -> Result<Option<Approver>, String> {
        let hash = token_hash(token);
        let stamp = std::fs::metadata(&self.path)
            .map(|m| Stamp(m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
            .unwrap_or(Stamp(0, 0, 0, 0));
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if cached.as_ref().is_none_or(|(s, _)| *s != stamp) {
            let read = read(&self.path)
                .map(|f| f.approvers)
                .map_err(|e| format!("{e:#}"));
            *cached = Some((stamp, read));
        }
        let Some((_, approvers)) = cached.as_ref() else {
            return Ok(None);
        };
        let approvers = approvers.as_ref().map_err(Clone::clone)?;
        Ok(approvers
            .iter()
            .find(|a| same(a.token_sha256.as_bytes(), hash.as_bytes()))
            .cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_lookup_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = default_file(&dir.path().join("state"));
        let token = add(&path, "alice", &["pgwarden-approvers".into()]).unwrap();
        assert!(token.starts_with("pgw_") && token.len() == 68, "{token}");
        // Only the hash is kept.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&token[4..]), "{text}");
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(add(&path, "alice", &[]).is_err(), "a second alice");
        assert!(add(&path, "bad name", &[]).is_err());
        let bob = add(&path, "bob", &[]).unwrap();
        assert_ne!(token, bob);

        let d = Directory::new(path.clone());
        let a = d.lookup(&token).unwrap().unwrap();
        assert_eq!(a.name, "alice");
        assert_eq!(a.groups, ["pgwarden-approvers"]);
        assert_eq!(d.lookup(&bob).unwrap().unwrap().name, "bob");
        assert!(d.lookup("pgw_0000").unwrap().is_none());
        assert!(d.lookup("").unwrap().is_none());

        // Removed: locked out at once, without an agent restart.
        assert!(remove(&path, "alice").unwrap());
        assert!(!remove(&path, "alice").unwrap());
        assert!(d.lookup(&token).unwrap().is_none());
        assert_eq!(list(&path).unwrap().len(), 1);

        // A broken file lets nobody in, and says why.
        std::fs::write(&path, "{not json").unwrap();
        let e = d.lookup(&bob).unwrap_err();
        assert!(e.contains("not an approvers file"), "{e}");
    }

    #[test]
    fn names() {
        assert!(valid_name("alice"));
        assert!(valid_name("a.b-c_d@example.com"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name("ä"));
        assert!(!valid_name(&"x".repeat(65)));
    }
}
