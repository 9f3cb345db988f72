#!/usr/bin/env bash
# bench/redis-floor.sh — what Redis itself spends to take one record, with
# nothing of Mediary in the way: the floor under the Redis store's cost.
#
# A private redis-server (pinned to REDIS_CPU, settings as bench/cluster.sh
# starts it) is fed N pipelined `SET` commands of VALUE_SIZE random-ish bytes
# by redis-benchmark (pinned to LOAD_CPU), once per persistence mode. The
# Redis store writes more than this per record (the entry in a hash, its head,
# three index entries, all inside MULTI and Lua), so its cost per record can
# only be higher. The script reports Redis' CPU per SET from /proc: the server
# process (user + system: parsing, memory, the append-only file's writes and
# fsyncs, copy-on-write faults while a rewrite runs) and its reaped children
# (the AOF rewrites, which fork), after waiting for a rewrite in progress to
# end.
#
# From that it works out the best redis/embedded req/s ratio bench/cluster.sh
# could measure with Redis on Mediary's core (its default split): each
# request costs Mediary MEDIARY_US of CPU with either store (the cluster
# report's "Mediary µs / request": 30.9 embedded, 31.1 Redis), and Redis' CPU
# comes out of the same core, so the ratio is at most
# MEDIARY_US / (MEDIARY_US + Redis µs per record).
#
# Environment:
#   VALUE_SIZE    bytes per SET: a stored record (default 1800: the mean
#                 entry of bench/cluster.sh's GET /1k: 1,791 bytes, from HSTRLEN)
#   REQUESTS      SETs per mode                            (default 300000)
#   PIPELINE      redis-benchmark -P                        (default 500)
#   MODES         persistence modes                         (default "always always-norewrite everysec none")
#                 always: appendonly, appendfsync always (bench/cluster.sh's
#                 default, what Mediary asks for); always-norewrite: the same
#                 without automatic AOF rewrites; everysec; none: no AOF
#   MEDIARY_US    Mediary's CPU µs per request               (default 31)
#   TARGET_RATIO  the issue's redis/embedded target          (default 0.85)
#   REDIS_CPU, LOAD_CPU, PIN   as in bench/cluster.sh (default 0, 1, 1)
#   REDIS_SERVER_BIN, REDIS_BENCHMARK_BIN   the binaries (default: PATH)
#   RESULTS_DIR   where the report goes                     (default bench/results)
#
# Every run is bounded (timeout); the server and its files are removed at exit.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_NAME=redis-floor.sh
# shellcheck source=bench/lib.sh
. "$SCRIPT_DIR/lib.sh"

