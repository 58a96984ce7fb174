//! The queue of webhooks (docs/reference.md "Webhook egress"): one seam, two backends.
//!
//! Both keep the same three places — *due* (ordered by the time the next
//! attempt may start), *in flight* (ordered by lease deadline) and *finished*
//! (kept [`RETENTION`] for `GET` and idempotency) — and the same four moves:
//! `create` (new, claimed by its creator, or the existing record when the id
//! is known), `claim` (due or lease-expired → in flight under a fresh token),
//! `renew` (the holder pushes its lease deadline out while an attempt runs),
//! `finish` (only by the token's holder: back to due, or finished) and `get`.
//! `create` also enforces the per-tenant bound: a tenant with
//! `max_queued_per_tenant` webhooks waiting or in flight gets [`Created::Full`].
//!
//! The memory queue lives and dies with the process: a restart loses it.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::redis_queue::RedisQueue;
use super::{Spec, State};
use crate::config::{LimiterConfig, StoreKind};

/// How long a delivered or dropped webhook stays readable (and its id
/// remembered, so posting it again does nothing).
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);

/// The queue could not answer (Redis down or too slow).
#[derive(Debug, thiserror::Error)]
#[error("webhook queue: {0}")]
pub struct QueueError(pub String);

/// A stored webhook.
#[derive(Debug, Clone)]
pub struct Record {
    pub spec: Arc<Spec>,
    pub state: State,
    /// Queue clock, epoch ms.
    pub accepted_ms: u64,
}

/// What `create` found.
#[derive(Debug)]
pub enum Created {
    /// Stored and claimed by the caller under its token; `now_ms` is the
    /// queue clock at creation (= accepted time).
    New { now_ms: u64 },
    /// The id was already known: nothing stored, nothing to do.
    Existing(Record),
    /// The tenant already has `queued` webhooks waiting or in flight, at
    /// its bound: nothing stored.
    Full { queued: u64 },
}

/// One webhook claimed by this replica.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    pub token: String,
    pub record: Record,
    /// Queue clock at the claim, and the local instant it was read: together
    /// they give the queue's "now" during the attempt without asking again.
    pub claimed_ms: u64,
    pub claimed_at: Instant,
    /// A local instant no later than the moment the queue set the lease:
    /// the lease surely holds until `held_from + lease` (see `dispatch::under_lease`).
    pub held_from: Instant,
}

impl Claimed {
    /// The queue clock now (epoch ms), from the claim time and local elapsed time.
    pub fn now_ms(&self) -> u64 {
        self.claimed_ms + self.claimed_at.elapsed().as_millis() as u64
    }
}

/// What one `claim` returned.
#[derive(Debug, Default)]
pub struct Batch {
    pub now_ms: u64,
    /// Webhooks waiting or in flight.
    pub depth: u64,
    /// The earliest due time or lease deadline left, if any.
    pub next_ms: Option<u64>,
    /// Claimed jobs and, for records that could not be read, their
    /// tenants, ids and tokens.
    pub jobs: Vec<Claimed>,
    pub unreadable: Vec<Unreadable>,
}

/// A claimed record that could not be read back.
#[derive(Debug, Clone)]
pub struct Unreadable {
    pub tenant: String,
    pub id: String,
    pub token: String,
}

/// Where `finish` puts a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Back to the due set, attempt at this time (epoch ms, queue clock).
    Due(u64),
    /// Delivered or dropped.
    Done,
}

/// The queue `[limiter]` implies.
pub enum Queue {
    Memory(MemoryQueue),
    /// Boxed: the scripts and connection make it much larger than the memory queue.
    Redis(Box<RedisQueue>),
}

