-- mark_ordered.lua: PAID -> ORDERED once the order is in PostgreSQL.
--
-- KEYS[1] unrecorded  ZSET  reservation sequence -> paid at (ms)
-- KEYS[2] reservation HASH  user, status, ...
-- ARGV[1] reservation sequence
--
-- Returns 1 when it moved PAID -> ORDERED, 0 otherwise (already ORDERED, or gone).
-- Idempotent: a redelivered order message runs it again harmlessly.

redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('HGET', KEYS[2], 'status') == 'PAID' then
  redis.call('HSET', KEYS[2], 'status', 'ORDERED')
  return 1
end
return 0
