-- resize.lua: change a showtime's capacity (an operator adds seats, or removes unsold
-- ones), atomically with the seats on sale.
--
-- KEYS[1] seats HASH capacity, available, held, sold, row_capacity, row_capacity_stock
-- ARGV[1] the row's capacity before the change
-- ARGV[2] the row's capacity after it
-- ARGV[3] 1: an undo (the change's row was not written), moving the stock back only
--         while it still reflects the change (ARGV[1]); absent or 0: a change
--
-- The seats move in or out of `available`; held and sold seats are never touched. The
-- stock remembers the row capacity it reflects (`row_capacity`, set by load.lua and
-- rebuild.lua) and moves by the difference between that and the new one, not to a
-- number: seats mark_refused.lua took out of the stock (orders the database refused as
-- sold out) stay out, so the capacity here may be below the row's. Running it twice,
-- or again after an answer that never arrived (a timeout, a client that resends), moves
-- nothing the second time, and the next change brings a stock that ran ahead of its row
-- (a change whose row was never written) back to the row.
--
-- `row_capacity` is trusted only while `row_capacity_stock` (the capacity it was written
-- with, lowered with it by mark_refused.lua) is the capacity: a script of an older
-- version, run by a process not yet upgraded, moves the capacity without them, and the
-- stock then moves by ARGV[2] - ARGV[1], as it did before they existed (so does stock
-- loaded before they existed).
--
-- An undo does nothing when the stock does not reflect the change it undoes: the change
-- never reached it, or another change has moved it to its own row since (the row was
-- unlocked once the failed commit ended).
-- Returns, by the first element, then the counts after (or, refused, as they are):
--   {1, capacity, available, held, sold}  resized (an undo with nothing to undo: as is)
--   {2, capacity, available, held, sold}  refused: fewer seats are available than removed
--   {0}                                   no stock for this showtime

local c = redis.call('HMGET', KEYS[1], 'capacity', 'available', 'held', 'sold', 'row_capacity',
  'row_capacity_stock')
if not c[1] or not c[2] then
  return {0}
end
local capacity = tonumber(c[1])
local available = tonumber(c[2])
local held = tonumber(c[3] or '0')
local sold = tonumber(c[4] or '0')
local from = tonumber(ARGV[1])
local to = tonumber(ARGV[2])
local reflected = from
if c[5] and c[6] and tonumber(c[6]) == capacity then
  reflected = tonumber(c[5])
end
if ARGV[3] == '1' and reflected ~= from then
  return {1, capacity, available, held, sold}
end
local by = to - reflected
local after = available + by
if after < 0 then
  return {2, capacity, available, held, sold}
end
local wanted = capacity + by
redis.call('HSET', KEYS[1], 'capacity', wanted, 'available', after, 'row_capacity', to,
  'row_capacity_stock', wanted)
return {1, wanted, after, held, sold}
