-- livepush: store one update of a CRDT document (engines/redis/documents.py).
--
-- KEYS[1]  the document's updates  <prefix>:y:{<doc>}:u  (stream; field d: one Yjs update)
-- KEYS[2]  the document's meta     <prefix>:y:{<doc>}:m  (hash: b bytes stored, snapshot and
--          updates together; n updates in the stream; ub their bytes; l the newest update id;
--          s the snapshot; c the newest update id merged into it)
-- ARGV[1]  the update
-- ARGV[2]  the largest document allowed (bytes)
-- ARGV[3]  the document's pub/sub channel  <prefix>:y:{<doc>}
--
-- Returns {1, id, previous id, bytes, updates, update bytes}, or {0, bytes it would reach}
-- when the document would grow over its limit (nothing is stored). Every node that has the
-- document open gets `u <previous id> <id> <update>`: one that did not see the previous id
-- reads the stream from where it stands.
local updates, meta = KEYS[1], KEYS[2]
local info = redis.call('HMGET', meta, 'b', 'n', 'ub', 'l')
local size = tonumber(info[1] or '0') + string.len(ARGV[1])
if size > tonumber(ARGV[2]) then
  return {0, size}
end
local count = tonumber(info[2] or '0') + 1
local update_bytes = tonumber(info[3] or '0') + string.len(ARGV[1])
local previous = info[4] or '0-0'
local id = redis.call('XADD', updates, '*', 'd', ARGV[1])
redis.call('HSET', meta, 'b', size, 'n', count, 'ub', update_bytes, 'l', id)
redis.call('PUBLISH', ARGV[3], 'u ' .. previous .. ' ' .. id .. ' ' .. ARGV[1])
return {1, id, previous, size, count, update_bytes}
