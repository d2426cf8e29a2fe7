//! The canonical bytes: spliced records equal the generic form, seals recompute, strings
//! escape as `serde_json` does.
use super::*;
use crate::audit::record::{Decision, GENESIS_HASH, Masked, Outcome, RECORD_VERSION, Statement};
use proptest::prelude::*;
use std::time::{Duration, UNIX_EPOCH};

/// What `Record`'s builder makes of the same fields.
fn as_record(sid: &str, f: &StatementFields<'_>, statement: Option<&Statement>) -> Record {
    let mut r = Record::new(f.event)
        .time(f.time)
        .session(sid)
        .workload("payments-mcp")
        .detail("statement_no", f.statement_no);
    if let Some(st) = statement {
        r = r.statement(st.clone());
    }
    if let Some(d) = f.decision {
        r = r.decision(d);
    }
    if let Some(x) = f.rule {
        r = r.rule(x);
    }
    if let Some(x) = f.policy_hash {
        r = r.policy_hash(x);
    }
    if let Some(x) = f.rows {
        r = r.rows(x);
    }
    if let Some(x) = f.outcome {
        r = r.outcome(x);
    }
    if let Some(x) = f.sqlstate {
        r = r.sqlstate(x);
    }
    if let Some(x) = f.error {
        r = r.error(x);
    }
    if let Some(x) = f.duration_us {
        r = r.duration(Duration::from_micros(x));
    }
    for m in f.masked {
        r = r.masked(m.column.clone(), m.method.clone(), m.count);
    }
    if let Some(x) = f.result {
        r = r.detail("result", serde_json::from_slice::<Value>(x).unwrap());
    }
    r
}

/// A sample of rows of text values (and NULLs), as the session writes it.
fn sample_of(columns: &[String], rows: &[Vec<Option<String>>], total: u64) -> Box<[u8]> {
    use super::result::{ResultParts, SetParts, push_name, push_null, push_text};
    let mut cols = b"[".to_vec();
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            cols.push(b',');
        }
        push_name(&mut cols, c);
    }
    cols.push(b']');
    let mut out = b"[".to_vec();
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'[');
        for (j, v) in row.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            match v {
                Some(v) => {
                    push_text(&mut out, v.as_bytes());
                }
                None => push_null(&mut out),
            }
        }
        out.push(b']');
    }
    out.push(b']');
    super::result::result_json(&ResultParts {
        sets: &[SetParts {
            columns: &cols,
            rows: &out,
            total_rows: total,
            copy: false,
        }],
        several: false,
        total_rows: total,
        sha256: Some("39890ba7400e45b26667b78d00b5d8a680d31c35a710eed12199bffb7ac924f0"),
        truncated: total > 3,
        unmasked_pans: 0,
    })
}

proptest! {
    /// The spliced statement records are byte for byte what the generic path makes of
    /// the same record, and their seal verifies as the verifier checks it.
    #[test]
    fn spliced_records_equal_the_generic_form(
        event in prop_oneof![Just(Event::Query), Just(Event::QueryDone), Just(Event::QueryDenied)],
        micros in 0i64..4_102_444_800_000_000,
        n in any::<u64>(),
        decision in proptest::option::of(prop_oneof![Just(Decision::Allow), Just(Decision::Deny), Just(Decision::Mask)]),
        rule in proptest::option::of("[a-z.\\-]{1,12}"),
        text in "[ -~\\n\\t\"\\\\é\u{1}]{0,40}",
        rows in proptest::option::of(any::<u64>()),
        outcome in proptest::option::of(prop_oneof![Just(Outcome::Success), Just(Outcome::Failure)]),
        error in proptest::option::of("[ -~\\n]{0,30}"),
        duration in proptest::option::of(any::<u64>()),
        masked in proptest::collection::vec(("[a-z_.]{1,20}", "[a-z()0-9,]{1,10}", any::<u64>()), 0..3),
        with_statement in any::<bool>(),
        seq in 1u64..u64::MAX,
        result in proptest::option::of((
            proptest::collection::vec("[a-z_ \"é]{0,8}", 1..4),
            proptest::collection::vec(proptest::collection::vec(proptest::option::of("[ -~\n\té]{0,12}"), 3), 0..4),
            0u64..10,
        )),
    ) {
        let time = UNIX_EPOCH + Duration::from_micros(micros.unsigned_abs());
        let session = SessionFields::new("006b0677d5000001", "payments-mcp");
        let st = Statement::from_sql(&format!("SELECT {text} FROM payments WHERE id = 4111111111111111"), false)
            .command("SELECT")
            .objects(["public.payments"]);
        let st_json = statement_json(&st);
        let masked: Vec<Masked> = masked.into_iter().map(|(c, m, k)| Masked { column: c, method: m, count: k }).collect();
        let mut f = StatementFields::new(event, time, n);
        f.decision = decision;
        f.rule = rule.as_deref();
        f.statement = with_statement.then_some(&st_json[..]);
        f.policy_hash = Some("c25f3f44522cfbe19bc0bcac407d3ea1e76f1312f9b8d77fbbcfb0f16b23c421");
        f.rows = rows;
        f.outcome = outcome;
        f.error = error.as_deref();
        f.duration_us = duration;
        f.masked = &masked;
        // A card number in a value the policy did not mask: scrubbed on both paths.
        let result = result.map(|(columns, mut rows, extra)| {
            if let Some(r) = rows.first_mut() {
                r[0] = Some("paid 4111 1111 1111 1111".into());
            }
            sample_of(&columns, &rows, rows.len() as u64 + extra)
        });
        f.result = (event == Event::QueryDone).then_some(result.as_deref()).flatten();
        let fast = statement_record(&session, &f);
        let generic = Prepared::from_record(&as_record("006b0677d5000001", &f, with_statement.then_some(&st)));
        prop_assert_eq!(String::from_utf8_lossy(fast.bytes()), String::from_utf8_lossy(generic.bytes()));
        prop_assert_eq!(&fast, &generic);
        let sealed = fast.seal(seq, GENESIS_HASH);
        let v: Value = serde_json::from_slice(&sealed.line).unwrap();
        prop_assert_eq!(hash_value(&v), sealed.hash.clone());
        prop_assert_eq!(v["seq"].as_u64(), Some(seq));
        prop_assert_eq!(v["v"].as_u64(), Some(RECORD_VERSION));
        prop_assert_eq!(v["hash"].as_str(), Some(sealed.hash.as_str()));
        prop_assert!(!String::from_utf8_lossy(&sealed.line).contains("4111111111111111"));
        prop_assert!(!String::from_utf8_lossy(&sealed.line).contains("4111 1111 1111 1111"));
    }
}

