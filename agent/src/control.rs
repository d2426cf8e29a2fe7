//! The control socket: a root-only Unix socket speaking one JSON request and one JSON reply
//! per line, served by the agent and used by the CLI (`status`, `tag`, `untag`).
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::warn;

use crate::status::{Approvals, Status};

/// What answers a request: `(request, caller uid) -> answer`, run on a blocking thread. The
/// daemon supplies it; this module only speaks the socket protocol.
pub type Handler = Arc<dyn Fn(Request, u32) -> anyhow::Result<Answer> + Send + Sync>;

/// A request's result, serialized here into the reply.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Answer {
    /// `status`.
    Status(Box<Status>),
    /// `approvals list`.
    Approvals(Approvals),
    /// Any other request's small result.
    Json(Value),
}

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
    /// Close a grant (root, or an approver of its rule).
    GrantsRevoke {
        /// Grant id.
        id: u64,
    },
}

impl Request {
    /// Whether only root may send this request.
    fn root_only(&self) -> bool {
        matches!(self, Self::Status | Self::Tag { .. } | Self::Untag { .. })
    }
}

/// The agent's reply: `result` is an [`Answer`] as the agent sends it, read back as whatever
/// type the caller expects (a [`Status`] for `status`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Reply<T = Value> {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The result, when ok (`null` otherwise; a missing `Option` reads as `None`).
    pub result: Option<T>,
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
    /// (SO_PEERCRED): status, tag and untag are root-only, approval decisions and grant
    /// revocations are checked against the rule's approvers.
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
    pub async fn serve(self, handler: Handler) {
        loop {
            let Ok((stream, _)) = self.listener.accept().await else {
                continue;
            };
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                if let Err(e) = serve_one(&handler, stream).await {
                    warn!("control client: {e:#}");
                }
            });
        }
    }
}

async fn serve_one(handler: &Handler, stream: UnixStream) -> anyhow::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    reader.read_line(&mut line).await?;
    let fail = |error: String| Reply {
        ok: false,
        result: None,
        error: Some(error),
    };
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(req) if req.root_only() && uid != 0 => {
            warn!(uid, "control request refused: root only");
            fail("permission denied: this request is root-only".into())
        }
        Ok(req) => {
            let handler = Arc::clone(handler);
            match tokio::task::spawn_blocking(move || handler(req, uid)).await {
                Ok(Ok(result)) => Reply {
                    ok: true,
                    result: Some(result),
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

/// Sends one request to the agent and returns its result.
pub async fn call(socket: &Path, req: &Request) -> anyhow::Result<Value> {
    Ok(call_as::<Value>(socket, req).await?.unwrap_or(Value::Null))
}

/// The agent's status snapshot.
pub async fn status(socket: &Path) -> anyhow::Result<Status> {
    call_as(socket, &Request::Status)
        .await?
        .context("the agent sent no status")
}

/// Held statements and open grants.
pub async fn approvals(socket: &Path) -> anyhow::Result<Approvals> {
    call_as(socket, &Request::ApprovalsList)
        .await?
        .context("the agent sent no approvals")
}

/// Sends one request to the agent and reads its result as a `T`.
async fn call_as<T: DeserializeOwned>(socket: &Path, req: &Request) -> anyhow::Result<Option<T>> {
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
    let reply: Reply<T> = serde_json::from_str(&line).context("malformed reply from the agent")?;
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
