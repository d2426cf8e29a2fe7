//! The pgbench matrix: `pgbench -S` in each query mode and client count against seven sides (five over TCP, a Unix-socket pair)
//! (direct, PgBouncer, pgwarden under pci-dss `reader`, pgwarden under allow-all), run back to
//! back per group and repeated `--rounds` times; TPS from pgbench, latency percentiles from its
//! per-transaction log.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use pgwarden_e2e::{in_cgroup, pg_bin};
use serde_json::{Value, json};

use super::rig::{Rig, Which, cpu_seconds};
use super::{Section, Thousands};
use crate::cmd;

/// The statement of pgbench's built-in `select-only` script (`-S`), with a literal for `:aid`.
pub const SELECT_ONLY_SQL: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 1";

/// pgbench's `-M`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryMode {
    /// One Query message per statement.
    Simple,
    /// Parse/Bind/Execute of an unnamed statement each time.
    Extended,
    /// Parse once per connection, then Bind/Execute of the named statement.
    Prepared,
}

impl QueryMode {
    pub const ALL: [QueryMode; 3] = [QueryMode::Simple, QueryMode::Extended, QueryMode::Prepared];

    pub fn arg(self) -> &'static str {
        match self {
            QueryMode::Simple => "simple",
            QueryMode::Extended => "extended",
            QueryMode::Prepared => "prepared",
        }
    }
}

/// Who pgbench talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Direct,
    PgBouncer,
    /// pgwarden through the eBPF redirect, derived pci-dss `reader`, masking, audit as
    /// installed (strict: written before forwarding, group fsync every 100 ms, journald
    /// `events`).
    PgwardenPci,
    /// The same with the opt-in `fsync: true` (fsynced before forwarding).
    PgwardenTuned,
    /// pgwarden through the eBPF redirect, allow-all, no audit.
    PgwardenRelay,
    /// pgbench straight to PostgreSQL's Unix socket.
    DirectUnix,
    /// The relay's agent, pgbench on PostgreSQL's Unix socket (redirected by connect_unix).
    PgwardenRelayUnix,
}

impl Side {
    /// The pgwarden agent this side goes through, if any.
    pub fn agent(self) -> Option<Which> {
        match self {
            Side::PgwardenPci => Some(Which::Policy),
            Side::PgwardenTuned => Some(Which::Tuned),
            Side::PgwardenRelay | Side::PgwardenRelayUnix => Some(Which::Relay),
            Side::Direct | Side::PgBouncer | Side::DirectUnix => None,
        }
    }

    pub const ALL: [Side; 7] = [
        Side::Direct,
        Side::PgBouncer,
        Side::PgwardenPci,
        Side::PgwardenTuned,
        Side::PgwardenRelay,
        Side::DirectUnix,
        Side::PgwardenRelayUnix,
    ];

    /// What "vs direct" means for this side: the direct connection over the same transport.
    fn direct(self) -> Side {
        match self {
            Side::DirectUnix | Side::PgwardenRelayUnix => Side::DirectUnix,
            _ => Side::Direct,
        }
    }

    /// Over PostgreSQL's Unix socket rather than TCP.
    fn unix(self) -> bool {
        matches!(self, Side::DirectUnix | Side::PgwardenRelayUnix)
    }

    pub fn key(self) -> &'static str {
        match self {
            Side::Direct => "direct",
            Side::PgBouncer => "pgbouncer",
            Side::PgwardenPci => "pgwarden-pci",
            Side::PgwardenTuned => "pgwarden-pci-tuned",
            Side::PgwardenRelay => "pgwarden-relay",
            Side::DirectUnix => "direct-unix",
            Side::PgwardenRelayUnix => "pgwarden-relay-unix",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Side::Direct => "direct",
            Side::PgBouncer => "PgBouncer (session)",
            Side::PgwardenPci => "pgwarden pci-dss, audit as installed",
            Side::PgwardenTuned => "pgwarden pci-dss, fsync per statement",
            Side::PgwardenRelay => "pgwarden allow-all",
            Side::DirectUnix => "direct, Unix socket",
            Side::PgwardenRelayUnix => "pgwarden allow-all, Unix socket",
        }
    }
}

