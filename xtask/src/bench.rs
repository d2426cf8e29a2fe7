//! `cargo xtask bench`: one run on one machine against one PostgreSQL, interleaved so drift hits
//! every side alike: pgbench direct, through PgBouncer and through pgwarden (eBPF redirect),
//! where each proxy's CPU goes (`perf`), masking throughput, agent memory, and the cost
//! pgwarden adds to untagged connects.
//!
//! The bench drives the built binary (`target/release/pgwarden`) and external tools (pgbench,
//! psql, pgbouncer, python3); it never links the agent. Each measurement is a [`Section`]: a
//! function that takes the [`Rig`] and returns something that renders as Markdown and JSON, so
//! adding one is one function and one line in [`SECTIONS`].

mod budget;
mod conns;
mod costs;
mod journal;
mod pgbench;
mod report;
mod rig;
mod scan;

use std::fmt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use pgwarden_e2e::workspace_root;
use serde_json::Value;

use crate::{cmd, setup};
use pgbench::QueryMode;
use report::Report;
use rig::{Interrupt, Rig};

/// `cargo xtask bench` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds per pgbench cell.
    #[arg(long, default_value_t = 10)]
    pub seconds: u32,
    /// pgbench client counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub clients: Vec<u32>,
    /// Times each group of cells runs (interleaved); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Tiny run (1 s cells, 1 client, simple mode, 10,000-row masking table, 50 idle
    /// connections) that writes to target/bench-smoke/ instead of BENCHMARKS.md.
    #[arg(long)]
    pub smoke: bool,
    /// Run this pgwarden binary instead of building target/release/pgwarden.
    #[arg(long)]
    pub pgwarden: Option<PathBuf>,
    /// An older pgwarden binary the journal section measures too, beside the one under test
    /// (journal bytes per statement, before and after).
    #[arg(long, value_name = "BIN")]
    pub before: Option<PathBuf>,
    /// Only these sections (comma-separated: connect, pgbench, budget, journal, masking,
    /// memory, policy, audit); the report
    /// then says the run was partial. For iterating on one measurement; a full run refreshes
    /// BENCHMARKS.md.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// pgbench query modes (simple, extended, prepared), comma-separated; default all three.
    #[arg(long, value_delimiter = ',')]
    pub modes: Vec<String>,
}

/// What one run measures, with every size fixed up front (the report prints it).
#[derive(Clone, Debug)]
pub struct Plan {
    pub smoke: bool,
    pub seconds: u32,
    pub clients: Vec<u32>,
    pub rounds: u32,
    pub modes: Vec<QueryMode>,
    /// pgbench scale factor (100,000 accounts each).
    pub scale: u32,
    /// Rows of the masking table.
    pub payments_rows: u64,
    /// Idle tagged connections held open for the memory section.
    pub idle_conns: u32,
    /// Seconds of each connect loop of the untagged-connect section.
    pub connect_seconds: f64,
    /// Where the Markdown report goes.
    pub markdown: PathBuf,
    /// Where the JSON results go.
    pub json: PathBuf,
    /// The sections to run (keys of [`SECTIONS`]); all of them but in a partial run.
    pub sections: Vec<&'static str>,
    /// The older binary the journal section measures too (`--before`).
    pub before: Option<PathBuf>,
}

impl Plan {
    fn new(args: &Args) -> Result<Plan> {
        let root = workspace_root();
        if args.smoke {
            let dir = root.join("target").join("bench-smoke");
            return Ok(Plan {
                smoke: true,
                seconds: 1,
                clients: vec![1],
                rounds: 1,
                modes: vec![QueryMode::Simple],
                scale: 1,
                payments_rows: 10_000,
                idle_conns: 50,
                connect_seconds: 1.0,
                markdown: dir.join("BENCHMARKS.md"),
                json: dir.join("results.json"),
                sections: SECTIONS.iter().map(|s| s.0).collect(),
                before: args.before.clone(),
            });
        }
        if args.seconds == 0 || args.rounds == 0 {
            bail!("--seconds and --rounds must be at least 1");
        }
        let mut clients = args.clients.clone();
        clients.sort_unstable();
        clients.dedup();
        if clients.is_empty() || clients.contains(&0) {
            bail!("--clients wants positive client counts, e.g. 1,8,16");
        }
        let mut sections = Vec::new();
        for want in &args.only {
            match SECTIONS.iter().find(|s| s.0 == want.as_str()) {
                Some(s) => sections.push(s.0),
                None => bail!(
                    "--only: no section `{want}` (there are: {})",
                    SECTIONS.iter().map(|s| s.0).collect::<Vec<_>>().join(", ")
                ),
            }
        }
        let mut modes = Vec::new();
        for want in &args.modes {
            match QueryMode::ALL.iter().find(|m| m.arg() == want.as_str()) {
                Some(m) => modes.push(*m),
                None => bail!("--modes: no query mode `{want}` (simple, extended, prepared)"),
            }
        }
        // A partial run never replaces the full report.
        let partial = !sections.is_empty() || !modes.is_empty();
        if sections.is_empty() {
            sections = SECTIONS.iter().map(|s| s.0).collect();
        }
        if modes.is_empty() {
            modes = QueryMode::ALL.to_vec();
        }
        if args.before.is_some() && !sections.contains(&"journal") {
            bail!("--before is measured by the journal section only: add it to --only");
        }
        let (markdown, json) = if partial {
            let dir = root.join("target").join("bench-partial");
            (dir.join("BENCHMARKS.md"), dir.join("results.json"))
        } else {
            (
                root.join("BENCHMARKS.md"),
                root.join("bench").join("results.json"),
            )
        };
        Ok(Plan {
            smoke: false,
            seconds: args.seconds,
            clients,
            rounds: args.rounds,
            modes,
            scale: 10,
            payments_rows: 1_000_000,
            idle_conns: 1000,
            connect_seconds: 3.0,
            markdown,
            json,
            sections,
            before: args.before.clone(),
        })
    }

