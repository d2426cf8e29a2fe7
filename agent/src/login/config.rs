//! A workload's `upstream_auth:` section: the role pgwarden logs in as, where its secret lives,
//! which servers may ever see it, and which authentication methods may carry it.
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::dest::Destination;
use crate::tls::SslMode;

/// `upstream_auth:` on a workload.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamAuthConfig {
    /// The role pgwarden logs in as.
    pub user: String,
    /// The file holding the role's password (one line; a trailing newline is dropped). A
    /// path starting `$CREDENTIALS_DIRECTORY/` is under systemd's credentials directory of
    /// the agent's unit (`LoadCredential=`).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// A client certificate (PEM) pgwarden presents on its TLS hop for `cert` logins (and
    /// `clientcert=verify-full`), with `key`. Its CN is the role, for PostgreSQL.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The certificate's private key (PEM), with `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// A second factor for the client, besides the kernel's identity: the workload's local
    /// token, which its client sends as its password (pgwarden asks for it on the local hop).
    /// It opens nothing but this workload's pgwarden sessions on this host; absent: the
    /// tagged cgroup alone is the credential.
    #[serde(default)]
    pub client_token_file: Option<PathBuf>,
    /// What happens to the user the client asks for.
    #[serde(default)]
    pub user_policy: UserPolicy,
    /// The only servers the secret is used for: `ADDRESS:PORT`, `CIDR:PORT`, `HOST:PORT`
    /// (resolved at load) or an absolute Unix socket path. A connection of the workload to any
    /// other destination is refused before the secret is read: the workload chooses where it
    /// connects, and a server of its own would otherwise be handed a login.
    pub servers: Vec<String>,
    /// Methods the secret may be sent with. Default: SCRAM-SHA-256 only, which never shows the
    /// server the password or a replayable hash. `md5` and `password` need
    /// `upstream.sslmode: verify-full`.
    #[serde(default = "default_methods")]
    pub methods: Vec<Method>,
    /// SCRAM channel binding on pgwarden's TLS hop (SCRAM-SHA-256-PLUS, `tls-server-end-point`):
    /// `prefer` (the default) binds whenever the hop is TLS and the server offers it, `require`
    /// refuses a login that cannot bind, `disable` never binds.
    #[serde(default)]
    pub channel_binding: ChannelBindingMode,
}

/// `upstream_auth.channel_binding`, as libpq names its modes.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChannelBindingMode {
    /// Bind when the hop is TLS and the server offers SCRAM-SHA-256-PLUS.
    #[default]
    Prefer,
    /// Only a bound SCRAM login (which needs a TLS hop); anything else is refused.
    Require,
    /// Never bind.
    Disable,
}

/// The user of a workload's sessions.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UserPolicy {
    /// The configured role, whatever the client asked for (what it asked is recorded).
    #[default]
    Force,
    /// The client must ask for the configured role; any other user is refused.
    MustMatch,
}

/// An authentication method pgwarden answers for a workload.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, serde::Serialize)]
pub enum Method {
    /// SCRAM-SHA-256 (RFC 7677), bound to the TLS hop when it can be (see `channel_binding`).
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// MD5 challenge: a server that relays its challenge gets a reusable login.
    #[serde(rename = "md5")]
    Md5,
    /// The password in clear.
    #[serde(rename = "password")]
    Password,
}

impl Method {
    /// As pg_hba.conf names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ScramSha256 => "scram-sha-256",
            Self::Md5 => "md5",
            Self::Password => "password",
        }
    }
}

fn default_methods() -> Vec<Method> {
    vec![Method::ScramSha256]
}

/// Where a workload's secret may be used.
#[derive(Clone, Debug, Default)]
pub struct Servers {
    /// TCP destinations.
    pub tcp: Vec<Destination>,
    /// Unix socket paths.
    pub unix: Vec<String>,
}

