//! The Redis queue (docs/reference.md "Webhook egress" with `store = "redis"`): survives a restart of
//! every replica and lets replicas share the work, one holder per webhook.
//! Runs on a standalone Redis and on a Redis Cluster alike.
//!
//! Keys. Each tenant's webhooks live under the tenant's hash tag (the same
//! tag its rate-limit key uses), so on a cluster they share one slot and
//! every move on them is one script:
//! - `<prefix>:{<tenant>}:wh:due` ZSET id → epoch ms when the next attempt may start;
//! - `<prefix>:{<tenant>}:wh:inflight` ZSET id → epoch ms when the holder's lease runs out;
//! - `<prefix>:{<tenant>}:wh:job:<id>` HASH `spec` (JSON, fixed), `state`
//!   (JSON), `accepted_ms`, `owner` (the token of the current claim, absent
//!   when nobody holds it). Delivered and dropped webhooks keep their hash
//!   for [`RETENTION`]; then it expires on its own.
//!
//! What spans tenants lives under its own tag, `{<prefix>:webhooks}`:
//! - `…:tenants` ZSET tenant → the earliest time one of its webhooks may
//!   need a look (a due time or a lease deadline). Never later than the
//!   truth: a writer lowers it after writing the tenant's sets; a claimer
//!   raises it only if no writer touched the tenant since the claimer read
//!   it, which `…:gen` (HASH tenant → count of writes) tells.
//! - `…:id:<id>` STRING → the tenant that owns the id: ids are global
//!   across tenants, and `GET /webhooks/{id}` names no tenant.
//!
//! A standalone queue also moves, every few seconds, whatever the
//! single-tag layout (`{<prefix>:webhooks}:due`, `:inflight`, `:job:<id>`)
//! still holds into this one (`ADOPT`), so replicas of both layouts can
//! share a Redis during an upgrade and nothing queued is lost.
//!
//! Every move is one Lua script, so it is atomic within its slot: `create`
//! is the SET-NX of the job (an existing hash wins, nothing is charged or
//! queued twice) and refuses a tenant at its bound; `claim` reads Redis
//! `TIME` and moves due and lease-expired ids to in-flight under a fresh
//! token; `renew` and `finish` write only if the caller's token still owns
//! the webhook. Times are Redis `TIME` of the tenant's node, the clock the
//! rate-limit store uses for the same tenant.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::Script;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::queue::{token, Batch, Claimed, Created, Next, QueueError, Record, Unreadable, RETENTION};
use super::{Spec, State};
use crate::config::StoreKind;

/// Any single queue call slower than this counts as the queue being down.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Tenants looked at per claim pass; more due ones wait for the next pass.
const TENANTS_PER_PASS: usize = 64;

const CREATE: &str = r#"
-- KEYS: job, due, inflight; ARGV: id, spec, state, token, lease_ms, max_queued
if redis.call('EXISTS', KEYS[1]) == 1 then
  local f = redis.call('HMGET', KEYS[1], 'spec', 'state', 'accepted_ms')
  return {0, f[1] or '', f[2] or '', f[3] or '0'}
end
local queued = redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[3])
if queued >= tonumber(ARGV[6]) then
  return {2, queued}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'spec', ARGV[2], 'state', ARGV[3], 'accepted_ms', now, 'owner', ARGV[4])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[1])
return {1, now, now + tonumber(ARGV[5]), queued + 1}
"#;

