//! In-process store for one replica (docs/reference.md "Store" `memory`).
//!
//! One `std::sync::Mutex` per tenant: the critical section is a few array
//! updates and never spans an `.await`, so a blocking mutex is cheaper than
//! tokio's and cannot deadlock the runtime. The map itself sits behind an
//! `RwLock` that is written only when a tenant is seen for the first time,
//! so it survives config reloads and keeps consumed budgets (docs/reference.md "Configuration").

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use tokio::time::Instant;

use super::store::{Store, StoreError};
use super::window::Window;
use super::{Ask, Decision, Policy, PolicyState, Refunded};
use crate::endpoint::Endpoint;

/// Windows of one tenant: the account and, lazily, each endpoint class.
#[derive(Debug)]
struct TenantWindows {
    account: Window,
    endpoints: [Option<Box<Window>>; Endpoint::CLASSIFIED],
}

/// The memory store. Time is `tokio::time::Instant`, so tests can pause it.
#[derive(Debug)]
pub struct MemoryStore {
    epoch: Instant,
    tenants: RwLock<HashMap<Arc<str>, Arc<Mutex<TenantWindows>>>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore { epoch: Instant::now(), tenants: RwLock::new(HashMap::new()) }
    }

    fn now_us(&self) -> u64 {
        // Offset by one window of the longest kind so slot arithmetic never starts at 0.
        self.epoch.elapsed().as_micros() as u64 + 3_600_000_000
    }

    fn tenant(&self, ask: &Ask<'_>) -> Arc<Mutex<TenantWindows>> {
        // Poisoning only follows a panic inside the tiny critical sections below,
        // which do no I/O; recovering the data is safe.
        if let Some(t) = self.tenants.read().unwrap_or_else(|e| e.into_inner()).get(ask.tenant) {
            return t.clone();
        }
        let mut map = self.tenants.write().unwrap_or_else(|e| e.into_inner());
        map.entry(Arc::from(ask.tenant))
            .or_insert_with(|| {
                Arc::new(Mutex::new(TenantWindows {
                    account: Window::new(ask.account.window_s),
                    endpoints: Default::default(),
                }))
            })
            .clone()
    }

    /// Decides synchronously (also used by the benchmarks).
    pub fn acquire_now(&self, ask: &Ask<'_>) -> Decision {
        let now = self.now_us();
        let tenant = self.tenant(ask);
        let mut guard = tenant.lock().unwrap_or_else(|e| e.into_inner());
        let t = &mut *guard;
        refit(&mut t.account, ask.account);
        let mut endpoint = ask.endpoint.map(|(e, p)| {
            let slot = &mut t.endpoints[e.index().unwrap_or(0)];
            let w = slot.get_or_insert_with(|| Box::new(Window::new(p.window_s)));
            refit(w, p);
            (w, p)
        });
        let av = t.account.judge(now, ask.account.quota, ask.cost);
        let ev = endpoint.as_mut().map(|(w, p)| w.judge(now, p.quota, ask.cost));
        let allowed = av.fits && ev.is_none_or(|v| v.fits);
        let (mut account_slot, mut endpoint_slot) = (0, 0);
        if allowed && ask.cost > 0 {
            account_slot = t.account.charge(now, ask.cost);
            if let Some((w, _)) = endpoint.as_mut() {
                endpoint_slot = w.charge(now, ask.cost);
            }
        }
        let account =
            PolicyState::new(ask.account, &av, allowed, ask.cost, t.account.reset_us(now)).charged_to(account_slot);
        let endpoint = endpoint.zip(ev).map(|((w, p), v)| {
            let reset = w.reset_us(now);
            PolicyState::new(p, &v, allowed, ask.cost, reset).charged_to(endpoint_slot)
        });
        Decision { allowed, cost: ask.cost, account, endpoint, degraded: false }
    }

    /// Gives back what `charged` (a decision for `ask`) charged, to the slots
    /// it went to (see [`Window::refund`]), both windows under one lock.
    pub fn refund_now(&self, ask: &Ask<'_>, charged: &Decision) -> Refunded {
        let cost = charged.charged();
        if cost == 0 {
            return Refunded::default();
        }
        let now = self.now_us();
        let tenant = self.tenant(ask);
        let mut guard = tenant.lock().unwrap_or_else(|e| e.into_inner());
        let t = &mut *guard;
        // A window restarted by a reload (another length) no longer holds the charge.
        let give = |w: &mut Window, p: Policy, slot: u64| {
            if w.slot_width_us() == super::window::slot_us(p.window_s) {
                w.refund(now, slot, cost)
            } else {
                0
            }
        };
        let account = give(&mut t.account, ask.account, charged.account.slot);
        let endpoint = match (ask.endpoint, &charged.endpoint) {
            (Some((e, p)), Some(s)) => match t.endpoints[e.index().unwrap_or(0)].as_deref_mut() {
                Some(w) => give(w, p, s.slot),
                None => 0,
            },
            _ => 0,
        };
        Refunded { account, endpoint }
    }

    /// Charges what the helpdesk reports to `ask`'s account window (see
    /// [`super::Settle`]); returns the credits charged.
    pub fn settle_now(&self, ask: &Ask<'_>, how: super::Settle) -> u32 {
        let now = self.now_us();
        let tenant = self.tenant(ask);
        let mut guard = tenant.lock().unwrap_or_else(|e| e.into_inner());
        let w = &mut guard.account;
        refit(w, ask.account);
        match how {
            super::Settle::Left(left) => w.settle_left(now, ask.account.quota, left),
            super::Settle::ClosedFor { ms } => {
                w.close_until(now, ask.account.quota, now.saturating_add(ms.saturating_mul(1000)))
            }
        }
    }
}

/// A reload may change a policy's window length; slots of another width
/// cannot be reinterpreted, so the window restarts empty (quota changes keep counts).
fn refit(w: &mut Window, p: Policy) {
    if w.slot_width_us() != super::window::slot_us(p.window_s) {
        *w = Window::new(p.window_s);
    }
}

impl Store for MemoryStore {
    async fn acquire(&self, ask: &Ask<'_>) -> Result<Decision, StoreError> {
        Ok(self.acquire_now(ask))
    }

    async fn refund(&self, ask: &Ask<'_>, charged: &Decision) -> Result<Refunded, StoreError> {
        Ok(self.refund_now(ask, charged))
    }
}
