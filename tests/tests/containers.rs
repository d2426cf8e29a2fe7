//! Tagged workloads in their own network namespace (a container, a pod): the connect hooks
//! rewrite to the interceptor's loopback address, which inside the namespace is the
//! namespace's own, so pgwarden must serve the namespace from inside it. Namespaces and veth
//! pairs on 10.231.0.0/16 are made by the tests (`ip netns`), PostgreSQL listens on the host
//! end, and the clients (psql, psycopg 3, the MCP server) run inside the namespace and a tagged
//! cgroup. Ground truth is PostgreSQL's own view: `inet_client_addr()` and its statement log.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::thread::sleep;
use std::time::{Duration, Instant};

use pgwarden_e2e::{
    Agent, McpServer, PgServer, TestCgroup, TestNetns, agent_config, client_dir, demo_seed_sql,
    policy_path, python_venv, require_root, run_output, unique_name,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

/// PostgreSQL (seeded with the demo's payments, listening on the veth's host end too), an agent
/// with the pci-dss `reader` profile for the cgroup, and the namespace.
struct Rig {
    agent: Option<Agent>,
    pg: PgServer,
    ns: TestNetns,
    cg: TestCgroup,
    dir: tempfile::TempDir,
    config: String,
}

impl Rig {
    fn start(prefix: &str) -> Rig {
        require_root();
        let ns = TestNetns::create();
        let pg = PgServer::start_configured(
            &format!(
                "listen_addresses = '127.0.0.1,::1,{}'\nlog_statement = 'all'\n",
                ns.host_ip
            ),
            Some(
                "local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n\
                 host all all 10.231.0.0/16 trust\n",
            ),
        );
        pg.psql_direct(&demo_seed_sql());
        let cg = TestCgroup::create(&unique_name(prefix));
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("mask.key");
        fs::write(&key, b"containers-e2e-mask-key-0123456789").unwrap();
        let control = dir.path().join("control.sock");
        // Its own pins, kept by name: a successor started after kill -9 adopts them.
        // (bpffs names take no dots.)
        let pins = format!(
            "/sys/fs/bpf/pgwarden-e2e-{}",
            cg.rel.replace(['/', '.'], "-")
        );
        let workloads = format!(
            "  - name: payments-mcp\n    cgroup: \"{}\"\n    policy: {}\n    profile: reader\n",
            cg.rel,
            policy_path("pci-dss.yaml").display()
        );
        let config = agent_config(
            pg.port,
            &control,
            &workloads,
            &format!(
                "mask:\n  hash_key_file: {}\nintercept_unix:\n  - {}\n  - {}\nbpf:\n  pin_dir: {pins}\n",
                key.display(),
                pg.dir.path().display(),
                dir.path().join("view").display()
            ),
        );
        let agent = Some(Agent::start(&config, &control));
        Rig {
            agent,
            pg,
            ns,
            cg,
            dir,
            config,
        }
    }

    fn a(&self) -> &Agent {
        self.agent.as_ref().expect("the agent runs")
    }

    fn control(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    fn ctx(&self) -> String {
        format!(
            "--- agent log ---\n{}\n--- pg.log (tail) ---\n{}",
            self.agent.as_ref().map(Agent::log).unwrap_or_default(),
            tail(&self.pg.log(), 30)
        )
    }

    /// psql inside the namespace (tagged when `tagged`) to PostgreSQL's host-side address.
    /// psql in the namespace; tagged, once the agent serves the namespace.
    fn psql(&self, tagged: bool, sql: &str) -> Output {
        self.psql_in(tagged, tagged, sql)
    }

    /// Tagged psql in the namespace at once, served or not.
    fn psql_unserved(&self, sql: &str) -> Output {
        self.psql_in(true, false, sql)
    }

    fn psql_in(&self, tagged: bool, wait: bool, sql: &str) -> Output {
        let mut cmd = self.ns.command_in(
            tagged.then_some(&self.cg),
            &pgwarden_e2e::pg_bin("psql").to_string_lossy(),
            wait,
        );
        cmd.args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-d"])
            .arg(self.pg.url(&self.ns.host_ip))
            .args(["-c", sql]);
        run_output(&mut cmd)
    }

    /// The journal's records.
    fn journal(&self) -> Vec<Value> {
        let path = self.a().tmp_dir().join("audit.jsonl");
        fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The namespaces `pgwarden status` says it serves.
    fn served(&self) -> Vec<u64> {
        self.a().status()["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["netns"].as_u64())
            .collect()
    }

    fn wait_served(&self, want: bool) {
        let deadline = Instant::now() + WAIT;
        while self.served().contains(&self.ns.id()) != want {
            assert!(
                Instant::now() < deadline,
                "namespace {} is {}served after {WAIT:?}: {:#}\n{}",
                self.ns.id(),
                if want { "not " } else { "still " },
                self.a().status()["namespaces"],
                self.ctx()
            );
            sleep(Duration::from_millis(100));
        }
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn out_text(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The first five seeded card numbers, read directly.
fn real_pans(pg: &PgServer) -> Vec<String> {
    pg.psql_direct("SELECT card_number FROM payments ORDER BY id LIMIT 5")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Masked as `pan` masks: the first six and last four digits kept, the rest `*`.
fn masked(pan: &str) -> bool {
    pan.contains("***") && pan.chars().filter(char::is_ascii_digit).count() == 10
}

#[test]
fn a_tagged_process_in_its_own_network_namespace_goes_through_pgwarden() {
    let r = Rig::start("pgw-e2e-netns");
    let pans = real_pans(&r.pg);
    assert_eq!(pans.len(), 5);

    // Untagged, in the same namespace: straight to PostgreSQL, untouched.
    let before = r.a().status()["counters"]["redirected"].as_u64().unwrap();
    let out = r.psql(
        false,
        "SELECT inet_client_addr(), card_number FROM payments ORDER BY id LIMIT 1",
    );
    assert!(
        out.status.success(),
        "untagged psql in the namespace failed\n{}\n{}",
        out_text(&out),
        r.ctx()
    );
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        line,
        format!("{}|{}", r.ns.ns_ip, pans[0]),
        "untagged: {}",
        out_text(&out)
    );
    assert_eq!(
        r.a().status()["counters"]["redirected"].as_u64().unwrap(),
        before,
        "an untagged connect was redirected\n{}",
        r.ctx()
    );

    // Tagged: entering the cgroup from inside the namespace makes the agent serve it (the
    // kernel's attach event), and the connect lands, under the reader policy.
    let out = r.psql(
        true,
        "SELECT inet_client_addr(), card_number FROM payments ORDER BY id LIMIT 5",
    );
    assert!(
        out.status.success(),
        "tagged psql in the namespace failed\n{}\n{}",
        out_text(&out),
        r.ctx()
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<(&str, &str)> = stdout.lines().filter_map(|l| l.split_once('|')).collect();
    assert_eq!(rows.len(), 5, "{}", out_text(&out));
    for (addr, pan) in &rows {
        // PostgreSQL saw the connection come from inside the namespace: pgwarden connected
        // from there, so the address meant what it meant to the client.
        assert_eq!(*addr, r.ns.ns_ip, "{}", out_text(&out));
        assert!(
            masked(pan),
            "card number not masked: {pan}\n{}",
            out_text(&out)
        );
    }
    for pan in &pans {
        assert!(
            !stdout.contains(pan.as_str()),
            "a full card number reached the tagged client"
        );
    }
    assert!(r.served().contains(&r.ns.id()), "{}", r.ctx());

    // Refused by policy, ground truth from the table and the statement log.
    let out = r.psql(true, "DROP TABLE payments");
    assert!(
        !out.status.success(),
        "DROP TABLE was not refused\n{}",
        out_text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("class.ddl"),
        "{}",
        out_text(&out)
    );
    assert_eq!(r.pg.psql_direct("SELECT count(*) FROM payments"), "300");
    assert!(!r.pg.log().contains("DROP TABLE payments"), "{}", r.ctx());

    // Audited with the namespace in the identity.
    let journal = r.journal();
    let starts: Vec<&Value> = journal
        .iter()
        .filter(|rec| rec["event"] == "session.start" && rec["server"]["ip"] == r.ns.host_ip)
        .collect();
    assert_eq!(
        starts.len(),
        2,
        "session.start records: {starts:#?}\n{}",
        r.ctx()
    );
    for s in &starts {
        assert_eq!(s["actor"]["netns"], r.ns.id(), "{s:#}");
        assert_eq!(s["actor"]["cgroup"], format!("/{}", r.cg.rel), "{s:#}");
        assert_eq!(s["workload"], "payments-mcp", "{s:#}");
        assert_eq!(s["server"]["port"], r.pg.port, "{s:#}");
    }
    assert!(
        journal
            .iter()
            .any(|rec| rec["event"] == "query.denied" && rec["rule"] == "class.ddl"),
        "{}",
        r.ctx()
    );
}

#[test]
fn psycopg_and_the_mcp_server_in_a_namespace_are_intercepted() {
    let r = Rig::start("pgw-e2e-netns-clients");
    let pans = real_pans(&r.pg);
    let url = r.pg.url(&r.ns.host_ip);

    // psycopg 3 (its own test script is for allow-all; here a masked read under reader).
    let python = python_venv().join("bin").join("python");
    assert!(
        python.is_file(),
        "{} is missing: run `cargo xtask setup`",
        python.display()
    );
    let script = "import psycopg, sys\n\
                  with psycopg.connect(sys.argv[1]) as c:\n\
                  \x20   for row in c.execute('SELECT host(inet_client_addr()), card_number FROM payments ORDER BY id LIMIT 3'):\n\
                  \x20       print(row[0], row[1])\n";
    let mut cmd = r.ns.command_served(&r.cg, &python.to_string_lossy());
    cmd.args(["-c", script]).arg(&url);
    let out = run_output(&mut cmd);
    assert!(
        out.status.success(),
        "psycopg in the namespace failed\n{}\n{}",
        out_text(&out),
        r.ctx()
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(stdout.lines().count(), 3, "{}", out_text(&out));
    for line in stdout.lines() {
        let (addr, pan) = line.split_once(' ').unwrap();
        assert_eq!(addr, r.ns.ns_ip, "{line}");
        assert!(masked(pan), "psycopg got an unmasked card number: {line}");
    }

    // The MCP server, unmodified, inside the namespace and the cgroup.
    let node = which("node");
    let server =
        client_dir("mcp").join("node_modules/@modelcontextprotocol/server-postgres/dist/index.js");
    assert!(
        server.is_file(),
        "{} is missing: run `cargo xtask setup`",
        server.display()
    );
    let mut cmd = r.ns.command_served(&r.cg, &node.to_string_lossy());
    cmd.arg(&server).arg(&url);
    let mut mcp = McpServer::spawn(cmd).unwrap();
    mcp.initialize("pgwarden-e2e-netns").unwrap();
    let rows = mcp
        .query("SELECT id, card_number FROM payments ORDER BY id LIMIT 5")
        .unwrap()
        .unwrap_or_else(|e| panic!("the MCP server's read failed: {e:?}\n{}", r.ctx()));
    let text = rows.to_string();
    let rows = rows.as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 5, "{text}");
    for row in &rows {
        assert!(masked(row["card_number"].as_str().unwrap()), "{row}");
    }
    for pan in &pans {
        assert!(
            !text.contains(pan.as_str()),
            "a full card number reached the MCP server"
        );
    }
    let denied = mcp.query("SELECT * FROM secrets").unwrap();
    assert!(
        matches!(&denied, Err(e) if format!("{e:?}").contains("table.denied")),
        "{denied:?}"
    );
    let pid = mcp.pid();
    let status = r.a().status();
    let session = status["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["identity"]["pid"].as_u64() == Some(u64::from(pid)))
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no session of the MCP server (pid {pid}): {status:#}\n{}",
                r.ctx()
            )
        });
    assert_eq!(session["identity"]["netns"], r.ns.id(), "{session:#}");
    assert_eq!(session["identity"]["comm"], "node", "{session:#}");
    drop(mcp);
}

#[test]
fn a_unix_socket_seen_through_another_mount_namespace_is_intercepted() {
    let r = Rig::start("pgw-e2e-netns-unix");
    let pans = real_pans(&r.pg);
    // Its own network *and* mount namespace, where PostgreSQL's socket directory is
    // bind-mounted at a path that is empty on the host (`view`), as a container sees a host
    // socket: the redirect target is an abstract name in the network namespace, and pgwarden
    // can only reach the socket through the client's root.
    let view = r.dir.path().join("view");
    fs::create_dir(&view).unwrap();
    let psql = pgwarden_e2e::pg_bin("psql");
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", r.ns.path().display()))
        .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
        // The agent opens its listeners in a namespace once the kernel reports the first tagged
        // process there (milliseconds; a connect before that is refused, never direct): wait
        // for its abstract socket to appear in this namespace, at most 10 s, then connect.
        .arg(concat!(
            r#"mount --bind "$1" "$2" && echo 0 > "$0/cgroup.procs" && "#,
            r#"i=0; until grep -q '@pgwarden/' /proc/net/unix; do i=$((i+1)); "#,
            r#"[ $i -gt 500 ] && echo 'the agent never listened in this namespace' >&2 && exit 3; "#,
            r#"sleep 0.02; done; shift 2 && exec "$@""#
        ))
        .arg(&r.cg.path)
        .arg(r.pg.dir.path())
        .arg(&view)
        .arg(&psql)
        .args(["-X", "-At", "-h"])
        .arg(&view)
        .args([
            "-p",
            &r.pg.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
        ])
        .arg("SELECT card_number FROM payments ORDER BY id LIMIT 2");
    let out = run_output(&mut cmd);
    assert!(
        out.status.success(),
        "psql over the Unix socket in the namespaces failed\n{}\n{}",
        out_text(&out),
        r.ctx()
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(stdout.lines().count(), 2, "{}", out_text(&out));
    assert!(stdout.lines().all(masked), "{}", out_text(&out));
    assert!(!stdout.contains(pans[0].as_str()));
    assert!(
        fs::read_dir(&view).unwrap().next().is_none(),
        "the bind mount leaked into the host's mount namespace"
    );
    let sock = view.join(format!(".s.PGSQL.{}", r.pg.port));
    let start = r
        .journal()
        .into_iter()
        .find(|rec| rec["event"] == "session.start" && rec["server"]["path"].is_string())
        .unwrap_or_else(|| panic!("no Unix session in the journal\n{}", r.ctx()));
    assert_eq!(
        start["server"]["path"],
        sock.to_string_lossy().as_ref(),
        "{start:#}"
    );
    assert_eq!(start["actor"]["netns"], r.ns.id(), "{start:#}");
}

#[test]
fn namespace_listeners_close_with_the_namespace_and_survive_an_agent_restart() {
    let mut r = Rig::start("pgw-e2e-netns-life");
    // A long-lived tagged process in the namespace: the namespace is served.
    let mut sleeper =
        r.ns.command(Some(&r.cg), "sleep")
            .arg("120")
            .spawn()
            .unwrap();
    r.wait_served(true);

    // kill -9: tagged connects from the namespace are refused, never direct.
    r.agent.take().unwrap().kill9();
    let marker = format!("netns-down-marker-{}", std::process::id());
    let out = r.psql_unserved(&format!("SELECT '{marker}'"));
    assert!(
        !out.status.success(),
        "a tagged connect got through while the agent was down\n{}",
        out_text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{}",
        out_text(&out)
    );
    assert!(
        !r.pg.log().contains(&marker),
        "the statement reached PostgreSQL without pgwarden"
    );

    // A successor adopts the pins and serves the running namespace before it is ready.
    let control = r.control();
    r.agent = Some(Agent::start(&r.config, &control));
    assert!(
        r.served().contains(&r.ns.id()),
        "the restarted agent did not serve the running namespace when ready: {:#}\n{}",
        r.a().status()["namespaces"],
        r.ctx()
    );
    let out = r.psql(true, "SELECT inet_client_addr()");
    assert!(out.status.success(), "{}\n{}", out_text(&out), r.ctx());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r.ns.ns_ip);

    // The last tagged process leaves: the listeners close (at the next rescan, 2 s here).
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    r.wait_served(false);
    let out = r.psql(false, "SELECT 1");
    assert!(
        out.status.success(),
        "untagged after cleanup: {}",
        out_text(&out)
    );
}

fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
}

/// A real container: Podman (runc; crun refuses this hybrid cgroup layout) runs psql from the
/// host's root filesystem (an overlay, so no image registry is needed) in the test's network
/// namespace, with its cgroup under the tagged one (`--cgroup-parent`), as a container runtime
/// on a database host would.
#[test]
fn a_podman_container_is_intercepted_with_its_container_id() {
    let r = Rig::start("pgw-e2e-podman");
    let pans = real_pans(&r.pg);
    let podman = which("podman");
    let conf = r.dir.path().join("containers.conf");
    // The container keeps the test's own limits: raising them needs CAP_SYS_RESOURCE.
    fs::write(
        &conf,
        "[containers]\ndefault_ulimits = []\npids_limit = 0\n",
    )
    .unwrap();
    let cidfile = r.dir.path().join("cid");
    let psql = pgwarden_e2e::pg_bin("psql");
    let url = r.pg.url(&r.ns.host_ip);
    // Until pgwarden serves a new namespace its tagged connects are refused (never direct), so
    // the container's client retries, as clients of a starting database do.
    let script = format!(
        "for i in $(seq 20); do {} -X -At -d '{url}' -c 'SELECT host(inet_client_addr()), card_number \
         FROM payments ORDER BY id LIMIT 3' && exit 0; sleep 0.25; done; exit 1",
        psql.display()
    );
    let out = run_output(
        Command::new(&podman)
            .env("CONTAINERS_CONF", &conf)
            .args(["--runtime", "runc", "run", "--rm", "--network"])
            .arg(format!("ns:{}", r.ns.path().display()))
            .arg("--cgroup-parent")
            .arg(format!("/{}", r.cg.rel))
            .arg("--cidfile")
            .arg(&cidfile)
            .args(["--rootfs", "/:O", "/bin/sh", "-c"])
            .arg(&script),
    );
    // Podman leaves its cgroup-v1 parents behind (the unified one goes with the TestCgroup).
    for hierarchy in fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = fs::remove_dir(hierarchy.path().join(&r.cg.rel));
    }
    assert!(
        out.status.success(),
        "psql in the podman container failed\n{}\n{}",
        out_text(&out),
        r.ctx()
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<(&str, &str)> = stdout.lines().filter_map(|l| l.split_once('|')).collect();
    assert_eq!(rows.len(), 3, "{}", out_text(&out));
    for (addr, pan) in &rows {
        assert_eq!(*addr, r.ns.ns_ip, "{}", out_text(&out));
        assert!(masked(pan), "{}", out_text(&out));
    }
    assert!(!pans.iter().any(|p| stdout.contains(p.as_str())));
    let cid = fs::read_to_string(&cidfile)
        .unwrap_or_default()
        .trim()
        .to_owned();
    assert_eq!(cid.len(), 64, "podman's container id: {cid:?}");
    let start = r
        .journal()
        .into_iter()
        .find(|rec| rec["event"] == "session.start" && rec["actor"]["container"].is_string())
        .unwrap_or_else(|| panic!("no session with a container id in the journal\n{}", r.ctx()));
    assert_eq!(start["actor"]["container"], cid.as_str(), "{start:#}");
    assert_eq!(start["actor"]["netns"], r.ns.id(), "{start:#}");
    assert_eq!(start["workload"], "payments-mcp", "{start:#}");
}
