//! `cargo xtask install [--prefix DIR] [--root DIR]`: the release binary, the systemd unit,
//! a default /etc/pgwarden/pgwarden.yaml, the example policies and a mask key. Files that
//! exist under /etc are kept (an operator's edits win); the binary and unit are replaced.
use std::fs;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::cmd;

/// Where to install.
pub struct Options {
    /// Installation prefix for the binary and docs (default /usr/local).
    pub prefix: PathBuf,
    /// Staging root prepended to every path (default /): for packaging and tests.
    pub root: PathBuf,
}

fn under(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

fn copy(from: &Path, to: &Path, mode: u32, replace: bool) -> Result<()> {
    if to.exists() && !replace {
        println!("install: {} exists, kept", to.display());
        return Ok(());
    }
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    println!("install: {}", to.display());
    Ok(())
}

/// Builds and installs.
pub fn run(opts: &Options) -> Result<()> {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    cmd::run(
        Command::new(&cargo)
            .args(["build", "--release", "-p", "pgwarden"])
            .current_dir(&workspace),
    )?;
    let bin = under(&opts.root, &opts.prefix.join("bin/pgwarden"));
    copy(
        &workspace.join("target/release/pgwarden"),
        &bin,
        0o755,
        true,
    )?;
    copy(
        &workspace.join("README.md"),
        &under(
            &opts.root,
            &opts.prefix.join("share/doc/pgwarden/README.md"),
        ),
        0o644,
        true,
    )?;

    // The unit, pointing at the installed binary.
    let unit_src = fs::read_to_string(workspace.join("packaging/pgwarden.service"))?;
    let exec = opts.prefix.join("bin/pgwarden");
    let unit = unit_src.replace("/usr/local/bin/pgwarden", &exec.display().to_string());
    let unit = if opts.root == Path::new("/") {
        unit
    } else {
        unit.replace("/usr/local/bin/pgwarden", &bin.display().to_string())
    };
    let unit_path = under(
        &opts.root,
        Path::new("/etc/systemd/system/pgwarden.service"),
    );
    fs::create_dir_all(unit_path.parent().unwrap_or(Path::new("/")))?;
    fs::write(&unit_path, unit)?;
    println!("install: {}", unit_path.display());

    let etc = under(&opts.root, Path::new("/etc/pgwarden"));
    copy(
        &workspace.join("packaging/pgwarden.yaml"),
        &etc.join("pgwarden.yaml"),
        0o600,
        false,
    )?;
    for entry in fs::read_dir(workspace.join("policies"))? {
        let p = entry?.path();
        if p.extension().is_some_and(|e| e == "yaml") {
            copy(
                &p,
                &etc.join("policies").join(p.file_name().unwrap_or_default()),
                0o644,
                false,
            )?;
        }
    }
    let key = etc.join("mask.key");
    if key.exists() {
        println!("install: {} exists, kept", key.display());
    } else {
        let mut bytes = [0u8; 32];
        fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        fs::write(&key, bytes)?;
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
        println!("install: {} (new random key)", key.display());
    }
    println!(
        "install: done. Next: edit /etc/pgwarden/pgwarden.yaml, then `systemctl daemon-reload && systemctl enable --now pgwarden`"
    );
    Ok(())
}
