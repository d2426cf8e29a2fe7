//! `upstream_auth`: the tagged workload holds no database password, pgwarden logs in for it.
//!
//! PostgreSQL asks `scram-sha-256` of every role but `postgres` on TCP and on its Unix socket.
//! A tagged psql with no password, and one with a wrong one, gets in as the mapped role
//! (`current_user`, and PostgreSQL's own log says SCRAM authenticated it); an untagged psql
//! without a password is refused by PostgreSQL. The secret file is rotated with the role's
//! password. The MCP server, started with a URL that names no password, works end to end as
//! the least-privilege role. A workload pointed at a server that is not in its `servers`
//! list, or at a listed address where an impostor asks for the password in clear, never gets
//! the secret sent. The secret is in none of the journal, the agent's log, status, metrics, or
//! the MCP server's environment.
use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pgwarden_e2e::{
    Agent, McpServer, PG_SERVER_NAME, PgServer, TestCgroup, TestNetns, agent_config,
    allow_all_workload, demo_seed_sql, free_port, in_cgroup, mcp_server, pg_bin, policy_path,
    require_root, run_output, self_signed_cert, unique_name,
};
use serde_json::Value;

const ROLE: &str = "mcp_payments";
const FIRST: &str = "first-Secret-7qX";
const SECOND: &str = "second-Secret-4zR";

const HBA: &str = "local all postgres trust\n\
                   local all all scram-sha-256\n\
                   host all postgres 127.0.0.1/32 trust\n\
                   host all all 127.0.0.1/32 scram-sha-256\n\
                   host all all ::1/128 scram-sha-256\n";

/// A PostgreSQL that asks SCRAM of [`ROLE`] (password [`FIRST`]) on TCP and its socket, and a
/// temp dir holding the secret file (`pw`) the agent reads.
fn role_server(extra_conf: &str) -> (PgServer, tempfile::TempDir, std::path::PathBuf) {
    require_root();
    let pg = PgServer::start_configured(extra_conf, Some(HBA));
    pg.psql_socket_unlogged(&format!("create role {ROLE} login password '{FIRST}'"));
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("pw");
    std::fs::write(&secret, format!("{FIRST}\n")).unwrap();
    (pg, dir, secret)
}

/// An agent intercepting `pg`'s port whose workload `name` is exactly `cg` (allow-all), with
/// `upstream_auth:` made of `auth` (YAML lines, unindented) and `servers` naming `pg`, and
/// `extra` top-level YAML.
fn agent_with_login(
    pg: &PgServer,
    cg: &TestCgroup,
    control: &std::path::Path,
    name: &str,
    auth: &str,
    extra: &str,
) -> Agent {
    let mut workload = allow_all_workload(name, cg);
    workload.push_str("    upstream_auth:\n");
    for line in auth.lines() {
        workload.push_str(&format!("      {line}\n"));
    }
    workload.push_str(&format!("      servers: [\"127.0.0.1:{}\"]\n", pg.port));
    Agent::start(&agent_config(pg.port, control, &workload, extra), control)
}

/// Makes `paths` PostgreSQL's (its server key and the directory holding it).
fn give_to_postgres(paths: &[&std::path::Path]) {
    let pg_user = nix::unistd::User::from_name("postgres").unwrap().unwrap();
    for f in paths {
        std::os::unix::fs::chown(f, Some(pg_user.uid.as_raw()), Some(pg_user.gid.as_raw()))
            .unwrap();
    }
}

/// psql in `cg` (untagged when `None`) as `user` at `host` (an address or the socket
/// directory), never prompting, with `password` in PGPASSWORD when given.
fn psql(
    pg: &PgServer,
    cg: Option<&TestCgroup>,
    host: &str,
    user: &str,
    password: Option<&str>,
    sql: &str,
) -> Output {
    let bin = pg_bin("psql");
    let mut cmd = match cg {
        Some(cg) => in_cgroup(&cg.path, bin.to_str().unwrap()),
        None => Command::new(&bin),
    };
    cmd.env_remove("PGPASSWORD")
        .env_remove("PGSERVICE")
        .env("PGPASSFILE", "/dev/null")
        .args(["-X", "-At", "-w", "-h", host, "-p"])
        .arg(pg.port.to_string())
        .args(["-U", user, "-d", "postgres", "-c", sql]);
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    run_output(&mut cmd)
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", text(out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn failed(out: &Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} should fail: {}", text(out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A server that answers SSLRequest with N and any StartupMessage with
/// AuthenticationCleartextPassword, then keeps what it is sent.
fn impostor() -> (u16, mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { return };
            let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
            let mut got = Vec::new();
            loop {
                let mut len = [0u8; 4];
                if s.read_exact(&mut len).is_err() {
                    break;
                }
                let n = usize::try_from(u32::from_be_bytes(len)).unwrap_or(0);
                let mut body = vec![0u8; n.saturating_sub(4)];
                if n < 8 || s.read_exact(&mut body).is_err() {
                    break;
                }
                got.extend_from_slice(&len);
                got.extend_from_slice(&body);
                if body[..4] == 80_877_103u32.to_be_bytes() {
                    let _ = s.write_all(b"N");
                    continue;
                }
                let _ = s.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]);
                // Whatever comes next would be the answer.
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
                got.extend_from_slice(&rest);
                break;
            }
            let _ = tx.send(got);
        }
    });
    (port, rx)
}

