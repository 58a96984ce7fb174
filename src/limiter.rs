//! Budgets (docs/reference.md "Budgets", "Store"): the shared decision logic around a store
//! (memory or Redis, see [`AnyStore`]).
//!
//! `Limiter::acquire` builds the call's [`Ask`] from the tenant's effective
//! budget, asks the store (bounded by `store_timeout_ms` for remote stores)
//! and applies `on_store_error` when the store cannot answer. Stores only
//! count. The limiter answers with data, a [`Decision`] (with its
//! [`Refusal`] when refused) or [`StoreUnavailable`]; the HTTP answer for
//! either is built by `reject` and `headers`.

mod deny;
pub mod memory;
mod reconcile;
pub mod redis;
mod refused;
pub mod store;
pub mod window;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{LimiterConfig, OnStoreError, StoreKind, Tenant};
use crate::endpoint::Endpoint;

use deny::DenyCache;
pub use memory::MemoryStore;
pub use reconcile::Settle;
pub use redis::RedisStore;
use refused::RefusedCredentials;
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
        let account = Policy { name: "account", quota: tenant.per_minute, window_s };
        let endpoint = endpoint.index().and_then(|i| {
            tenant.endpoints[i].map(|quota| (endpoint, Policy { name: endpoint.as_str(), quota, window_s }))
        });
        Ask { tenant: &tenant.name, cost, account, endpoint }
    }

    /// A budget the call's cost alone exceeds, if any: no wait can make
    /// room for it (the window's own `a_cost_above_the_quota_never_fits`).
    /// Budget sizes are config, so this needs no store; the smaller budget
    /// is named when both are exceeded.
    pub fn never_fits(&self) -> Option<Policy> {
        let endpoint = self.endpoint.map(|(_, p)| p).filter(|p| self.cost > p.quota);
        endpoint.or(Some(self.account).filter(|p| self.cost > p.quota))
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
    /// The slot of the store's window that a charge went to (0 when nothing
    /// was charged): what a [`Limiter::refund`] gives back to, so a refund
    /// credits that slot and no other. The store's own clock, not ours.
    pub slot: u64,
}

impl PolicyState {
    /// From a window verdict; `reset_us` is read after any charge.
    pub fn new(policy: Policy, v: &window::Verdict, allowed: bool, cost: u32, reset_us: u64) -> PolicyState {
        let left = if allowed { v.left.saturating_sub(u64::from(cost)) } else { v.left };
        PolicyState {
            policy,
            remaining: u32::try_from(left).unwrap_or(u32::MAX),
            reset_ms: reset_us.div_ceil(1000),
            retry_ms: (!v.fits).then(|| if v.retry_us == u64::MAX { u64::MAX } else { v.retry_us.div_ceil(1000) }),
            slot: 0,
        }
    }

    /// The same, naming the slot its charge went to.
    pub fn charged_to(self, slot: u64) -> PolicyState {
        PolicyState { slot, ..self }
    }

    /// A policy nobody could read (store down, failing open): shown as untouched.
    pub fn unknown(policy: Policy) -> PolicyState {
        PolicyState { policy, remaining: policy.quota, reset_ms: 0, retry_ms: None, slot: 0 }
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

    /// The decision as it reads once `back` was given back: nothing used by
    /// this call, the credits returned to what is left.
    pub fn refunded(&self, back: Refunded) -> Decision {
        let give = |p: &PolicyState, n: u32| PolicyState {
            remaining: p.remaining.saturating_add(n).min(p.policy.quota),
            slot: 0,
            ..*p
        };
        Decision {
            cost: 0,
            account: give(&self.account, back.account),
            endpoint: self.endpoint.as_ref().map(|e| give(e, back.endpoint)),
            ..*self
        }
    }

    /// Why the call was refused, as data for its 429 and `Retry-After`;
    /// `None` when it was let through (degraded or not).
    pub fn refusal(&self) -> Option<Refusal> {
        if self.allowed {
            return None;
        }
        let p = self.blocking().unwrap_or(&self.account);
        let retry_ms = p.retry_ms.unwrap_or(0);
        let retry_after_s = if retry_ms == u64::MAX {
            // The cost exceeds the quota: no wait helps; tell the window
            // length. Of API calls, only a shadowed tenant's gets here (the
            // others' are refused before the store by `Ask::never_fits`,
            // without `Retry-After`); this stays the stores' own defence.
            u64::from(p.policy.window_s)
        } else {
            // Rounded up, and at least 1: a `Retry-After` is never early.
            retry_ms.div_ceil(1000).max(1)
        };
        Some(Refusal { policy: p.policy, retry_after_s })
    }
}

/// What a refund gave back to each window (0 where the charge's slot had
/// already left it: nothing to give back).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refunded {
    pub account: u32,
    pub endpoint: u32,
}

