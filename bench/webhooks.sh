#!/usr/bin/env bash
# Webhook benchmark: opt-outs recorded per second, end to end.
#
# Builds release, starts the fake gateway (examples/fake_gateway.rs), writes a
# consentry configuration with one http-json upstream "gw" (the fake gateway,
# with a webhook_secret) and one tenant whose sender is +12025550100, starts
# consentry, and posts signed STOP webhooks to POST /v1/inbound/gw with
# examples/webhook_load.rs: each from its own number, each with its own
# gateway id. Each one records an opt-out (committed before the answer) and
# sends a confirmation through the fake gateway. It then counts the opt-outs
# and the confirmations in the database and checks both equal the webhooks sent.
#
# Usage: bench/webhooks.sh [-h]; settings come from the environment (-h).

set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bench/webhooks.sh [-h|--help]

Environment (defaults in brackets):
  WEBHOOKS_COUNT        webhooks to send, each its own opt-out [20000]
  WEBHOOKS_CONCURRENCY  requests in flight, one keep-alive connection each [32]
  WEBHOOKS_BODY         the reply text; anything but a certain opt-out fails the check [STOP]
  WEBHOOKS_SKIP_BUILD=1 use the binaries already in target/release
  WEBHOOKS_KEEP_TMP=1   keep the temp dir (configuration, database, logs)
  TMPDIR                where the temp dir (and consentry's database) goes [/tmp]
Ports are picked free on 127.0.0.1. Needs python3 (free ports, reading the database).
EOF
}

case "${1:-}" in
  "") ;;
  -h | --help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac

count="${WEBHOOKS_COUNT:-20000}"
concurrency="${WEBHOOKS_CONCURRENCY:-32}"
reply="${WEBHOOKS_BODY:-STOP}"
for var in count concurrency; do
  if ! [[ "${!var}" =~ ^[0-9]+$ ]] || ((${!var} == 0)); then
    echo "webhooks.sh: $var must be a positive whole number, got '${!var}'" >&2
    exit 2
  fi
done

