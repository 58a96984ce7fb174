-- deskgate: check and charge one call against a tenant's rolling windows
-- (SPEC §3.2, §4). The same arithmetic as src/limiter/window.rs, on Redis TIME.
--
-- KEYS[1]  the tenant's budget key: one string holding every policy's window.
-- ARGV[1]  cost (0 reads: nothing is written, no key is created)
-- ARGV[2]  n, the number of policies (1 or 2)
-- ARGV[3+4i .. 6+4i]  per policy: id (0 account, 1-4 endpoint), quota,
--          window_s, slot_us (= ceil(window_s * 1e6 / 120), computed in Rust)
-- ARGV[3+4n] optional: a fixed "now" in microseconds (tests only)
--
-- Returns {allowed, then per policy: fits, left_before_charge, retry_us
-- (-1: the cost exceeds the quota), reset_us_after_charge}.
--
-- Value layout: a concatenation of sections, one per policy, each
--   id(1) w(1) window_s(4) hi(6) off(1) total(4) | RING counters of w bytes
-- big-endian. `hi` is the newest slot seen (the window's "now": it never
-- goes back, so a Redis clock stepping backwards cannot free credits early);
-- `off` = hi - first non-empty slot (valid while total > 0); counters live
-- at ring position slot % RING. w is 2 bytes while quota < 65536, else 4.
-- Every step below is O(1) except the eviction of slots that have left
-- (each slot is evicted once) and the retry walk of a refused call (which
-- starts at the first non-empty slot and usually stops there).

local RING, SLOTS, HDR = 121, 120, 17
local byte, sub, rep, char, floor = string.byte, string.sub, string.rep, string.char, math.floor

local function uint(s, p, n)
  local x = 0
  for i = p, p + n - 1 do
    x = x * 256 + byte(s, i)
  end
  return x
end

local function enc(x, n)
  local t = {}
  for i = n, 1, -1 do
    t[i] = x % 256
    x = floor(x / 256)
  end
  return char(unpack(t))
end

local function count(s, slot)
  local p = (slot % RING) * s.w + 1
  if s.w == 2 then
    local a, b = byte(s.ring, p, p + 1)
    return a * 256 + b
  end
  local a, b, c, d = byte(s.ring, p, p + 3)
  return ((a * 256 + b) * 256 + c) * 256 + d
end

local function put(s, slot, c)
  local p = (slot % RING) * s.w
  s.ring = sub(s.ring, 1, p) .. enc(c, s.w) .. sub(s.ring, p + s.w + 1)
end

-- Zeroes n (< RING) consecutive slots starting at absolute slot `from`.
local function zero(s, from, n)
  local w, a = s.w, from % RING
  local z = a + n
  if z <= RING then
    s.ring = sub(s.ring, 1, a * w) .. rep('\0', n * w) .. sub(s.ring, z * w + 1)
  else
    local k = z - RING
    s.ring = rep('\0', k * w) .. sub(s.ring, k * w + 1, a * w) .. rep('\0', (RING - a) * w)
  end
end

local cost = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local now
if ARGV[3 + 4 * n] then
  now = tonumber(ARGV[3 + 4 * n])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Parse the stored sections; only the ones this call uses are decoded.
