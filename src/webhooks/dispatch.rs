//! The dispatcher (docs/reference.md "Webhook egress"): claims due webhooks and runs one attempt each.
//!
//! One attempt reads as the contract does: `decide` (is the tenant still
//! served? does 1 credit fit its account budget now?) → `deliver` when
//! admitted → `settle` (delivered, retry after the schedule's next gap,
//! postpone until the budget has room, or drop with an alert). Every write
//! goes through `Queue::finish` with the claim's token, so a replica that
//! lost its lease changes nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, OwnedSemaphorePermit};

use super::queue::{Claimed, Next};
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
                    for (id, token) in batch.unreadable {
                        tokio::spawn(drop_unreadable(core.clone(), id, token));
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
    let step = decide(&core, &job).await;
    settle(&core, job, step).await;
    drop(permit);
    core.wake.notify_one();
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
pub(crate) async fn settle(core: &Core, job: Claimed, step: Step) {
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
    match core.queue.finish(&job.id, &job.token, state, next).await {
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
async fn drop_unreadable(core: Arc<Core>, id: String, token: String) {
    let state = State { status: Status::Dropped, reason: Some(reason::UNREADABLE.to_owned()), ..State::accepted() };
    tracing::warn!(%id, "webhook record unreadable; dropped");
    let _ = core.queue.finish(&id, &token, &state, Next::Done).await;
}

/// Warn log, alert counter, and a POST to `alert_url` when set (docs/reference.md "Webhook egress").
async fn alert(core: &Core, id: &str, state: &State, spec: &super::Spec, reason: &'static str) {
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
        core.outbound.alert(url, &body).await;
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
