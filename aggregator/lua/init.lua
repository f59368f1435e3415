-- Create a task's first version, or (force) replace the model with the next version and
-- drop pending updates.
-- KEYS: 1 state, 2 model, 3 model:<version>, 4 updates, then the pending payload keys
-- ARGV: 1 force ("1"/"0"), 2 version, 3 release payload, 4 now
-- Returns {"ok", version}, {"exists", current version} or {"conflict", current version}.
local current = redis.call('HGET', KEYS[1], 'version')
if current and ARGV[1] ~= '1' then
  return {'exists', current}
end
if tostring(tonumber(current or '0') + 1) ~= ARGV[2] then
  return {'conflict', current or '0'}
end
redis.call('DEL', KEYS[4])
for i = 5, #KEYS do
  redis.call('UNLINK', KEYS[i])
end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('COPY', KEYS[2], KEYS[3], 'REPLACE')
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'optimizer', '', 'opened_at', ARGV[4],
           'committed_at', ARGV[4])
redis.call('HSETNX', KEYS[1], 'updates_total', 0)
return {'ok', ARGV[2]}
