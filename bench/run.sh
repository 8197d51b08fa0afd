#!/usr/bin/env bash
# Load benchmark: consentry against nginx as a plain TLS reverse proxy.
#
# Builds release, starts the fake gateway (examples/fake_gateway.rs), starts
# consentry and nginx in front of it with the same certificate, then drives
# both with wrk (same threads, connections, duration and Lua script) and
# prints requests/s, p50/p99 latency and the consentry/nginx ratios.
#
# With BENCH_LEDGER_SIZES="1000 1000000" it measures instead how the consent
# ledger's size affects sends: one consentry per size, each with a fresh
# database seeded through POST /v1/consents/import with that many opt-ins,
# all driven with the same informational sends to random seeded recipients.
# See bench/README.md for how to read the figures.
#
# Usage: bench/run.sh [-o FILE]        (or BENCH_OUT=FILE bench/run.sh)
# Settings come from the environment; run with -h for the list.

set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bench/run.sh [-o|--out FILE] [-h|--help]

  -o, --out FILE   also write the summary to FILE (same as BENCH_OUT=FILE)

Environment (defaults in brackets):
  BENCH_THREADS        wrk threads, at most one a connection [2]
  BENCH_CONNECTIONS    open connections, shared by the threads [32]
  BENCH_DURATION       measured seconds per target and round [20]
  BENCH_WARMUP         unmeasured seconds before each measured run [3]
  BENCH_ROUNDS         rounds; the order of the targets alternates, medians are reported [1]
  BENCH_LEDGER_SIZES   ledger mode: consent ledger sizes to compare, e.g. "1000 1000000" [off]
  BENCH_NGINX=0        leave nginx out (the baseline) [1]
  BENCH_SEED           seed of the random recipient draw [1]
  BENCH_RANDOM_RECIPIENTS  outside ledger mode: each send goes to one of this many numbers,
                       drawn at random; 0 sends every request to one number [1000000]
  BENCH_TIMEOUT        wrk request timeout in seconds [5]
  BENCH_NGINX_WORKERS  nginx worker_processes [auto, one per CPU]
  BENCH_GW_PORT        fake gateway port [18081]
  BENCH_PORT           consentry TLS port; in ledger mode the Nth size uses PORT+10(N-1) [18443]
  BENCH_ADMIN_PORT     consentry admin port; likewise [19090]
  BENCH_NGINX_PORT     nginx TLS port [18444]
  BENCH_SKIP_BUILD=1   use the binaries already in target/release
  BENCH_SKIP_INSTALL=1 never apt-get install nginx, wrk or curl
  BENCH_KEEP_TMP=1     keep the temp dir (configs, logs, raw wrk output)
  BENCH_ALLOW_ERRORS=1 exit 0 even if a target answered errors
  TMPDIR               where the temp dir (and consentry's database) goes [/tmp]
EOF
}