bench_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$bench_dir/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
[[ "$target_dir" = /* ]] || target_dir="$repo_root/$target_dir"
sender="+12025550100"

log() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'webhooks.sh: error: %s\n' "$*" >&2
  exit 1
}
command -v python3 >/dev/null || die "python3 is needed (free ports, reading the database)"

# --- processes and cleanup --------------------------------------------------

tmp=""
pids=()
load_pid=""
cleanup() {
  local status=$? pid
  trap - EXIT INT TERM
  [[ -z "$load_pid" ]] || kill -TERM "$load_pid" 2>/dev/null || true
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n "$tmp" && -d "$tmp" ]]; then
    if [[ "${WEBHOOKS_KEEP_TMP:-0}" == 1 ]]; then log "kept $tmp"; else rm -rf "$tmp"; fi
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CMD...: runs CMD in the background, output in $tmp/NAME.log.
start() {
  local name="$1"
  shift
  "$@" >"$tmp/$name.log" 2>&1 &
  pids+=("$!")
}

show_log() {
  echo "--- last lines of $1.log ---" >&2
  tail -n 40 "$tmp/$1.log" >&2 || true
}

# free_ports N: N ports free on 127.0.0.1 right now.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# http_status PORT PATH: the status code of a plain HTTP GET, or nothing.
http_status() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 0
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
    read -r -t 2 _ code _ <&3 || true
    printf '%s' "${code:-}"
  ) 2>/dev/null || true
}

# cpu_ticks PID: user + system CPU time of a process, in clock ticks.
cpu_ticks() {
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

# --- build and start ----------------------------------------------------------

if [[ "${WEBHOOKS_SKIP_BUILD:-0}" != 1 ]]; then
  log "building release (consentry, fake_gateway, webhook_load)"
  (cd "$repo_root" &&
    cargo build --release --bin consentry --example fake_gateway --example webhook_load)
fi
consentry_bin="$target_dir/release/consentry"
gateway_bin="$target_dir/release/examples/fake_gateway"
load_bin="$target_dir/release/examples/webhook_load"
for bin in "$consentry_bin" "$gateway_bin" "$load_bin"; do
  [[ -x "$bin" ]] || die "$bin is missing (build it, or unset WEBHOOKS_SKIP_BUILD)"
done

tmp="$(mktemp -d "${TMPDIR:-/tmp}/consentry-webhooks.XXXXXX")"
read -r gw_port api_port admin_port <<<"$(free_ports 3)"

# Fresh secrets for this run, given to consentry and webhook_load by reference.
WEBHOOKS_GW_CREDENTIAL="$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
WEBHOOKS_SECRET="$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
export WEBHOOKS_GW_CREDENTIAL WEBHOOKS_SECRET

cat >"$tmp/consentry.toml" <<EOF
data_dir = "data"

[server]
listen = "127.0.0.1:$api_port"
admin_listen = "127.0.0.1:$admin_port"

[[tenants]]
id = "bench"
senders = ["$sender"]
upstream = "gw"
purposes = ["marketing", "informational", "transactional"]
program_name = "Bench"

[[upstreams]]
name = "gw"
kind = "http-json"
url = "http://127.0.0.1:$gw_port/messages"
credential = { env = "WEBHOOKS_GW_CREDENTIAL" }
webhook_secret = { env = "WEBHOOKS_SECRET" }
EOF
"$consentry_bin" check --config "$tmp/consentry.toml" >"$tmp/check.log" 2>&1 || {
  show_log check
  die "consentry check refused the configuration"
}

log "fake gateway on 127.0.0.1:$gw_port"
start gateway "$gateway_bin" --listen "127.0.0.1:$gw_port"
log "consentry on 127.0.0.1:$api_port (admin $admin_port), data in $tmp/data"
start consentry "$consentry_bin" serve --config "$tmp/consentry.toml"
consentry_pid="${pids[-1]}"
for _ in $(seq 300); do
  [[ "$(http_status "$admin_port" /readyz)" == 200 ]] && break
  kill -0 "$consentry_pid" 2>/dev/null || { show_log consentry; die "consentry exited at start-up"; }
  sleep 0.1
done
[[ "$(http_status "$admin_port" /readyz)" == 200 ]] || { show_log consentry; die "consentry never became ready"; }
[[ "$(http_status "$gw_port" /)" == 405 ]] || { show_log gateway; die "the fake gateway does not answer"; }

# --- load -----------------------------------------------------------------------

log "sending $count signed '$reply' webhooks, $concurrency in flight"
before="$(cpu_ticks "$consentry_pid")"
load_rc=0
"$load_bin" --url "https://127.0.0.1:$api_port/v1/inbound/gw" --secret-env WEBHOOKS_SECRET \
  --to "$sender" --ca "$tmp/data/tls/cert.pem" --count "$count" --concurrency "$concurrency" \
  --body "$reply" >"$tmp/load.txt" 2>&1 &
load_pid=$!
wait "$load_pid" || load_rc=$?
load_pid=""
after="$(cpu_ticks "$consentry_pid")"
cat "$tmp/load.txt" >&2
result="$(grep '^RESULT ' "$tmp/load.txt" || true)"
[[ -n "$result" ]] || die "webhook_load printed no RESULT line (exit status $load_rc)"
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$result"; }
elapsed="$(field elapsed_s)"

# --- what the database holds ------------------------------------------------------

# Read-only, while consentry runs: what is there was committed.
read -r opt_outs confirmations span_us <<<"$(
  python3 - "$tmp/data/consentry.db" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
one = lambda sql: db.execute(sql).fetchone()
opt_outs, first, last = one(
    "SELECT count(*), min(recorded_at_us), max(recorded_at_us) FROM consent_events"
    " WHERE action = 'opt_out'")
sent = one("SELECT count(*) FROM message_outcomes WHERE status = 'sent'")[0]
print(opt_outs, sent, (last - first) if opt_outs else 0)
EOF
)"
db_mib="$(du -cm "$tmp/data"/consentry.db* | awk 'END { print $1 }')"

per_s() { awk -v n="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.1f", n / s; else print "n/a" }'; }
cpu_us="$(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$count" \
  'BEGIN { printf "%.0f", t / hz * 1e6 / n }')"
verdict="match"
[[ "$opt_outs" == "$count" && "$confirmations" == "$count" ]] || verdict="MISMATCH"

cpu_model="$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
commit="$(git -C "$repo_root" rev-parse --short=12 HEAD 2>/dev/null || echo "no commit")"
[[ -z "$(git -C "$repo_root" status --porcelain 2>/dev/null)" ]] || commit+=" (uncommitted changes)"
[[ "${WEBHOOKS_SKIP_BUILD:-0}" != 1 ]] || commit+=" (binaries not rebuilt: WEBHOOKS_SKIP_BUILD=1)"

cat <<EOF

# consentry reply webhooks, bench/webhooks.sh

- date:       $(date -u +%Y-%m-%dT%H:%M:%SZ)
- commit:     $commit
- machine:    $(nproc) CPUs, ${cpu_model:-unknown CPU}, $(uname -srm)
- load:       $count signed http-json webhooks "$reply", each its own id and number,
              $concurrency in flight over keep-alive HTTP/1.1 TLS (examples/webhook_load.rs)
- webhooks:   $(field rate)/s, p50 $(field p50_ms) ms, p99 $(field p99_ms) ms,
              $(field errors) errors, ${elapsed} s
- opt-outs:   $opt_outs recorded, $(per_s "$opt_outs" "$elapsed")/s end to end
              ($(per_s "$opt_outs" "$(awk -v us="$span_us" 'BEGIN { print us / 1e6 }')")/s first to last commit)
- confirmations sent through the gateway: $confirmations
- count check: sent $count, opt-outs $opt_outs, confirmations $confirmations: $verdict
- consentry CPU: $cpu_us us per webhook; database ${db_mib} MiB after the run
- all on one machine: the load generator, consentry and the fake gateway share the CPUs
EOF

((load_rc == 0)) || die "webhook_load reported errors (exit status $load_rc)"
[[ "$verdict" == match ]] || die "the database does not hold one opt-out and one confirmation per webhook"
