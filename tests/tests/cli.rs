//! The CLI's contract for bad input: a broken config is refused with file:line:column and a
//! non-zero exit, before anything is loaded or attached.
use std::process::Command;

fn bin() -> std::path::PathBuf {
    std::env::var_os("PGWARDEN_BIN").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/pgwarden"),
        std::path::PathBuf::from,
    )
}

#[test]
fn a_broken_config_is_refused_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "listen:\n  ipv4: 127.0.0.1:15432\nintercept:\n  - 10.0.0.0/40:5432\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&file)
        .output()
        .expect("run pgwarden");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:4:", file.display())), "{err}");
    assert!(err.contains("bad prefix length"), "{err}");

    std::fs::write(&file, "workloads:\n  - name: a\n    sytemd_unit: x\n").unwrap();
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&file)
        .output()
        .expect("run pgwarden");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:3:", file.display()))
            && err.contains("unknown field `sytemd_unit`"),
        "{err}"
    );
}

#[test]
fn status_without_an_agent_says_so() {
    let out = Command::new(bin())
        .args(["status", "--control", "/nonexistent/control.sock"])
        .output()
        .expect("run pgwarden");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the pgwarden agent"));
}

#[test]
fn without_capabilities_run_says_exactly_what_is_missing() {
    pgwarden_e2e::require_root();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ok.yaml");
    let port = pgwarden_e2e::free_port();
    std::fs::write(
        &file,
        format!(
            "listen:\n  ipv4: 127.0.0.1:{port}\n  ipv6: null\ncontrol:\n  socket: {}/c.sock\n",
            dir.path().display()
        ),
    )
    .unwrap();
    // Root without any capability, as a badly written unit file would start it.
    let out = Command::new("setpriv")
        .args([
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--bounding-set=-all",
            "--",
        ])
        .arg(bin())
        .args(["run", "--config"])
        .arg(&file)
        .output()
        .expect("run setpriv");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"] {
        assert!(err.contains(needle), "missing {needle} in: {err}");
    }
}

#[test]
fn listen_only_mode_relays_clients_that_connect_to_it() {
    pgwarden_e2e::require_root();
    let pg = pgwarden_e2e::PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("c.sock");
    let port = pgwarden_e2e::free_port();
    let config = format!(
        "listen:\n  ipv4: 127.0.0.1:{port}\n  ipv6: null\ncontrol:\n  socket: {}\nlisten_only:\n  upstream: 127.0.0.1:{}\n\
         workloads:\n  - name: listen-only\n    policy: {}\n    profile: allow-all\n",
        control.display(),
        pg.port,
        pgwarden_e2e::policy_path("allow-all.yaml").display()
    );
    let agent = pgwarden_e2e::Agent::start_with_args(&config, &control, &["--no-redirect"]);
    let out = pgwarden_e2e::run_ok(
        Command::new(pgwarden_e2e::pg_bin("psql"))
            .args([
                "-X",
                "-Atc",
                "select 7",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-p",
            ])
            .arg(port.to_string()),
    );
    assert_eq!(out.trim(), "7");
    assert_eq!(agent.status()["agent"]["mode"], "listen-only");
    assert!(agent.status()["attached"].as_array().unwrap().is_empty());
}
