//! Wiring: bind listeners, build `Shared`, run the servers and the reloader,
//! drain on shutdown (docs/reference.md "Operations" signals).
//!
//! `Gateway::start` is what `deskgate run`, `deskgate demo` and the tests
//! use: listeners may be `:0`, and the bound addresses are reported back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError};
use crate::fast::FastPath;
use crate::hold::{HoldMetrics, HoldRoom};
use crate::limiter::Limiter;
use crate::metrics::Metrics;
use crate::proxy::ConnInfo;
use crate::reload::{self, TlsSlot};
use crate::server::{self, ListenerOptions};
use crate::state::{Shared, Snapshot};
use crate::upstream::Upstream;
use crate::webhooks::{self, WebhookMetrics, Webhooks};
use crate::{admin, hyper_wire, tls};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("upstream: {0}")]
    Upstream(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("rate-limit store: {0}")]
    Store(String),
}

/// The webhook listener's reasons read exactly as the gateway's own.
impl From<webhooks::StartError> for StartError {
    fn from(e: webhooks::StartError) -> StartError {
        match e {
            webhooks::StartError::Bind { addr, source } => StartError::Bind { addr, source },
            webhooks::StartError::Tls(e) => StartError::Tls(e),
            webhooks::StartError::Store(e) => StartError::Store(e),
        }
    }
}

/// A running gateway.
pub struct Gateway {
    pub api_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The `[webhooks]` listener, when configured.
    pub webhooks_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    /// The API listener's TLS config, swapped by reload (`None`: plain HTTP).
    tls: Option<Arc<TlsSlot>>,
    /// Set when shutdown starts: `/readyz` answers 503 while in-flight calls drain.
    draining: Arc<AtomicBool>,
    /// Stops the API listener and the reloader.
    shutdown: watch::Sender<bool>,
    /// Stops the admin listener, after the API listener has drained.
    admin_shutdown: watch::Sender<bool>,
    api_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
    reload_task: JoinHandle<()>,
    /// The webhook listener and dispatcher (stopped with the API listener).
    webhook_tasks: Vec<JoinHandle<()>>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
}

