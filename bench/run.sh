#!/usr/bin/env bash
# Keygate benchmark: Authorize vs grpc.health.v1.Health/Check under ghz, per
# backend and key count, plus memory per key and cold cache-miss latency.
# See bench/README.md. Environment:
#   BENCH_BACKENDS   "sqlite postgres" (postgres only when a URL is set)
#   BENCH_KEYS       "1000 100000" (up to 1000000 and more: "1000 100000 1000000")
#   BENCH_SEED_ABOVE 20000 (key counts above it are written straight into the
#                    database by `bench_setup seed`, not created via CreateKey)
#   BENCH_DATA_ENTRIES  entries in every ghz data file (default: the largest
#                    key count, at most 100000; smaller key sets are cycled
#                    to fill it, larger ones are randomly sampled)
#   BENCH_LARGE_CACHE_TTL 1h (--cache-ttl for key counts above 100000, whose
#                    warm-up alone outlasts the default lifetime; "" keeps it)
#   BENCH_DURATION   10s   (ghz -z, per round and per RPC)
#   BENCH_ROUNDS     2     (Check/Authorize alternations)
#   BENCH_SETTLE     65    (seconds between warming a seeded key set and the rounds)
#   BENCH_COLD_KEYS  2000  (never-seen keys for the cold-miss run; 0 skips it)
#   BENCH_CONCURRENCY 32, BENCH_CONNECTIONS 4
#   BENCH_SERVER_ARGS extra `keygate serve` flags (word-split)
#   BENCH_EXT_AUTHZ  1     (also run Envoy ext_authz Check rounds with the same
#                    keys, as CheckRequests; 0 skips them)
#   KEYGATE_BENCH_POSTGRES_URL or KEYGATE_TEST_POSTGRES_URL: a PostgreSQL
#     server URL; a fresh database is created on it per configuration.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GHZ_VERSION=v0.121.0
DURATION=${BENCH_DURATION:-10s}
KEY_COUNTS=${BENCH_KEYS:-"1000 100000"}
MAX_KEYS=$(printf '%s\n' $KEY_COUNTS | sort -n | tail -1)
# ghz parses its whole data file up front and each entry again on first use:
# 1M entries took 12 s and 2.5 GB before the first call, and a 10 s round
# would reach only the first ~200k of them. Larger key sets are sampled.
DATA_ENTRIES=${BENCH_DATA_ENTRIES:-$((MAX_KEYS < 100000 ? MAX_KEYS : 100000))}
SEED_ABOVE=${BENCH_SEED_ABOVE:-20000}
# `keygate serve --cache-capacity` default (crates/server/src/main.rs).
DEFAULT_CACHE_CAPACITY=1000000
# Above this many keys, warming every key (one cache miss each, 6 500-10 000/s
# on SQLite here) approaches the shortest cache lifetime (50% of the default
# 5m): entries would be refreshing in the background during the
# measurements, so those configurations run with a longer lifetime.
LARGE_KEYS=100000
LARGE_CACHE_TTL=${BENCH_LARGE_CACHE_TTL-1h}
ROUNDS=${BENCH_ROUNDS:-2}
# Seconds to wait after warming more than BENCH_SEED_ABOVE keys, so the
# warm-up's own usage writes (every key's first use, and one hourly-count
# row per key after --usage-count-flush-interval, 60 s) are done before the
# rounds: the rounds then measure the steady state of the keys they use.
SETTLE=${BENCH_SETTLE:-65}
COLD_KEYS=${BENCH_COLD_KEYS:-2000}
CONCURRENCY=${BENCH_CONCURRENCY:-32}
CONNECTIONS=${BENCH_CONNECTIONS:-4}
SETUP_CONCURRENCY=32
PG_URL=${KEYGATE_BENCH_POSTGRES_URL:-${KEYGATE_TEST_POSTGRES_URL:-}}
if [[ -n "${BENCH_BACKENDS:-}" ]]; then
  BACKENDS=$BENCH_BACKENDS
elif [[ -n "$PG_URL" ]]; then
  BACKENDS="sqlite postgres"
else
  BACKENDS="sqlite"
fi
read -r -a EXTRA_SERVER_ARGS <<<"${BENCH_SERVER_ARGS:-}"
EXT_AUTHZ=${BENCH_EXT_AUTHZ:-1}

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/keygate-bench.XXXXXX")
SERVER_PID=""
PG_DATABASES=()

