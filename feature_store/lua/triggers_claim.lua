-- Claim timed-trigger instances to fire: those whose lease expired (a worker died while firing them)
-- first, then those due, each moved from the due set into the firing set under a lease. One script, so
-- two workers never claim the same instance at once.
--
-- KEYS[1] nba:{t}:due   KEYS[2] nba:{t}:firing
-- ARGV[1] now (ms)   ARGV[2] lease (ms)   ARGV[3] at most this many
-- Returns the firing members, "TRIGGER|c:ID|DUE".

local now, lease, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local claimed = {}
for _, member in ipairs(redis.call("ZRANGEBYSCORE", KEYS[2], "-inf", now, "LIMIT", 0, limit)) do
  redis.call("ZADD", KEYS[2], now + lease, member)
  claimed[#claimed + 1] = member
end
if #claimed < limit then
  local due = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", now, "WITHSCORES", "LIMIT", 0, limit - #claimed)
  for i = 1, #due, 2 do
    local firing = due[i] .. "|" .. string.format("%.0f", tonumber(due[i + 1]))
    redis.call("ZREM", KEYS[1], due[i])
    redis.call("ZADD", KEYS[2], now + lease, firing)
    claimed[#claimed + 1] = firing
  end
end
return claimed
