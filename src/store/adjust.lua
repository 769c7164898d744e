-- Adds a delta (maybe negative) to one settled-usage counter, never going
-- below 0, and refreshes its TTL.
--
-- KEYS[1]  settled usage of one period (STRING)
-- ARGV[1]  delta
-- ARGV[2]  TTL of the counter (ms)
--
-- Returns the new value.

local value = tonumber(redis.call('GET', KEYS[1]) or '0') + tonumber(ARGV[1])
if value < 0 then
  value = 0
end
redis.call('SET', KEYS[1], string.format('%d', value), 'PX', ARGV[2])

return value
