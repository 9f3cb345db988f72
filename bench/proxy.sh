#!/usr/bin/env bash
# bench/proxy.sh — Mediary vs nginx as a reverse proxy, side by side.
#
# Measures requests/s and p50/p99 latency with wrk for each body size and
# connection count, against:
#   direct   the upstream nginx alone (static files, keep-alive)
#   nginx    nginx as a keep-alive reverse proxy in front of that upstream
#   mediary  `mediary run --config <generated> --workers 1` in front of it,
#            recording every transaction (the default)
#   mediary-norec  the same with `[recording] enabled = false`: the cost of
#            recording is the ratio of the two
#   mediary-router  `mediary` with the content-based router plugin
#            (plugins/rust/router, reused instances) on the channel: the cost
#            of a plugin is the ratio to `mediary`
#   mediary-router-fresh  the same with `isolation = "per-request"` (a fresh
#            instance for every request)
# and prints a Markdown table (also written to bench/results/proxy-<date>.md).
# See bench/README.md for how to run it and how to read the output.
#
# Environment:
#   DURATION      wrk duration of each measured run        (default 10s)
#   WARMUP        wrk duration of the warm-up before each  (default 2s, 0 = none)
#   ROUNDS        repeat the whole sweep N times, report medians (default 1)
#   CONNS         connection counts                       (default "8 64")
#   SIZES         response body sizes, N, Nk or Nm         (default "1k 64k")
#   TARGETS       which targets to run                     (default "direct nginx mediary")
#   METHOD        GET, or POST with a request body of the same size as the
#                 response (the upstream answers POST like GET)  (default GET)
#   MEDIARY_BIN   use this mediary binary, skip `cargo build`
#   ROUTER_WASM   use this router component, skip building plugins/
#   NGINX_BIN     nginx binary                             (default: from PATH or /usr/sbin/nginx)
#   WRK_THREADS   wrk threads (capped at the conn count)   (default 1)
#   PROXY_CPU     CPU for the proxy (and the upstream in "direct")   (default 0)
#   LOAD_CPU      CPU for wrk (and the upstream behind a proxy)      (default 1)
#   PIN           1 = pin with taskset, 0 = don't          (default 1; 0 if < 2 CPUs)
#   RESULTS_DIR   where the Markdown report goes           (default bench/results)
#   KEEP_TMP      1 = keep the temp dir (configs, logs, raw wrk output)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
TEMPLATES=$SCRIPT_DIR/templates
LUA=$SCRIPT_DIR/wrk-report.lua

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-1}
CONNS=${CONNS:-"8 64"}
SIZES=${SIZES:-"1k 64k"}
TARGETS=${TARGETS:-"direct nginx mediary"}
METHOD=${METHOD:-GET}
MEDIARY_BIN=${MEDIARY_BIN:-}
ROUTER_WASM=${ROUTER_WASM:-}
NGINX_BIN=${NGINX_BIN:-}
WRK_THREADS=${WRK_THREADS:-1}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PIN=${PIN:-1}
RESULTS_DIR=${RESULTS_DIR:-$SCRIPT_DIR/results}
KEEP_TMP=${KEEP_TMP:-0}

READY_TIMEOUT=30     # seconds to wait for a server to come up
READY_LINE='Mediary is ready.'

