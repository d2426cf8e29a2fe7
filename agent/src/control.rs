//! The control socket: a root-only Unix socket speaking one JSON request and one JSON reply
//! per line, served by the agent and used by the CLI (`status`, `tag`, `untag`).
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use crate::daemon::Shared;

/// A request from the CLI.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Everything status shows.
    Status,
    /// Tag a cgroup directory for a workload.
    Tag {
        /// cgroup path (absolute or relative to the cgroup2 root).
        path: String,
        /// Workload name.
        workload: String,
    },
    /// Remove a cgroup directory's tag.
    Untag {
        /// cgroup path.
        path: String,
    },
    /// Statements waiting for approval, and open grants.
    ApprovalsList,
    /// Approve or deny a held statement; the caller must be one of its rule's approvers.
    ApprovalsDecide {
        /// Request id.
        id: u64,
        /// Approve (true) or deny.
        approve: bool,
        /// Open a grant for this many seconds.
        grant_seconds: Option<u64>,
        /// A comment for the record.
        comment: Option<String>,
    },
    /// Close a grant (root only).
    GrantsRevoke {
        /// Grant id.
        id: u64,
    },
}

impl Request {
    /// Whether only root may send this request.
    fn root_only(&self) -> bool {
        matches!(
            self,
            Self::Status | Self::Tag { .. } | Self::Untag { .. } | Self::GrantsRevoke { .. }
        )
    }
}

/// The agent's reply.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The result, when ok.
    #[serde(default)]
    pub result: Value,
    /// What went wrong, when not.
    #[serde(default)]
    pub error: Option<String>,
}

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

/// The bound control socket.
pub struct Server {
    listener: UnixListener,
}

impl Server {
    /// Binds the socket, replacing a stale one. Anyone may connect (mode 0666, directory
    /// 0755) so approvers need not be root; every request is authorized by the caller's uid
    /// (SO_PEERCRED): status, tag, untag and grant revocation are root-only, approval
    /// decisions are checked against the rule's approvers.
    pub fn bind(path: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        if let Some(dir) = path.parent()
            && !dir.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "{}: another pgwarden agent is running (its control socket answers)",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("binding control socket {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
        Ok(Self { listener })
    }

    /// Serves clients until the agent stops.
    pub async fn serve(self, shared: Arc<Shared>) {
        loop {
            let Ok((stream, _)) = self.listener.accept().await else {
                continue;
            };
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                if let Err(e) = serve_one(&shared, stream).await {
                    warn!("control client: {e:#}");
                }
            });
        }
    }
}

async fn serve_one(shared: &Arc<Shared>, stream: UnixStream) -> anyhow::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    reader.read_line(&mut line).await?;
    let fail = |error: String| Reply {
        ok: false,
        result: Value::Null,
        error: Some(error),
    };
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(req) if req.root_only() && uid != 0 => {
            warn!(uid, "control request refused: root only");
            fail("permission denied: this request is root-only".into())
        }
        Ok(req) => {
            let shared = Arc::clone(shared);
            match tokio::task::spawn_blocking(move || handle(&shared, req, uid)).await {
                Ok(Ok(result)) => Reply {
                    ok: true,
                    result,
                    error: None,
                },
                Ok(Err(e)) => fail(format!("{e:#}")),
                Err(e) => fail(format!("internal error: {e}")),
            }
        }
        Err(e) => fail(format!("bad request: {e}")),
    };
    let mut out = serde_json::to_vec(&reply)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

