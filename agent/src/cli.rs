//! The command line: `run`, `status`, `tag`, `untag`, with exit codes and readable output.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::config::Config;
use crate::control::{self, Request};

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
    /// Remove a cgroup's tag.
    Untag {
        /// cgroup directory: absolute, or relative to the cgroup2 root.
        path: String,
        /// Control socket of the agent.
        #[arg(long, default_value = DEFAULT_CONTROL)]
        control: PathBuf,
    },
}

/// Entry point.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
        } => {
            let config = Config::load(&config)?;
            crate::daemon::run(config, !no_redirect).await
        }
        Command::Status { json, control } => {
            let status = control::call(&control, &Request::Status).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(())
        }
        Command::Tag {
            path,
            workload,
            control,
        } => tag(&control, path, workload).await,
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

fn print_status(s: &Value) {
    let a = &s["agent"];
    println!(
        "pgwarden {} (pid {}, {} mode)",
        a["version"].as_str().unwrap_or("?"),
        a["pid"],
        a["mode"].as_str().unwrap_or("?")
    );
    println!(
        "cgroup2 root: {}",
        s["cgroup2_root"].as_str().unwrap_or("?")
    );
    println!("listening:    {}", join(&s["listen"]));
    println!("intercepting: {}", join(&s["intercept"]));
    println!("attached:");
    for p in s["attached"].as_array().into_iter().flatten() {
        println!(
            "  {:<14} {:<22} {}",
            str_of(&p["program"]),
            str_of(&p["hook"]),
            str_of(&p["target"])
        );
    }
    if let Some(c) = s["counters"].as_object() {
        let parts: Vec<String> = c.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("counters:     {}", parts.join(" "));
    }
    println!("tagged cgroups:");
    for t in s["tagged"].as_array().into_iter().flatten() {
        let source = &t["source"];
        let why = match source["pattern"].as_str() {
            Some(p) => format!("{} {p}", str_of(&source["kind"])),
            None => str_of(&source["kind"]).to_owned(),
        };
        println!(
            "  {:<50} {:<20} ({why})",
            str_of(&t["path"]),
            str_of(&t["workload"])
        );
    }
    let sessions = s["sessions"].as_array().map_or(&[][..], Vec::as_slice);
    println!("sessions: {}", sessions.len());
    for x in sessions {
        let who = &x["identity"];
        println!(
            "  {} {:<16} pid={} uid={} exe={} cgroup={} {} -> {}",
            str_of(&x["id"]),
            str_of(&x["workload"]),
            who["pid"],
            who["uid"],
            who["exe"].as_str().unwrap_or("?"),
            who["cgroup"].as_str().unwrap_or("?"),
            str_of(&x["client"]),
            str_of(&x["server"]),
        );
    }
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

fn join(v: &Value) -> String {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|x| x.as_str().unwrap_or("?").to_owned())
        .collect::<Vec<_>>()
        .join(", ")
}
