-- mark_ordered.lua: PAID -> ORDERED once the order is in PostgreSQL; also REFUSED ->
-- ORDERED when a person fixed the cause of a refusal and replayed the order (its seats,
-- given back at the refusal, count as sold again: all of a group's).
--
-- KEYS[1] unrecorded  ZSET  reservation sequence -> paid at (ms)
-- KEYS[2] reservations HASH "<seq>:user", "<seq>:status", ... (see reserve.lua)
-- KEYS[3] seats       HASH  capacity, available, held, sold
-- ARGV[1] reservation sequence
--
-- Returns 1 when it moved the reservation to ORDERED, 0 otherwise (already ORDERED, or
-- gone). Idempotent: a redelivered order message runs it again harmlessly.

redis.call('ZREM', KEYS[1], ARGV[1])
local field = ARGV[1] .. ':status'
local r = redis.call('HMGET', KEYS[2], field, ARGV[1] .. ':quantity')
local status = r[1]
if status == 'PAID' then
  redis.call('HSET', KEYS[2], field, 'ORDERED')
  return 1
end
if status == 'REFUSED' then
  redis.call('HSET', KEYS[2], field, 'ORDERED')
  local quantity = tonumber(r[2] or '1')
  redis.call('HINCRBY', KEYS[3], 'sold', quantity)
  redis.call('HINCRBY', KEYS[3], 'available', -quantity)
  return 1
end
return 0
