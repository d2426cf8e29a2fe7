//! The datagrams: field names, escapes, the length-prefixed form, truncation, the socket.
use super::*;
use crate::audit::canon::Prepared;
use crate::audit::record::{Actor, Decision, GENESIS_HASH, Record, Statement};

/// The datagram for a line (empty when it is not a JSON object).
fn encode(line: &[u8], priority: u8) -> Vec<u8> {
    let mut out = Vec::new();
    Encoder::default().encode(line, priority, &mut out);
    out
}

fn line(r: &Record, seq: u64) -> Vec<u8> {
    Prepared::from_record(r).seal(seq, GENESIS_HASH).line
}

/// The fields of a datagram, as journald reads them.
fn fields(line: &[u8], priority: u8) -> Option<Vec<(String, Vec<u8>)>> {
    let d = encode(line, priority);
    if d.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < d.len() {
        let end = i + d[i..]
            .iter()
            .position(|&c| c == b'=' || c == b'\n')
            .unwrap();
        let name = String::from_utf8(d[i..end].to_vec()).unwrap();
        let (value, next) = if d[end] == b'=' {
            let stop = end + 1 + d[end + 1..].iter().position(|&c| c == b'\n').unwrap();
            (d[end + 1..stop].to_vec(), stop + 1)
        } else {
            let len = u64::from_le_bytes(d[end + 1..end + 9].try_into().unwrap()) as usize;
            let v = d[end + 9..end + 9 + len].to_vec();
            assert_eq!(d[end + 9 + len], b'\n');
            (v, end + 10 + len)
        };
        out.push((name, value));
        i = next;
    }
    Some(out)
}

fn get<'a>(f: &'a [(String, Vec<u8>)], n: &str) -> Option<&'a str> {
    f.iter()
        .find(|(k, _)| k == n)
        .map(|(_, v)| std::str::from_utf8(v).unwrap())
}

#[test]
fn fields_are_flattened_upper_snake() {
    let r = Record::new(Event::QueryDenied)
        .workload("payments-mcp")
        .actor(Actor {
            pid: Some(7),
            exe: Some("/usr/bin/python3".into()),
            ..Actor::default()
        })
        .statement(Statement::from_sql("DROP TABLE t", false).objects(["public.t"]))
        .decision(Decision::Deny)
        .rule("class.ddl")
        .detail("torn-bytes", 3);
    let f = fields(&line(&r, 42), priority(r.event, r.is_denial())).unwrap();
    assert_eq!(get(&f, "SYSLOG_IDENTIFIER"), Some("pgwarden"));
    assert_eq!(get(&f, "PRIORITY"), Some("4"));
    assert_eq!(get(&f, "PGWARDEN_SEQ"), Some("42"));
    assert_eq!(get(&f, "PGWARDEN_EVENT"), Some("query.denied"));
    assert_eq!(get(&f, "PGWARDEN_ACTOR_PID"), Some("7"));
    assert_eq!(get(&f, "PGWARDEN_STATEMENT_TEXT"), Some("DROP TABLE t"));
    assert_eq!(
        get(&f, "PGWARDEN_STATEMENT_OBJECTS"),
        Some("[\"public.t\"]")
    );
    assert_eq!(get(&f, "PGWARDEN_DETAIL_TORN_BYTES"), Some("3"));
    assert_eq!(get(&f, "PGWARDEN_HASH").map(str::len), Some(64));
    assert_eq!(get(&f, "PGWARDEN_PREV_HASH"), Some(GENESIS_HASH));
    let mut seq_r = r.clone();
    seq_r.seq = 42;
    assert_eq!(get(&f, "MESSAGE").unwrap(), seq_r.summary());
    let ok = Record::new(Event::Query).decision(Decision::Allow);
    let f = fields(&line(&ok, 1), priority(ok.event, ok.is_denial())).unwrap();
    assert_eq!(get(&f, "PRIORITY"), Some("6"));
}

