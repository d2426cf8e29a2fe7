//! `pgwarden run`: binds the listeners, loads and attaches the kernel programs, keeps the
//! cgroup tags in step with the tree, serves the control socket, and accepts sessions.
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tokio::net::TcpListener;
use tracing::{debug, error, info, warn};

use crate::cgroup::{self, CgroupPath};
use crate::config::Config;
use crate::hooks::Hooks;
use crate::names::{CgroupId, OrigDstAddr, SessionId, SockAddr, WorkloadName};
use crate::redirect::{self, KernelConfig, Redirect};
use crate::session::{self, SessionInfo};
use crate::tags::{TagSink, Tagger};

/// A backend's pid and secret key, as BackendKeyData and CancelRequest carry them.
type CancelKey = (i32, Vec<u8>);

/// Where a CancelRequest for a live session goes: the session, its server, its client's pid
/// (a Unix server path is resolved in that client's mount namespace).
type CancelTarget = (
    SessionId,
    SockAddr,
    Option<u32>,
    Option<Arc<crate::netns::Netns>>,
);

/// State shared by the listener, the sessions, the tag watcher and the control socket.
/// Lock order, where two are held: `tagger` before `redirect`.
pub struct Shared {
    /// The configuration.
    pub config: Config,
    /// Where cgroup2 is mounted.
    pub cgroup_root: PathBuf,
    /// The kernel side; `None` in listen-only mode.
    pub redirect: Option<Mutex<Redirect>>,
    /// Tag state.
    pub tagger: Mutex<Tagger>,
    /// Live sessions.
    pub sessions: Mutex<BTreeMap<SessionId, SessionInfo>>,
    /// Bound listen addresses.
    pub listen: Vec<SocketAddr>,
    /// The Unix listener's name (`@...`: abstract), when bound.
    pub listen_unix: Option<String>,
    /// The listeners opened inside tagged workloads' own network namespaces.
    pub namespaces: Mutex<BTreeMap<crate::netns::NetnsId, NsServed>>,
    /// Held by the one [`serve_namespaces`] pass that runs at a time.
    serving_namespaces: tokio::sync::Mutex<()>,
    /// Agent start, seconds since the epoch.
    pub started: u64,
    /// The layers plugged into every session.
    pub hooks: Arc<dyn Hooks>,
    /// The policy engine (reloadable).
    pub policy: Arc<crate::policy::Engine>,
    /// The config file, re-read on reload.
    pub config_path: PathBuf,
    /// TLS toward clients, when configured.
    pub client_tls: Option<tokio_rustls::TlsAcceptor>,
    /// TLS toward servers, unless `sslmode: disable`.
    pub upstream_tls: Option<tokio_rustls::TlsConnector>,
    /// Statements held for approval, and open grants.
    pub approvals: crate::approval::Approvals,
    /// The audit journal.
    pub audit: crate::audit::Journal,
    /// Prometheus counters.
    pub metrics: crate::metrics::Metrics,
    /// Set when the listeners must stop accepting (SIGTERM).
    stopping: tokio::sync::watch::Sender<bool>,
    /// Set when the drain time is over: live sessions are closed with 57P01.
    terminating: tokio::sync::watch::Sender<bool>,
    /// Backend keys of live sessions -> (session, server, client pid), for routing
    /// CancelRequests.
    cancel_keys: Mutex<HashMap<CancelKey, CancelTarget>>,
    session_base: u64,
    session_seq: AtomicU64,
}

/// The listeners of one foreign network namespace, for as long as a tagged process is in it.
pub struct NsServed {
    /// The namespace.
    pub ns: Arc<crate::netns::Netns>,
    /// What is bound in it.
    pub listen: Vec<String>,
    /// Ends its accept loops.
    stop: tokio::sync::watch::Sender<bool>,
}

impl serde::Serialize for NsServed {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_json::json!({ "netns": self.ns.id.0, "pid": self.ns.pid, "listen": self.listen })
            .serialize(s)
    }
}

/// Tag sink for listen-only mode: decisions are kept for status, nothing is in the kernel.
struct NoKernel;

