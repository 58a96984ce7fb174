//! Budgets (SPEC §3.2, §4): the shared decision logic around a [`Store`].
//!
//! `Limiter::acquire` builds the call's [`Ask`] from the tenant's effective
//! budget, asks the store (bounded by `store_timeout_ms` for remote stores)
//! and applies `on_store_error` when the store cannot answer. Stores only
//! count; what a decision means for the response is decided here and in
//! `proxy`.

pub mod memory;
pub mod store;
pub mod window;

use std::sync::Arc;

use crate::config::{LimiterConfig, OnStoreError, Tenant};
use crate::endpoint::Endpoint;
use crate::reject::Reject;

pub use memory::MemoryStore;
pub use store::{Store, StoreError};

/// One budget: `quota` credits per `window_s` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `account` or an endpoint class name; used in headers and store keys.
    pub name: &'static str,
    pub quota: u32,
    pub window_s: u32,
}

/// What a call asks of the store.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub tenant: &'a str,
    /// Credits to consume from every policy; 0 only reads.
    pub cost: u32,
    pub account: Policy,
    /// The endpoint budget the call also counts against, if its class has one.
    pub endpoint: Option<(Endpoint, Policy)>,
}

impl<'a> Ask<'a> {
    /// The ask for a call of `endpoint` costing `cost` by `tenant`.
    pub fn new(tenant: &'a Tenant, endpoint: Endpoint, cost: u32) -> Ask<'a> {
        let window_s = tenant.window_seconds;
        let account = Policy {
            name: "account",
            quota: tenant.per_minute,
            window_s,
        };
        let endpoint = endpoint.index().and_then(|i| {
            tenant.endpoints[i].map(|quota| {
                (
                    endpoint,
                    Policy {
                        name: endpoint.as_str(),
                        quota,
                        window_s,
                    },
                )
            })
        });
        Ask {
            tenant: &tenant.name,
            cost,
            account,
            endpoint,
        }
    }
}

/// One policy's state after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyState {
    pub policy: Policy,
    /// Credits left after this call.
    pub remaining: u32,
    /// Milliseconds until something held now leaves the window (0: nothing held).
    pub reset_ms: u64,
    /// If this policy refused the call: milliseconds until the call would fit
    /// (`u64::MAX`: its cost exceeds the quota itself).
    pub retry_ms: Option<u64>,
}

impl PolicyState {
    /// From a window verdict; `reset_us` is read after any charge.
    pub fn new(
        policy: Policy,
        v: &window::Verdict,
        allowed: bool,
        cost: u32,
        reset_us: u64,
    ) -> PolicyState {
        let left = if allowed {
            v.left.saturating_sub(u64::from(cost))
        } else {
            v.left
        };
        PolicyState {
            policy,
            remaining: u32::try_from(left).unwrap_or(u32::MAX),
            reset_ms: reset_us.div_ceil(1000),
            retry_ms: (!v.fits).then(|| {
                if v.retry_us == u64::MAX {
                    u64::MAX
                } else {
                    v.retry_us.div_ceil(1000)
                }
            }),
        }
    }

    /// A policy nobody could read (store down, failing open): shown as untouched.
    pub fn unknown(policy: Policy) -> PolicyState {
        PolicyState {
            policy,
            remaining: policy.quota,
            reset_ms: 0,
            retry_ms: None,
        }
    }
}

/// The limiter's answer for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// What the call cost (0 when refused: a 429 is never charged).
    pub cost: u32,
    pub account: PolicyState,
    pub endpoint: Option<PolicyState>,
    /// True when the store could not answer and `fail_open` let the call through.
    pub degraded: bool,
}

impl Decision {
    /// The credits actually consumed by this call.
    pub fn charged(&self) -> u32 {
        if self.allowed && !self.degraded {
            self.cost
        } else {
            0
        }
    }

    /// The tighter policy: the one with the least left (the endpoint on a tie).
    pub fn tighter(&self) -> &PolicyState {
        match &self.endpoint {
            Some(e) if e.remaining <= self.account.remaining => e,
            _ => &self.account,
        }
    }

    /// The refusing policy that keeps the call out longest, if any.
    pub fn blocking(&self) -> Option<&PolicyState> {
        [Some(&self.account), self.endpoint.as_ref()]
            .into_iter()
            .flatten()
            .filter(|p| p.retry_ms.is_some())
            .max_by_key(|p| p.retry_ms)
    }

    /// The 429 for a refused decision. `Retry-After` rounds up: never early.
    pub fn reject(&self) -> Reject {
        let p = self.blocking().unwrap_or(&self.account);
        let retry_ms = p.retry_ms.unwrap_or(0);
        let retry_after_s = if retry_ms == u64::MAX {
            // The cost exceeds the quota: no wait helps; tell the window length.
            u64::from(p.policy.window_s)
        } else {
            retry_ms.div_ceil(1000).max(1)
        };
        Reject::RateLimited {
            policy: p.policy.name,
            quota: p.policy.quota,
            window_s: p.policy.window_s,
            retry_after_s,
        }
    }
}

/// The store a replica uses.
pub enum AnyStore {
    Memory(MemoryStore),
}

/// Budgets for every tenant, through one store.
pub struct Limiter {
    store: AnyStore,
    on_store_error: OnStoreError,
}

impl Limiter {
    /// A limiter over `store`, configured by `[limiter]`.
    pub fn new(store: AnyStore, cfg: &LimiterConfig) -> Limiter {
        Limiter {
            store,
            on_store_error: cfg.on_store_error,
        }
    }

    /// An in-memory limiter (tests, demo, `store = "memory"`).
    pub fn memory(cfg: &LimiterConfig) -> Arc<Limiter> {
        Arc::new(Limiter::new(AnyStore::Memory(MemoryStore::new()), cfg))
    }

    /// Builds the store `[limiter]` names. (Memory only until the Redis store lands.)
    pub async fn from_config(cfg: &LimiterConfig) -> Result<Arc<Limiter>, StoreError> {
        match &cfg.store {
            crate::config::StoreKind::Memory => Ok(Limiter::memory(cfg)),
            _ => Err(StoreError::Backend(
                "the redis store is not built yet".into(),
            )),
        }
    }

    /// For `/readyz`: the store answers, or failing open makes that moot.
    pub fn ready(&self) -> bool {
        true
    }

    /// Judges and, if it fits, charges a call. `Err` only when the store
    /// cannot answer and the config says to fail closed.
    pub async fn acquire(&self, ask: &Ask<'_>) -> Result<Decision, Reject> {
        let result = match &self.store {
            AnyStore::Memory(m) => Ok(m.acquire_now(ask)),
        };
        match result {
            Ok(d) => Ok(d),
            Err::<_, StoreError>(e) => self.store_failed(ask, &e),
        }
    }

    fn store_failed(&self, ask: &Ask<'_>, e: &StoreError) -> Result<Decision, Reject> {
        tracing::warn!(tenant = ask.tenant, error = %e, "rate-limit store failed");
        match self.on_store_error {
            OnStoreError::FailOpen => Ok(Decision {
                allowed: true,
                cost: ask.cost,
                account: PolicyState::unknown(ask.account),
                endpoint: ask.endpoint.map(|(_, p)| PolicyState::unknown(p)),
                degraded: true,
            }),
            OnStoreError::FailClosed => Err(Reject::ServiceUnavailable { retry_after_s: 1 }),
        }
    }
}
