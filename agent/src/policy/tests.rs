//! The shipped policies' own cases, and the bypass cases that need session state (PREPARE
//! then EXECUTE, startup options, fast-path calls), table-driven.
use std::path::{Path, PathBuf};

use super::*;
use crate::config::{Config, WorkloadConfig};

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

#[test]
fn shipped_policies_pass_their_own_cases() {
    let mut count = 0;
    for entry in std::fs::read_dir(policies_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let results = run_tests(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(!results.is_empty(), "{} has no cases", path.display());
            for r in results {
                count += 1;
                assert!(
                    r.pass,
                    "{}: [{}] {} expected {}, got {}",
                    path.display(),
                    r.profile,
                    r.sql,
                    r.expected,
                    r.got
                );
            }
        }
    }
    assert!(count >= 40, "only {count} cases ran");
}

fn engine() -> Arc<Engine> {
    let mut config = Config::parse(Path::new("/x/pgwarden.yaml"), "").unwrap();
    for (name, profile) in [("reader", "reader"), ("writer", "writer")] {
        config.workloads.push(WorkloadConfig {
            name: name.into(),
            systemd_unit: vec![],
            cgroup: vec![],
            policy: Some(policies_dir().join("pci-dss.yaml")),
            profile: Some(profile.into()),
            upstream_auth: None,
        });
    }
    config.workloads.push(WorkloadConfig {
        name: "bare".into(),
        systemd_unit: vec![],
        cgroup: vec![],
        policy: None,
        profile: None,
        upstream_auth: None,
    });
    Arc::new(Engine::new(&config, Path::new("/x/pgwarden.yaml")).unwrap())
}

/// A session's decisions, as the relay makes them (no grants, lexer-safe).
struct Session {
    engine: Arc<Engine>,
    policy: SessionPolicy,
}

impl Session {
    fn statement(&mut self, st: &Statement<'_>) -> Verdict {
        let ctx = Context {
            statement: *st,
            lexer_unsafe: None,
            grant: &|_| None,
        };
        self.policy.decide(&self.engine.current(), &ctx).verdict
    }
}

fn open(engine: &Arc<Engine>, workload: &str) -> Session {
    Session {
        engine: Arc::clone(engine),
        policy: SessionPolicy::new(workload, "1"),
    }
}

fn start(engine: &Engine, workload: &str, options: Option<&str>) -> Verdict {
    match startup(&engine.current(), workload, options) {
        Ok(()) => Verdict::Allow,
        Err(d) => Verdict::Deny(d),
    }
}

fn rule(v: &Verdict) -> Option<&str> {
    match v {
        Verdict::Allow => None,
        Verdict::Deny(d) => Some(d.rule.as_str()),
        Verdict::Hold(r) => Some(r.id.as_str()),
    }
}

