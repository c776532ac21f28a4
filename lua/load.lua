-- load.lua: put a showtime's seats on sale unless they already are.
--
-- KEYS[1] seats  HASH   capacity, available, held, sold
-- KEYS[2] seq    STRING the showtime's reservation sequence
-- ARGV[1] capacity
-- ARGV[2] seats already sold according to PostgreSQL (orders recorded)
-- ARGV[3] 1 when the stock is reloaded after Redis lost it, else 0. Then the sequence
--         jumps to the current time in microseconds: past any number a lost copy may
--         have handed out, so a reservation id still travelling in a queue (an expiry,
--         a payment request, an order) can never name a new hold.
--
-- Returns 1 when it loaded the stock, 0 when the showtime was already there (a restart
-- or a second caller never resets live stock).

if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local capacity = tonumber(ARGV[1])
local sold = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'capacity', capacity, 'available', capacity - sold, 'held', 0, 'sold', sold)
if ARGV[3] == '1' then
  local t = redis.call('TIME')
  local floor = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
  if seq < floor then
    redis.call('SET', KEYS[2], string.format('%.0f', floor))
  end
end
return 1
