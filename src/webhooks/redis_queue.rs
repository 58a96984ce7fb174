//! The Redis queue (docs/reference.md "Webhook egress" with `store = "redis"`): survives a restart of
//! every replica and lets replicas share the work, one holder per webhook.
//!
//! Keys (all under one hash tag, `{<key_prefix>:webhooks}`):
//! - `…:due` ZSET id → epoch ms when the next attempt may start;
//! - `…:inflight` ZSET id → epoch ms when the holder's lease runs out;
//! - `…:job:<id>` HASH `spec` (JSON, fixed), `state` (JSON), `accepted_ms`,
//!   `owner` (the token of the current claim, absent when nobody holds it).
//!   Delivered and dropped webhooks keep their hash for [`RETENTION`], which
//!   is also how long an id is remembered; then it expires on its own.
//!
//! Every move is one Lua script, so it is atomic: `create` is the SET-NX of
//! the id (an existing hash wins, nothing is charged or queued twice);
//! `claim` reads Redis `TIME` and moves due and lease-expired ids to
//! in-flight under a fresh token; `finish` writes only if the caller's token
//! still owns the webhook. Times compared across replicas are Redis `TIME`,
//! the same clock the Redis rate-limit store uses.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::queue::{token, Batch, Claimed, Created, Next, QueueError, Record, RETENTION};
use super::{Spec, State};

/// Any single queue call slower than this counts as the queue being down.
const OP_TIMEOUT: Duration = Duration::from_secs(2);

const CREATE: &str = r#"
-- KEYS: job, inflight; ARGV: id, spec, state, token, lease_ms
if redis.call('EXISTS', KEYS[1]) == 1 then
  local f = redis.call('HMGET', KEYS[1], 'spec', 'state', 'accepted_ms')
  return {0, f[1] or '', f[2] or '', f[3] or '0'}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'spec', ARGV[2], 'state', ARGV[3], 'accepted_ms', now, 'owner', ARGV[4])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[1])
return {1, now}
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

/// The Redis-backed queue. Connects on first use and reconnects on its own.
pub struct RedisQueue {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    tag: String,
    create: Script,
    claim: Script,
    finish: Script,
}

