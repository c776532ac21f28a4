-- mark_refused.lua: PAID -> REFUSED once the database's refusal of the order is on
-- record. Its seats (all of a group's) stop counting as sold and go back on sale (the database has no row
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
local r = redis.call('HMGET', KEYS[3], field, ARGV[1] .. ':quantity')
if r[1] == 'PAID' then
  local quantity = tonumber(r[2] or '1')
  redis.call('HSET', KEYS[3], field, 'REFUSED')
  redis.call('HINCRBY', KEYS[1], 'sold', -quantity)
  redis.call('HINCRBY', KEYS[1], 'available', quantity)
  return 1
end
return 0
