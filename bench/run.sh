#!/usr/bin/env bash
# Load benchmark: consentry against nginx as a plain TLS reverse proxy.
#
# Builds release, starts the fake gateway (examples/fake_gateway.rs), starts
# consentry and nginx in front of it with the same certificate, then drives
# both with wrk (same threads, connections, duration and Lua script) and
# prints requests/s, p50/p99 latency and the consentry/nginx ratios.
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
  BENCH_THREADS        wrk threads [2]
  BENCH_CONNECTIONS    open connections, shared by the threads [32]
  BENCH_DURATION       measured seconds per target and round [20]
  BENCH_WARMUP         unmeasured seconds before each measured run [3]
  BENCH_ROUNDS         rounds; the order of the targets alternates, medians are reported [1]
  BENCH_TIMEOUT        wrk request timeout in seconds [5]
  BENCH_NGINX_WORKERS  nginx worker_processes [auto, one per CPU]
  BENCH_GW_PORT        fake gateway port [18081]
  BENCH_PORT           consentry TLS port [18443]
  BENCH_ADMIN_PORT     consentry admin port [19090]
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

for var in threads connections duration warmup rounds timeout gw_port cs_port admin_port nginx_port; do
  if ! [[ "${!var}" =~ ^[0-9]+$ ]] || [[ "${!var}" -eq 0 && "$var" != warmup ]]; then
    echo "run.sh: $var must be a positive whole number, got '${!var}'" >&2
    exit 2
  fi
done