cleanup() {
  local rc=$?
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  for db in "${PG_DATABASES[@]}"; do
    psql "$PG_URL" -qX -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 ||
      log "could not drop database $db"
  done
  if [[ $rc -ne 0 && -n "${KEEP_ON_FAILURE:-}" ]]; then
    log "kept $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- tools ---------------------------------------------------------------
command -v go >/dev/null || die "go is needed to install ghz"
command -v jq >/dev/null || die "jq is needed to read ghz's JSON output"
command -v python3 >/dev/null || die "python3 is needed to find a free port"
GHZ="$(go env GOPATH)/bin/ghz"
if [[ ! -x "$GHZ" ]]; then
  log "installing ghz $GHZ_VERSION"
  go install "github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION"
fi
log "ghz: $GHZ (pinned $GHZ_VERSION when installed here)"

PROTOSET="$WORK/envoy-ext-authz.protoset"
if [[ $EXT_AUTHZ -eq 1 ]]; then
  log "writing Envoy's ext_authz descriptors for ghz (bench/envoy-protoset)"
  (cd "$ROOT/bench/envoy-protoset" && go run . "$PROTOSET")
fi

log "building (release)"
(cd "$ROOT" && cargo build --release --quiet -p keygate-server --bin keygate)
(cd "$ROOT" && cargo build --release --quiet -p keygate --example bench_setup)
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
KEYGATE="$TARGET_DIR/release/keygate"
SETUP="$TARGET_DIR/release/examples/bench_setup"

# --- helpers -------------------------------------------------------------
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

CLK_TCK=$(getconf CLK_TCK)

cpu_ticks() { # user + system CPU time of a process, in clock ticks (/proc/PID/stat fields 14, 15)
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

# cpu_us_per_call TICKS_BEFORE TICKS_AFTER CALLS: server CPU microseconds per call.
cpu_us_per_call() {
  awk -v a="$1" -v b="$2" -v n="$3" -v hz="$CLK_TCK" 'BEGIN { if (n > 0) printf "%.1f\n", (b - a) * 1e6 / hz / n; else print "n/a" }'
}

# measured_run OUT RPC-LABEL ARGS...: ghz_run with the server's CPU time read
# around it; writes OUT.cpu (µs of server CPU per call).
measured_run() {
  local out=$1 before after
  shift
  before=$(cpu_ticks "$SERVER_PID")
  ghz_run "$out" "$@"
  after=$(cpu_ticks "$SERVER_PID")
  cpu_us_per_call "$before" "$after" "$(jq -r '.count' "$out")" >"$out.cpu"
}

# load_run OUT RPC KEYS: one round of `bench_setup load` (requests encoded
# before the clock starts, so its own cost per call is the same for every
# RPC) for $DURATION; writes OUT.line ("calls N rps R p50_us P p99_us Q")
# and OUT.cpu (server CPU µs per call). It fails on any error or deny.
load_run() {
  local out=$1 rpc=$2 keys=$3 before after
  before=$(cpu_ticks "$SERVER_PID")
  "$SETUP" load --endpoint "http://127.0.0.1:$PORT" --rpc "$rpc" --keys "$keys" \
    --duration-secs "${DURATION%s}" --concurrency "$CONCURRENCY" --connections "$CONNECTIONS" |
    tail -n 1 >"$out.line"
  after=$(cpu_ticks "$SERVER_PID")
  cpu_us_per_call "$before" "$after" "$(awk '{ print $2 }' "$out.line")" >"$out.cpu"
}

rss_bytes() { # VmRSS of a process, in bytes
  awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$1/status"
}

# new_pg_url NAME: creates database NAME on $PG_URL's server, prints its URL.
new_pg_url() {
  local name=$1 base query=""
  psql "$PG_URL" -qX -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$name\"" >/dev/null
  PG_DATABASES+=("$name")
  base=${PG_URL%%\?*}
  [[ "$PG_URL" == *\?* ]] && query="?${PG_URL#*\?}"
  printf '%s/%s%s\n' "${base%/*}" "$name" "$query"
}

# ghz_run OUT.json ARGS...: runs ghz against the current server.
ghz_run() {
  local out=$1
  shift
  "$GHZ" --insecure --format json --output "$out" "$@" "127.0.0.1:$PORT"
}

# ghz_stat FILE FIELD: rps | p50 | p99 (ns) | count
ghz_stat() {
  case $2 in
    rps) jq -r '.rps' "$1" ;;
    count) jq -r '.count' "$1" ;;
    p50 | p99)
      jq -r --arg p "${2#p}" \
        '[.latencyDistribution[] | select((.percentage | tostring) == $p) | .latency][0]' "$1" ;;
  esac
}