impl Queue {
    /// Memory for `store = "memory"`, Redis for `redis_url` or `redis_cluster`.
    /// `id_ttl` bounds how long the Redis id index remembers an id (a
    /// webhook's longest life plus [`RETENTION`]).
    pub fn from_config(cfg: &LimiterConfig, id_ttl: Duration) -> Result<Queue, String> {
        match &cfg.store {
            StoreKind::Memory => Ok(Queue::Memory(MemoryQueue::new())),
            StoreKind::RedisSentinel { .. } => Err(
                "the webhook queue runs on redis_url or redis_cluster; redis_sentinel is not supported for [webhooks] yet"
                    .to_owned(),
            ),
            kind => Ok(Queue::Redis(Box::new(RedisQueue::new(kind, &cfg.key_prefix, id_ttl)?))),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Queue::Memory(_) => "memory",
            Queue::Redis(_) => "redis",
        }
    }

    pub async fn create(
        &self,
        id: &str,
        spec: &Arc<Spec>,
        token: &str,
        lease_ms: u64,
        max_queued: u64,
    ) -> Result<Created, QueueError> {
        match self {
            Queue::Memory(q) => Ok(q.create(id, spec, token, lease_ms, max_queued)),
            Queue::Redis(q) => q.create(id, spec, token, lease_ms, max_queued).await,
        }
    }

    /// Pushes the lease of a held webhook to `lease_ms` from now. `Ok(false)`:
    /// the token no longer holds it.
    pub async fn renew(&self, tenant: &str, id: &str, token: &str, lease_ms: u64) -> Result<bool, QueueError> {
        match self {
            Queue::Memory(q) => Ok(q.renew(id, token, lease_ms)),
            Queue::Redis(q) => q.renew(tenant, id, token, lease_ms).await,
        }
    }

    pub async fn claim(&self, max: usize, lease_ms: u64) -> Result<Batch, QueueError> {
        match self {
            Queue::Memory(q) => Ok(q.claim(max, lease_ms)),
            Queue::Redis(q) => q.claim(max, lease_ms).await,
        }
    }

