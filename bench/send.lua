-- wrk script for bench/run.sh: one POST /v1/messages per request, the same
-- request for every target, and a tally of the answers so that a run with
-- errors cannot pass for a good one.
--
-- Environment (set by run.sh):
--   BENCH_TOKEN       the JWT sent as "Authorization: Bearer ..." (required)
--   BENCH_EXPECT      the status a successful send answers (default 201)
--   BENCH_BODY        the JSON body (default: a transactional US message)
--   BENCH_RECIPIENTS  N: if set, each request's "to" is one of the N numbers
--                     run.sh seeds into the ledger, drawn uniformly at random
--                     (the rest of BENCH_BODY is kept as it is)
--   BENCH_SEED        seed of that draw (default 1); thread K uses SEED * 1000 + K,
--                     so one seed draws the same positions whatever N is
--
-- At the end it prints one line that run.sh parses:
--   RESULT requests=... rps=... p50_us=... p99_us=... non2xx=... unexpected=... statuses=201:n,...

local token = os.getenv("BENCH_TOKEN")
if token == nil or token == "" then
  error("BENCH_TOKEN is not set")
end
local expect = tonumber(os.getenv("BENCH_EXPECT") or "201")

wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
  or '{"to":"+14155550123","from":"+12025550100","body":"bench message","purpose":"transactional"}'
wrk.headers["Authorization"] = "Bearer " .. token
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"

-- Ledger mode: a new request for each send, to a random seeded number. The
-- Ith number is +1415 EEE LLLL with EEE = 200 + I / 10000 and LLLL = I % 10000,
-- as run.sh's bench_number and its import generate them.
local recipients = tonumber(os.getenv("BENCH_RECIPIENTS") or "")
if recipients ~= nil then
  local before, after = string.match(wrk.body, '^(.-"to":")[^"]*(".*)$')
  if before == nil then
    error('BENCH_BODY has no "to" field to replace')
  end
  local seed = tonumber(os.getenv("BENCH_SEED") or "1")

  function init(args)
    -- thread_index is set by setup() before init() runs in each thread.
    math.randomseed(seed * 1000 + (thread_index or 0))
  end

  function request()
    local i = math.floor(math.random() * recipients)
    local to = string.format("+1415%03d%04d", 200 + math.floor(i / 10000), i % 10000)
    return wrk.format(nil, nil, nil, before .. to .. after)
  end
end

-- Per-thread state. Each wrk thread runs its own copy of this script; done()
-- collects the counters through the thread objects kept by setup().
non2xx = 0
unexpected = 0
statuses = {}
sample = ""

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_index", #threads)
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
  if status ~= expect then
    unexpected = unexpected + 1
    if sample == "" and body ~= nil then
      sample = string.sub(body, 1, 300)
    end
  end
end

function done(summary, latency, requests)
  local total_non2xx, total_unexpected = 0, 0
  local by_status = {}
  local first_sample = ""
  for _, thread in ipairs(threads) do
    total_non2xx = total_non2xx + thread:get("non2xx")
    total_unexpected = total_unexpected + thread:get("unexpected")
    for status, count in pairs(thread:get("statuses")) do
      by_status[status] = (by_status[status] or 0) + count
    end
    local s = thread:get("sample")
    if first_sample == "" and s ~= nil then
      first_sample = s
    end
  end

  local keys = {}
  for status in pairs(by_status) do
    table.insert(keys, status)
  end
  table.sort(keys)
  local parts = {}
  for _, status in ipairs(keys) do
    table.insert(parts, status .. ":" .. by_status[status])
  end

  local errors = summary.errors
  local seconds = summary.duration / 1e6
  io.write(string.format(
    "RESULT requests=%d seconds=%.3f rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d"
      .. " non2xx=%d unexpected=%d connect_err=%d read_err=%d write_err=%d timeout_err=%d"
      .. " statuses=%s\n",
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    total_non2xx, total_unexpected,
    errors.connect, errors.read, errors.write, errors.timeout,
    table.concat(parts, ",")))
  if total_unexpected > 0 then
    io.write(string.format("WARNING %d responses were not %d; first body: %s\n",
      total_unexpected, expect, first_sample))
  end
end
