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
#   mediary-router-js, mediary-router-js-fresh  the same with the JavaScript
#            twin (plugins/js/router, componentize-js)
#   mediary-router-py, mediary-router-py-fresh  the same with the Python twin
#            (plugins/python/router, componentize-py)
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
#   JS_ROUTER_WASM, PY_ROUTER_WASM  the same for the JavaScript and Python
#                 routers (otherwise built with `mediary plugin build`)
#   NGINX_BIN     nginx binary                             (default: from PATH or /usr/sbin/nginx)
#   WRK_THREADS   wrk threads (capped at the conn count)   (default 1)
#   PROXY_CPU     CPU for the proxy (and the upstream in "direct")   (default 0)
#   LOAD_CPU      CPU for wrk (and the upstream behind a proxy)      (default 1)
#   PIN           1 = pin with taskset, 0 = don't          (default 1; 0 if < 2 CPUs)
#   RESULTS_DIR   where the Markdown report goes           (default bench/results)
#   KEEP_TMP      1 = keep the temp dir (configs, logs, raw wrk output)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_NAME=proxy.sh
# shellcheck source=bench/lib.sh
. "$SCRIPT_DIR/lib.sh"

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-1}
CONNS=${CONNS:-"8 64"}
SIZES=${SIZES:-"1k 64k"}
TARGETS=${TARGETS:-"direct nginx mediary"}
METHOD=${METHOD:-GET}
MEDIARY_BIN=${MEDIARY_BIN:-}
ROUTER_WASM=${ROUTER_WASM:-}
JS_ROUTER_WASM=${JS_ROUTER_WASM:-}
PY_ROUTER_WASM=${PY_ROUTER_WASM:-}
NGINX_BIN=${NGINX_BIN:-}
WRK_THREADS=${WRK_THREADS:-1}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PIN=${PIN:-1}
RESULTS_DIR=${RESULTS_DIR:-$SCRIPT_DIR/results}
KEEP_TMP=${KEEP_TMP:-0}

has() { [[ " $TARGETS " == *" $1 "* ]]; }

# ----------------------------------------------------------------- checks

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "bad ROUNDS '$ROUNDS'"
for s in $SIZES; do size_bytes "$s" >/dev/null; done
for c in $CONNS; do [[ $c =~ ^[1-9][0-9]*$ ]] || die "bad connection count '$c'"; done
for t in $TARGETS; do
  case $t in
    direct | nginx | mediary | mediary-norec | mediary-router | mediary-router-fresh) ;;
    mediary-router-js | mediary-router-js-fresh | mediary-router-py | mediary-router-py-fresh) ;;
    *) die "unknown target '$t'" ;;
  esac
done
[[ $METHOD == GET || $METHOD == POST ]] || die "bad METHOD '$METHOD' (GET or POST)"
[[ $(secs "$DURATION") =~ ^[0-9]+$ ]] || die "bad DURATION '$DURATION' (use e.g. 10s)"
[[ $WARMUP == 0 || $(secs "$WARMUP") =~ ^[0-9]+$ ]] || die "bad WARMUP '$WARMUP'"

ensure_tools() {
  ensure_nginx_wrk
  command -v curl >/dev/null || log "curl not found: skipping response checks"
  check_pinning
}

ensure_tools

has_mediary() { [[ " $TARGETS " == *" mediary"* ]]; }
# The router targets, in report order: Rust, JavaScript, Python; reused, then fresh instances.
ROUTERS=(mediary-router mediary-router-fresh mediary-router-js mediary-router-js-fresh mediary-router-py mediary-router-py-fresh)
has_router() { local r; for r in "${ROUTERS[@]}"; do has "$r" && return 0; done; return 1; }

# guest_router DIR VAR — the component of the router example in DIR (plugins/js/router or
# plugins/python/router), built with `mediary plugin build` unless VAR already names one.
guest_router() {
  local dir=$1 var=$2 built
  if [[ -z ${!var} ]]; then
    log "building $dir (mediary plugin build)"
    "$MEDIARY_BIN" plugin build "$ROOT/$dir" >&2 || die "building $dir failed (Node.js 20 / Python 3.11 needed)"
    built=$(find "$ROOT/$dir/dist" -maxdepth 1 -name '*.wasm' | head -n 1)
    printf -v "$var" '%s' "$built"
  fi
  [[ -f ${!var} ]] || die "router component not found: ${!var} ($var)"
}

if has_mediary; then
  if [[ -z $MEDIARY_BIN ]]; then build_mediary; fi
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
if has mediary-router-js || has mediary-router-js-fresh; then guest_router plugins/js/router JS_ROUTER_WASM; fi
if has mediary-router-py || has mediary-router-py-fresh; then guest_router plugins/python/router PY_ROUTER_WASM; fi

