//! The helpdesk's own count wins (README, "Upstream-aware budgets"). With
//! `trust_upstream_limits`, every answer of the helpdesk that carries its
//! account numbers is read after the exchange ([`read_answer`], then
//! [`charge`] when it disagrees):
//!
//! - the numbers are kept for `/tenants/{name}` ([`HelpdeskView`]);
//! - a `X-RateLimit-Total` other than the configured account budget is
//!   logged once per tenant and config load, and shown as a metric;
//! - a `X-RateLimit-Remaining` below what the gateway's account window had
//!   left after this call is charged to the window, and a 429 with
//!   `Retry-After` closes it until then (`Limiter::settle`, one store call);
//! - the client is never told more remains than the helpdesk said.
//!
//! An answer that agrees costs no store call: it is compared with the
//! call's decision, in memory. The charge runs before the answer is
//! relayed: the next call of the same client, on any replica, is judged
//! with it (a reconciliation is rare: it happens when the helpdesk's count
//! moved without the gateway, and then once, not per call).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::config::Tenant;
use crate::endpoint::Endpoint;
use crate::limiter::{Ask, Decision, Limiter, Settle};
use crate::metrics::{HelpdeskMetrics, Metrics};
use crate::upstream::reported::Reported;

/// Not reported yet.
const NONE: u32 = u32::MAX;

/// The helpdesk's latest numbers for one tenant, since the config in force
/// was loaded (one per tenant per config load: a reload starts afresh, so
/// a plan mismatch is logged again after it).
#[derive(Debug)]
pub struct HelpdeskView {
    epoch: Instant,
    remaining: AtomicU32,
    total: AtomicU32,
    /// Milliseconds after `epoch` of the latest report, plus one (0: none).
    at_ms: AtomicU64,
    mismatch_logged: AtomicBool,
}

impl Default for HelpdeskView {
    fn default() -> Self {
        HelpdeskView {
            epoch: Instant::now(),
            remaining: AtomicU32::new(NONE),
            total: AtomicU32::new(NONE),
            at_ms: AtomicU64::new(0),
            mismatch_logged: AtomicBool::new(false),
        }
    }
}

/// What `/tenants/{name}` shows of the helpdesk's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelpdeskReport {
    pub remaining: Option<u32>,
    pub total: Option<u32>,
    /// When the latest answer with them arrived (Unix ms).
    pub at_unix_ms: u64,
}

impl HelpdeskView {
    /// The latest report, if any.
    pub fn report(&self) -> Option<HelpdeskReport> {
        let at = self.at_ms.load(Ordering::Relaxed).checked_sub(1)?;
        let age = self.epoch.elapsed().saturating_sub(Duration::from_millis(at));
        let wall = SystemTime::now().checked_sub(age).unwrap_or(UNIX_EPOCH);
        let known = |v: u32| (v != NONE).then_some(v);
        Some(HelpdeskReport {
            remaining: known(self.remaining.load(Ordering::Relaxed)),
            total: known(self.total.load(Ordering::Relaxed)),
            at_unix_ms: wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        })
    }

    /// Keeps `r`'s numbers, as of `at` (no clock is read here); the total
    /// seen before, if any.
    fn note(&self, r: &Reported, at: Instant) -> Option<u32> {
        if let Some(v) = r.remaining {
            self.remaining.store(v.min(NONE - 1), Ordering::Relaxed);
        }
        // A load, and a store only on a change: the total rarely changes,
        // and this runs for every answer that carries it.
        let before = r.total.map(|v| {
            let (v, before) = (v.min(NONE - 1), self.total.load(Ordering::Relaxed));
            if before != v {
                self.total.store(v, Ordering::Relaxed);
            }
            before
        });
        let ms = u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX - 1);
        self.at_ms.store(ms + 1, Ordering::Relaxed);
        before.filter(|&v| v != NONE)
    }
}

