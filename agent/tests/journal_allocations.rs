//! The audit journal's commit path allocates nothing per record, as installed (strict mode,
//! `fsync: false`: the appender seals and writes its record itself before its statement is
//! forwarded). A global allocator here counts the allocations of the test's own thread; the
//! records are built before counting starts (building one is one allocation: its bytes), so
//! what is counted is queueing, chaining, sealing, writing, watching the file and answering.
//! A test that would count nothing (another allocator) fails on its control count first.
//! The bench counts the same for the whole agent with uprobes on glibc's `malloc`.
use std::future::Future as _;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use agent_sys::CountingAlloc;
use pgwarden::audit::canon::{Prepared, SessionFields, StatementFields, statement_record};
use pgwarden::audit::record::{Decision, Event, Outcome, Statement};
use pgwarden::audit::sample::record;
use pgwarden::audit::{AuditConfig, AuditMode, Journal, JournaldMirror};

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

/// Appends `rec` and returns its seq; the installed mode never waits, so one poll finishes it.
fn append(j: &Journal, rec: Prepared) -> u64 {
    let mut fut = pin!(j.append_prepared(rec));
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r.expect("the append is written"),
        Poll::Pending => panic!("an inline append waited"),
    }
}

#[test]
fn committing_a_record_allocates_nothing() {
    // The counter counts: one Vec is one allocation.
    let (v, control) = CountingAlloc::count(|| Vec::<u8>::with_capacity(16));
    assert_eq!((v.capacity() >= 16, control), (true, 1));
    let dir = tempfile::tempdir().unwrap();
    let cfg = AuditConfig {
        path: dir.path().join("audit.jsonl"),
        state_dir: dir.path().join("state"),
        journald: JournaldMirror::Off,
        checkpoint_every: 0,
        checkpoint_seconds: 0,
        ..AuditConfig::default()
    };
    assert_eq!(cfg.mode, AuditMode::Strict);
    assert!(!cfg.fsync, "the installed default commits inline");
    let j = Journal::open(&cfg).unwrap();
    let records: Vec<Prepared> = (0..3000)
        .map(|i| Prepared::from_record(&record(i, "w", false)))
        .collect();
    let mut records = records.into_iter();
    // The first records grow the buffers that are kept (batch, lines, slots, queue).
    for rec in records.by_ref().take(1000) {
        append(&j, rec);
    }
    let (last, allocations) = CountingAlloc::count(|| {
        let mut last = 0;
        for rec in records.by_ref() {
            last = append(&j, rec);
        }
        last
    });
    assert_eq!(last, 3000, "every record was written, in order");
    assert_eq!(
        allocations, 0,
        "2000 inline commits made {allocations} heap allocations"
    );
    // A session's records, as the relay builds them (`query` before the statement goes,
    // `query.done` after): built in the buffers of the records sealed before them.
    let session = SessionFields::new("5a00000000000001", "mcp-payments");
    let statement = pgwarden::audit::canon::statement_json(&Statement::from_sql(
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
        false,
    ));
    let build = |event, n| {
        let mut f = StatementFields::new(event, std::time::SystemTime::now(), n);
        f.statement = Some(&statement);
        if event == Event::Query {
            f.decision = Some(Decision::Allow);
        } else {
            f.rows = Some(1);
            f.outcome = Some(Outcome::Success);
        }
        statement_record(&session, &f)
    };
    for n in 0..100 {
        append(&j, build(Event::Query, n));
        append(&j, build(Event::QueryDone, n));
    }
    let (last, allocations) = CountingAlloc::count(|| {
        let mut last = 0;
        for n in 100..1100 {
            append(&j, build(Event::Query, n));
            last = append(&j, build(Event::QueryDone, n));
        }
        last
    });
    assert_eq!(last, 3000 + 2200);
    assert_eq!(
        allocations, 0,
        "2000 records of 1000 statements built and committed with {allocations} heap allocations"
    );
    // Another session appending at the same time: each appender's round also writes what
    // the other queued (and so does the writer thread's group fsync round, every 100 ms).
    // A record sealed by another thread goes back to the thread that built it, with its
    // answer: this thread still builds every record in a buffer it had.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (other, allocations) = std::thread::scope(|scope| {
        let contender = scope.spawn(|| {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                append(&j, build(Event::Query, 10_000 + n));
                n += 1;
            }
            n
        });
        // Contention grows the kept round buffers once (a batch of two, say): not counted.
        for n in 1100..1300 {
            append(&j, build(Event::Query, n));
            append(&j, build(Event::QueryDone, n));
        }
        let (_, allocations) = CountingAlloc::count(|| {
            for n in 1300..2300 {
                append(&j, build(Event::Query, n));
                append(&j, build(Event::QueryDone, n));
            }
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (contender.join().unwrap(), allocations)
    });
    assert!(other > 0, "the other session appended meanwhile");
    assert_eq!(
        allocations, 0,
        "2000 records built and committed beside another session ({other} records) with \
         {allocations} heap allocations"
    );
    let total = 5200 + 2400 + other;
    assert_eq!(j.status().records_written, total);
    j.close();
    let text = std::fs::read_to_string(&cfg.path).unwrap();
    assert_eq!(text.lines().count() as u64, total);
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["seq"], total);
}
