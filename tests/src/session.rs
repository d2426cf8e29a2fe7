//! A tagged psql session and the approvals it waits on: what the policy, approval, masking
//! and limit tests drive a workload with.
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Agent, in_cgroup, pg_bin, run_output};

/// psql in the cgroup at `cg`, to `url`, running each statement as its own Query message in
/// ONE session (errors do not stop it), with verbose errors (SQLSTATEs shown).
fn psql(cg: &Path, url: &str, statements: &[&str]) -> Command {
    let mut cmd = in_cgroup(cg, pg_bin("psql").to_str().unwrap());
    cmd.args(["-X", "-At", "-v", "VERBOSITY=verbose"]).arg(url);
    for s in statements {
        cmd.args(["-c", s]);
    }
    cmd
}

/// Runs [`psql`] to its end; returns (stdout, stderr).
pub fn psql_session(cg: &Path, url: &str, statements: &[&str]) -> (String, String) {
    let out = run_output(&mut psql(cg, url, statements));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts [`psql`] with its output piped (for statements that wait on a person).
pub fn psql_spawn(cg: &Path, url: &str, statements: &[&str]) -> Child {
    psql(cg, url, statements)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a spawned psql; returns (stdout, stderr).
pub fn finish(child: Child) -> (String, String) {
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The requests waiting for approval (`pgwarden approvals list --json`).
pub fn pending_approvals(agent: &Agent) -> Vec<Value> {
    let out = agent.cli(&["approvals", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["pending"].as_array().cloned().unwrap_or_default()
}

/// Waits until at least `n` requests wait for approval; returns them.
pub fn wait_pending(agent: &Agent, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let p = pending_approvals(agent);
        if p.len() >= n {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "{n} pending requests never appeared (have {p:?})\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
