#!/usr/bin/env bash
# The SMPP front against the HTTP front, same run (issue 18): one consentry on SQLite with
# [smpp] (plain, loopback) in front of the fake gateway; first SESSIONS SMPP sessions, each
# with WINDOW submit_sm outstanding (examples/smpp_load.rs), then wrk with as many HTTP
# connections as there are SMPP submits outstanding (SESSIONS x WINDOW) on POST /v1/messages
# over TLS (bench/send.lua). Both send transactional messages to random numbers of the same
# million, for BENCH_DURATION seconds after BENCH_WARMUP. Reports each one's rate, p50 / p99
# and consentry's CPU a message.
# With BENCH_UPSTREAM=smpp both go on through an SMPP upstream to a fast fake SMSC
# (examples/fake_smsc.rs: every submit_sm answered at once) instead of the HTTP fake gateway.
# Needs a release build: cargo build --release --bin consentry --example fake_gateway
#   --example smpp_load --example fake_smsc; and wrk (Debian package).
# Settings: BENCH_SESSIONS (1), BENCH_WINDOW (50), BENCH_DURATION (15), BENCH_WARMUP (3),
#           BENCH_UPSTREAM (http or smpp), BENCH_KEEP_TMP=1 keeps the temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."

sessions="${BENCH_SESSIONS:-1}"
window="${BENCH_WINDOW:-50}"
duration="${BENCH_DURATION:-15}"
warmup="${BENCH_WARMUP:-3}"
gw_port="${BENCH_GW_PORT:-18095}"
port="${BENCH_PORT:-18455}"
admin_port="${BENCH_ADMIN_PORT:-19095}"
smpp_port="${BENCH_SMPP_PORT:-12795}"
smsc_port="${BENCH_SMSC_PORT:-12796}"
upstream="${BENCH_UPSTREAM:-http}"
consentry=target/release/consentry
gateway=target/release/examples/fake_gateway
load=target/release/examples/smpp_load
smsc=target/release/examples/fake_smsc
for binary in "$consentry" "$gateway" "$load" "$smsc"; do
  [[ -x "$binary" ]] || {
    echo "smpp.sh: build first: cargo build --release --bin consentry --example fake_gateway --example smpp_load --example fake_smsc" >&2
    exit 2
  }
done
command -v wrk >/dev/null || { echo "smpp.sh: wrk is needed (apt-get install wrk)" >&2; exit 2; }

tmp="$(mktemp -d "${TMPDIR:-/tmp}/consentry-smpp.XXXXXX")"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ "${BENCH_KEEP_TMP:-0}" == 1 ]] || rm -rf "$tmp"
}
trap cleanup EXIT

export BENCH_GW_TOKEN="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
if [[ "$upstream" == smpp ]]; then
  # The SMSC's count is read over plain HTTP on the port the HTTP gateway would have.
  "$smsc" "127.0.0.1:$smsc_port" "127.0.0.1:$gw_port" >"$tmp/smsc.log" 2>&1 &
  upstream_config="kind = \"smpp\"
