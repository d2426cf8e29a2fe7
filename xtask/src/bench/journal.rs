//! Journal bytes per statement: a fixed amount of `pgbench -S` through a pci-dss agent with
//! the audit journal as installed, for the binary under test and (`--before BIN`) an older one,
//! then the journal read back: its bytes, its records by event, per statement.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pgwarden_e2e::{in_cgroup, pg_bin};
use serde_json::{Map, Value, json};

use super::pgbench::{QueryMode, parse_summary, tail};
use super::rig::{Agent, Rig};
use super::{Section, Thousands, first_line_of};
use crate::cmd;

/// The journal's file name in each binary's directory.
const JOURNAL: &str = "audit.jsonl";
/// The per-statement events the table shows apart.
const STATEMENT_EVENTS: [&str; 2] = ["query", "query.done"];

/// Which binary a row is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// `--before BIN`.
    Before,
    /// The binary the rest of the bench runs.
    UnderTest,
}

impl Role {
    fn key(self) -> &'static str {
        match self {
            Role::Before => "before",
            Role::UnderTest => "under-test",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Role::Before => "before (`--before`)",
            Role::UnderTest => "under test",
        }
    }
}

/// Records and bytes (newline included) of each event.
#[derive(Clone, Debug, Default)]
struct Tally {
    events: BTreeMap<String, (u64, u64)>,
}

impl Tally {
    /// Adds every line of `text` (a trailing partial line too).
    fn add(&mut self, text: &[u8]) {
        for line in text.split_inclusive(|&b| b == b'\n') {
            let body = line.strip_suffix(b"\n").unwrap_or(line);
            if body.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let event = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v["event"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "(not a JSON record)".to_owned());
            let entry = self.events.entry(event).or_default();
            entry.0 += 1;
            entry.1 += line.len() as u64;
        }
    }

    fn records(&self) -> u64 {
        self.events.values().map(|e| e.0).sum()
    }

    fn bytes(&self) -> u64 {
        self.events.values().map(|e| e.1).sum()
    }

    /// (records, bytes) of `event`.
    fn event(&self, event: &str) -> (u64, u64) {
        self.events.get(event).copied().unwrap_or_default()
    }

    /// Mean bytes of an `event` record; NaN when there is none.
    #[allow(clippy::cast_precision_loss, reason = "byte counts")]
    fn mean(&self, event: &str) -> f64 {
        match self.event(event) {
            (0, _) => f64::NAN,
            (n, b) => b as f64 / n as f64,
        }
    }

    fn json(&self) -> Value {
        let mut events = Map::new();
        for (name, &(n, b)) in &self.events {
            events.insert(
                name.clone(),
                json!({ "records": n, "bytes": b, "bytes_per_record": super::pgbench::finite(self.mean(name)) }),
            );
        }
        Value::Object(events)
    }
}

/// `a / b` for display; NaN when `b` is 0.
#[allow(clippy::cast_precision_loss, reason = "byte and record counts")]
fn per(a: u64, b: u64) -> f64 {
    if b == 0 {
        f64::NAN
    } else {
        a as f64 / b as f64
    }
}

/// One pgbench run's share of the journal.
#[derive(Clone, Debug)]
struct ModeRun {
    mode: QueryMode,
    statements: u64,
    tally: Tally,
}

/// One binary's measurement.
#[derive(Clone, Debug)]
struct Row {
    role: Role,
    bin: PathBuf,
    version: String,
    /// Whether its config had `audit.state_dir` (binaries before it refuse the key).
    state_dir: bool,
    /// pgbench's transactions, one statement each under `-S`.
    statements: u64,
    /// The journal's files (the live one and rotated ones).
    files: usize,
    /// The whole journal, read after the agent stopped.
    total: Tally,
    modes: Vec<ModeRun>,
}

impl Row {
    fn bytes_per_statement(&self) -> f64 {
        per(self.total.bytes(), self.statements)
    }

    fn name(&self) -> String {
        format!(
            "{}: `{}` (`{}`)",
            self.role.label(),
            self.version,
            self.bin.display()
        )
    }
}

/// The section.
struct Journal {
    clients: u32,
    threads: u32,
    transactions: u32,
    rows: Vec<Row>,
}

