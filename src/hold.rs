//! Waiting for room instead of refusing (`max_wait_ms`, `max_held_calls`).
//!
//! A call that does not fit now, but whose refusal says it would fit within
//! the tenant's `max_wait_ms`, is held: its client's connection simply
//! waits (no upstream connection is taken), then the call asks the store
//! again. The store decides, as for every call, so replicas sharing it never
//! admit more together than the budget; a held call that is refused again
//! waits again while its deadline allows, and is answered the usual 429 once
//! it cannot be admitted within `max_wait_ms` of its arrival.
//!
//! Order: the held calls of one tenant in one replica form a line, and only
//! the call at its head asks the store (the turn is a one-permit semaphore,
//! which tokio hands out in the order asked). A call arriving while others
//! of its tenant are held joins the line without asking, so it cannot take
//! the room the earlier ones wait for. Across replicas there is no order:
//! each replica's head asks the store when it expects room.
//!
//! Bounds: at most `max_held_calls` per tenant per replica; a call beyond
//! that, or one that cannot be admitted within `max_wait_ms`, is answered
//! 429 at once. A call that had to be refused before asking the store
//! itself (the line was full, its deadline passed while in line, shutdown)
//! is told what the line last heard from the store, with the budgets that
//! are its own (`Line::refusal_for`).
//!
//! A client that leaves while held costs nothing: nothing was charged, and
//! the call stops waiting. hyper drops the call's future when its
//! connection closes; the fast path's connection task is inside the call,
//! so the lifecycle races the wait against the wire's `client_gone`
//! (a read of end-of-stream; see `fast`). A client that leaves during the
//! store round trip itself may still be charged: the store cannot be
//! un-asked.
//!
//! Shutdown ([`HoldRoom::close`]): held calls are answered at once (429 with
//! what they know, never held into the drain), and no call is held after.
//!
//! Off (`max_wait_ms = 0`, the default), the lifecycle never calls in here:
//! one comparison per call. No lock is held across an `.await`: the map of
//! lines and a line's last refusal are behind short-held mutexes, the count
//! is an atomic.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::sync::{watch, Semaphore};
use tokio::time::{sleep_until, Instant};

use crate::config::Tenant;
use crate::limiter::{Ask, Decision, PolicyState, StoreUnavailable};
use crate::metrics::Name;

/// What holding made of a call.
#[derive(Debug)]
pub enum Held {
    /// The store's last word (admitted, refused, or it could not answer).
    Decided(Result<Decision, StoreUnavailable>),
    /// The client left while the call was held: nothing was charged.
    Gone,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabel {
    tenant: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// `deskgate_hold_wait_seconds{outcome}` and `deskgate_held_calls{tenant}`.
pub struct HoldMetrics {
    wait: Family<OutcomeLabel, Histogram>,
    held: Family<TenantLabel, Gauge>,
}

impl HoldMetrics {
    /// Registers the holding metrics in `registry`.
    pub fn register(registry: &mut Registry) -> HoldMetrics {
        // 1 ms .. ~65 s: waits are a share of a window.
        let wait = Family::<OutcomeLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 17))
        });
        let held = Family::<TenantLabel, Gauge>::default();
        registry.register(
            "deskgate_hold_wait_seconds",
            "Time calls were held waiting for room, by how the wait ended (admitted, refused, gone)",
            wait.clone(),
        );
        registry.register("deskgate_held_calls", "Calls held waiting for room now, per tenant", held.clone());
        HoldMetrics { wait, held }
    }
}

/// The held calls of one tenant in this replica.
struct Line {
    /// The head of the line: the one call that asks the store.
    turn: Semaphore,
    /// Calls held now (waiting for the turn or holding it).
    held: AtomicU32,
    /// The last refusal a call of this line got from the store, and when.
    last: Mutex<Option<(Decision, Instant)>>,
}

impl Line {
    fn record(&self, d: Decision, at: Instant) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((d, at));
    }

    /// A refusal for `ask` without asking the store: the line's last
    /// refusal, aged to `now`, keeping only the budgets `ask` counts against
    /// (a budget of another endpoint says nothing about this call).
    fn refusal_for(&self, ask: &Ask<'_>, now: Instant) -> Decision {
        let last = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        let (account, endpoint) = match last {
            Some((d, at)) => {
                let d = aged(d, now.saturating_duration_since(at));
                let endpoint = match (ask.endpoint, d.endpoint) {
                    (Some((_, p)), Some(s)) if s.policy == p => Some(s),
                    (Some((_, p)), _) => Some(blank(p)),
                    (None, _) => None,
                };
                let account = if d.account.policy == ask.account { d.account } else { blank(ask.account) };
                (account, endpoint)
            }
            None => (blank(ask.account), ask.endpoint.map(|(_, p)| blank(p))),
        };
        Decision { allowed: false, cost: ask.cost, account, endpoint, degraded: false }
    }
}

