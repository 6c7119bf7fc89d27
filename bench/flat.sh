#!/usr/bin/env bash
# Flat cost, paired: does Authorize cost the server as much CPU per call at
# N keys as at 1 000? Two servers run side by side on one backend, one with
# BENCH_SMALL (1 000) keys and one with N; rounds of `bench_setup load`
# alternate between them (small, large, small, large, ...), so whatever the
# shared machine does to one it does to the other within seconds. Each
# server's figure is its CPU time (user + system, /proc/PID/stat) over the
# whole alternating period divided by the calls it answered: the usage
# flushes, renewals and housekeeping its keys cause count wherever they
# land, in a round or between rounds. The large server's keys are all
# presented, round robin, every key seen before the period starts.
# See bench/README.md. Environment:
#   BENCH_BACKENDS   "sqlite postgres" (postgres only when a URL is set)
#   BENCH_KEYS       1000000 (the large server's keys)
#   BENCH_SMALL      1000
#   BENCH_ROUNDS     24     (per server)
#   BENCH_DURATION   5      (seconds per round)
#   BENCH_SETTLE     65     (seconds between the warm-up and the period)
#   BENCH_CONCURRENCY 32, BENCH_CONNECTIONS 4
#   BENCH_SERVER_ARGS extra `keygate serve` flags for both servers
#   KEYGATE / BENCH_SETUP  binaries (default: this tree's release builds)
#   KEYGATE_BENCH_POSTGRES_URL or KEYGATE_TEST_POSTGRES_URL
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LARGE=${BENCH_KEYS:-1000000}
SMALL=${BENCH_SMALL:-1000}
ROUNDS=${BENCH_ROUNDS:-24}
DURATION=${BENCH_DURATION:-5}
SETTLE=${BENCH_SETTLE:-65}
CONCURRENCY=${BENCH_CONCURRENCY:-32}
CONNECTIONS=${BENCH_CONNECTIONS:-4}
PG_URL=${KEYGATE_BENCH_POSTGRES_URL:-${KEYGATE_TEST_POSTGRES_URL:-}}
BACKENDS=${BENCH_BACKENDS:-$([[ -n "$PG_URL" ]] && echo "sqlite postgres" || echo sqlite)}
read -r -a EXTRA_SERVER_ARGS <<<"${BENCH_SERVER_ARGS:-}"

log() { printf '[flat %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/keygate-flat.XXXXXX")
PIDS=()
PG_DATABASES=()
cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  for db in "${PG_DATABASES[@]}"; do
    psql "$PG_URL" -qX -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -z "${KEYGATE:-}" || -z "${BENCH_SETUP:-}" ]]; then
  log "building (release)"
  (cd "$ROOT" && cargo build --release --quiet -p keygate-server --bin keygate &&
    cargo build --release --quiet -p keygate --example bench_setup)
  TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
fi
KEYGATE=${KEYGATE:-$TARGET_DIR/release/keygate}
SETUP=${BENCH_SETUP:-$TARGET_DIR/release/examples/bench_setup}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
CLK_TCK=$(getconf CLK_TCK)

# database BACKEND NAME: a fresh database URL.
database() {
  case $1 in
    sqlite) echo "sqlite://$WORK/$2.db?mode=rwc" ;;
    postgres)
      [[ -n "$PG_URL" ]] || die "postgres needs KEYGATE_BENCH_POSTGRES_URL or KEYGATE_TEST_POSTGRES_URL"
      local name="keygate_flat_$$_$2" base=${PG_URL%%\?*} query=""
      psql "$PG_URL" -qX -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$name\"" >/dev/null
      PG_DATABASES+=("$name")
      [[ "$PG_URL" == *\?* ]] && query="?${PG_URL#*\?}"
      echo "${base%/*}/$name$query" ;;
    *) die "unknown backend $1" ;;
  esac
}

# prepare NAME URL COUNT: a migrated database with COUNT seeded keys; keys in $WORK/NAME.keys.
prepare() {
  "$KEYGATE" bootstrap --owner acme --database-url "$2" >/dev/null 2>"$WORK/$1.bootstrap.log"
  "$SETUP" seed --database-url "$2" --count "$3" --out "$WORK/$1.keys" 2>&1 | tail -n 1 >&2
}

# serve NAME URL COUNT: starts a server; sets PORT_<NAME> and PID_<NAME>.
serve() {
  local port capacity=$(((${3} + 1) * 5 / 4))
  port=$(free_port)
  local args=(--listen "127.0.0.1:$port" --database-url "$2" --default-rate-limit 4000000000)
  [[ $capacity -gt 1000000 ]] && args+=(--cache-capacity "$capacity")
  "$KEYGATE" serve "${args[@]}" "${EXTRA_SERVER_ARGS[@]}" 2>>"$WORK/$1.server.log" &
  local pid=$!
  PIDS+=("$pid")
  printf -v "PORT_$1" %s "$port"
  printf -v "PID_$1" %s "$pid"
  "$SETUP" wait --endpoint "http://127.0.0.1:$port" --timeout-secs 60 || die "server $1 did not start"
}

# round NAME RPC OFFSET: one load round against server NAME, from key number
# OFFSET on; prints "calls rps p50 p99 cpu_us".
round() {
  local port_var="PORT_$1" pid_var="PID_$1" before after line
  before=$(ticks "${!pid_var}")
  line=$("$SETUP" load --endpoint "http://127.0.0.1:${!port_var}" --rpc "$2" --keys "$WORK/$1.keys" \
    --offset "$3" --duration-secs "$DURATION" --concurrency "$CONCURRENCY" --connections "$CONNECTIONS" | tail -n 1)
  after=$(ticks "${!pid_var}")
  awk -v a="$before" -v b="$after" -v hz="$CLK_TCK" -v l="$line" \
    'BEGIN { split(l, f, " "); printf "%s %s %s %s %.2f\n", f[2], f[4], f[6], f[8], (b - a) * 1e6 / hz / f[2] }'
}

