//! Tail and replay over a rotated sample journal; `--since` and durations.
use super::*;
use crate::audit::{AuditConfig, Journal};

fn sample(dir: &Path, n: u64) -> PathBuf {
    let c = AuditConfig {
        max_bytes: 4096,
        ..crate::audit::fixtures::config(dir)
    };
    let j = Journal::open(&c).unwrap();
    for i in 0..n {
        j.append_blocking(crate::audit::sample::record(
            i,
            if i < 10 { "a" } else { "b" },
            false,
        ))
        .unwrap();
    }
    c.path
}

#[test]
fn tail_filters_and_reaches_into_rotated_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample(dir.path(), 40);
    assert!(!segments::rotated(&path).is_empty());
    let run = |filter: Filter, last: Option<usize>, json: bool| {
        let mut out = Vec::new();
        tail(
            &TailOptions {
                path: path.clone(),
                filter,
                last,
                follow: false,
                style: Style {
                    json,
                    colour: false,
                },
                poll: Duration::from_millis(10),
            },
            &mut out,
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    };
    let all = run(Filter::default(), None, true);
    let seqs: Vec<u64> = all
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
    assert_eq!(run(Filter::default(), Some(3), true).lines().count(), 3);
    let denied = run(
        Filter {
            decision: Some("deny".into()),
            workload: Some("a".into()),
            ..Filter::default()
        },
        None,
        false,
    );
    assert_eq!(denied.lines().count(), 2, "{denied}");
    assert!(denied.contains("query.denied"), "{denied}");
    assert!(denied.contains("class.write"), "{denied}");
    assert!(
        denied.contains("UPDATE payments SET card_number = $1 WHERE id = $2"),
        "{denied}"
    );
    assert!(!denied.contains('\x1b'));
    let one = run(
        Filter {
            session: Some(format!("{:016x}", 0x5a00_0000_0000_0001u64)),
            ..Filter::default()
        },
        None,
        true,
    );
    assert_eq!(one.lines().count(), 5);
}

#[test]
fn replay_lists_a_session_in_order_with_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample(dir.path(), 15);
    let mut out = Vec::new();
    let n = replay(
        &path,
        &format!("{:016x}", 0x5a00_0000_0000_0002u64),
        &mut out,
    )
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(n, 5, "{text}");
    assert!(
        text.contains("client  127.0.0.1:40000 -> server 127.0.0.1:5432"),
        "{text}"
    );
    let pos = |s: &str| text.find(s).unwrap_or_else(|| panic!("{s} in {text}"));
    assert!(pos("session.start") < pos("query ") && pos("query ") < pos("query.done"));
    assert!(text.contains("+0.0"), "{text}");
    assert!(text.contains("1 allowed, 1 denied, 0 held"), "{text}");
    assert_eq!(replay(&path, "nope", &mut Vec::new()).unwrap(), 0);
}

#[test]
fn replay_shows_what_the_workload_saw_as_a_table() {
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let c = crate::audit::fixtures::config(dir.path());
    let j = Journal::open(&c).unwrap();
    let sid = "5a00000000000077";
    let long = "x".repeat(100);
    let digest = "39890ba7400e45b26667b78d00b5d8a680d31c35a710eed12199bffb7ac924f0";
    for r in [
        Record::new(Event::SessionStart).session(sid).workload("w"),
        Record::new(Event::Query)
            .session(sid)
            .workload("w")
            .decision(Decision::Mask)
            .statement(super::super::record::Statement::from_sql(
                "SELECT id, card_number, notes FROM payments",
                false,
            ))
            .detail("statement_no", 1),
        Record::new(Event::QueryDone)
            .session(sid)
            .workload("w")
            .rows(10)
            .detail("statement_no", 1)
            .detail(
                "result",
                json!({"columns": ["id", "card_number", "notes"],
                       "rows": [["1", "411111******1111", "paid with 4111 1111 1111 1111"],
                                ["22", "411111******1111", null],
                                ["3", {"format": "binary", "hex": "00ff"}, long]],
                       "sha256": digest, "total_rows": 10, "truncated": false}),
            ),
        // Several result sets, a withheld digest, a cut sample.
        Record::new(Event::QueryDone)
            .session(sid)
            .workload("w")
            .detail("statement_no", 2)
            .detail(
                "result",
                json!({"sets": [{"columns": ["a"], "rows": [["x"]], "total_rows": 1},
                                {"columns": ["b"], "rows": [["y"]], "total_rows": 4}],
                       "total_rows": 7, "truncated": true, "unmasked_pans": 2}),
            ),
    ] {
        j.append_blocking(r).unwrap();
    }
    let mut out = Vec::new();
    replay(&c.path, sid, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim_start().starts_with("id |"))
        .unwrap_or_else(|| panic!("{text}"));
    let cut = format!("{}…", "x".repeat(39));
    assert_eq!(
        &lines[at..at + 6],
        [
            "      id | card_number      | notes".to_owned(),
            "      ---+------------------+-----------------------------------------".to_owned(),
            "      1  | 411111******1111 | paid with 4111 11** **** 1111".to_owned(),
            "      22 | 411111******1111 | NULL".to_owned(),
            format!("      3  | \\x00ff           | {cut}"),
            format!("      … 7 more rows (total 10, sha256 {digest})"),
        ],
        "{text}"
    );
    // The record's line says the rest, without the sample in it.
    assert!(lines[at - 1].contains("query.done"), "{text}");
    assert!(lines[at - 1].contains(r#"{"statement_no":1}"#), "{text}");
    assert!(!text.contains("\"rows\""), "{text}");
    assert!(!text.contains("4111 1111 1111 1111"), "{text}");
    for want in [
        "      a\n      -\n      x\n",
        "      b\n      -\n      y\n      … 3 more rows\n",
        "      … 2 more rows in later result sets\n",
        "      (total 7, sha256 withheld: 2 values held card numbers the policy did not mask)\n",
        "      (the sample stopped at its byte cap)\n",
    ] {
        assert!(text.contains(want), "{want:?} in {text}");
    }
}

#[test]
fn since_accepts_times_dates_and_spans() {
    let now = parse_time("2026-11-25T05:00:00Z").unwrap();
    assert_eq!(parse_since("15m", now).unwrap(), now - 900_000_000);
    assert_eq!(
        parse_since("2026-11-25", now).unwrap(),
        now - 5 * 3_600_000_000
    );
    assert_eq!(
        parse_since("soon", now).unwrap_err().to_string(),
        "--since soon: use an RFC 3339 time, a date, or e.g. 15m, 2h, 7d"
    );
    assert_eq!(
        parse_since("5y", now).unwrap_err().to_string(),
        "--since 5y: the unit is one of s, m, h, d"
    );
    assert!(parse_since("5é", now).is_err());
}

#[test]
fn durations_read_well() {
    assert_eq!(duration(120), "120us");
    assert_eq!(duration(1500), "1.500ms");
    assert_eq!(duration(2_345_000), "2.345s");
}
