//! The running gateway: start, reload, shut down.
//!
//! [`Gateway::start`] loads the config, builds the first snapshot, binds every listener (a bind
//! failure is fatal at start), and spawns the accept loops. [`Gateway::reload`] builds a complete
//! new snapshot off the request path and swaps it in with one store; listeners (the admin one
//! too) are diffed by their configured address, so only added ones are bound and only removed
//! ones are closed (their open connections drain on their own). [`Gateway::shutdown`] drains
//! everything.
//!
//! This module must not serve requests or parse config itself: it wires `config`, `state`,
//! `server` and `admin` together.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config, ConfigError, EnvLookup};
use crate::server::{self, ListenerKind, ServerCtx};
use crate::state::{Shared, Snapshot};
use crate::upstream::ClientCache;
use crate::worker::lock;

/// How to start.
#[derive(Clone)]
pub struct Options {
    pub config_path: PathBuf,
    pub env: EnvLookup,
    /// Runtimes that serve connections (see [`server::worker_runtimes`]); empty: the runtime
    /// that starts the gateway serves them too.
    pub workers: Vec<tokio::runtime::Handle>,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr} ({what}): {source}\n  help: {help}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
        help: &'static str,
    },
    #[error("{0}")]
    Build(String),
}

/// Why a reload was refused (the old configuration keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Build(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl ReloadError {
    /// One line, for logs, `STATUS=` and the admin endpoint.
    pub fn summary(&self) -> String {
        match self {
            ReloadError::Config(c) => c.summary(),
            other => other.to_string(),
        }
    }
}

/// What a successful reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub generation: u64,
    pub unchanged: bool,
    pub sites_added: Vec<String>,
    pub sites_removed: Vec<String>,
    pub sites_changed: Vec<String>,
    pub routes_added: Vec<String>,
    pub routes_removed: Vec<String>,
    pub routes_changed: Vec<String>,
    pub listeners_added: Vec<SocketAddr>,
    pub listeners_removed: Vec<SocketAddr>,
    pub millis: u128,
}

impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.unchanged {
            return write!(f, "no change");
        }
        let mut parts = Vec::new();
        for (label, v) in [
            ("sites added", &self.sites_added),
            ("sites removed", &self.sites_removed),
            ("sites changed", &self.sites_changed),
            ("routes added", &self.routes_added),
            ("routes removed", &self.routes_removed),
            ("routes changed", &self.routes_changed),
        ] {
            if !v.is_empty() {
                parts.push(format!("{label}: {}", v.join(", ")));
            }
        }
        for (label, v) in [
            ("listeners added", &self.listeners_added),
            ("listeners removed", &self.listeners_removed),
        ] {
            if !v.is_empty() {
                parts.push(format!(
                    "{label}: {}",
                    v.iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        if parts.is_empty() {
            parts.push("settings changed".into());
        }
        f.write_str(&parts.join("; "))
    }
}

/// The state of reloads, for the admin endpoint, metrics and `STATUS=`.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
    pub last_attempt_ok: bool,
    pub reloads_failed: u64,
}

/// The admin listener: as configured (diffed on reload like the others), as bound, and its
/// accept loop, aborted when a reload moves or removes it.
struct AdminListener {
    configured: Option<SocketAddr>,
    bound: Option<SocketAddr>,
    task: Option<tokio::task::JoinHandle<()>>,
}

struct ListenerHandle {
    kind: ListenerKind,
    configured: SocketAddr,
    bound: SocketAddr,
    stop: watch::Sender<bool>,
}

/// A running gateway.
pub struct Gateway {
    pub shared: Arc<Shared>,
    ctx: Arc<ServerCtx>,
    shutdown_tx: watch::Sender<bool>,
    listeners: Mutex<Vec<ListenerHandle>>,
    options: Options,
    reload_lock: tokio::sync::Mutex<()>,
    status: Mutex<ReloadStatus>,
    started_at: Instant,
    /// Listeners bound and a valid config loaded; false again once shutdown starts.
    ready: AtomicBool,
    admin: Mutex<AdminListener>,
    /// This gateway, for the admin listener a reload starts (it serves with an `Arc` of it).
    me: std::sync::Weak<Gateway>,
    /// `server.workers` as started: a reload cannot change the worker threads.
    workers_at_start: Option<usize>,
    /// Publishes the generation after every swap (tests and tools wait on it).
    generation_tx: watch::Sender<u64>,
    /// What the metrics endpoint set last: see [`crate::metrics::snapshot_gauges`].
    pub scraped_labels: crate::metrics::ScrapedLabels,
}

impl Gateway {
    /// Loads the config and starts serving.
    pub async fn start(options: Options) -> Result<Arc<Gateway>, StartError> {
        let path = options.config_path.clone();
        let env = options.env.clone();
        let config = tokio::task::spawn_blocking(move || config::load(&path, &env))
            .await
            .map_err(|e| StartError::Build(e.to_string()))??;
        Gateway::start_with(config, options).await
    }

    /// Starts serving an already loaded config.
    pub async fn start_with(config: Config, options: Options) -> Result<Arc<Gateway>, StartError> {
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
        // Bind first: a port that cannot be bound is a start-up error, and redirects need the
        // real https port when the config says 0. The admin listener comes first so that
        // /readyz can say "not ready" while the others are being bound.
        let server = config.server.clone();
        let admin = match server.admin {
            Some(addr) => Some(
                server::bind(addr)
                    .and_then(tokio::net::TcpListener::from_std)
                    .map_err(|source| StartError::Bind {
                        addr,
                        what: "server.admin",
                        help: bind_help(&source, addr),
                        source,
                    })?,
            ),
            None => None,
        };
        let metrics = crate::metrics::install();
        let mut bound = Vec::new();
        for (kind, addr) in wanted_listeners(&server) {
            let listener = server::Bound::new(addr, options.workers.len()).map_err(|source| {
                StartError::Bind {
                    addr,
                    what: match kind {
                        ListenerKind::Http => "server.http",
                        ListenerKind::Https => "server.https",
                    },
                    help: bind_help(&source, addr),
                    source,
                }
            })?;
            bound.push((kind, addr, listener));
        }
        let clients = ClientCache::default();
        let mut snapshot =
            Snapshot::build(Arc::new(config), 1, None, &clients).map_err(StartError::Build)?;
        snapshot.https_port = bound
            .iter()
            .find(|(k, ..)| *k == ListenerKind::Https)
            .map(|(_, _, l)| l.addr.port());
        let log = snapshot.config.log.clone();
        let shared = Arc::new(Shared::new(snapshot, clients));
        if let Some(l) = crate::access_log::AccessLog::start(
            &log.access_log,
            log.access_log_format,
            log.access_log_query,
        ) {
            shared.access_log.store(Some(Arc::new(l)));
        }
        let tls = crate::tls::server_config(shared.clone())
            .map_err(|e| StartError::Build(e.to_string()))?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let ctx = Arc::new(ServerCtx {
            shared: shared.clone(),
            tls,
            tracker: TaskTracker::new(),
            shutdown: shutdown_rx,
            limit: Arc::new(crate::server::ConnLimit::new(server.max_connections)),
        });
        let gw = Arc::new_cyclic(|me| Gateway {
            shared,
            ctx,
            shutdown_tx,
            listeners: Mutex::new(Vec::new()),
            options,
            reload_lock: tokio::sync::Mutex::new(()),
            status: Mutex::new(ReloadStatus {
                last_attempt_ok: true,
                ..Default::default()
            }),
            started_at: Instant::now(),
            ready: AtomicBool::new(false),
            generation_tx: watch::channel(1).0,
            admin: Mutex::new(AdminListener {
                configured: server.admin,
                bound: admin.as_ref().and_then(|l| l.local_addr().ok()),
                task: None,
            }),
            me: me.clone(),
            workers_at_start: server.workers,
            scraped_labels: Default::default(),
        });
        if let Some(admin) = admin {
            let task = tokio::spawn(crate::admin::serve(admin, gw.clone(), metrics.clone()));
            lock(&gw.admin).task = Some(task);
            tracing::info!(addr = ?gw.admin_addr(), "admin listener");
        }
        crate::metrics::spawn_upkeep_once(metrics);
        for (kind, addr, listener) in bound {
            gw.spawn_listener(kind, addr, listener);
        }
        gw.ready.store(true, Ordering::SeqCst);
        crate::metrics::reload(true, 1, Duration::ZERO);
        for l in gw
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            tracing::info!(kind = ?l.kind, addr = %l.bound, "listening");
        }
        Ok(gw)
    }

    fn spawn_listener(&self, kind: ListenerKind, configured: SocketAddr, listener: server::Bound) {
        let bound = listener.addr;
        let (stop, stop_rx) = watch::channel(false);
        listener.serve(kind, &self.ctx, &stop_rx, &self.options.workers);
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ListenerHandle {
                kind,
                configured,
                bound,
                stop,
            });
    }

    /// The bound addresses of one kind of listener (with the real port when the config said 0).
    pub fn addrs(&self, kind: ListenerKind) -> Vec<SocketAddr> {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|l| l.kind == kind)
            .map(|l| l.bound)
            .collect()
    }

    pub fn http_addrs(&self) -> Vec<SocketAddr> {
        self.addrs(ListenerKind::Http)
    }

    pub fn https_addrs(&self) -> Vec<SocketAddr> {
        self.addrs(ListenerKind::Https)
    }

    /// The admin listener's bound address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        lock(&self.admin).bound
    }

    /// Listeners bound, a valid config loaded, and not shutting down.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Changes whenever a new configuration is swapped in.
    pub fn subscribe_generation(&self) -> watch::Receiver<u64> {
        self.generation_tx.subscribe()
    }

    /// Fires (changes to `true`) when shutdown starts.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    /// Applies the parts of a new config that live outside the snapshot (the access log, the
    /// connection limit).
    pub fn after_reload(&self) {
        let snap = self.shared.load();
        let log = &snap.config.log;
        if snap.config.server.workers != self.workers_at_start {
            tracing::warn!("server.workers changed; it takes effect at the next restart");
        }
        self.ctx.limit.set_max(snap.config.server.max_connections);
        match (self.shared.access_log.load_full(), &log.access_log) {
            (Some(l), crate::config::AccessLogTarget::Off) => {
                let _ = l;
                self.shared.access_log.store(None);
            }
            (Some(l), target) => l.update(target, log.access_log_format, log.access_log_query),
            (None, target) => {
                if let Some(l) = crate::access_log::AccessLog::start(
                    target,
                    log.access_log_format,
                    log.access_log_query,
                ) {
                    self.shared.access_log.store(Some(Arc::new(l)));
                }
            }
        }
    }

    /// Reopens the access log file (SIGUSR1, after logrotate).
    pub fn reopen_logs(&self) {
        if let Some(l) = self.shared.access_log.load_full() {
            l.reopen(&self.shared.load().config.log.access_log);
            tracing::info!("access log reopened");
        }
    }

    pub fn generation(&self) -> u64 {
        self.shared.load().generation
    }

    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn uptime(&self) -> Duration {
        self.started_at.elapsed()
    }

    pub fn config_path(&self) -> &std::path::Path {
        &self.options.config_path
    }

    /// Re-reads the config file; on success swaps the new snapshot in, on failure keeps the old
    /// one. Reloads never run concurrently.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let started = Instant::now();
        let prev = self.shared.load();
        let result = self.build_next(&prev).await;
        let result = match result {
            Ok(next) => self.swap(prev, next, started).await,
            Err(e) => Err(e),
        };
        let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        match &result {
            Ok(_) => {
                st.last_attempt_ok = true;
            }
            Err(e) => {
                st.last_attempt_ok = false;
                st.last_error = Some(e.summary());
                st.last_error_at = Some(SystemTime::now());
                st.reloads_failed += 1;
            }
        }
        result
    }

    async fn build_next(&self, prev: &Arc<Snapshot>) -> Result<Snapshot, ReloadError> {
        let path = self.options.config_path.clone();
        let env = self.options.env.clone();
        let shared = self.shared.clone();
        let prev2 = prev.clone();
        tokio::task::spawn_blocking(move || -> Result<Snapshot, ReloadError> {
            let config = config::load(&path, &env)?;
            Snapshot::build(
                Arc::new(config),
                prev2.generation + 1,
                Some(&prev2),
                &shared.clients,
            )
            .map_err(ReloadError::Build)
        })
        .await
        .map_err(|e| ReloadError::Build(e.to_string()))?
    }

    async fn swap(
        &self,
        prev: Arc<Snapshot>,
        mut next: Snapshot,
        started: Instant,
    ) -> Result<ReloadReport, ReloadError> {
        // Bind new listeners before the swap: if one cannot be bound the reload fails whole.
        let wanted = wanted_listeners(&next.config.server);
        let mut fresh = Vec::new();
        {
            let current = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
            for (kind, addr) in &wanted {
                if !current
                    .iter()
                    .any(|l| l.kind == *kind && l.configured == *addr)
                {
                    let l = server::Bound::new(*addr, self.options.workers.len()).map_err(
                        |source| ReloadError::Bind {
                            addr: *addr,
                            source,
                        },
                    )?;
                    fresh.push((*kind, *addr, l));
                }
            }
            let first_https = wanted.iter().find(|(k, _)| *k == ListenerKind::Https);
            next.https_port = first_https.and_then(|(_, want)| {
                let kept = current
                    .iter()
                    .find(|l| l.kind == ListenerKind::Https && l.configured == *want)
                    .map(|l| l.bound);
                let new = fresh
                    .iter()
                    .find(|(k, a, _)| *k == ListenerKind::Https && a == want)
                    .map(|(_, _, l)| l.addr);
                kept.or(new).map(|a| a.port())
            });
        }
        // The admin listener likewise: a new address is bound before the swap.
        let admin_wanted = next.config.server.admin;
        let admin_move = if lock(&self.admin).configured == admin_wanted {
            None
        } else {
            let listener = match admin_wanted {
                Some(addr) => Some(
                    server::bind(addr)
                        .and_then(tokio::net::TcpListener::from_std)
                        .map_err(|source| ReloadError::Bind { addr, source })?,
                ),
                None => None,
            };
            Some(listener)
        };
        let mut report = diff(&prev, &next);
        report.generation = next.generation;
        for w in &next.config.warnings {
            tracing::warn!("{w}");
        }
        let same_file = prev.config.hash == next.config.hash;
        let generation = next.generation;
        self.shared.store(Arc::new(next));
        self.generation_tx.send_replace(generation);
        for (kind, addr, l) in fresh {
            report.listeners_added.push(l.addr);
            self.spawn_listener(kind, addr, l);
        }
        let mut removed = Vec::new();
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|l| {
                let keep = wanted
                    .iter()
                    .any(|(k, a)| *k == l.kind && *a == l.configured);
                if !keep {
                    let _ = l.stop.send(true);
                    report.listeners_removed.push(l.bound);
                    removed.push(l.stop.clone());
                }
                keep
            });
        // The socket closes when every worker's accept loop has let go of it: wait for that, so
        // that the address is free (and refuses connections) once the reload has returned.
        for stop in removed {
            let _ = tokio::time::timeout(Duration::from_secs(2), stop.closed()).await;
        }
        if let Some(listener) = admin_move {
            self.move_admin(admin_wanted, listener, &mut report).await;
        }
        report.unchanged = same_file
            && report
                == ReloadReport {
                    generation: report.generation,
                    ..Default::default()
                };
        report.millis = started.elapsed().as_millis();
        Ok(report)
    }

    /// Closes the admin listener a reload moved or removed and starts the new one. Connections
    /// already accepted are served on: a `POST /reload` that moved the listener gets its answer.
    async fn move_admin(
        &self,
        configured: Option<SocketAddr>,
        listener: Option<tokio::net::TcpListener>,
        report: &mut ReloadReport,
    ) {
        let (old_task, old_bound) = {
            let mut admin = lock(&self.admin);
            admin.configured = configured;
            (admin.task.take(), admin.bound.take())
        };
        if let Some(task) = old_task {
            task.abort();
            // Resolves once the accept loop and its socket are dropped: the old address
            // refuses connections when the reload returns.
            let _ = task.await;
        }
        report.listeners_removed.extend(old_bound);
        let (Some(listener), Some(gw)) = (listener, self.me.upgrade()) else {
            return;
        };
        let bound = listener.local_addr().ok();
        let task = tokio::spawn(crate::admin::serve(listener, gw, crate::metrics::install()));
        let mut admin = lock(&self.admin);
        admin.bound = bound;
        admin.task = Some(task);
        report.listeners_added.extend(bound);
        tracing::info!(addr = ?bound, "admin listener");
    }

    /// Stops accepting, lets in-flight requests finish within `grace`, then returns.
    /// Returns false when connections were still open at the deadline.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.ready.store(false, Ordering::SeqCst);
        let _ = self.shutdown_tx.send(true);
        for l in self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = l.stop.send(true);
        }
        self.ctx.tracker.close();
        tokio::time::timeout(grace, self.ctx.tracker.wait())
            .await
            .is_ok()
    }

    /// The configured shutdown grace.
    pub fn shutdown_grace(&self) -> Duration {
        self.shared.load().config.server.shutdown_grace
    }
}