/// Measures the binary under test and the `--before` one, one after the other.
pub fn bytes_per_statement(rig: &mut Rig) -> Result<Box<dyn Section>> {
    let (clients, transactions) = if rig.plan.smoke { (1, 200) } else { (4, 2000) };
    let threads = clients.min(
        std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1)),
    );
    let mut binaries = Vec::new();
    if let Some(before) = rig.plan.before.clone() {
        binaries.push((Role::Before, before));
    }
    binaries.push((Role::UnderTest, rig.bin.clone()));
    let mut rows = Vec::new();
    for (role, bin) in binaries {
        rig.check_interrupt()?;
        let row = measure(rig, role, &bin, clients, threads, transactions)
            .with_context(|| format!("the {} binary {}", role.key(), bin.display()))?;
        println!(
            "  {:<12} {:>8} statements  {:>12} bytes  {:>7.1} bytes/statement  {:.2} records/statement  query {:.0} B  query.done {:.0} B",
            role.key(),
            Thousands(row.statements as f64).to_string(),
            Thousands(row.total.bytes() as f64).to_string(),
            row.bytes_per_statement(),
            per(row.total.records(), row.statements),
            row.total.mean("query"),
            row.total.mean("query.done"),
        );
        rows.push(row);
    }
    Ok(Box::new(Journal {
        clients,
        threads,
        transactions,
        rows,
    }))
}

/// Starts `bin`'s agent on a fresh journal, runs pgbench in each mode, stops it, reads the
/// journal.
fn measure(
    rig: &mut Rig,
    role: Role,
    bin: &Path,
    clients: u32,
    threads: u32,
    transactions: u32,
) -> Result<Row> {
    let dir = rig.dir.path().join("journal").join(role.key());
    let state = dir.join("state");
    fs::create_dir_all(&state).with_context(|| format!("cannot create {}", state.display()))?;
    let audit = dir.join(JOURNAL);
    let name = format!("journal-{}", role.key());
    let version = first_line_of(Command::new(bin).arg("--version"));

    // `audit.state_dir` keeps the chain's head in the bench's temp dir; a binary from before
    // the key refuses it, and runs without it.
    let mut state_dir = true;
    let yaml = rig.journal_config(&name, &audit, Some(&state));
    let mut agent = match rig.start_agent_from(bin, &name, &yaml)? {
        Ok(agent) => agent,
        Err(log) if log.contains("state_dir") => {
            state_dir = false;
            clear_journal(&audit)?;
            let yaml = rig.journal_config(&name, &audit, None);
            match rig.start_agent_from(bin, &name, &yaml)? {
                Ok(agent) => agent,
                Err(log) => bail!("{log}"),
            }
        }
        Err(log) => bail!("{log}"),
    };
    println!(
        "bench: pgwarden agent `{name}` running (pid {}, {version}{})",
        agent.pid(),
        if state_dir {
            ""
        } else {
            ", without audit.state_dir"
        }
    );

    let mut offset = settle(&mut agent, &audit)?;
    let mut modes = Vec::new();
    let mut statements = 0;
    for &mode in &rig.plan.modes.clone() {
        rig.check_interrupt()?;
        let before = agent.counter("redirected")?;
        let mut command = in_cgroup(
            &rig.cgroups.journal.path,
            &pg_bin("pgbench").to_string_lossy(),
        );
        command
            .args(["-n", "-S", "-M", mode.arg()])
            .args(["-c", &clients.to_string(), "-j", &threads.to_string()])
            .args(["-t", &transactions.to_string()])
            .args(["-h", "127.0.0.1", "-p", &rig.pg.port.to_string()])
            .args(["-U", "postgres", "postgres"]);
        let out = cmd::output(&mut command)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let summary = if out.status.success() {
            parse_summary(&stdout)
        } else {
            Err(anyhow::anyhow!("{}", out.status))
        };
        let (_, done) = summary.map_err(|e| {
            anyhow::anyhow!(
                "pgbench -M {} through `{name}` failed: {e:#}\n{}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- agent log (tail) ---\n{}",
                mode.arg(),
                cmd::describe(&command),
                stdout.trim_end(),
                String::from_utf8_lossy(&out.stderr).trim_end(),
                tail(&agent.log_text(), 20)
            )
        })?;
        let after = agent.counter("redirected")?;
        if after < before + u64::from(clients) {
            bail!(
                "the `redirected` counter of `{name}` went {before} -> {after}: pgbench did not go \
                 through pgwarden"
            );
        }
        // The sessions' last records (`session.end`) follow pgbench's exit.
        let end = settle(&mut agent, &audit)?;
        let mut tally = Tally::default();
        tally.add(&read_range(&audit, offset, end)?);
        offset = end;
        println!(
            "  {:<12} -M {:<8} {done} statements, {} bytes ({:.1}/statement)",
            role.key(),
            mode.arg(),
            Thousands(tally.bytes() as f64),
            per(tally.bytes(), done)
        );
        statements += done;
        modes.push(ModeRun {
            mode,
            statements: done,
            tally,
        });
    }
    // Stopped (and detached) before the journal is read: its last records are in.
    drop(agent);

    let files = chain_files(&audit)?;
    let mut total = Tally::default();
    for file in &files {
        total.add(&read_uncompressed(file)?);
    }
    if total.event("query").0 == 0 {
        bail!(
            "{} has no `query` records after {statements} statements",
            audit.display()
        );
    }
    Ok(Row {
        role,
        bin: bin.to_path_buf(),
        version,
        state_dir,
        statements,
        files: files.len(),
        total,
        modes,
    })
}

