-- due.lua: the members of a ZSET scored by a time (ms) that are due: scored at or before
-- Redis's own now minus a grace. The clock is read on the node that holds the key: on
-- Redis Cluster a command without a key (TIME) goes to any node, and a node whose clock
-- runs ahead of the showtime's would make the sweep expire holds before their deadline.
-- One call, where TIME and then ZRANGEBYSCORE took two.
--
-- KEYS[1] ZSET  member -> time (ms): a showtime's deadlines or unrecorded payments
-- ARGV[1] grace in milliseconds
-- ARGV[2] at most this many
--
-- Returns {member, score, member, score, ...}, the earliest first.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cutoff = string.format('%.0f', now - tonumber(ARGV[1]))
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'WITHSCORES', 'LIMIT', 0, ARGV[2])
