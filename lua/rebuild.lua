-- rebuild.lua: rewrite a showtime's seat counts from the facts (reconcile --repair).
--
-- KEYS[1] seats       HASH  capacity, available, held, sold, max_per_user, generation,
--                           row_capacity, row_capacity_stock (see resize.lua)
-- KEYS[2] deadlines   ZSET  live RESERVED holds
-- KEYS[3] unrecorded  ZSET  PAID reservations whose order is not marked recorded
-- KEYS[4] seq         STRING the reservation sequence: when the seats were missing
--                     (Redis lost them), it jumps to the time in microseconds, as in
--                     load.lua, so no old reservation id is ever handed out again
-- KEYS[5] reservations HASH "<seq>:quantity" of each reservation (absent: 1)
-- ARGV[1] capacity (from PostgreSQL)
-- ARGV[2] seats ordered in PostgreSQL (the sum of its orders' quantities)
-- ARGV[3] seats one buyer may take (the row's max_per_user), written as it is
-- ARGV[4] the row's generation: tags the state when the rebuild creates it (Redis had
--         lost it), as load.lua would have, so the rules of the row hold again
-- ARGV[5..] sequences in `unrecorded` whose order PostgreSQL already has (not counted
--           twice)
--
-- held = the seats of the live holds (a group's quantity each); sold = max(sold counted
-- now, seats ordered + seats paid not yet recorded), so a
-- payment racing the rebuild can only make it under-sell, never oversell;
-- available = capacity - held - sold, floored at 0.
-- Returns {available, held, sold, missing}: missing > 0 means held + sold exceed the
-- capacity by that many (an oversell in Redis the database will refuse).

if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'generation', ARGV[4])
  local t = redis.call('TIME')
  local floor = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local seq = tonumber(redis.call('GET', KEYS[4]) or '0')
  if seq < floor then
    redis.call('SET', KEYS[4], string.format('%.0f', floor))
  end
end
local function seats(seq)
  return tonumber(redis.call('HGET', KEYS[5], seq .. ':quantity') or '1')
end
local held = 0
for _, seq in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  held = held + seats(seq)
end
local recorded = {}
for i = 5, #ARGV do
  recorded[ARGV[i]] = true
end
local pending = 0
for _, seq in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  if not recorded[seq] then
    pending = pending + seats(seq)
  end
end
local capacity = tonumber(ARGV[1])
local sold = tonumber(ARGV[2]) + pending
local current = tonumber(redis.call('HGET', KEYS[1], 'sold') or '0')
if current > sold then
  sold = current
end
local available = capacity - held - sold
local missing = 0
if available < 0 then
  missing = -available
  available = 0
end
redis.call('HSET', KEYS[1], 'capacity', capacity, 'available', available, 'held', held, 'sold', sold,
  'max_per_user', ARGV[3], 'row_capacity', capacity, 'row_capacity_stock', capacity)
return {available, held, sold, missing}
