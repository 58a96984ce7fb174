//! The dispatcher (docs/reference.md "Webhook egress"): claims due webhooks and runs one attempt each.
//!
//! One attempt reads as the contract does: `decide` (is the tenant still
//! served? does 1 credit fit its account budget now?) → `deliver` when
//! admitted → `settle` (delivered, retry after the schedule's next gap,
//! postpone until the budget has room, or drop with an alert). Every write
//! goes through `Queue::finish` with the claim's token, so a replica that
//! lost its lease changes nothing, and the whole attempt runs
//! [`under_lease`], which renews the lease and cuts the attempt before the
//! lease could run out.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::queue::{Claimed, Next, Unreadable};
use super::{reason, Core, State, Status, MAX_CONCURRENT_DELIVERIES};
use crate::endpoint::Endpoint;
use crate::limiter::Ask;

/// Longest sleep between claims when nothing local says otherwise: how soon
/// a replica notices work another replica queued or a lease that expired.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// At most this many webhooks per claim.
const BATCH: usize = 32;
/// When the limiter cannot answer (store down, failing closed): try again after this.
const STORE_DOWN_RETRY_MS: u64 = 1000;

/// What the budget and the config say about an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Admitted and charged 1 credit: deliver now.
    Send,
    /// No room: next attempt at `due_ms` (queue clock).
    Postpone { due_ms: u64, since_ms: u64 },
    /// Give up.
    Drop { reason: &'static str },
}

