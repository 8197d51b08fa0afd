#!/usr/bin/env bash
# Send throughput with the audit log's sequencer running versus not (issue 6: at least 0.95x).
#
# For each backend, two consentry instances run side by side for the whole run, each on a
# database of its own: "on" runs the sequencer (checkpoints every BENCH_CHECKPOINT_LEAVES
# leaves or BENCH_CHECKPOINT_INTERVAL_MS), "off" has `[log] sequencer = false` (its sends still
# add their pending log entry, which nothing sequences). The same wrk load (bench/send.lua,
# transactional sends to random numbers) drives one instance at a time, in alternating order
# round after round; medians are reported, with on/off ratios.
#
# Usage: bench/audit.sh [-h]       settings come from the environment; see -h.

set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bench/audit.sh [-h|--help]

Environment (defaults in brackets):
  BENCH_BACKENDS                 backends to measure, "sqlite", "postgres" or both [sqlite]
  BENCH_DATABASE_URL             PostgreSQL base URL; each instance gets a fresh schema
                                 [postgres://postgres@127.0.0.1:5432/test]
  BENCH_ROUNDS                   rounds; the order on/off alternates, medians reported [3]
  BENCH_THREADS                  wrk threads [2]
  BENCH_CONNECTIONS              wrk connections [32]
  BENCH_DURATION                 measured seconds per instance and round [20]
  BENCH_WARMUP                   unmeasured seconds before each measured run [3]
  BENCH_RECIPIENTS               "to" is random among this many numbers [100000]
  BENCH_CHECKPOINT_LEAVES        [log] checkpoint_leaves of "on" [1000]
  BENCH_CHECKPOINT_INTERVAL_MS   [log] checkpoint_interval_ms of "on" [10000]
  BENCH_TIMEOUT                  wrk request timeout in seconds [5]
  BENCH_SKIP_BUILD=1             use the binaries already built
  BENCH_KEEP_TMP=1               keep the temp dir (configs, logs, raw wrk output)
  TMPDIR                         where the temp dir (and the SQLite databases) go [/tmp]
Needs wrk, curl, sqlite3 (and psql for postgres).
EOF
}
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

read -r -a backends <<<"${BENCH_BACKENDS:-sqlite}"
base_url="${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
rounds="${BENCH_ROUNDS:-3}"
threads="${BENCH_THREADS:-2}"
connections="${BENCH_CONNECTIONS:-32}"
duration="${BENCH_DURATION:-20}"
warmup="${BENCH_WARMUP:-3}"
recipients="${BENCH_RECIPIENTS:-100000}"
cp_leaves="${BENCH_CHECKPOINT_LEAVES:-1000}"
cp_interval="${BENCH_CHECKPOINT_INTERVAL_MS:-10000}"
timeout="${BENCH_TIMEOUT:-5}"
for var in rounds threads connections duration recipients cp_leaves cp_interval timeout; do
  [[ "${!var}" =~ ^[1-9][0-9]*$ ]] || { echo "audit.sh: $var must be a positive whole number" >&2; exit 2; }
