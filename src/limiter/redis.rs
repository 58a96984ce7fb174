//! Redis store (docs/reference.md "Store" `redis`): standalone, Redis Cluster
//! or a primary found through Redis Sentinel, one script call per decision.
//! The only file that imports `redis`.
//!
//! # Keys and memory
//!
//! One key per tenant, `<key_prefix>:{<tenant>}:rl`, holds every window of
//! that tenant (account and endpoint classes) as one string at fixed
//! offsets: five 24-byte section headers, then one ring of 121 two-byte
//! per-slot counters per section — the ring of [`super::window`] — and, only
//! for a quota above 65,535, the counters' high halves (layout and reasons in
//! `window.lua`). The tenant in braces is the Redis Cluster hash tag, so the
//! script's one key always has a slot (braces and `%` in tenant names are
//! percent-escaped). Memory per tenant is bounded whatever the budget: at
//! most 2,548 bytes of value; an Enterprise tenant with the account and all
//! four endpoint windows busy is 1,338 bytes, which `MEMORY USAGE` reports
//! at about 1.6 KB (see the test
//! `an_enterprise_tenant_costs_under_two_kilobytes_of_redis_memory`). Keys
//! expire by themselves once the last charged slot has left every window
//! (plus up to a second).
//!
//! # One round trip
//!
//! `window.lua` reads the clock (`TIME`, so replicas with skewed clocks
//! agree), reads the headers it needs (`GETRANGE`), evicts, judges every
//! window, charges all or none, and writes back only the bytes that changed
//! (`SETRANGE`; a ring cell once per slot, `PEXPIRE` at most once a second
//! per tenant). That costs Redis less time per call than a sorted-set log
//! (see the test `the_script_and_a_sorted_set_log_report_their_redis_cpu`).
//! It answers with one packed string. It is sent as `EVALSHA`; on
//! `NOSCRIPT` (a restarted or flushed Redis) it is loaded and sent again.
//!
//! # Refunds
//!
//! The script answers, per policy, the slot a charge went to (the
//! [`PolicyState::slot`] of the decision). A call the helpdesk never
//! received or answered 401 is given back by `refund.lua`: one more script
//! call on the same key (so on a cluster it goes to the tenant's own slot),
//! made only for such calls, that decrements exactly those slots, never
//! below zero, does nothing for a slot that has left the window or a window
//! restarted since, and never creates a key.
//!
//! # Batches
//!
//! With standalone Redis, calls that wait for the store at the same moment
//! share one `EVALSHA`: a call queues its key and arguments, and the first
//! one into an empty queue spawns a flush, which runs once the tasks that are
//! ready now have run — so under load it takes every call decided in the
//! same turn of the event loop (in script calls of up to [`MAX_BATCH`]
//! calls, sent side by side), and a lone call goes
//! out alone, at once. The script decides them one after the other, each
//! exactly as if alone, on one reading of `TIME`; Redis pays its fixed cost
//! per script call and its socket calls once per batch (under load that
//! saves a quarter of its CPU per decision: BENCHMARKS.md), and the gateway
//! builds, sends and parses one command. The batch goes grouped by tenant,
//! and the script reads and writes a tenant's header block once per group;
//! the same call again in a group is decided on the numbers the previous one
//! left (a burst of one tenant's endpoint costs Redis about a third of what
//! calls of different tenants cost each: BENCHMARKS.md).
//! Every call still costs at most one round trip, and a batch is atomic like
//! a single call, so exactness across replicas is unchanged. A key of
//! another type fails only its own call. A cluster gets no batches (each
//! tenant's key lives in its own slot); `[limiter] redis_batch = false` turns
//! them off for comparison.
//!
//! # Connections
//!
//! Standalone uses a [`ConnectionManager`] (a multiplexed connection that
//! reconnects by itself); a cluster uses the multiplexed
//! [`ClusterConnection`], which follows slot moves and reconnects too. If
//! Redis is down when the gateway starts, the first connection is retried in
//! the background: calls fail (and `on_store_error` applies) until it is up.
//! Behind Sentinel, the primary the sentinels name gets a standalone
//! connection (batches included), and `follow_primary` swaps in a new one
//! when the primary moves (see `hear_switches` for why it listens to the
//! sentinels' announcements rather than only polling them).
//! Timeouts and the circuit breaker live in [`super::Limiter`]: no call
//! waits for a connection being made — it fails at once, or waits within
//! its own deadline for the reconnect already under way.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{RedisConnectionInfo, TlsMode};
use tokio::sync::oneshot;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::store::{Store, StoreError};
use super::window::{self, Verdict};
use super::{Ask, Decision, Policy, PolicyState, Refunded};
use crate::config::StoreKind;

/// How long the first connection attempt may take before `connect` returns
/// anyway (and keeps trying in the background).
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(2);
/// Per-attempt TCP/TLS connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Backstop for a Redis that accepts but never answers; `Limiter` gives up
/// much earlier (`store_timeout_ms`), this only frees the pipeline slot.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest pause between background reconnect attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// How often the sentinels are asked where the primary is while calls
/// succeed: finds a failover no call has run into yet.
const SENTINEL_POLL: Duration = Duration::from_secs(1);
/// Least time between two questions to the sentinels while calls fail.
const SENTINEL_RETRY: Duration = Duration::from_millis(100);
/// Longest a promotion announced by a sentinel is followed without the
/// sentinels naming the new primary: a failover neither switched nor
/// aborted by then is left to what the sentinels say.
const FAILOVER_HOLD: Duration = Duration::from_secs(10);
/// Most calls decided by one script call: bounds how long one batch holds
/// Redis (about half a millisecond), since Redis runs scripts one at a time.
pub const MAX_BATCH: usize = 64;

/// The script, loaded once per Redis and then called by its SHA1.
const WINDOW_LUA: &str = include_str!("window.lua");
/// Gives back one call's charge (rare: a call the helpdesk never received or
/// refused as unauthenticated), on the same key.
const REFUND_LUA: &str = include_str!("refund.lua");
/// Charges what the helpdesk reports (rare: an answer that disagrees with
/// the gateway's count, or a helpdesk 429), on the same key.
const RECONCILE_LUA: &str = include_str!("reconcile.lua");

