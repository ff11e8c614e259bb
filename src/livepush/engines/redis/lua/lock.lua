-- livepush: acquire or renew a lock with a fencing token (collaboration locks).
--
-- KEYS[1]  the lock's hash      <prefix>:l:{<name>}     fields h (holder), o (owner), t (token)
-- KEYS[2]  its token counter    <prefix>:l:{<name>}:f   (no expiry: tokens only ever increase)
-- ARGV[1]  holder (a connection's pushRef)
-- ARGV[2]  owner (its user id)
-- ARGV[3]  lifetime (milliseconds)
-- ARGV[4]  "1": the owner's other holders may be taken over from (n8n's force takeover)
--
-- Returns {granted (0/1), holder, owner, token, remaining lifetime in ms}: the lock as it now
-- stands. The same holder renews (same token); a free or expired lock, or a takeover, gets
-- the next token.
local lock, counter = KEYS[1], KEYS[2]
local current = redis.call('HMGET', lock, 'h', 'o', 't')
if current[1] then
  if current[1] == ARGV[1] then
    redis.call('PEXPIRE', lock, ARGV[3])
    return {1, current[1], current[2], tonumber(current[3]), tonumber(ARGV[3])}
  end
  if not (ARGV[4] == '1' and current[2] == ARGV[2]) then
    return {0, current[1], current[2], tonumber(current[3]), redis.call('PTTL', lock)}
  end
end
local token = redis.call('INCR', counter)
redis.call('DEL', lock)
redis.call('HSET', lock, 'h', ARGV[1], 'o', ARGV[2], 't', token)
redis.call('PEXPIRE', lock, ARGV[3])
return {1, ARGV[1], ARGV[2], token, tonumber(ARGV[3])}
