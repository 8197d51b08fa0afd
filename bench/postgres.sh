#!/usr/bin/env bash
# Send throughput by storage: SQLite, PostgreSQL with one consentry instance, and PostgreSQL with
# two instances sharing the database, in one run, under the same load.
#
# The load is the same in every case: two wrk processes at once, each with half the threads and
# half the connections, running bench/send.lua (transactional sends, each to a random one of
# BENCH_RECIPIENTS numbers, so that per-recipient locks do not serialise them). With one instance
# both wrk processes target it; with two instances, each wrk process targets one (a static split
# of the connections, as a load balancer with sticky connections would make).
#
# Every case starts on a fresh database: a new data dir (SQLite), or a new schema of
# BENCH_DATABASE_URL (PostgreSQL; dropped at the end). The two PostgreSQL instances share one data
# dir (so the same keys, certificate and development token key) and run on their own ports.
#
# Usage: bench/postgres.sh [-h]   (settings from the environment; see -h)

set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bench/postgres.sh [-h|--help]

Environment (defaults in brackets):
  BENCH_DATABASE_URL   PostgreSQL base URL [postgres://postgres@127.0.0.1:5432/test]
  BENCH_THREADS        wrk threads in all, split between the two wrk processes [2]
  BENCH_CONNECTIONS    connections in all, split likewise [32]
  BENCH_DURATION       measured seconds per case [15]
  BENCH_WARMUP         unmeasured seconds before each case [3]
  BENCH_RECIPIENTS     how many numbers the sends are spread over [100000]
  BENCH_TIMEOUT        wrk request timeout in seconds [5]
  BENCH_SKIP_BUILD=1   use the binaries already in target/release
  BENCH_KEEP_TMP=1     keep the temp dir (configs, logs, raw wrk output)
  TMPDIR               where the temp dir (and the SQLite database) goes [/tmp]
Needs wrk, curl and psql.
EOF
}
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

base_url="${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
threads="${BENCH_THREADS:-2}"
connections="${BENCH_CONNECTIONS:-32}"
duration="${BENCH_DURATION:-15}"
warmup="${BENCH_WARMUP:-3}"
recipients="${BENCH_RECIPIENTS:-100000}"
timeout="${BENCH_TIMEOUT:-5}"
for var in threads connections duration recipients timeout; do
  [[ "${!var}" =~ ^[1-9][0-9]*$ ]] || { echo "postgres.sh: $var must be a positive whole number" >&2; exit 2; }
done
[[ "$warmup" =~ ^[0-9]+$ ]] || { echo "postgres.sh: BENCH_WARMUP must be a whole number" >&2; exit 2; }
((threads >= 2 && connections >= 2)) || { echo "postgres.sh: at least 2 threads and 2 connections" >&2; exit 2; }

