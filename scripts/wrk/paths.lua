-- wrk script for scripts/bench_origin.py: every request GETs the next URL path of the list in the
-- file named by $WRK_PATHS (one path per line, e.g. /movie/v1/video-1080p/seg-000042.ts). Thread k
-- of n starts at k/n of the list, so the threads do not ask for the same file at the same time.
-- At the end it prints one line "WRK_JSON {...}" with the exact figures (requests, bytes, errors,
-- latency percentiles in microseconds), which bench_origin.py parses instead of wrk's rounded text.
--
--   WRK_PATHS=paths.txt wrk -t2 -c200 -d10s --latency -s scripts/wrk/paths.lua http://127.0.0.1:PORT

local paths = {}
local list = os.getenv("WRK_PATHS")
if not list then error("WRK_PATHS is not set") end
for line in io.lines(list) do
  if #line > 0 then paths[#paths + 1] = line end
end
if #paths == 0 then error("no paths in " .. list) end

local threads = {}

-- setup runs in wrk's main Lua state for every thread before any starts: each learns its index
-- and, updated at every call, the number of threads.
function setup(thread)
  thread:set("index", #threads)
  threads[#threads + 1] = thread
  for _, t in ipairs(threads) do t:set("nthreads", #threads) end
end

local next_path

function init(args)
  next_path = math.floor((index or 0) * #paths / (nthreads or 1))
end

function request()
  next_path = next_path % #paths + 1
  return wrk.format("GET", paths[next_path])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"duration_us": %d, "requests": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f, ' ..
    '"paths": %d}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean, #paths))
end
