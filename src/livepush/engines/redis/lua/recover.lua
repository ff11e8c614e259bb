-- livepush: a channel's position, and the messages after a position if they can be recovered.
--
-- KEYS[1]  meta hash, KEYS[2] stream (as in publish.lua)
-- ARGV[1]  since epoch ("" for "position only")
-- ARGV[2]  since offset
-- ARGV[3]  limit (most messages to return)
-- ARGV[4]  history age (milliseconds)
-- ARGV[5]  stream lifetime (milliseconds)
-- ARGV[6]  a fresh random epoch, used only when the channel has none
--
-- Returns {epoch, offset, recovered (0/1), message, message, ...}.
local meta, stream = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = ARGV[6]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', epoch, 'o', 0)
end
redis.call('PEXPIRE', meta, ARGV[5])
local top = tonumber(redis.call('HGET', meta, 'o'))
if ARGV[1] == '' then
  return {epoch, top, 0}
end
local since = tonumber(ARGV[2])
if epoch ~= ARGV[1] or since > top then
  return {epoch, top, 0}
end
if since == top then
  return {epoch, top, 1}
end
if top - since > tonumber(ARGV[3]) then
  return {epoch, top, 0}
end
local entries = redis.call('XRANGE', stream, (since + 1) .. '-0', top .. '-0')
if #entries ~= top - since then
  return {epoch, top, 0}
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if tonumber(entries[1][2][2]) < now - tonumber(ARGV[4]) then
  return {epoch, top, 0}
end
local result = {epoch, top, 1}
for i, entry in ipairs(entries) do
  result[i + 3] = entry[2][4]
end
return result
