-- POST /v1/internal/usage/batch with N events (extra argument) over the wallets; every event of
-- every answer must be `applied` (`"failed":0`), else the answer counts as bad.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

function init(args)
  bench_init(args)
  size = tonumber(args[4]) or 100
end

function request()
  local events = {}
  for i = 1, size do
    events[i] = string.format(
      '{"user_id":"%s","request_id":"%s","amount_micros":7000,"model":"gpt-4o-mini",' ..
      '"input_tokens":1200,"output_tokens":300}', next_user(), next_id())
  end
  local body = '{"events":[' .. table.concat(events, ",") .. ']}'
  return wrk.format("POST", "/v1/internal/usage/batch", headers, body)
end

function response(status, headers, body)
  if status == 200 and body:find('"failed"%s*:%s*0[,}]') then
    units = units + size
  else
    bad = bad + 1
  end
end
