//! A throwaway PostgreSQL 15 server per test: its own data directory under /tmp, run as the
//! `postgres` user on a free port, trust authentication, stopped and deleted on drop.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::unistd::{User, chown};
use tempfile::TempDir;

use crate::certs::self_signed_cert;
use crate::net::free_port;
use crate::process::{describe, dump_output, run_ok, run_output};

/// Where Debian's postgresql-15 and postgresql-client-15 put their programs.
const PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// The OS user and the database superuser the server runs as.
const PG_USER: &str = "postgres";

/// Path of a PostgreSQL 15 program (`initdb`, `pg_ctl`, `psql`, `pgbench`, ...).
///
/// # Panics
///
/// When the program is not installed.
#[track_caller]
pub fn pg_bin(name: &str) -> PathBuf {
    let path = Path::new(PG_BIN_DIR).join(name);
    assert!(
        path.is_file(),
        "{} is missing: PostgreSQL 15 is not installed. Run `cargo xtask setup` as root \
         (it installs postgresql-15 and postgresql-client-15).",
        path.display()
    );
    path
}

/// A running PostgreSQL server listening on 127.0.0.1 and [::1] at `port`, with its data
/// directory, log (`pg.log`) and Unix socket in `dir`. Superuser `postgres`, no password.
pub struct PgServer {
    pub port: u16,
    pub dir: TempDir,
    data: PathBuf,
}

impl PgServer {
    /// Creates a cluster with `initdb` and starts it, waiting until it accepts connections.
    ///
    /// # Panics
    ///
    /// When any step fails; the message includes the server log when there is one.
    #[track_caller]
    pub fn start() -> PgServer {
        Self::start_configured("", None)
    }

    /// As [`PgServer::start`], with `extra_conf` appended to postgresql.conf (after the
    /// harness's own settings, so it overrides them: e.g. `log_statement = 'all'`, or
    /// `unix_socket_directories = '{socket_dir},@name'` for an extra abstract socket; the
    /// text `{socket_dir}` is replaced by the server's socket directory) and, when `hba` is given,
    /// pg_hba.conf replaced by it, both before the first start. A server whose `hba` does not
    /// trust `local` connections cannot use [`PgServer::psql_socket`]; [`PgServer::psql_direct`]
    /// (TCP 127.0.0.1) works when `hba` trusts `host` connections from 127.0.0.1.
    ///
    /// # Panics
    ///
    /// As [`PgServer::start`].
    #[track_caller]
    pub fn start_configured(extra_conf: &str, hba: Option<&str>) -> PgServer {
        let user = User::from_name(PG_USER)
            .expect("cannot read the user database")
            .unwrap_or_else(|| {
                panic!(
                    "no `{PG_USER}` user: install postgresql-15 (`cargo xtask setup` as root) \
                     which creates it"
                )
            });
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-pg-")
            .tempdir_in("/tmp")
            .expect("cannot create a temp dir under /tmp");
        chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap_or_else(|err| {
            panic!("cannot chown {} to {PG_USER}: {err}", dir.path().display())
        });

        let data = dir.path().join("data");
        run_ok(
            as_postgres(dir.path(), "initdb")
                .args([
                    "-U",
                    PG_USER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "-D",
                ])
                .arg(&data),
        );

        let port = free_port();
        let conf = data.join("postgresql.conf");
        let mut file = OpenOptions::new()
            .append(true)
            .open(&conf)
            .unwrap_or_else(|err| panic!("cannot open {}: {err}", conf.display()));
        write!(
            file,
            "\n# added by the pgwarden e2e harness\n\
             listen_addresses = '127.0.0.1,::1'\n\
             port = {port}\n\
             max_connections = 300\n\
             unix_socket_directories = '{}'\n\
             fsync = off\n\
             log_connections = on\n",
            dir.path().display()
        )
        .unwrap_or_else(|err| panic!("cannot write {}: {err}", conf.display()));
        if !extra_conf.is_empty() {
            let extra_conf = extra_conf.replace("{socket_dir}", &dir.path().to_string_lossy());
            write!(
                file,
                "\n# added by PgServer::start_configured\n{extra_conf}\n"
            )
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", conf.display()));
        }
        drop(file);
        if let Some(hba) = hba {
            let path = data.join("pg_hba.conf");
            fs::write(&path, hba)
                .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
        }

        // From here on, dropping the server stops it.
        let server = PgServer { port, dir, data };
        let mut start = as_postgres(server.dir.path(), "pg_ctl");
        start
            .arg("-D")
            .arg(&server.data)
            .arg("-l")
            .arg(server.log_path())
            .args(["-w", "-t", "60", "start"]);
        let out = run_output(&mut start);
        assert!(
            out.status.success(),
            "PostgreSQL did not start: {}\nstatus: {}\n{}\n--- pg.log ---\n{}",
            describe(&start),
            out.status,
            dump_output(&out),
            server.log()
        );
        server
    }

