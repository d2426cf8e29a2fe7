//! systemd's notification protocol: READY, STOPPING, WATCHDOG.
use std::time::Duration;

use tracing::warn;
/// Tells systemd (Type=notify) about state changes, when started by it.
pub(super) fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            warn!("sd_notify: {e}");
            return;
        }
    };
    // An abstract socket name starts with '@'.
    let result = if let Some(name) = path.to_string_lossy().strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt as _;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = result {
        warn!("sd_notify {state:?}: {e}");
    }
}

/// Half the watchdog interval systemd asked for, if it did (and asked this process).
pub(super) fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        && pid != std::process::id()
    {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}
