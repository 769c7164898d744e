-- Adds a delta (maybe negative) to one settled-usage counter, never going
-- below 0 nor above 2^53 - 1 (Lua numbers are doubles: exact up to there,
-- and '%d' of a larger one is not a number Redis reads back), and refreshes
-- its TTL.
--
-- KEYS[1]  settled usage of one period (STRING)
-- ARGV[1]  delta
-- ARGV[2]  TTL of the counter (ms)
--
-- Returns the new value.

local value = tonumber(redis.call('GET', KEYS[1]) or '0') + tonumber(ARGV[1])
if value < 0 then
  value = 0
elseif value > 9007199254740991 then
  value = 9007199254740991
end
redis.call('SET', KEYS[1], string.format('%d', value), 'PX', ARGV[2])

return value