impl TagSink for NoKernel {
    fn tag(&mut self, _: CgroupId, _: crate::names::WorkloadId) -> anyhow::Result<()> {
        Ok(())
    }
    fn untag(&mut self, _: CgroupId) -> anyhow::Result<()> {
        Ok(())
    }
    fn stick(&mut self, _: &CgroupPath, _: crate::names::WorkloadId) -> anyhow::Result<()> {
        Ok(())
    }
    fn unstick(&mut self, _: &CgroupPath) -> anyhow::Result<()> {
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// A fresh session id: the agent's start time in the high bits, a counter below.
    pub fn next_session_id(&self) -> SessionId {
        SessionId(
            self.session_base | (self.session_seq.fetch_add(1, Ordering::Relaxed) & 0xff_ffff),
        )
    }

    /// A session passed startup.
    pub fn session_started(&self, info: SessionInfo) {
        lock(&self.sessions).insert(info.meta.id, info);
    }

    /// A session ended: forget it and its cancel key.
    pub fn session_ended(&self, id: SessionId) {
        lock(&self.sessions).remove(&id);
        lock(&self.cancel_keys).retain(|_, (owner, ..)| *owner != id);
    }

    /// The server told session `meta` its backend key.
    pub fn register_cancel(&self, meta: &session::SessionMeta, pid: i32, key: &[u8]) {
        lock(&self.cancel_keys).insert(
            (pid, key.to_vec()),
            (
                meta.id,
                meta.server.0.clone(),
                meta.identity.as_ref().map(|i| i.pid),
                meta.netns.clone(),
            ),
        );
    }

    /// The live session whose backend has this key, its server, and its client's pid.
    pub fn cancel_target(&self, pid: i32, key: &[u8]) -> Option<CancelTarget> {
        lock(&self.cancel_keys).get(&(pid, key.to_vec())).cloned()
    }

    /// Resolves when the agent closes live sessions (after SIGTERM and the drain time).
    pub async fn terminated(&self) {
        let mut rx = self.terminating.subscribe();
        let _ = rx.wait_for(|t| *t).await;
    }

    /// Records a refused approval decision (unauthorized caller, unknown request).
    pub fn approval_refused(
        &self,
        id: u64,
        caller: &crate::approval::Caller,
        e: &crate::approval::DecideError,
    ) {
        warn!(request = id, uid = caller.uid, user = ?caller.user, "approval decision refused: {e}");
        let rec = crate::audit::Record::new(crate::audit::Event::ApprovalDenied)
            .decision(crate::audit::Decision::Deny)
            .rule("approval.unauthorized")
            .outcome(crate::audit::Outcome::Failure)
            .error(e.to_string())
            .detail("request", id)
            .detail("caller_uid", caller.uid)
            .detail("caller_user", caller.user.clone());
        self.audit_spawn(rec);
    }

    /// Appends a record without waiting (events that hold nothing up).
    pub fn audit_spawn(&self, rec: crate::audit::Record) {
        let j = self.audit.clone();
        tokio::spawn(async move {
            if let Err(e) = j.append(rec).await {
                error!("audit: {e}");
            }
        });
    }

    /// The journal's state for status and metrics: (name, help, value).
    pub fn audit_status(&self) -> Option<Vec<(&'static str, &'static str, u64)>> {
        let s = self.audit.status();
        Some(vec![
            (
                "last_seq",
                "Sequence number of the last record written.",
                s.last_seq,
            ),
            (
                "queue_depth",
                "Records waiting to be written.",
                u64::try_from(s.queue_depth).unwrap_or(u64::MAX),
            ),
            (
                "records_written",
                "Records written since start.",
                s.records_written,
            ),
            ("write_errors", "Failed writes since start.", s.write_errors),
            (
                "journald_errors",
                "Failed journald sends since start.",
                s.journald_errors,
            ),
            (
                "dropped",
                "Records dropped by a full async queue.",
                s.dropped,
            ),
        ])
    }

    /// Records an approval request (`resolution: None`) or how it ended.
    pub fn approval_event(
        &self,
        request: &crate::approval::Request,
        resolution: Option<&crate::approval::Resolution>,
    ) {
        use crate::approval::Resolution;
        use crate::audit::{Decision, Event, Record};
        let (event, decision) = match resolution {
            None => {
                info!(request = request.id, rule = %request.rule.id, workload = %request.workload, session = %request.session, "approval requested");
                (Event::ApprovalRequested, Decision::Hold)
            }
            Some(r) => {
                info!(request = request.id, rule = %request.rule.id, workload = %request.workload, session = %request.session, resolution = ?r, "approval resolved");
                match r {
                    Resolution::Approved { .. } => (Event::ApprovalGranted, Decision::Allow),
                    Resolution::Denied { .. } => (Event::ApprovalDenied, Decision::Deny),
                    Resolution::Expired => (Event::ApprovalExpired, Decision::Deny),
                    Resolution::Withdrawn { .. } => (Event::ApprovalWithdrawn, Decision::Deny),
                }
            }
        };
        let mut rec = Record::new(event)
            .session(request.session)
            .workload(&request.workload)
            .statement(self.audit.statement(&request.statement))
            .decision(decision)
            .rule(request.rule.id.clone())
            .detail("request", request.id);
        if let Some(pid) = request.pid {
            rec = rec.detail("pid", pid);
        }
        match resolution {
            Some(Resolution::Approved { by, comment, grant }) => {
                rec = rec
                    .detail("approver_uid", by.uid)
                    .detail("approver", by.user.clone())
                    .detail("comment", comment.clone())
                    .detail("grant", *grant);
            }
            Some(Resolution::Denied { by, comment }) => {
                rec = rec
                    .detail("approver_uid", by.uid)
                    .detail("approver", by.user.clone())
                    .detail("comment", comment.clone());
            }
            Some(Resolution::Withdrawn { reason }) => rec = rec.detail("reason", reason.clone()),
            _ => {}
        }
        self.audit_spawn(rec);
        if resolution.is_none() {
            self.notify_webhook(request);
        }
    }

    /// Announces a held statement to the configured webhook; failures are logged and audited,
    /// and the request still waits.
    fn notify_webhook(&self, request: &crate::approval::Request) {
        let Some(url) = self.config.approvals.webhook.clone() else {
            return;
        };
        let body = serde_json::to_vec(
            &serde_json::json!({ "event": "approval.requested", "request": request }),
        )
        .unwrap_or_default();
        let timeout = Duration::from_secs(self.config.approvals.webhook_timeout_seconds);
        let journal = self.audit.clone();
        let (id, rule, workload, session) = (
            request.id,
            request.rule.id.clone(),
            request.workload.clone(),
            request.session,
        );
        tokio::spawn(async move {
            let result = match crate::webhook::Url::parse(&url) {
                Ok(u) => crate::webhook::post(&u, body, timeout).await,
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = result {
                warn!(request = id, webhook = %url, "approval webhook failed after {} attempts: {e}; the request still waits", crate::webhook::ATTEMPTS);
                let rec = crate::audit::Record::new(crate::audit::Event::ApprovalRequested)
                    .session(session)
                    .workload(&workload)
                    .decision(crate::audit::Decision::Hold)
                    .rule(rule)
                    .outcome(crate::audit::Outcome::Failure)
                    .error(format!("webhook {url}: {e}"))
                    .detail("request", id)
                    .detail("webhook_attempts", crate::webhook::ATTEMPTS);
                let _ = journal.append(rec).await;
            }
        });
    }

    /// Listen-only mode's server.
    pub async fn listen_only_upstream(&self) -> Option<OrigDstAddr> {
        let target = self.config.listen_only.upstream.as_deref()?;
        tokio::net::lookup_host(target)
            .await
            .ok()?
            .next()
            .map(|a| OrigDstAddr(SockAddr::Inet(a)))
    }

    /// Listen-only mode's workload name.
    pub fn listen_only_workload(&self) -> WorkloadName {
        WorkloadName(self.config.listen_only.workload.clone())
    }

    /// Walks the cgroup tree and brings the kernel's tags in line with it.
    pub fn rescan(&self) -> anyhow::Result<()> {
        let found = cgroup::walk(&self.cgroup_root);
        let root = &self.cgroup_root;
        let alive = |p: &CgroupPath, id: CgroupId| {
            cgroup::cgroup_id(&p.dir(root)).is_ok_and(|now| now == id)
        };
        let mut tagger = lock(&self.tagger);
        match &self.redirect {
            Some(r) => tagger.reconcile(&found, &alive, &mut *lock(r)),
            None => tagger.reconcile(&found, &alive, &mut NoKernel),
        }
    }

    /// A cgroup the kernel saw created.
    fn created(&self, id: CgroupId, path: CgroupPath) -> anyhow::Result<()> {
        let mut tagger = lock(&self.tagger);
        match &self.redirect {
            Some(r) => tagger.created(id, path, &mut *lock(r)),
            None => tagger.created(id, path, &mut NoKernel),
        }
    }

    /// Tags a cgroup directory for a workload (the xattr), then applies it.
    pub fn tag(&self, path: &str, workload: &str) -> anyhow::Result<CgroupPath> {
        anyhow::ensure!(
            crate::config::valid_workload_name(workload),
            "workload name `{workload}`: use letters, digits, `-`, `_` and `.` (1 to 64)"
        );
        let path = CgroupPath::from_arg(&self.cgroup_root, path)?;
        let dir = path.dir(&self.cgroup_root);
        anyhow::ensure!(
            dir.join("cgroup.procs").exists(),
            "{}: not a cgroup directory",
            dir.display()
        );
        cgroup::write_tag(&dir, workload)?;
        self.rescan()?;
        Ok(path)
    }

    /// Removes a cgroup directory's tag, then applies it. Config matches cannot be untagged.
    pub fn untag(&self, path: &str) -> anyhow::Result<CgroupPath> {
        let path = CgroupPath::from_arg(&self.cgroup_root, path)?;
        let dir = path.dir(&self.cgroup_root);
        anyhow::ensure!(
            dir.join("cgroup.procs").exists(),
            "{}: not a cgroup directory",
            dir.display()
        );
        cgroup::clear_tag(&dir)?;
        self.rescan()?;
        if let Some((w, source)) = lock(&self.tagger).matchers.config_match(&path) {
            anyhow::bail!(
                "{path}: xattr removed, but the config still assigns it to workload `{w}` ({source:?}); change the config to untag it"
            );
        }
        Ok(path)
    }
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(
    config: Config,
    config_path: PathBuf,
    redirect_enabled: bool,
    tcp_only: bool,
) -> anyhow::Result<()> {
    // Policies first: a broken one stops the agent before anything is attached.
    let policy = Arc::new(crate::policy::Engine::new(&config, &config_path)?);
    for w in config.workloads.iter().filter(|w| w.policy.is_none()) {
        warn!(workload = %w.name, "workload has no policy: every statement it sends will be denied");
    }
    let hash_key = Arc::new(load_hash_key(&config, &policy)?);
    // The journal before anything is attached: no access without its record.
    let journal = crate::audit::Journal::open(&config.audit)
        .with_context(|| format!("opening the audit journal {}", config.audit.path.display()))?;
    let cgroup_root = cgroup::cgroup2_root()?;
    info!(cgroup2 = %cgroup_root.display(), "cgroup2 hierarchy found");

    // The control socket and the listeners before anything is attached: a failure here must
    // not leave programs redirecting to an agent that never started.
    let control = crate::control::Server::bind(&config.control.socket)?;
    // Listeners first: once connects are redirected, they must have somewhere to land.
    let mut listeners = Vec::new();
    if let Some(a) = config.listen.ipv4 {
        listeners.push(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("binding {a}"))?,
        );
    }
    if let Some(a) = config.listen.ipv6 {
        listeners.push(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("binding {a}"))?,
        );
    }
    let listen: Vec<SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let unix_name = if redirect_enabled {
        config.listen.unix_name()
    } else {
        None
    };
    let unix_listener = unix_name.as_deref().map(bind_unix).transpose()?;

    let (redirect, events) = if redirect_enabled {
        let (r, ev) = Redirect::load(&KernelConfig {
            listen_v4: config.listen.ipv4,
            listen_v6: config.listen.ipv6,
            intercept: &config.intercept,
            agent_tgid: std::process::id(),
            pin_dir: &config.bpf.pin_dir,
            unix_listen: unix_name.as_deref().map(SockAddr::sun_path),
            intercept_unix: &config.intercept_unix,
            unix_allow: &config.unix_allow,
            allow_tcp_only: tcp_only,
        })?;
        (Some(Mutex::new(r)), Some(ev))
    } else {
        anyhow::ensure!(
            config.listen_only.upstream.is_some(),
            "--no-redirect needs `listen_only.upstream: HOST:PORT` in the config: the server to relay to"
        );
        warn!("listen-only mode: no eBPF redirect; clients must connect to {listen:?} themselves");
        (None, None)
    };

    let client_tls = config
        .tls
        .as_ref()
        .map(crate::tls::acceptor)
        .transpose()
        .context("tls")?;
    let upstream_tls = crate::tls::connector(&config.upstream).context("upstream TLS")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let shared = Arc::new(Shared {
        hooks: Arc::new(crate::layers::Layers {
            policy: crate::policy::PolicyHooks {
                engine: Arc::clone(&policy),
            },
            catalog: Arc::default(),
            hash_key,
        }),
        policy,
        config_path,
        client_tls,
        upstream_tls,
        cancel_keys: Mutex::new(HashMap::new()),
        approvals: crate::approval::Approvals::default(),
        audit: journal.clone(),
        metrics: crate::metrics::Metrics::default(),
        stopping: tokio::sync::watch::Sender::new(false),
        terminating: tokio::sync::watch::Sender::new(false),
        tagger: Mutex::new(Tagger::new(&config.workloads)),
        config,
        cgroup_root: cgroup_root.clone(),
        redirect,
        sessions: Mutex::new(BTreeMap::new()),
        listen: listen.clone(),
        listen_unix: unix_name.clone(),
        namespaces: Mutex::new(BTreeMap::new()),
        serving_namespaces: tokio::sync::Mutex::new(()),
        started: now.as_secs(),
        session_base: (now.as_secs() & 0xff_ffff_ffff) << 24,
        session_seq: AtomicU64::new(1),
    });

    // The mkdir tracepoint is live: tag what exists now, then redirect.
    if let Some(r) = &shared.redirect {
        let mut r = lock(r);
        if r.adopted {
            let (tagged, sticky) = (r.tagged_ids(), r.sticky_paths());
            info!(
                pins = %r.pin_dir().display(),
                tagged = tagged.len(),
                sticky = sticky.len(),
                "adopting the previous run's pinned programs and maps: no window without redirection"
            );
            lock(&shared.tagger).adopt(tagged, sticky, &mut *r)?;
        }
    }
    shared.rescan().context("initial scan of the cgroup tree")?;
    // Listeners in the namespaces of running containers before anything is redirected to them.
    serve_namespaces(&shared).await;
    if let Some(r) = &shared.redirect {
        lock(r).attach(&cgroup_root)?;
        info!(root = %cgroup_root.display(), "eBPF programs attached: tagged workloads are redirected");
    }
    if let Some(events) = events {
        tokio::spawn(watch_events(Arc::clone(&shared), events.mkdir));
        tokio::spawn(watch_attaches(Arc::clone(&shared), events.attach));
    }
    tokio::spawn(rescan_loop(Arc::clone(&shared)));
    tokio::spawn(control.serve(Arc::clone(&shared)));
    for l in listeners {
        tokio::spawn(accept_loop(Arc::clone(&shared), l));
    }
    if let (Some(l), Some(name)) = (unix_listener, unix_name.clone())
        && shared
            .redirect
            .as_ref()
            .is_some_and(|r| lock(r).unix_disabled.is_none())
    {
        tokio::spawn(accept_unix_loop(Arc::clone(&shared), l, name));
    }
    if let Some(addr) = shared.config.metrics.listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding metrics.listen {addr}"))?;
        tokio::spawn(crate::metrics::serve(Arc::clone(&shared), l));
    }
    let policies: Vec<String> = shared
        .policy
        .current()
        .files
        .iter()
        .map(|(p, h)| format!("{}@{h}", p.display()))
        .collect();
    shared
        .audit
        .append(
            crate::audit::Record::new(crate::audit::Event::AgentStart)
                .outcome(crate::audit::Outcome::Success)
                .detail("pid", std::process::id())
                .detail("version", env!("CARGO_PKG_VERSION"))
                .detail(
                    "listen",
                    listen
                        .iter()
                        .map(ToString::to_string)
                        .chain(shared.listen_unix.clone())
                        .collect::<Vec<_>>(),
                )
                .detail("policies", policies)
                .detail(
                    "mode",
                    if shared.redirect.is_some() {
                        "redirect"
                    } else {
                        "listen-only"
                    },
                ),
        )
        .await
        .context("writing agent.start to the audit journal")?;
    info!(listen = ?listen, "pgwarden ready");
    notify_systemd("READY=1\nSTATUS=attached, listening");
    if let Some(period) = watchdog_period() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                notify_systemd("WATCHDOG=1");
            }
        });
    }

    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<&'static str>(4);
    let _watcher = watch_policies(&shared, reload_tx.clone());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { info!("SIGINT: stopping"); break; }
            _ = term.recv() => { info!("SIGTERM: stopping"); break; }
            _ = hup.recv() => shared.reload("SIGHUP"),
            Some(why) = reload_rx.recv() => {
                // Editors write in several steps: let them finish, then read once.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while reload_rx.try_recv().is_ok() {}
                shared.reload(why);
            }
        }
    }
    stop(&shared).await;
    let _ = std::fs::remove_file(&shared.config.control.socket);
    Ok(())
}