log() { printf '[proxy.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- processes

PIDS=()
TMP=""

# Stop one process we started: TERM, wait up to 5 s, then KILL it and the
# children it had (nginx workers).
stop_pid() {
  local pid=$1 kids i k
  if kill -0 "$pid" 2>/dev/null; then
    kids=$(pgrep -P "$pid" 2>/dev/null || true)
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid did not stop on TERM; killing it and its children"
      kill -KILL "$pid" 2>/dev/null || true
      for k in $kids; do
        kill -KILL "$k" 2>/dev/null || true
      done
    fi
  fi
  wait "$pid" 2>/dev/null || true
  local keep=() p
  for p in "${PIDS[@]}"; do
    [[ $p == "$pid" ]] || keep+=("$p")
  done
  PIDS=("${keep[@]}")
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local pid
  for pid in "${PIDS[@]}"; do
    stop_pid "$pid"
  done
  if [[ -n $TMP && -d $TMP ]]; then
    if [[ $KEEP_TMP == 1 ]]; then
      log "kept temp dir $TMP"
    else
      rm -rf "$TMP"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

pinning() { [[ $PIN == 1 ]]; }

# start_bg CPU LOGFILE CMD... — start CMD in the background (pinned to CPU),
# stdout+stderr to LOGFILE; its pid ends up in LAST_PID.
LAST_PID=""
start_bg() {
  local cpu=$1 logfile=$2
  shift 2
  if pinning; then
    taskset -c "$cpu" "$@" >"$logfile" 2>&1 &
  else
    "$@" >"$logfile" 2>&1 &
  fi
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# -------------------------------------------------------------------- ports

USED_PORTS=" "
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_port VAR — a port nothing listens on, below the ephemeral range.
free_port() {
  local p i
  for ((i = 0; i < 500; i++)); do
    p=$((20000 + RANDOM % 12000))
    [[ $USED_PORTS == *" $p "* ]] && continue
    if ! port_open "$p"; then
      USED_PORTS+="$p "
      printf -v "$1" '%s' "$p"
      return 0
    fi
  done
  die "no free port found"
}

# wait_port PID PORT WHAT — wait until PORT accepts connections.
wait_port() {
  local pid=$1 port=$2 what=$3 i
  for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { log "$what exited during start-up"; return 1; }
    port_open "$port" && return 0
    sleep 0.1
  done
  log "$what did not listen on $port within ${READY_TIMEOUT}s"
  return 1
}

# -------------------------------------------------------------------- utils

# render TEMPLATE OUT KEY=VALUE... — replace @KEY@ with VALUE.
render() {
  local tpl=$1 out=$2 kv key val esc args=()
  shift 2
  for kv in "$@"; do
    key=${kv%%=*}
    val=${kv#*=}
    esc=$(printf '%s' "$val" | sed -e 's/[\\|&]/\\&/g')
    args+=(-e "s|@${key}@|${esc}|g")
  done
  sed "${args[@]}" "$tpl" >"$out"
  if grep -q '@[A-Z_]*@' "$out"; then
    die "unfilled placeholder in $out: $(grep -o '@[A-Z_]*@' "$out" | head -1)"
  fi
}

# size_bytes 64k -> 65536
size_bytes() {
  local s=${1,,}
  case $s in
    *[0-9]) echo "$s" ;;
    *k) echo $((${s%k} * 1024)) ;;
    *m) echo $((${s%m} * 1024 * 1024)) ;;
    *) die "bad size '$1' (use N, Nk or Nm)" ;;
  esac
}

# secs 10s|2m|1h|7 -> whole seconds (rounded up)
secs() {
  local d=$1
  case $d in
    *ms) echo 1 ;;
    *s) echo "${d%s}" ;;
    *m) echo $((${d%m} * 60)) ;;
    *h) echo $((${d%h} * 3600)) ;;
    *) echo "$d" ;;
  esac
}

has() { [[ " $TARGETS " == *" $1 "* ]]; }

# ----------------------------------------------------------------- checks

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "bad ROUNDS '$ROUNDS'"
for s in $SIZES; do size_bytes "$s" >/dev/null; done
for c in $CONNS; do [[ $c =~ ^[1-9][0-9]*$ ]] || die "bad connection count '$c'"; done
for t in $TARGETS; do
  case $t in direct | nginx | mediary | mediary-norec | mediary-router | mediary-router-fresh) ;; *) die "unknown target '$t'" ;; esac
