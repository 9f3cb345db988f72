#!/usr/bin/env bash
# Listing transactions through the management API, end to end.
#
# Fills a data directory with RECORDS transactions (the store benchmark
# host/benches/tx_listing.rs writes them: ~3.3 KB records over 20 channels with
# OpenHIM-style ids, 90% Successful, 5% Failed, 5% Completed), starts the
# release binary on it, and drives
#   GET /transactions?filterLimit=20&filters={"channelID":"<id>","status":"Failed"}
# with wrk (HTTP Basic as the root user, one connection by default, the channel
# rotating over the 20 channels request by request). Prints p50/p90/p99 and
# req/s, and writes a Markdown report to bench/results/listing-<date>.md.
#
# Settings (environment):
#   RECORDS       transactions in the store                 (default 1000000)
#   DATA_DIR      data directory to fill (or reuse, when it holds RECORDS
#                 already) and keep; default: a temporary one, deleted at exit
#   DURATION      measured wrk run                          (default 10s)
#   WARMUP        wrk run before it, discarded              (default 2s, 0 = none)
#   CONNS         wrk connections                           (default 1)
#   STATUS        status filter; empty for channel only     (default Failed)
#   LIMIT         filterLimit                               (default 20)
#   MEDIARY_BIN   use this binary and skip `cargo build --release`
#   MEDIARY_CPU / LOAD_CPU  CPUs for Mediary and wrk        (default 0 / 1)
#   PIN           0 = no pinning (also off with < 2 CPUs or no taskset)
#   RESULTS_DIR   where the report goes                     (default bench/results)
#   KEEP_TMP      1 = keep the temporary directory (config, logs, wrk output)
#   FILL_TIMEOUT  seconds the filling may take              (default 1800)
#
# Every step is bounded in time; every process started here is stopped on exit
# (also on errors and Ctrl-C).

set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_NAME=listing.sh
READY_TIMEOUT=60 # seconds for Mediary to open the store and listen
STOP_TIMEOUT=10  # seconds Mediary gets to stop on TERM
# shellcheck source=bench/lib.sh
. "$SCRIPT_DIR/lib.sh"
REPO=$ROOT