/// One pgbench run.
#[derive(Clone, Debug)]
pub struct Run {
    pub tps: f64,
    pub transactions: u64,
    p50_us: f64,
    p99_us: f64,
    /// CPU the proxy process (PgBouncer, pgwarden) used per transaction, microseconds.
    pub proxy_cpu_us: Option<f64>,
    /// CPU the journald the bench started used per transaction (the audit mirror's cost).
    journald_cpu_us: Option<f64>,
    /// With [`Observe::Count`]: each event's count over the run.
    pub counts: BTreeMap<String, u64>,
}

/// Every round of one (mode, clients, side).
#[derive(Clone, Debug)]
struct Cell {
    mode: QueryMode,
    clients: u32,
    side: Side,
    runs: Vec<Run>,
}

impl Cell {
    fn tps(&self) -> f64 {
        median(self.runs.iter().map(|r| r.tps).collect())
    }
    fn p50(&self) -> f64 {
        median(self.runs.iter().map(|r| r.p50_us).collect())
    }
    fn p99(&self) -> f64 {
        median(self.runs.iter().map(|r| r.p99_us).collect())
    }
    fn proxy_cpu(&self) -> Option<f64> {
        let values: Vec<f64> = self.runs.iter().filter_map(|r| r.proxy_cpu_us).collect();
        (!values.is_empty()).then(|| median(values))
    }
    fn journald_cpu(&self) -> Option<f64> {
        let values: Vec<f64> = self.runs.iter().filter_map(|r| r.journald_cpu_us).collect();
        (!values.is_empty()).then(|| median(values))
    }
}

/// Median; NaN for no values.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        f64::midpoint(values[mid - 1], values[mid])
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a rank within the slice"
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    #[allow(clippy::cast_precision_loss, reason = "microseconds")]
    let value = sorted[rank.clamp(1, sorted.len()) - 1] as f64;
    value
}

/// Latencies (microseconds, third column) of every pgbench log file in `dir`: one line per
/// transaction, `client_id transaction_no time script_no time_epoch time_us [lag]`.
fn log_latencies(dir: &Path) -> Result<Vec<u64>> {
    let mut latencies = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        latencies.extend(parse_log(&text)?);
    }
    latencies.sort_unstable();
    Ok(latencies)
}

fn parse_log(text: &str) -> Result<Vec<u64>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            line.split_whitespace()
                .nth(2)
                .and_then(|f| f.parse().ok())
                .with_context(|| format!("bad pgbench log line {line:?}"))
        })
        .collect()
}