done
[[ $METHOD == GET || $METHOD == POST ]] || die "bad METHOD '$METHOD' (GET or POST)"
[[ $(secs "$DURATION") =~ ^[0-9]+$ ]] || die "bad DURATION '$DURATION' (use e.g. 10s)"
[[ $WARMUP == 0 || $(secs "$WARMUP") =~ ^[0-9]+$ ]] || die "bad WARMUP '$WARMUP'"

ensure_tools() {
  if [[ -z $NGINX_BIN ]]; then
    NGINX_BIN=$(command -v nginx || true)
    [[ -z $NGINX_BIN && -x /usr/sbin/nginx ]] && NGINX_BIN=/usr/sbin/nginx
  fi
  if [[ -z $NGINX_BIN ]] || ! command -v wrk >/dev/null; then
    log "nginx and/or wrk missing; installing nginx-light and wrk"
    local sudo=()
    [[ $EUID -ne 0 ]] && sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get install -y nginx-light wrk ||
      { "${sudo[@]}" apt-get update && "${sudo[@]}" apt-get install -y nginx-light wrk; }
    NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
  fi
  [[ -x $NGINX_BIN ]] || die "nginx not found"
  command -v wrk >/dev/null || die "wrk not found"
  command -v curl >/dev/null || log "curl not found: skipping response checks"
  if pinning; then
    if ! command -v taskset >/dev/null; then
      log "taskset not found: not pinning"
      PIN=0
    elif (($(nproc) < 2)); then
      log "fewer than 2 CPUs: not pinning"
      PIN=0
    fi
  fi
}

ensure_tools

has_mediary() { has mediary || has mediary-norec || has mediary-router || has mediary-router-fresh; }

