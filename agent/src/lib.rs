//! pgwarden: puts AI workloads' PostgreSQL connections under policy, masking and audit.
//! The library holds every layer; `main.rs` only calls [`cli::main`].

pub mod approval;
pub mod audit;
pub mod bpfload;
pub mod btf;
pub mod budget;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dest;
pub mod forward;
pub mod identity;
pub mod login;
pub mod mask;
pub mod metrics;
pub mod names;
pub mod netns;
pub mod policy;
pub mod redirect;
pub mod session;
pub mod sqltext;
pub mod status;
pub mod tags;
pub mod tls;
pub mod unixdiag;
pub mod webhook;

pub mod wire;
