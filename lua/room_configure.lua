-- room_configure.lua (after room.lua): opens or changes a showtime's waiting room.
-- ARGV[1] opens_at (ms), ARGV[2] admit_per_sec (0: no cap), ARGV[3] overbook_pct,
-- ARGV[4] admission_ms, ARGV[5] the room's lottery salt (a random 64-bit number, as
-- text), kept from the room's first set-up. Places, admissions and what was served stay.
-- Idempotent: the timer sets every room again from its catalog row.
-- ARGV[6], ARGV[7] the sale window's opening and close (ms, '' for none), ARGV[8] 1 when
-- the sale is paused: nobody is admitted while it is paused or not open yet, and the
-- room closes once it has closed (room.lua).
redis.call('HSET', KEYS[1], 'opens_at', ARGV[1], 'admit_per_sec', ARGV[2],
  'overbook_pct', ARGV[3], 'admission_ms', ARGV[4], 'sale_paused', ARGV[8])
redis.call('HSETNX', KEYS[1], 'salt', ARGV[5])
for i, field in ipairs({'sale_from', 'sale_until'}) do
  if ARGV[5 + i] == '' then
    redis.call('HDEL', KEYS[1], field)
  else
    redis.call('HSET', KEYS[1], field, ARGV[5 + i])
  end
end
-- A closed room stays closed here: room.lua's advance opens it again once seats are
-- available in a sale that has not ended (so setting a room again never flaps it open).
return 1
