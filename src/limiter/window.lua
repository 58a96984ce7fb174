-- deskgate: check and charge one call against a tenant's rolling windows
-- (docs/reference.md "Budgets", "Store"). The same arithmetic as src/limiter/window.rs, on Redis TIME.
--
-- One script call decides k >= 1 calls, in order, each as if alone (a
-- batch: the gateway sends the calls that are waiting together, so Redis
-- pays its fixed cost per script call once for all of them).
-- KEYS[i]  call i's tenant budget key: one string holding every policy's window.
-- ARGV[i]  call i, packed big-endian: cost u32, n u8 (1 or 2 policies), then
--          per policy id u8 (0 account, 1-4 endpoint), quota u32, window_s
--          u32, slot_us u32 (= ceil(window_s * 1e6 / 120), computed in Rust).
--          A cost of 0 reads: nothing is written, no key is created.
-- ARGV[k+1] optional: a fixed "now" in microseconds (tests only).
--
-- Returns one packed big-endian string, the calls' answers one after the
-- other: allowed u8, then per policy fits u8, left_before_charge u32,
-- retry_us i64 (-1: the cost exceeds the quota), reset_us_after_charge i64,
-- charged_slot u48 (the slot the charge went to, 0 when nothing was
-- charged: what refund.lua needs to give it back).
-- A call whose key holds another type answers allowed = 2 and zeros (the
-- same length), or, alone, the error itself.
--
-- Value layout (fixed offsets, so no call scans for its sections):
--   0     deadline u48 (ms on the script's clock until which the key must
--         live) | len u16 (bytes allocated)
--   8     five section headers of 24 bytes, section id i at 8 + 24 i:
--         window_s u32 | hi u48 | off u8 | total u32 | cur u32 | head u32 | wide u8
--   128   five rings of 121 u16 counters, section i at 128 + 242 i
--   1338  the high 16 bits of the counters of "wide" sections, section i at
--         1338 + 242 i (only once a quota above 65,535 was seen for it)
-- `hi` is the newest slot seen (the window's "now": it never goes back, so a
-- Redis clock stepping backwards cannot free credits early); `off` = hi -
-- first non-empty slot; `total` the sum of every count; `cur` the count of
-- slot `hi` and `head` that of the first non-empty slot (both valid while
-- total > 0). The ring holds slot x at cell x % 121 for first <= x < hi;
-- every other cell, including hi's own, is 0.
--
-- Why this shape: Redis runs this for every call, and what costs is each
-- redis.call, each byte Lua hashes (every string is interned, whole), and
-- each allocation. So the common call reads the header block up to its
-- endpoint's header (one GETRANGE of <= 128 bytes) and, if it charges,
-- writes back that block (one SETRANGE; once for a run of the same key's
-- calls in a batch): the count of the current slot is
-- `cur`, so the rings are written once per slot and policy, when a newer
-- slot begins (the old `cur` goes to its cell), or when slots leave the
-- window (eviction reads and rewrites one ring). A refused call usually
-- finds its Retry-After in `head` without reading a ring. SETRANGE keeps
-- the key's TTL: PEXPIRE runs only when `deadline` must move, and moves it
-- one second further than needed, so at most once a second per busy tenant.
-- The value only grows through SET of the padded value (exact allocation;
-- SETRANGE past the end would allocate twice the length): to 128 + 242 (k+1)
-- bytes for the highest section k used, 1338 bytes for an Enterprise tenant
-- with all four endpoint classes, 2548 at most. Also: number arguments to
-- redis.call are formatted with printf (the hot path passes string
-- constants); a function that captures outer locals allocates them as
-- upvalues on every run (the helpers below take everything as arguments);
-- a table reply is converted element by element (the reply is one string).

local RING, G, H, RB = 121, 8, 24, 242
local RINGS, EXT = 128, 1338 -- G + 5 H, RINGS + 5 RB
local HF = '>I4I6BI4I4I4B'
local floor, pack, unpack = math.floor, struct.pack, struct.unpack
local call, nk = redis.call, #KEYS