/// `tps = N (without initial connection time)` and `number of transactions actually processed:
/// N` from pgbench's summary; fails on failed transactions.
pub fn parse_summary(out: &str) -> Result<(f64, u64)> {
    let tps = out
        .lines()
        .filter_map(|l| l.strip_prefix("tps = "))
        .find(|l| l.contains("without initial connection time"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .context("no `tps = ... (without initial connection time)` in pgbench's output")?;
    let transactions = out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|l| l.split(['/', ' ']).next()?.parse().ok())
        .context("no `number of transactions actually processed` in pgbench's output")?;
    if let Some(failed) = out
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        && failed > 0
    {
        bail!("pgbench reports {failed} failed transactions");
    }
    Ok((tps, transactions))
}

/// The matrix section.
pub fn matrix(rig: &mut Rig) -> Result<Box<dyn Section>> {
    rig.agent(Which::Policy)?;
    rig.agent(Which::Tuned)?;
    rig.agent(Which::Relay)?;
    let plan = rig.plan.clone();
    let mut cells: Vec<Cell> = Vec::new();
    for &mode in &plan.modes {
        for &clients in &plan.clients {
            for round in 1..=plan.rounds {
                for side in Side::ALL {
                    rig.check_interrupt()?;
                    let run = run_one(rig, mode, clients, side, round)?;
                    println!(
                        "  {:<8} c={clients:<3} round {round}/{}  {:<38} {:>8} tps  p50 {:>6} µs  p99 {:>6} µs{}",
                        mode.arg(),
                        plan.rounds,
                        side.label(),
                        Thousands(run.tps).to_string(),
                        Thousands(run.p50_us).to_string(),
                        Thousands(run.p99_us).to_string(),
                        run.proxy_cpu_us
                            .map(|c| format!("  proxy CPU {c:.1} µs/txn"))
                            .unwrap_or_default()
                            + &run
                                .journald_cpu_us
                                .map(|c| format!(" (+{c:.1} journald)"))
                                .unwrap_or_default(),
                    );
                    match cells
                        .iter_mut()
                        .find(|c| c.mode == mode && c.clients == clients && c.side == side)
                    {
                        Some(cell) => cell.runs.push(run),
                        None => cells.push(Cell {
                            mode,
                            clients,
                            side,
                            runs: vec![run],
                        }),
                    }
                }
            }
        }
    }
    Ok(Box::new(Matrix {
        cells,
        seconds: plan.seconds,
        scale: plan.scale,
        rounds: plan.rounds,
    }))
}

fn run_one(rig: &mut Rig, mode: QueryMode, clients: u32, side: Side, round: u32) -> Result<Run> {
    // For profiling by hand: `PGWARDEN_BENCH_PERF=DIR` records each proxy with `perf`.
    let perf = std::env::var_os("PGWARDEN_BENCH_PERF").map(|dir| {
        Path::new(&dir).join(format!(
            "{}-{clients}-{}-{round}.data",
            mode.arg(),
            side.key()
        ))
    });
    let observe = perf.as_deref().map_or(Observe::Nothing, Observe::Record);
    run_pgbench(rig, mode, clients, side, round, observe)
}

/// What watches the proxy process during a run.
#[derive(Clone, Copy, Debug)]
pub enum Observe<'a> {
    Nothing,
    /// Its samples (`perf record -g`, 2,000 Hz) go to this file.
    Record(&'a Path),
    /// These perf events are counted (`perf stat`) over a window that covers the whole run;
    /// the counts land in [`Run::counts`].
    Count(&'a [String]),
}

/// The counts of `events` in `perf stat -x ,` output (`value,unit,event,...` lines); an event
/// perf could not count is an error, not a zero.
fn perf_stat_counts(csv: &str, events: &[String]) -> Result<BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    for line in csv
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let fields: Vec<&str> = line.split(',').collect();
        let (Some(value), Some(event)) = (fields.first(), fields.get(2)) else {
            continue;
        };
        if let Some(name) = events.iter().find(|e| e.as_str() == *event) {
            let n = value
                .parse::<u64>()
                .with_context(|| format!("{event} was not counted: `{line}`"))?;
            counts.insert(name.clone(), n);
        }
    }
    if let Some(missing) = events.iter().find(|e| !counts.contains_key(*e)) {
        bail!("no count of {missing} in:\n{csv}");
    }
    Ok(counts)
}

