//! The journald mirror: every written record also goes to journald over its native protocol
//! (one datagram to `/run/systemd/journal/socket`), so `journalctl -t pgwarden` shows it and
//! a copy of each `hash` lives outside the journal file.
//!
//! Fields: `MESSAGE` (a one-line summary), `PRIORITY` (4 for denials and `audit.gap`, 6
//! otherwise), `SYSLOG_IDENTIFIER=pgwarden`, and `PGWARDEN_<FIELD>` for each record field,
//! nested objects flattened (`PGWARDEN_ACTOR_PID`, `PGWARDEN_DETAIL_LOST`), arrays as JSON
//! text. Values holding a newline use the protocol's length-prefixed form.
//!
//! A record whose datagram would pass [`MAX_DATAGRAM`] is sent truncated: every value is cut
//! to [`TRUNCATED_VALUE`] bytes and `PGWARDEN_TRUNCATED=1` is added (the file has it whole;
//! `PGWARDEN_HASH` finds it). An absent socket is counted and logged once, then retried
//! quietly every [`RETRY`]; other send failures (journald busy: the socket is non-blocking)
//! are counted each time and logged with back-off. Nothing is dropped silently.
//!
//! Hand-written rather than taken from a crate: the maintained ones are loggers
//! (`tracing-journald`, `systemd-journal-logger`: the fields of a log event, not of a stored
//! line) or a general client (`libsystemd`, whose `journal_send` takes the fields as key-value
//! pairs, so the line would be parsed into them first). The native protocol is a few lines
//! ([`Encoder`]); here each journal line is flattened into its datagram in one pass, with
//! buffers kept from one record to the next, on the writer thread; the socket is non-blocking
//! and every record journald does not take is counted for `pgwarden status`. Records too big
//! for one datagram are truncated rather than passed in a memfd: the file has them whole, and
//! the sender stays one unprivileged `send_to` with no descriptor passing.
mod encode;
#[cfg(test)]
mod tests;

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{info, warn};

pub use encode::Encoder;

use super::record::Event;

/// Largest datagram sent (the kernel's default socket buffer allows about 208 KiB).
pub const MAX_DATAGRAM: usize = 192 * 1024;
/// Bytes kept of each value in a truncated record.
pub const TRUNCATED_VALUE: usize = 2048;
/// How often an absent journald is looked for again.
pub const RETRY: Duration = Duration::from_secs(30);

/// A connection-less sender to journald.
pub struct Journald {
    path: PathBuf,
    socket: Option<UnixDatagram>,
    absent_since: Option<Instant>,
    errors: u64,
    sent: u64,
    encoder: Encoder,
    datagram: Vec<u8>,
}

impl Journald {
    /// A sender to the native socket at `path` (nothing is opened until the first send).
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            socket: None,
            absent_since: None,
            errors: 0,
            sent: 0,
            encoder: Encoder::default(),
            datagram: Vec::with_capacity(2048),
        }
    }

    /// Records journald did not get (an absent socket counts once per absence).
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Records sent.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Sends one journal line; failures are counted and logged here.
    pub fn send(&mut self, line: &[u8], seq: u64, priority: u8) {
        if self
            .absent_since
            .is_some_and(|since| since.elapsed() < RETRY)
        {
            return;
        }
        let mut payload = std::mem::take(&mut self.datagram);
        let sent = if self.encoder.encode(line, priority, &mut payload) {
            self.send_bytes(&payload)
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the journal line is not a JSON object",
            ))
        };
        self.datagram = payload;
        match sent {
            Ok(()) => {
                self.sent += 1;
                if self.absent_since.take().is_some() {
                    info!("journald reachable at {}", self.path.display());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                if self.absent_since.is_none() {
                    self.errors += 1;
                    warn!(
                        "journald socket {} is not there ({e}): audit records are not mirrored \
                         to journald until it is (retrying every {}s)",
                        self.path.display(),
                        RETRY.as_secs()
                    );
                }
                self.absent_since = Some(Instant::now());
            }
            Err(e) => {
                self.errors += 1;
                if self.errors == 1 || self.errors.is_power_of_two() {
                    warn!(
                        "journald did not take audit record seq {}: {e} ({} failed so far)",
                        seq, self.errors
                    );
                }
            }
        }
    }

    fn send_bytes(&mut self, payload: &[u8]) -> io::Result<()> {
        if self.socket.is_none() {
            let s = UnixDatagram::unbound()?;
            s.set_nonblocking(true)?;
            self.socket = Some(s);
        }
        let Some(s) = &self.socket else {
            return Err(io::Error::other("no socket"));
        };
        s.send_to(payload, &self.path).map(|_| ())
    }
}

/// journald priority of an event: 4 (warning) for refusals and gaps, 6 (info) otherwise.
pub fn priority(event: Event, denial: bool) -> u8 {
    if denial
        || matches!(
            event,
            Event::AuditGap | Event::AuditReopen | Event::AuditRetention
        )
    {
        4
    } else {
        6
    }
}