    /// `Ok(false)`: the token no longer holds the webhook (its lease expired
    /// and another claim took it over); nothing was written.
    pub async fn finish(
        &self,
        tenant: &str,
        id: &str,
        token: &str,
        state: &State,
        next: Next,
    ) -> Result<bool, QueueError> {
        match self {
            Queue::Memory(q) => Ok(q.finish(id, token, state, next)),
            Queue::Redis(q) => q.finish(tenant, id, token, state, next).await,
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<Record>, QueueError> {
        match self {
            Queue::Memory(q) => Ok(q.get(id)),
            Queue::Redis(q) => q.get(id).await,
        }
    }
}

/// A fresh claim token: unique per claim, so a stale holder can never write.
pub fn token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[derive(Debug)]
struct Entry {
    record: Record,
    /// Due time while in the due set.
    due: Option<u64>,
    /// Lease deadline and holder while in flight.
    lease: Option<(u64, String)>,
}

#[derive(Debug, Default)]
struct Inner {
    jobs: HashMap<String, Entry>,
    due: BTreeSet<(u64, String)>,
    inflight: BTreeSet<(u64, String)>,
    /// (finished at, id), oldest first, for pruning after [`RETENTION`].
    finished: VecDeque<(u64, String)>,
    /// Per tenant: webhooks waiting or in flight (absent: none).
    queued: HashMap<Arc<str>, u64>,
}

/// The in-process queue (`store = "memory"`). Lost on restart.
///
/// A `std::sync::Mutex`: every critical section is a few map and set
/// operations and never spans an `.await`.
pub struct MemoryQueue {
    inner: Mutex<Inner>,
    /// Epoch ms at `base`: the clock is wall time at start plus tokio's
    /// monotonic time since, so it never jumps and tests may pause it.
    base_ms: u64,
    base: Instant,
}

impl Default for MemoryQueue {
    fn default() -> Self {
        MemoryQueue::new()
    }
}

impl MemoryQueue {
    pub fn new() -> MemoryQueue {
        MemoryQueue { inner: Mutex::new(Inner::default()), base_ms: super::wall_ms(), base: Instant::now() }
    }

    fn now_ms(&self) -> u64 {
        self.base_ms + self.base.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Poisoning only follows a panic in the short sections below, which
        // leave the sets consistent at every step; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn create(&self, id: &str, spec: &Arc<Spec>, token: &str, lease_ms: u64, max_queued: u64) -> Created {
        let now = self.now_ms();
        let mut inner = self.lock();
        if let Some(e) = inner.jobs.get(id) {
            return Created::Existing(e.record.clone());
        }
        let queued = inner.queued.get(spec.tenant.as_str()).copied().unwrap_or(0);
        if queued >= max_queued {
            return Created::Full { queued };
        }
        *inner.queued.entry(Arc::from(spec.tenant.as_str())).or_insert(0) += 1;
        let until = now + lease_ms;
        inner.inflight.insert((until, id.to_owned()));
        inner.jobs.insert(
            id.to_owned(),
            Entry {
                record: Record { spec: spec.clone(), state: State::accepted(), accepted_ms: now },
                due: None,
                lease: Some((until, token.to_owned())),
            },
        );
        Created::New { now_ms: now }
    }

    fn claim(&self, max: usize, lease_ms: u64) -> Batch {
        // Read before the clock the lease is set from, so it never overstates the lease.
        let held_from = Instant::now();
        let now = self.now_ms();
        let claimed_at = Instant::now();
        let mut inner = self.lock();
        let inner = &mut *inner;
        while let Some((at, id)) = inner.finished.front().cloned() {
            if at + RETENTION.as_millis() as u64 > now {
                break;
            }
            inner.finished.pop_front();
            if inner.jobs.get(&id).is_some_and(|e| e.record.state.status.is_final()) {
                inner.jobs.remove(&id);
            }
        }
        let mut jobs = Vec::new();
        // Expired leases first: their webhooks have waited longest.
        for from_inflight in [true, false] {
            while jobs.len() < max {
                let set = if from_inflight { &mut inner.inflight } else { &mut inner.due };
                let Some((at, id)) = set.first().cloned() else {
                    break;
                };
                if at > now {
                    break;
                }
                set.remove(&(at, id.clone()));
                let Some(e) = inner.jobs.get_mut(&id) else {
                    continue;
                };
                let t = token();
                let until = now + lease_ms;
                e.due = None;
                e.lease = Some((until, t.clone()));
                inner.inflight.insert((until, id.clone()));
                jobs.push(Claimed { id, token: t, record: e.record.clone(), claimed_ms: now, claimed_at, held_from });
            }
        }
        let next_ms = [inner.due.first(), inner.inflight.first()].into_iter().flatten().map(|(at, _)| *at).min();
        Batch {
            now_ms: now,
            depth: (inner.due.len() + inner.inflight.len()) as u64,
            next_ms,
            jobs,
            unreadable: Vec::new(),
        }
    }

    fn finish(&self, id: &str, token: &str, state: &State, next: Next) -> bool {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some(e) = inner.jobs.get_mut(id) else {
            return false;
        };
        let Some((until, _)) = e.lease.as_ref().filter(|(_, t)| t == token).cloned() else {
            return false;
        };
        inner.inflight.remove(&(until, id.to_owned()));
        e.lease = None;
        e.record.state = state.clone();
        match next {
            Next::Due(at) => {
                e.due = Some(at);
                inner.due.insert((at, id.to_owned()));
            }
            Next::Done => {
                let at = state.finished_ms.unwrap_or_else(|| self.now_ms());
                inner.finished.push_back((at, id.to_owned()));
                let tenant = e.record.spec.tenant.as_str();
                if let Some(n) = inner.queued.get_mut(tenant) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        inner.queued.remove(tenant);
                    }
                }
            }
        }
        true
    }

    fn renew(&self, id: &str, token: &str, lease_ms: u64) -> bool {
        let until = self.now_ms() + lease_ms;
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some(e) = inner.jobs.get_mut(id) else {
            return false;
        };
        let Some((old, _)) = e.lease.as_ref().filter(|(_, t)| t == token).cloned() else {
            return false;
        };
        inner.inflight.remove(&(old, id.to_owned()));
        inner.inflight.insert((until, id.to_owned()));
        e.lease = Some((until, token.to_owned()));
        true
    }

