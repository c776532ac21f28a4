-- room_join.lua (after room.lua): puts users in line, once each, in the order given: the
-- joins that reached one process together, as one step (the adapter's group commit).
-- ARGV: a user id and its lottery draw (an integer below 2^50, drawn by the server), for
--       each user: ARGV[1], ARGV[2] the first, ARGV[3], ARGV[4] the second, ...
-- Returns each user's standing (see room.lua's `standing`) in the same order, or
-- {'none'} without a room.
local now = now_ms()
local opening = redis.call('HGET', KEYS[1], 'opens_at')
if not opening then
  return {'none'}
end
local standings = {}
if now < tonumber(opening) then
  -- Before the opening nothing moves and nobody has a place yet: each user is in (once,
  -- NX keeps a first draw) and waiting, whatever else the room holds.
  for i = 1, #ARGV, 2 do
    redis.call('ZADD', KEYS[2], 'NX', ARGV[i + 1], ARGV[i])
    standings[#standings + 1] = {'waiting'}
  end
  return standings
end
-- A user who passed (their turn came, their admission was used or ran out) and holds
-- no seat now (they never held one, or it expired or was cancelled) joins again at the
-- back, as a new arrival. A marker keeps their old place taken, so nobody else's moves.
local r = redis.call('HMGET', KEYS[1], 'served', 'closed')
if r[2] == '1' then
  -- A closed room may open again at this very step (seats came back, the sale's window
  -- moved): advance first, so that a user who passed joins again in a room that is open.
  advance(now)
  r = redis.call('HMGET', KEYS[1], 'served', 'closed')
end
local served_before = tonumber(r[1] or '0')
local open = r[2] ~= '1'
for i = 1, #ARGV, 2 do
  local user = ARGV[i]
  local arrives = false
  local rank = redis.call('ZRANK', KEYS[2], user)
  if not rank then
    arrives = true
  elseif open and rank < served_before and redis.call('HEXISTS', KEYS[5], user) == 0 then
    local admitted_until = redis.call('ZSCORE', KEYS[3], user)
    if not admitted_until or tonumber(admitted_until) < now then
      local place = redis.call('ZSCORE', KEYS[2], user)
      redis.call('ZREM', KEYS[2], user)
      redis.call('ZREM', KEYS[3], user)
      redis.call('ZADD', KEYS[2], place, 'passed:' .. user .. ':' .. place)
      arrives = true
    end
  end
  if arrives then
    local n = redis.call('HINCRBY', KEYS[1], 'arrivals', 1)
    redis.call('ZADD', KEYS[2], string.format('%.0f', 1125899906842624 + n), user)
  end
end
local served, closed, opens_at = advance(now)
for i = 1, #ARGV, 2 do
  standings[#standings + 1] = standing(now, ARGV[i], served, closed, opens_at)
end
return standings
