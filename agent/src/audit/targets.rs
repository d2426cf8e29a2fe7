//! Where the journal is forwarded, `audit.forward`: syslog collectors (RFC 5424 over TCP, or
//! RFC 5425 over TLS) and HTTP collectors (batches of JSON lines or OCSF events, as Vector,
//! Fluent Bit and Splunk HEC take them). The settings only; the forwarder is `crate::forward`.
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use super::export::Format;

/// One target of `audit.forward`: exactly one of `syslog` and `http`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardTarget {
    /// Names the target in records, `status`, metrics and its cursor file
    /// (`<state_dir>/forward/<name>.cursor`): letters, digits, `-`, `_`, at most 64.
    pub name: String,
    /// A syslog collector.
    #[serde(default)]
    pub syslog: Option<SyslogTarget>,
    /// An HTTP collector.
    #[serde(default)]
    pub http: Option<HttpTarget>,
    /// What each record is sent as (default: `rfc5424` to syslog, `ocsf` over HTTP).
    #[serde(default)]
    pub format: Option<Format>,
    /// Where a target without a cursor yet starts: `oldest` (default: every record the
    /// journal's files hold) or `now` (from the next record written).
    #[serde(default)]
    pub start: Start,
    /// Records sent at most per batch (HTTP request, or syslog write before waiting for the
    /// collector's acknowledgement).
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// The RFC 5424 structured data's enterprise number (`pgwarden@N`; default 32473, the
    /// number reserved for examples: use your organisation's).
    #[serde(default)]
    pub enterprise_id: Option<u32>,
    /// How long a connect, a send or its acknowledgement may take, e.g. `10s`.
    #[serde(default = "default_timeout", deserialize_with = "timeout")]
    pub timeout: Duration,
}

fn default_batch() -> usize {
    500
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Where a target starts the first time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// Every record the journal's files hold.
    #[default]
    Oldest,
    /// From the next record written.
    Now,
}

/// A syslog collector: RFC 5424 messages, octet-counted (RFC 6587 3.4.1, the framing RFC
/// 5425 requires) over TCP, or TLS when `tls` is set.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogTarget {
    /// `HOST:PORT`.
    pub address: String,
    /// TLS (RFC 5425; port 6514 by convention).
    #[serde(default)]
    pub tls: Option<TlsTarget>,
}

/// TLS toward a collector: its certificate is verified against `ca` and `server_name`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsTarget {
    /// PEM CA certificates the collector's certificate must chain to.
    pub ca: PathBuf,
    /// The name the certificate must carry (default: the host of `address`/`url`).
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM client certificate chain, for collectors that authenticate senders.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its PEM private key.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// An HTTP collector: each batch is one POST; any 2xx answer acknowledges it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTarget {
    /// `http://` or `https://` URL.
    pub url: String,
    /// How a batch is laid out.
    #[serde(default)]
    pub body: HttpBody,
    /// TLS settings for an `https://` URL (default: the system's root certificates).
    #[serde(default)]
    pub tls: Option<TlsTarget>,
    /// A file whose content (trimmed) is sent as the `Authorization` header, e.g.
    /// `Splunk <token>` or `Bearer <token>`: a secret, never logged or recorded.
    #[serde(default)]
    pub authorization_file: Option<PathBuf>,
}

/// The layout of an HTTP batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpBody {
    /// One JSON value per line (`application/x-ndjson`): Vector's `http_server` with
    /// `decoding.codec: json` and newline framing, Fluent Bit's `http` input.
    #[default]
    Ndjson,
    /// One JSON array (`application/json`).
    Array,
    /// Splunk HTTP Event Collector: `{"time":…,"host":…,"sourcetype":…,"event":…}` objects,
    /// one after another.
    Hec,
}

/// Why `audit.forward` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// A name that cannot name a file and a metric label.
    #[error("audit.forward: target name `{0}`: use letters, digits, `-` and `_` (at most 64)")]
    Name(String),
    /// Two targets of one name.
    #[error("audit.forward: two targets are named `{0}`")]
    Duplicate(String),
    /// Neither or both of `syslog` and `http`.
    #[error("audit.forward `{0}`: give exactly one of `syslog` and `http`")]
    Kind(String),
    /// A batch of 0 or over the maximum.
    #[error("audit.forward `{0}`: batch must be 1 to 10000")]
    Batch(String),
    /// A client certificate without its key or the other way round.
    #[error("audit.forward `{0}`: tls.cert and tls.key go together")]
    ClientCert(String),
}

