-- room_standing.lua (after room.lua): users' standings, after admitting what time and
-- stock allow: the polls that reached one process together, as one step (the adapter's
-- group commit). ARGV: user ids. Returns the room's snapshot as this step left it (see
-- room.lua's `snapshot`: {} without a room), then each user's standing (see room.lua's
-- `standing`), in the same order: a poll that needs Redis refreshes the process's view
-- of the room with the same call.
local now = now_ms()
local served, closed, opens_at = advance(now)
local reply = {snapshot(now, served, closed, opens_at)}
for i = 1, #ARGV do
  reply[i + 1] = standing(now, ARGV[i], served, closed, opens_at)
end
return reply
