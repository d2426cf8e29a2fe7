//! Sending to an HTTP collector: one POST per batch, acknowledged by any 2xx answer; the
//! batch's seq range rides in `X-Pgwarden-Seq` (`FIRST-LAST`) and every record carries its
//! own seq, the key a collector deduplicates a re-sent batch on.
use std::path::PathBuf;
use std::time::Duration;

use super::{Batch, SendError};
use crate::audit::export::Format;
use crate::audit::targets::{HttpBody, HttpTarget};

/// An HTTP collector.
pub struct Http {
    client: reqwest::Client,
    url: String,
    body: HttpBody,
    format: Format,
    authorization: Option<PathBuf>,
    host: String,
    timeout: Duration,
}

impl Http {
    /// A sender to `target`.
    ///
    /// # Errors
    /// A URL that is not `http(s)://` or carries a user or password (credentials go in
    /// `authorization_file`), or TLS files that cannot be read.
    pub fn new(
        target: &HttpTarget,
        format: Format,
        host: &str,
        wait: Duration,
    ) -> Result<Self, SendError> {
        let url = url::Url::parse(&target.url)
            .map_err(|e| SendError::Setup(format!("url `{}`: {e}", target.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(SendError::Setup(format!(
                "url `{}`: use http:// or https://",
                target.url
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(SendError::Setup(
                "url: no user or password in the URL (it would show in status and logs); use authorization_file".into(),
            ));
        }
        let mut tls = match &target.tls {
            Some(t) => crate::tls::collector_config(&t.ca, t.cert.as_deref().zip(t.key.as_deref()))
                .map_err(|e| SendError::Setup(format!("{e:#}")))?,
            None => {
                use rustls_platform_verifier::BuilderVerifierExt as _;
                rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                    .with_safe_default_protocol_versions()
                    .and_then(|b| b.with_platform_verifier())
                    .map_err(|e| SendError::Setup(format!("TLS: {e}")))?
                    .with_no_client_auth()
            }
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .http1_only()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("pgwarden/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SendError::Setup(format!("HTTP client: {e}")))?;
        if let Some(f) = &target.authorization_file {
            read_secret(f)?;
        }
        Ok(Self {
            client,
            url: target.url.clone(),
            body: target.body,
            format,
            authorization: target.authorization_file.clone(),
            host: host.to_owned(),
            timeout: wait,
        })
    }

    /// POSTs `batch`.
    ///
    /// # Errors
    /// No answer, or one that is not 2xx (its status and the start of its body).
    pub async fn send(&mut self, batch: &Batch) -> Result<(), SendError> {
        let (content_type, body) = self.body(batch);
        let mut req = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .header("content-type", content_type)
            .header(
                "x-pgwarden-seq",
                format!("{}-{}", batch.first(), batch.last()),
            );
        // Read at each batch: a rotated token applies from the next one.
        if let Some(f) = &self.authorization {
            req = req.header("authorization", read_secret(f)?);
        }
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| SendError::Transport(describe(&e)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        let text = crate::audit::record::one_line(&text, 200);
        Err(SendError::Transport(format!("HTTP {status}: {text}")))
    }

    /// The request body and its content type.
    fn body(&self, batch: &Batch) -> (&'static str, Vec<u8>) {
        // A JSON value per record: OCSF and JSON lines are JSON already; a syslog line is
        // sent as a JSON string.
        let value = |s: &str| -> String {
            if self.format == Format::Rfc5424 {
                serde_json::Value::String(s.to_owned()).to_string()
            } else {
                s.to_owned()
            }
        };
        let mut out = Vec::with_capacity(batch.bytes + batch.entries.len() * 64);
        match self.body {
            HttpBody::Ndjson => {
                for e in &batch.entries {
                    out.extend_from_slice(value(&e.body).as_bytes());
                    out.push(b'\n');
                }
                ("application/x-ndjson", out)
            }
            HttpBody::Array => {
                out.push(b'[');
                for (i, e) in batch.entries.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(value(&e.body).as_bytes());
                }
                out.push(b']');
                ("application/json", out)
            }
            HttpBody::Hec => {
                let sourcetype = match self.format {
                    Format::Ocsf => "pgwarden:ocsf",
                    Format::Jsonl => "pgwarden:audit",
                    Format::Rfc5424 => "pgwarden:syslog",
                };
                for e in &batch.entries {
                    out.extend_from_slice(
                        format!(
                            "{{\"time\":{}.{:06},\"host\":{},\"source\":\"pgwarden\",\"sourcetype\":\"{sourcetype}\",\"event\":{}}}",
                            e.time_us.div_euclid(1_000_000),
                            e.time_us.rem_euclid(1_000_000),
                            serde_json::Value::String(self.host.clone()),
                            value(&e.body)
                        )
                        .as_bytes(),
                    );
                }
                ("application/json", out)
            }
        }
    }
}

/// The `Authorization` header's value from `path` (trimmed).
fn read_secret(path: &std::path::Path) -> Result<reqwest::header::HeaderValue, SendError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SendError::Setup(format!("authorization_file {}: {e}", path.display())))?;
    let mut v = reqwest::header::HeaderValue::from_str(text.trim()).map_err(|_| {
        SendError::Setup(format!(
            "authorization_file {}: not a valid header value",
            path.display()
        ))
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// A reqwest error without its URL's query (the URL itself has no credentials).
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "connect failed".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::Entry;

    fn sender(body: HttpBody, format: Format) -> Http {
        let target = HttpTarget {
            url: "http://127.0.0.1:9/".into(),
            body,
            tls: None,
            authorization_file: None,
        };
        Http::new(&target, format, "db1", Duration::from_secs(1)).unwrap()
    }

    fn batch() -> Batch {
        Batch {
            entries: vec![
                Entry::test(7, r#"{"seq":7}"#),
                Entry::test(8, r#"{"seq":8}"#),
            ],
            bytes: 18,
        }
    }

    #[test]
    fn bodies_as_collectors_take_them() {
        let (ct, b) = sender(HttpBody::Ndjson, Format::Ocsf).body(&batch());
        assert_eq!(ct, "application/x-ndjson");
        assert_eq!(b, b"{\"seq\":7}\n{\"seq\":8}\n");
        let (_, b) = sender(HttpBody::Array, Format::Jsonl).body(&batch());
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v[1]["seq"], 8);
        let (_, b) = sender(HttpBody::Hec, Format::Ocsf).body(&batch());
        let events: Vec<serde_json::Value> = serde_json::Deserializer::from_slice(&b)
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["event"]["seq"], 7);
        assert_eq!(events[0]["host"], "db1");
        assert_eq!(events[0]["sourcetype"], "pgwarden:ocsf");
        // Syslog lines over HTTP are JSON strings.
        let mut b = batch();
        b.entries[0].body = "<110>1 \"quoted\"".into();
        let (_, body) = sender(HttpBody::Array, Format::Rfc5424).body(&b);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v[0], "<110>1 \"quoted\"");
    }

    #[test]
    fn a_url_with_credentials_is_refused() {
        let target = HttpTarget {
            url: "https://user:secret@siem.example/".into(),
            body: HttpBody::Ndjson,
            tls: None,
            authorization_file: None,
        };
        let err = Http::new(&target, Format::Ocsf, "h", Duration::from_secs(1))
            .err()
            .unwrap()
            .to_string();
        assert!(!err.contains("secret"), "{err}");
        assert!(err.contains("authorization_file"), "{err}");
    }
}