/// A refused call: the policy that keeps it out longest and when to retry.
/// The limiter says this as data; `reject` turns it into the 429 and
/// `headers` into `Retry-After`, so the two cannot disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub policy: Policy,
    /// Whole seconds until the call would fit (the window's length when its
    /// cost exceeds the quota itself).
    pub retry_after_s: u64,
}

/// The store could not answer and `on_store_error = "fail_closed"`: the
/// call is refused (a 503, built by `reject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreUnavailable {
    /// Whole seconds to wait before trying again.
    pub retry_after_s: u64,
}

/// The store a replica uses. A closed enum, not a `dyn Store`: the memory
/// store is answered synchronously on the hot path, with no future to box
/// (see the `store` module for why this, not the trait, is the dispatch).
pub enum AnyStore {
    Memory(MemoryStore),
    Redis(RedisStore),
}

/// Consecutive store failures that open the circuit.
pub const CIRCUIT_FAILURES: u32 = 3;
/// How long an open circuit answers without asking the store before it lets
/// one probe call through.
pub const CIRCUIT_OPEN_FOR: Duration = Duration::from_millis(500);

/// How often a remote store is probed in the background (`PING`), so
/// `/readyz` and `deskgate_store_up` follow the store without waiting for
/// calls to fail, and an open circuit closes again without traffic.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

/// Budgets for every tenant, through one store.
pub struct Limiter {
    /// Whether the latest background probe was answered (true until one fails).
    probe_ok: AtomicBool,
    store: AnyStore,
    on_store_error: OnStoreError,
    store_timeout: Duration,
    circuit: Circuit,
    denials: DenyCache,
    refused: RefusedCredentials,
}

impl Limiter {
    /// A limiter over `store`, configured by `[limiter]`.
    pub fn new(store: AnyStore, cfg: &LimiterConfig) -> Limiter {
        Limiter {
            probe_ok: AtomicBool::new(true),
            store,
            on_store_error: cfg.on_store_error,
            store_timeout: cfg.store_timeout,
            circuit: Circuit::new(),
            denials: DenyCache::default(),
            refused: RefusedCredentials::default(),
        }
    }

    /// An in-memory limiter (tests, demo, `store = "memory"`).
    pub fn memory(cfg: &LimiterConfig) -> Arc<Limiter> {
        Arc::new(Limiter::new(AnyStore::Memory(MemoryStore::new()), cfg))
    }

    /// The limiter `[limiter]` asks for: memory, or Redis (standalone or
    /// cluster). An unreachable Redis is not an error here: it is retried in
    /// the background while `on_store_error` answers.
    pub async fn from_config(cfg: &LimiterConfig) -> Result<Arc<Limiter>, StoreError> {
        let store = match &cfg.store {
            StoreKind::Memory => AnyStore::Memory(MemoryStore::new()),
            kind => AnyStore::Redis(RedisStore::connect(kind, &cfg.key_prefix, cfg.redis_batch).await?),
        };
        let limiter = Arc::new(Limiter::new(store, cfg));
        if matches!(limiter.store, AnyStore::Redis(_)) {
            tokio::spawn(probe_loop(Arc::downgrade(&limiter)));
        }
        Ok(limiter)
    }

    /// One background probe of a remote store: a `PING`. While the circuit
    /// is closed its outcome only feeds readiness (calls alone open the
    /// circuit, as before); while it is open, the ping is the half-open
    /// probe, so the circuit closes again without waiting for a call.
    async fn probe(&self) {
        let AnyStore::Redis(r) = &self.store else { return };
        let start = Instant::now();
        let mut permit = None;
        if !self.circuit.is_closed() {
            let Some(p) = self.circuit.permit(start) else {
                // Open, and not yet time to try again: still down.
                self.probe_ok.store(false, Ordering::Release);
                return;
            };
            permit = Some(p);
        }
        match r.ping_by(start + self.store_timeout).await {
            Ok(()) => {
                if let Some(p) = permit.as_mut() {
                    p.succeeded();
                }
                self.probe_ok.store(true, Ordering::Release);
            }
            Err(e) => {
                if let Some(p) = permit.as_mut() {
                    p.failed(Instant::now(), &e);
                }
                if self.probe_ok.swap(false, Ordering::AcqRel) {
                    tracing::warn!(error = %e, "rate-limit store probe failed");
                }
            }
        }
    }

