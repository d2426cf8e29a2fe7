//! The command line: `run`, `status`, `tag`, `untag`, with exit codes and readable output.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::control::{self, Request};

mod status;

const DEFAULT_CONTROL: &str = "/run/pgwarden/control.sock";

#[derive(Parser)]
#[command(
    name = "pgwarden",
    version,
    about = "Least privilege, identity, masking and audit for AI workloads on PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent in the foreground.
    Run {
        /// Configuration file (YAML).
        #[arg(long, short)]
        config: PathBuf,
        /// Do not load eBPF: listen only, clients connect to the listen address themselves
        /// (development).
        #[arg(long)]
        no_redirect: bool,
        /// Run even where this kernel cannot intercept Unix socket connects (no BPF LSM, older
        /// than 6.7): tagged workloads can then reach PostgreSQL's Unix socket directly. Loud
        /// in the log and in `status`.
        #[arg(long)]
        tcp_only: bool,
    },
    /// Show attach points, tagged cgroups and live sessions.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Control socket of the agent.
        #[arg(long, default_value = DEFAULT_CONTROL)]
        control: PathBuf,
    },
    /// Tag a cgroup (and its descendants) as a workload.
    Tag {
        /// cgroup directory: absolute, or relative to the cgroup2 root.
        path: String,
        /// Workload name.
        #[arg(long)]
        workload: String,
        /// Control socket of the agent.
        #[arg(long, default_value = DEFAULT_CONTROL)]
        control: PathBuf,
    },
    /// Statements held for approval: list, approve, deny.
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
    /// Open grants: list, revoke.
    #[command(subcommand)]
    Grants(GrantsCommand),
    /// Approvers of the HTTP API and page: add (prints their token once), list, remove.
    #[command(subcommand)]
    Approvers(ApproversCommand),
    /// Detach the kernel programs and remove their pinned state: the only way to stop
    /// interception (the agent must be stopped first).
    Detach {
        /// bpffs pin directory (default from the config, else /sys/fs/bpf/pgwarden).
        #[arg(long)]
        pin_dir: Option<PathBuf>,
        /// Configuration file to read the pin directory and control socket from.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Control socket of the agent (to make sure it is not running).
        #[arg(long, default_value = DEFAULT_CONTROL)]
        control: PathBuf,
    },
    /// Check, explain and test policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Read the audit journal: tail, replay a session, verify the hash chain.
    #[command(subcommand)]
    Audit(crate::audit::cmd::AuditCommand),
    /// Remove a cgroup's tag.
    Untag {
        /// cgroup directory: absolute, or relative to the cgroup2 root.
        path: String,
        /// Control socket of the agent.
        #[arg(long, default_value = DEFAULT_CONTROL)]
        control: PathBuf,
    },
}

#[derive(Subcommand)]
enum ApprovalsCommand {
    /// Requests waiting for a decision.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Control socket of the agent.
        #[arg(long, default_value = DEFAULT_CONTROL)]
        control: PathBuf,
    },
    /// Release a held statement (you must be one of its rule's approvers).
    Approve {
        /// Request id.
        id: u64,
        /// Also let the same rule pass for this workload for a while (e.g. 15m, 2h).
        #[arg(long = "for")]
        grant: Option<String>,
        /// A comment for the audit record.
        #[arg(long)]
        comment: Option<String>,
        /// Control socket of the agent.
        #[arg(long, default_value = DEFAULT_CONTROL)]
        control: PathBuf,
    },
    /// Refuse a held statement (the client gets SQLSTATE 42501).
    Deny {
        /// Request id.
        id: u64,
        /// A comment for the audit record.
        #[arg(long)]
        comment: Option<String>,
        /// Control socket of the agent.
        #[arg(long, default_value = DEFAULT_CONTROL)]
        control: PathBuf,
    },
}

