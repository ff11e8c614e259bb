-- livepush: replace a CRDT document's snapshot and the updates merged into it
-- (engines/redis/documents.py).
--
-- KEYS[1]  the document's updates  <prefix>:y:{<doc>}:u
-- KEYS[2]  the document's meta     <prefix>:y:{<doc>}:m
-- ARGV[1]  the new snapshot (the old one and every update up to ARGV[2], merged)
-- ARGV[2]  the id of the newest update merged
-- ARGV[3]  the merged id (`c`) of the snapshot it was built on, '' if none
-- ARGV[4]  the bytes of the updates merged
--
-- Returns 1, or 0 when another node compacted the document meanwhile (nothing changes).
local updates, meta = KEYS[1], KEYS[2]
if (redis.call('HGET', meta, 'c') or '') ~= ARGV[3] then
  return 0
end
local ms, seq = string.match(ARGV[2], '(%d+)-(%d+)')
redis.call('XTRIM', updates, 'MINID', ms .. '-' .. (tonumber(seq) + 1))
local info = redis.call('HMGET', meta, 'b', 'ub')
local size = tonumber(info[1] or '0') - redis.call('HSTRLEN', meta, 's') - tonumber(ARGV[4])
  + string.len(ARGV[1])
redis.call('HSET', meta, 's', ARGV[1], 'c', ARGV[2], 'b', size,
  'n', redis.call('XLEN', updates), 'ub', tonumber(info[2] or '0') - tonumber(ARGV[4]))
return 1
