#!/usr/bin/env bash
# How long a checkpoint waits for its witnesses' cosignatures under load (issue 14's bar: a
# quorum within 2 s of signing at 1,000 sends/s). Two `consentry witness` processes on this
# machine, consentry on SQLite with both configured (checkpoints every 1,000 leaves or 1 s),
# the fake gateway, and wrk sending random-recipient transactional messages. A watcher polls
# GET /v1/audit/checkpoints/latest every 20 ms and, for each new checkpoint, notes when both
# cosignatures are first shown: the delay is that moment minus the checkpoint's signing time.
# One line per load: sends/s, checkpoints seen, cosigned by both, and the delay's p50 / p99 /
# max. A checkpoint replaced by a newer one before both cosigned it counts as not cosigned
# (witnesses are sent the latest only).
#
# Usage: bench/witness.sh   (BENCH_SKIP_BUILD=1: use target/release as it is;
#                            BENCH_DURATION seconds per load [20]; BENCH_LOADS connection
#                            counts [1 32]: one connection is about 1,000 sends/s here)
set -euo pipefail

duration="${BENCH_DURATION:-20}"
loads="${BENCH_LOADS:-1 32}"
gw_port="${BENCH_GW_PORT:-18081}"
port="${BENCH_PORT:-18443}"
admin_port="${BENCH_ADMIN_PORT:-19090}"
bench_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$bench_dir/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'witness.sh: error: %s\n' "$*" >&2; exit 1; }
command -v wrk >/dev/null || die "wrk is not installed (Debian package wrk)"

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  (cd "$repo_root" && cargo build --release --bin consentry --example fake_gateway)
fi
consentry="$target_dir/release/consentry"
gateway="$target_dir/release/examples/fake_gateway"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/consentry-witness.XXXXXX")"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ "${BENCH_KEEP_TMP:-0}" == 1 ]] && log "kept $tmp" || rm -rf "$tmp"
}
trap cleanup EXIT

export BENCH_GW_TOKEN="witness-$RANDOM"
"$gateway" --listen "127.0.0.1:$gw_port" >"$tmp/gateway.log" 2>&1 &
pids+=("$!")

origin="bench.consentry.example/log"

cat >"$tmp/consentry.toml" <<CONF
data_dir = "$tmp/data"
[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$admin_port"
[jwt]
dev_issuer = true
[log]
checkpoint_leaves = 1000
checkpoint_interval_ms = 1000
origin = "$origin"
[[tenants]]
id = "bench"
senders = ["+12025550100"]
upstream = "gw"
purposes = ["transactional"]
default_region = "US"
[[upstreams]]
name = "gw"
kind = "http-json"
url = "http://127.0.0.1:$gw_port/messages"
credential = { env = "BENCH_GW_TOKEN" }
CONF
# The log's key (made in the data folder now): the witnesses must know it first.
log_key="$("$consentry" audit public-key --config "$tmp/consentry.toml")"

for name in w1 w2; do
  cat >"$tmp/$name.toml" <<CONF
name = "bench.witness/$name"
state_dir = "$tmp/$name-state"
[[logs]]
origin = "$origin"
public_key = "$log_key"
CONF
  "$consentry" witness serve --config "$tmp/$name.toml" --listen 127.0.0.1:0 >"$tmp/$name.out" 2>"$tmp/$name.log" &
  pids+=("$!")
  for _ in $(seq 100); do [[ -s "$tmp/$name.out" ]] && break; sleep 0.1; done
  read -r _ _ vkey _ url <"$tmp/$name.out" || die "witness $name did not start"
  printf '\n[[log.witnesses]]\nurl = "%s"\nkey = "%s"\n' "$url" "$vkey" >>"$tmp/consentry.toml"
done


"$consentry" serve --config "$tmp/consentry.toml" >"$tmp/consentry.log" 2>&1 &
pids+=("$!")
for _ in $(seq 300); do
  [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin_port/readyz" || true)" == 200 ]] && break
  sleep 0.1
done
token() { "$consentry" token --data-dir "$tmp/data" --tenant bench --sub witness-bench --scope "$1" --ttl 1h; }
send_token="$(token messages:send)"
audit_token="$(token audit:read)"

echo "| connections | sends/s | checkpoints | cosigned by both | p50 ms | p99 ms | max ms |"
echo "|---|---|---|---|---|---|---|"
for connections in $loads; do
  python3 - "https://127.0.0.1:$port/v1/audit/checkpoints/latest" "$audit_token" "$tmp/watch-$connections.txt" \
    "$((duration + 3))" <<'PY' &
import json, ssl, sys, time, urllib.request
url, token, out, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
seen, done = {}, {}
end = time.time() + seconds
while time.time() < end:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        checkpoint = json.load(urllib.request.urlopen(request, context=context, timeout=2))
    except Exception:
        time.sleep(0.02)
        continue
    size = checkpoint["tree_size"]
    seen.setdefault(size, checkpoint["signed_at_us"])
    if size not in done and len(checkpoint.get("cosignatures", [])) >= 2:
        done[size] = time.time() * 1e6 - checkpoint["signed_at_us"]
    time.sleep(0.02)
with open(out, "w") as f:
    f.write(json.dumps({"seen": len(seen), "delays_us": sorted(done.values())}))
PY
  watcher=$!
  sleep 1
  BENCH_TOKEN="$send_token" BENCH_RECIPIENTS=1000000 \
    wrk -t "$(( connections < 2 ? 1 : 2 ))" -c "$connections" -d "${duration}s" --timeout 5s \
    -s "$bench_dir/send.lua" "https://127.0.0.1:$port/v1/messages" >"$tmp/wrk-$connections.txt" 2>&1
  wait "$watcher"
  rps="$(sed -n 's/^RESULT .*rps=\([0-9.]*\).*/\1/p' "$tmp/wrk-$connections.txt")"
  python3 - "$tmp/watch-$connections.txt" "$connections" "$rps" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
d = data["delays_us"]
pick = lambda q: d[min(len(d) - 1, int(q * len(d)))] / 1000 if d else float("nan")
print(f"| {sys.argv[2]} | {float(sys.argv[3] or 0):,.0f} | {data['seen']} | {len(d)} | "
      f"{pick(0.5):.0f} | {pick(0.99):.0f} | {(d[-1] / 1000 if d else float('nan')):.0f} |")
PY
done