#[derive(Subcommand)]
enum ApproversCommand {
    /// Add an approver: their new token is printed once (alone on stdout), only its hash is
    /// kept. A rule names them `user:NAME`, or one of their groups `group:G`.
    Add {
        /// Approver name (letters, digits, `._@-`).
        name: String,
        /// A group they belong to (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        #[command(flatten)]
        at: ApproversAt,
    },
    /// The approvers and their groups.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: ApproversAt,
    },
    /// Remove an approver: their token stops working at their next request.
    Remove {
        /// Approver name.
        name: String,
        #[command(flatten)]
        at: ApproversAt,
    },
}

/// Where the approvers file is.
#[derive(clap::Args)]
struct ApproversAt {
    /// The approvers file (default: the config's `approvals.http.approvers_file`, else
    /// `<audit.state_dir>/approvers.json`).
    #[arg(long)]
    file: Option<PathBuf>,
    /// The agent's configuration file.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

impl ApproversAt {
    fn path(&self) -> anyhow::Result<PathBuf> {
        if let Some(f) = &self.file {
            return Ok(f.clone());
        }
        if !self.config.exists() && self.config == Path::new(DEFAULT_CONFIG) {
            return Ok(crate::approval::approvers::default_file(Path::new(
                "/var/lib/pgwarden",
            )));
        }
        let c = Config::load(&self.config)?;
        Ok(match &c.approvals.http {
            Some(h) => h.approvers_file(&c.audit.state_dir),
            None => crate::approval::approvers::default_file(&c.audit.state_dir),
        })
    }
}

const DEFAULT_CONFIG: &str = "/etc/pgwarden/pgwarden.yaml";

#[derive(Subcommand)]
enum GrantsCommand {
    /// Open grants.
    List {
        /// Control socket of the agent.
        #[arg(long, default_value = DEFAULT_CONTROL)]
        control: PathBuf,
    },
    /// Close a grant before it expires.
    Revoke {
        /// Grant id.
        id: u64,
        /// Control socket of the agent.
        #[arg(long, default_value = DEFAULT_CONTROL)]
        control: PathBuf,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate policy files (exit 1 on the first broken one).
    Check {
        /// Policy files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show the decision for a statement, the rule, and what the statement touches.
    Explain {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
        /// Profile of the policy (the name a config workload selects with `profile:`).
        #[arg(long, alias = "profile")]
        workload: String,
        /// SQL text.
        #[arg(long)]
        sql: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Time parse + decide per statement, cold (parsed every time) and cached (the verdict
    /// cache the agent uses); prints JSON. Used by `cargo xtask bench`.
    #[command(hide = true)]
    Bench {
        /// Policy file.
        #[arg(long)]
        policy: PathBuf,
        /// Profile.
        #[arg(long, alias = "profile")]
        workload: String,
        /// Statements (repeat).
        #[arg(long, required = true)]
        sql: Vec<String>,
        /// Iterations per statement.
        #[arg(long, default_value_t = 20_000)]
        iterations: u32,
    },
    /// Run the expected-decision cases declared in policy files (`tests:`).
    Test {
        /// Policy files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Entry point.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        // `pgwarden policy explain ... | head`: a closed pipe ends the command, as with any
        // Unix tool (the daemon keeps SIGPIPE ignored).
        agent_sys::default_sigpipe();
    }
    init_logging();
    // The agent runs sessions on `runtime.workers` threads (its config is read again, with
    // errors reported, once it runs); the CLI's own commands need no more than one.
    let workers = match &cli.command {
        Command::Run { config, .. } => {
            crate::config::Config::load(config).map_or(1, |c| c.runtime.threads())
        }
        _ => 1,
    };
    let built = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    };
    let runtime = match built {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgwarden: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(dispatch(cli.command));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgwarden: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run {
            config,
            no_redirect,
            tcp_only,
        } => {
            let loaded = Config::load(&config)?;
            crate::daemon::run(loaded, config, !no_redirect, tcp_only).await
        }
        Command::Status { json, control } => {
            let s = control::status(&control).await?;
            if json {
                println!("{}", pretty(&s)?);
            } else {
                print!("{}", status::render(&s));
            }
            Ok(())
        }
        Command::Tag {
            path,
            workload,
            control,
        } => tag(&control, path, workload).await,
        Command::Policy(p) => policy(p),
        Command::Audit(a) => crate::audit::cmd::run(a, &|c| Ok(Config::load(c)?.audit)).await,
        Command::Detach {
            pin_dir,
            config,
            control,
        } => {
            let loaded = config.as_deref().map(Config::load).transpose()?;
            let control = loaded
                .as_ref()
                .map_or(control, |c| c.control.socket.clone());
            if control::call(&control, &Request::Status).await.is_ok() {
                anyhow::bail!(
                    "the agent is running (its control socket {} answers): stop it first (systemctl stop pgwarden), then detach",
                    control.display()
                );
            }
            let dir = pin_dir
                .or_else(|| loaded.map(|c| c.bpf.pin_dir))
                .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf/pgwarden"));
            let removed = crate::redirect::detach(&dir)?;
            if removed.is_empty() {
                println!("nothing pinned at {}: nothing to detach", dir.display());
            } else {
                println!(
                    "detached: removed {} pins under {}; tagged workloads now connect directly",
                    removed.len(),
                    dir.display()
                );
            }
            Ok(())
        }
        Command::Approvals(a) => approvals(a).await,
        Command::Grants(g) => grants(g).await,
        Command::Approvers(a) => approvers(a),
        Command::Untag { path, control } => {
            let r = control::call(&control, &Request::Untag { path }).await?;
            println!("untagged {}", r["path"].as_str().unwrap_or("?"));
            Ok(())
        }
    }
}

async fn tag(control: &Path, path: String, workload: String) -> anyhow::Result<()> {
    match control::call(
        control,
        &Request::Tag {
            path: path.clone(),
            workload: workload.clone(),
        },
    )
    .await
    {
        Ok(r) => {
            println!(
                "tagged {} as workload {}",
                r["path"].as_str().unwrap_or("?"),
                workload
            );
            Ok(())
        }
        Err(e) if !control.exists() => {
            // No agent: the tag lives on the cgroup directory and applies when it starts.
            let root = crate::cgroup::cgroup2_root()?;
            let p = crate::cgroup::CgroupPath::from_arg(&root, &path)?;
            anyhow::ensure!(
                crate::config::valid_workload_name(&workload),
                "bad workload name `{workload}`"
            );
            crate::cgroup::write_tag(&p.dir(&root), &workload)?;
            println!(
                "tagged {p} as workload {workload} (agent not running: {e}; it applies on start)"
            );
            Ok(())
        }
        Err(e) => Err(e),
    }
}

async fn approvals(cmd: ApprovalsCommand) -> anyhow::Result<()> {
    match cmd {
        ApprovalsCommand::List { json, control } => {
            let a = control::approvals(&control).await?;
            if json {
                println!("{}", pretty(&a)?);
            } else {
                print!("{}", status::render_pending(&a, now_secs()));
            }
            Ok(())
        }
        ApprovalsCommand::Approve {
            id,
            grant,
            comment,
            control,
        } => {
            let grant_seconds = match grant {
                Some(g) => Some(
                    crate::approval::parse_duration(&g)
                        .ok_or_else(|| anyhow::anyhow!("--for {g}: use e.g. 90s, 15m, 2h"))?
                        .as_secs(),
                ),
                None => None,
            };
            let r = control::call(
                &control,
                &Request::ApprovalsDecide {
                    id,
                    approve: true,
                    grant_seconds,
                    comment,
                },
            )
            .await?;
            match r["resolution"]["grant"].as_u64() {
                Some(g) => println!(
                    "approved request {id}; grant {g} open for {}s",
                    grant_seconds.unwrap_or(0)
                ),
                None => println!("approved request {id}"),
            }
            Ok(())
        }
        ApprovalsCommand::Deny {
            id,
            comment,
            control,
        } => {
            control::call(
                &control,
                &Request::ApprovalsDecide {
                    id,
                    approve: false,
                    grant_seconds: None,
                    comment,
                },
            )
            .await?;
            println!("denied request {id}");
            Ok(())
        }
    }
}

fn approvers(cmd: ApproversCommand) -> anyhow::Result<()> {
    use crate::approval::approvers;
    match cmd {
        ApproversCommand::Add { name, groups, at } => {
            let path = at.path()?;
            let token = approvers::add(&path, &name, &groups)?;
            eprintln!(
                "approver {name} added{} to {}; their token follows, shown this once:",
                if groups.is_empty() {
                    String::new()
                } else {
                    format!(" (groups: {})", groups.join(", "))
                },
                path.display()
            );
            println!("{token}");
            Ok(())
        }
        ApproversCommand::List { json, at } => {
            let list = approvers::list(&at.path()?)?;
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|a| serde_json::json!({"name": a.name, "groups": a.groups, "created": a.created}))
                    .collect();
                println!("{}", pretty(&v)?);
            } else if list.is_empty() {
                println!("no approvers: add one with `pgwarden approvers add NAME --group G`");
            } else {
                for a in list {
                    println!("{:<24} {:<24} {}", a.name, a.groups.join(","), a.created);
                }
            }
            Ok(())
        }
        ApproversCommand::Remove { name, at } => {
            let path = at.path()?;
            anyhow::ensure!(
                approvers::remove(&path, &name)?,
                "no approver `{name}` in {}",
                path.display()
            );
            println!("removed approver {name}: their token no longer works");
            Ok(())
        }
    }
}

async fn grants(cmd: GrantsCommand) -> anyhow::Result<()> {
    match cmd {
        GrantsCommand::List { control } => {
            let a = control::approvals(&control).await?;
            print!("{}", status::render_grants(&a, now_secs()));
            Ok(())
        }
        GrantsCommand::Revoke { id, control } => {
            control::call(&control, &Request::GrantsRevoke { id }).await?;
            println!("revoked grant {id}");
            Ok(())
        }
    }
}

/// A reply as pretty JSON, its keys sorted (as the agent's replies always were).
fn pretty(v: &impl serde::Serialize) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(&serde_json::to_value(v)?)?)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn policy(cmd: PolicyCommand) -> anyhow::Result<()> {
    use crate::policy::{analyze, decide, file, run_tests};
    match cmd {
        PolicyCommand::Check { files } => {
            for f in files {
                let (p, hash) = file::load(&f)?;
                let profiles: Vec<&str> = p.profiles.keys().map(String::as_str).collect();
                println!(
                    "{}: ok (sha256 {}, profiles: {}, {} test cases)",
                    f.display(),
                    &hash[..16],
                    profiles.join(", "),
                    p.tests.len()
                );
            }
            Ok(())
        }
        PolicyCommand::Explain {
            policy,
            workload,
            sql,
            json,
        } => {
            let (p, hash) = file::load(&policy)?;
            let profile = decide::compile(&p, &hash, &workload).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: no profile `{workload}` (it has: {})",
                    policy.display(),
                    p.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?;
            let facts = analyze::analyze(&sql);
            let outcome = profile.decide(&facts);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "outcome": outcome, "facts": facts })
                    )?
                );
                return Ok(());
            }
            match (&outcome.denied, outcome.enforced) {
                (None, _) => match &outcome.hold {
                    Some(h) => {
                        println!(
                            "decision: hold for approval\nrule:     {}\napprovers: {}",
                            h.id,
                            h.approvers.join(", ")
                        );
                        if let Some(role) = &h.run_as {
                            println!("runs as:  {role} (once approved; simple Query only)");
                        }
                    }
                    None => println!("decision: allow"),
                },
                (Some(d), true) => println!(
                    "decision: deny\nrule:     {}\nmessage:  {}",
                    d.rule,
                    d.message()
                ),
                (Some(d), false) => println!(
                    "decision: allow (audit-only; would deny)\nrule:     {}\nmessage:  {}",
                    d.rule,
                    d.message()
                ),
            }
            if let Some(g) = &outcome.guard {
                println!(
                    "limit:    at most {} rows changed ({}): counted by the server, undone and refused over it",
                    g.max_rows, g.rule
                );
            }
            for r in &outcome.reads {
                let then = if r.deny {
                    "the rest is cut off"
                } else {
                    "the rest waits for approval"
                };
                match (r.rows_over, r.budget) {
                    (Some(n), _) => println!(
                        "reads:    {}: the first {n} rows of a result stream, then {then}",
                        r.rule.id
                    ),
                    (_, Some(b)) => println!(
                        "reads:    {}: {} rows per {} for the workload (all sessions), then {then}",
                        r.rule.id,
                        b.rows,
                        humantime::format_duration(b.per)
                    ),
                    _ => {}
                }
            }
            if let Some(r) = profile.record_results {
                println!(
                    "results:  the first {} rows of each result (at most {} bytes) are kept with its query.done record, with the rows sent and their SHA-256",
                    r.rows, r.bytes
                );
            }
            println!("commands: {}", facts.commands.join(", "));
            let classes: Vec<&str> = facts.classes.iter().map(|c| c.name()).collect();
            println!("classes:  {}", classes.join(", "));
            let tables: Vec<String> = facts
                .tables
                .iter()
                .map(|t| {
                    format!(
                        "{}{} ({:?})",
                        t.schema.as_ref().map_or(String::new(), |s| format!("{s}.")),
                        t.name,
                        t.access
                    )
                    .to_lowercase()
                })
                .collect();
            println!("tables:   {}", tables.join(", "));
            let funcs: Vec<&str> = facts.functions.iter().map(|f| f.name.as_str()).collect();
            println!("functions: {}", funcs.join(", "));
            if let Some(e) = &facts.parse_error {
                println!("parse error: {e}");
            }
            Ok(())
        }
        PolicyCommand::Bench {
            policy,
            workload,
            sql,
            iterations,
        } => {
            let (p, hash) = file::load(&policy)?;
            let profile = decide::compile(&p, &hash, &workload)
                .ok_or_else(|| anyhow::anyhow!("no profile `{workload}`"))?;
            let compiled = crate::policy::Compiled::for_bench(profile, policy.clone());
            let mut rows = Vec::new();
            for s in &sql {
                let start = std::time::Instant::now();
                for _ in 0..iterations {
                    let facts = analyze::analyze(std::hint::black_box(s));
                    std::hint::black_box(compiled.profile.decide(&facts));
                }
                let cold = start.elapsed().as_nanos() / u128::from(iterations);
                let _ = compiled.decide(s);
                let start = std::time::Instant::now();
                for _ in 0..iterations {
                    std::hint::black_box(compiled.decide(std::hint::black_box(s)));
                }
                let cached = start.elapsed().as_nanos() / u128::from(iterations);
                // The same statement with other literals: read (lexed for its shape) and
                // answered by the shape cache, as a simple query with new literals is.
                let text = crate::sqltext::Text::of(s);
                let shaped = match text.shape {
                    Some(_) if !compiled.decide(s).facts.literal_sensitive => {
                        let start = std::time::Instant::now();
                        for _ in 0..iterations {
                            let t = crate::sqltext::Text::of(std::hint::black_box(s));
                            std::hint::black_box(
                                compiled.decide_shaped("\u{0}not cached", t.shape.as_deref()),
                            );
                        }
                        Some(start.elapsed().as_nanos() / u128::from(iterations))
                    }
                    _ => None,
                };
                rows.push(serde_json::json!({
                    "sql": s,
                    "cold_ns": cold,
                    "cached_ns": cached,
                    "shape_cached_ns": shaped,
                }));
            }
            println!("{}", serde_json::to_string_pretty(&rows)?);
            Ok(())
        }
        PolicyCommand::Test { files } => {
            let (mut passed, mut failed) = (0, 0);
            for f in files {
                for r in run_tests(&f)? {
                    if r.pass {
                        passed += 1;
                    } else {
                        failed += 1;
                        println!(
                            "FAIL {} [{}] {}\n     expected {}, got {}",
                            f.display(),
                            r.profile,
                            r.sql,
                            r.expected,
                            r.got
                        );
                    }
                }
            }
            println!("policy tests: {passed} passed, {failed} failed");
            anyhow::ensure!(failed == 0, "{failed} policy test case(s) failed");
            Ok(())
        }
    }
}
