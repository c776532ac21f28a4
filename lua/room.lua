-- room.lua: what every waiting-room script shares; each script is this file followed by
-- its own (the adapter joins them), so one script runs one atomic step.
--
-- KEYS[1] room      HASH  opens_at (ms), admit_per_sec (0: no rate cap), overbook_pct,
--                         admission_ms, served (places admitted so far), last_at (ms:
--                         admissions are paid for up to here), arrivals, closed (1: sold out;
--                         open again once seats are available),
--                         salt (the lottery's: early joiners' numbers are drawn with it),
--                         sale_from, sale_until (ms), sale_paused (1): the sale's window;
--                         nobody is admitted while it is paused or not open yet, and
--                         once it has closed the room closes too
-- KEYS[2] places    ZSET  user -> place score: a lottery draw below 2^50 for a join before
--                         the opening, 2^50 + arrival number after it; a user who passed
--                         and joined again leaves "passed:<user>:<score>" at their old
--                         place (room_join.lua), so the places behind it never move
-- KEYS[3] admitted  ZSET  user -> admission deadline (ms), admitted and not yet decided
-- KEYS[4] seats     HASH  the showtime's seats (reserve.lua): available, held
-- KEYS[5] users     HASH  the showtime's buyers holding or having bought a seat
--                         (reserve.lua's): who may join again once passed
--
-- The clock is Redis's own (TIME), like the holds'.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- How many more may be admitted with `available` seats on sale: the undecided admissions
-- the seats allow (plus `overbook_pct`), less those undecided now.
local function admissions_left(available, overbook_pct)
  return math.ceil(available * (100 + tonumber(overbook_pct)) / 100)
    - redis.call('ZCARD', KEYS[3])
end

-- Admits the line as far as time and stock allow; returns served, closed, opens_at
-- (nil when the showtime has no room).
local function advance(now)
  local r = redis.call('HMGET', KEYS[1], 'opens_at', 'admit_per_sec', 'overbook_pct',
    'admission_ms', 'served', 'last_at', 'closed', 'sale_from', 'sale_until', 'sale_paused')
  if not r[1] then
    return nil
  end
  local opens_at = tonumber(r[1])
  local served = tonumber(r[5] or '0')
  if now < opens_at then
    return served, r[7] == '1', opens_at
  end
  local sale_from = tonumber(r[8] or '')
  local sale_until = tonumber(r[9] or '')
  -- A sale that has closed leaves nothing to wait for, whatever seats are left.
  local ended = sale_until and now >= sale_until
  if r[7] == '1' then
    -- Closed, until seats come back without an operator's change (an order the database
    -- refused, a repair) or the window moves, in a sale that has not ended.
    if ended or tonumber(redis.call('HGET', KEYS[4], 'available') or '0') <= 0 then
      return served, true, opens_at
    end
    redis.call('HDEL', KEYS[1], 'closed')
  end
  -- Admissions not used in time make room for the next in line.
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. now)
  local s = redis.call('HMGET', KEYS[4], 'available', 'held')
  local available = tonumber(s[1] or '0')
  local held = tonumber(s[2] or '0')
  if ended or (s[1] and available <= 0 and held <= 0) then
    redis.call('HSET', KEYS[1], 'closed', 1)
    return served, true, opens_at
  end
  if r[10] == '1' or (sale_from and now < sale_from) then
    -- The sale does not sell now (paused, or not open yet): an admission would only be
    -- refused. Nobody is let in, and no admissions are saved up for later.
    if tonumber(r[2]) > 0 then
      redis.call('HSET', KEYS[1], 'last_at', now)
    end
    return served, false, opens_at
  end
  local waiting = redis.call('ZCARD', KEYS[2]) - served
  local allowed = admissions_left(available, r[3])
  local k = math.min(waiting, allowed)
  local rate = tonumber(r[2])
  local last = tonumber(r[6] or r[1])
  if rate > 0 then
    -- At most a second's worth of admissions saved up while nobody waited.
    if last < now - 1000 then
      last = now - 1000
    end
    local budget = math.floor((now - last) * rate / 1000)
    if budget < k then
      k = budget
    end
  end
  if k > 0 then
    local turn = redis.call('ZRANGE', KEYS[2], served, served + k - 1)
    local deadline = now + tonumber(r[4])
    for _, user in ipairs(turn) do
      redis.call('ZADD', KEYS[3], deadline, user)
    end
    served = served + #turn
    if rate > 0 then
      last = last + #turn * 1000 / rate
    end
    redis.call('HSET', KEYS[1], 'served', served)
  end
  if rate > 0 then
    redis.call('HSET', KEYS[1], 'last_at', string.format('%.3f', last))
  end
  return served, false, opens_at
end

-- A user's standing in a room just advanced (`served`, `closed`, `opens_at`: what
-- `advance(now)` returned): {kind, place, deadline}, kind one of 'waiting' (before the
-- opening), 'line', 'admitted', 'passed', 'sold_out', 'none'. A step that answers many
-- users advances once for all of them (a join to a closed room advances once more first,
-- so that a room able to open again is open to those it places).
local function standing(now, user, served, closed, opens_at)
  if not opens_at then
    return {'none'}
  end
  local place = redis.call('ZRANK', KEYS[2], user)
  if not place then
    if closed then
      return {'sold_out'}
    end
    return {'none'}
  end
  if now < opens_at then
    return {'waiting'}
  end
  if place >= served then
    if closed then
      return {'sold_out'}
    end
    return {'line', place, served}
  end
  local deadline = redis.call('ZSCORE', KEYS[3], user)
  if deadline then
    return {'admitted', place, deadline}
  end
  return {'passed', place}
end

-- Where a room just advanced (`served`, `closed`, `opens_at`: what `advance(now)`
-- returned) stands, as the process's snapshot of it: {served, joined, closed (0/1),
-- open (0/1), opens_at (ms), salt (text: the lottery's, "0" for a room set up before it
-- had one), front (the places the stock reaches: served plus the admissions the
-- available seats still allow; served once closed), admit_per_sec (0: no cap)}, or {}
-- without a room.
local function snapshot(now, served, closed, opens_at)
  if not opens_at then
    return {}
  end
  local r = redis.call('HMGET', KEYS[1], 'salt', 'overbook_pct', 'admit_per_sec')
  local front = served
  if not closed then
    local left = admissions_left(tonumber(redis.call('HGET', KEYS[4], 'available') or '0'), r[2])
    if left > 0 then
      front = served + left
    end
  end
  return {served, redis.call('ZCARD', KEYS[2]), closed and 1 or 0, now >= opens_at and 1 or 0,
    opens_at, r[1] or '0', front, tonumber(r[3] or '0')}
end