    /// Whether the store answers: always for memory; for Redis, connected and
    /// the circuit closed (for `/readyz`).
    pub fn store_healthy(&self) -> bool {
        match &self.store {
            AnyStore::Memory(_) => true,
            AnyStore::Redis(r) => r.is_connected() && self.circuit.is_closed() && self.probe_ok.load(Ordering::Acquire),
        }
    }

    /// For `/readyz` (docs/reference.md "Operations"): the store answers, or `fail_open` makes that moot.
    pub fn ready(&self) -> bool {
        self.on_store_error == OnStoreError::FailOpen || self.store_healthy()
    }

    /// Judges and, if it fits, charges a call. `Err` only when the store
    /// cannot answer and the config says to fail closed.
    pub async fn acquire(&self, ask: &Ask<'_>) -> Result<Decision, StoreUnavailable> {
        match &self.store {
            AnyStore::Memory(m) => Ok(m.acquire_now(ask)),
            AnyStore::Redis(r) => self.acquire_remote(r, ask).await,
        }
    }

    /// A remote store: the deny cache first, then the circuit, then one call
    /// bounded by `store_timeout`.
    async fn acquire_remote(&self, store: &RedisStore, ask: &Ask<'_>) -> Result<Decision, StoreUnavailable> {
        let start = Instant::now();
        if let Some(d) = self.denials.check(ask, start) {
            return Ok(d);
        }
        let Some(mut permit) = self.circuit.permit(start) else {
            return self.store_failed(ask, &StoreError::CircuitOpen);
        };
        let result = store.acquire_by(ask, start + self.store_timeout).await;
        match result {
            Ok(d) => {
                permit.succeeded();
                // The store answered: ready again without waiting for the probe.
                if !self.probe_ok.load(Ordering::Relaxed) {
                    self.probe_ok.store(true, Ordering::Release);
                }
                if !d.allowed {
                    self.denials.record(ask, &d, start, Instant::now());
                }
                Ok(d)
            }
            Err(e) => {
                permit.failed(Instant::now(), &e);
                self.store_failed(ask, &e)
            }
        }
    }

    /// Gives back exactly what `charged` (this limiter's decision for `ask`)
    /// charged, to the windows and slots it went to, in one store call; the
    /// decision as it reads after the refund, or `None` when there was
    /// nothing to give back or the store could not (logged: the call then
    /// stays charged, the safe side). For a call the helpdesk never saw or
    /// refused as unauthenticated. Refund a decision once: the store cannot
    /// tell one call's credits from another's in the same slot.
    ///
    /// This replica's deny cache forgets the tenant, so the room made is
    /// seen at once here; another replica's deny cache may still refuse
    /// from memory until its entry's own reset (it errs on refusing).
    pub async fn refund(&self, ask: &Ask<'_>, charged: &Decision) -> Option<Decision> {
        if charged.charged() == 0 {
            return None;
        }
        let back = match &self.store {
            AnyStore::Memory(m) => m.refund_now(ask, charged),
            AnyStore::Redis(r) => {
                let start = Instant::now();
                let mut permit = self.circuit.permit(start)?;
                match r.refund_by(ask, charged, start + self.store_timeout).await {
                    Ok(back) => {
                        permit.succeeded();
                        self.denials.forget(ask.tenant);
                        back
                    }
                    Err(e) => {
                        permit.failed(Instant::now(), &e);
                        tracing::warn!(tenant = ask.tenant, error = %e, "rate-limit store failed; the call stays charged");
                        return None;
                    }
                }
            }
        };
        Some(charged.refunded(back))
    }

    /// Whether any refused credential is remembered (one atomic load): when
    /// not, a call skips the look-up, and even reading its `Authorization`.
    pub fn remembers_refused_credentials(&self) -> bool {
        self.refused.any()
    }

    /// Whether the helpdesk refused `credential` (an `Authorization` value)
    /// for `tenant` less than the refused-credential TTL ago, on this replica.
    pub fn credential_refused(&self, tenant: &str, credential: &[u8], now: Instant) -> bool {
        self.refused.contains(tenant, credential, now)
    }

