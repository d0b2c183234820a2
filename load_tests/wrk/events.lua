-- POST /v1/events bodies: batches of 500 events, each for another of 200,000 customers (b-e-c-<n>),
-- with ids unique per run, thread, request and event: b-e-<run>-<thread>-<n>-<k>.
local BATCH = 500
local POOL = 200000
local STRIDE = 7919 -- prime: a batch's customers are distinct, and the walk covers the pool

-- Ten events of each kind in a hundred; %s is the item.
local KINDS = {}
local function kind(share, text)
  for _ = 1, share do
    KINDS[#KINDS + 1] = text
  end
end
kind(50, '"type":"page_view","properties":{"page":"/"}}')
kind(25, '"type":"product_view","properties":{"item_id":"sku-%s","page":"/p/sku-%s"}}')
kind(10, '"type":"search","properties":{"query":"rain jacket"}}')
kind(10, '"type":"email_open","properties":{"campaign":"weekly"}}')
kind(5, '"type":"add_to_cart","properties":{"item_id":"sku-%s","price":25.0,"quantity":1}}')

local prefix, parts, cursor

return {
  path = "/v1/events",
  accepted = BATCH,
  init = function(thread_id, run)
    prefix = '{"event_id":"b-e-' .. run .. "-" .. thread_id .. "-"
    cursor = (thread_id * 100003) % POOL
    parts = {}
  end,
  body = function(n)
    for k = 1, BATCH do
      cursor = (cursor + STRIDE) % POOL
      local item = tostring(cursor % 40)
      parts[k] = prefix .. n .. "-" .. k .. '","customer_id":"b-e-c-' .. cursor .. '",'
        .. KINDS[(n * BATCH + k) % #KINDS + 1]:gsub("%%s", item)
    end
    return '{"events":[' .. table.concat(parts, ",") .. "]}"
  end,
}
