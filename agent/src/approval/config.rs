//! The `approvals:` section of the config: where held statements are announced, and the HTTP
//! API and page approvers decide from.
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where held statements are announced and decided.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// URL (http:// or https://) that receives a JSON POST for every held statement.
    pub webhook: Option<String>,
    /// Seconds per webhook attempt (three attempts, 1 s and 2 s apart).
    #[serde(default = "default_webhook_timeout")]
    pub webhook_timeout_seconds: u64,
    /// The webhook body: pgwarden's JSON, or a Slack-compatible message.
    #[serde(default)]
    pub webhook_format: WebhookFormat,
    /// The HTTP API and page (off unless given).
    #[serde(default)]
    pub http: Option<HttpConfig>,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            webhook: None,
            webhook_timeout_seconds: default_webhook_timeout(),
            webhook_format: WebhookFormat::default(),
            http: None,
        }
    }
}

fn default_webhook_timeout() -> u64 {
    5
}

/// The webhook's body.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// `{"event": "approval.requested", "request": {...}, "url": ...}`.
    #[default]
    Json,
    /// `{"text": ..., "blocks": [...]}`: a Slack (or Mattermost, Rocket.Chat) incoming webhook.
    Slack,
}

/// `approvals.http`: the approvers' API and page.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address and port, e.g. `127.0.0.1:9188` (`0.0.0.0:9188` for approvers on other hosts:
    /// then set `cert` and `key`).
    pub listen: SocketAddr,
    /// PEM certificate chain: with `key`, the listener speaks HTTPS only.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// The address approvers open, for the webhook's links (default: from `listen`).
    pub public_url: Option<String>,
    /// The approvers' token hashes (`pgwarden approvers add`); default
    /// `<audit.state_dir>/approvers.json`.
    pub approvers_file: Option<PathBuf>,
    /// Trust an SSO proxy's identity header (off unless given).
    pub trusted_header: Option<TrustedHeader>,
    /// Accept OIDC ID tokens as bearer tokens (off unless given).
    pub oidc: Option<super::http::OidcConfig>,
}

impl HttpConfig {
    /// Whether the listener speaks TLS.
    pub fn tls(&self) -> bool {
        self.cert.is_some()
    }

    /// The approvers file, given the audit state directory.
    pub fn approvers_file(&self, state_dir: &Path) -> PathBuf {
        self.approvers_file
            .clone()
            .unwrap_or_else(|| super::approvers::default_file(state_dir))
    }

    /// The page's address for links: `public_url`, else the listen address.
    pub fn base_url(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!(
                "{}://{}",
                if self.tls() { "https" } else { "http" },
                self.listen
            ),
        }
    }

    /// Semantic checks: `(key under approvals.http, message)` of the first that fails.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.cert.is_some() != self.key.is_some() {
            return Err((
                "cert",
                "approvals.http: set both cert and key (HTTPS), or neither (plain HTTP)".into(),
            ));
        }
        if let Some(u) = &self.public_url
            && !(u.starts_with("https://") || u.starts_with("http://"))
        {
            return Err((
                "public_url",
                format!("approvals.http.public_url `{u}`: use an http:// or https:// URL"),
            ));
        }
        if let Some(o) = &self.oidc
            && (o.issuer.is_empty() || o.audience.is_empty())
        {
            return Err((
                "oidc",
                "approvals.http.oidc: issuer and audience must not be empty".into(),
            ));
        }
        if let Some(h) = &self.trusted_header {
            if h.from.is_empty() {
                return Err((
                    "trusted_header",
                    "approvals.http.trusted_header.from: name the proxy's addresses; a header \
                     anyone can send proves nothing"
                        .into(),
                ));
            }
            if hyper::header::HeaderName::from_bytes(h.user.as_bytes()).is_err()
                || h.groups
                    .as_ref()
                    .is_some_and(|g| hyper::header::HeaderName::from_bytes(g.as_bytes()).is_err())
            {
                return Err((
                    "trusted_header",
                    "approvals.http.trusted_header: user and groups must be HTTP header names"
                        .into(),
                ));
            }
        }
        Ok(())
    }
}

/// An SSO proxy (oauth2-proxy, Pomerium, an nginx `auth_request`) in front of the listener
/// that authenticates approvers and names them in a header.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedHeader {
    /// The header naming the approver, e.g. `X-Forwarded-User` (matched by `user:NAME`).
    pub user: String,
    /// The header listing their groups, comma-separated, e.g. `X-Forwarded-Groups`.
    pub groups: Option<String>,
    /// The proxy's addresses: the header counts only on connections from these.
    pub from: Vec<IpAddr>,
}
