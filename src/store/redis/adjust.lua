-- Adds a delta (maybe negative) to one period's settled usage, never going
-- below 0 nor above 2^53 - 1 (Lua numbers are doubles: exact up to there,
-- and '%d' of a larger one is not a number Redis reads back), and refreshes
-- the TTL. Settled usage is the user's units counted in the period plus
-- the period's counter, so the counter takes what makes the sum the new
-- value (it may be negative).
--
-- KEYS[1]  the user's set of units (ZSET)
-- KEYS[2]  the period's counter (STRING)
-- ARGV[1]  delta
-- ARGV[2]  TTL of the counter (ms)
-- ARGV[3]  '(' and the score of a unit counted at the period's end
-- ARGV[4]  the score of a unit counted at its start (units counted in it
--          score between the two; see commands.rs)
--
-- Returns the new settled usage.

local MAX = 9007199254740991
local units = redis.call('ZCOUNT', KEYS[1], ARGV[3], ARGV[4])
local used = math.max(units + tonumber(redis.call('GET', KEYS[2]) or '0'), 0)
local value = math.min(math.max(used + tonumber(ARGV[1]), 0), MAX)
redis.call('SET', KEYS[2], string.format('%d', value - units), 'PX', ARGV[2])

return value
