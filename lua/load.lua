-- load.lua: put a showtime's seats on sale unless they already are, for this very
-- showtime: its state is tagged with the database row's generation (the row's creation
-- time in microseconds), so state another database left under the same showtime id (a
-- database restored, recreated, or pointed at an old Redis) is replaced, not adopted.
--
-- KEYS[1] seats       HASH   capacity, available, held, sold, generation, max_per_user,
--                            row_capacity, row_capacity_stock (the row's capacity and
--                            the stock's it came with, see resize.lua)
-- KEYS[2] seq         STRING the showtime's reservation sequence
-- KEYS[3] users       HASH   user id -> reservation sequence
-- KEYS[4] deadlines   ZSET   live holds by deadline
-- KEYS[5] unrecorded  ZSET   paid reservations not yet recorded
-- KEYS[6] reservations HASH the showtime's reservations (see reserve.lua)
-- ARGV[1] capacity
-- ARGV[2] seats already sold according to PostgreSQL (orders recorded)
-- ARGV[3] 1 when the stock is reloaded after Redis lost it, else 0. Then the sequence
--         jumps to the current time in microseconds: past any number a lost copy may
--         have handed out, so a reservation id still travelling in a queue (an expiry,
--         a payment request, an order) can never name a new hold.
-- ARGV[4] the database row's generation
-- ARGV[5] seats one reservation may take (max_per_user; absent: 1)
--
-- Returns 1 when it loaded the stock, 2 when it replaced another row's state, 0 when
-- this showtime was already there (a restart or a second caller never resets live
-- stock). State without a generation (written before generations existed) is adopted
-- and tagged.

local result = 1
if redis.call('EXISTS', KEYS[1]) == 1 then
  local generation = redis.call('HGET', KEYS[1], 'generation')
  if not generation then
    redis.call('HSET', KEYS[1], 'generation', ARGV[4])
    return 0
  end
  if generation == ARGV[4] then
    return 0
  end
  -- Another row's sale: its holds, buyers, unrecorded payments and reservations are
  -- not this one's. Its reservations go too, so a message still naming one of them (an
  -- expiry, a payment) finds nothing, instead of returning that sale's seat to this
  -- one's stock; the sequence jumps past them, so their ids are never handed out again.
  redis.call('DEL', KEYS[1], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
  ARGV[3] = '1'
  result = 2
end
local capacity = tonumber(ARGV[1])
local sold = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'capacity', capacity, 'available', capacity - sold, 'held', 0,
  'sold', sold, 'generation', ARGV[4], 'max_per_user', tonumber(ARGV[5] or '1') or 1,
  'row_capacity', capacity, 'row_capacity_stock', capacity)
if ARGV[3] == '1' then
  local t = redis.call('TIME')
  local floor = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
  if seq < floor then
    redis.call('SET', KEYS[2], string.format('%.0f', floor))
  end
end
return result
