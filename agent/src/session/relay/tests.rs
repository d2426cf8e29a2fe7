//! The relay's state machine over in-process socket pairs: a scripted PostgreSQL backend on one
//! end (it keeps a statement log of what really reached it, as `log_statement = all` would),
//! a scripted client on the other, and the real journal, policy engine and masks in between.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::{BufMut as _, Bytes, BytesMut};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;

use super::run;
use crate::approval::Approvals;
use crate::audit::{Journal, fixtures};
use crate::config::{Config, LimitsConfig, ListenOnlyConfig, UpstreamConfig};
use crate::names::{ClientAddr, ListenAddr, OrigDstAddr, SessionId, SockAddr, WorkloadName};
use crate::policy::Engine;
use crate::session::{Conn, DbParams, Origins, Registry, SessionEnv, SessionMeta};
use crate::tags::Tagger;
use crate::wire::encode;

/// Test card numbers (Luhn-valid, from the card schemes' test ranges).
const PAN: &str = "4111111111111111";
/// The table OID and column number the fake catalog gives `public.payments.card_number`.
const CARD_OID: u32 = 16_400;
const CARD_ATTNUM: i16 = 2;

fn msg(tag: u8, body: impl FnOnce(&mut BytesMut)) -> Bytes {
    encode::frame(tag, body).bytes
}

/// A RowDescription of one text column from (table OID, column number).
fn row_description(name: &str, oid: u32, attnum: i16) -> Bytes {
    msg(b'T', |b| {
        b.put_i16(1);
        encode::cstr(b, name);
        b.put_u32(oid);
        b.put_i16(attnum);
        b.put_u32(25);
        b.put_i16(-1);
        b.put_i32(-1);
        b.put_i16(0);
    })
}

fn row_description_n(names: &[&str]) -> Bytes {
    msg(b'T', |b| {
        b.put_i16(i16::try_from(names.len()).unwrap());
        for n in names {
            encode::cstr(b, n);
            b.put_u32(0);
            b.put_i16(0);
            b.put_u32(25);
            b.put_i16(-1);
            b.put_i32(-1);
            b.put_i16(0);
        }
    })
}

fn data_row(values: &[&str]) -> Bytes {
    msg(b'D', |b| {
        b.put_i16(i16::try_from(values.len()).unwrap());
        for v in values {
            b.put_i32(i32::try_from(v.len()).unwrap());
            b.put_slice(v.as_bytes());
        }
    })
}

fn complete(tag: &str) -> Bytes {
    msg(b'C', |b| encode::cstr(b, tag))
}

/// A scripted PostgreSQL backend: authentication, then answers to simple queries and
/// fast-path calls. Every Query text it receives goes into `log`.
async fn fake_server(mut s: UnixStream, log: Arc<Mutex<Vec<String>>>) {
    let len = s.read_i32().await.unwrap();
    let mut startup = vec![0; usize::try_from(len).unwrap() - 4];
    s.read_exact(&mut startup).await.unwrap();
    let mut out = BytesMut::new();
    out.put_slice(&msg(b'R', |b| b.put_i32(0)));
    out.put_slice(&msg(b'S', |b| {
        encode::cstr(b, "standard_conforming_strings");
        encode::cstr(b, "on");
    }));
    out.put_slice(&msg(b'K', |b| {
        b.put_i32(4242);
        b.put_i32(7);
    }));
    out.put_slice(&encode::ready_for_query(b'I'));
    s.write_all(&out).await.unwrap();
    loop {
        let Ok(tag) = s.read_u8().await else { return };
        let len = s.read_i32().await.unwrap();
        let mut body = vec![0; usize::try_from(len).unwrap() - 4];
        s.read_exact(&mut body).await.unwrap();
        let mut out = BytesMut::new();
        match tag {
            b'Q' => {
                let sql = String::from_utf8_lossy(&body[..body.len() - 1]).into_owned();
                log.lock().unwrap().push(sql.clone());
                if sql.contains("resolving masked columns") {
                    out.put_slice(&row_description_n(&["oid", "attnum", "s", "t", "c"]));
                    let (oid, attnum) = (CARD_OID.to_string(), CARD_ATTNUM.to_string());
                    if sql.contains("'card_number'") {
                        out.put_slice(&data_row(&[
                            &oid,
                            &attnum,
                            "public",
                            "payments",
                            "card_number",
                        ]));
                    }
                    out.put_slice(&complete("SELECT 1"));
                } else if let Some(i) = sql.find("pgwarden_denied_") {
                    let token = &sql[i..];
                    out.put_slice(&encode::error_response(&encode::ErrorFields {
                        severity: "ERROR",
                        code: "42601",
                        message: &format!("syntax error at or near \"{token}\""),
                        detail: None,
                        hint: None,
                    }));
                } else if sql == "SELECT fail" {
                    out.put_slice(&encode::error_response(&encode::ErrorFields {
                        severity: "ERROR",
                        code: "22012",
                        message: "division by zero",
                        detail: None,
                        hint: None,
                    }));
                    s.write_all(&out).await.unwrap();
                    s.write_all(&encode::ready_for_query(b'E')).await.unwrap();
                    continue;
                } else if sql.is_empty() {
                    out.put_slice(&msg(b'I', |_| {}));
                } else if sql.contains("card_number") {
                    out.put_slice(&row_description("card_number", CARD_OID, CARD_ATTNUM));
                    out.put_slice(&data_row(&[PAN]));
                    out.put_slice(&complete("SELECT 1"));
                } else if sql.contains("notes") {
                    // A column no rule masks, holding a card number.
                    out.put_slice(&row_description_n(&["notes"]));
                    out.put_slice(&data_row(&["paid 4111 1111 1111 1111"]));
                    out.put_slice(&data_row(&["nothing"]));
                    out.put_slice(&complete("SELECT 2"));
                } else if sql == "ROLLBACK" {
                    out.put_slice(&complete("ROLLBACK"));
                } else {
                    out.put_slice(&complete("SELECT 0"));
                }
                out.put_slice(&encode::ready_for_query(b'I'));
            }
            b'F' => {
                log.lock().unwrap().push("<function call>".into());
                out.put_slice(&msg(b'V', |b| b.put_i32(-1)));
                out.put_slice(&encode::ready_for_query(b'I'));
            }
            b'X' => return,
            _ => {}
        }
        s.write_all(&out).await.unwrap();
    }
}

