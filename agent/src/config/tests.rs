//! The config's own unit tests: defaults, overrides, and errors that name file:line:column.
use std::path::{Path, PathBuf};

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("pgwarden.yaml"), text)
}

#[test]
fn audit_defaults_and_overrides() {
    let c = parse("").unwrap();
    let d = AuditConfig::default();
    assert_eq!(c.audit.path, PathBuf::from("/var/log/pgwarden/audit.jsonl"));
    assert_eq!(c.audit.mode, AuditMode::Strict);
    assert_eq!(
        (c.audit.queue, c.audit.max_bytes, c.audit.max_files()),
        (10_000, 64 << 20, 0),
        "by default nothing is ever deleted"
    );
    assert!(c.audit.compress && !c.audit.retention().limited());
    assert_eq!(c.audit.min_free_bytes, 256 << 20);
    assert_eq!(c.audit.state_dir, PathBuf::from("/var/lib/pgwarden"));
    let c = parse("audit:\n  retention:\n    max_age: 400d\n    max_bytes: 1000000\n").unwrap();
    assert_eq!(
        c.audit.retention.max_age,
        Some(std::time::Duration::from_secs(400 * 86_400))
    );
    assert!(c.audit.retention().limited());
    let c = parse("audit:\n  keep_files: 7\n").unwrap();
    assert_eq!(c.audit.max_files(), 7, "the old key still limits the files");
    let e = parse("audit:\n  retention:\n    max_age: soon\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("`soon`"), "{e}");
    // The shipped defaults: written before the statement goes, group fsync every 100 ms,
    // events (not statements) mirrored to journald.
    assert!(!c.audit.fsync && c.audit.journald == JournaldMirror::Events && !c.audit.keep_literals);
    assert_eq!(
        c.audit.fsync_interval,
        std::time::Duration::from_millis(100)
    );
    assert_eq!(
        (c.audit.checkpoint_every, c.audit.checkpoint_seconds),
        (1000, 300)
    );
    assert_eq!(c.audit.journald_socket, d.journald_socket);
    // One key given: the others keep their defaults.
    let c = parse("audit:\n  mode: async\n  path: /tmp/a.jsonl\n").unwrap();
    assert_eq!(c.audit.mode, AuditMode::Async);
    assert_eq!(c.audit.path, PathBuf::from("/tmp/a.jsonl"));
    assert_eq!(c.audit.queue, d.queue);
    assert!(!c.audit.fsync && c.audit.journald == JournaldMirror::Events);
    let c = parse("audit:\n  fsync: true\n  fsync_interval: 250ms\n").unwrap();
    assert!(c.audit.fsync);
    assert_eq!(
        c.audit.fsync_interval,
        std::time::Duration::from_millis(250)
    );
    for bad in ["0s", "2m", "often"] {
        let e = parse(&format!("audit:\n  fsync_interval: {bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("`{bad}`")), "{e}");
    }
    for (text, want) in [
        ("true", JournaldMirror::All),
        ("false", JournaldMirror::Off),
        ("events", JournaldMirror::Events),
        ("off", JournaldMirror::Off),
    ] {
        let c = parse(&format!("audit:\n  journald: {text}\n")).unwrap();
        assert_eq!(c.audit.journald, want, "{text}");
    }
    let e = parse("audit:\n  journald: some\n").unwrap_err().to_string();
    assert!(e.contains("all, events, off"), "{e}");
    let e = parse("audit:\n  mode: sometimes\n")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("pgwarden.yaml:2:"), "{e}");
    let e = parse("audit:\n  max_bytes: 10\n").unwrap_err().to_string();
    assert!(e.starts_with("pgwarden.yaml:2:3: "), "{e}");
}

#[test]
fn defaults_from_an_empty_file() {
    let c = parse("").unwrap();
    assert_eq!(c.listen.ipv4.unwrap().to_string(), "127.0.0.1:15432");
    assert_eq!(c.listen.ipv6.unwrap().to_string(), "[::1]:15432");
    assert_eq!(c.intercept.len(), 1);
    assert_eq!(c.intercept[0].text, "*:5432");
    assert_eq!(
        c.control.socket,
        PathBuf::from("/run/pgwarden/control.sock")
    );
}

#[test]
fn full_example() {
    let c = parse(
        "listen:\n  ipv4: 127.0.0.1:16000\n  ipv6: null\nintercept:\n  - 127.0.0.1:5432\n  - 10.0.0.0/8:5432\n\
         workloads:\n  - name: payments-mcp\n    systemd_unit: mcp-*.service\n    cgroup: [a/b, c/*]\n",
    )
    .unwrap();
    assert!(c.listen.ipv6.is_none());
    assert_eq!(c.intercept.len(), 2);
    assert_eq!(c.workloads[0].systemd_unit, vec!["mcp-*.service"]);
    assert_eq!(c.workloads[0].cgroup, vec!["a/b", "c/*"]);
}

#[test]
fn errors_name_file_line_and_column() {
    let e = parse("listen:\n  ipv4: 127.0.0.1:15432\nintercept:\n  - 127.0.0.1:notaport\n")
        .unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with("pgwarden.yaml:4:"), "{text}");
    assert!(text.contains("bad port"), "{text}");

    let e = parse("listen:\n  ipv4: 127.0.0.1:1\n  bogus: 1\n")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("pgwarden.yaml:3:3: "), "{e}");
    assert!(e.contains("unknown field `bogus`"), "{e}");

    let e = parse("workloads:\n  - name: a\n  - name: a\n")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("pgwarden.yaml:3:5: "), "{e}");
    assert!(e.contains("defined twice"), "{e}");

    let e = parse("workloads: [\n").unwrap_err().to_string();
    assert!(e.starts_with("pgwarden.yaml:2:"), "{e}");

    let e = parse("workloads:\n  - name: 'bad name'\n")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("pgwarden.yaml:2:"), "{e}");
}

