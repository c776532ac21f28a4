-- resize.lua: change a showtime's capacity (an operator adds seats, or removes unsold
-- ones), atomically with the seats on sale.
--
-- KEYS[1] seats HASH capacity, available, held, sold, row_capacity
-- ARGV[1] the row's capacity before the change
-- ARGV[2] the row's capacity after it
--
-- The seats move in or out of `available`; held and sold seats are never touched. The
-- stock remembers the row capacity it reflects (`row_capacity`, set by load.lua and
-- rebuild.lua) and moves by the difference between that and the new one, not to a
-- number: seats mark_refused.lua took out of the stock (orders the database refused as
-- sold out) stay out, so the capacity here may be below the row's. Running it twice,
-- or again after an answer that never arrived (a timeout, a client that resends), moves
-- nothing the second time; the undo of a change whose row was not written is a resize
-- back to the row's capacity, right whether or not the change had reached Redis. Stock
-- loaded before `row_capacity` existed moves by ARGV[2] - ARGV[1].
-- Returns, by the first element, then the counts after (or, refused, as they are):
--   {1, capacity, available, held, sold}  resized
--   {2, capacity, available, held, sold}  refused: fewer seats are available than removed
--   {0}                                   no stock for this showtime

local c = redis.call('HMGET', KEYS[1], 'capacity', 'available', 'held', 'sold', 'row_capacity')
if not c[1] or not c[2] then
  return {0}
end
local capacity = tonumber(c[1])
local available = tonumber(c[2])
local held = tonumber(c[3] or '0')
local sold = tonumber(c[4] or '0')
local to = tonumber(ARGV[2])
local by = to - tonumber(c[5] or ARGV[1])
local after = available + by
if after < 0 then
  return {2, capacity, available, held, sold}
end
local wanted = capacity + by
redis.call('HSET', KEYS[1], 'capacity', wanted, 'available', after, 'row_capacity', to)
return {1, wanted, after, held, sold}
