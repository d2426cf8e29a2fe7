//! Throwaway TLS certificates for the tests, made with the `openssl` CLI (Debian package
//! `openssl`, which `cargo xtask setup` installs): one self-signed P-256 certificate per call.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::run_ok;

/// A PEM certificate and its PEM (PKCS#8) private key.
#[derive(Clone, Debug)]
pub struct CertPair {
    /// `<dir>/<name>.crt`.
    pub cert: PathBuf,
    /// `<dir>/<name>.key` (mode 0600).
    pub key: PathBuf,
}

/// Writes `<dir>/<name>.crt` and `<dir>/<name>.key`: a self-signed certificate for `cn`, valid
/// two days, with `subjectAltName` DNS `cn`, 127.0.0.1 and ::1. It is marked `CA:FALSE`, so a
/// verifier that pins it as its own trust anchor (rustls/webpki refuses a CA certificate used
/// as an end entity) accepts it for `cn`.
///
/// # Panics
///
/// When `openssl` is missing or fails.
#[track_caller]
pub fn self_signed_cert(dir: &Path, name: &str, cn: &str) -> CertPair {
    self_signed_cert_on(dir, name, cn, "prime256v1", "sha256")
}

/// As [`self_signed_cert`], on the EC `curve` (e.g. `secp384r1`), signed with `digest`
/// (e.g. `sha384`).
///
/// # Panics
///
/// When `openssl` is missing or fails.
#[track_caller]
pub fn self_signed_cert_on(
    dir: &Path,
    name: &str,
    cn: &str,
    curve: &str,
    digest: &str,
) -> CertPair {
    let pair = CertPair {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    assert!(
        openssl_on_path(),
        "`openssl` is not installed (Debian package openssl; `cargo xtask setup` installs it)"
    );
    run_ok(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .arg(format!("ec_paramgen_curve:{curve}"))
            .arg(format!("-{digest}"))
            .args(["-nodes", "-days", "2", "-subj"])
            .arg(format!("/CN={cn}"))
            .arg("-addext")
            .arg(format!("subjectAltName=DNS:{cn},IP:127.0.0.1,IP:::1"))
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&pair.key)
            .arg("-out")
            .arg(&pair.cert),
    );
    fs::set_permissions(&pair.key, fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|err| panic!("cannot chmod {}: {err}", pair.key.display()));
    pair
}

fn openssl_on_path() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("openssl").is_file()))
}
