//! Forwarding the journal off the host, end to end: a tagged psql's statements (one carrying a
//! card number, one refused) reach a real rsyslog over TCP and over TLS as RFC 5424 and an
//! HTTP collector as OCSF; the collector's outage, a collector answering 503 and the agent's
//! kill -9 lose nothing. The ground truth is the journal file itself: every seq it holds must
//! arrive, each exactly as stored (same chain hash), and no card number in any of it.
use std::collections::BTreeMap;
use std::io::{BufReader, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwarden_e2e::{
    Agent, PgServer, Rsyslog, TestCgroup, card_numbers_in, free_port, policy_path, psql_session,
    read_http_request, require_root, run_output, unique_name, wait_for,
};
use serde_json::Value;

/// The journal's records, parsed, by seq (rotated files included).
fn journal(path: &Path) -> BTreeMap<u64, Value> {
    pgwarden_e2e::journal_files(path)
        .iter()
        .flat_map(|f| {
            String::from_utf8_lossy(&pgwarden_e2e::journal_bytes(f))
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .collect::<Vec<_>>()
        })
        .map(|v| (v["seq"].as_u64().unwrap(), v))
        .collect()
}

/// A config with `forward` (YAML list items, indented by 4) and the journal in `dir`.
fn config(pg: &PgServer, cg: &TestCgroup, dir: &Path, forward: &str) -> (String, PathBuf) {
    let control = dir.join("control.sock");
    let key = dir.join("mask.key");
    std::fs::write(&key, b"forward-test-key-0123456789abcdef").unwrap();
    let config = format!(
        "mask:\n  hash_key_file: {key}\nlisten:\n  ipv4: 127.0.0.1:{listen}\n  ipv6: null\ncontrol:\n  socket: {control}\n\
         intercept: [\"*:{pgport}\"]\n\
         workloads:\n  - name: payments-mcp\n    cgroup: \"{cg}\"\n    policy: {policy}\n    profile: reader\n\
         bpf:\n  pin_dir: /sys/fs/bpf/{pins}\n\
         audit:\n  path: {journal}\n  state_dir: {state}\n  max_bytes: 65536\n  forward:\n{forward}",
        pins = unique_name("pgwarden-test-fwd"),
        key = key.display(),
        listen = free_port(),
        control = control.display(),
        pgport = pg.port,
        cg = cg.rel,
        policy = policy_path("pci-dss.yaml").display(),
        journal = dir.join("audit.jsonl").display(),
        state = dir.join("state").display(),
    );
    (config, control)
}

/// A tagged psql session with a card number in a literal and a refused statement.
fn statements(pg: &PgServer, cg: &TestCgroup, n: u32) {
    let url = pg.url("127.0.0.1");
    let (out, err) = psql_session(
        &cg.path,
        &url,
        &[
            &format!("SELECT id, merchant FROM payments WHERE id <= {n}"),
            "SELECT count(*) FROM payments WHERE card_number = '4111111111111111'",
            "DELETE FROM payments",
        ],
    );
    assert!(err.contains("42501"), "the DELETE is refused: {out}\n{err}");
}

/// The RFC 5424 messages of an rsyslog output file: (SD params, MSG) per line.
fn syslog_messages(text: &str, sd_id: &str) -> Vec<(BTreeMap<String, String>, String)> {
    text.lines()
        .map(|l| {
            assert!(l.starts_with('<'), "PRI first: {l}");
            let rest = l
                .split_once(">1 ")
                .unwrap_or_else(|| panic!("VERSION 1: {l}"))
                .1;
            // TIMESTAMP HOSTNAME APP-NAME PROCID MSGID, then SD.
            let mut head = rest.splitn(6, ' ');
            let ts = head.next().unwrap();
            assert!(ts.ends_with('Z') && ts.contains('T'), "RFC 3339 time: {l}");
            let _host = head.next().unwrap();
            assert_eq!(head.next(), Some("pgwarden"), "APP-NAME: {l}");
            let _procid = head.next();
            let msgid = head.next().unwrap();
            let sd_and_msg = head.next().unwrap();
            let open = format!("[{sd_id} ");
            assert!(sd_and_msg.starts_with(&open), "SD-ID {sd_id}: {l}");
            let (sd, msg) = split_sd(&sd_and_msg[open.len()..]);
            let mut params = parse_params(sd);
            params.insert("MSGID".into(), msgid.to_owned());
            (params, msg.trim_start_matches('\u{feff}').to_owned())
        })
        .collect()
}

/// Splits `PARAMS] MSG` at the `]` that closes the element (escaped `\]` does not).
fn split_sd(s: &str) -> (&str, &str) {
    let b = s.as_bytes();
    let (mut i, mut quoted) = (0, false);
    while i < b.len() {
        match b[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b']' if !quoted => return (&s[..i], s[i + 1..].trim_start()),
            _ => {}
        }
        i += 1;
    }
    panic!("unterminated SD element: {s}");
}

/// `name="value" ...` with RFC 5424's escapes undone.
fn parse_params(sd: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = sd.trim();
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").unwrap();
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(e);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(name.trim().to_owned(), value);
        rest = after[end..].trim_start();
    }
    out
}

