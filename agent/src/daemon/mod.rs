//! `pgwarden run`: binds the listeners, loads and attaches the kernel programs, keeps the
//! cgroup tags in step with the tree, serves the control socket, and accepts sessions.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::cgroup::{self, CgroupPath};
use crate::config::Config;
use crate::names::{CgroupId, SockAddr};
use crate::redirect::{KernelConfig, Redirect};
use crate::session::{self, SessionEnv};
use crate::tags::{TagSink, Tagger};

mod listen;
mod requests;
mod snapshot;
mod systemd;
mod watch;

use listen::{accept_loop, accept_unix_loop, bind_unix, serve_namespaces};
use sd_notify::NotifyState;
use systemd::watchdog_period;
use watch::{rescan_loop, watch_attaches, watch_events, watch_policies};

/// State shared by the listener, the sessions, the tag watcher and the control socket.
/// Lock order, where two are held: `tagger` before `redirect`.
pub struct Shared {
    /// The configuration.
    pub config: Config,
    /// Where cgroup2 is mounted.
    pub cgroup_root: PathBuf,
    /// The kernel side; `None` in listen-only mode.
    pub redirect: Option<Arc<Mutex<Redirect>>>,
    /// Tag state.
    pub tagger: Arc<Mutex<Tagger>>,
    /// What sessions see of the agent (journal, approvals, metrics, live sessions, policy).
    pub env: Arc<SessionEnv>,
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
    /// The config file, re-read on reload.
    pub config_path: PathBuf,
    /// Set when the listeners must stop accepting (SIGTERM).
    stopping: tokio::sync::watch::Sender<bool>,
    /// Set when the drain time is over: live sessions are closed with 57P01.
    terminating: tokio::sync::watch::Sender<bool>,
    /// The `audit.forward` targets' threads (taken when the agent stops).
    pub forwarders: Mutex<Option<crate::forward::Forwarders>>,
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
    /// Appends a record without waiting (events that hold nothing up).
    pub fn audit_spawn(&self, rec: crate::audit::Record) {
        let j = self.env.journal.clone();
        tokio::spawn(async move {
            if let Err(e) = j.append(rec).await {
                error!("audit: {e}");
            }
        });
    }
}

impl crate::approval::http::Workloads for Shared {
    /// The workload a process belongs to: its cgroup or an ancestor is tagged (tags cover
    /// descendants; cgroups a workload's matchers name are tagged as they appear).
    fn workload_of(&self, pid: u32) -> Option<String> {
        let path = cgroup::cgroup_of_pid(pid)?;
        let tagger = lock(&self.tagger);
        let under = |tag: &CgroupPath| {
            tag.0 == "/"
                || path.0 == tag.0
                || path
                    .0
                    .strip_prefix(tag.0.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        };
        tagger
            .tagged()
            .find(|(_, t)| under(&t.path))
            .map(|(_, t)| t.workload.0.clone())
    }

    fn namespace_pids(&self) -> Vec<u32> {
        lock(&self.namespaces).values().map(|n| n.ns.pid).collect()
    }
}

impl Shared {
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
    let logins = crate::login::Logins::new(
        (config.workloads.iter())
            .filter_map(|w| Some((w.name.as_str(), w.upstream_auth.as_ref()?))),
        config.upstream.sslmode,
    )
    .map_err(|(name, key, message)| {
        anyhow::anyhow!("workload `{name}`: upstream_auth.{key}: {message}")
    })?;
    // A secret that cannot be read stops the start, not the workload's first session.
    logins
        .check_secrets(&config.upstream)
        .context("upstream_auth: a workload's credential")?;
    let logins = Arc::new(logins);
    // The journal before anything is attached: no access without its record.
    let journal = crate::audit::Journal::open(&config.audit)
        .with_context(|| format!("opening the audit journal {}", config.audit.path.display()))?;
    // Forwarding reads the journal back from each target's cursor: started with it, so the
    // agent's own first records go out too; a target that cannot be set up stops the start.
    let forwarders = crate::forward::Forwarders::start(
        &config.audit.forward,
        &journal,
        &config.audit.state_dir,
    )?;
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
        (Some(r), Some(ev))
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
    let redirect = redirect.map(|r| Arc::new(Mutex::new(r)));
    let tagger = Arc::new(Mutex::new(Tagger::new(&config.workloads)));
    let terminating = tokio::sync::watch::Sender::new(false);
    let webhook = config
        .approvals
        .webhook
        .clone()
        .map(|url| crate::approval::Webhook {
            url,
            timeout: Duration::from_secs(config.approvals.webhook_timeout_seconds),
            format: config.approvals.webhook_format,
        });
    let page = config.approvals.http.as_ref().map(|h| h.base_url());
    let env = Arc::new(SessionEnv {
        limits: config.limits.clone(),
        upstream: config.upstream.clone(),
        upstream_tls,
        client_tls,
        journal: journal.clone(),
        approvals: Arc::new(crate::approval::Approvals::new(
            crate::approval::Recorder::new(journal.clone(), webhook, page),
        )),
        metrics: Arc::default(),
        registry: Arc::new(session::Registry::new(now.as_secs())),
        budgets: Arc::default(),
        origins: session::Origins {
            redirect: redirect.clone(),
            tagger: Arc::clone(&tagger),
            cgroup_root: cgroup_root.clone(),
            listen_only: config.listen_only.clone(),
        },
        policy,
        logins,
        hash_key,
        terminating: terminating.subscribe(),
    });
    let shared = Arc::new(Shared {
        env,
        config_path,
        stopping: tokio::sync::watch::Sender::new(false),
        terminating,
        tagger,
        config,
        cgroup_root: cgroup_root.clone(),
        redirect,
        listen: listen.clone(),
        listen_unix: unix_name.clone(),
        namespaces: Mutex::new(BTreeMap::new()),
        serving_namespaces: tokio::sync::Mutex::new(()),
        started: now.as_secs(),
        forwarders: Mutex::new(Some(forwarders)),
    });