/// A budget this replica has no word on: nothing left is claimed, and no
/// wait (a `Retry-After` of 1 s).
fn blank(policy: crate::limiter::Policy) -> PolicyState {
    PolicyState { policy, remaining: 0, reset_ms: 0, retry_ms: None, slot: 0 }
}

/// `d` as it reads `elapsed` after it was decided: its waits shorter by that.
fn aged(d: Decision, elapsed: Duration) -> Decision {
    let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    let age = |p: PolicyState| PolicyState {
        reset_ms: p.reset_ms.saturating_sub(ms),
        retry_ms: p.retry_ms.map(|r| if r == u64::MAX { r } else { r.saturating_sub(ms) }),
        ..p
    };
    Decision { account: age(d.account), endpoint: d.endpoint.map(age), ..d }
}

/// How long until a refused decision's call would fit (`None`: never).
fn wait_of(d: &Decision) -> Option<Duration> {
    match d.blocking().and_then(|p| p.retry_ms) {
        Some(u64::MAX) => None,
        // At least a millisecond: an aged or cached wait of 0 must not spin.
        Some(ms) => Some(Duration::from_millis(ms.max(1))),
        // Refused by no policy in particular: look again in a moment.
        None => Some(Duration::from_millis(1)),
    }
}

/// Every tenant's line, and the shutdown switch.
pub struct HoldRoom {
    lines: Mutex<HashMap<Arc<str>, Arc<Line>>>,
    closed: watch::Sender<bool>,
    metrics: HoldMetrics,
}

/// One held call: counted while it lives; its wait observed when it ends.
struct Holding<'a> {
    line: &'a Line,
    gauge: Gauge,
    metrics: &'a HoldMetrics,
    since: Instant,
    outcome: &'static str,
}

impl Drop for Holding<'_> {
    /// Also when the call's future is dropped (hyper: the client left).
    fn drop(&mut self) {
        self.line.held.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
        let waited = self.since.elapsed().as_secs_f64();
        self.metrics.wait.get_or_create(&OutcomeLabel { outcome: self.outcome }).observe(waited);
    }
}

impl HoldRoom {
    pub fn new(metrics: HoldMetrics) -> HoldRoom {
        HoldRoom { lines: Mutex::default(), closed: watch::channel(false).0, metrics }
    }

    /// Shutdown: every held call is answered now, and none is held after.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Calls of `tenant` held in this replica now (admin `/tenants/NAME`).
    pub fn held(&self, tenant: &str) -> u32 {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines.get(tenant).map_or(0, |l| l.held.load(Ordering::Acquire))
    }

    fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    fn line(&self, tenant: &Arc<str>) -> Arc<Line> {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .entry(tenant.clone())
            .or_insert_with(|| {
                Arc::new(Line { turn: Semaphore::new(1), held: AtomicU32::new(0), last: Mutex::new(None) })
            })
            .clone()
    }

