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
-- A counter that holds no integer (a key left by something else) refuses
-- the whole settle before anything is written, with a WRONGTYPE error (so
-- the proxy keeps it for a retry once the key is fixed): the script is
-- not undone by an error halfway, and a unit marked counted without its
-- units would lose them. Counters saturate at the largest integer Redis
-- holds instead of failing (INCRBY refuses to overflow): usage that large
-- blocks anyway.
--
-- Returns 1 when counted, 0 when counted already.

for i = 4, 6 do
  -- GET on a key of another type raises WRONGTYPE itself.
  local counter = redis.call('GET', KEYS[i])
  if counter and not string.match(counter, '^%-?%d+$') then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds no integer')
  end
end

local counted = 0
for i = 1, 3 do
  if redis.call('ZSCORE', KEYS[i], ARGV[1]) ~= 'inf' then
    redis.call('ZADD', KEYS[i], '+inf', ARGV[1])
    local added = redis.pcall('INCRBY', KEYS[i + 3], ARGV[2])
    if type(added) == 'table' and added.err then
      -- The one error left: the sum would overflow.
      redis.call('SET', KEYS[i + 3], '9223372036854775807', 'KEEPTTL')
    end
    counted = 1
  end
  redis.call('PEXPIRE', KEYS[i], ARGV[2 + i])
  redis.call('PEXPIRE', KEYS[i + 3], ARGV[2 + i])
end
return counted
