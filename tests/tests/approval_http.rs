//! Approvals over HTTP, end to end: a tagged psql's bulk read of payments is held by the
//! shipped pci-dss policy; approvers with tokens from `pgwarden approvers add` decide it over
//! the HTTPS API (curl) and from the page in a real headless Chromium (chromedriver, WebDriver).
//! The client's own output is the ground truth of what was released; the journal must name
//! every approver, how they authenticated and from where, and every refused caller.
use std::io::{BufReader, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use pgwarden_e2e::{
    Agent, CertPair, PgServer, TestCgroup, TestNetns, finish, free_port, in_cgroup, policy_path,
    psql_spawn, require_root, run_output, self_signed_cert, unique_name, wait_for, workspace_root,
};
use serde_json::{Value, json};

struct Web {
    pg: PgServer,
    agent: Agent,
    cg: TestCgroup,
    port: u16,
    /// The address API calls go to (the listener's, or the host end of a namespace's veth).
    api_addr: String,
    cert: CertPair,
    /// alice: group pgwarden-approvers, which the shipped rule names.
    alice: String,
    /// bob: an approver the rule does not name.
    bob: String,
    /// Bodies the approval webhook received.
    hooks: mpsc::Receiver<String>,
    /// The test's identity provider's signing key (its public half is the agent's JWKS).
    idp: jsonwebtoken::EncodingKey,
    _dir: tempfile::TempDir,
}

/// A webhook receiver on loopback: every POST body goes to the channel, answered 200.
fn webhook_receiver() -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (_, body) = pgwarden_e2e::read_http_request(&mut reader);
            let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (port, rx)
}

fn add_approver(bin: &Path, file: &Path, name: &str, groups: &[&str]) -> String {
    let mut cmd = Command::new(bin);
    cmd.args(["approvers", "add", name, "--file"]).arg(file);
    for g in groups {
        cmd.args(["--group", g]);
    }
    let out = run_output(&mut cmd);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        token.starts_with("pgw_"),
        "stdout is the token alone: {token:?}"
    );
    token
}

fn pgwarden_bin() -> PathBuf {
    std::env::var_os("PGWARDEN_BIN").map_or_else(
        || workspace_root().join("target/debug/pgwarden"),
        PathBuf::from,
    )
}

fn web() -> Web {
    web_on(None)
}

/// The world, its approvals listener on `0.0.0.0` when `remote` is given: approvers then come
/// from that namespace, another machine as far as the network stack can tell.
fn web_on(remote: Option<&TestNetns>) -> Web {
    require_root();
    let pg = PgServer::start();
    pg.seed_payments(150);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("mask.key");
    std::fs::write(&key, b"approval-http-test-key-0123456789").unwrap();
    let cert = self_signed_cert(dir.path(), "approvals", "localhost");
    let approvers = dir.path().join("approvers.json");
    let bin = pgwarden_bin();
    let alice = add_approver(&bin, &approvers, "alice", &["pgwarden-approvers"]);
    let bob = add_approver(&bin, &approvers, "bob", &["auditors"]);
    let (hook_port, hooks) = webhook_receiver();
    // An OIDC identity provider: an RSA key whose public half is the JWKS file the agent
    // trusts.
    let idp_pem = dir.path().join("idp.pem");
    pgwarden_e2e::run_ok(
        Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&idp_pem)
            .arg("2048"),
    );
    let idp = jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(&idp_pem).unwrap()).unwrap();
    let mut jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&idp, jsonwebtoken::Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("idp-1".into());
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({ "keys": [jwk] }).to_string()).unwrap();
    let control = dir.path().join("control.sock");
    let cg = TestCgroup::create(&unique_name("pgw-e2e-webapprove"));
    let listen = free_port();
    let port = free_port();
    let config = format!(
        "mask:\n  hash_key_file: {key}\nlisten:\n  ipv4: 127.0.0.1:{listen}\n  ipv6: null\ncontrol:\n  socket: {control}\n\
         intercept: [\"*:{pgport}\"]\n\
         workloads:\n  - name: payments-mcp\n    cgroup: \"{cg}\"\n    policy: {policy}\n    profile: reader\n\
         approvals:\n  webhook: http://127.0.0.1:{hook_port}/hook\n  webhook_format: slack\n  http:\n    listen: {bind}:{port}\n\
         \x20   cert: {crt}\n    key: {crtkey}\n    approvers_file: {approvers}\n    public_url: https://localhost:{port}/\n\
         \x20   oidc:\n      issuer: https://idp.test\n      audience: pgwarden\n      jwks_file: {jwks}\n",
        key = key.display(),
        control = control.display(),
        pgport = pg.port,
        cg = cg.rel,
        policy = policy_path("pci-dss.yaml").display(),
        crt = cert.cert.display(),
        crtkey = cert.key.display(),
        approvers = approvers.display(),
        jwks = jwks.display(),
        bind = if remote.is_some() {
            "0.0.0.0"
        } else {
            "127.0.0.1"
        },
    );
    let agent = Agent::start(&config, &control);
    Web {
        pg,
        agent,
        cg,
        port,
        api_addr: remote.map_or_else(|| "127.0.0.1".to_owned(), |ns| ns.host_ip.clone()),
        cert,
        alice,
        bob,
        hooks,
        idp,
        _dir: dir,
    }
}

