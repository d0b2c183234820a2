-- The wrk script of load_tests/benchmark.py: one scenario's bodies, open-loop pacing, and one JSON line.
--
--   wrk -t1 -c64 -d8s -s load_tests/wrk/paced.lua http://127.0.0.1:PORT -- SCENARIO RATE RUN THREADS
--
-- SCENARIO names the file beside this one that builds the bodies (floor.lua, decide.lua, events.lua).
-- RATE is the requests per second of all threads together; 0 runs a closed loop (every connection
-- sends again as soon as it is answered), anything else paces the sends: each thread keeps a
-- schedule (slot i at t0 + i / its share of the rate), delay() claims the next slot and waits for
-- it, so requests leave at their slots whatever the latency, as long as a connection is free.
-- RUN makes ids unique across the runs against one service (events: event ids); THREADS is wrk's -t,
-- so that each thread paces its share of the rate.
--
-- wrk's latency starts when a request is sent, not at its slot: if sends fall behind the schedule
-- (every connection busy), the latencies look better than what the rate would give. So request()
-- measures how late each send is against the schedule (the k-th send against slot k), and done()
-- reports it beside wrk's figures; benchmark.py calls such a rate not sustained.
--
-- done() prints one line, "wrk-json: {...}", which benchmark.py parses (latencies in ms).

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } nba_bench_timespec;
int clock_gettime(int clock_id, nba_bench_timespec *tp);
]])
local CLOCK_MONOTONIC = 1
local timespec = ffi.new("nba_bench_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
  return tonumber(timespec.tv_sec) * 1000 + tonumber(timespec.tv_nsec) / 1e6
end

local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./"

-- Main state: the threads, for done() to read their counters.
local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
  thread:set("thread_id", #threads)
end

-- Each thread's state. Globals, so that done() can read them with thread:get().
thread_id = 0
non_2xx = 0
statuses = {} -- status -> answers, for those not 2xx
fallbacks = 0
incomplete = 0
sends = 0
late_1ms = 0
late_5ms = 0
lag_max_ms = 0
lag_histogram = {} -- tenths of a millisecond late -> sends; early sends count as on time (0)

local scenario, path, interval, t0, claimed, n

function init(args)
  local name = args[1] or "floor"
  local rate = tonumber(args[2] or "0")
  local run = args[3] or "0"
  local thread_count = tonumber(args[4] or "1")
  scenario = dofile(here .. name .. ".lua")
  scenario.init(thread_id, run)
  path = scenario.path
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  claimed, n = 0, 0
  if rate > 0 then
    interval = 1000 / (rate / thread_count)
  else
    delay = nil -- a closed loop: wrk sends again at once
  end
end

function delay()
  local now = now_ms()
  if t0 == nil then
    t0 = now
  end
  local slot = t0 + claimed * interval
  claimed = claimed + 1
  if slot <= now then
    return 0
  end
  return slot - now
end

function request()
  -- wrk calls request() once in the first thread before the run, to check it: t0 is not set yet.
  if interval ~= nil and t0 ~= nil then
    local lag = now_ms() - (t0 + sends * interval)
    sends = sends + 1
    if lag > 1 then
      late_1ms = late_1ms + 1
    end
    if lag > 5 then
      late_5ms = late_5ms + 1
    end
    if lag > lag_max_ms then
      lag_max_ms = lag
    end
    local bucket = lag > 0 and math.floor(lag * 10) or 0
    lag_histogram[bucket] = (lag_histogram[bucket] or 0) + 1
  end
  n = n + 1
  return wrk.format(nil, path, nil, scenario.body(n))
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non_2xx = non_2xx + 1
    statuses[status] = (statuses[status] or 0) + 1
  elseif scenario.fallback ~= nil and body:find(scenario.fallback) then
    fallbacks = fallbacks + 1
  elseif scenario.accepted ~= nil then
    local accepted = tonumber(body:match('"accepted":%s*(%d+)'))
    if accepted ~= scenario.accepted then
      incomplete = incomplete + 1
    end
  end
end

local function lag_percentile(histogram, total, q)
  if total == 0 then
    return 0
  end
  local buckets = {}
  for bucket in pairs(histogram) do
    buckets[#buckets + 1] = bucket
  end
  table.sort(buckets)
  local rank, seen = math.ceil(q * total), 0
  for _, bucket in ipairs(buckets) do
    seen = seen + histogram[bucket]
    if seen >= rank then
      return bucket / 10
    end
  end
  return buckets[#buckets] / 10
end

function done(summary, latency, requests)
  local totals = { non_2xx = 0, fallbacks = 0, incomplete = 0, sends = 0, late_1ms = 0, late_5ms = 0 }
  local lag_max, histogram, by_status = 0, {}, {}
  for _, thread in ipairs(threads) do
    for name in pairs(totals) do
      totals[name] = totals[name] + (thread:get(name) or 0)
    end
    lag_max = math.max(lag_max, thread:get("lag_max_ms") or 0)
    for bucket, count in pairs(thread:get("lag_histogram") or {}) do
      histogram[bucket] = (histogram[bucket] or 0) + count
    end
    for status, count in pairs(thread:get("statuses") or {}) do
      by_status[status] = (by_status[status] or 0) + count
    end
  end
  local status_parts = {}
  for status, count in pairs(by_status) do
    status_parts[#status_parts + 1] = string.format('"%d":%d', status, count)
  end
  local e = summary.errors
  local function ms(us)
    return us / 1000
  end
  io.write(
    string.format(
      'wrk-json: {"requests":%d,"duration_s":%.6f,"bytes":%d,'
        .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
        .. '"non_2xx":%d,"statuses":{%s},"fallbacks":%d,"incomplete":%d,'
        .. '"latency_ms":{"p50":%.3f,"p90":%.3f,"p95":%.3f,"p99":%.3f,"max":%.3f,"mean":%.3f},'
        .. '"lag_ms":{"sends":%d,"p50":%.1f,"p99":%.1f,"max":%.3f,"late_1ms":%d,"late_5ms":%d}}\n',
      summary.requests,
      summary.duration / 1e6,
      summary.bytes,
      e.connect,
      e.read,
      e.write,
      e.status,
      e.timeout,
      totals.non_2xx,
      table.concat(status_parts, ","),
      totals.fallbacks,
      totals.incomplete,
      ms(latency:percentile(50)),
      ms(latency:percentile(90)),
      ms(latency:percentile(95)),
      ms(latency:percentile(99)),
      ms(latency.max),
      ms(latency.mean),
      totals.sends,
      lag_percentile(histogram, totals.sends, 0.50),
      lag_percentile(histogram, totals.sends, 0.99),
      lag_max,
      totals.late_1ms,
      totals.late_5ms
    )
  )
end
