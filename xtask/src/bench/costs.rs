//! The costs of pgwarden's own work, measured apart from any connection: the policy's parse
//! and decision per statement (cold, cached by text, cached by shape), and the audit journal's
//! sustained records per second in each durability setting, on the disk the bench runs on.

use std::fmt::Write as _;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::rig::Rig;
use super::{Section, Thousands};
use crate::cmd;

/// Statements an MCP server and pgbench send, under the derived pci-dss `reader` profile.
const STATEMENTS: &[&str] = &[
    super::pgbench::SELECT_ONLY_SQL,
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    "SELECT id, card_number, cardholder, amount, merchant FROM payments ORDER BY id LIMIT 5",
    "SELECT p.id, c.name, p.amount FROM payments p JOIN customers c ON c.id = p.id WHERE p.amount > 100 AND p.created_at > now() - interval '7 days' ORDER BY p.amount DESC LIMIT 20",
    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name",
    "BEGIN TRANSACTION READ ONLY",
    "SELECT * FROM secrets",
];

/// One statement's decision times, nanoseconds.
struct Decision {
    sql: String,
    cold_ns: f64,
    cached_ns: f64,
    shape_ns: Option<f64>,
}

struct Policy {
    iterations: u32,
    rows: Vec<Decision>,
}

/// `pgwarden policy bench` over [`STATEMENTS`].
pub fn policy(rig: &mut Rig) -> Result<Box<dyn Section>> {
    let iterations: u32 = if rig.plan.smoke { 200 } else { 20_000 };
    let mut command = Command::new(&rig.bin);
    command
        .args(["policy", "bench", "--policy"])
        .arg(rig.policy_file())
        .args([
            "--workload",
            "reader",
            "--iterations",
            &iterations.to_string(),
        ]);
    for s in STATEMENTS {
        command.args(["--sql", s]);
    }
    let out = cmd::stdout_of(&mut command)?;
    let parsed: Value = serde_json::from_str(&out).context("`pgwarden policy bench` output")?;
    let Some(items) = parsed.as_array() else {
        bail!("`pgwarden policy bench` printed no list: {out}");
    };
    let num = |v: &Value| v.as_f64();
    let rows = items
        .iter()
        .map(|r| {
            Ok(Decision {
                sql: r["sql"].as_str().unwrap_or_default().to_owned(),
                cold_ns: num(&r["cold_ns"]).context("cold_ns")?,
                cached_ns: num(&r["cached_ns"]).context("cached_ns")?,
                shape_ns: num(&r["shape_cached_ns"]),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    for r in &rows {
        println!(
            "  {:>9.2} µs cold  {:>6.2} µs cached  {:>8} shape  {}",
            r.cold_ns / 1e3,
            r.cached_ns / 1e3,
            r.shape_ns
                .map_or_else(|| "-".into(), |n| format!("{:.2} µs", n / 1e3)),
            one_line(&r.sql, 60)
        );
    }
    Ok(Box::new(Policy { iterations, rows }))
}

fn one_line(s: &str, max: usize) -> String {
    let t: String = s.chars().take(max).collect();
    if s.chars().count() > max {
        format!("{t}…")
    } else {
        t
    }
}

impl Section for Policy {
    fn key(&self) -> &'static str {
        "policy"
    }

    fn markdown(&self) -> String {
        let mut md = format!(
            "## Policy decisions\n\n\
             `pgwarden policy bench` under the derived pci-dss `reader` profile, {} iterations \
             each, one thread. *Cold*: parse (sqlparser) and decide. *Cached*: the same text \
             again: one lookup in the verdict cache by text. *Shape*: the same statement with \
             other literals, as a simple query with new values is: lexed for its shape (the \
             relay reads every statement once anyway, for the journal's normalized text) and \
             answered by the shape cache (only for verdicts that do not depend on literal \
             values; `-` when they do or the text has no shape).\n\n\
             | statement | cold µs | cached µs | shape µs |\n|---|---:|---:|---:|\n",
            self.iterations
        );
        for r in &self.rows {
            let _ = writeln!(
                md,
                "| `{}` | {:.2} | {:.2} | {} |",
                one_line(&r.sql, 80).replace('|', "\\|"),
                r.cold_ns / 1e3,
                r.cached_ns / 1e3,
                r.shape_ns
                    .map_or_else(|| "-".into(), |n| format!("{:.2}", n / 1e3))
            );
        }
        md
    }

    fn json(&self) -> Value {
        json!({
            "iterations": self.iterations,
            "statements": self.rows.iter().map(|r| json!({
                "sql": r.sql,
                "cold_ns": r.cold_ns,
                "cached_ns": r.cached_ns,
                "shape_cached_ns": r.shape_ns,
            })).collect::<Vec<_>>(),
        })
    }
}

/// One durability setting's sustained append rate.
struct Rate {
    label: &'static str,
    args: &'static [&'static str],
    appenders: u64,
    records: u64,
    seconds: f64,
}

struct Audit {
    rows: Vec<Rate>,
}

/// The journal's append rate per setting, through `pgwarden audit write-sample` (the real
/// writer, realistic records) into the bench's temp dir.
pub fn audit(rig: &mut Rig) -> Result<Box<dyn Section>> {
    let scale = if rig.plan.smoke { 1 } else { 20 };
    let settings: [(&'static str, &'static [&'static str], u64, u64); 5] = [
        (
            "strict, fsync per batch, 1 appender",
            &["--mode", "strict", "--fsync", "true"],
            1,
            100,
        ),
        (
            "strict, fsync per batch, 16 appenders (group commit)",
            &["--mode", "strict", "--fsync", "true"],
            16,
            1_000,
        ),
        (
            "strict, written before forwarding, group fsync every 100 ms (the default)",
            &["--mode", "strict", "--fsync", "false"],
            1,
            5_000,
        ),
        (
            "strict, written before forwarding, 16 appenders",
            &["--mode", "strict", "--fsync", "false"],
            16,
            5_000,
        ),
        ("async", &["--mode", "async"], 1, 5_000),
    ];
    let mut rows = Vec::new();
    for (i, (label, args, appenders, base)) in settings.into_iter().enumerate() {
        rig.check_interrupt()?;
        let records = base * scale;
        let file = rig
            .dir
            .path()
            .join("log")
            .join(format!("audit-bench-{i}.jsonl"));
        let out = cmd::stdout_of(
            Command::new(&rig.bin)
                .args(["audit", "write-sample", "--file"])
                .arg(&file)
                .args(args)
                .args([
                    "--appenders",
                    &appenders.to_string(),
                    "--count",
                    &records.to_string(),
                    "--checkpoint-every",
                    "1000",
                ]),
        )?;
        let status: Value = serde_json::from_str(out.trim()).context("write-sample output")?;
        let seconds = status["seconds"]
            .as_f64()
            .context("write-sample: no seconds")?;
        let written = status["records_written"].as_u64().unwrap_or(0);
        if written < records {
            bail!("write-sample wrote {written} of {records} records ({label}): {out}");
        }
        #[allow(clippy::cast_precision_loss, reason = "record counts")]
        let rate = records as f64 / seconds;
        println!(
            "  {label:<58} {:>10} records/s",
            Thousands(rate).to_string()
        );
        let _ = std::fs::remove_file(&file);
        rows.push(Rate {
            label,
            args,
            appenders,
            records,
            seconds,
        });
    }
    Ok(Box::new(Audit { rows }))
}

impl Section for Audit {
    fn key(&self) -> &'static str {
        "audit"
    }

    fn markdown(&self) -> String {
        let mut md = String::from(
            "## Audit journal\n\n\
             Sustained appends of realistic records (sessions, queries, denials with card \
             numbers to scrub) through the real writer (`pgwarden audit write-sample`) into a \
             journal on the bench's disk, checkpoints every 1,000 records, no journald. With \
             one appender in strict mode each record waits for its own fsync: that is the \
             rate a single session's statements are bounded by. Several appenders share fsyncs \
             (group commit).\n\n\
             | setting | appenders | records | records/s |\n|---|---:|---:|---:|\n",
        );
        for r in &self.rows {
            #[allow(clippy::cast_precision_loss, reason = "record counts")]
            let rate = r.records as f64 / r.seconds;
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                r.label,
                r.appenders,
                Thousands(r.records as f64),
                Thousands(rate)
            );
        }
        md
    }

    fn json(&self) -> Value {
        json!(
            self.rows
                .iter()
                .map(|r| json!({
                    "setting": r.label,
                    "args": r.args,
                    "appenders": r.appenders,
                    "records": r.records,
                    "seconds": r.seconds,
                }))
                .collect::<Vec<_>>()
        )
    }
}
