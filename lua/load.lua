-- load.lua: put a showtime's seats on sale unless they already are.
--
-- KEYS[1] seats  HASH  capacity, available, held, sold
-- ARGV[1] capacity
-- ARGV[2] seats already sold according to PostgreSQL (orders recorded)
--
-- Returns 1 when it loaded the stock, 0 when the showtime was already there (a restart
-- or a second caller never resets live stock).

if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local capacity = tonumber(ARGV[1])
local sold = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'capacity', capacity, 'available', capacity - sold, 'held', 0, 'sold', sold)
return 1