#[test]
fn escapes_and_summaries_read_back() {
    let r = Record::new(Event::AgentStart)
        .error("quote \" backslash \\ tab\t uni \u{1} é ☃")
        .detail(
            "nested",
            serde_json::json!({"a": [1, {"b": null}], "c": true}),
        );
    let f = fields(&line(&r, 3), 6).unwrap();
    assert_eq!(
        get(&f, "PGWARDEN_ERROR"),
        Some("quote \" backslash \\ tab\t uni \u{1} é ☃")
    );
    assert_eq!(
        get(&f, "PGWARDEN_DETAIL_NESTED_A"),
        Some("[1,{\"b\":null}]")
    );
    assert_eq!(get(&f, "PGWARDEN_DETAIL_NESTED_C"), Some("true"));
    let mut with_seq = r.clone();
    with_seq.seq = 3;
    assert_eq!(get(&f, "MESSAGE").unwrap(), with_seq.summary());
    let d = Record::new(Event::AuditGap).detail("lost", 5);
    let f = fields(&line(&d, 9), priority(d.event, d.is_denial())).unwrap();
    assert_eq!(get(&f, "PRIORITY"), Some("4"));
    let mut with_seq = d.clone();
    with_seq.seq = 9;
    assert_eq!(get(&f, "MESSAGE").unwrap(), with_seq.summary());
    assert!(fields(b"not json", 6).is_none());
}

#[test]
fn newlines_use_the_length_prefixed_form() {
    let mut r = Record::new(Event::Query).statement(Statement::from_sql("SELECT 1", true));
    r.statement.as_mut().unwrap().text = "SELECT\n1".into();
    let bytes = encode(&line(&r, 1), 6);
    let needle = b"PGWARDEN_STATEMENT_TEXT\n\x08\0\0\0\0\0\0\0SELECT\n1\n";
    assert!(bytes.windows(needle.len()).any(|w| w == needle));
    assert!(bytes.starts_with(b"MESSAGE="));
}

#[test]
fn huge_records_are_truncated_and_flagged() {
    let mut r = Record::new(Event::Query);
    r.detail
        .insert("big".into(), serde_json::Value::String("x".repeat(400_000)));
    let bytes = encode(&line(&r, 1), 6);
    assert!(bytes.len() <= MAX_DATAGRAM);
    let f = fields(&line(&r, 1), 6).unwrap();
    assert_eq!(get(&f, "PGWARDEN_TRUNCATED"), Some("1"));
    assert_eq!(
        get(&f, "PGWARDEN_DETAIL_BIG").map(str::len),
        Some(TRUNCATED_VALUE)
    );
    assert_eq!(get(&f, "PGWARDEN_SEQ"), Some("1"));
}

#[test]
fn a_line_that_is_not_json_is_counted_not_sent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.sock");
    let server = UnixDatagram::bind(&path).unwrap();
    server.set_nonblocking(true).unwrap();
    let mut j = Journald::new(&path);
    j.send(b"not json", 1, 6);
    assert_eq!((j.errors(), j.sent()), (1, 0));
    assert!(server.recv(&mut [0u8; 64]).is_err());
}

#[test]
fn an_absent_socket_is_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journald::new(&dir.path().join("nope.sock"));
    let l = line(&Record::new(Event::AgentStart), 1);
    for _ in 0..5 {
        j.send(&l, 1, 6);
    }
    assert_eq!((j.errors(), j.sent()), (1, 0));
}

#[test]
fn datagrams_reach_a_listening_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.sock");
    let server = UnixDatagram::bind(&path).unwrap();
    let mut j = Journald::new(&path);
    j.send(&line(&Record::new(Event::AgentStart), 9), 9, 6);
    let mut buf = vec![0u8; 65536];
    let n = server.recv(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.contains("PGWARDEN_SEQ=9\n"), "{text}");
    assert_eq!((j.errors(), j.sent()), (0, 1));
}