url = \"smpp://127.0.0.1:$smsc_port\"
system_id = \"consentry\"
credential = { env = \"BENCH_GW_TOKEN\" }
window = 100"
  export BENCH_GW_TOKEN="smscpw"
else
  "$gateway" --listen "127.0.0.1:$gw_port" >"$tmp/gateway.log" 2>&1 &
  upstream_config="kind = \"http-json\"
url = \"http://127.0.0.1:$gw_port/messages\"
credential = { env = \"BENCH_GW_TOKEN\" }"
fi
pids+=($!)
password="bench1"
hash="$(echo "$password" | "$consentry" smpp-password)"
cat >"$tmp/consentry.toml" <<TOML
data_dir = "$tmp/data"

[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$admin_port"

[jwt]
dev_issuer = true

[[tenants]]
id = "bench"
senders = ["+12025550100"]
upstream = "gw"
purposes = ["transactional", "informational", "marketing"]
default_region = "US"

[[upstreams]]
name = "gw"
$upstream_config

[smpp]
listen = "127.0.0.1:$smpp_port"
tls = false
window = $((window + 16))

[[smpp.accounts]]
system_id = "bench"
tenant = "bench"
password_hash = "$hash"
purpose = "transactional"
TOML
"$consentry" serve --config "$tmp/consentry.toml" >"$tmp/consentry.log" 2>&1 &
consentry_pid=$!
pids+=($consentry_pid)
for _ in $(seq 300); do
  curl -fs "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$admin_port/readyz" >/dev/null || { cat "$tmp/consentry.log"; exit 1; }
token="$("$consentry" token --data-dir "$tmp/data" --tenant bench --sub bench --scope messages:send)"

# consentry's CPU time (user + system, in clock ticks) from /proc.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$consentry_pid/stat"; }
ticks_per_second="$(getconf CLK_TCK)"

# Both run for warm-up + duration; the CPU is taken over the whole run and divided by the
# messages of the whole run (warm-up included), from the gateway's own count.
# (The HTTP gateway counts the request that asks; the fake SMSC does not.)
gateway_count() {
  if [[ "$upstream" == smpp ]]; then
    echo $(($(curl -fs "http://127.0.0.1:$gw_port/") + 1))
  else
    curl -fs -X POST -d '{}' "http://127.0.0.1:$gw_port/messages" | sed 's/.*"gw-\([0-9]*\)".*/\1/'
  fi
}

echo "==> upstream: $upstream"
echo "==> SMPP: $sessions session(s), window $window, ${warmup}s warm-up + ${duration}s"
before_count="$(gateway_count)"
before_cpu="$(cpu_ticks)"
smpp_result="$("$load" "127.0.0.1:$smpp_port" bench "$password" +12025550100 "$sessions" "$window" "$duration" "$warmup")"
smpp_cpu=$(($(cpu_ticks) - before_cpu))
smpp_sent=$(($(gateway_count) - before_count - 1))
echo "$smpp_result"

connections=$((sessions * window))
echo "==> HTTP: wrk -t 2 -c $connections, ${warmup}s warm-up + ${duration}s"
body='{"to":"+14155550123","from":"+12025550100","body":"bench message","purpose":"transactional"}'
before_count="$(gateway_count)"
before_cpu="$(cpu_ticks)"
BENCH_TOKEN="$token" BENCH_EXPECT=201 BENCH_BODY="$body" BENCH_RECIPIENTS=1000000 BENCH_SEED=2 \
  wrk -t 2 -c "$connections" -d "${warmup}s" -s bench/send.lua "https://127.0.0.1:$port/v1/messages" >"$tmp/wrk-warmup.txt" 2>&1
BENCH_TOKEN="$token" BENCH_EXPECT=201 BENCH_BODY="$body" BENCH_RECIPIENTS=1000000 BENCH_SEED=3 \
  wrk -t 2 -c "$connections" -d "${duration}s" -s bench/send.lua "https://127.0.0.1:$port/v1/messages" >"$tmp/wrk.txt" 2>&1
http_cpu=$(($(cpu_ticks) - before_cpu))
http_sent=$(($(gateway_count) - before_count - 1))
http_result="$(grep '^RESULT' "$tmp/wrk.txt")"
echo "$http_result"

field() { sed -n "s/.*$2=\([^ ]*\).*/\1/p" <<<"$1"; }
us_per() { awk -v t="$1" -v hz="$ticks_per_second" -v n="$2" 'BEGIN { printf "%.0f", n ? t / hz * 1e6 / n : 0 }'; }
echo
echo "| front | messages/s | p50 ms | p99 ms | CPU us/message | statuses |"
echo "|---|---|---|---|---|---|"
echo "| SMPP ($sessions x window $window) | $(field "$smpp_result" rate) | $(field "$smpp_result" p50_ms) | $(field "$smpp_result" p99_ms) | $(us_per "$smpp_cpu" "$smpp_sent") | $(field "$smpp_result" statuses) |"
echo "| HTTP (wrk -c $connections) | $(field "$http_result" rps) | $(awk -v u="$(field "$http_result" p50_us)" 'BEGIN { printf "%.2f", u / 1000 }') | $(awk -v u="$(field "$http_result" p99_us)" 'BEGIN { printf "%.2f", u / 1000 }') | $(us_per "$http_cpu" "$http_sent") | $(field "$http_result" statuses) |"
echo
