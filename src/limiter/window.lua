-- deskgate: check and charge one call against a tenant's rolling windows
-- (SPEC §3.2, §4). The same arithmetic as src/limiter/window.rs, on Redis TIME.
--
-- KEYS[1]  the tenant's budget key: one string holding every policy's window.
-- ARGV[1]  packed big-endian: cost u32, n u8 (1 or 2 policies), then per
--          policy id u8 (0 account, 1-4 endpoint), quota u32, window_s u32,
--          slot_us u32 (= ceil(window_s * 1e6 / 120), computed in Rust).
--          A cost of 0 reads: nothing is written, no key is created.
-- ARGV[2]  optional: a fixed "now" in microseconds (tests only).
--
-- Returns {allowed, then per policy: fits, left_before_charge, retry_us
-- (-1: the cost exceeds the quota), reset_us_after_charge}.
--
-- Value layout: a concatenation of sections, one per policy, each
--   id u8 | w u8 | window_s u32 | hi u48 | off u8 | total u32 | RING counters of w bytes
-- big-endian. `hi` is the newest slot seen (the window's "now": it never
-- goes back, so a Redis clock stepping backwards cannot free credits early);
-- `off` = hi - first non-empty slot (valid while total > 0); counters live
-- at ring position slot % RING. w is 2 bytes while quota < 65536, else 4.
--
-- Cost: Redis runs this for every call, so the common path allocates little
-- (one args blob, no closures, the counters read in place from the GET
-- reply, one SET of the rebuilt value). Rare paths (evicting slots that
-- left, widening counters, the retry walk of a refused call) define their
-- helpers only when they run. Every step is O(1) except eviction (each
-- slot is evicted once) and the retry walk (from the first non-empty slot,
-- usually stopping there).

local RING, SLOTS, HDR, HFMT = 121, 120, 17, '>BBI4I6BI4'
local byte, sub, rep, floor, pack, unpack = string.byte, string.sub, string.rep, math.floor, struct.pack, struct.unpack

local args = ARGV[1]
local cost, n, id1, q1, win1, slot1, id2, q2, win2, slot2
if byte(args, 5) == 1 then
  cost, n, id1, q1, win1, slot1 = unpack('>I4BBI4I4I4', args)
else
  cost, n, id1, q1, win1, slot1, id2, q2, win2, slot2 = unpack('>I4BBI4I4I4BI4I4I4', args)
end
local now
if ARGV[2] then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Locate the stored sections (headers only; nothing is copied).
local v = redis.call('GET', KEYS[1]) or ''
local at1, at2, maxwin, p = nil, nil, 0, 1
while p + HDR <= #v do
  local id, w, win = unpack('>BBI4', v, p)
  if id == id1 then at1 = p elseif id == id2 then at2 = p end
  if win > maxwin then maxwin = win end
  p = p + HDR + RING * w
end
local vlen = p - 1

