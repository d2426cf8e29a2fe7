//! A real rsyslog (Debian's `rsyslog` and `rsyslog-openssl`, which `cargo xtask setup`
//! installs) on loopback, for the audit forwarder's tests: one plain TCP input and one TLS
//! input (RFC 5425, openssl driver), each writing what it receives, parsed back into RFC 5424
//! by rsyslog's own `RSYSLOG_SyslogProtocol23Format`, to its own file.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::certs::{CertPair, self_signed_cert};
use crate::net::free_port;
use crate::wait::wait_for;

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

/// A running `rsyslogd -n`, stopped on drop.
pub struct Rsyslog {
    child: Child,
    dir: TempDir,
    /// The plain TCP input's port.
    pub tcp_port: u16,
    /// The TLS input's port.
    pub tls_port: u16,
    /// The certificate the TLS input presents (CN and SAN `localhost`, 127.0.0.1): a client
    /// trusts it as its CA.
    pub cert: CertPair,
}

impl Rsyslog {
    /// Starts rsyslog and waits until both inputs accept connections.
    ///
    /// # Panics
    ///
    /// When rsyslog (or its openssl driver) is not installed, or does not start.
    #[track_caller]
    #[must_use]
    pub fn start() -> Rsyslog {
        assert!(
            Path::new(RSYSLOGD).exists()
                && Path::new("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_ossl.so").exists(),
            "\n********************************************************************\n\
             rsyslog is not installed (Debian packages rsyslog and rsyslog-openssl;\n\
             `cargo xtask setup` installs them): the forwarding tests need a real one.\n\
             Refusing to pass.\n\
             ********************************************************************\n"
        );
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-rsyslog-")
            .tempdir_in("/tmp")
            .unwrap();
        let cert = self_signed_cert(dir.path(), "rsyslog", "localhost");
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        let (tcp_port, tls_port) = (free_port(), free_port());
        let d = dir.path().display();
        let conf = format!(
            "global(workDirectory=\"{work}\" maxMessageSize=\"256k\"\n\
             \x20 DefaultNetstreamDriverCAFile=\"{crt}\" DefaultNetstreamDriverCertFile=\"{crt}\"\n\
             \x20 DefaultNetstreamDriverKeyFile=\"{key}\")\n\
             module(load=\"imtcp\" MaxSessions=\"20\")\n\
             input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{tcp_port}\" ruleset=\"tcp\")\n\
             input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{tls_port}\" ruleset=\"tls\"\n\
             \x20 StreamDriver.Name=\"ossl\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"anon\")\n\
             ruleset(name=\"tcp\") {{ action(type=\"omfile\" file=\"{d}/tcp.log\" template=\"RSYSLOG_SyslogProtocol23Format\") }}\n\
             ruleset(name=\"tls\") {{ action(type=\"omfile\" file=\"{d}/tls.log\" template=\"RSYSLOG_SyslogProtocol23Format\") }}\n",
            work = work.display(),
            crt = cert.cert.display(),
            key = cert.key.display(),
        );
        let conf_path = dir.path().join("rsyslog.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = std::fs::File::create(dir.path().join("rsyslogd.log")).unwrap();
        let child = Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(&conf_path)
            .arg("-i")
            .arg(dir.path().join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {RSYSLOGD}: {e}"));
        let r = Rsyslog {
            child,
            dir,
            tcp_port,
            tls_port,
            cert,
        };
        for port in [tcp_port, tls_port] {
            wait_for("rsyslog listening", Duration::from_secs(10), || {
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .map(drop)
                    .map_err(|e| format!("{e}; rsyslogd log: {}", r.log()))
            });
        }
        r
    }

    /// What the `tcp` or `tls` input wrote so far.
    #[must_use]
    pub fn received(&self, input: &str) -> String {
        std::fs::read_to_string(self.file(input)).unwrap_or_default()
    }

    /// The file the `tcp` or `tls` input writes.
    #[must_use]
    pub fn file(&self, input: &str) -> PathBuf {
        self.dir.path().join(format!("{input}.log"))
    }

    /// rsyslogd's own output.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rsyslogd.log")).unwrap_or_default()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