impl UpstreamAuthConfig {
    /// Checks the section; `Err((key, message))` names the key at fault. `sslmode` is
    /// `upstream.sslmode`.
    pub fn check(&self, sslmode: SslMode) -> Result<Servers, (&'static str, String)> {
        let verify_full = sslmode == SslMode::VerifyFull;
        if self.user.is_empty() || self.user.contains('\0') {
            return Err(("user", "upstream_auth.user: a role name".to_owned()));
        }
        for (key, path) in [
            ("password_file", &self.password_file),
            ("cert", &self.cert),
            ("key", &self.key),
            ("client_token_file", &self.client_token_file),
        ] {
            let Some(path) = path else { continue };
            let file = path.to_string_lossy();
            if !(file.starts_with('/') || file.starts_with("$CREDENTIALS_DIRECTORY/")) {
                return Err((
                    key,
                    format!(
                        "upstream_auth.{key} `{file}`: an absolute path, or \
                         $CREDENTIALS_DIRECTORY/NAME for a systemd credential"
                    ),
                ));
            }
        }
        match (&self.password_file, &self.cert, &self.key) {
            (None, None, None) => {
                return Err((
                    "password_file",
                    "upstream_auth: password_file, or cert and key, say how pgwarden logs in"
                        .to_owned(),
                ));
            }
            (_, Some(_), None) | (_, None, Some(_)) => {
                return Err(("cert", "upstream_auth: cert and key go together".to_owned()));
            }
            (_, Some(_), Some(_)) if !matches!(sslmode, SslMode::Require | SslMode::VerifyFull) => {
                return Err((
                    "cert",
                    "upstream_auth.cert: a certificate is presented on pgwarden's TLS hop; \
                     upstream.sslmode must be require or verify-full"
                        .to_owned(),
                ));
            }
            _ => {}
        }
        if self.methods.is_empty() {
            return Err((
                "methods",
                "upstream_auth.methods: at least one of scram-sha-256, md5, password".to_owned(),
            ));
        }
        if !verify_full && let Some(weak) = self.methods.iter().find(|m| **m != Method::ScramSha256)
        {
            return Err((
                "methods",
                format!(
                    "upstream_auth.methods: {} hands the server the password or a replayable \
                     hash; it is allowed only with upstream.sslmode verify-full, where the \
                     server's certificate proves who it is",
                    weak.as_str()
                ),
            ));
        }
        if self.channel_binding == ChannelBindingMode::Require
            && (sslmode == SslMode::Disable || !self.methods.contains(&Method::ScramSha256))
        {
            return Err((
                "channel_binding",
                "upstream_auth.channel_binding: require needs SCRAM over TLS (upstream.sslmode \
                 prefer, require or verify-full, and scram-sha-256 in methods)"
                    .to_owned(),
            ));
        }
        if self.servers.is_empty() {
            return Err((
                "servers",
                "upstream_auth.servers: the servers this role's secret is for (ADDRESS:PORT, \
                 CIDR:PORT, HOST:PORT or a socket path)"
                    .to_owned(),
            ));
        }
        let mut servers = Servers::default();
        for s in &self.servers {
            if s.starts_with('/') {
                let name = Path::new(s).file_name().map(|n| n.to_string_lossy());
                if !name.is_some_and(|n| n.starts_with(".s.PGSQL.")) {
                    return Err((
                        "servers",
                        format!("upstream_auth.servers `{s}`: a socket path ends in .s.PGSQL.PORT"),
                    ));
                }
                servers.unix.push(s.clone());
                continue;
            }
            let d = Destination::parse(s)
                .map_err(|e| ("servers", format!("upstream_auth.servers: {e}")))?;
            if d.is_wildcard() {
                return Err((
                    "servers",
                    format!(
                        "upstream_auth.servers `{s}`: name the database's addresses; any \
                         address would hand the secret to a server the workload runs itself"
                    ),
                ));
            }
            servers.tcp.push(d);
        }
        Ok(servers)
    }

