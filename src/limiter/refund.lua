-- deskgate: give back what one admitted call was charged (a call the
-- helpdesk never received, or answered 401), to the slots its charge went
-- to. The counterpart of window.lua, on the same value layout (see there);
-- the arithmetic is Window::refund in src/limiter/window.rs.
--
-- KEYS[1]  the tenant's budget key.
-- ARGV[1]  packed big-endian: cost u32, n u8 (1 or 2 policies), then per
--          policy id u8, window_s u32, slot_us u32, slot u48 (the
--          charged_slot window.lua answered for it).
-- ARGV[2]  optional: a fixed "now" in microseconds (tests only).
--
-- Returns per policy, packed big-endian, the credits given back (u32). A
-- policy gets nothing back when its window was restarted since (another
-- window length), when the slot has left the window, or beyond what the
-- slot holds (never below zero). A missing key is never created.

local unpack, pack, floor = struct.unpack, struct.pack, math.floor
local key, args = KEYS[1], ARGV[1]
local now
if ARGV[2] then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local cost, n = unpack('>I4B', args)
local ids, wins, slots, charged = {}, {}, {}, {}
local maxid = 0
for i = 1, n do
  local at = 6 + 15 * (i - 1)
  ids[i], wins[i], slots[i], charged[i] = unpack('>BI4I4I6', args, at)
  if ids[i] > maxid then maxid = ids[i] end
end

local h = redis.call('GETRANGE', key, 0, 8 + 24 * (maxid + 1) - 1)
if #h < 8 + 24 * (maxid + 1) then
  -- No key, or no section that far: nothing was charged that still counts.
  return string.rep('\0', 4 * n)
end

-- The count of slot x of section id (low and, when wide, high halves).
local function count(id, wide, x)
  local c = (x % 121) * 2
  local r = redis.call('GETRANGE', key, 128 + 242 * id + c, 128 + 242 * id + c + 1)
  local a, b = string.byte(r, 1, 2)
  local v = (a or 0) * 256 + (b or 0)
  if wide == 1 then
    local e = redis.call('GETRANGE', key, 1338 + 242 * id + c, 1338 + 242 * id + c + 1)
    local u, w = string.byte(e, 1, 2)
    v = ((u or 0) * 256 + (w or 0)) * 65536 + v
  end
  return v
end

local function setcount(id, wide, x, v)
  local c = (x % 121) * 2
  redis.call('SETRANGE', key, 128 + 242 * id + c, string.char(floor(v / 256) % 256, v % 256))
  if wide == 1 then
    local u = floor(v / 65536)
    redis.call('SETRANGE', key, 1338 + 242 * id + c, string.char(floor(u / 256) % 256, u % 256))
  end
end

local out = {}
for i = 1, n do
  local id, win, slot, s = ids[i], wins[i], slots[i], charged[i]
  local p = 9 + 24 * id
  local swin, hi, off, total, cur, head, wide = unpack('>I4I6BI4I4I4B', h, p)
  local back = 0
  if swin == win and total > 0 and s > 0 then
    -- The window's "now": the newest slot seen, or the clock's if newer.
    local sl = floor(now / slot)
    if sl * slot > now then sl = sl - 1 elseif (sl + 1) * slot <= now then sl = sl + 1 end
    if sl < hi then sl = hi end
    local first = hi - off
    -- Slots before `first` hold nothing; before sl - 120 they have left.
    if s <= hi and s >= first and s >= sl - 120 then
      local c
      if s == hi then c = cur else c = count(id, wide, s) end
      back = c
      if back > cost then back = cost end
      if back > 0 then
        total = total - back
        if s == hi then cur = cur - back else setcount(id, wide, s, c - back) end
        if s == first then
          head = head - back
          if head == 0 and total > 0 then
            -- The oldest slot emptied: the next one that holds calls is first.
            local x = first
            repeat
              x = x + 1
              if x == hi then head = cur else head = count(id, wide, x) end
            until head > 0 or x >= hi
            off = hi - x
          elseif total == 0 then
            off, cur, head = 0, 0, 0
          end
        end
        redis.call('SETRANGE', key, p - 1, pack('>I4I6BI4I4I4B', swin, hi, off, total, cur, head, wide))
      end
    end
  end
  out[i] = pack('>I4', back)
end
return table.concat(out)
