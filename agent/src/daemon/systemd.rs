//! systemd's notification protocol (Type=notify): READY, STOPPING, WATCHDOG, by `sd-notify`.
use std::io;
use std::time::Duration;

use sd_notify::NotifyState;
use tracing::warn;

/// Tells systemd about a state change, when started by it (`NOTIFY_SOCKET` set); a failure
/// is logged, never fatal.
pub(super) fn notify(states: &[NotifyState]) {
    if let Err(e) = send(states) {
        warn!("sd_notify {states:?}: {e}");
    }
}

fn send(states: &[NotifyState]) -> io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    // sd-notify 0.5 connects to `NOTIFY_SOCKET` as a path; a name starting with '@' is in the
    // abstract namespace (sd_notify(3)), which it does not handle: send that one here, in the
    // same newline-separated form.
    match path.to_string_lossy().strip_prefix('@') {
        Some(name) => send_abstract(name.as_bytes(), states),
        None => sd_notify::notify(states),
    }
}

fn send_abstract(name: &[u8], states: &[NotifyState]) -> io::Result<()> {
    use std::os::linux::net::SocketAddrExt as _;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    let msg: String = states.iter().map(|s| format!("{s}\n")).collect();
    std::os::unix::net::UnixDatagram::unbound()?.send_to_addr(msg.as_bytes(), &addr)?;
    Ok(())
}

/// Half the watchdog interval systemd asked for, if it did and asked this process
/// (`WATCHDOG_PID`, when set, names it): pinging at half the interval leaves a margin.
pub(super) fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .map(|interval| interval / 2)
        .filter(|p| !p.is_zero())
}

#[cfg(test)]
mod tests {
    use sd_notify::NotifyState;

    #[test]
    fn abstract_socket_gets_one_datagram_of_lines() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("pgwarden-test-notify-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let systemd = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        super::send_abstract(
            name.as_bytes(),
            &[
                NotifyState::Ready,
                NotifyState::Status("attached, listening"),
            ],
        )
        .unwrap();
        let mut buf = [0u8; 256];
        let n = systemd.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=attached, listening\n");
    }
}
