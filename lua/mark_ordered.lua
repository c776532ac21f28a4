-- mark_ordered.lua: PAID -> ORDERED once the order is in PostgreSQL; also REFUSED ->
-- ORDERED when a person fixed the cause of a refusal and replayed the order (its seat,
-- given back at the refusal, counts as sold again).
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
local status = redis.call('HGET', KEYS[2], field)
if status == 'PAID' then
  redis.call('HSET', KEYS[2], field, 'ORDERED')
  return 1
end
if status == 'REFUSED' then
  redis.call('HSET', KEYS[2], field, 'ORDERED')
  redis.call('HINCRBY', KEYS[3], 'sold', 1)
  redis.call('HINCRBY', KEYS[3], 'available', -1)
  return 1
end
return 0
