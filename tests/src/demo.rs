//! The demo's files (`demo/seed.sql`, `demo/pgwarden-demo.yaml`), shared by `cargo xtask demo`
//! and the e2e suite's MCP test, so the test proves what the demo shows.

use std::fs;
use std::path::{Path, PathBuf};

use crate::clients::workspace_root;
use crate::net::free_port;

/// The workload the demo's config names for its cgroup.
pub const DEMO_WORKLOAD: &str = "payments-mcp";

/// `demo/<name>` in the workspace.
pub fn demo_file(name: &str) -> PathBuf {
    workspace_root().join("demo").join(name)
}

/// The payments schema with its synthetic rows (`demo/seed.sql`): 300 payments with Luhn-valid
/// card numbers, 50 customers, 3 secrets.
///
/// # Panics
///
/// When the file cannot be read.
#[track_caller]
pub fn demo_seed_sql() -> String {
    let path = demo_file("seed.sql");
    fs::read_to_string(&path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
}

/// What `demo/pgwarden-demo.yaml` leaves open.
pub struct DemoConfig<'a> {
    /// PostgreSQL's port: the intercepted destination.
    pub pg_port: u16,
    /// The agent's control socket.
    pub control: &'a Path,
    /// The tagged cgroup, relative to the cgroup2 root.
    pub cgroup: &'a str,
    /// The policy file (the demo uses the repository's `policies/pci-dss.yaml`).
    pub policy: &'a Path,
    /// The key file of the `hash` masking method.
    pub hash_key_file: &'a Path,
    /// The audit journal file.
    pub audit_file: &'a Path,
    /// PostgreSQL's Unix socket directory: intercepted too.
    pub pg_socket_dir: &'a Path,
}

impl DemoConfig<'_> {
    /// `demo/pgwarden-demo.yaml` with its `${NAME}` markers filled in, listening on a free
    /// loopback port.
    ///
    /// # Panics
    ///
    /// When the template cannot be read or names a marker this does not fill.
    #[track_caller]
    pub fn render(&self) -> String {
        let path = demo_file("pgwarden-demo.yaml");
        let template = fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
        let values = [
            ("LISTEN_PORT", free_port().to_string()),
            ("PG_PORT", self.pg_port.to_string()),
            ("CONTROL_SOCKET", self.control.display().to_string()),
            ("CGROUP", self.cgroup.to_owned()),
            ("POLICY", self.policy.display().to_string()),
            ("HASH_KEY_FILE", self.hash_key_file.display().to_string()),
            ("AUDIT_FILE", self.audit_file.display().to_string()),
            ("PG_SOCKET_DIR", self.pg_socket_dir.display().to_string()),
        ];
        let text = fill(&template, &values);
        if let Some(marker) = first_marker(&text) {
            panic!("{}: unknown marker {marker}", path.display());
        }
        text
    }
}

/// `template` with every `${NAME}` of `values` replaced.
fn fill(template: &str, values: &[(&str, String)]) -> String {
    values
        .iter()
        .fold(template.to_owned(), |text, (name, value)| {
            text.replace(&format!("${{{name}}}"), value)
        })
}

/// The first `${NAME}` (NAME: capitals and `_`) left in `text`.
fn first_marker(text: &str) -> Option<&str> {
    text.match_indices("${").find_map(|(at, _)| {
        let name_len = text[at + 2..]
            .bytes()
            .take_while(|b| b.is_ascii_uppercase() || *b == b'_')
            .count();
        let end = at + 2 + name_len;
        (name_len > 0 && text[end..].starts_with('}')).then(|| &text[at..=end])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_is_filled_completely() {
        let config = DemoConfig {
            pg_port: 5433,
            control: Path::new("/tmp/x/control.sock"),
            cgroup: "pgwarden-demo-1-0",
            policy: Path::new("/p/pci-dss.yaml"),
            hash_key_file: Path::new("/tmp/x/mask.key"),
            audit_file: Path::new("/tmp/x/audit.jsonl"),
            pg_socket_dir: Path::new("/tmp/x/pg"),
        }
        .render();
        assert_eq!(first_marker(&config), None, "{config}");
        assert!(config.contains("\"*:5433\""), "{config}");
        assert!(config.contains("cgroup: \"pgwarden-demo-1-0\""), "{config}");
        assert!(config.contains("path: /tmp/x/audit.jsonl"), "{config}");
        assert!(
            config.contains(&format!("name: {DEMO_WORKLOAD}")),
            "{config}"
        );
        assert!(
            config.contains("hash_key_file: /tmp/x/mask.key"),
            "{config}"
        );
    }

    #[test]
    fn markers_are_capitals_in_braces() {
        assert_eq!(first_marker("a ${...} b ${PG_PORT} c"), Some("${PG_PORT}"));
        assert_eq!(first_marker("a ${} ${x} ${A"), None);
    }

    #[test]
    fn fill_replaces_every_occurrence() {
        assert_eq!(
            fill("${A}:${B}/${A}", &[("A", "1".into()), ("B", "2".into())]),
            "1:2/1"
        );
    }

    #[test]
    fn the_seed_has_the_three_tables() {
        let sql = demo_seed_sql();
        for table in ["payments(", "customers(", "secrets("] {
            assert!(sql.contains(&format!("CREATE TABLE {table}")), "{table}");
        }
    }
}