/// Golden: a `query.done` carrying what the workload saw (`detail.result`): its exact canonical
/// bytes and hash. The hash was computed apart from pgwarden (Python's `json.dumps(...,
/// sort_keys=True, separators=(',', ':'), ensure_ascii=False)` of the parsed line without
/// `hash`, and `hashlib.sha256`). The card number in `notes` was not masked by the policy and
/// is scrubbed by the journal.
#[test]
fn golden_query_done_with_a_result() {
    let session = SessionFields::new("00000000000000ab", "payments-mcp");
    let columns = [
        "id".to_owned(),
        "card_number".to_owned(),
        "notes".to_owned(),
    ];
    let rows = vec![
        vec![
            Some("1".to_owned()),
            Some("411111******1111".to_owned()),
            Some("paid with 4111 1111 1111 1111".to_owned()),
        ],
        vec![
            Some("2".to_owned()),
            Some("411111******1111".to_owned()),
            None,
        ],
    ];
    let result = sample_of(&columns, &rows, 10);
    let masked = [Masked {
        column: "public.payments.card_number".into(),
        method: "pan".into(),
        count: 10,
    }];
    let mut f = StatementFields::new(
        Event::QueryDone,
        UNIX_EPOCH + Duration::from_micros(1_795_582_835_123_456),
        3,
    );
    f.rows = Some(10);
    f.outcome = Some(Outcome::Success);
    f.duration_us = Some(1260);
    f.masked = &masked;
    f.result = Some(&result);
    let p = statement_record(&session, &f);
    let sealed = p.seal(7, GENESIS_HASH);
    let line = String::from_utf8(sealed.line.clone()).unwrap();
    assert_eq!(
        line,
        concat!(
            r#"{"detail":{"result":{"columns":["id","card_number","notes"],"rows":[["1","411111******1111","#,
            r#""paid with 4111 11** **** 1111"],["2","411111******1111",null]],"#,
            r#""sha256":"39890ba7400e45b26667b78d00b5d8a680d31c35a710eed12199bffb7ac924f0","#,
            r#""total_rows":10,"truncated":true},"statement_no":3},"duration_us":1260,"event":"query.done","#,
            r#""masked":[{"column":"public.payments.card_number","count":10,"method":"pan"}],"#,
            r#""outcome":"success","prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","#,
            r#""rows":10,"seq":7,"session_id":"00000000000000ab","time":"2026-11-25T05:00:35.123456Z","#,
            r#""v":2,"workload":"payments-mcp","hash":"GOLDEN"}"#,
            "\n"
        )
        .replace("GOLDEN", &sealed.hash)
    );
    assert_eq!(
        sealed.hash,
        "30dec2dd7cc6cf0f23f0adf1d72f9ef3d0493045484987ed49a6bdf5fe4386af"
    );
    let v: Value = serde_json::from_slice(&sealed.line).unwrap();
    assert_eq!(hash_value(&v), sealed.hash);
}

#[test]
fn records_of_every_shape_seal_to_what_verify_recomputes() {
    let mut r = Record::new(Event::AgentStart).detail("version", "0.1.0");
    for rec in [
        r.clone(),
        Record::new(Event::AuditGap).detail("lost", 3),
        Record::new(Event::SessionEnd)
            .session("ab")
            .duration(Duration::from_millis(3)),
    ] {
        let p = Prepared::from_record(&rec);
        let s = p.seal(7, GENESIS_HASH);
        let v: Value = serde_json::from_slice(&s.line).unwrap();
        assert_eq!(hash_value(&v), s.hash);
        assert!(s.line.ends_with(b"\"}\n"));
    }
    r.seq = 99;
    let p = Prepared::from_record(&r);
    assert!(!String::from_utf8_lossy(p.bytes()).contains("\"seq\""));
}

#[test]
fn strings_escape_as_serde_json_does() {
    for s in [
        "plain",
        "q\"b\\s",
        "nl\n cr\r tab\t bs\u{8} ff\u{c}",
        "\u{1}\u{1f}\u{7f}",
        "é ☃ /",
    ] {
        let mut out = Vec::new();
        push_str(&mut out, s);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string(s).unwrap()
        );
    }
}

#[test]
fn sealing_into_a_buffer_appends_the_same_line() {
    let p = Prepared::from_record(&Record::new(Event::AuditCheckpoint).detail("records", 1));
    let sealed = p.seal(7, GENESIS_HASH);
    let mut buf = b"earlier line\n".to_vec();
    let hash = p.seal_into(7, GENESIS_HASH, &mut buf);
    assert_eq!(&buf[..13], b"earlier line\n");
    assert_eq!(&buf[13..], &sealed.line[..]);
    assert_eq!(hash.as_str(), sealed.hash);
    assert_ne!(hash, p.seal_into(8, GENESIS_HASH, &mut Vec::new()));
}
