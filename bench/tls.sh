#!/usr/bin/env bash
# bench/tls.sh — HTTPS and client authentication, side by side.
#
# (a) HTTPS with keep-alive: wrk over TLS against
#       nginx-tls    nginx terminating TLS and proxying to the upstream nginx
#       mediary-tls  Mediary's HTTPS listener ([tls] cert_file), same upstream
#     with the same certificate and key (a P-256 certificate made with openssl
#     for this run), both proxying over plain HTTP to the same upstream nginx.
#     Target: Mediary >= 1.0x nginx (MIN_TLS_RATIO).
# (b) Client authentication over HTTP: a private channel allowing the role
#     "bench", called with Basic credentials of a client created through
#     `POST /clients`, vs a public channel, both on one Mediary.
#     Target: basic >= 0.90x public (MIN_AUTH_RATIO). Skipped, with a note, when
#     this Mediary has no `/clients` API.
# Prints a Markdown report (also written to bench/results/tls-<date>.md) and
# one PASS/FAIL line per target. See bench/README.md for the conventions.
#
# Environment:
#   DURATION       wrk duration of each measured run        (default 10s)
#   WARMUP         wrk duration of the warm-up before each  (default 2s, 0 = none)
#   ROUNDS         repeat N times, report medians           (default 1)
#   CONNS          connection counts                        (default "64")
#   SIZES          response body sizes                      (default "1k")
#   PARTS          which parts to run: "a", "b" or "a b"    (default "a b")
#   MIN_TLS_RATIO  part (a) target, mediary/nginx           (default 1.0)
#   MIN_AUTH_RATIO part (b) target, basic/public            (default 0.90)
#   MEDIARY_BIN    use this mediary binary, skip `cargo build`
#   NGINX_BIN      nginx binary                 (default: from PATH or /usr/sbin/nginx)
#   WRK_THREADS    wrk threads (capped at the conn count)   (default 1)
#   PROXY_CPU      CPU for the proxy                        (default 0)
#   LOAD_CPU       CPU for wrk and the upstream             (default 1)
#   PIN            1 = pin with taskset, 0 = don't (default 1; 0 if < 2 CPUs)
#   PROXY_QUOTA    cap each proxy at this percentage of one core (cgroup v1 cpu
#                  quota; root), so that the proxy, not wrk and the upstream on
#                  LOAD_CPU, is the bottleneck (default: no cap)
#   RESULTS_DIR    where the Markdown report goes           (default bench/results)
#   KEEP_TMP       1 = keep the temp dir (configs, logs, raw wrk output)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_NAME=tls.sh
# shellcheck source=bench/lib.sh
. "$SCRIPT_DIR/lib.sh"

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-1}
CONNS=${CONNS:-"64"}
SIZES=${SIZES:-"1k"}
PARTS=${PARTS:-"a b"}
MIN_TLS_RATIO=${MIN_TLS_RATIO:-1.0}
MIN_AUTH_RATIO=${MIN_AUTH_RATIO:-0.90}
MEDIARY_BIN=${MEDIARY_BIN:-}
NGINX_BIN=${NGINX_BIN:-}
WRK_THREADS=${WRK_THREADS:-1}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PIN=${PIN:-1}
RESULTS_DIR=${RESULTS_DIR:-$SCRIPT_DIR/results}
KEEP_TMP=${KEEP_TMP:-0}
PROXY_QUOTA=${PROXY_QUOTA:-}
METHOD=GET

part() { [[ " $PARTS " == *" $1 "* ]]; }

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "bad ROUNDS '$ROUNDS'"
for s in $SIZES; do size_bytes "$s" >/dev/null; done
for c in $CONNS; do [[ $c =~ ^[1-9][0-9]*$ ]] || die "bad connection count '$c'"; done
for p in $PARTS; do [[ $p == a || $p == b ]] || die "unknown part '$p' (a or b)"; done
[[ $(secs "$DURATION") =~ ^[0-9]+$ ]] || die "bad DURATION '$DURATION' (use e.g. 10s)"
[[ -z $PROXY_QUOTA || $PROXY_QUOTA =~ ^[1-9][0-9]?$ ]] || die "bad PROXY_QUOTA '$PROXY_QUOTA' (a percentage, 1-99)"