/// What the client read up to and including one ReadyForQuery: (tag, body) pairs.
async fn read_until_ready(c: &mut UnixStream) -> Vec<(u8, Vec<u8>)> {
    let mut got = Vec::new();
    loop {
        let tag = c.read_u8().await.unwrap();
        let len = c.read_i32().await.unwrap();
        let mut body = vec![0; usize::try_from(len).unwrap() - 4];
        c.read_exact(&mut body).await.unwrap();
        got.push((tag, body));
        if tag == b'Z' {
            return got;
        }
    }
}

/// The text of every DataRow value and ErrorResponse field in `replies`.
fn text(replies: &[(u8, Vec<u8>)]) -> String {
    replies
        .iter()
        .filter(|(t, _)| matches!(t, b'D' | b'E'))
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

struct Harness {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    env: Arc<SessionEnv>,
    log: Arc<Mutex<Vec<String>>>,
    client: UnixStream,
    relay: tokio::task::JoinHandle<()>,
}

const BASE_POLICY: &str = "version: 1
profiles:
  analyst:
    classes: [read, transaction, function-call]
    allow_fastpath: true
    tables:
      public.payments: [read]
";

fn config_text(dir: &Path) -> String {
    format!(
        "workloads:\n  - name: analyst\n    cgroup: \"x.slice\"\n    policy: {}\n",
        dir.join("policy.yaml").display()
    )
}

impl Harness {
    async fn start(policy: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.yaml"), policy).unwrap();
        let config_path = dir.path().join("pgwarden.yaml");
        let config = Config::parse(&config_path, &config_text(dir.path())).unwrap();
        let journal = Journal::open(&fixtures::config(dir.path())).unwrap();
        let (_stop, terminating) = tokio::sync::watch::channel(false);
        std::mem::forget(_stop);
        let env = Arc::new(SessionEnv {
            limits: LimitsConfig::default(),
            upstream: UpstreamConfig::default(),
            upstream_tls: None,
            client_tls: None,
            journal,
            approvals: Arc::new(Approvals::default()),
            metrics: Arc::default(),
            registry: Arc::new(Registry::new(1)),
            budgets: Arc::default(),
            origins: Origins {
                redirect: None,
                tagger: Arc::new(Mutex::new(Tagger::new(&config.workloads))),
                cgroup_root: PathBuf::from("/"),
                listen_only: ListenOnlyConfig::default(),
            },
            policy: Arc::new(Engine::new(&config, &config_path).unwrap()),
            logins: Arc::default(),
            hash_key: Arc::new(b"relay-test-key".to_vec()),
            terminating,
        });
        let (client, relay_client) = UnixStream::pair().unwrap();
        let (relay_server, server) = UnixStream::pair().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(fake_server(server, Arc::clone(&log)));
        let addr = SockAddr::Unix("/run/postgresql/.s.PGSQL.5432".into());
        let meta = Arc::new(SessionMeta {
            id: SessionId(77),
            workload: WorkloadName("analyst".into()),
            identity: None,
            client: ClientAddr(SockAddr::Unix(String::new())),
            listen: ListenAddr(addr.clone()),
            server: OrigDstAddr(addr),
            db: DbParams {
                user: "u".into(),
                database: "d".into(),
                application_name: None,
                options: None,
            },
            client_tls: false,
            server_tls: false,
            netns: None,
            login: None,
        });
        let mut startup = BytesMut::new();
        startup.put_i32(8);
        startup.put_i32(196_608);
        let task_env = Arc::clone(&env);
        let relay = tokio::spawn(async move {
            let _ = run(
                &task_env,
                &meta,
                Conn::Unix(relay_client),
                Conn::Unix(relay_server),
                startup.freeze(),
                BytesMut::new(),
                None,
            )
            .await;
        });
        let mut h = Self {
            dir,
            config_path,
            env,
            log,
            client,
            relay,
        };
        let hello = read_until_ready(&mut h.client).await;
        assert_eq!(hello.last().unwrap().0, b'Z', "{hello:?}");
        h
    }

    async fn query(&mut self, sql: &str) -> Vec<(u8, Vec<u8>)> {
        self.client.write_all(&encode::query(sql)).await.unwrap();
        read_until_ready(&mut self.client).await
    }

    /// Rewrites the policy file and reloads it, as the file watcher or SIGHUP would.
    fn reload(&self, policy: &str) {
        std::fs::write(self.dir.path().join("policy.yaml"), policy).unwrap();
        let config = Config::parse(&self.config_path, &config_text(self.dir.path())).unwrap();
        self.env.policy.reload(&config).unwrap();
    }

    fn server_log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Ends the session and returns the journal's records.
    async fn finish(mut self) -> Vec<Value> {
        self.client.write_all(&msg(b'X', |_| {})).await.unwrap();
        self.relay.await.unwrap();
        self.env.journal.close();
        fixtures::lines(&self.dir.path().join("audit.jsonl"))
    }
}

fn events<'a>(records: &'a [Value], event: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["event"] == event).collect()
}

