-- Apply events to profiles and, if asked, read them back. A batch for many profiles takes few calls:
-- each call applies several profiles in turn (store.py groups them), and each profile's work touches
-- that profile's keys only.
--
-- KEYS: KEYS_PER_PROFILE per profile, each profile's in ProfileKeys.script_keys() order: p, w, cart, r,
--   d, s, k, pu, alias.
-- ARGV[1] now (ms)   ARGV[2] inactivity TTL (ms)   ARGV[3] dedupe window (ms)
-- ARGV[4] "1" to read the profiles back   ARGV[5] contact history kept (ms)
-- ARGV[6..] per profile, in KEYS order: its number of events, then five per event, prepared by
--   feature_store/store.py: type, time (ms), dedupe id or "", recent-events member, and "" or a JSON
--   object of the rest: {o=order dedupe id?, item=?, q=quantity?, price=?, rev=revenue?, items=[ids]?,
--   ch=channel?, g=granted?, a={name=json}?}
--
-- Reading back, returns one reply per profile, in KEYS order: {"redirect", customer_id} when the id is
-- an anonymous id already linked to a customer (nothing applied; the caller re-sends to the customer),
-- else {"ok", accepted, duplicates, p, w, cart, r, s, k}, with r one JSON array (newest_first). Else
-- one list for the call (a reply per profile cost Redis more than some commands): the events
-- accepted, the duplicates, then for each profile redirected its place among the call's profiles (from
-- 1) and the customer id.
--
-- Every change to a profile happens inside this script, so an event is applied whole or not at all.
--
-- It runs for every profile in every request, so it is written for cost (docs/performance.md has the
-- figures). A script call costs more than any command in it (Redis sets up KEYS and ARGV, runs the
-- call and appends it to the AOF in a MULTI block), so one call takes many profiles. Then a redis.call
-- costs more than anything else here, a write more than a read (it is appended to the AOF too), an
-- expiry most; then allocations (tables, closures, strings) and numbers turned into text. So the
-- profile hash is read with one HMGET and written with one HSET, an event counts in one window bucket
-- (the windows nest: profile.py), each bucket takes one HINCRBY (with the count of all the events it
-- gains), the recent events one ZADD, an event id is checked and recorded with one ZADD NX, and the
-- code that only some types need is set up only when an event needs it. Pruning (folding window
-- buckets into coarser ones, dropping event ids past the dedupe window) and renewing the expiry of
-- every key happen at most once a minute per profile (the "pruned" field says when). In between, only the
-- keys this call may have created get an expiry: the others got theirs less than a minute ago (and the
-- inactivity TTL is at least a day), so all expire within a minute of each other. A profile's first call
-- gives one to the keys it wrote, not to all eight: most of them are missing then.

local now_text, ttl = ARGV[1], ARGV[2]
local now = tonumber(now_text)
local cutoff = now - tonumber(ARGV[3]) -- event ids seen before this count as new
local read_back = ARGV[4] == "1"
local KEYS_PER_PROFILE, PER_EVENT = {KEYS_PER_PROFILE_FROM_KEYS_PY}, 5
local ANONYMOUS_TAG = {ANONYMOUS_FROM_KEYS_PY} -- how an anonymous visitor's keys begin (keys.py)
-- The windows (profile.py WINDOWS, finest first), written in by store.py when it loads this script:
-- code, bucket length (ms), the number of buckets before the current one that the window counts, and
-- the code of its buckets in the layout before they nested (profile.py), for each.
local WINDOWS, PER_WINDOW = {WINDOWS_FROM_PROFILE_PY}, 4
local oldest = {} -- by window: the oldest bucket it counts
-- Field names, made once per call: a call's events fall in a few buckets and have a few types, and
-- each name made is a new Lua string (hashed, interned, collected), a number turned into text more.
-- By window: by bucket number, by type, the bucket's field ("M29345678:page_view").
local bucket_fields = {}
for j = 1, #WINDOWS, PER_WINDOW do
  oldest[j] = math.floor(now / WINDOWS[j + 1]) - WINDOWS[j + 2]
  bucket_fields[j] = {}
end
-- By type: its count's field in the profile hash ("n:page_view"); its last time's is "t:" .. type.
local count_fields, time_fields = {}, {}
local function type_fields(y)
  local n = count_fields[y]
  if not n then
    n = "n:" .. y
    count_fields[y], time_fields[y] = n, "t:" .. y
  end
  return n, time_fields[y]
end