impl ForwardTarget {
    /// The format records are sent in.
    pub fn format(&self) -> Format {
        self.format.unwrap_or(if self.syslog.is_some() {
            Format::Rfc5424
        } else {
            Format::Ocsf
        })
    }

    /// `syslog` or `http`.
    pub fn kind(&self) -> &'static str {
        if self.syslog.is_some() {
            "syslog"
        } else {
            "http"
        }
    }

    /// Where records go, for people: the address or the URL (never a credential: URLs
    /// with a user or password are refused by the forwarder).
    pub fn destination(&self) -> String {
        match (&self.syslog, &self.http) {
            (Some(s), _) => {
                let scheme = if s.tls.is_some() {
                    "syslog+tls"
                } else {
                    "syslog"
                };
                format!("{scheme}://{}", s.address)
            }
            (None, Some(h)) => h.url.clone(),
            (None, None) => String::new(),
        }
    }

    fn tls(&self) -> Option<&TlsTarget> {
        match (&self.syslog, &self.http) {
            (Some(s), _) => s.tls.as_ref(),
            (None, Some(h)) => h.tls.as_ref(),
            (None, None) => None,
        }
    }
}

/// Checks what can be checked without touching the network or the files.
///
/// # Errors
/// The first target that is malformed.
pub fn check(targets: &[ForwardTarget]) -> Result<(), TargetError> {
    let mut names = std::collections::HashSet::new();
    for t in targets {
        let ok = !t.name.is_empty()
            && t.name.len() <= 64
            && t.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(TargetError::Name(t.name.clone()));
        }
        if !names.insert(t.name.as_str()) {
            return Err(TargetError::Duplicate(t.name.clone()));
        }
        if t.syslog.is_some() == t.http.is_some() {
            return Err(TargetError::Kind(t.name.clone()));
        }
        if t.batch == 0 || t.batch > 10_000 {
            return Err(TargetError::Batch(t.name.clone()));
        }
        if let Some(tls) = t.tls()
            && tls.cert.is_some() != tls.key.is_some()
        {
            return Err(TargetError::ClientCert(t.name.clone()));
        }
    }
    Ok(())
}

fn timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    let parsed = humantime::parse_duration(&text)
        .map_err(|e| de::Error::custom(format!("`{text}`: {e} (e.g. 10s)")))?;
    if parsed < Duration::from_millis(100) || parsed > Duration::from_secs(300) {
        return Err(de::Error::custom(format!(
            "`{text}`: a forwarding timeout is 100ms to 300s"
        )));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Vec<ForwardTarget> {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_and_formats() {
        let t = parse(
            "- {name: siem, syslog: {address: 'siem:6514', tls: {ca: /ca.pem}}}\n\
             - {name: vector, http: {url: 'http://v:8080/'}}\n",
        );
        check(&t).unwrap();
        assert_eq!(t[0].format(), Format::Rfc5424);
        assert_eq!(t[0].destination(), "syslog+tls://siem:6514");
        assert_eq!(t[1].format(), Format::Ocsf);
        assert_eq!(t[1].batch, 500);
        assert_eq!(t[1].timeout, Duration::from_secs(10));
        assert_eq!(t[1].start, Start::Oldest);
    }

    #[test]
    fn malformed_targets_are_refused() {
        for (yaml, want) in [
            ("- {name: 'a/b', http: {url: 'http://x/'}}", "target name"),
            (
                "- {name: a, http: {url: 'http://x/'}}\n- {name: a, http: {url: 'http://y/'}}",
                "two targets",
            ),
            ("- {name: a}", "exactly one"),
            (
                "- {name: a, http: {url: 'http://x/'}, syslog: {address: 'x:1'}}",
                "exactly one",
            ),
            ("- {name: a, http: {url: 'http://x/'}, batch: 0}", "batch"),
            (
                "- {name: a, syslog: {address: 'x:1', tls: {ca: /c, cert: /c}}}",
                "go together",
            ),
        ] {
            let err = check(&parse(yaml)).unwrap_err().to_string();
            assert!(err.contains(want), "{yaml}: {err}");
        }
        assert!(
            serde_yaml_ng::from_str::<Vec<ForwardTarget>>(
                "- {name: a, http: {url: 'http://x/'}, timeout: 1ms}"
            )
            .is_err()
        );
        assert!(
            serde_yaml_ng::from_str::<Vec<ForwardTarget>>(
                "- {name: a, http: {url: 'http://x/', password: x}}"
            )
            .is_err()
        );
    }
}
