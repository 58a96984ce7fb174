//! Wiring: bind listeners, build `Shared`, run the servers, drain on shutdown.
//!
//! `Gateway::start` is what `deskgate run`, `deskgate demo` and the tests
//! use: listeners may be `:0`, and the bound addresses are reported back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::forward::Upstream;
use crate::limiter::Limiter;
use crate::metrics::Metrics;
use crate::proxy::{self, ConnInfo};
use crate::server::{self, ListenerOptions};
use crate::state::{Shared, Snapshot};
use crate::webhooks::{WebhookMetrics, Webhooks};
use crate::{admin, tls};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("upstream: {0}")]
    Upstream(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("rate-limit store: {0}")]
    Store(String),
}

/// A running gateway.
pub struct Gateway {
    pub api_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The `[webhooks]` listener, when configured.
    pub webhooks_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

impl Gateway {
    /// Binds every listener and starts serving `config`.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        let upstream = Upstream::new(&config.upstream).map_err(StartError::Upstream)?;
        let limiter = Limiter::from_config(&config.limiter)
            .await
            .map_err(|e| StartError::Store(e.to_string()))?;
        let tls = match &config.server.tls {
            Some(files) => Some(Arc::new(ArcSwapOption::from_pointee(
                tls::server_config(&files.cert, &files.key).map_err(StartError::Tls)?,
            ))),
            None => None,
        };
        let api = bind(config.server.listen).await?;
        let admin_listener = bind(config.admin.listen).await?;
        let api_addr = api.local_addr().map_err(|source| StartError::Bind {
            addr: config.server.listen,
            source,
        })?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.admin.listen,
                source,
            })?;
        let mut metrics = Metrics::new();
        let webhooks = match &config.webhooks {
            Some(w) => Some(
                Webhooks::bind(
                    w,
                    &config.limiter,
                    WebhookMetrics::register(metrics.registry_mut()),
                )
                .await?,
            ),
            None => None,
        };
        let webhooks_addr = webhooks.as_ref().map(|w| w.addr);
        let grace = config.server.shutdown_grace;
        let opts = ListenerOptions {
            header_read_timeout: config.server.header_read_timeout,
            tls,
        };
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot::new(config)),
            limiter,
            upstream,
            metrics,
        });
        let (shutdown, rx) = watch::channel(false);
        let mut tasks = match webhooks {
            Some(w) => w.spawn(shared.clone(), rx.clone()),
            None => Vec::new(),
        };

        let api_shared = shared.clone();
        let api_rx = rx.clone();
        let api_task = tokio::spawn(async move {
            let handler = move |peer, tls, req| {
                proxy::handle(api_shared.clone(), ConnInfo { peer, tls }, req)
            };
            let graceful = server::serve(api, opts, api_rx, handler).await;
            // Stop accepting (done), then let in-flight calls finish within the grace.
            if tokio::time::timeout(grace, graceful.shutdown())
                .await
                .is_err()
            {
                tracing::warn!(
                    grace_ms = grace.as_millis() as u64,
                    "shutdown grace over; closing remaining connections"
                );
            }
        });
        let admin_shared = shared.clone();
        let admin_opts = ListenerOptions {
            header_read_timeout: Duration::from_secs(10),
            tls: None,
        };
        let admin_task = tokio::spawn(async move {
            let handler = move |_peer, _tls, req| admin::handle(admin_shared.clone(), req);
            let graceful = server::serve(admin_listener, admin_opts, rx, handler).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), graceful.shutdown()).await;
        });
        tasks.extend([api_task, admin_task]);
        tracing::info!(%api_addr, %admin_addr, "deskgate listening");
        Ok(Gateway {
            api_addr,
            admin_addr,
            webhooks_addr,
            shared,
            shutdown,
            tasks,
        })
    }

    /// Stops accepting, drains in-flight requests (bounded by `shutdown_grace_ms`), returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Runs the gateway until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(config: Config) -> Result<(), StartError> {
    let gateway = Gateway::start(config).await?;
    wait_for_signal().await;
    tracing::info!("shutting down");
    gateway.shutdown().await;
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
