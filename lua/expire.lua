-- expire.lua: RESERVED -> EXPIRED, returning its seats (all of a group's) exactly once.
--
-- Called by the expiry consumer when a hold's delayed message arrives, by the sweep for
-- holds whose message never came, and by reserve to give a seat back when its follow-up
-- messages could not be published. Any state other than RESERVED is left alone, so
-- every caller may run it any number of times. Reserve's undo also gives back the
-- admission a hold behind a waiting room used (a failure never uses one up), if it has
-- not run out meanwhile; an expiry does not (the buyer had their turn).
--
-- KEYS[1] seats       HASH  capacity, available, held, sold
-- KEYS[2] users       HASH  user id -> reservation sequence
-- KEYS[3] deadlines   ZSET  reservation sequence -> hold deadline (ms)
-- KEYS[4] reservations HASH "<seq>:user", "<seq>:status", ... (see reserve.lua)
-- KEYS[5] admitted    ZSET  the showtime's waiting room admissions (room.lua); only
--                           with ARGV[2]
-- ARGV[1] reservation sequence
-- ARGV[2] "undo" to give back the admission the hold used (absent: an expiry)
--
-- Returns, by the first element:
--   {1}          expired now: held -q, available +q (q its quantity), the user may
--                try again
--   {0}          no such reservation
--   {2, status}  nothing done: it is PAID, ORDERED, REFUSED, CANCELLED or EXPIRED
--                already

local r = redis.call('HMGET', KEYS[4], ARGV[1] .. ':user', ARGV[1] .. ':status',
  ARGV[1] .. ':quantity', ARGV[1] .. ':admitted_until')
if not r[1] then
  return {0}
end
if r[2] ~= 'RESERVED' then
  return {2, r[2]}
end

redis.call('HSET', KEYS[4], ARGV[1] .. ':status', 'EXPIRED')
local quantity = tonumber(r[3] or '1')
redis.call('HINCRBY', KEYS[1], 'held', -quantity)
redis.call('HINCRBY', KEYS[1], 'available', quantity)
if redis.call('HGET', KEYS[2], r[1]) == ARGV[1] then
  redis.call('HDEL', KEYS[2], r[1])
end
redis.call('ZREM', KEYS[3], ARGV[1])
if ARGV[2] == 'undo' and r[4] and KEYS[5] then
  local t = redis.call('TIME')
  if tonumber(r[4]) > tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) then
    redis.call('ZADD', KEYS[5], r[4], r[1])
  end
end
return {1}
