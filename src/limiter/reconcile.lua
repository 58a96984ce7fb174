-- deskgate: charge what the helpdesk reports to a tenant's account window
-- (src/limiter/reconcile.rs). The arithmetic of src/limiter/window/settle.rs
-- on the value layout of window.lua (see there). Rare: only for an answer
-- whose helpdesk count is below the gateway's, or a helpdesk 429; so this
-- reads the account's whole ring and writes it back, simply.
--
-- KEYS[1]  the tenant's budget key.
-- ARGV[1]  packed big-endian: mode u8, quota u32, window_s u32, slot_us u32,
--          arg u48. Mode 1: the helpdesk has `arg` credits left: charge the
--          current slot until the window holds at least quota - arg. Mode 2:
--          the helpdesk refuses for `arg` ms: charge the slot that leaves the
--          window at that time (or at most one slot later) until it and the
--          newer slots hold the whole quota.
-- ARGV[2]  optional: a fixed "now" in microseconds (tests only).
--
-- Returns the credits charged, packed u32. Only ever adds credits.

local unpack, pack, floor, char, byte = struct.unpack, struct.pack, math.floor, string.char, string.byte
local call, key = redis.call, KEYS[1]
local mode, quota, win, slot, arg = unpack('>BI4I4I4I6', ARGV[1])
local now
if ARGV[2] then
  now = tonumber(ARGV[2])
else
  local t = call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- floor(us / slot), exact whatever the float division rounds to.
local function slotof(us)
  local s = floor(us / slot)
  if s * slot > us then s = s - 1 elseif (s + 1) * slot <= us then s = s + 1 end
  return s
end

local function pad(s, n)
  if #s < n then return s .. string.rep('\0', n - #s) end
  return s
end

local h = pad(call('GETRANGE', key, 0, 31), 32)
local deadline, len = unpack('>I6I2', h)
local swin, hi, off, total, cur, head, wide = unpack('>I4I6BI4I4I4B', h, 9)

-- The live slots' counts, by slot.
local counts = {}
local sl = slotof(now)
if swin == win and total > 0 then
  -- `hi` never goes back (window.lua): a clock stepping back frees nothing.
  if sl < hi then sl = hi end
  local r = pad(call('GETRANGE', key, 128, 369), 242)
  local e = false
  if wide == 1 then e = pad(call('GETRANGE', key, 1338, 1579), 242) end
  for x = hi - off, hi - 1 do
    local c = 1 + (x % 121) * 2
    local a, b = byte(r, c, c + 1)
    local v = a * 256 + b
    if e then
      local u, w = byte(e, c, c + 1)
      v = (u * 256 + w) * 65536 + v
    end
    if v > 0 then counts[x] = v end
  end
  if cur > 0 then counts[hi] = (counts[hi] or 0) + cur end
end
if quota > 65535 then wide = 1 end

-- Slots before sl - 120 have left the window.
local live, held = sl - 120, 0
for x, c in pairs(counts) do
  if x < live then counts[x] = nil else held = held + c end
end

local target, n = sl, 0
if mode == 1 then
  if quota - arg > held then n = quota - arg - held end
else
  -- The slot s with (s + 121) * slot >= now + arg, the first such.
  local u = now + arg * 1000
  local s = slotof(u)
  if s * slot < u then s = s + 1 end
  s = s - 121
  if s > sl then s = sl end
  if s < live then s = live end
  target = s
  local from = 0
  for x, c in pairs(counts) do
    if x >= s then from = from + c end
  end
  if quota > from then n = quota - from end
end
if n <= 0 then return pack('>I4', 0) end
counts[target] = (counts[target] or 0) + n

-- The section again: hi is now, first the oldest slot that holds calls.
local first
total = 0
for x, c in pairs(counts) do
  total = total + c
  if not first or x < first then first = x end
end
hi, off, cur, head = sl, sl - first, counts[sl] or 0, counts[first]
local lo, hi16 = {}, {}
for i = 1, 121 do lo[i], hi16[i] = '\0\0', '\0\0' end
for x, c in pairs(counts) do
  if x < sl then
    local i = x % 121 + 1
    local l = c % 65536
    lo[i] = char(floor(l / 256), l % 256)
    local u = floor(c / 65536)
    hi16[i] = char(floor(u / 256) % 256, u % 256)
  end
end

-- Room for the rings (the value only grows, as window.lua grows it).
local need = 370
if wide == 1 then need = 1580 end
if len < need then
  local v = call('GET', key) or ''
  call('SET', key, pad(v, need), 'KEEPTTL')
  len = need
end
-- The key lives until the newest slot leaves the window (plus a second).
local until_ms, nd = floor((sl + 121) * slot / 1000) + 1, deadline
if deadline < until_ms then nd = until_ms + 1000 end
call('SETRANGE', key, 0, pack('>I6I2', nd, len) .. pack('>I4I6BI4I4I4B', win, hi, off, total, cur, head, wide))
call('SETRANGE', key, 128, table.concat(lo))
if wide == 1 then call('SETRANGE', key, 1338, table.concat(hi16)) end
if nd ~= deadline then call('PEXPIRE', key, nd - floor(now / 1000)) end
return pack('>I4', n)
