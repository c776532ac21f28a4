-- room_standing.lua (after room.lua): users' standings, after admitting what time and
-- stock allow: the polls that reached one process together, as one step (the adapter's
-- group commit). ARGV: user ids. Returns each one's standing (see room.lua's
-- `standing`), in the same order.
local now = now_ms()
local served, closed, opens_at = advance(now)
local standings = {}
for i = 1, #ARGV do
  standings[i] = standing(now, ARGV[i], served, closed, opens_at)
end
return standings
