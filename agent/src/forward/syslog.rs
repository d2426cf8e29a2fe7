//! Sending to a syslog collector: RFC 5424 messages octet-counted (RFC 6587 3.4.1, as RFC
//! 5425 requires for TLS) over one long-lived TCP or TLS connection.
//!
//! Syslog has no application acknowledgement, so a batch counts as delivered only when the
//! collector's kernel has acknowledged every byte of it (`SIOCOUTQ` is 0) and the connection
//! is still open; a connection found closed or reset, or bytes not acknowledged within the
//! timeout, fail the batch and it is sent again on a new connection. What this cannot see is
//! a collector that crashes after its kernel took the bytes: collectors that must not lose a
//! record take HTTP, whose 2xx answer comes from the collector itself.
use std::os::fd::AsFd as _;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use super::{Batch, SendError};
use crate::audit::targets::SyslogTarget;

/// An open connection.
enum Conn {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Tcp(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        }
    }

    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => s.write_all(buf).await,
            Conn::Tls(s) => {
                s.write_all(buf).await?;
                s.flush().await
            }
        }
    }

    /// Whether the collector closed or reset the connection (it never sends anything else;
    /// TLS alerts and close_notify count as closing).
    async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 512];
        let read = async {
            match self {
                Conn::Tcp(s) => s.read(&mut buf).await,
                Conn::Tls(s) => s.read(&mut buf).await,
            }
        };
        // A zero timeout still polls the read once: ready means end of stream or an error.
        timeout(Duration::ZERO, read).await.is_ok()
    }
}

/// A syslog collector and the connection to it.
pub struct Syslog {
    address: String,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    conn: Option<Conn>,
    timeout: Duration,
}

impl Syslog {
    /// A sender to `target` (nothing is connected until the first batch).
    ///
    /// # Errors
    /// TLS files that cannot be read, or a server name that is not one.
    pub fn new(target: &SyslogTarget, wait: Duration) -> Result<Self, SendError> {
        let tls = match &target.tls {
            None => None,
            Some(t) => {
                let client = t.cert.as_deref().zip(t.key.as_deref());
                let config = crate::tls::collector_config(&t.ca, client)
                    .map_err(|e| SendError::Setup(format!("{e:#}")))?;
                let host = t
                    .server_name
                    .clone()
                    .unwrap_or_else(|| host_of(&target.address));
                let name = ServerName::try_from(host.clone())
                    .map_err(|e| SendError::Setup(format!("server name `{host}`: {e}")))?;
                Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
            }
        };
        Ok(Self {
            address: target.address.clone(),
            tls,
            conn: None,
            timeout: wait,
        })
    }

    /// Sends `batch` and waits until the collector's kernel has all of it.
    ///
    /// # Errors
    /// Connecting, writing or the acknowledgement failed; the connection is dropped and the
    /// next call opens a new one.
    pub async fn send(&mut self, batch: &Batch) -> Result<(), SendError> {
        let r = self.try_send(batch).await;
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    async fn try_send(&mut self, batch: &Batch) -> Result<(), SendError> {
        if let Some(c) = &mut self.conn
            && c.closed().await
        {
            self.conn = None;
        }
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        let Some(conn) = &mut self.conn else {
            return Err(SendError::Transport("not connected".into()));
        };
        let mut buf = Vec::with_capacity(batch.bytes + batch.entries.len() * 8);
        for e in &batch.entries {
            buf.extend_from_slice(e.body.len().to_string().as_bytes());
            buf.push(b' ');
            buf.extend_from_slice(e.body.as_bytes());
        }
        timeout(self.timeout, conn.write_all(&buf))
            .await
            .map_err(|_| SendError::Transport(format!("write timed out after {:?}", self.timeout)))?
            .map_err(|e| SendError::Transport(format!("write: {e}")))?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = agent_sys::send_queue_len(conn.tcp().as_fd())
                .map_err(|e| SendError::Transport(format!("SIOCOUTQ: {e}")))?;
            if left == 0 {
                break;
            }
            if Instant::now() >= deadline {
                return Err(SendError::Transport(format!(
                    "{left} bytes not acknowledged after {:?}",
                    self.timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if conn.closed().await {
            return Err(SendError::Transport(
                "the collector closed the connection while the batch was sent".into(),
            ));
        }
        Ok(())
    }

    async fn connect(&self) -> Result<Conn, SendError> {
        let tcp = timeout(self.timeout, TcpStream::connect(&self.address))
            .await
            .map_err(|_| {
                SendError::Transport(format!("connect timed out after {:?}", self.timeout))
            })?
            .map_err(|e| SendError::Transport(format!("connect {}: {e}", self.address)))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Conn::Tcp(tcp)),
            Some((connector, name)) => {
                let tls = timeout(self.timeout, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| SendError::Transport("TLS handshake timed out".into()))?
                    .map_err(|e| SendError::Transport(format!("TLS handshake: {e}")))?;
                Ok(Conn::Tls(Box::new(tls)))
            }
        }
    }
}

/// The host part of `HOST:PORT` (`[v6]:port` too).
fn host_of(address: &str) -> String {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::Entry;

    #[test]
    fn host_of_an_address() {
        assert_eq!(host_of("siem.example:6514"), "siem.example");
        assert_eq!(host_of("[::1]:6514"), "::1");
    }

    /// The framing a collector reads: `LEN SP MSG`, one after another, and a batch counts
    /// only once the peer has it.
    #[tokio::test]
    async fn frames_are_octet_counted_and_a_closed_collector_fails_the_batch() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = SyslogTarget {
            address: l.local_addr().unwrap().to_string(),
            tls: None,
        };
        let mut s = Syslog::new(&target, Duration::from_secs(2)).unwrap();
        let batch = Batch {
            entries: vec![Entry::test(1, "<110>1 - a"), Entry::test(2, "<110>1 - bé")],
            bytes: 0,
        };
        let (sent, accepted) = tokio::join!(s.send(&batch), l.accept());
        sent.unwrap();
        let (mut peer, _) = accepted.unwrap();
        let mut got = vec![0u8; 64];
        let n = peer.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], "10 <110>1 - a12 <110>1 - bé".as_bytes());
        // The collector goes away: the next batch fails (and would be sent again).
        drop(peer);
        drop(l);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(s.send(&batch).await.is_err());
        assert!(s.send(&batch).await.is_err(), "nothing listens any more");
    }
}
