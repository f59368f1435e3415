-- File a batch of accepted updates of one task, deduplicated by update id, atomically.
-- The payloads were SET (with a TTL) under "incoming" keys in the same pipeline; a new
-- update's payload is renamed to its payload key (O(1), no copy), a duplicate's dropped.
-- KEYS: 1 seen (zset), 2 updates (stream), 3 devices (hash), 4 state (hash),
--       then per update: incoming key, payload key
-- ARGV: 1 now (unix seconds), then per update: update id, device id, base version,
--       num samples
-- Returns {current version, one status per update}: a stream id, or "dup".
local now = ARGV[1]
local out = {redis.call('HGET', KEYS[4], 'version') or '0'}
local count = (#ARGV - 1) / 4
for j = 0, count - 1 do
  local a, k = 2 + 4 * j, 5 + 2 * j
  local uid, device = ARGV[a], ARGV[a + 1]
  if redis.call('ZADD', KEYS[1], 'NX', now, uid) == 0 then
    redis.call('DEL', KEYS[k])
    out[#out + 1] = 'dup'
  else
    redis.call('RENAME', KEYS[k], KEYS[k + 1])
    redis.call('PERSIST', KEYS[k + 1])
    out[#out + 1] = redis.call('XADD', KEYS[2], '*', 'u', uid, 'd', device,
                               'b', ARGV[a + 2], 'n', ARGV[a + 3])
    redis.call('HINCRBY', KEYS[3], device, 1)
    redis.call('HSET', KEYS[3], device .. ':seen', now)
  end
end
return out