VALUE_SIZE=${VALUE_SIZE:-1800}
REQUESTS=${REQUESTS:-300000}
PIPELINE=${PIPELINE:-500}
MODES=${MODES:-"always always-norewrite everysec none"}
MEDIARY_US=${MEDIARY_US:-31}
TARGET_RATIO=${TARGET_RATIO:-0.85}
REDIS_CPU=${REDIS_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
REDIS_SERVER_BIN=${REDIS_SERVER_BIN:-$(command -v redis-server || true)}
REDIS_BENCHMARK_BIN=${REDIS_BENCHMARK_BIN:-$(command -v redis-benchmark || true)}
RESULTS_DIR=${RESULTS_DIR:-$SCRIPT_DIR/results}
CLK_TCK=$(getconf CLK_TCK)

[[ $VALUE_SIZE =~ ^[1-9][0-9]*$ ]] || die "bad VALUE_SIZE '$VALUE_SIZE'"
[[ $REQUESTS =~ ^[1-9][0-9]*$ ]] || die "bad REQUESTS '$REQUESTS'"
[[ $PIPELINE =~ ^[1-9][0-9]*$ ]] || die "bad PIPELINE '$PIPELINE'"
[[ $MEDIARY_US =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "bad MEDIARY_US '$MEDIARY_US'"
[[ -x $REDIS_SERVER_BIN ]] || die "redis-server not found (apt-get install redis-server)"
[[ -x $REDIS_BENCHMARK_BIN ]] || die "redis-benchmark not found (apt-get install redis-tools)"
for m in $MODES; do
  case $m in always | always-norewrite | everysec | none) ;; *) die "bad mode '$m'" ;; esac
done
check_pinning
make_tmp mediary-redis-floor

# ticks PID — user, system, children's user, children's system (clock ticks).
ticks() { awk '{ sub(/^.*\) /, ""); print $12, $13, $14, $15 }' "/proc/$1/stat"; }

rows=""
for mode in $MODES; do
  dir="$TMP/$mode"
  mkdir -p "$dir"
  free_port port
  args=(--port "$port" --bind 127.0.0.1 --dir "$dir" --save "" --daemonize no)
  case $mode in
    always) args+=(--appendonly yes --appendfsync always) ;;
    always-norewrite) args+=(--appendonly yes --appendfsync always --auto-aof-rewrite-percentage 0) ;;
    everysec) args+=(--appendonly yes --appendfsync everysec) ;;
    none) args+=(--appendonly no) ;;
  esac
  start_bg "$REDIS_CPU" "$dir/redis.log" "$REDIS_SERVER_BIN" "${args[@]}"
  pid=$LAST_PID
  wait_port "$pid" "$port" redis-server || die "redis-server ($mode) did not start: $(tail -n 5 "$dir/redis.log")"
  read -r u0 s0 cu0 cs0 < <(ticks "$pid")
  log "$mode: $REQUESTS SETs of $VALUE_SIZE bytes, pipeline $PIPELINE"
  start=$(date +%s.%N)
  on_cpu "$LOAD_CPU" timeout 600 "$REDIS_BENCHMARK_BIN" -p "$port" -n "$REQUESTS" -r 1000000000 \
    -P "$PIPELINE" -d "$VALUE_SIZE" -t set -q >"$dir/benchmark.out" 2>&1 ||
    die "redis-benchmark ($mode) failed: $(tail -c 300 "$dir/benchmark.out")"
  end=$(date +%s.%N)
  # A rewrite the load started is part of its cost: wait for it (bounded).
  for ((i = 0; i < 600; i++)); do
    redis-cli -p "$port" INFO persistence | grep -q '^aof_rewrite_in_progress:1' || break
    sleep 0.1
  done
  rewrites=$(redis-cli -p "$port" INFO persistence | tr -d '\r' | sed -n 's/^aof_rewrites://p')
  memory=$(redis-cli -p "$port" INFO memory | tr -d '\r' | sed -n 's/^used_memory_human://p')
  read -r u1 s1 cu1 cs1 < <(ticks "$pid")
  stop_pid "$pid"
  rows+=$(awk -v m="$mode" -v n="$REQUESTS" -v hz="$CLK_TCK" -v t="$(echo "$end - $start" | bc)" \
    -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v c=$((cu1 - cu0 + cs1 - cs0)) -v rw="${rewrites:-?}" \
    -v mem="${memory:-?}" -v mu="$MEDIARY_US" -v target="$TARGET_RATIO" 'BEGIN {
      us = 1e6 / hz / n; total = (u + s + c) * us; best = mu / (mu + total)
      printf "| %s | %.0f | %.1f | %.1f | %.1f | %.1f | %s | %s | %.2f | %s |\n",
        m, n / t, u * us, s * us, c * us, total, rw, mem, best, (best >= target ? "reachable" : "out of reach")
    }')$'\n'
done

mkdir -p "$RESULTS_DIR"
report="$RESULTS_DIR/redis-floor-$(date -u +%Y-%m-%d-%H%M%S).md"
{
  echo "# Redis floor: Redis' own CPU per record-sized SET"
  echo
  echo "- $(date -u '+%Y-%m-%d %H:%M:%S UTC'); $(nproc) CPUs; $("$REDIS_SERVER_BIN" --version | cut -d' ' -f1-3)"
  echo "- $REQUESTS pipelined SETs (-P $PIPELINE) of $VALUE_SIZE bytes per mode, redis-benchmark on CPU $LOAD_CPU, Redis on CPU $REDIS_CPU$(pinning || echo ' (not pinned)'); load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- best ratio = $MEDIARY_US / ($MEDIARY_US + Redis µs): the highest redis/embedded req/s bench/cluster.sh can measure with Redis on Mediary's core, if the Redis store cost Redis no more than a bare SET (it costs more: a hash entry, its head and three index entries per record)"
  echo
  echo "| mode | SETs/s | user µs | system µs | rewrites (children) µs | Redis µs / SET | AOF rewrites | memory | best ratio | target $TARGET_RATIO |"
  echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|"
  printf '%s' "$rows"
} >"$report"
cat "$report"
log "report: $report"
