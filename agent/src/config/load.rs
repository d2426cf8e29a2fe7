//! Reading a configuration file: YAML errors with the parser's position, then the semantic
//! checks, each pointing at the node it is about (found by [`locate`], not by text search).
use std::fmt;
use std::path::{Path, PathBuf};

use super::locate::{self, Point};
use super::{Config, SslMode};
use crate::yaml_path;

/// A configuration that cannot be used, with where.
#[derive(Debug)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub at: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// A YAML error of `file`, at the position the parser gives.
    pub fn yaml(file: &Path, e: &serde_yaml_ng::Error) -> Self {
        let at = e.location().map(|l| (l.line(), l.column()));
        let mut message = e.to_string();
        // serde_yaml_ng appends " at line L column C"; we print the position up front.
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        Self {
            file: file.to_owned(),
            at,
            message,
        }
    }

    /// A semantic error of `file` (whose text is `text`) about the node at `path`.
    pub fn at_path(file: &Path, text: &str, invalid: Invalid) -> Self {
        Self {
            file: file.to_owned(),
            at: locate::locate(text, &invalid.path, invalid.point),
            message: invalid.message,
        }
    }
}

/// What a semantic check found wrong, and the node it is about.
#[derive(Debug)]
pub struct Invalid {
    /// The node (or the nearest ancestor the text has, when the value is a default).
    pub path: locate::Path,
    /// Its key or its value.
    pub point: Point,
    /// What is wrong.
    pub message: String,
}

impl Invalid {
    /// About the key at `path`.
    pub fn key(path: locate::Path, message: impl Into<String>) -> Self {
        Self {
            path,
            point: Point::Key,
            message: message.into(),
        }
    }

    /// About the value at `path`.
    pub fn value(path: locate::Path, message: impl Into<String>) -> Self {
        Self {
            path,
            point: Point::Value,
            message: message.into(),
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_owned(),
            at: None,
            message: e.to_string(),
        })?;
        Self::parse(file, &text)
    }

    /// Parses and validates configuration text read from `file`.
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: Self = if text.trim().is_empty() {
            serde_yaml_ng::from_str("{}")
        } else {
            serde_yaml_ng::from_str(text)
        }
        .map_err(|e| ConfigError::yaml(file, &e))?;
        config
            .validate()
            .map_err(|invalid| ConfigError::at_path(file, text, invalid))?;
        Ok(config)
    }

    /// Semantic checks.
    fn validate(&self) -> Result<(), Invalid> {
        if self.listen.ipv4.is_none() && self.listen.ipv6.is_none() {
            return Err(Invalid::key(
                yaml_path!["listen"],
                "listen: at least one of ipv4, ipv6 is needed",
            ));
        }
        if let Some(name) = self.listen.unix_name() {
            let len = crate::names::SockAddr::sun_path(&name).len();
            if !(2..=agent_common::UNIX_PATH_LEN).contains(&len) {
                return Err(Invalid::key(
                    yaml_path!["listen", "unix"],
                    format!(
                        "listen.unix `{name}`: a socket name of 1 to {} bytes (`@name` for the abstract namespace)",
                        agent_common::UNIX_PATH_LEN - 1
                    ),
                ));
            }
        }
        let unix_paths = (self.intercept_unix.iter().enumerate())
            .map(|(i, p)| ("intercept_unix", i, p))
            .chain((self.unix_allow.iter().enumerate()).map(|(i, p)| ("unix_allow", i, p)));
        for (key, i, p) in unix_paths {
            if !p.is_absolute() || p.as_os_str().len() >= agent_common::UNIX_PATH_LEN {
                return Err(Invalid::value(
                    yaml_path![key, i],
                    format!(
                        "intercept_unix/unix_allow `{}`: an absolute directory or socket path under {} bytes",
                        p.display(),
                        agent_common::UNIX_PATH_LEN
                    ),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, w) in self.workloads.iter().enumerate() {
            let name = || yaml_path!["workloads", i, "name"];
            if !valid_workload_name(&w.name) {
                return Err(Invalid::key(
                    name(),
                    format!(
                        "workload name `{}`: use letters, digits, `-`, `_` and `.` (1 to 64)",
                        w.name
                    ),
                ));
            }
            if !seen.insert(w.name.as_str()) {
                return Err(Invalid::key(
                    name(),
                    format!("workload `{}` is defined twice", w.name),
                ));
            }
            let matchers = (w.systemd_unit.iter().enumerate())
                .map(|(j, g)| ("systemd_unit", j, g))
                .chain((w.cgroup.iter().enumerate()).map(|(j, g)| ("cgroup", j, g)));
            for (key, j, g) in matchers {
                // A single glob may be written without a list: point at the key then.
                let path = yaml_path!["workloads", i, key, j];
                if g.is_empty() {
                    return Err(Invalid::value(
                        path,
                        format!("workload `{}`: empty matcher", w.name),
                    ));
                }
                if let Err(e) = crate::cgroup::Glob::new(g.trim_start_matches('/')) {
                    return Err(Invalid::value(path, format!("workload `{}`: {e}", w.name)));
                }
            }
        }
        for (i, w) in self.workloads.iter().enumerate() {
            if let Some(auth) = &w.upstream_auth
                && let Err((key, message)) = auth.check(self.upstream.sslmode)
            {
                return Err(Invalid::key(
                    yaml_path!["workloads", i, "upstream_auth", key],
                    format!("workload `{}`: {message}", w.name),
                ));
            }
        }
        if self.upstream.sslmode == SslMode::VerifyFull && self.upstream.ca.is_none() {
            return Err(Invalid::key(
                yaml_path!["upstream", "sslmode"],
                "upstream.sslmode verify-full needs upstream.ca (PEM CA certificates)",
            ));
        }
        if self.limits.message_bytes < 1024 {
            return Err(Invalid::key(
                yaml_path!["limits", "message_bytes"],
                LIMITS_MESSAGE,
            ));
        }
        if self.limits.statement_bytes < self.limits.message_bytes {
            return Err(Invalid::key(
                yaml_path!["limits", "statement_bytes"],
                LIMITS_MESSAGE,
            ));
        }
        if self.audit.path.as_os_str().is_empty() {
            return Err(Invalid::key(yaml_path!["audit", "path"], AUDIT_MESSAGE));
        }
        if self.audit.queue == 0 {
            return Err(Invalid::key(yaml_path!["audit", "queue"], AUDIT_MESSAGE));
        }
        if self.audit.max_bytes < 4096 {
            return Err(Invalid::key(
                yaml_path!["audit", "max_bytes"],
                "audit.max_bytes must be at least 4096",
            ));
        }
        if let Err(e) = crate::audit::targets::check(&self.audit.forward) {
            return Err(Invalid::key(yaml_path!["audit", "forward"], e.to_string()));
        }
        if let Some(http) = &self.approvals.http
            && let Err((key, message)) = http.validate()
        {
            return Err(Invalid::key(yaml_path!["approvals", "http", key], message));
        }
        if self.cgroups.rescan_seconds == 0 {
            return Err(Invalid::key(
                yaml_path!["cgroups", "rescan_seconds"],
                "cgroups.rescan_seconds must be at least 1",
            ));
        }
        Ok(())
    }
}

const LIMITS_MESSAGE: &str =
    "limits: message_bytes must be at least 1024 and statement_bytes at least message_bytes";
const AUDIT_MESSAGE: &str = "audit: path must not be empty and queue must be at least 1";

/// Whether `name` can be a workload name.
pub fn valid_workload_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