/// One answer of the helpdesk, as [`read_answer`] reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Answered {
    pub status: u16,
    pub reported: Reported,
    /// When its head arrived.
    pub at: Instant,
}

/// Reads the helpdesk's numbers on an answer to `tenant`'s call, with
/// `trust_upstream_limits` on: see the module's doc. `decision` is the
/// call's, and becomes what the client is told. What to [`charge`], only
/// when the helpdesk has less left or refused: an answer that agrees is
/// settled here, in memory (no future, no store call).
pub(crate) fn read_answer(
    metrics: &Metrics,
    tenant: &Tenant,
    view: &HelpdeskView,
    decision: &mut Option<Decision>,
    answer: Answered,
) -> Option<Settle> {
    let Answered { status, reported, at } = answer;
    let closed = status == 429;
    if reported.is_empty() && !closed {
        return None;
    }
    let m = &metrics.helpdesk;
    if !reported.is_empty() {
        let before = view.note(&reported, at);
        if let Some(total) = reported.total {
            plan_check(m, tenant, view, total, before);
        }
    }
    let d = decision.as_mut()?;
    let ours = d.account.remaining;
    let how = match reported.retry_after_s {
        Some(s) if closed => Some(Settle::ClosedFor { ms: u64::from(s) * 1000 }),
        _ => reported.remaining.filter(|&r| r < ours).map(Settle::Left),
    };
    // What the client is told: never more left than the helpdesk said.
    if closed {
        d.account.remaining = 0;
    } else if let Some(r) = reported.remaining {
        d.account.remaining = ours.min(r);
    }
    how
}

/// Counts a helpdesk 429 to `tenant`'s call (whether or not it trusts the
/// helpdesk's numbers: how often the helpdesk refuses what the gateway let
/// through is what tells an operator to trust them).
pub(crate) fn count_upstream_429(metrics: &Metrics, tenant: &Tenant) {
    metrics.helpdesk.upstream_429.get_or_create(&HelpdeskMetrics::tenant(&tenant.name)).inc();
}

/// Charges `how` to `tenant`'s account window: one store call.
pub(crate) async fn charge(limiter: &Limiter, metrics: &Metrics, tenant: &Tenant, how: Settle) {
    let ask = Ask::new(tenant, Endpoint::Other, 0);
    // A store call that found nothing to charge (another call's answer got
    // there first, or the decision was a degraded guess) is no reconciliation.
    if let Some(n) = limiter.settle(&ask, how).await.filter(|&n| n > 0) {
        let m = &metrics.helpdesk;
        let labels = HelpdeskMetrics::tenant(&tenant.name);
        m.reconciliations.get_or_create(&labels).inc();
        m.credits.get_or_create(&labels).inc_by(u64::from(n));
        tracing::debug!(tenant = %tenant.name, ?how, charged = n, "charged the helpdesk's count");
    }
}

