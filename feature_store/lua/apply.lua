-- Apply events to one or more profiles and, if asked, read them back: one round trip.
--
-- KEYS: 9 per profile, in ProfileKeys.script_keys() order: p, w, cart, r, d, s, k, pu, alias.
-- ARGV[1] now (ms)   ARGV[2] inactivity TTL (ms)   ARGV[3] dedupe window (ms)
-- ARGV[4] windows, "code:bucket_ms:buckets,..."     ARGV[5] "1" to read the profiles back
-- ARGV[6] contact history kept (ms)
-- ARGV[6 + i] the events of profile i, a JSON array prepared by feature_store/store.py:
--   {y=type, t=time ms, i=dedupe id?, o=order dedupe id?, m=recent-events member,
--    item=?, q=quantity?, price=?, rev=revenue?, items=[ids]?, ch=channel?, g=granted?, a={name=json}?}
--
-- Returns one entry per profile: {"redirect", customer_id} when the id is an anonymous id already
-- linked to a customer (nothing applied; the caller re-sends to the customer), else
-- {"ok", accepted, duplicates[, p, w, cart, r, s, k]}.
--
-- Every change to one profile happens inside this script, so an event is applied whole or not at all.

local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local dedupe_ms = tonumber(ARGV[3])
local read_back = ARGV[5] == "1"
local contacts_ms = tonumber(ARGV[6])

