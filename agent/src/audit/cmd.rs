//! `pgwarden audit …`: `tail`, `export`, `replay`, `verify`, and the hidden `write-sample`
//! test aid.
//! The journal is found with `--file`, else the `audit.path` of `--config`, else the default
//! `/var/log/pgwarden/audit.jsonl`. Reading `--config` is the caller's ([`LoadConfig`]): the
//! audit layer knows its own section, not the whole file.
//!
//! This is the CLI's side of the layer and reports as the CLI does, with `anyhow`; the errors
//! it gets are typed ([`AuditError`], [`tail::SinceError`], `io::Error`).
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;

use super::export::{Exporter, Format, Options};
use super::stream::{Next, Stream};
use super::tail::{self, Filter, Style, TailOptions};
use super::{AuditConfig, AuditError, AuditMode, Journal, JournaldMirror, sample, verify};

/// Reads the `audit:` section of a configuration file (`--config`); called only when a command
/// needs it.
pub type LoadConfig<'a> = &'a (dyn Fn(&Path) -> anyhow::Result<AuditConfig> + Sync);

/// The `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print journal records, oldest first; `-f` keeps printing new ones.
    Tail {
        /// Follow appends (and rotation).
        #[arg(short = 'f', long)]
        follow: bool,
        /// Print the stored JSON lines.
        #[arg(long)]
        json: bool,
        /// Only the last N matching records (default 10; all with --since).
        #[arg(short = 'n', long = "lines")]
        lines: Option<usize>,
        /// Every matching record.
        #[arg(long, conflicts_with = "lines")]
        all: bool,
        /// Only this workload.
        #[arg(long)]
        workload: Option<String>,
        /// Only this decision: allow, deny, mask, hold.
        #[arg(long, value_parser = ["allow", "deny", "mask", "hold"])]
        decision: Option<String>,
        /// Only this session id.
        #[arg(long)]
        session: Option<String>,
        /// Not before: an RFC 3339 time, a date, or a span ago (15m, 2h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// The journal file.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Configuration file giving `audit.path`.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// A session's statements in order, with offsets from its start.
    Replay {
        /// Session id (16 hex digits, as `pgwarden status` shows it).
        session: String,
        /// The journal file.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Configuration file giving `audit.path`.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print records in a SIEM's format (OCSF, RFC 5424) or as stored, oldest first; `-f`
    /// keeps printing new ones. Records no journal file holds any more are reported on
    /// stderr with their seq range.
    Export {
        /// `ocsf` (OCSF 6005 Datastore Activity, one JSON object per line), `rfc5424` (one
        /// syslog message per line) or `jsonl` (the stored lines).
        #[arg(long, value_enum, default_value = "jsonl")]
        format: Format,
        /// From this seq (a number), or not before this time (RFC 3339, a date, or a span
        /// ago: 15m, 2h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Follow appends (and rotation).
        #[arg(short = 'f', long)]
        follow: bool,
        /// RFC 5424's structured-data enterprise number (default 32473, for examples).
        #[arg(long)]
        enterprise_id: Option<u32>,
        /// The journal file.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Configuration file giving `audit.path`.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check the hash chain; exits non-zero on the first break.
    Verify {
        /// Journal files in any order (default: the configured file and its rotated siblings).
        paths: Vec<PathBuf>,
        /// Configuration file giving `audit.path`.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// The files are part of a chain: one that starts after seq 1 with no record saying
        /// why is a warning, not a failure.
        #[arg(long)]
        partial: bool,
    },
    /// Test aid: append COUNT sample records through the real journal writer.
    #[command(hide = true)]
    WriteSample {
        /// The journal file.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Configuration file whose `audit:` section to use.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Records to append.
        #[arg(long, default_value_t = 10)]
        count: u64,
        /// Workload name in the records.
        #[arg(long, default_value = "sample")]
        workload: String,
        /// First sample number (sessions are numbered from it / 5).
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// Durability mode.
        #[arg(long, value_parser = ["strict", "async"])]
        mode: Option<String>,
        /// fsync each batch (`true`) or every `fsync_interval` (`false`); default: the config's.
        #[arg(long)]
        fsync: Option<bool>,
        /// Appenders writing at once (the records are shared out among them).
        #[arg(long, default_value_t = 1)]
        appenders: u64,
        /// Rotation size.
        #[arg(long)]
        max_bytes: Option<u64>,
        /// Retention: rotated files kept at most.
        #[arg(long)]
        keep_files: Option<usize>,
        /// Where the chain's head is kept (default: the config's `audit.state_dir`).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Leave rotated files uncompressed.
        #[arg(long)]
        no_compress: bool,
        /// Checkpoint every N records.
        #[arg(long)]
        checkpoint_every: Option<u64>,
        /// Mirror to journald (off unless given or set in --config).
        #[arg(long)]
        journald: bool,
        /// journald's socket.
        #[arg(long)]
        journald_socket: Option<PathBuf>,
        /// Keep literals in statement text.
        #[arg(long)]
        keep_literals: bool,
    },
}

/// Where `audit export` starts.
#[derive(Clone, Copy, Debug)]
enum Since {
    /// At this seq.
    Seq(u64),
    /// At the first record not before this time (µs since the epoch).
    Time(i64),
}

/// `audit export`: the records from `since` in `format`, one per line.
fn export(
    path: &Path,
    format: Format,
    options: Options,
    since: Since,
    follow: bool,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let after = match since {
        Since::Seq(s) => s - 1,
        Since::Time(_) => 0,
    };
    let mut stream = Stream::with_context(path, after);
    let mut exporter = Exporter::new(format, options);
    let mut started = matches!(since, Since::Seq(_));
    loop {
        match stream.read()? {
            Next::Record(i) => {
                if !started {
                    let Since::Time(t) = since else {
                        unreachable!()
                    };
                    started = super::time::parse_time(&i.record.time).is_some_and(|r| r >= t);
                    if !started {
                        exporter.learn(&i.record);
                        continue;
                    }
                }
                let line = exporter.encode(&i.line, &i.record);
                if writeln!(out, "{line}").is_err() {
                    return Ok(());
                }
            }
            Next::Context(i) => exporter.learn(&i.record),
            Next::Missing { first, last } => eprintln!(
                "pgwarden audit export: records {first}..={last} are in none of the journal's files"
            ),
            Next::Pending => {
                if out.flush().is_err() || !follow {
                    return Ok(());
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }
}

fn audit_config(load: LoadConfig<'_>, config: Option<&PathBuf>) -> anyhow::Result<AuditConfig> {
    Ok(match config {
        Some(c) => load(c)?,
        None => AuditConfig::default(),
    })
}

fn journal_path(
    load: LoadConfig<'_>,
    file: Option<PathBuf>,
    config: Option<&PathBuf>,
) -> anyhow::Result<PathBuf> {
    Ok(match file {
        Some(f) => f,
        None => audit_config(load, config)?.path,
    })
}

/// Runs one `audit` subcommand; `load` reads `--config` when it is given and needed.
pub async fn run(cmd: AuditCommand, load: LoadConfig<'_>) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Tail {
            follow,
            json,
            lines,
            all,
            workload,
            decision,
            session,
            since,
            file,
            config,
        } => {
            let path = journal_path(load, file, config.as_ref())?;
            let since = since
                .map(|s| tail::parse_since(&s, super::time::now_micros()))
                .transpose()?;
            let last = match (all, lines) {
                (true, _) => None,
                (false, Some(n)) => Some(n),
                (false, None) if since.is_some() => None,
                (false, None) => Some(10),
            };
            let opts = TailOptions {
                path,
                filter: Filter {
                    workload,
                    decision,
                    session,
                    since,
                },
                last,
                follow,
                style: Style::for_stdout(json),
                poll: std::time::Duration::from_millis(200),
            };
            tokio::task::spawn_blocking(move || {
                let stdout = std::io::stdout();
                let mut out = stdout.lock();
                tail::tail(&opts, &mut out)
            })
            .await??;
            Ok(())
        }
        AuditCommand::Export {
            format,
            since,
            follow,
            enterprise_id,
            file,
            config,
        } => {
            let path = journal_path(load, file, config.as_ref())?;
            let since = match since {
                None => Since::Seq(1),
                Some(s) => match s.parse::<u64>() {
                    Ok(seq) => Since::Seq(seq.max(1)),
                    Err(_) => Since::Time(tail::parse_since(&s, super::time::now_micros())?),
                },
            };
            let mut options = Options::default();
            if let Some(n) = enterprise_id {
                options.enterprise_id = n;
            }
            tokio::task::spawn_blocking(move || {
                let stdout = std::io::stdout();
                let mut out = stdout.lock();
                export(&path, format, options, since, follow, &mut out)
            })
            .await??;
            Ok(())
        }
        AuditCommand::Replay {
            session,
            file,
            config,
        } => {
            let path = journal_path(load, file, config.as_ref())?;
            let mut out = std::io::stdout().lock();
            let n = tail::replay(&path, &session, &mut out)?;
            anyhow::ensure!(
                n > 0,
                "no record of session {session} in {} or its rotated files",
                path.display()
            );
            Ok(())
        }
        AuditCommand::Verify {
            paths,
            config,
            json,
            partial,
        } => {
            let paths = if paths.is_empty() {
                let path = journal_path(load, None, config.as_ref())?;
                let found = verify::default_paths(&path);
                anyhow::ensure!(!found.is_empty(), "{}: no journal there", path.display());
                found
            } else {
                paths
            };
            let report =
                tokio::task::spawn_blocking(move || verify::verify_with(&paths, partial)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
            match &report.failure {
                None => Ok(()),
                Some(f) => anyhow::bail!(
                    "audit journal verification FAILED: {} at seq {}",
                    f.kind,
                    f.seq
                ),
            }
        }
        AuditCommand::WriteSample {
            file,
            config,
            count,
            workload,
            start,
            mode,
            fsync,
            appenders,
            max_bytes,
            keep_files,
            state_dir,
            no_compress,
            checkpoint_every,
            journald,
            journald_socket,
            keep_literals,
        } => {
            let mut cfg = audit_config(load, config.as_ref())?;
            cfg.journald = if journald {
                JournaldMirror::All
            } else if config.is_some() {
                cfg.journald
            } else {
                JournaldMirror::Off
            };
            if let Some(f) = file {
                cfg.path = f;
            }
            if let Some(m) = mode {
                cfg.mode = match m.as_str() {
                    "async" => AuditMode::Async,
                    "off" => AuditMode::Off,
                    _ => AuditMode::Strict,
                };
            }
            cfg.fsync = fsync.unwrap_or(cfg.fsync);
            cfg.max_bytes = max_bytes.unwrap_or(cfg.max_bytes);
            if let Some(n) = keep_files {
                cfg.retention.max_files = n;
            }
            if let Some(d) = state_dir {
                cfg.state_dir = d;
            }
            cfg.compress = cfg.compress && !no_compress;
            cfg.checkpoint_every = checkpoint_every.unwrap_or(cfg.checkpoint_every);
            cfg.journald_socket = journald_socket.unwrap_or(cfg.journald_socket);
            cfg.keep_literals = cfg.keep_literals || keep_literals;
            let journal = Journal::open(&cfg)?;
            let started = std::time::Instant::now();
            let appenders = appenders.max(1);
            let mut tasks = tokio::task::JoinSet::new();
            for a in 0..appenders {
                let journal = journal.clone();
                let workload = workload.clone();
                let keep = cfg.keep_literals;
                tasks.spawn(async move {
                    let mut dropped = 0u64;
                    for i in (start..start + count).filter(|i| i % appenders == a) {
                        let rec = sample::record(i, &workload, keep);
                        match journal.append(rec).await {
                            Ok(_) => {}
                            Err(AuditError::Dropped { .. }) => dropped += 1,
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(dropped)
                });
            }
            let mut dropped = 0;
            while let Some(r) = tasks.join_next().await {
                dropped += r?.context("append")?;
            }
            // Compressed and retained as the agent's archiver would have by now.
            let j = journal.clone();
            tokio::task::spawn_blocking(move || {
                j.archive();
                j.close();
            })
            .await?;
            let seconds = started.elapsed().as_secs_f64();
            let status = journal.status();
            let mut out = serde_json::to_value(&status)?;
            out["seconds"] = serde_json::json!(seconds);
            println!("{}", serde_json::to_string(&out)?);
            anyhow::ensure!(
                status.last_error.is_none() || dropped > 0,
                "the journal reported: {}",
                status.last_error.unwrap_or_default()
            );
            Ok(())
        }
    }
}