#[derive(Clone)]
enum Conn {
    Single(Box<ConnectionManager>),
    Cluster(ClusterConnection),
}

enum Target {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
    Sentinel(Box<SentinelTarget>),
}

/// A primary found through Redis Sentinel, and followed when it moves.
struct SentinelTarget {
    sentinels: Vec<String>,
    master: String,
    /// How to reach the primary the sentinels name: its credentials, TLS.
    node: SentinelNodeConnectionInfo,
    /// Woken when a call fails: the primary may have moved.
    trouble: Notify,
    /// The replica being promoted, from the moment a sentinel announced it
    /// until the switch (or an abort, or [`FAILOVER_HOLD`]).
    promoting: Mutex<Option<Promotion>>,
}

struct Inner {
    target: Target,
    conn: ArcSwapOption<Conn>,
    connecting: AtomicBool,
    script: redis::Script,
    refund: redis::Script,
    reconcile: redis::Script,
    /// Calls waiting for the next batch. A std mutex: held only to push or
    /// to take, never across an await.
    queue: Mutex<Vec<Waiting>>,
    batch: bool,
}

/// A call waiting for its batch.
struct Waiting {
    key: String,
    args: Args,
    reply_len: usize,
    /// When its caller's `store_timeout_ms` runs out.
    deadline: Instant,
    tx: oneshot::Sender<Result<Bytes, StoreError>>,
}

