-- Moves a live reservation's deadline in each of its periods' sets of
-- units; does nothing where it is gone, expired or counted already.
--
-- KEYS[1..3]  the day's, week's and month's sets of units (ZSET id -> deadline, ms, or +inf once counted)
-- ARGV[1]     now (ms since the epoch, from the caller's clock)
-- ARGV[2]     the reservation's id
-- ARGV[3]     its new deadline (ms)
-- ARGV[4]     how long a set must live, at least, to outlive it (ms)
--
-- Returns 1 when moved, 0 when the reservation was gone.

local now = tonumber(ARGV[1])
local moved = 0
for i = 1, 3 do
  local deadline = redis.call('ZSCORE', KEYS[i], ARGV[2])
  -- A counted unit's score is 'inf'.
  if deadline and deadline ~= 'inf' and tonumber(deadline) > now then
    redis.call('ZADD', KEYS[i], 'XX', ARGV[3], ARGV[2])
    -- GT: only ever later (the set's own expiry may be later still).
    redis.call('PEXPIRE', KEYS[i], ARGV[4], 'GT')
    moved = 1
  end
end
return moved
