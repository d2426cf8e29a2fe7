//! What the audit tests share: a journal's settings in a temporary directory, and reading
//! back what it wrote. Test-only.
use std::path::Path;

use serde_json::Value;

use super::{AuditConfig, JournaldMirror};

/// A journal `audit.jsonl` in `dir`, without journald and checkpoints (tests that want them
/// set them).
pub(crate) fn config(dir: &Path) -> AuditConfig {
    AuditConfig {
        path: dir.join("audit.jsonl"),
        state_dir: dir.join("state"),
        journald: JournaldMirror::Off,
        checkpoint_every: 0,
        checkpoint_seconds: 0,
        ..AuditConfig::default()
    }
}

/// The records of a file; every line must be one.
pub(crate) fn lines(p: &Path) -> Vec<Value> {
    String::from_utf8(super::segments::read(p).unwrap())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The records of a file, skipping lines that are not JSON.
pub(crate) fn lines_lossy(p: &Path) -> Vec<Value> {
    String::from_utf8_lossy(&super::segments::read(p).unwrap())
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