/// One pgbench run of `side`, watched as `observe` says.
pub fn run_pgbench(
    rig: &mut Rig,
    mode: QueryMode,
    clients: u32,
    side: Side,
    round: u32,
    observe: Observe<'_>,
) -> Result<Run> {
    let logs = rig.work.join(format!(
        "pgbench-{}-{clients}-{}-{round}",
        mode.arg(),
        side.key()
    ));
    fs::create_dir_all(&logs)?;
    let threads = clients.min(
        std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1)),
    );
    let pgbench = pg_bin("pgbench");
    let (mut command, port, proxy) = match side {
        Side::Direct => (Command::new(&pgbench), rig.pg.port, None),
        Side::PgBouncer => (
            Command::new(&pgbench),
            rig.bouncer.port,
            Some(rig.bouncer.pid()),
        ),
        Side::PgwardenPci => (
            in_cgroup(&rig.cgroups.reader.path, &pgbench.to_string_lossy()),
            rig.pg.port,
            Some(rig.agent(Which::Policy)?.pid()),
        ),
        Side::PgwardenTuned => (
            in_cgroup(&rig.cgroups.tuned.path, &pgbench.to_string_lossy()),
            rig.pg.port,
            Some(rig.agent(Which::Tuned)?.pid()),
        ),
        Side::PgwardenRelay | Side::PgwardenRelayUnix => (
            in_cgroup(&rig.cgroups.relay.path, &pgbench.to_string_lossy()),
            rig.pg.port,
            Some(rig.agent(Which::Relay)?.pid()),
        ),
        Side::DirectUnix => (Command::new(&pgbench), rig.pg.port, None),
    };
    let host = if side.unix() {
        rig.pg.dir.display().to_string()
    } else {
        "127.0.0.1".to_owned()
    };
    command
        .args(["-n", "-S", "-M", mode.arg()])
        .args(["-c", &clients.to_string(), "-j", &threads.to_string()])
        .args(["-T", &rig.plan.seconds.to_string(), "-l", "--log-prefix"])
        .arg(logs.join("log"))
        .args([
            "-h",
            &host,
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "postgres",
        ]);
    let agent = side.agent();
    let counter = if side.unix() {
        "unix_redirected"
    } else {
        "redirected"
    };
    let redirected_before = match agent {
        Some(which) => Some(rig.agent(which)?.counter(counter)?),
        None => None,
    };
    let journald = match side {
        Side::PgwardenPci | Side::PgwardenTuned => rig.journald_pid(),
        _ => None,
    };
    let cpu_before = proxy.map(cpu_seconds).transpose()?;
    let journald_before = journald.map(cpu_seconds).transpose()?;
    // Beside the logs dir, whose files are all pgbench's.
    let counted = rig.work.join(format!(
        "perf-stat-{}-{clients}-{}-{round}.csv",
        mode.arg(),
        side.key()
    ));
    let perf = match (observe, proxy) {
        (Observe::Record(out), Some(pid)) => Some(
            Command::new("perf")
                .args(["record", "-F", "2000", "-g", "-p", &pid.to_string(), "-o"])
                .arg(out)
                // The bench blocks SIGINT and SIGTERM (children inherit that): perf stops
                // when its `sleep` does, a little before pgbench.
                .args([
                    "--",
                    "sleep",
                    &rig.plan.seconds.saturating_sub(1).max(1).to_string(),
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?,
        ),
        (Observe::Count(events), Some(pid)) => {
            let p = Command::new("perf")
                .args([
                    "stat",
                    "-x",
                    ",",
                    "-e",
                    &events.join(","),
                    "-p",
                    &pid.to_string(),
                ])
                .arg("-o")
                .arg(&counted)
                // Outlasts pgbench, so every transaction falls inside the window.
                .args(["--", "sleep", &(rig.plan.seconds + 2).to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?;
            // perf attaches before the first transaction.
            std::thread::sleep(std::time::Duration::from_millis(500));
            Some(p)
        }
        _ => None,
    };
    let out = cmd::output(&mut command)?;
    let mut counts = BTreeMap::new();
    if let Some(mut p) = perf {
        let status = p.wait()?;
        if let Observe::Count(events) = observe {
            if !status.success() {
                bail!("perf stat of {} failed: {status}", side.label());
            }
            let csv = fs::read_to_string(&counted)?;
            let _ = fs::remove_file(&counted);
            counts = perf_stat_counts(&csv, events)
                .with_context(|| format!("perf stat of {}", side.label()))?;
        }
    }
    let cpu_after = proxy.map(cpu_seconds).transpose()?;
    let journald_after = journald.map(cpu_seconds).transpose()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let failed = |rig: &mut Rig, why: String| -> anyhow::Error {
        let log = match agent {
            Some(which) => rig
                .agent(which)
                .map(|a| tail(&a.log_text(), 20))
                .unwrap_or_default(),
            None => String::new(),
        };
        anyhow::anyhow!(
            "pgbench -M {} -c {clients} against {} failed: {why}\n{}\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}",
            mode.arg(),
            side.label(),
            cmd::describe(&command),
            stdout.trim_end(),
            stderr.trim_end(),
            if log.is_empty() {
                String::new()
            } else {
                format!("--- agent log (tail) ---\n{log}")
            }
        )
    };
    if !out.status.success() {
        return Err(failed(rig, out.status.to_string()));
    }
    let (tps, transactions) = match parse_summary(&stdout) {
        Ok(summary) => summary,
        Err(e) => return Err(failed(rig, format!("{e:#}"))),
    };
    if let (Some(which), Some(before)) = (agent, redirected_before) {
        let after = rig.agent(which)?.counter(counter)?;
        if after < before + u64::from(clients) {
            return Err(failed(
                rig,
                format!(
                    "the agent's `{counter}` counter went {before} -> {after}: pgbench did not go \
                 through pgwarden"
                ),
            ));
        }
    }
    let latencies = log_latencies(&logs)?;
    fs::remove_dir_all(&logs)?;
    if latencies.is_empty() {
        return Err(failed(rig, "its per-transaction log is empty".into()));
    }
    #[allow(clippy::cast_precision_loss, reason = "transaction counts")]
    let per_txn = |before: Option<f64>, after: Option<f64>| match (before, after) {
        (Some(b), Some(a)) if transactions > 0 => Some((a - b) * 1e6 / transactions as f64),
        _ => None,
    };
    let proxy_cpu_us = per_txn(cpu_before, cpu_after);
    let journald_cpu_us = per_txn(journald_before, journald_after);
    Ok(Run {
        tps,
        transactions,
        p50_us: percentile(&latencies, 50.0),
        p99_us: percentile(&latencies, 99.0),
        proxy_cpu_us,
        journald_cpu_us,
        counts,
    })
}

/// The finished matrix.
struct Matrix {
    cells: Vec<Cell>,
    seconds: u32,
    scale: u32,
    rounds: u32,
}

impl Matrix {
    fn find(&self, mode: QueryMode, clients: u32, side: Side) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.mode == mode && c.clients == clients && c.side == side)
    }

    fn ratio(&self, cell: &Cell, base: Side) -> f64 {
        self.find(cell.mode, cell.clients, base)
            .map_or(f64::NAN, |b| cell.tps() / b.tps())
    }
}

fn ratio_text(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}")
    } else {
        "n/a".into()
    }
}

