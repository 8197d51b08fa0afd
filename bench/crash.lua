-- wrk script for bench/crash.sh: random-recipient transactional sends, and the id of every
-- send answered 201 appended to $CRASH_IDS_DIR/ids-<thread>.txt as soon as wrk reads it.
-- Lines are flushed one by one: when consentry is killed, every id a client saw is on disk.

local token = os.getenv("BENCH_TOKEN") or error("BENCH_TOKEN is not set")
local dir = os.getenv("CRASH_IDS_DIR") or error("CRASH_IDS_DIR is not set")
local round = os.getenv("CRASH_ROUND") or "0"

wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. token
wrk.headers["Content-Type"] = "application/json"

local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_index", #threads)
end

local ids
function init(args)
  math.randomseed(os.time() * 100 + (thread_index or 0))
  ids = assert(io.open(string.format("%s/ids-%s-%d.txt", dir, round, thread_index or 0), "a"))
end

function request()
  local i = math.floor(math.random() * 1000000)
  local to = string.format("+1415%03d%04d", 200 + math.floor(i / 10000), i % 10000)
  local body = '{"to":"' .. to .. '","from":"+12025550100","body":"crash test","purpose":"transactional"}'
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  if status == 201 and body ~= nil then
    local id = string.match(body, '"id":"([^"]+)"')
    if id ~= nil then
      ids:write(id, "\n")
      ids:flush()
    end
  end
end
