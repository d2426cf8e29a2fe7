//! The audit journal's files as an auditor reads them, without pgwarden: the chain's files
//! next to the live one (rotated ones named `PATH.<first>-<last>`, `.zst` once compressed),
//! and their bytes, decompressed by Debian's `zstd`.
use std::path::{Path, PathBuf};
use std::process::Command;

/// A journal file's bytes, decompressed by `zstd -dc` when it is `.zst` (empty when absent).
///
/// # Panics
///
/// When `zstd` cannot run or fails (`cargo xtask setup` installs it).
#[must_use]
pub fn journal_bytes(file: &Path) -> Vec<u8> {
    if file.extension().is_some_and(|e| e == "zst") {
        let out = Command::new("zstd")
            .arg("-dc")
            .arg(file)
            .output()
            .expect("run zstd (cargo xtask setup installs it)");
        assert!(out.status.success(), "zstd -dc {}", file.display());
        out.stdout
    } else {
        std::fs::read(file).unwrap_or_default()
    }
}

/// The rotated files of the journal whose live file is `live`, by name (oldest first for
/// names of equal width), then `live` itself when it exists.
///
/// # Panics
///
/// When the directory cannot be read.
#[must_use]
pub fn journal_files(live: &Path) -> Vec<PathBuf> {
    let prefix = format!("{}.", live.file_name().unwrap().to_string_lossy());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    let mut v: Vec<PathBuf> = std::fs::read_dir(live.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .strip_prefix(&prefix)
                .is_some_and(|r| {
                    let r = r.strip_suffix(".zst").unwrap_or(r);
                    r.split_once('-')
                        .is_some_and(|(a, b)| digits(a) && digits(b))
                })
        })
        .collect();
    v.sort();
    if live.exists() {
        v.push(live.to_owned());
    }
    v
}
