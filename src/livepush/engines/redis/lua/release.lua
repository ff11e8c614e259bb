-- livepush presence: let KEYS[1] lapse after ARGV[2] ms (0: now) if ARGV[1] still holds it.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if tonumber(ARGV[2]) <= 0 then
    redis.call('DEL', KEYS[1])
  else
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
  end
end
return 0