/// Budgets shared by every replica through Redis.
pub struct RedisStore {
    inner: Arc<Inner>,
    key_prefix: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("key_prefix", &self.key_prefix)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl RedisStore {
    /// A store for `kind` (`Redis` or `RedisCluster`). Fails only for a
    /// config it cannot use (a bad URL, the memory kind); an unreachable
    /// Redis is retried in the background. `batch` (`[limiter] redis_batch`)
    /// lets calls of one turn share an `EVALSHA`; a cluster ignores it.
    pub async fn connect(kind: &StoreKind, key_prefix: &str, batch: bool) -> Result<RedisStore, StoreError> {
        let target = match kind {
            StoreKind::Redis { url } => Target::Single(redis::Client::open(url.as_str()).map_err(backend)?),
            StoreKind::RedisCluster { urls } => Target::Cluster(
                ClusterClientBuilder::new(urls.iter().map(String::as_str))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(2)
                    .min_retry_wait(10)
                    .max_retry_wait(200)
                    .build()
                    .map_err(backend)?,
            ),
            StoreKind::RedisSentinel { sentinels, master, username, password } => {
                // Built once here so a URL it cannot use fails the start.
                Sentinel::build(sentinels.clone()).map_err(backend)?;
                let tls = sentinels.first().filter(|u| u.starts_with("rediss://")).map(|u| {
                    if u.ends_with("#insecure") {
                        TlsMode::Insecure
                    } else {
                        TlsMode::Secure
                    }
                });
                let redis = RedisConnectionInfo {
                    username: username.clone(),
                    password: password.clone(),
                    ..Default::default()
                };
                let node = SentinelNodeConnectionInfo { tls_mode: tls, redis_connection_info: Some(redis) };
                Target::Sentinel(Box::new(SentinelTarget {
                    sentinels: sentinels.clone(),
                    master: master.clone(),
                    node,
                    trouble: Notify::new(),
                    promoting: Mutex::new(None),
                }))
            }
            StoreKind::Memory => return Err(StoreError::Backend("the memory store is not a Redis store".into())),
        };
        // A cluster spreads tenants over slots: one key per script call.
        let batch = batch && !matches!(target, Target::Cluster(_));
        let inner = Arc::new(Inner {
            target,
            conn: ArcSwapOption::empty(),
            connecting: AtomicBool::new(true),
            script: redis::Script::new(WINDOW_LUA),
            refund: redis::Script::new(REFUND_LUA),
            reconcile: redis::Script::new(RECONCILE_LUA),
            queue: Mutex::new(Vec::new()),
            batch,
        });
        tokio::spawn(connect_loop(Arc::downgrade(&inner)));
        // Usually connected at once; otherwise the loop keeps going on its own.
        let connected = async {
            while inner.conn.load().is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let _ = tokio::time::timeout(FIRST_CONNECT_WAIT, connected).await;
        Ok(RedisStore { inner, key_prefix: key_prefix.to_owned() })
    }

    /// Whether a connection is established (it may still be reconnecting).
    pub fn is_connected(&self) -> bool {
        self.inner.conn.load().is_some()
    }

    /// The key holding `tenant`'s windows.
    pub fn key(&self, tenant: &str) -> String {
        key(&self.key_prefix, tenant)
    }

    /// Like [`Store::acquire`], on a given store clock instead of Redis
    /// `TIME` (tests pin the script's arithmetic with it).
    #[doc(hidden)]
    pub async fn acquire_at(&self, ask: &Ask<'_>, now_us: u64) -> Result<Decision, StoreError> {
        self.run(ask, Some(now_us)).await
    }

    /// Several calls in one script call, as a batch sends them, on a given
    /// store clock (tests pin a batch's arithmetic with it). Standalone only.
    #[doc(hidden)]
    pub async fn acquire_batch_at(
        &self,
        asks: &[Ask<'_>],
        now_us: u64,
    ) -> Result<Vec<Result<Decision, StoreError>>, StoreError> {
        let Some(Conn::Single(c)) = self.inner.conn.load().as_deref().cloned() else {
            return Err(StoreError::Backend("batches need a standalone Redis connection".into()));
        };
        let mut conn = *c;
        let calls = asks.iter().map(|a| Ok((self.key(a.tenant), pack_args(a)?))).collect::<Result<Vec<_>, _>>()?;
        let cmd = evalsha_cmd(&self.inner.script, calls.iter().map(|(k, a)| (k.as_str(), a.as_slice())), Some(now_us));
        load_script(&mut conn).await.map_err(backend)?;
        let reply: Vec<u8> = cmd.query_async(&mut conn).await.map_err(backend)?;
        let mut at = 0;
        let mut out = Vec::with_capacity(asks.len());
        for a in asks {
            let end = (at + reply_len(a)).min(reply.len());
            out.push(decide(a, &reply[at..end]));
            at = end;
        }
        Ok(out)
    }

    /// One call in a script call of its own.
    async fn run(&self, ask: &Ask<'_>, now_us: Option<u64>) -> Result<Decision, StoreError> {
        let reply = self.invoke(&self.inner.script, ask.tenant, pack_args(ask)?.as_slice(), now_us).await?;
        decide(ask, &reply)
    }

    /// One call of `script` on `tenant`'s key with `args` (and, for tests, a
    /// store clock in place of Redis `TIME`): one round trip.
    async fn invoke(
        &self,
        script: &redis::Script,
        tenant: &str,
        args: &[u8],
        now_us: Option<u64>,
    ) -> Result<Vec<u8>, StoreError> {
        let mut conn = self.conn()?;
        let mut inv = script.key(self.key(tenant));
        inv.arg(args);
        if let Some(now) = now_us {
            inv.arg(now);
        }
        match &mut conn {
            Conn::Single(c) => inv.invoke_async(&mut **c).await,
            Conn::Cluster(c) => inv.invoke_async(c).await,
        }
        .map_err(backend)
    }

    /// Like [`Store::acquire`], answered by `deadline` at the latest
    /// ([`StoreError::Timeout`]). A call in a batch has no timer of its own:
    /// its batch's one timer runs out at the earliest deadline among its
    /// calls (registering and cancelling a timer per call cost ~4 % of a
    /// batched call's instructions: BENCHMARKS.md). So a call may time out
    /// early by the time between its batch's first call and itself — they
    /// were decided in the same turn of the event loop: well under a
    /// millisecond.
    pub async fn acquire_by(&self, ask: &Ask<'_>, deadline: Instant) -> Result<Decision, StoreError> {
        let result = if self.inner.batch && self.inner.conn.load().is_some() {
            self.batched(ask, deadline).await
        } else {
            tokio::time::timeout_at(deadline, self.run(ask, None)).await.unwrap_or(Err(StoreError::Timeout))
        };
        if result.is_err() {
            self.inner.troubled();
        }
        result
    }

    /// One call in the next batch (see the module's doc).
    async fn batched(&self, ask: &Ask<'_>, deadline: Instant) -> Result<Decision, StoreError> {
        let (tx, rx) = oneshot::channel();
        let waiting =
            Waiting { key: self.key(ask.tenant), args: pack_args(ask)?, reply_len: reply_len(ask), deadline, tx };
        let first = {
            let mut queue = self.inner.queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.push(waiting);
            queue.len() == 1
        };
        // The queue was empty, so no flush is pending: this call starts one.
        if first {
            tokio::spawn(flush(Arc::clone(&self.inner)));
        }
        let reply = rx.await.map_err(|_| StoreError::Backend("the Redis batch was abandoned".into()))??;
        decide(ask, &reply)
    }

    /// Like [`Store::refund`], answered by `deadline` at the latest: one
    /// script call (`refund.lua`) on the tenant's key, which decrements
    /// exactly the slots `charged` names.
    pub async fn refund_by(
        &self,
        ask: &Ask<'_>,
        charged: &Decision,
        deadline: Instant,
    ) -> Result<Refunded, StoreError> {
        let result = tokio::time::timeout_at(deadline, self.refund_run(ask, charged, None))
            .await
            .unwrap_or(Err(StoreError::Timeout));
        if result.is_err() {
            self.inner.troubled();
        }
        result
    }

    /// Like [`Store::refund`], on a given store clock (tests).
    #[doc(hidden)]
    pub async fn refund_at(&self, ask: &Ask<'_>, charged: &Decision, now_us: u64) -> Result<Refunded, StoreError> {
        self.refund_run(ask, charged, Some(now_us)).await
    }

    async fn refund_run(&self, ask: &Ask<'_>, charged: &Decision, now_us: Option<u64>) -> Result<Refunded, StoreError> {
        let cost = charged.charged();
        if cost == 0 {
            return Ok(Refunded::default());
        }
        let mut args = Vec::with_capacity(5 + 2 * 15);
        args.extend_from_slice(&cost.to_be_bytes());
        let policies = [
            Some((0u8, ask.account, charged.account.slot)),
            ask.endpoint.zip(charged.endpoint).map(|((e, p), s)| (e.index().map_or(0, |i| i as u8 + 1), p, s.slot)),
        ];
        args.push(policies.iter().flatten().count() as u8);
        for (id, p, slot) in policies.into_iter().flatten() {
            let slot_us = u32::try_from(window::slot_us(p.window_s))
                .map_err(|_| StoreError::Backend(format!("window of {} s is too long", p.window_s)))?;
            args.push(id);
            args.extend_from_slice(&p.window_s.to_be_bytes());
            args.extend_from_slice(&slot_us.to_be_bytes());
            // The script's slots are u48: ~9e15 slots, far beyond any clock.
            args.extend_from_slice(&slot.to_be_bytes()[2..]);
        }
        let reply = self.invoke(&self.inner.refund, ask.tenant, &args, now_us).await?;
        let int = |b: &[u8]| b.iter().fold(0u32, |v, &x| (v << 8) | u32::from(x));
        match (reply.len(), charged.endpoint.is_some() && ask.endpoint.is_some()) {
            (4, false) => Ok(Refunded { account: int(&reply[..4]), endpoint: 0 }),
            (8, true) => Ok(Refunded { account: int(&reply[..4]), endpoint: int(&reply[4..]) }),
            (n, _) => Err(StoreError::Backend(format!("unexpected refund reply of {n} bytes"))),
        }
    }

    /// Like [`super::Limiter::settle`], answered by `deadline` at the
    /// latest: one script call (`reconcile.lua`) on the tenant's key, which
    /// charges its account window; the credits charged.
    pub async fn settle_by(&self, ask: &Ask<'_>, how: super::Settle, deadline: Instant) -> Result<u32, StoreError> {
        tokio::time::timeout_at(deadline, self.settle_run(ask, how, None)).await.unwrap_or(Err(StoreError::Timeout))
    }

    /// Like [`RedisStore::settle_by`], on a given store clock (tests).
    #[doc(hidden)]
    pub async fn settle_at(&self, ask: &Ask<'_>, how: super::Settle, now_us: u64) -> Result<u32, StoreError> {
        self.settle_run(ask, how, Some(now_us)).await
    }

    async fn settle_run(&self, ask: &Ask<'_>, how: super::Settle, now_us: Option<u64>) -> Result<u32, StoreError> {
        let p = ask.account;
        let slot_us = u32::try_from(window::slot_us(p.window_s))
            .map_err(|_| StoreError::Backend(format!("window of {} s is too long", p.window_s)))?;
        let (mode, arg) = match how {
            super::Settle::Left(left) => (1u8, u64::from(left)),
            // Bounded far below the script's u48 (a Retry-After of years means nothing).
            super::Settle::ClosedFor { ms } => (2u8, ms.min(1 << 40)),
        };
        let mut args = [0u8; 19];
        args[0] = mode;
        args[1..5].copy_from_slice(&p.quota.to_be_bytes());
        args[5..9].copy_from_slice(&p.window_s.to_be_bytes());
        args[9..13].copy_from_slice(&slot_us.to_be_bytes());
        args[13..19].copy_from_slice(&arg.to_be_bytes()[2..]);
        let reply = self.invoke(&self.inner.reconcile, ask.tenant, &args, now_us).await?;
        match <[u8; 4]>::try_from(reply.as_slice()) {
            Ok(b) => Ok(u32::from_be_bytes(b)),
            Err(_) => Err(StoreError::Backend(format!("unexpected reconcile reply of {} bytes", reply.len()))),
        }
    }

    /// One `PING`, answered by `deadline` at the latest: the limiter's
    /// background probe of the store (`/readyz` without traffic).
    pub async fn ping_by(&self, deadline: Instant) -> Result<(), StoreError> {
        let ping = async {
            let cmd = redis::cmd("PING");
            match &mut self.conn()? {
                Conn::Single(c) => cmd.query_async::<()>(&mut **c).await,
                Conn::Cluster(c) => cmd.query_async::<()>(c).await,
            }
            .map_err(backend)
        };
        tokio::time::timeout_at(deadline, ping).await.unwrap_or(Err(StoreError::Timeout))
    }

    fn conn(&self) -> Result<Conn, StoreError> {
        if let Some(c) = self.inner.conn.load().as_deref() {
            return Ok(c.clone());
        }
        // Behind Sentinel, `follow_primary` runs for as long as the store.
        if !matches!(self.inner.target, Target::Sentinel(_)) && !self.inner.connecting.swap(true, Ordering::AcqRel) {
            tokio::spawn(connect_loop(Arc::downgrade(&self.inner)));
        }
        Err(StoreError::Backend("not connected to Redis yet".into()))
    }
}

impl Inner {
    /// A call failed: behind Sentinel, the primary may have moved (or been
    /// demoted: writes answer `READONLY`), so the sentinels are asked now
    /// rather than at the next poll.
    fn troubled(&self) {
        if let Target::Sentinel(s) = &self.target {
            s.trouble.notify_one();
        }
    }
}

impl Store for RedisStore {
    /// Bounded by [`RESPONSE_TIMEOUT`] only: [`super::Limiter`] calls
    /// [`RedisStore::acquire_by`] with the configured `store_timeout_ms`.
    async fn acquire(&self, ask: &Ask<'_>) -> Result<Decision, StoreError> {
        self.acquire_by(ask, Instant::now() + RESPONSE_TIMEOUT).await
    }

    async fn refund(&self, ask: &Ask<'_>, charged: &Decision) -> Result<Refunded, StoreError> {
        self.refund_by(ask, charged, Instant::now() + RESPONSE_TIMEOUT).await
    }
}

/// Sends the queued calls as script calls of up to [`MAX_BATCH`] each, side
/// by side, and hands each call its answer. Runs as its own task, so a caller
/// that gives up (its `store_timeout_ms`, a client gone) never strands the
/// others.
async fn flush(inner: Arc<Inner>) {
    // A task spawned from a worker runs next on that worker (tokio's LIFO
    // slot), as soon as the call that spawned it waits: the flush would take
    // a queue of one, and a burst of calls on separate connections would go
    // out as one script call each — every reply a wake of the connection's
    // task behind the burst's other work, which is what made 120 calls at
    // once outlast a 50 ms store timeout. Yielding once puts the flush
    // behind the tasks that are ready now, so the calls they decide join
    // this batch; a lone call pays one trip through the scheduler. A
    // single-threaded runtime has no LIFO slot: the flush already runs after
    // the tasks that are ready, so it does not pay that trip.
    if tokio::runtime::Handle::current().runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
        tokio::task::yield_now().await;
    }
    // The next batch's queue gets room for a burst at once, rather than
    // growing 4, 8, 16 as its calls come.
    let mut queued =
        std::mem::replace(&mut *inner.queue.lock().unwrap_or_else(PoisonError::into_inner), Vec::with_capacity(16));
    let conn = match inner.conn.load().as_deref() {
        Some(Conn::Single(c)) => Some((**c).clone()),
        // A cluster never batches.
        _ => None,
    };
    // A tenant's calls side by side, in the order they came (a stable sort):
    // the script reads and writes a tenant's header block once per run of
    // its calls. Calls of different tenants touch different keys, so their
    // order changes no decision.
    queued.sort_by(|a, b| a.key.cmp(&b.key));
    if queued.len() <= MAX_BATCH {
        // The usual case: one script call, nothing to split or join.
        return answer(&inner.script, conn, queued).await;
    }
    let mut batches = Vec::with_capacity(queued.len().div_ceil(MAX_BATCH));
    while queued.len() > MAX_BATCH {
        let rest = queued.split_off(MAX_BATCH);
        batches.push(std::mem::replace(&mut queued, rest));
    }
    batches.push(queued);
    futures_util::future::join_all(batches.into_iter().map(|b| answer(&inner.script, conn.clone(), b))).await;
}

/// One script call for `batch`, and each call's share of its answer, by the
/// earliest deadline among its calls (else they all get
/// [`StoreError::Timeout`]).
///
/// A call whose caller has already given up (gone, or its deadline passed:
/// it is answered per `on_store_error`) is left out, so it is not charged
/// behind its back — also when `NOSCRIPT` makes the batch go again. Once the
/// script call is sent, every call in it is decided, as a lone call would be.
async fn answer(script: &redis::Script, conn: Option<ConnectionManager>, mut batch: Vec<Waiting>) {
    let Some(mut conn) = conn else {
        return fail(batch, || StoreError::Backend("not connected to Redis".into()));
    };
    let Some(deadline) = live(&mut batch) else {
        return;
    };
    let sent = tokio::time::timeout_at(deadline, send(script, &mut conn, &mut batch)).await;
    let reply = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return fail(batch, || StoreError::Backend(e.clone())),
        Err(_) => return fail(batch, || StoreError::Timeout),
    };
    let mut at = 0;
    for w in batch {
        // A caller that gave up meanwhile is no error: its answer goes unread.
        let _ = w.tx.send(Ok(reply.slice(at..at + w.reply_len)));
        at += w.reply_len;
    }
}

/// Drops the calls whose callers are gone and answers the ones whose
/// deadline has passed; the earliest deadline left, if any call is.
fn live(batch: &mut Vec<Waiting>) -> Option<Instant> {
    let now = Instant::now();
    batch.retain(|w| !w.tx.is_closed());
    if batch.iter().any(|w| w.deadline <= now) {
        // Rare (the batch left a timeout after its first call came): rebuilt
        // in order, since a tenant's calls must stay in their arrival order.
        for w in std::mem::take(batch) {
            if w.deadline <= now {
                let _ = w.tx.send(Err(StoreError::Timeout));
            } else {
                batch.push(w);
            }
        }
    }
    batch.iter().map(|w| w.deadline).min()
}

/// The script call for `batch` (loading the script and going again after
/// `NOSCRIPT`) and its reply, checked for length.
async fn send(script: &redis::Script, conn: &mut ConnectionManager, batch: &mut Vec<Waiting>) -> Result<Bytes, String> {
    let mut result = evalsha(script, conn, batch).await;
    if matches!(&result, Err(e) if e.kind() == redis::ErrorKind::NoScriptError) {
        // A restarted or flushed Redis: nothing ran. Load and go again.
        load_script(conn).await.map_err(|e| e.to_string())?;
        batch.retain(|w| !w.tx.is_closed());
        if batch.is_empty() {
            return Ok(Bytes::new());
        }
        result = evalsha(script, conn, batch).await;
    }
    let (n, expected) = (batch.len(), batch.iter().map(|w| w.reply_len).sum::<usize>());
    match result {
        Ok(r) if r.len() == expected => Ok(Bytes::from(r)),
        Ok(r) => Err(format!("unexpected script reply of {} bytes for {n} calls", r.len())),
        Err(e) => Err(e.to_string()),
    }
}

fn fail(batch: Vec<Waiting>, error: impl Fn() -> StoreError) {
    for w in batch {
        let _ = w.tx.send(Err(error()));
    }
}

/// `EVALSHA` of the script over the batch's keys and arguments.
async fn evalsha(
    script: &redis::Script,
    conn: &mut ConnectionManager,
    batch: &[Waiting],
) -> redis::RedisResult<Vec<u8>> {
    evalsha_cmd(script, batch.iter().map(|w| (w.key.as_str(), w.args.as_slice())), None).query_async(conn).await
}

/// `EVALSHA` for calls given as (key, packed arguments): the keys, then the
/// arguments in the same order, then the fixed clock if any.
fn evalsha_cmd<'a>(
    script: &redis::Script,
    calls: impl ExactSizeIterator<Item = (&'a str, &'a [u8])> + Clone,
    now_us: Option<u64>,
) -> redis::Cmd {
    // Sized up front: growing the argument lists call by call cost a batch
    // of 16 a dozen reallocations.
    let data = calls.clone().map(|(k, a)| k.len() + a.len()).sum::<usize>() + 64;
    let mut cmd = redis::Cmd::with_capacity(3 + 2 * calls.len() + 1, data);
    cmd.arg("EVALSHA").arg(script.get_hash()).arg(calls.len());
    for (key, _) in calls.clone() {
        cmd.arg(key);
    }
    for (_, args) in calls {
        cmd.arg(args);
    }
    if let Some(now) = now_us {
        cmd.arg(now);
    }
    cmd
}