ensure_nginx_wrk
command -v curl >/dev/null || die "curl is needed (response checks, POST /clients)"
command -v openssl >/dev/null || die "openssl is needed (the benchmark's certificate)"
check_pinning
if [[ -z $MEDIARY_BIN ]]; then build_mediary; fi
[[ -x $MEDIARY_BIN ]] || die "mediary binary not found or not executable: $MEDIARY_BIN"

make_tmp mediary-bench-tls
# shellcheck disable=SC2086 # one file per size
make_bodies $SIZES

# The certificate both TLS proxies serve: P-256 (what a modern deployment uses; the handshake
# is not measured, keep-alive connections are).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$TMP/server.key" -out "$TMP/server.pem" 2>/dev/null ||
  die "openssl could not make the certificate"

# ------------------------------------------------------------------- load

declare -A RUNS_RPS RUNS_P50 RUNS_P99 RUNS_CPU RUNS_PROXY_BUSY RUNS_LOAD_BUSY ERRS FAILS URL_OF HEADER_OF PID_OF
NOTES=()
FAILED=0
fail_point() { FAILS[$1]=1; }

# check_url TARGET SIZE — one request through TARGET: status 200 and the body's length.
check_url() {
  local target=$1 s=$2 got hdr=()
  [[ -n ${HEADER_OF[$target]:-} ]] && hdr=(-H "${HEADER_OF[$target]}")
  got=$(curl -sk -o /dev/null --max-time 5 "${hdr[@]}" -w '%{http_code} %{size_download}' \
    "${URL_OF[$target]}/$s" || true)
  [[ $got == "200 $(size_bytes "$s")" ]] && return 0
  log "check failed for $target ${URL_OF[$target]}/$s: got '$got'"
  return 1
}

run_point() {
  local target=$1 s=$2 c=$3 round=$4 key="$1|$2|$3" url out line kv
  [[ -n ${FAILS[$key]:-} ]] && return 0
  url="${URL_OF[$target]}/$s"
  if [[ $WARMUP != 0 ]]; then
    wrk_run "$c" "$WARMUP" "$url" "$TMP/wrk-$target-$s-$c-r$round-warmup.txt" "${HEADER_OF[$target]:-}" || true
  fi
  out="$TMP/wrk-$target-$s-$c-r$round.txt"
  log "$target $s c=$c: wrk -d $DURATION"
  # CPU: the proxy's own (its processes and threads), and how busy the load core was (wrk and the
  # upstream): near 100% there means the load side, not the proxy, set the pace.
  local hz t0_p t0_l t0 t1_p t1_l t1 rc=0
  hz=$(getconf CLK_TCK)
  t0_p=$(cpu_ticks "${PID_OF[$target]}")
  t0_l=$(machine_ticks "$LOAD_CPU")
  t0=$(date +%s%N)
  wrk_run "$c" "$DURATION" "$url" "$out" "${HEADER_OF[$target]:-}" || rc=$?
  t1_p=$(cpu_ticks "${PID_OF[$target]}")
  t1_l=$(machine_ticks "$LOAD_CPU")
  t1=$(date +%s%N)
  if ((rc != 0)); then
    log "wrk failed for $key:"; tail -n 20 "$out" >&2 || true
    fail_point "$key"; return 0
  fi
  line=$(grep '^BENCH ' "$out" | tail -n 1 || true)
  if [[ -z $line ]]; then
    log "no BENCH line for $key:"; tail -n 20 "$out" >&2 || true
    fail_point "$key"; return 0
  fi
  local rps=0 p50_us=0 p99_us=0 err_connect=0 err_read=0 err_write=0 err_status=0 err_timeout=0
  for kv in ${line#BENCH }; do
    case ${kv%%=*} in
      rps | p50_us | p99_us | err_connect | err_read | err_write | err_status | err_timeout)
        printf -v "${kv%%=*}" '%s' "${kv#*=}" ;;
    esac
  done
  RUNS_RPS[$key]+="$rps "
  RUNS_P50[$key]+="$p50_us "
  RUNS_P99[$key]+="$p99_us "
  local wall_s
  wall_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
  RUNS_CPU[$key]+="$(awk -v t=$((t1_p - t0_p)) -v hz="$hz" -v r="$rps" -v w="$wall_s" 'BEGIN { printf "%.2f", t / hz * 1e6 / (r * w) }') "
  RUNS_PROXY_BUSY[$key]+="$(awk -v t=$((t1_p - t0_p)) -v hz="$hz" -v w="$wall_s" 'BEGIN { printf "%.0f", 100 * t / hz / w }') "
  RUNS_LOAD_BUSY[$key]+="$(awk -v t=$((t1_l - t0_l)) -v hz="$hz" -v w="$wall_s" 'BEGIN { printf "%.0f", 100 * t / hz / w }') "
  local errs=$((err_connect + err_read + err_write + err_status + err_timeout))
  ERRS[$key]=$((${ERRS[$key]:-0} + errs))
  if ((errs > 0)); then
    NOTES+=("$target $s c=$c: errors connect=$err_connect read=$err_read write=$err_write status=$err_status timeout=$err_timeout")
  fi
  log "$target $s c=$c: $(printf '%.0f' "$rps") req/s, p50 ${p50_us}us, p99 ${p99_us}us, errors $errs"
}