fn metrics(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

fn starts(agent: &Agent) -> Vec<Value> {
    agent
        .audit_lines()
        .into_iter()
        .filter(|r| r["event"] == "session.start")
        .collect()
}

#[allow(clippy::too_many_lines, reason = "one scenario, told in order")]
#[test]
fn a_tagged_workload_without_a_password_logs_in_as_its_role() {
    // Every statement logged: the secret must not be in PostgreSQL's log either (the
    // harness's own CREATE/ALTER ROLE turn logging off for themselves).
    let (pg, dir, secret) =
        role_server("password_encryption = 'scram-sha-256'\nlog_statement = 'all'\n");
    pg.psql_socket(&demo_seed_sql());
    pg.psql_socket(&format!("grant select on payments to {ROLE}"));
    let sock_dir = pg.socket_dir().to_string_lossy().into_owned();
    let socket = format!("{sock_dir}/.s.PGSQL.{}", pg.port);

    let control = dir.path().join("control.sock");
    let (listed_impostor, impostor_rx) = impostor();
    let (unlisted, unlisted_rx) = impostor();
    let cg = TestCgroup::create(&unique_name("pgw-e2e-login"));
    let strict = TestCgroup::create(&unique_name("pgw-e2e-login-match"));
    let listen = free_port();
    let metrics_port = free_port();
    let allow_all = policy_path("allow-all.yaml");
    let auth = |policy: &str| {
        format!(
            "    upstream_auth:\n      user: {ROLE}\n      password_file: {}\n      \
             user_policy: {policy}\n      servers: [\"127.0.0.1:{}\", \"127.0.0.1:{listed_impostor}\", \"{socket}\"]\n",
            secret.display(),
            pg.port
        )
    };
    let config = format!(
        "listen:\n  ipv4: 127.0.0.1:{listen}\n  ipv6: \"[::1]:{listen}\"\ncontrol:\n  socket: {}\n\
         intercept:\n  - \"*:{}\"\n  - \"*:{listed_impostor}\"\n  - \"*:{unlisted}\"\n\
         intercept_unix:\n  - {sock_dir}\n\
         metrics:\n  listen: 127.0.0.1:{metrics_port}\n\
         workloads:\n  - name: mcp-payments\n    cgroup: \"{}\"\n    policy: {}\n    profile: allow-all\n{}\
         \x20 - name: strict\n    cgroup: \"{}\"\n    policy: {}\n    profile: allow-all\n{}",
        control.display(),
        pg.port,
        cg.rel,
        allow_all.display(),
        auth("force"),
        strict.rel,
        allow_all.display(),
        auth("must_match"),
    );
    let agent = Agent::start(&config, &control);

    // Tagged, no password, asking for the superuser: logged in as the role, over TCP and over
    // the Unix socket; a wrong password changes nothing (it is never asked for).
    for (host, password) in [
        ("127.0.0.1", None),
        ("127.0.0.1", Some("wrong")),
        (sock_dir.as_str(), None),
    ] {
        let who = ok(
            &psql(
                &pg,
                Some(&cg),
                host,
                "postgres",
                password,
                "select current_user",
            ),
            &format!("tagged psql at {host}, password {password:?}"),
        );
        assert_eq!(who, ROLE, "tagged psql at {host}");
    }
    // Least privilege: the role reads payments and nothing it was not granted.
    let count = ok(
        &psql(
            &pg,
            Some(&cg),
            "127.0.0.1",
            "postgres",
            None,
            "select count(*) from payments",
        ),
        "payments as the role",
    );
    assert!(count.parse::<u64>().unwrap() > 0, "{count}");
    let denied = failed(
        &psql(
            &pg,
            Some(&cg),
            "127.0.0.1",
            "postgres",
            None,
            "select * from secrets",
        ),
        "secrets as the role",
    );
    assert!(denied.contains("permission denied"), "{denied}");

    // PostgreSQL's word: SCRAM authenticated the role, on both transports.
    let log = pg.log();
    assert!(
        log.contains(&format!("identity=\"{ROLE}\" method=scram-sha-256")),
        "PostgreSQL's log shows no SCRAM login of {ROLE}:\n{log}"
    );

    // Untagged, no password: PostgreSQL refuses, on TCP and on the socket.
    for host in ["127.0.0.1", sock_dir.as_str()] {
        let err = failed(
            &psql(&pg, None, host, ROLE, None, "select 1"),
            &format!("untagged psql at {host} without a password"),
        );
        assert!(err.contains("password"), "{err}");
    }

    // must_match: the client must ask for the role itself.
    let err = failed(
        &psql(
            &pg,
            Some(&strict),
            "127.0.0.1",
            "postgres",
            None,
            "select 1",
        ),
        "must_match with another user",
    );
    assert!(
        err.contains(&format!(
            "logs in as `{ROLE}`; the client asked for `postgres`"
        )),
        "{err}"
    );
    let who = ok(
        &psql(
            &pg,
            Some(&strict),
            "127.0.0.1",
            ROLE,
            None,
            "select current_user",
        ),
        "must_match with the role",
    );
    assert_eq!(who, ROLE);

    // The journal: the user really logged in, what the client asked for, and the method.
    let records = starts(&agent);
    let ok_starts: Vec<&Value> = records.iter().filter(|r| r["outcome"].is_null()).collect();
    assert!(ok_starts.len() >= 5, "{records:#?}");
    for r in &ok_starts {
        assert_eq!(r["db"]["user"], ROLE, "{r}");
        assert_eq!(r["detail"]["login"]["user"], ROLE, "{r}");
        assert_eq!(r["detail"]["login"]["method"], "scram-sha-256", "{r}");
    }
    assert!(
        ok_starts
            .iter()
            .any(|r| r["detail"]["login"]["asked_user"] == "postgres"),
        "{ok_starts:#?}"
    );
    let refused = records
        .iter()
        .find(|r| r["workload"] == "strict" && r["outcome"] == "failure")
        .unwrap_or_else(|| panic!("no refused must_match session: {records:#?}"));
    assert_eq!(refused["sqlstate"], "28000", "{refused}");

    // Rotation: the role's password changes; until the file follows, logins fail with
    // PostgreSQL's reason; then the next session uses the new secret, with no reload.
    pg.psql_socket_unlogged(&format!("alter role {ROLE} password '{SECOND}'"));
    let err = failed(
        &psql(&pg, Some(&cg), "127.0.0.1", "postgres", None, "select 1"),
        "login with the old secret",
    );
    assert!(
        err.contains(&format!(
            "pgwarden: logging in as `{ROLE}` for workload `mcp-payments` failed"
        )),
        "{err}"
    );
    let failure = starts(&agent)
        .into_iter()
        .rev()
        .find(|r| r["outcome"] == "failure" && r["workload"] == "mcp-payments")
        .expect("a failed login record");
    assert_eq!(failure["sqlstate"], "28P01", "{failure}");
    assert_eq!(failure["detail"]["login"]["user"], ROLE, "{failure}");
    assert_eq!(failure["db"]["user"], ROLE, "{failure}");
    std::fs::write(&secret, format!("{SECOND}\n")).unwrap();
    let who = ok(
        &psql(
            &pg,
            Some(&cg),
            "127.0.0.1",
            "postgres",
            None,
            "select current_user",
        ),
        "after rotation",
    );
    assert_eq!(who, ROLE);

    // A destination not in `servers`: refused before anything is sent; the server sees no
    // connection at all.
    let err = failed(
        &psql_port(&cg, unlisted, "postgres"),
        "a workload pointed at an unlisted server",
    );
    assert!(err.contains("database credentials are for"), "{err}");
    assert!(
        unlisted_rx
            .recv_timeout(Duration::from_millis(500))
            .is_err(),
        "pgwarden connected to an unlisted server"
    );
    // A listed address where an impostor asks for the password in clear: refused, and what
    // the impostor got holds the startup packet and no secret.
    let err = failed(
        &psql_port(&cg, listed_impostor, "postgres"),
        "an impostor asking for cleartext",
    );
    assert!(err.contains("asked for password authentication"), "{err}");
    let got = impostor_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the impostor saw pgwarden's connection");
    let seen = String::from_utf8_lossy(&got);
    assert!(
        seen.contains(ROLE),
        "the startup packet names the role: {seen:?}"
    );
    for s in [FIRST, SECOND] {
        assert!(!seen.contains(s), "the impostor got the secret: {seen:?}");
    }
    // SSLRequest, then the StartupMessage, then nothing: no PasswordMessage followed.
    let startup_len = usize::try_from(u32::from_be_bytes(got[8..12].try_into().unwrap())).unwrap();
    assert_eq!(
        got.len(),
        8 + startup_len,
        "pgwarden answered the impostor's password request: {seen:?}"
    );

    // The MCP server, with a URL without a password and nothing in its environment.
    let url = format!("postgresql://{ROLE}@127.0.0.1:{}/postgres", pg.port);
    let mut cmd = mcp_server(&cg.path, &url);
    cmd.env_remove("PGPASSWORD");
    let mut mcp = McpServer::spawn(cmd).unwrap();
    mcp.initialize("pgwarden-e2e").unwrap();
    let environ = std::fs::read(format!("/proc/{}/environ", mcp.pid())).unwrap();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", mcp.pid())).unwrap();
    for s in [FIRST, SECOND] {
        for (what, bytes) in [("environment", &environ), ("command line", &cmdline)] {
            assert!(
                !String::from_utf8_lossy(bytes).contains(s),
                "the MCP server's {what} holds the secret"
            );
        }
    }
    assert!(
        !String::from_utf8_lossy(&environ).contains("PGPASSWORD"),
        "the MCP server has PGPASSWORD"
    );
    let rows = mcp
        .query("select current_user as who, count(*) as n from payments")
        .unwrap()
        .unwrap_or_else(|e| panic!("MCP query failed: {e:?}\n{}", mcp.stderr_text()));
    assert_eq!(rows[0]["who"], ROLE, "{rows}");
    let denied = mcp.query("select * from secrets").unwrap();
    assert!(
        denied
            .as_ref()
            .is_err_and(|e| e.message.contains("permission denied")),
        "{denied:?}"
    );
    mcp.stop().unwrap();

    // No secret anywhere pgwarden writes or shows.
    let deadline = Instant::now() + Duration::from_secs(5);
    while starts(&agent).len() < records.len() + 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let journal = std::fs::read_to_string(agent.tmp_dir().join("audit.jsonl")).unwrap();
    let status = agent.status().to_string();
    let body = metrics(metrics_port);
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    for (result, at_least) in [("ok", 6), ("refused", 1), ("failed", 2)] {
        let line = format!(
            "pgwarden_upstream_logins_total{{workload=\"mcp-payments\",result=\"{result}\"}} "
        );
        let n: u64 = body
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("no {line} in:\n{body}"))
            .trim()
            .parse()
            .unwrap();
        assert!(n >= at_least, "{line}{n}");
    }
    assert!(
        pg.log().contains("LOG:  statement: "),
        "PostgreSQL logs statements"
    );
    for s in [FIRST, SECOND] {
        for (what, haystack) in [
            ("journal", &journal),
            ("agent log", &agent.log()),
            ("status", &status),
            ("metrics", &body),
            ("PostgreSQL log", &pg.log()),
        ] {
            let found: Vec<&str> = haystack.lines().filter(|l| l.contains(s)).collect();
            assert!(found.is_empty(), "the secret is in the {what}: {found:?}");
        }
    }
}