-- Judges one policy. A section `s` reads its counters from `s.src` at byte
-- `s.base` on: the GET reply itself while untouched.
local pol, allowed = {}, true
for k = 1, n do
  local id, quota, win, slot, q
  if k == 1 then id, quota, win, slot, q = id1, q1, win1, slot1, at1 else id, quota, win, slot, q = id2, q2, win2, slot2, at2 end
  local need_w = (quota > 65535) and 4 or 2
  local s
  if q then
    local _, w, swin, hi, off, total = unpack(HFMT, v, q)
    s = { id = id, p = q, len = HDR + RING * w, w = w, win = swin, hi = hi, off = off, total = total, src = v, base = q + HDR }
    if swin ~= win then
      -- The window length changed: slots of another width mean nothing; restart.
      s = { id = id, p = q, len = s.len, w = need_w, win = win, hi = 0, off = 0, total = 0, base = 1, dirty = true }
    elseif w < need_w then
      -- A reload raised the quota past 16 bits: widen, keeping the counts.
      local t = {}
      for j = 0, RING - 1 do
        local a, b = byte(v, s.base + 2 * j, s.base + 2 * j + 1)
        t[j + 1] = pack('>I4', a * 256 + b)
      end
      s.w, s.src, s.base, s.dirty = 4, table.concat(t), 1, true
    end
  else
    s = { id = id, w = need_w, win = win, hi = 0, off = 0, total = 0, base = 1 }
  end
  local w = s.w
  local function count(slot)
    local c = s.base + (slot % RING) * w
    if w == 2 then
      local a, b = byte(s.src, c, c + 1)
      return a * 256 + b
    end
    local a, b, c2, d = byte(s.src, c, c + 3)
    return ((a * 256 + b) * 256 + c2) * 256 + d
  end

  local sl = floor(now / slot)
  if sl * slot > now then sl = sl - 1 elseif (sl + 1) * slot <= now then sl = sl + 1 end
  -- Evict the slots that left the window; time never goes back per window.
  s.seen = s.hi
  if s.total == 0 then
    s.hi = sl
  else
    if sl < s.hi then sl = s.hi end
    local live = sl - SLOTS
    local first = s.hi - s.off
    if first < live then
      if s.hi < live then
        s.src, s.base, s.total, first = nil, 1, 0, sl
      else
        for x = first, live - 1 do
          s.total = s.total - count(x)
        end
        -- Zero the evicted cells in a private copy of the counters.
        local src = sub(s.src, s.base, s.base + RING * w - 1)
        local a, m = first % RING, live - first
        local z = a + m
        if z <= RING then
          src = sub(src, 1, a * w) .. rep('\0', m * w) .. sub(src, z * w + 1)
        else
          local o = z - RING
          src = rep('\0', o * w) .. sub(src, o * w + 1, a * w) .. rep('\0', (RING - a) * w)
        end
        s.src, s.base = src, 1
        -- `hi` is the newest slot seen, not the newest charged: the rest may be empty.
        if s.total == 0 then
          first = sl
        else
          first = live
          while count(first) == 0 do first = first + 1 end
        end
      end
      s.dirty = true
    end
    s.hi = sl
    s.off = sl - first
  end

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
        freed = freed + count(x)
        if freed >= need then break end
        x = x + 1
      end
      retry = (x + RING) * slot - t
    end
  end
  -- What the charge will write into the current slot: a slot newer than
  -- any seen holds nothing yet (its cell belonged to an evicted slot).
  local c = 0
  if sl <= s.seen and s.total > 0 then c = count(sl) end
  pol[k] = { s = s, slot = slot, sl = sl, t = t, fits = fits, left = left, retry = retry, cell = c }
end

local out = { allowed and 1 or 0 }
for k = 1, n do
  local q = pol[k]
  local s = q.s
  if allowed and cost > 0 then
    if s.total == 0 then s.off = 0 end
    s.total = s.total + cost
    s.charge = q.cell + cost
    s.dirty = true
  end
  local reset = 0
  if s.total > 0 then
    reset = (s.hi - s.off + RING) * q.slot - q.t
  end
  out[4 * k - 2], out[4 * k - 1], out[4 * k], out[4 * k + 1] = q.fits, q.left, q.retry, reset
end

-- Write back (never for a read): the charge, or evictions worth keeping.
if cost > 0 and (pol[1].s.dirty or (pol[2] and pol[2].s.dirty)) then
  if pol[2] and (pol[2].s.p or 1e18) < (pol[1].s.p or 1e18) then
    pol[1], pol[2] = pol[2], pol[1]
  end
  local parts, tail, cursor = {}, nil, 1
  for k = 1, n do
    local q = pol[k]
    local s = q.s
    if s.dirty then
      local w = s.w
      if s.src == nil then s.src, s.base = rep('\0', RING * w), 1 end
      local dst = parts
      if s.p then
        if s.p > cursor then parts[#parts + 1] = sub(v, cursor, s.p - 1) end
        cursor = s.p + s.len
      else
        tail = tail or {}
        dst = tail
      end
      dst[#dst + 1] = pack(HFMT, s.id, w, s.win, s.hi, s.off, s.total)
      local b, e = s.base, s.base + RING * w - 1
      if s.charge then
        local c = b + (q.sl % RING) * w
        dst[#dst + 1] = sub(s.src, b, c - 1)
        dst[#dst + 1] = pack(w == 2 and '>I2' or '>I4', s.charge)
        dst[#dst + 1] = sub(s.src, c + w, e)
      else
        dst[#dst + 1] = sub(s.src, b, e)
      end
      if s.win > maxwin then maxwin = s.win end
    end
  end
  if cursor <= vlen then parts[#parts + 1] = sub(v, cursor, vlen) end
  if tail then
    for _, x in ipairs(tail) do parts[#parts + 1] = x end
  end
  -- Expire once the longest window has let everything go (plus slack).
  local ttl = maxwin * 1000
  redis.call('SET', KEYS[1], table.concat(parts), 'PX', floor(ttl + ttl / 60) + 1000)
end

return out
