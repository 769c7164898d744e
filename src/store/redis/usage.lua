-- Reads one user's settled usage in three periods and the number of live
-- reservations, as one consistent snapshot. Writes nothing.
--
-- KEYS[1..3]  settled usage of a day, week, month (STRING)
-- KEYS[4]     live reservations (ZSET id -> deadline, ms)
-- ARGV[1]     now (ms since the epoch, from the caller's clock)
--
-- Returns {day, week, month, live reservations}.

-- Capped at 2^53 - 1, as in reserve.lua.
local used = {}
for i = 1, 3 do
  used[i] = math.min(tonumber(redis.call('GET', KEYS[i]) or '0'), 9007199254740991)
end
-- Live means a deadline after now, the rule reserve.lua prunes by.
local live = redis.call('ZCOUNT', KEYS[4], '(' .. ARGV[1], '+inf')

return {used[1], used[2], used[3], live}