    /// Decides `ask` for `tenant` (whose `max_wait` is not zero), holding
    /// the call while the store says it will fit in time. `judge` asks the
    /// store once; `gone` resolves if the client leaves.
    pub async fn admit<G, J, F>(&self, tenant: &Tenant, ask: &Ask<'_>, gone: G, judge: J) -> Held
    where
        G: Future<Output = ()>,
        J: Fn() -> F,
        F: Future<Output = Result<Decision, StoreUnavailable>>,
    {
        // A shadowed tenant is never refused, so never held; after shutdown
        // began, nothing is held.
        if tenant.shadow || self.is_closed() {
            return Held::Decided(judge().await);
        }
        let arrived = Instant::now();
        let deadline = arrived + tenant.max_wait;
        let line = self.line(&tenant.name);
        // With no call of this tenant held here, ask at once; otherwise
        // join the line without asking, behind the calls already in it.
        let mut refused = None;
        if line.held.load(Ordering::Acquire) == 0 {
            let d = match judge().await {
                Ok(d) if !d.allowed => d,
                other => return Held::Decided(other),
            };
            let now = Instant::now();
            match wait_of(&d) {
                Some(w) if now + w <= deadline => refused = Some((d, now)),
                _ => return Held::Decided(Ok(d)),
            }
        }
        let max = tenant.max_held_calls;
        if line.held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_err() {
            let now = Instant::now();
            let d = refused.map_or_else(|| line.refusal_for(ask, now), |(d, at)| aged(d, now - at));
            return Held::Decided(Ok(d));
        }
        let gauge = self.metrics.held.get_or_create(&TenantLabel { tenant: Name(tenant.name.clone()) }).clone();
        gauge.inc();
        let mut holding = Holding { line: &line, gauge, metrics: &self.metrics, since: arrived, outcome: "gone" };
        if let Some((d, at)) = refused {
            line.record(d, at);
        }
        // The answer for a call refused while held: its own last refusal,
        // or the line's.
        let refuse = |refused: Option<(Decision, Instant)>, holding: &mut Holding<'_>| {
            holding.outcome = "refused";
            let now = Instant::now();
            Held::Decided(Ok(refused.map_or_else(|| line.refusal_for(ask, now), |(d, at)| aged(d, now - at))))
        };
        let mut closed = self.closed.subscribe();
        tokio::pin!(gone);

        // Wait for the turn.
        let _turn = tokio::select! {
            biased;
            _ = &mut gone => return Held::Gone,
            _ = closed.wait_for(|c| *c) => return refuse(refused, &mut holding),
            _ = sleep_until(deadline) => return refuse(refused, &mut holding),
            turn = line.turn.acquire() => match turn {
                Ok(t) => t,
                Err(_) => return refuse(refused, &mut holding),
            },
        };
        // At the head: wait until the store expects room, then ask.
        loop {
            if let Some((d, at)) = refused {
                match wait_of(&d).map(|w| at + w) {
                    Some(t) if t <= deadline => {
                        tokio::select! {
                            biased;
                            _ = &mut gone => return Held::Gone,
                            _ = closed.wait_for(|c| *c) => return refuse(refused, &mut holding),
                            _ = sleep_until(t) => {}
                        }
                    }
                    _ => return refuse(refused, &mut holding),
                }
            }
            // The client may have left while the call waited for the turn.
            if (&mut gone).now_or_never().is_some() {
                return Held::Gone;
            }
            match judge().await {
                Ok(d) if !d.allowed => {
                    let now = Instant::now();
                    line.record(d, now);
                    refused = Some((d, now));
                }
                other => {
                    holding.outcome = if other.is_ok() { "admitted" } else { "refused" };
                    return Held::Decided(other);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::Policy;

    fn state(name: &'static str, quota: u32, remaining: u32, retry_ms: Option<u64>) -> PolicyState {
        PolicyState { policy: Policy { name, quota, window_s: 60 }, remaining, reset_ms: 9_000, retry_ms, slot: 0 }
    }

    fn ask(endpoint: &'static str, quota: u32) -> Ask<'static> {
        let e = crate::endpoint::Endpoint::from_key(endpoint).expect("an endpoint");
        let account = Policy { name: "account", quota: 10, window_s: 60 };
        Ask { tenant: "t", cost: 1, account, endpoint: Some((e, Policy { name: endpoint, quota, window_s: 60 })) }
    }

    /// A call refused without asking the store is told the line's last
    /// refusal, aged, but only about the budgets it counts against.
    #[test]
    fn a_refusal_from_the_line_speaks_only_of_the_calls_own_budgets() {
        let line = Line { turn: Semaphore::new(1), held: AtomicU32::new(1), last: Mutex::new(None) };
        let t0 = Instant::now();
        let last = Decision {
            allowed: false,
            cost: 1,
            account: state("account", 10, 0, Some(4_000)),
            endpoint: Some(state("ticket_list", 3, 0, Some(6_000))),
            degraded: false,
        };
        line.record(last, t0);
        let now = t0 + Duration::from_millis(1_500);
        let same = line.refusal_for(&ask("ticket_list", 3), now);
        assert!(!same.allowed);
        assert_eq!(same.endpoint.map(|e| e.retry_ms), Some(Some(4_500)));
        assert_eq!(same.account.retry_ms, Some(2_500));
        assert_eq!(same.refusal().map(|r| (r.policy.name, r.retry_after_s)), Some(("ticket_list", 5)));
        // Another endpoint: the account as last heard, nothing claimed for the rest.
        let other = line.refusal_for(&ask("contact_list", 5), now);
        let e = other.endpoint.expect("the call's own endpoint budget");
        assert_eq!((e.policy.name, e.policy.quota, e.remaining, e.retry_ms), ("contact_list", 5, 0, None));
        assert_eq!(other.refusal().map(|r| (r.policy.name, r.retry_after_s)), Some(("account", 3)));
    }

    #[test]
    fn a_wait_is_at_least_a_millisecond_and_a_cost_above_the_quota_never_ends() {
        let d = |retry| Decision {
            allowed: false,
            cost: 1,
            account: state("account", 10, 0, retry),
            endpoint: None,
            degraded: false,
        };
        assert_eq!(wait_of(&d(Some(0))), Some(Duration::from_millis(1)));
        assert_eq!(wait_of(&d(Some(1_234))), Some(Duration::from_millis(1_234)));
        assert_eq!(wait_of(&d(Some(u64::MAX))), None);
    }
}