/// SIGTERM: stop accepting (redirected connects are now refused, never direct: the programs
/// stay pinned), withdraw held statements, let running statements finish for the drain time,
/// then close what is left with 57P01.
async fn stop(shared: &Shared) {
    notify_systemd("STOPPING=1");
    shared.stopping.send_replace(true);
    let reason = "pgwarden is stopping";
    for request in shared.approvals.withdraw_all(reason) {
        shared.approval_event(
            &request,
            Some(&crate::approval::Resolution::Withdrawn {
                reason: reason.into(),
            }),
        );
    }
    let drain = Duration::from_secs(shared.config.shutdown.drain_seconds);
    let deadline = tokio::time::Instant::now() + drain;
    while !lock(&shared.sessions).is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = lock(&shared.sessions).len();
    if left > 0 {
        info!(
            sessions = left,
            "drain time over: closing the remaining sessions (57P01)"
        );
        shared.terminating.send_replace(true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !lock(&shared.sessions).is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let _ = shared
        .audit
        .append(
            crate::audit::Record::new(crate::audit::Event::AgentStop)
                .outcome(crate::audit::Outcome::Success)
                .detail("pid", std::process::id())
                .detail("sessions_closed", left),
        )
        .await;
    shared.audit.close();
    info!("pgwarden stopped; its programs stay attached (pgwarden detach removes them)");
}

/// Tells systemd (Type=notify) about state changes, when started by it.
fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            warn!("sd_notify: {e}");
            return;
        }
    };
    // An abstract socket name starts with '@'.
    let result = if let Some(name) = path.to_string_lossy().strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt as _;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = result {
        warn!("sd_notify {state:?}: {e}");
    }
}

