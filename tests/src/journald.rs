//! A systemd-journald to talk to: the one running, or one started here (PID 1 is not always
//! systemd on test machines) and stopped when the handle is dropped.
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// journald's native socket.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// A journald that listens on [`JOURNAL_SOCKET`] while this lives.
pub struct Journald {
    started: Option<Child>,
}

/// Whether something takes datagrams on [`JOURNAL_SOCKET`].
pub fn journald_listening() -> bool {
    std::os::unix::net::UnixDatagram::unbound()
        .and_then(|s| s.connect(JOURNAL_SOCKET))
        .is_ok()
}

impl Journald {
    /// The running journald, or a new one; panics loudly when neither can be had.
    #[must_use]
    pub fn ensure() -> Self {
        Self::try_ensure().unwrap_or_else(|e| {
            panic!(
                "\n********************************************************************\n\
                 {e}: the journald mirror test needs it (Debian package `systemd`).\n\
                 Refusing to pass.\n\
                 ********************************************************************\n"
            )
        })
    }

    /// The running journald, or a new one.
    ///
    /// # Errors
    /// When none runs and systemd-journald cannot be started.
    pub fn try_ensure() -> Result<Self, String> {
        if journald_listening() {
            return Ok(Self { started: None });
        }
        let daemon = [
            "/lib/systemd/systemd-journald",
            "/usr/lib/systemd/systemd-journald",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("no journald runs and systemd-journald is not installed")?;
        std::fs::create_dir_all("/run/systemd/journal").map_err(|e| e.to_string())?;
        let child = Command::new(daemon)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {daemon}: {e}"))?;
        let started = Self {
            started: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !journald_listening() {
            if Instant::now() > deadline {
                return Err(format!("systemd-journald did not open {JOURNAL_SOCKET}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(started)
    }

    /// Whether this handle started the journald (and stops it when dropped).
    #[must_use]
    pub fn started_here(&self) -> bool {
        self.started.is_some()
    }

    /// The journald's process id: the one started here, or the running one found in /proc.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        if let Some(c) = &self.started {
            return Some(c.id());
        }
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            (comm.trim() == "systemd-journal").then_some(pid)
        })
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        if let Some(c) = &mut self.started {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
