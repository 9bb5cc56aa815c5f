-- Reserve + capture pairs: POST /v1/internal/holds, and as soon as its answer arrives the
-- thread's next request captures that hold (POST /v1/internal/holds/{id}/capture). wrk's Lua
-- state is per thread, not per connection, so a capture goes out on whichever of the thread's
-- connections asks next; at most one reserved hold per connection waits for its capture.
-- `units` counts captured holds (pairs).
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local ready = {}

function init(args)
  bench_init(args)
end

function request()
  local hold_id = table.remove(ready)
  if hold_id then
    return wrk.format("POST", "/v1/internal/holds/" .. hold_id .. "/capture", headers,
      '{"amount_micros":7000,"model":"gpt-4o-mini","input_tokens":1200,"output_tokens":300}')
  end
  local body = string.format(
    '{"user_id":"%s","hold_id":"%s","amount_micros":10000}', next_user(), next_id())
  return wrk.format("POST", "/v1/internal/holds", headers, body)
end

function response(status, headers, body)
  local ok = status >= 200 and status < 300
  local hold_id = ok and body:find('"status"%s*:%s*"active"') and
    body:match('"hold_id"%s*:%s*"([^"]+)"')
  if hold_id then
    table.insert(ready, hold_id)
  elseif ok and body:find('"status"%s*:%s*"captured"') then
    units = units + 1
  else
    bad = bad + 1
  end
end
