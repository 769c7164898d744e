-- Moves a live reservation's deadline in the user's set of units; does
-- nothing when it is gone, expired or counted already.
--
-- KEYS[1]  the user's set of units (ZSET id -> score: deadline - 2^52 (ms)
--          while live, minus its day's start once counted; see
--          commands.rs)
-- ARGV[1]  the score of a unit whose deadline is now (live ones score more)
-- ARGV[2]  the reservation's id
-- ARGV[3]  the score of its new deadline
-- ARGV[4]  the score every live unit is below (and every counted one above)
-- ARGV[5]  how long the set must live, at least, to outlive it (ms)
--
-- Returns 1 when moved, 0 when the reservation was gone.

local score = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[2]))
if score and score > tonumber(ARGV[1]) and score < tonumber(ARGV[4]) then
  -- GT: only ever a later deadline.
  redis.call('ZADD', KEYS[1], 'XX', 'GT', ARGV[3], ARGV[2])
  -- GT: only ever later (the set's own expiry may be later still).
  redis.call('PEXPIRE', KEYS[1], ARGV[5], 'GT')
  return 1
end
return 0
