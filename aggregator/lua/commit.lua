-- Commit a new version: release, optimizer state and the consumption of its updates, all
-- or nothing. Every check runs before the first write (Lua scripts do not roll back).
-- KEYS: 1 state, 2 model, 3 model:<new>, 4 model:<expired> (= KEYS[3] if none),
--       5 updates, 6 leader, 7 seen, then the payload key of each consumed update
-- ARGV: 1 expected version, 2 new version, 3 lease owner ("" = no lease check),
--       4 release payload, 5 optimizer state, 6 round opened at, 7 now,
--       8 folded count, 9 dedupe cutoff (unix seconds), then the consumed stream ids
-- Returns {"ok", new version} or {"conflict", current version} / {"fenced", holder}
--         / {"missing", stream id}.
local current = redis.call('HGET', KEYS[1], 'version') or '0'
if current ~= ARGV[1] then
  return {'conflict', current}
end
if ARGV[3] ~= '' then
  local holder = redis.call('GET', KEYS[6])
  if holder ~= ARGV[3] then
    return {'fenced', holder or ''}
  end
end
local n = #ARGV - 9
for i = 1, n do
  local id = ARGV[9 + i]
  if #redis.call('XRANGE', KEYS[5], id, id) == 0 then
    return {'missing', id}
  end
end
redis.call('SET', KEYS[2], ARGV[4])
redis.call('COPY', KEYS[2], KEYS[3], 'REPLACE')
if KEYS[4] ~= KEYS[3] then
  redis.call('DEL', KEYS[4])
end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'optimizer', ARGV[5],
           'opened_at', ARGV[6], 'committed_at', ARGV[7])
redis.call('HINCRBY', KEYS[1], 'updates_total', ARGV[8])
local chunk = 500
for first = 1, n, chunk do
  local last = math.min(first + chunk - 1, n)
  redis.call('XDEL', KEYS[5], unpack(ARGV, 9 + first, 9 + last))
  redis.call('UNLINK', unpack(KEYS, 7 + first, 7 + last))
end
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', '(' .. ARGV[9])
return {'ok', ARGV[2]}