const CLAIM: &str = r#"
-- KEYS: due, inflight; ARGV: max, lease_ms, token_prefix, job_key_prefix
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local out = {}
local n = 0
-- Expired leases first (a replica died holding them), then due webhooks.
for _, src in ipairs({KEYS[2], KEYS[1]}) do
  if n < max then
    local ids = redis.call('ZRANGEBYSCORE', src, '-inf', now, 'LIMIT', 0, max - n)
    for _, id in ipairs(ids) do
      redis.call('ZREM', src, id)
      local key = ARGV[4] .. id
      if redis.call('EXISTS', key) == 1 then
        local tok = ARGV[3] .. ':' .. n
        redis.call('ZADD', KEYS[2], now + lease, id)
        redis.call('HSET', key, 'owner', tok)
        local f = redis.call('HMGET', key, 'spec', 'state', 'accepted_ms')
        out[#out + 1] = id
        out[#out + 1] = tok
        out[#out + 1] = f[1] or ''
        out[#out + 1] = f[2] or ''
        out[#out + 1] = f[3] or '0'
        n = n + 1
      end
    end
  end
end
local depth = redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2])
local nxt = -1
for _, k in ipairs({KEYS[1], KEYS[2]}) do
  local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
  if first[2] then
    local s = tonumber(first[2])
    if nxt < 0 or s < nxt then nxt = s end
  end
end
local head = {now, depth, nxt}
for _, v in ipairs(out) do head[#head + 1] = v end
return head
"#;

const RENEW: &str = r#"
-- KEYS: job, inflight; ARGV: id, token, lease_ms
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
return 1
"#;

const FINISH: &str = r#"
-- KEYS: job, due, inflight; ARGV: id, token, state, due_ms ('' = done), retention_s
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then
  return 0
end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[1], 'state', ARGV[3])
redis.call('HDEL', KEYS[1], 'owner')
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[2], tonumber(ARGV[4]), ARGV[1])
else
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
end
return 1
"#;

/// A tenant's sets were written: it may need a look by `at` (lowers only).
const TOUCH: &str = r#"
-- KEYS: tenants, gen; ARGV: tenant, at_ms
local cur = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not cur or tonumber(ARGV[2]) < tonumber(cur) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
end
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
return 1
"#;

/// Tenants that need a look now, each with its write count.
const DUE_TENANTS: &str = r#"
-- KEYS: tenants, gen; ARGV: max
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local later = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local out = {now, later[2] or -1}
for _, tenant in ipairs(due) do
  out[#out + 1] = tenant
  out[#out + 1] = redis.call('HGET', KEYS[2], tenant) or '0'
end
return out
"#;

/// After a claim: the tenant's next look, unless a writer came in between.
const SETTLE_TENANT: &str = r#"
-- KEYS: tenants, gen; ARGV: tenant, gen_seen, next_ms (-1: nothing queued)
if (redis.call('HGET', KEYS[2], ARGV[1]) or '0') ~= ARGV[2] then
  return 0
end
if tonumber(ARGV[3]) < 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
end
return 1
"#;

/// The tenant owning an id: the caller's when the id is new (or was given up).
const OWN_ID: &str = r#"
-- KEYS: id; ARGV: tenant, ttl_s, take_over ('1': replace another owner)
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] and ARGV[3] ~= '1' then
  return cur
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
return ARGV[1]
"#;

/// Moves webhooks queued under the single-tag layout of earlier versions
/// (`{<prefix>:webhooks}:due`, `:inflight`, `:job:<id>`) into the per-tenant
/// layout, so a rolling upgrade loses none. Standalone Redis only (that
/// layout never ran on a Cluster; this script touches keys of many slots).
/// An in-flight one is left to its holder until its lease has run out (the
/// holder died): then it is moved, due at once.
const ADOPT: &str = r#"
-- KEYS: old due, old inflight, tenants, gen; ARGV: old job key prefix, key prefix, id key prefix, id_ttl_s, max
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local moved = 0
for i, src in ipairs({KEYS[1], KEYS[2]}) do
  local upto = '+inf'
  if i == 2 then upto = now end
  local entries = redis.call('ZRANGEBYSCORE', src, '-inf', upto, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[5]))
  for j = 1, #entries, 2 do
    local id, score = entries[j], tonumber(entries[j + 1])
    redis.call('ZREM', src, id)
    local old = ARGV[1] .. id
    local ok, spec = pcall(cjson.decode, redis.call('HGET', old, 'spec') or '')
    local tenant = ok and type(spec) == 'table' and spec.tenant
    if type(tenant) == 'string' and tenant ~= '' and not string.find(tenant, '[{}]') then
      local base = ARGV[2] .. ':{' .. tenant .. '}:wh:'
      if redis.call('EXISTS', base .. 'job:' .. id) == 0 then
        redis.call('RENAME', old, base .. 'job:' .. id)
        redis.call('HDEL', base .. 'job:' .. id, 'owner')
        redis.call('ZADD', base .. 'due', score, id)
        local cur = redis.call('ZSCORE', KEYS[3], tenant)
        if not cur or score < tonumber(cur) then
          redis.call('ZADD', KEYS[3], score, tenant)
        end
        redis.call('HINCRBY', KEYS[4], tenant, 1)
        redis.call('SET', ARGV[3] .. id, tenant, 'EX', tonumber(ARGV[4]))
        moved = moved + 1
      end
    end
  end
end
return moved
"#;

/// How often a standalone queue looks for webhooks in the earlier layout.
const ADOPT_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone)]
enum Conn {
    Single(Box<ConnectionManager>),
    Cluster(ClusterConnection),
}

