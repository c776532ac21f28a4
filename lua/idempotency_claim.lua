-- idempotency_claim.lua: claims an idempotency key for a request, or says what holds it.
-- The key's record lives in its showtime's slot (its name carries the showtime's hash
-- tag), so this one step is atomic on Redis Cluster too.
--
-- KEYS[1] record  HASH  state ("pending" or "done"), fp, token, and once done status
--                       and body; expires (a pending claim: its lease; a done one: the
--                       configured time to keep answers)
-- ARGV[1] the request's fingerprint
-- ARGV[2] the claim's token
-- ARGV[3] the claim's lease (ms)
--
-- Returns, by the first element:
--   {1}                 claimed: the record is now this request's, pending
--   {2, status, body}   answered: a request of the same fingerprint recorded this answer
--   {3}                 in progress: a request of the same fingerprint holds the claim
--   {4}                 reused: the record belongs to a request of another fingerprint

local r = redis.call('HMGET', KEYS[1], 'state', 'fp', 'status', 'body')
if not r[1] then
  redis.call('HSET', KEYS[1], 'state', 'pending', 'fp', ARGV[1], 'token', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {1}
end
if r[2] ~= ARGV[1] then
  return {4}
end
if r[1] == 'done' then
  return {2, r[3], r[4]}
end
return {3}