bench_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$bench_dir/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
[[ "$target_dir" = /* ]] || target_dir="$repo_root/$target_dir"

# The request every target gets; the fake gateway accepts anything.
body='{"to":"+14155550123","from":"+12025550100","body":"bench message","purpose":"transactional"}'

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
  [[ -n "$(find_nginx)" ]] || missing+=(nginx)
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

ensure_tools
nginx_bin="$(find_nginx)"

for port in "$gw_port" "$cs_port" "$admin_port" "$nginx_port"; do
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

log "starting consentry on 127.0.0.1:$cs_port"
data_dir="$tmp/data"
cat >"$tmp/consentry.toml" <<EOF
data_dir = "$data_dir"

[server]
listen = "127.0.0.1:$cs_port"
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
kind = "http-json"
url = "http://127.0.0.1:$gw_port/messages"
credential = { env = "BENCH_GW_TOKEN" }
connect_timeout_ms = 2000
request_timeout_ms = 10000
EOF
start consentry "$consentry_bin" serve --config "$tmp/consentry.toml"
ready=0
for _ in $(seq 600); do
  if [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin_port/readyz" || true)" == 200 ]]; then
    ready=1
    break
  fi
  alive_or_die consentry "${pid_of[consentry]}"
  sleep 0.1
done
[[ "$ready" == 1 ]] || die "consentry was not ready within 60 s (see $tmp/consentry.log)"

# Long enough for every warm-up and measured run, with an hour to spare.
ttl_h=$(((warmup + duration) * 2 * rounds / 3600 + 1))
token="$("$consentry_bin" token --data-dir "$data_dir" --tenant bench --sub bench \
  --scope "messages:send" --ttl "${ttl_h}h" 2>"$tmp/token.err")" ||
  die "consentry token failed: $(cat "$tmp/token.err")"
token="$(printf '%s' "$token" | tr -d '[:space:]')"
[[ "$token" =~ ^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$ ]] ||
  die "consentry token did not print a JWT: $token"

cert="$data_dir/tls/cert.pem"
key="$data_dir/tls/key.pem"
[[ -f "$cert" && -f "$key" ]] || die "consentry did not write $cert and $key"

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

# --- smoke test: one request through each, with the TLS parameters -----------

# send PORT NAME: one request like wrk's; prints the status code.
send() {
  curl -sk -v -o "$tmp/$2.smoke" -w '%{http_code}' -X POST \
    -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -H 'Accept: application/json' --data "$body" \
    "https://127.0.0.1:$1/v1/messages" 2>"$tmp/$2.curl" || true
}
tls_of() {
  sed -n 's/.*SSL connection using \(.*\)$/\1/p' "$tmp/$1.curl" | head -n 1
}

for _ in $(seq 100); do
  code=$(send "$nginx_port" nginx)
  [[ "$code" == 200 ]] && break
  alive_or_die nginx "${pid_of[nginx]}"
  sleep 0.1
done
[[ "$code" == 200 ]] || die "nginx answered $code: $(cat "$tmp/nginx.smoke" 2>/dev/null)"

code=$(send "$cs_port" consentry)
if [[ "$code" != 201 ]]; then
  msg="consentry answered $code to the smoke request: $(head -c 500 "$tmp/consentry.smoke" 2>/dev/null)"
  [[ "${BENCH_ALLOW_ERRORS:-0}" == 1 ]] || die "$msg"
  log "warning: $msg"
fi

# --- load -----------------------------------------------------------------------

# load NAME PORT EXPECT SECONDS OUTFILE: one wrk run. It runs in the
# background so that a signal to this script ends it at once.
load() {
  local rc=0
  BENCH_TOKEN="$token" BENCH_EXPECT="$3" BENCH_BODY="$body" \
    wrk -t "$threads" -c "$connections" -d "${4}s" --timeout "${timeout}s" \
    -s "$bench_dir/send.lua" "https://127.0.0.1:$2/v1/messages" >"$5" 2>&1 &
  wrk_pid=$!
  wait "$wrk_pid" || rc=$?
  wrk_pid=""
  [[ "$rc" -eq 0 ]] || { cat "$5" >&2; die "wrk failed against $1"; }
  grep -q '^RESULT ' "$5" || { cat "$5" >&2; die "wrk printed no RESULT line for $1"; }
}

port_of() { if [[ "$1" == consentry ]]; then echo "$cs_port"; else echo "$nginx_port"; fi; }
expect_of() { if [[ "$1" == consentry ]]; then echo 201; else echo 200; fi; }

clk_tck="$(getconf CLK_TCK)"
declare -A rps=() p50=() p99=() reqs=() errs=() cpu=() statuses=()
for ((r = 1; r <= rounds; r++)); do
  if ((r % 2)); then order=(consentry nginx); else order=(nginx consentry); fi
  for name in "${order[@]}"; do
    port="$(port_of "$name")"
    expect="$(expect_of "$name")"
    if ((warmup > 0)); then
      log "round $r/$rounds: $name warm-up ${warmup}s"
      load "$name" "$port" "$expect" "$warmup" "$tmp/wrk-$name-warmup-$r.txt"
    fi
    log "round $r/$rounds: $name ${duration}s, $threads threads, $connections connections"
    before="$(cpu_ticks "${pid_of[$name]}")"
    load "$name" "$port" "$expect" "$duration" "$tmp/wrk-$name-$r.txt"
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

# --- summary ----------------------------------------------------------------------

declare -A med_rps=() med_p50=() med_p99=() med_cpu=()
# shellcheck disable=SC2086 # word splitting of the per-round lists is intended
for name in consentry nginx; do
  med_rps[$name]="$(median ${rps[$name]})"
  med_p50[$name]="$(median ${p50[$name]})"
  med_p99[$name]="$(median ${p99[$name]})"
  med_cpu[$name]="$(median ${cpu[$name]})"
done

cpu_model="$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
[[ -n "$cpu_model" ]] || cpu_model="$(lscpu 2>/dev/null | awk -F': *' '/^Model name/ { print $2; exit }')"
mem="$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
commit="$(git -C "$repo_root" rev-parse --short=12 HEAD 2>/dev/null || echo "no commit")"
if [[ -n "$(git -C "$repo_root" status --porcelain 2>/dev/null)" ]]; then
  commit+=" (uncommitted changes)"
fi
nginx_version="$("$nginx_bin" -v 2>&1 | sed 's/^nginx version: nginx\///')"
wrk_version="$(wrk -v 2>&1 | head -n 1 | awk '{ print $2 }' || true)"
consentry_version="$("$consentry_bin" --version 2>/dev/null | head -n 1 || echo consentry)"

ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'; }
row() {
  printf '| %-9s | %12.1f | %8s | %8s | %12s | %10s | %6s |\n' "$1" "${med_rps[$1]}" \
    "$(ms "${med_p50[$1]}")" "$(ms "${med_p99[$1]}")" "${med_cpu[$1]}" "${reqs[$1]}" "${errs[$1]}"
}

if ((rounds > 1)); then
  how="median of $rounds rounds (order alternating)"
else
  how="one round, consentry first"
fi
summary="$(
  cat <<EOF
# consentry vs nginx, bench/run.sh

- date:      $(date -u +%Y-%m-%dT%H:%M:%SZ)
- commit:    $commit
- machine:   $(nproc) CPUs, ${cpu_model:-unknown CPU}, $mem, $(uname -srm)
- versions:  $consentry_version; nginx $nginx_version (workers: $nginx_workers); wrk $wrk_version
- load:      wrk -t $threads -c $connections, ${duration}s measured after ${warmup}s warm-up, $how
- request:   POST /v1/messages, $(printf '%s' "$body" | wc -c) byte JSON body, bearer JWT (bench/send.lua)
- TLS:       consentry: $(tls_of consentry); nginx: $(tls_of nginx)
- all on one machine: wrk, both proxies and the fake gateway share the CPUs

| target    | requests/s   | p50 ms   | p99 ms   | CPU us/req   | requests   | errors |
|-----------|--------------|----------|----------|--------------|------------|--------|
$(row consentry)
$(row nginx)

consentry/nginx: throughput $(ratio "${med_rps[consentry]}" "${med_rps[nginx]}"), \
p50 latency $(ratio "${med_p50[consentry]}" "${med_p50[nginx]}"), \
p99 latency $(ratio "${med_p99[consentry]}" "${med_p99[nginx]}"), \
CPU per request $(ratio "${med_cpu[consentry]}" "${med_cpu[nginx]}")

statuses: consentry ${statuses[consentry]% }; nginx ${statuses[nginx]% }
EOF
)"
if ((errs[consentry] + errs[nginx] > 0)); then
  summary+=$'\n\n'"WARNING: errors (unexpected statuses, socket errors or timeouts) were counted;"
  summary+=" the figures above do not measure successful sends."
fi

printf '\n%s\n' "$summary"
if [[ -n "$out" ]]; then
  printf '%s\n' "$summary" >"$out"
  log "summary written to $out"
fi

if ((errs[consentry] + errs[nginx] > 0)) && [[ "${BENCH_ALLOW_ERRORS:-0}" != 1 ]]; then
  exit 1
fi