/// `SCRIPT LOAD` of the window script (after `NOSCRIPT`).
async fn load_script(conn: &mut ConnectionManager) -> redis::RedisResult<String> {
    redis::cmd("SCRIPT").arg("LOAD").arg(WINDOW_LUA).query_async(conn).await
}

/// Connects until it succeeds or the store is dropped. Once connected, the
/// connection types reconnect by themselves.
async fn connect_loop(inner: Weak<Inner>) {
    if inner.upgrade().is_some_and(|i| matches!(i.target, Target::Sentinel(_))) {
        return follow_primary(inner).await;
    }
    let mut delay = Duration::from_millis(50);
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        match open(&strong.target).await {
            Ok(mut c) => {
                // Loaded now, so the first calls after the gateway starts do
                // not meet `NOSCRIPT` and pay two more round trips within
                // their timeout (a Redis restarted later still does: that
                // batch loads it and goes again).
                if let Conn::Single(m) = &mut c {
                    if let Err(e) = load_script(m).await {
                        tracing::warn!(error = %e, "cannot load the rate-limit script yet; it is loaded on first use");
                    }
                }
                strong.conn.store(Some(Arc::new(c)));
                strong.connecting.store(false, Ordering::Release);
                tracing::info!("connected to Redis");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect to Redis; retrying"),
        }
        drop(strong);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RECONNECT_DELAY);
    }
}

