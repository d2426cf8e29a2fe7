//! Just-in-time approval end to end: psql and a raw protocol client in a tagged cgroup hit the
//! pci-dss policy's `bulk-payments-read` rule (a result over 100 rows waits mid-stream); `pgwarden approvals ...` decides, as root and
//! as an unauthorized user; the client sees its rows, or an error naming the outcome, and its
//! session stays usable.
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pgwarden_e2e::{
    Agent, PgServer, TestCgroup, finish, free_port, in_cgroup, pending_approvals, policy_path,
    psql_spawn, require_root, unique_name, wait_for, wait_pending,
};
use serde_json::Value;

struct World {
    pg: PgServer,
    agent: Agent,
    cg: TestCgroup,
    _dir: tempfile::TempDir,
}

fn world() -> World {
    world_with("")
}

/// The journal of the world's agent.
fn journal(w: &World) -> Vec<Value> {
    std::fs::read_to_string(w.agent.tmp_dir().join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn world_with(extra_yaml: &str) -> World {
    require_root();
    let pg = PgServer::start();
    pg.seed_payments(150);
    let dir = tempfile::tempdir().unwrap();
    // The shipped policy, with a short timeout so the expiry case is quick.
    let policy = dir.path().join("pci.yaml");
    let text = std::fs::read_to_string(policy_path("pci-dss.yaml")).unwrap();
    assert!(text.contains("timeout_seconds: 300"));
    std::fs::write(
        &policy,
        text.replace("timeout_seconds: 300", "timeout_seconds: 6"),
    )
    .unwrap();
    let key = dir.path().join("mask.key");
    std::fs::write(&key, b"approval-test-key-0123456789").unwrap();
    let control = dir.path().join("control.sock");
    let cg = TestCgroup::create(&unique_name("pgw-e2e-approve"));
    let listen = free_port();
    let config = format!(
        "mask:\n  hash_key_file: {}\nlisten:\n  ipv4: 127.0.0.1:{listen}\n  ipv6: null\ncontrol:\n  socket: {}\nintercept: [\"*:{}\"]\n\
                  workloads:\n  - name: payments-mcp\n    cgroup: \"{}\"\n    policy: {}\n    profile: reader\n{extra_yaml}",
        key.display(),
        control.display(),
        pg.port,
        cg.rel,
        policy.display()
    );
    let agent = Agent::start(&config, &control);
    World {
        pg,
        agent,
        cg,
        _dir: dir,
    }
}

impl World {
    /// psql in the tagged cgroup running `statements` in one session, in the background.
    fn psql(&self, statements: &[&str]) -> Child {
        psql_spawn(&self.cg.path, &self.pg.url("127.0.0.1"), statements)
    }

    fn pending(&self) -> Vec<Value> {
        pending_approvals(&self.agent)
    }

    /// Waits until `n` requests are pending; returns them.
    fn wait_pending(&self, n: usize) -> Vec<Value> {
        wait_pending(&self.agent, n)
    }

    fn decide(&self, args: &[&str]) -> Output {
        self.agent.cli(args)
    }
}

/// A refusal's record: `query.denied` for a statement held before it ran, `query.done` with
/// the rule for a result held mid-stream (its first rows were sent) and cut off.
fn refused(r: &Value, rule: &str) -> bool {
    (r["event"] == "query.denied" || (r["event"] == "query.done" && r["decision"] == "deny"))
        && r["rule"] == rule
}

#[test]
fn approve_deny_and_expire() {
    let w = world();
    // Approve: the held statement runs, and the session goes on.
    let child = w.psql(&[
        "SELECT count(*) FROM (SELECT id FROM payments) s",
        "SELECT id FROM payments",
        "SELECT 'after'",
    ]);
    let p = w.wait_pending(1);
    assert_eq!(p[0]["rule"]["id"], "bulk-payments-read");
    assert_eq!(p[0]["workload"], "payments-mcp");
    assert_eq!(p[0]["pid"].as_u64(), Some(u64::from(child.id())));
    assert!(p[0]["statement"].as_str().unwrap().contains("payments"));
    let id = p[0]["id"].as_u64().unwrap().to_string();
    let out = w.decide(&["approvals", "approve", &id, "--comment", "looks fine"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (out, err) = finish(child);
    assert!(!err.contains("ERROR"), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1 + 150 + 1, "{out}");
    assert_eq!(*lines.last().unwrap(), "after");

    // Deny: 42501 naming the outcome; the session goes on.
    let child = w.psql(&["SELECT id FROM payments", "SELECT 'alive'"]);
    let id = w.wait_pending(1)[0]["id"].as_u64().unwrap().to_string();
    assert!(
        w.decide(&["approvals", "deny", &id, "--comment", "not today"])
            .status
            .success()
    );
    let (out, err) = finish(child);
    assert!(
        err.contains(
            "42501: pgwarden: approval.denied: bulk-payments-read: denied by root (not today)"
        ),
        "{err}"
    );
    assert_eq!(out.trim(), "alive");

    // Nobody decides: it expires after the rule's timeout.
    let started = Instant::now();
    let (out, err) = finish(w.psql(&["SELECT id FROM payments", "SELECT 'alive'"]));
    assert!(
        err.contains("pgwarden: approval.expired: bulk-payments-read: no decision within 6s"),
        "{err}"
    );
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert_eq!(out.trim(), "alive");
    assert!(w.pending().is_empty());
    // Each outcome is in the audit journal, with the approver and the comment. (Approval
    // records are written as decisions happen, not before the client hears: wait for them.)
    let recs = wait_for(
        "every approval outcome's records in the journal",
        Duration::from_secs(10),
        || {
            let recs = journal(&w);
            let count = |e: &str| recs.iter().filter(|r| r["event"] == e).count();
            let denied_by = |rule: &str| recs.iter().any(|r| refused(r, rule));
            let log = w.agent.log();
            if count("approval.requested") >= 3
                && count("approval.granted") >= 1
                && count("approval.denied") >= 1
                && count("approval.expired") >= 1
                && denied_by("approval.denied")
                && denied_by("approval.expired")
                && log.contains("Expired")
            {
                Ok(recs)
            } else {
                Err(format!("{recs:#?}\n--- agent log ---\n{log}"))
            }
        },
    );
    let events = |e: &str| {
        recs.iter()
            .filter(|r| r["event"] == e)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(events("approval.requested").len(), 3, "{recs:#?}");
    let granted = events("approval.granted");
    assert_eq!(granted.len(), 1);
    assert_eq!(granted[0]["detail"]["approver_uid"], 0);
    assert_eq!(granted[0]["detail"]["comment"], "looks fine");
    assert_eq!(granted[0]["rule"], "bulk-payments-read");
    let denied = events("approval.denied");
    assert_eq!(denied[0]["detail"]["comment"], "not today");
    assert_eq!(events("approval.expired").len(), 1);
    // The held-then-released statement has its query record; the refused ones name the
    // outcome as their rule.
    assert!(recs.iter().any(|r| refused(r, "approval.denied")));
    assert!(recs.iter().any(|r| refused(r, "approval.expired")));
    let log = w.agent.log();
    assert!(
        log.contains("approval requested")
            && log.contains("Approved")
            && log.contains("Denied")
            && log.contains("Expired"),
        "{log}"
    );
}

#[test]
fn grants_unauthorized_approvers_cancel_and_out_of_order() {
    let w = world();
    // Someone who is not an approver is refused, and the request stays.
    let child = w.psql(&["SELECT id FROM payments"]);
    let id = w.wait_pending(1)[0]["id"].as_u64().unwrap().to_string();
    assert!(w.decide(&["approvals", "list"]).status.success());
    let nobody = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(std::env::var("PGWARDEN_BIN").unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/debug/pgwarden")
                .display()
                .to_string()
        }))
        .args(["approvals", "approve", &id, "--control"])
        .arg(control_socket(&w))
        .output()
        .unwrap();
    assert!(!nobody.status.success());
    let err = String::from_utf8_lossy(&nobody.stderr);
    assert!(err.contains("may not decide"), "{err}");
    assert!(w.agent.log().contains("approval decision refused"));
    assert_eq!(w.pending().len(), 1);

    // Approve with a grant: the same rule then passes for this workload without asking.
    assert!(
        w.decide(&["approvals", "approve", &id, "--for", "4s"])
            .status
            .success()
    );
    finish(child);
    let (out, err) = finish(w.psql(&["SELECT id FROM payments"]));
    assert!(!err.contains("ERROR"), "{err}");
    assert_eq!(out.lines().count(), 150);
    let status = w.agent.status();
    assert_eq!(
        status["approvals"]["grants"].as_array().unwrap().len(),
        1,
        "{status:#}"
    );
    // After the grant expires, the rule holds again. A fixed wait on purpose: the 4 s grant
    // must run out (what follows shows the rule holding again once it has).
    std::thread::sleep(Duration::from_secs(5));
    let child = w.psql(&["SELECT id FROM payments", "SELECT 'alive'"]);
    let id = w.wait_pending(1)[0]["id"].as_u64().unwrap().to_string();

    // The client cancels while held: withdrawn, and the session stays usable. A fixed margin
    // after the request appeared, so psql is surely waiting on its statement when SIGINT
    // comes (psql shows nothing to poll for from here).
    std::thread::sleep(Duration::from_millis(200));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    // (psql itself stops running its remaining -c commands after a cancel, so the session's
    // later use is shown by the deny and expiry cases, not here.)
    let (_, err) = finish(child);
    assert!(
        err.contains("canceling statement due to user request"),
        "{err}"
    );
    assert!(
        err.contains("approval request withdrawn: cancelled by the client"),
        "{err}"
    );
    assert!(w.pending().is_empty(), "request {id} was not withdrawn");
    wait_for(
        "the unauthorized attempt and the withdrawal in the journal",
        Duration::from_secs(10),
        || {
            let recs = journal(&w);
            let unauthorized = recs.iter().any(|r| {
                r["event"] == "approval.denied"
                    && r["rule"] == "approval.unauthorized"
                    && r["detail"]["caller_uid"] == 65534
            });
            let withdrawn = recs.iter().any(|r| {
                r["event"] == "approval.withdrawn"
                    && r["detail"]["reason"] == "cancelled by the client"
            });
            if unauthorized && withdrawn {
                Ok(())
            } else {
                Err(format!(
                    "unauthorized: {unauthorized}, withdrawn: {withdrawn}\n{recs:#?}"
                ))
            }
        },
    );

    // Two sessions held; approved out of order.
    let a = w.psql(&["SELECT id FROM payments WHERE id <= 110"]);
    w.wait_pending(1);
    let b = w.psql(&["SELECT id FROM payments WHERE id > 20"]);
    let p = w.wait_pending(2);
    let (first, second) = (p[0]["id"].as_u64().unwrap(), p[1]["id"].as_u64().unwrap());
    assert!(
        w.decide(&["approvals", "approve", &second.to_string()])
            .status
            .success()
    );
    let (out_b, _) = finish(b);
    assert_eq!(out_b.lines().count(), 130);
    assert_eq!(w.pending().len(), 1);
    assert!(
        w.decide(&["approvals", "approve", &first.to_string()])
            .status
            .success()
    );
    let (out_a, _) = finish(a);
    assert_eq!(out_a.lines().count(), 110);
}

fn control_socket(w: &World) -> String {
    // The harness passes --control to every CLI call; find it from the agent's command line.
    let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", w.agent.pid())).unwrap();
    let args: Vec<&str> = cmdline.split('\0').collect();
    let config = args
        .iter()
        .position(|a| *a == "--config")
        .map(|i| args[i + 1])
        .unwrap();
    let text = std::fs::read_to_string(config).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("socket: "))
        .unwrap()
        .to_owned()
}

#[test]
fn extended_protocol_holds_at_execute() {
    let w = world();
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/raw/pgraw.py");
    let script = serde_json::json!([
        ["extended", "SELECT id FROM payments"],
        ["query", "SELECT 1"]
    ]);
    let child = in_cgroup(&w.cg.path, "python3")
        .arg(client)
        .args([
            "127.0.0.1",
            &w.pg.port.to_string(),
            "postgres",
            "postgres",
            &script.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let p = w.wait_pending(1);
    assert!(
        p[0]["statement"]
            .as_str()
            .unwrap()
            .contains("SELECT id FROM payments")
    );
    let id = p[0]["id"].as_u64().unwrap().to_string();
    assert!(w.decide(&["approvals", "approve", &id]).status.success());
    let (out, err) = finish(child);
    let steps: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(steps.len(), 2, "{out} {err}");
    let rows = steps[0]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["type"] == "D")
        .count();
    assert_eq!(rows, 150);
    assert_eq!(steps[1][1]["values"][0], "1");
}

/// A one-shot HTTP server: returns the port and a receiver of the first request it gets.
fn hook_server() -> (u16, std::sync::mpsc::Receiver<String>) {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = s.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
            }
            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
            let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
        }
    });
    (port, rx)
}

