//! The status JSON is a contract: these are replies as the agent has always sent them, and a
//! snapshot read from one must write the same JSON back.
use serde_json::{Value, json};

use super::{Mode, Status};

/// A redirecting agent with one namespace, one tagged cgroup, one session, one held statement
/// and one grant.
fn redirect() -> Value {
    json!({
        "agent": { "pid": 4242, "version": "0.1.0", "started": 1_700_000_000, "mode": "redirect" },
        "cgroup2_root": "/sys/fs/cgroup",
        "listen": ["127.0.0.1:6432", "[::1]:6432"],
        "intercept": ["*:5432"],
        "unix": {
            "state": "redirect",
            "listen": "@pgwarden-4242",
            "intercept": ["/run/postgresql"],
            "allow": ["/run/systemd/journal/socket"],
        },
        "namespaces": [{ "netns": 4_026_532_000_u64, "pid": 77, "listen": ["127.0.0.1:6432"] }],
        "attached": [{ "program": "connect4", "hook": "cgroup/connect4", "target": "/sys/fs/cgroup" }],
        "counters": { "redirected": 3, "refused_no_record": 0 },
        "workloads": [{ "name": "svc", "systemd_unit": ["svc-*.service"], "cgroup": [] }],
        "tagged": [
            { "id": 99, "path": "/system.slice/svc-a.service", "workload": "svc",
              "source": { "kind": "systemd_unit", "pattern": "svc-*.service" } },
            { "id": 100, "path": "/x", "workload": "svc", "source": { "kind": "xattr" } },
        ],
        "sticky_paths": ["/system.slice/svc-b.service"],
        "sessions": [{
            "id": "s-1",
            "workload": "svc",
            "identity": {
                "workload": "svc", "cgroup": "/system.slice/svc-a.service", "cgroup_id": 99,
                "unit": "svc-a.service", "pid": 1234, "tid": 1234, "uid": 1000, "gid": 1000,
                "user": "svc", "exe": "/usr/bin/psql", "comm": "psql", "netns": 4_026_532_000_u64,
            },
            "client": "127.0.0.1:40000",
            "listen": "127.0.0.1:6432",
            "server": "127.0.0.1:5432",
            "db": { "user": "app", "database": "app", "application_name": "psql", "options": null },
            "client_tls": false,
            "server_tls": true,
            "upstream_local": "127.0.0.1:40001",
            "started": 1_700_000_100,
        }],
        "approvals": {
            "pending": [{
                "id": 7,
                "rule": { "id": "bulk-read", "approvers": ["alice", "group:dba"],
                          "timeout": { "secs": 300, "nanos": 0 }, "max_grant": { "secs": 3600, "nanos": 0 },
                          "reason": "bulk reads need a yes" },
                "workload": "svc", "session": "s-1", "statement": "SELECT * FROM t WHERE a = $1",
                "normalized": "SELECT * FROM t WHERE a = $1", "reason": "100 rows sent",
                "pid": 1234, "exe": null, "uid": 1000, "process_user": "svc",
                "unit": "svc-a.service", "cgroup": "/system.slice/svc-a.service",
                "requested": 1_700_000_200, "expires": 1_700_000_500,
            }],
            "grants": [{
                "id": 3, "workload": "svc", "rule": "bulk-read", "approvers": ["alice", "user:alice"],
                "until": 1_700_003_600,
                "by": { "uid": null, "user": "alice", "groups": ["dba"], "auth": "token",
                        "remote": "192.0.2.1:50000" },
                "comment": null,
            }],
        },
        "budgets": [{ "workload": "svc", "rule": "payments-read-budget", "used": 640 }],
        "audit": {
            "path": "/var/log/pgwarden/audit.jsonl", "mode": "strict", "last_seq": 12,
            "last_hash": "ab12", "queue_depth": 0, "records_written": 12, "write_errors": 0,
            "journald": "events", "journald_errors": 1, "dropped": 0, "last_error": null,
            "reopens": 1, "last_reopen": "AUDIT JOURNAL … WAS UNLINKED", "rotations": 2,
            "archived": 2, "archive_errors": 0, "retention_files": 0, "retention_records": 0,
            "last_retention": null, "free_bytes": 1_000_000,
        },
        "policy": { "version": 2, "files": [{ "path": "/etc/pgwarden/svc.yaml", "sha256": "00ff" }] },
    })
}

fn round_trip(v: &Value) -> Status {
    let s: Status = serde_json::from_value(v.clone()).expect("a status reply reads");
    assert_eq!(&serde_json::to_value(&s).unwrap(), v);
    s
}

#[test]
fn golden_round_trip() {
    let s = round_trip(&redirect());
    assert_eq!(s.agent.mode, Mode::Redirect);
    assert_eq!(s.sessions[0].identity.as_ref().map(|i| i.pid), Some(1234));
    assert_eq!(
        s.unix.rules.as_ref().and_then(|r| r.listen.as_deref()),
        Some("@pgwarden-4242")
    );
    assert_eq!(s.approvals.pending[0].rule.timeout.as_secs(), 300);
}

#[test]
fn unix_states_keep_their_shapes() {
    // Loaded but not listening: `listen` is there, and null.
    let mut v = redirect();
    v["unix"] = json!({ "state": "refuse (listen.unix: null)", "listen": null, "intercept": [], "allow": [] });
    assert!(round_trip(&v).unix.rules.is_some());
    // --tcp-only on a kernel without the Unix socket programs.
    v["unix"] = json!({ "state": "off (--tcp-only): tagged workloads can reach Unix sockets directly", "missing": "BPF LSM" });
    let s = round_trip(&v);
    assert_eq!(s.unix.missing.as_deref(), Some("BPF LSM"));
    assert!(s.unix.rules.is_none());
}

#[test]
fn listen_only_agent() {
    let mut v = redirect();
    v["agent"]["mode"] = json!("listen-only");
    v["unix"] = json!({ "state": "off (listen-only)" });
    v["attached"] = json!([]);
    v["counters"] = json!({});
    // Listen-only sessions have no identity; identities outside a container have no netns.
    v["sessions"][0]["identity"] = Value::Null;
    let s = round_trip(&v);
    assert_eq!(s.agent.mode, Mode::ListenOnly);
    assert!(s.unix.rules.is_none() && s.unix.missing.is_none());
}