/// Claims and attempts until `shutdown`; then waits up to `grace` for
/// running deliveries.
pub(crate) async fn run(core: Arc<Core>, mut shutdown: watch::Receiver<bool>, grace: Duration) {
    loop {
        let free = core.slots.available_permits().min(BATCH);
        let mut wait = IDLE_POLL;
        if free > 0 {
            match core.queue.claim(free, core.lease_ms()).await {
                Ok(batch) => {
                    core.metrics.queue_depth.set(batch.depth as i64);
                    if let Some(next) = batch.next_ms {
                        let ms = next.saturating_sub(batch.now_ms).max(1);
                        wait = wait.min(Duration::from_millis(ms));
                    }
                    if batch.jobs.len() + batch.unreadable.len() == free {
                        // There may be more due right now.
                        wait = Duration::ZERO;
                    }
                    for u in batch.unreadable {
                        tokio::spawn(drop_unreadable(core.clone(), u));
                    }
                    for job in batch.jobs {
                        let permit = core.slots.clone().try_acquire_owned().ok();
                        tokio::spawn(attempt(core.clone(), job, permit));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhook queue unavailable; retrying");
                    wait = Duration::from_secs(1);
                }
            }
        }
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => break,
            _ = core.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let all = MAX_CONCURRENT_DELIVERIES as u32;
    if tokio::time::timeout(grace, core.slots.acquire_many(all)).await.is_err() {
        tracing::warn!(
            "webhook deliveries still running at shutdown; their leases will expire and another replica delivers them"
        );
    }
}

/// One claimed webhook from decision to settled state.
async fn attempt(core: Arc<Core>, job: Claimed, permit: Option<OwnedSemaphorePermit>) {
    under_lease(&core, &job, async {
        let step = decide(&core, &job).await;
        settle(&core, job.clone(), step).await;
    })
    .await;
    drop(permit);
    core.wake.notify_one();
}

/// Runs `work` (one attempt) while holding the claim's lease: renews it
/// every third of `lease_ms`, with the claim's token. When the lease is lost
/// (another claim took the webhook) or cannot be renewed before it runs out
/// (the queue unreachable), `work` is dropped where it stands — a delivery
/// in progress is cut — and `None` returned: whoever claims next attempts
/// the webhook again, and never while this replica still sends it.
///
/// The deadline is reckoned locally from an instant taken *before* the
/// claim or renewal was asked, so it never outlasts the lease the queue set.
pub(crate) async fn under_lease<F: Future>(core: &Core, job: &Claimed, work: F) -> Option<F::Output> {
    let lease = core.lease;
    let every = lease / 3;
    let keeper = async {
        let mut valid_until = job.held_from + lease;
        let mut next = job.held_from + every;
        loop {
            tokio::time::sleep_until(next.min(valid_until)).await;
            let asked = Instant::now();
            let left = valid_until.saturating_duration_since(asked);
            if left.is_zero() {
                return "the lease ran out before it could be renewed";
            }
            let renew = core.queue.renew(&job.record.spec.tenant, &job.id, &job.token, core.lease_ms());
            match tokio::time::timeout(left, renew).await {
                Ok(Ok(true)) => {
                    valid_until = asked + lease;
                    next = asked + every;
                }
                Ok(Ok(false)) => return "another claim took the webhook over",
                Ok(Err(e)) => {
                    tracing::warn!(id = %job.id, error = %e, "webhook lease not renewed; trying again");
                    // Retry soon, but leave the queue some room.
                    next = Instant::now() + (every / 4).max(Duration::from_millis(20));
                }
                Err(_) => return "the lease ran out before it could be renewed",
            }
        }
    };
    tokio::select! {
        biased;
        out = work => Some(out),
        why = keeper => {
            tracing::warn!(id = %job.id, tenant = %job.record.spec.tenant, reason = why, "webhook attempt cut: lease lost; another replica attempts it again");
            None
        }
    }
}

/// Judges an attempt now: tenant still served, 1 credit of its account
/// budget, and the postponement limit.
pub(crate) async fn decide(core: &Core, job: &Claimed) -> Step {
    let snap = core.shared.snapshot.load();
    let tenant = match snap.config.tenant(&job.record.spec.tenant) {
        Some(t) if t.api_access => t.clone(),
        _ => return Step::Drop { reason: reason::TENANT_UNAVAILABLE },
    };
    // An account-only ask: webhooks have no endpoint budget (docs/reference.md "Webhook egress").
    let decision = core.shared.limiter.acquire(&Ask::new(&tenant, Endpoint::Other, 1)).await;
    let retry_ms = match decision {
        Ok(d) if d.allowed => return Step::Send,
        // The refusing policy's wait; never sooner (the limiter is exact).
        Ok(d) => d.blocking().and_then(|p| p.retry_ms).unwrap_or(1000),
        Err(_) => STORE_DOWN_RETRY_MS,
    };
    let now = job.now_ms();
    let since = job.record.state.postponed_since_ms.unwrap_or(now);
    let deadline = since.saturating_add(core.cfg.max_postpone.as_millis() as u64);
    if now >= deadline {
        return Step::Drop { reason: reason::POSTPONED_TOO_LONG };
    }
    // Wait until the budget has room, but look again at the deadline: a
    // webhook is never kept past `max_postpone_s`.
    Step::Postpone { due_ms: now.saturating_add(retry_ms).min(deadline), since_ms: since }
}

/// Acts on `step` and writes the outcome under the claim's token.
pub(crate) async fn settle(core: &Arc<Core>, job: Claimed, step: Step) {
    let spec = job.record.spec.clone();
    let mut state = job.record.state.clone();
    match step {
        Step::Postpone { due_ms, since_ms } => {
            let first = state.postponed_since_ms.is_none();
            state.status = Status::Postponed;
            state.postponed_since_ms = Some(since_ms);
            state.due_ms = Some(due_ms);
            if write(core, &job, &state, Next::Due(due_ms)).await && first {
                core.metrics.count(&spec.tenant, "postponed");
                tracing::debug!(id = %job.id, tenant = %spec.tenant, due_at = %super::rfc3339(due_ms), "webhook postponed: no room in the budget");
            }
        }
        Step::Drop { reason } => {
            state.status = Status::Dropped;
            state.reason = Some(reason.to_owned());
            state.due_ms = None;
            state.finished_ms = Some(job.now_ms());
            if write(core, &job, &state, Next::Done).await {
                core.metrics.count(&spec.tenant, "dropped");
                alert(core, &job.id, &state, &spec, reason).await;
            }
        }
        Step::Send => {
            state.status = Status::Sending;
            state.attempts += 1;
            state.postponed_since_ms = None;
            state.due_ms = None;
            let result = core.outbound.send(&job.id, &spec).await;
            let now = job.now_ms();
            match result {
                Ok(status) => {
                    state.status = Status::Delivered;
                    state.finished_ms = Some(now);
                    state.last_error = None;
                    if write(core, &job, &state, Next::Done).await {
                        core.metrics.count(&spec.tenant, "delivered");
                        let delay = now.saturating_sub(job.record.accepted_ms) as f64 / 1000.0;
                        core.metrics.delay.observe(delay);
                        tracing::debug!(id = %job.id, tenant = %spec.tenant, status, attempts = state.attempts, "webhook delivered");
                    }
                }
                Err(failure) => {
                    state.failures += 1;
                    state.last_error = Some(failure.to_string());
                    let gap = core.cfg.retry_schedule.get(state.failures as usize - 1);
                    match gap {
                        Some(gap) => {
                            // The queue clock counts whole milliseconds, so
                            // `now` may lag the failure by up to one: the gap
                            // starts at the next millisecond, never short.
                            let due = now.saturating_add(gap.as_millis() as u64).saturating_add(1);
                            state.status = Status::Retrying;
                            state.due_ms = Some(due);
                            if write(core, &job, &state, Next::Due(due)).await {
                                tracing::info!(id = %job.id, tenant = %spec.tenant, attempts = state.attempts, error = %failure, retry_at = %super::rfc3339(due), "webhook delivery failed; will retry");
                            }
                        }
                        None => {
                            state.status = Status::Dropped;
                            state.reason = Some(reason::DELIVERY_FAILED.to_owned());
                            state.finished_ms = Some(now);
                            if write(core, &job, &state, Next::Done).await {
                                core.metrics.count(&spec.tenant, "failed");
                                alert(core, &job.id, &state, &spec, reason::DELIVERY_FAILED).await;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `finish` under the claim's token; false when the lease was lost or the
/// queue is down (then the lease expires and the webhook is attempted again).
async fn write(core: &Core, job: &Claimed, state: &State, next: Next) -> bool {
    if let Next::Due(_) = next {
        core.wake.notify_one();
    }
    match core.queue.finish(&job.record.spec.tenant, &job.id, &job.token, state, next).await {
        Ok(true) => true,
        Ok(false) => {
            tracing::warn!(id = %job.id, "webhook lease lost: another replica took it over");
            false
        }
        Err(e) => {
            tracing::warn!(id = %job.id, error = %e, "webhook state not saved; it will be attempted again after its lease");
            false
        }
    }
}

/// A queued record nobody can read: drop it so it does not loop forever.
async fn drop_unreadable(core: Arc<Core>, u: Unreadable) {
    let state = State { status: Status::Dropped, reason: Some(reason::UNREADABLE.to_owned()), ..State::accepted() };
    tracing::warn!(id = %u.id, tenant = %u.tenant, "webhook record unreadable; dropped");
    let _ = core.queue.finish(&u.tenant, &u.id, &u.token, &state, Next::Done).await;
}

/// Warn log, alert counter, and a POST to `alert_url` when set (docs/reference.md "Webhook egress"),
/// sent from its own task (see [`post_alert`]).
async fn alert(core: &Arc<Core>, id: &str, state: &State, spec: &super::Spec, reason: &'static str) {
    let message = match reason {
        reason::DELIVERY_FAILED => format!(
            "Webhook {id} to {} failed {} times and was dropped. Please recheck the webhook settings in your account.",
            host_of(&spec.url),
            state.attempts
        ),
        reason::POSTPONED_TOO_LONG => format!(
            "Webhook {id} to {} waited more than {} s for room in the account's API budget and was dropped.",
            host_of(&spec.url),
            core.cfg.max_postpone.as_secs()
        ),
        _ => format!("Webhook {id} was dropped: tenant {} is no longer served with API access.", spec.tenant),
    };
    tracing::warn!(
        id,
        tenant = %spec.tenant,
        reason,
        attempts = state.attempts,
        last_error = state.last_error.as_deref().unwrap_or(""),
        "{message}"
    );
    core.metrics
        .alerts
        .get_or_create(&super::TenantAlert { tenant: crate::metrics::Name(Arc::from(spec.tenant.as_str())), reason })
        .inc();
    if let Some(url) = &core.cfg.alert_url {
        let body = serde_json::json!({
            "alert": "webhook_dropped",
            "reason": reason,
            "tenant": spec.tenant,
            "webhook_id": id,
            "url": host_of(&spec.url),
            "attempts": state.attempts,
            "last_error": state.last_error,
            "message": message,
            "at": state.finished_ms.map(super::rfc3339),
        });
        tokio::spawn(post_alert(core.clone(), url.clone(), body));
    }
}

/// Alerts one replica keeps waiting for a retry; beyond, a failed alert is
/// given up at once (logged in full), so a broken `alert_url` during a mass
/// drop cannot pile up memory.
const MAX_ALERTS_AWAITING_RETRY: usize = 1000;

/// POSTs one alert, retried after the gaps of `retry_schedule_s` like a
/// delivery. Kept in this process only: a shutdown abandons the retries.
async fn post_alert(core: Arc<Core>, url: String, body: serde_json::Value) {
    let _pending = AwaitingRetry::new(&core);
    let mut shutdown = core.shutdown.clone();
    let mut gaps = core.cfg.retry_schedule.iter();
    let mut tries = 0u32;
    loop {
        tries += 1;
        let error = match core.outbound.alert(&url, &body).await {
            Ok(()) => {
                core.metrics.alert_post("delivered");
                return;
            }
            Err(e) => e,
        };
        core.metrics.alert_post("failed");
        let gap = if tries == 1 && core.alerts_awaiting_retry.load(Ordering::Relaxed) > MAX_ALERTS_AWAITING_RETRY {
            None
        } else {
            gaps.next()
        };
        let Some(gap) = gap else {
            core.metrics.alert_post("abandoned");
            tracing::error!(tries, error = %error, alert = %body, "webhook alert could not be posted to alert_url; given up");
            return;
        };
        tracing::warn!(tries, error = %error, retry_in_s = gap.as_secs(), "webhook alert not posted to alert_url; will retry");
        tokio::select! {
            _ = tokio::time::sleep(*gap) => {}
            _ = shutdown.wait_for(|s| *s) => {
                core.metrics.alert_post("abandoned");
                tracing::error!(tries, alert = %body, "webhook alert not posted to alert_url before shutdown; given up");
                return;
            }
        }
    }
}

/// Scheme, host and port of a webhook URL: its path and query may carry
/// secrets, so logs and alerts name only where it went.
pub fn host_of(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(u) => format!("{}://{}", u.scheme_str().unwrap_or("http"), u.authority().map(|a| a.as_str()).unwrap_or("")),
        Err(_) => "(invalid url)".to_owned(),
    }
}

/// Counts an alert task in `Core::alerts_awaiting_retry` while it lives.
struct AwaitingRetry(Arc<Core>);

impl AwaitingRetry {
    fn new(core: &Arc<Core>) -> AwaitingRetry {
        core.alerts_awaiting_retry.fetch_add(1, Ordering::Relaxed);
        AwaitingRetry(core.clone())
    }
}

impl Drop for AwaitingRetry {
    fn drop(&mut self) {
        self.0.alerts_awaiting_retry.fetch_sub(1, Ordering::Relaxed);
    }
}