enum Target {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// The Redis-backed queue. Connects on first use and reconnects on its own.
pub struct RedisQueue {
    target: Target,
    conn: OnceCell<Conn>,
    prefix: String,
    registry: String,
    id_ttl_s: u64,
    create: Script,
    claim: Script,
    renew: Script,
    finish: Script,
    touch: Script,
    due_tenants: Script,
    settle_tenant: Script,
    own_id: Script,
    adopt: Script,
    /// When the earlier layout was last looked at (standalone only).
    adopted_at: Mutex<Option<Instant>>,
    /// Webhooks waiting or in flight per tenant, as last seen by this
    /// replica (its sum is the queue-depth gauge). Never held across an await.
    depths: Mutex<HashMap<String, u64>>,
}

impl RedisQueue {
    /// Checks the URLs; does not connect yet.
    pub fn new(kind: &StoreKind, key_prefix: &str, id_ttl: Duration) -> Result<RedisQueue, String> {
        let target = match kind {
            StoreKind::Redis { url } => {
                Target::Single(redis::Client::open(url.as_str()).map_err(|e| format!("redis_url: {e}"))?)
            }
            StoreKind::RedisCluster { urls } => Target::Cluster(
                ClusterClientBuilder::new(urls.iter().map(String::as_str))
                    .connection_timeout(OP_TIMEOUT)
                    .response_timeout(OP_TIMEOUT)
                    .retries(2)
                    .build()
                    .map_err(|e| format!("redis_cluster: {e}"))?,
            ),
            StoreKind::Memory => return Err("the memory store is not a Redis store".to_owned()),
            StoreKind::RedisSentinel { .. } => {
                return Err("redis_sentinel is not supported for [webhooks] yet".to_owned())
            }
        };
        Ok(RedisQueue {
            target,
            conn: OnceCell::new(),
            prefix: key_prefix.to_owned(),
            registry: format!("{{{key_prefix}:webhooks}}"),
            id_ttl_s: id_ttl.as_secs().max(1),
            create: Script::new(CREATE),
            claim: Script::new(CLAIM),
            renew: Script::new(RENEW),
            finish: Script::new(FINISH),
            touch: Script::new(TOUCH),
            due_tenants: Script::new(DUE_TENANTS),
            settle_tenant: Script::new(SETTLE_TENANT),
            own_id: Script::new(OWN_ID),
            adopt: Script::new(ADOPT),
            adopted_at: Mutex::new(None),
            depths: Mutex::new(HashMap::new()),
        })
    }

    /// A key of `tenant`'s webhooks (`what`: `due`, `inflight`, `job:<id>`).
    fn tenant_key(&self, tenant: &str, what: &str) -> String {
        format!("{}:{{{tenant}}}:wh:{what}", self.prefix)
    }

    fn registry_key(&self, what: &str) -> String {
        format!("{}:{what}", self.registry)
    }

    async fn conn(&self) -> Result<Conn, QueueError> {
        let c = self
            .conn
            .get_or_try_init(|| async {
                let connect = async {
                    match &self.target {
                        Target::Single(client) => {
                            let cfg = ConnectionManagerConfig::new()
                                .set_connection_timeout(OP_TIMEOUT)
                                .set_response_timeout(OP_TIMEOUT)
                                .set_number_of_retries(1);
                            ConnectionManager::new_with_config(client.clone(), cfg)
                                .await
                                .map(|c| Conn::Single(Box::new(c)))
                        }
                        Target::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
                    }
                };
                match tokio::time::timeout(OP_TIMEOUT, connect).await {
                    Ok(r) => r.map_err(|e| QueueError(e.to_string())),
                    Err(_) => Err(QueueError("redis connect timed out".into())),
                }
            })
            .await?;
        Ok(c.clone())
    }

