//! The record contract: the golden hash, omitted empties, event names, scrubbing.
use super::*;
use crate::audit::canon::canonical_json;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use std::net::SocketAddr;
use std::time::UNIX_EPOCH;

#[test]
fn canonical_form_sorts_keys_recursively_without_whitespace() {
    let v = json!({"b": 1, "a": {"d": [3, {"z": null, "y": true}], "c": "x\ny\"é"}, "hash": "zz"});
    assert_eq!(
        canonical_json(&v),
        r#"{"a":{"c":"x\ny\"é","d":[3,{"y":true,"z":null}]},"b":1,"hash":"zz"}"#
    );
    // hash_value leaves out the top-level hash only.
    let without = json!({"b": 1, "a": {"d": [3, {"z": null, "y": true}], "c": "x\ny\"é"}});
    let expect = hex::encode(Sha256::digest(canonical_json(&without).as_bytes()));
    assert_eq!(hash_value(&v), expect);
}

/// Golden: the exact canonical bytes and hash of a fixed record (contract v2: a statement
/// record names its session, not the identity). If this changes, every existing journal
/// stops verifying: change the contract deliberately or not at all. The hash was computed
/// apart from pgwarden (Python's `json.dumps(sort_keys=True, separators=(',', ':'))` and
/// `hashlib.sha256`).
#[test]
fn golden_record_hash() {
    let mut r = Record::new(Event::Query)
        .time(UNIX_EPOCH + Duration::from_micros(1_795_582_835_123_456))
        .session("00000000000000ab")
        .workload("payments-mcp")
        .statement(Statement::from_sql("SELECT * FROM t WHERE id = 7", false).command("SELECT"))
        .decision(Decision::Allow)
        .rule("read.payments")
        .detail("statement_no", 1);
    r.seq = 7;
    r.prev_hash = GENESIS_HASH.into();
    let v = serde_json::to_value(&r).unwrap();
    let mut m = v.as_object().unwrap().clone();
    m.remove("hash");
    assert_eq!(
        canonical_json(&Value::Object(m)),
        concat!(
            r#"{"decision":"allow","detail":{"statement_no":1},"event":"query","#,
            r#""prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","#,
            r#""rule":"read.payments","seq":7,"session_id":"00000000000000ab","#,
            r#""statement":{"command":"SELECT","fingerprint":"#,
            r#""6f440f43f9aa279c","text":"SELECT * FROM t WHERE id = $1"},"#,
            r#""time":"2026-11-25T05:00:35.123456Z","v":2,"workload":"payments-mcp"}"#
        )
    );
    r.hash = r.compute_hash();
    assert_eq!(
        r.hash,
        "c4b324c606ee91f40c92fb5b689c1cb185e58f242407ad8f78d2acd92baef17e"
    );
    // The hash does not depend on itself, nor on key order on disk.
    let line = serde_json::to_string(&r).unwrap();
    assert!(line.starts_with(r#"{"seq":7,"time":"#), "{line}");
    let back: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(hash_value(&back), r.hash);
    let parsed: Record = serde_json::from_str(&line).unwrap();
    assert_eq!(parsed, r);
}

/// A record of contract v1 (no `v`; the identity in every record), as older versions wrote
/// it, still verifies: the hash covers whatever fields a line has. Hash computed apart from
/// pgwarden, as above.
#[test]
fn a_v1_record_still_verifies() {
    let line = concat!(
        r#"{"seq":7,"time":"2026-11-25T05:00:35.123456Z","event":"query","#,
        r#""session_id":"00000000000000ab","workload":"payments-mcp","#,
        r#""actor":{"pid":42,"exe":"/usr/bin/python3"},"client":{"ip":"127.0.0.1","port":40000},"#,
        r#""statement":{"text":"SELECT * FROM t WHERE id = $1","fingerprint":"6f440f43f9aa279c","command":"SELECT"},"#,
        r#""decision":"allow","rule":"read.payments","detail":{"n":1},"#,
        r#""prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","#,
        r#""hash":"efbb36343e23d876bd721b361279169821c9b3460b48186affe28c2634da3301"}"#
    );
    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(
        hash_value(&v),
        "efbb36343e23d876bd721b361279169821c9b3460b48186affe28c2634da3301"
    );
    let parsed: Record = serde_json::from_str(line).unwrap();
    assert_eq!(parsed.v, None, "no `v`: version 1");
    assert_eq!(parsed.compute_hash(), v["hash"].as_str().unwrap());
}

#[test]
fn empty_fields_are_omitted() {
    let r = Record::new(Event::AgentStart);
    let v = serde_json::to_value(&r).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let mut want = vec!["seq", "time", "event", "prev_hash", "hash", "v"];
    want.sort_unstable();
    let mut keys = keys;
    keys.sort_unstable();
    assert_eq!(keys, want);
}

#[test]
fn events_round_trip_by_name() {
    for e in Event::ALL {
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(s, format!("\"{}\"", e.as_str()));
        assert_eq!(serde_json::from_str::<Event>(&s).unwrap(), e);
    }
    assert_eq!(
        serde_json::from_str::<Event>("\"future.thing\"").unwrap(),
        Event::Unknown
    );
}

#[test]
fn scrubbing_reaches_every_free_text_field() {
    let mut r = Record::new(Event::QueryDone)
        .error("duplicate key (card)=(4111111111111111)")
        .db(Db {
            application_name: Some("app 5500-0000-0000-0004".into()),
            ..Db::default()
        })
        .detail("note", json!({"deep": ["378282246310005"]}));
    r.scrub_pans();
    let text = serde_json::to_string(&r).unwrap();
    for pan in ["4111111111111111", "5500-0000-0000-0004", "378282246310005"] {
        assert!(!text.contains(pan), "{text}");
    }
    assert!(text.contains("411111******1111"), "{text}");
    assert!(text.contains("5500-00**-****-0004"), "{text}");
}

#[test]
fn chain_hashes_in_details_are_not_taken_for_card_numbers() {
    // A real chain hash from a test run: `7894828481985` is a Luhn-valid 13-digit run.
    let hash = "90b755de64b7894828481985ab0b291d31d63a490e982d68bb00779018561e76";
    let mut r = Record::new(Event::AuditGap)
        .detail("missing", json!({"last_hash": hash}))
        .detail("note", format!("after {hash}"));
    r.scrub_pans();
    assert_eq!(r.detail["missing"]["last_hash"], hash);
    // The same digits in free text are still masked.
    assert!(!r.detail["note"].as_str().unwrap().contains("7894828481985"));
}

#[test]
fn a_result_sample_is_scrubbed_even_where_it_looks_like_a_hash() {
    // A result value shaped like a chain hash is data, and here holds a card number; the
    // digest itself (which is one) stays.
    let value = "4111111111111111aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    assert_eq!(value.len(), 64);
    let digest = "90b755de64b7894828481985ab0b291d31d63a490e982d68bb00779018561e76";
    let mut r = Record::new(Event::QueryDone).detail(
        "result",
        json!({"columns": ["notes", "4111111111111111"], "rows": [[value, "paid 4111 1111 1111 1111", null]],
               "sets": [{"rows": [[{"format": "binary", "hex": "4111111111111111"}]]}],
               "sha256": digest, "total_rows": 1, "truncated": false}),
    );
    r.scrub_pans();
    let text = serde_json::to_string(&r).unwrap();
    assert!(!text.contains("4111111111111111"), "{text}");
    assert!(!text.contains("4111 1111 1111 1111"), "{text}");
    assert!(text.contains("paid 4111 11** **** 1111"), "{text}");
    assert_eq!(r.detail["result"]["sha256"], digest);
}

#[test]
fn ipv4_mapped_addresses_are_stored_as_ipv4() {
    let e = Endpoint::from("[::ffff:10.0.0.1]:5432".parse::<SocketAddr>().unwrap());
    assert_eq!(e.to_string(), "10.0.0.1:5432");
}
