-- v2 draft
local RING, SLOTS = 121, 120
local G, H, RB = 8, 24, 242
local RINGS = G + 5 * H
local EXT = RINGS + 5 * RB
local HF = '>I4I6BI4I4I4B'
local byte, char, sub, rep, floor, pack, unpack = string.byte, string.char, string.sub, string.rep, math.floor, struct.pack, struct.unpack
local call, key = redis.call, KEYS[1]

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
  local t = call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local h = call('GETRANGE', key, '0', '127')
if #h < RINGS then h = h .. rep('\0', RINGS - #h) end

local function loadring(id, wide)
  local b = RINGS + RB * id
  local r = call('GETRANGE', key, b, b + RB - 1)
  if #r < RB then r = r .. rep('\0', RB - #r) end
  local e = false
  if wide == 1 then
    b = EXT + RB * id
    e = call('GETRANGE', key, b, b + RB - 1)
    if #e < RB then e = e .. rep('\0', RB - #e) end
  end
  return r, e
end

local function cell(r, e, x)
  local c = 1 + (x % RING) * 2
  local a, b = byte(r, c, c + 1)
  if e then
    local u, v = byte(e, c, c + 1)
    return ((u * 256 + v) * 256 + a) * 256 + b
  end
  return a * 256 + b
end

local function judge(id, quota, win, slot)
  local swin, hi, off, total, cur, head, wide = unpack(HF, h, G + H * id + 1)
  if quota > 65535 then wide = 1 end
  local op, a1, a2 = 0, false, false
  if swin ~= win then
    if total > 0 then op = 3 end
    hi, off, total, cur, head = 0, 0, 0, 0, 0
  end
  local sl = floor(now / slot)
  if sl * slot > now then sl = sl - 1 elseif (sl + 1) * slot <= now then sl = sl + 1 end
  if total == 0 then
    hi, off, cur, head = sl, 0, 0, 0
  elseif sl <= hi then
    sl = hi
  else
    local live, first = sl - SLOTS, hi - off
    if hi < live then
      op, hi, off, total, cur, head = 3, sl, 0, 0, 0, 0
    elseif first < live then
      local r, e = loadring(id, wide)
      local c = (hi % RING) * 2
      r = sub(r, 1, c) .. char(floor(cur / 256) % 256, cur % 256) .. sub(r, c + 3)
      if e then
        local u = floor(cur / 65536)
        e = sub(e, 1, c) .. char(floor(u / 256) % 256, u % 256) .. sub(e, c + 3)
      end
      for x = first, live - 1 do total = total - cell(r, e, x) end
      local a, m = first % RING, live - first
      local z = a + m
      if z <= RING then
        r = sub(r, 1, a * 2) .. rep('\0', m * 2) .. sub(r, z * 2 + 1)
        if e then e = sub(e, 1, a * 2) .. rep('\0', m * 2) .. sub(e, z * 2 + 1) end
      else
        local o = z - RING
        r = rep('\0', o * 2) .. sub(r, o * 2 + 1, a * 2) .. rep('\0', (RING - a) * 2)
        if e then e = rep('\0', o * 2) .. sub(e, o * 2 + 1, a * 2) .. rep('\0', (RING - a) * 2) end
      end
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
      local need, x = total + cost - quota, hi - off
      if need > head then
        local r, e
        if op == 2 then r, e = a1, a2 else r, e = loadring(id, wide) end
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
      retry = (x + RING) * slot - t
    end
  end
  return wide, hi, off, total, cur, head, t, fits, left, retry, op, a1, a2
end

local function ringput(id, wide, op, a1, a2)
  local b = RINGS + RB * id
  if op == 3 then
    local z = rep('\0', RB)
    call('SETRANGE', key, b, z)
    if wide == 1 then call('SETRANGE', key, EXT + RB * id, z) end
  elseif op == 2 then
    call('SETRANGE', key, b, a1)
    if a2 then call('SETRANGE', key, EXT + RB * id, a2) end
  elseif op == 1 and a2 > 0 then
    local c = (a1 % RING) * 2
    call('SETRANGE', key, b + c, char(floor(a2 / 256) % 256, a2 % 256))
    local u = floor(a2 / 65536)
    if u > 0 then call('SETRANGE', key, EXT + RB * id + c, char(floor(u / 256) % 256, u % 256)) end
  end
end

local wa, hia, offa, tota, cura, heada, ta, fa, la, ra, opa, xa, ya = judge(id1, q1, win1, slot1)
local we, hie, offe, tote, cure, heade, te, fe, le, re, ope, xe, ye
local allowed = fa
if n == 2 then
  we, hie, offe, tote, cure, heade, te, fe, le, re, ope, xe, ye = judge(id2, q2, win2, slot2)
  if fe == 0 then allowed = 0 end
end

if allowed == 1 and cost > 0 then
  local deadline, len = unpack('>I6I2', h)
  local len0 = len
  local maxid = id1
  if n == 2 and id2 > maxid then maxid = id2 end
  local need = RINGS + RB * (maxid + 1)
  if wa == 1 and EXT + RB * (id1 + 1) > need then need = EXT + RB * (id1 + 1) end
  if n == 2 and we == 1 and EXT + RB * (id2 + 1) > need then need = EXT + RB * (id2 + 1) end
  if len < need then
    local v = call('GET', key) or ''
    call('SET', key, v .. rep('\0', need - #v), 'KEEPTTL')
    len = need
  end
  if opa ~= 0 then ringput(id1, wa, opa, xa, ya) end
  if offa == 0 then heada = heada + cost end
  tota, cura = tota + cost, cura + cost
  local until_ms = (hia + RING) * slot1
  local p1, s1 = G + H * id1 + 1, pack(HF, win1, hia, offa, tota, cura, heada, wa)
  local p2, s2
  if n == 2 then
    if ope ~= 0 then ringput(id2, we, ope, xe, ye) end
    if offe == 0 then heade = heade + cost end
    tote, cure = tote + cost, cure + cost
    local u = (hie + RING) * slot2
    if u > until_ms then until_ms = u end
    p2, s2 = G + H * id2 + 1, pack(HF, win2, hie, offe, tote, cure, heade, we)
    if p2 < p1 then p1, s1, p2, s2 = p2, s2, p1, s1 end
  end
  until_ms = floor(until_ms / 1000) + 1
  local g, nd = nil, deadline
  if deadline < until_ms then nd = until_ms + 1000 end
  if nd ~= deadline or len ~= len0 then g = pack('>I6I2', nd, len) else g = sub(h, 1, G) end
  local out
  if p2 then
    out = g .. sub(h, G + 1, p1 - 1) .. s1 .. sub(h, p1 + H, p2 - 1) .. s2 .. sub(h, p2 + H, RINGS)
  else
    out = g .. sub(h, G + 1, p1 - 1) .. s1 .. sub(h, p1 + H, RINGS)
  end
  call('SETRANGE', key, '0', out)
  if nd ~= deadline then call('PEXPIRE', key, nd - floor(now / 1000)) end
end

local rsa = 0
if tota > 0 then rsa = (hia - offa + RING) * slot1 - ta end
if n == 2 then
  local rse = 0
  if tote > 0 then rse = (hie - offe + RING) * slot2 - te end
  return pack('>BBI4i8i8BI4i8i8', allowed, fa, la, ra, rsa, fe, le, re, rse)
end
return pack('>BBI4i8i8', allowed, fa, la, ra, rsa)