    async fn run<T: redis::FromRedisValue>(&self, inv: redis::ScriptInvocation<'_>) -> Result<T, QueueError> {
        let conn = self.conn().await?;
        let call = async {
            match conn {
                Conn::Single(mut c) => inv.invoke_async(&mut *c).await,
                Conn::Cluster(mut c) => inv.invoke_async(&mut c).await,
            }
        };
        match tokio::time::timeout(OP_TIMEOUT, call).await {
            Ok(r) => r.map_err(|e| QueueError(e.to_string())),
            Err(_) => Err(QueueError("redis call timed out".into())),
        }
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, QueueError> {
        let conn = self.conn().await?;
        let call = async {
            match conn {
                Conn::Single(mut c) => cmd.query_async(&mut *c).await,
                Conn::Cluster(mut c) => cmd.query_async(&mut c).await,
            }
        };
        match tokio::time::timeout(OP_TIMEOUT, call).await {
            Ok(r) => r.map_err(|e| QueueError(e.to_string())),
            Err(_) => Err(QueueError("redis call timed out".into())),
        }
    }

    /// Tells the registry `tenant` was written and may need a look by `at_ms`.
    async fn touch(&self, tenant: &str, at_ms: u64) -> Result<(), QueueError> {
        let mut inv = self.touch.prepare_invoke();
        inv.key(self.registry_key("tenants")).key(self.registry_key("gen")).arg(tenant).arg(at_ms);
        self.run::<i64>(inv).await.map(drop)
    }

    /// The tenant owning `id`, claiming it for `tenant` when it is new.
    async fn own_id(&self, id: &str, tenant: &str, take_over: bool) -> Result<String, QueueError> {
        let mut inv = self.own_id.prepare_invoke();
        inv.key(self.registry_key(&format!("id:{id}"))).arg(tenant).arg(self.id_ttl_s).arg(if take_over {
            "1"
        } else {
            "0"
        });
        self.run(inv).await
    }

    async fn read(&self, tenant: &str, id: &str) -> Result<Option<Record>, QueueError> {
        self.read_key(self.tenant_key(tenant, &format!("job:{id}"))).await
    }

    async fn read_key(&self, key: String) -> Result<Option<Record>, QueueError> {
        let cmd = redis::cmd("HMGET").arg(key).arg("spec").arg("state").arg("accepted_ms").to_owned();
        let v: Vec<Option<String>> = self.query(cmd).await?;
        match v.as_slice() {
            [Some(spec), Some(state), accepted] => {
                let accepted = accepted.clone().unwrap_or_else(|| "0".to_owned());
                Ok(record(Some(spec), Some(state), Some(&accepted)))
            }
            _ => Ok(None),
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
        let tenant = spec.tenant.as_str();
        let owner = self.own_id(id, tenant, false).await?;
        if owner != tenant {
            // Another tenant's id: that webhook, if it is still kept.
            if let Some(record) = self.read(&owner, id).await? {
                return Ok(Created::Existing(record));
            }
            // Its webhook is gone (expired, or its creation never finished).
            self.own_id(id, tenant, true).await?;
        }
        let spec_json = to_json(&**spec)?;
        let state_json = to_json(&State::accepted())?;
        let mut inv = self.create.prepare_invoke();
        inv.key(self.tenant_key(tenant, &format!("job:{id}")))
            .key(self.tenant_key(tenant, "due"))
            .key(self.tenant_key(tenant, "inflight"))
            .arg(id)
            .arg(spec_json)
            .arg(state_json)
            .arg(token)
            .arg(lease_ms)
            .arg(max_queued);
        let v: Vec<String> = self.run(inv).await?;
        match v.first().map(String::as_str) {
            Some("1") => {
                let now_ms = num(v.get(1))?;
                self.set_depth(tenant, num(v.get(3))?);
                // Should this replica die before settling it, the registry
                // sends another one here when the lease runs out. Stored and
                // held either way: this replica attempts it now.
                if let Err(e) = self.touch(tenant, num(v.get(2))?).await {
                    tracing::warn!(%id, error = %e, "webhook stored but not registered for other replicas");
                }
                Ok(Created::New { now_ms })
            }
            Some("0") => {
                let record = record(v.get(1), v.get(2), v.get(3))
                    .ok_or_else(|| QueueError(format!("stored webhook {id} is unreadable")))?;
                Ok(Created::Existing(record))
            }
            Some("2") => Ok(Created::Full { queued: num(v.get(1))? }),
            _ => Err(QueueError("unexpected reply from the create script".into())),
        }
    }

    /// Every [`ADOPT_EVERY`], moves what the earlier layout still holds.
    async fn adopt_earlier_layout(&self) {
        if !matches!(self.target, Target::Single(_)) {
            return;
        }
        {
            let mut at = self.adopted_at.lock().unwrap_or_else(|e| e.into_inner());
            if at.is_some_and(|t| t.elapsed() < ADOPT_EVERY) {
                return;
            }
            *at = Some(Instant::now());
        }
        let old = format!("{{{}:webhooks}}", self.prefix);
        let mut inv = self.adopt.prepare_invoke();
        inv.key(format!("{old}:due"))
            .key(format!("{old}:inflight"))
            .key(self.registry_key("tenants"))
            .key(self.registry_key("gen"))
            .arg(format!("{old}:job:"))
            .arg(&self.prefix)
            .arg(self.registry_key("id:"))
            .arg(self.id_ttl_s)
            .arg(1000);
        match self.run::<i64>(inv).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(moved = n, "webhooks queued in the earlier Redis layout moved to the per-tenant layout");
                // More may be left: look again on the next pass.
                *self.adopted_at.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            Err(e) => tracing::debug!(error = %e, "earlier webhook layout not checked"),
        }
    }

    pub async fn claim(&self, max: usize, lease_ms: u64) -> Result<Batch, QueueError> {
        self.adopt_earlier_layout().await;
        let mut inv = self.due_tenants.prepare_invoke();
        inv.key(self.registry_key("tenants")).key(self.registry_key("gen")).arg(TENANTS_PER_PASS);
        let v: Vec<String> = self.run(inv).await?;
        let now_ms = num(v.first())?;
        let later = signed(v.get(1))?;
        let due: Vec<(String, String)> =
            v.get(2..).unwrap_or_default().chunks_exact(2).map(|c| (c[0].clone(), c[1].clone())).collect();
        let mut batch = Batch { now_ms, depth: 0, next_ms: later, jobs: Vec::new(), unreadable: Vec::new() };
        if due.len() == TENANTS_PER_PASS {
            // More tenants are due than one pass looks at.
            batch.next_ms = Some(now_ms);
        }
        // Every due tenant gets a share of the free slots, so one tenant's
        // backlog does not starve the others.
        let share = max.div_ceil(due.len().max(1)).max(1);
        for (tenant, gen) in due {
            let room = share.min(max.saturating_sub(batch.jobs.len() + batch.unreadable.len()));
            if room == 0 {
                batch.next_ms = Some(now_ms);
                break;
            }
            let next = match self.claim_tenant(&tenant, room, lease_ms, &mut batch).await {
                Ok(next) => next,
                // What was claimed so far is held: hand it out; the rest waits.
                Err(e) if !batch.jobs.is_empty() || !batch.unreadable.is_empty() => {
                    tracing::warn!(%tenant, error = %e, "webhook claim pass cut short");
                    break;
                }
                Err(e) => return Err(e),
            };
            let mut inv = self.settle_tenant.prepare_invoke();
            inv.key(self.registry_key("tenants"))
                .key(self.registry_key("gen"))
                .arg(&tenant)
                .arg(&gen)
                .arg(next.map_or(-1, |n| n as i64));
            // Not written: the registry keeps the earlier time, and the
            // tenant is looked at again then.
            if let Err(e) = self.run::<i64>(inv).await {
                tracing::debug!(%tenant, error = %e, "webhook registry not updated");
            }
            if let Some(n) = next {
                batch.next_ms = Some(batch.next_ms.map_or(n, |m| m.min(n)));
            }
        }
        batch.depth = self.depths.lock().unwrap_or_else(|e| e.into_inner()).values().sum();
        Ok(batch)
    }

    /// Claims up to `max` of `tenant`'s webhooks into `batch`; returns when
    /// the tenant next needs a look.
    async fn claim_tenant(
        &self,
        tenant: &str,
        max: usize,
        lease_ms: u64,
        batch: &mut Batch,
    ) -> Result<Option<u64>, QueueError> {
        let held_from = Instant::now();
        let mut inv = self.claim.prepare_invoke();
        inv.key(self.tenant_key(tenant, "due"))
            .key(self.tenant_key(tenant, "inflight"))
            .arg(max)
            .arg(lease_ms)
            .arg(token())
            .arg(self.tenant_key(tenant, "job:"));
        let v: Vec<String> = self.run(inv).await?;
        let claimed_at = Instant::now();
        let now_ms = num(v.first())?;
        self.set_depth(tenant, num(v.get(1))?);
        let next = signed(v.get(2))?;
        for c in v.get(3..).unwrap_or_default().chunks_exact(5) {
            let (id, tok) = (c[0].clone(), c[1].clone());
            match record(c.get(2), c.get(3), c.get(4)) {
                Some(record) => {
                    batch.jobs.push(Claimed { id, token: tok, record, claimed_ms: now_ms, claimed_at, held_from })
                }
                None => batch.unreadable.push(Unreadable { tenant: tenant.to_owned(), id, token: tok }),
            }
        }
        Ok(next)
    }

    fn set_depth(&self, tenant: &str, depth: u64) {
        let mut d = self.depths.lock().unwrap_or_else(|e| e.into_inner());
        if depth == 0 {
            d.remove(tenant);
        } else {
            d.insert(tenant.to_owned(), depth);
        }
    }

    pub async fn renew(&self, tenant: &str, id: &str, token: &str, lease_ms: u64) -> Result<bool, QueueError> {
        let mut inv = self.renew.prepare_invoke();
        inv.key(self.tenant_key(tenant, &format!("job:{id}")))
            .key(self.tenant_key(tenant, "inflight"))
            .arg(id)
            .arg(token)
            .arg(lease_ms);
        let n: i64 = self.run(inv).await?;
        Ok(n == 1)
    }

    pub async fn finish(
        &self,
        tenant: &str,
        id: &str,
        token: &str,
        state: &State,
        next: Next,
    ) -> Result<bool, QueueError> {
        let due = match next {
            Next::Due(at) => at.to_string(),
            Next::Done => String::new(),
        };
        let mut inv = self.finish.prepare_invoke();
        inv.key(self.tenant_key(tenant, &format!("job:{id}")))
            .key(self.tenant_key(tenant, "due"))
            .key(self.tenant_key(tenant, "inflight"))
            .arg(id)
            .arg(token)
            .arg(to_json(state)?)
            .arg(due)
            .arg(RETENTION.as_secs());
        let n: i64 = self.run(inv).await?;
        if n == 1 {
            if let Next::Due(at) = next {
                // If this fails, the registry still has a time no later than
                // the lease deadline: the tenant is looked at then.
                if let Err(e) = self.touch(tenant, at).await {
                    tracing::debug!(%tenant, error = %e, "webhook registry not updated");
                }
            }
        }
        Ok(n == 1)
    }

    pub async fn get(&self, id: &str) -> Result<Option<Record>, QueueError> {
        let cmd = redis::cmd("GET").arg(self.registry_key(&format!("id:{id}"))).to_owned();
        let owner: Option<String> = self.query(cmd).await?;
        match owner {
            Some(tenant) => self.read(&tenant, id).await,
            // Perhaps still in the earlier layout, not yet moved over.
            None if matches!(self.target, Target::Single(_)) => {
                self.read_key(format!("{{{}:webhooks}}:job:{id}", self.prefix)).await
            }
            None => Ok(None),
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, QueueError> {
    serde_json::to_string(v).map_err(|e| QueueError(e.to_string()))
}

fn num(v: Option<&String>) -> Result<u64, QueueError> {
    v.and_then(|s| s.parse().ok()).ok_or_else(|| QueueError("unexpected number in a queue reply".into()))
}

/// A time that may be absent (`-1`).
fn signed(v: Option<&String>) -> Result<Option<u64>, QueueError> {
    let n: i64 =
        v.and_then(|s| s.parse().ok()).ok_or_else(|| QueueError("unexpected number in a queue reply".into()))?;
    Ok(u64::try_from(n).ok())
}

fn record(spec: Option<&String>, state: Option<&String>, accepted: Option<&String>) -> Option<Record> {
    let spec: Spec = serde_json::from_str(spec?).ok()?;
    let state: State = serde_json::from_str(state?).ok()?;
    let accepted_ms = accepted?.parse().ok()?;
    Some(Record { spec: Arc::new(spec), state, accepted_ms })
}