bench_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$bench_dir/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
[[ "$target_dir" = /* ]] || target_dir="$repo_root/$target_dir"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'postgres.sh: error: %s\n' "$*" >&2; exit 1; }
for tool in wrk curl psql; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done

tmp=""
pids=()
schemas=()
cleanup() {
  local status=$? pid
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for schema in "${schemas[@]}"; do
    psql -q "$base_url" -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
  done
  if [[ -n "$tmp" && -d "$tmp" ]]; then
    if [[ "${BENCH_KEEP_TMP:-0}" == 1 ]]; then log "kept $tmp"; else rm -rf "$tmp"; fi
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

psql -q "$base_url" -c "SELECT 1" >/dev/null || die "cannot reach PostgreSQL at $base_url"

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  log "building release (consentry, fake_gateway)"
  (cd "$repo_root" && cargo build --release --bin consentry --example fake_gateway)
fi
consentry_bin="$target_dir/release/consentry"
gateway_bin="$target_dir/release/examples/fake_gateway"
[[ -x "$consentry_bin" && -x "$gateway_bin" ]] || die "build consentry and fake_gateway first"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/consentry-pgbench.XXXXXX")"
log "temp dir $tmp"

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start NAME COMMAND...: in the background, output in $tmp/NAME.log.
start() {
  local name="$1"
  shift
  "$@" >"$tmp/$name.log" 2>&1 &
  pids+=("$!")
  last_pid=$!
}

export BENCH_GW_TOKEN="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
gw_port="$(free_port)"
start gateway "$gateway_bin" --listen "127.0.0.1:$gw_port"
for _ in $(seq 100); do
  [[ "$(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{}' "http://127.0.0.1:$gw_port/messages" || true)" == 200 ]] && break
  sleep 0.1
done

# fresh_schema: creates a fresh schema of the base database and sets schema_url to its URL.
# (Not called in a subshell: the schema is remembered in `schemas`, and dropped at the end.)
fresh_schema() {
  local schema="bench_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
  psql -q "$base_url" -c "CREATE SCHEMA $schema" >/dev/null
  schemas+=("$schema")
  local sep='?'
  [[ "$base_url" != *'?'* ]] || sep='&'
  schema_url="$(printf '%s%soptions=-c%%20search_path%%3D%s' "$base_url" "$sep" "$schema")"
}

# instance DATA_DIR DATABASE_URL: starts consentry; sets api_port, instance_pid.
instance() {
  local data_dir="$1" url="$2" admin ready=0
  api_port="$(free_port)"
  admin="$(free_port)"
  cat >"$tmp/config-$api_port.toml" <<EOF
data_dir = "$data_dir"

[server]
listen = "127.0.0.1:$api_port"
admin_listen = "127.0.0.1:$admin"

[database]
url = "$url"

[jwt]
dev_issuer = true

[[tenants]]
id = "bench"
senders = ["+12025550100"]
upstream = "gw"
default_region = "US"

[[upstreams]]
name = "gw"
kind = "http-json"
url = "http://127.0.0.1:$gw_port/messages"
credential = { env = "BENCH_GW_TOKEN" }
EOF
  start "consentry-$api_port" "$consentry_bin" serve --config "$tmp/config-$api_port.toml"
  instance_pid=$last_pid
  for _ in $(seq 300); do
    if [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin/readyz" || true)" == 200 ]]; then
      ready=1
      break
    fi
    kill -0 "$instance_pid" 2>/dev/null || { tail -n 20 "$tmp/consentry-$api_port.log" >&2; die "consentry exited"; }
    sleep 0.1
  done
  [[ "$ready" == 1 ]] || die "consentry on $api_port was not ready within 30 s"
}

stop_instances() {
  local pid
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

body='{"to":"+14155550123","from":"+12025550100","body":"bench message","purpose":"transactional"}'
result() {
  awk -v k="$2" '/^RESULT /{ for (i = 2; i <= NF; i++) if (index($i, k "=") == 1) print substr($i, length(k) + 2) }' "$1"
}
clk_tck="$(getconf CLK_TCK)"
cpu_ticks() {
  local total=0 pid
  for pid in "$@"; do
    total=$((total + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat")))
  done
  echo "$total"
}

# run CASE SECONDS PORT_A PORT_B SEED: the two wrk processes, A on PORT_A, B on PORT_B.
run() {
  local name="$1" seconds="$2" port_a="$3" port_b="$4" seed="$5" half_t=$((threads / 2)) half_c=$((connections / 2))
  local wrk_pids=() i port
  i=0
  for port in "$port_a" "$port_b"; do
    BENCH_TOKEN="$token" BENCH_EXPECT=201 BENCH_BODY="$body" BENCH_RECIPIENTS="$recipients" \
      BENCH_SEED="$((seed * 10 + i))" \
      wrk -t "$half_t" -c "$half_c" -d "${seconds}s" --timeout "${timeout}s" -s "$bench_dir/send.lua" \
      "https://127.0.0.1:$port/v1/messages" >"$tmp/wrk-$name-$i.txt" 2>&1 &
    wrk_pids+=("$!")
    i=$((i + 1))
  done
  for i in "${wrk_pids[@]}"; do wait "$i" || die "wrk failed ($name)"; done
}

declare -A rps=() p50=() p99=() reqs=() errs=() cpu=()
cases=(sqlite postgres-1 postgres-2)
seed=1
measure() {
  local name="$1" port_a="$2" port_b="$3" f before after n=0 e=0 r=0 p50max=0 p99max=0
  shift 3
  if ((warmup > 0)); then
    log "$name: warm-up ${warmup}s"
    run "$name-warmup" "$warmup" "$port_a" "$port_b" "$seed"
  fi
  if [[ -n "$analyze_url" ]]; then
    # The schema is a few seconds old: autovacuum has not analyzed it yet, and the plans
    # PostgreSQL cached for consentry's prepared statements while its tables were empty scan
    # them whole. A database in service is analyzed within a minute of its growth; so is this.
    psql -q "$analyze_url" -c "DO \$\$DECLARE t text; BEGIN FOR t IN SELECT tablename FROM pg_tables \
      WHERE schemaname = current_schema() LOOP EXECUTE format('ANALYZE %I', t); END LOOP; END\$\$" >/dev/null
  fi
  log "$name: ${duration}s, 2 x wrk -t $((threads / 2)) -c $((connections / 2))"
  before="$(cpu_ticks "$@")"
  run "$name" "$duration" "$port_a" "$port_b" $((seed + 1))
  after="$(cpu_ticks "$@")"
  seed=$((seed + 2))
  for f in "$tmp/wrk-$name-0.txt" "$tmp/wrk-$name-1.txt"; do
    grep -q '^RESULT ' "$f" || { cat "$f" >&2; die "wrk printed no RESULT ($name)"; }
    n=$((n + $(result "$f" requests)))
    e=$((e + $(result "$f" unexpected) + $(result "$f" connect_err) + $(result "$f" read_err) \
      + $(result "$f" write_err) + $(result "$f" timeout_err)))
    r="$(awk -v a="$r" -v b="$(result "$f" rps)" 'BEGIN { print a + b }')"
    p50max="$(awk -v a="$p50max" -v b="$(result "$f" p50_us)" 'BEGIN { print (b > a) ? b : a }')"
    p99max="$(awk -v a="$p99max" -v b="$(result "$f" p99_us)" 'BEGIN { print (b > a) ? b : a }')"
    grep '^WARNING' "$f" >&2 || true
  done
  rps[$name]="$r"
  p50[$name]="$p50max"
  p99[$name]="$p99max"
  reqs[$name]="$n"
  errs[$name]="$e"
  cpu[$name]="$(awk -v t=$((after - before)) -v hz="$clk_tck" -v n="$n" 'BEGIN { printf "%.0f", n ? t / hz * 1e6 / n : 0 }')"
}

mint() {
  token="$("$consentry_bin" token --data-dir "$1" --tenant bench --sub bench --scope messages:send --ttl 2h)"
}

# SQLite: one instance, its database in its data dir.
analyze_url=""
instance "$tmp/sqlite" "sqlite://$tmp/sqlite/consentry.db"
mint "$tmp/sqlite"
measure sqlite "$api_port" "$api_port" "$instance_pid"
stop_instances "$instance_pid"

# PostgreSQL, one instance.
fresh_schema
analyze_url="$schema_url"
instance "$tmp/pg1" "$schema_url"
mint "$tmp/pg1"
measure postgres-1 "$api_port" "$api_port" "$instance_pid"
stop_instances "$instance_pid"

# PostgreSQL, two instances on one schema, one data dir (same keys and token key).
fresh_schema
url="$schema_url" analyze_url="$schema_url"
instance "$tmp/pg2" "$url"
port_a="$api_port" pid_a="$instance_pid"
instance "$tmp/pg2" "$url"
port_b="$api_port" pid_b="$instance_pid"
mint "$tmp/pg2"
measure postgres-2 "$port_a" "$port_b" "$pid_a" "$pid_b"
stop_instances "$pid_a" "$pid_b"

commit="$(git -C "$repo_root" rev-parse --short=12 HEAD 2>/dev/null || echo "no commit")"
[[ -z "$(git -C "$repo_root" status --porcelain 2>/dev/null)" ]] || commit+=" (uncommitted changes)"
cpu_model="$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
mem="$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
pg_version="$(psql -At "$base_url" -c 'SHOW server_version')"
pg_sync="$(psql -At "$base_url" -c 'SHOW synchronous_commit')"
ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }

cat <<EOF
# consentry send throughput by storage, bench/postgres.sh

- date:      $(date -u +%Y-%m-%dT%H:%M:%SZ)
- commit:    $commit
- machine:   $(nproc) CPUs, ${cpu_model:-unknown CPU}, $mem, $(uname -srm)
- versions:  $("$consentry_bin" --version | head -n 1); PostgreSQL $pg_version (synchronous_commit $pg_sync, same machine); wrk $(wrk -v 2>&1 | head -n 1 | awk '{ print $2 }')
- load:      2 wrk processes at once, each -t $((threads / 2)) -c $((connections / 2)), ${duration}s measured after ${warmup}s warm-up;
             one instance: both on it; two instances: one each
- request:   POST /v1/messages, transactional, "to" random among $recipients numbers (bench/send.lua)
- all on one machine: wrk, consentry, PostgreSQL and the fake gateway share the CPUs

| case       | instances | requests/s | p50 ms | p99 ms | CPU us/req | requests | errors |
|------------|-----------|------------|--------|--------|------------|----------|--------|
EOF
for name in "${cases[@]}"; do
  n=1
  [[ "$name" != postgres-2 ]] || n=2
  printf '| %-10s | %9s | %10.1f | %6s | %6s | %10s | %8s | %6s |\n' "$name" "$n" "${rps[$name]}" \
    "$(ms "${p50[$name]}")" "$(ms "${p99[$name]}")" "${cpu[$name]}" "${reqs[$name]}" "${errs[$name]}"
done
cat <<EOF

requests/s: both wrk processes' answers per second, summed; p50/p99: the higher of the two
processes'; CPU us/req: consentry's own CPU (all its instances) per request, not PostgreSQL's.
EOF
total=0
for name in "${cases[@]}"; do total=$((total + errs[$name])); done
((total == 0)) || { echo "WARNING: $total errors" ; exit 1; }