-- One clock for the whole batch: its calls are decided at the same instant.
local now
if ARGV[nk + 1] then
  now = tonumber(ARGV[nk + 1])
else
  local t = call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Section `id`'s ring (and high halves when wide) as strings of 242 bytes.
local function loadring(key, id, wide)
  local b = 128 + 242 * id
  local r = redis.call('GETRANGE', key, b, b + 241)
  if #r < 242 then r = r .. string.rep('\0', 242 - #r) end
  local e = false
  if wide == 1 then
    b = 1338 + 242 * id
    e = redis.call('GETRANGE', key, b, b + 241)
    if #e < 242 then e = e .. string.rep('\0', 242 - #e) end
  end
  return r, e
end

-- The count of slot x in ring r (and high halves e, or false).
local function cell(r, e, x)
  local c = 1 + (x % 121) * 2
  local a, b = string.byte(r, c, c + 1)
  if e then
    local u, v = string.byte(e, c, c + 1)
    return ((u * 256 + v) * 256 + a) * 256 + b
  end
  return a * 256 + b
end

-- Judges one policy: evicts (in memory), then fits / left / retry. Returns
-- the section's new header fields and what its ring needs written if the
-- call is charged: op 0 nothing, 1 the count a2 into the cell of slot a1,
-- 2 the whole ring a1 (and high halves a2), 3 zeros.
local function judge(h, now, cost, key, id, quota, win, slot, loadring, cell)
  local swin, hi, off, total, cur, head, wide = struct.unpack('>I4I6BI4I4I4B', h, 9 + 24 * id)
  if quota > 65535 then wide = 1 end
  local op, a1, a2 = 0, false, false
  if swin ~= win then
    -- The window length changed: slots of another width mean nothing; restart.
    if total > 0 then op = 3 end
    hi, off, total, cur, head = 0, 0, 0, 0, 0
  end
  local sl = math.floor(now / slot)
  if sl * slot > now then sl = sl - 1 elseif (sl + 1) * slot <= now then sl = sl + 1 end
  if total == 0 then
    hi, off, cur, head = sl, 0, 0, 0
  elseif sl <= hi then
    sl = hi
  else
    -- A newer slot: `cur` goes to the cell of the old `hi`; slots older
    -- than sl - 120 leave the window.
    local live, first = sl - 120, hi - off
    if hi < live then
      op, hi, off, total, cur, head = 3, sl, 0, 0, 0, 0
    elseif first < live then
      local sub, char, rep, floor = string.sub, string.char, string.rep, math.floor
      local r, e = loadring(key, id, wide)
      local c = (hi % 121) * 2
      r = sub(r, 1, c) .. char(floor(cur / 256) % 256, cur % 256) .. sub(r, c + 3)
      if e then
        local u = floor(cur / 65536)
        e = sub(e, 1, c) .. char(floor(u / 256) % 256, u % 256) .. sub(e, c + 3)
      end
      for x = first, live - 1 do total = total - cell(r, e, x) end
      -- Zero the cells of the slots that left (the run may wrap around).
      local a, m = first % 121, live - first
      local z = a + m
      if z <= 121 then
        r = sub(r, 1, a * 2) .. rep('\0', m * 2) .. sub(r, z * 2 + 1)
        if e then e = sub(e, 1, a * 2) .. rep('\0', m * 2) .. sub(e, z * 2 + 1) end
      else
        local o = z - 121
        r = rep('\0', o * 2) .. sub(r, o * 2 + 1, a * 2) .. rep('\0', (121 - a) * 2)
        if e then e = rep('\0', o * 2) .. sub(e, o * 2 + 1, a * 2) .. rep('\0', (121 - a) * 2) end
      end
      -- `hi` is the newest slot seen, not the newest charged: the rest may be empty.
      if total == 0 then
        first, head = sl, 0
      else
        first = live
        head = cell(r, e, first)
        while head == 0 do
          first = first + 1
          head = cell(r, e, first)
        end
      end
      op, a1, a2 = 2, r, e
      hi, off, cur = sl, sl - first, 0
    else
      op, a1, a2 = 1, hi, cur
      hi, off, cur = sl, sl - first, 0
    end
  end
  local t = now
  if sl * slot > t then t = sl * slot end
  local fits, left, retry = 1, quota - total, 0
  if left < 0 then left = 0 end
  if total + cost > quota then
    fits = 0
    if cost > quota then
      retry = -1
    else
      -- Walk from the first non-empty slot until enough has left.
      local need, x = total + cost - quota, hi - off
      if need > head then
        local r, e
        if op == 2 then r, e = a1, a2 else r, e = loadring(key, id, wide) end
        local freed = head
        repeat
          x = x + 1
          if x == hi then
            freed = freed + cur
          elseif op == 1 and x == a1 then
            freed = freed + a2
          else
            freed = freed + cell(r, e, x)
          end
        until freed >= need
      end
      retry = (x + 121) * slot - t
    end
  end
  return wide, hi, off, total, cur, head, t, fits, left, retry, op, a1, a2