/// An ID token of the test's identity provider for `user`, expiring `exp_in` seconds from now
/// (negative: already expired).
fn id_token(w: &Web, user: &str, groups: &[&str], exp_in: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .cast_signed();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("idp-1".into());
    let claims = json!({"iss": "https://idp.test", "aud": "pgwarden", "sub": format!("id-{user}"),
        "preferred_username": user, "groups": groups, "iat": now, "exp": now + exp_in});
    jsonwebtoken::encode(&header, &claims, &w.idp).unwrap()
}

/// A tagged process (`curl` run by `cmd`) holding alice's valid token tries to release request
/// `id`: 403, naming its workload.
fn workload_is_refused(w: &Web, cmd: Command, id: u64) {
    let (code, v, _) = curl(
        w,
        cmd,
        "POST",
        &format!("/api/v1/approvals/{id}/approve"),
        Some(&w.alice),
        Some(json!({})),
    );
    assert_eq!(code, 403, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("is in workload payments-mcp"),
        "{v}"
    );
}

/// One curl call to the API: (HTTP status, JSON body, response headers).
fn call(
    w: &Web,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value, String) {
    curl(w, Command::new("curl"), method, path, token, body)
}

fn curl(
    w: &Web,
    mut cmd: Command,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value, String) {
    cmd.args([
        "-sS",
        "--max-time",
        "30",
        "-D",
        "/dev/stderr",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
    ])
    .arg("--cacert")
    .arg(&w.cert.cert)
    .arg("--resolve")
    .arg(format!("localhost:{}:{}", w.port, w.api_addr))
    .arg(format!("https://localhost:{}{path}", w.port));
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(b) = body {
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "--data",
            &b.to_string(),
        ]);
    }
    let out = run_output(&mut cmd);
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    let v = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
    (
        code.parse().unwrap(),
        v,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Web {
    fn psql(&self, statements: &[&str]) -> Child {
        psql_spawn(&self.cg.path, &self.pg.url("127.0.0.1"), statements)
    }

    /// Waits until the API (as alice) lists `n` pending requests; returns the list reply.
    fn wait_listed(&self, n: usize) -> Value {
        wait_for(
            "held statements in the API's list",
            Duration::from_secs(20),
            || {
                let (code, v, _) = call(self, "GET", "/api/v1/approvals", Some(&self.alice), None);
                if code == 200 && v["pending"].as_array().is_some_and(|p| p.len() == n) {
                    Ok(v)
                } else {
                    Err(format!("{code} {v:#}\n{}", self.agent.log()))
                }
            },
        )
    }

    fn records_where(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.records_at_least(1, what, pred)
    }

    /// Waits until at least `n` records match `pred` (the journal is written after the
    /// request is answered); returns them.
    fn records_at_least(&self, n: usize, what: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        wait_for(what, Duration::from_secs(10), || {
            let recs: Vec<Value> = self.agent.audit_lines().into_iter().filter(&pred).collect();
            if recs.len() < n {
                Err(format!("{:#?}", self.agent.audit_lines()))
            } else {
                Ok(recs)
            }
        })
    }
}

#[test]
fn approve_deny_refuse_and_revoke_over_the_api() {
    let w = web();
    let child = w.psql(&[
        "SELECT id FROM payments WHERE cardholder <> '4111111111111111'",
        "SELECT 'after'",
    ]);
    let list = w.wait_listed(1);
    let p = &list["pending"][0];
    assert_eq!(p["workload"], "payments-mcp");
    assert_eq!(p["rule"]["id"], "bulk-payments-read");
    assert_eq!(p["identity"]["pid"].as_u64(), Some(u64::from(child.id())));
    assert!(
        p["identity"]["cgroup"]
            .as_str()
            .unwrap()
            .contains(&w.cg.rel.trim_start_matches('/').to_string()),
        "{p:#}"
    );
    assert!(
        p["reason"].as_str().unwrap().contains("100 rows sent"),
        "{p:#}"
    );
    assert!(
        p["statement"].as_str().unwrap().contains("payments"),
        "{p:#}"
    );
    assert_eq!(p["may_decide"], true);
    let id = p["id"].as_u64().unwrap();
    assert_eq!(
        p["url"],
        format!("https://localhost:{}/#request-{id}", w.port)
    );
    // Literals (here a card number) never leave the host: the statement is normalised.
    assert!(!list.to_string().contains("4111111111111111"), "{list:#}");
    assert!(p["expires"].as_u64() > list["now"].as_u64());

    // The webhook, Slack-shaped, links the request's page.
    let hook = w
        .hooks
        .recv_timeout(Duration::from_secs(10))
        .expect("the webhook was called");
    let hook: Value = serde_json::from_str(&hook).unwrap();
    assert!(
        hook["text"]
            .as_str()
            .unwrap()
            .contains(&format!("https://localhost:{}/#request-{id}", w.port)),
        "{hook:#}"
    );
    assert!(!hook.to_string().contains("4111111111111111"), "{hook:#}");

    // No token, a wrong token: 401, audited with the caller's address.
    let (code, _, headers) = call(&w, "GET", "/api/v1/approvals", None, None);
    assert_eq!(code, 401);
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{headers}"
    );
    let (code, _, _) = call(
        &w,
        "POST",
        &format!("/api/v1/approvals/{id}/approve"),
        Some("pgw_forged"),
        Some(json!({})),
    );
    assert_eq!(code, 401);
    let unauth = w.records_at_least(2, "two 401s in the journal", |r| {
        r["event"] == "approval.denied" && r["rule"] == "approval.unauthenticated"
    });
    assert!(unauth.len() >= 2, "{unauth:#?}");
    assert!(
        unauth.iter().any(
            |r| r["detail"]["path"] == format!("/api/v1/approvals/{id}/approve")
                && r["error"] == "unknown token"
                && r["detail"]["caller_remote"]
                    .as_str()
                    .unwrap()
                    .starts_with("127.0.0.1:")
        ),
        "{unauth:#?}"
    );
    assert!(
        !serde_json::to_string(&w.agent.audit_lines())
            .unwrap()
            .contains("pgw_forged")
    );

    // A flood of bad tokens cannot flood the journal (and, through the free-space floor, stop
    // the databases' work): past 20 a minute per peer they are counted, not recorded one by
    // one (a summary record follows when the minute is over).
    for _ in 0..30 {
        let (code, _, _) = call(&w, "GET", "/api/v1/approvals", Some("pgw_flood"), None);
        assert_eq!(code, 401);
    }
    std::thread::sleep(Duration::from_millis(500));
    let individual = w
        .agent
        .audit_lines()
        .into_iter()
        .filter(|r| r["rule"] == "approval.unauthenticated")
        .count();
    assert_eq!(individual, 20, "refusals recorded one by one");

    // bob is an approver, but not one this rule names: 403, audited; he sees the request but may not decide it.
    let (_, bobs, _) = call(&w, "GET", "/api/v1/approvals", Some(&w.bob), None);
    assert_eq!(bobs["pending"][0]["may_decide"], false);
    let (code, v, _) = call(
        &w,
        "POST",
        &format!("/api/v1/approvals/{id}/approve"),
        Some(&w.bob),
        Some(json!({"comment": "sure"})),
    );
    assert_eq!(code, 403, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("approver bob (token) may not decide"),
        "{v}"
    );
    let forbidden = w.records_where("bob's 403 in the journal", |r| {
        r["rule"] == "approval.unauthorized" && r["detail"]["caller"] == "bob"
    });
    assert_eq!(forbidden[0]["detail"]["caller_auth"], "token");
    // The workload itself, with a leaked token, may not release its own statement: a caller
    // on this host in a tagged cgroup is refused before its token is even looked at.
    workload_is_refused(&w, in_cgroup(&w.cg.path, "curl"), id);
    let from_workload = w.records_where("the workload's own call in the journal", |r| {
        r["rule"] == "approval.workload_caller"
    });
    assert!(from_workload[0]["detail"]["caller_pid"].as_u64().is_some());
    // A grant longer than the rule allows is refused, and leaves the request waiting.
    let (code, _, _) = call(
        &w,
        "POST",
        &format!("/api/v1/approvals/{id}/approve"),
        Some(&w.alice),
        Some(json!({"for": "1d"})),
    );
    assert_eq!(code, 422);

    // alice approves with a 15-minute grant: the client's statement completes.
    let (code, v, _) = call(
        &w,
        "POST",
        &format!("/api/v1/approvals/{id}/approve"),
        Some(&w.alice),
        Some(json!({"for": "15m", "comment": "ticket 7"})),
    );
    assert_eq!(code, 200, "{v}");
    let (out, err) = finish(child);
    assert!(!err.contains("ERROR"), "{err}");
    assert_eq!(out.lines().count(), 150 + 1, "{out}");
    assert_eq!(out.lines().last(), Some("after"));
    let granted = w.records_where("alice's approval in the journal", |r| {
        r["event"] == "approval.granted"
    });
    let g = &granted[0]["detail"];
    assert_eq!(g["approver"], "alice");
    assert_eq!(g["approver_auth"], "token");
    assert_eq!(g["approver_groups"], json!(["pgwarden-approvers"]));
    assert!(
        g["approver_remote"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{g}"
    );
    assert_eq!(g["comment"], "ticket 7");
    assert_eq!(g["approver_uid"], Value::Null);

    // The grant: listed; bob may not revoke it, alice may.
    let (_, list, _) = call(&w, "GET", "/api/v1/approvals", Some(&w.alice), None);
    let grant = list["grants"][0]["id"].as_u64().expect("an open grant");
    assert_eq!(list["grants"][0]["by"], "alice");
    let (code, _, _) = call(
        &w,
        "DELETE",
        &format!("/api/v1/grants/{grant}"),
        Some(&w.bob),
        None,
    );
    assert_eq!(code, 403);
    let (code, v, _) = call(
        &w,
        "DELETE",
        &format!("/api/v1/grants/{grant}"),
        Some(&w.alice),
        None,
    );
    assert_eq!(code, 200, "{v}");
    let (_, list, _) = call(&w, "GET", "/api/v1/approvals", Some(&w.alice), None);
    assert_eq!(list["grants"], json!([]));
    let revoked = w.records_where("the revocation in the journal", |r| {
        r["event"] == "approval.revoked"
    });
    assert_eq!(revoked[0]["detail"]["revoker"], "alice");
    assert_eq!(revoked[0]["detail"]["grant"], grant);

    // With the grant gone the next bulk read waits again. carol, signed in by the identity
    // provider (an OIDC ID token), denies it: 42501. An expired token of hers, or a valid one
    // of someone the rule does not name, would not have done.
    let child = w.psql(&["SELECT id FROM payments", "SELECT 'alive'"]);
    let id = w.wait_listed(1)["pending"][0]["id"].as_u64().unwrap();
    let deny = format!("/api/v1/approvals/{id}/deny");
    let stale = id_token(&w, "carol", &["pgwarden-approvers"], -3600);
    let (code, v, _) = call(&w, "POST", &deny, Some(&stale), Some(json!({})));
    assert_eq!(code, 401, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("ExpiredSignature"),
        "{v}"
    );
    let outsider = id_token(&w, "dave", &["marketing"], 600);
    let (code, _, _) = call(&w, "POST", &deny, Some(&outsider), Some(json!({})));
    assert_eq!(code, 403);
    let carol = id_token(&w, "carol", &["pgwarden-approvers"], 600);
    let (code, v, _) = call(
        &w,
        "POST",
        &deny,
        Some(&carol),
        Some(json!({"comment": "not without a ticket"})),
    );
    assert_eq!(code, 200, "{v}");
    let (out, err) = finish(child);
    assert!(
        err.contains("42501: pgwarden: approval.denied: bulk-payments-read: denied by carol (not without a ticket)"),
        "{err}"
    );
    assert_eq!(out.lines().last(), Some("alive"));
    let denied = w.records_where("carol's denial", |r| {
        r["event"] == "approval.denied" && r["detail"]["approver"] == "carol"
    });
    assert_eq!(denied[0]["detail"]["approver_auth"], "oidc");
    assert_eq!(
        denied[0]["detail"]["approver_groups"],
        json!(["pgwarden-approvers"])
    );
    // Deciding it again: 404.
    let (code, _, _) = call(
        &w,
        "POST",
        &format!("/api/v1/approvals/{id}/approve"),
        Some(&w.alice),
        Some(json!({})),
    );
    assert_eq!(code, 404);

    // Removing an approver locks them out at once.
    let out = run_output(
        Command::new(w.agent.bin())
            .args(["approvers", "remove", "bob", "--file"])
            .arg(w._dir.path().join("approvers.json")),
    );
    assert!(out.status.success());
    let (code, _, _) = call(&w, "GET", "/api/v1/approvals", Some(&w.bob), None);
    assert_eq!(code, 401);
}

/// chromedriver (and the Chromium it starts) in a network namespace, listening on the
/// namespace's end of the veth; killed on drop.
struct Driver {
    child: Child,
    addr: String,
    port: u16,
}

impl Driver {
    fn start(ns: &TestNetns) -> Self {
        for bin in ["/usr/bin/chromedriver", "/usr/bin/chromium"] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: the browser test needs Debian's chromium and chromium-driver (`cargo xtask setup` installs them)"
            );
        }
        let port = free_port();
        let child = ns
            .command(None, "/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            // Reachable from the test on the host: any client address, any Host header.
            .args(["--allowed-ips=", "--allowed-origins=*"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        wait_for("chromedriver listening", Duration::from_secs(15), || {
            std::net::TcpStream::connect((ns.ns_ip.as_str(), port))
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        Self {
            child,
            addr: ns.ns_ip.clone(),
            port,
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The approver's browser is on "another machine": headless Chromium in its own network
/// namespace, reaching the agent's HTTPS listener on `0.0.0.0` over a veth, as a laptop would
/// over the network.
#[test]
fn a_browser_on_another_machine_approves_a_held_statement() {
    let ns = TestNetns::create();
    let w = web_on(Some(&ns));
    let driver = Driver::start(&ns);
    let child = w.psql(&["SELECT id FROM payments", "SELECT 'after'"]);
    let id = w.wait_listed(1)["pending"][0]["id"].as_u64().unwrap();

    // A tagged process in a container (that same namespace, in the tagged cgroup) holding a
    // leaked token is refused: the agent finds its socket through the namespace it serves.
    workload_is_refused(&w, ns.command_served(&w.cg, "curl"), id);

    let page = format!("https://{}:{}/#request-{id}", ns.host_ip, w.port);
    let shot = std::env::var_os("PGWARDEN_APPROVALS_SCREENSHOT").map_or_else(
        || workspace_root().join("target/approvals-page.png"),
        PathBuf::from,
    );
    let token = w.alice.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use fantoccini::{ClientBuilder, Locator};
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        // The test's certificate is self-signed, as a first install's would be.
        caps.insert("acceptInsecureCerts".into(), json!(true));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1100,900"],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let c = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://{}:{}", driver.addr, driver.port))
            .await
            .expect("a WebDriver session with headless Chromium");
        c.goto(&page).await.unwrap();
        // Signed out: the page asks for the token.
        let input = c.wait().at_most(Duration::from_secs(10)).for_element(Locator::Id("token")).await.unwrap();
        input.send_keys(&token).await.unwrap();
        c.find(Locator::Id("login-button")).await.unwrap().click().await.unwrap();
        let card_css = format!("#request-{id}");
        let card = c
            .wait()
            .at_most(Duration::from_secs(15))
            .for_element(Locator::Css(&card_css))
            .await
            .expect("the held statement's card");
        let text = card.text().await.unwrap();
        for want in ["payments-mcp", "bulk-payments-read", &format!("pid {}", child.id()), "100 rows sent", "SELECT"] {
            assert!(text.contains(want), "the card shows {want:?}: {text}");
        }
        assert!(
            c.find(Locator::Id("who-name")).await.unwrap().text().await.unwrap().contains("alice"),
        );
        card.find(Locator::Css(".comment")).await.unwrap().send_keys("approved in the browser").await.unwrap();
        let png = c.screenshot().await.unwrap();
        if let Some(parent) = shot.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&shot, png).unwrap();
        card.find(Locator::Css(".approve")).await.unwrap().click().await.unwrap();
        c.wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::XPath(&format!("//p[@id='status' and contains(., 'Approved request {id}')]")))
            .await
            .expect("the page confirms the approval");
        c.close().await.unwrap();
    });
    let (out, err) = finish(child);
    assert!(!err.contains("ERROR"), "{err}");
    assert_eq!(out.lines().count(), 150 + 1, "{out}");
    let granted = w.records_where("the browser's approval in the journal", |r| {
        r["event"] == "approval.granted"
    });
    let g = &granted[0]["detail"];
    assert_eq!(g["approver"], "alice");
    assert_eq!(g["approver_auth"], "token");
    assert_eq!(g["comment"], "approved in the browser");
    assert!(
        w.agent
            .audit_lines()
            .iter()
            .all(|r| r["rule"] != "approval.unauthenticated"),
        "the page sent its token with every call"
    );
    eprintln!("screenshot of the page: {}", shot.display());
}
