-- POST /v1/decide bodies: a page view's decision for customers b-c-1 .. b-c-50000, each thread
-- walking the pool with a stride from its own start, on the shipped catalogue's web placements.
local POOL = 50000
local STRIDE = 7919 -- prime, so the walk visits the whole pool before repeating

-- One page view in ten of each: placement, the event it carries, then the rest of the body.
local VIEWS = {
  { "web.home", '"event":{"type":"page_view","properties":{"page":"/"}}' },
  { "web.home", '"event":{"type":"page_view","properties":{"page":"/"}}' },
  { "web.home", '"event":{"type":"search","properties":{"query":"rain jacket"}}' },
  { "web.product_page", '"event":{"type":"product_view","properties":{"item_id":"sku-%d","page":"/p/sku-%d"}}' },
  { "web.product_page", '"event":{"type":"product_view","properties":{"item_id":"sku-%d","page":"/p/sku-%d"}}' },
  { "web.product_page", '"event":{"type":"product_view","properties":{"item_id":"sku-%d","page":"/p/sku-%d"}}' },
  { "web.product_page", '"event":{"type":"product_view","properties":{"item_id":"sku-%d","page":"/p/sku-%d"}}' },
  { "web.cart", '"event":{"type":"page_view","properties":{"page":"/cart"}}' },
  { "web.faq", '"event":{"type":"faq_view","properties":{"article_id":"returns-policy","page":"/help/returns"}}' },
  { "web.faq", '"event":{"type":"faq_view","properties":{"article_id":"delivery-times","page":"/help/delivery"}}' },
}
local DEVICES = { "mobile", "mobile", "desktop", "tablet" }

local ids, tails, start

return {
  path = "/v1/decide",
  fallback = '"fallback":%s*true',
  init = function(thread_id, run)
    ids, tails = {}, {}
    for i = 1, POOL do
      ids[i] = '{"customer_id":"b-c-' .. i .. '",'
    end
    -- 40 items x 10 views x 4 devices, cycled: 1600 distinct tails.
    for item = 1, 40 do
      for v, view in ipairs(VIEWS) do
        for d, device in ipairs(DEVICES) do
          local event = view[2]:gsub("%%d", tostring(item))
          tails[#tails + 1] = '"placement":"' .. view[1] .. '",' .. event
            .. ',"context":{"device":"' .. device .. '"}}'
        end
      end
    end
    start = (thread_id * 10007) % POOL
  end,
  body = function(n)
    return ids[(start + n * STRIDE) % POOL + 1] .. tails[(n * 7) % #tails + 1]
  end,
}