    // Bound before anything is redirected: a listener that cannot open stops the start.
    if let Some(http) = &shared.config.approvals.http {
        crate::approval::http::start(
            http,
            &shared.config.audit.state_dir,
            Arc::clone(&shared.env.approvals),
            Arc::clone(&shared) as Arc<dyn crate::approval::http::Workloads>,
        )
        .await?;
    }

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
    let answering = Arc::clone(&shared);
    tokio::spawn(control.serve(Arc::new(move |req, uid| {
        requests::handle(&answering, req, uid)
    })));
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
        let scraped = Arc::clone(&shared);
        tokio::spawn(crate::metrics::serve(
            Arc::clone(&shared.env.metrics),
            Arc::new(move || snapshot::status(&scraped)),
            l,
        ));
    }
    let policies: Vec<String> = shared
        .env
        .policy
        .current()
        .files
        .iter()
        .map(|(p, h)| format!("{}@{h}", p.display()))
        .collect();
    shared
        .env
        .journal
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
    systemd::notify(&[
        NotifyState::Ready,
        NotifyState::Status("attached, listening"),
    ]);
    if let Some(period) = watchdog_period() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                systemd::notify(&[NotifyState::Watchdog]);
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
    systemd::notify(&[NotifyState::Stopping]);
    shared.stopping.send_replace(true);
    let reason = "pgwarden is stopping";
    shared.env.approvals.withdraw_all(reason);
    let drain = Duration::from_secs(shared.config.shutdown.drain_seconds);
    let deadline = tokio::time::Instant::now() + drain;
    while !shared.env.registry.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = shared.env.registry.len();
    if left > 0 {
        info!(
            sessions = left,
            "drain time over: closing the remaining sessions (57P01)"
        );
        shared.terminating.send_replace(true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !shared.env.registry.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let _ = shared
        .env
        .journal
        .append(
            crate::audit::Record::new(crate::audit::Event::AgentStop)
                .outcome(crate::audit::Outcome::Success)
                .detail("pid", std::process::id())
                .detail("sessions_closed", left),
        )
        .await;
    // The last records (agent.stop among them) to the collectors, for a moment.
    let forwarders = shared
        .forwarders
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(f) = forwarders {
        let _ = tokio::task::spawn_blocking(move || f.stop(Duration::from_secs(3))).await;
    }
    shared.env.journal.close();
    info!("pgwarden stopped; its programs stay attached (pgwarden detach removes them)");
}

impl Shared {
    /// Re-reads the config's policy references and the policy files; swaps them in whole,
    /// or keeps the running ones and says why.
    pub fn reload(&self, why: &str) {
        let result = Config::load(&self.config_path).and_then(|c| self.env.policy.reload(&c));
        match result {
            Ok(set) => {
                let files: Vec<String> = set
                    .files
                    .iter()
                    .map(|(p, h)| format!("{}@{}", p.display(), &h[..12]))
                    .collect();
                info!(version = set.version, trigger = why, files = ?files, "policy reloaded");
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
                        .error(e.to_string())
                        .detail("trigger", why),
                );
            }
        }
    }
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
