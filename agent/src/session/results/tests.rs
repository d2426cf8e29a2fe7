//! The sample of what the workload saw: caps, digest, scrubbing, value forms, result sets,
//! COPY, and the session state that hands rows to it only under `record_results`.
use std::sync::Arc;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::*;
use crate::session::state::{Pending, ProtoState};
use crate::wire::encode;

fn col(name: &str, type_oid: u32, format: i16) -> Column {
    Column {
        name: name.into(),
        table_oid: 0,
        attnum: 0,
        type_oid,
        format,
    }
}

fn cols(c: &[Column]) -> Arc<[Column]> {
    Arc::from(c.to_vec())
}

/// A DataRow message, whole.
fn row(values: &[Option<&[u8]>]) -> Vec<u8> {
    encode::frame(b'D', |b| {
        b.extend_from_slice(&i16::try_from(values.len()).unwrap().to_be_bytes());
        for v in values {
            match v {
                Some(v) => {
                    b.extend_from_slice(&i32::try_from(v.len()).unwrap().to_be_bytes());
                    b.extend_from_slice(v);
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
    })
    .bytes
    .to_vec()
}

fn copy(data: &[u8]) -> Vec<u8> {
    encode::frame(b'd', |b| b.extend_from_slice(data))
        .bytes
        .to_vec()
}

fn limits(rows: u64, bytes: u64) -> RecordResults {
    RecordResults { rows, bytes }
}

fn result(c: &ResultCapture) -> Value {
    serde_json::from_slice(&c.finish().expect("a sample")).unwrap()
}

fn sha256_of(messages: &[Vec<u8>]) -> String {
    let mut h = Sha256::new();
    for m in messages {
        h.update(m);
    }
    hex::encode(h.finalize())
}

#[test]
fn the_first_rows_are_kept_and_every_row_is_counted_and_hashed() {
    let mut c = ResultCapture::new(limits(3, 8192));
    c.columns(cols(&[col("id", 20, 0), col("card_number", 25, 0)]));
    let sent: Vec<Vec<u8>> = (1..=10)
        .map(|i| {
            let id = i.to_string();
            row(&[Some(id.as_bytes()), Some(b"411111******1111")])
        })
        .collect();
    for m in &sent {
        c.data_row(m);
    }
    let r = result(&c);
    assert_eq!(
        r,
        json!({
            "columns": ["id", "card_number"],
            "rows": [["1", "411111******1111"], ["2", "411111******1111"], ["3", "411111******1111"]],
            "sha256": sha256_of(&sent),
            "total_rows": 10,
            "truncated": false,
        })
    );
    // The digest is over the messages as sent, whole (type byte and length included).
    let bodies: Vec<Vec<u8>> = sent.iter().map(|m| m[5..].to_vec()).collect();
    assert_ne!(r["sha256"], sha256_of(&bodies));
}

#[test]
fn the_byte_cap_leaves_whole_rows_out_and_says_so() {
    // Columns `["v"]` take 5 bytes, each row `["xxxxxxxxxx"]` 14, a comma between rows 1.
    let mut c = ResultCapture::new(limits(20, 5 + 14 + 1 + 14 + 10));
    c.columns(cols(&[col("v", 25, 0)]));
    for _ in 0..5 {
        c.data_row(&row(&[Some(b"xxxxxxxxxx")]));
    }
    let r = result(&c);
    assert_eq!(r["rows"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r["total_rows"], 5);
    assert_eq!(r["truncated"], true);
    // Exactly at the cap still fits.
    let mut c = ResultCapture::new(limits(20, 5 + 14 + 1 + 14));
    c.columns(cols(&[col("v", 25, 0)]));
    for _ in 0..2 {
        c.data_row(&row(&[Some(b"xxxxxxxxxx")]));
    }
    assert_eq!(result(&c)["truncated"], false);
    // A first row over the cap: the columns, no row.
    let mut c = ResultCapture::new(limits(20, 10));
    c.columns(cols(&[col("v", 25, 0)]));
    c.data_row(&row(&[Some(b"xxxxxxxxxx")]));
    let r = result(&c);
    assert_eq!(r["columns"], json!(["v"]));
    assert_eq!(r["rows"], json!([]));
    assert_eq!(r["truncated"], true);
    // The stored sample never passes the cap.
    let mut c = ResultCapture::new(limits(1000, 300));
    c.columns(cols(&[col("a", 25, 0), col("b", 25, 0)]));
    for i in 0..100 {
        let v = "é\"\\\n".repeat(i % 7);
        c.data_row(&row(&[Some(v.as_bytes()), None]));
    }
    let r = result(&c);
    let stored = serde_json::to_string(&r["columns"]).unwrap().len()
        + serde_json::to_string(&r["rows"]).unwrap().len()
        - 2;
    assert!(stored <= 300, "{stored}: {r}");
}

#[test]
fn a_card_number_the_policy_let_through_is_scrubbed_and_the_digest_withheld() {
    let mut c = ResultCapture::new(limits(20, 8192));
    c.columns(cols(&[
        col("id", 23, 0),
        col("notes", 25, 0),
        col("card 4111111111111111", 25, 0),
    ]));
    c.data_row(&row(&[
        Some(b"1"),
        Some(b"paid with 4111 1111 1111 1111 at noon"),
        None,
    ]));
    c.data_row(&row(&[Some(b"2"), Some(b"nothing to hide"), Some(b"")]));
    let r = result(&c);
    let text = r.to_string();
    assert!(!text.contains("4111 1111 1111 1111"), "{text}");
    assert!(!text.contains("4111111111111111"), "{text}");
    assert_eq!(r["rows"][0][1], "paid with 4111 11** **** 1111 at noon");
    assert_eq!(r["columns"][2], "card 411111******1111");
    assert_eq!(r["rows"][0][2], Value::Null);
    assert_eq!(r["rows"][1][2], "");
    // A hash over a card number and its masked neighbours could be reversed: none.
    assert_eq!(r["unmasked_pans"], 1);
    assert!(r.get("sha256").is_none(), "{r}");

    // Past the sample the rows are still looked at for card numbers.
    let mut c = ResultCapture::new(limits(1, 8192));
    c.columns(cols(&[col("notes", 25, 0)]));
    c.data_row(&row(&[Some(b"fine")]));
    c.data_row(&row(&[Some(b"4111111111111111")]));
    let r = result(&c);
    assert_eq!(r["rows"], json!([["fine"]]));
    assert_eq!(r["unmasked_pans"], 1);
    assert!(r.get("sha256").is_none());
}

#[test]
fn binary_and_foreign_values_carry_a_marker() {
    let mut c = ResultCapture::new(limits(20, 8192));
    c.columns(cols(&[
        col("n", 23, 1),
        col("card", 20, 1),
        col("doc", 17, 1),
        col("latin1", 25, 0),
    ]));
    c.data_row(&row(&[
        Some(&7i32.to_be_bytes()),
        Some(&4_111_111_111_111_111i64.to_be_bytes()),
        // A packed-BCD card number reads as itself in hex.
        Some(&[0x41, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11]),
        Some(b"caf\xe9"),
    ]));
    let r = result(&c);
    assert_eq!(
        r["rows"][0],
        json!([
            {"format": "binary", "hex": "00000007"},
            {"format": "binary", "withheld": "card number"},
            {"format": "binary", "hex": "411111******1111"},
            {"format": "text", "hex": "636166e9"},
        ])
    );
    // A binary bigint that is a card number reached the workload unmasked.
    assert_eq!(r["unmasked_pans"], 2);
    // A binary bigint that is not one is hex like any other.
    let mut c = ResultCapture::new(limits(20, 8192));
    c.columns(cols(&[col("id", 20, 1)]));
    c.data_row(&row(&[Some(&42i64.to_be_bytes())]));
    let r = result(&c);
    assert_eq!(
        r["rows"][0][0],
        json!({"format": "binary", "hex": "000000000000002a"})
    );
    assert!(r["sha256"].is_string());
}

#[test]
fn several_result_sets_each_keep_their_columns() {
    let mut c = ResultCapture::new(limits(3, 8192));
    let mut sent = Vec::new();
    c.columns(cols(&[col("a", 25, 0)]));
    for v in ["x", "y"] {
        sent.push(row(&[Some(v.as_bytes())]));
        c.data_row(sent.last().unwrap());
    }
    // An empty result set in between is no set of the sample.
    c.columns(cols(&[col("nothing", 25, 0)]));
    c.columns(cols(&[col("b", 25, 0), col("c", 25, 0)]));
    for v in ["1", "2", "3"] {
        sent.push(row(&[Some(v.as_bytes()), None]));
        c.data_row(sent.last().unwrap());
    }
    let r = result(&c);
    assert_eq!(
        r,
        json!({
            "sets": [
                {"columns": ["a"], "rows": [["x"], ["y"]], "total_rows": 2},
                {"columns": ["b", "c"], "rows": [["1", null]], "total_rows": 3},
            ],
            "sha256": sha256_of(&sent),
            "total_rows": 5,
            "truncated": false,
        })
    );
}

#[test]
fn copy_data_is_one_value_per_row() {
    let mut c = ResultCapture::new(limits(2, 8192));
    let sent = [copy(b"1\tx\n"), copy(b"2\ty\n"), copy(b"3\tz\n")];
    for m in &sent {
        c.copy_data(m);
    }
    assert_eq!(
        result(&c),
        json!({
            "columns": [],
            "copy": true,
            "rows": [["1\tx\n"], ["2\ty\n"]],
            "sha256": sha256_of(&sent),
            "total_rows": 3,
            "truncated": false,
        })
    );
}

#[test]
fn nothing_sent_is_no_sample() {
    let mut c = ResultCapture::new(limits(3, 8192));
    c.columns(cols(&[col("a", 25, 0)]));
    assert_eq!(c.finish(), None, "an empty result");
    c.data_row(&row(&[Some(b"x")]));
    assert!(c.finish().is_some());
    // A write undone and refused: its held rows never reached the client.
    c.unsent();
    assert_eq!(c.finish(), None);
    c.data_row(&row(&[Some(b"y")]));
    assert_eq!(result(&c)["columns"], json!(["a"]), "the columns stay");
}

#[test]
fn the_state_hands_rows_over_only_under_record_results() {
    let rd = cols(&[col("id", 23, 0)]);
    let message = row(&[Some(b"7")]);
    let run = |record: Option<RecordResults>| {
        let mut s = ProtoState::new("x");
        s.record_results(record);
        s.expect(Pending::Query);
        s.in_flight(1, true);
        s.row_description(Arc::clone(&rd));
        assert_eq!(s.capturing(), record.is_some());
        if s.capturing() {
            s.result_sent(b'D', &message);
        }
        s.reply(b'C');
        let mut done = s.finish(b'Z', None, 0);
        done.pop().unwrap().results
    };
    assert_eq!(run(None), None, "no capture, no cost");
    let c = run(Some(limits(5, 8192))).unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&c.finish().unwrap()).unwrap()["rows"],
        json!([["7"]])
    );

    // An Execute without Describe: the statement's columns, the Bind's formats.
    let mut s = ProtoState::new("x");
    s.record_results(Some(limits(5, 8192)));
    s.expect(Pending::DescribeStatement("s".into()));
    s.row_description(cols(&[col("n", 23, 0)]));
    s.bound("", "s", smallvec::smallvec![1]);
    s.expect(Pending::Execute(String::new()));
    s.in_flight(2, false);
    s.data_row();
    s.result_sent(b'D', &row(&[Some(&5i32.to_be_bytes())]));
    let done = s.finish(b'C', None, 1);
    let c = done[0].results.as_ref().unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&c.finish().unwrap()).unwrap()["rows"][0][0],
        json!({"format": "binary", "hex": "00000005"})
    );
}
