#!/usr/bin/env bash
# Edge behaviours of a running consentry, checked with clients nobody here wrote
# (curl + nghttp2, Python requests, httpx over h2, the standard library's ssl/asyncio).
#
#   1. curl --http2, 50 tries each, POST /v1/messages with a 60 KB body:
#        no token -> 401 missing_token; a token without messages:send -> 403
#        insufficient_scope; Content-Encoding: br -> 415 unsupported_content_encoding;
#        every time the JSON error body, and never curl's "(92) Stream error".
#   2. requests (HTTP/1.1, writes the whole body before reading): a 10 MB body with a valid
#        token -> 413 payload_too_large (not a connection reset); 600 KB of headers -> 431.
#   3. httpx http2=True, 20 tries each: the 401 and the 413 of 1 and 2.
#   4. Connection exhaustion: consentry under `ulimit -n 256` (default max_connections =
#        192); 300 slow TLS clients, each a POST with Content-Length 60000 and no token that
#        sends one byte every 2 s and reconnects 1 s after being closed, so the connection
#        table stays full of them; meanwhile 200 real sends (alternately a new connection and
#        one keep-alive connection) must all answer 201 within 5 s each (p50/p99 reported);
#        the log's "Too many open files" line must appear at most once per 10 s.
#   5. Idle h2: with idle_timeout_seconds = 2, a connection that sends only the h2 preface
#        is closed about 2 s later.
#
# Run:  bash bench/edge.sh      (needs a release build: target/release/consentry, or set
#                                EDGE_BIN=/path/to/consentry; EDGE_KEEP_TMP=1 keeps the temp
#                                dir with the servers' logs)
# Needs curl (with HTTP/2), python3 with requests and httpx[http2].
# Prints PASS/FAIL lines with their numbers; exits 1 if any check failed.

set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${EDGE_BIN:-$here/../target/release/consentry}"
clients=(python3 "$here/edge_clients.py")
[[ -x "$bin" ]] || { echo "no consentry binary at $bin (cargo build --release, or EDGE_BIN=...)" >&2; exit 2; }
curl --version | grep -qi 'nghttp2' || { echo "curl without HTTP/2 support" >&2; exit 2; }
python3 -c 'import requests, httpx, h2' || { echo "pip install requests 'httpx[http2]'" >&2; exit 2; }

tmp="$(mktemp -d "${TMPDIR:-/tmp}/consentry-edge.XXXXXX")"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do
    # consentry drains for up to 10 s on SIGTERM; do not wait for more.
    for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
  if [[ "${EDGE_KEEP_TMP:-0}" == 1 ]]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

failures=0
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; failures=$((failures + 1)); }
# Runs a helper subcommand, counting a non-zero exit as a failure (its lines say which).
check_py() { "${clients[@]}" "$@" || failures=$((failures + 1)); }

# Two distinct free ports on 127.0.0.1, both bound at once so that they differ.
free_ports() {
  python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))'
}

# start_server NAME FILE_LIMIT|- [serve options...]: starts consentry with its data in
# $tmp/NAME, waits for /readyz, and sets $port, $admin, $pid, $dir, $cert, $log.
start_server() {
  local name="$1" files="$2"
  shift 2
  dir="$tmp/$name"
  mkdir -p "$dir"
  read -r port admin < <(free_ports)
  log="$tmp/$name.log"
  cert="$dir/data/tls/cert.pem"
  ([[ "$files" == - ]] || ulimit -n "$files" || exit 1
    exec "$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" \
      --admin-listen "127.0.0.1:$admin" "$@") >"$log" 2>&1 &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && [[ -s "$cert" ]] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "consentry ($name) did not become ready; its log:" >&2
  cat "$log" >&2
  exit 2
}

mint() { "$bin" token --data-dir "$dir/data" --tenant demo --sub edge --scope "$1"; }

# A JSON send whose body is padded to about 60 KB (under max_request_bytes, 64 KiB).
python3 - "$tmp/body60k.json" <<'EOF'
import json, sys
body = {"to": "+14155550123", "from": "+12025550100", "purpose": "transactional",
        "body": "x" * (60 * 1024)}
open(sys.argv[1], "w").write(json.dumps(body))
EOF

# ---------------------------------------------------------------------------------------------
echo "== consentry on its embedded defaults (items 1-3)"
start_server main -
token="$(mint 'messages:send')"
read_token="$(mint 'messages:read')"
url="https://127.0.0.1:$port/v1/messages"
echo "   $("$bin" --version), https://127.0.0.1:$port"