#[test]
fn session_level_cases() {
    let hooks = engine();
    let q = |sql| Statement {
        kind: StatementKind::Query,
        sql,
        name: "",
        shape: None,
    };

    // Case 11: PREPARE then EXECUTE, each denied.
    let mut s = open(&hooks, "writer");
    assert_eq!(
        rule(&s.statement(&q("PREPARE p AS DELETE FROM payments"))),
        Some("dml.unscoped")
    );
    assert_eq!(rule(&s.statement(&q("EXECUTE p"))), Some("dml.unscoped"));
    // A scoped one prepares and executes.
    assert_eq!(
        rule(&s.statement(&q("PREPARE ok AS DELETE FROM payments WHERE id = $1"))),
        None
    );
    assert_eq!(rule(&s.statement(&q("EXECUTE ok(7)"))), None);

    // Case 29: a Parse is decided at Parse.
    let mut r = open(&hooks, "reader");
    let parse = Statement {
        kind: StatementKind::Parse,
        sql: "DROP TABLE payments",
        name: "s1",
        shape: None,
    };
    assert_eq!(rule(&r.statement(&parse)), Some("class.ddl"));
    // Case 30: fast-path FunctionCall.
    assert_eq!(
        rule(&r.statement(&Statement {
            kind: StatementKind::FunctionCall,
            sql: "",
            name: "",
            shape: None,
        })),
        Some("fastpath")
    );
    // Case 36: a read-only transaction.
    for sql in [
        "BEGIN TRANSACTION READ ONLY",
        "SELECT id FROM payments LIMIT 10",
        "ROLLBACK",
    ] {
        assert_eq!(rule(&r.statement(&q(sql))), None, "{sql}");
    }

    // Case 31: startup options carrying -c settings.
    assert_eq!(
        rule(&start(&hooks, "reader", Some("-c role=postgres"))),
        Some("role.change")
    );
    assert_eq!(
        rule(&start(
            &hooks,
            "reader",
            Some("--session-authorization=postgres")
        )),
        Some("role.change")
    );
    assert_eq!(
        rule(&start(&hooks, "reader", Some("-cstatement_timeout=5s"))),
        None
    );
    assert_eq!(
        rule(&start(&hooks, "reader", Some("-c search_path=evil"))),
        Some("search-path.change")
    );

    // Workloads without a policy, or unknown to the config: everything denied.
    assert_eq!(
        rule(&open(&hooks, "bare").statement(&q("SELECT 1"))),
        Some("policy.none")
    );
    assert_eq!(
        rule(&open(&hooks, "stranger").statement(&q("SELECT 1"))),
        Some("workload.unknown")
    );
}

#[test]
fn startup_options_are_split_like_postgres() {
    assert_eq!(
        startup_settings("-c role=x --search-path=y -cwork_mem=4MB -v"),
        vec![
            ("role".into(), "x".into()),
            ("search_path".into(), "y".into()),
            ("work_mem".into(), "4MB".into())
        ]
    );
}

#[test]
fn verdicts_are_cached_per_profile() {
    let engine = engine();
    let set = engine.current();
    let reader = &set.workloads["reader"];
    let a = reader.decide("SELECT id FROM payments");
    let b = reader.decide("SELECT id FROM payments");
    assert!(Arc::ptr_eq(&a, &b));
}

#[test]
fn broken_policy_files_name_their_position() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.yaml");
    for (text, want) in [
        (
            "version: 1\nprofiles:\n  r:\n    classes: [read, bogus]\n",
            "p.yaml:4:",
        ),
        (
            "version: 1\nprofiles:\n  r:\n    tables:\n      payments: [read]\n",
            "p.yaml:5:",
        ),
        (
            "version: 1\nprofiles:\n  r:\n    extends: nope\n",
            "p.yaml:4:",
        ),
        ("version: 2\nprofiles: {}\n", "p.yaml:1:"),
        ("version: 1\nprofiles:\n  r: {}\n  oops\n", "p.yaml:"),
    ] {
        std::fs::write(&p, text).unwrap();
        let e = file::load(&p).unwrap_err().to_string();
        assert!(e.contains(want), "{text:?} gave {e}");
    }
}

/// Statements with literal slots (`{n}` a number, `{s}` a string) whose verdicts may or may not
/// depend on the values: constant-true WHERE clauses, LIMITs, sleep bounds, settings.
const SHAPE_TEMPLATES: &[&str] = &[
    "SELECT abalance FROM pgbench_accounts WHERE aid = {n}",
    "SELECT id FROM payments WHERE id = {n}",
    "SELECT id FROM payments LIMIT {n}",
    "SELECT id FROM payments WHERE id > {n} FETCH FIRST {n} ROWS ONLY",
    "SELECT count(*) FROM payments WHERE amount > {n}",
    "SELECT {s}::text, id FROM payments LIMIT {n}",
    "SELECT * FROM secrets WHERE id = {n}",
    "SELECT card_number FROM payments WHERE id = {n}",
    "SELECT id FROM payments WHERE card_number LIKE {s}",
    "DELETE FROM payments WHERE id = {n}",
    "DELETE FROM payments WHERE id = {n} OR {n} = {n}",
    "DELETE FROM payments WHERE {s} = {s}",
    "DELETE FROM payments WHERE cardholder = {s} OR {s} <> {s}",
    "UPDATE payments SET amount = {n} WHERE id > {n} OR {n} > {n}",
    "UPDATE payments SET amount = {n} WHERE {n} IS NOT NULL",
    "EXPLAIN ANALYZE DELETE FROM payments WHERE {n} = {n}",
    "WITH d AS (DELETE FROM payments WHERE id = {n} OR {n} < {n} RETURNING *) SELECT count(*) FROM d",
    "SELECT pg_sleep({n})",
    "SELECT set_config({s}, {s}, false)",
    "SET standard_conforming_strings = {s}",
    "SET client_encoding TO {s}",
    "SET statement_timeout = {n}",
    "BEGIN; SELECT id FROM payments WHERE id = {n}; COMMIT",
];

