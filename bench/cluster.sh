#!/usr/bin/env bash
# bench/cluster.sh — the Redis store against the embedded store, and one
# instance against several behind HAProxy, in one run on one machine.
#
# Targets, all recording every transaction, all driven by the same wrk
# settings (default: 64 connections, 2 threads, 15 s after a 3 s warm-up,
# GET of a 1 KiB body) against the same upstream nginx:
#   embedded    one instance, the embedded store: the baseline
#   redis       one instance, the Redis store; the issue's target is
#               redis ≥ 0.85 × embedded requests/s (PASS/FAIL in the report)
#   haproxy-K   HAProxy (round robin, one thread) in front of K instances on
#               the Redis store (K = 1..9). haproxy-1 against redis is the
#               balancer's own cost; haproxy-3 is the three-instance cluster.
# Every instance is `mediary run --workers 1` with its own data_dir (its
# spool) and `[server] instance` (e1 for the embedded store; b1, b2, ... on
# Redis, sharing one prefix). `redis` and `haproxy-K` use the same b1, so
# their ratio is the balancer alone.
#
# For each target and round it also checks the recording, after the store has
# caught up (records_stored_total of every instance steady for a second):
#   - transactions in the store (counted through GET /transactions, by
#     bisection on filterPage with filterLimit=1, pinned to one snapshot)
#     went up by wrk's completed requests, plus at most the connection count
#     (requests in flight when wrk stops are recorded too, not counted by wrk);
#   - on Redis, round trips per recorded transaction: INFO stats
#     total_reads_processed (one per read of a client's socket: a pipeline, a
#     MULTI/EXEC or an EVALSHA of a whole batch is one) before and after the
#     measured run, with total_commands_processed and INFO commandstats for
#     the breakdown (commands a Lua script runs count there too);
#   - CPU seconds used by each part (Mediary, HAProxy, Redis, upstream, and the
#     rest, which is mostly wrk), from /proc.
#
# Redis: by default a private `redis-server` on a free port in the temp dir,
# stopped and deleted at exit, because
#   - INFO commandstats and total_reads_processed are server-wide: on the
#     shared 6379 every other client (tests, other benchmarks) would be counted
#     as Mediary's round trips;
#   - its settings are known and in the report: appendonly with
#     `appendfsync always` (REDIS_APPENDONLY), which Mediary asks for (it
#     warns at start otherwise): the recorder lets a spool segment go once the
#     store has its records, so they must be on disk, as the embedded store
#     makes sure with its own syncs; no RDB snapshots in the middle of a run;
#   - it can be pinned like everything else, and nothing is left behind.
# REDIS_URL=redis://host:port/db uses an existing Redis instead, under a
# prefix unique to the run whose keys are unlinked at exit; the round-trip
# figures then include whatever else that server was doing.
#
# On a 2-core machine the three instances, HAProxy, Redis, the upstream and
# wrk share two cores: haproxy-3 shows the cost and the correctness of
# running a cluster, not scale-out. By default the split is the same in
# every target: PROXY_CPU holds Mediary and its store, LOAD_CPU the client
# side. So every Mediary instance and the private Redis share PROXY_CPU (the
# embedded store does its storage work on Mediary's own threads, so both
# stores get the same core; wrk and the upstream, which already fill
# LOAD_CPU, are left alone), and wrk, the upstream and HAProxy (standing in
# for a balancer in front, which takes nothing from Mediary's machine) share
# LOAD_CPU. The report's CPU table shows where the time went.
#
# Environment:
#   DURATION        wrk duration of each measured run       (default 15s)
#   WARMUP          wrk run before it, discarded            (default 3s, 0 = none)
#   CONNS           wrk connections                         (default 64)
#   WRK_THREADS     wrk threads                             (default 2)
#   SIZE            response body: N, Nk or Nm bytes        (default 1k)
#   METHOD          GET, or POST with a body of SIZE        (default GET)
#   ROUNDS          repeat all targets N times (order alternating), medians
#                   reported                                (default 1)
#   TARGETS         which targets                           (default "embedded redis haproxy-1 haproxy-3")
#   TARGET_RATIO    redis/embedded req/s needed for PASS    (default 0.85)
#   REDIS_URL       use this Redis, not a private one
#   REDIS_APPENDONLY  private Redis' appendfsync: always, everysec, or no
#                   (appendonly off)                        (default always)
#   MEDIARY_BIN     use this binary, skip `cargo build --release`
#   NGINX_BIN, HAPROXY_BIN, REDIS_SERVER_BIN   the binaries (default: PATH, /usr/sbin)
#   PROXY_CPU       CPU for every Mediary instance          (default 0)
#   LOAD_CPU        CPU for wrk and the upstream            (default 1)
#   REDIS_CPU       CPU for the private Redis               (default PROXY_CPU)
#   LB_CPU          CPU for HAProxy                         (default LOAD_CPU)
#   PIN             1 = pin with taskset, 0 = don't         (default 1; 0 if < 2 CPUs)
#   DRAIN_TIMEOUT   seconds to wait for the store to catch up (default 120)
#   RESULTS_DIR     where the report goes                   (default bench/results)
#   KEEP_TMP        1 = keep the temp dir (configs, logs, wrk output, Redis stats)
#
# Exit status: 0 when everything ran and every check and the target passed;
# 1 when a measurement or a check failed; 2 when only the target was missed.
# Every step is bounded in time; every process started here is stopped on exit
# (also on errors and Ctrl-C).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_NAME=cluster.sh
STOP_TIMEOUT=15 # Mediary drains its spool into the store before it exits
# shellcheck source=bench/lib.sh
. "$SCRIPT_DIR/lib.sh"

DURATION=${DURATION:-15s}
WARMUP=${WARMUP:-3s}
CONNS=${CONNS:-64}
WRK_THREADS=${WRK_THREADS:-2}
SIZE=${SIZE:-1k}
METHOD=${METHOD:-GET}
ROUNDS=${ROUNDS:-1}
TARGETS=${TARGETS:-"embedded redis haproxy-1 haproxy-3"}
TARGET_RATIO=${TARGET_RATIO:-0.85}
REDIS_URL=${REDIS_URL:-}
REDIS_APPENDONLY=${REDIS_APPENDONLY:-always}
MEDIARY_BIN=${MEDIARY_BIN:-}
NGINX_BIN=${NGINX_BIN:-}
HAPROXY_BIN=${HAPROXY_BIN:-}
REDIS_SERVER_BIN=${REDIS_SERVER_BIN:-}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
REDIS_CPU=${REDIS_CPU:-$PROXY_CPU}
LB_CPU=${LB_CPU:-$LOAD_CPU}
PIN=${PIN:-1}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-120}
RESULTS_DIR=${RESULTS_DIR:-$SCRIPT_DIR/results}
KEEP_TMP=${KEEP_TMP:-0}