done
[[ "$warmup" =~ ^[0-9]+$ ]] || { echo "audit.sh: BENCH_WARMUP must be a whole number" >&2; exit 2; }
((${#backends[@]} > 0)) || { echo "audit.sh: BENCH_BACKENDS is empty" >&2; exit 2; }
for backend in "${backends[@]}"; do
  [[ "$backend" == sqlite || "$backend" == postgres ]] ||
    { echo "audit.sh: unknown backend '$backend' (sqlite, postgres)" >&2; exit 2; }
done

bench_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$bench_dir/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
[[ "$target_dir" = /* ]] || target_dir="$repo_root/$target_dir"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'audit.sh: error: %s\n' "$*" >&2; exit 1; }
for tool in wrk curl sqlite3 python3; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done
if [[ " ${backends[*]} " == *" postgres "* ]]; then
  command -v psql >/dev/null || die "psql is not installed"
  psql -q "$base_url" -c "SELECT 1" >/dev/null || die "cannot reach PostgreSQL at $base_url"
fi

tmp=""
pids=()
schemas=()
cleanup() {
  local status=$? pid schema
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

load_start="$(cut -d' ' -f1-3 /proc/loadavg)"

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  log "building release (consentry, fake_gateway)"
  (cd "$repo_root" && cargo build --release --bin consentry --example fake_gateway)
fi
consentry_bin="$target_dir/release/consentry"
gateway_bin="$target_dir/release/examples/fake_gateway"
[[ -x "$consentry_bin" && -x "$gateway_bin" ]] || die "build consentry and fake_gateway first"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/consentry-auditbench.XXXXXX")"
log "temp dir $tmp"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start NAME COMMAND...: in the background, output in $tmp/NAME.log; sets last_pid.
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

# The URL of a fresh schema of the base database.
fresh_schema() {
  local schema="bench_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
  psql -q "$base_url" -c "CREATE SCHEMA $schema" >/dev/null
  schemas+=("$schema")
  schema_of[$1]="$schema"
  local sep='?'
  [[ "$base_url" != *'?'* ]] || sep='&'
  url_of[$1]="$base_url${sep}options=-c%20search_path%3D$schema"
}

# The instances: BACKEND-on and BACKEND-off for each backend.
declare -A port_of=() pid_of=() token_of=() url_of=() schema_of=() data_of=()
instances=()
# instance NAME BACKEND SEQUENCER(true|false)
instance() {
  local name="$1" backend="$2" sequencer="$3" admin ready=0
  local data_dir="$tmp/$name"
  data_of[$name]="$data_dir"
  port_of[$name]="$(free_port)"
  admin="$(free_port)"
  if [[ "$backend" == sqlite ]]; then
    url_of[$name]="sqlite://$data_dir/consentry.db"
  else
    fresh_schema "$name"
  fi
  cat >"$tmp/$name.toml" <<EOF
data_dir = "$data_dir"

[server]
listen = "127.0.0.1:${port_of[$name]}"
admin_listen = "127.0.0.1:$admin"

[database]
url = "${url_of[$name]}"

[jwt]
dev_issuer = true

[log]
sequencer = $sequencer
checkpoint_leaves = $cp_leaves
checkpoint_interval_ms = $cp_interval

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
  start "$name" "$consentry_bin" serve --config "$tmp/$name.toml"
  pid_of[$name]=$last_pid
  for _ in $(seq 300); do
    if [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin/readyz" || true)" == 200 ]]; then
      ready=1
      break
    fi
    kill -0 "$last_pid" 2>/dev/null || { tail -n 20 "$tmp/$name.log" >&2; die "$name exited"; }
    sleep 0.1
  done
  [[ "$ready" == 1 ]] || die "$name was not ready within 30 s"
  token_of[$name]="$("$consentry_bin" token --data-dir "$data_dir" --tenant bench --sub bench \
    --scope 'messages:send audit:read' --ttl 4h)"
  instances+=("$name")
}

for backend in "${backends[@]}"; do
  instance "$backend-on" "$backend" true
  instance "$backend-off" "$backend" false
done

# sql NAME QUERY: one value from an instance's database (read-only on SQLite).
sql() {
  if [[ "$1" == sqlite-* ]]; then
    sqlite3 -readonly "${data_of[$1]}/consentry.db" "$2"
  else
    psql -At "${url_of[$1]}" -c "$2"
  fi
}

body='{"to":"+14155550123","from":"+12025550100","body":"bench message","purpose":"transactional"}'
for name in "${instances[@]}"; do
  code="$(curl -sk -o "$tmp/$name.smoke" -w '%{http_code}' -X POST \
    -H "Authorization: Bearer ${token_of[$name]}" -H 'Content-Type: application/json' \
    --data "$body" "https://127.0.0.1:${port_of[$name]}/v1/messages" || true)"
  [[ "$code" == 201 ]] || die "$name answered $code to the smoke send: $(head -c 300 "$tmp/$name.smoke")"
done

result() {
  awk -v k="$2" '/^RESULT /{ for (i = 2; i <= NF; i++) if (index($i, k "=") == 1) print substr($i, length(k) + 2) }' "$1"
}
median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
clk_tck="$(getconf CLK_TCK)"
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }

# load NAME SECONDS OUT SEED: one wrk run against an instance.
load() {
  BENCH_TOKEN="${token_of[$1]}" BENCH_EXPECT=201 BENCH_BODY="$body" BENCH_RECIPIENTS="$recipients" \
    BENCH_SEED="$4" wrk -t "$threads" -c "$connections" -d "${2}s" --timeout "${timeout}s" \
    -s "$bench_dir/send.lua" "https://127.0.0.1:${port_of[$1]}/v1/messages" >"$3" 2>&1 ||
    { cat "$3" >&2; die "wrk failed against $1"; }
  grep -q '^RESULT ' "$3" || { cat "$3" >&2; die "wrk printed no RESULT line for $1"; }
}

declare -A rps=() p50=() p99=() pmax=() cpu=() errs=() reqs=() cps=() loads=()
for ((r = 1; r <= rounds; r++)); do
  for backend in "${backends[@]}"; do
    if ((r % 2)); then order=("$backend-on" "$backend-off"); else order=("$backend-off" "$backend-on"); fi
    for name in "${order[@]}"; do
      if ((warmup > 0)); then
        log "round $r/$rounds: $name warm-up ${warmup}s"
        load "$name" "$warmup" "$tmp/wrk-$name-warmup-$r.txt" $((2 * r - 1))
      fi
      log "round $r/$rounds: $name ${duration}s, $threads threads, $connections connections"
      checkpoints_before="$(sql "$name" 'SELECT count(*) FROM log_checkpoints')"
      before="$(cpu_ticks "${pid_of[$name]}")"
      f="$tmp/wrk-$name-$r.txt"
      load "$name" "$duration" "$f" $((2 * r))
      after="$(cpu_ticks "${pid_of[$name]}")"
      loads[$name]+="$(cut -d' ' -f1 /proc/loadavg) "
      n="$(result "$f" requests)"
      reqs[$name]=$((${reqs[$name]:-0} + n))
      errs[$name]=$((${errs[$name]:-0} + $(result "$f" unexpected) + $(result "$f" connect_err) \
        + $(result "$f" read_err) + $(result "$f" write_err) + $(result "$f" timeout_err)))
      rps[$name]+="$(result "$f" rps) "
      p50[$name]+="$(result "$f" p50_us) "
      p99[$name]+="$(result "$f" p99_us) "
      pmax[$name]+="$(result "$f" max_us) "
      cpu[$name]+="$(awk -v t=$((after - before)) -v hz="$clk_tck" -v n="$n" \
        'BEGIN { printf "%.0f", n ? t / hz * 1e6 / n : 0 }') "
      cps[$name]+="$(($(sql "$name" 'SELECT count(*) FROM log_checkpoints') - checkpoints_before)) "
      grep '^WARNING' "$f" >&2 || true
    done
  done
done
load_end="$(cut -d' ' -f1-3 /proc/loadavg)"

# The log at the end: entries, how many the sequencer has not reached yet, checkpoints.
# The largest step between successive checkpoints, in leaves (the cadence says at most
# checkpoint_leaves, plus what the sequencer's last batch overshot).
declare -A entries=() pending=() checkpoints=() widest=()
sleep 1
for name in "${instances[@]}"; do
  entries[$name]="$(sql "$name" 'SELECT count(*) FROM log_leaves')"
  pending[$name]="$(sql "$name" 'SELECT count(*) FROM log_leaves WHERE leaf_index IS NULL')"
  checkpoints[$name]="$(sql "$name" 'SELECT count(*) FROM log_checkpoints')"
  widest[$name]="$(sql "$name" 'SELECT COALESCE(MAX(step), 0) FROM (SELECT tree_size -
    COALESCE(LAG(tree_size) OVER (ORDER BY tree_size), 0) AS step FROM log_checkpoints) AS steps')"
done

commit="$(git -C "$repo_root" rev-parse --short=12 HEAD 2>/dev/null || echo "no commit")"
[[ -z "$(git -C "$repo_root" status --porcelain 2>/dev/null)" ]] || commit+=" (uncommitted changes)"
cpu_model="$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
mem="$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
ms() { awk -v us="$1" 'BEGIN { printf "%.1f", us / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'; }

cat <<EOF
# consentry send throughput, sequencer on versus off, bench/audit.sh

- date:      $(date -u +%Y-%m-%dT%H:%M:%SZ)
- commit:    $commit
- machine:   $(nproc) CPUs, ${cpu_model:-unknown CPU}, $mem, $(uname -srm)
- load avg:  $load_start at the start, $load_end at the end (1, 5, 15 min; includes this run)
- versions:  $("$consentry_bin" --version | head -n 1); wrk $(wrk -v 2>&1 | head -n 1 | awk '{ print $2 }')
- load:      wrk -t $threads -c $connections, ${duration}s measured after ${warmup}s warm-up, $rounds rounds,
             order alternating (odd rounds on first); POST /v1/messages, transactional,
             "to" random among $recipients numbers (bench/send.lua)
- "on":      sequencer running, checkpoint_leaves = $cp_leaves, checkpoint_interval_ms = $cp_interval
- "off":     [log] sequencer = false (sends still write their pending log entry)

| instance        | requests/s (median) | per round          | p50 ms | p99 ms | max ms | CPU us/req | checkpoints/round | errors |
|-----------------|---------------------|--------------------|--------|--------|--------|------------|-------------------|--------|
EOF
total_errs=0
# shellcheck disable=SC2086 # the per-round lists are split on purpose
for name in "${instances[@]}"; do
  printf '| %-15s | %19.1f | %-18s | %6s | %6s | %6s | %10s | %-17s | %6s |\n' "$name" \
    "$(median ${rps[$name]})" "$(printf '%.0f ' ${rps[$name]})" "$(ms "$(median ${p50[$name]})")" \
    "$(ms "$(median ${p99[$name]})")" "$(ms "$(median ${pmax[$name]})")" "$(median ${cpu[$name]})" \
    "${cps[$name]}" "${errs[$name]}"
  total_errs=$((total_errs + errs[$name]))
done
echo
for backend in "${backends[@]}"; do
  # shellcheck disable=SC2086
  on="$(median ${rps[$backend-on]})" off="$(median ${rps[$backend-off]})"
  echo "- $backend: on/off = $(ratio "$on" "$off") (target >= 0.95); per round:" \
    "$(for ((r = 1; r <= rounds; r++)); do
      ratio "$(echo ${rps[$backend-on]} | cut -d' ' -f$r)" "$(echo ${rps[$backend-off]} | cut -d' ' -f$r)"
      printf ' '
    done)"
  for name in "$backend-on" "$backend-off"; do
    echo "  - $name at the end: ${entries[$name]} log entries, ${pending[$name]} not sequenced," \
      "${checkpoints[$name]} checkpoints (at most ${widest[$name]} leaves apart);" \
      "1-min load after each round: ${loads[$name]}"
  done
done
cat <<EOF

requests/s: wrk's answers per second; p50/p99/max: medians over the rounds of each round's
latency percentile; CPU us/req: the instance's own CPU per request. Both instances stay up for
the whole run; only the one being measured gets requests.
EOF
((total_errs == 0)) || { echo "WARNING: $total_errs errors"; exit 1; }
