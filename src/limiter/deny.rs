//! The local deny cache (docs/reference.md "Store"): once the store said a tenant's policy is
//! exhausted, this replica refuses calls that cannot fit from memory until
//! the first credit can come back, without a round trip.
//!
//! Why it is exact: between a refusal and the moment the oldest non-empty
//! slot leaves the window (`reset`), nothing can leave that policy's window;
//! other replicas can only consume more. So "`left` credits at most, until
//! `reset`" stays true, and a call costing more than `left` would be refused
//! by the store too. The cache answers only calls no dearer than the refused
//! one, whose `Retry-After` is therefore never early (a cheaper call that
//! fits still goes to the store; a dearer one asks the store for its own
//! retry time). A refund breaks the premise (it frees credits before
//! `reset`), so it makes the limiter forget the tenant here; another
//! replica's entry still refuses until its own `reset`, which errs on the
//! side of refusing. Times are bracketed conservatively: validity runs from the
//! call's start (earlier than the store's clock read), retry instants from
//! the reply's arrival (later).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{Ask, Decision, PolicyState};
use crate::endpoint::Endpoint;

/// Beyond this many tenants, expired entries are swept on insert.
const SWEEP_ABOVE: usize = 1024;

/// What the store last said about one policy of one tenant.
#[derive(Debug, Clone, Copy)]
struct Known {
    state: PolicyState,
    /// When the reply arrived.
    at: Instant,
    block: Option<Block>,
}

/// The policy refused a call: a cost above `state.remaining` cannot fit before `until`.
#[derive(Debug, Clone, Copy)]
struct Block {
    until: Instant,
    /// The refused call's cost: the cache answers calls costing at most this.
    cost: u32,
    /// When that call fits (never early).
    retry_at: Instant,
}

#[derive(Debug, Default)]
struct TenantKnown {
    account: Option<Known>,
    endpoints: [Option<Known>; Endpoint::CLASSIFIED],
}

impl TenantKnown {
    fn live(&self, now: Instant) -> bool {
        std::iter::once(&self.account)
            .chain(self.endpoints.iter())
            .flatten()
            .any(|k| k.block.is_some_and(|b| now < b.until))
    }
}

/// Per-tenant refusals, behind one short-held mutex (never across `.await`).
#[derive(Debug, Default)]
pub(super) struct DenyCache {
    tenants: Mutex<HashMap<Arc<str>, TenantKnown>>,
}

impl DenyCache {
    /// A refusal for `ask` known without the store, if there is one.
    pub(super) fn check(&self, ask: &Ask<'_>, now: Instant) -> Option<Decision> {
        let map = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let t = map.get(ask.tenant)?;
        let account = t.account.as_ref().filter(|k| k.state.policy == ask.account);
        let endpoint = match ask.endpoint {
            Some((e, p)) => Some(t.endpoints[e.index()?].as_ref().filter(|k| k.state.policy == p)),
            None => None,
        };
        let blocks =
            |k: &Known| k.block.is_some_and(|b| now < b.until && ask.cost > k.state.remaining && ask.cost <= b.cost);
        let blocked = account.is_some_and(blocks) || endpoint.flatten().is_some_and(blocks);
        if !blocked {
            return None;
        }
        // Headers need both policies; without a view of the other one, ask the store.
        let view = |k: &Known| {
            let elapsed_ms = u64::try_from(now.saturating_duration_since(k.at).as_millis()).unwrap_or(u64::MAX);
            PolicyState {
                policy: k.state.policy,
                remaining: k.state.remaining,
                reset_ms: k.state.reset_ms.saturating_sub(elapsed_ms),
                retry_ms: k.block.filter(|_| blocks(k)).map(|b| ceil_ms(b.retry_at.saturating_duration_since(now))),
                slot: 0,
            }
        };
        let account = view(account?);
        let endpoint = match endpoint {
            Some(k) => Some(view(k?)),
            None => None,
        };
        Some(Decision { allowed: false, cost: ask.cost, account, endpoint, degraded: false })
    }

    /// Remembers a refusal the store just made (`start`: when the call began;
    /// `end`: when the reply arrived).
    pub(super) fn record(&self, ask: &Ask<'_>, d: &Decision, start: Instant, end: Instant) {
        let known = |s: &PolicyState| Known {
            state: *s,
            at: end,
            block: s.retry_ms.filter(|&r| r != u64::MAX).map(|r| Block {
                // reset_ms was rounded up; one ms less is never late.
                until: start + Duration::from_millis(s.reset_ms.saturating_sub(1)),
                cost: ask.cost,
                retry_at: end + Duration::from_millis(r),
            }),
        };
        let mut map = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > SWEEP_ABOVE {
            map.retain(|_, t| t.live(end));
        }
        let t = match map.get_mut(ask.tenant) {
            Some(t) => t,
            None => map.entry(Arc::from(ask.tenant)).or_default(),
        };
        t.account = Some(known(&d.account));
        if let (Some((e, _)), Some(s)) = (ask.endpoint, d.endpoint.as_ref()) {
            if let Some(i) = e.index() {
                t.endpoints[i] = Some(known(s));
            }
        }
    }
}

impl DenyCache {
    /// Forgets what the store said about `tenant`: a refund made room, so
    /// "nothing can leave the window before `reset`" no longer holds.
    pub(super) fn forget(&self, tenant: &str) {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner()).remove(tenant);
    }
}

fn ceil_ms(d: Duration) -> u64 {
    u64::try_from(d.as_micros().div_ceil(1000)).unwrap_or(u64::MAX)
}
