-- idempotency_release.lua: gives up a claim whose request changed nothing (a service
-- behind it failed), so that the next request under the key runs again.
--
-- KEYS[1] record  HASH  (see idempotency_claim.lua)
-- ARGV[1] the claim's token
--
-- Returns 1 when released; 0 when the claim is not this token's: nothing done.

local r = redis.call('HMGET', KEYS[1], 'state', 'token')
if r[1] ~= 'pending' or r[2] ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
