//! The approval webhook: a JSON POST per held statement to `approvals.webhook`, retried with
//! backoff. Plain HTTP/1.1 over TCP or TLS (the system's CA bundle); a failure is logged and
//! audited, and the request still waits for a decision.
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Attempts before giving up.
pub const ATTEMPTS: u32 = 3;

/// A parsed webhook URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// `https`.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path and query.
    pub path: String,
}

impl Url {
    /// Parses `http://host[:port]/path` or `https://...`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            bail!("webhook `{s}`: use an http:// or https:// URL");
        };
        let (authority, path) = rest
            .split_once('/')
            .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
        let default_port = if tls { 443 } else { 80 };
        let bad_port = || anyhow!("webhook `{s}`: bad port");
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| anyhow!("webhook `{s}`: unclosed ["))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad_port())?,
                None => default_port,
            };
            (h.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad_port())?),
                None => (authority.to_owned(), default_port),
            }
        };
        if host.is_empty() {
            bail!("webhook `{s}`: no host");
        }
        Ok(Self {
            tls,
            host,
            port,
            path,
        })
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    url: &Url,
    body: &[u8],
) -> anyhow::Result<u16> {
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nUser-Agent: pgwarden/{}\r\nConnection: close\r\n\r\n",
        url.path,
        url.host,
        body.len(),
        env!("CARGO_PKG_VERSION")
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    s.flush().await?;
    let mut reply = Vec::new();
    s.take(64 * 1024).read_to_end(&mut reply).await?;
    let line = String::from_utf8_lossy(&reply);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no HTTP status in the reply"))?;
    Ok(status)
}

async fn post_once(url: &Url, body: &[u8], timeout: Duration) -> anyhow::Result<()> {
    let work = async {
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .context("connecting")?;
        let status = if url.tls {
            let mut roots = rustls::RootCertStore::empty();
            let pem = std::fs::read("/etc/ssl/certs/ca-certificates.crt")
                .context("reading the system CA bundle")?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()).flatten() {
                let _ = roots.add(cert);
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from(url.host.clone())?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .context("TLS")?;
            exchange(tls, url, body).await?
        } else {
            exchange(tcp, url, body).await?
        };
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(anyhow!("HTTP {status}"))
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| anyhow!("timed out after {}s", timeout.as_secs()))?
}

/// POSTs `body`, retrying with backoff (1 s, 2 s); the last error when every attempt failed.
pub async fn post(url: &Url, body: Vec<u8>, timeout: Duration) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
        }
        match post_once(url, &body, timeout).await {
            Ok(()) => return Ok(()),
            Err(e) => last = format!("{e:#}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            Url::parse("http://127.0.0.1:8080/hook?x=1").unwrap(),
            Url {
                tls: false,
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/hook?x=1".into()
            }
        );
        assert_eq!(Url::parse("https://hooks.example.com/a").unwrap().port, 443);
        assert_eq!(Url::parse("http://[::1]:9000/").unwrap().host, "::1");
        assert!(Url::parse("ftp://x/").is_err());
        assert!(Url::parse("http://:80/").is_err());
    }
}
