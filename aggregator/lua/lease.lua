-- Take or renew the fold lease. KEYS: 1 leader. ARGV: 1 owner, 2 ttl ms, 3 "1" to release.
-- Returns 1 when ``owner`` holds (or, releasing, held) the lease, else 0.
local holder = redis.call('GET', KEYS[1])
if ARGV[3] == '1' then
  if holder == ARGV[1] then
    redis.call('DEL', KEYS[1])
    return 1
  end
  return 0
end
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