const NUMBERS: &[&str] = &["0", "1", "2", "5", "50", "100", "101", "1000", "1.5"];
const STRINGS: &[&str] = &[
    "'a'", "'b'", "'on'", "'off'", "'SJIS'", "'UTF8'", "'x''y'", "'1'",
];

fn instantiate(template: &str, picks: &[usize]) -> String {
    let mut out = String::new();
    let mut rest = template;
    let mut k = 0;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let pick = picks.get(k).copied().unwrap_or(0);
        k += 1;
        if rest[i..].starts_with("{n}") {
            out.push_str(NUMBERS[pick % NUMBERS.len()]);
        } else {
            out.push_str(STRINGS[pick % STRINGS.len()]);
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    out
}

proptest::proptest! {
    /// Whatever order statements arrive in, the verdict a cache serves (by text or by shape)
    /// is the verdict a fresh parse of that very text gives.
    #[test]
    fn the_shape_cache_never_changes_a_verdict(
        seq in proptest::collection::vec(
            (0..SHAPE_TEMPLATES.len(), proptest::collection::vec(0usize..16, 6)),
            1..60,
        ),
    ) {
        let engine = engine();
        let set = engine.current();
        for profile in ["reader", "writer"] {
            let compiled = Compiled::for_bench(set.workloads[profile].profile.clone(), PathBuf::new());
            for (t, picks) in &seq {
                let sql = instantiate(SHAPE_TEMPLATES[*t], picks);
                let cached = compiled.decide(&sql);
                let fresh = compiled.profile.decide(&analyze::analyze(&sql));
                proptest::prop_assert_eq!(&cached.outcome, &fresh, "{} [{}]", sql, profile);
            }
        }
    }
}

#[test]
fn literal_free_verdicts_are_shared_by_shape() {
    let engine = engine();
    let set = engine.current();
    let reader = &set.workloads["reader"];
    let shaped = |sql: &str| {
        let text = crate::sqltext::Text::of(sql);
        reader.decide_shaped(sql, text.shape.as_deref()).1
    };
    assert_eq!(
        shaped("SELECT id FROM payments WHERE id = 1"),
        CacheHit::Miss
    );
    assert_eq!(
        shaped("SELECT id FROM payments WHERE id = 2"),
        CacheHit::Shape
    );
    assert_eq!(
        shaped("SELECT id FROM payments WHERE id = 1"),
        CacheHit::Text
    );
    assert_eq!(
        shaped("SELECT id FROM payments WHERE id = 'x'"),
        CacheHit::Miss
    );
    // A LIMIT decides the bulk-read rule: by text only.
    assert_eq!(shaped("SELECT id FROM payments LIMIT 5"), CacheHit::Miss);
    assert_eq!(shaped("SELECT id FROM payments LIMIT 500"), CacheHit::Miss);
    assert_eq!(shaped("SELECT id FROM payments LIMIT 5"), CacheHit::Text);
    // No shape for an escape string: parsed, then cached by text.
    assert_eq!(
        shaped("SELECT E'\\'' FROM payments LIMIT 1"),
        CacheHit::Miss
    );
}

/// Issue 17, defect (a): a fast-path call after a masked read is decided, and so recorded, on
/// its own: not masked, no statement facts, and its own version's policy hash. (The relay
/// once read these from the previous statement's decision.)
#[test]
fn a_fast_path_decision_carries_its_own_facts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    std::fs::write(
        &file,
        "version: 1\nprofiles:\n  reader:\n    classes: [read, function-call]\n    allow_fastpath: true\n    tables:\n      public.payments: [read]\n    mask:\n      columns:\n        public.payments.card_number: pan\n",
    )
    .unwrap();
    let mut config = Config::parse(Path::new("/x/pgwarden.yaml"), "").unwrap();
    config.workloads.push(WorkloadConfig {
        name: "reader".into(),
        systemd_unit: vec![],
        cgroup: vec![],
        policy: Some(file),
        profile: None,
        upstream_auth: None,
    });
    let engine = Engine::new(&config, Path::new("/x/pgwarden.yaml")).unwrap();
    let set = engine.current();
    let mut s = SessionPolicy::new("reader", "1");
    let decide = |s: &mut SessionPolicy, kind, sql| {
        s.decide(
            &set,
            &Context {
                statement: Statement {
                    kind,
                    sql,
                    name: "",
                    shape: None,
                },
                lexer_unsafe: None,
                grant: &|_| None,
            },
        )
    };
    let read = decide(
        &mut s,
        StatementKind::Query,
        "SELECT card_number FROM payments",
    );
    assert_eq!(read.verdict, Verdict::Allow);
    assert!(read.masked());
    assert_eq!(read.command(), "SELECT");
    let call = decide(&mut s, StatementKind::FunctionCall, "");
    assert_eq!(
        call.verdict,
        Verdict::Allow,
        "the profile allows fast-path calls"
    );
    assert!(!call.masked(), "a fast-path call is not a masked read");
    assert!(call.facts.is_none());
    assert_eq!(call.command(), "");
    assert_eq!(call.policy_hash, read.policy_hash);
    assert_eq!(call.version, set.version);
}

