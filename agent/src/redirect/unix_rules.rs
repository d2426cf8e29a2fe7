//! The rules of the `UNIX_INTERCEPT` map from the configured Unix socket paths: which names a
//! tagged workload's connect is redirected from, and which it may reach directly.
use std::path::PathBuf;

use agent_common::{
    PG_SOCKET_PREFIX, UNIX_ALLOW_SOCKET, UNIX_MATCH_DIR, UNIX_MATCH_SOCKET, UNIX_PATH_LEN,
};

/// The [`UNIX_INTERCEPT`](agent_common::maps::UNIX_INTERCEPT) rules for the configured paths,
/// as (prefix bytes, rule): a path whose last component is a PostgreSQL socket name (or that is
/// a socket) is one socket (`PATH\0`), anything else a directory whose PostgreSQL sockets are
/// intercepted (`DIR/.s.PGSQL.`). `unix_allow` entries are single sockets (`PATH\0`); an
/// intercept rule wins over an allow rule for the same name. Each path is also entered in its
/// canonical form (`/var/run` is a symlink to `/run` on Debian), since the program compares the
/// name the client used.
pub fn unix_rules(intercept: &[PathBuf], allow: &[PathBuf]) -> Vec<(Vec<u8>, u32)> {
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::fs::FileTypeExt as _;
    let mut out: Vec<(Vec<u8>, u32)> = Vec::new();
    let mut push = |bytes: Vec<u8>, rule: u32| {
        if bytes.len() > UNIX_PATH_LEN {
            return;
        }
        match out.iter_mut().find(|(b, _)| *b == bytes) {
            Some(existing) => existing.1 = rule,
            None => out.push((bytes, rule)),
        }
    };
    let forms = |p: &PathBuf, socket: bool| -> Vec<Vec<u8>> {
        let canonical = if socket {
            p.parent()
                .and_then(|d| std::fs::canonicalize(d).ok())
                .zip(p.file_name())
                .map(|(d, n)| d.join(n))
        } else {
            std::fs::canonicalize(p).ok()
        };
        let mut v: Vec<Vec<u8>> = Vec::new();
        for form in std::iter::once(p.clone()).chain(canonical) {
            let mut bytes = form.as_os_str().as_bytes().to_vec();
            while bytes.len() > 1 && bytes.last() == Some(&b'/') {
                bytes.pop();
            }
            if !v.contains(&bytes) {
                v.push(bytes);
            }
        }
        v
    };
    for p in allow {
        for mut b in forms(p, true) {
            b.push(0);
            push(b, UNIX_ALLOW_SOCKET);
        }
    }
    for p in intercept {
        let socket = p
            .file_name()
            .is_some_and(|n| n.as_bytes().starts_with(PG_SOCKET_PREFIX))
            || std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket());
        for mut b in forms(p, socket) {
            if socket {
                b.push(0);
                push(b, UNIX_MATCH_SOCKET);
            } else {
                if b.last() != Some(&b'/') {
                    b.push(b'/');
                }
                b.extend_from_slice(PG_SOCKET_PREFIX);
                push(b, UNIX_MATCH_DIR);
            }
        }
    }
    out
}