/// The listeners a server config asks for, in order.
fn wanted_listeners(server: &crate::config::ServerConfig) -> Vec<(ListenerKind, SocketAddr)> {
    let http = server.http.iter().map(|a| (ListenerKind::Http, *a));
    let https = server.https.iter().map(|a| (ListenerKind::Https, *a));
    http.chain(https).collect()
}

fn bind_help(e: &std::io::Error, addr: SocketAddr) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "another process already listens there (is nginx still running? `ss -ltnp` shows who)"
        }
        std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => {
            "ports below 1024 need CAP_NET_BIND_SERVICE (the systemd unit grants it) or root"
        }
        std::io::ErrorKind::AddrNotAvailable => "this machine has no such address",
        _ => "check the address in the config",
    }
}

/// What changed between two snapshots, by site name and route id.
fn diff(prev: &Snapshot, next: &Snapshot) -> ReloadReport {
    use crate::config::{RouteConfig, SiteConfig};
    let mut r = ReloadReport::default();
    let site_key = |x: &SiteConfig| {
        (
            x.hosts.clone(),
            x.default,
            x.hsts.clone(),
            x.redirect_https,
            x.tls.is_some(),
        )
    };
    let sites = |s: &Snapshot| -> HashMap<String, _> {
        s.config
            .sites
            .iter()
            .map(|x| (x.name.clone(), site_key(x)))
            .collect()
    };
    fn routes(s: &Snapshot) -> HashMap<String, &RouteConfig> {
        s.config
            .sites
            .iter()
            .flat_map(|x| x.routes.iter())
            .map(|rt| (rt.id.clone(), rt))
            .collect()
    }
    compare(
        &sites(prev),
        &sites(next),
        &mut r.sites_added,
        &mut r.sites_removed,
        &mut r.sites_changed,
    );
    compare(
        &routes(prev),
        &routes(next),
        &mut r.routes_added,
        &mut r.routes_removed,
        &mut r.routes_changed,
    );
    r
}

