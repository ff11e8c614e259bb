-- livepush presence of a channel: KEYS[1] sorted set (member -> expiry ms), KEYS[2] hash
-- (member -> info JSON).
-- ARGV[1] "join" | "leave" | "members"; join: ARGV[2] member, ARGV[3] info, ARGV[4] ttl ms;
-- leave: ARGV[2] member. Returns the live members as {member, info, ...} for "members".
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local op = ARGV[1]
if op == 'join' then
  local expires = now + tonumber(ARGV[4])
  redis.call('ZADD', KEYS[1], expires, ARGV[2])
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  local latest = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
  redis.call('PEXPIREAT', KEYS[1], latest)
  redis.call('PEXPIREAT', KEYS[2], latest)
  return {}
end
if op == 'leave' then
  redis.call('ZREM', KEYS[1], ARGV[2])
  redis.call('HDEL', KEYS[2], ARGV[2])
  return {}
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('HDEL', KEYS[2], unpack(expired))
end
return redis.call('HGETALL', KEYS[2])
