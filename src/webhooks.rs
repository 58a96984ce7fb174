//! Webhook egress (docs/reference.md "Webhook egress"): the helpdesk's automation webhooks, sent by
//! deskgate so that they spend the same per-account budget as API calls.
//!
//! # Flow
//!
//! The backend `POST`s a webhook to the internal `[webhooks]` listener
//! (`api`). It is written to the queue (`queue`: in memory, or in Redis when
//! `[limiter] store = "redis"`) already *claimed* by the accepting replica,
//! then `dispatch::decide` asks the limiter for 1 credit of the tenant's
//! account budget — the same `Limiter::acquire` and the same store as an API
//! call, so one atomic step arbitrates between the two. Admitted: it goes out
//! now (`deliver`). Refused: it is postponed until the decision's `retry_ms`
//! (never earlier) and at most until `max_postpone_s` after it was first
//! postponed, when it is dropped with an alert. A failed delivery (connect
//! error, timeout, any non-2xx) is retried after the gaps of
//! `retry_schedule_s`, then dropped with an alert.
//!
//! # Exactly one replica at a time, at least once
//!
//! A replica *claims* a due webhook by moving it to an in-flight set with a
//! lease deadline and a fresh owner token, atomically. Every later write is
//! conditional on that token. The holder renews the lease every third of
//! `lease_ms` while its attempt runs, however slow the receiver; if it
//! cannot (the queue unreachable, or another claim took the webhook), it
//! cuts its own attempt before the lease runs out (`dispatch::under_lease`),
//! so two replicas never deliver one webhook at once. A replica that dies
//! mid-delivery stops renewing; whoever claims after the lease delivers
//! again, with the same `X-Deskgate-Webhook-Id`.
//!
//! # Bounded
//!
//! A tenant has at most `max_queued_per_tenant` webhooks waiting or in
//! flight; `POST /webhooks` beyond is answered 429 `webhook_queue_full`.
//!
//! # Layout
//!
//! - `api`: the listener's two routes and request validation
//! - `dispatch`: the claim loop and one attempt (decide → deliver → settle)
//! - `deliver`: pooled outbound client for deliveries and alerts
//! - `queue` (+ `redis_queue`): the queue seam, memory and Redis
//! - this file: shared types, metrics, wiring into `app::Gateway`

pub mod api;
pub mod deliver;
pub mod dispatch;
pub mod queue;
pub mod redis_queue;

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::config::{LimiterConfig, WebhooksConfig};
use crate::metrics::Name;
use crate::server::{self, ListenerOptions};
use crate::state::Shared;

use deliver::Outbound;
use queue::Queue;

/// Why the webhook listener could not start. Its own type, so this module
/// does not depend on `app`, which starts it; `app::StartError` wraps it.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("rate-limit store: {0}")]
    Store(String),
}

/// Deliveries one replica runs at once (claims beyond this wait).
const MAX_CONCURRENT_DELIVERIES: usize = 64;

/// What the backend asked to send; fixed once accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub tenant: String,
    pub url: String,
    pub method: String,
    /// In the order given; names already validated.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// Where a webhook stands (the `status` of `GET /webhooks/{id}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Admitted by the budget and going out now (or about to be retried by
    /// another replica if this one died).
    Sending,
    /// Waiting for room in the tenant's budget.
    Postponed,
    /// The last delivery failed; waiting for the next gap of the schedule.
    Retrying,
    Delivered,
    Dropped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Sending => "sending",
            Status::Postponed => "postponed",
            Status::Retrying => "retrying",
            Status::Delivered => "delivered",
            Status::Dropped => "dropped",
        }
    }

    /// Delivered or dropped: nothing more will happen.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Delivered | Status::Dropped)
    }
}

/// Why a webhook was given up (the `reason` label of the alerts counter).
pub mod reason {
    /// Postponed by the budget for longer than `max_postpone_s`.
    pub const POSTPONED_TOO_LONG: &str = "postponed_too_long";
    /// Every attempt of `retry_schedule_s` failed.
    pub const DELIVERY_FAILED: &str = "delivery_failed";
    /// The tenant left the config or lost API access while the webhook waited.
    pub const TENANT_UNAVAILABLE: &str = "tenant_unavailable";
    /// The queued record could not be read back (corrupt or foreign data).
    pub const UNREADABLE: &str = "unreadable";
}