impl Section for Matrix {
    fn key(&self) -> &'static str {
        "pgbench"
    }

    fn markdown(&self) -> String {
        let mut md = format!(
            "## pgbench -S (select-only)\n\n\
             `pgbench -n -S -M <mode> -c <clients> -j min(clients, nproc) -T {} -l`, scale {}, \
             {} round(s) per cell (median shown), the sides of a (mode, clients) group run \
             back to back. TPS excludes connection setup; latency percentiles come from pgbench's \
             per-transaction log. \"proxy CPU\" is the CPU time the PgBouncer or pgwarden process \
             used per transaction (user + system), with the journald's beside pgwarden's where \
             the journal is mirrored.\n",
            self.seconds, self.scale, self.rounds
        );
        let mut modes: Vec<QueryMode> = Vec::new();
        for c in &self.cells {
            if !modes.contains(&c.mode) {
                modes.push(c.mode);
            }
        }
        for mode in modes {
            let _ = write!(
                md,
                "\n### -M {}\n\n\
                 | clients | side | TPS | vs direct | vs PgBouncer | p50 µs | p99 µs | proxy CPU µs/txn |\n\
                 |---:|---|---:|---:|---:|---:|---:|---:|\n",
                mode.arg()
            );
            for cell in self.cells.iter().filter(|c| c.mode == mode) {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    cell.clients,
                    cell.side.label(),
                    Thousands(cell.tps()),
                    ratio_text(self.ratio(cell, cell.side.direct())),
                    ratio_text(self.ratio(cell, Side::PgBouncer)),
                    Thousands(cell.p50()),
                    Thousands(cell.p99()),
                    match (cell.proxy_cpu(), cell.journald_cpu()) {
                        (Some(c), Some(j)) => format!("{c:.1} (+{j:.1} journald)"),
                        (Some(c), None) => format!("{c:.1}"),
                        _ => "-".into(),
                    },
                );
            }
        }
        md
    }

    fn json(&self) -> Value {
        let cells: Vec<Value> = self
            .cells
            .iter()
            .map(|cell| {
                json!({
                    "mode": cell.mode.arg(),
                    "clients": cell.clients,
                    "side": cell.side.key(),
                    "tps": cell.tps(),
                    "p50_us": cell.p50(),
                    "p99_us": cell.p99(),
                    "proxy_cpu_us_per_txn": cell.proxy_cpu(),
                    "journald_cpu_us_per_txn": cell.journald_cpu(),
                    "vs_direct": finite(self.ratio(cell, cell.side.direct())),
                    "vs_pgbouncer": finite(self.ratio(cell, Side::PgBouncer)),
                    "rounds": cell.runs.iter().map(|r| json!({
                        "tps": r.tps,
                        "transactions": r.transactions,
                        "p50_us": r.p50_us,
                        "p99_us": r.p99_us,
                        "proxy_cpu_us_per_txn": r.proxy_cpu_us,
                        "journald_cpu_us_per_txn": r.journald_cpu_us,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({ "seconds": self.seconds, "scale": self.scale, "rounds": self.rounds, "cells": cells })
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A number for JSON, `null` when it is not finite.
pub fn finite(x: f64) -> Value {
    if x.is_finite() { json!(x) } else { Value::Null }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_stat_counts_every_event_or_fails() {
        let events = vec!["g:malloc".to_owned(), "g:realloc".to_owned()];
        let csv = "# started on Thu Dec  3 12:00:00 2026\n\n\
                   228,,g:malloc,1832315,100.00,,\n5,,g:realloc,1832315,100.00,,\n";
        let counts = perf_stat_counts(csv, &events).unwrap();
        assert_eq!(counts["g:malloc"], 228);
        assert_eq!(counts["g:realloc"], 5);
        // An event perf could not count is not a zero.
        let uncounted = "<not counted>,,g:malloc,0,0.00,,\n5,,g:realloc,1,100.00,,\n";
        assert!(perf_stat_counts(uncounted, &events).is_err());
        assert!(perf_stat_counts("228,,g:malloc,1,100.00,,\n", &events).is_err());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn parses_the_per_transaction_log() {
        let log = "0 1 312 0 1700000000 123456\n0 2 287 0 1700000000 123789\n\n1 1 1005 0 1700000001 1 42\n";
        assert_eq!(parse_log(log).unwrap(), vec![312, 287, 1005]);
        assert!(parse_log("garbage\n").is_err());
    }

    #[test]
    fn parses_the_summary_of_pgbench_15() {
        let out = "\
transaction type: <builtin: select only>
scaling factor: 10
query mode: simple
number of clients: 8
number of threads: 2
maximum number of tries: 1
duration: 10 s
number of transactions actually processed: 194581
number of failed transactions: 0 (0.000%)
latency average = 0.411 ms
initial connection time = 12.345 ms
tps = 19458.123456 (without initial connection time)
";
        let (tps, n) = parse_summary(out).unwrap();
        assert!((tps - 19_458.123_456).abs() < 1e-6);
        assert_eq!(n, 194_581);
        let failed = out.replace(
            "failed transactions: 0 (0.000%)",
            "failed transactions: 3 (1.0%)",
        );
        assert!(parse_summary(&failed).is_err());
        assert!(parse_summary("nothing").is_err());
    }
}
