-- Checks one user's day, week and month limits, counting the reservations
-- still in flight, and reserves one unit when every limited period has room.
-- One call, so the check and the reservation are atomic.
--
-- KEYS[1..3]  settled usage of the current day, week, month (STRING)
-- KEYS[4]     live reservations (ZSET id -> deadline, ms)
-- ARGV[1]     now (ms since the epoch, from the caller's clock)
-- ARGV[2]     the new reservation's id
-- ARGV[3]     its deadline (ms)
-- ARGV[4]     TTL of KEYS[4] if this deadline is its newest: the deadline
--             - now + a margin (ms)
-- ARGV[5..7]  limits of the day, week, month (0 = unlimited)
--
-- Numbers the caller can compute arrive computed and go to commands as the
-- strings they came as: Redis formats every Lua number passed to a command
-- with printf (see settle.lua).
--
-- Idempotent by id: a reserve sent again with the same id reserves nothing
-- more and answers as the first one did (reserved).
--
-- Returns {1, 0, day, week, month} when reserved, the counts including this
-- reservation; or {0, p, day, week, month} when p (1 = day, 2 = week,
-- 3 = month) is the first period whose limit is reached, reserving nothing.
--
-- Four commands when the user holds no live reservation (the usual case):
-- ZCARD, MGET, ZADD, PEXPIRE. Each redis.call costs Redis far more than the
-- command inside it (issue 21), so none is made that the answer does not
-- need: expired reservations are looked for only in a set that has some,
-- and a repeat is recognised by ZADD itself.

local live = redis.call('ZCARD', KEYS[4])
if live > 0 then
  -- A deadline equal to now has passed: the same rule as the memory store.
  live = live - redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[1])
end

-- Lua numbers are doubles: counts are capped at 2^53 - 1, where they are
-- still exact and still convert to Redis integers (a saturated counter
-- near 2^63 would not).
local MAX = 9007199254740991
local used = redis.call('MGET', KEYS[1], KEYS[2], KEYS[3])
local counts = {}
for i = 1, 3 do
  counts[i] = math.min(tonumber(used[i] or '0') + live, MAX - 1)
end

for i = 1, 3 do
  local limit = tonumber(ARGV[4 + i])
  if limit > 0 and counts[i] >= limit then
    -- A repeat of this very reserve (its first answer was lost with its
    -- connection, see RedisStore::once_more) finds its id live: it is
    -- already counted in `live`, so it answers "reserved" as the first
    -- one did, even when it filled the period.
    if live > 0 and redis.call('ZSCORE', KEYS[4], ARGV[2]) then
      return {1, 0, counts[1], counts[2], counts[3]}
    end
    return {0, i, counts[1], counts[2], counts[3]}
  end
end

-- NX: a repeat finds its id there (counted in `live` already) and holds
-- nothing more.
if redis.call('ZADD', KEYS[4], 'NX', ARGV[3], ARGV[2]) == 0 then
  return {1, 0, counts[1], counts[2], counts[3]}
end
-- The set outlives its newest deadline: this one, unless a reservation that
-- was extended (extend.lua) ends later; GT keeps the later expiry. A set
-- that was empty has none yet (GT would treat it as never expiring).
if live == 0 then
  redis.call('PEXPIRE', KEYS[4], ARGV[4])
else
  redis.call('PEXPIRE', KEYS[4], ARGV[4], 'GT')
end

return {1, 0, counts[1] + 1, counts[2] + 1, counts[3] + 1}
