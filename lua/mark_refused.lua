-- mark_refused.lua: PAID -> REFUSED once the database's refusal of the order is on
-- record; the order leaves the unrecorded set, so the sweep never re-sends it. The
-- user's entry in the showtime's index stays: a person refunds the payment. Its seats
-- (all of a group's) stop counting as sold and, by ARGV[2]:
--   back_on_sale  go back on sale (available): the database has room, only not for this
--                 order (one order per user, max_per_user, ...)
--   out_of_stock  leave the stock (capacity): the database is sold out, so the seat
--                 store sold seats the database does not have (it lost writes, or the
--                 row's capacity was lowered past them). On sale again, the next buyer
--                 would pay for them and be refused in turn, again and again. Capacity
--                 changes (resize.lua) move the stock by a difference, so they stay out
--                 (`row_capacity_stock`, the capacity resize.lua trusts its
--                 `row_capacity` with, is lowered with the capacity); a replay
--                 the database takes later (mark_ordered.lua) counts its seats sold
--                 again out of available, as for any refusal.
--
-- KEYS[1] seats       HASH  capacity, available, held, sold, row_capacity_stock
-- KEYS[2] unrecorded  ZSET  reservation sequence -> paid at (ms)
-- KEYS[3] reservations HASH "<seq>:user", "<seq>:status", ... (see reserve.lua)
-- ARGV[1] reservation sequence
-- ARGV[2] back_on_sale | out_of_stock (absent: back_on_sale)
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
  if ARGV[2] == 'out_of_stock' then
    redis.call('HINCRBY', KEYS[1], 'capacity', -quantity)
    if redis.call('HEXISTS', KEYS[1], 'row_capacity_stock') == 1 then
      redis.call('HINCRBY', KEYS[1], 'row_capacity_stock', -quantity)
    end
  else
    redis.call('HINCRBY', KEYS[1], 'available', quantity)
  end
  return 1
end
return 0