/// Half the watchdog interval systemd asked for, if it did (and asked this process).
fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        && pid != std::process::id()
    {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

impl Shared {
    /// Re-reads the config's policy references and the policy files; swaps them in whole,
    /// or keeps the running ones and says why.
    pub fn reload(&self, why: &str) {
        let result = Config::load(&self.config_path)
            .map_err(|e| e.to_string())
            .and_then(|c| self.policy.reload(&c).map_err(|e| e.to_string()));
        match result {
            Ok(set) => {
                let files: Vec<String> = set
                    .files
                    .iter()
                    .map(|(p, h)| format!("{}@{}", p.display(), &h[..12]))
                    .collect();
                info!(version = set.version, trigger = why, files = ?files, "policy reloaded");
                self.hooks.policy_reloaded();
                let mut rec = crate::audit::Record::new(crate::audit::Event::PolicyReload)
                    .outcome(crate::audit::Outcome::Success)
                    .detail("version", set.version)
                    .detail("trigger", why)
                    .detail("files", &files);
                if let Some((_, h)) = set.files.first() {
                    rec = rec.policy_hash(h.clone());
                }
                self.audit_spawn(rec);
            }
            Err(e) => {
                error!(
                    trigger = why,
                    "policy reload refused, the running policy stays: {e}"
                );
                self.audit_spawn(
                    crate::audit::Record::new(crate::audit::Event::PolicyReload)
                        .outcome(crate::audit::Outcome::Failure)
                        .error(e.clone())
                        .detail("trigger", why),
                );
            }
        }
    }
}

/// Watches the config file and every policy file (their directories, since editors replace
/// files by renaming) and asks for a reload when one changes.
fn watch_policies(
    shared: &Shared,
    tx: tokio::sync::mpsc::Sender<&'static str>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let mut paths: Vec<PathBuf> = shared
        .policy
        .current()
        .files
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    paths.push(shared.config_path.clone());
    let watched: Vec<PathBuf> = paths
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    let names: Vec<std::ffi::OsString> = watched
        .iter()
        .filter_map(|p| p.file_name().map(ToOwned::to_owned))
        .collect();
    let mut watcher = match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && !ev.kind.is_access()
            && ev
                .paths
                .iter()
                .any(|p| p.file_name().is_some_and(|n| names.contains(&n.to_owned())))
        {
            let _ = tx.try_send("file change");
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            warn!("cannot watch policy files ({e}); reload with SIGHUP");
            return None;
        }
    };
    let mut dirs: Vec<PathBuf> = watched
        .iter()
        .filter_map(|p| p.parent().map(ToOwned::to_owned))
        .collect();
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        if let Err(e) = watcher.watch(&d, notify::RecursiveMode::NonRecursive) {
            warn!(dir = %d.display(), "cannot watch ({e}); reload with SIGHUP");
        }
    }
    Some(watcher)
}