async fn open(target: &Target) -> redis::RedisResult<Conn> {
    match target {
        Target::Single(client) => Ok(Conn::Single(Box::new(open_single(client).await?))),
        Target::Cluster(client) => Ok(Conn::Cluster(client.get_async_connection().await?)),
        Target::Sentinel(_) => {
            Err((redis::ErrorKind::ClientError, "a Sentinel primary is opened by follow_primary").into())
        }
    }
}

/// A connection to one Redis server that reconnects by itself.
async fn open_single(client: &redis::Client) -> redis::RedisResult<ConnectionManager> {
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(RESPONSE_TIMEOUT)
        .set_factor(50)
        .set_max_delay(MAX_RECONNECT_DELAY.as_millis() as u64)
        .set_number_of_retries(1);
    ConnectionManager::new_with_config(client.clone(), cfg).await
}

/// Behind Sentinel, for as long as the store lives: asks the sentinels which
/// server is the primary (they check its `ROLE`), at once when a call has
/// failed or a sentinel announced a switch, and every [`SENTINEL_POLL`]
/// otherwise; when it is another one than the connection goes to, connects
/// to it and swaps the connection in. Calls meanwhile fail by
/// `on_store_error`, bounded by their timeout as always.
///
/// A failover in progress ([`SentinelTarget::promoting`], see
/// [`hear_switches`]) goes first: the replica being promoted is used at
/// once, and the old primary not again until the sentinels name it (an
/// aborted failover).
async fn follow_primary(inner: Weak<Inner>) {
    let mut sentinel: Option<Sentinel> = None;
    let mut primary: Option<String> = None;
    let mut failing = false;
    if let Some(strong) = inner.upgrade() {
        if let Target::Sentinel(t) = &strong.target {
            for url in &t.sentinels {
                tokio::spawn(hear_switches(Weak::clone(&inner), url.clone()));
            }
        }
    }
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let Target::Sentinel(t) = &strong.target else {
            return;
        };
        let promoting = t.promoting.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let found = match promoting {
            Some(p) if p.since.elapsed() < FAILOVER_HOLD => {
                if primary.as_deref() == Some(p.addr.as_str()) && strong.conn.load().is_some() {
                    Ok(Ok(None))
                } else {
                    let info = node_info(&t.node, p.host, p.port);
                    tokio::time::timeout(CONNECT_TIMEOUT, connect_primary(redis::Client::open(info)))
                        .await
                        .map(|r| r.map(Some))
                }
            }
            _ => {
                if sentinel.is_none() {
                    sentinel = Sentinel::build(t.sentinels.clone()).ok();
                }
                match sentinel.as_mut() {
                    None => Ok(Err((redis::ErrorKind::ClientError, "no usable sentinel URL").into())),
                    Some(s) => {
                        tokio::time::timeout(CONNECT_TIMEOUT, async {
                            let client = s.async_master_for(&t.master, Some(&t.node)).await?;
                            if primary.as_deref() == Some(client.get_connection_info().addr.to_string().as_str())
                                && strong.conn.load().is_some()
                            {
                                return Ok(None);
                            }
                            connect_primary(Ok(client)).await.map(Some)
                        })
                        .await
                    }
                }
            }
        };
        match found {
            Ok(Ok(None)) => failing = false,
            Ok(Ok(Some((addr, conn)))) => {
                strong.conn.store(Some(Arc::new(Conn::Single(Box::new(conn)))));
                match primary.replace(addr.clone()) {
                    None => {
                        tracing::info!(master = %t.master, primary = %addr, "connected to the Redis primary named by Sentinel")
                    }
                    Some(old) => {
                        tracing::warn!(master = %t.master, primary = %addr, previous = %old, "the Redis primary moved; following it")
                    }
                }
                failing = false;
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(master = %t.master, error = %e, "Sentinel names no reachable primary yet; asking again");
                }
                failing = true;
            }
            Err(_) => {
                if !failing {
                    tracing::warn!(master = %t.master, "the sentinels or the primary they name did not answer in time; asking again");
                }
                failing = true;
                // Its cached sentinel connections may be the ones hanging.
                sentinel = None;
            }
        }
        // While no primary answers (it died and none is promoted yet), ask
        // again soon; otherwise at a failed call, an announcement or the
        // poll. Failed calls come in bursts: one question per
        // SENTINEL_RETRY is plenty; a promotion heard is acted on at once,
        // since the old primary's every charge from now on is lost.
        if !failing {
            tokio::select! {
                () = t.trouble.notified() => {}
                () = tokio::time::sleep(SENTINEL_POLL) => {}
            }
        }
        let promotion = t.promoting.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(|p| p.addr.clone());
        drop(strong);
        if failing || promotion.is_none() || promotion == primary {
            tokio::time::sleep(SENTINEL_RETRY).await;
        }
    }
}

