-- cancel.lua: RESERVED -> CANCELLED for the reservation's owner, before its deadline,
-- returning its seats (all of a group's) exactly once and letting the user hold again.
--
-- KEYS[1] seats        HASH  capacity, available, held, sold
-- KEYS[2] users        HASH  user id -> reservation sequence
-- KEYS[3] deadlines    ZSET  reservation sequence -> hold deadline (ms)
-- KEYS[4] reservations HASH  "<seq>:user", "<seq>:status", ... (see reserve.lua)
-- ARGV[1] user id cancelling
-- ARGV[2] reservation sequence
--
-- Returns, by the first element:
--   {1}          cancelled now: held -q, available +q (q its quantity)
--   {5}          it was CANCELLED already (a repeated cancel): nothing done
--   {0}          no such reservation
--   {2}          the reservation belongs to another user
--   {3}          expired: it was EXPIRED already, or its deadline has passed, in which
--                case this script expires it now and returns its seat
--   {4, status}  too late: PAID, ORDERED or REFUSED

local id = ARGV[2] .. ':'
local r = redis.call('HMGET', KEYS[4], id .. 'user', id .. 'status', id .. 'expires_at',
  id .. 'quantity')
if not r[1] then
  return {0}
end
if r[1] ~= ARGV[1] then
  return {2}
end
if r[2] == 'CANCELLED' then
  return {5}
end
if r[2] == 'EXPIRED' then
  return {3}
end
if r[2] ~= 'RESERVED' then
  return {4, r[2]}
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local status = 'CANCELLED'
if now >= tonumber(r[3]) then
  status = 'EXPIRED'
end
redis.call('HSET', KEYS[4], id .. 'status', status)
local quantity = tonumber(r[4] or '1')
redis.call('HINCRBY', KEYS[1], 'held', -quantity)
redis.call('HINCRBY', KEYS[1], 'available', quantity)
if redis.call('HGET', KEYS[2], r[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[2], r[1])
end
redis.call('ZREM', KEYS[3], ARGV[2])
if status == 'EXPIRED' then
  return {3}
end
return {1}
