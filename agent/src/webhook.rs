//! The approval webhook: a JSON POST per held statement to `approvals.webhook`, retried with
//! backoff. HTTP/1.1 by `reqwest`, over TCP or rustls (ring) checked against the system's root
//! certificates; a failure is logged and audited, and the request still waits for a decision.
use std::time::Duration;

/// Attempts before giving up.
pub const ATTEMPTS: u32 = 3;

/// Why a webhook could not be called.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Not an http:// or https:// URL.
    #[error("webhook `{0}`: use an http:// or https:// URL")]
    Scheme(String),
    /// A port that is not a number up to 65535.
    #[error("webhook `{0}`: bad port")]
    BadPort(String),
    /// No host name or address.
    #[error("webhook `{0}`: no host")]
    NoHost(String),
    /// Any other malformed URL.
    #[error("webhook `{0}`: {1}")]
    BadUrl(String, url::ParseError),
    /// The TLS client could not be set up (no system root certificates, say).
    #[error("TLS setup")]
    Tls(#[from] rustls::Error),
    /// An attempt took longer than the configured timeout.
    #[error("timed out after {0}s")]
    Timeout(u64),
    /// The webhook answered, but not with 2xx (redirects are not followed).
    #[error("HTTP {0}")]
    Status(u16),
    /// Connecting, TLS, or the exchange failed.
    #[error("sending the request")]
    Http(#[from] reqwest::Error),
}

impl WebhookError {
    /// The error and its causes on one line, `outer: inner: ...`, as logs and audit records
    /// show it.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(e) = cause {
            text.push_str(": ");
            text.push_str(&e.to_string());
            cause = e.source();
        }
        text
    }
}

/// A parsed webhook URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// `https`.
    pub tls: bool,
    /// Host name or address (an IPv6 address without its brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path and query.
    pub path: String,
}

impl Url {
    /// Parses `http://host[:port]/path` or `https://...`.
    pub fn parse(s: &str) -> Result<Self, WebhookError> {
        let url = url::Url::parse(s).map_err(|e| match e {
            url::ParseError::InvalidPort => WebhookError::BadPort(s.to_owned()),
            url::ParseError::EmptyHost => WebhookError::NoHost(s.to_owned()),
            e => WebhookError::BadUrl(s.to_owned(), e),
        })?;
        let tls = match url.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(WebhookError::Scheme(s.to_owned())),
        };
        let host = match url.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => return Err(WebhookError::NoHost(s.to_owned())),
        };
        let port = url
            .port_or_known_default()
            .ok_or_else(|| WebhookError::BadPort(s.to_owned()))?;
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        Ok(Self {
            tls,
            host,
            port,
            path,
        })
    }

    fn to_request_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            format!("{scheme}://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

/// The HTTP client of one notification. Built per notification (held statements are rare), so
/// a change to the system's root certificates applies from the next one, as it did when the
/// bundle was read by hand.
fn client(url: &Url) -> Result<reqwest::Client, WebhookError> {
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?;
    let mut tls = if url.tls {
        use rustls_platform_verifier::BuilderVerifierExt as _;
        builder.with_platform_verifier()?.with_no_client_auth()
    } else {
        // reqwest wants a TLS config either way; a plain-HTTP webhook never uses it, so it
        // need not read the system's roots.
        builder
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .http1_only()
        // As before: no proxy from the environment, no redirects (a 3xx is a failure).
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("pgwarden/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

async fn post_once(
    client: &reqwest::Client,
    url: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(), WebhookError> {
    let reply = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_vec())
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                WebhookError::Timeout(timeout.as_secs())
            } else {
                WebhookError::Http(e)
            }
        })?;
    let status = reply.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(WebhookError::Status(status.as_u16()))
    }
}

/// POSTs `body`, retrying with backoff (1 s, 2 s); the last error when every attempt failed.
/// `timeout` bounds each attempt.
pub async fn send(url: &Url, body: Vec<u8>, timeout: Duration) -> Result<(), WebhookError> {
    let client = client(url)?;
    let target = url.to_request_url();
    let mut last = None;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
        }
        match post_once(&client, &target, &body, timeout).await {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(WebhookError::Timeout(timeout.as_secs())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

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
        assert_eq!(Url::parse("http://hooks.example.com").unwrap().path, "/");
        let v6 = Url::parse("http://[::1]:9000/").unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_request_url(), "http://[::1]:9000/");
        assert!(matches!(
            Url::parse("ftp://x/"),
            Err(WebhookError::Scheme(_))
        ));
        assert!(matches!(
            Url::parse("http://:80/"),
            Err(WebhookError::NoHost(_))
        ));
        assert!(matches!(
            Url::parse("http://x:99999/"),
            Err(WebhookError::BadPort(_))
        ));
        assert_eq!(
            Url::parse("gopher").unwrap_err().chain(),
            "webhook `gopher`: relative URL without a base"
        );
    }

    /// A one-shot HTTP server answering `status`; yields the request it read.
    async fn server(status: &'static str) -> (Url, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = s.read(&mut chunk).await.unwrap();
                request.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&request);
                if n == 0 || text.ends_with("{\"a\":1}") {
                    break;
                }
            }
            let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            s.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&request).into_owned()
        });
        (
            Url::parse(&format!("http://127.0.0.1:{port}/hook")).unwrap(),
            task,
        )
    }

    #[tokio::test]
    async fn posts_json_and_reads_the_status() {
        let (url, request) = server("204 No Content").await;
        send(&url, br#"{"a":1}"#.to_vec(), Duration::from_secs(5))
            .await
            .unwrap();
        let request = request.await.unwrap().to_ascii_lowercase();
        assert!(request.starts_with("post /hook http/1.1\r\n"), "{request}");
        assert!(
            request.contains("content-type: application/json"),
            "{request}"
        );
        assert!(request.contains("content-length: 7"), "{request}");
        assert!(request.contains("user-agent: pgwarden/"), "{request}");

        let (url, _) = server("500 Internal Server Error").await;
        let client = client(&url).unwrap();
        let e = post_once(
            &client,
            &url.to_request_url(),
            br#"{"a":1}"#,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(e.chain(), "HTTP 500");
    }

    #[tokio::test]
    async fn a_silent_server_times_out_and_a_closed_port_is_refused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!(
            "http://127.0.0.1:{}/",
            listener.local_addr().unwrap().port()
        ))
        .unwrap();
        let client = client(&url).unwrap();
        let e = post_once(
            &client,
            &url.to_request_url(),
            b"{}",
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert_eq!(e.chain(), "timed out after 0s");
        drop(listener);
        let e = post_once(
            &client,
            &url.to_request_url(),
            b"{}",
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, WebhookError::Http(_)), "{e:?}");
        assert!(
            e.chain().starts_with("sending the request: "),
            "{}",
            e.chain()
        );
    }

    #[tokio::test]
    async fn https_speaks_tls() {
        // A plain-HTTP answer to the ClientHello: the handshake fails. (The client needs the
        // system's root certificates first, as on any host with ca-certificates.)
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut hello = [0u8; 512];
            let _ = s.read(&mut hello).await;
            let _ = s
                .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                .await;
        });
        let url = Url::parse(&format!("https://127.0.0.1:{port}/")).unwrap();
        let client = client(&url).unwrap();
        let e = post_once(
            &client,
            &url.to_request_url(),
            b"{}",
            Duration::from_secs(5),
        )
        .await
        .map(|()| "no error".to_owned())
        .unwrap_or_else(|e| e.chain());
        assert!(e.starts_with("sending the request: "), "{e}");
    }
}
