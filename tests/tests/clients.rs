//! Every client passes through the eBPF redirect unchanged: real clients (psql, pgbench,
//! tokio-postgres, node `pg`, psycopg 3) run inside a tagged cgroup against PostgreSQL's real
//! address, get correct results, and each of their connections is counted as redirected.
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pgwarden_e2e::{
    TestCgroup, World, in_cgroup, node_client, pg_bin, python_client, run_ok, run_output,
    tagged_world,
};

/// Rows in the `\copy` round trips: enough for many CopyData messages each way.
const COPY_ROWS: u32 = 20_000;

/// How long psql may take to give up on a cancelled query.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

#[test]
fn psql_multi_statement_copy_and_cancel() {
    let (cg, w) = tagged_world("pgw-e2e-psql", "e2e-psql");
    psql_multi_statement(&w, &cg);
    psql_copy_round_trips(&w, &cg);
    psql_cancel(&w, &cg);
    w.wait_no_sessions();
}

/// One simple Query holding five statements: psql 15 prints every result.
fn psql_multi_statement(w: &World, cg: &TestCgroup) {
    let before = w.redirected();
    let out = run_ok(&mut w.psql(
        Some(cg),
        "127.0.0.1",
        "select 1; select 2; create temp table t(a int); insert into t values (1),(2); \
         select sum(a) from t",
    ));
    assert_eq!(out, "1\n2\nCREATE TABLE\nINSERT 0 2\n3\n", "psql output");
    w.assert_redirected(before, 1, "psql multi-statement");
}

/// `\copy` in and out, CSV and text, with quoting, escapes, NULLs and UTF-8: what comes out
/// must be byte for byte what went in.
fn psql_copy_round_trips(w: &World, cg: &TestCgroup) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let rows = copy_rows();
    let (csv, text) = (csv_of(&rows), text_of(&rows));
    fs::write(file("in.csv"), &csv).expect("write in.csv");
    fs::write(file("in.txt"), &text).expect("write in.txt");

    let before = w.redirected();
    let out = run_ok(
        w.psql_cmd(Some(cg), "127.0.0.1")
            .arg("-q")
            .args([
                "-c",
                "create table t (id int primary key, name text, note text)",
            ])
            .args(["-c", &format!(r"\copy t from '{}' csv", file("in.csv"))])
            .args(["-c", &format!(r"\copy t to '{}' csv", file("out.csv"))])
            .args(["-c", "create table t2 (like t)"])
            .args(["-c", &format!(r"\copy t2 from '{}'", file("in.txt"))])
            .args(["-c", &format!(r"\copy t2 to '{}'", file("out.txt"))])
            .args(["-c", &format!(r"\copy t to '{}'", file("t.txt"))])
            .args([
                "-c",
                "select count(*), sum(id), count(note), \
                 (select count(*) from (table t except table t2) d), \
                 (select count(*) from (table t2 except table t) d) from t",
            ]),
    );
    w.assert_redirected(before, 1, "psql \\copy session");
    let n = u64::from(COPY_ROWS);
    let nulls = rows.iter().filter(|r| r.2.is_none()).count();
    assert_eq!(
        out.trim(),
        format!("{n}|{}|{}|0|0", n * (n + 1) / 2, rows.len() - nulls),
        "row count, id sum, non-null notes, differences between the CSV and text tables"
    );
    assert_same_file(&file("out.csv"), &csv, "\\copy t to (csv)");
    assert_same_file(&file("out.txt"), &text, "\\copy t2 to (text)");
    assert_same_file(
        &file("t.txt"),
        &text,
        "\\copy t to (text) of the CSV-loaded table",
    );
}

/// A running `select pg_sleep(30)` cancelled by SIGINT: psql sends a CancelRequest on a new
/// connection (redirected too), the statement ends at once, and the backend goes away.
fn psql_cancel(w: &World, cg: &TestCgroup) {
    const SLEEP: &str = "select pg_sleep(30)";
    let before = w.redirected();
    let mut child = w
        .psql(Some(cg), "127.0.0.1", SLEEP)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn psql");
    let session = w.session_of(child.id());
    assert_eq!(session["identity"]["comm"], "psql", "{session:#}");
    assert_eq!(session["workload"], "e2e-psql", "{session:#}");

    // Straight to the server, from outside the cgroup: is the statement running yet?
    let find =
        format!("select pid from pg_stat_activity where query = '{SLEEP}' and state = 'active'");
    let deadline = Instant::now() + Duration::from_secs(10);
    let backend = loop {
        let pid = w.pg.psql_direct(&find);
        if !pid.is_empty() {
            break pid;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!(
                "`{SLEEP}` never showed up in pg_stat_activity\n{}",
                dump(&child.wait_with_output().expect("wait psql"))
            );
        }
        sleep(Duration::from_millis(50));
    };

    let sent = Instant::now();
    kill(
        Pid::from_raw(child.id().try_into().expect("pid")),
        Signal::SIGINT,
    )
    .expect("SIGINT psql");
    while child.try_wait().expect("poll psql").is_none() {
        if sent.elapsed() > CANCEL_TIMEOUT {
            let _ = child.kill();
            panic!(
                "psql still running {CANCEL_TIMEOUT:?} after SIGINT: the CancelRequest did not \
                 reach the backend\n{}\n--- agent log ---\n{}",
                dump(&child.wait_with_output().expect("wait psql")),
                w.agent.log()
            );
        }
        sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("wait psql");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("canceling statement due to user request"),
        "psql did not report the cancellation\n{}",
        dump(&out)
    );
    w.assert_redirected(before, 2, "psql query + its CancelRequest");

    let gone =
        format!("select count(*) from pg_stat_activity where pid = {backend} and state = 'active'");
    let deadline = Instant::now() + Duration::from_secs(5);
    while w.pg.psql_direct(&gone) != "0" {
        assert!(
            Instant::now() < deadline,
            "backend {backend} still active after the cancel"
        );
        sleep(Duration::from_millis(50));
    }
}

