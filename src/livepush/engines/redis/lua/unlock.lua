-- livepush: release a lock (ARGV[3] = "release") or check a fencing token (ARGV[3] = "check"),
-- if ARGV[1] (holder, or "" for any) and ARGV[2] (token) are the lock's current ones.
--
-- KEYS[1]  the lock's hash <prefix>:l:{<name>}
-- Returns 1 when they are (and, for release, the lock is gone), else 0.
local current = redis.call('HMGET', KEYS[1], 'h', 't')
if not current[1] or current[2] ~= ARGV[2] then
  return 0
end
if ARGV[1] ~= '' and current[1] ~= ARGV[1] then
  return 0
end
if ARGV[3] == 'release' then
  redis.call('DEL', KEYS[1])
end
return 1