end

-- Writes what `judge` said section `id`'s ring needs.
local function ringput(key, id, wide, op, a1, a2)
  local b, char, floor = 128 + 242 * id, string.char, math.floor
  if op == 3 then
    local z = string.rep('\0', 242)
    redis.call('SETRANGE', key, b, z)
    if wide == 1 then redis.call('SETRANGE', key, 1338 + 242 * id, z) end
  elseif op == 2 then
    redis.call('SETRANGE', key, b, a1)
    if a2 then redis.call('SETRANGE', key, 1338 + 242 * id, a2) end
  elseif op == 1 and a2 > 0 then
    local c = (a1 % 121) * 2
    redis.call('SETRANGE', key, b + c, char(floor(a2 / 256) % 256, a2 % 256))
    local u = floor(a2 / 65536)
    if u > 0 then redis.call('SETRANGE', key, 1338 + 242 * id + c, char(floor(u / 256) % 256, u % 256)) end
  end
end

-- A run of calls for the same key (the gateway sends a batch's calls grouped
-- by key) shares one read and one write of the header block: the block is
-- read at the run's first call, kept here with each charge applied, and
-- written back once when the run ends. A call alone in its run reads and
-- writes as before, and no table is built per key: a lone call costs what
-- it did.
local hkey, h, hdirty = false, false, false

-- The header block `h` with the numbers of a call's one (n = 1) or two
-- sections written in. `HF`, `G` and `H` are spelled out (section id at byte
-- 9 + 24 id): a function that reads outer locals takes them as upvalues on
-- every run of the script.
local function put(h, n, id1, win1, hia, offa, tota, cura, heada, wa, id2, win2, hie, offe, tote, cure, heade, we)
  local pack, sub, hf = struct.pack, string.sub, '>I4I6BI4I4I4B'
  local p1, s1 = 9 + 24 * id1, pack(hf, win1, hia, offa, tota, cura, heada, wa)
  if n == 1 then return sub(h, 1, p1 - 1) .. s1 .. sub(h, p1 + 24) end
  local p2, s2 = 9 + 24 * id2, pack(hf, win2, hie, offe, tote, cure, heade, we)
  if p2 < p1 then p1, s1, p2, s2 = p2, s2, p1, s1 end
  return sub(h, 1, p1 - 1) .. s1 .. sub(h, p1 + 24, p2 - 1) .. s2 .. sub(h, p2 + 24)
end

