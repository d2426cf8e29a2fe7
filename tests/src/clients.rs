//! Where the non-Rust test clients live (`tests/clients/`, node_modules, the Python venv that
//! `cargo xtask setup` makes) and commands that run them inside a cgroup. Missing pieces panic
//! with the command that installs them: a client test never skips.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cgroup::in_cgroup;
use crate::process::{describe, dump_output, run_output};

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate lives inside the workspace")
        .to_path_buf()
}

/// `tests/clients/<name>` in the workspace.
pub fn client_dir(name: &str) -> PathBuf {
    workspace_root().join("tests").join("clients").join(name)
}

/// The Python venv `cargo xtask setup` creates (psycopg from tests/clients/python/requirements.txt).
pub fn python_venv() -> PathBuf {
    workspace_root().join("target").join("pyenv")
}

/// `node tests/clients/node/client.js URL` inside `cg`.
///
/// # Panics
///
/// When `node` is not on PATH or the client's node_modules lack `pg`.
#[track_caller]
pub fn node_client(cg: &Path, url: &str) -> Command {
    let node = find_on_path("node").unwrap_or_else(|| {
        missing("`node` is not on PATH (Debian package nodejs; `cargo xtask setup` installs it)")
    });
    let dir = client_dir("node");
    let pg = dir.join("node_modules").join("pg").join("package.json");
    if !pg.is_file() {
        missing(&format!(
            "{} is missing: the node client's dependencies are not installed \
             (`cargo xtask setup` runs `npm ci` in {})",
            pg.display(),
            dir.display()
        ));
    }
    let mut cmd = in_cgroup(cg, &node.to_string_lossy());
    cmd.arg(dir.join("client.js")).arg(url);
    cmd
}

/// The MCP server for PostgreSQL (`@modelcontextprotocol/server-postgres`, pinned in
/// tests/clients/mcp/package-lock.json) for `url`, inside `cg`: `node <package>/dist/index.js
/// URL`, which speaks MCP (JSON-RPC, one message a line) on its stdin and stdout. `sh` execs
/// node, so the child's pid is the server's.
///
/// # Panics
///
/// When `node` is not on PATH or tests/clients/mcp/node_modules lacks the package.
#[track_caller]
pub fn mcp_server(cg: &Path, url: &str) -> Command {
    let node = find_on_path("node").unwrap_or_else(|| {
        missing("`node` is not on PATH (Debian package nodejs; `cargo xtask setup` installs it)")
    });
    let dir = client_dir("mcp");
    let server = dir
        .join("node_modules")
        .join("@modelcontextprotocol")
        .join("server-postgres")
        .join("dist")
        .join("index.js");
    if !server.is_file() {
        missing(&format!(
            "{} is missing: the MCP server is not installed (`cargo xtask setup` runs `npm ci` \
             in {})",
            server.display(),
            dir.display()
        ));
    }
    let mut cmd = in_cgroup(cg, &node.to_string_lossy());
    cmd.arg(server).arg(url);
    cmd
}

/// `target/pyenv/bin/python tests/clients/python/client.py URL` inside `cg`.
///
/// # Panics
///
/// When the venv is missing or cannot import psycopg.
#[track_caller]
pub fn python_client(cg: &Path, url: &str) -> Command {
    let python = python_venv().join("bin").join("python");
    if !python.is_file() {
        missing(&format!(
            "{} is missing: the Python venv with psycopg is not set up (`cargo xtask setup` \
             creates it)",
            python.display()
        ));
    }
    let mut probe = Command::new(&python);
    probe.args(["-c", "import psycopg"]);
    let out = run_output(&mut probe);
    if !out.status.success() {
        missing(&format!(
            "`{}` failed: psycopg is not installed in the venv (`cargo xtask setup` installs \
             it)\n{}",
            describe(&probe),
            dump_output(&out)
        ));
    }
    let mut cmd = in_cgroup(cg, &python.to_string_lossy());
    cmd.arg(client_dir("python").join("client.py")).arg(url);
    cmd
}

/// The first `name` on PATH.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

#[track_caller]
fn missing(what: &str) -> ! {
    panic!(
        "\n\
         ************************************************************************\n\
         a test client is missing: {what}\n\
         Run `cargo xtask setup` (as root for Debian packages); `cargo xtask test` does.\n\
         This test refuses to skip.\n\
         ************************************************************************\n"
    )
}
