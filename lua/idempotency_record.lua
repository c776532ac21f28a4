-- idempotency_record.lua: records the answer of the request that claimed a key, for
-- the configured time, if the claim is still that request's.
--
-- KEYS[1] record  HASH  (see idempotency_claim.lua)
-- ARGV[1] the claim's token
-- ARGV[2] the answer's status
-- ARGV[3] the answer's body
-- ARGV[4] how long the answer is kept (ms)
--
-- Returns 1 when recorded; 0 when the claim is not this token's (its lease ran out,
-- and the key is free or another request's): nothing done.

local r = redis.call('HMGET', KEYS[1], 'state', 'token')
if r[1] ~= 'pending' or r[2] ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'done', 'status', ARGV[2], 'body', ARGV[3])
redis.call('HDEL', KEYS[1], 'token')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