ROOT_EMAIL=root@openhim.org
PASSWORD="cluster-$RANDOM$RANDOM$RANDOM"
# Unique per run: several runs (or a shared Redis) never mix their keys.
PREFIX="mediary-bench-$(date +%Y%m%d%H%M%S)-$$:"
CLK_TCK=$(getconf CLK_TCK)

has() { [[ " $TARGETS " == *" $1 "* ]]; }
lb_size() { echo "${1#haproxy-}"; } # haproxy-3 -> 3

# ------------------------------------------------------------------- checks

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "bad ROUNDS '$ROUNDS'"
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "bad CONNS '$CONNS' (one connection count)"
[[ $WRK_THREADS =~ ^[1-9][0-9]*$ ]] || die "bad WRK_THREADS '$WRK_THREADS'"
size_bytes "$SIZE" >/dev/null
[[ $METHOD == GET || $METHOD == POST ]] || die "bad METHOD '$METHOD' (GET or POST)"
[[ $(secs "$DURATION") =~ ^[0-9]+$ ]] || die "bad DURATION '$DURATION' (use e.g. 15s)"
[[ $WARMUP == 0 || $(secs "$WARMUP") =~ ^[0-9]+$ ]] || die "bad WARMUP '$WARMUP'"
[[ $TARGET_RATIO =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "bad TARGET_RATIO '$TARGET_RATIO'"
[[ $DRAIN_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "bad DRAIN_TIMEOUT '$DRAIN_TIMEOUT'"
case $REDIS_APPENDONLY in everysec | always | no) ;; *) die "bad REDIS_APPENDONLY '$REDIS_APPENDONLY' (always, everysec or no)" ;; esac
[[ -z $REDIS_URL || $REDIS_URL == redis://* ]] || die "REDIS_URL must be redis://host:port/db"
MAX_INSTANCES=0 # Redis-store instances needed: b1..bN
USES_REDIS=0
for t in $TARGETS; do
  case $t in
    embedded) ;;
    redis | haproxy-[1-9])
      USES_REDIS=1
      k=1
      [[ $t == redis ]] || k=$(lb_size "$t")
      if ((k > MAX_INSTANCES)); then MAX_INSTANCES=$k; fi
      ;;
    *) die "unknown target '$t' (embedded, redis, haproxy-1 ... haproxy-9)" ;;
  esac
done
uses_haproxy() { [[ $TARGETS == *haproxy-* ]]; }

# find_bin VAR NAME — VAR (if set), else NAME from PATH or /usr/sbin.
find_bin() {
  local -n var=$1
  [[ -n $var ]] && return 0
  var=$(command -v "$2" || true)
  [[ -z $var && -x /usr/sbin/$2 ]] && var=/usr/sbin/$2
  return 0
}

ensure_tools() {
  ensure_nginx_wrk
  command -v curl >/dev/null || die "curl not found"
  if uses_haproxy; then
    find_bin HAPROXY_BIN haproxy
    if [[ -z $HAPROXY_BIN ]]; then
      log "haproxy missing; installing it"
      apt_install haproxy || die "could not install haproxy"
      find_bin HAPROXY_BIN haproxy
    fi
    [[ -x $HAPROXY_BIN ]] || die "haproxy not found"
  fi
  if ((USES_REDIS)); then
    [[ -n $REDIS_URL ]] || find_bin REDIS_SERVER_BIN redis-server
    if ! command -v redis-cli >/dev/null || [[ -z $REDIS_URL && -z $REDIS_SERVER_BIN ]]; then
      log "redis-server and/or redis-cli missing; installing redis-server"
      apt_install redis-server || die "could not install redis-server"
      [[ -n $REDIS_URL ]] || find_bin REDIS_SERVER_BIN redis-server
    fi
    command -v redis-cli >/dev/null || die "redis-cli not found"
    [[ -n $REDIS_URL || -x $REDIS_SERVER_BIN ]] || die "redis-server not found"
  fi
  check_pinning
}
ensure_tools

if [[ -z $MEDIARY_BIN ]]; then build_mediary; fi
[[ -x $MEDIARY_BIN ]] || die "mediary binary not found or not executable: $MEDIARY_BIN"
# Which binary ran, in the report: the commit says what the tree holds, not
# what a target directory shared with other builds holds. It must not change
# during the run either.
BIN_SHA=$(sha256sum "$MEDIARY_BIN" | cut -c1-12)

make_tmp mediary-cluster
make_bodies "$SIZE"
BYTES=$(size_bytes "$SIZE")

# ------------------------------------------------------------------ helpers

NOTES=()
FAILED=0
declare -A FAILS PORT_OF API_OF PID_OF INSTS_OF LB_PID AFFINITY

fail_target() { FAILS[$1]=1; FAILED=1; }
store_of() { if [[ $1 == embedded ]]; then echo embedded; else echo redis; fi; }

# api PORT PATH — GET on an instance's management API as root; the body.
api() { curl -sf --max-time 30 -u "$ROOT_EMAIL:$PASSWORD" "http://127.0.0.1:$1$2"; }

# metric TEXT NAME — the sum of a metric's samples in Prometheus text.
metric() {
  awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%.0f\n", s }' <<<"$1"
}

# instance_counters INSTANCE — "records_stored store_errors requests
# store_count" from its /metrics, the last being the store's own transaction
# count (mediary_cluster_transactions) or "-" where Mediary does not give it;
# nothing if /metrics did not answer.
instance_counters() {
  local text own=-
  text=$(api "${API_OF[$1]}" /metrics) || return 1
  if grep -q '^mediary_cluster_transactions ' <<<"$text"; then
    own=$(metric "$text" mediary_cluster_transactions)
  fi
  echo "$(metric "$text" mediary_records_stored_total) $(metric "$text" mediary_store_errors_total) $(metric "$text" mediary_worker_requests_total) $own"
}

# wait_drained MIN INSTANCE... — until the spools are in the store: the
# store's own count (where /metrics has it) is at least MIN, and neither it
# nor any instance's records_stored_total has moved for a second. (Neither
# alone will do: records_stored_total moves once a whole batch is in, and
# a backlog goes to Redis in many scripts, for seconds.)
wait_drained() {
  local min=$1 deadline=$((SECONDS + DRAIN_TIMEOUT)) last="" now inst c own stable=0
  shift
  while ((SECONDS < deadline)); do
    now=""
    own=""
    for inst in "$@"; do
      c=$(instance_counters "$inst" || echo "? ? ? ?")
      now+="${c%% *} "
      [[ -n $own ]] || own=${c##* }
    done
    now+=$own
    if [[ $now == "$last" && $now != *"?"* ]] && { [[ $own == - ]] || ((own >= min)); }; then
      stable=$((stable + 1))
      ((stable < 4)) || return 0
    else
      stable=0
      last=$now
    fi
    sleep 0.25
  done
  return 1
}

# Counting the transactions in a store through the API: the listing is newest
# first, so "a transaction at offset N" (filterPage=N, filterLimit=1) means
# more than N are stored. All probes of one count use one snapshot.
SNAPSHOT=""
PROBE_ERROR=0
tx_at() { # tx_at PORT N — 0 if there is a transaction at offset N, 1 if not
  local body
  if ! body=$(api "$1" "/transactions?filterLimit=1&filterPage=$2&snapshot=$SNAPSHOT"); then
    PROBE_ERROR=1
    return 1
  fi
  [[ $body == "[]" ]] && return 1
  [[ $body == "[{"* ]] && return 0
  PROBE_ERROR=1
  return 1
}

# count_tx PORT HINT — how many transactions the store holds; HINT is the
# expected count (two probes when right, a bisection otherwise).
count_tx() {
  local port=$1 hint=$2 lo=0 hi mid
  SNAPSHOT=$(curl -s -D - -o /dev/null --max-time 30 -u "$ROOT_EMAIL:$PASSWORD" \
    "http://127.0.0.1:$port/transactions?filterLimit=1" |
    tr -d '\r' | awk -F': ' 'tolower($1) == "x-mediary-snapshot" { print $2 }')
  [[ -n $SNAPSHOT ]] || return 1
  PROBE_ERROR=0
  if ((hint > 0)) && tx_at "$port" $((hint - 1)); then lo=$hint; fi
  hi=$((hint > lo ? hint : lo))
  # count >= lo; widen hi until count <= hi, then bisect.
  while tx_at "$port" "$hi"; do
    lo=$((hi + 1))
    hi=$((hi * 2 + 1))
  done
  while ((lo < hi)); do
    mid=$(((lo + hi) / 2))
    if tx_at "$port" "$mid"; then lo=$((mid + 1)); else hi=$mid; fi
  done
  ((PROBE_ERROR == 0)) || return 1
  echo "$lo"
}

# count_tx_retry PORT HINT — count_tx, tried three times: a listing fails
# while the instance has lost Redis for a moment (a starved Redis misses the
# store's timeout).
count_tx_retry() {
  local i
  for i in 1 2 3; do
    count_tx "$@" && return 0
    log "counting through the API on port $1 failed (attempt $i of 3)"
    sleep 2
  done
  return 1
}

rcli() { redis-cli --no-auth-warning -u "$REDIS_URL" "$@"; }

# redis_stats OUT — "name value" lines: total_commands_processed,
# total_reads_processed and cmd:<command> calls.
redis_stats() {
  { rcli INFO stats && rcli INFO commandstats; } | tr -d '\r' | awk -F'[:,=]' '
    /^total_(commands|reads|writes)_processed:/ { print $1, $2 }
    /^cmdstat_/ { print "cmd:" substr($1, 9), $3 }' >"$1"
}

# stats_delta BEFORE AFTER — "name delta" for the values that moved.
stats_delta() {
  awk 'NR == FNR { a[$1] = $2; next } { d = $2 - a[$1]; if (d != 0) print $1, d }' "$1" "$2"
}

# log_warnings LOGFILE — "count message" per distinct WARN message of a
# Mediary log (its fields after the first left out), most frequent first.
log_warnings() {
  grep ' WARN ' "$1" 2>/dev/null | sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^[^ ]* *WARN *//' -e 's/^[a-z-]* *//' \
    -e 's/ [a-z_]*=.*//' | tr -d '`' | cut -c1-200 | sort | uniq -c | sort -rn | head -n 5 || true
}

# ----------------------------------------------------------------- servers

log "== upstream on CPU $LOAD_CPU"
start_upstream "$LOAD_CPU"
AFFINITY[upstream]=$(affinity "$UPSTREAM_PID")

REDIS_PID=""
REDIS_NOTE=""
if ((USES_REDIS)); then
  REDIS_PORT=""
  if [[ -n $REDIS_URL ]]; then
    REDIS_NOTE="external, $REDIS_URL (round-trip figures include its other clients)"
    rcli PING >/dev/null || die "Redis at $REDIS_URL does not answer PING"
  else
    free_port REDIS_PORT
    mkdir -p "$TMP/redis"
    redis_args=(--port "$REDIS_PORT" --bind 127.0.0.1 --dir "$TMP/redis" --save "" --daemonize no)
    if [[ $REDIS_APPENDONLY == no ]]; then
      redis_args+=(--appendonly no)
    else
      redis_args+=(--appendonly yes --appendfsync "$REDIS_APPENDONLY")
    fi
    log "== private redis-server on 127.0.0.1:$REDIS_PORT, CPU $REDIS_CPU (appendonly: $REDIS_APPENDONLY)"
    start_bg "$REDIS_CPU" "$TMP/redis/redis.log" "$REDIS_SERVER_BIN" "${redis_args[@]}"
    REDIS_PID=$LAST_PID
    wait_port "$REDIS_PID" "$REDIS_PORT" redis-server || { tail -n 20 "$TMP/redis/redis.log" >&2; die "redis-server failed to start"; }
    REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
    REDIS_NOTE="private redis-server on 127.0.0.1:$REDIS_PORT, $(if [[ $REDIS_APPENDONLY == no ]]; then echo "no persistence"; else echo "appendonly yes, appendfsync $REDIS_APPENDONLY"; fi), no RDB snapshots"
    AFFINITY[redis-server]=$(affinity "$REDIS_PID")
  fi
  REDIS_VERSION=$(rcli INFO server | tr -d '\r' | sed -n 's/^redis_version://p')
fi

# With an external Redis the run's keys are unlinked at exit; a private one
# goes with the temp dir.
unlink_prefix() {
  [[ -n $REDIS_URL && -z $REDIS_PID ]] || return 0
  log "unlinking the keys under $PREFIX"
  rcli --scan --pattern "$PREFIX*" | xargs -r -n 500 redis-cli --no-auth-warning -u "$REDIS_URL" UNLINK >/dev/null
}
CLEANUP_HOOK=unlink_prefix

API_SECTION="[api]
root_password = \"$PASSWORD\""

# start_instance NAME STORE — one Mediary instance (on PROXY_CPU, --workers 1)
# named NAME, with the embedded store or the Redis store.
start_instance() {
  local name=$1 store=$2 port sections
  free_port port
  sections="[store]
data_dir = \"$TMP/$name/data\""
  if [[ $store == redis ]]; then
    sections+="
url = \"$REDIS_URL\"
prefix = \"$PREFIX\""
  fi
  sections+="

$API_SECTION"
  log "starting instance $name ($store store) on 127.0.0.1:$port"
  start_mediary "$name" "$port" true "" "instance = \"$name\"" "$sections" || return 1
  PORT_OF[$name]=$port
  API_OF[$name]=$LAST_API_PORT
  PID_OF[$name]=$LAST_PID
  AFFINITY[$name]=$(affinity "$LAST_PID")
}

if has embedded; then
  INSTS_OF[embedded]=e1
  if start_instance e1 embedded; then
    PORT_OF[embedded]=${PORT_OF[e1]}
  else
    fail_target embedded
    NOTES+=("embedded: the instance did not start (see the log above)")
  fi
fi

REDIS_UP=0
if ((MAX_INSTANCES > 0)); then
  REDIS_UP=1
  for ((i = 1; i <= MAX_INSTANCES; i++)); do
    if ! start_instance "b$i" redis; then
      REDIS_UP=0
      reason=$(grep -E 'ERROR|Error|error' "$TMP/b$i/mediary.log" | tail -n 1 | sed 's/\x1b\[[0-9;]*m//g' | tr -d '`' | cut -c1-300 || true)
      NOTES+=("instance b$i on the Redis store did not start: \`${reason:-see its log}\`")
      break
    fi
  done
  for t in $TARGETS; do
    [[ $(store_of "$t") == redis ]] || continue
    ((REDIS_UP)) || fail_target "$t"
  done
fi

if has redis && ((REDIS_UP)); then
  INSTS_OF[redis]=b1
  PORT_OF[redis]=${PORT_OF[b1]}
fi

for t in $TARGETS; do
  [[ $t == haproxy-* ]] || continue
  ((REDIS_UP)) || continue
  k=$(lb_size "$t")
  lb_port=""
  free_port lb_port
  servers=""
  INSTS_OF[$t]=""
  for ((i = 1; i <= k; i++)); do
    servers+="    server b$i 127.0.0.1:${PORT_OF[b$i]} check port ${API_OF[b$i]}"$'\n'
    INSTS_OF[$t]+="b$i "
  done
  mkdir -p "$TMP/$t"
  render "$TEMPLATES/haproxy.cfg" "$TMP/$t/haproxy.cfg" PORT="$lb_port" SERVERS="${servers%$'\n'}"
  if ! timeout 10 "$HAPROXY_BIN" -c -q -f "$TMP/$t/haproxy.cfg" >"$TMP/$t/check.log" 2>&1; then
    cat "$TMP/$t/check.log" >&2
    fail_target "$t"
    NOTES+=("$t: haproxy -c rejected the generated config")
    continue
  fi
  log "starting HAProxy $t on 127.0.0.1:$lb_port, CPU $LB_CPU -> ${INSTS_OF[$t]}"
  start_bg "$LB_CPU" "$TMP/$t/haproxy.log" "$HAPROXY_BIN" -db -f "$TMP/$t/haproxy.cfg"
  if wait_port "$LAST_PID" "$lb_port" "haproxy ($t)"; then
    LB_PID[$t]=$LAST_PID
    PORT_OF[$t]=$lb_port
    AFFINITY[$t]=$(affinity "$LAST_PID")
  else
    tail -n 20 "$TMP/$t/haproxy.log" >&2 || true
    fail_target "$t"
  fi
done

for t in $TARGETS; do
  [[ -z ${FAILS[$t]:-} ]] || continue
  if ! check_body "http://127.0.0.1:${PORT_OF[$t]}/$SIZE" "$BYTES"; then
    fail_target "$t"
    NOTES+=("$t: the check request did not get 200 and $BYTES bytes")
  fi
done

# ------------------------------------------------------------------- load

# Per target, summed (or listed) over the rounds.
declare -A RUNS_RPS RUNS_P50 RUNS_P99 ERRS REQS STORED RECORDS STORE_ERRS WALL
declare -A READS WRITES RWALL CMDS CPU SHARE LAST_COUNT LAST_OWN OWN_COUNT CATCHUP
LAST_COUNT[embedded]=0
LAST_COUNT[redis]=0
LAST_OWN[embedded]=0
LAST_OWN[redis]=0

# add_cpu TARGET PART TICKS — CPU seconds of PART during TARGET's runs.
add_cpu() {
  CPU[$1|$2]=$(awk -v a="${CPU[$1|$2]:-0}" -v d="$3" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", a + d / hz }')
}

# run_target TARGET ROUND — warm up, measure, check the recording.
run_target() {
  local t=$1 round=$2 insts url out line store count_port before after inst
  local warm_reqs=0 requests rps errs
  read -ra insts <<<"${INSTS_OF[$t]}"
  store=$(store_of "$t")
  url="http://127.0.0.1:${PORT_OF[$t]}/$SIZE"
  count_port=${API_OF[${insts[0]}]}
  if [[ $WARMUP != 0 ]]; then
    out=$TMP/wrk-$t-r$round-warmup.txt
    if wrk_run "$CONNS" "$WARMUP" "$url" "$out"; then
      line=$(grep '^BENCH ' "$out" | tail -n 1 || true)
      [[ -z $line ]] || warm_reqs=$(bench_field "$line" requests)
    fi
  fi
  wait_drained $((LAST_OWN[$store] + warm_reqs)) "${insts[@]}" ||
    NOTES+=("$t${ROUND_TAG}: the store had not caught up ${DRAIN_TIMEOUT}s after the warm-up")
  before=$(count_tx_retry "$count_port" $((LAST_COUNT[$store] + warm_reqs + 1))) || before=""
  local own_before own_after
  declare -A c_before=() c_after=()
  for inst in "${insts[@]}"; do c_before[$inst]=$(instance_counters "$inst" || echo "0 0 0 -"); done
  own_before=${c_before[${insts[0]}]##* }
  local r_t0=$EPOCHREALTIME
  if [[ $store == redis ]]; then redis_stats "$TMP/redis-$t-r$round-before.txt"; fi
  local procs_m=() p_lb=() p_redis=()
  for inst in "${insts[@]}"; do procs_m+=("${PID_OF[$inst]}"); done
  [[ -n ${LB_PID[$t]:-} ]] && p_lb=("${LB_PID[$t]}")
  [[ $store == redis && -n $REDIS_PID ]] && p_redis=("$REDIS_PID")
  local t0_m t0_lb t0_r t0_u t0_all t1_m t1_lb t1_r t1_u t1_all
  t0_m=$(cpu_ticks "${procs_m[@]}")
  t0_lb=$(cpu_ticks "${p_lb[@]}")
  t0_r=$(cpu_ticks "${p_redis[@]}")
  t0_u=$(cpu_ticks "$UPSTREAM_PID")
  t0_all=$(machine_ticks)
  local t0_p t0_l t1_p t1_l
  t0_p=$(machine_ticks "$PROXY_CPU")
  t0_l=$(machine_ticks "$LOAD_CPU")

  out=$TMP/wrk-$t-r$round.txt
  log "$t${ROUND_TAG}: wrk -t $WRK_THREADS -c $CONNS -d $DURATION"
  if ! wrk_run "$CONNS" "$DURATION" "$url" "$out"; then
    log "wrk failed for $t:"
    tail -n 20 "$out" >&2 || true
    fail_target "$t"
    return 0
  fi
  t1_m=$(cpu_ticks "${procs_m[@]}")
  t1_lb=$(cpu_ticks "${p_lb[@]}")
  t1_r=$(cpu_ticks "${p_redis[@]}")
  t1_u=$(cpu_ticks "$UPSTREAM_PID")
  t1_all=$(machine_ticks)
  t1_p=$(machine_ticks "$PROXY_CPU")
  t1_l=$(machine_ticks "$LOAD_CPU")
  local wrk_end=$EPOCHREALTIME
  line=$(grep '^BENCH ' "$out" | tail -n 1 || true)
  if [[ -z $line ]]; then
    log "no BENCH line in wrk output for $t:"
    tail -n 20 "$out" >&2 || true
    fail_target "$t"
    return 0
  fi
  requests=$(bench_field "$line" requests)
  rps=$(bench_field "$line" rps)
  errs=0
  local f
  for f in err_connect err_read err_write err_status err_timeout; do
    errs=$((errs + $(bench_field "$line" "$f")))
  done
  RUNS_RPS[$t]+="$rps "
  RUNS_P50[$t]+="$(bench_field "$line" p50_us) "
  RUNS_P99[$t]+="$(bench_field "$line" p99_us) "
  ERRS[$t]=$((${ERRS[$t]:-0} + errs))
  REQS[$t]=$((${REQS[$t]:-0} + requests))
  local wall_us
  wall_us=$(bench_field "$line" duration_us)
  WALL[$t]=$(awk -v a="${WALL[$t]:-0}" -v b="$wall_us" 'BEGIN { printf "%.3f", a + b / 1e6 }')
  if ((errs > 0)); then
    NOTES+=("$t${ROUND_TAG}: wrk counted $errs errors: $(sed -E 's/.*(err_connect.*)/\1/' <<<"$line")")
  fi
  add_cpu "$t" mediary $((t1_m - t0_m))
  add_cpu "$t" haproxy $((t1_lb - t0_lb))
  add_cpu "$t" redis $((t1_r - t0_r))
  add_cpu "$t" upstream $((t1_u - t0_u))
  add_cpu "$t" machine $((t1_all - t0_all))
  add_cpu "$t" proxy-cpu $((t1_p - t0_p))
  add_cpu "$t" load-cpu $((t1_l - t0_l))
  add_cpu "$t" rest $(((t1_all - t0_all) - (t1_m - t0_m) - (t1_lb - t0_lb) - (t1_r - t0_r) - (t1_u - t0_u)))

  local expect=0
  [[ $own_before == - ]] || expect=$((own_before + requests))
  if ! wait_drained "$expect" "${insts[@]}"; then
    NOTES+=("$t${ROUND_TAG}: the store had not caught up ${DRAIN_TIMEOUT}s after the run")
    fail_target "$t"
  fi
  # Catching up: from wrk's end until the store held every record (less the
  # second of stillness wait_drained waits for).
  local caught
  caught=$(awk -v a="$wrk_end" -v b="$EPOCHREALTIME" 'BEGIN { d = b - a - 1; printf "%.1f", (d < 0 ? 0 : d) }')
  if awk -v a="$caught" -v b="${CATCHUP[$t]:-0}" 'BEGIN { exit !(a > b) }'; then CATCHUP[$t]=$caught; fi
  # The whole cost of the run, catching up included.
  add_cpu "$t" mediary-all $(($(cpu_ticks "${procs_m[@]}") - t0_m))
  add_cpu "$t" redis-all $(($(cpu_ticks "${p_redis[@]}") - t0_r))
  add_cpu "$t" haproxy-all $(($(cpu_ticks "${p_lb[@]}") - t0_lb))
  if [[ $store == redis ]]; then
    redis_stats "$TMP/redis-$t-r$round-after.txt"
    RWALL[$t]=$(awk -v a="${RWALL[$t]:-0}" -v t0="$r_t0" -v t1="$EPOCHREALTIME" 'BEGIN { printf "%.3f", a + t1 - t0 }')
    stats_delta "$TMP/redis-$t-r$round-before.txt" "$TMP/redis-$t-r$round-after.txt" >"$TMP/redis-$t-r$round-delta.txt"
    local d_reads d_writes d_cmds
    d_reads=$(awk '$1 == "total_reads_processed" { print $2 }' "$TMP/redis-$t-r$round-delta.txt")
    d_writes=$(awk '$1 == "total_writes_processed" { print $2 }' "$TMP/redis-$t-r$round-delta.txt")
    d_cmds=$(awk '$1 == "total_commands_processed" { print $2 }' "$TMP/redis-$t-r$round-delta.txt")
    READS[$t]=$((${READS[$t]:-0} + ${d_reads:-0}))
    WRITES[$t]=$((${WRITES[$t]:-0} + ${d_writes:-0}))
    CMDS[$t]=$((${CMDS[$t]:-0} + ${d_cmds:-0}))
    cat "$TMP/redis-$t-r$round-delta.txt" >>"$TMP/redis-$t-deltas.txt"
  fi
  local rec=0 serr=0 r0 e0 q0 r1 e1 q1
  for inst in "${insts[@]}"; do
    c_after[$inst]=$(instance_counters "$inst" || echo "0 0 0 -")
    read -r r0 e0 q0 _ <<<"${c_before[$inst]}"
    read -r r1 e1 q1 _ <<<"${c_after[$inst]}"
    rec=$((rec + r1 - r0))
    serr=$((serr + e1 - e0))
    SHARE[$t|$inst]=$((${SHARE[$t|$inst]:-0} + q1 - q0))
  done
  RECORDS[$t]=$((${RECORDS[$t]:-0} + rec))
  STORE_ERRS[$t]=$((${STORE_ERRS[$t]:-0} + serr))
  after=$(count_tx_retry "$count_port" $((${before:-0} + requests))) || after=""
  own_after=${c_after[${insts[0]}]##* }
  if [[ $own_before != - && $own_after != - && ${OWN_COUNT[$t]:-} != n/a ]]; then
    OWN_COUNT[$t]=$((${OWN_COUNT[$t]:-0} + own_after - own_before))
    LAST_OWN[$store]=$own_after
  else
    OWN_COUNT[$t]=n/a
  fi
  if [[ -n $before && -n $after ]]; then
    [[ ${STORED[$t]:-} == n/a ]] || STORED[$t]=$((${STORED[$t]:-0} + after - before))
    LAST_COUNT[$store]=$after
  else
    STORED[$t]=n/a
    NOTES+=("$t${ROUND_TAG}: counting the transactions through the API failed")
    fail_target "$t"
  fi
  log "$t${ROUND_TAG}: $(printf '%.0f' "$rps") req/s, p99 $(bench_field "$line" p99_us)us, errors $errs; $requests requests, stored +$((${after:-0} - ${before:-0}))"
}

ROUND_TAG=""
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
START=$(date '+%Y-%m-%d %H:%M:%S %Z')
ORDER=()
for t in $TARGETS; do [[ -n ${FAILS[$t]:-} ]] || ORDER+=("$t"); done
for ((round = 1; round <= ROUNDS; round++)); do
  if ((ROUNDS > 1)); then ROUND_TAG=" (round $round/$ROUNDS)"; fi
  if ((round % 2)); then order=("${ORDER[@]}"); else order=(); for t in "${ORDER[@]}"; do order=("$t" "${order[@]}"); done; fi
  for t in "${order[@]}"; do
    [[ -n ${FAILS[$t]:-} && -z ${RUNS_RPS[$t]:-} ]] && continue
    run_target "$t" "$round"
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
if [[ $(sha256sum "$MEDIARY_BIN" | cut -c1-12) != "$BIN_SHA" ]]; then
  NOTES+=("\`$MEDIARY_BIN\` was replaced during the run (another build?): the instances ran the binary with sha256 $BIN_SHA")
fi

# Stop the balancers, then the instances (each drains its spool into the
# store), then Redis; collect what their logs say.
for t in "${!LB_PID[@]}"; do stop_pid "${LB_PID[$t]}"; done
for inst in "${!PID_OF[@]}"; do
  stop_pid "${PID_OF[$inst]}"
  problem=$(log_problems "$inst" "$TMP/$inst/mediary.log")
  if [[ -n $problem ]]; then NOTES+=("$problem"); fi
  while read -r n msg; do
    NOTES+=("$inst logged $n WARN line(s): \`$msg\`")
  done < <(log_warnings "$TMP/$inst/mediary.log")
done
if [[ -n $REDIS_PID ]]; then stop_pid "$REDIS_PID"; fi
stop_upstream

# ------------------------------------------------------------------ report

declare -A RPS P50 P99 US_M
for t in $TARGETS; do
  if [[ -z ${RUNS_RPS[$t]:-} ]]; then
    RPS[$t]=fail
  else
    RPS[$t]=$(median "${RUNS_RPS[$t]}")
    P50[$t]=$(median "${RUNS_P50[$t]}")
    P99[$t]=$(median "${RUNS_P99[$t]}")
  fi
done

per() { # A B -> A/B with 4 decimals, or n/a
  awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a != "" && b > 0) printf "%.4f", a / b; else print "n/a" }'
}
describe() {
  case $1 in
    embedded) echo "1 instance, embedded store" ;;
    redis) echo "1 instance, Redis store" ;;
    haproxy-1) echo "HAProxy → 1 instance, Redis store" ;;
    haproxy-*) echo "HAProxy → $(lb_size "$1") instances, Redis store" ;;
  esac
}