#[tokio::test]
async fn a_refused_statement_never_reaches_the_server_and_the_session_goes_on() {
    let mut h = Harness::start(BASE_POLICY).await;
    let refused = h.query("DELETE FROM payments").await;
    let e = text(&refused);
    assert!(e.contains("42501") && e.contains("pgwarden: "), "{e}");
    let allowed = h.query("SELECT count(*) FROM payments").await;
    assert!(allowed.iter().all(|(t, _)| *t != b'E'), "{allowed:?}");
    let log = h.server_log();
    assert!(
        log.iter().all(|q| !q.contains("DELETE")),
        "the refused statement reached the server: {log:?}"
    );
    assert!(log.iter().any(|q| q == "SELECT count(*) FROM payments"));
    let records = h.finish().await;
    assert_eq!(events(&records, "query.denied").len(), 1, "{records:?}");
    assert_eq!(events(&records, "query").len(), 1);
    assert_eq!(events(&records, "query.done").len(), 1);
}

/// Defect (b) of issue 17: the reload's masks apply to the open session, in order: the
/// catalog query goes between the two statements, and the second one's rows are masked.
#[tokio::test]
async fn a_reload_that_masks_a_column_masks_it_in_the_open_session() {
    let mut h = Harness::start(BASE_POLICY).await;
    let before = h.query("SELECT card_number FROM payments").await;
    assert!(text(&before).contains(PAN), "unmasked before the reload");
    h.reload(&format!(
        "{BASE_POLICY}    mask:\n      columns:\n        public.payments.card_number: pan\n"
    ));
    let after = h.query("SELECT card_number FROM payments").await;
    assert!(
        !text(&after).contains(PAN),
        "the open session still shows the column the reload masks: {}",
        text(&after)
    );
    assert!(
        text(&after).contains("1111"),
        "masked, keeping the last four"
    );
    let log = h.server_log();
    let resolve = log
        .iter()
        .position(|q| q.contains("resolving masked columns"))
        .expect("the catalog query was sent");
    assert_eq!(
        log.iter()
            .filter(|q| *q == "SELECT card_number FROM payments")
            .count(),
        2
    );
    assert!(
        log[..resolve]
            .iter()
            .filter(|q| q.contains("card_number"))
            .count()
            == 1,
        "the catalog query precedes the second read: {log:?}"
    );
    let records = h.finish().await;
    let decisions: Vec<&Value> = events(&records, "query")
        .iter()
        .map(|r| &r["decision"])
        .collect();
    assert_eq!(decisions, ["allow", "mask"], "{records:?}");
}