# ghz_check_ok FILE WHAT: every call answered with status OK.
ghz_check_ok() {
  local file=$1 what=$2 count ok
  count=$(jq -r '.count' "$file")
  ok=$(jq -r '.statusCodeDistribution.OK // 0' "$file")
  if [[ "$count" -eq 0 || "$ok" -ne "$count" ]] ||
    [[ "$(jq -r '(.errorDistribution // {}) | length' "$file")" -ne 0 ]]; then
    log "$what: $ok of $count calls OK; status codes: $(jq -c '.statusCodeDistribution' "$file"); errors: $(jq -c '.errorDistribution' "$file")"
    die "$what had failed calls"
  fi
}

ms() { awk -v ns="$1" 'BEGIN { printf "%.3f", ns / 1e6 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

# pg_usage_writes URL: rows inserted or updated so far in the tables usage
# writes to (PostgreSQL's statistics; tables that do not exist count 0).
pg_usage_writes() {
  psql "$1" -qAtX -v ON_ERROR_STOP=1 -c "SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0)
    FROM pg_stat_user_tables WHERE relname IN ('api_keys', 'credentials', 'key_last_uses', 'key_usage_hourly')"
}

# extra_flag FLAG: whether BENCH_SERVER_ARGS sets FLAG (clap refuses a flag twice).
extra_flag() {
  local arg
  for arg in "${EXTRA_SERVER_ARGS[@]}"; do
    [[ "$arg" == "$1" || "$arg" == "$1="* ]] && return 0
  done
  return 1
}

# start_server URL DIR: serves URL on $PORT in the background, waits until ready.
# CONFIG_SERVER_ARGS: flags run_config adds for its key count.
CONFIG_SERVER_ARGS=()
start_server() {
  "$KEYGATE" serve --listen "127.0.0.1:$PORT" --database-url "$1" \
    --http-listen "127.0.0.1:$HTTP_PORT" --default-rate-limit 4000000000 \
    "${CONFIG_SERVER_ARGS[@]}" "${EXTRA_SERVER_ARGS[@]}" 2>>"$2/server.log" &
  SERVER_PID=$!
  "$SETUP" wait --endpoint "http://127.0.0.1:$PORT" --timeout-secs 30 ||
    die "server did not start (log: $2/server.log)"
}

stop_server() {
  local rc=0
  kill -TERM "$SERVER_PID"
  wait "$SERVER_PID" || rc=$?
  SERVER_PID=""
  [[ $rc -eq 0 ]] || die "keygate exited with status $rc after SIGTERM (log: $1)"
  log "server stopped cleanly (exit 0)"
}

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
EXT_RESULTS="$WORK/ext-authz.tsv"
: >"$EXT_RESULTS"

# --- one configuration ---------------------------------------------------
run_config() {
  local backend=$1 n=$2 dir url mgmt total i
  dir="$WORK/$backend-$n"
  mkdir -p "$dir"
  case $backend in
    sqlite) url="sqlite://$dir/kg.db?mode=rwc" ;;
    postgres)
      [[ -n "$PG_URL" ]] || die "postgres backend needs KEYGATE_BENCH_POSTGRES_URL or KEYGATE_TEST_POSTGRES_URL"
      url=$(new_pg_url "keygate_bench_$$_$n") ;;
    *) die "unknown backend $backend" ;;
  esac
  log "== $backend, $n keys =="

  mgmt=$("$KEYGATE" bootstrap --owner acme --database-url "$url" 2>"$dir/bootstrap.log")
  [[ -n "$mgmt" ]] || die "bootstrap printed no key (log: $dir/bootstrap.log)"

  total=$((n + COLD_KEYS))
  # Server flags for this key count: a cache that holds every key (the
  # management key too, with room for the shards' uneven fill), and a longer
  # lifetime when warming every key takes longer than the default one.
  CONFIG_SERVER_ARGS=()
  local capacity=$(((total + 1) * 5 / 4)) notes=""
  if [[ $capacity -gt $DEFAULT_CACHE_CAPACITY ]] && ! extra_flag --cache-capacity; then
    CONFIG_SERVER_ARGS+=(--cache-capacity "$capacity")
  fi
  if [[ $n -gt $LARGE_KEYS && -n "$LARGE_CACHE_TTL" ]] && ! extra_flag --cache-ttl; then
    CONFIG_SERVER_ARGS+=(--cache-ttl "$LARGE_CACHE_TTL")
  fi
  [[ ${#CONFIG_SERVER_ARGS[@]} -eq 0 ]] || log "server flags for $n keys: ${CONFIG_SERVER_ARGS[*]}"

  PORT=$(free_port)
  HTTP_PORT=$(free_port)
  if [[ $n -gt $SEED_ABOVE ]]; then
    notes="seeded"
    log "seeding $total keys ($n for load, $COLD_KEYS never used until the cold run) straight into the database"
    "$SETUP" seed --database-url "$url" --count "$total" --out "$dir/all.txt"
  else
    notes="created"
    start_server "$url" "$dir"
    log "creating $total keys ($n for load, $COLD_KEYS never used until the cold run)"
    "$SETUP" create --endpoint "http://127.0.0.1:$PORT" --management-key "$mgmt" \
      --count "$total" --concurrency "$SETUP_CONCURRENCY" --out "$dir/all.txt"
    stop_server "$dir/server.log"
  fi
  [[ ${#CONFIG_SERVER_ARGS[@]} -eq 0 ]] || notes="$notes, ${CONFIG_SERVER_ARGS[*]}"
  head -n "$n" "$dir/all.txt" >"$dir/warm.txt"
  tail -n +"$((n + 1))" "$dir/all.txt" >"$dir/cold.txt"
  if [[ $n -gt $DATA_ENTRIES ]]; then
    # Every key is warmed and verified (warm.txt), but ghz gets a random
    # sample of them, in random order: each call still hits a random cache
    # entry among all n.
    shuf -n "$DATA_ENTRIES" "$dir/warm.txt" >"$dir/warm-sample.txt"
    "$SETUP" data-file --keys "$dir/warm-sample.txt" --out "$dir/warm.json"
    "$SETUP" data-file --keys "$dir/warm-sample.txt" --out "$dir/warm-ext.json" --format ext-authz
    notes="$notes, ghz data: random $DATA_ENTRIES of the $n keys"
  else
    "$SETUP" data-file --keys "$dir/warm.txt" --out "$dir/warm.json"
    "$SETUP" data-file --keys "$dir/warm.txt" --out "$dir/warm-ext.json" --format ext-authz
  fi
  # ghz's own cost per call grows with the data file (measured here: 15.4k
  # rps with 1k entries, 12.8k with the same 1k keys repeated to 100k), so
  # the 100k-vs-1k comparison uses data files of equal length: smaller key
  # sets are also run cycled up to the largest key count.
  if [[ $n -lt $DATA_ENTRIES ]]; then
    awk -v n="$DATA_ENTRIES" '{ k[NR] = $0 } END { for (i = 0; i < n; i++) print k[i % NR + 1] }' \
      "$dir/warm.txt" >"$dir/warm-cycled.txt"
    "$SETUP" data-file --keys "$dir/warm-cycled.txt" --out "$dir/warm-cycled.json"
  fi
  [[ $COLD_KEYS -gt 0 ]] && "$SETUP" data-file --keys "$dir/cold.txt" --out "$dir/cold.json"

  # A fresh process for the measurements: the memory of creating the keys
  # (freed, but kept by the allocator) must not count against the cache.
  start_server "$url" "$dir"
  local rss_before rss_after
  rss_before=$(rss_bytes "$SERVER_PID")

  log "warm-up: one Authorize per key (must all be DECISION_ALLOW)"
  "$SETUP" authorize --endpoint "http://127.0.0.1:$PORT" --keys "$dir/warm.txt" \
    --concurrency "$SETUP_CONCURRENCY"
  rss_after=$(rss_bytes "$SERVER_PID")
  log "RSS of a fresh server: $rss_before B before warm-up, $rss_after B with all $n keys cached"
  if [[ $n -gt $SEED_ABOVE && $SETTLE -gt 0 ]]; then
    log "settling for ${SETTLE}s: the warm-up's usage writes finish before the rounds"
    sleep "$SETTLE"
  fi

  local load=(-c "$CONCURRENCY" --connections "$CONNECTIONS" -z "$DURATION" --duration-stop wait)
  local writes_before="" writes_started
  [[ "$backend" != postgres ]] || writes_before=$(pg_usage_writes "$url")
  writes_started=$(date +%s.%N)
  for ((i = 1; i <= ROUNDS; i++)); do
    log "round $i/$ROUNDS: Health/Check for $DURATION"
    measured_run "$dir/check-$i.json" "${load[@]}" --call grpc.health.v1.Health/Check -d '{"service":""}'
    ghz_check_ok "$dir/check-$i.json" "Check round $i"
    log "round $i/$ROUNDS: Authorize for $DURATION"
    measured_run "$dir/authz-$i.json" "${load[@]}" --call keygate.v1.AuthorizationService/Authorize \
      --data-file "$dir/warm.json"
    ghz_check_ok "$dir/authz-$i.json" "Authorize round $i"
    local rpcs=(check authz)
    if [[ $EXT_AUTHZ -eq 1 ]]; then
      log "round $i/$ROUNDS: ext_authz Check for $DURATION"
      measured_run "$dir/ext-$i.json" "${load[@]}" --protoset "$PROTOSET" \
        --call envoy.service.auth.v3.Authorization/Check --data-file "$dir/warm-ext.json"
      ghz_check_ok "$dir/ext-$i.json" "ext_authz Check round $i"
      rpcs+=(ext)
      # ghz builds each message from JSON through reflection, which costs
      # it more for a CheckRequest; sharing the two CPUs, that lowers the
      # rate and raises the server's CPU per call. The same comparison with
      # a client of equal cost per RPC:
      local load_keys="$dir/warm.txt"
      [[ -f "$dir/warm-sample.txt" ]] && load_keys="$dir/warm-sample.txt"
      for rpc in authorize ext-authz; do
        log "round $i/$ROUNDS: $rpc for $DURATION with bench_setup load"
        load_run "$dir/load-$rpc-$i" "$rpc" "$load_keys"
        log "  load $rpc round $i: $(cat "$dir/load-$rpc-$i.line"), server CPU $(cat "$dir/load-$rpc-$i.cpu") µs/call"
      done
    fi
    if [[ -f "$dir/warm-cycled.json" ]]; then
      # The same Authorize with ghz doing the larger configurations' work
      # per call: what their server CPU is compared with.
      log "round $i/$ROUNDS: Authorize for $DURATION, the $n keys cycled to $DATA_ENTRIES data-file entries"
      measured_run "$dir/cycled-$i.json" "${load[@]}" --call keygate.v1.AuthorizationService/Authorize \
        --data-file "$dir/warm-cycled.json"
      ghz_check_ok "$dir/cycled-$i.json" "Authorize round $i (cycled data file)"
      rpcs+=(cycled)
    fi
    for rpc in "${rpcs[@]}"; do
      log "  $rpc round $i: $(printf '%.0f' "$(ghz_stat "$dir/$rpc-$i.json" rps)") rps," \
        "p50 $(ms "$(ghz_stat "$dir/$rpc-$i.json" p50)") ms, p99 $(ms "$(ghz_stat "$dir/$rpc-$i.json" p99)") ms," \
        "$(ghz_stat "$dir/$rpc-$i.json" count) calls, server CPU $(cat "$dir/$rpc-$i.json.cpu") µs/call"
    done
  done

  if [[ -n "$writes_before" ]]; then
    # PostgreSQL publishes a backend's counts within a second of its commit.
    sleep 2
    local writes_after
    writes_after=$(pg_usage_writes "$url")
    log "usage row writes during the load rounds (api_keys, credentials, key_last_uses, key_usage_hourly):" \
      "$((writes_after - writes_before)) rows," \
      "$(awk -v w="$((writes_after - writes_before))" -v a="$writes_started" -v b="$(date +%s.%N)" \
        'BEGIN { printf "%.0f", w / (b - a) }') rows/s"
  fi

  # Authorize at equal ghz work (see above): the cycled rounds for smaller
  # key sets, the ordinary rounds otherwise. Lowest round and mean of all.
  local equal_rps equal_cpu equal_mean authz_mean
  local equal=authz
  [[ -f "$dir/warm-cycled.json" ]] && equal=cycled
  equal_rps=$(for f in "$dir/$equal"-*.json; do ghz_stat "$f" rps; done | sort -gr | head -1)
  equal_cpu=$(cat "$dir/$equal"-*.json.cpu | sort -g | head -1)
  equal_mean=$(cat "$dir/$equal"-*.json.cpu | awk '{ s += $1 } END { printf "%.1f", s / NR }')
  authz_mean=$(cat "$dir"/authz-*.json.cpu | awk '{ s += $1 } END { printf "%.1f", s / NR }')

  if [[ $EXT_AUTHZ -eq 1 ]]; then
    # A deny is an OK Check too: the server's own count says they all allowed.
    local ext_not_allowed
    ext_not_allowed=$(curl -fsS "http://127.0.0.1:$HTTP_PORT/metrics" |
      awk '/^keygate_decisions_total\{/ && /service="ext_authz"/ && !/decision="allow"/ { s += $NF } END { print s + 0 }')
    [[ "$ext_not_allowed" -eq 0 ]] || die "$ext_not_allowed ext_authz Checks were not allowed (see /metrics)"
    local ext_cpu authz_cpu_min
    ext_cpu=$(cat "$dir"/ext-*.json.cpu | sort -g | head -1)
    authz_cpu_min=$(cat "$dir"/authz-*.json.cpu | sort -g | head -1)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$backend" "$n" "$authz_cpu_min" "$ext_cpu" \
      "$(for f in "$dir"/authz-*.json; do ghz_stat "$f" rps; done | sort -gr | head -1)" \
      "$(for f in "$dir"/ext-*.json; do ghz_stat "$f" rps; done | sort -gr | head -1)" \
      "$(cat "$dir"/load-authorize-*.cpu | sort -g | head -1)" "$(cat "$dir"/load-ext-authz-*.cpu | sort -g | head -1)" \
      "$(awk '{ print $4 }' "$dir"/load-authorize-*.line | sort -gr | head -1)" \
      "$(awk '{ print $4 }' "$dir"/load-ext-authz-*.line | sort -gr | head -1)" >>"$EXT_RESULTS"
  fi

  log "verifying: every load key is still DECISION_ALLOW (none was denied or rate limited)"
  "$SETUP" authorize --endpoint "http://127.0.0.1:$PORT" --keys "$dir/warm.txt" \
    --concurrency "$SETUP_CONCURRENCY"

  local cold_p50="" cold_p99="" rewarm_p50="" rewarm_p99=""
  if [[ $COLD_KEYS -gt 0 ]]; then
    log "cold misses: $COLD_KEYS never-seen keys, each sent once, -c 4"
    ghz_run "$dir/cold-run.json" -c 4 --connections 1 -n "$COLD_KEYS" --skipFirst 0 \
      --call keygate.v1.AuthorizationService/Authorize --data-file "$dir/cold.json"
    ghz_check_ok "$dir/cold-run.json" "cold Authorize"
    [[ "$(ghz_stat "$dir/cold-run.json" count)" -eq "$COLD_KEYS" ]] || die "cold run count mismatch"
    cold_p50=$(ghz_stat "$dir/cold-run.json" p50)
    cold_p99=$(ghz_stat "$dir/cold-run.json" p99)
    log "same keys again, now cached (reference for the cold figures at the same concurrency)"
    ghz_run "$dir/rewarm-run.json" -c 4 --connections 1 -n "$COLD_KEYS" --skipFirst 0 \
      --call keygate.v1.AuthorizationService/Authorize --data-file "$dir/cold.json"
    ghz_check_ok "$dir/rewarm-run.json" "re-run of the cold keys"
    rewarm_p50=$(ghz_stat "$dir/rewarm-run.json" p50)
    rewarm_p99=$(ghz_stat "$dir/rewarm-run.json" p99)
    log "  cold: p50 $(ms "$cold_p50") ms, p99 $(ms "$cold_p99") ms; cached: p50 $(ms "$rewarm_p50") ms, p99 $(ms "$rewarm_p99") ms"
    "$SETUP" authorize --endpoint "http://127.0.0.1:$PORT" --keys "$dir/cold.txt" \
      --concurrency "$SETUP_CONCURRENCY"
  fi

  stop_server "$dir/server.log"

  # Best round per RPC = the round with the highest rps; its p50/p99.
  local best_check best_authz
  best_check=$(for ((i = 1; i <= ROUNDS; i++)); do echo "$(ghz_stat "$dir/check-$i.json" rps) $dir/check-$i.json"; done | sort -gr | head -1 | cut -d' ' -f2)
  best_authz=$(for ((i = 1; i <= ROUNDS; i++)); do echo "$(ghz_stat "$dir/authz-$i.json" rps) $dir/authz-$i.json"; done | sort -gr | head -1 | cut -d' ' -f2)
  # Server CPU per call: the lowest over the rounds (least disturbed by
  # whatever else shared the CPUs).
  local check_cpu authz_cpu
  check_cpu=$(cat "$dir"/check-*.json.cpu | sort -g | head -1)
  authz_cpu=$(cat "$dir"/authz-*.json.cpu | sort -g | head -1)
  local bpk
  bpk=$(awk -v a="$rss_after" -v b="$rss_before" -v n="$n" 'BEGIN { printf "%.0f", (a - b) / n }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$backend" "$n" \
    "$(ghz_stat "$best_check" rps)" "$(ghz_stat "$best_check" p50)" "$(ghz_stat "$best_check" p99)" \
    "$(ghz_stat "$best_authz" rps)" "$(ghz_stat "$best_authz" p50)" "$(ghz_stat "$best_authz" p99)" \
    "$bpk" "$rss_before" "$rss_after" "${cold_p50:--}" "${cold_p99:--}" "${rewarm_p50:--}" "${rewarm_p99:--}" \
    "$equal_rps" "$check_cpu" "$authz_cpu" "$authz_mean" "$equal_cpu" "$equal_mean" "$notes" >>"$RESULTS"
  print_table "$(tail -n 1 "$RESULTS")"
  if [[ "$backend" == postgres ]]; then
    psql "$PG_URL" -qX -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS \"keygate_bench_$$_$n\" WITH (FORCE)" >/dev/null
  fi
  rm -rf "$dir"
}

HEADER=$(printf '%-9s %7s | %7s %7s %5s | %8s %7s %7s | %8s %7s %7s | %5s %5s | %9s | %8s %8s %8s' \
  backend keys "chk µs" "auth µs" "cpu x" "chk rps" "p50 ms" "p99 ms" "auth rps" "p50 ms" "p99 ms" "rps x" "p99 x" "bytes/key" "cold p50" "cold p99" "hot p99")

print_table() { # rows of results.tsv
  echo
  echo "$HEADER"
  echo "${HEADER//?/-}"
  local backend n crps cp50 cp99 arps ap50 ap99 bpk _rb _ra cold50 cold99 _hot50 hot99 _equal ccpu acpu _amean _ecpu _emean notes
  local all_notes=""
  while IFS=$'\t' read -r backend n crps cp50 cp99 arps ap50 ap99 bpk _rb _ra cold50 cold99 _hot50 hot99 _equal ccpu acpu _amean _ecpu _emean notes; do
    [[ "$cold50" == - ]] || cold50=$(ms "$cold50")
    [[ "$cold99" == - ]] || cold99=$(ms "$cold99")
    [[ "$hot99" == - ]] || hot99=$(ms "$hot99")
    printf '%-9s %7s | %7s %7s %5s | %8.0f %7s %7s | %8.0f %7s %7s | %5s %5s | %9s | %8s %8s %8s\n' \
      "$backend" "$n" "$ccpu" "$acpu" "$(ratio "$acpu" "$ccpu")" "$crps" "$(ms "$cp50")" "$(ms "$cp99")" "$arps" "$(ms "$ap50")" "$(ms "$ap99")" \
      "$(ratio "$arps" "$crps")" "$(ratio "$ap99" "$cp99")" "$bpk" "$cold50" "$cold99" "$hot99"
    all_notes+=$(printf '  %-9s %7s keys: %s' "$backend" "$n" "$notes")$'\n'
  done <<<"$1"
  echo
  printf '%s' "$all_notes"
  echo
}

for backend in $BACKENDS; do
  for n in $KEY_COUNTS; do
    run_config "$backend" "$n"
  done
done

# --- summary -------------------------------------------------------------
echo
echo "===================== Keygate benchmark summary ====================="
echo "ghz $GHZ_VERSION, -c $CONCURRENCY --connections $CONNECTIONS -z $DURATION, $ROUNDS alternating rounds"
echo "(Check, Authorize, Check, Authorize, ...); per RPC the round with the highest rps is shown."
echo "$(nproc) CPUs shared by ghz and the server: absolute figures are low, the ratios matter."
print_table "$(cat "$RESULTS")"
echo "Targets (not asserted):"
echo "  chk µs / auth µs = server CPU time per call (user + system, from /proc/PID/stat around"
echo "              each ghz round, lowest round): the primary figure, since ghz shares the CPUs"
echo "  cpu x     = auth µs / chk µs                   target <= 1.20"
echo "  rps x     = Authorize rps / Check rps          target >= 0.80"
echo "  p99 x     = Authorize p99 / Check p99          target <= 1.25"
echo "  bytes/key = (RSS with every key cached - RSS of the same fresh server before"
echo "              warm-up) / keys: cache entry, snapshot and per-key runtime; target < 1024"
echo "  cold p50/p99 = Authorize of never-seen keys, each a cache MISS loaded from storage"
echo "              (ghz -c 4 --connections 1, $COLD_KEYS keys once each); target p99 < 2 ms on PostgreSQL
  hot p99   = the same $COLD_KEYS keys sent again at once, now cached: what ghz and the
              shared CPUs add on their own at that concurrency"
echo
echo "Server CPU per Authorize call, the primary figure: at the smallest key count against"
echo "Check's (target <= 1.20); at each larger count against the smallest count's with ghz doing"
echo "the same work per call ($DATA_ENTRIES-entry data files: the smaller key sets' cycled rounds),"
echo "target <= 1.10, by the lowest round and by the mean of all rounds (the mean carries the"
echo "usage writes, which land in whichever round the keys fall due):"
for backend in $BACKENDS; do
  awk -F'\t' -v b="$backend" '
    $1 == b { n[++rows] = $2; ccpu[rows] = $17; acpu[rows] = $18; ecpu[rows] = $20; emean[rows] = $21
              if (min == "" || $2 + 0 < n[min] + 0) min = rows }
    END {
      if (!rows) exit
      r = acpu[min] / ccpu[min]
      printf "  %-9s %8s keys: Authorize %s µs, Check %s µs: %.2fx Check %s\n", b, n[min], acpu[min], ccpu[min], r, (r <= 1.2 ? "(meets 1.20)" : "(ABOVE 1.20)")
      for (i = 1; i <= rows; i++) {
        if (i == min) continue
        r = ecpu[i] / ecpu[min]; m = emean[i] / emean[min]
        printf "  %-9s %8s keys: Authorize %s µs (mean %s): %.2fx the %s-key figure %s µs %s, mean %.2fx (%s µs) %s\n", b, n[i], ecpu[i], emean[i], r, n[min], ecpu[min], (r <= 1.1 ? "(meets 1.10)" : "(ABOVE 1.10)"), m, emean[min], (m <= 1.1 ? "(meets 1.10)" : "(ABOVE 1.10)")
      }
    }' "$RESULTS"
done
echo
echo "Authorize rps at each larger key count vs the smallest, all with $DATA_ENTRIES-entry data files"
echo "(smaller key sets cycled, larger ones sampled), so ghz does the same work (target >= 0.90):"
for backend in $BACKENDS; do
  awk -F'\t' -v b="$backend" '
    $1 == b { n[++rows] = $2; rps[rows] = $16; if (min == "" || $2 + 0 < n[min] + 0) min = rows }
    END {
      if (rows < 2) { printf "  %-9s n/a (one key count)\n", b; exit }
      for (i = 1; i <= rows; i++) {
        if (i == min) continue
        r = rps[i] / rps[min]
        printf "  %-9s %s keys: %.0f rps, %s keys: %.0f rps, ratio %.2f %s\n", b, n[i], rps[i], n[min], rps[min], r, (r >= 0.9 ? "(meets 0.90)" : "(BELOW 0.90)")
      }
    }' "$RESULTS"
done
echo
echo "Bytes per cached key at the largest key count (target < 1024):"
for backend in $BACKENDS; do
  awk -F'\t' -v b="$backend" '
    $1 == b && (max == "" || $2 + 0 > max + 0) { max = $2; bpk = $9 }
    END { if (max != "") printf "  %-9s %8s keys: %s B/key %s\n", b, max, bpk, (bpk + 0 < 1024 ? "(meets 1024)" : "(ABOVE 1024)") }' "$RESULTS"
done
echo
echo "All Authorize calls returned status OK, and every key answered DECISION_ALLOW before and after load."
if [[ -s "$EXT_RESULTS" ]]; then
  echo "Envoy ext_authz Check against Authorize, same keys and server (server CPU per call, lowest"
  echo "round; rps, best round); target: Check within 10% of Authorize. bench_setup load costs the"
  echo "same per call for both RPCs; ghz costs itself more for a CheckRequest (see README):"
  awk -F'\t' '{
    r = $8 / $7; g = $4 / $3
    printf "  %-9s %8s keys: load: Authorize %s µs, ext_authz %s µs: %.2fx %s, rps %.0f vs %.0f (%.2f)\n", $1, $2, $7, $8, r, (r <= 1.1 ? "(within 10%)" : "(MORE than 10% above)"), $9, $10, $10 / $9
    printf "  %-9s %8s       ghz:  Authorize %s µs, ext_authz %s µs: %.2fx, rps %.0f vs %.0f\n", "", "", $3, $4, g, $5, $6
  }' "$EXT_RESULTS"
  echo
fi