/// A connection to `client`'s server with the window script loaded (as for
/// a standalone Redis, see `connect_loop`), and the server's address.
async fn connect_primary(client: redis::RedisResult<redis::Client>) -> redis::RedisResult<(String, ConnectionManager)> {
    let client = client?;
    let addr = client.get_connection_info().addr.to_string();
    let mut conn = open_single(&client).await?;
    load_script(&mut conn).await?;
    Ok((addr, conn))
}

/// How to reach `host:port`, a server of the set the sentinels watch.
fn node_info(node: &SentinelNodeConnectionInfo, host: String, port: u16) -> redis::ConnectionInfo {
    let addr = match node.tls_mode {
        None => redis::ConnectionAddr::Tcp(host, port),
        Some(mode) => {
            redis::ConnectionAddr::TcpTls { host, port, insecure: matches!(mode, TlsMode::Insecure), tls_params: None }
        }
    };
    redis::ConnectionInfo { addr, redis: node.redis_connection_info.clone().unwrap_or_default() }
}

/// The sentinels' announcements that move the primary.
const SWITCH_CHANNELS: [&str; 6] = [
    "+selected-slave",
    "+failover-state-wait-promotion",
    "+switch-master",
    "-failover-abort-not-elected",
    "-failover-abort-no-good-slave",
    "-failover-abort-slave-timeout",
];