    /// The largest pgbench client count.
    pub fn max_clients(&self) -> u32 {
        self.clients.iter().copied().max().unwrap_or(1)
    }
}

/// One measured part of the report.
pub trait Section {
    /// Key in the JSON file.
    fn key(&self) -> &'static str;
    /// Markdown, starting with its `##` heading.
    fn markdown(&self) -> String;
    /// The numbers, for tracking.
    fn json(&self) -> Value;
}

/// A measurement: runs against the rig and returns its section.
type Measure = fn(&mut Rig) -> Result<Box<dyn Section>>;

/// The sections (key for `--only`, title, measurement), in the order they run. The
/// untagged-connect one goes first: it wants a machine with none of the bench's programs
/// attached, then exactly one agent. The single-threaded timings (policy, audit) come next,
/// on a quiet machine; the 1,000 idle connections last (their teardown keeps PostgreSQL busy).
const SECTIONS: &[(&str, &str, Measure)] = &[
    (
        "connect",
        "untagged connect overhead",
        conns::connect_overhead,
    ),
    ("policy", "policy decisions", costs::policy),
    ("audit", "audit journal", costs::audit),
    ("pgbench", "pgbench -S", pgbench::matrix),
    ("budget", "where the proxy's CPU goes", budget::budget),
    (
        "journal",
        "journal bytes per statement",
        journal::bytes_per_statement,
    ),
    ("masking", "masking throughput", scan::masking),
    ("memory", "agent memory", conns::idle_memory),
];

/// Runs the bench.
pub fn run(args: &Args) -> Result<ExitCode> {
    let plan = Plan::new(args)?;
    if !cmd::is_root() {
        eprintln!(
            "\n\
             ************************************************************************\n\
             ERROR: `cargo xtask bench` needs root: it creates cgroups, loads pgwarden's\n\
             eBPF programs and runs PostgreSQL and PgBouncer as the postgres user.\n\
             This is uid {}. Run it as root.\n\
             ************************************************************************\n",
            cmd::effective_uid().map_or_else(|| "unknown".to_owned(), |u| u.to_string())
        );
        bail!("the bench needs root");
    }
    let interrupt = Interrupt::install()?;
    let outcome = bench(&plan, args, &interrupt);
    match outcome {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(_) if interrupt.fired() => {
            println!("bench: interrupted; everything it started is stopped and removed");
            Ok(ExitCode::from(130))
        }
        Err(err) => Err(err),
    }
}

fn bench(plan: &Plan, args: &Args, interrupt: &Interrupt) -> Result<()> {
    let started = Instant::now();
    if plan.smoke {
        // `cargo xtask test` ran setup already; say what is missing rather than install.
        for tool in ["pgbouncer", "python3"] {
            if cmd::find_tool(tool).is_none() {
                bail!("`{tool}` is not on PATH: run `cargo xtask setup` (as root) first");
            }
        }
    } else {
        let outcome = setup::run(setup::Mode::Install)?;
        if !outcome.missing.is_empty() {
            bail!("setup left {} missing", outcome.missing.join(", "));
        }
    }
    let bin = match &args.pgwarden {
        Some(bin) => bin.clone(),
        None => build_release()?,
    };
    if !bin.is_file() {
        bail!("{} does not exist", bin.display());
    }
    if let Some(before) = &args.before
        && !before.is_file()
    {
        bail!("--before {} does not exist", before.display());
    }
    interrupt.check()?;

    let mut rig = Rig::up(plan.clone(), bin, interrupt)?;
    let mut report = Report::new(plan, &rig)?;
    for (key, name, measure) in SECTIONS {
        if !plan.sections.contains(key) {
            continue;
        }
        interrupt.check()?;
        println!("\n==> bench: {name}");
        let section = measure(&mut rig).with_context(|| format!("bench section `{name}`"))?;
        report.sections.push(section);
    }
    report.notes.extend(rig.notes());
    report.audit_included = rig.audit_included();
    rig.down();
    report.took = started.elapsed();
    report.write(plan)?;
    println!(
        "\nbench: done in {:.0}s; wrote {} and {}",
        started.elapsed().as_secs_f64(),
        plan.markdown.display(),
        plan.json.display()
    );
    for line in &report.notes {
        if line.starts_with("**") {
            println!("bench: {}", line.replace("**", ""));
        }
    }
    Ok(())
}

