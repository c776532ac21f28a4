-- room_advance.lua (after room.lua): admits what time and stock allow, and returns the
-- room's snapshot (see room.lua's `snapshot`), or {} without a room.
local now = now_ms()
local served, closed, opens_at = advance(now)
return snapshot(now, served, closed, opens_at)
