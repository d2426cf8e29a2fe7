//! End-to-end test harness for pgwarden: starts a real PostgreSQL, creates cgroup v2 groups, runs
//! processes inside them, and drives the `pgwarden` daemon under test. Everything here needs root.
//!
//! Helpers panic with a full report (command, status, stdout, stderr, logs) instead of returning
//! errors, so a test reads as a straight line:
//!
//! ```no_run
//! use pgwarden_e2e::{PgServer, TestCgroup, in_cgroup, require_root, run_ok, unique_name};
//!
//! require_root();
//! let pg = PgServer::start();
//! let cg = TestCgroup::create(&unique_name("pgwarden-e2e-example"));
//! let out = run_ok(
//!     in_cgroup(&cg.path, "psql")
//!         .args(["-X", "-Atc", "select 1"])
//!         .arg(pg.url("127.0.0.1")),
//! );
//! assert_eq!(out.trim(), "1");
//! ```
#![forbid(unsafe_code)]

mod agent;
mod certs;
mod cgroup;
mod clients;
mod demo;
mod files;
mod journald;
mod mcp;
mod net;
mod netns;
mod pan;
mod pg;
mod process;
mod rsyslog;
mod session;
mod wait;
mod world;

pub use agent::Agent;
pub use certs::{CertPair, self_signed_cert, self_signed_cert_on};
pub use cgroup::{TestCgroup, cgroup2_root, in_cgroup, unique_name};
pub use clients::mcp_server;
pub use clients::{client_dir, node_client, python_client, python_venv, workspace_root};
pub use demo::{DEMO_WORKLOAD, DemoConfig, demo_file, demo_seed_sql};
pub use files::{journal_bytes, journal_files};
pub use journald::{JOURNAL_SOCKET, Journald, journald_listening};
pub use mcp::{MCP_PROTOCOL_VERSION, McpServer, Reply, RpcError, tool_text};
pub use net::{free_port, read_http_request};
pub use netns::TestNetns;
pub use pan::{card_numbers_in, luhn_valid};
pub use pg::{HbaAuth, PG_SERVER_NAME, PgOptions};
pub use pg::{PgServer, pg_bin};
pub use process::{require_root, run_ok, run_output};
pub use rsyslog::Rsyslog;
pub use session::{finish, pending_approvals, psql_session, psql_spawn, wait_pending};
pub use wait::{POLL, wait_for};
pub use world::{World, tagged_world, world_with_workload};
pub use world::{agent_config, allow_all_workload, world_with_config};

/// A policy shipped in the repository's `policies/` directory.
#[must_use]
pub fn policy_path(file: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policies")
        .join(file)
}
