//! Authentication and TLS through the redirect: psql in a tagged cgroup, pointed at
//! PostgreSQL's real address, for each server authentication (trust, md5, scram-sha-256), each
//! client `sslmode` (disable, prefer, require), and each way pgwarden reaches the server
//! (plain: `upstream.sslmode` prefer and disable against a server without TLS; TLS: require,
//! and verify-full against the server's own certificate). Each cell checks that `select 1`
//! works, that the server sees TLS exactly when the upstream hop is TLS (`pg_stat_ssl`), and
//! that psql sees TLS exactly when pgwarden terminated it (`\conninfo`); a client that
//! requires TLS from an agent without `tls:` is refused the way PostgreSQL refuses it.
use std::fmt::Write as _;
use std::path::Path;
use std::process::Output;

use pgwarden_e2e::{
    Agent, CertPair, HbaAuth, PG_SERVER_NAME, PgOptions, PgServer, TestCgroup, agent_config,
    allow_all_workload, in_cgroup, pg_bin, require_root, run_output, self_signed_cert, unique_name,
};

/// The `postgres` user's password on every server of this file.
const PASSWORD: &str = "secret";

/// What psql is expected to do in one cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Connects and runs the queries; psql's hop is TLS when `client_tls`, the server's when
    /// `server_tls`.
    Ok { client_tls: bool, server_tls: bool },
    /// Fails, saying this.
    Fails(&'static str),
}

/// One agent configuration of the matrix.
struct AgentSetup {
    /// For reports.
    name: &'static str,
    /// Whether the config has `tls:` (pgwarden terminates clients' TLS).
    client_tls: bool,
    /// The `upstream:` section.
    upstream: String,
    /// Whether the upstream hop ends up TLS.
    server_tls: bool,
}

/// A PostgreSQL server, the tagged cgroup, and the agent certificate shared by its cells.
struct Bench {
    pg: PgServer,
    cg: TestCgroup,
    agent_cert: CertPair,
    control_dir: tempfile::TempDir,
    auth: HbaAuth,
}

impl Bench {
    fn start(auth: HbaAuth, ssl: bool) -> Bench {
        require_root();
        let pg = PgServer::start_with(&PgOptions {
            hba: auth,
            ssl,
            password: Some(PASSWORD.to_owned()),
        });
        let control_dir = tempfile::tempdir().expect("temp dir");
        let agent_cert = self_signed_cert(control_dir.path(), "agent", "pgwarden.test");
        Bench {
            pg,
            cg: TestCgroup::create(&unique_name("pgw-e2e-auth")),
            agent_cert,
            control_dir,
            auth,
        }
    }

    /// An agent tagging the bench's cgroup (allow-all policy), with `tls:` when `client_tls`,
    /// and this `upstream:` section.
    fn agent(&self, client_tls: bool, upstream: &str) -> Agent {
        let control = self
            .control_dir
            .path()
            .join(format!("{}.sock", unique_name("control")));
        let mut extra = format!("upstream:\n{upstream}");
        if client_tls {
            let _ = write!(
                extra,
                "tls:\n  cert: {}\n  key: {}\n",
                self.agent_cert.cert.display(),
                self.agent_cert.key.display()
            );
        }
        let workloads = allow_all_workload("e2e-auth", &self.cg);
        Agent::start(
            &agent_config(self.pg.port, &control, &workloads, &extra),
            &control,
        )
    }