local v = redis.call('GET', KEYS[1]) or ''
local raws, ids = {}, {}
local p = 1
while p + HDR <= #v do
  local id, w = byte(v, p, p + 1)
  local len = HDR + RING * w
  raws[#raws + 1] = sub(v, p, p + len - 1)
  ids[id] = #raws
  p = p + len
end

local function open(id, quota, win)
  local need_w = (quota > 65535) and 4 or 2
  local i = ids[id]
  if i then
    local r = raws[i]
    local s = { i = i, id = id, w = byte(r, 2), win = uint(r, 3, 4), hi = uint(r, 7, 6),
      off = byte(r, 13), total = uint(r, 14, 4), ring = sub(r, HDR + 1) }
    if s.win == win then
      if s.w < need_w then
        -- A reload raised the quota past 16 bits: widen, keeping the counts.
        local t = {}
        for k = 0, RING - 1 do
          t[k + 1] = enc(count(s, k), 4)
        end
        s.w, s.ring, s.dirty = 4, table.concat(t), true
      end
      return s
    end
    -- The window length changed: slots of another width mean nothing; restart.
    return { i = i, id = id, w = need_w, win = win, hi = 0, off = 0, total = 0, dirty = true }
  end
  return { id = id, w = need_w, win = win, hi = 0, off = 0, total = 0 }
end

-- Drops the slots that left the window; returns the (monotonic) now slot.
local function evict(s, now_slot)
  if s.total == 0 then
    s.hi = now_slot
    return now_slot
  end
  if now_slot < s.hi then
    now_slot = s.hi
  end
  local live = now_slot - SLOTS
  local first = s.hi - s.off
  if first < live then
    if s.hi < live then
      s.ring, s.total = nil, 0
    else
      for sl = first, live - 1 do
        s.total = s.total - count(s, sl)
      end
      zero(s, first, live - first)
      first = live
      -- `hi` is the newest slot seen, not the newest charged: the rest may be empty.
      if s.total == 0 then
        first = now_slot
      else
        while count(s, first) == 0 do
          first = first + 1
        end
      end
    end
    s.dirty = true
  end
  s.hi = now_slot
  s.off = now_slot - first
  return now_slot
end

local n_pol, allowed = {}, true
for k = 0, n - 1 do
  local id, quota, win, slot = tonumber(ARGV[3 + 4 * k]), tonumber(ARGV[4 + 4 * k]),
    tonumber(ARGV[5 + 4 * k]), tonumber(ARGV[6 + 4 * k])
  local s = open(id, quota, win)
  local sl = floor(now / slot)
  if sl * slot > now then sl = sl - 1 elseif (sl + 1) * slot <= now then sl = sl + 1 end
  sl = evict(s, sl)
  local t = now
  if sl * slot > t then t = sl * slot end
  local fits, left, retry = 1, quota - s.total, 0
  if left < 0 then left = 0 end
  if s.total + cost > quota then
    fits, allowed = 0, false
    if cost > quota then
      retry = -1
    else
      local need, freed, x = s.total + cost - quota, 0, s.hi - s.off
      while true do
        freed = freed + count(s, x)
        if freed >= need then break end
        x = x + 1
      end
      retry = (x + RING) * slot - t
    end
  end
  n_pol[k + 1] = { s = s, slot = slot, sl = sl, t = t, fits = fits, left = left, retry = retry }
end

if allowed and cost > 0 then
  for _, q in ipairs(n_pol) do
    local s = q.s
    if s.ring == nil then
      s.ring = rep('\0', RING * s.w)
    end
    if s.total == 0 then
      s.off = 0
    else
      s.off = q.sl - (s.hi - s.off)
    end
    s.hi = q.sl
    put(s, q.sl, count(s, q.sl) + cost)
    s.total = s.total + cost
    s.dirty = true
  end
end

local out = { allowed and 1 or 0 }
for _, q in ipairs(n_pol) do
  local s = q.s
  local reset = 0
  if s.total > 0 then
    reset = (s.hi - s.off + RING) * q.slot - q.t
  end
  out[#out + 1] = q.fits
  out[#out + 1] = q.left
  out[#out + 1] = q.retry
  out[#out + 1] = reset
end

-- Write back (never for a read): the charge, or evictions worth keeping.
if cost > 0 then
  local dirty = false
  for _, q in ipairs(n_pol) do
    local s = q.s
    if s.dirty then
      dirty = true
      if s.ring == nil then
        s.ring, s.off, s.total = rep('\0', RING * s.w), 0, 0
      end
      local sec = char(s.id, s.w) .. enc(s.win, 4) .. enc(s.hi, 6) .. char(s.off) .. enc(s.total, 4) .. s.ring
      if s.i then
        raws[s.i] = sec
      else
        raws[#raws + 1] = sec
      end
    end
  end
  if dirty then
    -- Expire once the longest window has let everything go (plus slack).
    local ttl = 0
    for _, r in ipairs(raws) do
      local ms = uint(r, 3, 4) * 1000
      if ms > ttl then ttl = ms end
    end
    redis.call('SET', KEYS[1], table.concat(raws), 'PX', floor(ttl + ttl / 60) + 1000)
  end
end

return out
