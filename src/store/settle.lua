-- Turns one reservation into usage, exactly once per reservation id: removes
-- it if still live and adds the amount to the counters of the periods it was
-- reserved in. An id that expired or was never reserved still counts once.
--
-- KEYS[1..3]  settled usage of the reservation's day, week, month (STRING)
-- KEYS[4]     live reservations (ZSET id -> deadline, ms)
-- KEYS[5]     settled ids (ZSET id -> settle time, ms)
-- ARGV[1]     now (ms since the epoch, from the caller's clock)
-- ARGV[2]     the reservation's id
-- ARGV[3]     amount to add (0 = release)
-- ARGV[4..6]  TTL of the day, week, month counters (ms)
-- ARGV[7]     how long a settled id is remembered (ms)
-- ARGV[8]     settled ids older than this are forgotten: now - ARGV[7] (ms)
-- ARGV[9]     most settled ids remembered, negated and minus one: the rank
--             up to which the oldest are forgotten (-4097 keeps 4096)
--
-- Every argument goes to the commands as the string it came as: Redis
-- formats a Lua number passed to a command with printf, which (with parsing
-- numbers back) was about 9% of redis-server's CPU samples under load.
--
-- Counters saturate at the largest integer Redis holds instead of failing
-- the settle (INCRBY refuses to overflow): usage that large blocks anyway.
--
-- Returns 1 when counted, 0 when the id was settled already.

local id = ARGV[2]

redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', ARGV[8])
-- Remembers the id; NX leaves one already there and answers 0.
if redis.call('ZADD', KEYS[5], 'NX', ARGV[1], id) == 0 then
  return 0
end

redis.call('ZREM', KEYS[4], id)

local amount = tonumber(ARGV[3])
if amount > 0 then
  for i = 1, 3 do
    -- A counter's expiry (its period's end plus a grace) is fixed: set it
    -- when the counter is made, not on every settle.
    local added = redis.pcall('INCRBY', KEYS[i], ARGV[3])
    if type(added) == 'table' and added.err then
      redis.call('SET', KEYS[i], '9223372036854775807', 'KEEPTTL')
    elseif added == amount then
      redis.call('PEXPIRE', KEYS[i], ARGV[3 + i])
    end
  end
end

-- The oldest ids beyond the most remembered go (nothing, usually).
redis.call('ZREMRANGEBYRANK', KEYS[5], 0, ARGV[9])
-- Remembered for ARGV[7] after the newest id, this one. The TTL is relative,
-- so every replica sets the same one whatever its clock.
redis.call('PEXPIRE', KEYS[5], ARGV[7])

return 1