#[test]
fn pgbench_simple_extended_and_prepared() {
    let (cg, w) = tagged_world("pgw-e2e-pgbench", "e2e-pgbench");
    let pgbench = pg_bin("pgbench");
    // Initialised straight to the server, outside the cgroup.
    let before = w.redirected();
    run_ok(
        Command::new(&pgbench)
            .args(["-i", "-s", "1", "-q"])
            .arg(w.pg.url("127.0.0.1")),
    );
    w.assert_redirected(before, 0, "pgbench -i outside the cgroup");

    let url = w.pg.url("127.0.0.1");
    for (mode, select_only, clients, threads) in [
        ("simple", true, 4, 2),
        ("extended", true, 4, 2),
        ("prepared", true, 4, 2),
        ("prepared", false, 2, 1),
    ] {
        let mut cmd = in_cgroup(&cg.path, &pgbench.to_string_lossy());
        cmd.arg("-n");
        if select_only {
            cmd.arg("-S");
        }
        cmd.args(["-T", "3", "-M", mode, "-c"])
            .arg(clients.to_string())
            .arg("-j")
            .arg(threads.to_string())
            .arg(&url);
        let before = w.redirected();
        let out = run_output(&mut cmd);
        let what = format!(
            "pgbench -M {mode} -c {clients}{}",
            if select_only { " -S" } else { "" }
        );
        assert!(
            out.status.success(),
            "{what} failed: {}\n{}",
            out.status,
            dump(&out)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report = PgbenchReport::parse(&stdout)
            .unwrap_or_else(|| panic!("{what}: cannot read pgbench's report\n{}", dump(&out)));
        assert_eq!(report.mode, mode, "{what}: query mode\n{stdout}");
        assert!(
            report.processed > 0,
            "{what}: no transaction processed\n{stdout}"
        );
        assert_eq!(
            report.failed,
            0,
            "{what}: failed transactions\n{}",
            dump(&out)
        );
        // One connection per client, plus the one pgbench opens first to read the scale.
        w.assert_redirected(before, clients + 1, &what);
    }
    let counts = w.pg.psql_direct(
        "select (select count(*) from pgbench_history) > 0, (select count(*) from pgbench_accounts)",
    );
    assert_eq!(counts, "t|100000", "the read-write run left no history");
    w.wait_no_sessions();
}

#[test]
fn tokio_postgres_extended_protocol_copy_and_notify() {
    let (cg, w) = tagged_world("pgw-e2e-rust", "e2e-rust");
    let bin = env!("CARGO_BIN_EXE_pg-client-rust");
    assert!(Path::new(bin).is_file(), "{bin} is missing");
    let before = w.redirected();
    let out = run_ok(in_cgroup(&cg.path, bin).arg(w.pg.url("127.0.0.1")));
    assert_eq!(out.trim(), "OK");
    w.assert_redirected(before, 1, "tokio-postgres client");
    w.wait_no_sessions();
}

#[test]
fn node_pg_queries_transactions_and_errors() {
    let (cg, w) = tagged_world("pgw-e2e-node", "e2e-node");
    let mut cmd = node_client(&cg.path, &w.pg.url("127.0.0.1"));
    let before = w.redirected();
    let out = run_ok(&mut cmd);
    assert_eq!(out.trim(), "OK");
    w.assert_redirected(before, 1, "node pg client");
    w.wait_no_sessions();
}

#[test]
fn psycopg3_binary_cursor_copy_and_recovery() {
    let (cg, w) = tagged_world("pgw-e2e-python", "e2e-python");
    let mut cmd = python_client(&cg.path, &w.pg.url("127.0.0.1"));
    let before = w.redirected();
    let out = run_ok(&mut cmd);
    assert_eq!(out.trim(), "OK");
    w.assert_redirected(before, 1, "psycopg client");
    w.wait_no_sessions();
}

/// What a pgbench run reports on stdout.
#[derive(Debug, PartialEq)]
struct PgbenchReport {
    mode: String,
    processed: u64,
    failed: u64,
}

impl PgbenchReport {
    /// Reads `query mode: M`, `number of transactions actually processed: N[/M]` and
    /// `number of failed transactions: N (x%)` (absent before pgbench 15: then 0).
    fn parse(stdout: &str) -> Option<PgbenchReport> {
        let field = |key: &str| {
            stdout
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .map(str::trim)
        };
        let number = |text: &str| text.split(['/', ' ']).next()?.parse().ok();
        Some(PgbenchReport {
            mode: field("query mode:")?.to_owned(),
            processed: number(field("number of transactions actually processed:")?)?,
            failed: match field("number of failed transactions:") {
                Some(text) => number(text)?,
                None => 0,
            },
        })
    }
}

/// (id, name, note) rows exercising CSV quoting and text-format escapes.
fn copy_rows() -> Vec<(u32, String, Option<String>)> {
    (1..=COPY_ROWS)
        .map(|i| {
            let name = match i % 6 {
                0 => format!("comma, {i}"),
                1 => format!("say \"hi\" {i}"),
                2 => format!("line one\nline two {i}"),
                3 => format!("ünïcødé € {i}"),
                4 => format!("back\\slash {i}"),
                _ => format!("plain{i}"),
            };
            let note = match i % 7 {
                0 => None,
                1 => Some(String::new()),
                2 => Some(format!("tab\there {i}")),
                3 => Some(format!("cr\r{i}")),
                _ => Some(format!("note {i}")),
            };
            (i, name, note)
        })
        .collect()
}

/// The rows as PostgreSQL's CSV output writes them: a field is quoted when it holds a comma,
/// quote, CR or LF or is empty (an unquoted empty field is NULL).
fn csv_of(rows: &[(u32, String, Option<String>)]) -> String {
    let field = |value: &str| {
        if value.is_empty() || value.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", value.replace('"', "\"\""))
        } else {
            value.to_owned()
        }
    };
    let mut out = String::new();
    for (id, name, note) in rows {
        let note = note.as_deref().map(field).unwrap_or_default();
        let _ = writeln!(out, "{id},{},{note}", field(name));
    }
    out
}