echo "== 1. curl --http2, 60 KB body, 50 tries each"
# curl_case NAME EXPECTED_STATUS EXPECTED_CODE [curl options...]
curl_case() {
  local name="$1" status="$2" code="$3"
  shift 3
  local i out rc ok=0 outcomes=() stream_errors=0
  for i in $(seq 1 50); do
    out="$(curl -sS --http2 --cacert "$cert" -o "$tmp/curl.body" -w '%{http_code} %{http_version}' \
      -H 'Content-Type: application/json' --data-binary @"$tmp/body60k.json" "$@" "$url" \
      2>"$tmp/curl.err")"
    rc=$?
    grep -q 'Stream error' "$tmp/curl.err" && stream_errors=$((stream_errors + 1))
    local got_code
    got_code="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["error"]["code"])' \
      "$tmp/curl.body" 2>/dev/null || echo none)"
    if [[ $rc -eq 0 && "$out" == "$status 2" && "$got_code" == "$code" ]]; then
      ok=$((ok + 1))
    else
      outcomes+=("rc=$rc '$out' $got_code $(head -c 120 "$tmp/curl.err" | tr '\n' ' ')")
    fi
  done
  local detail="$ok/50 answered HTTP/2 $status $code, curl stream errors: $stream_errors; last body: $(head -c 110 "$tmp/curl.body")"
  if [[ $ok -eq 50 ]]; then
    pass "curl h2 $name -> $status $code: $detail"
  else
    fail "curl h2 $name -> $status $code: $detail; first other outcome: ${outcomes[0]}"
  fi
}
curl_case "no token" 401 missing_token
curl_case "token without messages:send" 403 insufficient_scope -H "Authorization: Bearer $read_token"
curl_case "Content-Encoding: br" 415 unsupported_content_encoding \
  -H "Authorization: Bearer $token" -H 'Content-Encoding: br'

echo "== 2. requests (HTTP/1.1)"
check_py requests-cases --port "$port" --ca "$cert" --token "$token" --tries 10

echo "== 3. httpx, http2=True, 20 tries each"
check_py httpx-cases --port "$port" --ca "$cert" --token "$token" --tries 20

# ---------------------------------------------------------------------------------------------
echo "== 4. connection exhaustion under ulimit -n 256"
start_server exhaust 256
token="$(mint 'messages:send')"
echo "   server pid $pid: $(grep 'Max open files' "/proc/$pid/limits" | tr -s ' ')," \
  "so default max_connections = $((256 * 3 / 4))"
status="$tmp/swarm.json"
"${clients[@]}" swarm --port "$port" --ca "$cert" --count 300 --interval 2 --reconnect 1 \
  --status "$status" --pid "$pid" &
swarm_pid=$!
pids+=("$swarm_pid")
swarm_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$status" "$1" 2>/dev/null || echo 0; }
# Held: all 300 have tried to connect once; then 3 s more for the churn to settle.
for _ in $(seq 1 300); do
  [[ -s "$status" && $(swarm_field attempts) -ge 300 ]] && break
  sleep 0.1
done
sleep 3
before_open="$(swarm_field open_now)"
echo "   slow clients before the sends: $(cat "$status")"
check_py sends --port "$port" --ca "$cert" --token "$token" --count 200 --limit 5 --pid "$pid"
after_open="$(swarm_field open_now)"
echo "   slow clients after the sends:  $(cat "$status")"
if [[ $before_open -ge 150 && $after_open -ge 150 ]]; then
  pass "the slow clients held the table during the sends: $before_open open before, $after_open after (max_connections 192)"
else
  fail "the slow clients did not hold the table (the test proves nothing): $before_open open before, $after_open after"
fi
kill "$swarm_pid"
wait "$swarm_pid"
echo "   slow clients stopped:          $(cat "$status")"
check_py log-rate --log "$log" --pattern "Too many open files" --every 10
if curl -fsS "http://127.0.0.1:$admin/readyz" >/dev/null; then
  pass "consentry still ready after the flood"
else
  fail "consentry not ready after the flood"
fi

# ---------------------------------------------------------------------------------------------
echo "== 5. idle h2 connection, idle_timeout_seconds = 2"
mkdir -p "$tmp/idle"
cat >"$tmp/idle/consentry.toml" <<'EOF'
# The embedded defaults, with a short idle timeout.
data_dir = "./data"
[server]
idle_timeout_seconds = 2
[jwt]
dev_issuer = true
[[tenants]]
id = "demo"
senders = ["+12025550100"]
upstream = "sandbox"
purposes = ["marketing", "informational", "transactional"]
default_region = "US"
EOF
start_server idle - --config "$tmp/idle/consentry.toml"
check_py idle-h2 --port "$port" --ca "$cert" --idle 2

echo
if [[ $failures -eq 0 ]]; then
  echo "edge: all checks passed"
else
  echo "edge: $failures check group(s) FAILED"
  exit 1
fi