RECORDS=${RECORDS:-1000000}
DATA_DIR=${DATA_DIR:-}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-1}
STATUS=${STATUS-Failed}
LIMIT=${LIMIT:-20}
MEDIARY_BIN=${MEDIARY_BIN:-}
MEDIARY_CPU=${MEDIARY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PIN=${PIN:-1}
RESULTS_DIR=${RESULTS_DIR:-$SCRIPT_DIR/results}
KEEP_TMP=${KEEP_TMP:-0}
FILL_TIMEOUT=${FILL_TIMEOUT:-1800}

ROOT_EMAIL=root@openhim.org
# The channels the benchmark's records use (host/benches/common/mod.rs, `channel_id`).
CHANNELS=()
for c in $(seq 0 19); do CHANNELS+=("$(printf '65f0a1b2c3d4e5f6a7b8c9%02x' "$c")"); done

MEDIARY_PID=""
stop_mediary() {
  [[ -n $MEDIARY_PID ]] || return 0
  stop_pid "$MEDIARY_PID"
  MEDIARY_PID=""
}

# ------------------------------------------------------------------- checks

check_pinning
for tool in curl base64 cargo awk; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
if ! command -v wrk >/dev/null; then
  log "wrk missing; installing it with apt-get"
  apt_install wrk || die "could not install wrk"
fi
DURATION_S=$(secs "$DURATION")
WARMUP_S=$(secs "$WARMUP")

make_tmp mediary-listing
DATA=${DATA_DIR:-$TMP/data}
mkdir -p "$DATA"
START=$(date '+%Y-%m-%d %H:%M:%S %Z')

# -------------------------------------------------------------------- build

if [[ -z $MEDIARY_BIN ]]; then
  BUILD_LOG=$TMP/build.log
  build_mediary
fi
[[ -x $MEDIARY_BIN ]] || die "$MEDIARY_BIN is not an executable"

# --------------------------------------------------------------------- fill

log "filling $DATA with $RECORDS transactions (the tx_listing benchmark; reused if already there)"
FILL_STARTED=$SECONDS
(cd "$REPO" && timeout -k 10 "$FILL_TIMEOUT" env LISTING_DIR="$DATA" RECORDS="$RECORDS" QUERIES=0 HOT_PATH=0 \
  cargo bench -p mediary --bench tx_listing) >"$TMP/fill.log" 2>&1 ||
  { tail -n 30 "$TMP/fill.log" >&2; die "filling the store failed (or took over ${FILL_TIMEOUT}s)"; }
FILL_SECONDS=$((SECONDS - FILL_STARTED))
FILL_LINE=$(grep -E '^populated ' "$TMP/fill.log" || echo "reused the records already there")
SIZE_LINE=$(grep -E '^records: ' "$TMP/fill.log" || true)
log "$FILL_LINE"
log "$SIZE_LINE"

# -------------------------------------------------------------------- start

PASSWORD="listing-$RANDOM$RANDOM$RANDOM"
HTTP_PORT="" API_PORT=""
free_port HTTP_PORT
free_port API_PORT
cat >"$TMP/mediary.toml" <<EOF
# Written by bench/listing.sh: only the management API matters here.
[server]
bind = "127.0.0.1"
http_port = $HTTP_PORT
api_port = $API_PORT
workers = 1

[store]
data_dir = "$DATA"

[recording]
# Nothing is proxied; listings are then pinned to "now".
enabled = false

[api]
root_password = "$PASSWORD"
EOF
rc=0
timeout 10 "$MEDIARY_BIN" check-config --config "$TMP/mediary.toml" >"$TMP/check-config.log" 2>&1 || rc=$?
((rc == 0)) || { cat "$TMP/check-config.log" >&2; die "mediary check-config rejected the config"; }

log "starting mediary on the store (API on 127.0.0.1:$API_PORT)"
start_bg "$MEDIARY_CPU" "$TMP/mediary.log" "$MEDIARY_BIN" run --config "$TMP/mediary.toml"
MEDIARY_PID=$LAST_PID
wait_ready "$MEDIARY_PID" "$TMP/mediary.log" || die "mediary did not become ready"
OPENED=$(grep -oE 'transactions=[0-9]+ segments=[0-9]+' "$TMP/mediary.log" | head -n 1 || true)

# ------------------------------------------------------------- sanity check

urlencode() { # the few characters a filter holds
  local s=$1
  s=${s//%/%25}
  s=${s//\{/%7B}
  s=${s//\}/%7D}
  s=${s//\"/%22}
  s=${s//:/%3A}
  s=${s//,/%2C}
  s=${s// /%20}
  printf '%s' "$s"
}
filter_for() {
  if [[ -n $STATUS ]]; then
    printf '{"channelID":"%s","status":"%s"}' "$1" "$STATUS"
  else
    printf '{"channelID":"%s"}' "$1"
  fi
}
FIRST_PATH="/transactions?filterLimit=$LIMIT&filters=$(urlencode "$(filter_for "${CHANNELS[0]}")")"
code=$(curl -s -m 10 -u "$ROOT_EMAIL:$PASSWORD" -o "$TMP/first.json" -w '%{http_code}' \
  "http://127.0.0.1:$API_PORT$FIRST_PATH" || true)
[[ $code == 200 ]] || { head -c 500 "$TMP/first.json" >&2 || true; die "GET $FIRST_PATH answered $code"; }
ROWS=$(grep -o '"_id"' "$TMP/first.json" | wc -l)
((ROWS > 0)) || die "GET $FIRST_PATH returned no transactions: is the store filled?"
log "GET $FIRST_PATH: 200, $ROWS transactions"

# ---------------------------------------------------------------------- wrk

AUTH=$(printf '%s:%s' "$ROOT_EMAIL" "$PASSWORD" | base64 -w0)
PATHS_FILE=$TMP/paths.txt
: >"$PATHS_FILE"
for c in "${CHANNELS[@]}"; do
  printf '/transactions?filterLimit=%s&filters=%s\n' "$LIMIT" "$(urlencode "$(filter_for "$c")")" >>"$PATHS_FILE"
done
cat >"$TMP/listing.lua" <<'EOF'
-- bench/listing.sh: one listing per request, the channel rotating; at the
-- end one machine-readable line with exact percentiles (microseconds).
local paths = {}
for line in io.lines(os.getenv("WRK_PATHS")) do paths[#paths + 1] = line end
local n = 0
wrk.headers["Authorization"] = "Basic " .. os.getenv("WRK_AUTH")
request = function()
  n = n % #paths + 1
  return wrk.format("GET", paths[n])
end
done = function(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    "BENCH requests=%.0f duration_us=%.0f bytes=%.0f rps=%.2f"
      .. " mean_us=%.1f p50_us=%.0f p90_us=%.0f p99_us=%.0f p999_us=%.0f max_us=%.0f"
      .. " err_connect=%.0f err_read=%.0f err_write=%.0f err_status=%.0f err_timeout=%.0f\n",
    summary.requests, summary.duration, summary.bytes, summary.requests / secs,
    latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
EOF

run_wrk() { # run_wrk SECONDS OUT
  local d=$1 out=$2
  on_cpu "$LOAD_CPU" env WRK_PATHS="$PATHS_FILE" WRK_AUTH="$AUTH" \
    timeout -k 5 $((d + 30)) wrk -t 1 -c "$CONNS" -d "${d}s" --timeout 10s --latency \
    -s "$TMP/listing.lua" "http://127.0.0.1:$API_PORT" >"$out" 2>&1
}
if ((WARMUP_S > 0)); then
  log "warm-up: wrk -c $CONNS -d ${WARMUP_S}s"
  run_wrk "$WARMUP_S" "$TMP/warmup.txt" || { cat "$TMP/warmup.txt" >&2; die "wrk failed (warm-up)"; }
fi
log "measuring: wrk -c $CONNS -d ${DURATION_S}s"
run_wrk "$DURATION_S" "$TMP/wrk.txt" || { cat "$TMP/wrk.txt" >&2; die "wrk failed"; }
BENCH=$(grep -E '^BENCH ' "$TMP/wrk.txt") || { cat "$TMP/wrk.txt" >&2; die "no result line from wrk"; }
field() { sed -E "s/.* $1=([^ ]+).*/\1/" <<<"$BENCH"; }
ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }
REQUESTS=$(field requests)
RPS=$(field rps)
P50=$(ms "$(field p50_us)")
P90=$(ms "$(field p90_us)")
P99=$(ms "$(field p99_us)")
P999=$(ms "$(field p999_us)")
MAX=$(ms "$(field max_us)")
ERRORS=$(($(field err_connect) + $(field err_read) + $(field err_write) + $(field err_status) + $(field err_timeout)))
RSS=$(awk '/VmHWM/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$MEDIARY_PID/status" 2>/dev/null || echo "?")
stop_mediary

# ------------------------------------------------------------------- report

FILTER_SHOWN=$(filter_for '<channel>')
REPORT=$(
  cat <<EOF
# Transaction listing through the API

- started: $START; host: $(nproc) CPUs, $(uname -sr); $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
- store: $RECORDS transactions in \`$DATA\` ($OPENED when opened); $SIZE_LINE
- filling: $FILL_LINE; the step took $FILL_SECONDS s (building the benchmark included)
- query: \`GET /transactions?filterLimit=$LIMIT&filters=$FILTER_SHOWN\`, HTTP Basic as $ROOT_EMAIL, the channel rotating over ${#CHANNELS[@]} channels; first answer: $ROWS transactions
- load: wrk -t 1 -c $CONNS -d $DURATION_S s (after a ${WARMUP_S} s warm-up)$(if pinning; then echo "; mediary on CPU $MEDIARY_CPU, wrk on CPU $LOAD_CPU"; else echo "; no pinning"; fi)
- mediary: \`$MEDIARY_BIN\`, peak RSS $RSS

| requests | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors |
|---:|---:|---:|---:|---:|---:|---:|---:|
| $REQUESTS | $RPS | $P50 | $P90 | $P99 | $P999 | $MAX | $ERRORS |
EOF
)
printf '%s\n' "$REPORT"
mkdir -p "$RESULTS_DIR"
OUT_FILE=$RESULTS_DIR/listing-$(date '+%Y-%m-%d-%H%M%S').md
printf '%s\n' "$REPORT" >"$OUT_FILE"
log "report written to $OUT_FILE"
((ERRORS == 0)) || { log "wrk counted $ERRORS errors"; exit 1; }