#[test]
fn the_webhook_announces_held_statements_and_its_failure_is_audited() {
    let (port, rx) = hook_server();
    let w = world_with(&format!(
        "approvals:\n  webhook: http://127.0.0.1:{port}/pgwarden-hook\n"
    ));
    let child = w.psql(&["SELECT id FROM payments"]);
    let id = w.wait_pending(1)[0]["id"].as_u64().unwrap();
    let request = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("no webhook POST");
    assert!(
        request.starts_with("POST /pgwarden-hook HTTP/1.1"),
        "{request}"
    );
    let body: Value = serde_json::from_str(request.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["event"], "approval.requested");
    assert_eq!(body["request"]["id"], id);
    assert_eq!(body["request"]["rule"]["id"], "bulk-payments-read");
    assert_eq!(body["request"]["workload"], "payments-mcp");
    assert!(
        w.decide(&["approvals", "approve", &id.to_string()])
            .status
            .success()
    );
    finish(child);
    drop(w);

    // A webhook nobody answers: logged and audited after its retries; the request still waits
    // and can be approved.
    let dead = free_port();
    let w = world_with(&format!(
        "approvals:\n  webhook: http://127.0.0.1:{dead}/hook\n  webhook_timeout_seconds: 1\n"
    ));
    let child = w.psql(&["SELECT id FROM payments"]);
    let id = w.wait_pending(1)[0]["id"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !w.agent.log().contains("approval webhook failed") {
        assert!(Instant::now() < deadline, "{}", w.agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(w.pending().len(), 1, "the request stopped waiting");
    wait_for(
        "the webhook failure's record in the journal",
        Duration::from_secs(10),
        || {
            let recs = journal(&w);
            if recs.iter().any(|r| {
                r["event"] == "approval.requested"
                    && r["outcome"] == "failure"
                    && r["error"].as_str().is_some_and(|e| e.contains("webhook"))
            }) {
                Ok(())
            } else {
                Err(format!("{recs:#?}"))
            }
        },
    );
    assert!(
        w.decide(&["approvals", "approve", &id.to_string()])
            .status
            .success()
    );
    let (out, _) = finish(child);
    assert_eq!(out.lines().count(), 150);
}
