//! Masking throughput: a payments table with Luhn-valid PANs, generated server-side, read in
//! full with psql through pgwarden (column rule; detector only) and direct; rows/s, MB/s, and
//! the agent's RSS sampled during each scan through it.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pgwarden_e2e::{TestCgroup, in_cgroup, pg_bin};
use serde_json::{Value, json};

use super::pgbench::{finite, median};
use super::rig::{Postgres, Rig, Which, rss_kib};
use super::{Section, Thousands};

/// The scan under the column rule (`public.payments.card_number: pan`).
pub const COLUMN_SQL: &str = "SELECT id, card_number FROM payments";
/// The scan of a text column with a PAN inside a sentence, under the detector only.
pub const DETECTOR_SQL: &str = "SELECT id, note FROM payments";

/// Creates and fills `payments`: `card_number` a 16-digit Visa-like PAN (`4` and 14 digits from
/// the id, then the Luhn check digit computed in SQL), `note` a sentence holding the same PAN.
pub fn create_payments(pg: &Postgres, rows: u64) -> Result<()> {
    pg.sql(
        "CREATE TABLE payments (id bigint PRIMARY KEY, card_number text NOT NULL, \
         amount numeric(12,2) NOT NULL, note text NOT NULL)",
    )?;
    // Luhn: double every second digit counting from the right of the 15-digit payload (the
    // rightmost included), add the digits of each product, the check digit tops the sum up
    // to a multiple of ten.
    pg.sql(&format!(
        "INSERT INTO payments (id, card_number, amount, note) \
         SELECT g, p.pan, (g % 100000) / 100.0, \
                'customer paid with card ' || p.pan || ' over the phone, receipt sent' \
         FROM generate_series(1::bigint, {rows}::bigint) AS g \
         CROSS JOIN LATERAL ( \
           SELECT b.payload || ((10 - sum(CASE WHEN (15 - i) % 2 = 0 \
                    THEN (substr(b.payload, i, 1)::int * 2) / 10 + (substr(b.payload, i, 1)::int * 2) % 10 \
                    ELSE substr(b.payload, i, 1)::int END) % 10) % 10)::text AS pan \
           FROM (SELECT '4' || lpad(((g * 7919) % 100000000000000)::text, 14, '0') AS payload) AS b, \
                generate_series(1, 15) AS i \
           GROUP BY b.payload) AS p"
    ))?;
    pg.sql("VACUUM ANALYZE payments")?;
    let sample = pg.sql("SELECT card_number FROM payments ORDER BY id LIMIT 5")?;
    for pan in sample.lines() {
        if !luhn_valid(pan) || pan.len() != 16 {
            bail!("generated card number {pan:?} is not a 16-digit Luhn-valid PAN");
        }
    }
    let count = pg.sql("SELECT count(*) FROM payments")?;
    if count != rows.to_string() {
        bail!("payments has {count} rows, wanted {rows}");
    }
    Ok(())
}

/// Whether `digits` (ASCII digits only) passes the Luhn check.
pub fn luhn_valid(digits: &str) -> bool {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let twice = d * 2;
                twice / 10 + twice % 10
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// One psql scan.
#[derive(Clone, Debug)]
struct ScanRun {
    seconds: f64,
    bytes: u64,
    rows: u64,
    first_line: String,
}

impl ScanRun {
    #[allow(clippy::cast_precision_loss, reason = "counts")]
    fn rows_per_s(&self) -> f64 {
        self.rows as f64 / self.seconds
    }
    #[allow(clippy::cast_precision_loss, reason = "counts")]
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds
    }
}

/// Runs psql `-At -c sql`, counting the bytes and lines of its output as it streams.
fn scan(mut psql: Command, rig: &Rig, sql: &str) -> Result<ScanRun> {
    psql.args([
        "-X",
        "-At",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-p",
    ])
    .arg(rig.pg.port.to_string())
    .args(["-U", "postgres", "-d", "postgres", "-c", sql])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = psql.spawn().context("cannot start psql")?;
    let mut stdout = child.stdout.take().context("psql stdout")?;
    let mut buf = vec![0u8; 1 << 16];
    let (mut bytes, mut rows) = (0u64, 0u64);
    let mut head: Vec<u8> = Vec::new();
    loop {
        let n = stdout.read(&mut buf)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        rows += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        if head.len() < 256 {
            head.extend_from_slice(&buf[..n.min(256)]);
        }
    }
    let out = child.wait_with_output()?;
    let seconds = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "psql `{sql}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let first_line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    Ok(ScanRun {
        seconds,
        bytes,
        rows,
        first_line,
    })
}

/// Samples a process's RSS every 20 ms until stopped.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Vec<u64>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                if let Ok(kib) = rss_kib(pid) {
                    samples.push(kib);
                }
                thread::sleep(Duration::from_millis(20));
            }
            samples
        });
        RssSampler { stop, thread }
    }

    fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap_or_default()
    }
}

/// One query's rounds.
struct Query {
    name: &'static str,
    profile: &'static str,
    sql: &'static str,
    direct: Vec<ScanRun>,
    pgwarden: Vec<ScanRun>,
    /// Agent RSS (KiB) samples during the scans through it.
    rss: Vec<u64>,
}