make_tmp mediary-bench
# shellcheck disable=SC2086 # one file per size
make_bodies $SIZES

# ------------------------------------------------------------------- load

# Per point "target|size|conns": space-separated values, one per round.
declare -A RUNS_RPS RUNS_P50 RUNS_P99 ERRS FAILS PORT_OF
NOTES=()
FAILED=0

fail_point() { FAILS[$1]=1; FAILED=1; }

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
  for t in mediary mediary-norec "${ROUTERS[@]}"; do
    has "$t" || continue
    free_port MEDIARY_PORT
    recording=true
    [[ $t == mediary-norec ]] && recording=false
    plugin=""
    sections=""
    # Every bench path (/1k, /64k) has no FHIR resource type, so the router sends it to its
    # fallback route, after the whole decision (config, path, log line).
    router_config='config = { routes = { Patient = "upstream" }, fallback = "upstream" }'
    case $t in
      mediary-router) plugin="plugin = { file = \"$ROUTER_WASM\", isolation = \"reuse\", $router_config }" ;;
      mediary-router-fresh) plugin="plugin = { file = \"$ROUTER_WASM\", isolation = \"per-request\", $router_config }" ;;
      mediary-router-js) plugin="plugin = { file = \"$JS_ROUTER_WASM\", isolation = \"reuse\", $router_config }" ;;
      mediary-router-js-fresh) plugin="plugin = { file = \"$JS_ROUTER_WASM\", isolation = \"per-request\", $router_config }" ;;
      mediary-router-py) plugin="plugin = { file = \"$PY_ROUTER_WASM\", isolation = \"reuse\", $router_config }" ;;
      mediary-router-py-fresh) plugin="plugin = { file = \"$PY_ROUTER_WASM\", isolation = \"per-request\", $router_config }" ;;
    esac
    # One compile cache for every router target: a 12-18 MB JavaScript or Python component takes
    # Cranelift seconds, once.
    if [[ -n $plugin ]]; then sections=$'[plugins]\ncache_dir = "'"$TMP"'/plugin-cache"'; fi
    if start_mediary "$t" "$MEDIARY_PORT" "$recording" "$plugin" "" "$sections"; then
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
    problem=$(log_problems "$t" "$TMP/$t/mediary.log")
    if [[ -n $problem ]]; then NOTES+=("$problem"); fi
  done
  stop_upstream
fi

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ------------------------------------------------------------------ report

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

router_language() { case $1 in *-js*) echo JavaScript ;; *-py*) echo Python ;; *) echo Rust ;; esac; }
router_isolation() { case $1 in *-fresh) echo per-request ;; *) echo reuse ;; esac; }
# overhead_us WITH WITHOUT — 1e6/WITH - 1e6/WITHOUT in µs, or n/a.
overhead_us() {
  if [[ -z $1 || -z $2 || $1 == fail || $2 == fail ]]; then echo n/a; return; fi
  awk -v a="$1" -v b="$2" 'BEGIN { if (a <= 0 || b <= 0) print "n/a"; else printf "%.1f µs", 1e6 / a - 1e6 / b }'
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
  for t in direct upstream nginx mediary mediary-norec "${ROUTERS[@]}"; do
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
  if has mediary && has_router; then
    echo
    echo "Router plugins by language (the same channel with the content-based router in each language; overhead = CPU time the plugin adds to each request, 1/req/s with the plugin minus 1/req/s without, the proxy being one saturated core):"
    echo
    echo "| language | isolation | body | conns | req/s | plugin/none | overhead per request | p99 |"
    echo "|---|---|---|--:|--:|--:|--:|--:|"
    for s in $SIZES; do
      for c in $CONNS; do
        echo "| none | – | $s | $c | $(fmt_rps "${RPS[mediary|$s|$c]}") | 1.00 | – | $(fmt_ms "${P99[mediary|$s|$c]:-}") |"
        for r in "${ROUTERS[@]}"; do
          has "$r" || continue
          echo "| $(router_language "$r") | $(router_isolation "$r") | $s | $c | $(fmt_rps "${RPS[$r|$s|$c]}") | $(ratio "${RPS[$r|$s|$c]}" "${RPS[mediary|$s|$c]}") | $(overhead_us "${RPS[$r|$s|$c]}" "${RPS[mediary|$s|$c]}") | $(fmt_ms "${P99[$r|$s|$c]:-}") |"
        done
      done
    done
  fi
  for r in mediary-router mediary-router-fresh; do
    if ! has mediary || ! has "$r"; then continue; fi
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
  notes_list "Notes:"
}

write_report proxy
log "report written to $OUT_FILE"
if ((FAILED)); then
  log "some measurements failed (marked 'fail')"
  exit 1
fi
