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
-- Returns {offset, epoch}. Subscribers receive "<offset>:<epoch>:<message>".
local meta, stream = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = ARGV[6]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', epoch, 'o', 0)
end
local offset = redis.call('HINCRBY', meta, 'o', 1)
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('XADD', stream, 'MAXLEN', ARGV[3], offset .. '-0', 't', now, 'm', ARGV[2])
-- Age bound: entries are in time order, drop the oldest ones that are too old (a few per call).
local cutoff = now - tonumber(ARGV[4])
local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 8)
for _, entry in ipairs(oldest) do
  if tonumber(entry[2][2]) >= cutoff then break end
  redis.call('XDEL', stream, entry[1])
end
redis.call('PEXPIRE', meta, ARGV[5])
redis.call('PEXPIRE', stream, ARGV[5])
local payload = offset .. ':' .. epoch .. ':' .. ARGV[2]
if ARGV[7] == '1' then
  redis.call('SPUBLISH', ARGV[1], payload)
else
  redis.call('PUBLISH', ARGV[1], payload)
end
return {offset, epoch}
