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