#[test]
fn writes_carry_their_row_limit_and_prepare_hands_it_to_execute() {
    let engine = engine();
    let mut s = open(&engine, "writer");
    let mut guard = |sql: &str| {
        let ctx = Context {
            statement: Statement {
                kind: StatementKind::Query,
                sql,
                name: "",
                shape: None,
            },
            lexer_unsafe: None,
            grant: &|_| None,
        };
        s.policy
            .decide(&s.engine.current(), &ctx)
            .guard
            .map(|g| (g.rule, g.max_rows))
    };
    let limit = Some((WRITE_ROWS.to_owned(), 100));
    assert_eq!(guard("UPDATE payments SET amount = 1 WHERE id > 0"), limit);
    assert_eq!(
        guard("WITH d AS (DELETE FROM payments WHERE id > 0 RETURNING 1) SELECT count(*) FROM d"),
        limit
    );
    assert_eq!(
        guard("SELECT id FROM payments LIMIT 5"),
        None,
        "reads run as they are"
    );
    // PREPARE runs nothing; its EXECUTE is the write.
    assert_eq!(
        guard("PREPARE w AS UPDATE payments SET amount = 2 WHERE id > 0"),
        None
    );
    assert_eq!(guard("EXECUTE w"), limit);
    // The reader may not write at all; the limit is the writer's.
    let mut r = open(&engine, "reader");
    let v = r.statement(&Statement {
        kind: StatementKind::Query,
        sql: "UPDATE payments SET amount = 1 WHERE id = 1",
        name: "",
        shape: None,
    });
    assert_eq!(rule(&v), Some("class.write"));
}

