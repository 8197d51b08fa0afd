#!/usr/bin/env bash
# Durability under kill -9: consentry on SQLite (WAL, synchronous=FULL) takes random-recipient
# sends from wrk (32 connections) and is killed with SIGKILL part way, ten times (CRASH_ROUNDS),
# restarting on the same data folder each time. wrk appends the id of every send it saw
# answered 201 to a file as it reads the answer (bench/crash.lua). At the end:
#   - every one of those ids has its message record and its "sent" outcome in the database;
#   - `consentry audit verify` passes on the log written across the crashes.
# Exits non-zero on the first id without a record, or if the verification fails.
# With BENCH_DATABASE_URL=postgres://... the store is a fresh schema of that PostgreSQL database
# (dropped at the end) instead of SQLite in the data folder; the ids are checked with psql.
#
# Usage: bench/crash.sh            (BENCH_SKIP_BUILD=1 to use target/release as it is)
set -euo pipefail

rounds="${CRASH_ROUNDS:-10}"
gw_port="${BENCH_GW_PORT:-18081}"
port="${BENCH_PORT:-18443}"
admin_port="${BENCH_ADMIN_PORT:-19090}"
bench_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$bench_dir/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'crash.sh: error: %s\n' "$*" >&2; exit 1; }
command -v wrk >/dev/null || die "wrk is not installed (Debian package wrk)"
command -v python3 >/dev/null || die "python3 is needed to read the database"
base_url="${BENCH_DATABASE_URL:-}"
schema=""
if [[ -n "$base_url" ]]; then
  command -v psql >/dev/null || die "psql is needed with BENCH_DATABASE_URL"
fi

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  (cd "$repo_root" && cargo build --release --bin consentry --example fake_gateway)
fi
consentry="$target_dir/release/consentry"
gateway="$target_dir/release/examples/fake_gateway"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/consentry-crash.XXXXXX")"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -z "$schema" ]] || psql -q "$base_url" -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
  [[ "${BENCH_KEEP_TMP:-0}" == 1 ]] && log "kept $tmp" || rm -rf "$tmp"
}
trap cleanup EXIT

export BENCH_GW_TOKEN="crash-$RANDOM"
"$gateway" --listen "127.0.0.1:$gw_port" >"$tmp/gateway.log" 2>&1 &
pids+=("$!")

database_section=""
if [[ -n "$base_url" ]]; then
  schema="crash_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
  psql -q "$base_url" -c "CREATE SCHEMA $schema" >/dev/null
  sep='?'
  [[ "$base_url" == *\?* ]] && sep='&'
  schema_url="$(printf '%s%soptions=-c%%20search_path%%3D%s' "$base_url" "$sep" "$schema")"
  database_section="$(printf '[database]\nurl = "%s"' "$schema_url")"
fi

cat >"$tmp/consentry.toml" <<CONF
data_dir = "$tmp/data"
$database_section
[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$admin_port"
[jwt]
dev_issuer = true
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

start_consentry() {
  "$consentry" serve --config "$tmp/consentry.toml" >>"$tmp/consentry.log" 2>&1 &
  cs_pid=$!
  pids+=("$cs_pid")
  for _ in $(seq 300); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin_port/readyz" || true)" == 200 ]] && return
    kill -0 "$cs_pid" 2>/dev/null || { tail -20 "$tmp/consentry.log" >&2; die "consentry exited at start"; }
    sleep 0.1
  done
  die "consentry was not ready in 30 s"
}

mkdir -p "$tmp/ids"
for ((round = 1; round <= rounds; round++)); do
  start_consentry
  token="$("$consentry" token --data-dir "$tmp/data" --tenant bench --sub crash --scope messages:send --ttl 1h)"
  # Killed after 1.5 to 3.5 s of load, wherever it is.
  kill_after="$(awk -v r="$RANDOM" 'BEGIN { printf "%.2f", 1.5 + (r % 200) / 100 }')"
  BENCH_TOKEN="$token" CRASH_IDS_DIR="$tmp/ids" CRASH_ROUND="$round" \
    wrk -t 2 -c 32 -d 6s --timeout 2s -s "$bench_dir/crash.lua" "https://127.0.0.1:$port/v1/messages" \
    >"$tmp/wrk-$round.txt" 2>&1 &
  wrk_pid=$!
  sleep "$kill_after"
  kill -KILL "$cs_pid"
  wait "$cs_pid" 2>/dev/null || true
  wait "$wrk_pid" 2>/dev/null || true
  seen="$(cat "$tmp"/ids/ids-"$round"-*.txt 2>/dev/null | wc -l)"
  log "round $round/$rounds: killed after ${kill_after}s; $seen sends answered 201 before the kill"
done

# One more start: recovery of the last crash, then a graceful stop.
start_consentry
kill -TERM "$cs_pid"
wait "$cs_pid" 2>/dev/null || true

log "checking every id answered 201 against the database"
if [[ -n "$base_url" ]]; then
  cat "$tmp"/ids/*.txt | grep -v '^$' >"$tmp/ids.txt" || true
  psql -q -v ON_ERROR_STOP=1 -At "$base_url" >"$tmp/check.txt" <<SQL
SET search_path = $schema;
CREATE TEMP TABLE answered (id TEXT);
\\copy answered FROM '$tmp/ids.txt'
SELECT (SELECT count(*) FROM answered),
  (SELECT count(*) FROM answered a WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = a.id)),
  (SELECT count(*) FROM answered a WHERE EXISTS (SELECT 1 FROM messages m WHERE m.id = a.id)
     AND NOT EXISTS (SELECT 1 FROM message_outcomes o WHERE o.message_id = a.id AND o.status = 'sent')),
  (SELECT count(*) FROM messages);
SQL
  IFS='|' read -r answered missing no_outcome total <"$tmp/check.txt"
  echo "answered 201: $answered; without a record: $missing; without their 'sent' outcome: $no_outcome; records in the database: $total"
  [[ "$missing" == 0 && "$no_outcome" == 0 ]] || die "sends answered 201 are missing"
else
python3 - "$tmp/data/consentry.db" "$tmp"/ids/*.txt <<'PY'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
ids = [line.strip() for path in sys.argv[2:] for line in open(path) if line.strip()]
missing, no_outcome = [], []
for start in range(0, len(ids), 500):
    chunk = ids[start:start + 500]
    marks = ",".join("?" * len(chunk))
    found = {row[0] for row in db.execute(f"SELECT id FROM messages WHERE id IN ({marks})", chunk)}
    sent = {row[0] for row in db.execute(
        f"SELECT message_id FROM message_outcomes WHERE status = 'sent' AND message_id IN ({marks})", chunk)}
    missing += [i for i in chunk if i not in found]
    no_outcome += [i for i in chunk if i in found and i not in sent]
total = db.execute("SELECT count(*) FROM messages").fetchone()[0]
print(f"answered 201: {len(ids)}; without a record: {len(missing)}; "
      f"without their 'sent' outcome: {len(no_outcome)}; records in the database: {total}")
if missing or no_outcome:
    print("first missing:", (missing + no_outcome)[:5])
    sys.exit(1)
PY
fi

log "consentry audit verify"
"$consentry" audit verify --config "$tmp/consentry.toml" 2>&1 | tail -3
log "every send answered 201 survived $rounds kills; the log verifies"