if has_mediary; then
  if [[ -z $MEDIARY_BIN ]]; then
    log "building mediary (cargo build --release -p mediary)"
    (cd "$ROOT" && cargo build --release -p mediary) || die "cargo build failed"
    target_dir=${CARGO_TARGET_DIR:-target}
    [[ $target_dir == /* ]] || target_dir=$ROOT/$target_dir
    MEDIARY_BIN=$target_dir/release/mediary
  fi
  [[ -x $MEDIARY_BIN ]] || die "mediary binary not found or not executable: $MEDIARY_BIN"
fi
if has mediary-router || has mediary-router-fresh; then
  if [[ -z $ROUTER_WASM ]]; then
    log "building the router plugin (cargo build --release in plugins/)"
    (cd "$ROOT/plugins" && cargo build --release -p mediary-router --target wasm32-wasip2) ||
      die "building plugins/rust/router failed (rustup target add wasm32-wasip2?)"
    ROUTER_WASM=$ROOT/plugins/target/wasm32-wasip2/release/mediary_router.wasm
  fi
  [[ -f $ROUTER_WASM ]] || die "router component not found: $ROUTER_WASM"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/mediary-bench.XXXXXX")
USER_DIRECTIVE=""
# nginx run by root drops its worker to "nobody", which can't read the
# 0700 temp dir; keep the worker as root for this throw-away setup.
[[ $EUID -eq 0 ]] && USER_DIRECTIVE="user root;"

mkdir -p "$TMP/www"
for s in $SIZES; do
  head -c "$(size_bytes "$s")" /dev/urandom >"$TMP/www/$s"
done

# --------------------------------------------------------------- servers

UPSTREAM_PORT=""
UPSTREAM_PID=""

start_nginx() { # NAME CPU TEMPLATE PORT [KEY=VALUE...]; pid in LAST_PID
  local name=$1 cpu=$2 tpl=$3 port=$4
  shift 4
  local dir=$TMP/$name
  mkdir -p "$dir"
  render "$tpl" "$dir/nginx.conf" DIR="$dir" PORT="$port" \
    USER_DIRECTIVE="$USER_DIRECTIVE" "$@"
  start_bg "$cpu" "$dir/stderr.log" "$NGINX_BIN" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
  wait_port "$LAST_PID" "$port" "nginx ($name)" || {
    tail -n 20 "$dir/stderr.log" "$dir/error.log" >&2 2>/dev/null || true
    return 1
  }
}

start_upstream() { # CPU
  free_port UPSTREAM_PORT
  start_nginx upstream "$1" "$TEMPLATES/upstream.nginx.conf" "$UPSTREAM_PORT" ROOT="$TMP/www" ||
    die "upstream nginx failed to start"
  UPSTREAM_PID=$LAST_PID
}

stop_upstream() {
  if [[ -n $UPSTREAM_PID ]]; then stop_pid "$UPSTREAM_PID"; fi
  UPSTREAM_PID=""
}

# start_mediary NAME PORT RECORDING [PLUGIN] — pid in LAST_PID; 1 if it did not
# become ready. RECORDING is true or false; NAME is its folder under the temp
# dir; PLUGIN, if given, is the channel's `plugin = {...}` line.
start_mediary() {
  local name=$1 port=$2 recording=$3 plugin=${4:-} api_port dir=$TMP/$1 i
  free_port api_port
  rm -rf "$dir"
  mkdir -p "$dir"
  render "$TEMPLATES/mediary.toml" "$dir/mediary.toml" \
    PORT="$port" API_PORT="$api_port" UPSTREAM_PORT="$UPSTREAM_PORT" RECORDING="$recording" \
    PLUGIN="$plugin"
  # A config mistake is clearer from check-config than from a failed start.
  local rc=0
  timeout 10 "$MEDIARY_BIN" check-config --config "$dir/mediary.toml" >"$dir/check-config.log" 2>&1 || rc=$?
  if ((rc == 64)); then
    log "mediary check-config rejected $dir/mediary.toml:"
    cat "$dir/check-config.log" >&2
    return 1
  fi
  start_bg "$PROXY_CPU" "$dir/mediary.log" \
    "$MEDIARY_BIN" run --config "$dir/mediary.toml" --workers 1
  for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    grep -qF "$READY_LINE" "$dir/mediary.log" 2>/dev/null && return 0
    if ! kill -0 "$LAST_PID" 2>/dev/null; then
      log "mediary exited during start-up; log tail:"
      tail -n 30 "$dir/mediary.log" >&2 || true
      return 1
    fi
    sleep 0.1
  done
  log "mediary did not log '$READY_LINE' within ${READY_TIMEOUT}s; log tail:"
  tail -n 30 "$dir/mediary.log" >&2 || true
  return 1
}

# affinity PID — which CPUs the process, its threads and its child processes
# (nginx workers) may run on, as seen after start-up.
affinity() {
  pinning || { echo "not pinned"; return; }
  local p all procs=()
  mapfile -t procs < <(echo "$1"; pgrep -P "$1" 2>/dev/null || true)
  all=$(for p in "${procs[@]}"; do
    taskset -a -pc "$p" 2>/dev/null || true
  done | sed 's/.*: //' | sort | uniq -c |
    awk '{printf "%s%d thread(s) on CPU %s", (NR > 1 ? ", " : ""), $1, $2}')
  echo "${all:-unknown}"
}

# ------------------------------------------------------------------- load

# Per point "target|size|conns": space-separated values, one per round.
declare -A RUNS_RPS RUNS_P50 RUNS_P99 ERRS FAILS PORT_OF
NOTES=()
FAILED=0

fail_point() { FAILS[$1]=1; FAILED=1; }

# check_body URL BYTES — GET once and check status and length.
check_body() {
  command -v curl >/dev/null || return 0
  local got
  local data=()
  [[ $METHOD == POST ]] && data=(--data-binary "@$TMP/www/$(basename "$1")")
  got=$(curl -s -o /dev/null --max-time 5 "${data[@]}" -w '%{http_code} %{size_download}' "$1" || true)
  [[ $got == "200 $2" ]] && return 0
  log "check failed for $1: expected '200 $2', got '$got'"
  return 1
}

# wrk_run CONNS DURATION URL OUT — run wrk pinned to LOAD_CPU, bounded in time.
wrk_run() {
  local c=$1 d=$2 url=$3 out=$4 t=$WRK_THREADS guard pid rc=0
  if ((t > c)); then t=$c; fi
  guard=$(($(secs "$d") + 30))
  local cmd=(env WRK_METHOD="$METHOD" WRK_BODY_FILE="$TMP/www/${url##*/}" timeout -k 5 "$guard" wrk -t "$t" -c "$c" -d "$d" --latency -s "$LUA" "$url")
  if pinning; then cmd=(taskset -c "$LOAD_CPU" "${cmd[@]}"); fi
  "${cmd[@]}" >"$out" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait "$pid" || rc=$?
  local keep=() p
  for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
  return "$rc"
}

