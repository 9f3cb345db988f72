# shellcheck shell=bash
# bench/lib.sh — what the benchmark scripts share. Sourced, never run.
#
# A script sets `set -euo pipefail` and BENCH_NAME (its name in log lines),
# then sources this file, which owns:
#   - log lines and fatal errors (log, die);
#   - the processes a script starts (start_bg, track_pid, stop_pid) and its
#     temporary directory (make_tmp): both are cleaned up on exit, Ctrl-C and
#     errors, processes in the reverse order of their start;
#   - CPU pinning (pinning, on_cpu, check_pinning, affinity);
#   - ports on 127.0.0.1 (port_open, free_port, wait_port);
#   - tools: apt_install, ensure_nginx_wrk, build_mediary;
#   - the servers every benchmark needs: the upstream nginx (make_bodies,
#     start_nginx, start_upstream, stop_upstream) and Mediary from
#     templates/mediary.toml (start_mediary);
#   - one wrk run with wrk-report.lua (wrk_run, check_body, bench_field);
#   - numbers for reports (size_bytes, secs, median, spread, fmt_rps, fmt_ms,
#     ratio).
# Functions read the script's settings as globals (PIN, LOAD_CPU, PROXY_CPU,
# METHOD, WRK_THREADS, KEEP_TMP, READY_TIMEOUT, ...); defaults are set here
# only where a script may leave them out.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
TEMPLATES=$BENCH_DIR/templates
LUA=$BENCH_DIR/wrk-report.lua

BENCH_NAME=${BENCH_NAME:-bench}
PIN=${PIN:-1}
KEEP_TMP=${KEEP_TMP:-0}
READY_TIMEOUT=${READY_TIMEOUT:-30} # seconds to wait for a server to come up
STOP_TIMEOUT=${STOP_TIMEOUT:-5}    # seconds a process gets between TERM and KILL
READY_LINE='Mediary is ready.'

log() { printf '[%s %(%H:%M:%S)T] %s\n' "$BENCH_NAME" -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- processes

PIDS=()
TMP=""

track_pid() { PIDS+=("$1"); }
untrack_pid() {
  local keep=() p
  for p in "${PIDS[@]}"; do
    [[ $p == "$1" ]] || keep+=("$p")
  done
  PIDS=("${keep[@]}")
}

# stop_pid PID [SECONDS] — stop one process we started: TERM, wait up to
# SECONDS (default STOP_TIMEOUT), then KILL it and the children it had (nginx
# workers).
stop_pid() {
  local pid=$1 wait_s=${2:-$STOP_TIMEOUT} kids i k
  if kill -0 "$pid" 2>/dev/null; then
    kids=$(pgrep -P "$pid" 2>/dev/null || true)
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < wait_s * 10; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid did not stop within ${wait_s}s of TERM; killing it and its children"
      kill -KILL "$pid" 2>/dev/null || true
      for k in $kids; do
        kill -KILL "$k" 2>/dev/null || true
      done
    fi
  fi
  wait "$pid" 2>/dev/null || true
  untrack_pid "$pid"
}

# Runs before the script's exit: the script may set CLEANUP_HOOK to a function
# run first (after the processes are stopped, before the temp dir goes).
CLEANUP_HOOK=""
cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    stop_pid "${PIDS[i]}"
  done
  if [[ -n $CLEANUP_HOOK ]]; then "$CLEANUP_HOOK" || true; fi
  for i in "${CGROUPS[@]}"; do rmdir "$i" 2>/dev/null || true; done
  if [[ -n $TMP && -d $TMP ]]; then
    if [[ $KEEP_TMP == 1 ]]; then
      log "kept temp dir $TMP"
    else
      rm -rf "$TMP"
    fi
  fi
  exit "$rc"
}
CGROUPS=()
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# make_tmp NAME — the script's temporary directory, in TMP. USER_DIRECTIVE
# keeps nginx's workers as root when run by root: they drop to "nobody"
# otherwise, which can't read the 0700 directory.
USER_DIRECTIVE=""
make_tmp() {
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  [[ $EUID -eq 0 ]] && USER_DIRECTIVE="user root;"
  return 0
}

pinning() { [[ $PIN == 1 ]]; }