fn handle(shared: &Shared, req: Request, uid: u32) -> anyhow::Result<Value> {
    match req {
        Request::Status => Ok(status(shared)),
        Request::Tag { path, workload } => {
            let p = shared.tag(&path, &workload)?;
            info!(cgroup = %p, workload, "tagged");
            Ok(json!({ "path": p, "workload": workload }))
        }
        Request::Untag { path } => {
            let p = shared.untag(&path)?;
            info!(cgroup = %p, "untagged");
            Ok(json!({ "path": p }))
        }
        Request::ApprovalsList => Ok(
            json!({ "pending": shared.env.approvals.pending(), "grants": shared.env.approvals.grants() }),
        ),
        Request::ApprovalsDecide {
            id,
            approve,
            grant_seconds,
            comment,
        } => {
            let caller = crate::approval::Caller::from_uid(uid);
            let grant = grant_seconds.map(std::time::Duration::from_secs);
            // The decision, or its refusal, is recorded by the approvals themselves.
            let (request, resolution) = shared
                .env
                .approvals
                .decide(id, &caller, approve, grant, comment)?;
            Ok(json!({ "request": request, "resolution": resolution }))
        }
        Request::GrantsRevoke { id } => {
            let g = shared
                .env
                .approvals
                .revoke(id)
                .ok_or_else(|| anyhow::anyhow!("no open grant {id}"))?;
            info!(grant = id, workload = %g.workload, rule = %g.rule, "grant revoked");
            Ok(json!({ "revoked": g }))
        }
    }
}

fn status(shared: &Shared) -> Value {
    let (tagged, sticky, workloads) = {
        let t = shared
            .tagger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tagged: Vec<Value> = t
            .tagged()
            .map(|(id, tag)| json!({ "id": id.0, "path": tag.path, "workload": tag.workload, "source": tag.source }))
            .collect();
        let sticky: Vec<Value> = t.sticky().map(|p| json!(p)).collect();
        let workloads: Vec<Value> = shared
            .config
            .workloads
            .iter()
            .map(|w| json!({ "name": w.name, "systemd_unit": w.systemd_unit, "cgroup": w.cgroup }))
            .collect();
        (tagged, sticky, workloads)
    };
    let (attached, counters, unix) = match &shared.redirect {
        Some(r) => {
            let r = r.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let counters: serde_json::Map<String, Value> = r
                .counters()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), json!(v)))
                .collect();
            let unix = match &r.unix_disabled {
                Some(why) => json!({
                    "state": "off (--tcp-only): tagged workloads can reach Unix sockets directly",
                    "missing": why,
                }),
                None => json!({
                    "state": if shared.listen_unix.is_some() { "redirect" } else { "refuse (listen.unix: null)" },
                    "listen": shared.listen_unix,
                    "intercept": shared.config.intercept_unix,
                    "allow": shared.config.unix_allow,
                }),
            };
            (json!(r.attached()), Value::Object(counters), unix)
        }
        None => (
            json!([]),
            json!({}),
            json!({ "state": "off (listen-only)" }),
        ),
    };
    let sessions: Vec<Value> = shared
        .env
        .registry
        .list()
        .iter()
        .map(|s| json!(s))
        .collect();
    json!({
        "agent": {
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "started": shared.started,
            "mode": if shared.redirect.is_some() { "redirect" } else { "listen-only" },
        },
        "cgroup2_root": shared.cgroup_root,
        "listen": shared.listen,
        "intercept": shared.config.intercept.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "unix": unix,
        "namespaces": shared.namespaces.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values().map(|n| json!(n)).collect::<Vec<_>>(),
        "attached": attached,
        "counters": counters,
        "workloads": workloads,
        "tagged": tagged,
        "sticky_paths": sticky,
        "sessions": sessions,
                "approvals": { "pending": shared.env.approvals.pending(), "grants": shared.env.approvals.grants() },
        "audit": shared.env.journal.status(),
        "policy": {
            "version": shared.env.policy.current().version,
            "files": shared.env.policy.current().files.iter().map(|(p, h)| json!({ "path": p, "sha256": h })).collect::<Vec<_>>(),
        },
    })
}

/// Sends one request to the agent and returns its result.
pub async fn call(socket: &Path, req: &Request) -> anyhow::Result<Value> {
    let stream = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "cannot reach the pgwarden agent at {} (is `pgwarden run` running? are you root?)",
            socket.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut out = serde_json::to_vec(req)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let reply: Reply = serde_json::from_str(&line).context("malformed reply from the agent")?;
    if reply.ok {
        Ok(reply.result)
    } else {
        anyhow::bail!(
            reply
                .error
                .unwrap_or_else(|| "the agent refused the request".into())
        )
    }
}