#[test]
fn records_reach_rsyslog_over_tcp_and_tls_as_rfc5424_exactly_as_stored() {
    require_root();
    let rs = Rsyslog::start();
    let pg = PgServer::start();
    pg.seed_payments(20);
    let cg = TestCgroup::create(&unique_name("pgw-e2e-fwd-syslog"));
    let dir = tempfile::tempdir().unwrap();
    let forward = format!(
        "    - name: siem-tcp\n      syslog: {{address: '127.0.0.1:{tcp}'}}\n      enterprise_id: 99999\n\
         \x20   - name: siem-tls\n      syslog:\n        address: '127.0.0.1:{tls}'\n        tls: {{ca: {ca}, server_name: localhost}}\n",
        tcp = rs.tcp_port,
        tls = rs.tls_port,
        ca = rs.cert.cert.display(),
    );
    let (yaml, control) = config(&pg, &cg, dir.path(), &forward);
    let agent = Agent::start(&yaml, &control);
    statements(&pg, &cg, 5);
    let journal_path = dir.path().join("audit.jsonl");
    let records = journal(&journal_path);
    let last = *records.keys().last().unwrap();
    for (input, sd_id) in [("tcp", "pgwarden@99999"), ("tls", "pgwarden@32473")] {
        let got = wait_for(
            &format!("rsyslog's {input} input has every record up to {last}"),
            Duration::from_secs(30),
            || {
                let text = rs.received(input);
                let msgs = syslog_messages(&text, sd_id);
                let seqs: Vec<u64> = msgs
                    .iter()
                    .map(|(p, _)| p["seq"].parse().unwrap())
                    .collect();
                if seqs.contains(&last) {
                    Ok(msgs)
                } else {
                    Err(format!(
                        "{text}\n--- rsyslogd ---\n{}\n--- agent ---\n{}",
                        rs.log(),
                        agent.log()
                    ))
                }
            },
        );
        // Read again: whatever a collector has, the journal had first.
        let records = journal(&journal_path);
        let mut seen = BTreeMap::new();
        for (params, msg) in &got {
            let seq: u64 = params["seq"].parse().unwrap();
            let stored = &records[&seq];
            // MSG is the stored record: its chain hash can be checked at the collector.
            let sent: Value = serde_json::from_str(msg).unwrap_or_else(|e| panic!("{e}: {msg}"));
            assert_eq!(&sent, stored, "seq {seq} arrives exactly as stored");
            assert_eq!(params["hash"], stored["hash"].as_str().unwrap());
            assert_eq!(params["MSGID"], stored["event"].as_str().unwrap());
            seen.insert(seq, params.clone());
        }
        let want: Vec<u64> = (1..=*seen.keys().last().unwrap()).collect();
        assert_eq!(
            seen.keys().copied().collect::<Vec<_>>(),
            want,
            "{input}: every record, in order"
        );
        // The refused DELETE: denied, with its rule and SQLSTATE, and the tagged process.
        let denied = seen
            .values()
            .find(|p| p["MSGID"] == "query.denied")
            .unwrap_or_else(|| panic!("{input}: a query.denied message"));
        assert_eq!(denied["sqlstate"], "42501");
        if let Some(line) = rs
            .received(input)
            .lines()
            .find(|l| l.contains(" query.denied "))
        {
            eprintln!("a refusal as rsyslog's {input} input wrote it:\n{line}");
        }
        assert_eq!(denied["workload"], "payments-mcp");
        let text = rs.received(input);
        assert!(
            card_numbers_in(&text).is_empty(),
            "no card number in what {input} received: {:?}",
            card_numbers_in(&text)
        );
        assert!(
            text.contains("card_number = $1"),
            "the statement arrives with its literal as a placeholder"
        );
    }
    // status: both targets in step once the collector's kernel acknowledged the last batch.
    wait_for(
        "status shows both targets in step",
        Duration::from_secs(10),
        || {
            let status = agent.status();
            let fwd = status["audit"]["forward"].as_array().unwrap().clone();
            let ok = fwd.len() == 2
                && fwd.iter().all(|t| {
                    t["state"] == "ok"
                        && t["delivered_seq"].as_u64().unwrap() >= last
                        && t["failures"] == 0
                });
            if ok { Ok(()) } else { Err(status.to_string()) }
        },
    );
    // `audit export --format rfc5424` prints the same messages the forwarder sends.
    let out = run_output(
        Command::new(agent.bin())
            .args(["audit", "export", "--format", "rfc5424", "--file"])
            .arg(&journal_path),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        exported.lines().count() as u64,
        journal(&journal_path).len() as u64
    );
    assert!(card_numbers_in(&exported).is_empty());
}

