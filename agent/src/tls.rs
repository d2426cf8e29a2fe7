//! TLS on both hops: terminating clients that ask for it (rustls server), and connecting to
//! the real server per `upstream.sslmode` (rustls client).
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, InvalidDnsNameError, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use serde::Deserialize;

/// Certificate and key pgwarden presents to clients that ask for TLS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// TLS toward the real server, as libpq's `sslmode` means it.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never.
    Disable,
    /// When the server offers it, without verifying the certificate.
    #[default]
    Prefer,
    /// Always, without verifying the certificate.
    Require,
    /// Always, verifying the certificate chain against `ca` and the server's name or address.
    VerifyFull,
}

/// The connection to the real server.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// TLS mode.
    #[serde(default)]
    pub sslmode: SslMode,
    /// PEM CA certificates for `verify-full`.
    pub ca: Option<PathBuf>,
    /// Name to verify the server's certificate against (default: its address).
    pub server_name: Option<String>,
    /// Seconds to wait for the TCP connect.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_seconds: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            sslmode: SslMode::default(),
            ca: None,
            server_name: None,
            connect_timeout_seconds: default_connect_timeout(),
        }
    }
}

fn default_connect_timeout() -> u64 {
    10
}

/// Why a TLS side could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("reading {}", .0.display())]
    Read(PathBuf, #[source] io::Error),
    /// A certificate file that is not PEM.
    #[error("{}: not PEM certificates", .0.display())]
    NotPemCerts(PathBuf, #[source] io::Error),
    /// A PEM file without a certificate.
    #[error("{}: no certificate found", .0.display())]
    NoCert(PathBuf),
    /// A key file that is not PEM.
    #[error("{}: not a PEM private key", .0.display())]
    NotPemKey(PathBuf, #[source] io::Error),
    /// A PEM file without a private key.
    #[error("{}: no private key found", .0.display())]
    NoKey(PathBuf),
    /// The certificate and key do not go together (or are unusable).
    #[error("client TLS certificate and key")]
    CertAndKey(#[source] rustls::Error),
    /// `verify-full` without `upstream.ca` (the config refuses it first).
    #[error("upstream.ca is required for verify-full")]
    NoCa,
    /// A CA certificate rustls refuses.
    #[error("{}: bad CA certificate", .0.display())]
    BadCa(PathBuf, #[source] rustls::Error),
    /// `upstream.server_name` is no DNS name or address.
    #[error("bad upstream.server_name {0}")]
    ServerName(String, #[source] InvalidDnsNameError),
    /// rustls refused the protocol versions.
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider of every TLS side of pgwarden: ring.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read(path.to_owned(), e))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::NotPemCerts(path.to_owned(), e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(path.to_owned()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| TlsError::NotPemKey(path.to_owned(), e))?
        .ok_or_else(|| TlsError::NoKey(path.to_owned()))
}

/// The acceptor for clients' TLS, from the configured certificate and key.
pub fn acceptor(cfg: &ClientTlsConfig) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs(&cfg.cert)?, key(&cfg.key)?)
        .map_err(TlsError::CertAndKey)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The connector toward the server, or `None` for `sslmode: disable`.
pub fn connector(cfg: &UpstreamConfig) -> Result<Option<tokio_rustls::TlsConnector>, TlsError> {
    upstream_connector(cfg, None)
}

/// The connector toward the server presenting the client certificate `cert` with `key`
/// (`upstream_auth` with `cert`; the config allows it only with sslmode require or
/// verify-full).
pub fn client_cert_connector(
    cfg: &UpstreamConfig,
    cert: &Path,
    key_file: &Path,
) -> Result<tokio_rustls::TlsConnector, TlsError> {
    upstream_connector(cfg, Some((cert, key_file)))?.ok_or(TlsError::NoCa)
}

fn upstream_connector(
    cfg: &UpstreamConfig,
    client: Option<(&Path, &Path)>,
) -> Result<Option<tokio_rustls::TlsConnector>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let verified = match cfg.sslmode {
        SslMode::Disable => return Ok(None),
        // libpq's prefer and require encrypt without verifying the certificate.
        SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider()))),
        SslMode::VerifyFull => {
            let mut roots = rustls::RootCertStore::empty();
            let ca = cfg.ca.as_deref().ok_or(TlsError::NoCa)?;
            for c in certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| TlsError::BadCa(ca.to_owned(), e))?;
            }
            builder.with_root_certificates(roots)
        }
    };
    let config = match client {
        Some((cert, key_file)) => verified.with_client_auth_cert(certs(cert)?, key(key_file)?)?,
        None => verified.with_no_client_auth(),
    };
    Ok(Some(tokio_rustls::TlsConnector::from(Arc::new(config))))
}

/// A client configuration toward an audit collector: its certificate must chain to `ca`;
/// `client` is the certificate and key to present, for collectors that authenticate senders.
pub fn collector_config(
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca)? {
        roots
            .add(c)
            .map_err(|e| TlsError::BadCa(ca.to_owned(), e))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match client {
        Some((cert, key_file)) => builder.with_client_auth_cert(certs(cert)?, key(key_file)?)?,
        None => builder.with_no_client_auth(),
    })
}

/// The name to verify the server against: the configured one, else its address.
pub fn server_name(
    cfg: &UpstreamConfig,
    addr: std::net::IpAddr,
) -> Result<ServerName<'static>, TlsError> {
    match &cfg.server_name {
        Some(n) => ServerName::try_from(n.clone()).map_err(|e| TlsError::ServerName(n.clone(), e)),
        None => Ok(ServerName::IpAddress(addr.into())),
    }
}

/// Accepts any server certificate while still checking handshake signatures: `sslmode`
/// prefer/require, which encrypt but do not authenticate the server.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let missing = dir.path().join("missing.pem");
        let cfg = |cert: &Path, key: &Path| ClientTlsConfig {
            cert: cert.to_owned(),
            key: key.to_owned(),
        };
        let e = acceptor(&cfg(&missing, &empty)).err().unwrap();
        assert!(matches!(e, TlsError::Read(..)), "{e:?}");
        assert_eq!(e.to_string(), format!("reading {}", missing.display()));
        let e = acceptor(&cfg(&empty, &empty)).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!("{}: no certificate found", empty.display())
        );
        let upstream = UpstreamConfig {
            sslmode: SslMode::VerifyFull,
            ca: None,
            server_name: Some("not a name".into()),
            connect_timeout_seconds: 1,
        };
        assert!(matches!(connector(&upstream), Err(TlsError::NoCa)));
        let e = server_name(&upstream, [127, 0, 0, 1].into()).unwrap_err();
        assert_eq!(e.to_string(), "bad upstream.server_name not a name");
    }
}
