-- mark_ordered.lua: PAID -> ORDERED once the orders are in PostgreSQL; also REFUSED ->
-- ORDERED when a person fixed the cause of a refusal and replayed the order (its seats,
-- given back at the refusal, count as sold again: all of a group's). One call marks the
-- orders of one showtime that one batch wrote, however many.
--
-- KEYS[1] unrecorded  ZSET  reservation sequence -> paid at (ms)
-- KEYS[2] reservations HASH "<seq>:user", "<seq>:status", ... (see reserve.lua)
-- KEYS[3] seats       HASH  capacity, available, held, sold
-- ARGV[1..] reservation sequences
--
-- Returns how many reservations it moved to ORDERED (the others were already ORDERED,
-- or gone). Idempotent: a redelivered order message runs it again harmlessly.

local moved = 0
for _, seq in ipairs(ARGV) do
  redis.call('ZREM', KEYS[1], seq)
  local field = seq .. ':status'
  local r = redis.call('HMGET', KEYS[2], field, seq .. ':quantity')
  local status = r[1]
  if status == 'PAID' or status == 'REFUSED' then
    redis.call('HSET', KEYS[2], field, 'ORDERED')
    if status == 'REFUSED' then
      local quantity = tonumber(r[2] or '1')
      redis.call('HINCRBY', KEYS[3], 'sold', quantity)
      redis.call('HINCRBY', KEYS[3], 'available', -quantity)
    end
    moved = moved + 1
  end
end
return moved