impl RedisQueue {
    /// Checks the URL; does not connect yet.
    pub fn new(url: &str, key_prefix: &str) -> Result<RedisQueue, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis_url: {e}"))?;
        Ok(RedisQueue {
            client,
            conn: OnceCell::new(),
            tag: format!("{{{key_prefix}:webhooks}}"),
            create: Script::new(CREATE),
            claim: Script::new(CLAIM),
            finish: Script::new(FINISH),
        })
    }

    fn key(&self, what: &str) -> String {
        format!("{}:{what}", self.tag)
    }

    fn job_key(&self, id: &str) -> String {
        format!("{}:job:{id}", self.tag)
    }

    async fn conn(&self) -> Result<ConnectionManager, QueueError> {
        let cm = self
            .conn
            .get_or_try_init(|| async {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(OP_TIMEOUT)
                    .set_response_timeout(OP_TIMEOUT)
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config(self.client.clone(), cfg)
                    .await
                    .map_err(|e| QueueError(e.to_string()))
            })
            .await?;
        Ok(cm.clone())
    }

    async fn run<T: redis::FromRedisValue>(&self, inv: redis::ScriptInvocation<'_>) -> Result<T, QueueError> {
        let mut conn = self.conn().await?;
        match tokio::time::timeout(OP_TIMEOUT, inv.invoke_async(&mut conn)).await {
            Ok(r) => r.map_err(|e| QueueError(e.to_string())),
            Err(_) => Err(QueueError("redis call timed out".into())),
        }
    }

    pub async fn create(&self, id: &str, spec: &Arc<Spec>, token: &str, lease_ms: u64) -> Result<Created, QueueError> {
        let spec_json = to_json(&**spec)?;
        let state_json = to_json(&State::accepted())?;
        let mut inv = self.create.prepare_invoke();
        inv.key(self.job_key(id))
            .key(self.key("inflight"))
            .arg(id)
            .arg(spec_json)
            .arg(state_json)
            .arg(token)
            .arg(lease_ms);
        let v: Vec<String> = self.run(inv).await?;
        match v.first().map(String::as_str) {
            Some("1") => Ok(Created::New { now_ms: num(v.get(1))? }),
            Some("0") => {
                let record = record(v.get(1), v.get(2), v.get(3))
                    .ok_or_else(|| QueueError(format!("stored webhook {id} is unreadable")))?;
                Ok(Created::Existing(record))
            }
            _ => Err(QueueError("unexpected reply from the create script".into())),
        }
    }

    pub async fn claim(&self, max: usize, lease_ms: u64) -> Result<Batch, QueueError> {
        let mut inv = self.claim.prepare_invoke();
        inv.key(self.key("due")).key(self.key("inflight")).arg(max).arg(lease_ms).arg(token()).arg(self.job_key(""));
        let v: Vec<String> = self.run(inv).await?;
        let claimed_at = Instant::now();
        let now_ms = num(v.first())?;
        let depth = num(v.get(1))?;
        let next: i64 = v
            .get(2)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| QueueError("unexpected reply from the claim script".into()))?;
        let mut batch =
            Batch { now_ms, depth, next_ms: u64::try_from(next).ok(), jobs: Vec::new(), unreadable: Vec::new() };
        for c in v.get(3..).unwrap_or_default().chunks_exact(5) {
            let (id, tok) = (c[0].clone(), c[1].clone());
            match record(c.get(2), c.get(3), c.get(4)) {
                Some(record) => batch.jobs.push(Claimed { id, token: tok, record, claimed_ms: now_ms, claimed_at }),
                None => batch.unreadable.push((id, tok)),
            }
        }
        Ok(batch)
    }

    pub async fn finish(&self, id: &str, token: &str, state: &State, next: Next) -> Result<bool, QueueError> {
        let due = match next {
            Next::Due(at) => at.to_string(),
            Next::Done => String::new(),
        };
        let mut inv = self.finish.prepare_invoke();
        inv.key(self.job_key(id))
            .key(self.key("due"))
            .key(self.key("inflight"))
            .arg(id)
            .arg(token)
            .arg(to_json(state)?)
            .arg(due)
            .arg(RETENTION.as_secs());
        let n: i64 = self.run(inv).await?;
        Ok(n == 1)
    }

    pub async fn get(&self, id: &str) -> Result<Option<Record>, QueueError> {
        let mut conn = self.conn().await?;
        let cmd = redis::cmd("HMGET").arg(self.job_key(id)).arg("spec").arg("state").arg("accepted_ms").to_owned();
        let v: Vec<Option<String>> = match tokio::time::timeout(OP_TIMEOUT, cmd.query_async(&mut conn)).await {
            Ok(r) => r.map_err(|e| QueueError(e.to_string()))?,
            Err(_) => return Err(QueueError("redis call timed out".into())),
        };
        match v.as_slice() {
            [Some(spec), Some(state), accepted] => {
                let accepted = accepted.clone().unwrap_or_else(|| "0".to_owned());
                Ok(record(Some(spec), Some(state), Some(&accepted)))
            }
            _ => Ok(None),
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, QueueError> {
    serde_json::to_string(v).map_err(|e| QueueError(e.to_string()))
}

fn num(v: Option<&String>) -> Result<u64, QueueError> {
    v.and_then(|s| s.parse().ok()).ok_or_else(|| QueueError("unexpected number in a queue reply".into()))
}

fn record(spec: Option<&String>, state: Option<&String>, accepted: Option<&String>) -> Option<Record> {
    let spec: Spec = serde_json::from_str(spec?).ok()?;
    let state: State = serde_json::from_str(state?).ok()?;
    let accepted_ms = accepted?.parse().ok()?;
    Some(Record { spec: Arc::new(spec), state, accepted_ms })
}