    /// Connection URL for `host` (an IPv6 address is bracketed), user `postgres`, database
    /// `postgres`.
    pub fn url(&self, host: &str) -> String {
        url(host, self.port)
    }

    /// The server log so far (connections are logged).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_else(|err| format!("(no log: {err})"))
    }

    /// Creates the payments scenario's tables (`payments` with `rows` rows, each with the
    /// same Luhn-valid test card number, and an empty `customers`).
    ///
    /// # Panics
    ///
    /// When psql fails.
    #[track_caller]
    pub fn seed_payments(&self, rows: u32) {
        self.psql_direct(&format!(
            "CREATE TABLE payments(id bigint primary key, card_number text, cardholder text, amount numeric, merchant text, created_at timestamptz);
             CREATE TABLE customers(id bigint primary key, email text, name text);
             INSERT INTO payments SELECT i, '4111111111111111', 'h', i, 'm', now() FROM generate_series(1, {rows}) i;"
        ));
    }

    /// Runs `sql` with psql straight to the server over 127.0.0.1 (not through pgwarden) and
    /// returns the unaligned, tuples-only output, trimmed.
    ///
    /// # Panics
    ///
    /// When psql fails.
    #[track_caller]
    pub fn psql_direct(&self, sql: &str) -> String {
        run_ok(
            Command::new(pg_bin("psql"))
                .args(["-X", "-h", "127.0.0.1", "-p"])
                .arg(self.port.to_string())
                .args(["-U", PG_USER, "-d", "postgres", "-Atc", sql]),
        )
        .trim()
        .to_owned()
    }

    /// The directory holding the server's Unix socket (also its data directory and log).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's Unix socket: `<socket_dir>/.s.PGSQL.<port>`.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join(format!(".s.PGSQL.{}", self.port))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("pg.log")
    }
}

/// How TCP (`host`) connections to a [`PgServer::start_with`] server authenticate; connections
/// over its Unix socket stay `trust`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HbaAuth {
    /// No password.
    #[default]
    Trust,
    /// MD5 challenge (the password is stored as an MD5 hash).
    Md5,
    /// SCRAM-SHA-256 (offered with SCRAM-SHA-256-PLUS, channel binding, over TLS).
    ScramSha256,
}

impl HbaAuth {
    /// The pg_hba.conf method, which is also the `method=` PostgreSQL logs.
    pub fn method(self) -> &'static str {
        match self {
            HbaAuth::Trust => "trust",
            HbaAuth::Md5 => "md5",
            HbaAuth::ScramSha256 => "scram-sha-256",
        }
    }
}

/// What [`PgServer::start_with`] changes from [`PgServer::start`]'s trust-only, plain server.
#[derive(Clone, Debug, Default)]
pub struct PgOptions {
    /// Authentication of TCP connections.
    pub hba: HbaAuth,
    /// `ssl = on` with a self-signed certificate for [`PG_SERVER_NAME`] (see
    /// [`PgServer::server_cert`]).
    pub ssl: bool,
    /// The `postgres` user's password (hashed as `hba` wants; SCRAM for `trust`).
    pub password: Option<String>,
}

/// The name (CN and DNS subjectAltName) in the certificate of a server started with
/// `ssl: true`; its subjectAltName also lists 127.0.0.1 and ::1.
pub const PG_SERVER_NAME: &str = "pg.pgwarden.test";