#[test]
fn semantic_errors_point_at_their_node_not_at_a_comment() {
    let err = |text: &str| parse(text).unwrap_err().to_string();
    // The key also appears, earlier, in a comment and in another section.
    let e = err(
        "# max_bytes: keep it above 4096\nlimits:\n  message_bytes: 2048 # not max_bytes\naudit:\n  max_bytes: 10 # max_bytes\n",
    );
    assert!(e.starts_with("pgwarden.yaml:5:3: "), "{e}");
    let e = err(
        "# name: a\nworkloads:\n  - name: a   # name: a\n    cgroup: x\n  - cgroup: y\n    name: \"a\"\n",
    );
    assert!(e.starts_with("pgwarden.yaml:6:5: "), "{e}");
    assert!(e.contains("workload `a` is defined twice"), "{e}");
    // The offending element of a list, and a value given without a list.
    let e = err("intercept_unix:\n  - /run/postgresql\n  - relative/dir\n");
    assert!(e.starts_with("pgwarden.yaml:3:5: "), "{e}");
    let e = err("workloads:\n  - name: a\n    systemd_unit: ''\n");
    assert!(e.starts_with("pgwarden.yaml:3:19: "), "{e}");
    assert!(e.contains("empty matcher"), "{e}");
    let e = err("workloads:\n  - name: a\n    cgroup: [x, '']\n");
    assert!(e.starts_with("pgwarden.yaml:3:17: "), "{e}");
    // A check on a default points at the section it belongs in.
    let e = err("# upstream\nupstream:\n  ca: null\n  sslmode: verify-full\n");
    assert!(e.starts_with("pgwarden.yaml:4:3: "), "{e}");
    let e = err("listen:\n  ipv4: null\n  ipv6: null\n");
    assert!(e.starts_with("pgwarden.yaml:1:1: "), "{e}");
    let e = err("limits:\n  statement_bytes: 2000\n  # message_bytes\n  result_bytes: 5\n");
    assert!(e.starts_with("pgwarden.yaml:2:3: "), "{e}");
    let e = err("cgroups: {rescan_seconds: 0}\n");
    assert!(e.starts_with("pgwarden.yaml:1:11: "), "{e}");
}

#[test]
fn upstream_auth_is_checked_where_it_is_written() {
    let base = "workloads:\n  - name: mcp\n    upstream_auth:\n      user: mcp_payments\n      password_file: $CREDENTIALS_DIRECTORY/mcp-db\n";
    let c = parse(&format!(
        "{base}      servers: [\"10.0.0.5:5432\", \"/var/run/postgresql/.s.PGSQL.5432\"]\n"
    ))
    .unwrap();
    let auth = c.workloads[0].upstream_auth.as_ref().unwrap();
    assert_eq!(auth.user, "mcp_payments");
    let e = parse(&format!("{base}      servers: [\"*:5432\"]\n"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("pgwarden.yaml:6:"), "{e}");
    assert!(e.contains("any address would hand the secret"), "{e}");
    let e = parse(&format!(
        "{base}      servers: [\"10.0.0.5:5432\"]\n      methods: [md5]\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("pgwarden.yaml:7:"), "{e}");
    let ok = parse(&format!(
        "upstream:\n  sslmode: verify-full\n  ca: /x.pem\n{base}      servers: [\"10.0.0.5:5432\"]\n      methods: [md5]\n"
    ));
    assert!(ok.is_ok(), "{:?}", ok.err());
}