/// The rows as PostgreSQL's text COPY output writes them: tab-separated, `\N` for NULL, and
/// backslash escapes for backslash, tab, LF and CR.
fn text_of(rows: &[(u32, String, Option<String>)]) -> String {
    let field = |value: &str| {
        value
            .replace('\\', r"\\")
            .replace('\t', r"\t")
            .replace('\n', r"\n")
            .replace('\r', r"\r")
    };
    let mut out = String::new();
    for (id, name, note) in rows {
        let note = note.as_deref().map_or_else(|| r"\N".to_owned(), field);
        let _ = writeln!(out, "{id}\t{}\t{note}", field(name));
    }
    out
}

#[track_caller]
fn assert_same_file(path: &str, want: &str, what: &str) {
    let got =
        fs::read_to_string(path).unwrap_or_else(|err| panic!("{what}: cannot read {path}: {err}"));
    if got != want {
        let line = got
            .lines()
            .zip(want.lines())
            .position(|(g, w)| g != w)
            .unwrap_or_else(|| got.lines().count().min(want.lines().count()));
        panic!(
            "{what}: {path} differs from what went in ({} vs {} bytes); first difference at line {}:\n\
             got:  {:?}\nwant: {:?}",
            got.len(),
            want.len(),
            line + 1,
            got.lines().nth(line),
            want.lines().nth(line)
        );
    }
}

fn dump(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- end ---",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

#[test]
fn reads_pgbench_reports() {
    let pg15 = "transaction type: <builtin: select only>\nscaling factor: 1\nquery mode: prepared\n\
                number of clients: 4\nnumber of threads: 2\nmaximum number of tries: 1\n\
                duration: 3 s\nnumber of transactions actually processed: 51234\n\
                number of failed transactions: 0 (0.000%)\nlatency average = 0.2 ms\n";
    assert_eq!(
        PgbenchReport::parse(pg15),
        Some(PgbenchReport {
            mode: "prepared".into(),
            processed: 51234,
            failed: 0
        })
    );
    let pg14 = "query mode: simple\nnumber of transactions actually processed: 10/10\n";
    assert_eq!(
        PgbenchReport::parse(pg14),
        Some(PgbenchReport {
            mode: "simple".into(),
            processed: 10,
            failed: 0
        })
    );
    assert_eq!(PgbenchReport::parse("no report"), None);
}
