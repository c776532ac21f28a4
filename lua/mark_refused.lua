-- mark_refused.lua: PAID -> REFUSED once the database's refusal of the order is on
-- record. The seat stops counting as sold and goes back on sale (the database has no row
-- for it); the order leaves the unrecorded set, so the sweep never re-sends it. The
-- user's entry in the showtime's index stays: a person refunds the payment.
--
-- KEYS[1] seats       HASH  capacity, available, held, sold
-- KEYS[2] unrecorded  ZSET  reservation sequence -> paid at (ms)
-- KEYS[3] reservations HASH "<seq>:user", "<seq>:status", ... (see reserve.lua)
-- ARGV[1] reservation sequence
--
-- Returns 1 when it moved PAID -> REFUSED, 0 otherwise (already REFUSED, ORDERED, or
-- gone). Idempotent.

redis.call('ZREM', KEYS[2], ARGV[1])
local field = ARGV[1] .. ':status'
if redis.call('HGET', KEYS[3], field) == 'PAID' then
  redis.call('HSET', KEYS[3], field, 'REFUSED')
  redis.call('HINCRBY', KEYS[1], 'sold', -1)
  redis.call('HINCRBY', KEYS[1], 'available', 1)
  return 1
end
return 0