# check_target TARGET — check every body through TARGET; failed points are
# marked and skipped later.
check_target() {
  local target=$1 s c
  for s in $SIZES; do
    if ! check_body "http://127.0.0.1:${PORT_OF[$target]}/$s" "$(size_bytes "$s")"; then
      for c in $CONNS; do fail_point "$target|$s|$c"; done
    fi
  done
}

# run_point TARGET SIZE CONNS ROUND — warm up, measure, record.
run_point() {
  local target=$1 s=$2 c=$3 round=$4
  local key="$target|$s|$c" bytes url out line kv
  [[ -n ${FAILS[$key]:-} ]] && return 0
  bytes=$(size_bytes "$s")
  url="http://127.0.0.1:${PORT_OF[$target]}/$s"
  if [[ $WARMUP != 0 ]]; then
    wrk_run "$c" "$WARMUP" "$url" "$TMP/wrk-$target-$s-$c-r$round-warmup.txt" || true
  fi
  out="$TMP/wrk-$target-$s-$c-r$round.txt"
  log "$target $s c=$c${ROUND_TAG}: wrk -d $DURATION"
  if ! wrk_run "$c" "$DURATION" "$url" "$out"; then
    log "wrk failed for $key:"
    tail -n 20 "$out" >&2 || true
    fail_point "$key"
    return 0
  fi
  line=$(grep '^BENCH ' "$out" | tail -n 1 || true)
  if [[ -z $line ]]; then
    log "no BENCH line in wrk output for $key:"
    tail -n 20 "$out" >&2 || true
    fail_point "$key"
    return 0
  fi
  local requests=0 rps=0 p50_us=0 p99_us=0 bytes_total=0
  local err_connect=0 err_read=0 err_write=0 err_status=0 err_timeout=0
  for kv in ${line#BENCH }; do
    case ${kv%%=*} in
      requests | rps | p50_us | p99_us | err_connect | err_read | err_write | err_status | err_timeout)
        printf -v "${kv%%=*}" '%s' "${kv#*=}" ;;
      bytes) bytes_total=${kv#*=} ;;
    esac
  done
  RUNS_RPS[$key]+="$rps "
  RUNS_P50[$key]+="$p50_us "
  RUNS_P99[$key]+="$p99_us "
  local errs=$((err_connect + err_read + err_write + err_status + err_timeout))
  ERRS[$key]=$((${ERRS[$key]:-0} + errs))
  if ((errs > 0)); then
    NOTES+=("$target $s c=$c${ROUND_TAG}: errors connect=$err_connect read=$err_read write=$err_write status(non-2xx/3xx)=$err_status timeout=$err_timeout")
  fi
  if ((requests > 0 && bytes_total / requests < bytes)); then
    NOTES+=("$target $s c=$c${ROUND_TAG}: only $((bytes_total / requests)) bytes/response on average (body is $bytes)")
  fi
  log "$target $s c=$c${ROUND_TAG}: $(printf '%.0f' "$rps") req/s, p50 ${p50_us}us, p99 ${p99_us}us, errors $errs"
}