fn compare<V: PartialEq>(
    a: &HashMap<String, V>,
    b: &HashMap<String, V>,
    added: &mut Vec<String>,
    removed: &mut Vec<String>,
    changed: &mut Vec<String>,
) {
    for (k, v) in b {
        match a.get(k) {
            None => added.push(k.clone()),
            Some(old) if old != v => changed.push(k.clone()),
            _ => {}
        }
    }
    for k in a.keys() {
        if !b.contains_key(k) {
            removed.push(k.clone());
        }
    }
    added.sort();
    removed.sort();
    changed.sort();
}

/// Runs the gateway until SIGTERM or SIGINT; SIGHUP reloads the config file, SIGUSR1 reopens
/// the access log. Under systemd, reports READY, RELOADING, STATUS and STOPPING.
pub async fn run(config: Config, options: Options) -> Result<(), StartError> {
    use tokio::signal::unix::{SignalKind, signal};
    let sig = |k: SignalKind| {
        signal(k).map_err(|e| StartError::Build(format!("cannot install a signal handler: {e}")))
    };
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    let mut hup = sig(SignalKind::hangup())?;
    let mut usr1 = sig(SignalKind::user_defined1())?;
    let gw = Gateway::start_with(config, options).await?;
    crate::reload::spawn_watcher(gw.clone()).await;
    crate::systemd::spawn_watchdog();
    crate::systemd::ready(&format!("serving generation {}", gw.generation()));
    tracing::info!(
        generation = gw.generation(),
        config = %gw.config_path().display(),
        workers = gw.options.workers.len().max(1),
        "gatehouse started"
    );
    let name = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => {
                let _ = crate::reload::apply(&gw, "SIGHUP").await;
            }
            _ = usr1.recv() => gw.reopen_logs(),
        }
    };
    crate::systemd::stopping();
    let grace = gw.shutdown_grace();
    tracing::info!(
        signal = name,
        grace_ms = grace.as_millis() as u64,
        "shutting down: no new connections, finishing requests in flight"
    );
    if gw.shutdown(grace).await {
        tracing::info!("all connections closed; bye");
    } else {
        tracing::warn!("shutdown grace elapsed with connections still open; closing them");
    }
    Ok(())
}