    /// psql in the tagged cgroup to PostgreSQL's real address with `sslmode` and `extra`
    /// conninfo, running `select 1`, the server's view of TLS, and `\conninfo`.
    fn psql(&self, sslmode: &str, extra: &str, password: &str) -> Output {
        let conninfo = format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=10 \
             sslmode={sslmode} {extra}",
            self.pg.port
        );
        let psql = pg_bin("psql");
        run_output(
            in_cgroup(&self.cg.path, &psql.to_string_lossy())
                .args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-d", &conninfo])
                .args(["-c", "select 1"])
                .args([
                    "-c",
                    "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
                ])
                .args(["-c", r"\conninfo"])
                .env("PGPASSWORD", password)
                .env_remove("PGSSLMODE")
                .env_remove("PGCHANNELBINDING"),
        )
    }

    /// Runs every client sslmode against `setup` and appends mismatches to `failures`.
    fn cells(&self, setup: &AgentSetup, failures: &mut Vec<String>) {
        let agent = self.agent(setup.client_tls, &setup.upstream);
        for sslmode in ["disable", "prefer", "require"] {
            let scram_over_two_tls_hops = self.auth == HbaAuth::ScramSha256
                && setup.server_tls
                && setup.client_tls
                && sslmode != "disable";
            let expect = if sslmode == "require" && !setup.client_tls {
                Expect::Fails("server does not support SSL")
            } else if scram_over_two_tls_hops && sslmode == "require" {
                // libpq over TLS, offered SCRAM without -PLUS (pgwarden stripped it), says
                // "y": it supports channel binding but thinks the server does not. The server
                // runs TLS itself, so it takes that for a downgrade attack and refuses; the
                // flag is covered by the client's proof, so pgwarden cannot rewrite it. Such
                // clients need channel_binding=disable (checked below).
                Expect::Fails("SCRAM channel binding negotiation error")
            } else if scram_over_two_tls_hops {
                // sslmode=prefer: libpq retries without TLS after that refusal, and gets in.
                Expect::Ok {
                    client_tls: false,
                    server_tls: true,
                }
            } else {
                Expect::Ok {
                    client_tls: setup.client_tls && sslmode != "disable",
                    server_tls: setup.server_tls,
                }
            };
            let what = format!(
                "auth {} / agent {} / client sslmode={sslmode}",
                self.auth.method(),
                setup.name
            );
            check(
                &what,
                &self.psql(sslmode, "", PASSWORD),
                expect,
                &agent,
                failures,
            );
        }
        // The password is really checked on the way through.
        if self.auth != HbaAuth::Trust {
            let what = format!(
                "auth {} / agent {} / wrong password",
                self.auth.method(),
                setup.name
            );
            let out = self.psql("disable", "", "wrong");
            check(
                &what,
                &out,
                Expect::Fails("password authentication failed"),
                &agent,
                failures,
            );
        }
    }

    /// The server authenticated a connection with the bench's method (PostgreSQL 15 logs
    /// `method=...` for every authenticated connection; trust logs none).
    fn assert_method_logged(&self) {
        if self.auth == HbaAuth::Trust {
            return;
        }
        let wanted = format!("method={}", self.auth.method());
        assert!(
            self.pg.log().contains(&wanted),
            "the server never logged {wanted}:\n{}",
            self.pg.log()
        );
    }
}

/// Compares what psql did with `expect`; a mismatch goes to `failures` with psql's output and
/// the agent log.
fn check(what: &str, out: &Output, expect: Expect, agent: &Agent, failures: &mut Vec<String>) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ok = match expect {
        Expect::Ok {
            client_tls,
            server_tls,
        } => {
            let lines: Vec<&str> = stdout.lines().collect();
            out.status.success()
                && lines.first() == Some(&"1")
                && lines.get(1) == Some(&if server_tls { "t" } else { "f" })
                && stdout.contains("SSL connection (") == client_tls
        }
        Expect::Fails(text) => !out.status.success() && stderr.contains(text),
    };
    if !ok {
        failures.push(format!(
            "{what}: expected {expect:?}, psql exited {}\n  stdout: {}\n  stderr: {}\n  \
             agent log (warnings):\n{}",
            out.status,
            stdout.trim(),
            stderr.trim(),
            warnings(agent)
        ));
    }
}

/// The agent log's WARN and ERROR lines, indented.
fn warnings(agent: &Agent) -> String {
    agent
        .log()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(|l| format!("    {l}\n"))
        .collect()
}

#[track_caller]
fn assert_no_failures(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} cell(s) of the matrix failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// The agent configurations for a server without TLS: pgwarden tries TLS and falls back
/// (`prefer`, with `tls:` for clients), or never tries (`disable`, no `tls:`).
fn plain_setups() -> Vec<AgentSetup> {
    vec![
        AgentSetup {
            name: "tls: + upstream prefer",
            client_tls: true,
            upstream: "  sslmode: prefer\n".into(),
            server_tls: false,
        },
        AgentSetup {
            name: "no tls: + upstream disable",
            client_tls: false,
            upstream: "  sslmode: disable\n".into(),
            server_tls: false,
        },
    ]
}

