-- room_consume.lua (after room.lua): uses a user's admission, once: 1 if the user was
-- admitted and the admission had not run out (it is gone now), else 0. ARGV[1] user id.
local deadline = redis.call('ZSCORE', KEYS[3], ARGV[1])
if not deadline or tonumber(deadline) < now_ms() then
  return 0
end
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
