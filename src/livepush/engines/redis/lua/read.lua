-- livepush: read a CRDT document, or what a node misses of it (engines/redis/documents.py).
--
-- KEYS[1]  the document's updates  <prefix>:y:{<doc>}:u
-- KEYS[2]  the document's meta     <prefix>:y:{<doc>}:m
-- ARGV[1]  the newest update id the reader has, or '' to read everything
--
-- Returns {snapshot, merged id, newest id, id1, update1, id2, update2, ...}: the updates after
-- ARGV[1], and the snapshot ('' when none) when the reader reads everything or stands before
-- updates that were merged into it. One script, so a compaction never falls in between.
local updates, meta = KEYS[1], KEYS[2]

local function before(a, b)
  local ams, aseq = string.match(a, '(%d+)-(%d+)')
  local bms, bseq = string.match(b, '(%d+)-(%d+)')
  ams, aseq, bms, bseq = tonumber(ams), tonumber(aseq), tonumber(bms), tonumber(bseq)
  return ams < bms or (ams == bms and aseq < bseq)
end

local info = redis.call('HMGET', meta, 's', 'c', 'l')
local merged = info[2] or ''
local result = {'', merged, info[3] or ''}
local start = '-'
if ARGV[1] ~= '' then
  start = '(' .. ARGV[1]
end
if ARGV[1] == '' or (merged ~= '' and before(ARGV[1], merged)) then
  result[1] = info[1] or ''
end
for _, entry in ipairs(redis.call('XRANGE', updates, start, '+')) do
  table.insert(result, entry[1])
  table.insert(result, entry[2][2])
end
return result