/// An HTTP collector on a fixed port that can be stopped (connections refused), made to
/// answer 503, and started again: what it took, by seq, with every copy of each.
struct Collector {
    port: u16,
    got: Arc<Mutex<BTreeMap<u64, Vec<Value>>>>,
    requests: Arc<Mutex<Vec<String>>>,
    failing: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    fn new() -> Self {
        let mut c = Collector {
            port: free_port(),
            got: Arc::default(),
            requests: Arc::default(),
            failing: Arc::default(),
            stop: Arc::default(),
            thread: None,
        };
        c.start();
        c
    }

    fn start(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        self.stop.store(false, Ordering::SeqCst);
        let (got, requests, failing, stop) = (
            Arc::clone(&self.got),
            Arc::clone(&self.requests),
            Arc::clone(&self.failing),
            Arc::clone(&self.stop),
        );
        self.thread = Some(std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let (head, body) = read_http_request(&mut reader);
                requests.lock().unwrap().push(head);
                if failing.load(Ordering::SeqCst) > 0 {
                    failing.fetch_sub(1, Ordering::SeqCst);
                    let _ = conn.write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy",
                    );
                    continue;
                }
                let mut got = got.lock().unwrap();
                for line in String::from_utf8_lossy(&body).lines() {
                    let v: Value = serde_json::from_str(line).unwrap();
                    let seq = v["metadata"]["uid"]
                        .as_str()
                        .and_then(|u| u.rsplit_once(':'))
                        .and_then(|(_, s)| s.parse().ok())
                        .unwrap_or_else(|| panic!("metadata.uid ends in the seq: {v}"));
                    got.entry(seq).or_default().push(v);
                }
                drop(got);
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        }));
    }

    /// Stops taking connections: the port refuses them from now on.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    fn seqs(&self) -> Vec<u64> {
        self.got.lock().unwrap().keys().copied().collect()
    }
}