/// The `hash` mask method's key: required when any profile uses it.
fn load_hash_key(config: &Config, policy: &crate::policy::Engine) -> anyhow::Result<Vec<u8>> {
    let uses_hash = policy.current().workloads.values().any(|c| {
        c.profile
            .mask
            .columns
            .iter()
            .any(|r| r.method == crate::mask::Method::Hash)
    });
    match &config.mask.hash_key_file {
        Some(path) => {
            let key = std::fs::read(path)
                .with_context(|| format!("reading mask.hash_key_file {}", path.display()))?;
            anyhow::ensure!(
                key.len() >= 16,
                "{}: the hash key must be at least 16 bytes",
                path.display()
            );
            Ok(key)
        }
        None if uses_hash => anyhow::bail!(
            "a policy masks a column with `hash`: set mask.hash_key_file in the config (a file of at least 16 random bytes)"
        ),
        None => Ok(Vec::new()),
    }
}

/// Binds the Unix listener: `@name` in the abstract namespace (no file, reachable from any
/// mount namespace of this network namespace), else a path (a stale socket file is replaced;
/// mode 0666, since tagged workloads of any uid land here and the record decides).
fn bind_unix(name: &str) -> anyhow::Result<tokio::net::UnixListener> {
    tokio::net::UnixListener::from_std(bind_unix_std(name)?)
        .context("registering the Unix listener")
}

