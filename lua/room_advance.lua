-- room_advance.lua (after room.lua): admits what time and stock allow.
-- Returns {served, joined, closed (0/1), open (0/1), opens_at (ms), salt (text: the
-- lottery's, "0" for a room set up before it had one), front (the places the stock
-- reaches: served plus the admissions the available seats still allow; served once
-- closed), admit_per_sec (0: no cap)}, or {} without a room.
local now = now_ms()
local served, closed, opens_at = advance(now)
if not opens_at then
  return {}
end
local r = redis.call('HMGET', KEYS[1], 'salt', 'overbook_pct', 'admit_per_sec')
local front = served
if not closed then
  local left = admissions_left(tonumber(redis.call('HGET', KEYS[4], 'available') or '0'), r[2])
  if left > 0 then
    front = served + left
  end
end
return {served, redis.call('ZCARD', KEYS[2]), closed and 1 or 0, now >= opens_at and 1 or 0,
  opens_at, r[1] or '0', front, tonumber(r[3] or '0')}
