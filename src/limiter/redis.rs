//! Redis store (SPEC §4 `redis`): standalone or Redis Cluster, one script
//! call per decision. The only file that imports `redis`.
//!
//! # Keys and memory
//!
//! One key per tenant, `<key_prefix>:{<tenant>}:rl`, holds every window of
//! that tenant (account and endpoint classes) as one string at fixed
//! offsets: five 24-byte section headers, then one ring of 121 two-byte
//! per-slot counters per section — the ring of [`super::window`] — and, only
//! for a quota above 65,535, the counters' high halves (layout and reasons in
//! `window.lua`). The `2` is the layout's version: a gateway running the
//! previous layout (`:rl`) never misreads these keys; during a rolling upgrade
//! the two versions count apart, for at most one window after the last old
//! replica stops. The tenant in braces is the Redis Cluster hash tag, so the
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
//! It answers with one packed string. [`redis::Script`] sends `EVALSHA`
//! and, on `NOSCRIPT` (a restarted or flushed Redis), loads the script and
//! retries.
//!
//! # Connections
//!
//! Standalone uses a [`ConnectionManager`] (a multiplexed connection that
//! reconnects by itself); a cluster uses the multiplexed
//! [`ClusterConnection`], which follows slot moves and reconnects too. If
//! Redis is down when the gateway starts, the first connection is retried in
//! the background: calls fail (and `on_store_error` applies) until it is up.
//! Timeouts and the circuit breaker live in [`super::Limiter`].

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;

use super::store::{Store, StoreError};
use super::window::{self, Verdict};
use super::{Ask, Decision, Policy, PolicyState};
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

/// The script, loaded once per Redis and then called by its SHA1.
const WINDOW_LUA: &str = include_str!("window.lua");

#[derive(Clone)]
enum Conn {
    Single(Box<ConnectionManager>),
    Cluster(ClusterConnection),
}

enum Target {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

struct Inner {
    target: Target,
    conn: ArcSwapOption<Conn>,
    connecting: AtomicBool,
}

/// Budgets shared by every replica through Redis.
pub struct RedisStore {
    inner: Arc<Inner>,
    script: redis::Script,
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
    /// Redis is retried in the background.
    pub async fn connect(kind: &StoreKind, key_prefix: &str) -> Result<RedisStore, StoreError> {
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
            StoreKind::Memory => return Err(StoreError::Backend("the memory store is not a Redis store".into())),
        };
        let inner = Arc::new(Inner { target, conn: ArcSwapOption::empty(), connecting: AtomicBool::new(true) });
        let first = tokio::spawn(connect_loop(Arc::downgrade(&inner)));
        // Usually connected by now; otherwise the loop keeps going on its own.
        let _ = tokio::time::timeout(FIRST_CONNECT_WAIT, first).await;
        Ok(RedisStore { inner, script: redis::Script::new(WINDOW_LUA), key_prefix: key_prefix.to_owned() })
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

    async fn run(&self, ask: &Ask<'_>, now_us: Option<u64>) -> Result<Decision, StoreError> {
        let mut conn = self.conn()?;
        let mut inv = self.script.key(self.key(ask.tenant));
        inv.arg(pack_args(ask)?);
        if let Some(now) = now_us {
            inv.arg(now);
        }
        let reply: Vec<u8> = match &mut conn {
            Conn::Single(c) => inv.invoke_async(&mut **c).await,
            Conn::Cluster(c) => inv.invoke_async(c).await,
        }
        .map_err(backend)?;
        decide(ask, &reply)
    }

    fn conn(&self) -> Result<Conn, StoreError> {
        if let Some(c) = self.inner.conn.load().as_deref() {
            return Ok(c.clone());
        }
        if !self.inner.connecting.swap(true, Ordering::AcqRel) {
            tokio::spawn(connect_loop(Arc::downgrade(&self.inner)));
        }
        Err(StoreError::Backend("not connected to Redis yet".into()))
    }
}

impl Store for RedisStore {
    async fn acquire(&self, ask: &Ask<'_>) -> Result<Decision, StoreError> {
        self.run(ask, None).await
    }
}

/// Connects until it succeeds or the store is dropped. Once connected, the
/// connection types reconnect by themselves.
async fn connect_loop(inner: Weak<Inner>) {
    let mut delay = Duration::from_millis(50);
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        match open(&strong.target).await {
            Ok(c) => {
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
        Target::Single(client) => {
            let cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(CONNECT_TIMEOUT)
                .set_response_timeout(RESPONSE_TIMEOUT)
                .set_factor(50)
                .set_max_delay(MAX_RECONNECT_DELAY.as_millis() as u64)
                .set_number_of_retries(1);
            Ok(Conn::Single(Box::new(ConnectionManager::new_with_config(client.clone(), cfg).await?)))
        }
        Target::Cluster(client) => Ok(Conn::Cluster(client.get_async_connection().await?)),
    }
}

/// The script's arguments in one blob (one `struct.unpack` in Lua instead
/// of a `tonumber` per number).
fn pack_args(ask: &Ask<'_>) -> Result<Vec<u8>, StoreError> {
    let mut b = Vec::with_capacity(31);
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
/// (-1: the cost exceeds the quota), reset i64, big-endian.
const POLICY_REPLY: usize = 1 + 4 + 8 + 8;

/// The script's reply (one packed string: allowed u8, then each policy) →
/// a [`Decision`]. A string rather than an array of integers because Redis
/// converts a Lua table reply element by element, which costs more script
/// time than the rest of a typical call's arithmetic.
fn decide(ask: &Ask<'_>, r: &[u8]) -> Result<Decision, StoreError> {
    let n = 1 + POLICY_REPLY * (1 + usize::from(ask.endpoint.is_some()));
    if r.len() != n {
        return Err(StoreError::Backend(format!("unexpected script reply of {} bytes", r.len())));
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
        PolicyState::new(policy, &verdict, allowed, ask.cost, int(&v[13..21]))
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
    use super::{escape, key};

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
