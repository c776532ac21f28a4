-- pay.lua: RESERVED -> PAID for the reservation's owner, before its deadline.
--
-- KEYS[1] seats       HASH  capacity, available, held, sold
-- KEYS[2] users       HASH  user id -> reservation sequence
-- KEYS[3] deadlines   ZSET  reservation sequence -> hold deadline (ms)
-- KEYS[4] unrecorded  ZSET  reservation sequence -> paid at (ms), PAID until ORDERED
-- KEYS[5] reservations HASH "<seq>:user", "<seq>:status", "<seq>:expires_at",
--                      "<seq>:paid_at", "<seq>:trace" (optional), "<seq>:quantity"
--                      (absent: 1)
-- ARGV[1] user id paying
-- ARGV[2] reservation sequence
--
-- Returns, by the first element:
--   {1, paid_at_ms, trace, quantity}  paid: held -q, sold +q (q the quantity, all of
--                           a group's seats at once); trace is the traceparent of the
--                           request that held, or false
--   {0}              no such reservation
--   {2}              the reservation belongs to another user
--   {3}              expired: it was EXPIRED already, or its deadline has passed, in
--                    which case this script expires it now and returns its seat
--   {4, status}      already PAID or ORDERED (or REFUSED)
--   {5}              cancelled by its owner

local id = ARGV[2] .. ':'
local r = redis.call('HMGET', KEYS[5], id .. 'user', id .. 'status', id .. 'expires_at', id .. 'trace',
  id .. 'quantity')
if not r[1] then
  return {0}
end
if r[1] ~= ARGV[1] then
  return {2}
end
if r[2] == 'EXPIRED' then
  return {3}
end
if r[2] == 'CANCELLED' then
  return {5}
end
if r[2] ~= 'RESERVED' then
  return {4, r[2]}
end

local quantity = tonumber(r[5] or '1')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now >= tonumber(r[3]) then
  redis.call('HSET', KEYS[5], id .. 'status', 'EXPIRED')
  redis.call('HINCRBY', KEYS[1], 'held', -quantity)
  redis.call('HINCRBY', KEYS[1], 'available', quantity)
  if redis.call('HGET', KEYS[2], r[1]) == ARGV[2] then
    redis.call('HDEL', KEYS[2], r[1])
  end
  redis.call('ZREM', KEYS[3], ARGV[2])
  return {3}
end

redis.call('HSET', KEYS[5], id .. 'status', 'PAID', id .. 'paid_at', now)
redis.call('HINCRBY', KEYS[1], 'held', -quantity)
redis.call('HINCRBY', KEYS[1], 'sold', quantity)
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[4], now, ARGV[2])
return {1, now, r[4], quantity}
