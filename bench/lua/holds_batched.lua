-- Reserve + batched captures: reserves are single requests (POST /v1/internal/holds), and once
-- the thread holds at least `batch` (extra argument, default 50) reserved holds its next
-- request captures all of them in one POST /v1/internal/holds/captures, as a gateway that
-- batches its captures would. wrk's Lua state is per thread: a batch goes out on whichever of
-- the thread's connections asks next. `units` counts captured holds (pairs); a batch answer
-- with a capture not captured now (`"failed"` above 0, or fewer captured than sent) is bad.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local ready = {}
local capture = ',"amount_micros":7000,"model":"gpt-4o-mini","input_tokens":1200,"output_tokens":300}'

function init(args)
  bench_init(args)
  batch = tonumber(args[4]) or 50
end

function request()
  if #ready >= batch then
    local items = {}
    for i = 1, #ready do
      items[i] = '{"hold_id":"' .. ready[i] .. '"' .. capture
    end
    ready = {}
    local body = '{"captures":[' .. table.concat(items, ",") .. ']}'
    return wrk.format("POST", "/v1/internal/holds/captures", headers, body)
  end
  local body = string.format(
    '{"user_id":"%s","hold_id":"%s","amount_micros":10000}', next_user(), next_id())
  return wrk.format("POST", "/v1/internal/holds", headers, body)
end

function response(status, headers, body)
  local ok = status >= 200 and status < 300
  if not ok then
    bad = bad + 1
    return
  end
  local hold_id = body:find('"status"%s*:%s*"active"') and
    body:match('"hold_id"%s*:%s*"([^"]+)"')
  if hold_id then
    table.insert(ready, hold_id)
    return
  end
  local captured = tonumber(body:match('"captured"%s*:%s*(%d+)'))
  if captured and body:find('"failed"%s*:%s*0[,}]') then
    units = units + captured
  else
    bad = bad + 1
  end
end
