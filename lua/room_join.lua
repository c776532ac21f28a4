-- room_join.lua (after room.lua): puts a user in line, once.
-- ARGV[1] user id, ARGV[2] the lottery draw (an integer below 2^50, drawn by the server)
-- Returns the user's standing (see room.lua's `standing`), or {'none'} without a room.
local now = now_ms()
local opens_at = redis.call('HGET', KEYS[1], 'opens_at')
if not opens_at then
  return {'none'}
end
if now < tonumber(opens_at) then
  -- Before the opening nothing moves and nobody has a place yet: the user is in (once,
  -- NX keeps a first draw) and waiting, whatever else the room holds.
  redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[1])
  return {'waiting'}
end
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  local n = redis.call('HINCRBY', KEYS[1], 'arrivals', 1)
  redis.call('ZADD', KEYS[2], string.format('%.0f', 1125899906842624 + n), ARGV[1])
end
return standing(now, ARGV[1])
