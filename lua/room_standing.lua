-- room_standing.lua (after room.lua): a user's standing, after admitting what time and
-- stock allow. ARGV[1] user id.
return standing(now_ms(), ARGV[1])