/// Defect (a) of issue 17: a fast-path call after a masked read is recorded as what it is
/// (allowed, not masked), not with the previous statement's decision.
#[tokio::test]
async fn a_fast_path_call_is_recorded_with_its_own_decision() {
    let policy = format!(
        "{BASE_POLICY}    mask:\n      columns:\n        public.payments.card_number: pan\n"
    );
    let mut h = Harness::start(&policy).await;
    let read = h.query("SELECT card_number FROM payments").await;
    assert!(!text(&read).contains(PAN));
    h.client
        .write_all(&msg(b'F', |b| {
            b.put_u32(1598);
            b.put_i16(0);
            b.put_i16(0);
            b.put_i16(0);
        }))
        .await
        .unwrap();
    let call = read_until_ready(&mut h.client).await;
    assert!(call.iter().any(|(t, _)| *t == b'V'), "{call:?}");
    assert!(h.server_log().iter().any(|q| q == "<function call>"));
    let records = h.finish().await;
    let queries = events(&records, "query");
    assert_eq!(queries.len(), 2, "{records:?}");
    assert_eq!(queries[0]["decision"], "mask");
    assert_eq!(queries[1]["decision"], "allow", "{}", queries[1]);
    assert!(
        queries[1]["statement"]["text"]
            .as_str()
            .is_some_and(|t| t.contains("fast-path")),
        "{}",
        queries[1]
    );
    assert_eq!(queries[0]["policy_hash"], queries[1]["policy_hash"]);
}

/// A reload while the session's transaction has failed: the catalog query would fail there,
/// so the session stays on its version until the transaction ends, then follows the reload.
#[tokio::test]
async fn a_reload_during_a_failed_transaction_applies_once_it_ends() {
    let mut h = Harness::start(BASE_POLICY).await;
    let failed = h.query("SELECT fail").await;
    assert_eq!(failed.last().unwrap(), &(b'Z', vec![b'E']));
    h.reload(&format!(
        "{BASE_POLICY}    mask:\n      columns:\n        public.payments.card_number: pan\n"
    ));
    let rollback = h.query("ROLLBACK").await;
    assert!(rollback.iter().all(|(t, _)| *t != b'E'), "{rollback:?}");
    let log = h.server_log();
    assert!(
        log.iter().all(|q| !q.contains("resolving masked columns")),
        "no catalog query inside the failed transaction: {log:?}"
    );
    let after = h.query("SELECT card_number FROM payments").await;
    assert!(!text(&after).contains(PAN), "{}", text(&after));
    let log = h.server_log();
    let n = log.len();
    assert!(log[n - 2].contains("resolving masked columns"), "{log:?}");
    let records = h.finish().await;
    assert!(
        events(&records, "session.end")[0]["outcome"] == "success",
        "{records:?}"
    );
}

/// What the workload saw (`record_results`), through the real relay: the rows as the client
/// got them (masked), with the SHA-256 of the DataRow messages it read; a card number no rule
/// masks reaches the client but not the journal (scrubbed, digest withheld); the option
/// follows a reload into the open session, and without it a statement keeps nothing.
#[tokio::test]
async fn record_results_keeps_what_the_client_got() {
    use sha2::{Digest as _, Sha256};
    let masked = format!(
        "{BASE_POLICY}    mask:\n      columns:\n        public.payments.card_number: pan\n"
    );
    let mut h = Harness::start(&masked).await;
    let before = h.query("SELECT card_number FROM payments").await;
    assert!(!text(&before).contains(PAN));
    h.reload(&format!("{masked}    record_results: {{rows: 5}}\n"));
    let got = h.query("SELECT card_number FROM payments").await;
    let notes = h.query("SELECT notes FROM payments").await;
    assert!(
        text(&notes).contains("4111 1111 1111 1111"),
        "no rule masks it"
    );
    let records = h.finish().await;
    let done = events(&records, "query.done");
    assert_eq!(done.len(), 3, "{records:?}");
    assert!(done[0]["detail"].get("result").is_none(), "{}", done[0]);
    let r = &done[1]["detail"]["result"];
    assert_eq!(r["columns"], serde_json::json!(["card_number"]), "{r}");
    assert_eq!(r["rows"], serde_json::json!([["411111******1111"]]), "{r}");
    assert_eq!(r["total_rows"], 1);
    let mut received = Vec::new();
    for (tag, body) in got.iter().filter(|(t, _)| *t == b'D') {
        received.push(*tag);
        received.extend_from_slice(&i32::try_from(body.len() + 4).unwrap().to_be_bytes());
        received.extend_from_slice(body);
    }
    assert_eq!(r["sha256"], hex::encode(Sha256::digest(&received)), "{r}");
    let n = &done[2]["detail"]["result"];
    assert_eq!(
        n["rows"],
        serde_json::json!([["paid 4111 11** **** 1111"], ["nothing"]]),
        "{n}"
    );
    assert_eq!(n["unmasked_pans"], 1, "{n}");
    assert!(n.get("sha256").is_none(), "{n}");
    let journal = serde_json::to_string(&records).unwrap();
    assert!(!journal.contains(PAN) && !journal.contains("4111 1111 1111 1111"));
}
