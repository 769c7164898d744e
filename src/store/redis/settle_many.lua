-- Counts a settle of more than one unit, once per reservation id (the
-- settles of one unit, and releases, are plain commands: see settle.rs).
-- In each period the reservation's unit is marked counted (score +inf)
-- and the units beyond it are added to the period's counter, unless the
-- unit was counted already: a repeat of this settle counts nothing more.
--
-- KEYS[1..3]  the day's, week's and month's sets of units (ZSET)
-- KEYS[4..6]  the same periods' counters (STRING)
-- ARGV[1]     the reservation's id
-- ARGV[2]     the units beyond the first (>= 1)
-- ARGV[3..5]  TTL of each period's keys (ms)
--
-- Counters saturate at the largest integer Redis holds instead of failing
-- the settle (INCRBY refuses to overflow): usage that large blocks anyway.
--
-- Returns 1 when counted, 0 when counted already.

local counted = 0
for i = 1, 3 do
  if redis.call('ZSCORE', KEYS[i], ARGV[1]) ~= 'inf' then
    redis.call('ZADD', KEYS[i], '+inf', ARGV[1])
    local added = redis.pcall('INCRBY', KEYS[i + 3], ARGV[2])
    if type(added) == 'table' and added.err then
      redis.call('SET', KEYS[i + 3], '9223372036854775807', 'KEEPTTL')
    end
    counted = 1
  end
  redis.call('PEXPIRE', KEYS[i], ARGV[2 + i])
  redis.call('PEXPIRE', KEYS[i + 3], ARGV[2 + i])
end
return counted