/// Listens to one sentinel's failover announcements for as long as the
/// store lives. A requested failover leaves the old primary running and
/// writable until the sentinels notice the promotion (up to a second) and
/// demote it: no call fails meanwhile, yet every charge it takes is lost
/// when it resyncs from the new primary. So once a replica is selected for
/// promotion (`+selected-slave`), the old primary is done with: the store
/// goes to the replica at once (its writes answer `READONLY`, failing by
/// `on_store_error`, until the promotion a moment later). A switch or an
/// abort ends that; [`follow_primary`] asks the sentinels again.
async fn hear_switches(inner: Weak<Inner>, url: String) {
    let Ok(client) = redis::Client::open(url.as_str()) else {
        return;
    };
    loop {
        let subscribed = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&SWITCH_CHANNELS[..]).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        if let Ok(Ok(pubsub)) = subscribed {
            let mut messages = pubsub.into_on_message();
            loop {
                // Checks now and then that the store still lives.
                match tokio::time::timeout(SENTINEL_POLL, messages.next()).await {
                    Ok(None) => break,
                    Ok(Some(msg)) => {
                        let Some(strong) = inner.upgrade() else {
                            return;
                        };
                        let payload: String = msg.get_payload().unwrap_or_default();
                        strong.heard(msg.get_channel_name(), &payload);
                    }
                    Err(_) if inner.strong_count() == 0 => return,
                    Err(_) => {}
                }
            }
        }
        if inner.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(SENTINEL_POLL).await;
    }
}

/// A replica the sentinels are promoting.
#[derive(Clone)]
struct Promotion {
    host: String,
    port: u16,
    /// `host:port`, as a connection names its server.
    addr: String,
    since: std::time::Instant,
}

impl Inner {
    /// One announcement: `+selected-slave` (`slave <ip:port> <ip> <port> @
    /// <master> <ip> <port>`) starts a promotion of ours; a switch or an
    /// abort of ours ends it. Wakes [`follow_primary`] either way.
    ///
    /// `+failover-state-wait-promotion` follows the sentinel's `REPLICAOF NO
    /// ONE` to the replica, which it sends with `CLIENT KILL TYPE normal`:
    /// the connection opened to the replica before is closed under it, so
    /// a fresh one is opened now rather than by a call that fails on it.
    fn heard(&self, channel: &str, payload: &str) {
        let Target::Sentinel(t) = &self.target else {
            return;
        };
        let Some((master, instance)) = announcement(channel, payload) else {
            return;
        };
        if master != t.master {
            return;
        }
        let mut promoting = t.promoting.lock().unwrap_or_else(PoisonError::into_inner);
        match channel {
            "+selected-slave" => {
                if let Some((host, port)) = instance {
                    let addr = redis::ConnectionAddr::Tcp(host.to_owned(), port).to_string();
                    tracing::warn!(master = %t.master, replica = %addr, "Sentinel is promoting a replica; the old primary takes no more calls");
                    *promoting =
                        Some(Promotion { host: host.to_owned(), port, addr, since: std::time::Instant::now() });
                }
            }
            "+failover-state-wait-promotion" => {
                if promoting.is_some() {
                    self.conn.store(None);
                }
            }
            _ => *promoting = None,
        }
        drop(promoting);
        t.trouble.notify_one();
    }
}

/// A sentinel announcement's master name and, when it names an instance
/// with an address, that instance's host and port. `+switch-master` is
/// `<master> <old ip> <old port> <new ip> <new port>`; the others name an
/// instance, `<type> <name> <ip> <port>`, followed by `@ <master> <ip>
/// <port>` unless the instance is the master itself.
fn announcement<'a>(channel: &str, payload: &'a str) -> Option<(&'a str, Option<(&'a str, u16)>)> {
    let words: Vec<&str> = payload.split_whitespace().collect();
    if channel == "+switch-master" {
        return Some((words.first()?, None));
    }
    let instance = words.get(2).zip(words.get(3).and_then(|p| p.parse().ok())).map(|(h, p)| (*h, p));
    match words.iter().position(|w| *w == "@") {
        Some(at) => Some((words.get(at + 1)?, instance)),
        None => Some((words.get(1)?, instance)),
    }
}

/// A call's packed arguments, kept inline (at most 31 bytes): a call
/// allocates nothing for them.
#[derive(Clone, Copy)]
struct Args {
    len: u8,
    bytes: [u8; 31],
}

impl Args {
    fn extend_from_slice(&mut self, more: &[u8]) {
        // Callers write at most 31 bytes (see `pack_args`); more would be a
        // bug, kept from corrupting anything by the bounds.
        let at = usize::from(self.len);
        if let Some(room) = self.bytes.get_mut(at..at + more.len()) {
            room.copy_from_slice(more);
            self.len += more.len() as u8;
        }
    }

