-- room_configure.lua (after room.lua): opens or changes a showtime's waiting room.
-- ARGV[1] opens_at (ms), ARGV[2] admit_per_sec (0: no cap), ARGV[3] overbook_pct,
-- ARGV[4] admission_ms, ARGV[5] the room's lottery salt (a random 64-bit number, as
-- text), kept from the room's first set-up. Places, admissions and what was served stay.
redis.call('HSET', KEYS[1], 'opens_at', ARGV[1], 'admit_per_sec', ARGV[2],
  'overbook_pct', ARGV[3], 'admission_ms', ARGV[4])
redis.call('HSETNX', KEYS[1], 'salt', ARGV[5])
-- A room reopened after more seats came (an operator added some) admits again.
redis.call('HDEL', KEYS[1], 'closed')
return 1