    /// A configured file's path, with `$CREDENTIALS_DIRECTORY` taken from the environment.
    pub fn resolve(path: &Path) -> Result<PathBuf, String> {
        let text = path.to_string_lossy();
        let Some(rest) = text.strip_prefix("$CREDENTIALS_DIRECTORY/") else {
            return Ok(path.to_owned());
        };
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
            format!(
                "{text}: CREDENTIALS_DIRECTORY is not set (the unit needs LoadCredential= or \
                 SetCredential=)"
            )
        })?;
        Ok(Path::new(&dir).join(rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(yaml: &str) -> UpstreamAuthConfig {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_are_scram_only_and_force() {
        let a = section("user: app\npassword_file: /run/k\nservers: [\"127.0.0.1:5432\"]\n");
        assert_eq!(a.methods, [Method::ScramSha256]);
        assert_eq!(a.user_policy, UserPolicy::Force);
        let s = a.check(SslMode::Prefer).unwrap();
        assert_eq!(s.tcp.len(), 1);
        assert!(s.unix.is_empty());
    }

    #[test]
    fn refuses_what_would_leak_the_secret() {
        let base = "user: app\npassword_file: /run/k\n";
        let refused = [
            ("servers: []\n", "servers"),
            ("servers: [\"*:5432\"]\n", "servers"),
            ("servers: [\"/tmp/sock\"]\n", "servers"),
            ("servers: [\"1.2.3.4:5432\"]\nmethods: [md5]\n", "methods"),
            (
                "servers: [\"1.2.3.4:5432\"]\nmethods: [scram-sha-256, password]\n",
                "methods",
            ),
            ("servers: [\"1.2.3.4:5432\"]\nmethods: []\n", "methods"),
        ];
        for (rest, key) in refused {
            let a = section(&format!("{base}{rest}"));
            assert_eq!(a.check(SslMode::Prefer).unwrap_err().0, key, "{rest}");
        }
        let md5 = section(&format!(
            "{base}servers: [\"1.2.3.4:5432\"]\nmethods: [md5]\n"
        ));
        assert!(md5.check(SslMode::VerifyFull).is_ok());
        let rel = section("user: app\npassword_file: k\nservers: [\"1.2.3.4:5432\"]\n");
        assert_eq!(rel.check(SslMode::Prefer).unwrap_err().0, "password_file");
        let sock = section(&format!(
            "{base}servers: [\"/var/run/postgresql/.s.PGSQL.5432\"]\n"
        ));
        assert_eq!(sock.check(SslMode::Prefer).unwrap().unix.len(), 1);
        let servers = "servers: [\"1.2.3.4:5432\"]\n";
        let none = section(&format!("user: app\n{servers}"));
        assert_eq!(none.check(SslMode::Prefer).unwrap_err().0, "password_file");
        let half = section(&format!("user: app\ncert: /c.pem\n{servers}"));
        assert_eq!(half.check(SslMode::Require).unwrap_err().0, "cert");
        let cert = section(&format!("user: app\ncert: /c.pem\nkey: /k.pem\n{servers}"));
        assert_eq!(cert.check(SslMode::Prefer).unwrap_err().0, "cert");
        assert!(cert.check(SslMode::Require).is_ok());
        assert_eq!(
            section(&format!("{base}{servers}")).channel_binding,
            ChannelBindingMode::Prefer
        );
        let bound = section(&format!(
            "{base}{servers}channel_binding: require
"
        ));
        assert_eq!(
            bound.check(SslMode::Disable).unwrap_err().0,
            "channel_binding"
        );
        assert!(bound.check(SslMode::Require).is_ok());
        assert!(
            serde_yaml_ng::from_str::<UpstreamAuthConfig>(&format!(
                "{base}servers: [\"1.2.3.4:5432\"]\nmethods: [trust]\n"
            ))
            .is_err()
        );
    }
}