#[test]
fn a_rule_with_max_rows_tightens_the_limit_and_transaction_control_cannot_share_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(
        &path,
        "version: 1\nprofiles:\n  w:\n    classes: [write, read, transaction]\n    writes: {max_rows: 50}\n    rules:\n      - {id: few-deletes, action: deny, classes: [write], tables: [public.t], max_rows: 3, reason: t is precious}\n",
    )
    .unwrap();
    let (f, hash) = file::load(&path).unwrap();
    let p = decide::compile(&f, &hash, "w").unwrap();
    let limit = |sql: &str| {
        let o = p.decide(&analyze::analyze(sql));
        (
            o.guard.map(|g| (g.rule, g.max_rows)),
            o.denied.map(|d| d.rule),
        )
    };
    assert_eq!(
        limit("DELETE FROM t WHERE id > 0"),
        (Some(("few-deletes".into(), 3)), None)
    );
    assert_eq!(
        limit("DELETE FROM u WHERE id > 0"),
        (Some((WRITE_ROWS.into(), 50)), None)
    );
    assert_eq!(
        limit("BEGIN; DELETE FROM u WHERE id > 0; COMMIT"),
        (None, Some(WRITE_ROWS.into()))
    );
    // max_rows belongs to deny rules.
    std::fs::write(
        &path,
        "version: 1\nprofiles:\n  w:\n    rules:\n      - {id: x, action: require_approval, approvers: [root], max_rows: 3}\n",
    )
    .unwrap();
    let e = file::load(&path).unwrap_err().to_string();
    assert!(e.contains("max_rows limits writes by effect"), "{e}");
}

#[test]
fn run_as_holds_one_plain_statement_and_refuses_what_could_run_unread_code() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(
        &path,
        "version: 1\nprofiles:\n  w:\n    classes: [read, write, transaction, function-call]\n    rules:\n      - {id: refunds, action: require_approval, approvers: [root], classes: [write], tables: [public.refunds], run_as: payments_admin}\n",
    )
    .unwrap();
    let (f, hash) = file::load(&path).unwrap();
    let p = decide::compile(&f, &hash, "w").unwrap();
    let decide = |sql: &str| {
        let o = p.decide(&analyze::analyze(sql));
        (
            o.hold.map(|r| (r.id.clone(), r.run_as.clone())),
            o.denied.map(|d| (d.rule, d.reason)),
        )
    };
    let (hold, denied) = decide("UPDATE refunds SET state = 'sent' WHERE id = 7");
    assert_eq!(
        hold,
        Some(("refunds".into(), Some("payments_admin".into())))
    );
    assert_eq!(denied, None);
    // Not this rule's: no elevation.
    assert_eq!(decide("UPDATE other SET x = 1 WHERE id = 1"), (None, None));
    for sql in [
        "UPDATE refunds SET state = 'sent' WHERE id = 7; SELECT 1",
        "BEGIN; UPDATE refunds SET state = 'sent' WHERE id = 7",
        "UPDATE refunds SET state = my_func(state) WHERE id = 7",
        "WITH x AS (SELECT evil()) UPDATE refunds SET state = 'x' WHERE id = 7",
    ] {
        let (hold, denied) = decide(sql);
        assert_eq!(hold, None, "{sql}");
        let (rule, reason) = denied.unwrap_or_else(|| panic!("{sql}: not denied"));
        assert_eq!(rule, "refunds", "{sql}");
        assert!(
            reason.contains("runs statements as `payments_admin`"),
            "{sql}: {reason}"
        );
    }
    // Read-only built-ins are fine.
    assert!(
        decide("UPDATE refunds SET state = lower('SENT') WHERE id = 7")
            .0
            .is_some()
    );
    for (yaml, why) in [
        (
            "{id: x, action: deny, run_as: r}",
            "run_as goes with `action: require_approval`",
        ),
        (
            "{id: x, action: require_approval, approvers: [root], rows_over: 5, run_as: r}",
            "cannot go with max_rows, rows_over or budget",
        ),
        (
            "{id: x, action: require_approval, approvers: [root], run_as: ''}",
            "1 to 63 bytes",
        ),
    ] {
        std::fs::write(
            &path,
            format!("version: 1\nprofiles:\n  w:\n    rules:\n      - {yaml}\n"),
        )
        .unwrap();
        let e = file::load(&path).unwrap_err().to_string();
        assert!(e.contains(why), "{yaml}: {e}");
    }
}