/// The masking section.
pub fn masking(rig: &mut Rig) -> Result<Box<dyn Section>> {
    let pid = rig.agent(Which::Policy)?.pid();
    let rss_before = rss_kib(pid)?;
    let mut queries = vec![
        Query {
            name: "column rule",
            profile: "bench-mask",
            sql: COLUMN_SQL,
            direct: Vec::new(),
            pgwarden: Vec::new(),
            rss: Vec::new(),
        },
        Query {
            name: "detector only, PAN in a sentence",
            profile: "bench-detector",
            sql: DETECTOR_SQL,
            direct: Vec::new(),
            pgwarden: Vec::new(),
            rss: Vec::new(),
        },
    ];
    let psql = pg_bin("psql");
    for query in &mut queries {
        let cg: &TestCgroup = if query.profile == "bench-mask" {
            &rig.cgroups.mask
        } else {
            &rig.cgroups.detector
        };
        // Warm the cache (and set hint bits) so neither side pays for it.
        scan(Command::new(&psql), rig, query.sql)?;
        for round in 1..=rig.plan.rounds {
            rig.check_interrupt()?;
            let direct = scan(Command::new(&psql), rig, query.sql)?;
            let sampler = RssSampler::start(pid);
            let through = scan(in_cgroup(&cg.path, &psql.to_string_lossy()), rig, query.sql);
            let samples = sampler.finish();
            let through = through?;
            if through.rows != direct.rows {
                bail!(
                    "`{}` returned {} rows through pgwarden, {} direct",
                    query.sql,
                    through.rows,
                    direct.rows
                );
            }
            if through.first_line == direct.first_line {
                bail!(
                    "`{}` through pgwarden (profile {}) was not masked: first row {:?}",
                    query.sql,
                    query.profile,
                    through.first_line
                );
            }
            println!(
                "  {:<40} round {round}/{}  direct {:>10} rows/s {:>6.1} MB/s   pgwarden {:>10} rows/s {:>6.1} MB/s  RSS {}-{} KiB",
                query.name,
                rig.plan.rounds,
                Thousands(direct.rows_per_s()).to_string(),
                direct.mb_per_s(),
                Thousands(through.rows_per_s()).to_string(),
                through.mb_per_s(),
                samples.iter().min().copied().unwrap_or(0),
                samples.iter().max().copied().unwrap_or(0),
            );
            query.rss.extend(samples);
            query.direct.push(direct);
            query.pgwarden.push(through);
        }
    }
    rig.agent(Which::Policy)?.alive()?;
    Ok(Box::new(Masking {
        rows: rig.plan.payments_rows,
        rss_before,
        queries,
    }))
}

struct Masking {
    rows: u64,
    rss_before: u64,
    queries: Vec<Query>,
}

fn med(runs: &[ScanRun], f: fn(&ScanRun) -> f64) -> f64 {
    median(runs.iter().map(f).collect())
}

impl Section for Masking {
    fn key(&self) -> &'static str {
        "masking"
    }

    fn markdown(&self) -> String {
        let mut md = format!(
            "## Masking throughput\n\n\
             A {}-row `payments` table (16-digit Luhn-valid PANs generated server-side) read in \
             full with `psql -At -c <query>`, output streamed into the bench and counted (MB = \
             10^6 bytes of psql output, so the masked side's bytes are its masked text). Direct \
             and through pgwarden (eBPF redirect, derived pci-dss profiles without the bulk-read \
             approval rule) alternate; median of the rounds. Agent RSS sampled every 20 ms during \
             the scans through it (before the first scan: {} KiB).\n\n\
             | scan | query | profile | direct rows/s | direct MB/s | pgwarden rows/s | pgwarden MB/s | vs direct | agent RSS min–max KiB |\n\
             |---|---|---|---:|---:|---:|---:|---:|---:|\n",
            Thousands(self.rows as f64),
            Thousands(self.rss_before as f64),
        );
        for q in &self.queries {
            let direct = med(&q.direct, ScanRun::rows_per_s);
            let through = med(&q.pgwarden, ScanRun::rows_per_s);
            md += &format!(
                "| {} | `{}` | {} | {} | {:.1} | {} | {:.1} | {:.2} | {}–{} |\n",
                q.name,
                q.sql,
                q.profile,
                Thousands(direct),
                med(&q.direct, ScanRun::mb_per_s),
                Thousands(through),
                med(&q.pgwarden, ScanRun::mb_per_s),
                through / direct,
                Thousands(q.rss.iter().min().copied().unwrap_or(0) as f64),
                Thousands(q.rss.iter().max().copied().unwrap_or(0) as f64),
            );
        }
        md
    }

    fn json(&self) -> Value {
        let queries: Vec<Value> = self
            .queries
            .iter()
            .map(|q| {
                let side = |runs: &[ScanRun]| {
                    json!({
                        "rows_per_s": finite(med(runs, ScanRun::rows_per_s)),
                        "mb_per_s": finite(med(runs, ScanRun::mb_per_s)),
                        "seconds": runs.iter().map(|r| r.seconds).collect::<Vec<_>>(),
                        "bytes": runs.first().map(|r| r.bytes),
                    })
                };
                json!({
                    "sql": q.sql,
                    "profile": q.profile,
                    "direct": side(&q.direct),
                    "pgwarden": side(&q.pgwarden),
                    "agent_rss_kib_min": q.rss.iter().min(),
                    "agent_rss_kib_max": q.rss.iter().max(),
                })
            })
            .collect();
        json!({ "rows": self.rows, "agent_rss_kib_before": self.rss_before, "queries": queries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn() {
        assert!(luhn_valid("4111111111111111"));
        assert!(luhn_valid("5555555555554444"));
        assert!(!luhn_valid("4111111111111112"));
        assert!(!luhn_valid(""));
        assert!(!luhn_valid("4111 1111"));
    }
}
