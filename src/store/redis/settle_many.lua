-- Counts a settle of more than one unit, once per reservation id (the
-- settles of one unit, and releases, are plain commands: see settle.rs).
-- The reservation's unit is marked counted (scored with an instant of its
-- periods) and the units beyond it are added to each period's counter,
-- unless the unit was counted already: a repeat of this settle counts
-- nothing more.
--
-- KEYS[1]     the user's set of units (ZSET)
-- KEYS[2..4]  the day's, week's and month's counters (STRING)
-- ARGV[1]     the reservation's id
-- ARGV[2]     the units beyond the first (>= 1)
-- ARGV[3]     the score of a unit counted in these periods
-- ARGV[4]     the least TTL the set needs (ms)
-- ARGV[5..7]  TTL of each period's counter (ms)
-- ARGV[8]     '(' and the score of a unit counted at the first start of
--             its periods: units counted before it score above it, count
--             no more and are removed ('' to remove none)
-- ARGV[9]     the score of a unit whose deadline is now: expired units
--             score up to there ('' with ARGV[8])
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

for i = 2, 4 do
  -- GET on a key of another type raises WRONGTYPE itself.
  local counter = redis.call('GET', KEYS[i])
  if counter and not string.match(counter, '^%-?%d+$') then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds no integer')
  end
end

local counted = 0
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  for i = 2, 4 do
    local added = redis.pcall('INCRBY', KEYS[i], ARGV[2])
    if type(added) == 'table' and added.err then
      -- The one error left: the sum would overflow.
      redis.call('SET', KEYS[i], '9223372036854775807', 'KEEPTTL')
    end
  end
  counted = 1
end
-- At least the TTL the periods need (-1: none yet).
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
for i = 2, 4 do
  redis.call('PEXPIRE', KEYS[i], ARGV[3 + i])
end
if ARGV[8] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], ARGV[8], '+inf')
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[9])
end
return counted
