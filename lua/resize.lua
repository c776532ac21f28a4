-- resize.lua: change a showtime's capacity (an operator adds seats, or removes unsold
-- ones), atomically with the seats on sale.
--
-- KEYS[1] seats HASH capacity, available, held, sold
-- ARGV[1] seats to add (negative: to remove)
--
-- The seats move in or out of `available`; held and sold seats are never touched. By a
-- difference, not to a number: seats mark_refused.lua took out of the stock (orders the
-- database refused as sold out) stay out, so the capacity here may be below the row's.
-- Returns, by the first element, then the counts after (or, refused, as they are):
--   {1, capacity, available, held, sold}  resized
--   {2, capacity, available, held, sold}  refused: fewer seats are available than removed
--   {0}                                   no stock for this showtime

local c = redis.call('HMGET', KEYS[1], 'capacity', 'available', 'held', 'sold')
if not c[1] or not c[2] then
  return {0}
end
local capacity = tonumber(c[1])
local available = tonumber(c[2])
local held = tonumber(c[3] or '0')
local sold = tonumber(c[4] or '0')
local by = tonumber(ARGV[1])
local after = available + by
if after < 0 then
  return {2, capacity, available, held, sold}
end
local wanted = capacity + by
redis.call('HSET', KEYS[1], 'capacity', wanted, 'available', after)
return {1, wanted, after, held, sold}