out="${BENCH_OUT:-}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    -o | --out)
      [[ $# -ge 2 ]] || { usage >&2; exit 2; }
      out="$2"
      shift 2
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      echo "run.sh: unknown argument: $1" >&2
      usage >&2
      exit 2
      ;;
  esac
done

threads="${BENCH_THREADS:-2}"
connections="${BENCH_CONNECTIONS:-32}"
duration="${BENCH_DURATION:-20}"
warmup="${BENCH_WARMUP:-3}"
rounds="${BENCH_ROUNDS:-1}"
timeout="${BENCH_TIMEOUT:-5}"
nginx_workers="${BENCH_NGINX_WORKERS:-auto}"
gw_port="${BENCH_GW_PORT:-18081}"
cs_port="${BENCH_PORT:-18443}"
admin_port="${BENCH_ADMIN_PORT:-19090}"
nginx_port="${BENCH_NGINX_PORT:-18444}"

with_nginx="${BENCH_NGINX:-1}"
seed="${BENCH_SEED:-1}"
random_recipients="${BENCH_RANDOM_RECIPIENTS:-1000000}"
read -r -a ledger_sizes <<<"${BENCH_LEDGER_SIZES:-}"

for var in threads connections duration warmup rounds timeout gw_port cs_port admin_port nginx_port \
  seed random_recipients; do
  if ! [[ "${!var}" =~ ^[0-9]+$ ]] || [[ "${!var}" -eq 0 && "$var" != warmup && "$var" != random_recipients ]]; then
    echo "run.sh: $var must be a positive whole number, got '${!var}'" >&2
    exit 2
  fi
done
# wrk refuses more threads than connections: one connection is driven by one thread.
if ((threads > connections)); then
  threads=$connections
fi
[[ "$with_nginx" == 0 || "$with_nginx" == 1 ]] || {
  echo "run.sh: BENCH_NGINX must be 0 or 1, got '$with_nginx'" >&2
  exit 2
}
# Ledger sizes are how many distinct numbers bench_number can make (see below).
for size in "${ledger_sizes[@]}"; do
  if ! [[ "$size" =~ ^[0-9]+$ ]] || ((size < 1 || size > 1000000)); then
    echo "run.sh: BENCH_LEDGER_SIZES: each size must be 1 to 1000000, got '$size'" >&2
    exit 2
  fi
done
# Smallest first: the ratios are to the smallest ledger.
if ((${#ledger_sizes[@]} > 0)); then
  mapfile -t ledger_sizes < <(printf '%s\n' "${ledger_sizes[@]}" | sort -n)
fi

bench_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$bench_dir/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
[[ "$target_dir" = /* ]] || target_dir="$repo_root/$target_dir"

# The request every target gets; the fake gateway accepts anything. In ledger
# mode send.lua sends this with "to" drawn at random from the seeded numbers
# and purpose informational, which needs an opt-in in the ledger.
body='{"to":"+14155550123","from":"+12025550100","body":"bench message","purpose":"transactional"}'
if ((${#ledger_sizes[@]} > 0)); then
  purpose=informational
else
  purpose=transactional
fi

# The Ith (from 0) of the numbers seeded into the ledger: +1415 EEE LLLL with
# exchange EEE = 200 + I / 10000 and line LLLL = I % 10000, so a million
# distinct valid US numbers. bench/send.lua draws them the same way.
bench_number() {
  printf '+1415%03d%04d' $((200 + $1 / 10000)) $(($1 % 10000))
}

log() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'run.sh: error: %s\n' "$*" >&2
  exit 1
}

# --- processes and cleanup --------------------------------------------------

tmp=""
pids=()
declare -A pid_of=()
wrk_pid=""

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  local pid i
  [[ -z "$wrk_pid" ]] || kill -TERM "$wrk_pid" 2>/dev/null || true
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid="${pids[i]}"
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n "$tmp" && -d "$tmp" ]]; then
    if [[ "${BENCH_KEEP_TMP:-0}" == 1 ]]; then
      log "kept $tmp"
    else
      rm -rf "$tmp"
    fi
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts "$@" in the background with its output in $tmp/NAME.log.
start() {
  local name="$1"
  shift
  "$@" >"$tmp/$name.log" 2>&1 &
  pids+=("$!")
  pid_of[$name]=$!
}

alive_or_die() {
  local name="$1" pid="$2"
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "--- last lines of $name.log ---" >&2
    tail -n 40 "$tmp/$name.log" >&2 || true
    die "$name exited during start-up"
  fi
}

port_busy() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# --- tools --------------------------------------------------------------------

find_nginx() {
  command -v nginx 2>/dev/null || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; } || true
}

ensure_tools() {
  local missing=()
  [[ "$with_nginx" == 0 || -n "$(find_nginx)" ]] || missing+=(nginx)
  command -v wrk >/dev/null || missing+=(wrk)
  command -v curl >/dev/null || missing+=(curl)
  command -v cargo >/dev/null || [[ "${BENCH_SKIP_BUILD:-0}" == 1 ]] || die "cargo is not installed"
  [[ ${#missing[@]} -eq 0 ]] && return
  [[ "${BENCH_SKIP_INSTALL:-0}" == 1 ]] && die "missing: ${missing[*]} (BENCH_SKIP_INSTALL=1)"
  command -v apt-get >/dev/null || die "missing: ${missing[*]}; install them (no apt-get here)"
  local sudo=()
  if [[ "$(id -u)" -ne 0 ]]; then
    command -v sudo >/dev/null || die "missing: ${missing[*]}; install them or run as root"
    sudo=(sudo)
  fi
  log "installing ${missing[*]} from Debian packages"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

# --- results ------------------------------------------------------------------

# result FILE KEY: a field of the RESULT line that bench/send.lua prints.
result() {
  awk -v k="$2" '/^RESULT /{ for (i = 2; i <= NF; i++) if (index($i, k "=") == 1) print substr($i, length(k) + 2) }' "$1"
}

median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# CPU seconds used so far by a process and its children (nginx's workers).
cpu_ticks() {
  local pid total=0 t
  for pid in "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); do
    # Fields 14 and 15 of /proc/PID/stat, after the parenthesised command name.
    t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null || echo 0)
    total=$((total + t))
  done
  echo "$total"
}

# --- setup --------------------------------------------------------------------

# The targets wrk drives, in the order of the first round. consentry is one
# target named "consentry", or in ledger mode one "consentry-SIZE" per ledger
# size, each a process of its own with its own database, ports and token.
targets=()
declare -A port_of=() admin_of=() size_of=() token_of=() expect_of=()
if ((${#ledger_sizes[@]} > 0)); then
  k=0
  for size in "${ledger_sizes[@]}"; do
    name="consentry-$size"
    [[ -z "${port_of[$name]:-}" ]] || die "BENCH_LEDGER_SIZES names $size twice"
    targets+=("$name")
    port_of[$name]=$((cs_port + 10 * k))
    admin_of[$name]=$((admin_port + 10 * k))
    size_of[$name]="$size"
    expect_of[$name]=201
    k=$((k + 1))
  done
else
  targets+=(consentry)
  port_of[consentry]="$cs_port"
  admin_of[consentry]="$admin_port"
  expect_of[consentry]=201
fi
consentry_targets=("${targets[@]}")
if [[ "$with_nginx" == 1 ]]; then
  targets+=(nginx)
  port_of[nginx]="$nginx_port"
  expect_of[nginx]=200
fi

ensure_tools
nginx_bin="$(find_nginx)"

ports=("$gw_port")
for name in "${targets[@]}"; do ports+=("${port_of[$name]}"); done
for name in "${consentry_targets[@]}"; do ports+=("${admin_of[$name]}"); done
if [[ -n "$(printf '%s\n' "${ports[@]}" | sort | uniq -d)" ]]; then
  die "ports overlap (${ports[*]}); set the BENCH_*PORT variables"
fi
for port in "${ports[@]}"; do
  if port_busy "$port"; then
    die "port $port is already in use; free it or set the BENCH_*PORT variables"
  fi
done

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  log "building release (consentry, fake_gateway)"
  (cd "$repo_root" && cargo build --release --bin consentry --example fake_gateway)
fi
consentry_bin="$target_dir/release/consentry"
gateway_bin="$target_dir/release/examples/fake_gateway"
[[ -x "$consentry_bin" ]] || die "$consentry_bin not found"
[[ -x "$gateway_bin" ]] || die "$gateway_bin not found"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/consentry-bench.XXXXXX")"
log "temp dir $tmp"

# The credential both proxies present to the gateway, fresh for each run.
gw_token="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
export BENCH_GW_TOKEN="$gw_token"

log "starting fake gateway on 127.0.0.1:$gw_port"
start gateway "$gateway_bin" --listen "127.0.0.1:$gw_port"
for _ in $(seq 100); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{}' "http://127.0.0.1:$gw_port/messages" || true)
  [[ "$code" == 200 ]] && break
  alive_or_die gateway "${pid_of[gateway]}"
  sleep 0.1
done
[[ "$code" == 200 ]] || die "fake gateway did not answer 200 (got $code)"

# Long enough for every warm-up and measured run, with an hour to spare.
ttl_h=$(((warmup + duration) * ${#targets[@]} * rounds / 3600 + 1))
if ((${#ledger_sizes[@]} > 0)); then
  token_scope="messages:send consents:write"
else
  token_scope="messages:send"
fi

# start_consentry NAME: writes $tmp/NAME.toml (database and keys in $tmp/NAME),
# starts consentry, waits for /readyz and mints the token wrk will send.
start_consentry() {
  local name="$1" data_dir="$tmp/$1" ready=0 token
  log "starting $name on 127.0.0.1:${port_of[$name]}"
  cat >"$tmp/$name.toml" <<EOF
data_dir = "$data_dir"

[server]
listen = "127.0.0.1:${port_of[$name]}"
admin_listen = "127.0.0.1:${admin_of[$name]}"

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
connect_timeout_ms = 2000
request_timeout_ms = 10000
EOF
  start "$name" "$consentry_bin" serve --config "$tmp/$name.toml"
  for _ in $(seq 600); do
    if [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${admin_of[$name]}/readyz" || true)" == 200 ]]; then
      ready=1
      break
    fi
    alive_or_die "$name" "${pid_of[$name]}"
    sleep 0.1
  done
  [[ "$ready" == 1 ]] || die "$name was not ready within 60 s (see $tmp/$name.log)"

  token="$("$consentry_bin" token --data-dir "$data_dir" --tenant bench --sub bench \
    --scope "$token_scope" --ttl "${ttl_h}h" 2>"$tmp/token.err")" ||
    die "consentry token failed: $(cat "$tmp/token.err")"
  token="$(printf '%s' "$token" | tr -d '[:space:]')"
  [[ "$token" =~ ^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$ ]] ||
    die "consentry token did not print a JWT: $token"
  token_of[$name]="$token"
}

# json_number FILE KEY: the value of a top-level number field of a compact JSON answer.
json_number() {
  sed -n "s/.*\"$2\":\([0-9][0-9]*\).*/\1/p" "$1" | head -n 1
}

# seed_ledger NAME: imports size_of[NAME] express opt-ins, numbers 0 to SIZE-1 of
# bench_number, through POST /v1/consents/import. awk writes the CSV as curl
# uploads it (chunked, no file), and the answer must count every line recorded.
declare -A import_s=() import_rate=() db_mb=() sequenced_s=()
seed_ledger() {
  local name="$1" n="${size_of[$1]}" code t0 t1 answer recorded failed lines
  log "$name: importing $n opt-ins through POST /v1/consents/import"
  t0="$(date +%s.%N)"
  code=$(
    awk -v n="$n" 'BEGIN {
      print "number,action,level,method,occurred_at"
      for (i = 0; i < n; i++)
        printf "+1415%03d%04d,opt_in,express,import,2025-01-01T00:00:00Z\n", 200 + int(i / 10000), i % 10000
    }' | curl -sk -X POST -T - -H 'Expect:' -H 'Content-Type: text/csv' \
      -H "Authorization: Bearer ${token_of[$name]}" -o "$tmp/$name.import.json" -w '%{http_code}' \
      "https://127.0.0.1:${port_of[$name]}/v1/consents/import"
  ) || true
  t1="$(date +%s.%N)"
  answer="$(head -c 1000 "$tmp/$name.import.json" 2>/dev/null || true)"
  [[ "$code" == 200 ]] || die "$name: the import answered ${code:-nothing}: $answer"
  lines="$(json_number "$tmp/$name.import.json" lines)"
  recorded="$(json_number "$tmp/$name.import.json" recorded)"
  failed="$(json_number "$tmp/$name.import.json" failed)"
  if [[ "$lines" != "$n" || "$recorded" != "$n" || "$failed" != 0 ]]; then
    die "$name: the import of $n opt-ins recorded ${recorded:-?} of ${lines:-?} lines, ${failed:-?} failed: $answer"
  fi
  import_s[$name]="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')"
  import_rate[$name]="$(awk -v a="$t0" -v b="$t1" -v n="$n" 'BEGIN { printf "%.0f", n / (b - a) }')"
  db_mb[$name]="$(du -cb "$tmp/$name"/consentry.db* | awk 'END { printf "%.0f", $1 / 1048576 }')"
  log "$name: $recorded recorded in ${import_s[$name]} s (${import_rate[$name]} lines/s)"
  wait_sequenced "$name"
}

# wait_sequenced NAME: waits until the log's sequencer has given every entry of the import its
# leaf index. It runs in the background after the import has answered; measuring sends while it
# catches up with a million entries would measure the import's aftermath, not the ledger's size.
wait_sequenced() {
  local name="$1" t0 t1 pending
  t0="$(date +%s.%N)"
  for _ in $(seq 3000); do
    pending="$(python3 -c 'import sqlite3, sys
db = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True, timeout=5)
print(db.execute("SELECT COUNT(*) FROM log_leaves WHERE leaf_index IS NULL").fetchone()[0])' \
      "$tmp/$name/consentry.db")" || die "$name: cannot read the log's pending entries"
    [[ "$pending" == 0 ]] && break
    alive_or_die "$name" "${pid_of[$name]}"
    sleep 0.2
  done
  [[ "$pending" == 0 ]] || die "$name: $pending log entries still pending after 10 minutes"
  t1="$(date +%s.%N)"
  sequenced_s[$name]="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')"
  log "$name: the log sequenced the import ${sequenced_s[$name]} s after it answered"
}

for name in "${consentry_targets[@]}"; do
  start_consentry "$name"
  [[ -z "${size_of[$name]:-}" ]] || seed_ledger "$name"
done

first="${consentry_targets[0]}"
cert="$tmp/$first/tls/cert.pem"
key="$tmp/$first/tls/key.pem"
[[ -f "$cert" && -f "$key" ]] || die "consentry did not write $cert and $key"

if [[ "$with_nginx" == 1 ]]; then
  log "starting nginx on 127.0.0.1:$nginx_port (same certificate)"
  ngx="$tmp/nginx"
  mkdir -p "$ngx"
  if [[ "$(id -u)" -eq 0 ]]; then
    # Without it, a root master would hand the workers to "nobody".
    user_line="user $(id -un) $(id -gn);"
  else
    user_line="# not root: nginx runs as $(id -un)"
  fi
  sed -e "s|@USER_LINE@|$user_line|" \
    -e "s|@WORKERS@|$nginx_workers|" \
    -e "s|@DIR@|$ngx|g" \
    -e "s|@GATEWAY@|127.0.0.1:$gw_port|" \
    -e "s|@UPSTREAM_KEEPALIVE@|$((connections * 2))|" \
    -e "s|@LISTEN@|127.0.0.1:$nginx_port|" \
    -e "s|@CERT@|$cert|" \
    -e "s|@KEY@|$key|" \
    -e "s|@GW_TOKEN@|$gw_token|" \
    "$bench_dir/nginx.conf.template" >"$ngx/nginx.conf"
  "$nginx_bin" -t -q -p "$ngx/" -e "$ngx/error.log" -c "$ngx/nginx.conf" ||
    die "nginx rejected $ngx/nginx.conf"
  start nginx "$nginx_bin" -p "$ngx/" -e "$ngx/error.log" -c "$ngx/nginx.conf"
  # nginx ignores the client's token; it gets consentry's, as wrk sends it.
  token_of[nginx]="${token_of[$first]}"
fi

# --- smoke test: one request through each, with the TLS parameters -----------

# request_body TO: the JSON of a send to TO.
request_body() {
  printf '{"to":"%s","from":"+12025550100","body":"bench message","purpose":"%s"}' "$1" "$purpose"
}
if ((${#ledger_sizes[@]} > 0)); then
  # send.lua replaces "to" with a random seeded number for each request.
  body="$(request_body "$(bench_number 0)")"
fi

# send NAME BODY [FILE]: one request like wrk's; prints the status code. The
# answer goes to $tmp/FILE.smoke (FILE defaults to NAME), curl's trace to .curl.
send() {
  local file="${3:-$1}"
  curl -sk -v -o "$tmp/$file.smoke" -w '%{http_code}' -X POST \
    -H "Authorization: Bearer ${token_of[$1]}" -H 'Content-Type: application/json' \
    -H 'Accept: application/json' --data "$2" \
    "https://127.0.0.1:${port_of[$1]}/v1/messages" 2>"$tmp/$file.curl" || true
}
tls_of() {
  sed -n 's/.*SSL connection using \(.*\)$/\1/p' "$tmp/$1.curl" | head -n 1
}

if [[ "$with_nginx" == 1 ]]; then
  for _ in $(seq 100); do
    code=$(send nginx "$body")
    [[ "$code" == 200 ]] && break
    alive_or_die nginx "${pid_of[nginx]}"
    sleep 0.1
  done
  [[ "$code" == 200 ]] || die "nginx answered $code: $(cat "$tmp/nginx.smoke" 2>/dev/null)"
fi

for name in "${consentry_targets[@]}"; do
  code=$(send "$name" "$body")
  if [[ "$code" != 201 ]]; then
    msg="$name answered $code to the smoke request: $(head -c 500 "$tmp/$name.smoke" 2>/dev/null)"
    [[ "${BENCH_ALLOW_ERRORS:-0}" == 1 ]] || die "$msg"
    log "warning: $msg"
  fi
  [[ -n "${size_of[$name]:-}" ]] || continue
  # The last seeded number is allowed too, and the first one after them is
  # denied for want of consent: the ledger is read, and the import is complete.
  n="${size_of[$name]}"
  code=$(send "$name" "$(request_body "$(bench_number $((n - 1)))")" "$name-last")
  [[ "$code" == 201 ]] ||
    die "$name answered $code to a send to the last seeded number: $(head -c 500 "$tmp/$name-last.smoke")"
  code=$(send "$name" "$(request_body "$(bench_number "$n")")" "$name-unseeded")
  if [[ "$code" != 403 ]] || ! grep -q '"no_consent"' "$tmp/$name-unseeded.smoke"; then
    die "$name answered $code, not 403 no_consent, to a send to a number not in its ledger:" \
      "$(head -c 500 "$tmp/$name-unseeded.smoke")"
  fi
done

# --- load -----------------------------------------------------------------------

# load NAME SECONDS OUTFILE SEED: one wrk run. It runs in the background so
# that a signal to this script ends it at once. In ledger mode each request
# goes to a random seeded number; a given SEED draws the same sequence of
# positions in every target's ledger (nginx: the first ledger's numbers).
load() {
  local rc=0 recipients="${size_of[$1]:-${ledger_sizes[0]:-}}"
  if [[ -z "$recipients" && "$random_recipients" != 0 ]]; then recipients="$random_recipients"; fi
  BENCH_TOKEN="${token_of[$1]}" BENCH_EXPECT="${expect_of[$1]}" BENCH_BODY="$body" \
    BENCH_RECIPIENTS="$recipients" BENCH_SEED="$4" \
    wrk -t "$threads" -c "$connections" -d "${2}s" --timeout "${timeout}s" \
    -s "$bench_dir/send.lua" "https://127.0.0.1:${port_of[$1]}/v1/messages" >"$3" 2>&1 &
  wrk_pid=$!
  wait "$wrk_pid" || rc=$?
  wrk_pid=""
  [[ "$rc" -eq 0 ]] || { cat "$3" >&2; die "wrk failed against $1"; }
  grep -q '^RESULT ' "$3" || { cat "$3" >&2; die "wrk printed no RESULT line for $1"; }
}

clk_tck="$(getconf CLK_TCK)"
declare -A rps=() p50=() p99=() reqs=() errs=() cpu=() statuses=()
for ((r = 1; r <= rounds; r++)); do
  # Odd rounds in the listed order, even rounds in reverse.
  order=()
  for name in "${targets[@]}"; do
    if ((r % 2)); then order+=("$name"); else order=("$name" "${order[@]}"); fi
  done
  # A new draw for each run, so that a warm-up does not pre-read the measured
  # run's recipients; the same draws for every target.
  for name in "${order[@]}"; do
    if ((warmup > 0)); then
      log "round $r/$rounds: $name warm-up ${warmup}s"
      load "$name" "$warmup" "$tmp/wrk-$name-warmup-$r.txt" $((seed * 100 + 2 * r - 1))
    fi
    log "round $r/$rounds: $name ${duration}s, $threads threads, $connections connections"
    before="$(cpu_ticks "${pid_of[$name]}")"
    load "$name" "$duration" "$tmp/wrk-$name-$r.txt" $((seed * 100 + 2 * r))
    after="$(cpu_ticks "${pid_of[$name]}")"
    f="$tmp/wrk-$name-$r.txt"
    n="$(result "$f" requests)"
    e=$(($(result "$f" unexpected) + $(result "$f" connect_err) + $(result "$f" read_err) \
      + $(result "$f" write_err) + $(result "$f" timeout_err)))
    rps[$name]+="$(result "$f" rps) "
    p50[$name]+="$(result "$f" p50_us) "
    p99[$name]+="$(result "$f" p99_us) "
    reqs[$name]=$((${reqs[$name]:-0} + n))
    errs[$name]=$((${errs[$name]:-0} + e))
    # CPU time the proxy spent per request, in microseconds.
    cpu[$name]+="$(awk -v t=$((after - before)) -v hz="$clk_tck" -v n="$n" \
      'BEGIN { printf "%.0f", n ? t / hz * 1e6 / n : 0 }') "
    statuses[$name]+="r$r:$(result "$f" statuses) "
    grep '^WARNING' "$f" >&2 || true
  done
done

# How much of each ledger's database the OS still holds in its page cache: a
# send whose ledger pages were evicted reads them from the disk.
declare -A end_mb=() resident_mb=()
for name in "${consentry_targets[@]}"; do
  [[ -n "${size_of[$name]:-}" ]] || continue
  end_mb[$name]="$(du -cb "$tmp/$name"/consentry.db* | awk 'END { printf "%.0f", $1 / 1048576 }')"
  resident_mb[$name]="$(fincore -b -n -o RES "$tmp/$name"/consentry.db* 2>/dev/null |
    awk '{ t += $1 } END { if (NR) printf "%.0f", t / 1048576 }' || true)"
done

# How consentry grouped its writes: it logs the distribution of its write batches when it
# stops (SIGTERM: a graceful stop).
declare -A batches_of=()
for name in "${consentry_targets[@]}"; do
  pid="${pid_of[$name]}"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  batches_of[$name]="$(sed -e 's/\x1b\[[0-9;]*m//g' "$tmp/$name.log" |
    sed -n 's/.*group commit: the write batches of this run.*summary=\([^ ]*\( [^ ]*\)\{2\}\).*/\1/p' |
    tail -n 1)"
done

# --- summary ----------------------------------------------------------------------

declare -A med_rps=() med_p50=() med_p99=() med_cpu=()
total_errs=0
# shellcheck disable=SC2086 # word splitting of the per-round lists is intended
for name in "${targets[@]}"; do
  med_rps[$name]="$(median ${rps[$name]})"
  med_p50[$name]="$(median ${p50[$name]})"
  med_p99[$name]="$(median ${p99[$name]})"
  med_cpu[$name]="$(median ${cpu[$name]})"
  total_errs=$((total_errs + errs[$name]))
done

cpu_model="$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
[[ -n "$cpu_model" ]] || cpu_model="$(lscpu 2>/dev/null | awk -F': *' '/^Model name/ { print $2; exit }')"
mem="$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
commit="$(git -C "$repo_root" rev-parse --short=12 HEAD 2>/dev/null || echo "no commit")"
if [[ -n "$(git -C "$repo_root" status --porcelain 2>/dev/null)" ]]; then
  commit+=" (uncommitted changes)"
fi
wrk_version="$(wrk -v 2>&1 | head -n 1 | awk '{ print $2 }' || true)"
consentry_version="$("$consentry_bin" --version 2>/dev/null | head -n 1 || echo consentry)"
versions="$consentry_version"
tls="$first: $(tls_of "$first")"
if [[ "$with_nginx" == 1 ]]; then
  nginx_version="$("$nginx_bin" -v 2>&1 | sed 's/^nginx version: nginx\///')"
  versions+="; nginx $nginx_version (workers: $nginx_workers)"
  tls+="; nginx: $(tls_of nginx)"
fi

ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'; }
# ratios A B: A divided by B for each figure of the table.
ratios() {
  echo "$1/$2: throughput $(ratio "${med_rps[$1]}" "${med_rps[$2]}"), \
p50 latency $(ratio "${med_p50[$1]}" "${med_p50[$2]}"), \
p99 latency $(ratio "${med_p99[$1]}" "${med_p99[$2]}"), \
CPU per request $(ratio "${med_cpu[$1]}" "${med_cpu[$2]}")"
}
width=9
for name in "${targets[@]}"; do ((${#name} <= width)) || width=${#name}; done
dashes="$(printf '%*s' "$width" '' | tr ' ' -)"
row() {
  printf "| %-${width}s | %12.1f | %8s | %8s | %12s | %10s | %6s |\n" "$1" "${med_rps[$1]}" \
    "$(ms "${med_p50[$1]}")" "$(ms "${med_p99[$1]}")" "${med_cpu[$1]}" "${reqs[$1]}" "${errs[$1]}"
}
table() {
  printf "| %-${width}s | requests/s   | p50 ms   | p99 ms   | CPU us/req   | requests   | errors |\n" target
  printf "|-%s-|--------------|----------|----------|--------------|------------|--------|\n" "$dashes"
  for name in "${targets[@]}"; do row "$name"; done
}

if ((rounds > 1)); then
  how="median of $rounds rounds (order alternating)"
else
  how="one round, in the order of the table"
fi
load_line="wrk -t $threads -c $connections, ${duration}s measured after ${warmup}s warm-up, $how"
statuses_line=""
for name in "${targets[@]}"; do statuses_line+="${statuses_line:+; }$name ${statuses[$name]% }"; done
machine="$(nproc) CPUs, ${cpu_model:-unknown CPU}, $mem, $(uname -srm)"

if ((${#ledger_sizes[@]} > 0)); then
  smallest="${consentry_targets[0]}"
  largest="${consentry_targets[-1]}"
  ledger_lines=""
  for name in "${consentry_targets[@]}"; do
    ledger_lines+="- ledger:    $name: ${size_of[$name]} opt-ins imported in ${import_s[$name]} s"
    ledger_lines+=" (${import_rate[$name]} lines/s), sequenced in the log ${sequenced_s[$name]} s later;"
    ledger_lines+=" database ${db_mb[$name]} MiB after the import,"
    ledger_lines+=" ${end_mb[$name]} MiB after the runs, ${resident_mb[$name]:-?} MiB of that in the page cache"$'\n'
  done
  compare=""
  for name in "${consentry_targets[@]:1}"; do compare+="$(ratios "$name" "$smallest")"$'\n'; done
  if [[ "$with_nginx" == 1 ]]; then
    for name in "${consentry_targets[@]}"; do
      compare+="$name/nginx: throughput $(ratio "${med_rps[$name]}" "${med_rps[nginx]}")"$'\n'
    done
  fi
  if ((${#consentry_targets[@]} > 1)); then
    r="$(ratio "${med_rps[$largest]}" "${med_rps[$smallest]}")"
    verdict="$(awk -v r="$r" 'BEGIN { print (r + 0 >= 0.9) ? "met" : "NOT met" }')"
    compare+=$'\n'"throughput with ${size_of[$largest]} recipients / with ${size_of[$smallest]}: $r"
    compare+=" (bar: at least 0.9, $verdict)"$'\n'
    # The same ratio within each round, where both ran back to back: less
    # exposed to the machine's load drifting over the run.
    read -r -a big <<<"${rps[$largest]}"
    read -r -a small <<<"${rps[$smallest]}"
    per_round=()
    for ((i = 0; i < rounds; i++)); do per_round+=("$(ratio "${big[i]}" "${small[i]}")"); done
    compare+="the same ratio in each round: ${per_round[*]}"
    ((rounds == 1)) || compare+=" (median $(median "${per_round[@]}"))"
    compare+=$'\n'
  fi
  [[ -z "$compare" ]] || compare="${compare%$'\n'}"$'\n\n'
  summary="$(
    cat <<EOF
# consentry sends by consent ledger size, bench/run.sh

- date:      $(date -u +%Y-%m-%dT%H:%M:%SZ)
- commit:    $commit
- machine:   $machine
- versions:  $versions; wrk $wrk_version
- load:      $load_line
- request:   POST /v1/messages, purpose $purpose, "to" drawn uniformly at random (seed $seed) from the
             target's seeded numbers, bearer JWT (bench/send.lua)
${ledger_lines%$'\n'}
- TLS:       $tls
- all on one machine: wrk, the proxies and the fake gateway share the CPUs

$(table)

${compare}statuses: $statuses_line
EOF
  )"
else
  if [[ "$random_recipients" != 0 ]]; then
    recipient_line="drawn uniformly at random (seed $seed) from $random_recipients numbers"
  else
    recipient_line="one number for every request"
  fi
  nginx_ratios=""
  [[ "$with_nginx" == 0 ]] || nginx_ratios="$(ratios consentry nginx)"$'\n\n'
  summary="$(
    cat <<EOF
# consentry vs nginx, bench/run.sh

- date:      $(date -u +%Y-%m-%dT%H:%M:%SZ)
- commit:    $commit
- machine:   $machine
- versions:  $versions; wrk $wrk_version
- load:      $load_line
- request:   POST /v1/messages, $(printf '%s' "$body" | wc -c) byte JSON body, purpose $purpose, bearer JWT
             (bench/send.lua); "to": $recipient_line
- writes:    consentry's write batches (all runs): ${batches_of[consentry]:-not reported}
- TLS:       $tls
- all on one machine: wrk, both proxies and the fake gateway share the CPUs

$(table)

${nginx_ratios}statuses: $statuses_line
EOF
  )"
fi
if ((total_errs > 0)); then
  summary+=$'\n\n'"WARNING: errors (unexpected statuses, socket errors or timeouts) were counted;"
  summary+=" the figures above do not measure successful sends."
fi

printf '\n%s\n' "$summary"
if [[ -n "$out" ]]; then
  printf '%s\n' "$summary" >"$out"
  log "summary written to $out"
fi

if ((total_errs > 0)) && [[ "${BENCH_ALLOW_ERRORS:-0}" != 1 ]]; then
  exit 1
fi
