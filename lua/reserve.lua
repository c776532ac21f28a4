-- reserve.lua: take a user's seats of a showtime (one, or a group), all or none, as one
-- reservation, atomically.
--
-- Every key carries the showtime's hash tag ({42}) and is declared in KEYS, so the
-- script runs on Redis Cluster (and ElastiCache, which enforces declared keys); the one
-- exception, KEYS[8], is passed only on a single Redis.
-- KEYS[1] seats        HASH  capacity, available, held, sold, max_per_user (absent: 1)
-- KEYS[2] users        HASH  user id -> reservation sequence (held or bought)
-- KEYS[3] seq          STRING per-showtime reservation sequence, floored by the clock (µs)
-- KEYS[4] deadlines    ZSET  reservation sequence -> hold deadline (ms), RESERVED only
-- KEYS[5] reservations HASH  the showtime's reservations, as fields "<seq>:user",
--                            "<seq>:status", "<seq>:expires_at", "<seq>:quantity" (and
--                            later "<seq>:paid_at", "<seq>:trace", and behind a waiting
--                            room "<seq>:admitted_until", the deadline of the admission
--                            the hold used, for expire.lua to give it back should the
--                            hold be undone): one key, whatever
--                            sequence this call creates. A reservation without
--                            "<seq>:quantity" (made before groups existed) is one seat.
-- KEYS[6] room         HASH  the showtime's waiting room (room.lua), when it has one
-- KEYS[7] admitted     ZSET  user -> admission deadline (ms), admitted and unused
-- KEYS[8] the user's list of reservations (ZSET "<showtime>-<seq>" -> seq), only on a
--         single Redis: it has the user's hash tag, not the showtime's, so on Redis
--         Cluster the caller lists the hold in a call of its own. With it, ARGV[5] is
--         the showtime id, ARGV[6] how many the list keeps, ARGV[7] its TTL in seconds.
-- ARGV[1] user id
-- ARGV[2] hold time in milliseconds
-- ARGV[3] the W3C traceparent of the request, or "" when it is not traced: kept on
--         the reservation so that its payment can link to the trace that held it
-- ARGV[4] seats to take, 1..=max_per_user (absent: 1)
--
-- Returns, by the first element:
--   {1, seq, expires_at_ms}  reserved
--   {2, seq, status}         this user already holds or bought reservation seq, which
--                            is in that status now (nil if its record is gone)
--   {3}                      sold out: no seat is left
--   {4}                      unknown showtime (stock not loaded)
--   {5, max_per_user}        more seats asked than the showtime allows one user
--   {6, available}           fewer seats left than asked (at least one): nothing taken
--   {7}                      the showtime has a waiting room and this user holds no
--                            unused, unexpired admission to it: nothing taken
-- Behind a waiting room, a hold ({1}) or sold out ({3}) uses the admission up; {5} and
-- {6} leave it (the buyer may ask again for fewer seats).
-- The clock is Redis's own (TIME), so every deadline is decided on one clock.

local stock = redis.call('HMGET', KEYS[1], 'available', 'max_per_user')
local available = stock[1]
if not available then
  return {4}
end
local quantity = tonumber(ARGV[4] or '1') or 1
local max_per_user = tonumber(stock[2] or '1')
local existing = redis.call('HGET', KEYS[2], ARGV[1])
if existing then
  return {2, tonumber(existing), redis.call('HGET', KEYS[5], existing .. ':status')}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local queued = KEYS[6] and redis.call('HEXISTS', KEYS[6], 'opens_at') == 1
local admitted_until
if queued then
  admitted_until = redis.call('ZSCORE', KEYS[7], ARGV[1])
  if not admitted_until or tonumber(admitted_until) < now then
    return {7}
  end
end
if quantity > max_per_user then
  return {5, max_per_user}
end
available = tonumber(available)
if available <= 0 then
  if queued then
    redis.call('ZREM', KEYS[7], ARGV[1])
  end
  return {3}
end
if available < quantity then
  return {6, available}
end
if queued then
  redis.call('ZREM', KEYS[7], ARGV[1])
end

local expires_at = now + tonumber(ARGV[2])
-- The sequence never falls behind Redis's clock in microseconds: should Redis lose its
-- last writes (appendfsync everysec, a restart from an older snapshot, a failover to a
-- lagging replica) while this showtime's keys survive, the rolled-back counter jumps
-- past every id the lost writes handed out, instead of handing them out again. Bound:
-- ids stay unique as long as the clock of the Redis serving after the loss is not
-- behind the one that served before it, and a showtime hands out fewer ids than one
-- per microsecond over the lost interval.
local floor = tonumber(t[1]) * 1000000 + tonumber(t[2])
local seq = redis.call('INCR', KEYS[3])
if seq < floor then
  seq = floor
  redis.call('SET', KEYS[3], string.format('%.0f', seq))
end
-- As text without exponent: after a reload the sequence is in the 10^15s, past what
-- Lua's default number formatting prints exactly.
local seq_text = string.format('%.0f', seq)

redis.call('HINCRBY', KEYS[1], 'available', -quantity)
redis.call('HINCRBY', KEYS[1], 'held', quantity)
redis.call('HSET', KEYS[2], ARGV[1], seq_text)
redis.call('HSET', KEYS[5], seq_text .. ':user', ARGV[1], seq_text .. ':status', 'RESERVED',
  seq_text .. ':expires_at', expires_at)
if quantity ~= 1 then
  redis.call('HSET', KEYS[5], seq_text .. ':quantity', quantity)
end
if ARGV[3] and ARGV[3] ~= '' then
  redis.call('HSET', KEYS[5], seq_text .. ':trace', ARGV[3])
end
if queued then
  redis.call('HSET', KEYS[5], seq_text .. ':admitted_until', admitted_until)
end
redis.call('ZADD', KEYS[4], expires_at, seq_text)
if KEYS[8] then
  redis.call('ZADD', KEYS[8], seq_text, ARGV[5] .. '-' .. seq_text)
  redis.call('ZREMRANGEBYRANK', KEYS[8], 0, -(tonumber(ARGV[6]) + 1))
  redis.call('EXPIRE', KEYS[8], ARGV[7])
end
return {1, seq, expires_at}