/// `cargo build --release -p pgwarden`, echoed; returns target/release/pgwarden.
fn build_release() -> Result<PathBuf> {
    println!("==> bench: building pgwarden (release)");
    let mut build = cmd::cargo();
    build.args(["build", "--release", "-p", "pgwarden"]);
    // aya-build runs bpf-linker by name: cargo's bin directory must be on PATH.
    if let Some(dir) = cmd::find_tool("bpf-linker")
        .as_deref()
        .and_then(|p| p.parent())
    {
        build.env("PATH", cmd::path_with(dir)?);
    }
    cmd::run(&mut build)?;
    let json =
        cmd::stdout_of(cmd::cargo().args(["metadata", "--format-version", "1", "--no-deps"]))?;
    let metadata: Value = serde_json::from_str(&json).context("cannot parse `cargo metadata`")?;
    let target = metadata["target_directory"]
        .as_str()
        .context("`cargo metadata` has no target_directory")?;
    Ok(PathBuf::from(target).join("release").join("pgwarden"))
}

/// Trimmed stdout of a command, or a placeholder naming why not (for the machine facts).
fn first_line_of(cmd: &mut Command) -> String {
    match cmd::stdout_of(cmd) {
        Ok(out) => out.lines().next().unwrap_or("").trim().to_owned(),
        Err(err) => format!("unknown ({})", err.to_string().lines().next().unwrap_or("")),
    }
}

/// A number with thousands separators, for tables.
struct Thousands(f64);

impl fmt::Display for Thousands {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.0.is_finite() {
            return write!(f, "n/a");
        }
        #[allow(
            clippy::cast_possible_truncation,
            reason = "display of a rounded count"
        )]
        let n = self.0.round() as i64;
        let digits = n.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if n < 0 {
            out.insert(0, '-');
        }
        f.pad(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands() {
        assert_eq!(Thousands(0.0).to_string(), "0");
        assert_eq!(Thousands(999.4).to_string(), "999");
        assert_eq!(Thousands(1000.0).to_string(), "1,000");
        assert_eq!(Thousands(19_458.2).to_string(), "19,458");
        assert_eq!(Thousands(-1_234_567.0).to_string(), "-1,234,567");
        assert_eq!(Thousands(f64::NAN).to_string(), "n/a");
    }

    #[test]
    fn smoke_plan_is_tiny_and_writes_under_target() {
        let plan = Plan::new(&Args {
            seconds: 10,
            clients: vec![1, 8],
            rounds: 3,
            smoke: true,
            pgwarden: None,
            before: None,
            only: Vec::new(),
            modes: Vec::new(),
        })
        .unwrap();
        assert_eq!((plan.seconds, plan.rounds, plan.idle_conns), (1, 1, 50));
        assert_eq!(plan.clients, vec![1]);
        assert_eq!(plan.modes, vec![QueryMode::Simple]);
        assert!(plan.markdown.ends_with("target/bench-smoke/BENCHMARKS.md"));
        assert!(plan.json.starts_with(workspace_root().join("target")));
    }

    #[test]
    fn full_plan_sorts_clients() {
        let plan = Plan::new(&Args {
            seconds: 5,
            clients: vec![8, 1, 16, 8],
            rounds: 2,
            smoke: false,
            pgwarden: None,
            before: None,
            only: Vec::new(),
            modes: Vec::new(),
        })
        .unwrap();
        assert_eq!(plan.clients, vec![1, 8, 16]);
        assert_eq!(plan.max_clients(), 16);
        assert!(plan.markdown.ends_with("BENCHMARKS.md"));
        assert!(
            Plan::new(&Args {
                seconds: 5,
                clients: vec![0],
                rounds: 1,
                smoke: false,
                pgwarden: None,
                before: None,
                only: Vec::new(),
                modes: Vec::new(),
            })
            .is_err()
        );
    }
}