VERDICT="n/a (needs embedded and redis)"
RATIO=$(ratio "${RPS[redis]:-}" "${RPS[embedded]:-}")
MISSED=0
if [[ $RATIO != n/a ]]; then
  if awk -v r="$(per "${RPS[redis]}" "${RPS[embedded]}")" -v t="$TARGET_RATIO" 'BEGIN { exit !(r >= t) }'; then
    VERDICT="**PASS** ($RATIO ≥ $TARGET_RATIO)"
  else
    VERDICT="**FAIL** ($RATIO < $TARGET_RATIO)"
    MISSED=1
  fi
fi

# Recording check per target: stored - requests in [0, CONNS x ROUNDS].
declare -A RECORD_OK
for t in $TARGETS; do
  if [[ -z ${RUNS_RPS[$t]:-} || ${STORED[$t]:-n/a} == n/a ]]; then
    RECORD_OK[$t]="n/a"
    continue
  fi
  extra=$((${STORED[$t]} - ${REQS[$t]}))
  own_ok=1
  [[ ${OWN_COUNT[$t]:-n/a} == n/a || ${OWN_COUNT[$t]} == "${STORED[$t]}" ]] || own_ok=0
  if ((extra >= 0 && extra <= CONNS * ROUNDS && ${STORE_ERRS[$t]:-0} == 0 && own_ok)); then
    RECORD_OK[$t]=ok
  else
    RECORD_OK[$t]="**MISMATCH**"
    FAILED=1
  fi