/// What changes as a webhook moves through the queue. Times are epoch
/// milliseconds of the queue's clock (Redis `TIME` with the Redis queue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub status: Status,
    /// Delivery attempts made (each one charged 1 credit).
    pub attempts: u32,
    /// Attempts that failed.
    pub failures: u32,
    /// When the next attempt is due (postponed or retrying).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_ms: Option<u64>,
    /// Start of the current postponement (cleared by every attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postponed_since_ms: Option<u64>,
    /// Why it was dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What went wrong with the latest failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it was delivered or dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
}

impl State {
    /// A webhook just accepted, claimed by the accepting replica.
    pub fn accepted() -> State {
        State {
            status: Status::Sending,
            attempts: 0,
            failures: 0,
            due_ms: None,
            postponed_since_ms: None,
            reason: None,
            last_error: None,
            finished_ms: None,
        }
    }
}

/// Epoch milliseconds as RFC 3339 (`2024-05-01T12:00:00.123Z`).
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// This host's wall clock in epoch milliseconds (memory queue base).
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantOutcome {
    pub tenant: Name,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantAlert {
    pub tenant: Name,
    pub reason: &'static str,
}

/// The webhook collectors (docs/reference.md "Webhook egress"), registered into the gateway's registry.
#[derive(Clone)]
pub struct WebhookMetrics {
    /// `outcome`: delivered, postponed, dropped (postponed too long or tenant
    /// gone), failed (retry schedule exhausted).
    pub webhooks: Family<TenantOutcome, Counter>,
    pub alerts: Family<TenantAlert, Counter>,
    /// Webhooks not yet delivered or dropped (with Redis: the shared queue).
    pub queue_depth: Gauge,
    /// Accepted → delivered, in seconds.
    pub delay: Histogram,
    /// POSTs to `alert_url` by outcome: delivered, failed (one attempt;
    /// retried on the schedule), abandoned (schedule used up or shutdown).
    pub alert_posts: Family<AlertPost, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertPost {
    pub outcome: &'static str,
}

impl WebhookMetrics {
    /// Creates the collectors and registers them into `registry`.
    pub fn register(registry: &mut Registry) -> WebhookMetrics {
        let m = WebhookMetrics {
            webhooks: Family::default(),
            alerts: Family::default(),
            queue_depth: Gauge::default(),
            // 10 ms .. ~46 h: from an immediate delivery to a full postponement.
            delay: Histogram::new(exponential_buckets(0.01, 2.0, 25)),
            alert_posts: Family::default(),
        };
        registry.register(
            "deskgate_webhooks",
            "Webhooks by tenant and outcome (delivered, postponed, dropped, failed)",
            m.webhooks.clone(),
        );
        registry.register(
            "deskgate_webhook_alerts",
            "Alerts raised for dropped or finally failed webhooks, by tenant and reason",
            m.alerts.clone(),
        );
        registry.register(
            "deskgate_webhook_queue_depth",
            "Webhooks waiting or in flight (not yet delivered or dropped)",
            m.queue_depth.clone(),
        );
        registry.register(
            "deskgate_webhook_delay_seconds",
            "Time from acceptance to successful delivery",
            m.delay.clone(),
        );
        registry.register(
            "deskgate_webhook_alert_posts",
            "POSTs of alerts to alert_url by outcome (delivered, failed and retried, abandoned)",
            m.alert_posts.clone(),
        );
        m
    }

    pub(crate) fn alert_post(&self, outcome: &'static str) {
        self.alert_posts.get_or_create(&AlertPost { outcome }).inc();
    }

    pub(crate) fn count(&self, tenant: &str, outcome: &'static str) {
        self.webhooks.get_or_create(&TenantOutcome { tenant: Name(Arc::from(tenant)), outcome }).inc();
    }
}

/// Everything the listener and the dispatcher share.
pub(crate) struct Core {
    pub shared: Arc<Shared>,
    pub cfg: WebhooksConfig,
    pub queue: Queue,
    pub outbound: Outbound,
    pub metrics: WebhookMetrics,
    /// How long a claim holds a webhook.
    pub lease: Duration,
    /// Wakes the dispatcher: something became due sooner, or a slot freed.
    pub wake: Notify,
    pub slots: Arc<Semaphore>,
    /// Turns true at shutdown (alert retries stop waiting).
    pub shutdown: watch::Receiver<bool>,
    /// Alert POSTs in progress or waiting for a retry.
    pub alerts_awaiting_retry: AtomicUsize,
}

impl Core {
    pub fn lease_ms(&self) -> u64 {
        self.lease.as_millis() as u64
    }
}

/// The webhook listener and queue, bound but not yet serving.
pub struct Webhooks {
    listener: TcpListener,
    pub addr: SocketAddr,
    cfg: WebhooksConfig,
    queue: Queue,
    outbound: Outbound,
    metrics: WebhookMetrics,
}

impl Webhooks {
    /// Binds `[webhooks].listen` and prepares the queue `[limiter]` implies.
    /// Nothing talks to Redis yet: a Redis that is down does not stop the
    /// gateway from starting (the queue connects on first use).
    pub async fn bind(
        cfg: &WebhooksConfig,
        limiter: &LimiterConfig,
        metrics: WebhookMetrics,
    ) -> Result<Webhooks, StartError> {
        let queue = Queue::from_config(limiter, id_ttl(cfg)).map_err(StartError::Store)?;
        let outbound = Outbound::new(cfg.delivery_timeout).map_err(StartError::Tls)?;
        let listener =
            TcpListener::bind(cfg.listen).await.map_err(|source| StartError::Bind { addr: cfg.listen, source })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: cfg.listen, source })?;
        Ok(Webhooks { listener, addr, cfg: cfg.clone(), queue, outbound, metrics })
    }

    /// Starts the listener and the dispatcher; both stop when `shutdown`
    /// turns true (the dispatcher lets running deliveries finish within
    /// `shutdown_grace_ms`; what is left is redelivered after its lease).
    pub fn spawn(self, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let grace = shared.snapshot.load().config.server.shutdown_grace;
        let lease = self.cfg.lease;
        let core = Arc::new(Core {
            shared,
            cfg: self.cfg,
            queue: self.queue,
            outbound: self.outbound,
            metrics: self.metrics,
            lease,
            wake: Notify::new(),
            slots: Arc::new(Semaphore::new(MAX_CONCURRENT_DELIVERIES)),
            shutdown: shutdown.clone(),
            alerts_awaiting_retry: AtomicUsize::new(0),
        });
        tracing::info!(webhooks_addr = %self.addr, queue = core.queue.kind(), "webhooks listening");
        let api_core = core.clone();
        let api_rx = shutdown.clone();
        let listener = self.listener;
        let api_task = tokio::spawn(async move {
            let opts = ListenerOptions {
                header_read_timeout: Duration::from_secs(10),
                tls: None,
                fast: None,
                connections: None,
            };
            let handler = move |_peer, _tls, req| api::handle(api_core.clone(), req);
            let graceful = server::serve(listener, opts, api_rx, handler).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
        });
        let dispatch_task = tokio::spawn(dispatch::run(core, shutdown, grace));
        vec![api_task, dispatch_task]
    }
}

/// How long the Redis queue remembers which tenant owns an id: a webhook's
/// longest life (every attempt postponed to the limit, each held a full
/// lease and timeout, plus the retry gaps) and then [`queue::RETENTION`].
fn id_ttl(cfg: &WebhooksConfig) -> Duration {
    let attempts = cfg.retry_schedule.len() as u32 + 1;
    let per_attempt = cfg.max_postpone + cfg.lease + cfg.delivery_timeout;
    let gaps: Duration = cfg.retry_schedule.iter().sum();
    per_attempt * attempts + gaps + queue::RETENTION
}
