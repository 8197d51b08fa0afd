#!/usr/bin/env bash
# Batch sends: BENCH_BATCHES requests of BENCH_BATCH_SIZE recipients each (default 10 x 10,000)
# through POST /v1/messages/batch to the fake gateway, one after the other, on SQLite, every
# recipient a distinct number. Reports recipients decided and recorded per second (lines
# answered over the wall time of the batches), the statuses, and how many requests the gateway
# itself counted (its answer ids count every POST).
# With BENCH_RATE=N the gateway's upstream is paced at N a second (`rate = { per_second = N }`):
# the recipients over it are queued (`paced`), and the script then samples the gateway's own
# count every second until every recipient has reached it, and reports the rate it saw;
# BENCH_PACED_SECONDS=S stops sampling after S seconds (100,000 recipients at 50 a second take
# 33 minutes to reach the gateway; the rate is the same after a minute).
# With BENCH_DATABASE_URL=postgres://... the store is a fresh schema of that PostgreSQL database
# (dropped at the end) instead of SQLite in the temp dir.
# Needs a release build (cargo build --release --bin consentry --example fake_gateway), taken
# from CARGO_TARGET_DIR when it is set (to compare two builds).
# Usage: bench/batch.sh            (BENCH_KEEP_TMP=1 keeps the temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."

batches="${BENCH_BATCHES:-10}"
size="${BENCH_BATCH_SIZE:-10000}"
gw_port="${BENCH_GW_PORT:-18091}"
port="${BENCH_PORT:-18453}"
admin_port="${BENCH_ADMIN_PORT:-19093}"
target_dir="${CARGO_TARGET_DIR:-target}"
consentry="$target_dir/release/consentry"
gateway="$target_dir/release/examples/fake_gateway"
[[ -x "$consentry" && -x "$gateway" ]] || {
  echo "batch.sh: build first: cargo build --release --bin consentry --example fake_gateway" >&2
  exit 2
}

tmp="$(mktemp -d "${TMPDIR:-/tmp}/consentry-batch.XXXXXX")"
pids=()
schema=""
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -z "$schema" ]] || psql -q "$BENCH_DATABASE_URL" -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
  [[ "${BENCH_KEEP_TMP:-0}" == 1 ]] || rm -rf "$tmp"
}
trap cleanup EXIT

export BENCH_GW_TOKEN="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
"$gateway" --listen "127.0.0.1:$gw_port" >"$tmp/gateway.log" 2>&1 &
pids+=($!)
cat >"$tmp/consentry.toml" <<TOML
data_dir = "$tmp/data"

[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$admin_port"
max_request_bytes = 65536

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
kind = "http-json"
url = "http://127.0.0.1:$gw_port/messages"
credential = { env = "BENCH_GW_TOKEN" }
TOML
if [[ -n "${BENCH_RATE:-}" ]]; then
  echo "rate = { per_second = ${BENCH_RATE} }" >>"$tmp/consentry.toml"
fi
if [[ -n "${BENCH_DATABASE_URL:-}" ]]; then
  schema="bench_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
  psql -q "$BENCH_DATABASE_URL" -c "CREATE SCHEMA $schema" >/dev/null
  sep='?'
  [[ "$BENCH_DATABASE_URL" != *'?'* ]] || sep='&'
  # Last: the upstream's `rate` above belongs to its table.
  printf '\n[database]\nurl = "%s%soptions=-c%%20search_path%%3D%s"\n' \
    "$BENCH_DATABASE_URL" "$sep" "$schema" >>"$tmp/consentry.toml"
fi
"$consentry" serve --config "$tmp/consentry.toml" >"$tmp/consentry.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do
  curl -fs "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$admin_port/readyz" >/dev/null || { cat "$tmp/consentry.log"; exit 1; }
token="$("$consentry" token --data-dir "$tmp/data" --tenant bench --sub bench --scope messages:send)"

python3 - "$port" "$tmp/data/tls/cert.pem" "$token" "$batches" "$size" "$gw_port" "${BENCH_PACED_SECONDS:-3600}" <<'PY'
import json, ssl, sys, time, urllib.request
port, cert, token, batches, size, gw_port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
paced_seconds = float(sys.argv[7])
context = ssl.create_default_context(cafile=cert)

def gateway_count():
    request = urllib.request.Request(f"http://127.0.0.1:{gw_port}/messages", data=b"{}", method="POST")
    return int(json.load(urllib.request.urlopen(request))["id"].split("-")[1])

before = gateway_count()
statuses, started = {}, time.monotonic()
for b in range(batches):
    recipients = [{"to": f"+1415{200 + (b * size + i) // 10000:03d}{(b * size + i) % 10000:04d}"} for i in range(size)]
    body = json.dumps({"from": "+12025550100", "purpose": "transactional",
                       "body": "Your order has shipped", "recipients": recipients}).encode()
    request = urllib.request.Request(f"https://localhost:{port}/v1/messages/batch", data=body, method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    t0 = time.monotonic()
    with urllib.request.urlopen(request, context=context, timeout=600) as answer:
        for line in answer:
            value = json.loads(line)
            if "summary" not in value:
                statuses[value["status"]] = statuses.get(value["status"], 0) + 1
    print(f"batch {b + 1}/{batches}: {size} recipients in {time.monotonic() - t0:.2f} s", flush=True)
elapsed = time.monotonic() - started
forwarded = gateway_count() - before - 1
total = batches * size
print(f"recipients: {total} in {elapsed:.2f} s: {total / elapsed:,.0f} decided and recorded per second")
print(f"statuses: {statuses}; the gateway counted {forwarded} sends")
if statuses.get("scheduled"):
    # Paced: the gateway's own count, second by second, until every recipient reached it.
    # (Each sample is itself one request to the gateway: it is taken off.)
    counts, last, samples = [], gateway_count(), 1
    start = time.monotonic()
    deadline = start + paced_seconds
    while last - before - 1 - samples < total and time.monotonic() < deadline:
        time.sleep(max(0.0, start + samples - time.monotonic()))
        now = gateway_count()
        samples += 1
        counts.append(now - last - 1)
        last = now
    full = [c for c in counts[1:-1]] or counts
    print(f"forwarded per second, as the gateway counted: {counts}")
    print(f"paced seconds (first and last left out): mean {sum(full) / len(full):,.1f}, "
          f"min {min(full)}, max {max(full)}; {last - before - 1 - samples + 1} of {total} forwarded"
          + ("" if last - before - 1 - samples + 1 >= total else f" when sampling stopped after {paced_seconds:g} s"))
PY