/// A helpdesk total other than the configured budget: logged once per
/// config load, and the gauge follows it (back to 0 once it agrees). Only
/// a change of the reported total touches the metric.
fn plan_check(m: &HelpdeskMetrics, tenant: &Tenant, view: &HelpdeskView, total: u32, before: Option<u32>) {
    if before == Some(total) {
        return;
    }
    let labels = HelpdeskMetrics::tenant(&tenant.name);
    if total != tenant.per_minute {
        m.mismatch.get_or_create(&labels).set(i64::from(total));
        if !view.mismatch_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                tenant = %tenant.name,
                plan = tenant.plan,
                configured = tenant.per_minute,
                helpdesk = total,
                "the helpdesk reports another account budget than the config (X-RateLimit-Total): a changed plan or an add-on?"
            );
        }
    } else {
        // Agreeing (on the first report of this config load too, so that a
        // series left from a mismatch before a reload goes back to 0).
        m.mismatch.get_or_create(&labels).set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::{Policy, PolicyState};

    fn tenant(per_minute: u32) -> Tenant {
        Tenant {
            name: "acme".into(),
            domain: "acme.example".into(),
            vanity_hosts: Vec::new(),
            plan: "pro".into(),
            api_access: true,
            per_minute,
            endpoints: [None; Endpoint::CLASSIFIED],
            window_seconds: 60,
            shadow: false,
            max_wait: std::time::Duration::ZERO,
            max_held_calls: 100,
            trust_upstream_limits: true,
        }
    }

    fn decision(remaining: u32) -> Option<Decision> {
        let policy = Policy { name: "account", quota: 400, window_s: 60 };
        let account = PolicyState { policy, remaining, reset_ms: 0, retry_ms: None, slot: 1 };
        Some(Decision { allowed: true, cost: 1, account, endpoint: None, degraded: false })
    }

    fn answered(status: u16, remaining: Option<u32>, total: Option<u32>, retry: Option<u32>) -> Answered {
        Answered { status, reported: Reported { remaining, total, retry_after_s: retry }, at: Instant::now() }
    }

    #[test]
    fn only_a_lower_count_or_a_429_asks_the_store_and_the_client_sees_the_lower_count() {
        let (m, t, view) = (Metrics::new(), tenant(400), HelpdeskView::default());
        assert!(view.report().is_none());
        // Agreeing, higher, or nothing said: no store call, our count shown.
        for (r, shown) in [(Some(350), 350), (Some(399), 350), (None, 350)] {
            let mut d = decision(350);
            assert_eq!(read_answer(&m, &t, &view, &mut d, answered(200, r, Some(400), None)), None);
            assert_eq!(d.unwrap().account.remaining, shown);
        }
        // Lower: charged, and shown.
        let mut d = decision(350);
        assert_eq!(read_answer(&m, &t, &view, &mut d, answered(200, Some(3), None, None)), Some(Settle::Left(3)));
        assert_eq!(d.unwrap().account.remaining, 3);
        let seen = view.report().expect("kept");
        assert_eq!((seen.remaining, seen.total), (Some(3), Some(400)));
        // A 429 closes for its Retry-After; without one, only its count counts.
        let mut d = decision(350);
        let how = read_answer(&m, &t, &view, &mut d, answered(429, Some(0), None, Some(7)));
        assert_eq!(how, Some(Settle::ClosedFor { ms: 7000 }));
        assert_eq!(d.unwrap().account.remaining, 0);
        let mut d = decision(350);
        assert_eq!(read_answer(&m, &t, &view, &mut d, answered(429, None, None, None)), None);
        assert_eq!(d.unwrap().account.remaining, 0);
        // A portal call (no decision) only keeps the numbers.
        assert_eq!(read_answer(&m, &t, &view, &mut None, answered(200, Some(1), None, None)), None);
    }

    #[test]
    fn a_plan_mismatch_is_logged_once_per_view_and_the_gauge_follows_the_helpdesk() {
        let (m, t) = (Metrics::new(), tenant(400));
        let gauge = |m: &Metrics| m.helpdesk.mismatch.get_or_create(&HelpdeskMetrics::tenant(&t.name)).get();
        let view = HelpdeskView::default();
        read_answer(&m, &t, &view, &mut decision(10), answered(200, Some(10), Some(700), None));
        assert_eq!(gauge(&m), 700);
        assert!(view.mismatch_logged.load(Ordering::Relaxed));
        read_answer(&m, &t, &view, &mut decision(10), answered(200, Some(10), Some(400), None));
        assert_eq!(gauge(&m), 0);
        // A new config load (a new view) logs again.
        let reloaded = HelpdeskView::default();
        assert!(!reloaded.mismatch_logged.load(Ordering::Relaxed));
        read_answer(&m, &t, &reloaded, &mut decision(10), answered(200, None, Some(1000), None));
        assert_eq!(gauge(&m), 1000);
        assert!(reloaded.mismatch_logged.load(Ordering::Relaxed));
    }
}