local windows = {}
for code, bucket_ms, buckets in string.gmatch(ARGV[4], "(%a+):(%d+):(%d+)") do
  bucket_ms = tonumber(bucket_ms)
  buckets = tonumber(buckets)
  -- The oldest bucket still inside the window; older buckets are neither written nor kept.
  windows[#windows + 1] = {code = code, ms = bucket_ms, oldest = math.floor(now / bucket_ms) - buckets}
end

local function fmt(n)
  return string.format("%.0f", n)
end

local function set_max(key, field, value)
  local old = tonumber(redis.call("HGET", key, field))
  if not old or value > old then
    redis.call("HSET", key, field, fmt(value))
  end
end

local function set_min(key, field, value)
  local old = tonumber(redis.call("HGET", key, field))
  if not old or value < old then
    redis.call("HSET", key, field, fmt(value))
  end
end

-- Last writer by event time wins: values are stored as "time_ms|value".
local function set_latest(key, field, t, value)
  local old = redis.call("HGET", key, field)
  if old then
    local old_t = tonumber(string.match(old, "^(%d+)|"))
    if old_t and old_t > t then
      return
    end
  end
  redis.call("HSET", key, field, fmt(t) .. "|" .. value)
end

local function parse_item(raw)
  local q, price, changed = string.match(raw, "^([^|]*)|([^|]*)|([^|]*)$")
  return tonumber(q), price, tonumber(changed)
end

local function apply_cart(p, cart, ev)
  local cleared = tonumber(redis.call("HGET", p, "cart_cleared")) or -1
  -- A change older than the purchase that emptied the cart was part of that purchase.
  if ev.t <= cleared then
    return
  end
  local raw = redis.call("HGET", cart, ev.item)
  local q, price, changed = 0, "", ev.t
  if raw then
    q, price, changed = parse_item(raw)
    if ev.t > changed then changed = ev.t end
  end
  if ev.y == "add_to_cart" then
    q = q + ev.q
    if ev.price then price = ev.price end
  elseif ev.q then
    q = q - ev.q
  else
    q = 0
  end
  if q > 0 then
    redis.call("HSET", cart, ev.item, fmt(q) .. "|" .. price .. "|" .. fmt(changed))
  elseif raw then
    redis.call("HDEL", cart, ev.item)
  end
  set_max(p, "cart_changed", ev.t)
end

-- The purchased lines leave the cart: those named, or all of them; lines changed after the purchase stay.
-- Without a revenue, the value of the lines that left is the revenue.
local function apply_purchase(p, cart, pu, ev)
  local bought = 0
  local function take(item, raw)
    local q, price, changed = parse_item(raw)
    if changed <= ev.t then
      redis.call("HDEL", cart, item)
      bought = bought + q * (tonumber(price) or 0)
    end
  end
  if ev.items then
    for _, item in ipairs(ev.items) do
      local raw = redis.call("HGET", cart, item)
      if raw then take(item, raw) end
    end
  else
    local flat = redis.call("HGETALL", cart)
    for i = 1, #flat, 2 do take(flat[i], flat[i + 1]) end
    set_max(p, "cart_cleared", ev.t)
  end
  local revenue = ev.rev or string.format("%.2f", bought)
  redis.call("HINCRBY", p, "orders", 1)
  redis.call("HINCRBYFLOAT", p, "revenue", revenue)
  -- Kept a month, for attributing purchases to the decisions whose window they fall in.
  redis.call("ZADD", pu, fmt(ev.t), fmt(ev.t) .. "|" .. revenue .. "|" .. ev.m)
  redis.call("ZREMRANGEBYSCORE", pu, "-inf", "(" .. fmt(now - 31 * 86400000))
  set_min(p, "first_purchase", ev.t)
  set_max(p, "cart_changed", ev.t)
end

local function prune_windows(p, w)
  local minute = math.floor(now / 60000)
  local pruned = tonumber(redis.call("HGET", p, "pruned")) or 0
  if pruned >= minute then
    return
  end
  redis.call("HSET", p, "pruned", fmt(minute))
  local oldest = {}
  for _, win in ipairs(windows) do oldest[win.code] = win.oldest end
  local stale = {}
  for _, field in ipairs(redis.call("HKEYS", w)) do
    local code, bucket = string.match(field, "^(%a+)(%d+):")
    if code and (not oldest[code] or tonumber(bucket) < oldest[code]) then
      stale[#stale + 1] = field
    end
  end
  for i = 1, #stale, 1000 do
    redis.call("HDEL", w, unpack(stale, i, math.min(i + 999, #stale)))
  end
end

local function apply(base, events_json)
  local p, w, cart, r, d, s, k, pu, alias = KEYS[base + 1], KEYS[base + 2], KEYS[base + 3], KEYS[base + 4],
    KEYS[base + 5], KEYS[base + 6], KEYS[base + 7], KEYS[base + 8], KEYS[base + 9]
  local linked = redis.call("GET", alias)
  if linked then
    -- A link lives as long as it is used: renew it like any other key of the customer.
    redis.call("PEXPIRE", alias, ttl)
    return {"redirect", linked}
  end
  local events = cjson.decode(events_json)
  local accepted, duplicates = 0, 0
  if #events > 0 then
    redis.call("ZREMRANGEBYSCORE", d, "-inf", "(" .. fmt(now - dedupe_ms))
  end
  for _, ev in ipairs(events) do
    local duplicate = (ev.i and redis.call("ZSCORE", d, ev.i)) or (ev.o and redis.call("ZSCORE", d, ev.o))
    if duplicate then
      duplicates = duplicates + 1
    else
      accepted = accepted + 1
      if ev.i then redis.call("ZADD", d, fmt(now), ev.i) end
      if ev.o then redis.call("ZADD", d, fmt(now), ev.o) end
      redis.call("HINCRBY", p, "n:" .. ev.y, 1)
      set_max(p, "t:" .. ev.y, ev.t)
      set_min(p, "first", ev.t)
      for _, win in ipairs(windows) do
        local bucket = math.floor(ev.t / win.ms)
        if bucket >= win.oldest then
          redis.call("HINCRBY", w, win.code .. fmt(bucket) .. ":" .. ev.y, 1)
        end
      end
      redis.call("ZADD", r, fmt(ev.t), ev.m)
      if ev.item then
        apply_cart(p, cart, ev)
      elseif ev.y == "purchase" then
        apply_purchase(p, cart, pu, ev)
      end
      if ev.ch then
        set_latest(p, "c:" .. ev.ch, ev.t, ev.g)
      end
      if ev.a then
        for name, value in pairs(ev.a) do
          set_latest(p, "a:" .. name, ev.t, value)
        end
      end
    end
  end
  if accepted > 0 then
    redis.call("ZREMRANGEBYRANK", r, 0, -21)
    prune_windows(p, w)
    for _, key in ipairs({p, w, cart, r, d, s, k, pu}) do
      redis.call("PEXPIRE", key, ttl)
    end
  end
  if read_back then
    return {"ok", accepted, duplicates,
      redis.call("HGETALL", p), redis.call("HGETALL", w), redis.call("HGETALL", cart),
      redis.call("ZRANGE", r, 0, -1, "WITHSCORES"), redis.call("SMEMBERS", s),
      redis.call("ZRANGEBYSCORE", k, "(" .. fmt(now - contacts_ms), "+inf", "WITHSCORES")}
  end
  return {"ok", accepted, duplicates}
end

local results = {}
for i = 0, (#KEYS / 9) - 1 do
  results[#results + 1] = apply(i * 9, ARGV[7 + i])
end
return results