/// Removes what a refused start may have left of a journal.
fn clear_journal(audit: &Path) -> Result<()> {
    let Some(dir) = audit.parent() else {
        return Ok(());
    };
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Waits until the agent lists no session and the journal stops growing (at most 10 s); the
/// journal's size then.
fn settle(agent: &mut Agent, audit: &Path) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let size = || fs::metadata(audit).map_or(0, |m| m.len());
    let mut last = size();
    loop {
        agent.alive()?;
        sleep(Duration::from_millis(300));
        let now = size();
        let idle = agent.sessions().is_ok_and(|n| n == 0);
        if (idle && now == last) || Instant::now() >= deadline {
            return Ok(now);
        }
        last = now;
    }
}

/// Bytes `from..to` of `path`.
fn read_range(path: &Path, from: u64, to: u64) -> Result<Vec<u8>> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let len = bytes.len();
    let at = |n: u64| usize::try_from(n).unwrap_or(usize::MAX).min(len);
    Ok(bytes[at(from)..at(to)].to_vec())
}

/// The files of the journal `audit`: the live file and its rotated siblings, `PATH.<n>` (older
/// binaries), `PATH.<first>-<last>` and their `.zst` (the plain one when both exist, as
/// readers do). Not `PATH.lock` nor a compression's `.tmp`.
fn chain_files(audit: &Path) -> Result<Vec<PathBuf>> {
    let dir = audit.parent().context("journal path has no directory")?;
    let name = audit
        .file_name()
        .context("journal path has no file name")?
        .to_string_lossy()
        .into_owned();
    let mut files = Vec::new();
    if audit.is_file() {
        files.push(audit.to_path_buf());
    }
    let prefix = format!("{name}.");
    let mut rotated: Vec<String> = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let file = entry?.file_name().to_string_lossy().into_owned();
        if file
            .strip_prefix(&prefix)
            .is_some_and(|rest| rotated_suffix(rest).is_some())
        {
            rotated.push(file);
        }
    }
    rotated.sort();
    for file in &rotated {
        if let Some(plain) = file.strip_suffix(".zst")
            && rotated.iter().any(|f| f == plain)
        {
            continue;
        }
        files.push(dir.join(file));
    }
    Ok(files)
}