impl Gateway {
    /// Binds every listener and starts serving `config`, with the store `[limiter]` names.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        let limiter = Limiter::from_config(&config.limiter).await.map_err(|e| StartError::Store(e.to_string()))?;
        Gateway::start_with_limiter(config, limiter).await
    }

    /// Like [`Gateway::start`], with a limiter built by the caller (tests).
    pub async fn start_with_limiter(config: Config, limiter: Arc<Limiter>) -> Result<Gateway, StartError> {
        let upstream = Upstream::new(&config.upstream).map_err(StartError::Upstream)?;
        let tls = match &config.server.tls {
            Some(files) => Some(Arc::new(ArcSwapOption::from_pointee(
                tls::server_config(&files.cert, &files.key).map_err(StartError::Tls)?,
            ))),
            None => None,
        };
        let api = bind(config.server.listen).await?;
        let admin_listener = bind(config.admin.listen).await?;
        let api_addr = api.local_addr().map_err(|source| StartError::Bind { addr: config.server.listen, source })?;
        let admin_addr =
            admin_listener.local_addr().map_err(|source| StartError::Bind { addr: config.admin.listen, source })?;
        let mut metrics = Metrics::new();
        // Counted by the raw pool itself: it alone knows it sent a call again.
        let resends = upstream.raw.as_ref().map_or_else(Default::default, |p| p.resends().clone());
        metrics.registry_mut().register(
            "deskgate_upstream_resends",
            "Calls sent again on a new upstream connection because writing them to a pooled one failed (the upstream never received them)",
            resends,
        );
        let webhooks = match &config.webhooks {
            Some(w) => {
                Some(Webhooks::bind(w, &config.limiter, WebhookMetrics::register(metrics.registry_mut())).await?)
            }
            None => None,
        };
        let webhooks_addr = webhooks.as_ref().map(|w| w.addr);
        let header_read_timeout = config.server.header_read_timeout;
        // `[server] fast_path = false` sends every call through hyper (A/B
        // measurements, and the tests that run each suite on both paths).
        let fast_enabled = config.server.fast_path;
        let hold = HoldRoom::new(HoldMetrics::register(metrics.registry_mut()));
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot::new(config)),
            limiter,
            upstream,
            metrics,
            hold,
        });
        let fast = FastPath::new(shared.clone(), fast_enabled);
        let connections = Some(shared.metrics.connections_open.clone());
        let opts = ListenerOptions { header_read_timeout, tls: tls.clone(), fast, connections };
        let (shutdown, rx) = watch::channel(false);
        let (admin_shutdown, admin_rx) = watch::channel(false);
        let draining = Arc::new(AtomicBool::new(false));
        let webhook_tasks = match webhooks {
            Some(w) => w.spawn(shared.clone(), rx.clone()),
            None => Vec::new(),
        };

        let api_shared = shared.clone();
        let api_rx = rx.clone();
        let api_task = tokio::spawn(async move {
            let handler_shared = api_shared.clone();
            let handler = move |peer, tls, req| hyper_wire::handle(handler_shared.clone(), ConnInfo { peer, tls }, req);
            let graceful = server::serve(api, opts, api_rx, handler).await;
            // Accepting has stopped (the listener is closed); let in-flight calls
            // finish within the grace of the config in force now.
            let grace = api_shared.snapshot.load().config.server.shutdown_grace;
            if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
                tracing::warn!(
                    grace_ms = grace.as_millis() as u64,
                    "shutdown grace over; closing remaining connections"
                );
            }
        });
        let admin_shared = shared.clone();
        let admin_draining = draining.clone();
        let admin_opts =
            ListenerOptions { header_read_timeout: Duration::from_secs(10), tls: None, fast: None, connections: None };
        let admin_task = tokio::spawn(async move {
            let handler = move |_peer, _tls, req| admin::handle(admin_shared.clone(), admin_draining.clone(), req);
            let graceful = server::serve(admin_listener, admin_opts, admin_rx, handler).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), graceful.shutdown()).await;
        });
        let reload_task = reload::spawn(shared.clone(), tls.clone(), rx);
        tracing::info!(%api_addr, %admin_addr, tls = tls.is_some(), "deskgate listening");
        Ok(Gateway {
            api_addr,
            admin_addr,
            webhooks_addr,
            shared,
            tls,
            draining,
            shutdown,
            admin_shutdown,
            api_task,
            admin_task,
            reload_task,
            webhook_tasks,
        })
    }

    /// Reloads the config from its file now, as SIGHUP does.
    pub async fn reload(&self) -> Result<(), ConfigError> {
        reload::reload_now(&self.shared, self.tls.as_deref()).await
    }

    /// Stops accepting, drains in-flight requests (bounded by `shutdown_grace_ms`),
    /// then closes the admin listener, which answers `/readyz` with 503 meanwhile.
    pub async fn shutdown(self) {
        self.draining.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        // Held calls are answered now, not held into the drain.
        self.shared.hold.close();
        let _ = self.api_task.await;
        let _ = self.reload_task.await;
        // The webhook dispatcher finishes the attempt in hand (bounded by its
        // delivery timeout); an unfinished one is redelivered, never lost.
        let grace = self.shared.snapshot.load().config.server.shutdown_grace;
        let _ = tokio::time::timeout(grace, futures_util::future::join_all(self.webhook_tasks)).await;
        let _ = self.admin_shutdown.send(true);
        let _ = self.admin_task.await;
    }
}

/// Runs the gateway until SIGTERM or SIGINT, then shuts down gracefully.
/// A second signal during the drain exits at once.
pub async fn run(config: Config) -> Result<(), StartError> {
    let gateway = Gateway::start(config).await?;
    wait_for_signal().await;
    let grace = gateway.shared.snapshot.load().config.server.shutdown_grace;
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: no new connections, draining in-flight requests"
    );
    tokio::select! {
        _ = gateway.shutdown() => tracing::info!("stopped"),
        _ = wait_for_signal() => tracing::warn!("second signal: exiting without waiting"),
    }
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