done

version_of() { "$@" 2>&1 | head -n 1 || true; }
report() {
  local t range_h="" range_sep="" range k inst
  echo "# Cluster benchmark: Redis store vs embedded store, one instance vs HAProxy + instances"
  echo
  echo "- started: $START; $ROUNDS round(s); each target: \`wrk -t $WRK_THREADS -c $CONNS -d $DURATION\` after $(if [[ $WARMUP == 0 ]]; then echo "no warm-up"; else echo "a $WARMUP warm-up"; fi), $METHOD /$SIZE ($BYTES bytes) through a channel routed to one upstream nginx; recording on everywhere"
  echo "- machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r); load average before: $LOAD_BEFORE, after: $LOAD_AFTER"
  echo "- versions: mediary \`$MEDIARY_BIN\` ($(timeout 5 "$MEDIARY_BIN" --version 2>/dev/null | head -n 1 || true), built $(date -u -r "$MEDIARY_BIN" '+%Y-%m-%d %H:%M:%S UTC'), sha256 $BIN_SHA); redis $(if ((USES_REDIS)); then echo "${REDIS_VERSION:-?} (server), $(redis-cli --version | awk '{print $2}') (cli)"; else echo "not used"; fi); haproxy $(if uses_haproxy; then version_of "$HAPROXY_BIN" -v | awk '{print $3}'; else echo "not used"; fi); wrk $(wrk -v 2>&1 | head -n 1 | awk '{print $2}'); nginx $("$NGINX_BIN" -v 2>&1 | sed 's/.*nginx\///')"
  echo "- commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo none)$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo ' (dirty tree)')"
  if ((USES_REDIS)); then echo "- Redis: $REDIS_NOTE; prefix \`$PREFIX\`"; fi
  if pinning; then
    echo "- pinning: every Mediary instance on CPU $PROXY_CPU$( ((USES_REDIS)) && [[ -n $REDIS_PID ]] && echo ", Redis on CPU $REDIS_CPU"); wrk and the upstream on CPU $LOAD_CPU$(uses_haproxy && echo ", HAProxy on CPU $LB_CPU")"
  else
    echo "- pinning: none"
  fi
  for k in upstream redis-server e1 b1 b2 b3 b4 b5 b6 b7 b8 b9 $TARGETS; do
    if [[ -n ${AFFINITY[$k]:-} ]]; then echo "- affinity of $k: ${AFFINITY[$k]}"; fi
  done
  echo
  echo "**On this machine ($(nproc) CPUs) the Mediary instances, HAProxy, Redis, the upstream and wrk all compete for the same cores.** The HAProxy rows show what a balancer and several instances cost and that the cluster records correctly; they do not show scale-out, which needs instances on their own machines."
  if ((ROUNDS > 1)); then
    range_h=" req/s range |"
    range_sep="--:|"
    echo
    echo "req/s, p50 and p99 are medians over the rounds."
  fi
  echo
  echo "| target | setup | req/s |${range_h} p50 | p99 | errors | req/s / embedded | req/s / redis |"
  echo "|---|---|--:|${range_sep}--:|--:|--:|--:|--:|"
  for t in $TARGETS; do
    range=""
    if ((ROUNDS > 1)); then
      range=" $(if [[ -n ${RUNS_RPS[$t]:-} ]]; then spread "${RUNS_RPS[$t]}"; else echo –; fi) |"
    fi
    echo "| $t | $(describe "$t") | $(fmt_rps "${RPS[$t]}") |${range} $(fmt_ms "${P50[$t]:-}") | $(fmt_ms "${P99[$t]:-}") | ${ERRS[$t]:-–} | $(ratio "${RPS[$t]}" "${RPS[embedded]:-}") | $(ratio "${RPS[$t]}" "${RPS[redis]:-}") |"
  done
  echo
  echo "Target (the issue): Redis store ≥ $TARGET_RATIO × embedded store requests/s at $CONNS connections with recording on: redis/embedded = $RATIO → $VERDICT"
  if has redis && [[ -n ${RUNS_RPS[haproxy-1]:-} ]]; then
    echo
    echo "The balancer's own cost: haproxy-1 / redis = $(ratio "${RPS[haproxy-1]}" "${RPS[redis]:-}") (the same instance b1, with and without HAProxy in front)."
  fi

  echo
  echo "## Recording"
  echo
  echo "After each measured run the script waits until every instance's \`mediary_records_stored_total\` has been steady for a second, then counts the transactions in the store through \`GET /transactions\`. *Stored* is how many more the store holds than before the run; it may exceed wrk's completed requests by at most the connections ($CONNS per run): requests in flight when wrk stops are recorded, not counted by wrk. *Store's count* is the same difference in \`mediary_cluster_transactions\` (the store's own count, where this Mediary reports it): it must agree. *Records written* is the instances' \`mediary_records_stored_total\` (a transaction written again at a later stage counts again). *Caught up after* is how long after wrk's end the store held every record (the slowest round): records wait in each instance's spool while the store is behind, so a store that cannot keep up shows here, not in req/s."
  echo
  echo "| target | wrk requests | stored | in flight at the end | store's count | records written | store errors | caught up after | check |"
  echo "|---|--:|--:|--:|--:|--:|--:|--:|---|"
  for t in $TARGETS; do
    [[ -n ${RUNS_RPS[$t]:-} ]] || continue
    local extra="–"
    [[ ${STORED[$t]:-n/a} == n/a ]] || extra=$((${STORED[$t]} - ${REQS[$t]}))
    echo "| $t | ${REQS[$t]} | ${STORED[$t]:-n/a} | $extra | ${OWN_COUNT[$t]:-n/a} | ${RECORDS[$t]:-0} | ${STORE_ERRS[$t]:-0} | ${CATCHUP[$t]:-?} s | ${RECORD_OK[$t]} |"
  done

  local any_redis=0
  for t in $TARGETS; do
    [[ $(store_of "$t") == redis && -n ${RUNS_RPS[$t]:-} ]] && any_redis=1
  done
  if ((any_redis)); then
    echo
    echo "## Redis round trips"
    echo
    echo "From the Redis server's \`INFO\` before and after each measured run (catching up included). *Round trips* is \`total_writes_processed\`: Redis writes its replies once per exchange with a client, so a pipeline, a MULTI/EXEC block or one EVALSHA carrying a whole batch counts once (a reply too large for one write would count more, but the recorder's replies are small). *Socket reads* (\`total_reads_processed\`) is not a count of round trips: a request of a few MB, such as a batch of records, takes hundreds of reads. *Commands* (\`total_commands_processed\`) also counts the commands a Lua script runs. *Per script* is the transactions stored per EVALSHA/EVAL/FCALL: the batch size. All include the instances' background traffic (heartbeats, configuration polls, HAProxy's readiness checks), the \`/metrics\` scrapes with which this script waits for the store, and its two INFO calls per snapshot. Writing each transaction on its own would cost at least one round trip per transaction."
    echo
    echo "| target | stored | round trips | round trips / transaction | round trips / s per instance | transactions per script | socket reads | commands | commands / transaction | batched? |"
    echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|"
    for t in $TARGETS; do
      [[ $(store_of "$t") == redis && -n ${RUNS_RPS[$t]:-} ]] || continue
      local stored=${STORED[$t]:-} n_inst rt_tx batched scripts
      [[ $stored == n/a ]] && stored=""
      read -ra n_inst <<<"${INSTS_OF[$t]}"
      scripts=$(grep -E '^cmd:(evalsha|eval|evalsha_ro|eval_ro|fcall|fcall_ro) ' "$TMP/redis-$t-deltas.txt" 2>/dev/null | awk '{ s += $2 } END { print s + 0 }')
      rt_tx=$(per "${WRITES[$t]:-}" "$stored")
      batched="n/a"
      if [[ $rt_tx != n/a ]]; then
        if awk -v r="$rt_tx" 'BEGIN { exit !(r < 0.1) }'; then batched="yes (< 0.1 per transaction)"; else batched="**no**"; FAILED=1; fi
      fi
      echo "| $t | ${stored:-n/a} | ${WRITES[$t]:-0} | $rt_tx | $(awk -v r="${WRITES[$t]:-0}" -v w="${RWALL[$t]:-0}" -v n="${#n_inst[@]}" 'BEGIN { if (w > 0) printf "%.1f", r / w / n; else print "n/a" }') | $(awk -v a="$stored" -v b="$scripts" 'BEGIN { if (a != "" && b > 0) printf "%.0f", a / b; else print "n/a" }') | ${READS[$t]:-0} | ${CMDS[$t]:-0} | $(per "${CMDS[$t]:-}" "$stored") | $batched |"
    done
    for t in $TARGETS; do
      [[ $(store_of "$t") == redis && -f $TMP/redis-$t-deltas.txt ]] || continue
      echo
      echo "Commands during \`$t\` (INFO commandstats, all rounds):"
      echo
      echo "| command | calls | per stored transaction |"
      echo "|---|--:|--:|"
      local stored=${STORED[$t]:-}
      [[ $stored == n/a ]] && stored=""
      grep '^cmd:' "$TMP/redis-$t-deltas.txt" | awk '{ s[substr($1, 5)] += $2 } END { for (c in s) print s[c], c }' | sort -rn |
        while read -r calls cmd; do
          echo "| $cmd | $calls | $(per "$calls" "$stored") |"
        done
    done
  fi

  local any_lb=0
  for t in $TARGETS; do [[ $t == haproxy-* && -n ${RUNS_RPS[$t]:-} ]] && any_lb=1; done
  if ((any_lb)); then
    echo
    echo "## Balancing"
    echo
    echo "Requests each instance served during the measured runs (\`mediary_worker_requests_total\`):"
    echo
    echo "| target | per instance |"
    echo "|---|---|"
    for t in $TARGETS; do
      [[ $t == haproxy-* && -n ${RUNS_RPS[$t]:-} ]] || continue
      local cells="" total=0
      for inst in ${INSTS_OF[$t]}; do total=$((total + ${SHARE[$t|$inst]:-0})); done
      for inst in ${INSTS_OF[$t]}; do
        cells+="$inst: ${SHARE[$t|$inst]:-0} ($(awk -v a="${SHARE[$t|$inst]:-0}" -v b="$total" 'BEGIN { if (b > 0) printf "%.1f%%", 100 * a / b; else print "–" }')), "
      done
      echo "| $t | ${cells%, } |"
    done
  fi

  echo
  echo "## Where the CPU went"
  echo
  echo "CPU seconds per second of the measured runs (1.00 = one whole core), from /proc; *rest* is the machine's busy time minus the parts: wrk, idle instances, the kernel's own threads (disk writeback), and anything else running on the machine. The last columns are how busy the two CPUs of the split were."
  echo
  echo "| target | Mediary | HAProxy | Redis | upstream | rest (wrk, ...) | machine (of $(nproc)) | CPU $PROXY_CPU | CPU $LOAD_CPU |"
  echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|"
  for t in $TARGETS; do
    [[ -n ${RUNS_RPS[$t]:-} ]] || continue
    local cells="" part
    for part in mediary haproxy redis upstream rest machine proxy-cpu load-cpu; do
      cells+=" $(awk -v c="${CPU[$t|$part]:-0}" -v w="${WALL[$t]:-0}" 'BEGIN { if (w > 0) printf "%.2f", c / w; else print "n/a" }') |"
    done
    echo "| $t |$cells"
  done
  echo
  echo "CPU time per request, from wrk's start until the store had caught up (so the store's work after the run is in):"
  echo
  echo "| target | Mediary µs / request | Redis µs / transaction | HAProxy µs / request |"
  echo "|---|--:|--:|--:|"
  for t in $TARGETS; do
    [[ -n ${RUNS_RPS[$t]:-} ]] || continue
    local us_m us_r us_lb
    us_m=$(awk -v c="${CPU[$t|mediary-all]:-0}" -v n="${REQS[$t]:-0}" 'BEGIN { if (n > 0) printf "%.1f", c * 1e6 / n; else print "n/a" }')
    us_r="–"
    if [[ $(store_of "$t") == redis && -n $REDIS_PID ]]; then
      us_r=$(awk -v c="${CPU[$t|redis-all]:-0}" -v n="${REQS[$t]:-0}" 'BEGIN { if (n > 0) printf "%.1f", c * 1e6 / n; else print "n/a" }')
    fi
    us_lb="–"
    if [[ $t == haproxy-* ]]; then
      us_lb=$(awk -v c="${CPU[$t|haproxy-all]:-0}" -v n="${REQS[$t]:-0}" 'BEGIN { if (n > 0) printf "%.1f", c * 1e6 / n; else print "n/a" }')
    fi
    US_M[$t]=$us_m
    echo "| $t | $us_m | $us_r | $us_lb |"
  done
  if [[ -n ${US_M[embedded]:-} && -n ${US_M[redis]:-} && ${US_M[redis]} != n/a && ${US_M[embedded]} != n/a ]]; then
    echo
    echo "An estimate, not a measurement: where Mediary's own core is the limit and Redis runs elsewhere (its own machine, as in production), req/s would go as 1 / Mediary's CPU per request, so the Redis store would reach about $(awk -v e="${US_M[embedded]}" -v r="${US_M[redis]}" 'BEGIN { printf "%.2f", e / r }') of the embedded store's req/s (${US_M[embedded]} µs / ${US_M[redis]} µs). The measured ratio above is lower by what Redis' own CPU takes from the same machine."
  fi

  notes_list "## Notes"
}

write_report cluster
log "report written to $OUT_FILE"
if ((FAILED)); then
  log "some measurements or checks failed"
  exit 1
fi
if ((MISSED)); then
  log "the Redis store missed the target ($RATIO < $TARGET_RATIO)"
  exit 2
fi