# sweep TARGET... — ROUNDS x sizes x conns; at each point the targets run
# back to back (order alternating between rounds) so they see the same noise.
ROUND_TAG=""
sweep() {
  local round s c t order
  for ((round = 1; round <= ROUNDS; round++)); do
    if ((ROUNDS > 1)); then ROUND_TAG=" (round $round/$ROUNDS)"; fi
    if ((round % 2)); then order=("$@"); else order=(); for t in "$@"; do order=("$t" "${order[@]}"); done; fi
    for s in $SIZES; do
      for c in $CONNS; do
        for t in "${order[@]}"; do
          run_point "$t" "$s" "$c" "$round"
        done
      done
    done
  done
}

# ------------------------------------------------------------------- runs

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
START=$(date '+%Y-%m-%d %H:%M:%S %Z')
declare -A AFFINITY

if has direct; then
  log "== direct: upstream on CPU $PROXY_CPU, wrk on CPU $LOAD_CPU"
  start_upstream "$PROXY_CPU"
  PORT_OF[direct]=$UPSTREAM_PORT
  AFFINITY[direct]="upstream: $(affinity "$UPSTREAM_PID")"
  check_target direct
  sweep direct
  stop_upstream
fi

if has nginx || has_mediary; then
  log "== proxies: proxy on CPU $PROXY_CPU, upstream and wrk on CPU $LOAD_CPU"
  start_upstream "$LOAD_CPU"
  proxies=()
  proxy_pid=""
  if has nginx; then
    free_port NGINX_PORT
    if start_nginx proxy "$PROXY_CPU" "$TEMPLATES/proxy.nginx.conf" "$NGINX_PORT" UPSTREAM_PORT="$UPSTREAM_PORT"; then
      proxy_pid=$LAST_PID
      PORT_OF[nginx]=$NGINX_PORT
      AFFINITY[nginx]="$(affinity "$proxy_pid")"
      proxies+=(nginx)
    else
      for s in $SIZES; do for c in $CONNS; do fail_point "nginx|$s|$c"; done; done
    fi
  fi
  mediary_pids=()
  for t in mediary mediary-norec mediary-router mediary-router-fresh; do
    has "$t" || continue
    free_port MEDIARY_PORT
    recording=true
    [[ $t == mediary-norec ]] && recording=false
    plugin=""
    # Every bench path (/1k, /64k) has no FHIR resource type, so the router sends it to its
    # fallback route, after the whole decision (config, path, log line).
    router_config='config = { routes = { Patient = "upstream" }, fallback = "upstream" }'
    case $t in
      mediary-router) plugin="plugin = { file = \"$ROUTER_WASM\", isolation = \"reuse\", $router_config }" ;;
      mediary-router-fresh) plugin="plugin = { file = \"$ROUTER_WASM\", isolation = \"per-request\", $router_config }" ;;
    esac
    if start_mediary "$t" "$MEDIARY_PORT" "$recording" "$plugin"; then
      mediary_pids+=("$t:$LAST_PID")
      PORT_OF[$t]=$MEDIARY_PORT
      AFFINITY[$t]="$(affinity "$LAST_PID")"
      proxies+=("$t")
    else
      for s in $SIZES; do for c in $CONNS; do fail_point "$t|$s|$c"; done; done
    fi
  done
  AFFINITY[upstream]="$(affinity "$UPSTREAM_PID")"
  for t in "${proxies[@]}"; do check_target "$t"; done
  if ((${#proxies[@]} > 0)); then sweep "${proxies[@]}"; fi
  if [[ -n $proxy_pid ]]; then
    stop_pid "$proxy_pid"
    if grep -q 'buffered to a temporary file' "$TMP/proxy/error.log" 2>/dev/null; then
      NOTES+=("the nginx proxy spooled some upstream responses to temporary files (see proxy_buffers)")
    fi
  fi
  for entry in "${mediary_pids[@]}"; do
    t=${entry%%:*}
    stop_pid "${entry#*:}"
    mlog=$TMP/$t/mediary.log
    if grep -qE 'panic|ERROR' "$mlog"; then
      NOTES+=("$t logged $(grep -cE 'panic|ERROR' "$mlog") line(s) with ERROR/panic, e.g. \`$(grep -E 'panic|ERROR' "$mlog" | head -n 1 | sed 's/\x1b\[[0-9;]*m//g' | tr -d '`' | cut -c1-200)\`")
    fi
  done
  stop_upstream
fi

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ------------------------------------------------------------------ report

# median "v1 v2 ..." (average of the middle two for an even count)
median() {
  tr ' ' '\n' <<<"$1" | grep . | sort -g |
    awk '{ v[NR] = $1 } END { if (NR == 0) exit; if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
# spread "v1 v2 ..." -> "min–max" as integers
spread() {
  tr ' ' '\n' <<<"$1" | grep . | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f–%.0f", lo, hi }'
}

# Fold the rounds into one value per point (median), or "fail".
declare -A RPS P50 P99
for t in $TARGETS; do
  for s in $SIZES; do
    for c in $CONNS; do
      key="$t|$s|$c"
      if [[ -n ${FAILS[$key]:-} || -z ${RUNS_RPS[$key]:-} ]]; then
        RPS[$key]=fail
      else
        RPS[$key]=$(median "${RUNS_RPS[$key]}")
        P50[$key]=$(median "${RUNS_P50[$key]}")
        P99[$key]=$(median "${RUNS_P99[$key]}")
      fi
    done
  done
done

fmt_rps() { if [[ -z $1 || $1 == fail ]]; then echo "${1:-n/a}"; else printf '%.0f' "$1"; fi; }
fmt_ms() { if [[ -z $1 ]]; then echo "–"; else awk -v us="$1" 'BEGIN { printf "%.3f ms", us / 1000 }'; fi; }
ratio() { # A B -> A/B with 2 decimals, or n/a
  if [[ -z $1 || -z $2 || $1 == fail || $2 == fail ]]; then
    echo "n/a"
  else
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'
  fi
}

report() {
  local t s c key range_h="" range_sep="" range
  echo "# Proxy benchmark: Mediary vs nginx"
  echo
  echo "- started: $START; $ROUNDS round(s) of wrk -d $DURATION per point, each after $(if [[ $WARMUP == 0 ]]; then echo "no warm-up"; else echo "a $WARMUP warm-up"; fi); wrk threads: $WRK_THREADS"
  echo "- host: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')); load average before: $LOAD_BEFORE, after: $LOAD_AFTER"
  if pinning; then
    echo "- pinning: proxy (nginx or mediary) on CPU $PROXY_CPU; wrk on CPU $LOAD_CPU; upstream on CPU $PROXY_CPU for direct, on CPU $LOAD_CPU behind a proxy"
  else
    echo "- pinning: none"
  fi
  echo "- nginx: $("$NGINX_BIN" -v 2>&1 | sed 's/.*: //'); wrk: $(wrk -v 2>&1 | head -n 1 | awk '{print $2}')"
  if has_mediary; then
    echo "- mediary: \`$MEDIARY_BIN\` ($(timeout 5 "$MEDIARY_BIN" --version 2>/dev/null | head -n 1 || true))"
  fi
  echo "- commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo none)$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo ' (dirty tree)')"
  echo "- method: $METHOD$( [[ $METHOD == POST ]] && echo ' (request body the same size as the response body)')"
  for t in direct upstream nginx mediary mediary-norec mediary-router mediary-router-fresh; do
    if [[ -n ${AFFINITY[$t]:-} ]]; then echo "- affinity of $t: ${AFFINITY[$t]}"; fi
  done
  if ((ROUNDS > 1)); then
    range_h=" req/s range |"
    range_sep="--:|"
    echo "- req/s, p50 and p99 are medians over the rounds"
  fi
  echo
  echo "| target | body | conns | req/s |${range_h} p50 | p99 | errors |"
  echo "|---|---|--:|--:|${range_sep}--:|--:|--:|"
  for s in $SIZES; do
    for c in $CONNS; do
      for t in $TARGETS; do
        key="$t|$s|$c"
        range=""
        if ((ROUNDS > 1)); then
          range=" $(if [[ -n ${RUNS_RPS[$key]:-} ]]; then spread "${RUNS_RPS[$key]}"; else echo –; fi) |"
        fi
        echo "| $t | $s | $c | $(fmt_rps "${RPS[$key]}") |${range} $(fmt_ms "${P50[$key]:-}") | $(fmt_ms "${P99[$key]:-}") | ${ERRS[$key]:-–} |"
      done
    done
  done
  if has mediary && has nginx; then
    echo
    echo "Mediary / nginx (req/s ratio above 1.00 and p99 ratio below 1.00 favour Mediary):"
    echo
    echo "| body | conns | nginx req/s | mediary req/s | req/s mediary/nginx | p99 mediary/nginx |"
    echo "|---|--:|--:|--:|--:|--:|"
    for s in $SIZES; do
      for c in $CONNS; do
        echo "| $s | $c | $(fmt_rps "${RPS[nginx|$s|$c]}") | $(fmt_rps "${RPS[mediary|$s|$c]}") | $(ratio "${RPS[mediary|$s|$c]}" "${RPS[nginx|$s|$c]}") | $(ratio "${P99[mediary|$s|$c]:-}" "${P99[nginx|$s|$c]:-}") |"
      done
    done
  fi
  if has mediary && has mediary-norec; then
    echo
    echo "Cost of recording (mediary = recording every transaction, mediary-norec = recording off; a req/s ratio of 0.90 means recording costs 10%):"
    echo
    echo "| body | conns | recording off req/s | recording on req/s | req/s on/off | p99 on/off |"
    echo "|---|--:|--:|--:|--:|--:|"
    for s in $SIZES; do
      for c in $CONNS; do
        echo "| $s | $c | $(fmt_rps "${RPS[mediary-norec|$s|$c]}") | $(fmt_rps "${RPS[mediary|$s|$c]}") | $(ratio "${RPS[mediary|$s|$c]}" "${RPS[mediary-norec|$s|$c]}") | $(ratio "${P99[mediary|$s|$c]:-}" "${P99[mediary-norec|$s|$c]:-}") |"
      done
    done
  fi
  local r
  for r in mediary-router mediary-router-fresh; do
    has mediary && has "$r" || continue
    echo
    echo "Cost of the router plugin ($r = the same channel with plugins/rust/router; a req/s ratio of 0.90 means the plugin costs 10%):"
    echo
    echo "| body | conns | no plugin req/s | $r req/s | req/s plugin/none | p99 plugin/none |"
    echo "|---|--:|--:|--:|--:|--:|"
    for s in $SIZES; do
      for c in $CONNS; do
        echo "| $s | $c | $(fmt_rps "${RPS[mediary|$s|$c]}") | $(fmt_rps "${RPS[$r|$s|$c]}") | $(ratio "${RPS[$r|$s|$c]}" "${RPS[mediary|$s|$c]}") | $(ratio "${P99[$r|$s|$c]:-}" "${P99[mediary|$s|$c]:-}") |"
      done
    done
  done
  if ((${#NOTES[@]} > 0)); then
    echo
    echo "Notes:"
    echo
    local n
    for n in "${NOTES[@]}"; do echo "- $n"; done
  fi
}

mkdir -p "$RESULTS_DIR"
OUT_FILE=$RESULTS_DIR/proxy-$(date '+%Y-%m-%d-%H%M%S').md
report >"$OUT_FILE"
echo
cat "$OUT_FILE"
echo
log "report written to $OUT_FILE"
if ((FAILED)); then
  log "some measurements failed (marked 'fail')"
  exit 1
fi