    fn push(&mut self, b: u8) {
        self.extend_from_slice(&[b]);
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// The script's arguments in one blob (one `struct.unpack` in Lua instead
/// of a `tonumber` per number): cost, policy count, then per policy its id,
/// quota, window and slot length.
fn pack_args(ask: &Ask<'_>) -> Result<Args, StoreError> {
    let mut b = Args { len: 0, bytes: [0; 31] };
    b.extend_from_slice(&ask.cost.to_be_bytes());
    b.push(if ask.endpoint.is_some() { 2 } else { 1 });
    let mut policy = |id: u8, p: Policy| {
        // Slots of a window longer than ~6 days would not fit 32 bits.
        let slot = u32::try_from(window::slot_us(p.window_s))
            .map_err(|_| StoreError::Backend(format!("window of {} s is too long", p.window_s)))?;
        b.push(id);
        b.extend_from_slice(&p.quota.to_be_bytes());
        b.extend_from_slice(&p.window_s.to_be_bytes());
        b.extend_from_slice(&slot.to_be_bytes());
        Ok::<(), StoreError>(())
    };
    policy(0, ask.account)?;
    if let Some((e, p)) = ask.endpoint {
        policy(e.index().map_or(0, |i| i as u8 + 1), p)?;
    }
    Ok(b)
}

/// Bytes per policy in the script's reply: fits u8, left u32, retry i64
/// (-1: the cost exceeds the quota), reset i64, charged slot u48, big-endian.
const POLICY_REPLY: usize = 1 + 4 + 8 + 8 + 6;

/// The length of the script's answer to `ask`.
fn reply_len(ask: &Ask<'_>) -> usize {
    1 + POLICY_REPLY * (1 + usize::from(ask.endpoint.is_some()))
}

/// The script's reply (one packed string: allowed u8, then each policy) →
/// a [`Decision`]. A string rather than an array of integers because Redis
/// converts a Lua table reply element by element, which costs more script
/// time than the rest of a typical call's arithmetic.
fn decide(ask: &Ask<'_>, r: &[u8]) -> Result<Decision, StoreError> {
    if r.len() != reply_len(ask) {
        return Err(StoreError::Backend(format!("unexpected script reply of {} bytes", r.len())));
    }
    if r[0] == 2 {
        // The script could not read the key (its only per-call error).
        return Err(StoreError::Backend(format!("the key of tenant {:?} holds a value of another type", ask.tenant)));
    }
    let allowed = r[0] == 1;
    let int = |b: &[u8]| b.iter().fold(0u64, |v, &x| (v << 8) | u64::from(x));
    let state = |policy: Policy, v: &[u8]| {
        let verdict = Verdict {
            fits: v[0] == 1,
            left: int(&v[1..5]),
            // -1 (all bits set) means never: u64::MAX.
            retry_us: int(&v[5..13]),
            reset_us: 0,
        };
        PolicyState::new(policy, &verdict, allowed, ask.cost, int(&v[13..21])).charged_to(int(&v[21..27]))
    };
    Ok(Decision {
        allowed,
        cost: ask.cost,
        account: state(ask.account, &r[1..1 + POLICY_REPLY]),
        endpoint: ask.endpoint.map(|(_, p)| state(p, &r[1 + POLICY_REPLY..])),
        degraded: false,
    })
}

/// `<prefix>:{<tenant>}:rl`. Built by hand: this runs for every call, and
/// `format!`'s machinery cost more than the rest of the key
/// (`benches/load/instructions.sh`).
fn key(prefix: &str, tenant: &str) -> String {
    let tenant = escape(tenant);
    let mut key = String::with_capacity(prefix.len() + tenant.len() + 6);
    key.push_str(prefix);
    key.push_str(":{");
    key.push_str(&tenant);
    key.push_str("}:rl");
    key
}

/// Keeps a tenant name from ending or opening the hash tag early.
fn escape(tenant: &str) -> Cow<'_, str> {
    if !tenant.contains(['{', '}', '%']) {
        return Cow::Borrowed(tenant);
    }
    let mut out = String::with_capacity(tenant.len() + 6);
    for c in tenant.chars() {
        match c {
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            '%' => out.push_str("%25"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn backend(e: redis::RedisError) -> StoreError {
    StoreError::Backend(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::{escape, key, live, StoreError, Waiting};
    use std::time::Duration;
    use tokio::sync::oneshot;
    use tokio::time::Instant;

    /// A batch goes out only with the calls still waited for, and its timer
    /// runs out at the earliest of their deadlines.
    #[tokio::test]
    async fn a_batch_leaves_out_calls_given_up_and_keeps_the_earliest_deadline() {
        let now = Instant::now();
        let call = |deadline| {
            let (tx, rx) = oneshot::channel();
            (Waiting { key: "k".into(), args: super::Args { len: 0, bytes: [0; 31] }, reply_len: 28, deadline, tx }, rx)
        };
        let (gone, rx_gone) = call(now + Duration::from_secs(9));
        drop(rx_gone);
        let (late, mut rx_late) = call(now - Duration::from_millis(1));
        let (soon, mut rx_soon) = call(now + Duration::from_secs(2));
        let (later, _rx_later) = call(now + Duration::from_secs(5));
        let mut batch = vec![gone, soon, late, later];
        assert_eq!(live(&mut batch), Some(now + Duration::from_secs(2)));
        // Only the calls still waited for, in time, are sent, in their order.
        let left: Vec<Instant> = batch.iter().map(|w| w.deadline).collect();
        assert_eq!(left, [now + Duration::from_secs(2), now + Duration::from_secs(5)]);
        assert!(matches!(rx_late.try_recv(), Ok(Err(StoreError::Timeout))));
        assert!(rx_soon.try_recv().is_err(), "a call in time is not answered yet");
        let (late, _rx) = call(now);
        let mut batch = vec![late];
        assert_eq!(live(&mut batch), None);
    }

    /// The announcements as Redis 7's sentinels publish them.
    #[test]
    fn sentinel_announcements_name_their_master_and_instance() {
        use super::announcement;
        let selected = "slave 127.0.0.1:6380 127.0.0.1 6380 @ main 127.0.0.1 6379";
        assert_eq!(announcement("+selected-slave", selected), Some(("main", Some(("127.0.0.1", 6380)))));
        assert_eq!(announcement("+failover-state-wait-promotion", selected).map(|a| a.0), Some("main"));
        let switch = "main 127.0.0.1 6379 127.0.0.1 6380";
        assert_eq!(announcement("+switch-master", switch), Some(("main", None)));
        let abort = "master main 127.0.0.1 6379";
        assert_eq!(announcement("-failover-abort-no-good-slave", abort), Some(("main", Some(("127.0.0.1", 6379)))));
        assert_eq!(announcement("+selected-slave", ""), None);
        assert_eq!(announcement("+selected-slave", "slave x y notaport @ main"), Some(("main", None)));
    }

    #[test]
    fn tenant_names_cannot_break_the_hash_tag() {
        assert_eq!(escape("acme"), "acme");
        assert_eq!(escape("a{b}c%"), "a%7Bb%7Dc%25");
        assert_ne!(escape("a%7Bb"), escape("a{b"));
    }

    #[test]
    fn the_key_is_prefix_hash_tag_and_layout() {
        // Replicas of every version must agree on it: a change splits budgets.
        assert_eq!(key("deskgate", "acme"), "deskgate:{acme}:rl");
        assert_eq!(key("dg", "a{b}"), "dg:{a%7Bb%7D}:rl");
    }
}