    /// Remembers that the helpdesk refused `credential` for `tenant`: it is
    /// refused here for `ttl` (a keyed hash is kept, never the credential).
    pub fn remember_refused_credential(&self, tenant: &str, credential: &[u8], ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        self.refused.insert(tenant, credential, now, now + ttl);
    }

    fn store_failed(&self, ask: &Ask<'_>, e: &StoreError) -> Result<Decision, StoreUnavailable> {
        // An open circuit already logged why; one line per call would flood.
        if !matches!(e, StoreError::CircuitOpen) {
            tracing::warn!(tenant = ask.tenant, error = %e, "rate-limit store failed");
        }
        match self.on_store_error {
            OnStoreError::FailOpen => Ok(Decision {
                allowed: true,
                cost: ask.cost,
                account: PolicyState::unknown(ask.account),
                endpoint: ask.endpoint.map(|(_, p)| PolicyState::unknown(p)),
                degraded: true,
            }),
            OnStoreError::FailClosed => Err(StoreUnavailable { retry_after_s: 1 }),
        }
    }
}

/// Probes the store every [`PROBE_EVERY`] while the limiter lives.
async fn probe_loop(limiter: std::sync::Weak<Limiter>) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(limiter) = limiter.upgrade() else { return };
        limiter.probe().await;
    }
}

/// A circuit breaker around the remote store. Closed: every call goes to the
/// store. After [`CIRCUIT_FAILURES`] failures in a row it opens: calls are
/// answered at once per `on_store_error`, without waiting on the store, for
/// [`CIRCUIT_OPEN_FOR`]; then one probe call goes through (half-open) and
/// its outcome closes or reopens the circuit. Lock-free: a few atomics.
struct Circuit {
    epoch: Instant,
    failures: AtomicU32,
    /// Microseconds since `epoch` until which the circuit stays open.
    open_until_us: AtomicU64,
    probing: AtomicBool,
}

impl Circuit {
    fn new() -> Circuit {
        Circuit {
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            open_until_us: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    fn us(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    fn is_closed(&self) -> bool {
        self.failures.load(Ordering::Acquire) < CIRCUIT_FAILURES
    }

    /// May this call ask the store? `None`: answer without it.
    fn permit(&self, now: Instant) -> Option<Permit<'_>> {
        if self.is_closed() {
            return Some(Permit { circuit: self, probe: false, done: false });
        }
        if self.us(now) < self.open_until_us.load(Ordering::Acquire) {
            return None;
        }
        self.probing.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).ok().map(|_| Permit {
            circuit: self,
            probe: true,
            done: false,
        })
    }

    fn open(&self, now: Instant) {
        let until = self.us(now).saturating_add(CIRCUIT_OPEN_FOR.as_micros() as u64);
        self.open_until_us.store(until, Ordering::Release);
    }
}

/// One call's right to use the store; reports how it went.
struct Permit<'a> {
    circuit: &'a Circuit,
    probe: bool,
    done: bool,
}

impl Permit<'_> {
    fn succeeded(&mut self) {
        self.done = true;
        let before = self.circuit.failures.swap(0, Ordering::AcqRel);
        if before >= CIRCUIT_FAILURES {
            tracing::info!("rate-limit store answers again; circuit closed");
        }
        if self.probe {
            self.circuit.probing.store(false, Ordering::Release);
        }
    }

    fn failed(&mut self, now: Instant, e: &StoreError) {
        self.done = true;
        let n = self.circuit.failures.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        if n >= CIRCUIT_FAILURES {
            self.circuit.open(now);
            if n == CIRCUIT_FAILURES {
                tracing::error!(error = %e, open_for_ms = CIRCUIT_OPEN_FOR.as_millis() as u64,
                    "rate-limit store failed {n} times in a row; circuit open");
            }
        }
        if self.probe {
            self.circuit.probing.store(false, Ordering::Release);
        }
    }
}

impl Drop for Permit<'_> {
    /// A call dropped mid-flight (its request was cancelled) must not leave
    /// the circuit waiting for a probe that will never report.
    fn drop(&mut self) {
        if self.probe && !self.done {
            self.circuit.open(Instant::now());
            self.circuit.probing.store(false, Ordering::Release);
        }
    }
}