SUMMARY="$WORK/summary.txt"
: >"$SUMMARY"
for backend in $BACKENDS; do
  log "== $backend: $SMALL keys beside $LARGE keys =="
  small_url=$(database "$backend" small)
  large_url=$(database "$backend" large)
  prepare small "$small_url" "$SMALL"
  prepare large "$large_url" "$LARGE"
  serve small "$small_url" "$SMALL"
  serve large "$large_url" "$LARGE"
  for name in small large; do
    port_var="PORT_$name"
    log "warm-up: every $name key once (must all be DECISION_ALLOW)"
    "$SETUP" authorize --endpoint "http://127.0.0.1:${!port_var}" --keys "$WORK/$name.keys" --concurrency 32 2>&1 | tail -n 1 >&2
  done
  log "settling ${SETTLE}s (the warm-up's own usage writes)"
  sleep "$SETTLE"
  declare -A cpu0 calls
  for name in small large; do
    pid_var="PID_$name"
    cpu0[$name]=$(ticks "${!pid_var}")
    calls[$name]=0
  done
  check_calls=0 check_cpu=0
  if [[ -n "${BENCH_PERF_LARGE:-}" ]]; then
    perf record -F 49 --call-graph dwarf,8192 -p "$PID_large" -o "$BENCH_PERF_LARGE" 2>/dev/null &
    PERF_PID=$!
  fi
  started=$(date +%s.%N)
  for ((i = 1; i <= ROUNDS; i++)); do
    for name in small large; do
      # Each round goes on where the server's last one stopped.
      read -r n rps p50 p99 cpu < <(round "$name" authorize "${calls[$name]}")
      calls[$name]=$((calls[$name] + n))
      log "round $i $name: $n calls, $rps rps, p50 ${p50} µs, p99 ${p99} µs, server CPU $cpu µs/call"
      echo "$backend $name $i $n $rps $p50 $p99 $cpu" >>"$WORK/rounds.txt"
    done
    if ((i % 4 == 0)); then
      # Health/Check on the small server now and then: the floor.
      read -r n rps p50 p99 cpu < <(round small check 0)
      log "round $i check (small server): $n calls, $rps rps, server CPU $cpu µs/call"
      check_calls=$((check_calls + n))
      check_cpu=$(awk -v s="$check_cpu" -v c="$cpu" -v n="$n" 'BEGIN { print s + c * n }')
    fi
  done
  elapsed=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
  if [[ -n "${PERF_PID:-}" ]]; then kill -INT "$PERF_PID"; wait "$PERF_PID" || true; PERF_PID=""; fi
  for name in small large; do
    pid_var="PID_$name"
    total=$(($(ticks "${!pid_var}") - cpu0[$name]))
    # The small server also answered the Check rounds: take their CPU out.
    [[ $name == small ]] && total=$(awk -v t="$total" -v c="$check_cpu" -v hz="$CLK_TCK" 'BEGIN { print t - c * hz / 1e6 }')
    per_call=$(awk -v t="$total" -v n="${calls[$name]}" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')
    printf -v "PER_$name" %s "$per_call"
  done
  check_per_call=$(awk -v s="$check_cpu" -v n="$check_calls" 'BEGIN { if (n > 0) printf "%.2f", s / n; else print "n/a" }')
  median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
  med_small=$(awk -v b="$backend" '$1 == b && $2 == "small" { print $8 }' "$WORK/rounds.txt" | median)
  med_large=$(awk -v b="$backend" '$1 == b && $2 == "large" { print $8 }' "$WORK/rounds.txt" | median)
  rps_small=$(awk -v b="$backend" '$1 == b && $2 == "small" { print $5 }' "$WORK/rounds.txt" | median)
  rps_large=$(awk -v b="$backend" '$1 == b && $2 == "large" { print $5 }' "$WORK/rounds.txt" | median)
  {
    printf '%s, %ss of alternating %s s rounds (%s per server):\n' "$backend" "$elapsed" "$DURATION" "$ROUNDS"
    printf '  server CPU µs per Authorize call over the whole period: %s keys %s, %s keys %s: %sx (target <= 1.10)\n' \
      "$SMALL" "$PER_small" "$LARGE" "$PER_large" "$(awk -v a="$PER_large" -v b="$PER_small" 'BEGIN { printf "%.3f", a / b }')"
    printf '  median round: %s keys %s µs (%s rps), %s keys %s µs (%s rps): %sx\n' \
      "$SMALL" "$med_small" "$rps_small" "$LARGE" "$med_large" "$rps_large" "$(awk -v a="$med_large" -v b="$med_small" 'BEGIN { printf "%.3f", a / b }')"
    printf '  Health/Check on the small server: %s µs per call; Authorize / Check: %sx (target <= 1.20)\n' \
      "$check_per_call" "$(awk -v a="$PER_small" -v b="$check_per_call" 'BEGIN { printf "%.3f", a / b }')"
  } | tee -a "$SUMMARY" >&2
  for pid in "${PIDS[@]}"; do kill -TERM "$pid"; done
  for pid in "${PIDS[@]}"; do wait "$pid" || die "a server exited with status $? after SIGTERM"; done
  PIDS=()
  for name in small large; do
    port_var="PORT_$name"; unset "PORT_$name" "PID_$name"
  done
done
echo
echo "===================== Keygate flat-cost benchmark ====================="
cat "$SUMMARY"
