-- livepush: publish one reliable message to a channel (Redis-level format version 1).
--
-- Assigns the channel's next offset, appends the message to the channel's history stream and
-- publishes it, atomically: every node sees a channel's messages in one order.
--
-- KEYS[1]  the channel's meta hash   <prefix>:{<channel>}:m   fields e (epoch), o (offset)
-- KEYS[2]  the channel's stream      <prefix>:{<channel>}:s   entry id <offset>-0, fields t, m
-- ARGV[1]  the pub/sub channel       <prefix>:{<channel>}
-- ARGV[2]  the message: JSON {"channel","type","data","ts"} (see docs/protocol.md)
-- ARGV[3]  history size (entries kept)
-- ARGV[4]  history age (milliseconds)
-- ARGV[5]  stream lifetime after the last publication (milliseconds)
-- ARGV[6]  a fresh random epoch, used only when the channel has none (new, or lost by Redis)
-- ARGV[7]  "1" to publish with SPUBLISH (Redis Cluster, sharded pub/sub), else PUBLISH
--
-- Optional, for execution channels (livepush/execution; other publishers pass none of these):
-- ARGV[8]  "1": the message is ARGV[2] .. <offset> .. ARGV[9] (the offset is the event's
--          sequenceNumber), else ARGV[2] alone
-- ARGV[9]  the message's tail (with ARGV[8] = "1")
-- KEYS[3]  the execution's state hash <prefix>:{<channel>}:x, updated in the same step:
-- ARGV[10] its lifetime after this update (milliseconds)
-- ARGV[11] n, then ARGV[12 .. 11+n] fields to delete, then field, value pairs to set
--          (fields e and o are set to the epoch and the offset of this message)
--
-- Returns {offset, epoch}. Subscribers receive "<offset>:<epoch>:<message>".
local meta, stream = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = ARGV[6]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', epoch, 'o', 0)
end
local offset = redis.call('HINCRBY', meta, 'o', 1)
local message = ARGV[2]
if ARGV[8] == '1' then
  message = ARGV[2] .. offset .. ARGV[9]
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('XADD', stream, 'MAXLEN', ARGV[3], offset .. '-0', 't', now, 'm', message)
-- Age bound: entries are in time order, drop the oldest ones that are too old (a few per call).
local cutoff = now - tonumber(ARGV[4])
local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 8)
for _, entry in ipairs(oldest) do
  if tonumber(entry[2][2]) >= cutoff then break end
  redis.call('XDEL', stream, entry[1])
end
redis.call('PEXPIRE', meta, ARGV[5])
redis.call('PEXPIRE', stream, ARGV[5])
if KEYS[3] then
  local state = KEYS[3]
  local deletes = tonumber(ARGV[11])
  for i = 12, 11 + deletes do
    redis.call('HDEL', state, ARGV[i])
  end
  redis.call('HSET', state, 'e', epoch, 'o', offset)
  for i = 12 + deletes, #ARGV, 2 do
    redis.call('HSET', state, ARGV[i], ARGV[i + 1])
  end
  redis.call('PEXPIRE', state, ARGV[10])
end
local payload = offset .. ':' .. epoch .. ':' .. message
if ARGV[7] == '1' then
  redis.call('SPUBLISH', ARGV[1], payload)
else
  redis.call('PUBLISH', ARGV[1], payload)
end
return {offset, epoch}