# on_cpu CPU CMD... — CMD pinned to CPU when pinning.
on_cpu() {
  local cpu=$1
  shift
  if pinning; then taskset -c "$cpu" "$@"; else "$@"; fi
}

# check_pinning — pinning off without taskset or with fewer than 2 CPUs.
check_pinning() {
  pinning || return 0
  if ! command -v taskset >/dev/null; then
    log "taskset not found: not pinning"
    PIN=0
  elif (($(nproc) < 2)); then
    log "fewer than 2 CPUs: not pinning"
    PIN=0
  fi
}

# start_bg CPU LOGFILE CMD... — start CMD in the background (pinned to CPU),
# stdout+stderr to LOGFILE; its pid ends up in LAST_PID. taskset execs CMD, so
# the pid is CMD's own.
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
  track_pid "$LAST_PID"
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

# ------------------------------------------------------------------- values

# render TEMPLATE OUT KEY=VALUE... — replace @KEY@ with VALUE (which may span
# lines).
render() {
  local tpl=$1 out=$2 kv key val esc args=()
  shift 2
  for kv in "$@"; do
    key=${kv%%=*}
    val=${kv#*=}
    # Escape sed's specials, and end every line but the last with a backslash
    # (a newline in a replacement).
    esc=$(printf '%s' "$val" | sed -e 's/[\\|&]/\\&/g' -e '$!s/$/\\/')
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

# median "v1 v2 ..." (average of the middle two for an even count)
median() {
  tr ' ' '\n' <<<"$1" | grep . | sort -g |
    awk '{ v[NR] = $1 } END { if (NR == 0) exit; if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
# spread "v1 v2 ..." -> "min–max" as integers
spread() {
  tr ' ' '\n' <<<"$1" | grep . | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f–%.0f", lo, hi }'
}

fmt_rps() { if [[ -z $1 || $1 == fail ]]; then echo "${1:-n/a}"; else printf '%.0f' "$1"; fi; }
fmt_ms() { if [[ -z $1 ]]; then echo "–"; else awk -v us="$1" 'BEGIN { printf "%.3f ms", us / 1000 }'; fi; }
ratio() { # A B -> A/B with 2 decimals, or n/a
  if [[ -z $1 || -z $2 || $1 == fail || $2 == fail ]]; then
    echo "n/a"
  else
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'
  fi
}

# -------------------------------------------------------------------- tools

# apt_install PKG... — with sudo unless root; `apt-get update` only if the
# first attempt fails. Bounded in time.
apt_install() {
  local sudo=()
  [[ $EUID -ne 0 ]] && sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  timeout 300 "${sudo[@]}" apt-get install -y "$@" ||
    { timeout 300 "${sudo[@]}" apt-get update && timeout 300 "${sudo[@]}" apt-get install -y "$@"; }
}

# ensure_nginx_wrk — NGINX_BIN (from PATH or /usr/sbin) and wrk, installing
# nginx-light and wrk if either is missing.
ensure_nginx_wrk() {
  if [[ -z ${NGINX_BIN:-} ]]; then
    NGINX_BIN=$(command -v nginx || true)
    [[ -z $NGINX_BIN && -x /usr/sbin/nginx ]] && NGINX_BIN=/usr/sbin/nginx
  fi
  if [[ -z $NGINX_BIN ]] || ! command -v wrk >/dev/null; then
    log "nginx and/or wrk missing; installing nginx-light and wrk"
    apt_install nginx-light wrk || die "could not install nginx-light and wrk"
    NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
  fi
  [[ -x $NGINX_BIN ]] || die "nginx not found"
  command -v wrk >/dev/null || die "wrk not found"
}

# build_mediary — a release build of the mediary package; sets MEDIARY_BIN.
# Cargo's output goes to BUILD_LOG when set (its tail is shown if the build
# fails), otherwise to stderr.
BUILD_LOG=""
build_mediary() {
  log "building mediary (cargo build --release -p mediary)"
  if [[ -n $BUILD_LOG ]]; then
    (cd "$ROOT" && timeout 1800 cargo build --release -p mediary) >"$BUILD_LOG" 2>&1 ||
      { tail -n 30 "$BUILD_LOG" >&2; die "the build failed"; }
  else
    (cd "$ROOT" && timeout 1800 cargo build --release -p mediary) || die "cargo build failed"
  fi
  local target_dir=${CARGO_TARGET_DIR:-target}
  [[ $target_dir == /* ]] || target_dir=$ROOT/$target_dir
  MEDIARY_BIN=$target_dir/release/mediary
}

# ------------------------------------------------------------------ servers

# make_bodies SIZE... — the random files the upstream serves, in TMP/www.
make_bodies() {
  local s
  mkdir -p "$TMP/www"
  for s in "$@"; do
    head -c "$(size_bytes "$s")" /dev/urandom >"$TMP/www/$s"
  done
}

# start_nginx NAME CPU TEMPLATE PORT [KEY=VALUE...] — pid in LAST_PID.
start_nginx() {
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

UPSTREAM_PORT=""
UPSTREAM_PID=""

# start_upstream CPU — the upstream nginx serving TMP/www, on UPSTREAM_PORT.
start_upstream() {
  free_port UPSTREAM_PORT
  start_nginx upstream "$1" "$TEMPLATES/upstream.nginx.conf" "$UPSTREAM_PORT" ROOT="$TMP/www" ||
    die "upstream nginx failed to start"
  UPSTREAM_PID=$LAST_PID
}

stop_upstream() {
  if [[ -n $UPSTREAM_PID ]]; then stop_pid "$UPSTREAM_PID"; fi
  UPSTREAM_PID=""
}

# wait_ready PID LOGFILE — wait until Mediary logs READY_LINE; 1 (with the
# log's tail shown) if it exits or takes longer than READY_TIMEOUT.
wait_ready() {
  local pid=$1 logfile=$2 i
  for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    grep -qF "$READY_LINE" "$logfile" 2>/dev/null && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      log "mediary exited during start-up; log tail:"
      tail -n 30 "$logfile" >&2 || true
      return 1
    fi
    sleep 0.1
  done
  log "mediary did not log '$READY_LINE' within ${READY_TIMEOUT}s; log tail:"
  tail -n 30 "$logfile" >&2 || true
  return 1
}

# start_mediary NAME PORT RECORDING [PLUGIN [SERVER [SECTIONS]]] — Mediary
# from templates/mediary.toml on PROXY_CPU, `--workers 1`; pid in LAST_PID,
# its API port in LAST_API_PORT; 1 if it did not become ready. RECORDING is
# true or false; NAME is its folder under the temp dir; PLUGIN, if given, is
# the channel's `plugin = {...}` line; SERVER more lines of [server]; SECTIONS
# more tables ([store], [api], ...).
# shellcheck disable=SC2034 # for the scripts
LAST_API_PORT=""
start_mediary() {
  local name=$1 port=$2 recording=$3 plugin=${4:-} server=${5:-} sections=${6:-}
  local api_port dir=$TMP/$1
  free_port api_port
  # shellcheck disable=SC2034 # for the scripts
  LAST_API_PORT=$api_port
  rm -rf "$dir"
  mkdir -p "$dir"
  render "$TEMPLATES/mediary.toml" "$dir/mediary.toml" \
    PORT="$port" API_PORT="$api_port" UPSTREAM_PORT="$UPSTREAM_PORT" RECORDING="$recording" \
    PLUGIN="$plugin" SERVER="$server" SECTIONS="$sections"
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
  wait_ready "$LAST_PID" "$dir/mediary.log"
}

# log_problems NAME LOGFILE — a note line when the log has ERROR or panic
# lines; nothing otherwise.
log_problems() {
  local name=$1 mlog=$2
  if grep -qE 'panic|ERROR' "$mlog"; then
    echo "$name logged $(grep -cE 'panic|ERROR' "$mlog") line(s) with ERROR/panic, e.g. \`$(grep -E 'panic|ERROR' "$mlog" | head -n 1 | sed 's/\x1b\[[0-9;]*m//g' | tr -d '`' | cut -c1-200)\`"
  fi
}

# cpu_ticks PID... — user+system clock ticks of the processes, their threads
# and their children (nginx workers).
cpu_ticks() {
  local p all=()
  for p in "$@"; do
    all+=("$p")
    mapfile -t -O "${#all[@]}" all < <(pgrep -P "$p" 2>/dev/null || true)
  done
  for p in "${all[@]}"; do
    cat "/proc/$p/stat" 2>/dev/null || true
  done | awk '{ sub(/^.*\) /, ""); t += $12 + $13 } END { printf "%.0f\n", t }'
}
# machine_ticks [CPU] — busy ticks of the whole machine (every CPU), or of
# one CPU, from /proc/stat.
machine_ticks() { awk -v c="cpu${1:-}" '$1 == c { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }

# cpu_cap NAME PERCENT PID... — puts the processes (and their threads) in a cgroup v1 `cpu` group
# NAME that may use PERCENT of one core (cfs quota), so that they, not the load generator, are the
# bottleneck. Dies with the reason when cgroups cannot be written (not root, cgroup v2 only).
CPU_CGROUP_ROOT=${CPU_CGROUP_ROOT:-/sys/fs/cgroup/cpu}
cpu_cap() {
  local name=$1 percent=$2 dir p t
  shift 2
  dir=$CPU_CGROUP_ROOT/$name
  mkdir -p "$dir" 2>/dev/null && [[ -w $dir/cpu.cfs_quota_us ]] ||
    die "cannot create the cgroup $dir (root and the cgroup v1 cpu controller are needed for PROXY_QUOTA)"
  echo 100000 >"$dir/cpu.cfs_period_us"
  echo $((percent * 1000)) >"$dir/cpu.cfs_quota_us"
  local all=()
  for p in "$@"; do
    all+=("$p")
    mapfile -t -O "${#all[@]}" all < <(pgrep -P "$p" 2>/dev/null || true)
  done
  for p in "${all[@]}"; do
    for t in /proc/"$p"/task/*; do echo "${t##*/}" >"$dir/tasks" 2>/dev/null || true; done
  done
  CGROUPS+=("$dir")
}

# ------------------------------------------------------------------- report

# notes_list HEADING — a blank line, HEADING and the script's NOTES as a Markdown list; nothing
# when there are none.
notes_list() {
  ((${#NOTES[@]} > 0)) || return 0
  local n
  echo
  echo "$1"
  echo
  for n in "${NOTES[@]}"; do echo "- $n"; done
}

# write_report NAME — the script's `report` into RESULTS_DIR/NAME-<date>.md, shown on stdout;
# the file in OUT_FILE.
OUT_FILE=""
write_report() {
  mkdir -p "$RESULTS_DIR"
  OUT_FILE=$RESULTS_DIR/$1-$(date '+%Y-%m-%d-%H%M%S').md
  report >"$OUT_FILE"
  echo
  cat "$OUT_FILE"
  echo
}

# ---------------------------------------------------------------------- wrk

# check_body URL BYTES — one request (METHOD) and check status and length.
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

# wrk_run CONNS DURATION URL OUT [HEADER] — wrk (WRK_THREADS threads, never
# more than CONNS) with wrk-report.lua, pinned to LOAD_CPU, bounded in time,
# sending HEADER ("Name: value") with every request if given. The body of a
# POST is TMP/www/<the URL's last segment>.
wrk_run() {
  local c=$1 d=$2 url=$3 out=$4 header=${5:-} t=$WRK_THREADS guard pid rc=0
  if ((t > c)); then t=$c; fi
  guard=$(($(secs "$d") + 30))
  local cmd=(env WRK_METHOD="$METHOD" WRK_BODY_FILE="$TMP/www/${url##*/}" timeout -k 5 "$guard" wrk -t "$t" -c "$c" -d "$d" --latency -s "$LUA")
  if [[ -n $header ]]; then cmd+=(-H "$header"); fi
  cmd+=("$url")
  if pinning; then cmd=(taskset -c "$LOAD_CPU" "${cmd[@]}"); fi
  "${cmd[@]}" >"$out" 2>&1 &
  pid=$!
  track_pid "$pid"
  wait "$pid" || rc=$?
  untrack_pid "$pid"
  return "$rc"
}

# bench_field LINE NAME — one value of the BENCH line wrk-report.lua prints.
bench_field() { sed -E "s/.* $2=([^ ]+).*/\1/" <<<"$1"; }