/// [`bind_unix`] without the runtime (a namespace's helper thread has none): non-blocking.
fn bind_unix_std(name: &str) -> anyhow::Result<std::os::unix::net::UnixListener> {
    use std::os::linux::net::SocketAddrExt as _;
    let std_listener = if let Some(abstract_name) = name.strip_prefix('@') {
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .with_context(|| format!("listen.unix {name}"))?;
        std::os::unix::net::UnixListener::bind_addr(&addr)
            .with_context(|| format!("binding the Unix listener {name} (another agent there?)"))?
    } else {
        use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
        if std::fs::symlink_metadata(name).is_ok_and(|m| m.file_type().is_socket()) {
            std::fs::remove_file(name).with_context(|| format!("removing the stale {name}"))?;
        }
        let l = std::os::unix::net::UnixListener::bind(name)
            .with_context(|| format!("binding the Unix listener {name}"))?;
        std::fs::set_permissions(name, std::fs::Permissions::from_mode(0o666))
            .with_context(|| format!("chmod {name}"))?;
        l
    };
    std_listener.set_nonblocking(true)?;
    Ok(std_listener)
}

/// Opens listeners in every foreign network namespace a tagged process is in, and closes those
/// of namespaces no tagged process is in any more (their live sessions carry on). A tagged
/// connect from a namespace without its listener is refused: fail closed.
async fn serve_namespaces(shared: &Arc<Shared>) {
    let Some(_) = &shared.redirect else {
        return;
    };
    // One pass at a time (start, rescans and attach events all call this): two passes would
    // both see a new namespace unserved and race to bind in it.
    let _one = shared.serving_namespaces.lock().await;
    let dirs: Vec<PathBuf> = lock(&shared.tagger)
        .tagged()
        .map(|(_, tag)| tag.path.dir(&shared.cgroup_root))
        .collect();
    let found = tokio::task::spawn_blocking(move || {
        let own = crate::netns::own().ok()?;
        let pids = dirs.iter().flat_map(|d| crate::netns::procs_under(d));
        Some(crate::netns::foreign(pids, own))
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_default();
    let gone: Vec<crate::netns::NetnsId> = lock(&shared.namespaces)
        .keys()
        .filter(|id| !found.contains_key(id))
        .copied()
        .collect();
    for id in gone {
        if let Some(served) = lock(&shared.namespaces).remove(&id) {
            served.stop.send_replace(true);
            info!(
                netns = id.0,
                "no tagged process left in the network namespace: its listeners are closed"
            );
        }
    }
    for (id, pid) in found {
        if lock(&shared.namespaces).contains_key(&id) {
            continue;
        }
        let config = (shared.config.listen.ipv4, shared.config.listen.ipv6);
        let unix = shared.listen_unix.clone().filter(|_| {
            shared
                .redirect
                .as_ref()
                .is_some_and(|r| lock(r).unix_disabled.is_none())
        });
        let opened = tokio::task::spawn_blocking(move || open_in_namespace(id, pid, config, unix))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r);
        let (ns, tcp, unix) = match opened {
            Ok(o) => o,
            Err(e) => {
                warn!(
                    netns = id.0,
                    pid,
                    "cannot serve a tagged workload's network namespace: {e}; its tagged connects are refused"
                );
                continue;
            }
        };
        let ns = Arc::new(ns);
        let (stop, _) = tokio::sync::watch::channel(false);
        let mut listen = Vec::new();
        for l in tcp {
            match TcpListener::from_std(l) {
                Ok(l) => {
                    if let Ok(a) = l.local_addr() {
                        listen.push(a.to_string());
                    }
                    tokio::spawn(accept_loop_in(
                        Arc::clone(shared),
                        l,
                        Some(Arc::clone(&ns)),
                        stop.subscribe(),
                    ));
                }
                Err(e) => warn!(netns = id.0, "registering a namespace listener: {e}"),
            }
        }
        if let Some((l, name)) = unix {
            match tokio::net::UnixListener::from_std(l) {
                Ok(l) => {
                    listen.push(name.clone());
                    tokio::spawn(accept_unix_loop_in(
                        Arc::clone(shared),
                        l,
                        name,
                        Some(Arc::clone(&ns)),
                        stop.subscribe(),
                    ));
                }
                Err(e) => warn!(netns = id.0, "registering a namespace listener: {e}"),
            }
        }
        info!(netns = id.0, pid, listen = ?listen, "serving a tagged workload's network namespace");
        lock(&shared.namespaces).insert(id, NsServed { ns, listen, stop });
    }
}

type NsListeners = (
    crate::netns::Netns,
    Vec<std::net::TcpListener>,
    Option<(std::os::unix::net::UnixListener, String)>,
);

/// Binds the agent's listen addresses (and its abstract Unix name) inside namespace `id`.
/// A family the namespace cannot bind (no ::1, loopback down) is logged and left out: its
/// tagged connects are then refused.
fn open_in_namespace(
    id: crate::netns::NetnsId,
    pid: u32,
    (v4, v6): (
        Option<std::net::SocketAddrV4>,
        Option<std::net::SocketAddrV6>,
    ),
    unix: Option<String>,
) -> std::io::Result<NsListeners> {
    let ns = crate::netns::Netns::open(id, pid)?;
    let (tcp, unix) = ns.run(|| {
        let mut tcp = Vec::new();
        for addr in [v4.map(SocketAddr::V4), v6.map(SocketAddr::V6)]
            .into_iter()
            .flatten()
        {
            match std::net::TcpListener::bind(addr) {
                Ok(l) => {
                    l.set_nonblocking(true)?;
                    tcp.push(l);
                }
                Err(e) => warn!(netns = id.0, %addr, "cannot listen in the namespace: {e}"),
            }
        }
        // Only an abstract name is per network namespace; a path listener is one file, and
        // the agent's own listener already serves every namespace that can see it.
        let unix = match unix.filter(|n| n.starts_with('@')) {
            Some(name) => Some((
                bind_unix_std(&name).map_err(|e| std::io::Error::other(format!("{e:#}")))?,
                name,
            )),
            None => None,
        };
        Ok((tcp, unix))
    })?;
    if tcp.is_empty() && unix.is_none() {
        return Err(std::io::Error::other("nothing could be bound"));
    }
    Ok((ns, tcp, unix))
}

async fn accept_unix_loop(shared: Arc<Shared>, listener: tokio::net::UnixListener, name: String) {
    let (_keep, stop) = tokio::sync::watch::channel(false);
    accept_unix_loop_in(shared, listener, name, None, stop).await;
}

async fn accept_unix_loop_in(
    shared: Arc<Shared>,
    listener: tokio::net::UnixListener,
    name: String,
    netns: Option<Arc<crate::netns::Netns>>,
    mut closed: tokio::sync::watch::Receiver<bool>,
) {
    let mut stopping = shared.stopping.subscribe();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopping.wait_for(|s| *s) => return,
            _ = closed.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((sock, _)) => match session::Accepted::unix(sock, &name, netns.clone()) {
                Some(a) => {
                    tokio::spawn(session::serve(Arc::clone(&shared), a));
                }
                None => warn!("an accepted Unix connection has no socket cookie: closed"),
            },
            Err(e) => {
                error!("accept on {name} failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let (_keep, stop) = tokio::sync::watch::channel(false);
    accept_loop_in(shared, listener, None, stop).await;
}

async fn accept_loop_in(
    shared: Arc<Shared>,
    listener: TcpListener,
    netns: Option<Arc<crate::netns::Netns>>,
    mut closed: tokio::sync::watch::Receiver<bool>,
) {
    let mut stopping = shared.stopping.subscribe();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopping.wait_for(|s| *s) => return,
            _ = closed.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((sock, peer)) => {
                if let Some(a) = session::Accepted::tcp(sock, peer, netns.clone()) {
                    tokio::spawn(session::serve(Arc::clone(&shared), a));
                }
            }
            Err(e) => {
                // EMFILE and friends: back off rather than spin; other sessions carry on.
                error!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn rescan_loop(shared: Arc<Shared>) {
    let period = Duration::from_secs(shared.config.cgroups.rescan_seconds);
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        tick.tick().await;
        let s = Arc::clone(&shared);
        match tokio::task::spawn_blocking(move || s.rescan()).await {
            Ok(Ok(())) => debug!("cgroup rescan done"),
            Ok(Err(e)) => error!("cgroup rescan failed: {e:#}"),
            Err(e) => error!("cgroup rescan panicked: {e}"),
        }
        serve_namespaces(&shared).await;
    }
}

/// Processes moved into cgroups: when one lands in a tagged cgroup from a network namespace
/// the agent does not serve yet (a container starting), its listeners are opened now rather
/// than at the next rescan. Bursts are handled once.
#[expect(
    deprecated,
    reason = "AsyncFd::new is sound here: the RingBuf owns its map fd for as long as the AsyncFd \
              holds it; the replacement, AsyncFd::register, is unsafe and unsafe is forbidden"
)]
async fn watch_attaches(shared: Arc<Shared>, events: RingBuf<MapData>) {
    let mut fd = match AsyncFd::new(events) {
        Ok(fd) => fd,
        Err(e) => {
            error!("cannot poll the cgroup attach ring buffer: {e}; relying on rescans");
            return;
        }
    };
    let Ok(own) = crate::netns::own() else {
        return;
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                error!("cgroup attach ring buffer: {e}; relying on rescans");
                return;
            }
        };
        let mut new_namespace = false;
        {
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                let Some(ev) = redirect::decode_attach_event(&item) else {
                    continue;
                };
                if new_namespace {
                    continue;
                }
                let Ok(ns) = crate::netns::of_pid(ev.pid) else {
                    continue;
                };
                new_namespace = ns != own && !lock(&shared.namespaces).contains_key(&ns);
            }
        }
        guard.clear_ready();
        drop(guard);
        if new_namespace {
            serve_namespaces(&shared).await;
        }
    }
}

#[expect(
    deprecated,
    reason = "AsyncFd::new is sound here: the RingBuf owns its map fd for as long as the AsyncFd \
              holds it; the replacement, AsyncFd::register, is unsafe and unsafe is forbidden"
)]
async fn watch_events(shared: Arc<Shared>, events: RingBuf<MapData>) {
    let mut fd = match AsyncFd::new(events) {
        Ok(fd) => fd,
        Err(e) => {
            error!("cannot poll the cgroup event ring buffer: {e}; relying on rescans");
            return;
        }
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                error!("cgroup event ring buffer: {e}; relying on rescans");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            let Some((id, path, sticky)) = redirect::decode_event(&item) else {
                continue;
            };
            if sticky != 0 {
                debug!(cgroup = %path, id = id.0, "kernel tagged a re-created cgroup at mkdir");
            }
            if let Err(e) = shared.created(id, path.clone()) {
                error!(cgroup = %path, "tagging a new cgroup failed: {e:#}");
            }
        }
        guard.clear_ready();
    }
}