    fn get(&self, id: &str) -> Option<Record> {
        self.lock().jobs.get(id).map(|e| e.record.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::Status;

    fn spec() -> Arc<Spec> {
        Arc::new(Spec {
            tenant: "acme".into(),
            url: "http://127.0.0.1:1/x".into(),
            method: "POST".into(),
            headers: vec![],
            body: String::new(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_created_webhook_is_held_by_its_creator_until_the_lease_expires() {
        let q = MemoryQueue::new();
        assert!(matches!(q.create("a", &spec(), "t1", 1000, 10), Created::New { .. }));
        assert!(matches!(q.create("a", &spec(), "t2", 1000, 10), Created::Existing(_)));
        assert!(q.claim(10, 1000).jobs.is_empty(), "still leased");
        tokio::time::advance(Duration::from_millis(1001)).await;
        let b = q.claim(10, 1000);
        assert_eq!(b.jobs.len(), 1, "the expired lease is claimed again");
        let stale = State { status: Status::Delivered, ..State::accepted() };
        assert!(!q.finish("a", "t1", &stale, Next::Done), "old token cannot write");
        assert!(q.finish("a", &b.jobs[0].token, &stale, Next::Done));
        assert_eq!(q.get("a").map(|r| r.state.status), Some(Status::Delivered));
        assert_eq!(q.claim(10, 1000).depth, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_due_webhook_is_not_claimed_before_its_time() {
        let q = MemoryQueue::new();
        let Created::New { now_ms } = q.create("a", &spec(), "t1", 1000, 10) else {
            panic!("new");
        };
        let postponed = State { status: Status::Postponed, due_ms: Some(now_ms + 500), ..State::accepted() };
        assert!(q.finish("a", "t1", &postponed, Next::Due(now_ms + 500)));
        tokio::time::advance(Duration::from_millis(499)).await;
        let b = q.claim(10, 1000);
        assert!(b.jobs.is_empty());
        assert_eq!(b.next_ms, Some(now_ms + 500));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(q.claim(10, 1000).jobs.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewed_lease_is_not_claimed_and_a_stale_token_cannot_renew() {
        let q = MemoryQueue::new();
        assert!(matches!(q.create("a", &spec(), "t1", 1000, 10), Created::New { .. }));
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(q.renew("a", "t1", 1000));
        assert!(!q.renew("a", "other", 1000));
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(q.claim(10, 1000).jobs.is_empty(), "renewed 900 ms ago for 1000 ms");
        tokio::time::advance(Duration::from_millis(101)).await;
        let b = q.claim(10, 1000);
        assert_eq!(b.jobs.len(), 1, "not renewed again: it expires");
        assert!(!q.renew("a", "t1", 1000), "the old holder lost it");
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_at_its_bound_is_refused_until_one_of_its_webhooks_finishes() {
        let q = MemoryQueue::new();
        let other = Arc::new(Spec { tenant: "other".into(), ..(*spec()).clone() });
        assert!(matches!(q.create("a", &spec(), "t1", 1000, 2), Created::New { .. }));
        assert!(matches!(q.create("b", &spec(), "t2", 1000, 2), Created::New { .. }));
        assert!(matches!(q.create("c", &spec(), "t3", 1000, 2), Created::Full { queued: 2 }));
        assert!(matches!(q.create("d", &other, "t4", 1000, 2), Created::New { .. }), "bounds are per tenant");
        assert!(matches!(q.create("a", &spec(), "t5", 1000, 2), Created::Existing(_)), "a known id is no new webhook");
        let done = State { status: Status::Delivered, ..State::accepted() };
        assert!(q.finish("a", "t1", &done, Next::Done));
        assert!(q.get("c").is_none(), "the refused one was not stored");
        assert!(matches!(q.create("c", &spec(), "t6", 1000, 2), Created::New { .. }));
    }
}
