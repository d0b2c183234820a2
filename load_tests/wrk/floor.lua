-- The floor's body (load_tests/floor.py): a decision request's shape, the same every time.
local body = '{"customer_id":"b-c-17","placement":"web.home",'
  .. '"event":{"type":"page_view","properties":{"page":"/"}},"context":{"device":"mobile"}}'

return {
  path = "/floor",
  init = function(thread_id, run) end,
  body = function(n)
    return body
  end,
}