/// Tagged psql at 127.0.0.1:`port` as `user`.
fn psql_port(cg: &TestCgroup, port: u16, user: &str) -> Output {
    let bin = pg_bin("psql");
    run_output(
        in_cgroup(&cg.path, bin.to_str().unwrap())
            .env_remove("PGPASSWORD")
            .env("PGPASSFILE", "/dev/null")
            .env("PGCONNECT_TIMEOUT", "10")
            .args(["-X", "-At", "-w", "-h", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .args(["-U", user, "-d", "postgres", "-c", "select 1"]),
    )
}

/// `cert` logins: PostgreSQL's `pg_hba.conf` admits the role only with a client certificate
/// whose CN is the role (`hostssl ... cert`); pgwarden presents the workload's on its TLS hop.
#[test]
fn a_certificate_login_presents_the_roles_certificate() {
    require_root();
    const CERT_ROLE: &str = "mcp_cert";
    let certs = tempfile::tempdir().unwrap();
    let server = self_signed_cert(certs.path(), "server", PG_SERVER_NAME);
    let client = self_signed_cert(certs.path(), "client", CERT_ROLE);
    give_to_postgres(&[certs.path(), &server.cert, &server.key]);
    // The client certificate is self-signed, so it is its own CA for PostgreSQL.
    let pg = PgServer::start_configured(
        &format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nssl_ca_file = '{}'\n",
            server.cert.display(),
            server.key.display(),
            client.cert.display()
        ),
        Some(&format!(
            "local all postgres trust\n\
             hostssl all {CERT_ROLE} 127.0.0.1/32 cert\n\
             host all all 127.0.0.1/32 scram-sha-256\n"
        )),
    );
    pg.psql_socket(&format!("create role {CERT_ROLE} login"));

    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control.sock");
    let cg = TestCgroup::create(&unique_name("pgw-e2e-login-cert"));
    let agent = agent_with_login(
        &pg,
        &cg,
        &control,
        "mcp-cert",
        &format!(
            "user: {CERT_ROLE}\ncert: {}\nkey: {}\n",
            client.cert.display(),
            client.key.display()
        ),
        "upstream:\n  sslmode: require\n",
    );

    let seen = ok(
        &psql(
            &pg,
            Some(&cg),
            "127.0.0.1",
            "postgres",
            None,
            "select current_user || ' ' || ssl || ' ' || client_dn from pg_stat_ssl where pid = pg_backend_pid()",
        ),
        "tagged psql with a certificate login",
    );
    assert_eq!(seen, format!("{CERT_ROLE} true /CN={CERT_ROLE}"));
    let err = failed(
        &psql(&pg, None, "127.0.0.1", CERT_ROLE, None, "select 1"),
        "untagged psql without the certificate",
    );
    assert!(err.contains("certificate"), "{err}");
    let start = starts(&agent)
        .into_iter()
        .find(|r| r["workload"] == "mcp-cert" && r["outcome"].is_null())
        .expect("a session.start of the certificate login");
    assert_eq!(start["detail"]["login"]["method"], "cert", "{start}");
    assert_eq!(start["db"]["user"], CERT_ROLE, "{start}");
}

/// Listen-only mode (`run --no-redirect`) relays whoever connects to the listen address: no
/// kernel identity vouches for such a client, so a workload with `upstream_auth` gets no login
/// there, and its secret never leaves the agent.
#[test]
fn a_listen_only_session_gets_no_login() {
    let (pg, dir, secret) = role_server("");
    let control = dir.path().join("c.sock");
    let port = free_port();
    let config = format!(
        "listen:\n  ipv4: 127.0.0.1:{port}\n  ipv6: null\ncontrol:\n  socket: {}\n\
         listen_only:\n  upstream: 127.0.0.1:{pg_port}\n\
         workloads:\n  - name: listen-only\n    policy: {}\n    profile: allow-all\n\
         \x20   upstream_auth:\n      user: {ROLE}\n      password_file: {}\n      \
         servers: [\"127.0.0.1:{pg_port}\"]\n",
        control.display(),
        policy_path("allow-all.yaml").display(),
        secret.display(),
        pg_port = pg.port,
    );
    let agent = Agent::start_with_args(&config, &control, &["--no-redirect"]);
    let out = run_output(
        Command::new(pg_bin("psql"))
            .env_remove("PGPASSWORD")
            .env("PGPASSFILE", "/dev/null")
            .args(["-X", "-At", "-w", "-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(port.to_string())
            .args(["-c", "select current_user"]),
    );
    let err = failed(
        &out,
        "a listen-only client of a workload with upstream_auth",
    );
    assert!(
        err.contains("listen-only sessions have no identity"),
        "{err}"
    );
    let refused = starts(&agent)
        .into_iter()
        .find(|r| r["outcome"] == "failure")
        .expect("the refusal is recorded");
    assert_eq!(refused["sqlstate"], "28000", "{refused}");
    assert!(
        !pg.log().contains(&format!("user={ROLE}")),
        "pgwarden logged in as the role for a listen-only client"
    );
}

/// `client_token_file`: a second factor besides the tagged cgroup. The client must send the
/// workload's local token as its password; a tagged client without it, or with another, gets
/// no login (and pgwarden reads no secret for it).
#[test]
fn a_local_token_is_asked_of_the_client_when_configured() {
    const TOKEN: &str = "local-Token-93kd";
    let (pg, dir, secret) = role_server("");
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let control = dir.path().join("c.sock");
    let cg = TestCgroup::create(&unique_name("pgw-e2e-login-token"));
    let agent = agent_with_login(
        &pg,
        &cg,
        &control,
        "mcp-token",
        &format!(
            "user: {ROLE}\npassword_file: {}\nclient_token_file: {}\n",
            secret.display(),
            token.display()
        ),
        "",
    );
    let who = ok(
        &psql(
            &pg,
            Some(&cg),
            "127.0.0.1",
            "postgres",
            Some(TOKEN),
            "select current_user",
        ),
        "tagged psql with the token",
    );
    assert_eq!(who, ROLE);
    let err = failed(
        &psql(&pg, Some(&cg), "127.0.0.1", "postgres", None, "select 1"),
        "tagged psql without the token",
    );
    assert!(err.contains("no password supplied"), "{err}");
    for wrong in [FIRST, "nope"] {
        let err = failed(
            &psql(
                &pg,
                Some(&cg),
                "127.0.0.1",
                "postgres",
                Some(wrong),
                "select 1",
            ),
            "tagged psql with another token",
        );
        assert!(
            err.contains("workload `mcp-token` asks its clients for its local token"),
            "{err}"
        );
    }
    let refused: Vec<Value> = starts(&agent)
        .into_iter()
        .filter(|r| r["outcome"] == "failure")
        .collect();
    assert!(refused.len() >= 2, "{refused:#?}");
    assert!(
        refused.iter().all(|r| r["sqlstate"] == "28P01"),
        "{refused:#?}"
    );
    let journal = std::fs::read_to_string(agent.tmp_dir().join("audit.jsonl")).unwrap();
    for s in [TOKEN, FIRST] {
        assert!(
            !journal.contains(s) && !agent.log().contains(s),
            "a secret leaked"
        );
    }
}

/// psql in `cg` as [`ROLE`] over TCP with no password, each statement its own `-c` (its own
/// Query message), in the background.
fn psql_session(pg: &PgServer, cg: &TestCgroup, statements: &[&str]) -> std::process::Child {
    let mut cmd = in_cgroup(&cg.path, pg_bin("psql").to_str().unwrap());
    cmd.env_remove("PGPASSWORD")
        .env("PGPASSFILE", "/dev/null")
        .args(["-X", "-At", "-w", "-h", "127.0.0.1", "-p"])
        .arg(pg.port.to_string())
        .args(["-U", ROLE, "-d", "postgres"]);
    for s in statements {
        cmd.args(["-c", s]);
    }
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn done(child: std::process::Child) -> (String, String) {
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until `n` approval requests are pending; returns their ids.
fn pending(agent: &Agent, n: usize) -> Vec<String> {
    let p = pgwarden_e2e::wait_pending(agent, n);
    p.iter()
        .map(|r| r["id"].as_u64().unwrap().to_string())
        .collect()
}

/// The PostgreSQL log's statement lines (`log_statement = all`), as (backend pid, text).
fn statements_logged(pg: &PgServer) -> Vec<(String, String)> {
    pg.log()
        .lines()
        .filter_map(|l| {
            let (head, sql) = l.split_once("LOG:  statement: ")?;
            let pid = head.split_once('[')?.1.split_once(']')?.0.to_owned();
            Some((pid, sql.to_owned()))
        })
        .collect()
}

/// `sql` ran between pgwarden's `SET ROLE "payments_admin"` and its `RESET ROLE`, in `log`
/// (one backend's statements, or all of them in order).
#[track_caller]
fn assert_between_role_changes(log: &[&str], sql: &str) {
    let i = log
        .iter()
        .position(|s| *s == sql)
        .unwrap_or_else(|| panic!("`{sql}` is not in the server's log: {log:?}"));
    let role = |s: &&&str| s.starts_with("SET ROLE") || s.starts_with("RESET ROLE");
    assert_eq!(
        log[..i].iter().rev().find(role).copied(),
        Some("SET ROLE \"payments_admin\""),
        "{log:?}"
    );
    assert_eq!(
        log[i + 1..].iter().find(role).copied(),
        Some("RESET ROLE"),
        "{log:?}"
    );
}

fn refund_state(pg: &PgServer, id: u32) -> String {
    pg.psql_direct(&format!("SELECT state FROM refunds WHERE id = {id}"))
}

/// Elevation by approval: the workload logs in as its own role (a NOINHERIT member of
/// `payments_admin`, with no UPDATE right of its own); a rule with `run_as: payments_admin`
/// holds its refund updates, and an approved one runs as `payments_admin`, pgwarden's own
/// `SET ROLE` before it and `RESET ROLE` after it in the same backend (PostgreSQL's statement
/// log says so). A grant lets the rule's statements run so until it expires; the workload
/// cannot elevate itself (SET ROLE, set_config, SET LOCAL ROLE, DO); a statement that could run
/// code the policy did not read is refused up front; a failed elevated statement in a
/// transaction leaves the session on its own role; and when the server refuses the role, the
/// statement is refused and changes nothing.
#[allow(clippy::too_many_lines, reason = "one scenario, told in order")]
#[test]
fn an_approval_rule_runs_its_statement_as_a_second_role() {
    let (pg, dir, secret) = role_server("log_statement = 'all'\n");
    pg.psql_socket(&format!(
        "create table refunds(id int primary key, state text);
         insert into refunds select i, 'new' from generate_series(1, 6) i;
         create role payments_admin nologin;
         grant select, update on refunds to payments_admin;
         grant select on refunds to {ROLE};
         alter role {ROLE} noinherit;
         grant payments_admin to {ROLE};"
    ));
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "version: 1\nprofiles:\n  app:\n    classes: [read, write, transaction, session-set]\n    writes: {max_rows: 2}\n    rules:\n\
         \x20     - id: refunds-admin\n        action: require_approval\n        classes: [write]\n        tables: [public.refunds]\n\
         \x20       approvers: [root]\n        timeout_seconds: 30\n        max_grant_seconds: 60\n        run_as: payments_admin\n",
    )
    .unwrap();
    let cg = TestCgroup::create(&unique_name("pgw-e2e-elevate"));
    let control = dir.path().join("control.sock");
    let workload = format!(
        "  - name: payments-mcp\n    cgroup: \"{}\"\n    policy: {}\n    profile: app\n    upstream_auth:\n      user: {ROLE}\n      password_file: {}\n      servers: [\"127.0.0.1:{}\"]\n",
        cg.rel,
        policy.display(),
        secret.display(),
        pg.port
    );
    let agent = Agent::start(&agent_config(pg.port, &control, &workload, ""), &control);
    let approve = |id: &str, extra: &[&str]| {
        let mut args = vec!["approvals", "approve", id];
        args.extend_from_slice(extra);
        let out = agent.cli(&args);
        assert!(out.status.success(), "approve: {}", text(&out));
    };

    // Its own role cannot update refunds: the server refuses (the rule does not match reads).
    let (out, err) = done(psql_session(
        &pg,
        &cg,
        &["SELECT current_user", "SELECT count(*) FROM refunds"],
    ));
    assert_eq!(out.lines().collect::<Vec<_>>(), [ROLE, "6"], "{err}");

    // Approved: it runs as payments_admin, and the session is back on its own role after.
    let child = psql_session(
        &pg,
        &cg,
        &[
            "UPDATE refunds SET state = 'sent' WHERE id = 1",
            "SELECT current_user",
            "UPDATE refunds SET state = 'own' WHERE id = 6 AND false",
        ],
    );
    let ids = pending(&agent, 1);
    // The approver sees the role the statement would run as.
    let list = agent.cli(&["approvals", "list"]);
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("rule=refunds-admin run_as=payments_admin"),
        "{}",
        text(&list)
    );
    approve(&ids[0], &[]);
    // The third statement matches the rule too: it waits; denied, it changes nothing.
    let ids = pending(&agent, 1);
    let out = agent.cli(&["approvals", "deny", &ids[0]]);
    assert!(out.status.success(), "{}", text(&out));
    let (out, err) = done(child);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["UPDATE 1", ROLE],
        "{err}\n{:?}",
        statements_logged(&pg)
    );
    assert!(err.contains("approval.denied: refunds-admin"), "{err}");
    assert_eq!(refund_state(&pg, 1), "sent");
    let log = statements_logged(&pg);
    let at = log
        .iter()
        .position(|(_, s)| s == "UPDATE refunds SET state = 'sent' WHERE id = 1")
        .unwrap_or_else(|| panic!("the approved update is not in the server's log: {log:?}"));
    let pid = &log[at].0;
    let same: Vec<&str> = log
        .iter()
        .filter(|(p, _)| p == pid)
        .map(|(_, s)| s.as_str())
        .collect();
    assert_between_role_changes(&same, "UPDATE refunds SET state = 'sent' WHERE id = 1");
    let journal = agent.audit_lines();
    let record = journal
        .iter()
        .find(|r| {
            r["event"] == "query"
                && r["statement"]["text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("UPDATE refunds"))
        })
        .unwrap_or_else(|| panic!("no query record of the update: {journal:#?}"));
    assert_eq!(record["detail"]["run_as"], "payments_admin", "{record:#}");
    assert_eq!(record["rule"], "refunds-admin", "{record:#}");

    // The workload cannot elevate itself, by any spelling; a statement of the rule that could
    // run code the policy did not read is refused before anyone is asked.
    let attempts = [
        "SET ROLE payments_admin",
        "SET role = 'payments_admin'",
        "SELECT set_config('role', 'payments_admin', false)",
        "DO $$BEGIN EXECUTE 'SET ROLE payments_admin'; END$$",
        "BEGIN",
        "SET LOCAL ROLE payments_admin",
        "ROLLBACK",
        "UPDATE refunds SET state = 'two' WHERE id = 2; SELECT 1",
        "SELECT current_user",
    ];
    let (out, err) = done(psql_session(&pg, &cg, &attempts));
    assert_eq!(out.lines().last(), Some(ROLE), "{out}\n{err}");
    assert!(!out.contains("payments_admin"), "{out}");
    assert_eq!(err.matches("ERROR:").count(), 6, "{err}");
    assert!(
        err.contains("refunds-admin: this rule runs statements as `payments_admin`"),
        "{err}"
    );
    assert_eq!(refund_state(&pg, 2), "new");
    let log = statements_logged(&pg);
    for (_, s) in &log {
        assert!(
            !s.contains("SET ROLE payments_admin")
                && !s.contains("set_config")
                && !s.starts_with("DO ")
                && !s.contains("'two'"),
            "a refused attempt reached the server: {s}"
        );
    }

    // A grant: the rule's statements pass without asking until it expires, each run as
    // payments_admin; a failed one inside a transaction leaves the session on its own role.
    let child = psql_session(
        &pg,
        &cg,
        &["UPDATE refunds SET state = 'sent' WHERE id = 2"],
    );
    let ids = pending(&agent, 1);
    approve(&ids[0], &["--for", "5s"]);
    let (out, err) = done(child);
    assert_eq!(out.trim(), "UPDATE 1", "{err}");
    let (out, err) = done(psql_session(
        &pg,
        &cg,
        &[
            "UPDATE refunds SET state = 'sent' WHERE id = 3",
            "BEGIN",
            "UPDATE refunds SET id = 1 WHERE id = 4",
            "ROLLBACK",
            "SELECT current_user",
        ],
    ));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["UPDATE 1", "BEGIN", "ROLLBACK", ROLE],
        "{err}"
    );
    assert!(err.contains("duplicate key"), "{err}");
    assert!(pgwarden_e2e::pending_approvals(&agent).is_empty());
    assert_eq!(refund_state(&pg, 3), "sent");
    assert_eq!(refund_state(&pg, 4), "new");
    let log = statements_logged(&pg);
    let all: Vec<&str> = log.iter().map(|(_, s)| s.as_str()).collect();
    assert_between_role_changes(&all, "UPDATE refunds SET state = 'sent' WHERE id = 3");

    // Elevated, a write still runs under the profile's row limit: over it, undone and
    // refused, and the session is back on its own role.
    let (out, err) = done(psql_session(
        &pg,
        &cg,
        &[
            "UPDATE refunds SET state = 'bulk' WHERE id > 0",
            "SELECT current_user",
        ],
    ));
    assert_eq!(out.trim(), ROLE, "{err}");
    assert!(
        err.contains("write.rows") && err.contains("undone"),
        "{err}"
    );
    assert_eq!(
        pg.psql_direct("SELECT count(*) FROM refunds WHERE state = 'bulk'"),
        "0"
    );
    // pgwarden sets the role around a simple Query only: as Parse/Bind/Execute it is refused.
    let script = serde_json::json!([
        ["extended", "UPDATE refunds SET state = 'ext' WHERE id = 6"],
        ["query", "SELECT current_user"]
    ]);
    let raw = in_cgroup(&cg.path, "python3")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/raw/pgraw.py"))
        .args([
            "127.0.0.1",
            &pg.port.to_string(),
            ROLE,
            "postgres",
            &script.to_string(),
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&raw.stdout);
    assert!(
        out.contains("\"C\": \"0A000\""),
        "{out}{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    assert!(out.contains(ROLE), "{out}");
    assert_eq!(refund_state(&pg, 6), "new");
    // A fixed wait on purpose: the 5 s grant must run out.
    std::thread::sleep(Duration::from_secs(6));
    let child = psql_session(
        &pg,
        &cg,
        &["UPDATE refunds SET state = 'late' WHERE id = 5"],
    );
    let ids = pending(&agent, 1);
    let out = agent.cli(&["approvals", "deny", &ids[0]]);
    assert!(out.status.success(), "{}", text(&out));
    let (_, err) = done(child);
    assert!(err.contains("approval.denied"), "{err}");
    assert_eq!(refund_state(&pg, 5), "new");

    // The server refuses the role (the membership is gone): approved or not, the statement
    // does not run, and the client is told why.
    pg.psql_socket(&format!("revoke payments_admin from {ROLE}"));
    let child = psql_session(
        &pg,
        &cg,
        &[
            "UPDATE refunds SET state = 'x' WHERE id = 5",
            "SELECT current_user",
        ],
    );
    let ids = pending(&agent, 1);
    approve(&ids[0], &[]);
    let (out, err) = done(child);
    assert_eq!(out.trim(), ROLE, "{err}");
    assert!(
        err.contains("run_as.failed: refunds-admin") && err.contains("permission denied"),
        "{err}"
    );
    assert_eq!(refund_state(&pg, 5), "new");
    drop(agent);
}

/// SCRAM over pgwarden's TLS hop is bound to the server's certificate (SCRAM-SHA-256-PLUS,
/// `tls-server-end-point`; here a P-384 certificate signed with SHA-384, so the hash is not
/// the default one). PostgreSQL checks the binding itself: a login through a relay that
/// terminates TLS with a certificate of its own (a second pgwarden in listen-only mode, which
/// also strips the PLUS offer, as any such relay must) is refused by PostgreSQL, while the same
/// relay passes a login that does not bind.
#[test]
fn scram_over_tls_is_bound_to_the_servers_certificate() {
    require_root();
    let certs = tempfile::tempdir().unwrap();
    let server = pgwarden_e2e::self_signed_cert_on(
        certs.path(),
        "server",
        PG_SERVER_NAME,
        "secp384r1",
        "sha384",
    );
    let relay_cert = self_signed_cert(certs.path(), "relay", PG_SERVER_NAME);
    give_to_postgres(&[certs.path(), &server.cert, &server.key]);
    let pg = PgServer::start_configured(
        &format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\npassword_encryption = 'scram-sha-256'\n",
            server.cert.display(),
            server.key.display(),
        ),
        Some(
            "local all postgres trust\n\
             host all postgres 127.0.0.1/32 trust\n\
             hostssl all all 127.0.0.1/32 scram-sha-256\n",
        ),
    );
    pg.psql_socket_unlogged(&format!("create role {ROLE} login password '{FIRST}'"));
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("pw");
    std::fs::write(&secret, format!("{FIRST}\n")).unwrap();
    let cg = TestCgroup::create(&unique_name("pgw-e2e-login-bind"));
    let login = |binding: &str| {
        format!(
            "user: {ROLE}\npassword_file: {}\nchannel_binding: {binding}\n",
            secret.display()
        )
    };
    let query = "select current_user || ' ' || ssl from pg_stat_ssl where pid = pg_backend_pid()";

    // Straight to PostgreSQL: bound, and PostgreSQL accepted the binding.
    let control = dir.path().join("c1.sock");
    let agent = agent_with_login(
        &pg,
        &cg,
        &control,
        "mcp-bound",
        &login("require"),
        "upstream:\n  sslmode: require\n",
    );
    let seen = ok(
        &psql(&pg, Some(&cg), "127.0.0.1", ROLE, None, query),
        "a bound login",
    );
    assert_eq!(seen, format!("{ROLE} true"));
    let start = starts(&agent)
        .into_iter()
        .find(|r| r["workload"] == "mcp-bound" && r["outcome"].is_null())
        .expect("a session.start of the bound login");
    assert_eq!(
        start["detail"]["login"]["method"], "scram-sha-256-plus",
        "{start}"
    );
    drop(agent);

    // A relay that terminates pgwarden's TLS with its own certificate.
    let relay_port = free_port();
    let relay_control = dir.path().join("relay.sock");
    let relay = Agent::start_with_args(
        &format!(
            "listen:\n  ipv4: 127.0.0.1:{relay_port}\n  ipv6: null\ncontrol:\n  socket: {}\n\
             listen_only:\n  upstream: 127.0.0.1:{}\n\
             tls:\n  cert: {}\n  key: {}\nupstream:\n  sslmode: require\n\
             workloads:\n  - name: listen-only\n    policy: {}\n    profile: allow-all\n",
            relay_control.display(),
            pg.port,
            relay_cert.cert.display(),
            relay_cert.key.display(),
            policy_path("allow-all.yaml").display(),
        ),
        &relay_control,
        &["--no-redirect"],
    );
    let through_relay = |binding: &str, n: u32| {
        let control = dir.path().join(format!("c-relay-{n}.sock"));
        let mut workload = allow_all_workload("mcp-relayed", &cg);
        workload.push_str("    upstream_auth:\n");
        for line in login(binding).lines() {
            workload.push_str(&format!("      {line}\n"));
        }
        workload.push_str(&format!("      servers: [\"127.0.0.1:{relay_port}\"]\n"));
        let agent = Agent::start(
            &agent_config(
                relay_port,
                &control,
                &workload,
                "upstream:\n  sslmode: require\n",
            ),
            &control,
        );
        let out = run_output(
            in_cgroup(&cg.path, pg_bin("psql").to_str().unwrap())
                .env_remove("PGPASSWORD")
                .env("PGPASSFILE", "/dev/null")
                .args(["-X", "-At", "-w", "-h", "127.0.0.1", "-U", ROLE, "-p"])
                .arg(relay_port.to_string())
                .args(["-d", "postgres", "-c", query]),
        );
        (out, agent)
    };
    // Not bound: the relay passes the login (it is a working relay).
    let (out, agent) = through_relay("disable", 1);
    assert_eq!(
        ok(&out, "an unbound login through the relay"),
        format!("{ROLE} true")
    );
    drop(agent);
    // Bound (the default): PostgreSQL refuses it.
    let (out, agent) = through_relay("prefer", 2);
    let err = failed(&out, "a bound login through a TLS-terminating relay");
    assert!(err.contains("channel binding"), "{err}");
    assert!(
        pg.log().contains("channel binding"),
        "PostgreSQL itself refused the binding:\n{}",
        pg.log()
    );
    drop(agent);
    // require: pgwarden refuses before sending anything (the offer was stripped).
    let (out, agent) = through_relay("require", 3);
    let err = failed(&out, "a login requiring binding through the relay");
    assert!(err.contains("did not offer SCRAM-SHA-256-PLUS"), "{err}");
    drop(agent);
    drop(relay);
}

/// Waits until PostgreSQL runs `sql` (active in pg_stat_activity).
fn wait_active(pg: &PgServer, sql: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let probe = format!(
        "select count(*) from pg_stat_activity where state = 'active' and query = '{}'",
        sql.replace('\'', "''")
    );
    while pg.psql_direct(&probe) != "1" {
        assert!(
            Instant::now() < deadline,
            "`{sql}` never ran:\n{}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Interrupts psql (SIGINT: it sends a CancelRequest) and returns its stderr and how long
/// it took to end.
fn interrupt(child: std::process::Child) -> (String, Duration) {
    let t = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        t.elapsed(),
    )
}

/// A client's CancelRequest reaches the server pgwarden logged in at, by the route of that
/// login: from the host, and from a container (its own network namespace) whose client named
/// `127.0.0.1`, which inside the container is the container's own loopback, where no
/// PostgreSQL listens (pgwarden's login, and so the cancel, goes from pgwarden's namespace).
#[test]
fn a_cancel_follows_the_logins_route() {
    let (pg, dir, secret) = role_server("");
    let ns = TestNetns::create();
    let control = dir.path().join("c.sock");
    let cg = TestCgroup::create(&unique_name("pgw-e2e-login-cancel"));
    let _agent = agent_with_login(
        &pg,
        &cg,
        &control,
        "mcp-cancel",
        &format!("user: {ROLE}\npassword_file: {}\n", secret.display()),
        "",
    );
    let sleep_sql = "select pg_sleep(60)";
    let psql_args = |cmd: &mut Command| {
        cmd.env_remove("PGPASSWORD")
            .env("PGPASSFILE", "/dev/null")
            .args(["-X", "-At", "-w", "-h", "127.0.0.1", "-U", ROLE, "-p"])
            .arg(pg.port.to_string())
            .args(["-d", "postgres"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
    };
    let bin = pg_bin("psql");
    let bin = bin.to_str().unwrap();
    for place in ["host", "container"] {
        let mut cmd = match place {
            "host" => in_cgroup(&cg.path, bin),
            _ => ns.command_served(&cg, bin),
        };
        psql_args(&mut cmd);
        let out = run_output(cmd.args(["-c", "select current_user"]));
        assert_eq!(ok(&out, place), ROLE, "{place}");
        let mut cmd = match place {
            "host" => in_cgroup(&cg.path, bin),
            _ => ns.command_served(&cg, bin),
        };
        psql_args(&mut cmd);
        let child = cmd.args(["-c", sleep_sql]).spawn().unwrap();
        wait_active(&pg, sleep_sql);
        let (err, took) = interrupt(child);
        assert!(
            err.contains("canceling statement due to user request"),
            "{place}: {err}\n{}",
            pg.log()
        );
        assert!(
            took < Duration::from_secs(20),
            "{place}: the cancel took {took:?}"
        );
    }
}