/// `Some(compressed)` when `rest` (what follows `PATH.`) names a rotated journal file: `<n>`
/// or `<first>-<last>`, optionally `.zst`.
fn rotated_suffix(rest: &str) -> Option<bool> {
    let (stem, compressed) = match rest.strip_suffix(".zst") {
        Some(stem) => (stem, true),
        None => (rest, false),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let ok = match stem.split_once('-') {
        Some((a, b)) => digits(a) && digits(b),
        None => digits(stem),
    };
    ok.then_some(compressed)
}

/// A journal file's uncompressed bytes (`zstd -dc` for `.zst`).
fn read_uncompressed(path: &Path) -> Result<Vec<u8>> {
    if path.extension().is_some_and(|e| e == "zst") {
        let zstd = cmd::find_tool("zstd").with_context(|| {
            format!(
                "{} is zstd-compressed and `zstd` is not on PATH",
                path.display()
            )
        })?;
        let out = cmd::output(Command::new(zstd).arg("-dc").arg(path))?;
        if !out.status.success() {
            bail!("zstd -dc {} failed: {}", path.display(), out.status);
        }
        return Ok(out.stdout);
    }
    fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Decimal gigabytes per million statements.
fn gb_per_million(bytes_per_statement: f64) -> f64 {
    bytes_per_statement * 1e6 / 1e9
}

fn fixed(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "-".into()
    }
}

impl Section for Journal {
    fn key(&self) -> &'static str {
        "journal"
    }

    fn markdown(&self) -> String {
        let modes: Vec<&str> = self
            .rows
            .first()
            .map(|r| r.modes.iter().map(|m| m.mode.arg()).collect())
            .unwrap_or_default();
        let mut md = format!(
            "## Audit journal bytes per statement\n\n\
             What the journal costs on disk, from a real run: for each binary, one pgwarden agent \
             (the pci-dss agent's setup: derived policy, profile `reader`, masking) with a fresh \
             journal and `audit: {{mode: strict, fsync: true, journald: off, max_bytes: 1 GiB}}` \
             (the opt-in durability; the default's group fsync writes the same bytes; the journald mirror is off because it does not change \
             the file; rotation is out of reach, so the journal is one file), and \
             `pgbench -n -S -M <mode> -c {c} -j {j} -t {t}` in a tagged cgroup for each mode \
             ({modes}), one after the other. *Journal bytes* is the whole journal read back after \
             the agent stopped (every file of the chain, uncompressed, newlines included): the \
             per-statement `query` and `query.done` records and everything else the agent wrote \
             (`agent.start`, `session.start`/`session.end` of pgbench's connections, its \
             clients' and the one it opens first, `audit.checkpoint`). *Statements* are \
             pgbench's transactions (one statement each under `-S`; the `query` records also \
             count the few statements pgbench's first connection sends). GB per million statements is decimal (10^9 bytes).\n\n\
             | binary | statements | journal bytes | bytes/statement | records/statement | bytes per `query` record | bytes per `query.done` record | GB per 1M statements |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|\n",
            c = self.clients,
            j = self.threads,
            t = self.transactions,
            modes = modes.join(", "),
        );
        for r in &self.rows {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.1} | {:.2} | {} | {} | {:.3} |",
                r.name(),
                Thousands(r.statements as f64),
                Thousands(r.total.bytes() as f64),
                r.bytes_per_statement(),
                per(r.total.records(), r.statements),
                fixed(r.total.mean("query"), 1),
                fixed(r.total.mean("query.done"), 1),
                gb_per_million(r.bytes_per_statement()),
            );
        }
        if let [before, after] = self.rows.as_slice() {
            let (b, a) = (before.bytes_per_statement(), after.bytes_per_statement());
            let _ = writeln!(
                md,
                "\nBytes per statement: {:.1} before, {:.1} under test ({:+.1}%).",
                b,
                a,
                (a / b - 1.0) * 100.0
            );
        }
        for r in self.rows.iter().filter(|r| !r.state_dir || r.files > 1) {
            let _ = writeln!(
                md,
                "\n{}: {}{}.",
                r.role.label(),
                if r.state_dir {
                    "ran with `audit.state_dir` in the bench's temp dir"
                } else {
                    "ran without `audit.state_dir` (it refuses the key)"
                },
                if r.files > 1 {
                    format!("; its journal is {} files", r.files)
                } else {
                    String::new()
                }
            );
        }

        md += "\n### By event\n\n| binary | event | records | records/statement | bytes | bytes/record |\n\
               |---|---|---:|---:|---:|---:|\n";
        for r in &self.rows {
            // The per-statement events first, the others by name.
            let mut events: Vec<&String> = r.total.events.keys().collect();
            events.sort_by_key(|e| {
                (
                    STATEMENT_EVENTS
                        .iter()
                        .position(|s| s == e)
                        .unwrap_or(STATEMENT_EVENTS.len()),
                    e.as_str(),
                )
            });
            if let Some(i) = events.iter().position(|e| *e == "session.start") {
                let start = events.remove(i);
                events.insert(0, start);
            }
            for event in events {
                let (n, b) = r.total.event(event);
                let _ = writeln!(
                    md,
                    "| {} | `{event}` | {} | {:.3} | {} | {} |",
                    r.role.label(),
                    Thousands(n as f64),
                    per(n, r.statements),
                    Thousands(b as f64),
                    fixed(r.total.mean(event), 1),
                );
            }
        }

        md += "\n### By query mode\n\nEach mode's share of the journal (its statements' records \
               and its connections' session records).\n\n\
               | mode | binary | statements | bytes | bytes/statement | records/statement |\n\
               |---|---|---:|---:|---:|---:|\n";
        for mode in &modes {
            for r in &self.rows {
                for m in r.modes.iter().filter(|m| m.mode.arg() == *mode) {
                    let _ = writeln!(
                        md,
                        "| {mode} | {} | {} | {} | {:.1} | {:.2} |",
                        r.role.label(),
                        Thousands(m.statements as f64),
                        Thousands(m.tally.bytes() as f64),
                        per(m.tally.bytes(), m.statements),
                        per(m.tally.records(), m.statements),
                    );
                }
            }
        }
        md
    }

    fn json(&self) -> Value {
        let finite = super::pgbench::finite;
        json!({
            "clients": self.clients,
            "threads": self.threads,
            "transactions_per_client": self.transactions,
            "audit": "strict, fsync true, journald off, max_bytes 1 GiB",
            "binaries": self.rows.iter().map(|r| json!({
                "role": r.role.key(),
                "path": r.bin.display().to_string(),
                "version": r.version,
                "state_dir": r.state_dir,
                "statements": r.statements,
                "journal_files": r.files,
                "journal_bytes": r.total.bytes(),
                "records": r.total.records(),
                "bytes_per_statement": finite(r.bytes_per_statement()),
                "records_per_statement": finite(per(r.total.records(), r.statements)),
                "gb_per_million_statements": finite(gb_per_million(r.bytes_per_statement())),
                "events": r.total.json(),
                "modes": r.modes.iter().map(|m| json!({
                    "mode": m.mode.arg(),
                    "statements": m.statements,
                    "bytes": m.tally.bytes(),
                    "records": m.tally.records(),
                    "bytes_per_statement": finite(per(m.tally.bytes(), m.statements)),
                    "events": m.tally.json(),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_records_by_event_with_their_newlines() {
        let mut t = Tally::default();
        t.add(b"{\"event\":\"query\",\"seq\":1}\n{\"event\":\"query.done\"}\n\n{\"event\":\"query\",\"seq\":22}\nnot json\n");
        assert_eq!(t.event("query"), (2, 26 + 27));
        assert_eq!(t.event("query.done"), (1, 23));
        assert_eq!(t.event("(not a JSON record)"), (1, 9));
        assert_eq!(t.records(), 4);
        assert_eq!(t.bytes(), 26 + 27 + 23 + 9);
        assert!(t.mean("session.start").is_nan());
        assert!((t.mean("query") - 26.5).abs() < 1e-9);
    }

    #[test]
    fn rotated_names() {
        assert_eq!(rotated_suffix("1"), Some(false));
        assert_eq!(rotated_suffix("12-3400"), Some(false));
        assert_eq!(rotated_suffix("12-3400.zst"), Some(true));
        assert_eq!(rotated_suffix("lock"), None);
        assert_eq!(rotated_suffix("12-3400.zst.tmp"), None);
        assert_eq!(rotated_suffix("-3"), None);
        assert_eq!(rotated_suffix(""), None);
    }

    #[test]
    fn chain_files_take_the_plain_file_over_its_zst() {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join(JOURNAL);
        for f in [
            "audit.jsonl",
            "audit.jsonl.1-10",
            "audit.jsonl.1-10.zst",
            "audit.jsonl.11-20.zst",
            "audit.jsonl.lock",
            "audit.jsonl.21-30.zst.tmp",
            "other.jsonl.1",
        ] {
            fs::write(dir.path().join(f), b"").unwrap();
        }
        let names: Vec<String> = chain_files(&audit)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["audit.jsonl", "audit.jsonl.1-10", "audit.jsonl.11-20.zst"]
        );
    }
}
