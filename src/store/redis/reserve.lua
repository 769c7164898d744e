-- Checks one user's day, week and month limits, counting the reservations
-- still in flight, and reserves one unit when every limited period has room.
-- One call, so the check and the reservation are atomic. One call carries a
-- batch of n reserves (n >= 1, any users on one server; one user's keys in a
-- cluster, see mod.rs): the reserves that waited while the previous call
-- was under way (batch.rs), each checked and reserved in turn.
--
-- For the i-th reserve (i = 1..n), four keys from KEYS[4i - 3]:
--   settled usage of the current day, week, month (STRING)
--   live reservations (ZSET id -> deadline, ms)
-- and seven arguments from ARGV[7i - 6]:
--   now (ms since the epoch, from the caller's clock)
--   the new reservation's id
--   its deadline (ms)
--   TTL of the live reservations if this deadline is their newest: the
--   deadline - now + a margin (ms)
--   limits of the day, week, month (0 = unlimited)
--
-- Numbers the caller can compute arrive computed and go to commands as the
-- strings they came as: Redis formats every Lua number passed to a command
-- with printf (see settle.lua).
--
-- Idempotent by id: a reserve sent again with the same id reserves nothing
-- more and answers as the first one did (reserved).
--
-- Returns one flat array, each reserve's answer in turn: 0, day, week, month
-- when reserved, the counts including this reservation; p, day, week, month
-- when p (1 = day, 2 = week, 3 = month) is the first period whose limit is
-- reached, reserving nothing; or the error's text, one string, when Redis
-- refused one of its commands (a key of the wrong type, say): that reserve
-- alone failed. Flat, and four numbers rather than five: the client reads
-- every element of the answer one by one (issue 21).
--
-- Four commands when the user holds no live reservation (the usual case):
-- ZCARD, MGET, ZADD, PEXPIRE. Each redis.call costs Redis far more than the
-- command inside it (issue 21), so none is made that the answer does not
-- need: expired reservations are looked for only in a set that has some,
-- and a repeat is recognised by ZADD itself.

-- Lua numbers are doubles: counts are capped at 2^53 - 1, where they are
-- still exact and still convert to Redis integers (a saturated counter
-- near 2^63 would not).
local MAX = 9007199254740991

local function reserve(k, a)
  local live = redis.call('ZCARD', KEYS[k + 3])
  if live > 0 then
    -- A deadline equal to now has passed: the same rule as the memory store.
    live = live - redis.call('ZREMRANGEBYSCORE', KEYS[k + 3], '-inf', ARGV[a])
  end

  local used = redis.call('MGET', KEYS[k], KEYS[k + 1], KEYS[k + 2])
  local counts = {}
  for i = 1, 3 do
    counts[i] = math.min(tonumber(used[i] or '0') + live, MAX - 1)
  end

  for i = 1, 3 do
    local limit = tonumber(ARGV[a + 3 + i])
    if limit > 0 and counts[i] >= limit then
      -- A repeat of this very reserve (its first answer was lost with its
      -- connection, see RedisStore::once_more) finds its id live: it is
      -- already counted in `live`, so it answers "reserved" as the first
      -- one did, even when it filled the period.
      if live > 0 and redis.call('ZSCORE', KEYS[k + 3], ARGV[a + 1]) then
        return 0, counts[1], counts[2], counts[3]
      end
      return i, counts[1], counts[2], counts[3]
    end
  end

  -- NX: a repeat finds its id there (counted in `live` already) and holds
  -- nothing more.
  if redis.call('ZADD', KEYS[k + 3], 'NX', ARGV[a + 2], ARGV[a + 1]) == 0 then
    return 0, counts[1], counts[2], counts[3]
  end
  -- The set outlives its newest deadline: this one, unless a reservation that
  -- was extended (extend.lua) ends later; GT keeps the later expiry. A set
  -- that was empty has none yet (GT would treat it as never expiring).
  if live == 0 then
    redis.call('PEXPIRE', KEYS[k + 3], ARGV[a + 3])
  else
    redis.call('PEXPIRE', KEYS[k + 3], ARGV[a + 3], 'GT')
  end

  return 0, counts[1] + 1, counts[2] + 1, counts[3] + 1
end

local answers = {}
for i = 1, #KEYS / 4 do
  local ok, full, day, week, month = pcall(reserve, 4 * i - 3, 7 * i - 6)
  if ok then
    local n = #answers
    answers[n + 1] = full
    answers[n + 2] = day
    answers[n + 3] = week
    answers[n + 4] = month
  else
    -- A Lua error raised by redis.call: a table with the reply in `err`.
    answers[#answers + 1] = type(full) == 'table' and full.err or tostring(full)
  end
end
return answers
