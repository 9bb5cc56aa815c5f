-- Shared by every wrk script in this folder (loaded with dofile from the script's own folder).
--
-- Arguments after `--` (the same for every script): the service token (or "-" for none), a
-- prefix unique to this run (request ids are <prefix>-<thread>-<counter>), the number of wallets
-- to spread users over (user-0 .. user-<n-1>; 1 means one hot wallet), then script-specific ones.
--
-- done() prints one line `BENCH_JSON {...}` that bench/wrk.py parses: completed requests, the
-- measured duration, wrk's socket errors, non-2xx answers, p50/p99 and the script's own counters
-- summed over threads (`bad`: answers whose body was not what the scenario expects, `units`:
-- scenario units completed, e.g. captured holds).

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

counter = 0
bad = 0
units = 0

function bench_init(args)
  token = args[1]
  prefix = args[2] .. "-" .. tostring(thread_id or 0)
  wallets = tonumber(args[3]) or 1000
  math.randomseed(os.time() * 1000 + (thread_id or 0))
  headers = { ["Content-Type"] = "application/json" }
  if token ~= "-" then
    headers["Authorization"] = "Bearer " .. token
  end
end

function next_id()
  counter = counter + 1
  return prefix .. "-" .. counter
end

function next_user()
  if wallets <= 1 then
    return "user-0"
  end
  return "user-" .. math.random(0, wallets - 1)
end

function done(summary, latency, requests)
  local thread_bad, thread_units = 0, 0
  for _, thread in ipairs(threads) do
    thread_bad = thread_bad + (thread:get("bad") or 0)
    thread_units = thread_units + (thread:get("units") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"timeout":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%d,"bad":%d,' ..
    '"units":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.max, latency.mean, thread_bad,
    thread_units))
end