local out
if nk > 1 then out = {} end
-- The previous call's arguments, unpacked: a burst of one endpoint sends the
-- same bytes call after call, and equal Lua strings are one object, so the
-- comparison is a pointer's.
local pargs, cost, n, id1, q1, win1, slot1, id2, q2, win2, slot2 = false
-- The previous call's sections after its judgement (and charge), as numbers.
local wa, hia, offa, tota, cura, heada, ta, we, hie, offe, tote, cure, heade, te
-- `rep`: the previous call was charged, inside a run (so `h` is this key's).
-- The same call again, on the same clock, then finds its sections exactly as
-- the previous one left them: no slot has begun or left (the clock has not
-- moved), the window length and the value's size are what the charge made
-- them. If it fits it is decided and charged on these numbers alone, and
-- `h` is brought up to date (`stale`) only when something else reads it.
-- A burst of one tenant's one endpoint is the batch that costs the most, so
-- this is the path that counts (BENCHMARKS.md).
local rep, stale = false, false
for i = 1, nk do
  local key, args = KEYS[i], ARGV[i]
  local reply
  if rep and args == pargs and key == hkey and tota + cost <= q1 and (n == 1 or tote + cost <= q2) then
    -- As judge + charge would: fits, left before the charge (at least
    -- `cost`, so never clamped), no retry, the reset after the charge.
    local la = q1 - tota
    if offa == 0 then heada = heada + cost end
    tota, cura = tota + cost, cura + cost
    local rsa = (hia - offa + RING) * slot1 - ta
    if n == 2 then
      local le = q2 - tote
      if offe == 0 then heade = heade + cost end
      tote, cure = tote + cost, cure + cost
      reply = pack('>BBI4i8i8I6BI4i8i8I6', 1, 1, la, 0, rsa, hia, 1, le, 0, (hie - offe + RING) * slot2 - te, hie)
    else
      reply = pack('>BBI4i8i8I6', 1, 1, la, 0, rsa, hia)
    end
    stale = true
    out[i] = reply
  else
    if stale then
      h = put(h, n, id1, win1, hia, offa, tota, cura, heada, wa, id2, win2, hie, offe, tote, cure, heade, we)
      stale = false
    end
    rep = false
    if args ~= pargs then
      pargs = args
      if string.byte(args, 5) == 1 then
        cost, n, id1, q1, win1, slot1 = unpack('>I4BBI4I4I4', args)
      else
        cost, n, id1, q1, win1, slot1, id2, q2, win2, slot2 = unpack('>I4BBI4I4I4BI4I4I4', args)
      end
    end

    -- The header block up to the last section this call uses. pcall: a key
    -- that holds another type (WRONGTYPE) fails this call, not the whole batch.
    local maxid = id1
    if n == 2 and id2 > maxid then maxid = id2 end
    local hend = G + H * (maxid + 1)
    if key ~= hkey then
      if hdirty then call('SETRANGE', hkey, '0', h) end
      hkey, hdirty = key, false
      h = redis.pcall('GETRANGE', key, '0', maxid == 0 and '31' or maxid == 1 and '55' or maxid == 2 and '79'
        or maxid == 3 and '103' or '127')
    elseif type(h) == 'string' and #h < hend then
      -- The run's earlier calls read less; the bytes after them are Redis's.
      local more = redis.pcall('GETRANGE', key, tostring(#h), tostring(hend - 1))
      if type(more) == 'table' then h = more else h = h .. more end
    end
    if type(h) == 'table' then
      if nk == 1 then return h end
      -- Marker 2 in place of `allowed`, padded to the reply's usual length.
      reply = string.char(2) .. string.rep('\0', 27 * n)
    else
      if #h < hend then h = h .. string.rep('\0', hend - #h) end

      local fa, la, ra, opa, xa, ya, fe, le, re, ope, xe, ye
      wa, hia, offa, tota, cura, heada, ta, fa, la, ra, opa, xa, ya =
        judge(h, now, cost, key, id1, q1, win1, slot1, loadring, cell)
      local allowed = fa
      if n == 2 then
        we, hie, offe, tote, cure, heade, te, fe, le, re, ope, xe, ye =
          judge(h, now, cost, key, id2, q2, win2, slot2, loadring, cell)
        if fe == 0 then allowed = 0 end
      end

      -- Charge (never for a read or a refusal): the rings are written now,
      -- the header block when the run of this key's calls ends.
      if allowed == 1 and cost > 0 then
        local deadline, len = unpack('>I6I2', h)
        local len0 = len
        local need = RINGS + RB * (maxid + 1)
        if wa == 1 and EXT + RB * (id1 + 1) > need then need = EXT + RB * (id1 + 1) end
        if n == 2 and we == 1 and EXT + RB * (id2 + 1) > need then need = EXT + RB * (id2 + 1) end
        if len < need then
          -- Redis's header block may be behind `h`: the flush overwrites it.
          local v = call('GET', key) or ''
          call('SET', key, v .. string.rep('\0', need - #v), 'KEEPTTL')
          len = need
        end
        if opa ~= 0 then ringput(key, id1, wa, opa, xa, ya) end
        if offa == 0 then heada = heada + cost end
        tota, cura = tota + cost, cura + cost
        -- The charged slot counts until the clock reaches (hi + 121) slots.
        local until_us = (hia + RING) * slot1
        local p1, s1 = G + H * id1 + 1, pack(HF, win1, hia, offa, tota, cura, heada, wa)
        local p2, s2
        if n == 2 then
          if ope ~= 0 then ringput(key, id2, we, ope, xe, ye) end
          if offe == 0 then heade = heade + cost end
          tote, cure = tote + cost, cure + cost
          local u = (hie + RING) * slot2
          if u > until_us then until_us = u end
          p2, s2 = G + H * id2 + 1, pack(HF, win2, hie, offe, tote, cure, heade, we)
          if p2 < p1 then p1, s1, p2, s2 = p2, s2, p1, s1 end
        end
        local nd, until_ms = deadline, floor(until_us / 1000) + 1
        if deadline < until_ms then nd = until_ms + 1000 end
        local sub = string.sub
        if hdirty or KEYS[i + 1] == key then
          -- Inside a run: the block is kept whole and written when the run ends.
          if p2 then
            h = sub(h, 1, p1 - 1) .. s1 .. sub(h, p1 + H, p2 - 1) .. s2 .. sub(h, p2 + H)
          else
            h = sub(h, 1, p1 - 1) .. s1 .. sub(h, p1 + H)
          end
          if nd ~= deadline or len ~= len0 then h = pack('>I6I2', nd, len) .. sub(h, G + 1) end
          hdirty, rep = true, true
        else
          local body = s1
          if p2 then body = s1 .. sub(h, p1 + H, p2 - 1) .. s2 end
          if nd ~= deadline or len ~= len0 or p1 ~= G + 1 then
            call('SETRANGE', key, '0', pack('>I6I2', nd, len) .. sub(h, G + 1, p1 - 1) .. body)
          else
            call('SETRANGE', key, '8', body)
          end
        end
        if nd ~= deadline then call('PEXPIRE', key, nd - floor(now / 1000)) end
      end

      local rsa, csa, cse = 0, 0, 0
      if tota > 0 then rsa = (hia - offa + RING) * slot1 - ta end
      -- A charge went to the slot `hi` (the newest seen: never one passed over).
      if allowed == 1 and cost > 0 then csa, cse = hia, hie end
      if n == 2 then
        local rse = 0
        if tote > 0 then rse = (hie - offe + RING) * slot2 - te end
        reply = pack('>BBI4i8i8I6BI4i8i8I6', allowed, fa, la, ra, rsa, csa, fe, le, re, rse, cse)
      else
        reply = pack('>BBI4i8i8I6', allowed, fa, la, ra, rsa, csa)
      end
    end
    if nk == 1 then return reply end
    out[i] = reply
  end
end
if stale then
  h = put(h, n, id1, win1, hia, offa, tota, cura, heada, wa, id2, win2, hie, offe, tote, cure, heade, we)
end
if hdirty then call('SETRANGE', hkey, '0', h) end
return table.concat(out)