impl PgServer {
    /// [`PgServer::start`], then: the password set over the Unix socket, the certificate made
    /// and `ssl = on`, pg_hba.conf rewritten for `options.hba` on 127.0.0.1/32 and ::1/128, and
    /// a restart.
    ///
    /// # Panics
    ///
    /// When any step fails; the message includes the server log when there is one.
    #[track_caller]
    pub fn start_with(options: &PgOptions) -> PgServer {
        let server = PgServer::start();
        let encryption = match options.hba {
            HbaAuth::Md5 => "md5",
            HbaAuth::Trust | HbaAuth::ScramSha256 => "scram-sha-256",
        };
        let mut conf = format!("password_encryption = '{encryption}'\n");
        if let Some(password) = &options.password {
            server.psql_socket(&format!(
                "set password_encryption = '{encryption}'; \
                 alter user {PG_USER} password '{}'",
                password.replace('\'', "''")
            ));
        }
        if options.ssl {
            let pair = self_signed_cert(&server.data, "server", PG_SERVER_NAME);
            let user = User::from_name(PG_USER)
                .ok()
                .flatten()
                .expect("the postgres user exists: the server runs as it");
            for file in [&pair.cert, &pair.key] {
                chown(file, Some(user.uid), Some(user.gid))
                    .unwrap_or_else(|err| panic!("cannot chown {}: {err}", file.display()));
            }
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        let conf_path = server.data.join("postgresql.conf");
        let mut file = OpenOptions::new()
            .append(true)
            .open(&conf_path)
            .unwrap_or_else(|err| panic!("cannot open {}: {err}", conf_path.display()));
        write!(file, "\n# added by PgServer::start_with\n{conf}")
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", conf_path.display()));
        drop(file);
        let method = options.hba.method();
        let hba = server.data.join("pg_hba.conf");
        fs::write(
            &hba,
            format!(
                "# written by PgServer::start_with\n\
                 local all all trust\n\
                 host all all 127.0.0.1/32 {method}\n\
                 host all all ::1/128 {method}\n"
            ),
        )
        .unwrap_or_else(|err| panic!("cannot write {}: {err}", hba.display()));

        let mut restart = as_postgres(server.dir.path(), "pg_ctl");
        restart
            .arg("-D")
            .arg(&server.data)
            .arg("-l")
            .arg(server.log_path())
            .args(["-w", "-t", "60", "restart"]);
        let out = run_output(&mut restart);
        assert!(
            out.status.success(),
            "PostgreSQL did not restart with {options:?}: {}\nstatus: {}\n{}\n--- pg.log ---\n{}",
            describe(&restart),
            out.status,
            dump_output(&out),
            server.log()
        );
        let ssl = server.psql_socket("show ssl");
        assert_eq!(ssl, if options.ssl { "on" } else { "off" }, "ssl setting");
        server
    }

    /// The server's certificate (self-signed, so also the CA to verify it with), when started
    /// with `ssl: true`.
    pub fn server_cert(&self) -> PathBuf {
        self.data.join("server.crt")
    }

    /// Runs `sql` with psql over the server's Unix socket (always `trust`, never through
    /// pgwarden) and returns the unaligned, tuples-only output, trimmed.
    ///
    /// # Panics
    ///
    /// When psql fails.
    #[track_caller]
    pub fn psql_socket(&self, sql: &str) -> String {
        self.psql_socket_env(sql, &[])
    }

    /// [`PgServer::psql_socket`] in a session whose statements are not logged (the
    /// `log_statement = none` startup option): for statements that carry a password.
    ///
    /// # Panics
    ///
    /// When psql fails.
    #[track_caller]
    pub fn psql_socket_unlogged(&self, sql: &str) -> String {
        self.psql_socket_env(sql, &[("PGOPTIONS", "-c log_statement=none")])
    }

    #[track_caller]
    fn psql_socket_env(&self, sql: &str, env: &[(&str, &str)]) -> String {
        run_ok(
            Command::new(pg_bin("psql"))
                .envs(env.iter().copied())
                .args(["-X", "-v", "ON_ERROR_STOP=1", "-h"])
                .arg(self.dir.path())
                .arg("-p")
                .arg(self.port.to_string())
                .args(["-U", PG_USER, "-d", "postgres", "-Atc", sql]),
        )
        .trim()
        .to_owned()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let mut stop = as_postgres(self.dir.path(), "pg_ctl");
        stop.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"]);
        match stop.output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: stopping PostgreSQL on port {} failed: {}\n{}",
                self.port,
                out.status,
                dump_output(&out)
            ),
            Err(err) => eprintln!("warning: cannot run pg_ctl stop: {err}"),
        }
    }
}

/// `runuser -u postgres -- <pg program>`, run from `cwd` (the caller's working directory may not
/// be readable by postgres).
fn as_postgres(cwd: &Path, program: &str) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", PG_USER, "--"])
        .arg(pg_bin(program))
        .current_dir(cwd);
    cmd
}

fn url(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("postgresql://{PG_USER}@[{host}]:{port}/postgres")
    } else {
        format!("postgresql://{PG_USER}@{host}:{port}/postgres")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_bracket_ipv6_hosts() {
        assert_eq!(
            url("127.0.0.1", 5433),
            "postgresql://postgres@127.0.0.1:5433/postgres"
        );
        assert_eq!(
            url("::1", 5433),
            "postgresql://postgres@[::1]:5433/postgres"
        );
        assert_eq!(
            url("[::1]", 5433),
            "postgresql://postgres@[::1]:5433/postgres"
        );
        assert_eq!(
            url("localhost", 1),
            "postgresql://postgres@localhost:1/postgres"
        );
    }
}
