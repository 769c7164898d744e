-- Moves a live reservation's deadline; does nothing if it is gone.
--
-- KEYS[1]  live reservations (ZSET id -> deadline, ms)
-- ARGV[1]  now (ms since the epoch, from the caller's clock)
-- ARGV[2]  the reservation's id
-- ARGV[3]  its new deadline (ms)
-- ARGV[4]  how long KEYS[1] outlives its newest deadline (ms)
--
-- Returns 1 when moved, 0 when the reservation was gone.

local now = tonumber(ARGV[1])
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not deadline or tonumber(deadline) <= now then
  return 0
end

redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[2])
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], tonumber(newest[2]) - now + tonumber(ARGV[4]))

return 1