# sweep TARGET... — rounds x sizes x conns, the targets back to back at each point.
sweep() {
  local round s c t order
  for ((round = 1; round <= ROUNDS; round++)); do
    if ((round % 2)); then order=("$@"); else order=(); for t in "$@"; do order=("$t" "${order[@]}"); done; fi
    for s in $SIZES; do for c in $CONNS; do for t in "${order[@]}"; do
      run_point "$t" "$s" "$c" "$round"
    done; done; done
  done
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
START=$(date '+%Y-%m-%d %H:%M:%S %Z')
TARGETS=()
AUTH_SKIPPED=""

log "== proxies on CPU $PROXY_CPU; upstream and wrk on CPU $LOAD_CPU"
start_upstream "$LOAD_CPU"

if part a; then
  # nginx terminating TLS: the proxy template with an ssl listener.
  free_port NGINX_PORT
  sed -e "s|listen 127.0.0.1:@PORT@ backlog=4096;|listen 127.0.0.1:@PORT@ ssl backlog=4096;\n        ssl_certificate @CERT@;\n        ssl_certificate_key @KEY@;\n        ssl_protocols TLSv1.2 TLSv1.3;\n        ssl_session_cache shared:SSL:1m;|" \
    "$TEMPLATES/proxy.nginx.conf" >"$TMP/tls.nginx.conf"
  if start_nginx nginx-tls "$PROXY_CPU" "$TMP/tls.nginx.conf" "$NGINX_PORT" \
    UPSTREAM_PORT="$UPSTREAM_PORT" CERT="$TMP/server.pem" KEY="$TMP/server.key"; then
    NGINX_PID=$LAST_PID
    PID_OF[nginx-tls]=$NGINX_PID
    URL_OF[nginx-tls]="https://127.0.0.1:$NGINX_PORT"
    TARGETS+=(nginx-tls)
  else
    for s in $SIZES; do for c in $CONNS; do fail_point "nginx-tls|$s|$c"; done; done
  fi
  free_port MEDIARY_PORT
  free_port HTTPS_PORT
  if start_mediary mediary-tls "$MEDIARY_PORT" false "" "https_port = $HTTPS_PORT" \
    "[tls]
cert_file = \"$TMP/server.pem\"
key_file = \"$TMP/server.key\""; then
    MEDIARY_TLS_PID=$LAST_PID
    PID_OF[mediary-tls]=$MEDIARY_TLS_PID
    URL_OF[mediary-tls]="https://127.0.0.1:$HTTPS_PORT"
    TARGETS+=(mediary-tls)
  else
    for s in $SIZES; do for c in $CONNS; do fail_point "mediary-tls|$s|$c"; done; done
  fi
  if [[ -n $PROXY_QUOTA ]]; then
    for t in nginx-tls mediary-tls; do
      [[ -n ${PID_OF[$t]:-} ]] && cpu_cap "mediary-bench-$t-$$" "$PROXY_QUOTA" "${PID_OF[$t]}"
    done
  fi
  for t in nginx-tls mediary-tls; do
    [[ -n ${URL_OF[$t]:-} ]] || continue
    for s in $SIZES; do check_url "$t" "$s" || for c in $CONNS; do fail_point "$t|$s|$c"; done; done
  done
  sweep nginx-tls mediary-tls
  [[ -n ${NGINX_PID:-} ]] && stop_pid "$NGINX_PID"
  if [[ -n ${MEDIARY_TLS_PID:-} ]]; then
    stop_pid "$MEDIARY_TLS_PID"
    problem=$(log_problems mediary-tls "$TMP/mediary-tls/mediary.log")
    if [[ -n $problem ]]; then NOTES+=("$problem"); fi
  fi
fi

if part b; then
  # One Mediary, two channels: /public/... (public) and /private/... (private, allow ["bench"]),
  # both with a priority so that they come before the template's catch-all channel.
  free_port MEDIARY_PORT
  BENCH_PASSWORD=bench-password-$RANDOM$RANDOM
  ROOT_PASSWORD=bench-root-password
  channels="[[channels]]
name = \"public\"
urlPattern = \"^/public/\"
priority = 1
methods = [\"GET\"]
authType = \"public\"
[[channels.routes]]
name = \"upstream\"
host = \"127.0.0.1\"
port = $UPSTREAM_PORT
primary = true
pathTransform = \"s/^\\\\/public//\"

[[channels]]
name = \"private\"
urlPattern = \"^/private/\"
priority = 1
methods = [\"GET\"]
authType = \"private\"
allow = [\"bench\"]
[[channels.routes]]
name = \"upstream\"
host = \"127.0.0.1\"
port = $UPSTREAM_PORT
primary = true
pathTransform = \"s/^\\\\/private//\""
  export MEDIARY_ROOT_PASSWORD=$ROOT_PASSWORD
  if start_mediary mediary-auth "$MEDIARY_PORT" false "" "" "$channels"; then
    AUTH_PID=$LAST_PID
    PID_OF[public]=$AUTH_PID
    PID_OF[basic]=$AUTH_PID
    api="http://127.0.0.1:$LAST_API_PORT"
    code=$(curl -s -o "$TMP/clients.json" -w '%{http_code}' --max-time 10 \
      -u "root@openhim.org:$ROOT_PASSWORD" -H 'Content-Type: application/json' \
      -d "{\"clientID\":\"bench\",\"name\":\"Bench\",\"roles\":[\"bench\"],\"password\":\"$BENCH_PASSWORD\"}" \
      "$api/clients" || true)
    if [[ $code == 201 || $code == 200 ]]; then
      URL_OF[public]="http://127.0.0.1:$MEDIARY_PORT/public"
      URL_OF[basic]="http://127.0.0.1:$MEDIARY_PORT/private"
      HEADER_OF[basic]="Authorization: Basic $(printf '%s' "bench:$BENCH_PASSWORD" | base64 -w0)"
      TARGETS+=(public basic)
      for t in public basic; do
        for s in $SIZES; do check_url "$t" "$s" || for c in $CONNS; do fail_point "$t|$s|$c"; done; done
      done
      sweep public basic
    else
      AUTH_SKIPPED="this Mediary has no POST /clients (answered $code): part (b) skipped"
      log "$AUTH_SKIPPED"
    fi
    stop_pid "$AUTH_PID"
  else
    AUTH_SKIPPED="Mediary did not start with the private channel (authType/allow not supported?): part (b) skipped"
    log "$AUTH_SKIPPED"
  fi
fi
stop_upstream
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ------------------------------------------------------------------ report

declare -A RPS P50 P99 CPU PROXY_BUSY LOAD_BUSY
for t in nginx-tls mediary-tls public basic; do
  for s in $SIZES; do for c in $CONNS; do
    key="$t|$s|$c"
    if [[ -n ${FAILS[$key]:-} || -z ${RUNS_RPS[$key]:-} ]]; then
      RPS[$key]=fail
    else
      RPS[$key]=$(median "${RUNS_RPS[$key]}")
      P50[$key]=$(median "${RUNS_P50[$key]}")
      P99[$key]=$(median "${RUNS_P99[$key]}")
      CPU[$key]=$(median "${RUNS_CPU[$key]}")
      PROXY_BUSY[$key]=$(median "${RUNS_PROXY_BUSY[$key]}")
      LOAD_BUSY[$key]=$(median "${RUNS_LOAD_BUSY[$key]}")
    fi
  done; done
done

VERDICTS=()
# verdict NAME A B MIN — PASS when A/B >= MIN.
verdict() {
  local name=$1 a=$2 b=$3 min=$4 r
  r=$(ratio "$a" "$b")
  if [[ $r == n/a ]]; then
    VERDICTS+=("FAIL $name: no measurement"); FAILED=1
  elif awk -v r="$r" -v m="$min" 'BEGIN { exit !(r >= m) }'; then
    VERDICTS+=("PASS $name: $r (target >= $min)")
  else
    VERDICTS+=("FAIL $name: $r (target >= $min)"); FAILED=1
  fi
}
for s in $SIZES; do for c in $CONNS; do
  if part a; then verdict "HTTPS mediary/nginx $s c=$c" "${RPS[mediary-tls|$s|$c]}" "${RPS[nginx-tls|$s|$c]}" "$MIN_TLS_RATIO"; fi
  if part b && [[ -z $AUTH_SKIPPED ]]; then verdict "basic/public $s c=$c" "${RPS[basic|$s|$c]}" "${RPS[public|$s|$c]}" "$MIN_AUTH_RATIO"; fi
done; done

report() {
  echo "# TLS and client-authentication benchmark"
  echo
  echo "- started: $START; $ROUNDS round(s) of wrk -d $DURATION per point, each after $(if [[ $WARMUP == 0 ]]; then echo "no warm-up"; else echo "a $WARMUP warm-up"; fi); wrk threads: $WRK_THREADS; keep-alive"
  echo "- host: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')); load average before: $LOAD_BEFORE, after: $LOAD_AFTER"
  if pinning; then echo "- pinning: proxy on CPU $PROXY_CPU; wrk and the upstream nginx on CPU $LOAD_CPU"; else echo "- pinning: none"; fi
  if [[ -n $PROXY_QUOTA ]]; then echo "- each HTTPS proxy capped at $PROXY_QUOTA% of one core (cgroup cpu quota), so that it, not the load core, sets the pace"; fi
  echo "- proxy CPU: user+system time of the proxy's processes per request; busy: the proxy's CPU time, and the load core's (wrk and the upstream), as a share of the run: a load core near 100% means the load side set the pace"
  echo "- nginx: $("$NGINX_BIN" -v 2>&1 | sed 's/.*: //'); wrk: $(wrk -v 2>&1 | head -n 1 | awk '{print $2}'); certificate: P-256, self-signed, the same files for both"
  echo "- mediary: \`$MEDIARY_BIN\`, 1 worker, recording off; commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo none)$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo ' (dirty tree)')"
  echo
  echo "| target | body | conns | req/s | req/s range | p50 | p99 | proxy CPU per request | proxy busy | load core busy | errors |"
  echo "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
  local t s c key
  for s in $SIZES; do for c in $CONNS; do for t in nginx-tls mediary-tls public basic; do
    key="$t|$s|$c"
    [[ -z ${RUNS_RPS[$key]:-} && -z ${FAILS[$key]:-} ]] && continue
    echo "| $t | $s | $c | $(fmt_rps "${RPS[$key]}") | $(if [[ -n ${RUNS_RPS[$key]:-} ]]; then spread "${RUNS_RPS[$key]}"; else echo –; fi) | $(fmt_ms "${P50[$key]:-}") | $(fmt_ms "${P99[$key]:-}") | ${CPU[$key]:-–} µs | ${PROXY_BUSY[$key]:-–}% | ${LOAD_BUSY[$key]:-–}% | ${ERRS[$key]:-–} |"
  done; done; done
  if part a; then
    echo
    for s in $SIZES; do for c in $CONNS; do
      echo "- proxy CPU per request, nginx/mediary $s c=$c (above 1.00: Mediary needs less CPU per request): $(ratio "${CPU[nginx-tls|$s|$c]:-}" "${CPU[mediary-tls|$s|$c]:-}")"
    done; done
  fi
  echo
  for v in "${VERDICTS[@]}"; do echo "- $v"; done
  if [[ -n $AUTH_SKIPPED ]]; then echo "- SKIP basic/public: $AUTH_SKIPPED"; fi
  notes_list "Notes:"
}

write_report tls
for v in "${VERDICTS[@]}"; do echo "$v"; done
log "report written to $OUT_FILE"
if ((FAILED)); then exit 1; fi
