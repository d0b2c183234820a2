-- Start and cancel timed-trigger instances: pipelined with the events that cause them.
--
-- KEYS[1] nba:{t}:due, a zset of "TRIGGER|c:ID" scored by when each is due (ms)
-- KEYS[2] nba:{t}:cancelled, a zset of the same members scored by the latest cancel event's time (ms)
-- ARGV[1] cancels older than this (ms) are forgotten
-- ARGV[2..]: groups of four, in event-time order:
--   "s", member, start event time (ms), delay (ms)
--   "c", member, cancel event time (ms), delay (ms)
--
-- At most one instance per trigger and customer. A start makes it due at its time plus the delay, and
-- pushes a pending instance out, never in. A cancel removes the instance if it happened at or after
-- the start that set it (due - delay), and is remembered (for the dedupe window), so that a start
-- event older than it (late, or a retried duplicate) does not bring the instance back. Every group
-- can be repeated without changing anything more, so a retried request is harmless.

redis.call("ZREMRANGEBYSCORE", KEYS[2], "-inf", "(" .. ARGV[1])
for i = 2, #ARGV, 4 do
  local kind, member = ARGV[i], ARGV[i + 1]
  local at, delay = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  if kind == "s" then
    local cancelled = tonumber(redis.call("ZSCORE", KEYS[2], member))
    if not cancelled or at > cancelled then
      -- GT: a pending instance due later stays as it is (a start runs for every page view of winback's,
      -- so it is worth the one call fewer than reading the due time first).
      redis.call("ZADD", KEYS[1], "GT", string.format("%d", at + delay), member)
    end
  else
    local current = tonumber(redis.call("ZSCORE", KEYS[1], member))
    if current and at >= current - delay then
      redis.call("ZREM", KEYS[1], member)
    end
    redis.call("ZADD", KEYS[2], "GT", at, member)
  end
end
return 0