-- unpack() takes a few thousand values at most: long argument lists go in slices (of pairs, for HSET).
local function sliced(command, key, list)
  if #list <= 1000 then
    return redis.call(command, key, unpack(list))
  end
  local out = {}
  for i = 1, #list, 1000 do
    local reply = redis.call(command, key, unpack(list, i, math.min(i + 999, #list)))
    if type(reply) == "table" then
      for _, value in ipairs(reply) do out[#out + 1] = value end
    end
  end
  return out
end

local function fmt(n)
  return string.format("%.0f", n)
end

local function parse_item(raw)
  local q, price, changed_at = string.match(raw, "^([^|]*)|([^|]*)|([^|]*)$")
  return tonumber(q), price, tonumber(changed_at)
end

-- One profile: its keys are the KEYS_PER_PROFILE after KEYS[kb], its events ARGV[first..last]. Returns
-- the events accepted and the duplicates, or nil and the customer id it is linked to.
local function apply(kb, first, last)
  local p, w, cart, r, d, s, k, pu, alias = KEYS[kb + 1], KEYS[kb + 2], KEYS[kb + 3], KEYS[kb + 4],
    KEYS[kb + 5], KEYS[kb + 6], KEYS[kb + 7], KEYS[kb + 8], KEYS[kb + 9]

  -- Only an anonymous id can be linked to a customer: a customer's alias key is never written.
  local linked = string.find(alias, ANONYMOUS_TAG, 1, true) == 1 and redis.call("GET", alias)
  if linked then
    -- A link lives as long as it is used: renew it like any other key of the customer.
    redis.call("PEXPIRE", alias, ttl)
    return nil, linked
  end

  local accepted, duplicates = 0, 0
  if last >= first then
    -- The profile hash: every field the events read is read at once (HMGET); a field's slot is its place
    -- in that read, and the fields changed are written at once (HSET).
    local fields, slot = {"pruned", "first"}, {pruned = 1, first = 2}
    local function want(field)
      if not slot[field] then
        fields[#fields + 1] = field
        slot[field] = #fields
      end
    end
    local rest = {} -- by event number: what it does beyond the counters, when it does anything
    local effects = false
    for base = first, last, PER_EVENT do
      local y = ARGV[base]
      local n_field, t_field = type_fields(y)
      if not slot[n_field] then
        want(n_field)
        want(t_field)
      end
      if ARGV[base + 4] ~= "" then
        local ev = cjson.decode(ARGV[base + 4])
        rest[base] = ev
        effects = true
        if ev.item or y == "purchase" then
          want("cart_cleared")
          want("cart_changed")
          want("first_purchase")
        end
        if ev.ch then want("c:" .. ev.ch) end
        if ev.a then
          for name in pairs(ev.a) do want("a:" .. name) end
        end
      end
    end

    local values = sliced("HMGET", p, fields)
    local changed = {}

    -- Which keys may not have existed before this call (and so may have no expiry yet): d when an id was
    -- recorded, w when none of the buckets written was there before, cart and pu when written.
    local created = {}

    -- Whether an id was seen within the dedupe window (older ids are pruned lazily: see above).
    local function seen(id)
      local score = redis.call("ZSCORE", d, id)
      return score ~= false and tonumber(score) >= cutoff
    end

    -- What the types with effects do beyond the counters (feature_store/events.py): cart lines, orders,
    -- consent, attributes. Set up on first use only.
    local apply_effects
    if effects then
      -- Times arrive as text and are stored as they came.
      local function set_max(field, t, time)
        local i = slot[field]
        local old = tonumber(values[i])
        if not old or t > old then values[i], changed[i] = time, true end
      end
      local function set_min(field, t, time)
        local i = slot[field]
        local old = tonumber(values[i])
        if not old or t < old then values[i], changed[i] = time, true end
      end
      -- Last writer by event time wins: values are stored as "time_ms|value".
      local function set_latest(field, t, time, value)
        local i = slot[field]
        local old = values[i]
        if old then
          local old_t = tonumber(string.match(old, "^(%d+)|"))
          if old_t and old_t > t then
            return
          end
        end
        values[i], changed[i] = time .. "|" .. value, true
      end

      local function apply_cart(y, t, time, ev)
        -- A change older than the purchase that emptied the cart was part of that purchase.
        if t <= (tonumber(values[slot["cart_cleared"]]) or -1) then
          return
        end
        local raw = redis.call("HGET", cart, ev.item)
        local q, price, changed_at = 0, "", t
        if raw then
          q, price, changed_at = parse_item(raw)
          if t > changed_at then changed_at = t end
        end
        if y == "add_to_cart" then
          q = q + ev.q
          if ev.price then price = ev.price end
        elseif ev.q then
          q = q - ev.q
        else
          q = 0
        end
        if q > 0 then
          redis.call("HSET", cart, ev.item, fmt(q) .. "|" .. price .. "|" .. fmt(changed_at))
          created[cart] = true
        elseif raw then
          redis.call("HDEL", cart, ev.item)
        end
        set_max("cart_changed", t, time)
      end

      -- The purchased lines leave the cart: those named, or all of them; lines changed after the purchase
      -- stay. Without a revenue, the value of the lines that left is the revenue.
      local function apply_purchase(t, time, member, ev)
        local bought = 0
        local function take(item, raw)
          local q, price, changed_at = parse_item(raw)
          if changed_at <= t then
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
          set_max("cart_cleared", t, time)
        end
        local revenue = ev.rev or string.format("%.2f", bought)
        redis.call("HINCRBY", p, "orders", "1")
        redis.call("HINCRBYFLOAT", p, "revenue", revenue)
        -- Kept a month, for attributing purchases to the decisions whose window they fall in.
        redis.call("ZADD", pu, time, time .. "|" .. revenue .. "|" .. member)
        redis.call("ZREMRANGEBYSCORE", pu, "-inf", "(" .. fmt(now - 31 * 86400000))
        created[pu] = true
        set_min("first_purchase", t, time)
        set_max("cart_changed", t, time)
      end

      apply_effects = function(y, t, time, member, ev)
        if ev.item then
          apply_cart(y, t, time, ev)
        elseif y == "purchase" then
          apply_purchase(t, time, member, ev)
        end
        if ev.ch then
          set_latest("c:" .. ev.ch, t, time, ev.g)
        end
        if ev.a then
          for name, value in pairs(ev.a) do
            set_latest("a:" .. name, t, time, value)
          end
        end
      end
    end

    local window_adds = {} -- field -> how many events it counts
    local recent = {}
    for base = first, last, PER_EVENT do
      local y, time, id = ARGV[base], ARGV[base + 1], ARGV[base + 2]
      local ev = rest[base]
      local duplicate = false
      if ev and ev.o then
        -- An order id: the event is a repeat when either id was seen; else both are recorded.
        duplicate = (id ~= "" and seen(id)) or seen(ev.o)
        if not duplicate then
          if id ~= "" then redis.call("ZADD", d, now_text, id) end
          redis.call("ZADD", d, now_text, ev.o)
          created[d] = true
        end
      elseif id ~= "" then
        if redis.call("ZADD", d, "NX", now_text, id) == 0 then
          duplicate = seen(id)
          if not duplicate then redis.call("ZADD", d, now_text, id) end
        end
        created[d] = true
      end
      if duplicate then
        duplicates = duplicates + 1
      else
        accepted = accepted + 1
        local t = tonumber(time)
        local i = slot[count_fields[y]] -- and its time field's is the next
        values[i], changed[i] = string.format("%d", (tonumber(values[i]) or 0) + 1), true
        local last = tonumber(values[i + 1])
        if not last or t > last then values[i + 1], changed[i + 1] = time, true end
        local first = tonumber(values[2])
        if not first or t < first then values[2], changed[2] = time, true end
        -- The event counts once, in the bucket of the finest window it is within: the coarser windows
        -- count that bucket too (profile.py).
        for j = 1, #WINDOWS, PER_WINDOW do
          local bucket = math.floor(t / WINDOWS[j + 1])
          if bucket >= oldest[j] then
            local by_type = bucket_fields[j][bucket]
            if not by_type then
              by_type = {}
              bucket_fields[j][bucket] = by_type
            end
            local field = by_type[y]
            if not field then
              field = WINDOWS[j] .. bucket .. ":" .. y -- a bucket number has no fraction
              by_type[y] = field
            end
            window_adds[field] = (window_adds[field] or 0) + 1
            break
          end
        end
        recent[#recent + 1] = time
        recent[#recent + 1] = ARGV[base + 3]
        if ev then apply_effects(y, t, time, ARGV[base + 3], ev) end
      end
    end

    if accepted > 0 then
      local minute = math.floor(now / 60000)
      local last_pruned = tonumber(values[1])
      local tick = (last_pruned or 0) < minute
      if tick then values[1], changed[1] = string.format("%d", minute), true end
      local flat = {}
      for i = 1, #fields do
        if changed[i] then
          flat[#flat + 1] = fields[i]
          flat[#flat + 1] = values[i]
        end
      end
      sliced("HSET", p, flat)

      -- One HINCRBY per bucket beats reading and writing them back (it formats no numbers in Lua), and
      -- tells whether w was there: a bucket that held more than this call added (else it may have been).
      local existed = false
      for field, adds in pairs(window_adds) do
        local text = adds == 1 and "1" or string.format("%d", adds)
        if redis.call("HINCRBY", w, field, text) > adds then existed = true end
      end
      if not existed and next(window_adds) then created[w] = true end

      redis.call("ZADD", r, unpack(recent))
      redis.call("ZREMRANGEBYRANK", r, "0", "-21")

      if tick then
        -- A bucket that has left its window is folded into the bucket of the next window that still
        -- holds it, or dropped when none does; a bucket of the legacy layout is dropped once it leaves
        -- its window. Event ids older than the dedupe window go. A profile never pruned has had no event
        -- applied before this call, so has nothing stale.
        if last_pruned then
          local stale, folded, flat = {}, {}, redis.call("HGETALL", w)
          for i = 1, #flat, 2 do
            local field = flat[i]
            local code, number, rest = string.match(field, "^(%a)(%d+)(:.*)$")
            for j = 1, code and #WINDOWS or 0, PER_WINDOW do
              if code == WINDOWS[j] or code == WINDOWS[j + 3] then
                local bucket = tonumber(number)
                if bucket < oldest[j] then
                  stale[#stale + 1] = field
                  if code == WINDOWS[j] then
                    local start = bucket * WINDOWS[j + 1]
                    for into = j + PER_WINDOW, #WINDOWS, PER_WINDOW do
                      local holder = math.floor(start / WINDOWS[into + 1])
                      if holder >= oldest[into] then
                        local target = WINDOWS[into] .. fmt(holder) .. rest
                        folded[target] = (folded[target] or 0) + tonumber(flat[i + 1])
                        break
                      end
                    end
                  end
                end
                break
              end
            end
          end
          for i = 1, #stale, 1000 do
            redis.call("HDEL", w, unpack(stale, i, math.min(i + 999, #stale)))
          end
          for target, count in pairs(folded) do
            redis.call("HINCRBY", w, target, fmt(count))
          end
          redis.call("ZREMRANGEBYSCORE", d, "-inf", "(" .. fmt(cutoff))
        end
        if last_pruned then
          for _, key in ipairs({p, w, cart, r, d, s, k, pu}) do
            redis.call("PEXPIRE", key, ttl)
          end
        else
          -- A profile's first events: p and r, which they wrote, and the keys they may have created. The
          -- others are missing (an expiry of a missing key costs a call all the same), or were written
          -- since with an expiry of their own (a decision's k, a link's keys).
          redis.call("PEXPIRE", p, ttl)
          redis.call("PEXPIRE", r, ttl)
          for key in pairs(created) do
            redis.call("PEXPIRE", key, ttl)
          end
        end
      else
        for key in pairs(created) do
          -- d and w are there far more often than not: reading that one has an expiry costs less than
          -- renewing it.
          if (key ~= d and key ~= w) or redis.call("PTTL", key) < 0 then
            redis.call("PEXPIRE", key, ttl)
          end
        end
      end
    end
  end

  return accepted, duplicates
end

-- The recent events (JSON objects) as one JSON array, newest first, events of the same time in the
-- set's order: what profile.py decodes, in one parse and with no scores to turn into numbers.
local function newest_first(r)
  local flat, out = redis.call("ZRANGE", r, 0, -1, "WITHSCORES"), {}
  local last = #flat - 1
  while last > 0 do
    local first = last
    while first > 2 and flat[first - 1] == flat[last + 1] do
      first = first - 2
    end
    for i = first, last, 2 do
      out[#out + 1] = flat[i]
    end
    last = first - 2
  end
  return "[" .. table.concat(out, ",") .. "]"
end

-- One profile as it is now: its keys are the KEYS_PER_PROFILE after KEYS[kb].
local function read(kb, accepted, duplicates)
  local p, w, cart, r, s, k = KEYS[kb + 1], KEYS[kb + 2], KEYS[kb + 3], KEYS[kb + 4], KEYS[kb + 6], KEYS[kb + 7]
  return {"ok", accepted, duplicates, redis.call("HGETALL", p), redis.call("HGETALL", w),
    redis.call("HGETALL", cart), newest_first(r), redis.call("SMEMBERS", s),
    redis.call("ZRANGEBYSCORE", k, "(" .. fmt(now - tonumber(ARGV[5])), "+inf", "WITHSCORES")}
end

-- Reading back, one per profile; else the totals, then the profiles redirected.
local replies = read_back and {} or {0, 0}
local accepted, duplicates = 0, 0
local argc, kb, at, place = #ARGV, 0, 6, 0
while at <= argc do
  local last = at + PER_EVENT * tonumber(ARGV[at])
  place = place + 1
  local applied, repeats = apply(kb, at + 1, last)
  if read_back then
    replies[place] = applied and read(kb, applied, repeats) or {"redirect", repeats}
  elseif applied then
    accepted, duplicates = accepted + applied, duplicates + repeats
  else
    replies[#replies + 1] = place
    replies[#replies + 1] = repeats
  end
  kb, at = kb + KEYS_PER_PROFILE, last + 1
end
if not read_back then
  replies[1], replies[2] = accepted, duplicates
end
return replies