/// The agent configurations for a server with TLS: `require` (with `tls:` for clients), and
/// `verify-full` against the server's self-signed certificate and name (no `tls:`).
fn tls_setups(pg: &PgServer) -> Vec<AgentSetup> {
    vec![
        AgentSetup {
            name: "tls: + upstream require",
            client_tls: true,
            upstream: "  sslmode: require\n".into(),
            server_tls: true,
        },
        AgentSetup {
            name: "no tls: + upstream verify-full",
            client_tls: false,
            upstream: verify_full(&pg.server_cert(), PG_SERVER_NAME),
            server_tls: true,
        },
    ]
}

fn verify_full(ca: &Path, server_name: &str) -> String {
    format!(
        "  sslmode: verify-full\n  ca: {}\n  server_name: {server_name}\n",
        ca.display()
    )
}

/// The whole matrix for one authentication method: a plain server, then a TLS one.
fn matrix(auth: HbaAuth, failures: &mut Vec<String>) -> (Bench, Bench) {
    let plain = Bench::start(auth, false);
    for setup in plain_setups() {
        plain.cells(&setup, failures);
    }
    plain.assert_method_logged();
    let tls = Bench::start(auth, true);
    for setup in tls_setups(&tls.pg) {
        tls.cells(&setup, failures);
    }
    tls.assert_method_logged();
    (plain, tls)
}

#[test]
fn trust_through_every_tls_combination() {
    let mut failures = Vec::new();
    let (plain, tls) = matrix(HbaAuth::Trust, &mut failures);

    // pgwarden refuses to go on where its upstream settings cannot be met, and says why.
    let agent = plain.agent(false, "  sslmode: require\n");
    check(
        "upstream require against a server without TLS",
        &plain.psql("disable", "", PASSWORD),
        Expect::Fails("does not accept TLS and upstream.sslmode requires it"),
        &agent,
        &mut failures,
    );
    drop(agent);
    let agent = tls.agent(
        false,
        &verify_full(&tls.pg.server_cert(), "other.pgwarden.test"),
    );
    check(
        "upstream verify-full with a name the certificate does not hold",
        &tls.psql("disable", "", PASSWORD),
        Expect::Fails("invalid peer certificate: certificate not valid for name"),
        &agent,
        &mut failures,
    );
    drop(agent);
    let agent = tls.agent(false, &verify_full(&plain.agent_cert.cert, PG_SERVER_NAME));
    check(
        "upstream verify-full with a CA that did not sign the server's certificate",
        &tls.psql("disable", "", PASSWORD),
        Expect::Fails("invalid peer certificate: UnknownIssuer"),
        &agent,
        &mut failures,
    );
    drop(agent);
    assert_no_failures(&failures);
}

#[test]
fn md5_through_every_tls_combination() {
    let mut failures = Vec::new();
    matrix(HbaAuth::Md5, &mut failures);
    assert_no_failures(&failures);
}

#[test]
fn scram_through_every_tls_combination_and_channel_binding() {
    let mut failures = Vec::new();
    let (_plain, tls) = matrix(HbaAuth::ScramSha256, &mut failures);

    // Over TLS the server offers SCRAM-SHA-256-PLUS; pgwarden's TLS hops are not the server's,
    // so it strips the offer: a plain client that prefers channel binding goes without, one
    // that requires it is refused by its own libpq, and a TLS client gets in with channel
    // binding disabled (with it enabled, see `Bench::cells`).
    let agent = tls.agent(true, "  sslmode: require\n");
    for (sslmode, binding, expect) in [
        (
            "disable",
            "prefer",
            Expect::Ok {
                client_tls: false,
                server_tls: true,
            },
        ),
        ("disable", "require", Expect::Fails("channel binding")),
        ("require", "require", Expect::Fails("channel binding")),
        (
            "require",
            "disable",
            Expect::Ok {
                client_tls: true,
                server_tls: true,
            },
        ),
    ] {
        check(
            &format!("scram-sha-256-plus offered / sslmode={sslmode} channel_binding={binding}"),
            &tls.psql(sslmode, &format!("channel_binding={binding}"), PASSWORD),
            expect,
            &agent,
            &mut failures,
        );
    }
    assert_no_failures(&failures);
}
