-- room_advance.lua (after room.lua): admits what time and stock allow.
-- Returns {served, joined, closed (0/1), open (0/1), opens_at (ms), salt (text: the
-- lottery's, "0" for a room set up before it had one)}, or {} without a room.
local now = now_ms()
local served, closed, opens_at = advance(now)
if not opens_at then
  return {}
end
return {served, redis.call('ZCARD', KEYS[2]), closed and 1 or 0, now >= opens_at and 1 or 0,
  opens_at, redis.call('HGET', KEYS[1], 'salt') or '0'}
