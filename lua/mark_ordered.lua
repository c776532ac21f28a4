-- mark_ordered.lua: PAID -> ORDERED once the orders are in PostgreSQL; also REFUSED ->
-- ORDERED when a person fixed the cause of a refusal and replayed the order (its seats,
-- given back at the refusal, count as sold again: all of a group's). One call marks the
-- orders of one showtime that one batch wrote, however many.
--
-- The database has the last word: an order it holds is a sale, whatever Redis says.
-- After Redis lost its last writes (a restart from an older AOF or snapshot, a failover
-- to a lagging replica) the hold of a recorded order can read RESERVED (its payment
-- lost), or EXPIRED / CANCELLED if that ran before the order landed. Each becomes
-- ORDERED here: a RESERVED hold's seats move from held to sold and leave the deadlines
-- (so no expiry or sweep gives them back), an EXPIRED or CANCELLED one's from available
-- to sold (available may go below zero if they were sold again meanwhile: `reconcile`
-- reports it); the buyer is theirs again in the users index, unless they hold another.
-- A hold of another user than the order's (an id a Redis that lost writes handed out
-- again) is not that order, and is left alone.
--
-- KEYS[1] unrecorded  ZSET  reservation sequence -> paid at (ms)
-- KEYS[2] reservations HASH "<seq>:user", "<seq>:status", ... (see reserve.lua)
-- KEYS[3] seats       HASH  capacity, available, held, sold
-- KEYS[4] deadlines   ZSET  reservation sequence -> hold deadline (ms)
-- KEYS[5] users       HASH  user id -> reservation sequence
-- ARGV    pairs: reservation sequence, the user its order is for
--
-- Returns how many reservations it moved to ORDERED (the others were already ORDERED,
-- or gone). Idempotent: a redelivered order message runs it again harmlessly.

local moved = 0
for i = 1, #ARGV, 2 do
  local seq = ARGV[i]
  local field = seq .. ':status'
  local r = redis.call('HMGET', KEYS[2], field, seq .. ':quantity', seq .. ':user')
  local status = r[1]
  local quantity = tonumber(r[2] or '1')
  if r[3] and r[3] ~= ARGV[i + 1] then
    status = nil
  else
    redis.call('ZREM', KEYS[1], seq)
  end
  if status == 'PAID' then
    redis.call('HSET', KEYS[2], field, 'ORDERED')
    moved = moved + 1
  elseif status == 'RESERVED' then
    redis.call('HSET', KEYS[2], field, 'ORDERED')
    redis.call('ZREM', KEYS[4], seq)
    redis.call('HINCRBY', KEYS[3], 'held', -quantity)
    redis.call('HINCRBY', KEYS[3], 'sold', quantity)
    moved = moved + 1
  elseif status == 'REFUSED' or status == 'EXPIRED' or status == 'CANCELLED' then
    redis.call('HSET', KEYS[2], field, 'ORDERED')
    redis.call('HINCRBY', KEYS[3], 'sold', quantity)
    redis.call('HINCRBY', KEYS[3], 'available', -quantity)
    if status ~= 'REFUSED' and r[3] then
      redis.call('HSETNX', KEYS[5], r[3], seq)
    end
    moved = moved + 1
  end
end
return moved
