-- POST one usage debit per request (the service's /v1/internal/usage or the yardstick's /debit).
-- Extra arguments: the path, then an API key id to send with every debit (each wallet's
-- `bench-key` carries a spend limit; without it no limit applies).
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

function init(args)
  bench_init(args)
  path = args[4] or "/v1/internal/usage"
  key = args[5] and string.format(',"api_key_id":"%s"', args[5]) or ""
end

function request()
  local body = string.format(
    '{"user_id":"%s","request_id":"%s","amount_micros":7000,"model":"gpt-4o-mini",' ..
    '"input_tokens":1200,"output_tokens":300%s}', next_user(), next_id(), key)
  return wrk.format("POST", path, headers, body)
end
