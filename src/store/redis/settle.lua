-- Turns reservations into usage, exactly once per reservation id: removes
-- each one if still live and adds its amount to the counters of the periods
-- it was reserved in. An id that expired or was never reserved still counts
-- once. One call settles a batch of n reservations (n >= 1, any users on
-- one server; one user's keys in a cluster, see redis.rs): the settles that
-- waited while the previous call was under way (settle_batch.rs).
--
-- ARGV[1]     how long a settled id is remembered (ms)
-- ARGV[2]     most settled ids remembered, negated and minus one: the rank
--             up to which the oldest are forgotten (-4097 keeps 4096)
-- Then, for the i-th settle (i = 1..n), five keys from KEYS[5i - 4]:
--   settled usage of the reservation's day, week, month (STRING)
--   live reservations (ZSET id -> deadline, ms)
--   settled ids (ZSET id -> settle time, ms)
-- and seven arguments from ARGV[7i - 4]:
--   now (ms since the epoch, from the caller's clock)
--   the reservation's id
--   amount to add (0 = release)
--   TTL of the day, week, month counters (ms)
--   settled ids older than this are forgotten: now - ARGV[1] (ms)
--
-- Every argument goes to the commands as the string it came as: Redis
-- formats a Lua number passed to a command with printf, which (with parsing
-- numbers back) was about 9% of redis-server's CPU samples under load.
--
-- Counters saturate at the largest integer Redis holds instead of failing
-- the settle (INCRBY refuses to overflow): usage that large blocks anyway.
--
-- Returns one answer per settle, in order: 1 when counted, 0 when the id
-- was settled already, or the error's text when Redis refused one of its
-- commands (a key of the wrong type, say): that settle alone failed,
-- having written nothing (below).

local function settle(k, a)
  local id = ARGV[a + 1]

  -- The commands Redis can refuse (a key of the wrong type) come before
  -- the id is remembered: a refused settle has counted nothing and marked
  -- nothing, so the proxy's retry counts it once the key is fixed (a
  -- repeat finds its reservation gone already, and removes nothing).
  redis.call('ZREMRANGEBYSCORE', KEYS[k + 4], '-inf', ARGV[a + 6])
  redis.call('ZREM', KEYS[k + 3], id)
  -- Remembers the id; NX leaves one already there and answers 0.
  if redis.call('ZADD', KEYS[k + 4], 'NX', ARGV[a], id) == 0 then
    return 0
  end

  local amount = tonumber(ARGV[a + 2])
  if amount > 0 then
    for i = 0, 2 do
      -- A counter's expiry (its period's end plus a grace) is fixed: set it
      -- when the counter is made, not on every settle.
      local added = redis.pcall('INCRBY', KEYS[k + i], ARGV[a + 2])
      if type(added) == 'table' and added.err then
        redis.call('SET', KEYS[k + i], '9223372036854775807', 'KEEPTTL')
      elseif added == amount then
        redis.call('PEXPIRE', KEYS[k + i], ARGV[a + 3 + i])
      end
    end
  end

  -- The oldest ids beyond the most remembered go (nothing, usually).
  redis.call('ZREMRANGEBYRANK', KEYS[k + 4], 0, ARGV[2])
  -- Remembered for ARGV[1] after the newest id, this one. The TTL is
  -- relative, so every replica sets the same one whatever its clock.
  redis.call('PEXPIRE', KEYS[k + 4], ARGV[1])

  return 1
end

local answers = {}
for i = 1, #KEYS / 5 do
  local ok, answer = pcall(settle, 5 * i - 4, 7 * i - 4)
  if ok then
    answers[i] = answer
  else
    -- A Lua error raised by redis.call: a table with the reply in `err`.
    answers[i] = type(answer) == 'table' and answer.err or tostring(answer)
  end
end
return answers