#[test]
fn an_http_collector_outage_and_an_agent_crash_lose_no_record() {
    require_root();
    let pg = PgServer::start();
    pg.seed_payments(20);
    let cg = TestCgroup::create(&unique_name("pgw-e2e-fwd-http"));
    let dir = tempfile::tempdir().unwrap();
    let mut collector = Collector::new();
    let token = dir.path().join("hec.token");
    std::fs::write(&token, "Splunk 0f8c6e1c-secret-token\n").unwrap();
    let forward = format!(
        "    - name: vector\n      http: {{url: 'http://127.0.0.1:{port}/ingest', authorization_file: {token}}}\n      batch: 7\n      timeout: 2s\n",
        port = collector.port,
        token = token.display(),
    );
    let (yaml, control) = config(&pg, &cg, dir.path(), &forward);
    let journal_path = dir.path().join("audit.jsonl");
    let agent = Agent::start(&yaml, &control);
    statements(&pg, &cg, 3);
    let in_step = |c: &Collector, what: &str| {
        wait_for(what, Duration::from_secs(60), || {
            let last = *journal(&journal_path).keys().last().unwrap();
            let seqs = c.seqs();
            if seqs.last().is_some_and(|s| *s >= last) {
                Ok(last)
            } else {
                Err(format!(
                    "collector has {:?}, journal ends at {last}",
                    seqs.last()
                ))
            }
        })
    };
    in_step(&collector, "the collector has everything before the outage");

    // The collector goes away while the workload goes on.
    collector.stop();
    for n in 0..4 {
        statements(&pg, &cg, n + 1);
    }
    let status = wait_for(
        "status shows the target failing",
        Duration::from_secs(20),
        || {
            let s = agent.status();
            let t = s["audit"]["forward"][0].clone();
            if t["state"] == "failing" && t["lag"].as_u64().unwrap_or(0) > 0 {
                Ok(t)
            } else {
                Err(t.to_string())
            }
        },
    );
    assert!(
        status["last_error"].as_str().unwrap().contains("connect"),
        "{status}"
    );
    // Back, but busy for two requests.
    collector.failing.store(2, Ordering::SeqCst);
    collector.start();
    in_step(&collector, "the collector has everything after the outage");

    // kill -9 mid-stream: a new agent resumes from the cursor.
    statements(&pg, &cg, 2);
    agent.kill9();
    let agent = Agent::start(&yaml, &control);
    statements(&pg, &cg, 4);
    in_step(
        &collector,
        "the collector has everything after the agent's restart",
    );
    // Every record of the journal, none lost (compared once both have settled).
    let (records, got) = wait_for(
        "the collector holds exactly the journal's seqs",
        Duration::from_secs(30),
        || {
            let records = journal(&journal_path);
            let got = collector.got.lock().unwrap().clone();
            if got.keys().eq(records.keys()) {
                Ok((records, got))
            } else {
                let lost: Vec<_> = records.keys().filter(|k| !got.contains_key(k)).collect();
                Err(format!("not received: {lost:?}"))
            }
        },
    );
    let want: Vec<u64> = records.keys().copied().collect();
    if let Some(denied) = got
        .values()
        .flatten()
        .find(|v| v["metadata"]["event_code"] == "query.denied")
    {
        eprintln!("a refusal as the collector got it:\n{denied:#}");
    }
    let mut resent = 0;
    for (seq, copies) in &got {
        // A record sent twice is the same record: same seq, same body.
        assert!(
            copies.windows(2).all(|w| w[0] == w[1]),
            "seq {seq}: {copies:?}"
        );
        resent += copies.len() - 1;
        let ocsf = &copies[0];
        assert!(
            ocsf["raw_data_hash"]
                .to_string()
                .contains(records[seq]["hash"].as_str().unwrap()),
            "seq {seq}: raw_data_hash carries the chain hash: {ocsf}"
        );
    }
    // The restart resumes from the cursor, not from the start.
    assert!(
        resent < want.len() / 2,
        "{resent} of {} records sent twice",
        want.len()
    );
    // The journal says when the target failed and when it took records again.
    let events: Vec<&Value> = records
        .values()
        .filter(|r| r["event"] == "audit.forward")
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["detail"]["state"] == "failing" && e["detail"]["target"] == "vector"),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e["detail"]["state"] == "recovered"),
        "{events:?}"
    );
    // The token went to the collector and nowhere else.
    let requests = collector.requests.lock().unwrap().join("");
    assert!(requests.contains("0f8c6e1c-secret-token"), "{requests}");
    let journal_text: String = pgwarden_e2e::journal_files(&journal_path)
        .iter()
        .map(|f| String::from_utf8_lossy(&pgwarden_e2e::journal_bytes(f)).into_owned())
        .collect();
    for (what, text) in [
        ("journal", journal_text.clone()),
        ("agent log", agent.log()),
        ("status", agent.status().to_string()),
    ] {
        assert!(!text.contains("0f8c6e1c"), "the token is in the {what}");
    }
    let bodies: String = got.values().flatten().map(Value::to_string).collect();
    assert!(
        card_numbers_in(&bodies).is_empty(),
        "no card number sent: {:?}",
        card_numbers_in(&bodies)
    );
    assert!(card_numbers_in(&journal_text).is_empty());
    // The metrics endpoint is not configured here; the lag is in status.
    assert_eq!(agent.status()["audit"]["forward"][0]["lag"], 0);
}
