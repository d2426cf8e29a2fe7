//! The `approvals:` section of the config: where held statements are announced.
use serde::Deserialize;

/// Where held statements are announced.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// URL (http:// or https://) that receives a JSON POST for every held statement.
    pub webhook: Option<String>,
    /// Seconds per webhook attempt (three attempts, 1 s and 2 s apart).
    #[serde(default = "default_webhook_timeout")]
    pub webhook_timeout_seconds: u64,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            webhook: None,
            webhook_timeout_seconds: default_webhook_timeout(),
        }
    }
}

fn default_webhook_timeout() -> u64 {
    5
}
