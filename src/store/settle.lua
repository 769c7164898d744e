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
-- ARGV[8]     most settled ids remembered; the oldest are forgotten first
--
-- Returns 1 when counted, 0 when the id was settled already.

local now = tonumber(ARGV[1])
local id = ARGV[2]
local remember = tonumber(ARGV[7])

redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - remember)
if redis.call('ZSCORE', KEYS[5], id) then
  return 0
end

redis.call('ZREM', KEYS[4], id)

local amount = tonumber(ARGV[3])
if amount > 0 then
  for i = 1, 3 do
    -- A counter's expiry (its period's end plus a grace) is fixed: set it
    -- when the counter is made, not on every settle.
    if redis.call('INCRBY', KEYS[i], amount) == amount then
      redis.call('PEXPIRE', KEYS[i], ARGV[3 + i])
    end
  end
end

redis.call('ZADD', KEYS[5], now, id)
local settled = redis.call('ZCARD', KEYS[5])
local excess = settled - tonumber(ARGV[8])
if excess > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[5], 0, excess - 1)
end
-- Remembered for `remember` after the newest id, this one; GT keeps a
-- later expiry set by a replica whose clock runs ahead. A new set has none.
if settled == 1 then
  redis.call('PEXPIRE', KEYS[5], remember)
else
  redis.call('PEXPIRE', KEYS[5], remember, 'GT')
end

return 1
